//! Scriptable fake SMTP and IMAP servers, for fault injection only.
//!
//! The real mail stack is for real behaviour; these fakes produce what it
//! cannot on demand: a banner that never comes, a 1 MiB reply line, a
//! literal announcing 4 GiB, an expired certificate. A [`FakeServer`]
//! listens on 127.0.0.1, port 0, and plays a [`Script`] on each connection,
//! so a test reads like the dialogue it stages:
//!
//! ```ignore
//! smtp::ready().then([expect("MAIL FROM"), say("421 4.7.0 Too many connections"), close()])
//! ```
//!
//! [`smtp`] and [`imap`] hold the dialogue pieces tests share, [`certs`]
//! the test CA and server certificates, [`check`] the probe config for the
//! fakes and [`Scenario`], which runs one probe against a pair of them.

pub mod certs;
pub mod check;
pub mod imap;
pub mod smtp;

pub use certs::{Identity, SelfSigned, TestPki};
pub use check::{FakeCheck, Run, Scenario};

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// One thing the fake server does, in script order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Writes these bytes as they are.
    Send(Vec<u8>),
    /// Reads one line, which must start with this text, either at the start
    /// or after an IMAP tag (case-insensitive). A mismatch is recorded in the
    /// [`Transcript`] and ends the connection.
    Expect(String),
    /// Reads an SMTP message body, up to the line holding a single ".".
    ReadData,
    /// Writes `<tag> <text>`, with the tag of the last line read (IMAP).
    Tagged(String),
    /// Writes `prefix` followed by `len` bytes without a line end.
    Flood { prefix: Vec<u8>, len: usize },
    /// Waits this long before the next action.
    Delay(Duration),
    /// Says nothing more; reads and records whatever comes until the client
    /// closes or the server stops.
    Hang,
    /// Closes the connection.
    Close,
    /// Runs a TLS handshake as the server, presenting this config's certificate.
    StartTls(Arc<rustls::ServerConfig>),
    /// Serves commands in any order: reads a line, plays the actions of the
    /// first rule whose command it starts with (see [`Action::Expect`]), and
    /// waits for the next. An unknown command ends the connection.
    Respond(Vec<(String, Vec<Action>)>),
    /// IMAP: answers a FETCH with a message that carries the probe id the
    /// client searched for (`X-Mailloop-Probe`), as this UID.
    FetchProbe(u32),
}

/// Writes `text` and CRLF.
pub fn say(text: &str) -> Action {
    Action::Send(format!("{text}\r\n").into_bytes())
}

/// Writes exactly these bytes (invalid UTF-8, missing line ends...).
pub fn send_raw(bytes: &[u8]) -> Action {
    Action::Send(bytes.to_vec())
}

/// Reads a line starting with `command` (after the tag, for IMAP).
pub fn expect(command: &str) -> Action {
    Action::Expect(command.to_string())
}

/// Reads an SMTP message body up to its final ".".
pub fn read_data() -> Action {
    Action::ReadData
}

/// Answers the last IMAP command read: `tagged("OK done")` writes `m3 OK done`.
pub fn tagged(text: &str) -> Action {
    Action::Tagged(text.to_string())
}

/// Writes `prefix` then `len` bytes of filler, never a line end.
pub fn flood(prefix: &str, len: usize) -> Action {
    Action::Flood { prefix: prefix.as_bytes().to_vec(), len }
}

/// Waits before the next action.
pub fn delay(d: Duration) -> Action {
    Action::Delay(d)
}

/// Stops answering, without closing.
pub fn hang() -> Action {
    Action::Hang
}

/// Closes the connection.
pub fn close() -> Action {
    Action::Close
}

/// The server side of a TLS handshake with this certificate.
pub fn start_tls(identity: &Identity) -> Action {
    Action::StartTls(identity.server_config())
}

/// Serves commands in any order until the client leaves; see [`Action::Respond`].
pub fn respond<const N: usize>(rules: [(&str, Vec<Action>); N]) -> Action {
    Action::Respond(rules.into_iter().map(|(c, a)| (c.to_string(), a)).collect())
}

/// A rule of [`respond`]: when a command starts with `command`, play `actions`.
pub fn on(command: &str, actions: impl IntoIterator<Item = Action>) -> (&str, Vec<Action>) {
    (command, actions.into_iter().collect())
}

/// IMAP: the FETCH response carrying the probe back; see [`Action::FetchProbe`].
pub fn fetch_probe(uid: u32) -> Action {
    Action::FetchProbe(uid)
}

/// The actions of one connection. When they run out, the server closes it.
#[derive(Debug, Clone, Default)]
pub struct Script(pub Vec<Action>);

impl Script {
    pub fn new(actions: impl IntoIterator<Item = Action>) -> Script {
        Script(actions.into_iter().collect())
    }

    /// This script, then `actions`.
    pub fn then(mut self, actions: impl IntoIterator<Item = Action>) -> Script {
        self.0.extend(actions);
        self
    }
}

impl IntoIterator for Script {
    type Item = Action;
    type IntoIter = std::vec::IntoIter<Action>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<const N: usize> From<[Action; N]> for Script {
    fn from(actions: [Action; N]) -> Script {
        Script::new(actions)
    }
}

/// What a fake server saw, for assertions and for failure messages.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// Connections accepted.
    pub connections: usize,
    /// Every line the clients sent, in order, lossily decoded.
    pub received: Vec<String>,
    /// Where the client did not follow the script (a test bug or an agent
    /// bug; [`Scenario::run`] fails the test on it).
    pub broken: Vec<String>,
    /// Ordinary ends of a connection: the client left early, a TLS handshake
    /// the client refused, a write to a closed socket.
    pub notes: Vec<String>,
}

type Log = Arc<Mutex<Transcript>>;

fn log(log: &Log, f: impl FnOnce(&mut Transcript)) {
    f(&mut log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
}

/// Which script each connection gets.
enum Scripts {
    Every(Script),
    InTurn(Vec<Script>),
}

/// A scripted server on 127.0.0.1, port 0. Stops when [`FakeServer::stop`]
/// is called or it is dropped.
pub struct FakeServer {
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    log: Log,
}

impl FakeServer {
    /// Plays `script` on every connection. Must be called inside a Tokio runtime.
    pub fn start(script: impl Into<Script>) -> FakeServer {
        FakeServer::launch(Scripts::Every(script.into()))
    }

    /// Plays the first script on the first connection, the second on the
    /// second, and so on; a connection beyond the list is refused and
    /// recorded as broken.
    pub fn start_each(scripts: impl IntoIterator<Item = Script>) -> FakeServer {
        FakeServer::launch(Scripts::InTurn(scripts.into_iter().collect()))
    }

    fn launch(scripts: Scripts) -> FakeServer {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a fake server on 127.0.0.1:0");
        std_listener.set_nonblocking(true).expect("non-blocking listener");
        let listener = TcpListener::from_std(std_listener).expect("a fake server needs a Tokio runtime");
        let port = listener.local_addr().expect("bound address").port();
        let (shutdown, stopped) = oneshot::channel();
        let log = Log::default();
        let task = tokio::spawn(serve(listener, scripts, stopped, log.clone()));
        FakeServer { port, shutdown: Some(shutdown), task: Some(task), log }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting, ends every connection and returns what was seen.
    pub async fn stop(mut self) -> Transcript {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve(listener: TcpListener, scripts: Scripts, mut stopped: oneshot::Receiver<()>, log_: Log) {
    let (stop_all, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut n = 0;
    loop {
        let tcp = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    log(&log_, |t| t.notes.push(format!("accept failed: {e}")));
                    continue;
                }
            },
        };
        let script = match &scripts {
            Scripts::Every(s) => Some(s.clone()),
            Scripts::InTurn(list) => list.get(n).cloned(),
        };
        n += 1;
        log(&log_, |t| t.connections += 1);
        let Some(script) = script else {
            log(&log_, |t| t.broken.push(format!("connection {n} was not scripted")));
            continue;
        };
        let mut stop = stop.clone();
        let log_ = log_.clone();
        connections.spawn(async move {
            let mut dialogue = Dialogue::new(tcp, log_);
            tokio::select! {
                _ = dialogue.play(script) => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
    }
    let _ = stop_all.send(true);
    while let Some(done) = connections.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One connection playing its script.
struct Dialogue {
    /// `None` only while the plain stream is handed to the TLS handshake.
    io: Option<BufReader<Box<dyn Io>>>,
    log: Log,
    /// The tag of the last line read, for [`Action::Tagged`].
    tag: String,
    /// The probe id seen in a command, for [`Action::FetchProbe`].
    probe_id: Option<String>,
}

/// Whether the script goes on after an action.
enum Next {
    Continue,
    End,
}

/// Bytes a flood writes per call.
const FLOOD_CHUNK: usize = 64 * 1024;

impl Dialogue {
    fn new(tcp: TcpStream, log: Log) -> Dialogue {
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = Box::new(tcp);
        Dialogue { io: Some(BufReader::new(io)), log, tag: "*".into(), probe_id: None }
    }

    fn io(&mut self) -> &mut BufReader<Box<dyn Io>> {
        self.io.as_mut().expect("stream present outside a handshake")
    }

    async fn play(&mut self, script: Script) {
        let mut program: VecDeque<Action> = script.0.into();
        while let Some(action) = program.pop_front() {
            if let Next::End = self.act(action, &mut program).await {
                break;
            }
        }
        if let Some(io) = self.io.as_mut() {
            let _ = io.shutdown().await;
        }
    }

    async fn act(&mut self, action: Action, program: &mut VecDeque<Action>) -> Next {
        match action {
            Action::Send(bytes) => self.write(&bytes).await,
            Action::Tagged(text) => {
                let line = format!("{} {text}\r\n", self.tag);
                self.write(line.as_bytes()).await
            }
            Action::Expect(command) => match self.read_line(&format!("expected {command:?}")).await {
                None => Next::End,
                Some(line) if matches(&line, &command) => Next::Continue,
                Some(line) => self.broken(format!("expected {command:?}, got {line:?}")),
            },
            Action::ReadData => loop {
                match self.read_line("reading the message body").await {
                    None => return Next::End,
                    Some(line) if line == "." => return Next::Continue,
                    Some(_) => {}
                }
            },
            Action::Flood { prefix, len } => {
                if let Next::End = self.write(&prefix).await {
                    return Next::End;
                }
                let chunk = vec![b'x'; FLOOD_CHUNK.min(len)];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if let Next::End = self.write(&chunk[..n]).await {
                        return Next::End;
                    }
                    left -= n;
                }
                Next::Continue
            }
            Action::Delay(d) => {
                tokio::time::sleep(d).await;
                Next::Continue
            }
            Action::Hang => {
                while self.read_line("hanging").await.is_some() {}
                Next::End
            }
            Action::Close => Next::End,
            Action::StartTls(config) => self.start_tls(config).await,
            Action::Respond(rules) => {
                let Some(line) = self.read_line("serving commands").await else { return Next::End };
                let Some((_, actions)) = rules.iter().find(|(command, _)| matches(&line, command)) else {
                    return self.broken(format!("no rule answers {line:?}"));
                };
                program.push_front(Action::Respond(rules.clone()));
                for a in actions.iter().rev() {
                    program.push_front(a.clone());
                }
                Next::Continue
            }
            Action::FetchProbe(uid) => {
                let id = self.probe_id.clone().unwrap_or_else(|| "no-probe-id-seen".into());
                let message = format!(
                    "From: <probe@sender.invalid>\r\nTo: <probe@receiver.invalid>\r\nSubject: mailloop probe\r\n\
                     X-Mailloop-Probe: {id}\r\n\r\nfound by a fake IMAP server\r\n"
                );
                let response = format!("* {uid} FETCH (UID {uid} BODY[] {{{}}}\r\n{message})\r\n", message.len());
                self.write(response.as_bytes()).await
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Next {
        let io = self.io();
        let result = match io.write_all(bytes).await {
            Ok(()) => io.flush().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Next::Continue,
            Err(e) => self.note(format!("write failed: {e}")),
        }
    }

    /// One line without its line end; `None` when the client is gone.
    async fn read_line(&mut self, doing: &str) -> Option<String> {
        let mut raw = Vec::new();
        match self.io().read_until(b'\n', &mut raw).await {
            Ok(0) => {
                self.note(format!("client closed the connection ({doing})"));
                None
            }
            Ok(_) => {
                while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    raw.pop();
                }
                let line = String::from_utf8_lossy(&raw).into_owned();
                self.remember(&line);
                log(&self.log, |t| t.received.push(line.clone()));
                Some(line)
            }
            Err(e) => {
                self.note(format!("read failed ({doing}): {e}"));
                None
            }
        }
    }

    /// Keeps the IMAP tag and any probe id searched for.
    fn remember(&mut self, line: &str) {
        if let Some((tag, _)) = line.split_once(' ') {
            self.tag = tag.to_string();
        }
        let marker = "X-Mailloop-Probe \"";
        if let Some(i) = line.find(marker) {
            let rest = &line[i + marker.len()..];
            self.probe_id = rest.split('"').next().map(str::to_string);
        }
    }

    async fn start_tls(&mut self, config: Arc<rustls::ServerConfig>) -> Next {
        let reader = self.io.take().expect("stream present");
        if !reader.buffer().is_empty() {
            let n = reader.buffer().len();
            self.io = Some(reader);
            return self.broken(format!("client sent {n} bytes before the TLS handshake"));
        }
        match tokio_rustls::TlsAcceptor::from(config).accept(reader.into_inner()).await {
            Ok(tls) => {
                let io: Box<dyn Io> = Box::new(tls);
                self.io = Some(BufReader::new(io));
                Next::Continue
            }
            Err(e) => self.note(format!("TLS handshake failed: {e}")),
        }
    }

    fn note(&self, note: String) -> Next {
        log(&self.log, |t| t.notes.push(note));
        Next::End
    }

    fn broken(&self, what: String) -> Next {
        log(&self.log, |t| t.broken.push(what));
        Next::End
    }
}

/// Whether `line` is the command `command`: at its start, or after an IMAP tag.
fn matches(line: &str, command: &str) -> bool {
    let starts =
        |s: &str| s.len() >= command.len() && s.as_bytes()[..command.len()].eq_ignore_ascii_case(command.as_bytes());
    starts(line) || line.split_once(' ').is_some_and(|(_, rest)| starts(rest))
}
