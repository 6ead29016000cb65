//! Every way an agent or an admin is refused.

mod support;
use mailloop_proto::pb;
use support::*;
use tonic::Code;

async fn register_code(agent: &mut Agent, region: &str) -> Code {
    let req = pb::RegisterRequest { name: "x".into(), region: region.into(), version: "test".into(), ..Default::default() };
    agent.register(req).await.expect_err("refused").code()
}

#[tokio::test]
async fn no_token_is_unauthenticated() {
    let c = Coordinator::start("", "");
    let mut anonymous = c.agent_with(None).await;
    assert_eq!(register_code(&mut anonymous, "eu-west").await, Code::Unauthenticated);
    let err = anonymous.watch_assignments(pb::WatchRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anonymous.heartbeat(pb::HeartbeatRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated() {
    let c = Coordinator::start("", "");
    let mut stranger = c.agent_with(Some("not-a-token-anyone-was-given")).await;
    assert_eq!(register_code(&mut stranger, "eu-west").await, Code::Unauthenticated);
    assert!(!c.log().contains("not-a-token-anyone-was-given"), "tokens never reach the log");
}

#[tokio::test]
async fn a_revoked_token_is_unauthenticated_and_its_streams_end() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let created = expect_ok(c.api().post("/api/v1/agents", &serde_json::json!({"name": "eu-9", "region": "eu-west"})).await);
    let token = created["token"].as_str().unwrap().to_string();
    let mut eu9 = c.agent_with(Some(&token)).await;
    let ok = eu9.register(pb::RegisterRequest { name: "eu-9".into(), region: "eu-west".into(), version: "t".into(), ..Default::default() }).await;
    assert_eq!(ok.unwrap().into_inner().agent_id, "eu-9");
    let mut watch = Watch::open(&mut eu9, &[]).await;
    assert_eq!(watch.next().await.upserted().check_id, "corp");

    expect_ok(c.api().post("/api/v1/agents/eu-9/revoke", &serde_json::json!({})).await);
    let end = tokio::time::timeout(DEADLINE, watch.0.message()).await.expect("the stream ends");
    assert_eq!(end.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(register_code(&mut eu9, "eu-west").await, Code::Unauthenticated);
    assert!(!c.log().contains(&token), "tokens never reach the log");
}

#[tokio::test]
async fn a_token_is_bound_to_its_region() {
    let c = Coordinator::start("", "");
    let mut eu1 = c.agent("eu-1").await;
    assert_eq!(register_code(&mut eu1, "us-east").await, Code::PermissionDenied);
}

#[tokio::test]
async fn a_report_for_another_regions_check_is_rejected_with_a_reason() {
    let c = Coordinator::start("", &format!("{}{}", check_toml("us-only", &["us-east"], "1m"), check_toml("eu", &["eu-west"], "1m")));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    let ack = reports.send(result("ml-1", "us-only", 1)).await;
    assert!(!ack.stored);
    assert!(ack.error.contains("does not run in region \"eu-west\""), "{}", ack.error);
    let ack = reports.send(result("ml-2", "no-such-check", 1)).await;
    assert!(!ack.stored && ack.error.contains("unknown check"), "{}", ack.error);
    // A report whose JSON names another check or probe is refused too.
    let mut forged = result("ml-3", "eu", 1);
    forged.report_json = report_json("ml-3", "us-only");
    let ack = reports.send(forged).await;
    assert!(!ack.stored && ack.error.contains("not \"eu\""), "{}", ack.error);
    // The stream stays usable after rejections.
    assert!(reports.send(result("ml-4", "eu", 1)).await.stored);
    assert!(results(&c.api(), "us-only").await.is_empty());
}

#[tokio::test]
async fn an_oversized_message_is_refused() {
    let c = Coordinator::start("max_message_bytes = 65536", &check_toml("corp", &["eu-west"], "1m"));
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    let mut big = result("ml-big", "corp", 1);
    big.report_json = format!("{}{}", big.report_json, " ".repeat(100_000));
    reports.tx.send(big).await.unwrap();
    let err = tokio::time::timeout(DEADLINE, reports.acks.message()).await.expect("an answer").expect_err("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(results(&c.api(), "corp").await.is_empty());
}

#[tokio::test]
async fn admin_writes_need_the_admin_token() {
    let c = Coordinator::start("", "");
    let table = check_table("shop", &["eu-west"], "1m");
    let anonymous = c.api_without_token().post("/api/v1/checks", &table).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let wrong = mailloop_coordinator::client::Client::new(&format!("http://{}", c.http), Some("wrong-admin-token-xxxx".into()), None).unwrap();
    assert_eq!(wrong.post("/api/v1/agents", &serde_json::json!({"name": "a", "region": "b"})).await.unwrap().status, 401);
    // A read token does not write either.
    let read = c.api_as(READ_TOKEN).post("/api/v1/checks", &table).await.unwrap();
    assert_eq!(read.status, 403, "{read:?}");
    assert!(read.error_text().contains("read role"), "{}", read.error_text());
    assert!(c.api().get("/api/v1/checks/shop").await.unwrap().status == 404, "nothing was created");
}

#[tokio::test]
async fn reads_need_a_read_or_admin_token() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let anonymous = c.api_without_token().get("/api/v1/checks").await.unwrap();
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.error_text().contains("Authorization: Bearer"), "{}", anonymous.error_text());
    assert_eq!(c.api_as("not-a-token-anyone-was-given").get("/api/v1/checks").await.unwrap().status, 401);
    let agent = c.api_as(token("eu-1")).get("/api/v1/checks").await.unwrap();
    assert_eq!(agent.status, 403);
    assert!(agent.error_text().contains("gRPC agent API"), "{}", agent.error_text());
    let read = expect_ok(c.api_as(READ_TOKEN).get("/api/v1/checks").await);
    assert_eq!(read["checks"][0]["id"], "corp");
    // Health stays open for load balancers and orchestrators.
    assert_eq!(c.api_without_token().get("/healthz").await.unwrap().status, 200);
    assert_eq!(c.api_without_token().get("/readyz").await.unwrap().status, 200);
    assert!(!c.log().contains(READ_TOKEN), "tokens never reach the log");
}

#[tokio::test]
async fn an_agent_cannot_speak_for_another() {
    let c = Coordinator::start("", "");
    let mut eu1 = c.agent("eu-1").await;
    let err = eu1.heartbeat(pb::HeartbeatRequest { agent_id: "eu-2".into(), spooled: 0, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = eu1.watch_assignments(pb::WatchRequest { agent_id: "us-1".into(), known: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(eu1.heartbeat(pb::HeartbeatRequest { agent_id: "eu-1".into(), spooled: 3, ..Default::default() }).await.is_ok());
    let agent = expect_ok(c.api().get("/api/v1/agents/eu-1").await);
    assert_eq!(agent["spooled"], 3, "the spool size from the last heartbeat is shown");
    assert!(agent["last_seen"].is_string());
}
