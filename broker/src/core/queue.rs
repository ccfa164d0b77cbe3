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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};

use super::error::AmqpError;
use super::locks::lock;
use super::message::{Message, QueuedMessage, MAX_EXPIRY_MS};
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
    /// Declared durable (nothing is persisted).
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
}

impl DeadReason {
    /// The RabbitMQ name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::MaxLen => "maxlen",
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
    had_consumer: bool,
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

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// Declared durable flag (nothing is persisted).
    pub durable: bool,
    /// Owning connection id for exclusive queues.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Parsed `x-` arguments.
    pub config: QueueConfig,
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
            state: Mutex::new(QueueState {
                store,
                consumers: Vec::new(),
                next_rr: 0,
                had_consumer: false,
                last_used: Instant::now(),
                deleted: false,
            }),
        }
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
        let qm = QueuedMessage {
            msg,
            redelivered: false,
            expires_at,
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
            st.store.push_front(m);
        }
        self.dispatch_locked(&mut st, &mut dead);
        dead
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
        st.had_consumer = true;
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
        u32::try_from(self.st().store.clear()).unwrap_or(u32::MAX)
    }

    /// Mark deleted, drop messages, return (message count, subscribers to
    /// notify with [`Subscriber::cancelled`] once no lock is held).
    pub(crate) fn mark_deleted(&self) -> (u32, Vec<Arc<dyn Subscriber>>) {
        let mut st = self.st();
        st.deleted = true;
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

    /// Whether the queue ever had a consumer (for auto-delete).
    pub fn had_consumer(&self) -> bool {
        self.st().had_consumer
    }
}
