//! Test support: the real mail stack as a fixture, config builders, and a
//! way to look into mailboxes independently of the agent.
//!
//! The stack is started once per test run by `make test`
//! (`tests/mailstack/up.sh`), which writes `stack.env`; every test reads it
//! here and uses its own mailbox (`t-<test>@receiver.test`), so tests run in
//! parallel without seeing each other's mail. A missing stack is a test
//! failure with instructions, never a silent skip.

pub mod backend;
pub mod blocklist;
pub mod browser;
pub mod cluster;
pub mod fake;
pub mod postgres;
pub mod oauth2;
pub mod regions;
pub mod tls_front;

use mailloop_common::ProbeReport;
use mailloop_common::config::ProbeConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The running mail stack, as described by its `stack.env`.
pub struct Stack {
    vars: HashMap<String, String>,
}

/// Where `up.sh` writes its description by default.
const DEFAULT_ENV: &str = "/var/lib/mailloop-mailstack/stack.env";

impl Stack {
    /// The stack of this test run. Panics with instructions when it is not up.
    pub fn get() -> &'static Stack {
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| {
            let path = std::env::var("MAILSTACK_ENV")
                .map(PathBuf::from)
                .or_else(|_| std::env::var("MAILSTACK_STATE").map(|s| Path::new(&s).join("stack.env")))
                .unwrap_or_else(|_| PathBuf::from(DEFAULT_ENV));
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("the mail stack is not up ({}: {e}); run `make mailstack-up` or `make test`", path.display())
            });
            let vars = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            Stack { vars }
        })
    }

    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| panic!("stack.env has no {key}"))
    }

    pub fn port(&self, key: &str) -> u16 {
        self.var(key).parse().unwrap_or_else(|_| panic!("{key} is not a port"))
    }

    /// A mailbox of this test's own at the receiving domain.
    pub fn mailbox(&self, test: &str) -> String {
        format!("t-{test}@{}", self.var("MAILSTACK_RCPT_DOMAIN"))
    }

    /// What is wrong with the stack right now, in words, for a test that
    /// timed out waiting on it: every listener that refuses a connection
    /// (the milters' sockets included: a dead milter makes Postfix answer
    /// `451 4.7.1 Service unavailable` to every message), and the newest
    /// warnings of Postfix and of the milters' syslog. Empty when every
    /// listener answers and nothing was logged.
    pub fn health(&self) -> String {
        use std::os::unix::net::UnixStream;
        let mut out = Vec::new();
        let host = self.var("MAILSTACK_HOST");
        for (key, v) in self.vars.iter().filter(|(k, _)| k.starts_with("MAILSTACK_PORT_")) {
            let addr = format!("{host}:{v}");
            let ok = addr.parse().is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok());
            if !ok {
                out.push(format!("{key} {addr}: connection refused"));
            }
        }
        let run = Path::new(self.var("MAILSTACK_STATE")).join("run");
        for milter in ["opendkim/opendkim.sock", "opendmarc/opendmarc.sock", "spamass/spamass.sock"] {
            if let Err(e) = UnixStream::connect(run.join(milter)) {
                out.push(format!("milter {milter}: {e}"));
            }
        }
        let tail = |key: &str, words: &[&str], n: usize| -> Vec<String> {
            let text = self.vars.get(key).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            // Greylisting's 451s are the stack working as designed.
            let hits: Vec<&str> =
                text.lines().filter(|l| words.iter().any(|w| l.contains(w)) && !l.contains("Greylisted")).collect();
            hits[hits.len().saturating_sub(n)..].iter().map(|l| format!("  {l}")).collect()
        };
        let postfix = tail("MAILSTACK_POSTFIX_LOG", &["warning:", "error:", "fatal:", "panic:", " 451 "], 12);
        if !postfix.is_empty() {
            out.push("newest Postfix warnings:".into());
            out.extend(postfix);
        }
        let milters = tail("MAILSTACK_SYSLOG_LOG", &["restart", "error", "failed", "unavailable", "exited", "signal"], 12);
        if !milters.is_empty() {
            out.push("newest milter errors (syslog):".into());
            out.extend(milters);
        }
        out.join("\n")
    }
}

/// How many times longer than its nominal deadline a test waits for the
/// stack or a cluster before it gives up (`MAILLOOP_TEST_PATIENCE`,
/// default 3). The deadlines only detect a failure: a passing test never
/// waits them out, and a machine loaded by a parallel build must not turn
/// a slow pass into a failure.
pub fn patience(nominal: std::time::Duration) -> std::time::Duration {
    let factor: u32 = std::env::var("MAILLOOP_TEST_PATIENCE").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    nominal * factor
}

/// [`Stack::health`] when a stack is described where the tests look for
/// it, without panicking when none is (for messages of failing waits).
pub fn stack_health() -> String {
    let described = std::env::var("MAILSTACK_ENV")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("MAILSTACK_STATE").map(|s| Path::new(&s).join("stack.env")))
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_ENV));
    if !described.exists() {
        return String::new();
    }
    let h = Stack::get().health();
    if h.is_empty() { "the mail stack: every listener answers, no warnings logged".into() } else { format!("the mail stack:\n{h}") }
}

/// Builds a probe config for the stack; every knob a test turns is a method.
#[derive(Clone)]
pub struct Check {
    pub name: String,
    pub to: String,
    pub smtp_port: u16,
    pub smtp_security: &'static str,
    pub smtp_login: Option<(String, String)>,
    pub imap_port: u16,
    pub imap_security: &'static str,
    /// The IMAP side's `host` (default 127.0.0.1).
    pub imap_host: String,
    /// The IMAP side's `ca_file`: the stack's CA by default; empty: none.
    pub imap_ca_file: String,
    pub imap_user: String,
    pub imap_pass: String,
    pub deadline: &'static str,
    /// Extra lines appended to `[check.imap]`.
    pub imap_extra: Vec<String>,
    /// Lines of `[check.thresholds]`.
    pub thresholds: Vec<String>,
    /// Extra lines in the `[[check]]` table itself (e.g. `greylist_retry`).
    pub check_extra: Vec<String>,
}

impl Check {
    /// Submission (STARTTLS + AUTH) in, IMAPS out, to the test's own mailbox.
    pub fn new(test: &str) -> Check {
        let s = Stack::get();
        let mailbox = s.mailbox(test);
        Check {
            name: test.to_string(),
            to: mailbox.clone(),
            smtp_port: s.port("MAILSTACK_PORT_SUBMISSION"),
            smtp_security: "starttls",
            smtp_login: Some((s.var("MAILSTACK_SMTP_USER").into(), s.var("MAILSTACK_SMTP_PASS").into())),
            imap_port: s.port("MAILSTACK_PORT_IMAPS"),
            imap_security: "tls",
            imap_host: "127.0.0.1".into(),
            imap_ca_file: s.var("MAILSTACK_CA_FILE").into(),
            imap_user: mailbox,
            imap_pass: s.var("MAILSTACK_IMAP_PASS").into(),
            deadline: "30s",
            imap_extra: Vec::new(),
            thresholds: Vec::new(),
            check_extra: Vec::new(),
        }
    }

    pub fn toml(&self) -> String {
        let s = Stack::get();
        let ca = s.var("MAILSTACK_CA_FILE");
        let from = s.var("MAILSTACK_SMTP_USER");
        let login = match &self.smtp_login {
            Some((u, p)) => format!("username = {u:?}\npassword = {p:?}\n"),
            None => String::new(),
        };
        let mut out = format!(
            "[[check]]\nname = {name:?}\nfrom = {from:?}\nto = {to:?}\ndeadline = {deadline:?}\nstep_timeout = \"10s\"\n{check_extra}\
             [check.smtp]\nhost = \"127.0.0.1\"\nport = {sp}\nsecurity = {ss:?}\nca_file = {ca:?}\n{login}\
             [check.imap]\nhost = {ih:?}\nport = {ip}\nsecurity = {is:?}\n{ica}username = {iu:?}\npassword = {ipw:?}\n{extra}",
            name = self.name,
            to = self.to,
            deadline = self.deadline,
            sp = self.smtp_port,
            ss = self.smtp_security,
            ip = self.imap_port,
            is = self.imap_security,
            ih = self.imap_host,
            ica = if self.imap_ca_file.is_empty() { String::new() } else { format!("ca_file = {:?}\n", self.imap_ca_file) },
            iu = self.imap_user,
            ipw = self.imap_pass,
            extra = self.imap_extra.iter().map(|l| format!("{l}\n")).collect::<String>(),
            check_extra = self.check_extra.iter().map(|l| format!("{l}\n")).collect::<String>(),
        );
        if !self.thresholds.is_empty() {
            out.push_str("[check.thresholds]\n");
            for t in &self.thresholds {
                out.push_str(t);
                out.push('\n');
            }
        }
        // Diagnostics ask the stack's DNS server, never the machine's.
        out.push_str(&format!("[dns]\nnameservers = [\"{}:53\"]\n", s.var("MAILSTACK_DNS")));
        out
    }

    /// Writes the config to a temp file (kept alive by the returned handle).
    pub fn file(&self) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), self.toml()).unwrap();
        f
    }

    /// Runs the probe in-process, through the same config loader as the CLI.
    pub async fn probe(&self) -> ProbeReport {
        self.probe_via(&[]).await
    }

    /// Like [`Check::probe`], with the agent's `connect_to` rules
    /// (`"imap.example.net:143=127.0.0.1:40143"`): a check can name a host
    /// that is not loopback and still reach the stack.
    pub async fn probe_via(&self, connect_to: &[&str]) -> ProbeReport {
        let f = self.file();
        let cfg = ProbeConfig::load(f.path()).unwrap_or_else(|e| panic!("{e}\n{}", self.toml()));
        let rules = connect_to.iter().map(|r| r.parse().expect("a connect_to rule")).collect();
        let prober = mailloop_agent::probe::Prober::new(cfg.checks.into_iter().next().unwrap(), &cfg.dns)
            .unwrap()
            .with_connect_to(mailloop_agent::transport::ConnectTo::new(rules));
        prober.run().await
    }
}

/// A name no earlier run used (postgrey remembers triplets across runs).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}{nanos}")
}

/// The `mailloop-agent` binary, built by `cargo build` beside the test binary.
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/mailloop-agent
    let bin = exe.parent().and_then(Path::parent).unwrap().join("mailloop-agent");
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace --bins` first (make test does)", bin.display());
    bin
}

/// Runs the agent binary; returns (exit code, stdout, stderr).
pub fn run_agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin()).args(args).env_remove("MAILLOOP_LOG").output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An independent look into a mailbox, through Python's imaplib (not the
/// agent's own IMAP code), over IMAPS with the stack's CA.
pub struct Mailbox {
    pub user: String,
    /// The folder looked at (INBOX unless [`Mailbox::folder`]).
    pub folder: String,
}

impl Mailbox {
    pub fn new(user: &str) -> Mailbox {
        Mailbox { user: user.to_string(), folder: "INBOX".into() }
    }

    /// The same account, looking at another folder (e.g. `Junk`).
    pub fn folder(&self, folder: &str) -> Mailbox {
        Mailbox { user: self.user.clone(), folder: folder.to_string() }
    }

    fn python(&self, body: &str, args: &[&str]) -> String {
        let s = Stack::get();
        let script = format!(
            "import imaplib, ssl, sys\n\
             ctx = ssl.create_default_context(cafile={ca:?})\n\
             m = imaplib.IMAP4_SSL('127.0.0.1', {port}, ssl_context=ctx)\n\
             m.login({user:?}, {pw:?})\n\
             typ, _ = m.select({folder:?})\n\
             assert typ == 'OK', 'SELECT failed'\n{body}\nm.logout()\n",
            ca = s.var("MAILSTACK_CA_FILE"),
            port = s.port("MAILSTACK_PORT_IMAPS"),
            user = self.user,
            folder = format!("\"{}\"", self.folder),
            pw = s.var("MAILSTACK_IMAP_PASS"),
        );
        let out = Command::new("python3").arg("-c").arg(&script).args(args).output().unwrap();
        assert!(out.status.success(), "imaplib failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Subjects of every message in the folder.
    pub fn subjects(&self) -> Vec<String> {
        let out = self.python(
            "typ, data = m.uid('SEARCH', None, 'ALL')\n\
             for uid in data[0].split():\n    \
                 typ, d = m.uid('FETCH', uid, '(BODY.PEEK[HEADER.FIELDS (SUBJECT)])')\n    \
                 print(d[0][1].decode().strip().removeprefix('Subject: '))",
            &[],
        );
        out.lines().map(str::to_string).collect()
    }

    /// Appends `message` with the given IMAP internal date
    /// (e.g. `"01-Jan-2026 00:00:00 +0000"`).
    pub fn append(&self, message: &str, internal_date: &str) {
        self.python(
            "m.append(m._quote(sys.argv[3]), None, '\"' + sys.argv[2] + '\"', sys.argv[1].replace('\\n', '\\r\\n').encode())",
            &[message, internal_date, &self.folder],
        );
    }

    /// Deletes everything in the folder (a test's fresh start).
    pub fn clear(&self) {
        self.python(
            "typ, data = m.uid('SEARCH', None, 'ALL')\n\
             if data[0]:\n    m.uid('STORE', b','.join(data[0].split()), '+FLAGS.SILENT', '(\\\\Deleted)')\n    m.expunge()",
            &[],
        );
    }
}
