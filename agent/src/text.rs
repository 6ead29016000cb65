//! Server text cut to fit a report's detail or a log line.

/// At most `max` bytes of `s` (cut on a character boundary), ending in `…`
/// when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
