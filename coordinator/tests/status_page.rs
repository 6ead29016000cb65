//! The public status page of a real coordinator process, over stored
//! verdicts and incidents: states in words, uptime arithmetic, what a
//! private check leaks (nothing), escaping, the JSON summary and badges.
//!
//! Verdicts are written into the coordinator's database before it starts
//! (with round numbers far ahead of the clock, so the judge has no round
//! of its own to decide while the test reads the page).

mod support;
use mailloop_coordinator::judge::{
    Incident, IncidentChange, IncidentKind, IncidentState, RegionEvidence, RegionState, Severity,
    Verdict, VerdictKind,
};
use mailloop_coordinator::storage::{ReportRow, Storage};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use support::*;

const DAY: i64 = 86_400_000;
/// Distinctive strings of the private check and of failure replies: none
/// may appear on any public answer.
const SECRETS: [&str; 7] = [
    "hidden-check",
    "secret-smtp.internal.test",
    "secret-imap.internal.test",
    "hidden-user@internal.test",
    "hidden-mailbox@internal.test",
    "REPLY-MARKER-4711",
    "JUDGE-SUMMARY-MARKER",
];

fn public_check(name: &str, display: &str) -> String {
    check_toml(name, &["eu-west", "us-east"], "1h").replacen(
        "interval = \"1h\"",
        &format!(
            "interval = \"1h\"\npublic = true\ndisplay_name = {}",
            toml_str(display)
        ),
        1,
    )
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn private_check() -> String {
    r#"
[[check]]
name = "hidden-check"
from = "probe@internal.test"
to = "hidden-mailbox@internal.test"
interval = "1h"
regions = ["eu-west"]
[check.smtp]
host = "secret-smtp.internal.test"
port = 2525
security = "tls"
[check.imap]
host = "secret-imap.internal.test"
security = "tls"
username = "hidden-user@internal.test"
password_env = "IMAP_PASS"
"#
    .to_string()
}

fn evidence(region: &str, state: RegionState) -> RegionEvidence {
    let failed = matches!(state, RegionState::Failed);
    let mut e: RegionEvidence = serde_json::from_value(json!({
        "region": region, "state": "ok", "probe_id": "p", "agent": "eu-1", "outcome": "ok",
        "step": if failed { Some("smtp.rcpt_to") } else { None },
        "class": if failed { Some("permanent") } else { None },
        "code": if failed { Some(550) } else { None },
        "enhanced": null,
        "text": if failed { Some("550 hidden-mailbox@internal.test REPLY-MARKER-4711") } else { None },
        "slow": [], "reasons": [], "rtt_ms": 30.0,
        "detail": if failed { Some("secret-smtp.internal.test said REPLY-MARKER-4711") } else { None },
    }))
    .unwrap();
    e.state = state;
    e
}

/// Rounds far ahead of the clock's round, in the order they are stored.
struct Seeder {
    storage: Storage,
    round: u64,
}

impl Seeder {
    async fn verdict(
        &mut self,
        check: &str,
        start_ms: i64,
        kind: VerdictKind,
        regions: Vec<RegionEvidence>,
    ) {
        self.verdict_with(check, start_ms, kind, regions, Vec::new())
            .await;
    }

    async fn verdict_with(
        &mut self,
        check: &str,
        start_ms: i64,
        kind: VerdictKind,
        regions: Vec<RegionEvidence>,
        changes: Vec<IncidentChange>,
    ) {
        self.round += 1;
        let v = Verdict {
            check_id: check.into(),
            round: self.round,
            round_start_ms: start_ms,
            decided_at_ms: start_ms + 1000,
            verdict: kind,
            quorum: 1,
            regions,
            note: "JUDGE-SUMMARY-MARKER secret-smtp.internal.test".into(),
        };
        assert!(self.storage.store_round(v, changes).await.unwrap().stored);
    }
}

fn incident(
    check: &str,
    kind: IncidentKind,
    regions: &[&str],
    opened_ms: i64,
    round: u64,
) -> IncidentChange {
    IncidentChange::Open(Incident {
        id: 0,
        check_id: check.into(),
        kind,
        severity: Severity::Critical,
        state: IncidentState::Open,
        key: String::new(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        step: Some("smtp.rcpt_to".into()),
        class: Some("permanent".into()),
        opened_at_ms: opened_ms,
        first_round: round,
        last_round: round,
        acknowledged_at_ms: None,
        acknowledged_by: None,
        resolved_at_ms: None,
        summary: "JUDGE-SUMMARY-MARKER: 550 REPLY-MARKER-4711 from secret-smtp.internal.test"
            .into(),
        timeline: Vec::new(),
    })
}

/// One plain HTTP/1.1 GET: (status, head with lowercased names, body).
fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Header names lowercased, values as sent.
    let head = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_lowercase()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, head, body.to_string())
}

fn assert_no_secrets(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} leaks {s:?}:\n{text}");
    }
}

/// A coordinator with six public checks in the states the page must
/// tell apart, one private check, and history for the uptime figures.
async fn seeded() -> Coordinator {
    let mut config = private_check();
    for (name, display) in [
        ("web-up", "Webmail"),
        ("web-degraded", "Slow Mail"),
        ("web-down", "Broken Mail"),
        ("web-transit", "Far Mail"),
        ("web-nodata", "Quiet Mail"),
        ("web-script", "<script>alert(1)</script>"),
    ] {
        config.push_str(&public_check(name, display));
    }
    let mut c = Coordinator::start("", &config);
    c.kill();
    let now = mailloop_coordinator::clock::now_ms();
    let today = now - now.rem_euclid(DAY);
    let mut s = Seeder {
        storage: Storage::open(&data_dir(&c)).unwrap(),
        round: 1_000_000_000,
    };
    use RegionState::{Failed, Ok as Good};
    use VerdictKind::*;
    let ok = || vec![evidence("eu-west", Good), evidence("us-east", Good)];
    // web-degraded: an outage 40 days ago, resolved two hours later (its
    // rounds come first: the latest round is today's).
    let old = today - 40 * DAY + 3_600_000;
    let round = s.round + 1;
    s.verdict_with(
        "web-degraded",
        old,
        Down,
        vec![evidence("eu-west", Failed), evidence("us-east", Failed)],
        vec![incident("web-degraded", IncidentKind::Outage, &["eu-west", "us-east"], old, round)],
    )
    .await;
    s.verdict_with(
        "web-degraded",
        old + 7_200_000,
        Up,
        ok(),
        vec![IncidentChange::Resolve {
            kind: IncidentKind::Outage,
            key: String::new(),
            entry: mailloop_coordinator::judge::TimelineEntry {
                at_ms: old + 7_201_000,
                round: Some(round + 1),
                event: "resolved".into(),
                verdict: Some(Up),
                note: "JUDGE-SUMMARY-MARKER resolved".into(),
            },
        }],
    )
    .await;
    // web-up: 3 up, 1 down and 4 unknown ten days ago; 2 transit and 1 up
    // today: 7 d shows 100 % (transit is not downtime), 30 d 83.33 %
    // (5 of 6 known rounds; unknown left out).
    for kind in [Up, Up, Up, Down, Unknown, Unknown, Unknown, Unknown] {
        s.verdict("web-up", today - 10 * DAY + 3_600_000, kind, ok())
            .await;
    }
    for kind in [Transit, Transit, Up] {
        s.verdict("web-up", today + 60_000, kind, ok()).await;
    }
    s.verdict("web-degraded", today + 60_000, Degraded, ok())
        .await;
    let round = s.round + 1;
    s.verdict_with(
        "web-down",
        today + 60_000,
        Down,
        vec![evidence("eu-west", Failed), evidence("us-east", Failed)],
        vec![incident(
            "web-down",
            IncidentKind::Outage,
            &["eu-west", "us-east"],
            today + 60_000,
            round,
        )],
    )
    .await;
    s.verdict(
        "web-transit",
        today + 60_000,
        Transit,
        vec![evidence("eu-west", Failed), evidence("us-east", Good)],
    )
    .await;
    s.verdict("web-nodata", today + 60_000, Unknown, Vec::new())
        .await;
    s.verdict("web-script", today + 60_000, Up, ok()).await;
    let round = s.round + 1;
    s.verdict_with(
        "hidden-check",
        today + 60_000,
        Down,
        vec![evidence("eu-west", Failed)],
        vec![incident(
            "hidden-check",
            IncidentKind::Outage,
            &["eu-west"],
            today + 60_000,
            round,
        )],
    )
    .await;
    // Webmail's response times: three reports per hour and region over
    // the last 30 hours (stored `late`: they move no verdict, only the
    // hourly aggregates the charts read): eu-west around 30..60 ms with a
    // slow one, us-east 100 ms more.
    let this_hour = now - now.rem_euclid(3_600_000);
    for h in 0..30i64 {
        for (n, region) in ["eu-west", "us-east"].into_iter().enumerate() {
            for k in 0..3i64 {
                let at = this_hour - h * 3_600_000 + k * 60_000;
                let slow = [0.0, 4.0, 30.0 + (h % 5) as f64 * 15.0][k as usize];
                let id = format!("rt-{region}-{h}-{k}");
                let row = ReportRow {
                    probe_id: id.clone(),
                    check_id: "web-up".into(),
                    revision: 1,
                    region: region.into(),
                    agent: "eu-1".into(),
                    round: 1_500_000_000 + h as u64,
                    started_at_ms: at,
                    outcome: "ok".into(),
                    rtt_ms: Some(30.0 + h as f64 + 100.0 * n as f64 + slow),
                    // eu-west: 10, 10 and 410 ms; us-east: always 60 ms.
                    delivery_ms: Some(if n == 0 { [10.0, 10.0, 410.0][k as usize] } else { 60.0 }),
                    failure_step: None,
                    failure_class: None,
                    report_json: report_json(&id, "web-up"),
                    received_at_ms: at,
                    request_id: None,
                    out_of_window: Some("late".into()),
                };
                s.storage.insert_report(row).await.unwrap();
            }
        }
    }
    s.storage.close().await;
    c.launch();
    c
}

/// The `d` of every line of the charts in `html`, as (line title, points).
fn chart_lines(html: &str) -> Vec<(String, usize)> {
    html.split("<path class=\"line c")
        .skip(1)
        .filter_map(|p| {
            let d = p.split(" d=\"").nth(1)?.split('"').next()?;
            let title = p.split("<title>").nth(1)?.split("</title>").next()?;
            Some((title.to_string(), d.matches(['M', 'L']).count()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_page_charts_round_trip_and_delivery_per_region() {
    let c = seeded().await;
    // The page links each check's name to its page.
    let (_, _, html) = get(c.status, "/status", "");
    assert!(html.contains("<a href=\"status/check/web-up\">Webmail</a>"), "{html}");

    let (status, head, page) = get(c.status, "/status/check/web-up", "");
    assert_eq!(status, 200, "{page}");
    assert!(head.contains("content-security-policy: default-src 'none'; style-src 'sha256-"), "{head}");
    assert!(head.contains("etag: "), "{head}");
    // Four charts: round trip and delivery over 24 hours and 7 days, each
    // an image with a title and a description in words.
    assert_eq!(page.matches("<svg class=\"chart\"").count(), 4, "{page}");
    assert_eq!(page.matches("role=\"img\" aria-labelledby=").count(), 4, "{page}");
    assert!(page.contains("<title id=\"w24hr-t\">Round trip per region, last 24 hours</title>"), "{page}");
    // p50 of eu-west over 24 h lies in its 30..53 ms; us-east's above 100.
    let desc = page.split("<desc id=\"w24hr-d\">").nth(1).unwrap().split("</desc>").next().unwrap();
    assert!(desc.starts_with("eu-west: p50 ") && desc.contains("; us-east: p50 1"), "{desc}");
    // Each region's lines with one point per hour: 24 in the last 24
    // hours, all 30 in the last 7 days.
    let lines = chart_lines(&page);
    let expected: Vec<(String, usize)> = [24usize, 30]
        .iter()
        .flat_map(|n| {
            ["eu-west p50", "eu-west p95", "us-east p50", "us-east p95", "eu-west delivery p50", "eu-west delivery p95", "us-east delivery p50", "us-east delivery p95"]
                .map(|l| (l.to_string(), *n))
        })
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(sorted, want, "{lines:?}");
    // The same figures as a table: 24 hours measured per region in 24 h.
    assert!(page.contains("<th scope=\"row\">eu-west</th><td>"), "{page}");
    assert!(page.contains("<td>60 ms</td><td>60 ms</td><td>24</td>"), "us-east's delivery p50 and p95, 24 hours measured: {page}");
    // eu-west's delivery p50 among its fast two, its p95 in the slow third.
    let desc = page.split("<desc id=\"w24hd-d\">").nth(1).unwrap().split("</desc>").next().unwrap();
    let ms = |after: &str| -> f64 { desc.split(after).nth(1).unwrap().split(" ms").next().unwrap().parse().unwrap() };
    assert!(desc.starts_with("eu-west: p50 "), "{desc}");
    let (p50, p95) = (ms("eu-west: p50 "), ms(", p95 "));
    assert!(p50 <= 25.0 && (250.0..=410.0).contains(&p95), "eu-west's delivery p50 {p50}, p95 {p95}: {desc}");
    assert_no_secrets("a check's page", &page);

    // A check without measurements says so; private and unknown checks
    // have no page.
    let (status, _, quiet) = get(c.status, "/status/check/web-nodata", "");
    assert_eq!(status, 200);
    assert_eq!(quiet.matches("No measurements in this window.").count(), 2, "{quiet}");
    for path in ["/status/check/hidden-check", "/status/check/nope", "/status/check/"] {
        let (status, _, body) = get(c.status, path, "");
        assert_eq!(status, 404, "{path}");
        assert_no_secrets(path, &body);
    }
}

/// One HTTP/1.1 GET with raw body bytes: (status, head lowercased, body).
fn get_bytes(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n{extra}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    // Header names lowercased, values as sent (an ETag is case-sensitive).
    let head = String::from_utf8_lossy(&raw[..at])
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}:{value}", name.to_lowercase()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = raw[at + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    (status, head, body)
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line + 2..line + 2 + n]);
        b = &b[line + 4 + n..];
    }
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(str::trim))
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_and_br_are_negotiated_with_an_etag_per_encoding() {
    let c = seeded().await;
    for path in ["/status", "/status.json", "/status/check/web-up"] {
        let (status, head, plain) = get_bytes(c.status, path, "");
        assert_eq!(status, 200, "{path}");
        assert_eq!(header_of(&head, "content-encoding"), None, "{path}: no Accept-Encoding, no coding");
        assert_eq!(header_of(&head, "vary"), Some("accept-encoding"), "{path}: {head}");
        let plain_tag = header_of(&head, "etag").unwrap().to_string();
        let mut tags = vec![plain_tag.clone()];
        for (accept, coding) in [
            ("gzip, deflate, br, zstd", "br"),
            ("gzip", "gzip"),
            ("br;q=0.4, gzip;q=0.9", "gzip"),
            ("identity", ""),
            ("br;q=0, gzip;q=0", ""),
        ] {
            let (status, head, body) = get_bytes(c.status, path, &format!("Accept-Encoding: {accept}\r\n"));
            assert_eq!(status, 200, "{path} {accept}");
            assert_eq!(header_of(&head, "vary"), Some("accept-encoding"), "{path}: {head}");
            assert_eq!(header_of(&head, "content-encoding").unwrap_or(""), coding, "{path} {accept}: {head}");
            let decoded = match coding {
                "br" => {
                    let mut out = Vec::new();
                    brotli::BrotliDecompress(&mut &body[..], &mut out).expect("valid brotli");
                    out
                }
                "gzip" => {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).expect("valid gzip");
                    out
                }
                _ => body.clone(),
            };
            assert_eq!(decoded, plain, "{path} {accept}: the same page");
            if !coding.is_empty() {
                assert!(body.len() * 3 < plain.len(), "{path} {coding}: {} of {} bytes", body.len(), plain.len());
            }
            let tag = header_of(&head, "etag").unwrap().to_string();
            if coding.is_empty() {
                assert_eq!(tag, plain_tag);
            } else {
                assert_ne!(tag, plain_tag, "{path}: each encoding has its own ETag");
                tags.push(tag.clone());
            }
            // Revalidation with the tag of this encoding: 304.
            let (status, head, body) = get_bytes(
                c.status,
                path,
                &format!("Accept-Encoding: {accept}\r\nIf-None-Match: {tag}\r\n"),
            );
            assert_eq!((status, body.len()), (304, 0), "{path} {accept}: {head}");
        }
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 3, "{path}: identity, gzip and br tags: {tags:?}");
    }
    // A badge is too small to compress: served as it is, still varying.
    let (status, head, _) = get_bytes(c.status, "/badge/web-up.svg", "Accept-Encoding: br\r\n");
    assert_eq!(status, 200);
    assert_eq!(header_of(&head, "content-encoding"), None, "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_public_page_tells_states_in_words_and_leaks_nothing_private() {
    let c = seeded().await;
    let (status, head, html) = get(c.http, "/status", "");
    assert_eq!(status, 200, "{head}\n{html}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(!head.contains("unsafe-inline"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("etag: \""), "{head}");
    assert_no_secrets("/status", &html);

    // Each check's state in words, next to its display name.
    let state_of = |display: &str| -> String {
        let at = html
            .find(&format!(">{display}</a></h3>"))
            .unwrap_or_else(|| panic!("{display} is listed:\n{html}"));
        let rest = &html[at..];
        let p = rest.find("class=\"state\"").unwrap();
        let text = &rest[p..];
        let text = &text[text.find("</span>").unwrap() + 7..];
        text[..text.find("</p>").unwrap()].to_string()
    };
    assert_eq!(state_of("Webmail"), "Operational");
    assert_eq!(state_of("Slow Mail"), "Degraded performance");
    assert_eq!(state_of("Broken Mail"), "Outage");
    assert_eq!(state_of("Far Mail"), "Regional delivery delays (eu-west)");
    assert_eq!(state_of("Quiet Mail"), "No data");

    // The open outage at the top, in public words, not the judge's summary.
    let incidents = &html[..html.find("id=\"checks-heading\"").unwrap()];
    assert!(incidents.contains("Broken Mail: Outage"), "{incidents}");
    assert!(
        incidents.contains("Mail is not being delivered since"),
        "{incidents}"
    );
    assert!(html.find("Broken Mail: Outage") < html.find(">Webmail</a></h3>"));

    // A display name is text, never markup.
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );

    // 90 days per check, with the day's uptime in words.
    assert_eq!(bar_days(&html).len(), 6 * 90);
    assert!(html.contains(": no data</span>"));
}

/// Every day cell of the page's uptime bars, oldest first per check: a
/// run of alike days (`<li class="d u s12">`) counts for its days, each
/// as the run's whole `<li>`.
fn bar_days(html: &str) -> Vec<String> {
    let mut days = Vec::new();
    for bar in html.split("<ol class=\"bar\"").skip(1) {
        let bar = &bar[..bar.find("</ol>").unwrap()];
        for li in bar.split("<li ").skip(1) {
            let class = &li[li.find("class=\"").unwrap() + 7..];
            let class = &class[..class.find('"').unwrap()];
            let n = class
                .split(' ')
                .find_map(|c| c.strip_prefix('s')?.parse::<usize>().ok())
                .unwrap_or(1);
            for _ in 0..n {
                days.push(li.to_string());
            }
        }
    }
    days
}

#[tokio::test(flavor = "multi_thread")]
async fn uptime_counts_transit_as_up_and_unknown_as_no_data() {
    let c = seeded().await;
    let now = mailloop_coordinator::clock::now_ms();
    let (_, _, html) = get(c.http, "/status", "");
    let uptimes = |display: &str| -> Vec<String> {
        let at = html.find(&format!(">{display}</a></h3>")).unwrap();
        let rest = &html[at..];
        let rest = &rest[..rest.find("</article>").unwrap()];
        rest.split("<dd>")
            .skip(1)
            .map(|d| d[..d.find("</dd>").unwrap()].to_string())
            .collect()
    };
    // 24 h: transit, transit, up: 100 % (transit is not downtime); 7 d
    // the same; 30 and 90 d add ten days ago's 3 up, 1 down and 4 unknown:
    // 6 of 7 known rounds up (unknown left out, not counted as up).
    assert_eq!(
        uptimes("Webmail"),
        ["100.00 %", "100.00 %", "85.71 %", "85.71 %"]
    );
    assert_eq!(
        uptimes("Broken Mail"),
        ["0.00 %", "0.00 %", "0.00 %", "0.00 %"]
    );
    assert_eq!(
        uptimes("Quiet Mail"),
        ["No data", "No data", "No data", "No data"]
    );
    // Today's cell for Webmail: regional delays (its worst), 100 % uptime.
    let at = html.find(">Webmail</a></h3>").unwrap();
    let days = bar_days(&html[at..]);
    let days = &days[..90];
    let today = &days[89];
    assert!(today.starts_with("class=\"r\""), "{today}");
    assert!(
        today.contains("100 %, regional delivery delays"),
        "{today}"
    );
    // Ten days ago: one down round colours the day, 3 of 4 known rounds up.
    let ten_days_ago = &days[79];
    assert!(ten_days_ago.starts_with("class=\"x\""), "{ten_days_ago}");
    assert!(
        ten_days_ago.contains("75.00 %, outage"),
        "{ten_days_ago}"
    );
    // The nine days between have no data: one run, its text said once.
    assert!(days[80].starts_with("class=\"n s9\""), "{}", days[80]);
    let (first, last) = (DAY * (now / DAY - 9), DAY * (now / DAY - 1));
    let span = mailloop_coordinator::web::view::fmt_day_span(first, last);
    assert!(days[80].contains(&format!("{span}: no data")), "{}", days[80]);
    assert!(days[0].starts_with("class=\"n s79\""), "{}", days[0]);

    // Broken Mail's day links its incident (in the month's history).
    let at = html.find(">Broken Mail</a></h3>").unwrap();
    let today = &bar_days(&html[at..])[89];
    let month = chrono_month(mailloop_coordinator::clock::now_ms());
    assert!(
        today.contains(&format!("<a href=\"status/history/{month}#i")),
        "{today}"
    );
    assert!(today.contains("0.00 %, outage, 1 incident"), "{today}");
}

/// `2026-12`.
fn chrono_month(ms: i64) -> String {
    mailloop_coordinator::web::view::fmt_month(ms)
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_and_badges_show_public_checks_only() {
    let c = seeded().await;
    let (status, head, body) = get(c.http, "/status.json", "");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_no_secrets("/status.json", &body);
    let j: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["status"]["indicator"], "critical");
    assert_eq!(j["status"]["description"], "Major System Outage");
    assert!(j["page"]["updated_at"].is_string());
    let component = |id: &str| -> Value {
        j["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(j["components"].as_array().unwrap().len(), 6);
    assert_eq!(component("web-up")["status"], "operational");
    assert_eq!(component("web-up")["name"], "Webmail");
    assert_eq!(component("web-degraded")["status"], "degraded_performance");
    assert_eq!(component("web-transit")["status"], "partial_outage");
    assert_eq!(component("web-down")["status"], "major_outage");
    assert_eq!(component("web-nodata")["description"], "No data");
    assert_eq!(component("web-script")["name"], "<script>alert(1)</script>");
    let incidents = j["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0]["name"], "Broken Mail: Outage");
    assert_eq!(incidents[0]["impact"], "critical");
    assert_eq!(incidents[0]["status"], "investigating");
    assert_eq!(incidents[0]["components"][0]["id"], "web-down");

    let (status, head, svg) = get(c.http, "/badge/web-down.svg", "");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: image/svg+xml"), "{head}");
    assert!(svg.contains("aria-label=\"Broken Mail: outage\""), "{svg}");
    let (_, _, svg) = get(c.http, "/badge/web-script.svg", "");
    assert!(
        !svg.contains("<script>") && svg.contains("&lt;script&gt;"),
        "{svg}"
    );
    let (_, _, svg) = get(c.http, "/badge/web-up.svg", "");
    assert!(svg.contains("Webmail: operational"), "{svg}");
    for path in [
        "/badge/hidden-check.svg",
        "/badge/nope.svg",
        "/badge/web-up",
        "/badge/web-up.png",
    ] {
        let (status, _, body) = get(c.http, path, "");
        assert_eq!(status, 404, "{path}");
        assert_no_secrets(path, &body);
    }

    // A repeat with the ETag is answered with 304 and no body, unless the
    // snapshot was rebuilt in between (then the ETag is new: try again).
    let mut not_modified = false;
    for _ in 0..5 {
        let etag = head_value(&get(c.http, "/status.json", "").1, "etag");
        let (status, head, body) = get(
            c.http,
            "/status.json",
            &format!("If-None-Match: {etag}\r\n"),
        );
        if status == 304 {
            assert!(body.is_empty());
            not_modified = true;
            break;
        }
        assert_eq!(status, 200);
        assert_ne!(head_value(&head, "etag"), etag, "a 200 for a matching ETag");
    }
    assert!(not_modified, "never answered 304 to its own ETag");
}

fn head_value(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {head}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_moves_to_its_own_listener_and_path() {
    let c = Coordinator::start(
        "",
        &format!(
            "[status]\npath = \"/health\"\nlisten = \"127.0.0.1:0\"\ntitle = \"Example Mail status\"\n{}",
            public_check("web-up", "Webmail")
        ),
    );
    let addr = c.status;
    assert_ne!(addr, c.http);
    let (status, _, html) = get(addr, "/health", "");
    assert_eq!(status, 200);
    assert!(
        html.contains("<title>Example Mail status</title>"),
        "{html}"
    );
    assert!(html.contains(">Webmail</a></h3>"));
    assert_eq!(get(addr, "/health.json", "").0, 200);
    assert_eq!(get(addr, "/badge/web-up.svg", "").0, 200);
    // Only the page is there: no admin API on the public listener, and
    // no page on the admin listener.
    assert_eq!(get(addr, "/api/v1/checks", "").0, 404);
    assert_eq!(get(c.http, "/health", "").0, 404);
}

#[test]
fn display_name_is_required_with_public_and_every_issue_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = check_toml("needs-name", &["eu-west"], "1h").replacen(
        "interval = \"1h\"",
        "interval = \"1h\"\npublic = true",
        1,
    ) + &check_toml("bad-types", &["eu-west"], "1h").replacen(
        "interval = \"1h\"",
        "interval = \"1h\"\npublic = \"yes\"\ndisplay_name = 7",
        1,
    );
    std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
    let config = format!(
        "[server]\ndata_dir = {:?}\nadmin_token_file = {:?}\n[status]\npath = \"/api/status\"\n{bad}",
        dir.path().join("data"),
        dir.path().join("admin.token"),
    );
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailloop-coordinator"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for key in [
        "check[0].display_name",
        "check[1].public",
        "check[1].display_name",
        "status.path",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

/// Runs tests/browser/status_page.mjs on `url` (screenshots into `shots`,
/// `extra`: which page it is) and returns what it saw, as JSON.
fn browse(url: &str, shots: &std::path::Path, extra: &[&str]) -> Value {
    let out = std::process::Command::new("node")
        .arg(browser_dir().join("status_page.mjs"))
        .arg(url)
        .arg(shots)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `tests/browser/`: the Node script and its node_modules.
fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Fails (never skips) with the install hint when the browser tooling is
/// missing.
fn require_browser() {
    const HINT: &str = "install with `make deps` (Debian `chromium` through tests/mailstack/install.sh, \
        then `npm ci --prefix tests/browser` for playwright-core and axe-core)";
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: {HINT}"
    );
    for module in ["playwright-core", "axe-core"] {
        assert!(
            browser_dir()
                .join("node_modules")
                .join(module)
                .join("package.json")
                .exists(),
            "tests/browser/node_modules/{module} is missing: {HINT}"
        );
    }
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing (apt-get install nodejs npm): {HINT}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_renders_the_page_and_axe_finds_no_violation() {
    require_browser();
    let c = seeded().await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();
    let url = format!("http://{}/status", c.status);
    let seen = browse(&url, &shots, &[]);
    for scheme in ["light", "dark"] {
        let s = &seen["schemes"][scheme];
        assert_eq!(s["status"], 200, "{scheme}");
        assert_eq!(
            s["violations"],
            json!([]),
            "axe violations in the {scheme} scheme: {:#}",
            s["violations"]
        );
        assert_eq!(s["scripts"], 0, "the page needs no JavaScript");
        // Nothing but the page itself is requested (no CDN, no font, no image).
        assert_eq!(s["requests"], json!([url]), "{scheme}");
        let checks = s["checks"].as_array().unwrap();
        let state = |name: &str| {
            checks
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("{name} rendered: {checks:?}"))["state"]
                .clone()
        };
        assert_eq!(state("Webmail"), "Operational");
        assert_eq!(state("Broken Mail"), "Outage");
        assert_eq!(state("Far Mail"), "Regional delivery delays (eu-west)");
        assert_eq!(state("<script>alert(1)</script>"), "Operational");
        for c in checks {
            assert_eq!(c["cells"], 90, "{c}");
            assert_eq!(c["cell_labels"], c["runs"], "every run of days has its text: {c}");
            assert_eq!(c["uptime"].as_array().unwrap().len(), 4, "{c}");
        }
        assert_eq!(s["incidents"], json!(["Broken Mail: Outage"]));
        assert_no_secrets("the rendered page", &s.to_string());
    }
    assert_ne!(
        seen["schemes"]["light"]["background"], seen["schemes"]["dark"]["background"],
        "prefers-color-scheme: dark applies"
    );
    assert!(shots.join("status-light.png").exists() && shots.join("status-dark.png").exists());

    // Keyboard: the days with an incident are tab stops, in page order
    // (Broken Mail's today, Slow Mail's of 40 days ago), before the
    // footer's links; a focused day shows its text.
    let focus = seen["schemes"]["light"]["focus"].as_array().unwrap();
    let days: Vec<&Value> = focus
        .iter()
        .filter(|f| f["href"].as_str().is_some_and(|h| h.contains("/history/") && h.contains("#i")))
        .collect();
    assert_eq!(days.len(), 2, "{focus:#?}");
    assert!(days[0]["text"].as_str().unwrap().contains("outage, 1 incident"), "{focus:#?}");
    assert!(days.iter().all(|d| d["shown"] == true), "a focused day shows its text: {focus:#?}");
    let position = |pred: &dyn Fn(&Value) -> bool| focus.iter().position(pred).unwrap_or(usize::MAX);
    assert!(
        position(&|f| f["text"] == "Incident history") > position(&|f| f["href"] == days[1]["href"]),
        "the bars come before the footer: {focus:#?}"
    );

    // Webmail's page: four charts with a point per hour and region, in
    // each scheme's colours, and no axe violation.
    let url = format!("http://{}/status/check/web-up", c.status);
    let seen = browse(&url, &shots, &["check"]);
    for scheme in ["light", "dark"] {
        let s = &seen["schemes"][scheme];
        assert_eq!(s["status"], 200);
        assert_eq!(s["violations"], json!([]), "axe on a check's page ({scheme}): {:#}", s["violations"]);
        assert_eq!((s["scripts"].clone(), s["requests"].clone()), (json!(0), json!([url])), "{scheme}");
        let charts = s["charts"].as_array().unwrap();
        assert_eq!(charts.len(), 4, "{scheme}: {charts:#?}");
        for chart in charts {
            assert_eq!(chart["role"], "img", "{chart}");
            assert!(chart["desc"].as_str().unwrap().contains("eu-west: "), "{chart}");
            assert!(chart["width"].as_u64().unwrap() > 300, "drawn at a readable size: {chart}");
            let lines = chart["lines"].as_array().unwrap();
            assert!(lines.len() == 4 || lines.len() == 2, "{chart}");
            for l in lines {
                assert!(l["points"].as_u64().unwrap() >= 24, "a point per hour: {l}");
            }
        }
        assert_no_secrets("a check's rendered page", &s.to_string());
    }
    let stroke = |scheme: &str| seen["schemes"][scheme]["charts"][0]["lines"][0]["stroke"].clone();
    assert_ne!(stroke("light"), stroke("dark"), "the lines take the dark scheme's colours");
    // `make screenshots` keeps them (docs/screenshots).
    if let Some(dir) = std::env::var_os("STATUS_SCREENSHOTS_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["status-light.png", "status-dark.png", "check-light.png", "check-dark.png"] {
            std::fs::copy(shots.join(name), std::path::Path::new(&dir).join(name)).unwrap();
        }
    }

    // The history page of this month passes axe too.
    let month = chrono_month(mailloop_coordinator::clock::now_ms());
    let url = format!("http://{}/status/history/{month}", c.status);
    let seen = browse(&url, &shots, &["history"]);
    for scheme in ["light", "dark"] {
        let s = &seen["schemes"][scheme];
        assert_eq!(s["status"], 200);
        assert_eq!(s["violations"], json!([]), "axe on the history page ({scheme}): {:#}", s["violations"]);
        assert_eq!(s["scripts"], 0);
        assert_eq!(s["incidents"], json!(["Broken Mail: Outage"]), "{scheme}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn enabled_false_removes_the_page() {
    let c = Coordinator::start(
        "",
        &format!("[status]\nenabled = false\n{}", public_check("web-up", "Webmail")),
    );
    for path in ["/status", "/status.json", "/badge/web-up.svg"] {
        assert_eq!(get(c.http, path, "").0, 404, "{path}");
    }
}

/// The page's weight budget (uncompressed) for a hundred public checks.
const PAGE_BUDGET_BYTES: usize = 150 * 1024;

/// A hundred public checks with 90 days of verdicts from five regions,
/// each with three outage days (an incident each) and three degraded
/// days scattered over the bar: the page stays within its budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_checks_with_ninety_days_fit_the_page_budget() {
    let mut config = String::new();
    for n in 0..100 {
        config.push_str(&public_check(
            &format!("svc-{n:03}"),
            &format!("Mail service number {n}"),
        ));
    }
    let mut c = Coordinator::start("", &config);
    c.kill();
    let now = mailloop_coordinator::clock::now_ms();
    let today = now - now.rem_euclid(DAY);
    let storage = std::sync::Arc::new(Storage::open(&data_dir(&c)).unwrap());
    let regions = ["eu-west", "us-east", "ap-south", "sa-east", "af-south"];
    let mut tasks = Vec::new();
    for n in 0..100u64 {
        let storage = storage.clone();
        tasks.push(tokio::spawn(async move {
            let check = format!("svc-{n:03}");
            let good: Vec<RegionEvidence> = regions
                .iter()
                .map(|r| evidence(r, RegionState::Ok))
                .collect();
            // Rounds far ahead of the clock, disjoint per check.
            let mut round = 1_000_000_000 + n * 1_000;
            for day in 0..90i64 {
                let start = today - (89 - day) * DAY + 3_600_000;
                let bad = (day + n as i64) % 30 == 7;
                let slow = (day + n as i64) % 30 == 19;
                let kind = if bad {
                    VerdictKind::Down
                } else if slow {
                    VerdictKind::Degraded
                } else {
                    VerdictKind::Up
                };
                round += 1;
                let changes = if bad {
                    vec![incident(&check, IncidentKind::Outage, &regions, start, round)]
                } else {
                    Vec::new()
                };
                let v = Verdict {
                    check_id: check.clone(),
                    round,
                    round_start_ms: start,
                    decided_at_ms: start + 1000,
                    verdict: kind,
                    quorum: 3,
                    regions: good.clone(),
                    note: String::new(),
                };
                assert!(storage.store_round(v, changes).await.unwrap().stored);
                if bad {
                    // Resolved an hour later by an up round.
                    round += 1;
                    let v = Verdict {
                        check_id: check.clone(),
                        round,
                        round_start_ms: start + 3_600_000,
                        decided_at_ms: start + 3_601_000,
                        verdict: VerdictKind::Up,
                        quorum: 3,
                        regions: good.clone(),
                        note: String::new(),
                    };
                    let resolve = IncidentChange::Resolve {
                        kind: IncidentKind::Outage,
                        key: String::new(),
                        entry: mailloop_coordinator::judge::TimelineEntry {
                            at_ms: start + 3_601_000,
                            round: Some(round),
                            event: "resolved".into(),
                            verdict: Some(VerdictKind::Up),
                            note: String::new(),
                        },
                    };
                    assert!(storage.store_round(v, vec![resolve]).await.unwrap().stored);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    storage.close().await;
    c.launch();

    let (status, _, html) = get(c.http, "/status", "");
    assert_eq!(status, 200);
    assert_eq!(bar_days(&html).len(), 100 * 90, "every check has its 90 days");
    // Each check: 3 outage days linking their incident, 3 degraded days.
    assert_eq!(html.matches(", outage, 1 incident</span>").count(), 300);
    assert_eq!(html.matches("class=\"g\"").count(), 300);
    assert!(
        html.len() <= PAGE_BUDGET_BYTES,
        "the page weighs {} bytes for 100 checks, over its budget of {PAGE_BUDGET_BYTES}",
        html.len()
    );
    println!("page weight for 100 checks: {} bytes", html.len());
}

/// The id of the (only) incident of `check`, through the admin API.
fn incident_id_of(c: &Coordinator, check: &str) -> u64 {
    let (status, _, body) = get(
        c.http,
        &format!("/api/v1/incidents?check={check}"),
        &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    let j: Value = serde_json::from_str(&body).unwrap();
    j["incidents"][0]["id"].as_u64().unwrap_or_else(|| panic!("{body}"))
}

fn mailloopctl(c: &Coordinator, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailloopctl"))
        .args(args)
        .env("MAILLOOP_URL", format!("http://{}", c.http))
        .env("MAILLOOP_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One plain HTTP/1.1 POST of a JSON body: (status, body).
fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: status.test\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

const NOTE: &str = "<b>Fixed</b> soon & \"well\" <script>alert(2)</script>";
const NOTE_ESCAPED: &str = "&lt;b&gt;Fixed&lt;/b&gt; soon &amp; ";

#[tokio::test(flavor = "multi_thread")]
async fn public_notes_history_and_feed_show_incidents_as_text_only() {
    let c = seeded().await;
    let down = incident_id_of(&c, "web-down");
    let hidden = incident_id_of(&c, "hidden-check");
    let month = chrono_month(mailloop_coordinator::clock::now_ms());

    // A note through mailloopctl; another on the private check's incident.
    let (code, out, err) = mailloopctl(&c, &["incidents", "note", &down.to_string(), NOTE]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("note added to incident {down}")), "{out}");
    let (status, body) = post(
        c.http,
        &format!("/api/v1/incidents/{hidden}/notes"),
        Some(ADMIN_TOKEN),
        &json!({"text": "secret-smtp.internal.test is being fixed"}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    // The API refuses: no token, an empty note, an unknown incident.
    let path = format!("/api/v1/incidents/{down}/notes");
    assert_eq!(post(c.http, &path, None, r#"{"text":"x"}"#).0, 401);
    let (status, body) = post(c.http, &path, Some(ADMIN_TOKEN), r#"{"text":"  "}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("text"), "{body}");
    assert_eq!(post(c.http, "/api/v1/incidents/999999/notes", Some(ADMIN_TOKEN), r#"{"text":"x"}"#).0, 404);
    // The admin API shows the note in the timeline, and the audit log who wrote it.
    let (_, _, body) = get(c.http, &format!("/api/v1/incidents/{down}"), &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"));
    assert!(body.contains("public_note"), "{body}");
    let (_, _, audit) = get(c.http, "/api/v1/audit", &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"));
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let noted: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"))
        .iter()
        .filter(|e| e["action"] == "noted" && e["object"] == "incident")
        .collect();
    assert_eq!(noted.len(), 2, "both notes are audited: {audit}");

    // The page shows it at once (the note drops the cached page), as text.
    let (status, _, html) = get(c.http, "/status", "");
    assert_eq!(status, 200);
    let top = &html[..html.find("id=\"checks-heading\"").unwrap()];
    assert!(top.contains(&format!("id=\"i{down}\"")), "{top}");
    assert!(top.contains("<strong>Investigating</strong>"), "{top}");
    assert!(top.contains("<strong>Update</strong>"), "{top}");
    assert!(top.contains(NOTE_ESCAPED), "{top}");
    assert!(!html.contains("<b>Fixed") && !html.contains("alert(2)</script>"), "{html}");
    assert_no_secrets("/status with notes", &html);

    // This month's history: the open outage with its note; the one of 40
    // days ago in its own month, resolved; months are paged.
    let (status, _, this_month) = get(c.http, &format!("/status/history/{month}"), "");
    assert_eq!(status, 200);
    assert!(this_month.contains("Broken Mail: Outage"), "{this_month}");
    assert!(this_month.contains(NOTE_ESCAPED), "{this_month}");
    assert!(!this_month.contains("rel=\"next\""), "no later month than the current one");
    assert_no_secrets("this month's history", &this_month);
    let old = mailloop_coordinator::clock::now_ms() - 40 * DAY;
    let old_month = chrono_month(old);
    let (status, _, then) = get(c.http, &format!("/status/history/{old_month}"), "");
    assert_eq!(status, 200);
    assert!(then.contains("Slow Mail: Outage"), "{then}");
    assert!(then.contains("<strong>Resolved</strong>"), "{then}");
    assert!(then.contains("rel=\"next\""), "{then}");
    assert!(!then.contains("Broken Mail"), "{then}");
    assert_no_secrets("an old month's history", &then);
    // Slow Mail's bar links that day to it.
    let at = html.find(">Slow Mail</a></h3>").unwrap();
    let days = bar_days(&html[at..]);
    let linked = days[..90].iter().filter(|d| d.contains(&format!("status/history/{old_month}#i"))).count();
    assert_eq!(linked, 1, "the outage's day links its incident");
    let (status, head, _) = get(c.http, "/status/history", "");
    assert_eq!(status, 303);
    assert!(head.contains(&format!("location: /status/history/{month}")), "{head}");
    for bad in ["/status/history/2999-01", "/status/history/junk", "/status/history/1999-12", "/status/history/2026-1"] {
        assert_eq!(get(c.http, bad, "").0, 404, "{bad}");
    }

    // The Atom feed: both incidents, newest update first, text only.
    let (status, head, atom) = get(c.http, "/status.atom", "");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/atom+xml"), "{head}");
    assert!(atom.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">"), "{atom}");
    assert_eq!(atom.matches("<entry>").count(), 2, "{atom}");
    assert_eq!(atom.matches("</entry>").count(), 2, "{atom}");
    let first = &atom[atom.find("<entry>").unwrap()..];
    assert!(first.contains("Broken Mail: Outage (investigating)"), "{atom}");
    assert!(atom.contains("Slow Mail: Outage (resolved)"), "{atom}");
    assert!(atom.contains(&format!("<id>urn:mailloop:incident:{down}</id>")), "{atom}");
    assert!(atom.contains(NOTE_ESCAPED), "{atom}");
    assert!(!atom.contains("<b>") && !atom.contains("<script"), "{atom}");
    assert_no_secrets("/status.atom", &atom);
    assert!(!atom.contains("being fixed") && !html.contains("being fixed"), "a private check's note stays private");

    // Parsed as XML: an Atom feed whose entries each have an id, a
    // title, dates and the note as text (escaped once, read back whole).
    let doc = roxmltree::Document::parse(&atom).unwrap_or_else(|e| panic!("{e}: {atom}"));
    const ATOM: &str = "http://www.w3.org/2005/Atom";
    let feed = doc.root_element();
    assert!(feed.has_tag_name((ATOM, "feed")), "{atom}");
    let child = |n: roxmltree::Node<'_, '_>, name: &str| -> String {
        n.children()
            .find(|c| c.has_tag_name((ATOM, name)))
            .and_then(|c| c.text())
            .unwrap_or_else(|| panic!("<{name}> in {n:?}"))
            .to_string()
    };
    assert_eq!(child(feed, "title"), "Mail delivery status: incidents");
    let entries: Vec<roxmltree::Node> = feed.children().filter(|c| c.has_tag_name((ATOM, "entry"))).collect();
    let titles: Vec<String> = entries.iter().map(|e| child(*e, "title")).collect();
    assert_eq!(titles, ["Broken Mail: Outage (investigating)", "Slow Mail: Outage (resolved)"], "{atom}");
    assert_eq!(child(entries[0], "id"), format!("urn:mailloop:incident:{down}"));
    for e in &entries {
        for date in ["published", "updated"] {
            let d = child(*e, date);
            assert!(chrono::DateTime::parse_from_rfc3339(&d).is_ok(), "{date} {d}");
        }
        let link = e.children().find(|c| c.has_tag_name((ATOM, "link"))).unwrap();
        assert!(link.attribute("href").unwrap().starts_with("/status/history/"), "{atom}");
    }
    let content = entries[0].children().find(|c| c.has_tag_name((ATOM, "content"))).unwrap();
    assert_eq!(content.attribute("type"), Some("text"));
    assert!(content.text().unwrap().contains("Update (") && content.text().unwrap().contains(NOTE), "{atom}");
    assert!(child(entries[1], "content").contains("Resolved ("), "{atom}");

    // The JSON's incident carries the note as an update, newest first.
    let (_, _, body) = get(c.http, "/status.json", "");
    let j: Value = serde_json::from_str(&body).unwrap();
    let updates = &j["incidents"][0]["incident_updates"];
    assert_eq!(updates[0]["body"], NOTE.trim(), "{updates}");
    assert_eq!(updates.as_array().unwrap().last().unwrap()["status"], "investigating");
    assert_no_secrets("/status.json with notes", &body);
}
