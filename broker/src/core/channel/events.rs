//! What a channel hands its owner: asynchronous [`ChannelEvent`]s through a
//! [`ChannelSink`], and the results of its methods.

use std::sync::Arc;

use amq_protocol::types::ShortString;
use tokio::sync::mpsc;

use crate::core::message::Message;

/// A message delivered to a consumer of this channel.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Tag of the consumer it is for.
    pub consumer_tag: ShortString,
    /// Channel-scoped delivery tag (to ack/nack/reject).
    pub delivery_tag: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// The message (exchange and routing key inside).
    pub message: Arc<Message>,
}

/// A mandatory message that could not be routed (`basic.return`).
#[derive(Debug, Clone)]
pub struct Returned {
    /// Reply code (312 NO_ROUTE).
    pub reply_code: u16,
    /// Reply text ("NO_ROUTE").
    pub reply_text: ShortString,
    /// The returned message.
    pub message: Arc<Message>,
}

/// Asynchronous events of a channel, in the order they must reach the client.
#[derive(Debug, Clone)]
pub enum ChannelEvent {
    /// `basic.consume-ok`, emitted right before the consumer starts receiving.
    ConsumeOk {
        /// The (possibly server-generated) consumer tag.
        consumer_tag: ShortString,
    },
    /// `basic.deliver`.
    Deliver(Delivery),
    /// `basic.return`.
    Return(Returned),
    /// Publisher confirm (`basic.ack` when `ack`, else `basic.nack`).
    Confirm {
        /// Publish sequence number.
        delivery_tag: u64,
        /// Confirms every tag up to this one.
        multiple: bool,
        /// Ack or nack.
        ack: bool,
    },
    /// Broker-initiated `basic.cancel` (queue deleted).
    Cancel {
        /// The cancelled consumer.
        consumer_tag: ShortString,
    },
}

/// Receiver of a channel's [`ChannelEvent`]s. Must not block.
///
/// Called with queue and channel locks held: an implementation may take
/// only leaf locks of its own, and never wait.
pub trait ChannelSink: Send + Sync + 'static {
    /// Hand over one event.
    fn send(&self, event: ChannelEvent);

    /// Whether a queue may hand this sink one more delivery now. A sink
    /// that says no keeps the message in its queue (the consumer is skipped)
    /// and must have the connection's consumers offered messages again once
    /// it has room (see [`crate::core::CoreConnection::resumer`]).
    fn has_room(&self) -> bool {
        true
    }

    /// Whether a direct reply-to delivery (which has no queue to wait in)
    /// may still be handed over; when not, the reply is dropped as
    /// unroutable.
    fn accepts_reply(&self) -> bool {
        true
    }
}

impl ChannelSink for mpsc::UnboundedSender<ChannelEvent> {
    fn send(&self, event: ChannelEvent) {
        let _ = mpsc::UnboundedSender::send(self, event);
    }
}

/// Result of `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue name (server-generated when declared with an empty name).
    pub queue: String,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// Result of a successful `basic.get`.
#[derive(Debug, Clone)]
pub struct GetOk {
    /// Delivery tag.
    pub delivery_tag: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Messages left in the queue.
    pub message_count: u32,
    /// The message.
    pub message: Arc<Message>,
}

/// Result of `basic.publish`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Number of queues that received the message.
    pub routed: usize,
    /// A `basic.return` was emitted.
    pub returned: bool,
    /// A queue refused the message (`x-overflow: reject-publish` on a full
    /// queue): in confirm mode, its confirm was a `basic.nack`.
    pub rejected: bool,
    /// Publish sequence number in confirm mode (its confirm was emitted).
    pub confirm_tag: Option<u64>,
    /// Buffered by an open transaction (nothing routed yet).
    pub buffered: bool,
}
