//! A channel's state, the part its consumers reach from queues.
//!
//! [`ChannelShared`] holds delivery tags, unacknowledged messages, consumers,
//! QoS, confirm and transaction state behind one mutex (its place in the lock
//! order: [`crate::core::locks`]). A [`Consumer`] is a channel's subscription to
//! one queue, the queue's [`Subscriber`]: the queue holds it strongly, and it
//! holds its channel only weakly (`Weak<ChannelShared>`). That is where the
//! reference loop queue → consumer → channel → connection → vhost → queue is
//! cut by design: a queue never keeps a channel alive, and a channel gone
//! simply takes no more deliveries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{FieldTable, ShortString};
use bytes::Bytes;

use super::events::{ChannelEvent, ChannelSink, Delivery};
use crate::core::error::AmqpError;
use crate::core::locks::lock;
use crate::core::memory::Charge;
use crate::core::message::{Message, QueuedMessage};
use crate::core::queue::{DeadLetters, DeadReason, Queue, Subscriber};
use crate::core::reply_to::ReplyTarget;
use crate::core::session::{Attached, Session};
use crate::core::snapshot::{ChannelSnapshot, ConsumerSnapshot};

pub(super) struct Unacked {
    pub(super) queue: Arc<Queue>,
    pub(super) msg: QueuedMessage,
    pub(super) consumer: Option<Arc<Consumer>>,
    /// When it was delivered, for the consumer timeout.
    pub(super) since: Instant,
}

pub(super) struct TxPublish {
    pub(super) exchange: ShortString,
    pub(super) routing_key: ShortString,
    pub(super) mandatory: bool,
    pub(super) properties: BasicProperties,
    pub(super) body: Bytes,
    /// Buffered publishes count on the memory gauge like queued messages:
    /// a transaction that grows past the watermark blocks its publisher.
    pub(super) _charge: Charge,
}

/// A settlement made in a transaction: the deliveries it names, taken out
/// of the channel's unacknowledged ones when it arrived (as RabbitMQ does),
/// so that a second settlement of the same tag is 406 "unknown delivery
/// tag" and a transaction buffers no more settlements than there were
/// deliveries. `tx.commit` settles them; `tx.rollback` and closing the
/// channel put them back among the unacknowledged.
pub(super) struct TxSettle {
    pub(super) taken: BTreeMap<u64, Unacked>,
    pub(super) ack: bool,
    pub(super) requeue: bool,
}

#[derive(Default)]
pub(super) struct Tx {
    pub(super) publishes: Vec<TxPublish>,
    pub(super) acks: Vec<TxSettle>,
    /// Memory held by `publishes` (their charges' total).
    pub(super) bytes: usize,
}

/// The most a transaction may buffer before `tx.commit` (twice RabbitMQ 3.x's
/// default max_message_size of 128 MiB; warren's own default is 16 MiB, so a
/// transaction holds at least 16 of the largest messages). Past it the publish
/// fails with 406 and the channel closes, dropping the buffer: one client's
/// open transaction cannot hold the memory alarm on (and with it every
/// publisher) indefinitely.
pub(crate) const MAX_TX_BYTES: usize = 256 << 20;

#[derive(Default)]
pub(super) struct ChState {
    pub(super) next_tag: u64,
    pub(super) unacked: BTreeMap<u64, Unacked>,
    pub(super) consumers: HashMap<ShortString, Arc<Consumer>>,
    pub(super) consumer_prefetch: u16,
    pub(super) confirm: bool,
    pub(super) next_seq: u64,
    pub(super) tx: Option<Tx>,
    pub(super) last_queue: Option<String>,
    /// The direct reply-to consumer: its tag and its token.
    pub(super) reply: Option<(ShortString, String)>,
    /// Confirms waiting for the disk.
    pub(super) confirms: super::confirms::Confirms,
}

/// Shared part of a channel (reached by its consumers, weakly).
pub(crate) struct ChannelShared {
    pub(super) id: u64,
    /// The AMQP channel number, for operators.
    number: u16,
    pub(super) conn: Arc<Session>,
    pub(super) sink: Box<dyn ChannelSink>,
    state: Mutex<ChState>,
    pub(super) closed: AtomicBool,
    unacked_count: AtomicU32,
    pub(super) global_prefetch: AtomicU32,
}

impl fmt::Debug for ChannelShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelShared")
            .field("id", &self.id)
            .field("conn", &self.conn.id)
            .finish()
    }
}

impl ChannelShared {
    pub(super) fn new(
        conn: Arc<Session>,
        id: u64,
        number: u16,
        sink: Box<dyn ChannelSink>,
    ) -> Self {
        Self {
            id,
            number,
            conn,
            sink,
            state: Mutex::new(ChState::default()),
            closed: AtomicBool::new(false),
            unacked_count: AtomicU32::new(0),
            global_prefetch: AtomicU32::new(0),
        }
    }

    /// The channel's state (lock order: after queue locks, see [`crate::core::locks`]).
    pub(super) fn st(&self) -> MutexGuard<'_, ChState> {
        lock(&self.state)
    }

    /// Deliver a queue message to one of this channel's consumers (called
    /// by the queue, under its lock).
    fn deliver(
        &self,
        consumer: Arc<Consumer>,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        let mut st = self.st();
        if self.closed.load(Ordering::Acquire) {
            return Err(msg);
        }
        st.next_tag += 1;
        let tag = st.next_tag;
        let event = ChannelEvent::Deliver(Delivery {
            consumer_tag: consumer.tag.clone(),
            delivery_tag: tag,
            redelivered: msg.redelivered,
            message: msg.msg.clone(),
        });
        queue
            .counters
            .delivered(msg.redelivered, !consumer.no_ack, msg.size());
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::AcqRel);
            self.unacked_count.fetch_add(1, Ordering::AcqRel);
            st.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    msg,
                    consumer: Some(consumer),
                    since: Instant::now(),
                },
            );
        }
        self.sink.send(event);
        Ok(())
    }

    /// Channel-wide (global QoS) window not exhausted.
    fn global_capacity(&self) -> bool {
        let g = self.global_prefetch.load(Ordering::Acquire);
        g == 0 || self.unacked_count.load(Ordering::Acquire) < g
    }

    /// The queue of consumer `c` was deleted: forget the consumer and notify.
    fn cancelled_by_broker(&self, c: &Consumer) {
        let removed = {
            let mut st = self.st();
            match st.consumers.get(&c.tag) {
                Some(x) if std::ptr::eq(Arc::as_ptr(x), c) => st.consumers.remove(&c.tag).is_some(),
                _ => false,
            }
        };
        if removed && !self.closed.load(Ordering::Acquire) {
            self.sink.send(ChannelEvent::Cancel {
                consumer_tag: c.tag.clone(),
            });
        }
    }

    /// Counts taken deliveries off their consumers' and queues' windows
    /// (`acked`: they were acknowledged).
    fn release(&self, taken: &[Unacked], acked: bool) {
        let mut n = 0;
        for u in taken {
            u.queue.counters.settled(acked, u.msg.size());
            if let Some(c) = &u.consumer {
                c.unacked.fetch_sub(1, Ordering::AcqRel);
                n += 1;
            }
        }
        if n > 0 {
            self.unacked_count.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Let queues push more to this channel's consumers after capacity was
    /// freed (`force`: every consumer's queue, not only those with a window).
    pub(super) fn redispatch(&self, force: bool) {
        let global = self.global_prefetch.load(Ordering::Acquire) != 0;
        let queues: Vec<Arc<Queue>> = {
            let st = self.st();
            st.consumers
                .values()
                .filter(|c| force || global || (!c.no_ack && c.prefetch != 0))
                .filter_map(|c| c.queue_ref.upgrade())
                .collect()
        };
        // Channel lock released: dispatching takes queue locks (lock order).
        let mut dead = DeadLetters::new();
        for q in queues {
            dead.append(q.dispatch());
        }
        self.conn.vhost.dead_letter(dead);
    }

    /// Removes the unacked deliveries `tag` names (`multiple`: and all before
    /// it; 0 with `multiple`: all).
    pub(super) fn take_unacked(&self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, AmqpError> {
        let mut st = self.st();
        Ok(take_tagged(&mut st, tag, multiple)?.into_values().collect())
    }

    /// Puts taken deliveries back at the head of their queues, in order.
    fn requeue_all(&self, taken: Vec<Unacked>) {
        let mut groups: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
        for u in taken {
            match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, v)) => v.push(u.msg),
                None => groups.push((u.queue, vec![u.msg])),
            }
        }
        let mut dead = DeadLetters::new();
        for (q, msgs) in groups {
            dead.append(q.requeue(msgs));
        }
        self.conn.vhost.dead_letter(dead);
    }

    /// Settles taken deliveries: acked, requeued, or dead-lettered as rejected.
    pub(super) fn settle_taken(&self, taken: Vec<Unacked>, ack: bool, requeue: bool) {
        self.release(&taken, ack);
        if ack {
        } else if requeue {
            self.requeue_all(taken);
        } else {
            let mut dead = DeadLetters::new();
            for u in taken {
                dead.push(&u.queue, u.msg, DeadReason::Rejected);
            }
            self.conn.vhost.dead_letter(dead);
        }
        self.redispatch(false);
    }

    /// Ends consumer `c`'s subscription to its queue, deleting the queue
    /// when it is auto-delete and `c` was its last consumer.
    pub(super) fn unsubscribe(&self, c: &Consumer) {
        if let Some(q) = c.queue_ref.upgrade() {
            if q.remove_consumer(c) {
                self.conn.vhost.delete_queue_internal(&q.name, Some(&q));
            }
        }
    }

    pub(super) fn close(&self) {
        let (unacked, consumers, reply) = {
            let mut st = self.st();
            if self.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            // Settlements an open transaction took go back with the rest:
            // uncommitted, they never happened.
            if let Some(tx) = st.tx.take() {
                restore_settled(&mut st, tx.acks);
            }
            (
                std::mem::take(&mut st.unacked),
                std::mem::take(&mut st.consumers),
                st.reply.take(),
            )
        };
        if let Some((_, token)) = reply {
            self.conn.vhost.reply_to().unregister(&token);
        }
        for c in consumers.into_values() {
            self.unsubscribe(&c);
        }
        let taken: Vec<Unacked> = unacked.into_values().collect();
        self.release(&taken, false);
        self.requeue_all(taken);
        self.conn.forget_channel(self.id);
    }
}

impl ReplyTarget for ChannelShared {
    /// Direct reply-to delivery (no queue, no ack).
    fn deliver_reply(&self, msg: Arc<Message>) -> bool {
        let st = &mut *self.st();
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let Some((tag, _)) = st.reply.as_ref() else {
            return false;
        };
        if !self.sink.accepts_reply() {
            return false;
        }
        st.next_tag += 1;
        self.sink.send(ChannelEvent::Deliver(Delivery {
            consumer_tag: tag.clone(),
            delivery_tag: st.next_tag,
            redelivered: false,
            message: msg,
        }));
        true
    }
}

impl Attached for ChannelShared {
    fn close(&self) {
        ChannelShared::close(self);
    }

    fn redispatch(&self) {
        ChannelShared::redispatch(self, true);
    }

    fn snapshot(&self) -> (ChannelSnapshot, Vec<ConsumerSnapshot>) {
        // The session's register first (a leaf), then the channel's state.
        let connection = self.conn.name();
        let name = format!("{connection} ({})", self.number);
        let vhost = self.conn.vhost.name.clone();
        let st = self.st();
        let mut consumers: Vec<ConsumerSnapshot> = st
            .consumers
            .values()
            .map(|c| ConsumerSnapshot {
                vhost: vhost.clone(),
                queue: c
                    .queue_ref
                    .upgrade()
                    .map(|q| q.name.clone())
                    .unwrap_or_default(),
                channel: name.clone(),
                connection_id: self.conn.id,
                channel_number: self.number,
                consumer_tag: c.tag.to_string(),
                ack_required: !c.no_ack,
                exclusive: c.exclusive,
                prefetch_count: c.prefetch,
                arguments: c.arguments.clone(),
                active: true,
            })
            .collect();
        consumers.sort_by(|a, b| a.consumer_tag.cmp(&b.consumer_tag));
        let channel = ChannelSnapshot {
            connection_id: self.conn.id,
            connection,
            name,
            number: self.number,
            user: self.conn.user.clone(),
            vhost,
            prefetch_count: u32::from(st.consumer_prefetch),
            global_prefetch_count: self.global_prefetch.load(Ordering::Acquire),
            messages_unacknowledged: st.unacked.len() as u64,
            consumer_count: (st.consumers.len() + usize::from(st.reply.is_some())) as u64,
            confirm: st.confirm,
            transactional: st.tx.is_some(),
        };
        (channel, consumers)
    }
}

/// A consumer: one channel's subscription to one queue, with its own
/// prefetch window (per-consumer QoS).
#[derive(Debug)]
pub(crate) struct Consumer {
    /// Consumer tag (unique per channel).
    pub(super) tag: ShortString,
    /// Deliveries need no acknowledgement.
    pub(super) no_ack: bool,
    /// An exclusive consumer.
    pub(super) exclusive: bool,
    /// `basic.consume`'s arguments.
    pub(super) arguments: FieldTable,
    /// Per-consumer prefetch window (0 = unlimited).
    pub(super) prefetch: u32,
    /// Deliveries not yet acknowledged.
    pub(super) unacked: AtomicU32,
    /// Its channel, weakly: see the module docs.
    pub(super) channel: Weak<ChannelShared>,
    pub(super) queue_ref: Weak<Queue>,
}

impl Subscriber for Consumer {
    fn has_capacity(&self) -> bool {
        let Some(channel) = self.channel.upgrade() else {
            return false;
        };
        if channel.closed.load(Ordering::Acquire) {
            return false;
        }
        if !self.no_ack {
            if self.prefetch != 0 && self.unacked.load(Ordering::Acquire) >= self.prefetch {
                return false;
            }
            if !channel.global_capacity() {
                return false;
            }
        }
        // Last: a full sink remembers it refused (to resume this consumer
        // later), which is worth doing only when nothing else stops it.
        // No-ack consumers are bounded here alone: their backlog stays
        // queued, where the memory alarm sees it.
        channel.sink.has_room()
    }

    fn deliver(
        self: Arc<Self>,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        match self.channel.upgrade() {
            Some(channel) => channel.deliver(self, queue, msg),
            None => Err(msg),
        }
    }

    fn cancelled(&self) {
        if let Some(channel) = self.channel.upgrade() {
            channel.cancelled_by_broker(self);
        }
    }
}

/// Takes the deliveries `tag` names (every one up to it with `multiple`,
/// all with `multiple` and tag 0) out of the unacknowledged ones.
pub(super) fn take_tagged(
    st: &mut ChState,
    tag: u64,
    multiple: bool,
) -> Result<BTreeMap<u64, Unacked>, AmqpError> {
    if multiple && tag == 0 {
        return Ok(std::mem::take(&mut st.unacked));
    }
    if !st.unacked.contains_key(&tag) {
        return Err(AmqpError::precondition(format!(
            "unknown delivery tag {tag}"
        )));
    }
    if multiple {
        let rest = st.unacked.split_off(&(tag.saturating_add(1)));
        Ok(std::mem::replace(&mut st.unacked, rest))
    } else {
        Ok(st.unacked.remove_entry(&tag).into_iter().collect())
    }
}

/// Puts the deliveries of a transaction's settlements back among the
/// unacknowledged ones (a rollback, or a channel closing mid-transaction).
pub(super) fn restore_settled(st: &mut ChState, settled: Vec<TxSettle>) {
    for settle in settled {
        st.unacked.extend(settle.taken);
    }
}
