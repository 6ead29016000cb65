//! DMARC alignment and organizational domains on arbitrary names.
//!
//! The input is split on NUL into two names. Alignment must be symmetric,
//! a name is strictly aligned with itself, and an organizational domain is
//! its own organizational domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailloop_common::alignment::{Alignment, alignment, organizational_domain};

fuzz_target!(|data: &str| {
    let (a, b) = data.split_once('\0').unwrap_or((data, ""));
    assert_eq!(alignment(a, b), alignment(b, a));
    // Only whitespace and dots are stripped, so a name with a letter or
    // digit is never empty and is strictly aligned with itself.
    let itself = alignment(a, a);
    assert!(matches!(itself, Alignment::Strict | Alignment::None));
    if a.chars().any(char::is_alphanumeric) {
        assert_eq!(itself, Alignment::Strict);
    }
    let org = organizational_domain(a);
    assert_eq!(organizational_domain(&org), org);
});
