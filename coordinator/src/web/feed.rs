//! `{path}.atom`: an Atom feed (RFC 4287) of the public checks' incidents
//! of the last 90 days, one entry per incident, updated with each public
//! timeline line (so a reader sees a note or a resolution as an update).
//! Text only: every value is XML-escaped, nothing is markup.

use super::view::{IncidentView, fmt_datetime, fmt_month, rfc3339};

/// `s` with the five XML special characters escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {}
            c => out.push(c),
        }
    }
    out
}

/// The feed; `incidents` in any order (entries are newest update first).
pub fn atom(title: &str, path: &str, now_ms: i64, incidents: &[IncidentView]) -> String {
    let mut sorted: Vec<&IncidentView> = incidents.iter().collect();
    sorted.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.id.cmp(&a.id)));
    let updated = sorted.first().map_or(now_ms, |i| i.updated_ms);
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    xml.push_str("<feed xmlns=\"http://www.w3.org/2005/Atom\">\n");
    xml.push_str(&format!("<title>{}: incidents</title>\n", esc(title)));
    xml.push_str(&format!("<id>urn:mailloop:status:{}</id>\n", esc(path)));
    xml.push_str(&format!("<updated>{}</updated>\n", rfc3339(updated)));
    xml.push_str(&format!(
        "<link rel=\"self\" href=\"{}.atom\"/>\n<link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>\n",
        esc(path),
        esc(path)
    ));
    xml.push_str("<author><name>mailloop</name></author>\n");
    for i in sorted {
        let state = match i.status {
            "resolved" => "resolved",
            "identified" => "identified",
            _ => "investigating",
        };
        let lines: Vec<String> = i
            .timeline
            .iter()
            .map(|e| format!("{} ({}): {}", e.label, fmt_datetime(e.at_ms), e.text))
            .collect();
        xml.push_str("<entry>\n");
        xml.push_str(&format!(
            "<title>{}: {} ({state})</title>\n",
            esc(&i.display_name),
            esc(&i.headline)
        ));
        xml.push_str(&format!("<id>urn:mailloop:incident:{}</id>\n", i.id));
        xml.push_str(&format!(
            "<link href=\"{}/history/{}#i{}\"/>\n",
            esc(path),
            fmt_month(i.opened_ms),
            i.id
        ));
        xml.push_str(&format!(
            "<published>{}</published>\n",
            rfc3339(i.opened_ms)
        ));
        xml.push_str(&format!("<updated>{}</updated>\n", rfc3339(i.updated_ms)));
        xml.push_str(&format!(
            "<content type=\"text\">{}</content>\n",
            esc(&lines.join("\n"))
        ));
        xml.push_str("</entry>\n");
    }
    xml.push_str("</feed>\n");
    xml
}
