//! The process-wide embedded broker behind `embedded://` and empty URLs:
//! started on first use and shared by every connection of the process, which
//! reach it in-process (no socket). `embedded://?listen=127.0.0.1:5672`
//! also exposes it over AMQP so other processes can share it, and
//! `embedded://?tls_listen=0.0.0.0:5671&tls_cert=PEM&tls_key=PEM` over AMQP
//! with TLS (`tls_ca=PEM` to check client certificates and let them log in
//! with `EXTERNAL`, `tls_verify_peer=true` to require one). It keeps
//! everything in memory unless given a data directory:
//! `embedded://?data_dir=PATH` keeps durable exchanges, queues, bindings and
//! persistent messages there, as `warren broker --data-dir` does.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    start(listen, None, None).await
}

/// [`broker`], with TLS listeners too when it starts now.
async fn start(
    listen: Option<SocketAddr>,
    tls: Option<(SocketAddr, crate::broker::server::TlsConfig)>,
    data_dir: Option<PathBuf>,
) -> Result<&'static BrokerHandle, Error> {
    let with_tls = tls.is_some();
    let with_dir = data_dir.clone();
    let broker = BROKER
        .get_or_try_init(|| async {
            let mut builder = match listen {
                Some(addr) => Broker::builder().listen(addr),
                None => Broker::builder().no_listen(),
            };
            if let Some((addr, config)) = tls {
                builder = builder.tls(config).tls_listen(addr);
            }
            if let Some(dir) = data_dir {
                builder = builder.data_dir(dir);
            }
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
    if with_tls && broker.tls_addrs().is_empty() {
        tracing::warn!("the embedded broker was already started; `tls_listen` ignored");
    }
    if with_dir.is_some() && broker.core().data_dir() != with_dir.as_deref() {
        tracing::warn!("the embedded broker was already started; `data_dir` ignored");
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
    let tls = match url.option("tls_listen") {
        Some(addr) => {
            let addr = addr
                .parse()
                .map_err(|_| Error::config(format!("tls_listen={addr} is not a socket address")))?;
            let file = |key: &str| {
                url.path_option(key)
                    .ok_or_else(|| Error::config(format!("tls_listen needs {key}=PEM")))
            };
            let mut config =
                crate::broker::server::TlsConfig::new(file("tls_cert")?, file("tls_key")?)
                    .verify_peer(url.flag("tls_verify_peer")?);
            if let Some(ca) = url.path_option("tls_ca") {
                config = config.client_ca(ca);
            }
            Some((addr, config))
        }
        None => None,
    };
    let data_dir = url.path_option("data_dir");
    let broker = start(listen, tls, data_dir).await?;
    Ok(Arc::new(
        LocalTransport::connect(broker.core(), "/", broker.user())?
            .with_max_message_size(broker.max_message_size()),
    ))
}
