//! IMAP dialogue pieces for fake servers: a greeting, a session that is
//! logged in and selected, and a mailbox where the probe is found at once.

use super::{Script, close, expect, fetch_probe, on, respond, say, tagged};

/// The greeting, with capabilities so the client need not ask for them.
pub fn greeting() -> Script {
    Script::new([say("* OK [CAPABILITY IMAP4rev1 IDLE] fake IMAP ready")])
}

/// Greeting, LOGIN, SELECT of an empty INBOX and the LIST that looks for a
/// junk folder (none), in that order: ready for
/// the next command, which the test scripts.
pub fn selected() -> Script {
    greeting().then([
        expect("LOGIN"),
        tagged("OK LOGIN completed"),
        expect("SELECT"),
        say("* 0 EXISTS"),
        say("* OK [UIDVALIDITY 1] UIDs valid"),
        tagged("OK [READ-WRITE] SELECT completed"),
        // looking for a junk folder: there is none
        expect("LIST"),
        say("* LIST (\\HasNoChildren) \".\" INBOX"),
        tagged("OK LIST completed"),
    ])
}

/// A well-behaved server whose INBOX holds the probe from the first
/// search on: it answers LOGIN, SELECT, the probe's SEARCH and FETCH,
/// cleanup and LOGOUT, in whatever order they come. So it also serves a
/// probe whose SMTP half failed (LOGIN, SELECT, LOGOUT).
pub fn mailbox() -> Script {
    greeting().then([respond([
        on("LOGIN", [tagged("OK LOGIN completed")]),
        on("CAPABILITY", [say("* CAPABILITY IMAP4rev1 IDLE"), tagged("OK CAPABILITY completed")]),
        on("SELECT", [say("* 0 EXISTS"), tagged("OK [READ-WRITE] SELECT completed")]),
        on("LIST", [say("* LIST (\\HasNoChildren) \".\" INBOX"), tagged("OK LIST completed")]),
        on("UID SEARCH", [say("* SEARCH 1"), tagged("OK SEARCH completed")]),
        on("UID FETCH", [fetch_probe(1), tagged("OK FETCH completed")]),
        on("UID STORE", [tagged("OK STORE completed")]),
        on("EXPUNGE", [say("* 1 EXPUNGE"), tagged("OK EXPUNGE completed")]),
        on("NOOP", [tagged("OK NOOP completed")]),
        on("LOGOUT", [say("* BYE fake IMAP signing off"), tagged("OK LOGOUT completed"), close()]),
    ])])
}
