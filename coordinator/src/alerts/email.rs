//! The email channel: a small SMTP submission client of its own (EHLO,
//! STARTTLS or implicit TLS, AUTH PLAIN, MAIL, RCPT, DATA with
//! dot-stuffing, QUIT) over tokio-rustls with ring.
//!
//! Why not lettre: the project carries no SMTP library on purpose (see
//! ARCHITECTURE.md, "Absent on purpose"); the dialogue an alert needs is a
//! few commands, and owning it keeps every read bounded (8 KiB per reply
//! line, 100 lines per reply) and the dependency tree free of a second TLS
//! stack. This is not the probe: nothing here is timed or diagnosed, a
//! reply is only delivered (2xx/3xx as expected), retry (4xx, connection
//! and TLS trouble, timeouts) or permanent (5xx).

use super::Delivery;
use super::config::EmailTarget;
use base64::Engine;
use mailloop_common::config::Security;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest reply line read (RFC 5321 says 512; servers send more).
const MAX_LINE: usize = 8 * 1024;
/// Most lines in one multi-line reply.
const MAX_LINES: usize = 100;

/// A message ready to send: headers and body already rendered.
pub struct Message {
    pub subject: String,
    pub body: String,
    /// Unique per event (the retry of one event keeps it).
    pub message_id: String,
    pub date_ms: i64,
}

/// Sends through one submission server.
pub struct EmailSender {
    target: EmailTarget,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Why one SMTP attempt did not deliver.
struct SmtpError {
    permanent: bool,
    message: String,
}

impl SmtpError {
    fn retry(message: impl Into<String>) -> SmtpError {
        SmtpError {
            permanent: false,
            message: message.into(),
        }
    }
}

/// One server reply: the code and its text lines joined.
struct Reply {
    code: u16,
    text: String,
}

impl EmailSender {
    pub fn new(target: EmailTarget) -> Result<EmailSender, String> {
        let tls = match target.security {
            Security::None => None,
            _ => Some(super::tls::connector(target.ca_file.as_deref())?),
        };
        Ok(EmailSender { target, tls })
    }

    /// One attempt, bounded by `timeout` as a whole.
    pub async fn send(&self, message: &Message, timeout: Duration) -> Delivery {
        match tokio::time::timeout(timeout, self.exchange(message)).await {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(e)) if e.permanent => Delivery::Permanent(e.message),
            Ok(Err(e)) => Delivery::Retry(e.message),
            Err(_) => Delivery::Retry(format!("SMTP dialogue not done within {timeout:?}")),
        }
    }

    async fn exchange(&self, message: &Message) -> Result<(), SmtpError> {
        let t = &self.target;
        let addr = format!("{}:{}", t.host, t.port);
        let tcp =
            TcpStream::connect((t.host.trim_start_matches('[').trim_end_matches(']'), t.port))
                .await
                .map_err(|e| SmtpError::retry(format!("connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        // EHLO with our address literal: always valid, no DNS needed.
        let helo = match tcp.local_addr() {
            Ok(a) if a.is_ipv6() => format!("[IPv6:{}]", a.ip()),
            Ok(a) => format!("[{}]", a.ip()),
            Err(_) => "[127.0.0.1]".to_string(),
        };
        let data = render(t, message);
        match t.security {
            Security::None => {
                let mut s = Session::new(tcp);
                s.expect(220, "banner").await?;
                s.command(&format!("EHLO {helo}"), 250).await?;
                s.transaction(t, &data).await
            }
            Security::Tls => {
                let tls = self.handshake(tcp).await?;
                let mut s = Session::new(tls);
                s.expect(220, "banner").await?;
                s.command(&format!("EHLO {helo}"), 250).await?;
                s.transaction(t, &data).await
            }
            Security::Starttls => {
                let mut s = Session::new(tcp);
                s.expect(220, "banner").await?;
                let ehlo = s.command(&format!("EHLO {helo}"), 250).await?;
                if !has_extension(&ehlo.text, "STARTTLS") {
                    return Err(SmtpError {
                        permanent: true,
                        message: format!("{addr} does not offer STARTTLS"),
                    });
                }
                s.command("STARTTLS", 220).await?;
                // Anything buffered past the 220 was sent before TLS and
                // would be read as if protected: refuse (STARTTLS injection).
                if !s.reader.buffer().is_empty() {
                    return Err(SmtpError::retry(
                        "the server sent data after its STARTTLS reply",
                    ));
                }
                let tls = self.handshake(s.reader.into_inner()).await?;
                let mut s = Session::new(tls);
                s.command(&format!("EHLO {helo}"), 250).await?;
                s.transaction(t, &data).await
            }
        }
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SmtpError> {
        let connector = self.tls.as_ref().expect("TLS connector for a TLS channel");
        let host = self
            .target
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| SmtpError::retry(format!("TLS name {host}: {e}")))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| SmtpError::retry(format!("TLS with {host}: {e}")))
    }
}

/// An SMTP dialogue over one stream.
struct Session<S> {
    reader: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(stream: S) -> Session<S> {
        Session {
            reader: BufReader::new(stream),
        }
    }

    /// Reads one (possibly multi-line) reply, bounded in line length and count.
    async fn read_reply(&mut self) -> Result<Reply, SmtpError> {
        let mut text = Vec::new();
        for _ in 0..MAX_LINES {
            let mut line = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| SmtpError::retry(format!("reading the reply: {e}")))?;
            if n == 0 {
                return Err(SmtpError::retry("the server closed the connection"));
            }
            if !line.ends_with(b"\n") {
                return Err(SmtpError::retry(format!(
                    "a reply line longer than {MAX_LINE} bytes"
                )));
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| SmtpError::retry(format!("not an SMTP reply: {line:?}")))?;
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.join("\n"),
                });
            }
        }
        Err(SmtpError::retry(format!(
            "a reply of more than {MAX_LINES} lines"
        )))
    }

    /// Reads a reply and checks its code: 4xx retry, 5xx permanent.
    async fn expect(&mut self, want: u16, what: &str) -> Result<Reply, SmtpError> {
        let reply = self.read_reply().await?;
        if reply.code == want || (want == 250 && reply.code == 251) {
            return Ok(reply);
        }
        let text = reply.text.lines().next().unwrap_or("").to_string();
        Err(SmtpError {
            permanent: (500..600).contains(&reply.code),
            message: format!("{what}: {} {text}", reply.code),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let w = self.reader.get_mut();
        w.write_all(bytes)
            .await
            .map_err(|e| SmtpError::retry(format!("writing: {e}")))?;
        w.flush()
            .await
            .map_err(|e| SmtpError::retry(format!("writing: {e}")))
    }

    /// Sends one command line; the error names the verb only (AUTH carries a secret).
    async fn command(&mut self, line: &str, want: u16) -> Result<Reply, SmtpError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        let verb = line.split(' ').next().unwrap_or(line);
        self.expect(want, verb).await
    }

    /// AUTH, MAIL, RCPT, DATA, QUIT.
    async fn transaction(&mut self, t: &EmailTarget, data: &[u8]) -> Result<(), SmtpError> {
        if let (Some(user), Some(pass)) = (&t.username, &t.password) {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("\0{user}\0{}", pass.expose()));
            self.command(&format!("AUTH PLAIN {token}"), 235).await?;
        }
        self.command(&format!("MAIL FROM:<{}>", t.from), 250)
            .await?;
        for rcpt in &t.to {
            self.command(&format!("RCPT TO:<{rcpt}>"), 250).await?;
        }
        self.command("DATA", 354).await?;
        self.write(data).await?;
        self.expect(250, "end of data").await?;
        // The message is accepted: a failed QUIT changes nothing.
        let _ = self.command("QUIT", 221).await;
        Ok(())
    }
}

fn has_extension(ehlo: &str, name: &str) -> bool {
    ehlo.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(name))
    })
}

/// The message as sent after DATA: headers, a blank line, the body with
/// CRLF line ends and dot-stuffing, and the terminating `.`.
fn render(t: &EmailTarget, m: &Message) -> Vec<u8> {
    let date = chrono::DateTime::from_timestamp_millis(m.date_ms)
        .unwrap_or_default()
        .to_rfc2822();
    let mut out = String::new();
    out.push_str(&format!("Date: {date}\r\n"));
    out.push_str(&format!("From: {}\r\n", t.from));
    out.push_str(&format!("To: {}\r\n", t.to.join(", ")));
    out.push_str(&format!("Subject: {}\r\n", encode_header(&m.subject)));
    out.push_str(&format!("Message-ID: {}\r\n", m.message_id));
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    out.push_str("Auto-Submitted: auto-generated\r\n");
    out.push_str("\r\n");
    for line in m.body.lines() {
        for piece in wrap(line, 900) {
            if piece.starts_with('.') {
                out.push('.');
            }
            out.push_str(piece);
            out.push_str("\r\n");
        }
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

/// Header text: as is when printable ASCII, else one RFC 2047 base64 word
/// per chunk (CR and LF never reach a header either way).
fn encode_header(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.is_ascii() {
        return s;
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| {
            format!(
                "=?utf-8?b?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Splits a line longer than `max` bytes (SMTP allows 998) at char boundaries.
fn wrap(line: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(space) = rest[..cut].rfind(' ').filter(|&s| s > 0) {
            cut = space;
        }
        out.push(&rest[..cut]);
        rest = rest[cut..].trim_start_matches(' ');
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> EmailTarget {
        EmailTarget {
            host: "127.0.0.1".into(),
            port: 587,
            security: Security::Starttls,
            username: None,
            password: None,
            from: "alerts@example.test".into(),
            to: vec!["a@example.test".into(), "b@example.test".into()],
            ca_file: None,
        }
    }

    #[test]
    fn data_is_dot_stuffed_with_crlf_and_terminated() {
        let m = Message {
            subject: "[mailloop] OUTAGE opened: corp".into(),
            body: "first\n.leading dot\n..two\nlast".into(),
            message_id: "<x@example.test>".into(),
            date_ms: 0,
        };
        let data = String::from_utf8(render(&target(), &m)).unwrap();
        assert!(
            data.contains("\r\n\r\nfirst\r\n..leading dot\r\n...two\r\nlast\r\n.\r\n"),
            "{data}"
        );
        assert!(data.contains("To: a@example.test, b@example.test\r\n"));
        assert!(
            data.starts_with("Date: Thu, 1 Jan 1970 00:00:00 +0000\r\n"),
            "{data}"
        );
        assert!(
            !data.replace("\r\n", "").contains('\n'),
            "bare LF in {data:?}"
        );
    }

    #[test]
    fn long_lines_are_wrapped_below_the_smtp_limit() {
        let line = "word ".repeat(500);
        let pieces = wrap(&line, 900);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.len() <= 900));
        assert_eq!(pieces.join(" ").split_whitespace().count(), 500);
    }

    #[test]
    fn non_ascii_subjects_are_encoded_words() {
        let s = encode_header("[mailloop] OUTAGE opened: café\r\nBcc: x");
        assert!(s.starts_with("=?utf-8?b?"), "{s}");
        assert!(!s.contains("Bcc: x\r\n"));
        assert_eq!(encode_header("plain"), "plain");
    }
}
