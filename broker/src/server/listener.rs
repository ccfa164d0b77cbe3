//! TCP listeners: accept sockets and spawn one connection task per client.
//!
//! Every task holds a clone of the shutdown tracker so that a graceful shutdown can
//! wait for all connections to finish closing.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::core::Core;

use super::limits::Admission;

/// Accept loop for one listener; stops when the shutdown flag flips.
pub(crate) async fn accept_loop(
    listener: TcpListener,
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
                    tokio::spawn(async move {
                        super::connection::serve(stream, Some(peer.ip()), core, admission, rx)
                            .await;
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
