//! The probe message: a small text mail tagged so it can be found again.

use crate::imap::{CHECK_HEADER, PROBE_HEADER};
use chrono::{DateTime, Utc};
use mailloop_common::config::ProbeBody;

/// A probe id: sortable by time, unique by 64 random bits.
/// `ml-20261127T225651-3f9a2c1d77e0b4a5`
pub fn new_probe_id(now: DateTime<Utc>) -> String {
    let mut rnd = [0u8; 8];
    // getrandom only fails where the OS has no entropy source at all.
    getrandom::fill(&mut rnd).expect("the OS random source is available");
    let hex: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
    format!("ml-{}-{hex}", now.format("%Y%m%dT%H%M%S"))
}

/// The Message-ID for a probe, in the sender's domain.
pub fn message_id(probe_id: &str, from: &str) -> String {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("mailloop.invalid");
    format!("<{probe_id}@{domain}>")
}

/// The RFC 5322 message, LF line ends (the SMTP layer makes them CRLF).
/// The GTUBE test string (SpamAssassin's "Generic Test for Unsolicited Bulk
/// Email"): spam filters score a message carrying it as certain spam.
pub const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

pub fn build(check: &str, probe_id: &str, message_id: &str, from: &str, to: &str, now: DateTime<Utc>, body: ProbeBody) -> Vec<u8> {
    let spam_test = match body {
        ProbeBody::Normal => String::new(),
        ProbeBody::Gtube => format!("\nThis probe tests the spam filter on purpose (probe_body = \"gtube\"):\n\n{GTUBE}\n"),
    };
    format!(
        "Date: {date}\n\
         From: <{from}>\n\
         To: <{to}>\n\
         Subject: mailloop probe {check} {probe_id}\n\
         Message-ID: {message_id}\n\
         {PROBE_HEADER}: {probe_id}\n\
         {CHECK_HEADER}: {check}\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=us-ascii\n\
         Content-Transfer-Encoding: 7bit\n\
         Auto-Submitted: auto-generated\n\
         \n\
         This is a mailloop delivery probe (check {check}, probe {probe_id}).\n\
         It measures how long mail takes to arrive and is deleted once found.\n\
         {spam_test}",
        date = now.to_rfc2822(),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_are_unique_and_tagged() {
        let now = Utc::now();
        let a = new_probe_id(now);
        let b = new_probe_id(now);
        assert_ne!(a, b);
        assert!(a.starts_with("ml-") && a.len() == "ml-20261127T225651-".len() + 16, "{a}");
        let msg = String::from_utf8(build("corp", &a, &message_id(&a, "p@sender.test"), "p@sender.test", "q@receiver.test", now, ProbeBody::Normal)).unwrap();
        assert!(msg.contains(&format!("\nX-Mailloop-Probe: {a}\n")));
        assert!(msg.contains(&format!("\nMessage-ID: <{a}@sender.test>\n")));
        assert!(msg.contains("\nX-Mailloop-Check: corp\n"));
    }
}
