//! Who may call what on the admin API, tried on a real coordinator:
//! every route of the router walked with no token, an agent's token, a
//! read token and the admin token; what no answer may carry to a caller
//! who must not see it (planted passwords, password references, tokens,
//! and for callers without a right, usernames and server replies too);
//! the audit log of every change; token changes applied by SIGHUP.

mod support;
use axum::http::Method;
use mailloop_coordinator::admin::route_table;
use mailloop_coordinator::client::Client;
use mailloop_coordinator::config::token_sha256;
use mailloop_coordinator::cluster::schedule;
use mailloop_proto::pb;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::*;

const INLINE_PASSWORD: &str = "planted-inline-password-7f3a";
const PASSWORD_ENV: &str = "PLANTED_PASSWORD_ENV_91C2";
const PASSWORD_FILE: &str = "/planted/password-file-5d8e";
const USERNAME: &str = "planted-user-4e1b@sender.test";
const MAILBOX: &str = "Planted-Mailbox-0c7d";
const SERVER_REPLY: &str = "planted-server-reply-a9d0";
const OPS_TOKEN: &str = "ops-admin-token-for-tests-0123456789";
const CHECK: &str = "corp";
const SOON: Duration = Duration::from_secs(20);

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Agent,
    Read,
    Admin,
}

const EVERYONE: [Who; 4] = [Who::Nobody, Who::Agent, Who::Read, Who::Admin];

/// One route: what it needs, the request the walk makes, and what the
/// admin gets (everyone else gets what the role rules say).
struct Case {
    method: Method,
    route: &'static str,
    needs: &'static str,
    path: String,
    body: Option<Value>,
    admin_gets: u16,
}

fn case(method: Method, route: &'static str, needs: &'static str, path: &str, admin_gets: u16) -> Case {
    Case { method, route, needs, path: path.to_string(), body: None, admin_gets }
}

impl Case {
    fn with(mut self, body: Value) -> Case {
        self.body = Some(body);
        self
    }

    fn expected(&self, who: Who) -> u16 {
        match (self.needs, who) {
            ("public", _) | (_, Who::Admin) => self.admin_gets,
            (_, Who::Nobody) => 401,
            (_, Who::Agent) => 403,
            ("read", Who::Read) => self.admin_gets,
            ("admin", Who::Read) => 403,
            (other, _) => panic!("unknown role {other:?}"),
        }
    }
}

/// `corp` (in the file: an inline SMTP password, an IMAP password
/// variable, a planted username and mailbox) in two regions, judged every
/// second with one bad round opening an outage; an `ops` admin token.
fn planted() -> Coordinator {
    let secrets = tempfile::tempdir().unwrap().keep();
    let ops = secrets.join("ops.token");
    std::fs::write(&ops, OPS_TOKEN).unwrap();
    Coordinator::start(
        "allow_inline_passwords = true",
        &format!(
            r#"
[[token]]
name = "ops"
role = "admin"
token_file = {ops:?}

[[check]]
name = "{CHECK}"
from = "probe@sender.test"
to = "probe@receiver.test"
interval = "1s"
regions = ["eu-west", "us-east"]
[check.smtp]
host = "127.0.0.1"
port = 2525
security = "none"
username = "{USERNAME}"
password = "{INLINE_PASSWORD}"
[check.imap]
host = "127.0.0.1"
security = "none"
username = "{USERNAME}"
password_env = "{PASSWORD_ENV}"
mailbox = "{MAILBOX}"

[incidents]
confirm_rounds = 1
round_slack = "1s"
"#
        ),
    )
}

/// A report of `corp` that failed at RCPT TO with the planted reply.
fn failed(probe_id: &str, round: u64) -> pb::ProbeResult {
    let report = json!({
        "probe_id": probe_id, "check": CHECK, "started_at": "2026-11-27T23:17:08.596634Z",
        "outcome": "failed", "rtt_ms": null, "delivery_ms": null,
        "steps": [
            {"name": "smtp.connect", "ms": 0.5, "ok": true, "start_ms": 0.0},
            {"name": "smtp.rcpt_to", "ms": 0.6, "ok": false, "code": 550, "detail": SERVER_REPLY, "start_ms": 0.5}
        ],
        "failure": {"step": "smtp.rcpt_to", "class": "permanent", "code": 550, "enhanced": "5.1.1", "message": format!("550 5.1.1 {SERVER_REPLY}")},
        "message_id": format!("<{probe_id}@sender.test>"), "queue_id": null,
    });
    pb::ProbeResult { probe_id: probe_id.into(), check_id: CHECK.into(), revision: 1, round, report_json: report.to_string(), ..Default::default() }
}

fn round_now() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    schedule::round_at(now, 1000, schedule::phase_ms(CHECK, 1000))
}

async fn eventually<T>(what: &str, mut found: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(t) = found().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} within {SOON:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A failed round in both regions, its outage incident's id.
async fn open_an_outage(c: &Coordinator) -> u64 {
    let k = round_now();
    for (agent, id) in [("eu-1", "eu-a"), ("us-1", "us-a")] {
        let mut a = c.agent(agent).await;
        let ack = Reports::open(&mut a).await.send(failed(id, k)).await;
        assert!(ack.stored, "{ack:?}");
    }
    eventually("an outage", async || {
        let list = expect_ok(c.api().get(&format!("/api/v1/incidents?check={CHECK}&state=active")).await);
        list["incidents"].as_array().unwrap().first().and_then(|i| i["id"].as_u64())
    })
    .await
}

/// One answer of the walk.
struct Answer {
    who: Who,
    request: String,
    status: u16,
    body: String,
}

#[tokio::test]
async fn every_route_answers_each_role_as_its_policy_says_and_leaks_nothing() {
    let c = planted();
    let admin = c.api();
    let incident = open_an_outage(&c).await;
    // An API check with a password file, one to delete, and a run to look at.
    let mut with_file = check_table("api-check", &["eu-west"], "1m");
    with_file["smtp"]["username"] = json!(USERNAME);
    with_file["smtp"]["password_file"] = json!(PASSWORD_FILE);
    expect_ok(admin.post("/api/v1/checks", &with_file).await);
    expect_ok(admin.post("/api/v1/checks", &check_table("doomed", &["eu-west"], "1m")).await);
    let run = expect_ok(admin.post(&format!("/api/v1/checks/{CHECK}/run"), &json!({})).await);
    let request_id = run["request_id"].as_str().unwrap().to_string();
    let mut changed = with_file.clone();
    changed["interval"] = json!("2m");

    use Method as M;
    let cases = vec![
        case(M::GET, "/healthz", "public", "/healthz", 200),
        case(M::GET, "/readyz", "public", "/readyz", 200),
        case(M::GET, "/api/v1/checks", "read", "/api/v1/checks", 200),
        case(M::POST, "/api/v1/checks", "admin", "/api/v1/checks", 201).with(check_table("fresh", &["eu-west"], "1m")),
        case(M::GET, "/api/v1/checks/{id}", "read", "/api/v1/checks/corp", 200),
        case(M::PUT, "/api/v1/checks/{id}", "admin", "/api/v1/checks/api-check", 200).with(changed),
        case(M::DELETE, "/api/v1/checks/{id}", "admin", "/api/v1/checks/doomed", 200),
        case(M::GET, "/api/v1/checks/{id}/results", "read", "/api/v1/checks/corp/results", 200),
        case(M::GET, "/api/v1/checks/{id}/latest", "read", "/api/v1/checks/corp/latest", 200),
        case(M::GET, "/api/v1/checks/{id}/aggregates", "read", "/api/v1/checks/corp/aggregates", 200),
        case(M::POST, "/api/v1/checks/{id}/run", "admin", "/api/v1/checks/corp/run", 202).with(json!({})),
        case(M::GET, "/api/v1/checks/{id}/baselines", "read", "/api/v1/checks/corp/baselines", 200),
        case(M::GET, "/api/v1/runs/{request_id}", "read", &format!("/api/v1/runs/{request_id}"), 200),
        case(M::GET, "/api/v1/results", "read", "/api/v1/results", 200),
        case(M::GET, "/api/v1/agents", "read", "/api/v1/agents", 200),
        case(M::POST, "/api/v1/agents", "admin", "/api/v1/agents", 201).with(json!({"name": "lab-1", "region": "lab"})),
        case(M::GET, "/api/v1/agents/{name}", "read", "/api/v1/agents/eu-1", 200),
        case(M::POST, "/api/v1/agents/{name}/rotate", "admin", "/api/v1/agents/lab-1/rotate", 200).with(json!({"grace": "1h"})),
        case(M::DELETE, "/api/v1/agents/{name}", "admin", "/api/v1/agents/lab-1", 200),
        case(M::POST, "/api/v1/agents/{name}/revoke", "admin", "/api/v1/agents/lab-1/revoke", 200).with(json!({})),
        case(M::GET, "/api/v1/tokens", "admin", "/api/v1/tokens", 200),
        case(M::POST, "/api/v1/tokens", "admin", "/api/v1/tokens", 201).with(json!({"name": "wall", "role": "read"})),
        case(M::DELETE, "/api/v1/tokens/{name}", "admin", "/api/v1/tokens/wall", 200),
        case(M::GET, "/api/v1/audit", "admin", "/api/v1/audit", 200),
        case(M::GET, "/api/v1/verdicts", "read", "/api/v1/verdicts", 200),
        case(M::GET, "/api/v1/incidents", "read", "/api/v1/incidents", 200),
        case(M::GET, "/api/v1/incidents/{id}", "read", &format!("/api/v1/incidents/{incident}"), 200),
        case(M::POST, "/api/v1/incidents/{id}/ack", "admin", &format!("/api/v1/incidents/{incident}/ack"), 200).with(json!({"by": "alice"})),
        case(M::POST, "/api/v1/incidents/{id}/notes", "admin", &format!("/api/v1/incidents/{incident}/notes"), 201).with(json!({"text": "We are on it."})),
        case(M::GET, "/api/v1/status", "read", "/api/v1/status", 200),
        case(M::GET, "/api/v1/alerts", "read", "/api/v1/alerts", 200),
        case(M::GET, "/api/v1/alerts/attempts", "read", "/api/v1/alerts/attempts", 200),
        case(M::GET, "/console/login", "public", "/console/login", 200),
        case(M::POST, "/console/login", "public", "/console/login", 400),
        case(M::POST, "/console/logout", "public", "/console/logout", 200),
        case(M::GET, "/console", "read", "/console", 200),
        case(M::GET, "/console/checks/{id}/rounds/{round}", "read", "/console/checks/corp/rounds/1", 200),
        case(M::GET, "/console/incidents", "read", "/console/incidents", 200),
        case(M::GET, "/console/incidents/{id}", "read", &format!("/console/incidents/{incident}"), 200),
        // With a bearer token (no session cookie) no CSRF token is needed; the API's ack above came first.
        case(M::POST, "/console/incidents/{id}/ack", "admin", &format!("/console/incidents/{incident}/ack"), 200),
        case(M::GET, "/console/agents", "read", "/console/agents", 200),
        case(M::GET, "/console/alerts", "read", "/console/alerts", 200),
    ];

    // The table is the router's own: a route added without a case here (or
    // with another role than the case says) fails this test.
    let mut served: Vec<(String, String, String)> = route_table()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string(), r.access.role_name().to_string()))
        .collect();
    let mut walked: Vec<(String, String, String)> =
        cases.iter().map(|c| (c.method.to_string(), c.route.to_string(), c.needs.to_string())).collect();
    served.sort();
    walked.sort();
    let missing: Vec<_> = served.iter().filter(|r| !walked.contains(r)).collect();
    let stale: Vec<_> = walked.iter().filter(|r| !served.contains(r)).collect();
    assert!(missing.is_empty(), "routes without a case in this test (add one with the role they need): {missing:?}");
    assert!(stale.is_empty(), "cases for routes the router does not serve with that role: {stale:?}");

    let clients = |who: Who| -> Client {
        match who {
            Who::Nobody => c.api_without_token(),
            Who::Agent => c.api_as(token("eu-1")),
            Who::Read => c.api_as(READ_TOKEN),
            Who::Admin => c.api(),
        }
    };
    let mut answers = Vec::new();
    let mut wrong = Vec::new();
    for case in &cases {
        for who in EVERYONE {
            let r = clients(who).send(case.method.clone(), &case.path, case.body.as_ref()).await.unwrap();
            let request = format!("{} {}", case.method, case.path);
            if r.status != case.expected(who) {
                wrong.push(format!("{request} as {who:?}: {} (expected {}): {}", r.status, case.expected(who), r.body));
            }
            answers.push(Answer { who, request, status: r.status, body: r.body.to_string() });
        }
    }
    assert!(wrong.is_empty(), "{} of {} answers were wrong:\n{}", wrong.len(), answers.len(), wrong.join("\n"));
    println!("route table: {} routes x {} callers = {} answers checked", cases.len(), EVERYONE.len(), answers.len());

    // The secret scan. Tokens made through the API are shown once, to the admin.
    let made = |request: &str| -> String {
        answers
            .iter()
            .find(|a| a.who == Who::Admin && a.request == request)
            .and_then(|a| serde_json::from_str::<Value>(&a.body).ok())
            .and_then(|b| b["token"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("a token from {request}"))
    };
    let lab_token = made("POST /api/v1/agents");
    let wall_token = made("POST /api/v1/tokens");
    let mut tokens = vec![ADMIN_TOKEN.to_string(), READ_TOKEN.into(), OPS_TOKEN.into(), lab_token.clone(), wall_token.clone()];
    tokens.extend(AGENTS.iter().map(|(_, _, t)| t.to_string()));
    let digests: Vec<String> = tokens.iter().map(|t| token_sha256(t)).collect();
    let credentials: Vec<&str> = [INLINE_PASSWORD, PASSWORD_ENV, PASSWORD_FILE]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
        .chain(digests.iter().map(String::as_str))
        .collect();
    let private: Vec<&str> = credentials.iter().copied().chain([USERNAME, MAILBOX, SERVER_REPLY, CHECK]).collect();
    let mut leaks = Vec::new();
    for a in &answers {
        let forbidden: Vec<&str> = match a.who {
            // Nothing about any check, mailbox or reply without a right.
            Who::Nobody | Who::Agent => private.clone(),
            Who::Read => credentials.clone(),
            // The admin sees references (to re-apply a check) and the new
            // agent's token once, never a password or another token.
            Who::Admin => credentials
                .iter()
                .copied()
                .filter(|m| ![PASSWORD_ENV, PASSWORD_FILE].contains(m))
                .filter(|m| !(*m == lab_token && a.request == "POST /api/v1/agents"))
                .filter(|m| !(*m == wall_token && a.request == "POST /api/v1/tokens"))
                .collect(),
        };
        for marker in forbidden {
            if a.body.contains(marker) {
                leaks.push(format!("{} as {:?} ({}) carries {marker:?}", a.request, a.who, a.status));
            }
        }
    }
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));

    // The scan is not vacuous: a read token sees what was measured, and the
    // admin the references, redacted for read.
    let read_text: String = answers.iter().filter(|a| a.who == Who::Read).map(|a| a.body.as_str()).collect();
    for seen in [USERNAME, MAILBOX, SERVER_REPLY] {
        assert!(read_text.contains(seen), "a read token sees {seen:?} (results, checks)");
    }
    let shown = |who: Who| -> Value {
        let a = answers.iter().find(|a| a.who == who && a.request == "GET /api/v1/checks/corp").unwrap();
        serde_json::from_str(&a.body).unwrap()
    };
    assert_eq!(shown(Who::Read)["check"]["imap"]["password_env"], "<redacted>");
    assert_eq!(shown(Who::Read)["check"]["smtp"]["password"], "<redacted>");
    assert_eq!(shown(Who::Admin)["check"]["imap"]["password_env"], PASSWORD_ENV);
    assert_eq!(shown(Who::Admin)["check"]["smtp"]["password"], "<redacted>");
    assert!(!c.log().contains(INLINE_PASSWORD) && !c.log().contains(READ_TOKEN) && !c.log().contains(&lab_token), "nor in the log");
}

#[tokio::test]
async fn every_change_is_in_the_audit_log_with_its_token_name_and_source() {
    let c = planted();
    let incident = open_an_outage(&c).await;
    let ops = c.api_as(OPS_TOKEN);
    let admin = c.api();
    expect_ok(admin.post("/api/v1/checks", &check_table("shop", &["eu-west"], "1m")).await);
    let mut changed = check_table("shop", &["eu-west"], "2m");
    expect_ok(admin.put("/api/v1/checks/shop", &changed).await);
    // An identical put changes nothing, so it is not recorded.
    expect_ok(admin.put("/api/v1/checks/shop", &changed).await);
    changed["interval"] = json!("3m");
    expect_ok(ops.put("/api/v1/checks/shop", &changed).await);
    expect_ok(ops.post(&format!("/api/v1/incidents/{incident}/ack"), &json!({"by": "alice"})).await);
    expect_ok(admin.post("/api/v1/agents", &json!({"name": "lab-1", "region": "lab"})).await);
    expect_ok(ops.post("/api/v1/agents/lab-1/revoke", &json!({})).await);
    expect_ok(admin.delete("/api/v1/checks/shop").await);
    // Refused attempts change nothing and are not entries.
    assert_eq!(c.api_as(READ_TOKEN).delete("/api/v1/checks/corp").await.unwrap().status, 403);
    assert_eq!(c.api_without_token().post("/api/v1/agents/eu-1/revoke", &json!({})).await.unwrap().status, 401);

    let log = expect_ok(admin.get("/api/v1/audit").await);
    let entries: Vec<(String, String, String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            assert_eq!(e["source"], "127.0.0.1", "{e}");
            assert!(e["at"].as_str().unwrap().ends_with('Z'), "{e}");
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("actor"), s("action"), s("object"), s("id"))
        })
        .collect();
    let want: Vec<(String, String, String, String)> = [
        ("admin", "created", "check", "shop"),
        ("admin", "changed", "check", "shop"),
        ("ops", "changed", "check", "shop"),
        ("ops", "acknowledged", "incident", incident.to_string().as_str()),
        ("admin", "created", "agent", "lab-1"),
        ("ops", "revoked", "agent", "lab-1"),
        ("admin", "deleted", "check", "shop"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(entries, want);
    assert_eq!(log["entries"][0]["role"], "admin");

    // Paging like the other lists, and filters.
    let first = expect_ok(admin.get("/api/v1/audit?limit=4").await);
    assert_eq!(first["entries"].as_array().unwrap().len(), 4);
    let next = first["next"].as_str().expect("a next page");
    let rest = expect_ok(admin.get(&format!("/api/v1/audit?limit=4&after={next}")).await);
    assert_eq!(rest["entries"].as_array().unwrap().len(), 3);
    assert!(rest["next"].is_null());
    let by_ops = expect_ok(admin.get("/api/v1/audit?actor=ops").await);
    assert_eq!(by_ops["entries"].as_array().unwrap().len(), 3);
    assert_eq!(c.api_as(READ_TOKEN).get("/api/v1/audit").await.unwrap().status, 403);

    // The log outlives a restart (it is in the database, not in memory).
    let mut c = c;
    c.kill();
    c.launch();
    assert_eq!(expect_ok(c.api().get("/api/v1/audit").await)["entries"].as_array().unwrap().len(), 7);
}

#[tokio::test]
async fn a_shown_check_applies_again_without_its_password_and_a_placeholder_is_no_password() {
    let c = Coordinator::start("allow_inline_passwords = true", "");
    let admin = c.api();
    let mut table = check_table("inline", &["eu-west"], "1m");
    table["smtp"]["username"] = json!(USERNAME);
    table["smtp"]["password"] = json!(INLINE_PASSWORD);
    expect_ok(admin.post("/api/v1/checks", &table).await);
    let shown = expect_ok(admin.get("/api/v1/checks/inline").await)["check"].clone();
    assert_eq!(shown["smtp"]["password"], "<redacted>");
    let again = expect_ok(admin.put("/api/v1/checks/inline", &shown).await);
    assert_eq!(again["change"], "unchanged", "the placeholder kept the stored password: {again}");
    // The agent still gets the real one.
    let mut eu1 = c.agent("eu-1").await;
    let assignment = Watch::open(&mut eu1, &[]).await.next().await.upserted();
    assert!(assignment.check_json.contains(INLINE_PASSWORD), "the agent needs it to log in");

    let mut fresh = shown.clone();
    fresh["name"] = json!("fresh");
    let refused = admin.put("/api/v1/checks/fresh", &fresh).await.unwrap();
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(refused.error_text().contains("body.smtp.password"), "{}", refused.error_text());
}

#[tokio::test]
async fn a_token_made_through_the_api_works_as_its_role_until_revoked_across_restarts() {
    let mut c = Coordinator::start("", "");
    let made = expect_ok(c.api().post("/api/v1/tokens", &json!({"name": "wall", "role": "read"})).await);
    let wall = made["token"].as_str().unwrap().to_string();
    assert_eq!((&made["name"], &made["role"], &made["created_by"]), (&json!("wall"), &json!("read"), &json!("admin")));
    assert_eq!(c.api_as(&wall).get("/api/v1/checks").await.unwrap().status, 200);
    assert_eq!(c.api_as(&wall).post("/api/v1/checks", &check_table("x", &["eu-west"], "1m")).await.unwrap().status, 403);
    // Names are unique, the config file's are its own, and roles are two.
    assert_eq!(c.api().post("/api/v1/tokens", &json!({"name": "wall", "role": "read"})).await.unwrap().status, 409);
    assert_eq!(c.api().post("/api/v1/tokens", &json!({"name": "grafana", "role": "read"})).await.unwrap().status, 409);
    assert_eq!(c.api().post("/api/v1/tokens", &json!({"name": "x", "role": "root"})).await.unwrap().status, 422);
    assert_eq!(c.api().delete("/api/v1/tokens/admin").await.unwrap().status, 409);
    let listed = expect_ok(c.api().get("/api/v1/tokens").await);
    let names: Vec<(&str, &str, &str)> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["role"].as_str().unwrap(), t["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("admin", "admin", "config"), ("grafana", "read", "config"), ("wall", "read", "api")]);
    assert!(!listed.to_string().contains(&token_sha256(&wall)), "never a digest");

    c.kill();
    c.launch();
    assert_eq!(c.api_as(&wall).get("/api/v1/checks").await.unwrap().status, 200, "kept across a restart");
    expect_ok(c.api().delete("/api/v1/tokens/wall").await);
    assert_eq!(c.api_as(&wall).get("/api/v1/checks").await.unwrap().status, 401, "revoked at once");
    c.kill();
    c.launch();
    assert_eq!(c.api_as(&wall).get("/api/v1/checks").await.unwrap().status, 401, "and after a restart");
    // A revoked name may be given a new token.
    let again = expect_ok(c.api().post("/api/v1/tokens", &json!({"name": "wall", "role": "admin"})).await);
    assert_eq!(c.api_as(again["token"].as_str().unwrap()).get("/api/v1/audit").await.unwrap().status, 200);
    let log = expect_ok(c.api().get("/api/v1/audit?object=token").await);
    let actions: Vec<&str> = log["entries"].as_array().unwrap().iter().rev().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["created", "revoked", "created"]);
    assert!(!c.log().contains(&wall));
}

#[tokio::test]
async fn a_reload_applies_token_changes() {
    let c = Coordinator::start("", "");
    let read_file = c.dir.path().join("grafana.token");
    assert_eq!(c.api_as(READ_TOKEN).get("/api/v1/checks").await.unwrap().status, 200);
    let rotated = "rotated-read-token-0123456789abcdef";
    std::fs::write(&read_file, rotated).unwrap();
    c.signal("HUP");
    let deadline = Instant::now() + SOON;
    while c.api_as(rotated).get("/api/v1/checks").await.unwrap().status != 200 {
        assert!(Instant::now() < deadline, "the rotated token works after SIGHUP:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.api_as(READ_TOKEN).get("/api/v1/checks").await.unwrap().status, 401, "the old one is gone");
    assert!(!c.log().contains(rotated));
}
