//! One HTTPS POST to an OAuth2 endpoint, over the agent's own transport.
//!
//! TCP and TLS go through [`Conn`] (the check's `connect_to` rules, the
//! token endpoint's `ca_file`, the certificate explanations of
//! [`crate::tls`]), so a refused connection, a bad certificate and a slow
//! answer are told apart the way they are for SMTP and IMAP. HTTP/1.1
//! itself is hyper's. The answer is bounded ([`MAX_ANSWER`]).

use crate::steps::StepError;
use crate::tls::TlsClient;
use crate::transport::{self, Conn, ConnectTo};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mailloop_common::FailureClass;
use mailloop_common::config::HttpsUrl;

/// Largest answer body accepted (token answers are a few KiB).
pub const MAX_ANSWER: usize = 64 * 1024;

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// POSTs `form` (`application/x-www-form-urlencoded`) to `url`.
pub async fn post_form(url: &HttpsUrl, tls: &TlsClient, connect_to: &ConnectTo, form: &[(&str, &str)]) -> Result<Answer, StepError> {
    let mut conn = Conn::connect_via(&url.host, url.port, connect_to)
        .await
        .map_err(|e| with_endpoint(StepError::transport(e, true), url))?;
    let name = transport::server_name(&url.host).map_err(|m| StepError::new(FailureClass::Tls, m))?;
    conn.start_tls(tls, name).await.map_err(|e| with_endpoint(StepError::transport(e, true), url))?;
    let stream = conn
        .into_tls_stream()
        .ok_or_else(|| StepError::new(FailureClass::Protocol, "the token endpoint sent data before the request"))?;

    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let authority = if url.host.contains(':') { format!("[{}]:{}", url.host, url.port) } else { format!("{}:{}", url.host, url.port) };
    let request = hyper::Request::post(url.path.as_str())
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, concat!("mailloop-agent/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| StepError::new(FailureClass::Protocol, format!("building the request: {e}")))?;

    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http_error)?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| {
            StepError::new(FailureClass::Protocol, format!("reading the token endpoint's answer: {e} (limit {MAX_ANSWER} bytes)"))
        })?;
        Ok(Answer { status, body: body.to_bytes().to_vec() })
    };
    // The connection future drives the socket; the exchange reads through it.
    let mut exchange = std::pin::pin!(exchange);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        answer = &mut exchange => answer,
        done = &mut connection => match done {
            Err(e) => Err(http_error(e)),
            Ok(()) => exchange.await,
        },
    }
}

fn with_endpoint(mut e: StepError, url: &HttpsUrl) -> StepError {
    e.message = format!("token endpoint {}:{}: {}", url.host, url.port, e.message);
    e
}

fn http_error(e: hyper::Error) -> StepError {
    let class = if e.is_timeout() { FailureClass::Timeout } else { FailureClass::Protocol };
    let mut message = format!("HTTP: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    StepError::new(class, message)
}
