//! The coordinator's agent API, generated from `proto/mailloop.proto`.
//!
//! Only the gRPC edges (the coordinator's service, the agent's client) use
//! these types; they convert to and from `mailloop_common` types there.

/// Generated messages, client and server of `mailloop.v1`.
pub mod pb {
    tonic::include_proto!("mailloop.v1");
}

/// The agent API protocol this build speaks (see `mailloop.proto`): sent in
/// `RegisterRequest.protocol_version` and `RegisterResponse.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 2;
