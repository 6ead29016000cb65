//! A JSON POST over HTTP/1.1 (hyper, one connection per request; rustls
//! with ring for `https://`, system roots plus an optional CA file), and
//! the rule that turns its answer into a [`Delivery`].
//!
//! Its own small helper rather than `crate::client`: alerts need the status
//! of a POST to an arbitrary URL, a per-channel timeout, and errors that
//! never repeat the URL (webhook URLs carry their token in the path).

use super::{Delivery, FailClass, Failed};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;

/// How much of an error answer's body is kept for `last_error`.
const ERROR_BODY_MAX: usize = 300;
/// Answers larger than this are not read further.
const BODY_LIMIT: usize = 64 * 1024;

/// An endpoint ready to POST to.
pub struct HttpSender {
    uri: Uri,
    host: String,
    port: u16,
    /// The Host header (the URL's authority).
    authority: String,
    /// `host:port` for error texts (never a user:password of the URL).
    place: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl HttpSender {
    /// `url` was validated by the config; `ca_file` adds a trust root.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<HttpSender, String> {
        let uri: Uri = url.parse().map_err(|_| "invalid URL".to_string())?;
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("URL without host")?.to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        let tls = if https {
            Some(super::tls::connector(ca_file)?)
        } else {
            None
        };
        let place = format!("{host}:{port}");
        let authority = authority
            .rsplit_once('@')
            .map_or(authority.clone(), |(_, a)| a.to_string());
        Ok(HttpSender {
            uri,
            host,
            port,
            authority,
            place,
            tls,
        })
    }

    /// One attempt, bounded by `timeout` as a whole.
    pub async fn post(&self, body: &serde_json::Value, timeout: Duration) -> Delivery {
        match tokio::time::timeout(timeout, self.exchange(body)).await {
            Ok(Ok((status, text, retry_after))) => match (classify(status, &text), retry_after) {
                (Delivery::Retry(e), Some(after)) => Delivery::RetryAfter(e, after),
                (d, _) => d,
            },
            Ok(Err(e)) => Delivery::Retry(e),
            Err(_) => Delivery::Retry(Failed::new(
                FailClass::Timeout,
                format!("no answer within {timeout:?}"),
            )),
        }
    }

    async fn exchange(&self, body: &serde_json::Value) -> Result<Answer, Failed> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((host, self.port)).await.map_err(|e| {
            Failed::new(FailClass::Connect, format!("connect to {}: {e}", self.place))
        })?;
        let _ = tcp.set_nodelay(true);
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = Request::post(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("mailloop/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(
                serde_json::to_vec(body).expect("JSON serializes"),
            )))
            .map_err(|e| Failed::new(FailClass::Protocol, format!("request: {e}")))?;
        match &self.tls {
            None => request(tcp, req).await,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| Failed::new(FailClass::Tls, format!("TLS name {host}: {e}")))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| {
                    Failed::new(FailClass::Tls, format!("TLS with {}: {e}", self.place))
                })?;
                request(stream, req).await
            }
        }
    }
}

/// 2xx delivered; 408, 429 and 5xx retried; any other status permanent
/// (a 400 or 404 will not fix itself by asking again).
pub fn classify(status: u16, body: &str) -> Delivery {
    let text = || {
        let body: String = body.trim().chars().take(ERROR_BODY_MAX).collect();
        if body.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {body}")
        }
    };
    let failed = || Failed::new(FailClass::HttpStatus, text()).with_code(status);
    match status {
        200..=299 => Delivery::Delivered,
        408 | 429 | 500..=599 => Delivery::Retry(failed()),
        _ => Delivery::Permanent(failed()),
    }
}

/// Status, error body text, and `Retry-After` in seconds when given.
type Answer = (u16, String, Option<Duration>);

async fn request<S>(stream: S, req: Request<Full<Bytes>>) -> Result<Answer, Failed>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Failed::new(FailClass::Protocol, format!("HTTP: {e}")))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failed::new(FailClass::Protocol, format!("HTTP: {e}")))?;
    let status = resp.status().as_u16();
    // Only the delay-seconds form: receivers that rate-limit send it so.
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // The body matters only for the error text; a receiver that answers
    // with a status and then stalls must not turn a 2xx into a timeout.
    let text = if (200..300).contains(&status) {
        String::new()
    } else {
        match Limited::new(resp.into_body(), BODY_LIMIT).collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        }
    };
    conn.abort();
    Ok((status, text, retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_once() {
        assert_eq!(classify(202, ""), Delivery::Delivered);
        for s in [408, 429, 500, 503] {
            assert!(matches!(classify(s, ""), Delivery::Retry(_)), "{s}");
        }
        for s in [400, 401, 403, 404, 410] {
            assert!(matches!(classify(s, ""), Delivery::Permanent(_)), "{s}");
        }
        assert_eq!(
            classify(400, "invalid routing key\n"),
            Delivery::Permanent(
                Failed::new(FailClass::HttpStatus, "HTTP 400: invalid routing key").with_code(400)
            )
        );
    }
}
