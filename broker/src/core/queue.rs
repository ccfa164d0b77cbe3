//! Queues: message storage, consumer round-robin dispatch, TTL, length limits.
//!
//! A queue knows messages and [`Subscriber`]s, nothing above them: not the
//! channels behind its subscribers, not the vhost it sits in. What an
//! operation causes elsewhere is *returned* to the caller instead of done
//! here: the messages it dead-letters (a [`DeadLetters`] work list, which the
//! vhost runs once no queue lock is held, see [`super::dead_letter`]), the
//! subscribers to tell their queue is gone ([`Queue::mark_deleted`]), and
//! whether an auto-delete queue lost its last consumer
//! ([`Queue::remove_consumer`]). Deliveries are made under the queue's lock
//! through [`Subscriber::deliver`], so that a queue's messages reach each
//! subscriber in order and the capacity check and the push are one step.
//!
//! All state sits behind one short `Mutex` per queue, never held across an
//! `.await` (its place in the lock order: [`super::locks`]).
//!
//! The queue holds its subscribers strongly (`Arc<dyn Subscriber>`); a
//! subscriber (a channel's consumer) holds its channel only weakly, so no
//! reference cycle runs through a queue.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};

use super::durable::QueueStore;
use super::error::AmqpError;
use super::locks::lock;
use super::message::{Message, QueuedMessage, MAX_EXPIRY_MS};
use super::snapshot::QueueSnapshot;
use super::{value_as_i64, value_as_string, value_type_name};

/// What a queue delivers to: a consumer, seen from the queue.
///
/// Called with the queue's lock held (lock order: queue, then what the
/// subscriber locks, see [`super::locks`]): an implementation must not call back
/// into any queue, and must not block.
pub(crate) trait Subscriber: Send + Sync + fmt::Debug {
    /// Whether the queue may push one more delivery now.
    fn has_capacity(&self) -> bool;

    /// Takes one message from `queue`; gives it back when the subscriber can
    /// no longer take it (its channel closed), and the queue keeps it.
    fn deliver(
        self: Arc<Self>,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage>;

    /// The queue was deleted: the broker ended this subscription. Called
    /// with no queue lock held.
    fn cancelled(&self);
}

/// Whether `a` and `b` are the same subscriber object.
fn same(a: &Arc<dyn Subscriber>, b: &dyn Subscriber) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), b as *const dyn Subscriber)
}

/// A subscriber registered on a queue.
#[derive(Debug)]
struct Subscription {
    subscriber: Arc<dyn Subscriber>,
    /// An exclusive consumer: no other may join while it is there.
    exclusive: bool,
}

/// One message to dead-letter: what died, why, and in which queue.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) msg: QueuedMessage,
    pub(crate) reason: DeadReason,
    pub(crate) source: Arc<Queue>,
}

/// The dead letters an operation produced: a FIFO it owns and hands to the
/// vhost once it holds no queue lock.
#[derive(Debug, Default)]
#[must_use = "dead letters are to be run by the vhost"]
pub(crate) struct DeadLetters(VecDeque<DeadLetter>);

impl DeadLetters {
    /// An empty list.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Queue `msg`, which died in `source` for `reason`. Without a dead-letter
    /// exchange the message is simply dropped, as in RabbitMQ.
    pub(crate) fn push(&mut self, source: &Arc<Queue>, msg: QueuedMessage, reason: DeadReason) {
        if source.config.dead_letter_exchange.is_some() {
            self.0.push_back(DeadLetter {
                msg,
                reason,
                source: source.clone(),
            });
        }
    }

    /// Add `other`'s dead letters after these.
    pub(crate) fn append(&mut self, mut other: DeadLetters) {
        self.0.append(&mut other.0);
    }

    /// True when there is nothing to dead-letter.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The dead letters, oldest first.
    pub(crate) fn into_inner(self) -> VecDeque<DeadLetter> {
        self.0
    }
}

/// How `queue.declare` declares a queue.
#[derive(Clone, Debug, Default)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists (404 if not); change nothing.
    pub passive: bool,
    /// Durable: kept in the data directory of a durable core (unless exclusive),
    /// with its persistent messages.
    pub durable: bool,
    /// Owned by the declaring connection, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// The `x-…` arguments (TTL, length limits, dead-lettering, priorities).
    pub arguments: FieldTable,
}

/// When `queue.delete` refuses to delete (406).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Refuse while the queue has consumers.
    pub if_unused: bool,
    /// Refuse while the queue holds messages.
    pub if_empty: bool,
}

/// Why a message is dead-lettered (the `reason` of `x-death`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadReason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Message TTL expired.
    Expired,
    /// Dropped from the head because of a length limit.
    MaxLen,
    /// Given back more times than a quorum queue's `x-delivery-limit`.
    DeliveryLimit,
}

impl DeadReason {
    /// The RabbitMQ name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::MaxLen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// What to do when a length limit is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest message.
    DropHead,
    /// Refuse the new message (nack with confirms).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// Queue behaviour derived from the `x-…` declaration arguments.
#[derive(Clone, Debug, Default)]
pub struct QueueConfig {
    /// `x-message-ttl` in ms.
    pub message_ttl: Option<u64>,
    /// `x-expires` in ms.
    pub expires: Option<u64>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Option<Overflow>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `x-queue-type: quorum`: durable, every message persisted.
    pub quorum: bool,
    /// `x-delivery-limit` (quorum queues): a message given back more times than
    /// this is dead-lettered (or dropped).
    pub delivery_limit: Option<u32>,
}

impl QueueConfig {
    /// Parse and validate queue arguments (RabbitMQ-like 406 texts on bad values).
    pub fn parse(queue: &str, vhost: &str, args: &FieldTable) -> Result<Self, AmqpError> {
        let mut cfg = Self::default();
        let bad = |arg: &str, why: &str| {
            AmqpError::precondition(format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let int = |arg: &str, min: i64| -> Result<Option<u64>, AmqpError> {
            match args.inner().get(arg) {
                None => Ok(None),
                Some(v) => match value_as_i64(v) {
                    Some(n) if n >= min => Ok(Some(n as u64)),
                    Some(n) => Err(bad(arg, &format!("{{value_negative,{n}}}"))),
                    None => Err(bad(
                        arg,
                        &format!("\"expected integer, got {}\"", value_type_name(v)),
                    )),
                },
            }
        };
        let expiry = |arg: &str, min: i64| -> Result<Option<u64>, AmqpError> {
            match int(arg, min)? {
                Some(n) if n > MAX_EXPIRY_MS => Err(bad(arg, &format!("{{value_too_large,{n}}}"))),
                n => Ok(n),
            }
        };
        cfg.message_ttl = expiry("x-message-ttl", 0)?;
        cfg.expires = expiry("x-expires", 1)?;
        cfg.max_length = int("x-max-length", 0)?;
        cfg.max_length_bytes = int("x-max-length-bytes", 0)?;
        if let Some(p) = int("x-max-priority", 0)? {
            // RabbitMQ supports at most 255 priority levels.
            let p = u8::try_from(p)
                .map_err(|_| bad("x-max-priority", &format!("{{max_value_exceeded,{p}}}")))?;
            cfg.max_priority = Some(p);
        }
        let unacceptable = |arg: &str, v: &AMQPValue| {
            bad(
                arg,
                &format!("{{unacceptable_type,{}}}", value_type_name(v)),
            )
        };
        if let Some(v) = args.inner().get("x-queue-type") {
            cfg.quorum = match value_as_string(v).as_deref() {
                Some("quorum") => true,
                Some("classic") => false,
                Some(other) => {
                    return Err(AmqpError::precondition(format!(
                        "invalid arg 'x-queue-type' for queue '{queue}' in vhost '{vhost}': \
                         {{unsupported_queue_type,'{other}'}}"
                    )))
                }
                None => return Err(unacceptable("x-queue-type", v)),
            };
        }
        // As RabbitMQ 3.x: a limit that is not a non-negative integer is ignored.
        cfg.delivery_limit = args
            .inner()
            .get("x-delivery-limit")
            .and_then(value_as_i64)
            .and_then(|n| u32::try_from(n.max(0)).ok());
        if let Some(v) = args.inner().get("x-overflow") {
            cfg.overflow = Some(match value_as_string(v).as_deref() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                Some(_) => return Err(bad("x-overflow", "invalid_overflow")),
                None => return Err(unacceptable("x-overflow", v)),
            });
        }
        if let Some(v) = args.inner().get("x-dead-letter-exchange") {
            cfg.dead_letter_exchange = Some(value_as_string(v).ok_or_else(|| {
                AmqpError::precondition(format!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{queue}' in vhost '{vhost}'",
                    value_type_name(v)
                ))
            })?);
        }
        if let Some(v) = args.inner().get("x-dead-letter-routing-key") {
            cfg.dead_letter_routing_key = Some(
                value_as_string(v).ok_or_else(|| unacceptable("x-dead-letter-routing-key", v))?,
            );
            // As RabbitMQ: a dead-letter routing key needs a dead-letter exchange.
            if cfg.dead_letter_exchange.is_none() {
                return Err(bad(
                    "x-dead-letter-routing-key",
                    "routing_key_but_no_dlx_defined",
                ));
            }
        }
        Ok(cfg)
    }
}

/// Ready messages, one FIFO per priority level.
#[derive(Debug)]
struct Store {
    levels: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: usize,
}

impl Store {
    fn new(max_priority: Option<u8>) -> Self {
        let n = max_priority.map_or(1, |p| usize::from(p) + 1);
        Self {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }
    fn level(&self, m: &QueuedMessage) -> usize {
        usize::from(m.priority()).min(self.levels.len() - 1)
    }
    fn push_back(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        self.len += 1;
        self.bytes += m.size();
        if let Some(q) = self.levels.get_mut(l) {
            q.push_back(m);
        }
    }
    fn push_front(&mut self, m: QueuedMessage) {
        let l = self.level(&m);
        self.len += 1;
        self.bytes += m.size();
        if let Some(q) = self.levels.get_mut(l) {
            q.push_front(m);
        }
    }
    fn head_level(&self) -> Option<usize> {
        self.levels.iter().rposition(|q| !q.is_empty())
    }
    fn front(&self) -> Option<&QueuedMessage> {
        self.head_level()
            .and_then(|l| self.levels.get(l))
            .and_then(|q| q.front())
    }
    fn pop_front(&mut self) -> Option<QueuedMessage> {
        let l = self.head_level()?;
        let m = self.levels.get_mut(l)?.pop_front()?;
        self.len -= 1;
        self.bytes -= m.size();
        Some(m)
    }
    fn clear(&mut self) -> usize {
        let n = self.len;
        for q in &mut self.levels {
            q.clear();
        }
        self.len = 0;
        self.bytes = 0;
        n
    }
    /// Remove expired messages at the head of every level.
    fn drop_expired(&mut self, now: Instant, out: &mut Vec<QueuedMessage>) {
        for q in &mut self.levels {
            while q
                .front()
                .is_some_and(|m| m.expires_at.is_some_and(|t| t <= now))
            {
                if let Some(m) = q.pop_front() {
                    self.len -= 1;
                    self.bytes -= m.size();
                    out.push(m);
                }
            }
        }
    }
}

#[derive(Debug)]
struct QueueState {
    store: Store,
    consumers: Vec<Subscription>,
    next_rr: usize,
    last_used: Instant,
    deleted: bool,
}

/// Result of offering a message to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueResult {
    /// Stored or delivered.
    Accepted,
    /// Refused by `x-overflow=reject-publish`.
    Rejected,
}

/// A queue's cumulative counters and its unacknowledged gauge, for
/// operators ([`QueueSnapshot`]). Atomics, counted without the queue's lock
/// where the event happens outside it (acks, settlements).
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    published: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
    redelivered: AtomicU64,
    unacked: AtomicU64,
    unacked_bytes: AtomicU64,
}

impl QueueCounters {
    /// One delivery (to a consumer or `basic.get`) of a message of `bytes`
    /// bytes; `unacked` when it awaits an acknowledgement.
    pub(crate) fn delivered(&self, redelivered: bool, unacked: bool, bytes: usize) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if unacked {
            self.unacked.fetch_add(1, Ordering::Relaxed);
            self.unacked_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// One unacknowledged delivery of `bytes` bytes settled (`acked`: by an
    /// ack; otherwise requeued, rejected or its channel closed).
    pub(crate) fn settled(&self, acked: bool, bytes: usize) {
        if acked {
            self.acked.fetch_add(1, Ordering::Relaxed);
        }
        let sub = |a: &AtomicU64, n: u64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.unacked, 1);
        sub(&self.unacked_bytes, bytes as u64);
    }
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// Declared durable (kept in the data directory of a durable core unless
    /// exclusive).
    pub durable: bool,
    /// Owning connection id for exclusive queues.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Parsed `x-` arguments.
    pub config: QueueConfig,
    /// Its link to the durable store, for a durable queue of a durable core.
    pub(crate) store: Option<QueueStore>,
    /// Counters for operators.
    pub(crate) counters: QueueCounters,
    state: Mutex<QueueState>,
}

impl Queue {
    /// Create an empty queue.
    pub(crate) fn new(
        name: String,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        config: QueueConfig,
    ) -> Self {
        let store = Store::new(config.max_priority);
        Self {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            config,
            store: None,
            counters: QueueCounters::default(),
            state: Mutex::new(QueueState {
                store,
                consumers: Vec::new(),
                next_rr: 0,
                last_used: Instant::now(),
                deleted: false,
            }),
        }
    }

    /// The queue, kept in the durable store.
    pub(crate) fn with_store(mut self, store: QueueStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Puts back a message recovered from the durable store (at start-up, in
    /// publish order; nothing is dispatched: there are no consumers yet).
    pub(crate) fn restore(&self, qm: QueuedMessage) {
        self.st().store.push_back(qm);
    }

    /// The expiry of `msg` published at `published` (for restored messages).
    pub(crate) fn expiry_at(&self, msg: &Message, published: Instant) -> Option<Instant> {
        self.expiry_for(msg, published)
    }

    /// The queue's state (rank 3 of [`super::locks`]: one queue at a time, no
    /// channel lock held).
    fn st(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }

    /// Number of ready messages.
    pub fn message_count(&self) -> u32 {
        u32::try_from(self.st().store.len).unwrap_or(u32::MAX)
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> u32 {
        u32::try_from(self.st().consumers.len()).unwrap_or(u32::MAX)
    }

    /// Whether the queue was deleted.
    #[cfg(test)]
    pub fn is_deleted(&self) -> bool {
        self.st().deleted
    }

    /// Mark the queue as used now (resets the `x-expires` timer).
    pub fn touch(&self) {
        self.st().last_used = Instant::now();
    }

    /// True if an exclusive consumer is registered, or (when `exclusive`) any consumer.
    pub(crate) fn consumer_conflict(&self, exclusive: bool) -> bool {
        let st = self.st();
        st.consumers.iter().any(|c| c.exclusive) || (exclusive && !st.consumers.is_empty())
    }

    fn expiry_for(&self, msg: &Message, now: Instant) -> Option<Instant> {
        let per_msg = msg.expiration_ms().ok().flatten();
        let ttl = match (self.config.message_ttl, per_msg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        // Both TTLs are capped at ten years, but a clock that far along would still
        // overflow: a deadline past the end of time is no deadline.
        now.checked_add(Duration::from_millis(ttl))
    }

    /// Offer a message to the queue (stores it and dispatches), pushing what that
    /// dead-letters onto `dead` for the caller to run once it holds no queue lock.
    pub(crate) fn enqueue_into(
        self: &Arc<Self>,
        msg: Arc<Message>,
        dead: &mut DeadLetters,
    ) -> EnqueueResult {
        let now = Instant::now();
        let expires_at = self.expiry_for(&msg, now);
        let stored = self.store.as_ref().and_then(|s| s.token(&msg));
        // A quorum queue tells every delivery its count, from 0.
        let msg = if self.config.quorum {
            with_delivery_count(&msg, Some(0))
        } else {
            msg
        };
        let qm = QueuedMessage {
            msg,
            redelivered: false,
            expires_at,
            delivery_count: 0,
            stored,
        };
        // The lock is held to the end: nothing here reaches another queue.
        {
            let mut st = self.st();
            if st.deleted {
                return EnqueueResult::Accepted;
            }
            let over = |st: &QueueState, extra: usize| {
                self.config
                    .max_length
                    .is_some_and(|m| (st.store.len + 1) as u64 > m)
                    || self
                        .config
                        .max_length_bytes
                        .is_some_and(|m| (st.store.bytes + extra) as u64 > m)
            };
            let size = qm.size();
            let mut result = EnqueueResult::Accepted;
            match self.config.overflow.unwrap_or(Overflow::DropHead) {
                Overflow::DropHead => {
                    st.store.push_back(qm);
                    while self
                        .config
                        .max_length
                        .is_some_and(|m| st.store.len as u64 > m)
                        || self
                            .config
                            .max_length_bytes
                            .is_some_and(|m| st.store.bytes as u64 > m)
                    {
                        match st.store.pop_front() {
                            Some(m) => dead.push(self, m, DeadReason::MaxLen),
                            None => break,
                        }
                    }
                }
                o => {
                    // A message that can go straight to a consumer does not count.
                    if over(&st, size) && !(st.store.len == 0 && self.idle_consumer(&st)) {
                        if o == Overflow::RejectPublishDlx {
                            dead.push(self, qm, DeadReason::MaxLen);
                        }
                        result = EnqueueResult::Rejected;
                    } else {
                        st.store.push_back(qm);
                    }
                }
            }
            if result == EnqueueResult::Accepted {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            // Expiry is judged at publish time so that a TTL of 0 still reaches an
            // idle consumer; whatever is left and already expired is dropped after.
            self.dispatch_at(&mut st, dead, now);
            if expires_at.is_some_and(|t| t <= now) {
                self.expire_locked(&mut st, dead);
            }
            result
        }
    }

    fn idle_consumer(&self, st: &QueueState) -> bool {
        st.consumers.iter().any(|c| c.subscriber.has_capacity())
    }

    /// Push ready messages to consumers that have capacity (round-robin);
    /// returns what that dead-lettered (expired heads).
    pub(crate) fn dispatch(self: &Arc<Self>) -> DeadLetters {
        let mut dead = DeadLetters::new();
        let mut st = self.st();
        self.dispatch_locked(&mut st, &mut dead);
        dead
    }

    fn expire_locked(self: &Arc<Self>, st: &mut QueueState, dead: &mut DeadLetters) {
        let mut expired = Vec::new();
        st.store.drop_expired(Instant::now(), &mut expired);
        for m in expired {
            dead.push(self, m, DeadReason::Expired);
        }
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState, dead: &mut DeadLetters) {
        self.dispatch_at(st, dead, Instant::now());
    }

    fn dispatch_at(self: &Arc<Self>, st: &mut QueueState, dead: &mut DeadLetters, now: Instant) {
        if st.consumers.is_empty() || st.deleted {
            return;
        }
        while let Some(head) = st.store.front() {
            if let Some(t) = head.expires_at {
                if t < now {
                    if let Some(m) = st.store.pop_front() {
                        dead.push(self, m, DeadReason::Expired);
                    }
                    continue;
                }
            }
            let n = st.consumers.len();
            let mut chosen = None;
            for i in 0..n {
                let idx = (st.next_rr + i) % n;
                if st
                    .consumers
                    .get(idx)
                    .is_some_and(|c| c.subscriber.has_capacity())
                {
                    chosen = Some(idx);
                    break;
                }
            }
            let Some(idx) = chosen else { break };
            st.next_rr = idx + 1;
            let Some(consumer) = st.consumers.get(idx).map(|c| c.subscriber.clone()) else {
                break;
            };
            let Some(m) = st.store.pop_front() else { break };
            if let Err(m) = consumer.deliver(self, m) {
                st.store.push_front(m);
                break;
            }
        }
    }

    /// Take the head message for `basic.get` (expired heads are dropped
    /// first): the message, the count left, and what expired.
    pub(crate) fn get(self: &Arc<Self>) -> (Option<QueuedMessage>, u32, DeadLetters) {
        let mut dead = DeadLetters::new();
        let mut st = self.st();
        st.last_used = Instant::now();
        self.expire_locked(&mut st, &mut dead);
        let m = st.store.pop_front();
        (m, u32::try_from(st.store.len).unwrap_or(u32::MAX), dead)
    }

    /// Put messages back at the head, in order, flagged redelivered; then dispatch.
    pub(crate) fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) -> DeadLetters {
        let mut dead = DeadLetters::new();
        let mut st = self.st();
        if st.deleted {
            return dead;
        }
        for mut m in msgs.into_iter().rev() {
            m.redelivered = true;
            if self.config.quorum {
                m = match self.count_delivery(m) {
                    Ok(m) => m,
                    Err(m) => {
                        dead.push(self, m, DeadReason::DeliveryLimit);
                        continue;
                    }
                };
            } else if m.delivery_count == 0 {
                // Recorded once, so that it comes back redelivered after a
                // restart, even a clean one.
                m.delivery_count = 1;
                if let (Some(s), Some(st)) = (&self.store, &m.stored) {
                    s.persistence.delivered(s.uid, st.id(), 1);
                }
            }
            st.store.push_front(m);
        }
        self.dispatch_locked(&mut st, &mut dead);
        dead
    }

    /// A quorum queue's count of a message given back: the `x-delivery-count`
    /// header, recorded in the store; `Err` past `x-delivery-limit`.
    fn count_delivery(&self, mut m: QueuedMessage) -> Result<QueuedMessage, QueuedMessage> {
        m.delivery_count = m.delivery_count.saturating_add(1);
        if let (Some(s), Some(st)) = (&self.store, &m.stored) {
            s.persistence.delivered(s.uid, st.id(), m.delivery_count);
        }
        if self
            .config
            .delivery_limit
            .is_some_and(|limit| m.delivery_count > limit)
        {
            // Dead-lettered without the count, as RabbitMQ does.
            m.msg = with_delivery_count(&m.msg, None);
            return Err(m);
        }
        m.msg = with_delivery_count(&m.msg, Some(m.delivery_count));
        Ok(m)
    }

    /// Add a subscriber and dispatch to it; `None` when the queue was deleted.
    pub(crate) fn add_consumer(
        self: &Arc<Self>,
        subscriber: Arc<dyn Subscriber>,
        exclusive: bool,
    ) -> Option<DeadLetters> {
        let mut dead = DeadLetters::new();
        let mut st = self.st();
        if st.deleted {
            return None;
        }
        st.consumers.push(Subscription {
            subscriber,
            exclusive,
        });
        st.last_used = Instant::now();
        self.dispatch_locked(&mut st, &mut dead);
        Some(dead)
    }

    /// Remove a subscriber. True when the queue is auto-delete and this was
    /// its last consumer: the caller is to delete it (from its vhost).
    #[must_use = "an auto-delete queue that lost its last consumer is to be deleted"]
    pub(crate) fn remove_consumer(&self, subscriber: &dyn Subscriber) -> bool {
        let mut st = self.st();
        let before = st.consumers.len();
        st.consumers.retain(|x| !same(&x.subscriber, subscriber));
        st.last_used = Instant::now();
        let now_empty = before != st.consumers.len() && st.consumers.is_empty() && !st.deleted;
        now_empty && self.auto_delete
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.st();
        self.forget_stored(&st, false);
        u32::try_from(st.store.clear()).unwrap_or(u32::MAX)
    }

    /// Records the ready messages about to be dropped as settled in a few
    /// records rather than one each: the whole queue when it is `deleted` (its
    /// unacked messages go with it), else those messages.
    fn forget_stored(&self, st: &QueueState, deleted: bool) {
        let Some(s) = &self.store else { return };
        let mut ids = Vec::new();
        for m in st.store.levels.iter().flatten() {
            if let Some(t) = &m.stored {
                t.forget();
                ids.push(t.id());
            }
        }
        if deleted {
            s.persistence.purge(s.uid);
        } else {
            s.persistence.settle_many(s.uid, &ids);
        }
    }

    /// Mark deleted, drop messages, return (message count, subscribers to
    /// notify with [`Subscriber::cancelled`] once no lock is held).
    pub(crate) fn mark_deleted(&self) -> (u32, Vec<Arc<dyn Subscriber>>) {
        let mut st = self.st();
        st.deleted = true;
        self.forget_stored(&st, true);
        let n = st.store.clear();
        let consumers = std::mem::take(&mut st.consumers)
            .into_iter()
            .map(|c| c.subscriber)
            .collect();
        (u32::try_from(n).unwrap_or(u32::MAX), consumers)
    }

    /// Periodic work: expire head messages. Returns whether the queue itself
    /// expired (`x-expires`: the caller is to delete it), and what expired.
    pub(crate) fn sweep(self: &Arc<Self>, now: Instant) -> (bool, DeadLetters) {
        let mut dead = DeadLetters::new();
        let expired = {
            let mut st = self.st();
            if st.deleted {
                return (false, dead);
            }
            let mut out = Vec::new();
            st.store.drop_expired(now, &mut out);
            for m in out {
                dead.push(self, m, DeadReason::Expired);
            }
            self.dispatch_locked(&mut st, &mut dead);
            self.config.expires.is_some_and(|ms| {
                st.consumers.is_empty()
                    && now.saturating_duration_since(st.last_used) >= Duration::from_millis(ms)
            })
        };
        (expired, dead)
    }

    /// Whether the queue has at least one consumer now.
    pub fn has_consumers(&self) -> bool {
        !self.st().consumers.is_empty()
    }

    /// The queue as operators see it, in `vhost` (the exclusive owner's
    /// name is the caller's to fill in).
    pub(crate) fn snapshot(&self, vhost: &str) -> QueueSnapshot {
        let (ready, ready_bytes, consumers) = {
            let st = self.st();
            (
                st.store.len as u64,
                st.store.bytes as u64,
                st.consumers.len() as u64,
            )
        };
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (unacked, unacked_bytes) = (load(&c.unacked), load(&c.unacked_bytes));
        let queue_type = self
            .arguments
            .inner()
            .get("x-queue-type")
            .and_then(value_as_string)
            .unwrap_or_else(|| "classic".to_owned());
        QueueSnapshot {
            vhost: vhost.to_owned(),
            name: self.name.clone(),
            durable: self.durable,
            auto_delete: self.auto_delete,
            exclusive: self.exclusive_owner.is_some(),
            exclusive_owner: None,
            arguments: self.arguments.clone(),
            queue_type,
            messages_ready: ready,
            messages_unacknowledged: unacked,
            messages: ready + unacked,
            message_bytes_ready: ready_bytes,
            message_bytes_unacknowledged: unacked_bytes,
            message_bytes: ready_bytes + unacked_bytes,
            consumers,
            state: "running".to_owned(),
            published: load(&c.published),
            delivered: load(&c.delivered),
            acked: load(&c.acked),
            redelivered: load(&c.redelivered),
        }
    }
}

/// A copy of `msg` with its `x-delivery-count` header set to `count` (removed
/// for `None`).
pub(crate) fn with_delivery_count(msg: &Arc<Message>, count: Option<u32>) -> Arc<Message> {
    let mut copy = Message::clone(msg);
    let mut headers = copy.properties.headers().clone().unwrap_or_default();
    match count {
        Some(n) => {
            headers.insert(
                "x-delivery-count".into(),
                AMQPValue::LongLongInt(i64::from(n)),
            );
        }
        None => {
            let mut map = headers.inner().clone();
            map.remove("x-delivery-count");
            headers = FieldTable::from(map);
        }
    }
    copy.properties = copy.properties.with_headers(headers);
    Arc::new(copy)
}

/// A [`Subscriber`] for tests: takes up to `capacity` unsettled messages and
/// records what it got.
#[cfg(test)]
pub(crate) mod probe {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::{Queue, QueuedMessage, Subscriber};
    use crate::core::locks::lock;

    /// See the module docs.
    #[derive(Debug)]
    pub(crate) struct Probe {
        capacity: usize,
        got: Mutex<Vec<QueuedMessage>>,
        /// Messages delivered in all (settled or not).
        delivered: Mutex<usize>,
        /// Set by [`Subscriber::cancelled`].
        pub(crate) cancelled: AtomicBool,
        /// A closed subscriber has no capacity and gives messages back.
        pub(crate) closed: AtomicBool,
        /// Says it has capacity, then gives the message back (a channel
        /// that closed in between).
        pub(crate) refuse: AtomicBool,
    }

    impl Probe {
        /// A subscriber taking `capacity` unsettled messages at a time.
        pub(crate) fn new(capacity: usize) -> Arc<Self> {
            Arc::new(Self {
                capacity,
                got: Mutex::new(Vec::new()),
                delivered: Mutex::new(0),
                cancelled: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                refuse: AtomicBool::new(false),
            })
        }

        /// The bodies of the unsettled messages, in delivery order.
        pub(crate) fn bodies(&self) -> Vec<String> {
            lock(&self.got)
                .iter()
                .map(|m| String::from_utf8_lossy(&m.msg.body).into_owned())
                .collect()
        }

        /// Settles (takes) every unsettled message.
        pub(crate) fn settle(&self) -> Vec<QueuedMessage> {
            std::mem::take(&mut *lock(&self.got))
        }

        /// Messages delivered in all.
        pub(crate) fn delivered(&self) -> usize {
            *lock(&self.delivered)
        }

        /// Whether the queue told it it was deleted.
        pub(crate) fn was_cancelled(&self) -> bool {
            self.cancelled.load(Ordering::Acquire)
        }
    }

    impl Subscriber for Probe {
        fn has_capacity(&self) -> bool {
            !self.closed.load(Ordering::Acquire) && lock(&self.got).len() < self.capacity
        }

        fn deliver(
            self: Arc<Self>,
            _queue: &Arc<Queue>,
            msg: QueuedMessage,
        ) -> Result<(), QueuedMessage> {
            if self.closed.load(Ordering::Acquire) || self.refuse.load(Ordering::Acquire) {
                return Err(msg);
            }
            lock(&self.got).push(msg);
            *lock(&self.delivered) += 1;
            Ok(())
        }

        fn cancelled(&self) {
            self.cancelled.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    use super::probe::Probe;
    use super::*;

    fn table(args: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in args {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn queue_with(args: &[(&str, AMQPValue)], auto_delete: bool) -> Arc<Queue> {
        let arguments = table(args);
        let config = QueueConfig::parse("q", "/", &arguments).expect("valid arguments");
        Arc::new(Queue::new(
            "q".into(),
            false,
            None,
            auto_delete,
            arguments,
            config,
        ))
    }

    fn queue(args: &[(&str, AMQPValue)]) -> Arc<Queue> {
        queue_with(args, false)
    }

    fn long(n: i64) -> AMQPValue {
        AMQPValue::LongLongInt(n)
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.as_bytes().to_vec().into())
    }

    fn message(body: &str, properties: BasicProperties) -> Arc<Message> {
        Arc::new(Message::new(
            "".into(),
            "q".into(),
            properties,
            Bytes::from(body.to_owned()),
        ))
    }

    /// Publishes `body`: the queue's verdict and the dead letters it returned.
    fn publish(q: &Arc<Queue>, body: &str) -> (EnqueueResult, DeadLetters) {
        let mut dead = DeadLetters::new();
        let r = q.enqueue_into(message(body, BasicProperties::default()), &mut dead);
        (r, dead)
    }

    fn accept(q: &Arc<Queue>, body: &str) {
        let (r, dead) = publish(q, body);
        assert_eq!(r, EnqueueResult::Accepted);
        assert!(dead.is_empty(), "{body} dead-lettered something");
    }

    fn subscribe(q: &Arc<Queue>, p: &Arc<Probe>) {
        let dead = q.add_consumer(p.clone(), false).expect("queue not deleted");
        assert!(dead.is_empty());
    }

    fn body(m: &QueuedMessage) -> String {
        String::from_utf8_lossy(&m.msg.body).into_owned()
    }

    /// What died, and why, in order.
    fn deaths(dead: DeadLetters) -> Vec<(String, DeadReason)> {
        dead.into_inner()
            .into_iter()
            .map(|d| (body(&d.msg), d.reason))
            .collect()
    }

    #[test]
    fn messages_reach_subscribers_in_order_round_robin() {
        let q = queue(&[]);
        let (a, b) = (Probe::new(10), Probe::new(10));
        subscribe(&q, &a);
        subscribe(&q, &b);
        for m in ["m0", "m1", "m2", "m3", "m4"] {
            accept(&q, m);
        }
        assert_eq!(a.bodies(), ["m0", "m2", "m4"]);
        assert_eq!(b.bodies(), ["m1", "m3"]);
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn a_full_subscriber_is_skipped_and_the_rest_waits_in_order() {
        let q = queue(&[]);
        let p = Probe::new(2);
        subscribe(&q, &p);
        for m in ["m0", "m1", "m2", "m3", "m4"] {
            accept(&q, m);
        }
        assert_eq!(p.bodies(), ["m0", "m1"]);
        assert_eq!(q.message_count(), 3);
        // Nothing moves until the subscriber has room and the queue is asked.
        p.settle();
        assert!(p.bodies().is_empty());
        assert!(q.dispatch().is_empty());
        assert_eq!(p.bodies(), ["m2", "m3"]);
        p.settle();
        assert!(q.dispatch().is_empty());
        assert_eq!(p.bodies(), ["m4"]);
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn a_subscriber_that_gives_a_message_back_leaves_it_queued() {
        let q = queue(&[]);
        let p = Probe::new(10);
        subscribe(&q, &p);
        p.refuse.store(true, Ordering::Release);
        accept(&q, "m0");
        accept(&q, "m1");
        assert_eq!(q.message_count(), 2);
        assert_eq!(p.delivered(), 0);
        p.refuse.store(false, Ordering::Release);
        assert!(q.dispatch().is_empty());
        assert_eq!(p.bodies(), ["m0", "m1"], "kept at the head, in order");
    }

    #[test]
    fn requeued_messages_go_back_to_the_head_in_order_and_redelivered() {
        let q = queue(&[]);
        for m in ["m0", "m1", "m2", "m3"] {
            accept(&q, m);
        }
        let (m0, left, dead) = q.get();
        assert!(dead.is_empty());
        assert_eq!(left, 3);
        let (m1, _, _) = q.get();
        let taken = vec![m0.expect("m0"), m1.expect("m1")];
        assert!(taken.iter().all(|m| !m.redelivered));
        assert!(q.requeue(taken).is_empty());
        let p = Probe::new(10);
        subscribe(&q, &p);
        let got = p.settle();
        let seen: Vec<(String, bool)> = got.iter().map(|m| (body(m), m.redelivered)).collect();
        assert_eq!(
            seen,
            [
                ("m0".to_string(), true),
                ("m1".to_string(), true),
                ("m2".to_string(), false),
                ("m3".to_string(), false)
            ]
        );
    }

    #[test]
    fn expired_messages_are_dropped_or_returned_as_dead_letters() {
        // Without a dead-letter exchange an expired message just goes.
        let q = queue(&[("x-message-ttl", long(1_000))]);
        accept(&q, "m0");
        let (expired, dead) = q.sweep(Instant::now());
        assert!(!expired && dead.is_empty());
        assert_eq!(q.message_count(), 1, "not yet expired");
        let (expired, dead) = q.sweep(Instant::now() + Duration::from_secs(2));
        assert!(!expired && dead.is_empty());
        assert_eq!(q.message_count(), 0);

        // With one, it is returned to the caller, oldest first.
        let q = queue(&[
            ("x-message-ttl", long(1_000)),
            ("x-dead-letter-exchange", text("dlx")),
        ]);
        accept(&q, "m0");
        accept(&q, "m1");
        let (_, dead) = q.sweep(Instant::now() + Duration::from_secs(2));
        assert_eq!(
            deaths(dead),
            [
                ("m0".to_string(), DeadReason::Expired),
                ("m1".to_string(), DeadReason::Expired)
            ]
        );
        assert_eq!(q.message_count(), 0);
    }

    #[test]
    fn a_per_message_ttl_of_zero_still_reaches_an_idle_subscriber() {
        let q = queue(&[("x-dead-letter-exchange", text("dlx"))]);
        let expiring = || BasicProperties::default().with_expiration("0".into());
        let mut dead = DeadLetters::new();
        // No subscriber: expired at once, dead-lettered.
        q.enqueue_into(message("alone", expiring()), &mut dead);
        assert_eq!(deaths(dead), [("alone".to_string(), DeadReason::Expired)]);
        let p = Probe::new(10);
        subscribe(&q, &p);
        let mut dead = DeadLetters::new();
        q.enqueue_into(message("seen", expiring()), &mut dead);
        assert!(dead.is_empty());
        assert_eq!(p.bodies(), ["seen"]);
    }

    #[test]
    fn max_length_drops_the_head_and_returns_it_as_a_dead_letter() {
        let q = queue(&[
            ("x-max-length", long(2)),
            ("x-dead-letter-exchange", text("dlx")),
        ]);
        accept(&q, "m0");
        accept(&q, "m1");
        let (r, dead) = publish(&q, "m2");
        assert_eq!(r, EnqueueResult::Accepted);
        assert_eq!(deaths(dead), [("m0".to_string(), DeadReason::MaxLen)]);
        assert_eq!(q.message_count(), 2);
        let (head, _, _) = q.get();
        assert_eq!(head.as_ref().map(body).as_deref(), Some("m1"));
    }

    #[test]
    fn max_length_bytes_counts_bodies() {
        let q = queue(&[("x-max-length-bytes", long(5))]);
        accept(&q, "abc");
        accept(&q, "de");
        let (r, dead) = publish(&q, "f");
        assert_eq!(r, EnqueueResult::Accepted);
        assert!(dead.is_empty(), "no dead-letter exchange: dropped");
        let (head, _, _) = q.get();
        assert_eq!(head.as_ref().map(body).as_deref(), Some("de"));
    }

    #[test]
    fn reject_publish_refuses_the_new_message() {
        let q = queue(&[
            ("x-max-length", long(1)),
            ("x-overflow", text("reject-publish")),
            ("x-dead-letter-exchange", text("dlx")),
        ]);
        accept(&q, "m0");
        let (r, dead) = publish(&q, "m1");
        assert_eq!(r, EnqueueResult::Rejected);
        assert!(dead.is_empty(), "reject-publish does not dead-letter");
        assert_eq!(q.message_count(), 1);

        let q = queue(&[
            ("x-max-length", long(1)),
            ("x-overflow", text("reject-publish-dlx")),
            ("x-dead-letter-exchange", text("dlx")),
        ]);
        accept(&q, "m0");
        let (r, dead) = publish(&q, "m1");
        assert_eq!(r, EnqueueResult::Rejected);
        assert_eq!(deaths(dead), [("m1".to_string(), DeadReason::MaxLen)]);
    }

    #[test]
    fn a_full_queue_still_hands_a_message_to_an_idle_subscriber() {
        let q = queue(&[
            ("x-max-length", long(0)),
            ("x-overflow", text("reject-publish")),
        ]);
        let p = Probe::new(1);
        subscribe(&q, &p);
        assert_eq!(publish(&q, "m0").0, EnqueueResult::Accepted);
        assert_eq!(p.bodies(), ["m0"]);
        assert_eq!(publish(&q, "m1").0, EnqueueResult::Rejected);
    }

    #[test]
    fn higher_priorities_go_first() {
        let q = queue(&[("x-max-priority", long(5))]);
        let mut dead = DeadLetters::new();
        for (b, p) in [("low", 1), ("high", 5), ("mid", 3), ("none", 0)] {
            let props = BasicProperties::default().with_priority(p);
            q.enqueue_into(message(b, props), &mut dead);
        }
        assert!(dead.is_empty());
        let p = Probe::new(10);
        subscribe(&q, &p);
        assert_eq!(p.bodies(), ["high", "mid", "low", "none"]);
    }

    #[test]
    fn losing_the_last_consumer_asks_the_caller_to_delete_an_auto_delete_queue() {
        let q = queue_with(&[], true);
        let (a, b) = (Probe::new(1), Probe::new(1));
        subscribe(&q, &a);
        subscribe(&q, &b);
        assert!(!q.remove_consumer(&*a), "b still consumes");
        assert!(q.remove_consumer(&*b), "the last one went");
        assert!(!q.remove_consumer(&*b), "already gone");

        let q = queue(&[]);
        subscribe(&q, &a);
        assert!(!q.remove_consumer(&*a), "not auto-delete");
    }

    #[test]
    fn a_deleted_queue_returns_its_subscribers_and_takes_no_more() {
        let q = queue(&[]);
        let p = Probe::new(1);
        subscribe(&q, &p);
        accept(&q, "m0");
        accept(&q, "m1");
        let (dropped, subscribers) = q.mark_deleted();
        assert_eq!(dropped, 1, "m0 went to the subscriber, m1 was dropped");
        assert_eq!(subscribers.len(), 1);
        assert!(!p.was_cancelled(), "the caller notifies, not the queue");
        assert!(q.is_deleted());
        assert!(q.add_consumer(p.clone(), false).is_none());
    }

    #[test]
    fn an_exclusive_consumer_conflicts_with_any_other() {
        let q = queue(&[]);
        assert!(!q.consumer_conflict(true));
        let p = Probe::new(1);
        assert!(q.add_consumer(p.clone(), true).is_some());
        assert!(q.consumer_conflict(false));
        assert!(!q.remove_consumer(&*p));
        assert!(!q.consumer_conflict(true));
        subscribe(&q, &p);
        assert!(q.consumer_conflict(true));
        assert!(!q.consumer_conflict(false));
    }

    #[test]
    fn an_unused_queue_with_x_expires_expires() {
        let q = queue(&[("x-expires", long(1_000))]);
        assert!(!q.sweep(Instant::now()).0);
        assert!(q.sweep(Instant::now() + Duration::from_secs(2)).0);
        // A consumer keeps it alive.
        let q = queue(&[("x-expires", long(1_000))]);
        subscribe(&q, &Probe::new(1));
        assert!(!q.sweep(Instant::now() + Duration::from_secs(2)).0);
    }
}
