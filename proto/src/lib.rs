//! The coordinator's agent API, generated from `proto/mailloop.proto`.
//!
//! Only the gRPC edges (the coordinator's service, the agent's client) use
//! these types; they convert to and from `mailloop_common` types there.

/// Generated messages, client and server of `mailloop.v1`.
pub mod pb {
    tonic::include_proto!("mailloop.v1");
}
