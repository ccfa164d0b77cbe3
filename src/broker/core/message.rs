//! Messages as stored in queues and handed to consumers.
//!
//! A [`Message`] is immutable and shared through an `Arc`: routing it to N queues
//! clones a pointer, never the body (a cheap-clone `Bytes`).

use std::sync::Arc;
use std::time::Instant;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use bytes::Bytes;

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
}

impl Message {
    /// Build a message.
    pub fn new(
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
        }
    }

    /// The `expiration` property parsed as milliseconds, if present.
    ///
    /// Returns `Err` with the RabbitMQ-style reason when it is not a non-negative integer.
    pub fn expiration_ms(&self) -> Result<Option<u64>, String> {
        match self.properties.expiration() {
            None => Ok(None),
            Some(s) => s
                .as_str()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("invalid expiration '{}': {{error,no_integer}}", s)),
        }
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
