//! The agents' side of the coordinator: who is connected and runs what.
//!
//! Bottom up: [`schedule`] (rounds, phases, rendezvous placement; pure),
//! [`placement`] (the assignment map changed one join, leave or check at
//! a time), [`ondemand`] ("run now" orders), [`hub`] (live agents and the assignment
//! map they follow), [`control`] (every change to checks, agents and API
//! tokens: validated, stored, then pushed to the hub), [`presence`] (the
//! agents connected to other replicas, through the shared database),
//! [`grpc`] (the agent API edge).

pub mod control;
pub mod grpc;
pub mod hub;
pub mod ondemand;
pub mod placement;
pub mod presence;
pub mod schedule;
