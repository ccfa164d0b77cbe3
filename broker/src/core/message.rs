//! Messages as stored in queues and handed to consumers.
//!
//! A [`Message`] is immutable and shared through an `Arc`: routing it to N queues
//! clones a pointer, never the body (a cheap-clone `Bytes`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use bytes::Bytes;

use super::memory::{Charge, MemoryMonitor};

/// A published message: where it was published to, its properties and body.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange the message was published to.
    pub exchange: ShortString,
    /// Routing key used when publishing.
    pub routing_key: ShortString,
    /// Content header properties, as received.
    pub properties: BasicProperties,
    /// Message body (cheap to clone).
    pub body: Bytes,
    /// Its bytes on the broker's memory gauge while the message lives
    /// (in queues, unacked, in writer queues), see [`Self::charged`].
    charge: Charge,
    /// For a dead letter: the count its copies share (see [`super::dead_letter`]).
    pub(crate) lineage: Option<Arc<Lineage>>,
    /// Its id in the durable store, once stored (see [`super::durable`]).
    pub(crate) store_id: OnceLock<u64>,
}

impl Message {
    /// Build a message.
    pub(crate) fn new(
        exchange: ShortString,
        routing_key: ShortString,
        properties: BasicProperties,
        body: Bytes,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            properties,
            body,
            charge: Charge::none(),
            lineage: None,
            store_id: OnceLock::new(),
        }
    }

    /// The message, counted on `monitor` until it is dropped.
    pub(crate) fn charged(mut self, monitor: &Arc<MemoryMonitor>) -> Self {
        self.charge = monitor.charge(self.footprint());
        self
    }

    /// The message, counted on the gauge `like` counts on, if any: a dead letter
    /// is a new message that takes its original's place in the queues.
    pub(crate) fn charged_like(self, like: &Message) -> Self {
        match like.charge.monitor() {
            Some(monitor) => self.charged(monitor),
            None => self,
        }
    }

    /// An estimate of the memory the message holds: its body, names and
    /// properties, and a fixed overhead for the structures around it.
    pub(crate) fn footprint(&self) -> usize {
        footprint(
            self.body.len(),
            self.exchange.as_str().len() + self.routing_key.as_str().len(),
            &self.properties,
        )
    }

    /// The `expiration` property parsed as milliseconds, if present.
    ///
    /// Returns `Err` with RabbitMQ's reason when it is not an integer from 0
    /// to [`MAX_EXPIRY_MS`] (read as Erlang's `string:to_integer` reads it).
    pub(crate) fn expiration_ms(&self) -> Result<Option<u64>, String> {
        match self.properties.expiration() {
            None => Ok(None),
            Some(s) => parse_expiration(s.as_str())
                .map(Some)
                .map_err(|why| format!("invalid expiration '{s}': {why}")),
        }
    }
}

/// The copies of one message since it was last rejected by a client: how many
/// times they were dead-lettered (the dead-lettering layer sets the budget).
#[derive(Debug, Default)]
pub(crate) struct Lineage {
    deaths: AtomicUsize,
}

impl Lineage {
    /// Count one more dead-lettering; returns the count before it.
    pub(crate) fn bump(&self) -> usize {
        self.deaths.fetch_add(1, Ordering::Relaxed)
    }
}

/// Per-message overhead counted besides body and names: the `Arc`ed
/// message (about 400 bytes, most of it the property struct), its queue
/// entry and delivery record, rounded up to allocator size classes.
pub const MESSAGE_OVERHEAD: usize = 512;

/// [`Message::footprint`] before the message exists: `names` is the length
/// of exchange and routing key. Each header counts 64 bytes (an estimate:
/// the table is not walked on every publish).
pub fn footprint(body: usize, names: usize, properties: &BasicProperties) -> usize {
    let headers = properties.headers().as_ref().map_or(0, |h| h.inner().len());
    MESSAGE_OVERHEAD
        .saturating_add(body)
        .saturating_add(names)
        .saturating_add(headers.saturating_mul(64))
}

/// The longest TTL or expiry RabbitMQ accepts, in ms (ten years).
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// RabbitMQ's reading of an `expiration` property: an optional sign and
/// digits, nothing after them, not negative, at most [`MAX_EXPIRY_MS`].
fn parse_expiration(s: &str) -> Result<u64, String> {
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or("")),
        Some(b'+') => (false, s.get(1..).unwrap_or("")),
        _ => (false, s),
    };
    let end = unsigned
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(unsigned.len());
    if end == 0 {
        return Err("no_integer".into());
    }
    let (digits, rest) = unsigned.split_at(end);
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,\"{rest}\"}}"));
    }
    let shown = digits.trim_start_matches('0');
    match digits.parse::<u64>().ok().filter(|n| *n <= MAX_EXPIRY_MS) {
        Some(0) => Ok(0),
        _ if negative => Err(format!("{{value_negative,-{shown}}}")),
        Some(n) => Ok(n),
        None => Err(format!("{{value_too_large,{shown}}}")),
    }
}

#[cfg(test)]
mod expiration_tests {
    use super::parse_expiration;

    #[test]
    fn expiration_reads_as_rabbitmq_reads_it() {
        assert_eq!(parse_expiration("0"), Ok(0));
        assert_eq!(parse_expiration("-0"), Ok(0));
        assert_eq!(parse_expiration("+10"), Ok(10));
        assert_eq!(parse_expiration("315360000000"), Ok(315_360_000_000));
        assert_eq!(parse_expiration("abc"), Err("no_integer".into()));
        assert_eq!(parse_expiration(""), Err("no_integer".into()));
        assert_eq!(parse_expiration(" 10"), Err("no_integer".into()));
        assert_eq!(parse_expiration("-"), Err("no_integer".into()));
        assert_eq!(
            parse_expiration("1.5"),
            Err("{leftover_string,\".5\"}".into())
        );
        assert_eq!(parse_expiration("-1"), Err("{value_negative,-1}".into()));
        assert_eq!(
            parse_expiration("-99999999999999999999999"),
            Err("{value_negative,-99999999999999999999999}".into())
        );
        assert_eq!(
            parse_expiration("315360000001"),
            Err("{value_too_large,315360000001}".into())
        );
        assert_eq!(
            parse_expiration("99999999999999999999"),
            Err("{value_too_large,99999999999999999999}".into())
        );
    }
}

/// A message sitting in (or taken out of) a queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// When it expires (queue TTL or per-message TTL), if ever.
    pub expires_at: Option<Instant>,
    /// Times it was given back to the queue (a quorum queue's `x-delivery-count`).
    pub(crate) delivery_count: u32,
    /// Its copy in the durable store: settled there when the last clone goes.
    pub(crate) stored: Option<Arc<super::durable::Stored>>,
}

impl QueuedMessage {
    /// Size used for `x-max-length-bytes` (body bytes).
    pub fn size(&self) -> usize {
        self.msg.body.len()
    }

    /// Priority of the message (0 if none).
    pub fn priority(&self) -> u8 {
        self.msg.properties.priority().unwrap_or(0)
    }
}
