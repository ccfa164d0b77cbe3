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

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use async_trait::async_trait;
use bytes::Bytes;

use crate::Error;

/// The AMQP properties of a message.
///
/// A thin wrapper around AMQP's own `BasicProperties`, the type the embedded
/// broker's core and lapin both speak: a sender builds a message's
/// properties once and no transport converts them on the way (the
/// in-process transport hands them to the core as they are, and a delivery
/// shares them with the message the core holds; the AMQP transport hands
/// them to lapin and takes lapin's). Strings are checked against AMQP's
/// 255-byte limit when set.
#[derive(Clone)]
pub struct Properties(Repr);

// Boxing the owned properties would make moves cheaper at the price of an
// allocation per message; every message owns its properties, so keep them
// inline.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Repr {
    Owned(BasicProperties),
    /// Those of a message a transport still holds (the in-process broker's
    /// queued message, until it is acknowledged): shared, not copied.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    Shared(Arc<dyn HasProperties>),
}

/// Something carrying AMQP properties a [`Properties`] can share.
pub(crate) trait HasProperties: Send + Sync {
    /// The properties.
    fn properties(&self) -> &BasicProperties;
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_amqp().fmt(f)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.as_amqp() == other.as_amqp()
    }
}

/// The header in which warren's servers count a request's earlier
/// deliveries on queues whose broker does not (see the server's poison
/// guard).
pub const WARREN_DELIVERY_COUNT: &str = "x-warren-delivery-count";

/// The count in header `name`, if present and an integer.
pub(crate) fn header_count(p: &BasicProperties, name: &str) -> Option<u32> {
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
    short_owned(value.to_owned())
}

/// Like [`short`], taking the string (no copy).
pub fn short_owned(value: String) -> Result<ShortString, Error> {
    let len = value.len();
    if len > 255 {
        let mut cut = 32;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        let head = &value[..cut];
        return Err(Error::config(format!(
            "{head:?}… is {len} bytes long; AMQP names and properties hold at most 255"
        )));
    }
    ShortString::try_new(value).map_err(|e| Error::config(format!("not an AMQP short string: {e}")))
}

impl Default for Properties {
    /// No properties but oslo's empty `headers` table.
    #[inline]
    fn default() -> Self {
        Properties(Repr::Owned(
            BasicProperties::default().with_headers(FieldTable::default()),
        ))
    }
}

impl From<BasicProperties> for Properties {
    #[inline]
    fn from(properties: BasicProperties) -> Self {
        Properties(Repr::Owned(properties))
    }
}

fn text(value: &Option<ShortString>) -> Option<&str> {
    value.as_ref().map(ShortString::as_str)
}

impl Properties {
    /// MIME type of the body; selects the codec.
    #[inline]
    pub fn content_type(&self) -> Option<&str> {
        text(self.as_amqp().content_type())
    }

    /// Encoding of the body (oslo sets `utf-8`).
    #[inline]
    pub fn content_encoding(&self) -> Option<&str> {
        text(self.as_amqp().content_encoding())
    }

    /// Correlation id of a reply (plain AMQP RPC).
    #[inline]
    pub fn correlation_id(&self) -> Option<&str> {
        text(self.as_amqp().correlation_id())
    }

    /// Where to reply (plain AMQP RPC).
    #[inline]
    pub fn reply_to(&self) -> Option<&str> {
        text(self.as_amqp().reply_to())
    }

    /// Per-message TTL in milliseconds, as a decimal string.
    #[inline]
    pub fn expiration(&self) -> Option<&str> {
        text(self.as_amqp().expiration())
    }

    /// 1 transient, 2 persistent.
    #[inline]
    pub fn delivery_mode(&self) -> Option<u8> {
        *self.as_amqp().delivery_mode()
    }

    /// Message priority.
    #[inline]
    pub fn priority(&self) -> Option<u8> {
        *self.as_amqp().priority()
    }

    /// Sets the content type.
    #[inline]
    pub fn with_content_type(self, value: impl Into<String>) -> Result<Self, Error> {
        let value = short_owned(value.into())?;
        Ok(Properties::from(self.into_amqp().with_content_type(value)))
    }

    /// Sets the content encoding.
    #[inline]
    pub fn with_content_encoding(self, value: impl Into<String>) -> Result<Self, Error> {
        let value = short_owned(value.into())?;
        Ok(Properties::from(
            self.into_amqp().with_content_encoding(value),
        ))
    }

    /// Sets the correlation id.
    #[inline]
    pub fn with_correlation_id(self, value: impl Into<String>) -> Result<Self, Error> {
        let value = short_owned(value.into())?;
        Ok(Properties::from(
            self.into_amqp().with_correlation_id(value),
        ))
    }

    /// Sets the reply queue.
    #[inline]
    pub fn with_reply_to(self, value: impl Into<String>) -> Result<Self, Error> {
        let value = short_owned(value.into())?;
        Ok(Properties::from(self.into_amqp().with_reply_to(value)))
    }

    /// Sets the per-message TTL, in milliseconds.
    #[inline]
    pub fn with_expiration_ms(self, ms: u128) -> Result<Self, Error> {
        let ms = short_owned(ms.to_string())?;
        Ok(Properties::from(self.into_amqp().with_expiration(ms)))
    }

    /// How many times warren's servers saw this request delivered before
    /// (the [`WARREN_DELIVERY_COUNT`] header they set when they publish a
    /// redelivered request again; see the server's poison guard).
    pub fn delivery_count(&self) -> Option<u32> {
        header_count(self.as_amqp(), WARREN_DELIVERY_COUNT)
    }

    /// How many times the broker delivered the message before, where it
    /// counts (quorum queues' `x-delivery-count` header).
    pub fn broker_delivery_count(&self) -> Option<u32> {
        header_count(self.as_amqp(), "x-delivery-count")
    }

    /// Earlier deliveries, by whichever count is known (the larger).
    pub fn deliveries_before(&self) -> u32 {
        self.delivery_count()
            .max(self.broker_delivery_count())
            .unwrap_or(0)
    }

    /// Sets the [`WARREN_DELIVERY_COUNT`] header.
    pub fn with_delivery_count(self, count: u32) -> Self {
        let properties = self.into_amqp();
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            WARREN_DELIVERY_COUNT.into(),
            AMQPValue::LongLongInt(count.into()),
        );
        Properties::from(properties.with_headers(headers))
    }

    /// Sets the delivery mode (1 transient, 2 persistent).
    #[inline]
    pub fn with_delivery_mode(self, mode: u8) -> Self {
        Properties::from(self.into_amqp().with_delivery_mode(mode))
    }

    /// Sets the priority.
    #[inline]
    pub fn with_priority(self, priority: u8) -> Self {
        Properties::from(self.into_amqp().with_priority(priority))
    }

    /// Properties shared with what carries them, not copied.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    #[inline]
    pub(crate) fn shared(source: Arc<dyn HasProperties>) -> Self {
        Properties(Repr::Shared(source))
    }

    /// The AMQP properties, as the transports hand them on.
    #[inline]
    pub fn as_amqp(&self) -> &BasicProperties {
        match &self.0 {
            Repr::Owned(properties) => properties,
            Repr::Shared(source) => source.properties(),
        }
    }

    /// The AMQP properties, owned (copied only if they were shared).
    #[inline]
    pub fn into_amqp(self) -> BasicProperties {
        match self.0 {
            Repr::Owned(properties) => properties,
            Repr::Shared(source) => source.properties().clone(),
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
    /// Body (shared, not copied, on its way through the in-process broker).
    pub body: Bytes,
}

/// Acknowledges one delivery.
///
/// A settlement returns once it is on its way: applied by the in-process
/// broker, or queued on the connection by the AMQP transport, ahead of
/// publishes still waiting to be written (await a publish that must reach
/// the broker first). An error means it could not be sent (the channel or
/// the connection is gone); the broker then delivers the message again.
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
    /// Body: a view of the received bytes, which decoding slices rather
    /// than copies.
    pub body: Bytes,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    /// The routing key it was published with (what a topic or direct
    /// binding matched).
    pub routing_key: ShortString,
    /// Acknowledges it (a no-op for `no_ack` subscriptions).
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("properties", &self.properties)
            .field("body_len", &self.body.len())
            .field("redelivered", &self.redelivered)
            .field("routing_key", &self.routing_key)
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
    /// `x-message-ttl`: messages expire (and are dead-lettered, if the
    /// queue says where) after this long in the queue, in milliseconds.
    pub message_ttl_ms: Option<u32>,
    /// `x-dead-letter-exchange`: where rejected and expired messages go
    /// (`""` is the default exchange).
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: the routing key they go with (else
    /// their own).
    pub dead_letter_routing_key: Option<String>,
}

/// What a passive declaration ([`Transport::check_queue`]) tells of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Messages ready for delivery (not those delivered and unacknowledged).
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
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
        if let Some(ms) = self.message_ttl_ms {
            let ms = i32::try_from(ms).unwrap_or(i32::MAX);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
        }
        if let Some(exchange) = &self.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(exchange.as_str().into()),
            );
        }
        if let Some(key) = &self.dead_letter_routing_key {
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(key.as_str().into()),
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
    /// Checks that a queue exists (a passive declaration: nothing is
    /// created or changed) and counts its messages and consumers; an error
    /// with [`Error::is_not_found`] when there is no such queue. Both of
    /// warren's transports implement it; the default refuses.
    async fn check_queue(&self, queue: &str) -> Result<QueueStats, Error> {
        Err(Error::config(format!(
            "this transport cannot check that queue {queue:?} exists"
        )))
    }
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
