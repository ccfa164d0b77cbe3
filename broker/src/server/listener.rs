//! TCP listeners: accept sockets and spawn one connection task per client;
//! on a TLS listener the task first completes the TLS handshake (bounded
//! like the AMQP one), and a verified client certificate's common name
//! becomes the connection's `EXTERNAL` identity.
//!
//! Every task holds a clone of the shutdown tracker so that a graceful shutdown can
//! wait for all connections to finish closing.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::core::Core;

use super::limits::Admission;
use super::tls::TlsAcceptor;

/// Accept loop for one listener (TLS when `tls` is given); stops when the
/// shutdown flag flips.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    core: Arc<Core>,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
    tracker: mpsc::Sender<()>,
) {
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "accepted AMQP connection");
                    let core = core.clone();
                    let rx = shutdown.clone();
                    let t = tracker.clone();
                    // Counted from accept (as RabbitMQ counts), checked at connection.open.
                    let counted = admission.count();
                    let admission = admission.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => {
                                let endpoints = stream.local_addr().ok().map(|local| {
                                    super::connection::Endpoints { peer, local, tls: false }
                                });
                                super::connection::serve(
                                    stream,
                                    endpoints,
                                    None,
                                    core,
                                    admission,
                                    rx,
                                )
                                .await
                            }
                            Some(tls) => serve_tls(stream, peer, &tls, core, admission, rx).await,
                        }
                        drop((counted, t));
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
}

/// Completes the TLS handshake with a client, then serves it. A client
/// that speaks plain AMQP here is hung up on without an answer (as RabbitMQ
/// does; answering would invite its password in clear text), and so is one
/// whose handshake fails or does not finish in time.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &TlsAcceptor,
    core: Arc<Core>,
    admission: Arc<Admission>,
    shutdown: watch::Receiver<bool>,
) {
    let endpoints = stream
        .local_addr()
        .ok()
        .map(|local| super::connection::Endpoints {
            peer,
            local,
            tls: true,
        });
    let handshake = async {
        let mut first = [0u8; 4];
        if let Ok(4) = stream.peek(&mut first).await {
            if &first == b"AMQP" {
                tracing::info!(
                    %peer,
                    "plain AMQP client on a TLS port: hung up on (it should use amqps://)"
                );
                return None;
            }
        }
        match tls.acceptor().accept(stream).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                None
            }
        }
    };
    let Ok(Some(stream)) =
        tokio::time::timeout(super::connection::HANDSHAKE_TIMEOUT, handshake).await
    else {
        return;
    };
    let external = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| super::tls::common_name(leaf));
    tracing::debug!(%peer, ?external, "TLS connection");
    super::connection::serve(stream, endpoints, external, core, admission, shutdown).await;
}
