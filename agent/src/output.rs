//! Rendering probe reports: `table` for people, `json` for programs,
//! `nagios` for Nagios/Icinga. Exit codes follow the Nagios convention in
//! every mode: 0 ok, 1 degraded, 2 failed, 3 config or internal error.

use mailloop_common::{Outcome, ProbeReport};
use std::fmt::Write;

/// Output formats of `mailloop-agent probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Nagios,
}

/// The worst outcome of a run, as an exit code.
pub fn exit_code(reports: &[ProbeReport]) -> i32 {
    reports.iter().map(|r| r.outcome).max().unwrap_or(Outcome::Ok).exit_code()
}

pub fn render(format: Format, reports: &[ProbeReport]) -> String {
    match format {
        Format::Table => reports.iter().map(table).collect::<Vec<_>>().join("\n"),
        Format::Json => reports
            .iter()
            .map(|r| serde_json::to_string(r).expect("reports serialize") + "\n")
            .collect(),
        Format::Nagios => nagios(reports),
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 { format!("{:.1} s", ms / 1000.0) } else { format!("{ms:.1} ms") }
}

/// One line per step, then the verdict.
pub fn table(r: &ProbeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "check {}  probe {}  started {}", r.check, r.probe_id, r.started_at);
    let _ = writeln!(out, "  {:<15} {:>10}  {:<4} {:<5} detail", "step", "time", "ok", "code");
    for s in &r.steps {
        let code = s.code.map(|c| c.to_string()).unwrap_or_default();
        let detail = s.detail.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "  {:<15} {:>10}  {:<4} {:<5} {}",
            s.name.as_str(),
            fmt_ms(s.ms),
            if s.ok { "ok" } else { "FAIL" },
            code,
            crate::text::truncate(detail, 100)
        );
    }
    let mut verdict = format!("{}", r.outcome.as_str().to_ascii_uppercase());
    if let Some(rtt) = r.rtt_ms {
        let _ = write!(verdict, "  round trip {}", fmt_ms(rtt));
    }
    if let Some(d) = r.delivery_ms {
        let _ = write!(verdict, "  delivery {}", fmt_ms(d));
    }
    if let Some(q) = &r.queue_id {
        let _ = write!(verdict, "  queue id {q}");
    }
    let _ = writeln!(out, "  result: {verdict}");
    if let Some(f) = &r.failure {
        let code = match (f.code, &f.enhanced) {
            (Some(c), Some(e)) => format!("{c} {e} "),
            (Some(c), None) => format!("{c} "),
            _ => String::new(),
        };
        let _ = writeln!(out, "  failed at {} ({}): {code}{}", f.step, f.class, f.message);
    }
    for reason in &r.reasons {
        let _ = writeln!(out, "  degraded: {reason}");
    }
    for warning in &r.warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    for line in diagnostics(r) {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(t) = &r.trace_id {
        let _ = writeln!(out, "  trace:    {t}");
    }
    out
}

/// The diagnostic summary lines under a table: greylisting, authentication,
/// hops, certificates, SPF budget.
fn diagnostics(r: &ProbeReport) -> Vec<String> {
    let mut lines = Vec::new();
    if r.attempts.len() > 1 {
        let waited = r.greylist_ms.map(fmt_ms).unwrap_or_default();
        let first = r.attempts[0].failure.as_ref().map(|f| format!(" (first: {} {} at {})", f.class, f.code.map(|c| c.to_string()).unwrap_or_default(), f.step)).unwrap_or_default();
        lines.push(format!("greylist: {} attempts, waited {waited}{first}", r.attempts.len()));
    }
    if let Some(a) = &r.auth {
        let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
        let mut line = format!("auth:     spf={} dkim={} dmarc={}", v(&a.spf), v(&a.dkim), v(&a.dmarc));
        if let Some(d) = &a.dkim_domain {
            let _ = write!(line, "  dkim d={d} ({:?})", a.alignment.dkim);
        }
        if let Some(d) = &a.spf_domain {
            let _ = write!(line, "  spf {d} ({:?})", a.alignment.spf);
        }
        if let Some(own) = &a.own_dkim {
            let _ = write!(line, "  own DKIM check: {own}");
        }
        if let Some(id) = &a.authserv_id {
            let _ = write!(line, "  by {id}");
        }
        lines.push(line.replace("(Strict)", "(strict)").replace("(Relaxed)", "(relaxed)").replace("(None)", "(unaligned)"));
    }
    if !r.hops.is_empty() {
        let hops: Vec<String> = r
            .hops
            .iter()
            .map(|h| {
                let by = h.by.as_deref().unwrap_or("?");
                let with = h.with.as_deref().unwrap_or("");
                match (h.delay_ms, &h.note) {
                    (Some(d), _) => format!("{by} +{} s ({with})", d as f64 / 1000.0),
                    (None, Some(n)) => format!("{by} ({with}; {n})"),
                    (None, None) => format!("{by} ({with})"),
                }
            })
            .collect();
        lines.push(format!("hops:     {}", hops.join(" → ")));
    }
    for c in &r.tls {
        lines.push(format!("tls:      {} {} {} days left (until {}), issuer {}", c.protocol, c.endpoint, c.days_left, c.not_after, c.issuer));
    }
    if let Some(b) = &r.spf {
        lines.push(match &b.error {
            // A walk that stopped early has no total to give: say why it stopped.
            Some(e) => format!("spf:      {} walk stopped: {e} ({}/{} lookups, {} void counted before that)", b.domain, b.lookups, b.limit, b.void_lookups),
            None => format!("spf:      {} needs {}/{} lookups, {} void", b.domain, b.lookups, b.limit, b.void_lookups),
        });
    }
    if let Some(rep) = &r.reputation {
        for l in &rep.lookups {
            let state = match (&l.error, l.listed) {
                (_, true) => {
                    let reason = l.reason.as_deref().map(|t| format!(": {t:?}")).unwrap_or_default();
                    format!("LISTED ({}, {}){reason}", l.lists.join(", "), l.codes.join(" "))
                }
                (Some(e), false) => format!("not answered: {e}"),
                (None, false) => "not listed".into(),
            };
            let cached = if l.cached { " (cached)" } else { "" };
            lines.push(format!("blocklist: {} in {}: {state}{cached}", l.name, l.zone));
        }
        for n in &rep.notes {
            lines.push(format!("blocklist: {n}"));
        }
    }
    lines
}

/// `STATUS - summary | perfdata`, one line, per the Nagios plugin guidelines.
pub fn nagios(reports: &[ProbeReport]) -> String {
    let worst = reports.iter().map(|r| r.outcome).max().unwrap_or(Outcome::Ok);
    let status = match worst {
        Outcome::Ok => "OK",
        Outcome::Degraded => "WARNING",
        Outcome::Failed => "CRITICAL",
    };
    let summary: Vec<String> = reports
        .iter()
        .map(|r| match (&r.failure, r.rtt_ms) {
            (Some(f), _) => format!("{}: failed at {} ({}{}): {}", r.check, f.step, f.class, f.code.map(|c| format!(" {c}")).unwrap_or_default(), crate::text::truncate(&f.message, 120)),
            (None, Some(rtt)) if !r.reasons.is_empty() => format!("{}: delivered in {} but {}", r.check, fmt_ms(rtt), r.reasons.join("; ")),
            (None, Some(rtt)) => format!("{}: delivered in {}", r.check, fmt_ms(rtt)),
            (None, None) => format!("{}: {}", r.check, r.outcome.as_str()),
        })
        .collect();
    let multi = reports.len() > 1;
    let mut perf = Vec::new();
    for r in reports {
        let label = |name: &str| if multi { format!("'{}/{name}'", r.check) } else { name.to_string() };
        for s in &r.steps {
            perf.push(format!("{}={:.6}s", label(s.name.as_str()), s.ms / 1000.0));
        }
        if let Some(rtt) = r.rtt_ms {
            perf.push(format!("{}={:.6}s", label("rtt"), rtt / 1000.0));
        }
        if let Some(d) = r.delivery_ms {
            perf.push(format!("{}={:.6}s", label("delivery"), d / 1000.0));
        }
        // Always there (0 without a deferral), so a graph never has holes.
        perf.push(format!("{}={:.3}s", label("greylist"), r.greylist_ms.unwrap_or(0.0) / 1000.0));
        if let Some(days) = r.tls.iter().map(|c| c.days_left).min() {
            perf.push(format!("{}={days};14;0", label("cert_days")));
        }
        if let Some(b) = &r.spf {
            perf.push(format!("{}={};9;10;0", label("spf_lookups"), b.lookups));
        }
    }
    // Nagios reserves '|' for the perfdata separator.
    let summary = summary.join(", ").replace('|', "/");
    format!("{status} - {summary} | {}\n", perf.join(" "))
}
