//! `/metrics` checked by the real Prometheus tools: `promtool check metrics`
//! lints what a real coordinator and real agents serve while probing the
//! real mail stack, a real `prometheus` scrapes them and its PromQL API
//! answers with each region's step histogram and the verdict series; a
//! deleted check's series disappear; no label carries a probe id or reply
//! text. `promtool check rules` checks deploy/prometheus/; the Grafana
//! dashboard and README's metric list are checked against the registry.
//!
//! Prometheus and promtool come from Debian's `prometheus` package (2.42),
//! which `make deps` installs. Missing tools fail the test with that hint.

use mailloop_tests::Check;
use mailloop_tests::cluster::{ADMIN_TOKEN, Cluster, Proc, check_toml, http_get, wait_until};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const REGIONS: [&str; 2] = ["eu-west", "us-east"];
/// Generous: a loaded machine, several 2 s rounds, 1 s scrapes.
const DEADLINE: Duration = Duration::from_secs(90);
const INSTALL_HINT: &str =
    "install Debian's prometheus package: apt-get install prometheus (or make deps)";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `/usr/bin/<name>` of the prometheus package, or a failure with the hint.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} not found: {INSTALL_HINT}"))
}

/// GET `path` with optional extra headers: (status, content type, body).
fn get_text(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).expect("text");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers end");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, content_type, body) = get_text(addr, "/metrics", "");
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    body
}

/// `promtool check metrics` on `text`: no lint problem at all.
fn promtool_check_metrics(what: &str, text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics: {said}\n---\n{text}"
    );
}

/// Label values of every sample line of `text`.
fn label_values(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        for pair in labels.split("\",") {
            if let Some((_, v)) = pair.split_once("=\"") {
                out.push(v.trim_end_matches('"').to_string());
            }
        }
    }
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A real `prometheus` with its own data dir, scraping `targets` every second.
struct Prometheus {
    addr: SocketAddr,
    _proc: Proc,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: mailloop\n    static_configs:\n      - targets: [{targets}]\n"),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}; {INSTALL_HINT}"));
        let p = Prometheus {
            addr,
            _proc: Proc::new(child),
            dir,
        };
        wait_until(DEADLINE, "prometheus to be ready", || {
            let (status, _, _) =
                std::panic::catch_unwind(|| get_text(addr, "/-/ready", "")).ok()?;
            (status == 200).then_some(())
        });
        p
    }

    /// The result vector of an instant PromQL query.
    fn query(&self, promql: &str) -> Vec<Value> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )
        .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(status, 200, "query {promql}: {body}");
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

#[test]
fn prometheus_scrapes_the_coordinator_and_agents_and_a_deleted_check_disappears() {
    let kept = Check::new("metrics-kept");
    let gone = Check::new("metrics-gone");
    let c = Cluster::start("");
    let file = c.dir.path().join("checks.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n{}",
            check_toml(&kept, "2s", &REGIONS),
            check_toml(&gone, "2s", &REGIONS)
        ),
    )
    .unwrap();
    let (code, out, err) = c
        .coordinator
        .ctl(&["checks", "apply", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    // Both checks delivered in both regions and judged, as /metrics says.
    let coordinator = c.coordinator.http;
    let text = wait_until(
        DEADLINE,
        "both checks' step histograms in both regions and a verdict",
        || {
            let text = scrape(coordinator);
            let every = [&kept.name, &gone.name].iter().all(|check| {
            REGIONS.iter().all(|region| {
                text.contains(&format!("mailloop_step_duration_seconds_count{{check=\"{check}\",region=\"{region}\",step=\"smtp.data_ack\"}}"))
            }) && !text.contains(&format!("mailloop_check_verdict{{check=\"{check}\",verdict=\"unknown\"}} 1"))
        });
            every.then_some(text)
        },
    );
    promtool_check_metrics("coordinator", &text);
    // The default `metrics_steps`: histograms for a few steps, not every one
    // the probe recorded (imap.fetch is in every report of these checks).
    assert!(
        !text.contains("step=\"imap.fetch\""),
        "imap.fetch is not a default step histogram:\n{text}"
    );
    for family in [
        "mailloop_reports_committed_total",
        "mailloop_probes_total",
        "mailloop_round_trip_seconds_bucket",
        "mailloop_agents_connected",
        "mailloop_judge_round_duration_seconds_count",
    ] {
        assert!(text.contains(family), "no {family} in\n{text}");
    }
    // OpenMetrics for a scraper that asks for it.
    let (status, content_type, om) = get_text(
        coordinator,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0\r\n",
    );
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");

    // No label value carries a probe id or a server's reply text.
    let results = c.coordinator.results(&kept.name);
    assert!(!results.is_empty());
    let values: BTreeSet<String> = label_values(&text).into_iter().collect();
    for r in &results {
        let probe_id = r["probe_id"].as_str().unwrap();
        assert!(
            !values.iter().any(|v| v.contains(probe_id)),
            "a label holds probe id {probe_id}"
        );
        for step in r["report"]["steps"].as_array().unwrap() {
            // A step with a reply code has the server's reply text as its detail.
            if let Some(detail) = step["detail"]
                .as_str()
                .filter(|d| d.len() > 3 && !step["code"].is_null())
            {
                assert!(
                    !values.contains(detail),
                    "a label holds reply text {detail:?}"
                );
            }
        }
        if let Some(queue_id) = r["report"]["queue_id"].as_str() {
            assert!(
                !values.iter().any(|v| v.contains(queue_id)),
                "a label holds queue id {queue_id}"
            );
        }
    }

    // Every agent's own /metrics lints clean too.
    let agents: Vec<SocketAddr> = c.agents.iter().map(|a| a.metrics_addr()).collect();
    for (a, addr) in c.agents.iter().zip(&agents) {
        let text = scrape(*addr);
        promtool_check_metrics(&format!("agent {}", a.name), &text);
        assert!(
            text.contains(&format!(
                "mailloop_agent_connected{{region=\"{}\"}} 1",
                a.region
            )),
            "{text}"
        );
        assert!(text.contains("mailloop_agent_spool_reports{"), "{text}");
    }

    // A real prometheus scrapes them all; PromQL finds each region's step
    // histogram, the verdict and the agents' spools.
    let mut targets = vec![coordinator];
    targets.extend(&agents);
    let prom = Prometheus::start(&targets);
    let step = format!(
        "count by (region) (mailloop_step_duration_seconds_bucket{{check=\"{}\",step=\"smtp.connect\",le=\"+Inf\"}})",
        kept.name
    );
    let regions = wait_until(
        DEADLINE,
        "prometheus to have the step histogram of both regions",
        || {
            let r = prom.query(&step);
            let regions: BTreeSet<String> = r
                .iter()
                .filter_map(|s| s["metric"]["region"].as_str().map(String::from))
                .collect();
            (regions.len() == REGIONS.len()).then_some(regions)
        },
    );
    assert_eq!(regions, REGIONS.iter().map(|r| r.to_string()).collect());
    let quantile = prom.query(&format!(
        "histogram_quantile(0.5, sum by (le, region) (mailloop_step_duration_seconds_bucket{{check=\"{}\",step=\"smtp.data_ack\"}}))",
        kept.name
    ));
    assert_eq!(quantile.len(), 2, "{quantile:?}");
    let verdict = prom.query(&format!(
        "mailloop_check_verdict{{check=\"{}\"}} == 1",
        kept.name
    ));
    assert_eq!(verdict.len(), 1, "one current verdict: {verdict:?}");
    assert_ne!(verdict[0]["metric"]["verdict"], "unknown", "{verdict:?}");
    let spools = wait_until(
        DEADLINE,
        "prometheus to have both agents' spool depth",
        || {
            let r = prom.query("mailloop_agent_spool_reports");
            (r.len() == c.agents.len()).then_some(r)
        },
    );
    assert_eq!(spools.len(), 2);
    let up = prom.query("up == 1");
    assert_eq!(
        up.len(),
        targets.len(),
        "every target scraped: {up:?}\n{}",
        prom.log()
    );

    // Deleting a check removes its series from /metrics, and so from prometheus.
    let (code, out, err) = c.coordinator.ctl(&["checks", "delete", &gone.name]);
    assert_eq!(code, 0, "{out}{err}");
    let after = wait_until(
        DEADLINE,
        "the deleted check's series to leave /metrics",
        || {
            let text = scrape(coordinator);
            (!text.contains(&format!("check=\"{}\"", gone.name))).then_some(text)
        },
    );
    assert!(
        after.contains(&format!("check=\"{}\"", kept.name)),
        "the other check's series stay"
    );
    wait_until(
        DEADLINE,
        "prometheus to see the deleted check's series gone",
        || {
            prom.query(&format!(
                "mailloop_check_verdict{{check=\"{}\"}}",
                gone.name
            ))
            .is_empty()
            .then_some(())
        },
    );
    assert!(
        !prom
            .query(&format!(
                "mailloop_check_verdict{{check=\"{}\"}}",
                kept.name
            ))
            .is_empty()
    );
}

#[test]
fn a_metrics_token_keeps_scrapers_without_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let token = "metrics-scrape-token-0123456789";
    std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
    std::fs::write(dir.path().join("metrics.token"), token).unwrap();
    let config = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         metrics_token_file = {:?}\ndata_dir = {:?}\nadmin_token_file = {:?}\n",
        dir.path().join("metrics.token"),
        dir.path().join("data"),
        dir.path().join("admin.token"),
    );
    let coordinator = mailloop_tests::cluster::Coordinator::start_with_config(dir.path(), &config);
    let metrics = coordinator.metrics;
    assert_ne!(metrics, coordinator.http, "its own listener");
    let (status, _, _) = get_text(metrics, "/metrics", "");
    assert_eq!(status, 401);
    let (status, _, _) = get_text(
        metrics,
        "/metrics",
        "Authorization: Bearer wrong-token-wrong-token\r\n",
    );
    assert_eq!(status, 401);
    let (status, _, body) = get_text(
        metrics,
        "/metrics",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE mailloop_checks gauge"), "{body}");
    assert!(!body.contains(token));
    // Not on the admin listener when it has its own.
    let (status, _, _) = get_text(
        coordinator.http,
        "/metrics",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    assert_eq!(status, 404);
}

#[test]
fn metrics_off_serves_no_metrics_and_the_coordinator_still_works() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).unwrap();
    let config = format!(
        "[server]\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nmetrics = false\n\
         data_dir = {:?}\nadmin_token_file = {:?}\n",
        dir.path().join("data"),
        dir.path().join("admin.token"),
    );
    let coordinator = mailloop_tests::cluster::Coordinator::start_with_config(dir.path(), &config);
    let (status, _, body) = get_text(coordinator.http, "/metrics", "");
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = get_text(
        coordinator.http,
        "/api/v1/checks",
        &format!("Authorization: Bearer {ADMIN_TOKEN}\r\n"),
    );
    assert_eq!(status, 200, "the admin API is served as usual: {body}");
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let rules = repo().join("deploy/prometheus/mailloop-rules.yml");
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules {}: {}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

/// Every family the coordinator and the agent can expose: (name, type, help).
fn families() -> Vec<(String, String, String)> {
    let hub = mailloop_coordinator::cluster::hub::Hub::new(Vec::new(), Vec::new());
    let alerts = std::sync::Arc::new(mailloop_coordinator::alerts::Alerts::default());
    let m = mailloop_coordinator::metrics::Metrics::new(hub, alerts);
    let mut out = mailloop_coordinator::metrics::families(&mailloop_coordinator::metrics::classic(
        &m.render(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let agent =
        mailloop_agent::run::metrics::AgentMetrics::for_listing(&dir.path().join("spool.db"));
    out.extend(mailloop_coordinator::metrics::families(
        &agent.render_for(None).1,
    ));
    out
}

#[test]
fn the_dashboard_and_rules_use_only_series_that_exist() {
    let names: BTreeSet<String> = families().into_iter().map(|(n, _, _)| n).collect();
    let known = |series: &str| {
        names.contains(series)
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| series.strip_suffix(s).is_some_and(|b| names.contains(b)))
    };
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/mailloop.json")).unwrap();
    let json: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(
        json["panels"].as_array().is_some_and(|p| p.len() >= 3),
        "panels"
    );
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/mailloop-rules.yml")).unwrap();
    for text in [&dashboard, &rules] {
        let used: BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mailloop_"))
            .collect();
        assert!(!used.is_empty());
        for series in used {
            assert!(
                known(series),
                "{series} is not a series mailloop exposes ({names:?})"
            );
        }
    }
}

/// README.md's metric list, between its markers, is rendered from the
/// registries; `UPDATE_README=1` rewrites it.
#[test]
fn the_readme_lists_every_metric_as_the_code_defines_it() {
    let mut block = String::from("| metric | type | what |\n| --- | --- | --- |\n");
    for (name, kind, help) in families() {
        block.push_str(&format!(
            "| `{name}` | {kind} | {} |\n",
            help.replace('|', "\\|")
        ));
    }
    let path = repo().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (start, end) = (
        "<!-- metrics list: generated by tests/tests/metrics.rs, UPDATE_README=1 to refresh -->\n",
        "<!-- end of metrics list -->",
    );
    let from = readme
        .find(start)
        .expect("the metrics list start marker in README.md")
        + start.len();
    let to = from
        + readme[from..]
            .find(end)
            .expect("the metrics list end marker in README.md");
    if std::env::var_os("UPDATE_README").is_some() {
        std::fs::write(
            &path,
            format!("{}{block}{}", &readme[..from], &readme[to..]),
        )
        .unwrap();
        return;
    }
    assert_eq!(
        readme[from..to],
        block,
        "README.md's metric list is stale: run UPDATE_README=1 cargo test -p mailloop-tests --test metrics"
    );
}
