//! SMTP reply lines (agent `smtp::reply`) on arbitrary bytes.
//!
//! The input is split into lines as a server would send them; each line
//! goes through `parse_line` and a `ReplyBuilder`, and every complete
//! reply through the accessors the probe uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reply::{MAX_LINES, ReplyBuilder, parse_line};

/// `mailloop_agent::smtp::reply`, compiled in by path: the module is pure
/// (bytes in, values out) and depends only on mailloop-common.
#[path = "../../agent/src/smtp/reply.rs"]
#[allow(dead_code)]
mod reply;

fuzz_target!(|data: &[u8]| {
    let mut builder = ReplyBuilder::default();
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Ok(l) = parse_line(line) {
            assert!((100..=599).contains(&l.code));
        }
        match builder.push(line) {
            Ok(Some(reply)) => {
                assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_LINES);
                let enhanced = reply.enhanced();
                if let Some(e) = &enhanced {
                    assert_eq!(e.as_bytes()[0] - b'0', (reply.code / 100) as u8);
                }
                let _ = reply.queue_id();
                let _ = reply.message();
                let _ = reply.ehlo_keywords();
                let _ = reply.is_positive();
                let code = reply.code();
                let _ = code.classify(false);
                let _ = code.classify(true);
            }
            Ok(None) => {}
            Err(_) => builder = ReplyBuilder::default(),
        }
    }
});
