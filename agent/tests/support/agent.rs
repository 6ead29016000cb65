//! The `mailloop-agent run` process under test, and its log.
//!
//! The agent runs as a real process (signals, exit codes and stderr are
//! part of the contract). Its stderr is read line by line; tests wait for
//! the line they expect with a deadline, never a sleep.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Where an agent keeps its files: `agent.toml`, `token`, `spool.db`.
pub struct AgentDir {
    dir: tempfile::TempDir,
}

impl AgentDir {
    pub fn new() -> AgentDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{}\n", super::TOKEN)).unwrap();
        AgentDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `agent.toml` for a coordinator on plaintext loopback `port`;
    /// `extra` lines go into `[agent]`.
    pub fn config(&self, port: u16, extra: &str) -> PathBuf {
        self.config_text(&format!(
            "[agent]\n\
             name = \"test-agent\"\n\
             region = \"eu-west\"\n\
             coordinator_url = \"http://127.0.0.1:{port}\"\n\
             token_file = \"{token}\"\n\
             spool = \"{spool}\"\n\
             {extra}\n",
            token = self.file("token").display(),
            spool = self.file("spool.db").display(),
        ))
    }

    /// Writes `agent.toml` as given.
    pub fn config_text(&self, text: &str) -> PathBuf {
        let path = self.file("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The agent's probe log (`probe_log` in its spool): probe ids and
    /// check ids in the order it ran them.
    pub fn probe_log(&self) -> Vec<(String, String)> {
        let db = rusqlite::Connection::open(self.file("spool.db")).unwrap();
        let mut stmt = db.prepare("SELECT probe_id, check_id FROM probe_log ORDER BY seq").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Probe ids still waiting in the spool, oldest first.
    pub fn spooled(&self) -> Vec<String> {
        let db = rusqlite::Connection::open(self.file("spool.db")).unwrap();
        let mut stmt = db.prepare("SELECT probe_id FROM reports ORDER BY seq").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Starts `mailloop-agent run` on this directory's `agent.toml`.
    pub fn start(&self) -> Agent {
        Agent::start(&self.file("agent.toml"), &[])
    }
}

pub struct Agent {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

/// How long any single expected event may take.
pub const WITHIN: Duration = Duration::from_secs(20);

impl Agent {
    /// `mailloop-agent run --config <config>` with `MAILLOOP_LOG=info` and
    /// the check password variable set, plus `env`.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailloop-agent"));
        cmd.arg("run").arg("--config").arg(config);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MAILLOOP_")) {
            cmd.env_remove(k);
        }
        cmd.env("MAILLOOP_LOG", "info").env(super::PASSWORD_VAR, "secret");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Agent { child, lines, seen: Vec::new() }
    }

    /// The next log line that `matches`, within [`WITHIN`].
    pub async fn wait_log(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        self.wait_log_within(what, WITHIN, matches).await
    }

    /// The next log line that `matches`, within `within`.
    pub async fn wait_log_within(&mut self, what: &str, within: Duration, matches: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(within, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if matches(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the agent exited before logging {what}; its log:\n{}", self.seen.join("\n")),
            Err(_) => panic!("the agent did not log {what} within {within:?}; its log:\n{}", self.seen.join("\n")),
        }
    }

    /// The next log line containing `text`.
    pub async fn wait_line(&mut self, text: &str) -> String {
        self.wait_log(&format!("{text:?}"), |l| l.contains(text)).await
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the agent is running")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the agent is running");
        let ok = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits for the exit (within [`WITHIN`]); returns its code and the rest of the log.
    pub async fn exit_code(mut self) -> (i32, String) {
        let status = tokio::time::timeout(WITHIN, self.child.wait()).await;
        let status = match status {
            Ok(s) => s.unwrap(),
            Err(_) => panic!("the agent did not exit within {WITHIN:?}; its log:\n{}", self.seen.join("\n")),
        };
        // The pipe closes with the process: the rest of the log is finite.
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }

    /// SIGTERM, then the exit code (which must be 0) and the whole log.
    pub async fn stop(self) -> String {
        self.terminate();
        let (code, log) = self.exit_code().await;
        assert_eq!(code, 0, "a stopped agent exits 0; its log:\n{log}");
        log
    }
}

/// The number in "(N waiting)" of a "spooled" or "acked" line.
pub fn waiting(line: &str) -> Option<u64> {
    let (_, rest) = line.rsplit_once('(')?;
    rest.strip_suffix(" waiting)")?.parse().ok()
}
