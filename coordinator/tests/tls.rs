//! TLS on both listeners, and mutual TLS for agents.

mod support;
use mailloop_coordinator::client::Client;
use mailloop_proto::pb;
use mailloop_proto::pb::agent_service_client::AgentServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};
use support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A throwaway CA, a server certificate for 127.0.0.1, a client certificate.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client_pem: (String, String),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "mailloop coordinator test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0].clone());
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        (p.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
    let client_pem = leaf(vec!["eu-1.agents.test".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let ca = write("ca.pem", &ca_pem);
    let server = (write("server.pem", &server_cert), write("server.key", &server_key));
    Pki { _dir: dir, ca, server, client_pem }
}

fn tls_server(p: &Pki, mutual: bool) -> String {
    let mut s = format!("tls_cert = {:?}\ntls_key = {:?}\n", p.server.0, p.server.1);
    if mutual {
        s.push_str(&format!("client_ca = {:?}\n", p.ca));
    }
    s
}

async fn agent_over_tls(c: &Coordinator, ca: &Path, identity: Option<&(String, String)>) -> Result<support::Agent, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap())).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", c.grpc)).unwrap().tls_config(tls)?.connect().await?;
    Ok(AgentServiceClient::with_interceptor(channel, Bearer::token(token("eu-1"))))
}

fn register_req() -> pb::RegisterRequest {
    pb::RegisterRequest { name: "eu-1".into(), region: "eu-west".into(), version: "t".into(), ..Default::default() }
}

#[tokio::test]
async fn agents_and_admins_speak_tls() {
    let p = pki();
    let c = Coordinator::start(&tls_server(&p, false), "");
    let mut agent = agent_over_tls(&c, &p.ca, None).await.unwrap();
    assert_eq!(agent.register(register_req()).await.unwrap().into_inner().agent_id, "eu-1");

    let api = Client::new(&format!("https://{}", c.http), Some(ADMIN_TOKEN.into()), Some(&p.ca)).unwrap();
    assert_eq!(api.get("/api/v1/agents").await.unwrap().status, 200);
    // A client that does not trust the CA refuses to talk.
    let untrusting = Client::new(&format!("https://{}", c.http), None, None).unwrap();
    assert!(untrusting.get("/healthz").await.is_err());
}

#[tokio::test]
async fn mutual_tls_refuses_agents_without_a_client_certificate() {
    let p = pki();
    let c = Coordinator::start(&tls_server(&p, true), "");
    let mut with_cert = agent_over_tls(&c, &p.ca, Some(&p.client_pem)).await.unwrap();
    assert!(with_cert.register(register_req()).await.is_ok());
    let refused = match agent_over_tls(&c, &p.ca, None).await {
        Err(_) => true,
        Ok(mut a) => a.register(register_req()).await.is_err(),
    };
    assert!(refused, "an agent without a client certificate must not get in");
}

#[tokio::test]
async fn mailloopctl_says_which_side_of_tls_a_url_is_on() {
    let p = pki();
    let c = Coordinator::start(&tls_server(&p, false), "");
    let ctl = |url: String, ca: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mailloopctl"));
        cmd.args(["checks", "list"]).env("MAILLOOP_URL", url).env("MAILLOOP_TOKEN", ADMIN_TOKEN);
        if ca {
            cmd.env("MAILLOOP_CA_FILE", &p.ca);
        }
        let out = cmd.output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = ctl(format!("https://{}", c.http), true);
    assert_eq!((code, stderr.as_str()), (0, ""));
    let (code, stderr) = ctl(format!("http://{}", c.http), false);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains(&format!("http:// to a server that answered with TLS ({0}): use https://{0}", c.http)), "{stderr}");
    let (code, stderr) = ctl(format!("https://{}", c.grpc), true);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("speaks HTTP/2 gRPC: that is the agents' port (grpc_listen)"), "{stderr}");
    let (code, stderr) = ctl(format!("https://{}", c.http), false);
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("--ca-file"), "an untrusted certificate says how to trust it: {stderr}");
}
