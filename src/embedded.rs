//! The process-wide embedded broker behind `embedded://` and empty URLs:
//! started on first use and shared by every connection of the process, which
//! reach it in-process (no socket). `embedded://?listen=127.0.0.1:5672`
//! also exposes it over AMQP so other processes can share it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::broker::{Broker, BrokerHandle};
use crate::transport::local::LocalTransport;
use crate::transport::url::TransportUrl;
use crate::transport::Transport;
use crate::Error;

static BROKER: OnceCell<BrokerHandle> = OnceCell::const_new();

/// This process's embedded broker, started on first use (listening on
/// `listen` if given then).
pub async fn broker(listen: Option<SocketAddr>) -> Result<&'static BrokerHandle, Error> {
    let broker = BROKER
        .get_or_try_init(|| async {
            let builder = match listen {
                Some(addr) => Broker::builder().listen(addr),
                None => Broker::builder().no_listen(),
            };
            builder
                .start()
                .await
                .map_err(|e| Error::transport(format!("cannot start the embedded broker: {e}")))
        })
        .await?;
    if listen.is_some() && !broker.local_addrs().iter().any(|a| Some(*a) == listen) {
        tracing::warn!(
            ?listen,
            "the embedded broker was already started; `listen` ignored"
        );
    }
    Ok(broker)
}

/// An in-process transport to this process's embedded broker.
pub(crate) async fn transport(url: &TransportUrl) -> Result<Arc<dyn Transport>, Error> {
    let listen = match url.option("listen") {
        Some(addr) => Some(
            addr.parse()
                .map_err(|_| Error::config(format!("listen={addr} is not a socket address")))?,
        ),
        None => None,
    };
    let broker = broker(listen).await?;
    Ok(Arc::new(LocalTransport::connect(
        broker.core(),
        "/",
        broker.user(),
    )?))
}
