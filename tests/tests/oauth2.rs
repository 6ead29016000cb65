//! OAuth2 mailboxes end to end: tokens from a real authorization server
//! (Authlib, `tests/mailstack/oauth2_idp.py`) over TLS, accepted or refused
//! by the real stack's Dovecot (IMAP) and Postfix through Dovecot SASL.
//! Every case says what the report carries, and that no token, refresh
//! token or client secret ever shows in the agent's output or logs.

use mailloop_common::config::ProbeConfig;
use mailloop_common::{FailureClass, Outcome, ProbeReport, StepName};
use mailloop_tests::oauth2::{Idp, config, oauth2_table};
use mailloop_tests::{Stack, agent_bin};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "client-secret-that-must-not-leak";

/// The clients' secret, as a `client_secret_file`.
fn secret_file() -> String {
    static FILE: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    let f = FILE.get_or_init(|| {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), SECRET).unwrap();
        f
    });
    f.path().display().to_string()
}

/// A client-credentials `[oauth2]` table for `client` at `idp`.
fn app(side: &str, idp: &Idp, client: &str) -> String {
    let ca = Stack::get().var("MAILSTACK_CA_FILE");
    oauth2_table(side, &[
        format!("token_url = {:?}", idp.token_url()),
        format!("client_id = {client:?}"),
        format!("client_secret_file = {:?}", secret_file()),
        "scope = \"mail\"".into(),
        format!("ca_file = {ca:?}"),
    ])
}

/// A refresh-token `[oauth2]` table (public client, the token in `file`).
fn delegated(side: &str, idp: &Idp, client: &str, file: &std::path::Path) -> String {
    let ca = Stack::get().var("MAILSTACK_CA_FILE");
    oauth2_table(side, &[
        format!("token_url = {:?}", idp.token_url()),
        format!("device_authorization_url = {:?}", idp.device_url()),
        format!("client_id = {client:?}"),
        format!("refresh_token_file = {:?}", file.display().to_string()),
        "scope = \"mail\"".into(),
        format!("ca_file = {ca:?}"),
    ])
}

/// Runs `mailloop-agent probe` with every log line on; returns the report
/// and everything the process printed.
fn probe_process(toml: &str) -> (ProbeReport, String) {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), toml).unwrap();
    let out = Command::new(agent_bin())
        .args(["probe", "--output", "json", "--config"])
        .arg(f.path())
        .env("MAILLOOP_LOG", "trace")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: ProbeReport = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (report, format!("{stdout}\n{stderr}"))
}

/// The same check in-process, with a clock the test moves.
fn prober(toml: &str, clock: mailloop_agent::oauth2::Clock) -> mailloop_agent::probe::Prober {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), toml).unwrap();
    let cfg = ProbeConfig::load(f.path()).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    mailloop_agent::probe::Prober::new(cfg.checks.into_iter().next().unwrap(), &cfg.dns).unwrap().with_token_clock(clock)
}

fn step<'a>(r: &'a ProbeReport, name: StepName) -> Option<&'a mailloop_common::StepReport> {
    r.steps.iter().find(|s| s.name == name)
}

/// No issued token and no client secret anywhere in `text`.
async fn assert_no_secrets(idp: &Idp, text: &str) {
    let issued = idp.issued().await;
    assert!(!issued.is_empty());
    for t in issued.iter().map(String::as_str).chain([SECRET]) {
        assert!(!text.contains(t), "a secret leaked into the output: {}…", &t[..12]);
    }
}

fn timings(r: &ProbeReport) -> String {
    r.steps.iter().map(|s| format!("{} {:.1}ms", s.name, s.ms)).collect::<Vec<_>>().join(", ")
}

#[tokio::test]
async fn a_round_trip_with_tokens_on_both_sides() {
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-both";
    idp.client("submitter", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;
    idp.client("reader", Some(SECRET), &s.mailbox(test)).await;
    let toml = config(test, &app("smtp", &idp, "submitter"), &app("imap", &idp, "reader"), "");
    let (r, output) = probe_process(&toml);
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    eprintln!("token-authenticated probe: {}", timings(&r));
    let token = step(&r, StepName::Oauth2Token).expect("an oauth2.token step");
    assert!(token.ok && r.steps[0].name == StepName::Oauth2Token, "{:#?}", r.steps);
    let detail = token.detail.as_deref().unwrap();
    assert!(detail.contains("smtp: client_credentials grant, token valid 3600s") && detail.contains("imap: client_credentials grant"), "{detail}");
    // Both servers offer OAUTHBEARER and XOAUTH2; the standard one is taken.
    assert_eq!(step(&r, StepName::SmtpAuth).unwrap().detail.as_deref(), Some("OAUTHBEARER"));
    assert_eq!(step(&r, StepName::ImapLogin).unwrap().detail.as_deref(), Some("OAUTHBEARER"));
    assert_eq!(idp.requests("client_credentials").await, 2, "one token per client");
    assert_no_secrets(&idp, &output).await;
}

#[tokio::test]
async fn a_token_that_expires_between_rounds_is_replaced_without_a_failed_round() {
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-expiry";
    idp.client("app", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;
    idp.client("reader", Some(SECRET), &s.mailbox(test)).await;
    let toml = config(test, &app("smtp", &idp, "app"), &app("imap", &idp, "reader"), "");
    let skew = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clock = {
        let skew = skew.clone();
        Arc::new(move || start + Duration::from_secs(skew.load(Ordering::SeqCst)) + start.elapsed()) as mailloop_agent::oauth2::Clock
    };
    let p = prober(&toml, clock);

    let first = p.run().await;
    assert_eq!(first.outcome, Outcome::Ok, "{first:#?}");
    assert!(step(&first, StepName::Oauth2Token).is_some());
    let second = p.run().await;
    assert_eq!(second.outcome, Outcome::Ok, "{second:#?}");
    assert!(step(&second, StepName::Oauth2Token).is_none(), "the cached tokens are still good: {:#?}", second.steps);
    assert_eq!(idp.requests("client_credentials").await, 2);

    // An hour later (the IdP's tokens live 3600 s) both are expired.
    skew.store(3600, Ordering::SeqCst);
    let third = p.run().await;
    assert_eq!(third.outcome, Outcome::Ok, "{third:#?}");
    assert!(step(&third, StepName::Oauth2Token).is_some_and(|s| s.ok));
    assert_eq!(idp.requests("client_credentials").await, 4, "a new token for each side");
}

#[tokio::test]
async fn a_rotated_refresh_token_is_saved_and_the_next_run_uses_it() {
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-rotate";
    idp.client("submitter", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;
    idp.client("desktop", None, &s.mailbox(test)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imap.refresh");
    let first_rt = idp.refresh_token("desktop", &s.mailbox(test), "mail").await;
    std::fs::write(&file, format!("{first_rt}\n")).unwrap();
    let toml = config(test, &app("smtp", &idp, "submitter"), &delegated("imap", &idp, "desktop", &file), "");

    let (r, output) = probe_process(&toml);
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    let detail = step(&r, StepName::Oauth2Token).unwrap().detail.clone().unwrap();
    assert!(detail.contains("imap: refresh_token grant") && detail.contains("refresh token rotated and saved to"), "{detail}");
    let second_rt = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_ne!(second_rt, first_rt, "the provider rotated it");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    assert_no_secrets(&idp, &output).await;

    // The first refresh token is revoked now: only the saved one works.
    let (r, _) = probe_process(&toml);
    assert_eq!(r.outcome, Outcome::Ok, "the saved refresh token was used: {r:#?}");
    assert_ne!(std::fs::read_to_string(&file).unwrap().trim(), second_rt, "rotated again");
    assert_eq!(idp.requests("refresh_token").await, 2);
}

#[tokio::test]
async fn two_sources_sharing_a_refresh_token_file_take_turns_with_it() {
    // Two checks on one delegated mailbox, one refresh token file, both due
    // at once. The provider rotates on every refresh and revokes the old
    // token: had both redeemed the token they read, one would fail.
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-shared-file";
    idp.client("submitter", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;
    idp.client("desktop", None, &s.mailbox(test)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.refresh");
    let first_rt = idp.refresh_token("desktop", &s.mailbox(test), "mail").await;
    std::fs::write(&file, format!("{first_rt}\n")).unwrap();
    let toml = config(test, &app("smtp", &idp, "submitter"), &delegated("imap", &idp, "desktop", &file), "");
    let (a, b) = (prober(&toml, mailloop_agent::oauth2::system_clock()), prober(&toml, mailloop_agent::oauth2::system_clock()));

    let (ra, rb) = tokio::join!(a.run(), b.run());
    for r in [&ra, &rb] {
        assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
        let detail = step(r, StepName::Oauth2Token).unwrap().detail.clone().unwrap();
        assert!(detail.contains("imap: refresh_token grant") && detail.contains("rotated and saved"), "{detail}");
    }
    assert_eq!(idp.requests("refresh_token").await, 2, "each redeemed the token the other had just saved");
    let last = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_ne!(last, first_rt);
}

#[tokio::test]
async fn a_revoked_client_fails_at_oauth2_token_with_the_providers_error() {
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-revoked";
    idp.client("submitter", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;
    idp.client("reader", Some(SECRET), &s.mailbox(test)).await;
    idp.revoke("reader").await;
    let toml = config(test, &app("smtp", &idp, "submitter"), &app("imap", &idp, "reader"), "");
    let (r, output) = probe_process(&toml);
    assert_eq!(r.outcome, Outcome::Failed);
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.step, f.class, f.code), (StepName::Oauth2Token, FailureClass::Auth, Some(400)), "{f:#?}");
    assert_eq!(
        f.message,
        "imap: the token endpoint refused the client_credentials grant (HTTP 400): invalid_client: client reader has been disabled by the administrator"
    );
    eprintln!("revoked client: {} at {}: {}", f.class, f.step, f.message);
    assert!(r.steps.iter().all(|s| s.name == StepName::Oauth2Token), "no mail server contacted: {:#?}", r.steps);
    assert_no_secrets(&idp, &output).await;
}

#[tokio::test]
async fn a_token_the_server_refuses_fails_at_login_with_the_decoded_challenge() {
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-refused";
    // Tokens for somebody else's mailbox: valid JWTs, wrong user.
    idp.client("elsewhere", Some(SECRET), &s.mailbox("oauth-someone-else")).await;
    idp.client("reader", Some(SECRET), &s.mailbox(test)).await;
    idp.client("submitter", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;

    let toml = config(test, &app("smtp", &idp, "elsewhere"), &app("imap", &idp, "reader"), "");
    let (r, output) = probe_process(&toml);
    let f = r.failure.as_ref().expect("refused");
    assert_eq!((f.step, f.class, f.code), (StepName::SmtpAuth, FailureClass::Auth, Some(535)), "{f:#?}");
    // RFC 7628's error challenge, as Dovecot sends it for OAUTHBEARER.
    assert!(f.message.ends_with("(OAUTHBEARER; server's challenge: status=invalid_token)"), "{}", f.message);
    eprintln!("SMTP refuses the token: {} at {}: {}", f.class, f.step, f.message);
    assert_no_secrets(&idp, &output).await;

    let toml = config(test, &app("smtp", &idp, "submitter"), &app("imap", &idp, "elsewhere"), "");
    let (r, _) = probe_process(&toml);
    let f = r.failure.as_ref().expect("refused");
    assert_eq!((f.step, f.class), (StepName::ImapLogin, FailureClass::Auth), "{f:#?}");
    assert!(f.message.contains("AUTHENTICATIONFAILED") && f.message.ends_with("(OAUTHBEARER; server's challenge: status=invalid_token)"), "{}", f.message);
    eprintln!("IMAP refuses the token: {} at {}: {}", f.class, f.step, f.message);
}

#[tokio::test]
async fn an_identity_provider_that_is_down_or_silent_is_classified_not_waited_for() {
    let s = Stack::get();
    let test = "oauth-down";
    let ca = s.var("MAILSTACK_CA_FILE");
    let side = |side: &str, url: &str| {
        oauth2_table(side, &[format!("token_url = {url:?}"), "client_id = \"c\"".into(), format!("client_secret_file = {:?}", secret_file()), "scope = \"mail\"".into(), format!("ca_file = {ca:?}")])
    };
    let clock = mailloop_agent::oauth2::system_clock();

    // Nothing listens: connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("https://127.0.0.1:{closed}/token");
    let r = prober(&config(test, &side("smtp", &url), &side("imap", &url), ""), clock.clone()).run().await;
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.step, f.class), (StepName::Oauth2Token, FailureClass::Connect), "{f:#?}");
    eprintln!("IdP down: {} at {}: {}", f.class, f.step, f.message);

    // Accepts the connection, never answers (the kernel completes the
    // handshake into the backlog): the step's timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/token", silent.local_addr().unwrap().port());
    let extra = "[check.timeouts]\n\"oauth2.token\" = \"500ms\"";
    let toml = config(test, &side("smtp", &url), &side("imap", &url), "").replace("[dns]", &format!("{extra}\n[dns]"));
    let r = prober(&toml, clock).run().await;
    let f = r.failure.as_ref().unwrap();
    assert_eq!((f.step, f.class), (StepName::Oauth2Token, FailureClass::Timeout), "{f:#?}");
    eprintln!("IdP silent: {} at {}: {}", f.class, f.step, f.message);
}

#[tokio::test]
async fn device_code_login_stores_a_refresh_token_the_probe_then_uses() {
    let s = Stack::get();
    let idp = Idp::start();
    let test = "oauth-device";
    idp.client("submitter", Some(SECRET), s.var("MAILSTACK_SMTP_USER")).await;
    idp.client("desktop", None, &s.mailbox(test)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imap.refresh");
    let toml = config(test, &app("smtp", &idp, "submitter"), &delegated("imap", &idp, "desktop", &file), "");
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), &toml).unwrap();

    let mut login = Command::new(agent_bin())
        .args(["oauth2", "login", "--check", test, "--config"])
        .arg(f.path())
        .env("MAILLOOP_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(login.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let code = first.rsplit(' ').next().unwrap().to_string();
    assert!(first.starts_with(&format!("To sign in, open https://127.0.0.1:{}/activate and enter the code ", idp.port)), "{first}");
    idp.approve(&code, &s.mailbox(test)).await;
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = login.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut login.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{rest:?} {stderr}");
    assert!(rest.last().unwrap().starts_with("Signed in. The refresh token is in"), "{rest:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_no_secrets(&idp, &format!("{first}\n{}\n{stderr}", rest.join("\n"))).await;

    let (r, _) = probe_process(&toml);
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(step(&r, StepName::Oauth2Token).unwrap().detail.as_deref().unwrap().contains("imap: refresh_token grant"));
}

/// Microsoft 365 offers only XOAUTH2 and answers a refused token with its
/// own challenge; the stack's servers offer both mechanisms, so this one
/// dialogue is a fake (the token is real, from the IdP).
#[tokio::test]
async fn xoauth2_where_it_is_the_only_mechanism_and_a_microsoft_style_refusal() {
    use base64::Engine;
    use mailloop_tests::fake::{Scenario, close, expect, say};
    let idp = Idp::start();
    idp.client("m365", Some(SECRET), "probe@sender.invalid").await;
    let challenge = base64::engine::general_purpose::STANDARD.encode(r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}"#);
    let smtp = mailloop_tests::fake::Script::new([
        say("220 fake-smtp.invalid Microsoft ESMTP MAIL Service ready"),
        expect("EHLO"),
        say("250-fake-smtp.invalid Hello"),
        say("250 AUTH LOGIN XOAUTH2"),
        // A JWT makes the initial response too long for SMTP's 512-octet
        // line (RFC 4954 §4): the agent waits for the empty challenge.
        expect("AUTH XOAUTH2"),
        say("334 "),
        expect("dXNlcj1"), // base64 of "user="
        say(&format!("334 {challenge}")),
        expect(""),
        say("535 5.7.3 Authentication unsuccessful"),
        expect("QUIT"),
        say("221 2.0.0 Service closing transmission channel"),
        close(),
    ]);
    let ca = Stack::get().var("MAILSTACK_CA_FILE");
    let oauth2 = serde_json::json!({"token_url": idp.token_url(), "client_id": "m365", "client_secret_file": secret_file(), "scope": "mail", "ca_file": ca});
    let run = Scenario::smtp_fault(smtp).configure(|c| c.smtp("username", "probe@sender.invalid").smtp("oauth2", oauth2)).run().await;
    let f = run.report.failure.as_ref().expect("refused");
    assert_eq!((f.step, f.class, f.code), (StepName::SmtpAuth, FailureClass::Auth, Some(535)), "{f:#?}");
    assert_eq!(
        f.message,
        "Authentication unsuccessful (XOAUTH2; server's challenge: status=401, schemes=bearer, scope=https://outlook.office365.com/.default)"
    );
    // The initial response carried the user and the token the IdP issued.
    assert!(run.smtp.received.iter().any(|l| l == "AUTH XOAUTH2"), "{:?}", run.smtp.received);
    let auth = run.smtp.received.iter().find(|l| l.starts_with("dXNlcj1")).unwrap();
    let sent = base64::engine::general_purpose::STANDARD.decode(auth.trim()).unwrap();
    let token = idp.issued().await.remove(0);
    assert_eq!(String::from_utf8(sent).unwrap(), format!("user=probe@sender.invalid\x01auth=Bearer {token}\x01\x01"));
    assert!(run.smtp.received.iter().any(|l| l.is_empty()), "the challenge was acknowledged with an empty line: {:?}", run.smtp.received);
}
