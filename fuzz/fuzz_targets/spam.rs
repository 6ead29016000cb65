//! Spam verdict headers on arbitrary text.
//!
//! The input is split on NUL into header values, each given one of the
//! names `spam::summarize` reads (cycling through them), so every parser
//! branch sees every input. Besides "no panic": a score is finite, rule
//! names are bounded, every header is accounted for, and the report
//! survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailloop_common::spam::{HEADERS, SpamReport, summarize};

fuzz_target!(|data: &str| {
    let headers: Vec<(&str, &str)> = data.split('\0').enumerate().map(|(i, v)| (HEADERS[i % HEADERS.len()], v)).collect();
    for trusted in [false, true] {
        let Some(r) = summarize(&headers, trusted) else {
            assert!(headers.is_empty(), "spam headers but no report");
            continue;
        };
        assert_eq!(r.trusted, trusted);
        assert!(r.score.is_none_or(f64::is_finite) && r.threshold.is_none_or(f64::is_finite));
        assert!(r.rules.len() <= 64 && r.rules.iter().all(|x| !x.is_empty() && x.len() <= 200));
        assert!(r.ignored <= headers.len());
        assert!(r.scl.is_none_or(|s| (-1..=9).contains(&s)));
        let json = serde_json::to_string(&r).unwrap();
        let back: SpamReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
});
