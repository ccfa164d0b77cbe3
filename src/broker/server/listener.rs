//! TCP listeners: accept sockets and spawn one connection task per client.
//!
//! Every task holds a clone of the shutdown tracker so that a graceful shutdown can
//! wait for all connections to finish closing.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::broker::core::Core;

/// Accept loop for one listener; stops when the shutdown flag flips.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    core: Arc<Core>,
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
                    tokio::spawn(async move {
                        super::connection::serve(stream, Some(peer.ip()), core, rx).await;
                        drop(t);
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
