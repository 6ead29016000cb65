//! Version skew at Register: an agent built before protocol versions (its
//! RegisterRequest has no `protocol_version`, field 5) against a new
//! coordinator either works (the default `min_agent_protocol = 0`) or gets
//! "upgrade the agent: coordinator needs protocol ≥ N" — never a silent
//! misparse. The old agent is a minimal hand-made client whose message is
//! the first release's RegisterRequest (fields 1–4), so what goes on the
//! wire is exactly what such an agent sends.

use mailloop_tests::cluster::{ADMIN_TOKEN, Coordinator};
use std::time::Duration;
use tonic::transport::Channel;

/// RegisterRequest as the first release defined it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldRegisterRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    region: String,
    #[prost(string, tag = "3")]
    version: String,
    #[prost(int64, tag = "4")]
    sent_at_ms: i64,
}

/// RegisterResponse as the first release defined it (fields 1–3).
#[derive(Clone, PartialEq, prost::Message)]
struct OldRegisterResponse {
    #[prost(string, tag = "1")]
    agent_id: String,
    #[prost(uint32, tag = "2")]
    heartbeat_seconds: u32,
    #[prost(uint32, tag = "3")]
    spool_max_reports: u32,
}

const TOKEN: &str = "mlt_protocol-test-agent-token-0123456789";

fn coordinator(dir: &std::path::Path, extra_server: &str) -> Coordinator {
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    std::fs::write(dir.join("old-1.token"), TOKEN).unwrap();
    let config = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nadmin_token_file = {:?}\n{extra_server}\n\
         [[agent]]\nname = \"old-1\"\nregion = \"eu-west\"\ntoken_file = {:?}\n",
        dir.join("data"),
        dir.join("admin.token"),
        dir.join("old-1.token"),
    );
    Coordinator::start_with_config(dir, &config)
}

/// Register as the old agent: the coordinator's answer or its refusal.
async fn old_register(grpc: std::net::SocketAddr) -> Result<OldRegisterResponse, tonic::Status> {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let mut req = tonic::Request::new(OldRegisterRequest {
        name: "old-1".into(),
        region: "eu-west".into(),
        version: "0.0.9".into(),
        sent_at_ms: 0,
    });
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/mailloop.v1.AgentService/Register");
    client
        .unary(req, path, tonic_prost::ProstCodec::<OldRegisterRequest, OldRegisterResponse>::default())
        .await
        .map(tonic::Response::into_inner)
}

/// Register as the current agent (the generated client, protocol_version set).
async fn new_register(grpc: std::net::SocketAddr) -> Result<mailloop_proto::pb::RegisterResponse, tonic::Status> {
    use mailloop_proto::pb;
    let mut client = pb::agent_service_client::AgentServiceClient::connect(format!("http://{grpc}")).await.unwrap();
    let mut req = tonic::Request::new(pb::RegisterRequest {
        name: "old-1".into(),
        region: "eu-west".into(),
        version: "new".into(),
        sent_at_ms: 0,
        protocol_version: mailloop_proto::PROTOCOL_VERSION,
    });
    req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    client.register(req).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_agent_older_than_min_agent_protocol_is_told_to_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path(), "min_agent_protocol = 1");
    let refused = old_register(c.grpc).await.expect_err("an agent of protocol 0 was accepted");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().starts_with("upgrade the agent: coordinator needs protocol ≥ 1"),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains("mailloop-agent 0.0.9"), "{}", refused.message());
    // The current agent, same token, same coordinator: accepted, and told
    // which protocol the coordinator speaks.
    let ok = new_register(c.grpc).await.unwrap();
    assert_eq!(ok.agent_id, "old-1");
    assert_eq!(ok.protocol_version, mailloop_proto::PROTOCOL_VERSION);
}

#[tokio::test]
async fn by_default_an_agent_of_the_previous_protocol_still_registers() {
    let dir = tempfile::tempdir().unwrap();
    let c = coordinator(dir.path(), "");
    // The new response's extra field (protocol_version) is skipped by the
    // old decoder; the fields it knows are intact.
    let ok = old_register(c.grpc).await.unwrap();
    assert_eq!(ok.agent_id, "old-1");
    assert_eq!(ok.heartbeat_seconds, 15);
}

#[test]
fn min_agent_protocol_above_what_this_build_speaks_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {:?}\nadmin_token_file = {:?}\nmin_agent_protocol = 99\njoin_token_ttl = \"30d\"\npublic_urls = [\"ftp://x\"]\n",
            dir.path().join("data"),
            dir.path().join("admin.token")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(mailloop_tests::cluster::bin("mailloop-coordinator"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for key in ["server.min_agent_protocol", "server.join_token_ttl", "server.public_urls[0]"] {
        assert!(err.contains(key), "{key} not named:\n{err}");
    }
}
