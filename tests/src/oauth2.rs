//! A real OAuth2 identity provider for the token tests: Authlib
//! (`tests/mailstack/oauth2_idp.py`) over TLS on a loopback port the kernel
//! picks, with the stack's server certificate, signing JWTs with a key this
//! harness creates and gives to the stack's Dovecot (its own kid, so no
//! other test's tokens open this test's mailboxes).

use crate::Stack;
use mailloop_agent::oauth2::http;
use mailloop_agent::tls::TlsClient;
use mailloop_agent::transport::ConnectTo;
use mailloop_common::config::parse_https_url;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The interpreter with Debian's python3-authlib (the pyenv one on a
/// developer machine does not see Debian's packages).
const PYTHON: &str = "/usr/bin/python3";

/// A running identity provider; stopped (and its Dovecot key removed) on drop.
pub struct Idp {
    child: Child,
    /// Held open: the IdP exits when it closes.
    _stdin: ChildStdin,
    pub port: u16,
    key_file: PathBuf,
    tls: TlsClient,
}

impl Idp {
    /// Starts one; panics with an install hint when Authlib is missing.
    pub fn start() -> Idp {
        let s = Stack::get();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mailstack/oauth2_idp.py");
        let probe = Command::new(PYTHON).args(["-c", "import authlib"]).output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "{PYTHON} cannot import authlib: run `make deps` (tests/mailstack/install.sh installs python3-authlib)"
        );
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).unwrap();
        let kid = format!("t{}", hex(&secret[..6]));
        // The key Dovecot validates with: base64 of the secret, under the kid.
        let key_file = Path::new(s.var("MAILSTACK_OAUTH2_KEY_DIR")).join(&kid);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
        std::fs::write(&key_file, &b64).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
        // The IdP reads the same key from a file of its own.
        let idp_key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(idp_key.path(), &b64).unwrap();
        let state = s.var("MAILSTACK_STATE");
        let mut child = Command::new(PYTHON)
            .arg(&script)
            .args(["--cert", &format!("{state}/tls/server.pem"), "--key", &format!("{state}/tls/server.key")])
            .arg("--signing-key")
            .arg(idp_key.path())
            .args(["--kid", &kid])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the IdP did not start: {line:?}"));
        let stdin = child.stdin.take().unwrap();
        let tls = TlsClient::new(Some(Path::new(s.var("MAILSTACK_CA_FILE"))), &[]).unwrap();
        Idp { child, _stdin: stdin, port, key_file, tls }
    }

    pub fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}/token", self.port)
    }

    pub fn device_url(&self) -> String {
        format!("https://127.0.0.1:{}/device", self.port)
    }

    async fn admin(&self, what: &str, form: &[(&str, &str)]) -> serde_json::Value {
        let url = parse_https_url(&format!("https://127.0.0.1:{}/admin/{what}", self.port)).unwrap();
        let answer = http::post_form(&url, &self.tls, &ConnectTo::default(), form).await.unwrap_or_else(|e| panic!("IdP admin {what}: {e:?}"));
        assert_eq!(answer.status, 200, "IdP admin {what}: {}", String::from_utf8_lossy(&answer.body));
        serde_json::from_slice(&answer.body).unwrap()
    }

    /// Registers a confidential client whose client-credentials tokens open `email`'s mailbox.
    pub async fn client(&self, id: &str, secret: Option<&str>, email: &str) {
        let grants = "client_credentials,refresh_token,urn:ietf:params:oauth:grant-type:device_code";
        let mut form = vec![("client_id", id), ("email", email), ("grants", grants)];
        if let Some(s) = secret {
            form.push(("client_secret", s));
        }
        self.admin("client", &form).await;
    }

    /// Every later request of this client fails with `invalid_client`.
    pub async fn revoke(&self, id: &str) {
        self.admin("revoke", &[("client_id", id)]).await;
    }

    /// A person signed in for `user_code` as `email`.
    pub async fn approve(&self, user_code: &str, email: &str) {
        self.admin("approve", &[("user_code", user_code), ("email", email)]).await;
    }

    /// A refresh token for `email`, as after a sign-in.
    pub async fn refresh_token(&self, client: &str, email: &str, scope: &str) -> String {
        let v = self.admin("refresh", &[("client_id", client), ("email", email), ("scope", scope)]).await;
        v["refresh_token"].as_str().unwrap().to_string()
    }

    /// Every access and refresh token issued so far.
    pub async fn issued(&self) -> Vec<String> {
        let v = self.admin("issued", &[]).await;
        ["access", "refresh"].iter().flat_map(|k| v[k].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string())).collect()
    }

    /// How many token requests of `grant_type` were made.
    pub async fn requests(&self, grant_type: &str) -> u64 {
        self.admin("issued", &[]).await["requests"][grant_type].as_u64().unwrap_or(0)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.key_file);
    }
}

/// One side's `[oauth2]` table, as TOML lines.
pub fn oauth2_table(side: &str, lines: &[String]) -> String {
    format!("[check.{side}.oauth2]\n{}\n", lines.join("\n"))
}

/// A probe config for the stack whose sides log in with the given
/// `[oauth2]` tables (submission with STARTTLS, IMAPS), to `test`'s mailbox.
pub fn config(test: &str, smtp_oauth2: &str, imap_oauth2: &str, extra: &str) -> String {
    let s = Stack::get();
    format!(
        "[[check]]\nname = {test:?}\nfrom = {from:?}\nto = {to:?}\ndeadline = \"30s\"\nstep_timeout = \"10s\"\n{extra}\n\
         [check.smtp]\nhost = \"127.0.0.1\"\nport = {sp}\nca_file = {ca:?}\nusername = {from:?}\n{smtp_oauth2}\
         [check.imap]\nhost = \"127.0.0.1\"\nport = {ip}\nca_file = {ca:?}\nusername = {to:?}\n{imap_oauth2}\
         [dns]\nnameservers = [\"{dns}:53\"]\n",
        from = s.var("MAILSTACK_SMTP_USER"),
        to = s.mailbox(test),
        sp = s.port("MAILSTACK_PORT_SUBMISSION"),
        ip = s.port("MAILSTACK_PORT_IMAPS"),
        ca = s.var("MAILSTACK_CA_FILE"),
        dns = s.var("MAILSTACK_DNS"),
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
