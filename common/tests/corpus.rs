//! Fixture corpora for the header parsers: one loop per corpus runs them all.
//!
//! Each `tests/fixtures/<corpus>/NNN-<source>.txt` holds one or more header
//! values as they appear in a message, top first: a line that starts with
//! whitespace continues (folds) the value above it, any other line starts
//! the next value. Leading `# ` lines say where the sample comes from and
//! may set a directive:
//!
//! - `# trusted: <authserv-id>` (auth-results): the id `summarize` trusts;
//!   without it, `summarize` trusts every header and warns.
//! - `# sent_at: <RFC 3339>` (received): the send time the first hop is
//!   measured from.
//! - `# independent: yes` (received): the values are unrelated samples
//!   (one MTA's headers from several messages), not one message's route:
//!   each is parsed, no delays are computed between them.
//! - `# trusted: yes` (spam): the caller vouches for the path (default no).
//!
//! The spam corpus holds whole header fields (`Name: value`), because the
//! verdict depends on which names occur and how often.
//!
//! Beside each sample, `NNN-<source>.expected.json` holds what the parsers
//! make of it. `UPDATE_EXPECT=1 cargo test -p mailloop-common --test corpus`
//! rewrites those files from the current output; read the diff before
//! committing it.

use mailloop_common::auth_results::{self, AuthResults, AuthSummary};
use mailloop_common::received::{self, Hop, HopDelay};
use mailloop_common::spam;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What an auth-results sample turns into (fields in spec order, so the
/// expected files read top-down like the model).
#[derive(Serialize)]
struct AuthOut {
    headers: Vec<Parsed>,
    summary: AuthSummary,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Parsed {
    Ok(AuthResults),
    Error(String),
}

#[derive(Serialize)]
struct ReceivedOut {
    /// Top first, as in the sample.
    hops: Vec<Hop>,
    /// Travel order (oldest first).
    delays: Vec<HopDelay>,
}

#[test]
fn auth_results_corpus() {
    run_corpus("auth-results", |sample| {
        let trusted = sample.directive("trusted");
        let values: Vec<&str> = sample.values.iter().map(String::as_str).collect();
        let headers = values
            .iter()
            .map(|v| match auth_results::parse(v) {
                Ok(ar) => Parsed::Ok(ar),
                Err(e) => Parsed::Error(e.to_string()),
            })
            .collect();
        let summary = auth_results::summarize(&values, trusted.as_deref());
        pretty(&AuthOut { headers, summary })
    });
}

#[test]
fn received_corpus() {
    run_corpus("received", |sample| {
        let sent_at = sample.directive("sent_at").map(|s| {
            chrono::DateTime::parse_from_rfc3339(&s)
                .unwrap_or_else(|e| panic!("bad sent_at {s:?}: {e}"))
                .with_timezone(&chrono::Utc)
        });
        let values: Vec<&str> = sample.values.iter().map(String::as_str).collect();
        let hops = values.iter().map(|v| received::parse(v)).collect();
        let delays = match sample.directive("independent").as_deref() {
            Some("yes") => Vec::new(),
            None => received::hop_delays(&values, sent_at),
            Some(other) => panic!("independent: {other:?}, expected `yes`"),
        };
        pretty(&ReceivedOut { hops, delays })
    });
}

#[test]
fn spam_corpus() {
    run_corpus("spam", |sample| {
        let trusted = match sample.directive("trusted").as_deref() {
            None | Some("no") => false,
            Some("yes") => true,
            Some(other) => panic!("trusted: {other:?}, expected `yes` or `no`"),
        };
        let fields: Vec<(&str, &str)> = sample
            .values
            .iter()
            .map(|f| f.split_once(':').unwrap_or_else(|| panic!("not a header field: {f:?}")))
            .collect();
        pretty(&spam::summarize(&fields, trusted))
    });
}

fn pretty(v: &impl Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

/// One fixture file: its directives and header values.
struct Sample {
    comments: Vec<String>,
    values: Vec<String>,
}

impl Sample {
    fn read(text: &str) -> Sample {
        let mut comments = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for line in text.lines() {
            if values.is_empty() && (line.starts_with("# ") || line == "#") {
                comments.push(line.trim_start_matches('#').trim().to_string());
            } else if line.starts_with([' ', '\t']) && !values.is_empty() {
                let last = values.last_mut().expect("checked non-empty");
                last.push('\n');
                last.push_str(line);
            } else {
                values.push(line.to_string());
            }
        }
        Sample { comments, values }
    }

    fn directive(&self, key: &str) -> Option<String> {
        self.comments.iter().find_map(|c| c.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string()))
    }
}

/// Runs `render` over every sample of a corpus and compares with (or, with
/// `UPDATE_EXPECT=1`, rewrites) the expected JSON; reports every mismatch at once.
fn run_corpus(corpus: &str, render: impl Fn(&Sample) -> String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(corpus);
    let update = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    samples.sort();
    assert!(samples.len() >= 10, "{corpus}: only {} samples", samples.len());

    let mut failures = Vec::new();
    for path in &samples {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let sample = Sample::read(&text);
        assert!(!sample.values.is_empty(), "{name}: no header value");
        let got = render(&sample);
        let expected_path = path.with_extension("expected.json");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let got: Value = serde_json::from_str(&got).unwrap();
        let expected: Value = match std::fs::read_to_string(&expected_path) {
            Ok(s) => serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", expected_path.display())),
            Err(e) => {
                failures.push(format!("{name}: {e} (run with UPDATE_EXPECT=1 to create it)"));
                continue;
            }
        };
        if got != expected {
            failures.push(format!(
                "{name}: output differs from {}\n--- expected\n{}\n+++ got\n{}",
                expected_path.file_name().unwrap().to_string_lossy(),
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&got).unwrap()
            ));
        }
    }
    // An expectation whose sample is gone would silently test nothing.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(stem) = n.strip_suffix(".expected.json")
            && !dir.join(format!("{stem}.txt")).exists()
        {
            failures.push(format!("{n}: no {stem}.txt beside it"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {corpus} samples failed:\n\n{}",
        failures.len(),
        samples.len(),
        failures.join("\n\n")
    );
}
