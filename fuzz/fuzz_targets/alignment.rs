//! DMARC alignment and organizational domains on arbitrary names.
//!
//! The input is split on NUL into two names. Alignment must be symmetric,
//! a valid domain name is strictly aligned with itself, a name that is not
//! one is never aligned with anything, and an organizational domain is its
//! own organizational domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailloop_common::alignment::{Alignment, alignment, is_domain_name, organizational_domain};

fuzz_target!(|data: &str| {
    let (a, b) = data.split_once('\0').unwrap_or((data, ""));
    assert_eq!(alignment(a, b), alignment(b, a));
    let itself = alignment(a, a);
    if is_domain_name(a) {
        assert_eq!(itself, Alignment::Strict);
    } else {
        // A malformed identifier must never turn into a pass (issue 16).
        assert_eq!(itself, Alignment::None);
        assert_eq!(alignment(a, b), Alignment::None);
    }
    let org = organizational_domain(a);
    assert_eq!(organizational_domain(&org), org);
});
