//! The IMAP half of a probe: log in before the send ends, notice the
//! arrival (IDLE, or polling), find the probe by its header, fetch it,
//! delete it and sweep stale probes, log out. Every step timed.
//!
//! As with SMTP, mailloop speaks the few commands it needs itself, with
//! bounded reads; [`response`] holds the parsing.

pub mod response;

use crate::steps::{Done, Recorder, StepError, ms};
use crate::transport::{self, Conn};
use mailloop_common::config::{CheckConfig, Security, WaitMode};
use mailloop_common::{Failure, FailureClass, Secret, StepName};
use crate::oauth2::sasl;
use response::{Response, Status};
use std::time::{Duration, Instant};
use crate::tls::TlsClient;

/// Largest literal accepted (the probe is a few KiB; a mailbox message we
/// fetch is ours).
pub const MAX_LITERAL: u64 = 16 * 1024 * 1024;
/// Most untagged responses accepted for one command.
const MAX_UNTAGGED: usize = 100_000;
/// Most bytes kept of the answer to one command, lines and literals of all
/// its responses together: one literal at the limit, and a MiB for the rest.
/// Without it, literals each under the limit could follow one another forever.
pub const MAX_ANSWER: u64 = MAX_LITERAL + 1024 * 1024;
/// The header that identifies a probe, and the one naming its check.
pub const PROBE_HEADER: &str = "X-Mailloop-Probe";
pub const CHECK_HEADER: &str = "X-Mailloop-Check";
/// RFC 2177: re-issue IDLE at least every 29 minutes.
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

/// Folder names that usually hold spam, tried when no folder carries the
/// RFC 6154 `\Junk` attribute (compared case-insensitively).
pub const JUNK_NAMES: [&str; 6] = ["Junk", "Spam", "Junk Email", "[Gmail]/Spam", "INBOX.Junk", "INBOX/Junk"];

/// A logged-in, selected IMAP connection.
pub struct Session {
    conn: Conn,
    next_tag: u32,
    caps: Vec<String>,
    logging_out: bool,
    /// Junk folders watched besides the mailbox.
    junk: Vec<JunkWatch>,
    /// Junk folders that could not be watched, and why (become reasons).
    pub junk_problems: Vec<String>,
}

/// A junk folder and its last seen `UIDNEXT`: a `STATUS` showing a higher
/// one means something arrived there.
struct JunkWatch {
    name: String,
    quoted: String,
    uidnext: u32,
}

/// The probe as found in the mailbox.
#[derive(Debug)]
pub struct Found {
    pub uid: u32,
    pub found_at: Instant,
    pub raw: Vec<u8>,
    /// The junk folder it was found in; `None`: the check's mailbox.
    pub junk_folder: Option<String>,
}

impl Session {
    fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }

    async fn read_response(&mut self, before_greeting: bool) -> Result<Response, StepError> {
        let tr = |e| StepError::transport(e, before_greeting);
        let mut resp = Response::default();
        let mut kept = 0u64;
        loop {
            let line = self.conn.read_line(response::MAX_LINE).await.map_err(tr)?;
            kept += line.len() as u64;
            let literal = response::literal_len(&line);
            resp.text.push_str(&String::from_utf8_lossy(&line));
            match literal {
                None => return Ok(resp),
                Some(Err(m)) => return Err(StepError::new(FailureClass::Protocol, m)),
                Some(Ok(n)) if n > MAX_LITERAL => {
                    return Err(StepError::new(
                        FailureClass::Protocol,
                        format!("server announced a {n}-byte literal (limit {MAX_LITERAL})"),
                    ));
                }
                Some(Ok(n)) if kept + n > MAX_ANSWER => return Err(answer_too_large()),
                Some(Ok(n)) => {
                    let bytes = self.conn.read_exact(n as usize).await.map_err(tr)?;
                    kept += n;
                    resp.literals.push(bytes);
                }
            }
        }
    }

    fn note(&mut self, r: &Response) {
        if let Some(caps) = r.capabilities() {
            self.caps = caps;
        }
    }

    async fn send_line(&mut self, line: &str) -> Result<String, StepError> {
        self.next_tag += 1;
        let tag = format!("m{}", self.next_tag);
        self.conn
            .write_all_parts(&[tag.as_bytes(), b" ", line.as_bytes(), b"\r\n"])
            .await
            .map_err(|e| StepError::transport(e, false))?;
        Ok(tag)
    }

    /// Reads until the tagged reply for `tag`; returns the untagged responses
    /// and the tagged one. `NO`/`BAD` become errors of `class`.
    async fn finish(&mut self, tag: &str, class: FailureClass) -> Result<(Vec<Response>, Response), StepError> {
        let mut untagged = Vec::new();
        let mut kept = 0u64;
        loop {
            let r = self.read_response(false).await?;
            kept += r.text.len() as u64 + r.literals.iter().map(|l| l.len() as u64).sum::<u64>();
            if kept > MAX_ANSWER {
                return Err(answer_too_large());
            }
            self.note(&r);
            if r.tag() == Some(tag) {
                return match r.status() {
                    Some((Status::Ok, _)) => Ok((untagged, r)),
                    Some((_, text)) => Err(StepError::new(class, text.to_string())),
                    None => Err(StepError::new(FailureClass::Protocol, format!("malformed tagged reply {:?}", r.text))),
                };
            }
            // LOGOUT is answered with BYE before its tagged OK; elsewhere BYE ends the session.
            if let Some((Status::Bye, text)) = r.status().filter(|_| r.is_untagged() && !self.logging_out) {
                return Err(StepError::new(FailureClass::Protocol, format!("server closed the session: {text}")));
            }
            if untagged.len() >= MAX_UNTAGGED {
                return Err(StepError::new(FailureClass::Protocol, "too many untagged responses"));
            }
            untagged.push(r);
        }
    }

    /// `AUTHENTICATE` with a bearer token (XOAUTH2 or OAUTHBEARER, as
    /// offered; the initial response inline when SASL-IR is offered). A
    /// refused token comes as a `+` error challenge: acknowledged, then
    /// decoded into the failure's message with the server's `NO` text.
    async fn authenticate(&mut self, user: &str, token: &Secret, host: &str, port: u16) -> Result<&'static str, StepError> {
        if self.caps.is_empty() {
            self.command("CAPABILITY", FailureClass::Protocol).await?;
        }
        let offered: Vec<String> = self.caps.iter().filter_map(|c| c.strip_prefix("AUTH=")).map(str::to_string).collect();
        let Some(mech) = sasl::choose(&offered) else {
            return Err(StepError::new(
                FailureClass::Auth,
                format!("no AUTH= mechanism takes a token (offered: {}; an OAuth2 login needs XOAUTH2 or OAUTHBEARER)", if offered.is_empty() { "none".into() } else { offered.join(" ") }),
            ));
        };
        let initial = sasl::initial_response(mech, user, host, port, token.expose());
        let mut initial_sent = self.has("SASL-IR");
        let tag = if initial_sent {
            self.send_line(&format!("AUTHENTICATE {} {initial}", mech.as_str())).await?
        } else {
            self.send_line(&format!("AUTHENTICATE {}", mech.as_str())).await?
        };
        let mut challenge = None;
        loop {
            let r = self.read_response(false).await?;
            self.note(&r);
            if r.is_continuation() {
                let answer = if !initial_sent {
                    initial_sent = true;
                    initial.as_str()
                } else if challenge.is_none() {
                    challenge = Some(sasl::describe_challenge(r.text.trim_start_matches('+').trim()));
                    mech.error_ack()
                } else {
                    return Err(StepError::new(FailureClass::Protocol, "a second challenge after the error challenge"));
                };
                self.conn.write_all_parts(&[answer.as_bytes(), b"\r\n"]).await.map_err(|e| StepError::transport(e, false))?;
                continue;
            }
            if r.tag() != Some(tag.as_str()) {
                if let Some((Status::Bye, text)) = r.status().filter(|_| r.is_untagged()) {
                    return Err(StepError::new(FailureClass::Protocol, format!("server closed the session: {text}")));
                }
                continue;
            }
            return match (r.status(), challenge) {
                (Some((Status::Ok, _)), None) => Ok(mech.as_str()),
                (Some((Status::Ok, _)), Some(c)) => Err(StepError::new(FailureClass::Protocol, format!("OK after an error challenge ({c})"))),
                (Some((_, text)), c) => Err(StepError::new(
                    FailureClass::Auth,
                    match c {
                        Some(c) => format!("{text} ({}; {c})", mech.as_str()),
                        None => format!("{text} ({})", mech.as_str()),
                    },
                )),
                (None, _) => Err(StepError::new(FailureClass::Protocol, format!("malformed tagged reply {:?}", r.text))),
            };
        }
    }

    async fn command(&mut self, line: &str, class: FailureClass) -> Result<(Vec<Response>, Response), StepError> {
        let tag = self.send_line(line).await?;
        self.finish(&tag, class).await
    }

    /// `UID SEARCH` for the probe header; the UIDs found.
    async fn search_probe(&mut self, probe_id: &str) -> Result<Vec<u32>, StepError> {
        let (untagged, _) = self
            .command(&format!("UID SEARCH HEADER {PROBE_HEADER} \"{probe_id}\""), FailureClass::Protocol)
            .await?;
        Ok(untagged.iter().filter_map(Response::search).flatten().collect())
    }

    /// Polls with NOOP on a short, growing interval until the server reports
    /// a change (`EXISTS`) or `until` passes. Dovecot holds IDLE
    /// notifications back for about 0.5 s after a delivery; a NOOP makes it
    /// look at the mailbox at once, so the first seconds after a send are
    /// watched this way and IDLE takes over after.
    async fn nudge_until(&mut self, until: Instant, reply_within: Duration) -> Result<bool, StepError> {
        let mut interval = Duration::from_millis(2);
        while Instant::now() < until {
            tokio::time::sleep_until((Instant::now() + interval).min(until).into()).await;
            let (untagged, _) = answered(reply_within, "NOOP", self.command("NOOP", FailureClass::Protocol)).await?;
            if untagged.iter().any(|r| r.exists().is_some()) {
                return Ok(true);
            }
            if answered(reply_within, "STATUS", self.junk_changed()).await?.is_some() {
                return Ok(true);
            }
            interval = (interval * 5 / 4).min(Duration::from_millis(25));
        }
        Ok(false)
    }

    /// One `STATUS (UIDNEXT)` per watched junk folder (all sent at once,
    /// one round trip): the index of the first whose UIDNEXT moved.
    async fn junk_changed(&mut self) -> Result<Option<usize>, StepError> {
        if self.junk.is_empty() {
            return Ok(None);
        }
        let mut tags = Vec::with_capacity(self.junk.len());
        for i in 0..self.junk.len() {
            let line = format!("STATUS {} (UIDNEXT)", self.junk[i].quoted);
            tags.push(self.send_line(&line).await?);
        }
        let mut changed = None;
        for (i, tag) in tags.iter().enumerate() {
            let (untagged, _) = self.finish(tag, FailureClass::Protocol).await?;
            let next = untagged.iter().find_map(Response::status_uidnext);
            if changed.is_none() && next.is_some_and(|n| n != self.junk[i].uidnext) {
                changed = Some(i);
            }
        }
        Ok(changed)
    }

    /// Looks for the probe in the junk folders whose UIDNEXT moved. Found:
    /// that folder stays selected (fetch and cleanup happen there). Not
    /// found: the new UIDNEXT is remembered and `mailbox` selected again.
    async fn search_junk(&mut self, mailbox: &str, probe_id: &str) -> Result<Option<(u32, String)>, StepError> {
        while let Some(i) = self.junk_changed().await? {
            let quoted = self.junk[i].quoted.clone();
            let (untagged, _) = self.command(&format!("SELECT {quoted}"), FailureClass::Protocol).await?;
            let uidnext = untagged.iter().find_map(|r| r.code()?.strip_prefix("UIDNEXT ")?.trim().parse().ok());
            if let Some(uid) = self.search_probe(probe_id).await?.first() {
                return Ok(Some((*uid, self.junk[i].name.clone())));
            }
            // Without a UIDNEXT in the SELECT answer, stop watching rather than loop.
            match uidnext {
                Some(n) => self.junk[i].uidnext = n,
                None => {
                    let w = self.junk.remove(i);
                    self.junk_problems.push(format!("junk folder {:?} not watched: SELECT gave no UIDNEXT", w.name));
                }
            }
            self.command(&format!("SELECT {mailbox}"), FailureClass::Protocol).await?;
        }
        Ok(None)
    }

    /// IDLE until the server announces a new message or `until` passes.
    /// Returns whether something arrived.
    async fn idle(&mut self, until: Instant, reply_within: Duration) -> Result<bool, StepError> {
        let tag = self.send_line("IDLE").await?;
        // Untagged updates may come before the continuation.
        let mut arrived = false;
        answered(reply_within, "IDLE", async {
            loop {
                let r = self.read_response(false).await?;
                if r.is_continuation() {
                    return Ok(());
                }
                if r.tag() == Some(tag.as_str()) {
                    return Err(StepError::new(FailureClass::Protocol, format!("IDLE refused: {}", r.text)));
                }
                arrived |= r.exists().is_some();
            }
        })
        .await?;
        let renew = Instant::now() + IDLE_RENEW;
        while !arrived {
            let stop = until.min(renew);
            match tokio::time::timeout_at(stop.into(), self.read_response(false)).await {
                Err(_) => break,
                Ok(r) => {
                    let r = r?;
                    if let Some((Status::Bye, text)) = r.status() {
                        return Err(StepError::new(FailureClass::Protocol, format!("server ended IDLE: {text}")));
                    }
                    arrived |= r.exists().is_some();
                }
            }
        }
        self.conn.write_all(b"DONE\r\n").await.map_err(|e| StepError::transport(e, false))?;
        answered(reply_within, "IDLE DONE", self.finish(&tag, FailureClass::Protocol)).await?;
        Ok(arrived)
    }
}

fn answer_too_large() -> StepError {
    StepError::new(FailureClass::Protocol, format!("server's answer exceeds the limit of {MAX_ANSWER} bytes"))
}

/// Bounds one exchange inside `imap.wait`. The wait as a whole may last
/// until the deadline, so it runs outside a step timeout; without this, a
/// server that stops answering a NOOP or an IDLE would hold the probe forever.
async fn answered<T>(
    within: Duration,
    what: &str,
    exchange: impl std::future::Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(within, exchange).await {
        Ok(r) => r,
        Err(_) => Err(StepError::new(
            FailureClass::Timeout,
            format!("{what} got no answer within {}", crate::steps::fmt_duration(within)),
        )),
    }
}

/// Connects, logs in (with `token` when the side uses OAuth2) and selects
/// the probe mailbox.
pub async fn open(
    check: &CheckConfig,
    tls: &TlsClient,
    connect_to: &transport::ConnectTo,
    token: Option<&Secret>,
    rec: &mut Recorder,
) -> Result<Session, Failure> {
    let ep = &check.imap.endpoint;
    let t = |s| check.timeout(s);
    let name = transport::server_name(ep.tls_name());

    let conn = rec
        .run(StepName::ImapConnect, t(StepName::ImapConnect), async {
            Conn::connect_via(&ep.host, ep.port, connect_to)
                .await
                .map(|c| Done::new(c).detail(connect_to.detail(&ep.host, ep.port)))
                .map_err(|e| StepError::transport(e, true))
        })
        .await?;
    let mut s = Session { conn, next_tag: 0, caps: Vec::new(), logging_out: false, junk: Vec::new(), junk_problems: Vec::new() };

    if ep.security == Security::Tls {
        let r = rec
            .run(StepName::ImapTls, t(StepName::ImapTls), async {
                let name = name.clone().map_err(|m| StepError::new(FailureClass::Tls, m))?;
                let info = s.conn.start_tls(tls, name).await.map_err(|e| StepError::transport(e, true))?;
                let detail = info.to_string();
                Ok(Done::new(info).detail(detail))
            })
            .await;
        rec.cert("imap", &crate::smtp::endpoint_label(ep), s.conn.peer_cert.take(), r.as_ref().ok());
        r?;
    }

    rec.run(StepName::ImapGreeting, t(StepName::ImapGreeting), async {
        let r = s.read_response(true).await?;
        s.note(&r);
        match r.status().filter(|_| r.is_untagged()) {
            Some((Status::Ok, text)) => Ok(Done::new(()).detail(crate::text::truncate(text, 120))),
            Some((Status::PreAuth, _)) => Err(StepError::new(FailureClass::Protocol, "server sent PREAUTH; mailloop needs to log in")),
            Some((Status::Bye, text)) => Err(StepError::new(FailureClass::Connect, format!("server refused the connection: BYE {text}"))),
            _ => Err(StepError::new(FailureClass::Protocol, format!("not an IMAP greeting: {:?}", crate::text::truncate(&r.text, 120)))),
        }
    })
    .await?;

    if ep.security == Security::Starttls {
        let r = rec.run(StepName::ImapStarttls, t(StepName::ImapStarttls), async {
            if s.caps.is_empty() {
                s.command("CAPABILITY", FailureClass::Protocol).await?;
            }
            if !s.has("STARTTLS") {
                return Err(StepError::new(FailureClass::Tls, "server does not offer STARTTLS (security = \"starttls\" requires it)"));
            }
            s.command("STARTTLS", FailureClass::Tls).await?;
            let name = name.clone().map_err(|m| StepError::new(FailureClass::Tls, m))?;
            let info = s.conn.start_tls(tls, name).await.map_err(|e| StepError::transport(e, false))?;
            // Capabilities before TLS must not be trusted after it.
            s.caps.clear();
            let detail = info.to_string();
            Ok(Done::new(info).detail(detail))
        })
        .await;
        rec.cert("imap", &crate::smtp::endpoint_label(ep), s.conn.peer_cert.take(), r.as_ref().ok());
        r?;
    }

    let creds = ep.credentials.as_ref().expect("validated: IMAP needs a login");
    rec.run(StepName::ImapLogin, t(StepName::ImapLogin), async {
        let mut done = Done::new(());
        match (token, creds.password()) {
            (Some(token), _) => {
                let mech = s.authenticate(&creds.username, token, ep.tls_name(), ep.port).await?;
                done = done.detail(mech);
            }
            (None, Some(password)) => {
                let line = match (response::quote(&creds.username), response::quote(password.expose())) {
                    (Some(u), Some(p)) => format!("LOGIN {u} {p}"),
                    _ => return Err(StepError::new(FailureClass::Auth, "user name or password needs an IMAP literal, which mailloop does not send yet")),
                };
                s.command(&line, FailureClass::Auth).await?;
            }
            (None, None) => return Err(StepError::new(FailureClass::Auth, "this side logs in with an OAuth2 token, and none was fetched")),
        }
        if s.caps.is_empty() || !s.caps.iter().any(|c| c.starts_with("IMAP4")) {
            s.command("CAPABILITY", FailureClass::Protocol).await?;
        }
        Ok(done)
    })
    .await?;

    let mailbox = response::quote(&check.imap.mailbox).unwrap_or_else(|| "INBOX".into());
    rec.run(StepName::ImapSelect, t(StepName::ImapSelect), async {
        let (untagged, _) = s.command(&format!("SELECT {mailbox}"), FailureClass::Protocol).await?;
        let exists = untagged.iter().find_map(Response::exists).unwrap_or(0);
        let junk = watch_junk(check, &mut s).await?;
        Ok(Done::new(()).detail(format!("{exists} messages; junk: {junk}")))
    })
    .await?;
    Ok(s)
}

/// Finds the junk folders to watch (configured, else the `\Junk` special
/// use, else the usual names) and takes their UIDNEXT. Returns a summary
/// for the step detail.
async fn watch_junk(check: &CheckConfig, s: &mut Session) -> Result<String, StepError> {
    let names: Vec<String> = match &check.imap.junk {
        Some(list) if list.is_empty() => return Ok("not watched (junk = false)".into()),
        Some(list) => list.clone(),
        None => {
            // Dovecot and most servers show special-use attributes in a plain
            // LIST too; LIST (SPECIAL-USE) asks for only those folders.
            let cmd = if s.has("SPECIAL-USE") { "LIST (SPECIAL-USE) \"\" \"*\"" } else { "LIST \"\" \"*\"" };
            // A server that refuses LIST still gets probed, in its mailbox only.
            let untagged = match s.command(cmd, FailureClass::Protocol).await {
                Ok((untagged, _)) => untagged,
                Err(e) if e.class == FailureClass::Protocol => {
                    s.junk_problems.push(format!("junk folders not watched: {cmd} failed: {}", e.message));
                    return Ok("none (LIST failed)".into());
                }
                Err(e) => return Err(e),
            };
            let mut lists: Vec<(Vec<String>, String)> = untagged.iter().filter_map(Response::list).collect();
            if lists.is_empty() && cmd.contains("SPECIAL-USE") {
                let (untagged, _) = s.command("LIST \"\" \"*\"", FailureClass::Protocol).await?;
                lists = untagged.iter().filter_map(Response::list).collect();
            }
            let special: Vec<String> = lists
                .iter()
                .filter(|(flags, _)| flags.iter().any(|f| f.eq_ignore_ascii_case("\\Junk")))
                .map(|(_, n)| n.clone())
                .collect();
            if !special.is_empty() {
                special
            } else {
                if cmd.contains("SPECIAL-USE") {
                    let (untagged, _) = s.command("LIST \"\" \"*\"", FailureClass::Protocol).await?;
                    lists = untagged.iter().filter_map(Response::list).collect();
                }
                lists
                    .into_iter()
                    .filter(|(flags, n)| {
                        JUNK_NAMES.iter().any(|j| j.eq_ignore_ascii_case(n))
                            && !flags.iter().any(|f| f.eq_ignore_ascii_case("\\Noselect") || f.eq_ignore_ascii_case("\\NonExistent"))
                    })
                    .map(|(_, n)| n)
                    .collect()
            }
        }
    };
    let mut watched = Vec::new();
    for name in names {
        if name.eq_ignore_ascii_case(&check.imap.mailbox) {
            continue;
        }
        let Some(quoted) = response::quote(&name) else {
            s.junk_problems.push(format!("junk folder {name:?} not watched: its name needs an IMAP literal"));
            continue;
        };
        match s.command(&format!("STATUS {quoted} (UIDNEXT)"), FailureClass::Protocol).await {
            Ok((untagged, _)) => match untagged.iter().find_map(Response::status_uidnext) {
                Some(uidnext) => s.junk.push(JunkWatch { name, quoted, uidnext }),
                None => s.junk_problems.push(format!("junk folder {name:?} not watched: STATUS gave no UIDNEXT")),
            },
            // a configured folder that does not exist: say so, keep probing
            Err(e) if e.class == FailureClass::Protocol && e.message.len() < 400 => {
                s.junk_problems.push(format!("junk folder {name:?} not watched: {}", e.message));
            }
            Err(e) => return Err(e),
        }
    }
    watched.extend(s.junk.iter().map(|w| w.name.as_str()));
    Ok(if watched.is_empty() { "none found".into() } else { watched.join(", ") })
}

/// Waits for the probe, finds it and fetches it: `imap.wait`, `imap.search`,
/// `imap.fetch`. Searching first closes the race where the probe lands
/// before IDLE starts.
pub async fn find(check: &CheckConfig, s: &mut Session, probe_id: &str, rec: &mut Recorder) -> Result<Found, Failure> {
    let deadline = rec.deadline();
    let wait_start = Instant::now();
    let use_idle = check.imap.wait == WaitMode::Idle && s.has("IDLE");
    let mode = if use_idle { "IDLE" } else { "polling" };
    let mut rounds = 0u32;
    let fast_until = wait_start + check.imap.fast_window;
    // Each NOOP or IDLE exchange of the wait answers within imap.wait's timeout.
    let reply_within = check.timeout(StepName::ImapWait);
    let mut via = mode;

    // One loop: search, and if absent, wait for news. The last, successful
    // search is reported as `imap.search`; everything before it is the wait.
    let mailbox = response::quote(&check.imap.mailbox).unwrap_or_else(|| "INBOX".into());
    // IDLE watches the selected mailbox only: with junk folders, wake up
    // every poll_interval to look at them too.
    let watching_junk = !s.junk.is_empty();
    let outcome: Result<(u32, Option<String>, Instant, Instant), StepError> = async {
        loop {
            let search_start = Instant::now();
            let search_timeout = check.timeout(StepName::ImapSearch);
            let uids = match tokio::time::timeout(search_timeout, s.search_probe(probe_id)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(StepError::new(
                        FailureClass::Timeout,
                        format!("UID SEARCH got no answer within {}", crate::steps::fmt_duration(search_timeout)),
                    ));
                }
            };
            if let Some(uid) = uids.first() {
                return Ok((*uid, None, search_start, Instant::now()));
            }
            if let Some((uid, folder)) = s.search_junk(&mailbox, probe_id).await? {
                via = "STATUS";
                return Ok((uid, Some(folder), search_start, Instant::now()));
            }
            rounds += 1;
            if Instant::now() >= deadline {
                return Err(StepError::new(
                    FailureClass::NotDelivered,
                    format!(
                        "probe not in {}{} by the deadline (waited {} with {mode}, {rounds} searches)",
                        check.imap.mailbox,
                        if s.junk.is_empty() {
                            String::new()
                        } else {
                            format!(" nor in {}", s.junk.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", "))
                        },
                        crate::steps::fmt_duration(wait_start.elapsed())
                    ),
                ));
            }
            if Instant::now() < fast_until {
                via = "NOOP";
                s.nudge_until(fast_until.min(deadline), reply_within).await?;
            } else if use_idle {
                via = "IDLE";
                let until = if watching_junk { deadline.min(Instant::now() + check.imap.poll_interval) } else { deadline };
                s.idle(until, reply_within).await?;
            } else {
                via = "polling";
                tokio::time::sleep_until(deadline.min(Instant::now() + check.imap.poll_interval).into()).await;
            }
        }
    }
    .await;

    match outcome {
        Ok((uid, junk_folder, search_start, found_at)) => {
            let waited = search_start - wait_start;
            rec.record_span(StepName::ImapWait, wait_start, search_start, &Ok(Done::new(()).detail(if let Some(f) = &junk_folder {
                format!("seen in junk folder {f} via {via} after {rounds} empty search(es), {:.1} ms", ms(waited))
            } else if rounds == 0 {
                "already in the mailbox".to_string()
            } else {
                format!("seen via {via} after {rounds} empty search(es), {:.1} ms", ms(waited))
            })));
            rec.record_span(StepName::ImapSearch, search_start, found_at, &Ok(Done::new(()).detail(format!("uid {uid}"))));
            let raw = rec
                .run(StepName::ImapFetch, check.timeout(StepName::ImapFetch), async {
                    let (untagged, _) = s.command(&format!("UID FETCH {uid} (BODY.PEEK[])"), FailureClass::Protocol).await?;
                    let raw = untagged
                        .into_iter()
                        .find_map(|r| r.literals.into_iter().next())
                        .ok_or_else(|| StepError::new(FailureClass::Protocol, format!("FETCH of uid {uid} returned no body")))?;
                    let n = raw.len();
                    Ok(Done::new(raw).detail(format!("{n} bytes")))
                })
                .await?;
            Ok(Found { uid, found_at, raw, junk_folder })
        }
        Err(e) => {
            let now = Instant::now();
            let class = e.class;
            rec.record_span::<()>(StepName::ImapWait, wait_start, now, &Err(e.clone()));
            Err(Failure { step: StepName::ImapWait, class, code: None, enhanced: None, message: e.message, raw: e.raw })
        }
    }
}

/// Deletes the probe (if found) and every probe of this check older than
/// `sweep_older_than`. Returns how many stale probes were swept.
pub async fn cleanup(check: &CheckConfig, s: &mut Session, uid: Option<u32>, rec: &mut Recorder) -> Result<usize, Failure> {
    rec.run(StepName::ImapCleanup, check.timeout(StepName::ImapCleanup), async {
        let mut uids: Vec<u32> = uid.into_iter().collect();
        let mut swept = 0;
        if s.has("WITHIN") {
            let age = check.sweep_older_than.as_secs().max(1);
            let (untagged, _) = s
                .command(&format!("UID SEARCH OLDER {age} HEADER {CHECK_HEADER} \"{}\"", check.name), FailureClass::Protocol)
                .await?;
            let stale: Vec<u32> = untagged.iter().filter_map(Response::search).flatten().filter(|u| Some(*u) != uid).collect();
            swept = stale.len();
            uids.extend(stale);
        }
        if uids.is_empty() {
            return Ok(Done::new(0).detail("nothing to delete"));
        }
        let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        s.command(&format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"), FailureClass::Protocol).await?;
        if s.has("UIDPLUS") {
            s.command(&format!("UID EXPUNGE {set}"), FailureClass::Protocol).await?;
        } else {
            s.command("EXPUNGE", FailureClass::Protocol).await?;
        }
        let what = match (uid.is_some(), swept) {
            (true, 0) => "deleted the probe".to_string(),
            (true, n) => format!("deleted the probe and {n} stale probe(s)"),
            (false, n) => format!("deleted {n} stale probe(s)"),
        };
        Ok(Done::new(swept).detail(what))
    })
    .await
}

/// LOGOUT; errors are recorded, not escalated.
pub async fn logout(check: &CheckConfig, mut s: Session, rec: &mut Recorder) -> Result<(), Failure> {
    let r = rec
        .run(StepName::ImapLogout, check.timeout(StepName::ImapLogout), async {
            s.logging_out = true;
            s.command("LOGOUT", FailureClass::Protocol).await?;
            Ok(Done::new(()))
        })
        .await;
    s.conn.shutdown().await;
    r
}
