//! `Authentication-Results` parsing and summarizing on arbitrary text.
//!
//! The input is split on NUL into several header values (one message's
//! headers, top first). Besides "no panic", it checks what callers rely on:
//! a parse that succeeds says something, a summary accounts for every
//! header, and the model survives a JSON round trip. (Alignment has its own
//! target: the compiled Public Suffix List is so much code that libFuzzer's
//! per-run coverage scan would slow this one tenfold.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailloop_common::auth_results::{AuthResults, parse, summarize};

fuzz_target!(|data: &str| {
    let headers: Vec<&str> = data.split('\0').collect();
    for h in &headers {
        if let Ok(ar) = parse(h) {
            assert!(ar.none || !ar.results.is_empty(), "Ok without results: {h:?}");
            for r in &ar.results {
                assert!(!r.result.is_empty() && !r.method.is_empty(), "empty method or result: {h:?}");
            }
            let json = serde_json::to_string(&ar).unwrap();
            let back: AuthResults = serde_json::from_str(&json).unwrap();
            assert_eq!(back, ar);
        }
    }
    let trusted = headers.first().and_then(|h| parse(h).ok()).map(|ar| ar.authserv_id);
    for t in [None, trusted.as_deref(), Some("mx.receiver.test")] {
        let s = summarize(&headers, t);
        assert_eq!(s.raw.len() + s.ignored, headers.len());
    }
});
