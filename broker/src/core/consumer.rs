//! Consumers: a subscription of one channel to one queue.
//!
//! A consumer carries its own prefetch window (per-consumer QoS); the queue checks
//! [`Consumer::has_capacity`] (prefetch, then room in the connection's writer)
//! before pushing a delivery to it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use amq_protocol::types::ShortString;

use super::channel::ChannelShared;
use super::queue::Queue;

/// A consumer registered on a queue.
#[derive(Debug)]
pub struct Consumer {
    /// Consumer tag (unique per channel).
    pub tag: ShortString,
    /// Name of the consumed queue.
    pub queue: String,
    /// Deliveries need no acknowledgement.
    pub no_ack: bool,
    /// Exclusive consumer (no other consumer allowed on the queue).
    pub exclusive: bool,
    /// Per-consumer prefetch window (0 = unlimited).
    pub prefetch: u32,
    /// Deliveries not yet acknowledged.
    pub unacked: AtomicU32,
    pub(crate) channel: Arc<ChannelShared>,
    pub(crate) queue_ref: Weak<Queue>,
}

impl Consumer {
    /// Whether the queue may push one more delivery to this consumer now.
    pub fn has_capacity(&self) -> bool {
        if !self.channel.can_deliver() {
            return false;
        }
        if !self.no_ack {
            if self.prefetch != 0 && self.unacked.load(Ordering::Acquire) >= self.prefetch {
                return false;
            }
            if !self.channel.global_capacity() {
                return false;
            }
        }
        // Last: a full sink remembers it refused (to resume this consumer
        // later), which is worth doing only when nothing else stops it.
        // No-ack consumers are bounded here alone: their backlog stays
        // queued, where the memory alarm sees it.
        self.channel.sink_has_room()
    }
}
