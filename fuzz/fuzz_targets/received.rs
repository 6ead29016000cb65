//! `Received:` parsing and hop delays on arbitrary text.
//!
//! The input is split on NUL into several header values (top first). Checks
//! beyond "no panic": one delay per header, never a negative delay, and a
//! delay only where both ends have a date.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailloop_common::received::{hop_delays, parse, parse_date};

fuzz_target!(|data: &str| {
    let _ = parse_date(data);
    let values: Vec<&str> = data.split('\0').collect();
    let hops: Vec<_> = values.iter().map(|v| parse(v)).collect();
    let sent_at = chrono::DateTime::from_timestamp(1_795_906_610, 0);
    for sent in [None, sent_at] {
        let delays = hop_delays(&values, sent);
        assert_eq!(delays.len(), values.len());
        for (d, hop) in delays.iter().zip(hops.iter().rev()) {
            assert_eq!(d.at.is_some(), hop.at.is_some());
            if let Some(ms) = d.delay_ms {
                assert!(ms >= 0, "negative delay {ms}");
                assert!(d.at.is_some() && d.note.is_none());
            }
        }
    }
});
