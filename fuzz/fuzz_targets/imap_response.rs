//! IMAP response lines (agent `imap::response`) on arbitrary bytes.
//!
//! Each line is checked for a literal announcement, then read as a
//! response through every accessor the probe uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use response::{Response, literal_len, quote};

/// `mailloop_agent::imap::response`, compiled in by path: the module is
/// pure and depends on nothing else of the agent.
#[path = "../../agent/src/imap/response.rs"]
#[allow(dead_code)]
mod response;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let _ = literal_len(line);
        let r = Response { text: String::from_utf8_lossy(line).into_owned(), literals: Vec::new() };
        let _ = r.tag();
        let _ = r.is_untagged();
        let _ = r.is_continuation();
        let _ = r.status();
        let _ = r.code();
        let _ = r.exists();
        let _ = r.search();
        let _ = r.capabilities();
        let _ = r.status_uidnext();
        if let Some((_, name)) = r.list() {
            assert!(!name.is_empty() || r.text.contains("\"\""), "empty LIST name from {:?}", r.text);
        }
        if let Some(q) = quote(&r.text) {
            assert!(q.starts_with('"') && q.ends_with('"'));
        }
    }
});
