//! TLS trust as users set it up, with real servers: the probe submits to
//! the real stack and reads its mailbox over IMAP through a TLS front
//! (`mailloop_tests::tls_front`) that presents a certificate the stack's CA
//! never issued: one made by `openssl req -x509`, an expired one, one for
//! other names. And the rule against logins in clear text, read by
//! `mailloop-agent check-config` as a user would run it.

use mailloop_common::{Failure, FailureClass, Outcome, ProbeReport, StepName};
use mailloop_tests::fake::{SelfSigned, TestPki};
use mailloop_tests::tls_front::TlsFront;
use mailloop_tests::{Check, Stack, run_agent};
use std::process::Command;

/// A front presenting `config`'s certificate before the stack's plain IMAP port.
async fn imap_front(config: std::sync::Arc<rustls::ServerConfig>) -> TlsFront {
    TlsFront::start(config, Stack::get().port("MAILSTACK_PORT_IMAP")).await
}

/// The test's check, its IMAP side reading through `front` over implicit
/// TLS and trusting `ca_file` (empty: no ca_file), plus `extra` lines in
/// `[check.imap]`.
fn through(test: &str, front: &TlsFront, ca_file: &str, extra: &[&str]) -> Check {
    let mut check = Check::new(test);
    check.imap_port = front.port();
    check.imap_security = "tls";
    check.imap_ca_file = ca_file.to_string();
    check.imap_extra = extra.iter().map(|l| l.to_string()).collect();
    check
}

#[track_caller]
fn assert_ok(r: &ProbeReport) {
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(r.step(StepName::ImapTls).is_some_and(|s| s.ok), "{r:#?}");
}

/// Failed at `imap.tls`, class `tls`, the sentence in `message` and
/// rustls's own words beside it in `raw`.
#[track_caller]
fn assert_refused(r: &ProbeReport) -> &Failure {
    let f = r
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected a TLS failure, got {r:#?}"));
    assert_eq!(
        (f.step, f.class),
        (StepName::ImapTls, FailureClass::Tls),
        "{f:#?}"
    );
    assert_eq!(r.outcome, Outcome::Failed);
    let raw = f
        .raw
        .as_deref()
        .unwrap_or_else(|| panic!("no raw reason: {f:#?}"));
    assert_ne!(raw, f.message);
    assert!(
        !f.message.contains("Other(") && !f.message.contains("Context {"),
        "a Debug dump: {}",
        f.message
    );
    // The step's detail says the same as the failure.
    assert_eq!(
        r.step(StepName::ImapTls).unwrap().detail.as_deref(),
        Some(f.message.as_str())
    );
    f
}

/// `openssl x509 -fingerprint -sha256`, as a user reads it: `AB:CD:...`.
fn openssl_fingerprint(cert: &SelfSigned) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert.cert_file)
        .output()
        .expect("openssl is missing: apt-get install openssl");
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim()
        .split_once('=')
        .expect("Fingerprint=...")
        .1
        .to_string()
}

/// The public key pin as curl's documentation computes it (base64).
fn openssl_spki_pin(cert: &SelfSigned) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.cert_file.display()
    );
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn lower_hex(fingerprint: &str) -> String {
    fingerprint.replace(':', "").to_ascii_lowercase()
}

// Byte-identical certificates in ca_file.

/// The case: `openssl req -x509` (CA:TRUE), that very file as
/// `ca_file`. rustls alone refuses it as `CaUsedAsEndEntity`.
#[tokio::test]
async fn a_self_signed_certificate_given_as_ca_file_is_trusted() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config()).await;
    let r = through(
        "tls_selfsigned_ok",
        &front,
        &cert.cert_file.display().to_string(),
        &[],
    )
    .probe()
    .await;
    assert_ok(&r);
    let seen = r
        .tls
        .iter()
        .find(|c| c.protocol == "imap")
        .expect("the IMAP certificate is reported");
    assert_eq!(
        (seen.subject.as_str(), seen.version.is_some()),
        ("CN=localhost", true),
        "{seen:#?}"
    );
}

#[tokio::test]
async fn a_self_signed_certificate_not_in_ca_file_is_named_with_its_pin() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config()).await;
    let stack_ca = Stack::get().var("MAILSTACK_CA_FILE");
    let r = through("tls_selfsigned_unknown", &front, stack_ca, &[])
        .probe()
        .await;
    let f = assert_refused(&r);
    assert_eq!(
        f.message,
        format!(
            "self-signed certificate not in ca_file {stack_ca}: CN=localhost; add this very certificate to ca_file, or pin it with pin_sha256 = [\"{}\"]",
            lower_hex(&openssl_fingerprint(&cert))
        )
    );
    assert!(
        f.raw.as_deref().unwrap().contains("CaUsedAsEndEntity"),
        "{f:#?}"
    );
}

/// Byte-identical is not a free pass: the name is still checked.
#[tokio::test]
async fn the_same_certificate_for_other_names_fails_naming_them() {
    let cert = SelfSigned::openssl(&["mail.example.com", "*.example.com"]);
    let front = imap_front(cert.server_config()).await;
    let ca = cert.cert_file.display().to_string();
    let r = through(
        "tls_selfsigned_name",
        &front,
        &ca,
        &["server_name = \"imap.example.org\""],
    )
    .probe()
    .await;
    let f = assert_refused(&r);
    assert!(
        f.message.starts_with("certificate is for mail.example.com, *.example.com, not imap.example.org: connect by a name it carries"),
        "{}",
        f.message
    );
}

/// ...and so is the validity period.
#[tokio::test]
async fn an_expired_self_signed_certificate_says_when_it_expired() {
    let now = time::OffsetDateTime::now_utc();
    let expired_on = now - time::Duration::days(12);
    let cert = SelfSigned::ca_true_valid(
        &["localhost", "127.0.0.1"],
        now - time::Duration::days(400),
        expired_on,
    );
    let front = imap_front(cert.server_config()).await;
    let r = through(
        "tls_selfsigned_expired",
        &front,
        &cert.cert_file.display().to_string(),
        &[],
    )
    .probe()
    .await;
    let f = assert_refused(&r);
    let date = format!(
        "{:04}-{:02}-{:02}",
        expired_on.year(),
        u8::from(expired_on.month()),
        expired_on.day()
    );
    assert_eq!(
        f.message,
        format!(
            "certificate expired on {date} (12 days ago): the server needs a renewed certificate"
        )
    );
    assert!(
        r.tls
            .iter()
            .any(|c| c.protocol == "imap" && c.days_left < -11),
        "{:#?}",
        r.tls
    );
}

/// ...and the server must hold its key: a copy of the (public)
/// certificate is not enough.
#[tokio::test]
async fn a_copied_certificate_without_its_key_is_refused() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let impostor = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config_signing_with(&impostor)).await;
    let r = through("tls_selfsigned_impostor", &front, &cert.cert_file.display().to_string(), &[])
        .probe()
        .await;
    let f = assert_refused(&r);
    assert!(f.message.starts_with("a signature does not verify"), "{}", f.message);
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_names_the_issuer_and_what_to_do() {
    let pki = TestPki::new();
    let front = imap_front(pki.valid.server_config()).await;
    let r = through(
        "tls_unknown_issuer",
        &front,
        Stack::get().var("MAILSTACK_CA_FILE"),
        &[],
    )
    .probe()
    .await;
    let f = assert_refused(&r);
    assert!(
        f.message.starts_with("unknown issuer CN=mailloop fault-injection CA: give its CA in ca_file (or pin the server's certificate with pin_sha256)"),
        "{}",
        f.message
    );
    assert!(
        f.raw.as_deref().unwrap().contains("UnknownIssuer"),
        "{f:#?}"
    );
}

// Pins.

/// The certificate's fingerprint as openssl prints it (hex with colons);
/// no ca_file at all.
#[tokio::test]
async fn a_pinned_certificate_is_trusted_without_a_ca() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config()).await;
    let pin = format!("pin_sha256 = [\"{}\"]", openssl_fingerprint(&cert));
    assert_ok(&through("tls_pin_cert", &front, "", &[&pin]).probe().await);
}

/// The public key's hash as curl takes it (`sha256//` + base64).
#[tokio::test]
async fn a_pinned_public_key_is_trusted_without_a_ca() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config()).await;
    let pin = format!("pin_sha256 = [\"sha256//{}\"]", openssl_spki_pin(&cert));
    assert_ok(&through("tls_pin_key", &front, "", &[&pin]).probe().await);
}

#[tokio::test]
async fn a_pin_that_matches_nothing_fails_naming_the_presented_hashes() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let other = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config()).await;
    // Even the system roots or a ca_file holding the certificate do not
    // override a pin: it is what the check asked for.
    let pin = format!("pin_sha256 = [\"{}\"]", openssl_fingerprint(&other));
    let r = through(
        "tls_pin_mismatch",
        &front,
        &cert.cert_file.display().to_string(),
        &[&pin],
    )
    .probe()
    .await;
    let f = assert_refused(&r);
    assert!(
        f.message.starts_with("certificate matches no pin_sha256: "),
        "{}",
        f.message
    );
    assert!(
        f.message.contains(&lower_hex(&openssl_fingerprint(&cert))),
        "{}",
        f.message
    );
    assert!(
        f.message
            .contains(&format!("sha256//{}", openssl_spki_pin(&cert))),
        "{}",
        f.message
    );
}

/// A pin replaces the CA, not the name check.
#[tokio::test]
async fn a_pinned_certificate_still_has_its_name_checked() {
    let cert = SelfSigned::openssl(&["localhost", "127.0.0.1"]);
    let front = imap_front(cert.server_config()).await;
    let pin = format!("pin_sha256 = [\"{}\"]", openssl_fingerprint(&cert));
    let r = through(
        "tls_pin_name",
        &front,
        "",
        &[&pin, "server_name = \"imap.example.org\""],
    )
    .probe()
    .await;
    let f = assert_refused(&r);
    assert!(
        f.message
            .starts_with("certificate is for localhost, 127.0.0.1, not imap.example.org"),
        "{}",
        f.message
    );
}

// Logins in clear text.

/// A config file with both sides in clear text to `host`, with logins.
fn plaintext_config(host: &str, extra: &str) -> tempfile::NamedTempFile {
    let text = format!(
        "[[check]]\nname = \"plain\"\nfrom = \"probe@sender.test\"\nto = \"probe@receiver.test\"\n\
         [check.smtp]\nhost = {host:?}\nsecurity = \"none\"\nusername = \"probe@sender.test\"\npassword = \"pw\"\n{extra}\n\
         [check.imap]\nhost = {host:?}\nsecurity = \"none\"\nusername = \"probe@receiver.test\"\npassword = \"pw\"\n{extra}\n"
    );
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

fn check_config(file: &tempfile::NamedTempFile) -> (i32, String) {
    let (code, out, err) = run_agent(&["check-config", "--config", file.path().to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[test]
fn a_clear_text_login_to_a_remote_host_is_a_config_error_naming_each_key() {
    let (code, out) = check_config(&plaintext_config("mail.example.com", ""));
    assert_eq!(code, 3, "{out}");
    for side in ["smtp", "imap"] {
        assert!(
            out.contains(&format!(
                "check[0].{side}.security: \"none\" would send the password in clear text to mail.example.com, which is not a loopback address: use \"starttls\" or \"tls\", or set allow_plaintext_auth = true"
            )),
            "{out}"
        );
    }
}

#[test]
fn a_clear_text_login_to_loopback_or_explicitly_allowed_is_accepted() {
    for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost"] {
        let (code, out) = check_config(&plaintext_config(host, ""));
        assert_eq!(code, 0, "{host}: {out}");
    }
    let (code, out) = check_config(&plaintext_config(
        "mail.example.com",
        "allow_plaintext_auth = true",
    ));
    assert_eq!(code, 0, "{out}");
}

/// Allowed, the login in clear text is a warning on every report; the
/// outcome stays `ok` (the check does what it was told). The check names a
/// host that is not loopback; `connect_to` takes it to the stack's IMAP
/// port, where Dovecot takes LOGIN without TLS from loopback.
#[tokio::test]
async fn an_allowed_clear_text_login_is_a_warning_on_the_report() {
    let mut check = Check::new("tls_plain_allowed");
    check.imap_host = "imap.example.net".into();
    check.imap_port = 143;
    check.imap_security = "none";
    check.imap_ca_file = String::new();
    check.imap_extra = vec!["allow_plaintext_auth = true".into()];
    let rule = format!(
        "imap.example.net:143=127.0.0.1:{}",
        Stack::get().port("MAILSTACK_PORT_IMAP")
    );
    let r = check.probe_via(&[&rule]).await;
    assert_eq!(r.outcome, Outcome::Ok, "{r:#?}");
    assert!(r.reasons.is_empty(), "{:?}", r.reasons);
    assert_eq!(
        r.warnings,
        [
            "imap: the login goes to imap.example.net:143 in clear text (security = \"none\", allow_plaintext_auth = true)"
        ]
    );
    // The submission side is STARTTLS: no warning for it.
}
