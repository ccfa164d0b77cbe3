//! Transports: how the RPC layer reaches a broker.
//!
//! The RPC layer sees only the [`Transport`] trait: declare exchanges and
//! queues, bind, publish, consume, ack. [`amqp`] implements it over any AMQP
//! 0-9-1 server with lapin; [`local`] goes straight into the embedded
//! broker's core in this process; [`url`] parses the `amqp://`, `rabbit://`
//! and `embedded://` URLs that pick one.

pub mod amqp;
#[cfg(feature = "embedded")]
pub mod local;
pub(crate) mod recovery;
pub(crate) mod tls;
pub mod url;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use async_trait::async_trait;

use crate::Error;

/// The AMQP properties warren reads and writes on a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// MIME type of the body; selects the codec.
    pub content_type: Option<String>,
    /// Encoding of the body (oslo sets `utf-8`).
    pub content_encoding: Option<String>,
    /// Correlation id of a reply (plain AMQP RPC).
    pub correlation_id: Option<String>,
    /// Where to reply (plain AMQP RPC).
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<String>,
    /// 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    /// Message priority.
    pub priority: Option<u8>,
    /// How many times warren's servers saw this request delivered before
    /// (the [`WARREN_DELIVERY_COUNT`] header they set when they publish a
    /// redelivered request again; see the server's poison guard).
    pub delivery_count: Option<u32>,
    /// How many times the broker delivered the message before, where it
    /// counts (quorum queues' `x-delivery-count` header). Read only.
    pub broker_delivery_count: Option<u32>,
}

impl Properties {
    /// Earlier deliveries, by whichever count is known (the larger).
    pub fn deliveries_before(&self) -> u32 {
        self.delivery_count
            .max(self.broker_delivery_count)
            .unwrap_or(0)
    }
}

/// The header in which warren's servers count a request's earlier
/// deliveries on queues whose broker does not (see the server's poison
/// guard).
pub const WARREN_DELIVERY_COUNT: &str = "x-warren-delivery-count";

/// The count in header `name`, if present and an integer.
fn header_count(p: &BasicProperties, name: &str) -> Option<u32> {
    p.headers()
        .as_ref()?
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .and_then(|(_, v)| count_of(v))
}

/// A count header's value, whichever integer type the broker used.
fn count_of(value: &AMQPValue) -> Option<u32> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        _ => return None,
    };
    Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// An AMQP short string (at most 255 bytes), or a configuration error
/// naming the value.
pub fn short(value: &str) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|_| {
        let mut cut = value.len().min(32);
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        let head = &value[..cut];
        Error::config(format!(
            "{head:?}… is {} bytes long; AMQP names and properties hold at most 255",
            value.len()
        ))
    })
}

impl Properties {
    /// As AMQP properties (with oslo's empty `headers` table); a value too
    /// long for an AMQP short string is a configuration error.
    pub fn to_amqp(&self) -> Result<BasicProperties, Error> {
        let p = self;
        let mut headers = FieldTable::default();
        if let Some(count) = p.delivery_count {
            headers.insert(
                WARREN_DELIVERY_COUNT.into(),
                AMQPValue::LongLongInt(count.into()),
            );
        }
        let mut out = BasicProperties::default().with_headers(headers);
        if let Some(v) = &p.content_type {
            out = out.with_content_type(short(v)?);
        }
        if let Some(v) = &p.content_encoding {
            out = out.with_content_encoding(short(v)?);
        }
        if let Some(v) = &p.correlation_id {
            out = out.with_correlation_id(short(v)?);
        }
        if let Some(v) = &p.reply_to {
            out = out.with_reply_to(short(v)?);
        }
        if let Some(v) = &p.expiration {
            out = out.with_expiration(short(v)?);
        }
        if let Some(v) = p.delivery_mode {
            out = out.with_delivery_mode(v);
        }
        if let Some(v) = p.priority {
            out = out.with_priority(v);
        }
        Ok(out)
    }

    /// From AMQP properties.
    pub fn from_amqp(p: &BasicProperties) -> Properties {
        let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.as_str().to_owned());
        Properties {
            content_type: text(p.content_type()),
            content_encoding: text(p.content_encoding()),
            correlation_id: text(p.correlation_id()),
            reply_to: text(p.reply_to()),
            expiration: text(p.expiration()),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            delivery_count: header_count(p, WARREN_DELIVERY_COUNT),
            broker_delivery_count: header_count(p, "x-delivery-count"),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The exchange (`""` is the default exchange).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Ask the broker to return the message if no queue takes it. A return
    /// is only reported with `confirm` (as a failed publish); without it the
    /// AMQP transport publishes non-mandatory, since nothing would read the
    /// return.
    pub mandatory: bool,
    /// Wait for the broker's publisher confirm before returning.
    pub confirm: bool,
    /// Properties.
    pub properties: Properties,
    /// Body.
    pub body: Vec<u8>,
}

/// Acknowledges one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Positive acknowledgement: the broker forgets the message.
    async fn ack(&self) -> Result<(), Error>;
    /// Negative acknowledgement; `requeue` puts the message back.
    async fn reject(&self, requeue: bool) -> Result<(), Error>;
}

/// The acker of `no_ack` deliveries: there is nothing to acknowledge.
pub(crate) struct NoAck;

#[async_trait]
impl Acker for NoAck {
    async fn ack(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn reject(&self, _requeue: bool) -> Result<(), Error> {
        Ok(())
    }
}

/// A message received from a queue.
pub struct Delivery {
    /// Properties.
    pub properties: Properties,
    /// Body.
    pub body: Vec<u8>,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    /// Acknowledges it (a no-op for `no_ack` subscriptions).
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("properties", &self.properties)
            .field("body_len", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

/// A consumer on one queue.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery. `None` once the subscription ended for good (it
    /// was cancelled or closed, or its broker shut down); an error when it
    /// was cut off (a lost connection, a consumer the broker cancelled) and
    /// consuming again may succeed.
    async fn next(&mut self) -> Option<Result<Delivery, Error>>;
    /// Stops deliveries. Messages delivered but not yet acknowledged stay
    /// acknowledgeable.
    async fn cancel(&mut self) -> Result<(), Error>;
    /// Ends the subscription: deliveries not yet acknowledged go back to
    /// their queue.
    async fn close(self: Box<Self>) -> Result<(), Error>;
}

/// Exchange types warren declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routing by exact key.
    Direct,
    /// To every bound queue.
    Fanout,
    /// Routing by pattern (`*`, `#`).
    Topic,
}

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeSpec {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
}

/// A queue declaration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueSpec {
    /// Name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Only this connection may use it; deleted with the connection.
    pub exclusive: bool,
    /// `x-expires`: deleted after this long unused, in milliseconds.
    pub expires_ms: Option<u32>,
    /// `x-queue-type: quorum` (RabbitMQ's replicated queues).
    pub quorum: bool,
}

impl QueueSpec {
    /// The `x-` arguments of the declaration.
    pub fn arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if let Some(ms) = self.expires_ms {
            // py-amqp writes Python ints as signed 32-bit ('I'); RabbitMQ
            // compares argument types on redeclare, so write the same.
            let ms = i32::try_from(ms).unwrap_or(i32::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongInt(ms));
        }
        if self.quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }
}

/// How to consume a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeSpec {
    /// The queue.
    pub queue: String,
    /// At most this many unacknowledged deliveries (0: no limit).
    pub prefetch: u16,
    /// Deliveries count as acknowledged when sent.
    pub no_ack: bool,
}

/// What the RPC layer needs from a broker connection.
///
/// Implementations are shared (`Arc<dyn Transport>`) by every client and
/// server of a [`crate::Connection`] and must let many tasks publish at once.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Declares an exchange (idempotent with identical flags).
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), Error>;
    /// Declares a queue (idempotent with identical flags and arguments).
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error>;
    /// Binds a queue to an exchange with a routing key.
    async fn bind_queue(&self, queue: &str, exchange: &str, routing_key: &str)
        -> Result<(), Error>;
    /// Deletes a queue.
    async fn delete_queue(&self, queue: &str) -> Result<(), Error>;
    /// Publishes a message; with `confirm`, returns once the broker took it.
    async fn publish(&self, message: Outgoing) -> Result<(), Error>;
    /// Starts consuming a queue.
    async fn consume(&self, spec: &ConsumeSpec) -> Result<Box<dyn Subscription>, Error>;
    /// How many times the connection was re-established. When it moves on,
    /// what was declared before may be gone (a restarted broker forgets
    /// transient exchanges and queues) and must be declared again.
    fn epoch(&self) -> u64 {
        0
    }
    /// Closes the connection.
    async fn close(&self) -> Result<(), Error>;
}
