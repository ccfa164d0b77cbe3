//! Queues: message storage, consumer round-robin dispatch, TTL, length limits.
//!
//! All state sits behind one short `Mutex` per queue, never held across an `.await`.
//! Work that touches other queues (dead-lettering) is collected under the lock onto a
//! [`DeadLetters`] work list and performed after it is released (see
//! [`super::dead_letter`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable};

use super::consumer::Consumer;
use super::dead_letter::DeadLetters;
use super::error::AmqpError;
use super::message::{Message, QueuedMessage, MAX_EXPIRY_MS};
use super::vhost::VHost;
use super::{lock, value_as_i64, value_as_string, value_type_name};

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
    consumers: Vec<Arc<Consumer>>,
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
    vhost: Weak<VHost>,
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
        vhost: Weak<VHost>,
    ) -> Self {
        let store = Store::new(config.max_priority);
        Self {
            name,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            config,
            vhost,
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
        st.consumers.iter().any(|c| c.has_capacity())
    }

    /// Push ready messages to consumers that have capacity (round-robin).
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.st();
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
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
                if st.consumers.get(idx).is_some_and(|c| c.has_capacity()) {
                    chosen = Some(idx);
                    break;
                }
            }
            let Some(idx) = chosen else { break };
            st.next_rr = idx + 1;
            let Some(consumer) = st.consumers.get(idx).cloned() else {
                break;
            };
            let Some(m) = st.store.pop_front() else { break };
            if let Err(m) = consumer.channel.deliver(&consumer, self, m) {
                st.store.push_front(m);
                break;
            }
        }
    }

    /// Take the head message for `basic.get` (expired heads are dropped first).
    pub(crate) fn get(self: &Arc<Self>) -> (Option<QueuedMessage>, u32) {
        let mut dead = DeadLetters::new();
        let out = {
            let mut st = self.st();
            st.last_used = Instant::now();
            self.expire_locked(&mut st, &mut dead);
            let m = st.store.pop_front();
            (m, u32::try_from(st.store.len).unwrap_or(u32::MAX))
        };
        self.dead_letter(dead);
        out
    }

    /// Put messages back at the head, in order, flagged redelivered; then dispatch.
    pub(crate) fn requeue(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.st();
            if st.deleted {
                return;
            }
            for mut m in msgs.into_iter().rev() {
                m.redelivered = true;
                st.store.push_front(m);
            }
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Add a consumer and dispatch to it.
    pub(crate) fn add_consumer(self: &Arc<Self>, c: Arc<Consumer>) -> bool {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.st();
            if st.deleted {
                return false;
            }
            st.consumers.push(c);
            st.had_consumer = true;
            st.last_used = Instant::now();
            self.dispatch_locked(&mut st, &mut dead);
        }
        self.dead_letter(dead);
        true
    }

    /// Remove a consumer; deletes the queue if it is auto-delete and this was the last one.
    pub(crate) fn remove_consumer(self: &Arc<Self>, c: &Arc<Consumer>) {
        let now_empty = {
            let mut st = self.st();
            let before = st.consumers.len();
            st.consumers.retain(|x| !Arc::ptr_eq(x, c));
            st.last_used = Instant::now();
            before != st.consumers.len() && st.consumers.is_empty() && !st.deleted
        };
        if now_empty && self.auto_delete {
            if let Some(vh) = self.vhost.upgrade() {
                vh.delete_queue_internal(&self.name, Some(self));
            }
        }
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        u32::try_from(self.st().store.clear()).unwrap_or(u32::MAX)
    }

    /// Mark deleted, drop messages, return (message count, consumers to notify).
    pub(crate) fn mark_deleted(&self) -> (u32, Vec<Arc<Consumer>>) {
        let mut st = self.st();
        st.deleted = true;
        let n = st.store.clear();
        let consumers = std::mem::take(&mut st.consumers);
        (u32::try_from(n).unwrap_or(u32::MAX), consumers)
    }

    /// Periodic work: expire head messages; returns true if the queue itself expired.
    pub(crate) fn sweep(self: &Arc<Self>, now: Instant) -> bool {
        let mut dead = DeadLetters::new();
        let expired = {
            let mut st = self.st();
            if st.deleted {
                return false;
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
        self.dead_letter(dead);
        expired
    }

    /// Run the dead letters an operation on this queue produced (its lock released).
    pub(crate) fn dead_letter(&self, dead: DeadLetters) {
        if dead.is_empty() {
            return;
        }
        if let Some(vh) = self.vhost.upgrade() {
            vh.dead_letter(dead);
        }
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
