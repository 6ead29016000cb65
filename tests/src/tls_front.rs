//! A TLS front for the real mail stack: listens on 127.0.0.1 (port 0),
//! completes a TLS handshake with the certificate a test chooses (a
//! self-signed one made by `openssl req -x509`, an expired one...), and
//! forwards the decrypted bytes to one of the stack's plain ports. The
//! probe then talks to the real Dovecot or Postfix through a certificate
//! the stack's own private CA never issued.

use rustls::ServerConfig;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running front; stops when dropped.
pub struct TlsFront {
    port: u16,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Serves `config`'s certificate on a new port, forwarding every
    /// connection to `127.0.0.1:backend_port`.
    pub async fn start(config: Arc<ServerConfig>, backend_port: u16) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS front on loopback");
        let port = listener.local_addr().expect("local address").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here; that is the test's point.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut backend) = TcpStream::connect(("127.0.0.1", backend_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
                });
            }
        });
        TlsFront { port, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
