//! [`Connection`]: a transport plus the codec and topology clients and
//! servers use on it; [`connect`] picks the transport from a URL.

use std::sync::Arc;

use crate::rpc::Topology;
use crate::transport::amqp::AmqpTransport;
use crate::transport::url::{Scheme, TransportUrl};
use crate::transport::Transport;
use crate::wire::Codec;
use crate::Error;

/// A connection to a broker, shared by clients and servers. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    transport: Arc<dyn Transport>,
    codec: Codec,
    topology: Topology,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("codec", &self.codec)
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

/// Connects to the broker a transport URL names:
///
/// - `amqp://user:pass@host:port/vhost`: any AMQP 0-9-1 server, MessagePack
///   by default;
/// - `rabbit://user:pass@host:port[,user:pass@host2:port2]/vhost`: oslo's
///   form, oslo's JSON codec by default, several hosts tried in order;
/// - `embedded://` (or an empty URL): the broker inside this process,
///   reached without a socket; `embedded://?listen=127.0.0.1:5672` also
///   exposes it to other processes over AMQP.
///
/// Options after `?`: `codec=msgpack|oslo`, `amqp_durable_queues`,
/// `rabbit_quorum_queue`, `rabbit_transient_queues_ttl` (seconds, 0 omits),
/// `rabbit_login_method=PLAIN|AMQPLAIN`; `listen=ADDR` and `data_dir=PATH` for
/// `embedded://`.
pub async fn connect(url: &str) -> Result<Connection, Error> {
    let url: TransportUrl = url.parse()?;
    let codec = match url.option("codec") {
        None if url.scheme == Scheme::Rabbit => Codec::OsloJson,
        None => Codec::MsgPack,
        Some("msgpack") => Codec::MsgPack,
        Some("oslo" | "json") => Codec::OsloJson,
        Some(other) => {
            return Err(Error::config(format!(
                "unknown codec {other:?} (use msgpack or oslo)"
            )))
        }
    };
    let mut topology = Topology {
        durable: url.flag("amqp_durable_queues")?,
        quorum: url.flag("rabbit_quorum_queue")?,
        ..Topology::default()
    };
    if let Some(ttl) = url.option("rabbit_transient_queues_ttl") {
        let seconds: u32 = ttl.parse().map_err(|_| {
            Error::config(format!("rabbit_transient_queues_ttl={ttl} is not a number"))
        })?;
        topology.transient_ttl_ms = (seconds > 0).then(|| seconds.saturating_mul(1000));
    }
    let transport: Arc<dyn Transport> = match url.scheme {
        Scheme::Amqp | Scheme::Rabbit => Arc::new(
            AmqpTransport::connect_with_tls(
                &url.amqp_uris()?,
                url.connection_timeout()?
                    .unwrap_or(crate::transport::amqp::DEFAULT_CONNECTION_TIMEOUT),
                url.tls()?.as_ref(),
            )
            .await?,
        ),
        #[cfg(feature = "embedded")]
        Scheme::Embedded => crate::embedded::transport(&url).await?,
        #[cfg(not(feature = "embedded"))]
        Scheme::Embedded => {
            return Err(Error::config(
                "embedded:// (and an empty URL) needs warren's `embedded` feature, \
                 which this build turned off: give an amqp:// or rabbit:// URL",
            ))
        }
    };
    Ok(Connection {
        transport,
        codec,
        topology,
    })
}

/// Connects to `$TRANSPORT_URL`, or to the embedded broker when it is unset.
pub async fn connect_from_env() -> Result<Connection, Error> {
    let url = std::env::var("TRANSPORT_URL").unwrap_or_default();
    connect(&url).await
}

impl Connection {
    /// Wraps a transport.
    pub fn from_transport(transport: Arc<dyn Transport>, codec: Codec, topology: Topology) -> Self {
        Connection {
            transport,
            codec,
            topology,
        }
    }

    /// An in-process connection to `broker` (no socket): what `embedded://`
    /// uses for the process-wide broker, for any broker of this process.
    #[cfg(feature = "embedded")]
    pub fn in_process(broker: &crate::broker::BrokerHandle) -> Result<Self, Error> {
        let transport =
            crate::transport::local::LocalTransport::connect(broker.core(), "/", broker.user())?
                .with_max_message_size(broker.max_message_size());
        Ok(Connection::from_transport(
            Arc::new(transport),
            Codec::MsgPack,
            Topology::default(),
        ))
    }

    /// The same connection, with clients created from it using `codec`.
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The codec clients use for requests.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The topology options.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Closes the connection to the broker.
    pub async fn close(&self) -> Result<(), Error> {
        self.transport.close().await
    }
}
