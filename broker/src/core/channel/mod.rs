//! Core channels: the per-channel AMQP model as plain method calls.
//!
//! A [`CoreChannel`] carries delivery tags, unacknowledged messages, consumers, QoS,
//! confirm and transaction modes. Asynchronous output (deliveries, returns, confirms,
//! broker-initiated cancels) is pushed to the channel's [`ChannelSink`] in wire order.
//!
//! `events` holds what a channel hands out, `state` the part queues reach
//! (the consumers, which are the queues' [`Subscriber`](crate::core::queue::Subscriber)s),
//! and this module the AMQP methods.

mod confirms;
mod events;
mod state;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{FieldTable, ShortString};
use bytes::Bytes;

pub use events::{
    ChannelEvent, ChannelSink, Delivery, GetOk, PublishOutcome, QueueDeclareOk, Returned,
};
pub(crate) use state::MAX_TX_BYTES;

use state::{ChannelShared, Consumer, Tx, TxPublish, TxSettle, Unacked};

use crate::core::error::{codes, AmqpError};
use crate::core::exchange::{Destination, ExchangeDeclareOptions};
use crate::core::permission::Access;
use crate::core::queue::{QueueDeclareOptions, QueueDeleteOptions};
use crate::core::reply_to::{self, ReplyTarget, REPLY_TO_QUEUE};
use crate::core::session::{Attached, Session};
use crate::core::vhost::VHost;

static TAG_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A random-looking name with the given prefix (`amq.gen-…`, `amq.ctag-…`).
pub(crate) fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let id =
        uuid::Uuid::new_v4().as_u128() ^ u128::from(TAG_COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for i in 0..22 {
        let idx = ((id >> (i * 6)) & 63) as usize;
        s.push(char::from(ALPHABET.get(idx).copied().unwrap_or(b'A')));
    }
    s
}

/// How `basic.consume` subscribes.
#[derive(Clone, Debug, Default)]
pub struct ConsumeOptions {
    /// Deliveries need no acknowledgement.
    pub no_ack: bool,
    /// No other consumer may use the queue meanwhile (403 if one does).
    pub exclusive: bool,
    /// Emit no [`ChannelEvent::ConsumeOk`] (the client asked for no reply).
    pub nowait: bool,
    /// Consumer arguments (accepted and ignored).
    pub arguments: FieldTable,
}

/// A channel of a [`crate::core::CoreConnection`]. Dropping it closes it.
pub struct CoreChannel {
    shared: Arc<ChannelShared>,
}

impl fmt::Debug for CoreChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl Drop for CoreChannel {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl CoreChannel {
    pub(crate) fn new(
        conn: Arc<Session>,
        id: u64,
        number: u16,
        sink: Box<dyn ChannelSink>,
    ) -> Self {
        Self {
            shared: Arc::new(ChannelShared::new(conn, id, number, sink)),
        }
    }

    /// The channel as its connection's register holds it.
    pub(crate) fn attached(&self) -> Weak<dyn Attached> {
        let weak: Weak<ChannelShared> = Arc::downgrade(&self.shared);
        weak
    }

    fn conn_id(&self) -> u64 {
        self.shared.conn.id
    }

    fn vhost(&self) -> &VHost {
        &self.shared.conn.vhost
    }

    /// Refuses an operation the user's permissions do not allow (403).
    fn allow(&self, access: Access, kind: &str, name: &str) -> Result<(), AmqpError> {
        let conn = &self.shared.conn;
        // The default exchange is `amq.default` to permissions, as in RabbitMQ.
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        match &conn.permissions {
            p if !p.allows(access, name) => Err(AmqpError::access_refused(format!(
                "{} access to {kind} '{name}' in vhost '{}' refused for user '{}'",
                match access {
                    Access::Configure => "configure",
                    Access::Write => "write",
                    Access::Read => "read",
                },
                conn.vhost.name,
                conn.user
            ))),
            _ => Ok(()),
        }
    }

    /// A new exchange or queue whose `key` argument names an exchange that
    /// gets its messages (alternate or dead-letter exchange) needs read on
    /// itself and write on that exchange: otherwise declaring one would
    /// publish where the user may not (RabbitMQ's check in rabbit_channel).
    fn allow_redirect(
        &self,
        arguments: &FieldTable,
        key: &str,
        kind: &str,
        name: &str,
    ) -> Result<(), AmqpError> {
        // A value of the wrong type is refused later, with the other arguments.
        let Some(target) = arguments
            .inner()
            .get(key)
            .and_then(crate::core::value_as_string)
        else {
            return Ok(());
        };
        self.allow(Access::Read, kind, name)?;
        self.allow(Access::Write, "exchange", &target)
    }

    /// A binding needs write on its destination and read on its source
    /// exchange.
    fn allow_binding(&self, kind: &str, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.allow(Access::Write, kind, destination)?;
        self.allow(Access::Read, "exchange", source)
    }

    fn check_open(&self) -> Result<(), AmqpError> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(AmqpError::channel_error("channel is closed"))
        } else {
            Ok(())
        }
    }

    /// Resolve an empty queue name to the last queue declared on this channel.
    fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.shared
            .st()
            .last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// The core's memory gauge (for what a transport buffers on the way in).
    pub(crate) fn memory(&self) -> &Arc<crate::core::memory::MemoryMonitor> {
        &self.shared.conn.memory
    }

    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// `exchange.declare`.
    pub fn exchange_declare(
        &self,
        exchange: &str,
        kind: &str,
        options: ExchangeDeclareOptions,
    ) -> Result<(), AmqpError> {
        self.check_open()?;
        if !options.passive {
            self.allow(Access::Configure, "exchange", exchange)?;
        }
        self.vhost()
            .exchange_declare(exchange, kind, options, |args| {
                self.allow_redirect(args, "alternate-exchange", "exchange", exchange)
            })
    }

    /// `exchange.delete`.
    pub fn exchange_delete(&self, exchange: &str, if_unused: bool) -> Result<(), AmqpError> {
        self.check_open()?;
        self.allow(Access::Configure, "exchange", exchange)?;
        self.vhost().exchange_delete(exchange, if_unused)
    }

    /// `exchange.bind`: route messages from `source` to exchange `destination`.
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        self.check_open()?;
        self.allow_binding("exchange", destination, source)?;
        self.vhost().bind(
            source,
            Destination::Exchange(destination.to_string()),
            routing_key,
            arguments,
            self.conn_id(),
        )
    }

    /// `exchange.unbind`.
    pub fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        self.check_open()?;
        self.allow_binding("exchange", destination, source)?;
        self.vhost().unbind(
            source,
            Destination::Exchange(destination.to_string()),
            routing_key,
            arguments,
            self.conn_id(),
        )
    }

    /// `queue.declare`; an empty name gets a server-generated `amq.gen-…` name.
    pub fn queue_declare(
        &self,
        queue: &str,
        options: QueueDeclareOptions,
    ) -> Result<QueueDeclareOk, AmqpError> {
        self.check_open()?;
        let passive = options.passive;
        // Direct reply-to's pseudo-queues hold no messages and have one consumer.
        if let Some(exists) = self.vhost().reply_to().pseudo_queue(queue) {
            if !exists {
                return Err(self.vhost().no_queue(queue));
            }
            return Ok(QueueDeclareOk {
                queue: queue.to_string(),
                message_count: 0,
                consumer_count: 1,
            });
        }
        if !passive && queue.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{queue}' contains reserved prefix 'amq.*'"
            )));
        }
        let name = if queue.is_empty() && !passive {
            generate_name("amq.gen-")
        } else {
            self.queue_name(queue)?
        };
        if !passive {
            self.allow(Access::Configure, "queue", &name)?;
        }
        let (q, message_count, consumer_count) =
            self.vhost()
                .queue_declare(&name, options, self.conn_id(), |args| {
                    self.allow_redirect(args, "x-dead-letter-exchange", "queue", &name)
                })?;
        self.shared.st().last_queue = Some(q.name.clone());
        Ok(QueueDeclareOk {
            queue: name,
            message_count,
            consumer_count,
        })
    }

    /// `queue.bind`.
    pub fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        self.check_open()?;
        let queue = self.queue_name(queue)?;
        self.allow_binding("queue", &queue, exchange)?;
        self.vhost().bind(
            exchange,
            Destination::Queue(queue),
            routing_key,
            arguments,
            self.conn_id(),
        )
    }

    /// `queue.unbind`.
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        self.check_open()?;
        let queue = self.queue_name(queue)?;
        self.allow_binding("queue", &queue, exchange)?;
        self.vhost().unbind(
            exchange,
            Destination::Queue(queue),
            routing_key,
            arguments,
            self.conn_id(),
        )
    }

    /// `queue.purge`: returns the number of purged messages.
    pub fn queue_purge(&self, queue: &str) -> Result<u32, AmqpError> {
        self.check_open()?;
        let name = self.queue_name(queue)?;
        self.allow(Access::Read, "queue", &name)?;
        let q = self.vhost().queue_for(&name, self.conn_id())?;
        Ok(q.purge())
    }

    /// `queue.delete`: returns the number of deleted messages.
    pub fn queue_delete(&self, queue: &str, options: QueueDeleteOptions) -> Result<u32, AmqpError> {
        self.check_open()?;
        let name = self.queue_name(queue)?;
        self.allow(Access::Configure, "queue", &name)?;
        self.vhost().queue_delete(&name, options, self.conn_id())
    }

    /// `basic.qos`: `global=false` sets the window of consumers created afterwards,
    /// `global=true` the window shared by the whole channel (RabbitMQ semantics).
    pub fn basic_qos(&self, prefetch_count: u16, global: bool) -> Result<(), AmqpError> {
        self.check_open()?;
        if global {
            self.shared
                .global_prefetch
                .store(u32::from(prefetch_count), Ordering::Release);
        } else {
            self.shared.st().consumer_prefetch = prefetch_count;
        }
        self.shared.redispatch(true);
        Ok(())
    }

    /// `basic.consume`. Deliveries arrive on the channel sink as
    /// [`ChannelEvent::Deliver`], preceded by a [`ChannelEvent::ConsumeOk`]
    /// unless [`ConsumeOptions::nowait`]. An empty tag gets a server-generated
    /// `amq.ctag-…` tag, which is returned.
    pub fn basic_consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        options: ConsumeOptions,
    ) -> Result<ShortString, AmqpError> {
        let ConsumeOptions {
            no_ack,
            exclusive,
            nowait,
            arguments,
        } = options;
        let emit_ok = !nowait;
        self.check_open()?;
        let tag_str = if consumer_tag.is_empty() {
            generate_name("amq.ctag-")
        } else {
            consumer_tag.to_string()
        };
        let tag = ShortString::try_new(tag_str)
            .map_err(|_| AmqpError::precondition("consumer tag too long"))?;
        let sh = &self.shared;
        if queue == REPLY_TO_QUEUE {
            if !no_ack {
                return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
            }
            let mut st = sh.st();
            if st.reply.is_some() {
                return Err(AmqpError::precondition("reply consumer already set"));
            }
            let token = generate_name("");
            let target: Weak<dyn ReplyTarget> = Arc::downgrade(sh) as Weak<ChannelShared>;
            sh.conn.vhost.reply_to().register(&token, target);
            st.reply = Some((tag.clone(), token));
            if emit_ok {
                sh.sink.send(ChannelEvent::ConsumeOk {
                    consumer_tag: tag.clone(),
                });
            }
            return Ok(tag);
        }
        let name = self.queue_name(queue)?;
        self.allow(Access::Read, "queue", &name)?;
        let q = self.vhost().queue_for(&name, self.conn_id())?;
        if q.consumer_conflict(exclusive) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                name,
                self.vhost().name
            )));
        }
        let consumer = {
            let mut st = sh.st();
            if st.consumers.contains_key(&tag) || st.reply.as_ref().is_some_and(|(t, _)| t == &tag)
            {
                return Err(AmqpError::not_allowed(format!(
                    "attempt to reuse consumer tag '{}'",
                    tag
                )));
            }
            let c = Arc::new(Consumer {
                tag: tag.clone(),
                no_ack,
                exclusive,
                arguments,
                prefetch: u32::from(st.consumer_prefetch),
                unacked: std::sync::atomic::AtomicU32::new(0),
                channel: Arc::downgrade(sh),
                queue_ref: Arc::downgrade(&q),
            });
            st.consumers.insert(tag.clone(), c.clone());
            if emit_ok {
                sh.sink.send(ChannelEvent::ConsumeOk {
                    consumer_tag: tag.clone(),
                });
            }
            c
        };
        let Some(dead) = q.add_consumer(consumer, exclusive) else {
            sh.st().consumers.remove(&tag);
            return Err(AmqpError::not_found(format!(
                "no queue '{}' in vhost '{}'",
                q.name,
                self.vhost().name
            )));
        };
        self.vhost().dead_letter(dead);
        Ok(tag)
    }

    /// `basic.cancel`: unknown tags are ignored (as RabbitMQ does).
    pub fn basic_cancel(&self, consumer_tag: &str) -> Result<(), AmqpError> {
        self.check_open()?;
        let sh = &self.shared;
        let (c, reply) = {
            let mut st = sh.st();
            let c = st.consumers.remove(consumer_tag);
            let reply = if st
                .reply
                .as_ref()
                .is_some_and(|(t, _)| t.as_str() == consumer_tag)
            {
                st.reply.take()
            } else {
                None
            };
            (c, reply)
        };
        if let Some((_, token)) = reply {
            sh.conn.vhost.reply_to().unregister(&token);
        }
        if let Some(c) = c {
            sh.unsubscribe(&c);
        }
        Ok(())
    }

    /// `basic.publish`. Returns and confirms are emitted on the sink.
    pub fn basic_publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        properties: BasicProperties,
        body: Bytes,
    ) -> Result<PublishOutcome, AmqpError> {
        self.check_open()?;
        self.allow(Access::Write, "exchange", exchange.as_str())?;
        let sh = &self.shared;
        if let Some(uid) = properties.user_id() {
            if uid.as_str() != sh.conn.user {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    uid, sh.conn.user
                )));
            }
        }
        let mut properties = properties;
        if properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO_QUEUE)
        {
            let token = sh.st().reply.as_ref().map(|(_, t)| t.clone());
            let Some(token) = token else {
                return Err(AmqpError::precondition(
                    "fast reply consumer does not exist",
                ));
            };
            let rt = ShortString::try_new(reply_to::address(&token))
                .map_err(|_| AmqpError::precondition("reply-to too long"))?;
            properties = properties.with_reply_to(rt);
        }
        {
            let mut st = sh.st();
            if let Some(tx) = st.tx.as_mut() {
                let names = exchange.as_str().len() + routing_key.as_str().len();
                let size = crate::core::message::footprint(body.len(), names, &properties);
                if tx.bytes.saturating_add(size) > MAX_TX_BYTES {
                    return Err(AmqpError::precondition(format!(
                        "transaction buffer would exceed {MAX_TX_BYTES} bytes; commit sooner"
                    )));
                }
                tx.bytes += size;
                let charge = sh.conn.memory.charge(size);
                tx.publishes.push(TxPublish {
                    exchange,
                    routing_key,
                    mandatory,
                    properties,
                    body,
                    _charge: charge,
                });
                return Ok(PublishOutcome {
                    buffered: true,
                    ..PublishOutcome::default()
                });
            }
        }
        self.publish_now(exchange, routing_key, mandatory, properties, body)
            .map(|(outcome, _)| outcome)
    }

    /// Publishes now. Outside confirm mode, also returns the handle that
    /// resolves once the message is on disk, if it was stored (a
    /// transaction's commit waits for it); in confirm mode the confirm waits.
    fn publish_now(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        properties: BasicProperties,
        body: Bytes,
    ) -> Result<(PublishOutcome, Option<crate::store::Durable>), AmqpError> {
        let sh = &self.shared;
        let vhost = &sh.conn.vhost;
        let msg = Arc::new(
            crate::core::message::Message::new(exchange, routing_key, properties, body)
                .charged(&sh.conn.memory),
        );
        msg.expiration_ms().map_err(AmqpError::precondition)?;
        let ex = msg.exchange.as_str();
        let rk = msg.routing_key.as_str();
        let mut out = PublishOutcome::default();
        let mut rejected = false;
        let mut durable = None;
        let reply = if ex.is_empty() {
            vhost.reply_to().deliver(rk, &msg)
        } else {
            None
        };
        if let Some(delivered) = reply {
            out.routed = usize::from(delivered);
        } else {
            if !ex.is_empty() {
                match vhost.exchange(ex) {
                    None => {
                        return Err(AmqpError::not_found(format!(
                            "no exchange '{}' in vhost '{}'",
                            ex, vhost.name
                        )))
                    }
                    Some(x) if x.internal => {
                        return Err(AmqpError::access_refused(format!(
                            "cannot publish to internal exchange '{}' in vhost '{}'",
                            ex, vhost.name
                        )))
                    }
                    Some(_) => {}
                }
            }
            let r = vhost.publish(ex, msg.clone())?;
            out.routed = r.routed;
            rejected = r.rejected;
            durable = r.durable;
            out.rejected = rejected;
        }
        if out.routed == 0 && mandatory {
            out.returned = true;
            sh.sink.send(ChannelEvent::Return(Returned {
                reply_code: codes::NO_ROUTE,
                reply_text: ShortString::from("NO_ROUTE"),
                message: msg,
            }));
        }
        let mut st = sh.st();
        if st.confirm {
            st.next_seq += 1;
            let tag = st.next_seq;
            out.confirm_tag = Some(tag);
            st.confirms.confirm(sh, tag, !rejected, durable.take());
        }
        Ok((out, durable))
    }

    /// `basic.get`: `Ok(None)` is get-empty.
    pub fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<GetOk>, AmqpError> {
        self.check_open()?;
        let name = self.queue_name(queue)?;
        self.allow(Access::Read, "queue", &name)?;
        let q = self.vhost().queue_for(&name, self.conn_id())?;
        let (m, message_count, dead) = q.get();
        self.vhost().dead_letter(dead);
        let Some(m) = m else {
            return Ok(None);
        };
        let mut st = self.shared.st();
        st.next_tag += 1;
        let tag = st.next_tag;
        q.counters.delivered(m.redelivered, !no_ack, m.size());
        let out = GetOk {
            delivery_tag: tag,
            redelivered: m.redelivered,
            message_count,
            message: m.msg.clone(),
        };
        if !no_ack {
            st.unacked.insert(
                tag,
                Unacked {
                    queue: q,
                    msg: m,
                    consumer: None,
                    since: Instant::now(),
                },
            );
        }
        Ok(Some(out))
    }

    /// `basic.ack`.
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), AmqpError> {
        self.settle(delivery_tag, multiple, true, false)
    }

    /// `basic.nack`.
    pub fn basic_nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        self.settle(delivery_tag, multiple, false, requeue)
    }

    /// `basic.reject`.
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), AmqpError> {
        self.settle(delivery_tag, false, false, requeue)
    }

    /// Takes the deliveries a settlement names, then settles them (acked,
    /// or requeued or dead-lettered as rejected), or in an open transaction
    /// keeps them for `tx.commit`.
    fn settle(&self, tag: u64, multiple: bool, ack: bool, requeue: bool) -> Result<(), AmqpError> {
        self.check_open()?;
        let taken = {
            let mut st = self.shared.st();
            let taken = state::take_tagged(&mut st, tag, multiple)?;
            if let Some(tx) = st.tx.as_mut() {
                if !taken.is_empty() {
                    tx.acks.push(TxSettle {
                        taken,
                        ack,
                        requeue,
                    });
                }
                return Ok(());
            }
            taken
        };
        self.shared
            .settle_taken(taken.into_values().collect(), ack, requeue);
        Ok(())
    }

    /// `basic.recover`: every unacknowledged message goes back to its queue.
    /// Like RabbitMQ, `requeue=false` (redeliver to the same consumer) is 540
    /// NOT_IMPLEMENTED.
    pub fn basic_recover(&self, requeue: bool) -> Result<(), AmqpError> {
        self.check_open()?;
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let taken = self.shared.take_unacked(0, true)?;
        self.shared.settle_taken(taken, false, true);
        Ok(())
    }

    /// `confirm.select`.
    pub fn confirm_select(&self) -> Result<(), AmqpError> {
        self.check_open()?;
        let mut st = self.shared.st();
        if st.tx.is_some() {
            return Err(AmqpError::precondition(
                "cannot switch from tx to confirm mode",
            ));
        }
        st.confirm = true;
        Ok(())
    }

    /// `tx.select`.
    pub fn tx_select(&self) -> Result<(), AmqpError> {
        self.check_open()?;
        let mut st = self.shared.st();
        if st.confirm {
            return Err(AmqpError::precondition(
                "cannot switch from confirm to tx mode",
            ));
        }
        if st.tx.is_none() {
            st.tx = Some(Tx::default());
        }
        Ok(())
    }

    /// `tx.commit`: publish buffered messages and apply buffered acks.
    ///
    /// Persistent messages routed to durable queues are stored, not yet
    /// necessarily on disk, when this returns; the server's `tx.commit-ok`
    /// waits for them (see `tx_commit_then`).
    pub fn tx_commit(&self) -> Result<(), AmqpError> {
        self.tx_commit_then(Box::new(|_| {}))
    }

    /// [`tx_commit`](Self::tx_commit), then `done` once the committed
    /// persistent messages are on disk, in order with the channel's
    /// confirms. A commit some of whose messages a queue or the store
    /// refused is 406 PRECONDITION_FAILED "partial tx completion" (the rest
    /// is committed), as on RabbitMQ, and `done` is not called.
    /// `done(false)`: the store failed them after taking them, and the
    /// connection is closed with 541 INTERNAL_ERROR (the commit's outcome is
    /// unknown to the client: RabbitMQ closes on an internal error too,
    /// rather than leave a commit that never ends).
    pub(crate) fn tx_commit_then(
        &self,
        done: Box<dyn FnOnce(bool) + Send>,
    ) -> Result<(), AmqpError> {
        self.check_open()?;
        let conn = self.shared.conn.clone();
        let done: Box<dyn FnOnce(bool) + Send> = Box::new(move |ok| {
            if !ok {
                conn.close_with_error(
                    AmqpError::new(
                        codes::INTERNAL_ERROR,
                        "the broker could not write the committed messages to disk",
                    )
                    // tx.commit's ids: the store answers after the dispatcher
                    // has handled the frame, so it cannot stamp them.
                    .during(90, 20),
                );
            }
            done(ok);
        });
        let tx = {
            let mut st = self.shared.st();
            match st.tx.as_mut() {
                None => return Err(AmqpError::precondition("channel is not transactional")),
                Some(tx) => std::mem::take(tx),
            }
        };
        let mut durables = Vec::new();
        let mut refused = 0usize;
        for p in tx.publishes {
            let (outcome, d) =
                self.publish_now(p.exchange, p.routing_key, p.mandatory, p.properties, p.body)?;
            refused += usize::from(outcome.rejected);
            durables.extend(d);
        }
        for settle in tx.acks {
            let taken = settle.taken.into_values().collect();
            self.shared.settle_taken(taken, settle.ack, settle.requeue);
        }
        if refused > 0 {
            // A queue refused a message (`x-overflow=reject-publish`), or
            // the store could not take it (disk full, failed store): the
            // commit did not happen as the client asked, and a commit-ok
            // would tell it otherwise. RabbitMQ closes the channel so.
            return Err(AmqpError::precondition(format!(
                "partial tx completion: {refused} of the committed messages were refused \
                 (a full queue that rejects publishes, or the broker's store)"
            )));
        }
        self.shared.st().confirms.then(&self.shared, durables, done);
        Ok(())
    }

    /// `tx.rollback`: drop buffered messages and acks.
    pub fn tx_rollback(&self) -> Result<(), AmqpError> {
        self.check_open()?;
        let mut st = self.shared.st();
        match st.tx.as_mut() {
            None => Err(AmqpError::precondition("channel is not transactional")),
            Some(tx) => {
                let settled = std::mem::take(tx).acks;
                // As on RabbitMQ, what the transaction acknowledged is
                // unacknowledged again (and may be settled anew).
                state::restore_settled(&mut st, settled);
                Ok(())
            }
        }
    }

    /// `channel.flow`: `active=true` is a no-op; `active=false` is refused
    /// with 540 NOT_IMPLEMENTED (closing the connection), as RabbitMQ 3.x
    /// does, so clients see the same broker on both.
    pub fn flow(&self, active: bool) -> Result<(), AmqpError> {
        self.check_open()?;
        if active {
            Ok(())
        } else {
            Err(AmqpError::not_implemented("active=false"))
        }
    }

    /// How long the oldest unacknowledged delivery has waited for its ack
    /// (delivery tags grow with time, so it is the first), for the consumer
    /// timeout.
    pub(crate) fn oldest_unacked_age(&self, now: Instant) -> Option<Duration> {
        let st = self.shared.st();
        let (_, oldest) = st.unacked.first_key_value()?;
        Some(now.saturating_duration_since(oldest.since))
    }

    /// Close the channel: cancel its consumers and requeue its unacked messages.
    pub fn close(&self) {
        self.shared.close();
    }
}
