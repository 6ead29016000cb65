//! SMTP dialogue pieces for fake servers: a server that is ready for mail,
//! one that takes it, one that greylists.

use super::{Action, Identity, Script, close, expect, read_data, say, start_tls};

/// The name the fake SMTP server calls itself.
pub const HOST: &str = "fake-smtp.invalid";

/// Banner and EHLO (no STARTTLS offered): ready for MAIL FROM.
pub fn ready() -> Script {
    Script::new([
        say(&format!("220 {HOST} ESMTP fake")),
        expect("EHLO"),
        say(&format!("250-{HOST}")),
        say("250 PIPELINING"),
    ])
}

/// Banner and an EHLO that offers STARTTLS: ready for the STARTTLS command.
pub fn ready_with_starttls() -> Script {
    Script::new([
        say(&format!("220 {HOST} ESMTP fake")),
        expect("EHLO"),
        say(&format!("250-{HOST}")),
        say("250-PIPELINING"),
        say("250 STARTTLS"),
    ])
}

/// STARTTLS accepted and the handshake done with `identity`, then EHLO again.
pub fn upgrades_to_tls(identity: &Identity) -> Vec<Action> {
    vec![
        expect("STARTTLS"),
        say("220 2.0.0 Ready to start TLS"),
        start_tls(identity),
        expect("EHLO"),
        say(&format!("250 {HOST}")),
    ]
}

/// MAIL FROM through the end-of-data reply, then QUIT: the message is taken.
pub fn takes_the_message() -> Vec<Action> {
    vec![
        expect("MAIL FROM:<"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO:<"),
        say("250 2.1.5 Ok"),
        expect("DATA"),
        say("354 End data with <CR><LF>.<CR><LF>"),
        read_data(),
        say("250 2.0.0 Ok: queued as FAKE42"),
        expect("QUIT"),
        say("221 2.0.0 Bye"),
        close(),
    ]
}

/// A server that takes the probe without fuss.
pub fn delivers() -> Script {
    ready().then(takes_the_message())
}

/// The greylisting reply postgrey gives.
pub const GREYLISTED: &str =
    "451 4.2.0 <probe@receiver.invalid>: Recipient address rejected: Greylisted, see https://postgrey.schweikert.ch/";

/// Greylisting: the first `times` connections are deferred at RCPT TO with
/// [`GREYLISTED`] (the client says QUIT and leaves), the next one is taken.
/// One script per connection, for [`super::FakeServer::start_each`]; a test
/// of the greylist retry counts the connections in the transcript.
pub fn greylists_then_accepts(times: usize) -> Vec<Script> {
    let deferred = ready().then([
        expect("MAIL FROM:<"),
        say("250 2.1.0 Ok"),
        expect("RCPT TO:<"),
        say(GREYLISTED),
        expect("QUIT"),
        say("221 2.0.0 Bye"),
        close(),
    ]);
    let mut scripts = vec![deferred; times];
    scripts.push(delivers());
    scripts
}
