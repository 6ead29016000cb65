//! The SMTP half of a probe: submit the tagged message, timing every step.
//!
//! mailloop drives the SMTP dialogue itself rather than through a mail
//! library: the point of the product is to time `banner`, `ehlo`,
//! `starttls` and `ehlo_tls` separately, to keep every reply code and
//! enhanced code, and to bound what a hostile server can make us read.
//! [`reply`] parses replies; [`Session`] sends commands; [`send`] is the step
//! sequence.

pub mod reply;

use crate::steps::{Done, Recorder, StepError};
use crate::transport::{self, Conn};
use base64::Engine;
use mailloop_common::config::{CheckConfig, Credentials, Security};
use mailloop_common::{Failure, FailureClass, Secret, StepName};
use crate::oauth2::sasl;
use reply::{Reply, ReplyBuilder};
use std::time::Instant;
use crate::tls::TlsClient;

/// What a successful submission leaves behind.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When the server's reply to end-of-data arrived.
    pub acked_at: Instant,
    pub queue_id: Option<String>,
}

/// One SMTP connection.
pub struct Session {
    conn: Conn,
    /// EHLO keywords of the latest EHLO.
    extensions: Vec<String>,
}

impl Session {
    /// Reads one complete reply, bounded in line length and line count.
    pub async fn read_reply(&mut self, before_greeting: bool) -> Result<Reply, StepError> {
        let mut builder = ReplyBuilder::default();
        loop {
            let line = self
                .conn
                .read_line(reply::MAX_LINE)
                .await
                .map_err(|e| StepError::transport(e, before_greeting))?;
            match builder.push(&line) {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => continue,
                Err(e) => return Err(StepError::new(FailureClass::Protocol, e.to_string())),
            }
        }
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<Reply, StepError> {
        self.conn
            .write_all_parts(&[line.as_bytes(), b"\r\n"])
            .await
            .map_err(|e| StepError::transport(e, false))?;
        self.read_reply(false).await
    }

    fn has(&self, keyword: &str) -> bool {
        self.extensions.iter().any(|e| e.split_whitespace().next() == Some(keyword))
    }

    fn auth_mechanisms(&self) -> Vec<String> {
        self.extensions
            .iter()
            .filter_map(|e| e.strip_prefix("AUTH").filter(|r| r.starts_with([' ', '='])))
            .flat_map(|r| r[1..].split_whitespace().map(str::to_string))
            .collect()
    }
}

/// Expects a reply in `expected`, else turns it into a classified error.
fn expect(reply: Reply, expected: &[u16], during_auth: bool) -> Result<Done<Reply>, StepError> {
    if expected.contains(&reply.code) {
        let code = reply.code;
        Ok(Done::new(reply).code(code))
    } else if reply.is_positive() {
        Err(StepError {
            class: FailureClass::Protocol,
            code: Some(reply.code),
            enhanced: reply.enhanced(),
            message: format!("unexpected reply {} {}", reply.code, reply.text()),
            raw: None,
        })
    } else {
        Err(StepError::smtp(&reply.code(), during_auth))
    }
}

fn with_text(done: Done<Reply>) -> Done<Reply> {
    let text = done.value.text();
    done.detail(crate::text::truncate(&text, 200))
}

/// Submits `message` for `check`, recording each step in `rec`. `token`:
/// the bearer token when the side logs in with OAuth2.
pub async fn send(
    check: &CheckConfig,
    tls: &TlsClient,
    connect_to: &transport::ConnectTo,
    message: &[u8],
    token: Option<&Secret>,
    rec: &mut Recorder,
) -> Result<Sent, Failure> {
    let ep = &check.smtp.endpoint;
    let t = |s| check.timeout(s);

    let conn = rec
        .run(StepName::SmtpConnect, t(StepName::SmtpConnect), async {
            Conn::connect_via(&ep.host, ep.port, connect_to)
                .await
                .map(|c| Done::new(c).detail(connect_to.detail(&ep.host, ep.port)))
                .map_err(|e| StepError::transport(e, true))
        })
        .await?;
    let mut s = Session { conn, extensions: Vec::new() };
    let name = transport::server_name(ep.tls_name()).map_err(|m| Failure {
        step: StepName::SmtpConnect,
        class: FailureClass::Tls,
        code: None,
        enhanced: None,
        message: m,
        raw: None,
    });

    if ep.security == Security::Tls {
        let name = name.clone()?;
        let r = rec
            .run(StepName::SmtpTls, t(StepName::SmtpTls), async {
                let info = s.conn.start_tls(tls, name).await.map_err(|e| StepError::transport(e, true))?;
                let detail = info.to_string();
                Ok(Done::new(info).detail(detail))
            })
            .await;
        rec.cert("smtp", &endpoint_label(ep), s.conn.peer_cert.take(), r.as_ref().ok());
        r?;
    }

    let result = session(check, tls, message, token, rec, &mut s, name).await;
    // QUIT whenever the server is still talking to us; a failure here is
    // recorded but does not change a delivered probe into a failed one.
    let close = match &result {
        Ok(_) => true,
        Err(f) => !matches!(f.class, FailureClass::Timeout | FailureClass::Protocol | FailureClass::Connect | FailureClass::Tls),
    };
    if close {
        let _ = rec
            .run(StepName::SmtpQuit, t(StepName::SmtpQuit), async {
                let r = s.command("QUIT").await?;
                expect(r, &[221, 250], false)
            })
            .await;
    }
    s.conn.shutdown().await;
    result
}

async fn session(
    check: &CheckConfig,
    tls: &TlsClient,
    message: &[u8],
    token: Option<&Secret>,
    rec: &mut Recorder,
    s: &mut Session,
    name: Result<rustls_pki_types::ServerName<'static>, Failure>,
) -> Result<Sent, Failure> {
    let ep = &check.smtp.endpoint;
    let t = |step| check.timeout(step);

    rec.run(StepName::SmtpBanner, t(StepName::SmtpBanner), async {
        let r = s.read_reply(true).await?;
        expect(r, &[220], false).map(with_text)
    })
    .await?;

    let helo = match &check.smtp.helo {
        Some(h) => h.clone(),
        None => default_helo(&s.conn),
    };
    let ehlo = format!("EHLO {helo}");

    let r = rec
        .run(StepName::SmtpEhlo, t(StepName::SmtpEhlo), async {
            let r = s.command(&ehlo).await?;
            expect(r, &[250], false)
        })
        .await?;
    s.extensions = r.ehlo_keywords();

    if ep.security == Security::Starttls {
        let name = name?;
        let offered = s.has("STARTTLS");
        let r = rec.run(StepName::SmtpStarttls, t(StepName::SmtpStarttls), async {
            if !offered {
                return Err(StepError::new(
                    FailureClass::Tls,
                    "server does not offer STARTTLS (security = \"starttls\" requires it)",
                ));
            }
            let r = s.command("STARTTLS").await?;
            if r.code != 220 {
                let mut e = if r.is_positive() {
                    StepError::new(FailureClass::Protocol, format!("unexpected reply {} {}", r.code, r.text()))
                } else {
                    StepError::smtp(&r.code(), false)
                };
                // A refused STARTTLS is a TLS problem whatever the code says.
                e.class = FailureClass::Tls;
                e.code = Some(r.code);
                return Err(e);
            }
            let info = s.conn.start_tls(tls, name).await.map_err(|e| StepError::transport(e, false))?;
            let detail = info.to_string();
            Ok(Done::new(info).code(220).detail(detail))
        })
        .await;
        rec.cert("smtp", &endpoint_label(ep), s.conn.peer_cert.take(), r.as_ref().ok());
        r?;
        let r = rec
            .run(StepName::SmtpEhloTls, t(StepName::SmtpEhloTls), async {
                let r = s.command(&ehlo).await?;
                expect(r, &[250], false)
            })
            .await?;
        s.extensions = r.ehlo_keywords();
    }

    if let Some(creds) = &ep.credentials {
        let mechs = s.auth_mechanisms();
        match token {
            Some(token) => {
                let login = auth_bearer(s, &creds.username, token, &mechs, ep.tls_name(), ep.port);
                rec.run(StepName::SmtpAuth, t(StepName::SmtpAuth), login).await?
            }
            None => rec.run(StepName::SmtpAuth, t(StepName::SmtpAuth), auth(s, creds, &mechs)).await?,
        }
    }

    let from = format!("MAIL FROM:<{}>", check.from);
    rec.run(StepName::SmtpMailFrom, t(StepName::SmtpMailFrom), async {
        let r = s.command(&from).await?;
        expect(r, &[250], false)
    })
    .await?;

    let to = format!("RCPT TO:<{}>", check.to);
    rec.run(StepName::SmtpRcptTo, t(StepName::SmtpRcptTo), async {
        let r = s.command(&to).await?;
        expect(r, &[250, 251], false).map(with_text)
    })
    .await?;

    rec.run(StepName::SmtpData, t(StepName::SmtpData), async {
        let r = s.command("DATA").await?;
        expect(r, &[354], false)
    })
    .await?;

    let body = dot_stuff(message);
    let (queue_id, acked_at) = rec
        .run(StepName::SmtpDataAck, t(StepName::SmtpDataAck), async {
            s.conn
                .write_all_parts(&[&body, b".\r\n"])
                .await
                .map_err(|e| StepError::transport(e, false))?;
            let r = s.read_reply(false).await?;
            let acked_at = Instant::now();
            let done = with_text(expect(r, &[250], false)?);
            let qid = done.value.queue_id();
            Ok(Done { value: (qid, acked_at), code: done.code, detail: done.detail })
        })
        .await?;

    Ok(Sent { acked_at, queue_id })
}

async fn auth(s: &mut Session, creds: &Credentials, mechs: &[String]) -> Result<Done<()>, StepError> {
    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
    let has = |m: &str| mechs.iter().any(|x| x.eq_ignore_ascii_case(m));
    let Some(password) = creds.password() else {
        return Err(StepError::new(FailureClass::Auth, "this side logs in with an OAuth2 token, and none was fetched"));
    };
    if has("PLAIN") {
        let token = b64(format!("\0{}\0{}", creds.username, password.expose()).as_bytes());
        let r = s.command(&format!("AUTH PLAIN {token}")).await?;
        return expect(r, &[235], true).map(|d| Done::new(()).code(d.value.code).detail("PLAIN"));
    }
    if has("LOGIN") {
        let r = s.command("AUTH LOGIN").await?;
        expect(r, &[334], true)?;
        let r = s.command(&b64(creds.username.as_bytes())).await?;
        expect(r, &[334], true)?;
        let r = s.command(&b64(password.expose().as_bytes())).await?;
        return expect(r, &[235], true).map(|d| Done::new(()).code(d.value.code).detail("LOGIN"));
    }
    let offered = if mechs.is_empty() { "none".to_string() } else { mechs.join(" ") };
    Err(StepError::new(
        FailureClass::Auth,
        format!("no usable AUTH mechanism (offered: {offered}; mailloop speaks PLAIN and LOGIN)"),
    ))
}

/// RFC 4954 §4: an AUTH command with its initial response must stay within
/// SMTP's 512-octet line; a longer one (a large JWT) waits for the 334.
const MAX_AUTH_LINE: usize = 512;

/// SASL XOAUTH2 or OAUTHBEARER (whichever the server offers, OAUTHBEARER
/// first) with a bearer token. A refused token comes back as a 334 error
/// challenge; it is acknowledged so the server sends its final reply, and
/// decoded into the failure's message.
async fn auth_bearer(s: &mut Session, user: &str, token: &Secret, mechs: &[String], host: &str, port: u16) -> Result<Done<()>, StepError> {
    let Some(mech) = sasl::choose(mechs) else {
        let offered = if mechs.is_empty() { "none".to_string() } else { mechs.join(" ") };
        return Err(StepError::new(
            FailureClass::Auth,
            format!("no AUTH mechanism takes a token (offered: {offered}; an OAuth2 login needs XOAUTH2 or OAUTHBEARER)"),
        ));
    };
    let initial = sasl::initial_response(mech, user, host, port, token.expose());
    let with_ir = format!("AUTH {} {initial}", mech.as_str());
    let mut r = if with_ir.len() + 2 <= MAX_AUTH_LINE {
        s.command(&with_ir).await?
    } else {
        let r = s.command(&format!("AUTH {}", mech.as_str())).await?;
        expect(r, &[334], true)?;
        s.command(&initial).await?
    };
    let mut challenge = None;
    if r.code == 334 {
        challenge = Some(sasl::describe_challenge(&r.text()));
        r = s.command(mech.error_ack()).await?;
    }
    match expect(r, &[235], true) {
        Ok(d) if challenge.is_none() => Ok(Done::new(()).code(d.value.code).detail(mech.as_str())),
        Ok(d) => Err(StepError::new(FailureClass::Protocol, format!("235 after an error challenge ({})", challenge.unwrap_or_default())).with_code(d.value.code)),
        Err(mut e) => {
            if let Some(c) = challenge {
                e.message = format!("{} ({}; {c})", e.message, mech.as_str());
            }
            Err(e)
        }
    }
}

/// `host:port`, as the report names an endpoint.
pub(crate) fn endpoint_label(ep: &mailloop_common::config::Endpoint) -> String {
    if ep.host.contains(':') { format!("[{}]:{}", ep.host, ep.port) } else { format!("{}:{}", ep.host, ep.port) }
}

/// EHLO name: the host name if it is fully qualified, else an address literal.
fn default_helo(conn: &Conn) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if host.contains('.') {
        return host.to_string();
    }
    match conn.local_ip() {
        Some(std::net::IpAddr::V4(ip)) => format!("[{ip}]"),
        Some(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        None => "mailloop.invalid".into(),
    }
}

/// Normalises line ends to CRLF and doubles leading dots (RFC 5321 §4.5.2).
/// The result ends with CRLF, ready for the terminating ".\r\n".
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    // split() yields a trailing empty piece after a final newline.
    if message.ends_with(b"\n") {
        out.truncate(out.len() - 2);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn dot_stuffing_and_line_ends() {
        assert_eq!(dot_stuff(b"a\n.b\r\n..c\n"), b"a\r\n..b\r\n...c\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n");
    }
}
