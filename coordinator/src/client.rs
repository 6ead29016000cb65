//! A small client for the admin API (what `mailloopctl` and the tests use).
//!
//! HTTP/1.1 over hyper, one connection per request (an SRE's CLI makes a
//! handful), TLS through rustls with ring when the URL is `https://`:
//! the system's roots plus an optional extra CA file.

use axum::http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mailloop_common::Secret;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connect and request timeouts.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad coordinator URL {0:?}: expected http://host:port or https://host:port")]
    Url(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{method} {path} timed out after {}s", TIMEOUT.as_secs())]
    Timeout { method: Method, path: String },
}

/// An answer: status and JSON body (`Value::String` if the body was not JSON).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `error` the API gave, with every `issues[]` entry on its own line.
    pub fn error_text(&self) -> String {
        let mut out = self
            .body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| self.body.to_string(), str::to_string);
        for i in self
            .body
            .get("issues")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let path = i.get("path").and_then(Value::as_str).unwrap_or("?");
            let message = i.get("message").and_then(Value::as_str).unwrap_or("?");
            out.push_str(&format!("\n  {path}: {message}"));
        }
        format!("{} ({})", out, self.status)
    }
}

/// The admin API at one URL.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    authority: String,
    prefix: String,
    token: Option<Secret>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Client {
    /// `url`: `http://127.0.0.1:7480` or `https://coordinator.example:7480`.
    pub fn new(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let uri: Uri = url.parse().map_err(|_| ClientError::Url(url.into()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ClientError::Url(url.into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Url(url.into()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let prefix = uri.path().trim_end_matches('/').to_string();
        let tls = if https {
            Some(connector(ca_file)?)
        } else {
            None
        };
        Ok(Client {
            host,
            port,
            authority,
            prefix,
            token: token.filter(|t| !t.is_empty()).map(Secret::new),
            tls,
        })
    }

    pub async fn get(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<ApiResponse, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<ApiResponse, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.send(Method::DELETE, path, None).await
    }

    /// One request on its own connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let timeout = ClientError::Timeout {
            method: method.clone(),
            path: path.to_string(),
        };
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| timeout)?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let host = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = TcpStream::connect((host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.expose()));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("JSON serializes"))
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = match &self.tls {
            None => request(tcp, req).await?,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                request(stream, req).await?
            }
        };
        Ok(resp)
    }
}

async fn request<S>(stream: S, req: Request<Full<Bytes>>) -> Result<ApiResponse, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(ApiResponse { status, body })
}

fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", path.display())))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
