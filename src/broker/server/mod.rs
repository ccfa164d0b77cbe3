//! The TCP side of the broker: accept connections, and run each through the
//! AMQP connection and channel state machines.

mod channel;
mod connection;
mod wire;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::core::Core;

/// Accepts connections until the broker stops.
pub(crate) async fn accept(
    listener: TcpListener,
    core: Arc<Core>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection::serve(core.clone(), stream, peer, stopped.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stopped.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Connections see the same stop signal and close with 320.
    while connections.join_next().await.is_some() {}
}
