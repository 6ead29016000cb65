//! The mailloop coordinator: assigns checks to agents in several regions
//! over gRPC, stores every probe report they stream back (acknowledging
//! each only once it is durable), and serves an admin HTTP API.
//!
//! Layers, bottom up (a module imports only from the ones above it in
//! this list, never back):
//! - [`clock`]: `now_ms`; [`config`]: `coordinator.toml`, validated whole.
//! - [`judge`]'s model (verdicts, incidents) and rules; [`telemetry`]: the
//!   coordinator's own OTLP spans (ingest, verdicts, alert deliveries, runs);
//!   [`alerts`]: channels.
//! - [`storage`]: the database behind one API ([`storage::Storage`]).
//! - [`cluster`]: rounds and rendezvous placement, the hub of live agents,
//!   every change to checks and agents, on-demand runs, the gRPC agent edge.
//! - [`auth`]: roles, route policies, the audit log; [`metrics`]: `/metrics`.
//! - [`api`]: the admin HTTP edge, one file per group of routes; [`web`]:
//!   the public status page, its JSON and badges.
//! - [`server`]: start-up, serving, reload and graceful shutdown.
//! - [`client`]: the admin API client `mailloopctl` uses.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod judge;
pub mod metrics;
pub mod server;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod web;
