//! The mailloop coordinator: assigns checks to agents in several regions
//! over gRPC, stores every probe report they stream back (acknowledging
//! each only once it is durable), and serves an admin HTTP API.
//!
//! Layers, bottom up:
//! - [`config`]: `coordinator.toml`, validated whole.
//! - [`storage`]: SQLite behind one API; a batching writer thread, reader pool.
//! - [`schedule`]: rounds, phases, rendezvous placement (pure).
//! - [`hub`]: live state in memory and the assignment map agents follow.
//! - [`control`]: every change to checks and agents (config file or API).
//! - [`grpc`]: the agent API edge; [`api`]: the admin HTTP edge, whose
//!   roles, route policies and audit log are in [`auth`].
//! - [`server`]: start-up, serving, reload and graceful shutdown.
//! - [`judge`]: round verdicts, baselines, incidents; [`alerts`]: channels.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`client`]: the admin API client `mailloopctl` uses.

pub mod aggregates;
pub mod alerts;
pub mod api;
pub mod api_judge;
pub mod auth;
pub mod client;
pub mod config;
pub mod control;
pub mod grpc;
pub mod hub;
pub mod judge;
pub mod metrics;
pub mod ondemand;
pub mod schedule;
pub mod server;
pub mod shutdown;
pub mod storage;
