//! The SRE console (`/console`) on a real coordinator fed by three real
//! agents probing the real mail stack through their own proxies: signing
//! in with a token, the overview, a round's waterfalls (SMTP and IMAP
//! lanes, baseline bands, diagnosis), a regional incident (r1's path cut)
//! acknowledged through the form with its CSRF token, while a forged post
//! and a read-only session are refused; then a real Chromium signs in
//! through the form, axe-core checks every page, and the keyboard walks a
//! list's pages. On both backends: a webhook that fails once and then
//! takes the alert shows both attempts in the delivery log, and the token
//! in its URL appears nowhere.
//!
//! `cargo test -p mailloop-tests --test console -- --nocapture`

use mailloop_tests::browser::{browser_dir, require_browser};
use mailloop_tests::backend::Backend;
use mailloop_tests::cluster::{ADMIN_TOKEN, wait_until};
use mailloop_tests::regions::{RegionCluster, Settings};
use mailloop_tests::{Check, on_both_backends, stack_health};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One answer: status, head (lower-cased header lines), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
            .collect()
    }
}

/// One HTTP/1.1 request on its own connection; `auth` is a header line
/// (`Cookie: ...` or `Authorization: ...`), `form` a urlencoded body.
fn send(addr: SocketAddr, method: &str, path: &str, auth: &str, form: Option<&str>) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = form.unwrap_or("");
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}\r\n")
    };
    let kind = if form.is_some() {
        "Content-Type: application/x-www-form-urlencoded\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}{kind}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&raw[split + 4..]).to_string(),
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// Signs in with `token`; the `Cookie:` line of the session.
fn sign_in(addr: SocketAddr, token: &str) -> String {
    let a = send(
        addr,
        "POST",
        "/console/login",
        "",
        Some(&format!("token={token}")),
    );
    assert_eq!(a.status, 303, "{a:?}");
    assert_eq!(a.header("location"), ["/console"]);
    let set = a.header("set-cookie");
    assert_eq!(set.len(), 1, "{a:?}");
    let cookie = &set[0];
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP: no Secure attribute: {cookie}"
    );
    assert!(
        !cookie.contains(token),
        "the cookie never carries the token: {cookie}"
    );
    format!("Cookie: {}", cookie.split(';').next().unwrap())
}

/// The value of the first `name="csrf"` hidden input.
fn csrf_of(html: &str) -> String {
    let at =
        html.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

fn page(addr: SocketAddr, path: &str, cookie: &str) -> Answer {
    let a = send(addr, "GET", path, cookie, None);
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    let csp = a.header("content-security-policy").join(" ");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "no script allowed: {csp}"
    );
    assert_eq!(a.header("x-content-type-options"), ["nosniff"]);
    assert_eq!(a.header("cache-control"), ["no-store"]);
    assert!(!a.body.contains("<script"), "no JavaScript: {path}");
    a
}

fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null),
    )
}

#[test]
fn the_console_shows_waterfalls_and_acknowledges_an_incident_only_with_its_csrf_token() {
    require_browser();
    eprintln!("{}", stack_health());
    let mut settings = Settings::new();
    settings.baselines = vec!["min_samples = 3".into()];
    let c = RegionCluster::start(&Check::new("sre-wf"), &settings);
    let addr = c.coordinator.http;
    let check = c.check_id.clone();

    // Nobody signed in: the sign-in form, with 401; a wrong token is refused.
    let refused = send(addr, "GET", "/console", "", None);
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(
        refused.body.contains("action=\"/console/login\""),
        "{}",
        refused.body
    );
    assert!(
        !refused.body.contains(&check),
        "nothing about checks before signing in"
    );
    let wrong = send(
        addr,
        "POST",
        "/console/login",
        "",
        Some("token=not-a-token-0123456789"),
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_empty());
    assert_eq!(
        send(
            addr,
            "GET",
            "/console/agents",
            "Cookie: mailloop_console=forged",
            None
        )
        .status,
        401
    );

    let admin = sign_in(addr, ADMIN_TOKEN);

    // Rounds with every region delivered, and learned baselines (3 samples).
    wait_until(
        Duration::from_secs(120),
        "baselines learned in every region",
        || {
            let (_, b) = api(
                addr,
                "GET",
                &format!("/api/v1/checks/{check}/baselines"),
                None,
            );
            let learned = b["baselines"]
                .as_array()?
                .iter()
                .filter(|b| b["threshold_ms"].is_number())
                .count();
            (learned >= 3 * 4).then_some(())
        },
    );
    // The newest round may still be missing a region's report: wait for
    // one that has all three.
    let round = wait_until(
        Duration::from_secs(120),
        "a latest round with a report from every region",
        || {
            let (_, l) = api(addr, "GET", &format!("/api/v1/checks/{check}/latest"), None);
            let regions = l["regions"].as_array()?;
            let all = regions.len() == 3
                && regions
                    .iter()
                    .all(|r| !r["result"].is_null() && r["result"]["round"] == l["round"]);
            all.then(|| l["round"].as_u64()).flatten()
        },
    );

    let overview = page(addr, "/console", &admin);
    for seen in [
        check.as_str(),
        "r1",
        "r2",
        "r3",
        &format!("/console/checks/{check}/rounds/"),
    ] {
        assert!(overview.body.contains(seen), "the overview shows {seen:?}");
    }

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();
    let round_path = format!("/console/checks/{check}/rounds/{round}");
    let waterfall = page(addr, &round_path, &admin);
    std::fs::write(shots.join("round.html"), &waterfall.body).unwrap();
    let w = &waterfall.body;
    assert_eq!(
        w.matches("<svg class=\"waterfall\"").count(),
        3,
        "one waterfall per region"
    );
    for lane in ["data-lane=\"smtp\"", "data-lane=\"imap\""] {
        assert!(
            w.matches(lane).count() >= 3 * 2,
            "steps in the {lane} lane of each waterfall"
        );
    }
    assert!(w.contains("data-step=\"smtp.starttls\"") && w.contains("data-step=\"imap.login\""));
    assert!(
        w.matches("class=\"band\"").count() >= 3,
        "baseline bands drawn"
    );
    for diagnosis in [
        "Authentication-Results",
        "Alignment",
        "Received hops",
        "Days left",
    ] {
        assert!(w.contains(diagnosis), "the diagnosis shows {diagnosis}");
    }

    // r1's path is cut: a regional incident with r1's evidence. Its
    // tickets receiver refuses the first try, so the delivery log the
    // browser checks holds a failed attempt and a delivered one.
    c.tickets.refuse(true);
    c.region("r1").cut();
    let incident = wait_until(
        Duration::from_secs(120),
        "a regional incident for r1",
        || c.incidents("state=active&kind=regional").into_iter().next(),
    );
    let id = incident["id"].as_u64().unwrap();
    wait_until(Duration::from_secs(120), "the tickets receiver refused the opened alert", || {
        c.tickets.hits().into_iter().find(|h| !h.accepted)
    });
    c.tickets.refuse(false);
    wait_until(Duration::from_secs(120), "the opened alert's retry in the delivery log", || {
        let log = page(addr, "/console/alerts", &admin).body;
        (log.contains("data-result=\"retry\"") && log.contains("data-result=\"delivered\"")).then_some(())
    });
    let after = page(addr, "/console", &admin);
    assert!(
        after.body.contains("<code>smtp.connect</code> connect"),
        "r1's last failure, with its step and class, on the overview: {}",
        after.body
    );
    assert!(
        after.body.contains(&format!("/console/incidents/{id}")),
        "the active incident is listed"
    );
    let incident_path = format!("/console/incidents/{id}");
    let shown = page(addr, &incident_path, &admin);
    assert!(
        shown.body.contains(">Acknowledge</button>"),
        "{}",
        shown.body
    );
    assert!(
        shown.body.contains("class=\"state s-failed\""),
        "r1's evidence: {}",
        shown.body
    );
    let csrf = csrf_of(&shown.body);
    assert!(csrf.len() >= 40);

    // The browser: sign-in form, every page, axe, screenshots.
    let base = format!("http://{addr}");
    // Lists in their paged states too: the agents a page of one (three
    // pages), the incidents filtered.
    let paths = [
        "/console",
        round_path.as_str(),
        incident_path.as_str(),
        "/console/agents",
        "/console/alerts",
        "/console/incidents?state=active",
        "/console/agents?n=1&after=r1%2Cagent-r1",
    ];
    let out = std::process::Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .args([base.as_str(), ADMIN_TOKEN, shots.to_str().unwrap()])
        .args(paths)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(seen["login"]["refused"], 401);
    assert_eq!(seen["login"]["landed"], "/console", "the form signs in");
    assert_eq!(
        seen["login"]["cookies"],
        json!([{"name": "mailloop_console", "httpOnly": true, "sameSite": "Strict", "path": "/console", "value_has_token": false}])
    );
    assert_eq!(
        seen["requests"],
        json!([base]),
        "nothing but the console is requested"
    );
    let pages = seen["pages"].as_array().unwrap();
    assert_eq!(pages.len(), paths.len() * 2);
    let mut serious = Vec::new();
    for p in pages {
        assert_eq!(p["status"], 200, "{p}");
        assert_eq!(p["scripts"], 0, "{p}");
        for v in p["violations"].as_array().unwrap() {
            eprintln!(
                "axe {} ({}): {} {}",
                p["path"], p["colorScheme"], v["impact"], v["help"]
            );
            if v["impact"] == "serious" || v["impact"] == "critical" {
                serious.push(format!("{} ({}): {v}", p["path"], p["colorScheme"]));
            }
        }
        eprintln!(
            "FIGURE console page {} ({}): {} bytes of HTML",
            p["path"], p["colorScheme"], p["bytes"]
        );
    }
    assert!(
        serious.is_empty(),
        "serious or critical axe violations:\n{}",
        serious.join("\n")
    );
    let round_page = pages
        .iter()
        .find(|p| p["path"] == round_path.as_str())
        .unwrap();
    for w in round_page["waterfalls"].as_array().unwrap() {
        assert!(
            w["smtp"].as_u64() > Some(2) && w["imap"].as_u64() > Some(2),
            "both lanes drawn: {w}"
        );
        assert!(
            w["bands"].as_u64() > Some(0) && w["labels"].as_u64() > Some(5),
            "bands and labels drawn: {w}"
        );
        assert!(w["width"].as_f64() > Some(300.0), "{w}");
    }
    assert_ne!(
        pages[0]["background"],
        pages[paths.len()]["background"],
        "the dark scheme applies"
    );
    assert!(
        shots.join("console-1-light.png").exists() && shots.join("console-1-dark.png").exists()
    );
    eprintln!("screenshots in {}", shots.display());
    // `make screenshots` keeps three for README (docs/screenshots): the
    // overview, r1's round waterfall, the incident (dark).
    if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for (from, to) in [
            ("console-0-light.png", "console-overview.png"),
            ("console-1-light.png", "console-waterfall.png"),
            ("console-2-dark.png", "console-incident.png"),
        ] {
            std::fs::copy(shots.join(from), std::path::Path::new(&dir).join(to)).unwrap();
        }
    }
    // The agents a page at a time, by keyboard alone: Tab reaches "Next"
    // (a plain link), Enter follows it, and "Previous" leads back.
    let walk = &seen["paging"];
    assert_eq!(walk["start"], "/console/agents?n=1", "{walk}");
    assert_eq!(walk["rows"], json!([1, 1, 1]), "one agent per page: {walk}");
    assert_eq!(
        walk["agents"],
        json!(["agent-r1", "agent-r2", "agent-r1"]),
        "next, then back: {walk}"
    );
    assert_eq!(walk["next"], "/console/agents?n=1&after=r1%2Cagent-r1", "{walk}");
    assert_eq!(walk["back"], "/console/agents?n=1&before=r2%2Cagent-r2", "{walk}");
    assert!(walk["tabs"].as_u64().unwrap() > 0, "{walk}");

    // A forged post (no CSRF token, or another one) is refused and changes nothing.
    let ack_path = format!("{incident_path}/ack");
    assert_eq!(send(addr, "POST", &ack_path, &admin, Some("")).status, 403);
    assert_eq!(
        send(addr, "POST", &ack_path, &admin, Some("csrf=forged")).status,
        403
    );
    let (_, still) = api(addr, "GET", &format!("/api/v1/incidents/{id}"), None);
    assert_eq!(still["state"], "open", "{still}");

    // A read token signs in and sees the incident, but cannot acknowledge.
    let (status, made) = api(
        addr,
        "POST",
        "/api/v1/tokens",
        Some(&json!({"name": "wall", "role": "read"})),
    );
    assert_eq!(status, 201, "{made}");
    let read_token = made["token"].as_str().unwrap().to_string();
    let reader = sign_in(addr, &read_token);
    let read_view = page(addr, &incident_path, &reader);
    assert!(!read_view.body.contains(">Acknowledge</button>"));
    assert!(read_view.body.contains("read role"));
    let read_csrf = csrf_of(&read_view.body);
    assert_eq!(
        send(
            addr,
            "POST",
            &ack_path,
            &reader,
            Some(&format!("csrf={read_csrf}"))
        )
        .status,
        403
    );
    assert_eq!(
        send(addr, "POST", &ack_path, &bearer(&read_token), Some("")).status,
        403
    );
    // The alert channels' errors are the admin's only.
    assert!(
        page(addr, "/console/alerts", &reader)
            .body
            .contains("shown to the admin role only")
    );

    // The admin's form, with the session's token: acknowledged and audited.
    let acked = send(
        addr,
        "POST",
        &ack_path,
        &admin,
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(acked.status, 200, "{acked:?}");
    assert!(acked.body.contains("Acknowledged."));
    let (_, now) = api(addr, "GET", &format!("/api/v1/incidents/{id}"), None);
    assert_eq!(now["state"], "acknowledged", "{now}");
    assert_eq!(now["acknowledged_by"], "admin", "{now}");
    let (_, audit) = api(addr, "GET", "/api/v1/audit", None);
    let entries = audit["entries"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| audit.as_array().cloned().unwrap_or_default());
    assert!(
        entries.iter().any(|e| e["action"] == "acknowledged"
            && e["object"] == "incident"
            && e["id"] == id.to_string()
            && e["actor"] == "admin"),
        "{audit:#}"
    );
    // A second click changes nothing and is not audited again.
    let again = send(addr, "POST", &ack_path, &admin, Some(&format!("csrf={csrf}")));
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.body.contains("It was already acknowledged."));
    let acks = |audit: &serde_json::Value| {
        audit["entries"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| audit.as_array().cloned().unwrap_or_default())
            .iter()
            .filter(|e| e["action"] == "acknowledged" && e["id"] == id.to_string())
            .count()
    };
    let (_, audit) = api(addr, "GET", "/api/v1/audit", None);
    assert_eq!(acks(&audit), 1, "{audit:#}");
    wait_until(
        Duration::from_secs(30),
        "the acknowledged event on the tickets channel",
        || {
            c.tickets
                .hits()
                .into_iter()
                .find(|h| h.body["event"] == "acknowledged")
        },
    );

    // Agents and alert delivery.
    let agents = page(addr, "/console/agents", &admin);
    for a in ["r1", "r2", "r3", "Spooled reports"] {
        assert!(agents.body.contains(a), "{a}");
    }
    let alerts = page(addr, "/console/alerts", &admin);
    assert!(
        alerts.body.contains("tickets")
            && alerts.body.contains(&format!("/console/incidents/{id}"))
    );

    // Nothing secret on any page.
    for (what, body) in [
        ("overview", &overview.body),
        ("round", w),
        ("incident", &shown.body),
        ("agents", &agents.body),
        ("alerts", &alerts.body),
    ] {
        for secret in [ADMIN_TOKEN, read_token.as_str()] {
            assert!(!body.contains(secret), "{what} carries a token");
        }
        eprintln!("FIGURE console {what}: {} bytes", body.len());
    }

    // Signing out ends the session; revoking a token ends its sessions.
    let admin_csrf = csrf_of(&overview.body);
    assert_eq!(
        send(
            addr,
            "POST",
            "/console/logout",
            &admin,
            Some(&format!("csrf={admin_csrf}"))
        )
        .status,
        200
    );
    assert_eq!(send(addr, "GET", "/console", &admin, None).status, 401);
    assert_eq!(send(addr, "GET", "/console", &reader, None).status, 200);
    assert_eq!(api(addr, "DELETE", "/api/v1/tokens/wall", None).0, 200);
    assert_eq!(
        send(addr, "GET", "/console", &reader, None).status,
        401,
        "a revoked token's session ends"
    );
}

/// Sessions live in the database (only the SHA-256 of the cookie): a
/// coordinator restarted on its data keeps everyone signed in, with the
/// same CSRF token; revoking the token ends its sessions, and a new token
/// that reuses the revoked one's name does not bring them back. Needs no
/// mail stack and no browser.
#[test]
fn a_session_survives_a_restart_and_ends_with_its_token() {
    use mailloop_tests::cluster::Coordinator;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
    let config = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
         admin_token_file = {:?}\ntest_mode = true\nshutdown_grace = \"5s\"\n",
        dir.path().join("data"),
        dir.path().join("admin.token"),
    );
    let mut c = Coordinator::start_with_config(dir.path(), &config);
    let addr = c.http;
    let (status, made) = api(addr, "POST", "/api/v1/tokens", Some(&json!({"name": "oncall", "role": "admin"})));
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    let cookie = sign_in(addr, &token);
    let csrf = csrf_of(&page(addr, "/console", &cookie).body);

    c.stop();
    c.restart_as_written();
    let after = page(addr, "/console", &cookie);
    assert_eq!(csrf_of(&after.body), csrf, "the same session after a restart");
    let db = rusqlite::Connection::open(dir.path().join("data/coordinator.db")).unwrap();
    let stored: String = db
        .query_row("SELECT group_concat(id_sha256 || token_name || token_sha256 || role, ' ') FROM console_sessions", [], |r| r.get(0))
        .unwrap();
    let raw = cookie.split('=').nth(1).unwrap();
    assert!(!stored.contains(raw) && !stored.contains(&csrf) && !stored.contains(&token), "only hashes are stored: {stored}");

    assert_eq!(api(addr, "DELETE", "/api/v1/tokens/oncall", None).0, 200);
    assert_eq!(send(addr, "GET", "/console", &cookie, None).status, 401, "a revoked token's session ends");
    let (status, made) = api(addr, "POST", "/api/v1/tokens", Some(&json!({"name": "oncall", "role": "admin"})));
    assert_eq!(status, 201, "{made}");
    assert_eq!(
        send(addr, "GET", "/console", &cookie, None).status,
        401,
        "a new token of the same name does not revive the old session"
    );
    c.stop();
}

on_both_backends!(every_delivery_attempt_is_logged_and_no_secret_is_shown);

/// The `tickets` channel's URL carries this, as Slack's and many webhook
/// URLs carry their token; its receiver quotes the path back when it refuses.
const HOOK_TOKEN: &str = "T0K3N-hook-secret-9f8e7d6c5b4a";

/// The rows of the delivery log on a console page: (attempt, result, the row's HTML).
fn log_rows(html: &str) -> Vec<(u32, String, String)> {
    html.split("<tr data-attempt=\"")
        .skip(1)
        .map(|row| {
            let row = row.split("</tr>").next().unwrap();
            let attempt = row.split('"').next().unwrap().parse().unwrap();
            let result = row.split("data-result=\"").nth(1).unwrap().split('"').next().unwrap();
            (attempt, result.to_string(), row.to_string())
        })
        .collect()
}

/// A webhook that refuses the first delivery (503, quoting its URL's path
/// with the token) and takes the next: the console's delivery log shows
/// both attempts of the incident's `opened` alert, the first failed with
/// its class and status, the last delivered; the token is on no page, in
/// no API answer and in no line of the coordinator's log. No browser.
fn every_delivery_attempt_is_logged_and_no_secret_is_shown(backend: Backend) {
    eprintln!("{}", stack_health());
    let mut settings = Settings::new();
    settings.storage_url = backend.storage_url("delivery_log");
    settings.tickets_path = format!("/hooks/{HOOK_TOKEN}");
    let c = RegionCluster::start(&Check::new(&backend.name("sre-log")), &settings);
    let addr = c.coordinator.http;
    c.tickets.refuse(true);
    wait_until(Duration::from_secs(120), "a round with every region delivered", || {
        let (_, l) = api(addr, "GET", &format!("/api/v1/checks/{}/latest", c.check_id), None);
        let regions = l["regions"].as_array()?;
        (regions.len() == 3 && regions.iter().all(|r| r["result"]["outcome"] == "ok")).then_some(())
    });
    c.region("r1").cut();
    let incident = wait_until(Duration::from_secs(120), "a regional incident for r1", || {
        c.incidents("state=active&kind=regional").into_iter().next()
    });
    let id = incident["id"].as_u64().unwrap();
    wait_until(Duration::from_secs(120), "the tickets receiver refused the opened alert", || {
        c.tickets.hits().into_iter().find(|h| !h.accepted && h.body["event"] == "opened")
    });
    c.tickets.refuse(false);
    wait_until(Duration::from_secs(120), "the opened alert delivered on a retry", || {
        c.tickets.delivered().into_iter().find(|h| h.body["event"] == "opened")
    });

    // The log, narrowed to the channel and the incident (the filter holds).
    let admin = bearer(ADMIN_TOKEN);
    let log_path = format!("/console/alerts?channel=tickets&incident={id}");
    let rows = wait_until(Duration::from_secs(60), "the delivered attempt in the delivery log", || {
        let rows = log_rows(&page(addr, &log_path, &admin).body);
        rows.iter().any(|(_, result, _)| result == "delivered").then_some(rows)
    });
    let opened: Vec<_> = rows.iter().filter(|(_, _, row)| row.contains("<td>opened</td>")).collect();
    assert!(opened.len() >= 2, "at least the refused attempt and the delivered one: {rows:#?}");
    eprintln!("the opened alert's attempts, newest first: {:?}", opened.iter().map(|(a, r, _)| (a, r)).collect::<Vec<_>>());
    // Newest first: the delivered one on top, the first (refused) at the bottom.
    let (last, first) = (opened[0], opened[opened.len() - 1]);
    assert_eq!((last.0 as usize, last.1.as_str()), (opened.len(), "delivered"), "{rows:#?}");
    assert_eq!((first.0, first.1.as_str()), (1, "retry"), "{rows:#?}");
    for (attempt, result, row) in &opened[1..] {
        assert_eq!(result, "retry", "attempt {attempt}: every try before the last failed: {row}");
        assert!(row.contains("<code>http_status</code>") && row.contains(">503<"), "class and status: {row}");
        assert!(row.contains("[redacted]"), "the quoted path is scrubbed from the error text: {row}");
    }
    assert!(last.2.contains(&format!("/console/incidents/{id}")) && last.2.contains("tickets"), "{}", last.2);
    assert!(rows.iter().all(|(_, _, row)| row.contains("tickets")), "only the channel asked for");

    // The same log through the API (paged by `next`); a read token sees
    // the class and code, not the error text.
    let api_path = format!("/api/v1/alerts/attempts?channel=tickets&incident={id}");
    let (status, log) = api(addr, "GET", &api_path, None);
    assert_eq!(status, 200, "{log}");
    let first = log["attempts"].as_array().unwrap().iter().rev().find(|a| a["event"] == "opened").unwrap().clone();
    assert_eq!(
        [&first["attempt"], &first["result"], &first["class"], &first["code"], &first["type"]],
        [&json!(1), &json!("retry"), &json!("http_status"), &json!(503), &json!("webhook")],
        "{first}"
    );
    assert!(first["delivery_error"].as_str().unwrap().contains("[redacted]"), "{first}");
    let (_, one) = api(addr, "GET", &format!("{api_path}&limit=1"), None);
    let (_, rest) = api(addr, "GET", &format!("{api_path}&limit=100&before={}", one["next"]), None);
    assert_eq!(
        one["attempts"].as_array().unwrap().len() + rest["attempts"].as_array().unwrap().len(),
        log["attempts"].as_array().unwrap().len(),
        "pages of one and the rest: {one} {rest}"
    );
    let (status, made) = api(addr, "POST", "/api/v1/tokens", Some(&json!({"name": "wall", "role": "read"})));
    assert_eq!(status, 201, "{made}");
    let as_reader = send(addr, "GET", &api_path, &bearer(made["token"].as_str().unwrap()), None);
    let read_log: Value = serde_json::from_str(&as_reader.body).unwrap();
    let read_first = read_log["attempts"].as_array().unwrap().iter().rev().find(|a| a["event"] == "opened").unwrap().clone();
    assert_eq!((&read_first["class"], &read_first["code"]), (&json!("http_status"), &json!(503)), "{read_first}");
    assert_eq!(read_first["delivery_error"], "<redacted>", "{read_first}");

    // No page, API answer or log line carries the token.
    let mut seen = vec![
        ("api log", log.to_string()),
        ("log", page(addr, &log_path, &admin).body),
        ("alerts", page(addr, "/console/alerts", &admin).body),
        ("incident", page(addr, &format!("/console/incidents/{id}"), &admin).body),
        ("api alerts", api(addr, "GET", "/api/v1/alerts", None).1.to_string()),
    ];
    seen.push(("coordinator log", std::fs::read_to_string(c.coordinator.log_path()).unwrap()));
    for (what, text) in &seen {
        assert!(!text.contains(HOOK_TOKEN), "{what} carries the webhook's token");
    }
    assert!(
        seen[1].1.contains("[redacted]"),
        "the channel's last error is scrubbed too, not dropped"
    );
}
