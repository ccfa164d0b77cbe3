//! The process-wide embedded broker behind `embedded://` and empty URLs:
//! started on first use, shared by every connection of the process.

use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::broker::{Broker, BrokerHandle};
use crate::transport::amqp::AmqpTransport;
use crate::transport::Transport;
use crate::Error;

static BROKER: OnceCell<BrokerHandle> = OnceCell::const_new();

/// This process's embedded broker, started on first use.
pub async fn broker() -> Result<&'static BrokerHandle, Error> {
    BROKER
        .get_or_try_init(|| async {
            Broker::builder()
                .listen(([127, 0, 0, 1], 0).into())
                .start()
                .await
                .map_err(|e| Error::transport(format!("cannot start the embedded broker: {e}")))
        })
        .await
}

/// A transport to this process's embedded broker.
pub(crate) async fn transport() -> Result<Arc<dyn Transport>, Error> {
    let broker = broker().await?;
    Ok(Arc::new(AmqpTransport::connect(&[broker.url()]).await?))
}
