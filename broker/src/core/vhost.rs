//! Virtual hosts: the namespace of exchanges, queues and bindings, and message routing.
//!
//! Routing takes only read locks (exchange map, binding table, queue map); topology
//! changes are serialized by a per-vhost mutex and never nest write locks (the
//! whole order: [`super::locks`]).
//!
//! A vhost owns its queues and exchanges and runs what queue operations return:
//! their dead letters ([`super::dead_letter`], which sees the vhost only as a
//! [`Router`]) and the cancellations of a deleted queue's subscribers. Direct
//! reply-to's addresses live in [`super::reply_to`]. The vhost knows nothing of
//! channels or connections.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use amq_protocol::types::{AMQPValue, FieldTable};

use super::dead_letter::{Backlog, Router, SWEEP_BUDGET};
use super::durable::{self, Enc, Persistence, QueueStore};
use super::error::AmqpError;
use super::exchange::{Binding, Destination, Exchange, ExchangeDeclareOptions, ExchangeKind};
use super::locks::{lock, read, write};
use super::message::Message;
use super::queue::{
    DeadLetters, EnqueueResult, Queue, QueueConfig, QueueDeclareOptions, QueueDeleteOptions,
};
use super::reply_to::ReplyTo;
use crate::store::{DefClass, Durable};

/// Outcome of routing one published message.
#[derive(Debug, Default)]
pub struct RouteResult {
    /// Number of queues the message was delivered to.
    pub routed: usize,
    /// True if at least one queue refused it (`x-overflow=reject-publish`), or the
    /// durable store could not take it (disk full).
    pub rejected: bool,
    /// Resolves once the message is on disk, when it was stored (a persistent
    /// message routed to durable queues): its confirm waits for it.
    pub durable: Option<Durable>,
}

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// The vhost name.
    pub name: String,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Serializes topology changes (rank 1 of [`super::locks`]).
    topology: Mutex<()>,
    /// Direct reply-to addresses.
    reply_to: ReplyTo,
    /// Dead letters waiting for their turn (see [`super::dead_letter`]).
    dead_letters: Backlog,
    /// For each destination, the exchanges that may bind to it: every one that
    /// does, and some that no longer do (an unbind leaves the name; deleting the
    /// destination or the exchange drops it). Deleting a destination visits these
    /// rather than every exchange of the vhost, which made deleting the end of a
    /// chain of n auto-delete exchanges cost n² (minutes for some tens of
    /// thousands, under the topology lock). Changed only under that lock.
    bound_by: Mutex<HashMap<Destination, HashSet<String>>>,
    /// The durable store, for a vhost of a durable core.
    store: Option<Arc<Persistence>>,
    /// Uids of the durable exchanges and queues kept in the store (a leaf lock,
    /// changed under the topology lock).
    uids: Mutex<HashMap<Destination, u64>>,
}

impl VHost {
    /// Create a vhost with the standard pre-declared exchanges.
    #[cfg(test)]
    pub fn new(name: &str) -> Arc<Self> {
        Self::with_store(name, None)
    }

    /// [`new`](Self::new), keeping its durable entities in `store`.
    pub(crate) fn with_store(name: &str, store: Option<Arc<Persistence>>) -> Arc<Self> {
        let mut exchanges = HashMap::new();
        for (n, k, internal) in [
            ("", ExchangeKind::Direct, false),
            ("amq.direct", ExchangeKind::Direct, false),
            ("amq.fanout", ExchangeKind::Fanout, false),
            ("amq.topic", ExchangeKind::Topic, false),
            ("amq.headers", ExchangeKind::Headers, false),
            ("amq.match", ExchangeKind::Headers, false),
            ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
        ] {
            exchanges.insert(
                n.to_string(),
                Arc::new(Exchange::new(
                    n,
                    k,
                    true,
                    false,
                    internal,
                    FieldTable::default(),
                )),
            );
        }
        Arc::new(Self {
            name: name.to_string(),
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
            topology: Mutex::new(()),
            reply_to: ReplyTo::default(),
            dead_letters: Backlog::default(),
            bound_by: Mutex::new(HashMap::new()),
            store,
            uids: Mutex::new(HashMap::new()),
        })
    }

    /// The uid in the store of a durable exchange or queue (0 for the
    /// predeclared exchanges); `None` if it is not kept there.
    fn uid_of(&self, d: &Destination) -> Option<u64> {
        match d {
            Destination::Exchange(n) if n.is_empty() || n.starts_with("amq.") => Some(0),
            d => lock(&self.uids).get(d).copied(),
        }
    }

    /// The store key of a binding.
    fn binding_key(
        &self,
        source: &str,
        b: &Destination,
        routing_key: &str,
        args: &FieldTable,
    ) -> Vec<u8> {
        let (kind, dest) = match b {
            Destination::Queue(q) => (b'q', q),
            Destination::Exchange(x) => (b'e', x),
        };
        Enc::default()
            .str(&self.name)
            .str(source)
            .u8(kind)
            .str(dest)
            .str(routing_key)
            .bytes(&durable::encode_table(args))
            .done()
    }

    /// Records an exchange declared durable.
    fn store_exchange(&self, x: &Exchange, uid: Option<u64>) {
        let Some(p) = &self.store else { return };
        // Durable auto-delete exchanges too: RabbitMQ recovers them (they go
        // when their last binding does).
        if !x.durable {
            return;
        }
        let uid = uid.unwrap_or_else(|| p.new_uid());
        lock(&self.uids).insert(Destination::Exchange(x.name.clone()), uid);
        let value = Enc::default()
            .u64(uid)
            .str(x.kind.as_str())
            .u8(u8::from(x.internal))
            .bytes(&durable::encode_table(&x.arguments))
            .u8(u8::from(x.auto_delete))
            .done();
        p.put(
            DefClass::EXCHANGE,
            &durable::entity_key(&self.name, &x.name),
            &value,
        );
    }

    /// Direct reply-to's addresses in this vhost.
    pub(crate) fn reply_to(&self) -> &ReplyTo {
        &self.reply_to
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{}' in vhost '{}'", name, self.name))
    }

    pub(crate) fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{}' in vhost '{}'", name, self.name))
    }

    fn default_exchange_refused() -> AmqpError {
        AmqpError::access_refused("operation not permitted on the default exchange")
    }

    /// Look up an exchange.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        read(&self.exchanges).get(name).cloned()
    }

    /// Its queues, in no particular order.
    pub(crate) fn queue_list(&self) -> Vec<Arc<Queue>> {
        read(&self.queues).values().cloned().collect()
    }

    /// Its exchanges (the predeclared ones included), in no particular order.
    pub(crate) fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        read(&self.exchanges).values().cloned().collect()
    }

    /// Look up a queue (no exclusivity check).
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        read(&self.queues).get(name).cloned()
    }

    /// Look up a queue usable by connection `conn_id` (404 if missing, 405 if exclusive
    /// to another connection).
    pub fn queue_for(&self, name: &str, conn_id: u64) -> Result<Arc<Queue>, AmqpError> {
        let q = self.queue(name).ok_or_else(|| self.no_queue(name))?;
        self.check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    fn check_exclusive(&self, q: &Queue, conn_id: u64) -> Result<(), AmqpError> {
        match q.exclusive_owner {
            Some(owner) if owner != conn_id => Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be \
                 originally declared on another connection or the exclusive property value does \
                 not match that of the original declaration.",
                q.name, self.name
            ))),
            _ => Ok(()),
        }
    }

    /// `exchange.declare`. `check_new` vets the arguments of an exchange
    /// about to be created (permissions on its `alternate-exchange`), under
    /// the same lock as the creation.
    pub fn exchange_declare(
        &self,
        name: &str,
        kind: &str,
        options: ExchangeDeclareOptions,
        check_new: impl FnOnce(&FieldTable) -> Result<(), AmqpError>,
    ) -> Result<(), AmqpError> {
        let ExchangeDeclareOptions {
            passive,
            durable,
            auto_delete,
            internal,
            arguments,
        } = options;
        let _t = lock(&self.topology);
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let existing = self.exchange(name);
        if passive {
            return existing.map(|_| ()).ok_or_else(|| self.no_exchange(name));
        }
        let Some(k) = ExchangeKind::parse(kind) else {
            return Err(AmqpError::command_invalid(format!(
                "invalid exchange type '{kind}'"
            )));
        };
        if let Some(x) = existing {
            let ineq = |arg: &str, got: &str, cur: &str| {
                Err(AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
                    self.name
                )))
            };
            if x.kind != k {
                return ineq("type", k.as_str(), x.kind.as_str());
            }
            if x.durable != durable {
                return ineq("durable", &durable.to_string(), &x.durable.to_string());
            }
            if x.auto_delete != auto_delete {
                return ineq(
                    "auto_delete",
                    &auto_delete.to_string(),
                    &x.auto_delete.to_string(),
                );
            }
            if x.internal != internal {
                return ineq("internal", &internal.to_string(), &x.internal.to_string());
            }
            // Of the arguments RabbitMQ compares only `alternate-exchange`.
            let key = "alternate-exchange";
            if let Some((got, cur)) = differing_argument(&arguments, &x.arguments, key) {
                let show = |v: Option<&AMQPValue>| {
                    v.map_or("none".to_string(), |v| {
                        format!(
                            "the value '{}' of type '{}'",
                            super::value_display(v),
                            super::value_type_name(v)
                        )
                    })
                };
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg '{key}' for exchange '{name}' in vhost '{}': received {} but current is {}",
                    self.name,
                    show(got),
                    show(cur)
                )));
            }
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        check_new(&arguments)?;
        let x = Arc::new(Exchange::new(
            name,
            k,
            durable,
            auto_delete,
            internal,
            arguments,
        ));
        write(&self.exchanges).insert(name.to_string(), x.clone());
        self.store_exchange(&x, None);
        Ok(())
    }

    /// `exchange.delete`.
    pub fn exchange_delete(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        let _t = lock(&self.topology);
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let Some(x) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && !read(&x.router).is_empty() {
            return Err(AmqpError::precondition(format!(
                "exchange '{}' in vhost '{}' in use",
                name, self.name
            )));
        }
        self.remove_exchange_locked(name);
        Ok(())
    }

    /// Deletes a removed exchange's record from the durable store, if it had one.
    fn unrecord_exchange(&self, name: &str) {
        if lock(&self.uids)
            .remove(&Destination::Exchange(name.to_string()))
            .is_some()
        {
            if let Some(p) = &self.store {
                p.delete(DefClass::EXCHANGE, &durable::entity_key(&self.name, name));
            }
        }
    }

    /// Removes every exchange's record from the durable store (its vhost is
    /// being deleted; the exchanges themselves go with the vhost).
    pub(crate) fn forget_stored_exchanges(&self) {
        let _t = lock(&self.topology);
        let names: Vec<String> = read(&self.exchanges).keys().cloned().collect();
        for name in names {
            self.remove_exchange_locked(&name);
        }
    }

    fn remove_exchange_locked(&self, name: &str) {
        let removed = write(&self.exchanges).remove(name);
        self.unrecord_exchange(name);
        if let Some(x) = removed {
            // Its bindings go with it: it no longer binds to anything.
            let dests = read(&x.router).destinations();
            let mut bound_by = lock(&self.bound_by);
            for d in dests {
                if let Some(sources) = bound_by.get_mut(&d) {
                    sources.remove(name);
                    if sources.is_empty() {
                        bound_by.remove(&d);
                    }
                }
            }
        }
        self.remove_destination_locked(&Destination::Exchange(name.to_string()));
    }

    /// Remove every binding to `dest`, deleting auto-delete exchanges left unbound,
    /// then the bindings to those, and so on. A work list rather than a recursion:
    /// a peer may chain auto-delete exchanges as long as it likes, and deleting the
    /// queue at the end of the chain must not take a stack frame per exchange.
    fn remove_destination_locked(&self, dest: &Destination) {
        let mut todo = vec![dest.clone()];
        while let Some(dest) = todo.pop() {
            let sources = lock(&self.bound_by).remove(&dest).unwrap_or_default();
            for name in sources {
                let Some(x) = self.exchange(&name) else {
                    continue;
                };
                let emptied = {
                    let mut r = write(&x.router);
                    r.remove_destination(&dest) > 0 && r.is_empty() && x.auto_delete
                };
                if emptied {
                    // Bound to nothing now, so nothing to drop from `bound_by`.
                    write(&self.exchanges).remove(&name);
                    self.unrecord_exchange(&name);
                    todo.push(Destination::Exchange(name));
                }
            }
        }
    }

    /// Bind `destination` to exchange `source` (queue.bind and exchange.bind).
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> Result<(), AmqpError> {
        let _t = lock(&self.topology);
        self.check_binding_ends(source, &destination, conn_id)?;
        let x = self
            .exchange(source)
            .ok_or_else(|| self.no_exchange(source))?;
        if x.kind == ExchangeKind::Headers {
            super::exchange::validate_binding(&arguments)?;
        }
        lock(&self.bound_by)
            .entry(destination.clone())
            .or_default()
            .insert(source.to_string());
        self.store_binding(source, &destination, routing_key, &arguments, true);
        write(&x.router).bind(Binding {
            destination,
            routing_key: routing_key.to_string(),
            arguments,
        });
        Ok(())
    }

    /// Records a binding (or its removal) when both its ends are kept in the store.
    fn store_binding(
        &self,
        source: &str,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
        bound: bool,
    ) {
        let Some(p) = &self.store else { return };
        let src = self.uid_of(&Destination::Exchange(source.to_string()));
        let (Some(src), Some(dst)) = (src, self.uid_of(destination)) else {
            return;
        };
        let key = self.binding_key(source, destination, routing_key, arguments);
        if bound {
            p.put(
                DefClass::BINDING,
                &key,
                &Enc::default().u64(src).u64(dst).done(),
            );
        } else {
            p.delete(DefClass::BINDING, &key);
        }
    }

    fn check_binding_ends(
        &self,
        source: &str,
        destination: &Destination,
        conn_id: u64,
    ) -> Result<(), AmqpError> {
        match destination {
            Destination::Queue(q) => {
                let q = self.queue_for(q, conn_id)?;
                if source.is_empty() {
                    return Err(AmqpError::access_refused(format!(
                        "operation not permitted on the default exchange (queue '{}')",
                        q.name
                    )));
                }
            }
            Destination::Exchange(d) => {
                if d.is_empty() || source.is_empty() {
                    return Err(Self::default_exchange_refused());
                }
                if self.exchange(d).is_none() {
                    return Err(self.no_exchange(d));
                }
            }
        }
        if self.exchange(source).is_none() {
            return Err(self.no_exchange(source));
        }
        Ok(())
    }

    /// Remove a binding (queue.unbind and exchange.unbind). As in RabbitMQ, a
    /// missing binding, source or destination is fine: there is nothing to remove.
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> Result<(), AmqpError> {
        let _t = lock(&self.topology);
        if let Err(e) = self.check_binding_ends(source, &destination, conn_id) {
            if e.code != super::error::codes::NOT_FOUND {
                return Err(e);
            }
        }
        let Some(x) = self.exchange(source) else {
            return Ok(());
        };
        self.store_binding(source, &destination, routing_key, &arguments, false);
        let now_empty = {
            let mut r = write(&x.router);
            r.unbind(&Binding {
                destination,
                routing_key: routing_key.to_string(),
                arguments,
            }) && r.is_empty()
        };
        if now_empty && x.auto_delete {
            self.remove_exchange_locked(source);
        }
        Ok(())
    }

    /// `queue.declare` with a final (non-empty) name. Returns the queue and its counts.
    /// `check_new` vets the arguments of a queue about to be created
    /// (permissions on its dead-letter exchange), under the creation's lock.
    pub fn queue_declare(
        &self,
        name: &str,
        options: QueueDeclareOptions,
        conn_id: u64,
        check_new: impl FnOnce(&FieldTable) -> Result<(), AmqpError>,
    ) -> Result<(Arc<Queue>, u32, u32), AmqpError> {
        let QueueDeclareOptions {
            passive,
            durable,
            exclusive,
            auto_delete,
            arguments,
        } = options;
        let _t = lock(&self.topology);
        if let Some(q) = self.queue(name) {
            self.check_exclusive(&q, conn_id)?;
            if !passive {
                let ineq = |arg: &str, got: &dyn std::fmt::Display, cur: &dyn std::fmt::Display| {
                    Err(AmqpError::precondition(format!(
                        "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received '{got}' but current is '{cur}'",
                        self.name
                    )))
                };
                if q.exclusive_owner.is_some() != exclusive {
                    return Err(AmqpError::resource_locked(format!(
                        "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It \
                         could be originally declared on another connection or the exclusive \
                         property value does not match that of the original declaration.",
                        name, self.name
                    )));
                }
                if q.durable != durable {
                    return ineq("durable", &durable, &q.durable);
                }
                if q.auto_delete != auto_delete {
                    return ineq("auto_delete", &auto_delete, &q.auto_delete);
                }
                for key in [
                    "x-message-ttl",
                    "x-expires",
                    "x-max-length",
                    "x-max-length-bytes",
                    "x-overflow",
                    "x-dead-letter-exchange",
                    "x-dead-letter-routing-key",
                    "x-max-priority",
                    "x-queue-type",
                ] {
                    if let Some((got, cur)) = differing_argument(&arguments, &q.arguments, key) {
                        let show = |v: Option<&AMQPValue>| {
                            v.map_or("none".to_string(), super::value_display)
                        };
                        return ineq(key, &show(got), &show(cur));
                    }
                }
            }
            if !passive {
                q.touch();
            }
            return Ok((q.clone(), q.message_count(), q.consumer_count()));
        }
        if passive {
            return Err(self.no_queue(name));
        }
        check_new(&arguments)?;
        let config = QueueConfig::parse(name, &self.name, &arguments)?;
        if config.quorum {
            // RabbitMQ's refusals of what a quorum queue cannot be.
            let bad = [
                (!durable, "non-durable"),
                (exclusive, "exclusive"),
                (auto_delete, "auto-delete"),
            ];
            if let Some((_, what)) = bad.iter().find(|(b, _)| *b) {
                return Err(AmqpError::precondition(format!(
                    "invalid property '{what}' for queue '{name}' in vhost '{}'",
                    self.name
                )));
            }
        }
        let q = Queue::new(
            name.to_string(),
            durable,
            exclusive.then_some(conn_id),
            auto_delete,
            arguments,
            config,
        );
        let q = Arc::new(self.store_queue(q, None));
        write(&self.queues).insert(name.to_string(), q.clone());
        Ok((q, 0, 0))
    }

    /// Links a queue declared durable (and not exclusive) to the store and
    /// records it; `uid` is its recovered uid at restore. Durable auto-delete
    /// queues too, as RabbitMQ recovers them: they go when their last
    /// consumer does, and until then a confirm of a persistent message in
    /// one means "on disk" like in any durable queue.
    fn store_queue(&self, q: Queue, uid: Option<u64>) -> Queue {
        let Some(p) = &self.store else { return q };
        if !q.durable || q.exclusive_owner.is_some() {
            return q;
        }
        let fresh = uid.is_none();
        let uid = uid.unwrap_or_else(|| p.new_uid());
        lock(&self.uids).insert(Destination::Queue(q.name.clone()), uid);
        if fresh {
            let value = Enc::default()
                .u64(uid)
                .bytes(&durable::encode_table(&q.arguments))
                .u8(u8::from(q.auto_delete))
                .done();
            p.put(
                DefClass::QUEUE,
                &durable::entity_key(&self.name, &q.name),
                &value,
            );
        }
        let quorum = q.config.quorum;
        q.with_store(QueueStore {
            persistence: p.clone(),
            uid,
            quorum,
        })
    }

    /// Restores a durable exchange from the store (nothing is written).
    pub(crate) fn restore_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
        uid: u64,
    ) {
        let _t = lock(&self.topology);
        let x = Exchange::new(
            name,
            kind,
            true,
            options.auto_delete,
            options.internal,
            options.arguments,
        );
        lock(&self.uids).insert(Destination::Exchange(name.to_string()), uid);
        write(&self.exchanges).insert(name.to_string(), Arc::new(x));
    }

    /// Restores a durable queue from the store (nothing is written).
    pub(crate) fn restore_queue(
        &self,
        name: &str,
        arguments: FieldTable,
        auto_delete: bool,
        uid: u64,
    ) -> Result<Arc<Queue>, AmqpError> {
        let _t = lock(&self.topology);
        let config = QueueConfig::parse(name, &self.name, &arguments)?;
        let q = Queue::new(name.to_string(), true, None, auto_delete, arguments, config);
        let q = Arc::new(self.store_queue(q, Some(uid)));
        write(&self.queues).insert(name.to_string(), q.clone());
        Ok(q)
    }

    /// Restores a binding whose ends still carry the uids it was made with;
    /// false (and nothing bound) otherwise.
    pub(crate) fn restore_binding(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        uids: (u64, u64),
    ) -> bool {
        let _t = lock(&self.topology);
        let src = self.uid_of(&Destination::Exchange(source.to_string()));
        if src != Some(uids.0) || self.uid_of(&destination) != Some(uids.1) {
            return false;
        }
        let Some(x) = self.exchange(source) else {
            return false;
        };
        lock(&self.bound_by)
            .entry(destination.clone())
            .or_default()
            .insert(source.to_string());
        write(&x.router).bind(Binding {
            destination,
            routing_key: routing_key.to_string(),
            arguments,
        });
        true
    }

    /// `queue.delete`: returns the number of messages dropped.
    pub fn queue_delete(
        &self,
        name: &str,
        options: QueueDeleteOptions,
        conn_id: u64,
    ) -> Result<u32, AmqpError> {
        self.queue_delete_checked(name, options, Some(conn_id))
    }

    /// [`queue_delete`](Self::queue_delete) by connection `conn_id`, or by
    /// an operator (`None`), who may delete exclusive queues too.
    pub(crate) fn queue_delete_checked(
        &self,
        name: &str,
        options: QueueDeleteOptions,
        conn_id: Option<u64>,
    ) -> Result<u32, AmqpError> {
        let QueueDeleteOptions {
            if_unused,
            if_empty,
        } = options;
        let q = {
            let _t = lock(&self.topology);
            let Some(q) = self.queue(name) else {
                return Ok(0);
            };
            if let Some(conn_id) = conn_id {
                self.check_exclusive(&q, conn_id)?;
            }
            if if_unused && q.has_consumers() {
                return Err(AmqpError::precondition(format!(
                    "queue '{}' in vhost '{}' in use",
                    name, self.name
                )));
            }
            if if_empty && q.message_count() > 0 {
                return Err(AmqpError::precondition(format!(
                    "queue '{}' in vhost '{}' is not empty",
                    name, self.name
                )));
            }
            q
        };
        Ok(self.delete_queue_internal(name, Some(&q)))
    }

    /// Delete a queue (if it is still the given instance): drop bindings, cancel consumers.
    pub(crate) fn delete_queue_internal(&self, name: &str, expected: Option<&Queue>) -> u32 {
        let (count, consumers) = {
            let _t = lock(&self.topology);
            let q = {
                let mut qs = write(&self.queues);
                match qs.get(name) {
                    Some(q) if expected.is_none_or(|e| std::ptr::eq(Arc::as_ptr(q), e)) => {}
                    _ => return 0,
                }
                match qs.remove(name) {
                    Some(q) => q,
                    None => return 0,
                }
            };
            let dest = Destination::Queue(name.to_string());
            if lock(&self.uids).remove(&dest).is_some() {
                if let Some(p) = &self.store {
                    p.delete(DefClass::QUEUE, &durable::entity_key(&self.name, name));
                }
            }
            self.remove_destination_locked(&dest);
            q.mark_deleted()
        };
        for c in consumers {
            c.cancelled();
        }
        count
    }

    /// Route a message and enqueue it on every matching queue.
    pub fn publish(&self, exchange: &str, msg: Arc<Message>) -> Result<RouteResult, AmqpError> {
        let queues = self.route(
            exchange,
            msg.routing_key.as_str(),
            msg.properties.headers().as_ref(),
        )?;
        let mut res = RouteResult::default();
        match durable::persist_routed(&msg, &queues) {
            Ok(d) => res.durable = d,
            Err(e) => {
                // Refused everywhere (a nack): the disk is full, or the store failed.
                tracing::warn!(error = %e, "durable store refused a persistent message");
                res.routed = queues.len();
                res.rejected = true;
                return Ok(res);
            }
        }
        let mut dead = DeadLetters::default();
        for q in &queues {
            if q.enqueue_into(msg.clone(), &mut dead) == EnqueueResult::Rejected {
                res.rejected = true;
            }
        }
        res.routed = queues.len();
        self.dead_letter(dead);
        Ok(res)
    }

    /// Resolve the set of queues a message goes to (deduplicated).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, AmqpError> {
        let mut out: Vec<Arc<Queue>> = Vec::new();
        if exchange.is_empty() {
            if let Some(q) = read(&self.queues).get(routing_key) {
                out.push(q.clone());
            }
            return Ok(out);
        }
        let exs = read(&self.exchanges);
        let x = exs
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        let qs = read(&self.queues);
        let mut visited: HashSet<&str> = HashSet::new();
        x.publish_in.fetch_add(1, Ordering::Relaxed);
        Self::route_into(&exs, &qs, x, routing_key, headers, &mut out, &mut visited);
        if out.is_empty() {
            if let Some(ae) = x.alternate_exchange() {
                if let Some(ax) = exs.get(&ae) {
                    Self::route_into(&exs, &qs, ax, routing_key, headers, &mut out, &mut visited);
                }
            }
        }
        if !out.is_empty() {
            x.publish_out.fetch_add(1, Ordering::Relaxed);
        }
        if out.len() > 1 {
            out.sort_by_key(|q| Arc::as_ptr(q) as usize);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        Ok(out)
    }

    /// Route through `x` and, by exchange-to-exchange bindings, the exchanges it
    /// reaches, each one once. A work list with a visited set rather than a
    /// recursion: a chain of exchanges as long as a peer likes needs no stack and
    /// no depth limit (RabbitMQ has none), and a wide fan costs one visit each.
    /// An exchange enters `visited` when it is queued, and `x` when it turns out to
    /// bind to an exchange, so the common publish to one exchange allocates nothing.
    fn route_into<'a>(
        exs: &'a HashMap<String, Arc<Exchange>>,
        qs: &HashMap<String, Arc<Queue>>,
        x: &'a Exchange,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<Queue>>,
        visited: &mut HashSet<&'a str>,
    ) {
        let mut todo: Vec<&'a Exchange> = Vec::new();
        let mut next = Some(x);
        while let Some(x) = next.take().or_else(|| todo.pop()) {
            let mut marked = false;
            // One router lock at a time: released before the next exchange's.
            read(&x.router).route(routing_key, headers, &mut |d| match d {
                Destination::Queue(n) => {
                    if let Some(q) = qs.get(n) {
                        out.push(q.clone());
                    }
                }
                Destination::Exchange(n) => {
                    if !marked {
                        visited.insert(x.name.as_str());
                        marked = true;
                    }
                    if let Some(dx) = exs.get(n) {
                        if visited.insert(dx.name.as_str()) {
                            todo.push(dx);
                        }
                    }
                }
            });
        }
    }

    /// Run an operation's dead letters (see [`super::dead_letter`]); what exceeds
    /// its budget waits in this vhost's backlog.
    pub(crate) fn dead_letter(&self, dead: DeadLetters) {
        if !dead.is_empty() {
            self.dead_letters.run(self, dead);
        }
    }

    /// Number of dead letters waiting in the backlog.
    #[cfg(test)]
    pub fn dead_letter_backlog(&self) -> usize {
        self.dead_letters.len()
    }

    /// Periodic housekeeping: TTL expiry and `x-expires`.
    pub fn sweep(&self, now: Instant) {
        let qs: Vec<Arc<Queue>> = read(&self.queues).values().cloned().collect();
        for q in qs {
            let (expired, dead) = q.sweep(now);
            self.dead_letter(dead);
            if expired {
                self.delete_queue_internal(&q.name, Some(&q));
            }
        }
        self.dead_letters.drain(self, SWEEP_BUDGET);
    }

    /// Delete the exclusive queues owned by a closing connection.
    pub fn connection_closed(&self, conn_id: u64) {
        let owned: Vec<Arc<Queue>> = read(&self.queues)
            .values()
            .filter(|q| q.exclusive_owner == Some(conn_id))
            .cloned()
            .collect();
        for q in owned {
            self.delete_queue_internal(&q.name, Some(&q));
        }
    }
}

impl Router for VHost {
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, AmqpError> {
        VHost::route(self, exchange, routing_key, headers)
    }
}

/// The received and current values of argument `key` when a redeclaration
/// would change it (RabbitMQ's "inequivalent arg"); `None` when they agree.
fn differing_argument<'a>(
    received: &'a FieldTable,
    current: &'a FieldTable,
    key: &str,
) -> Option<(Option<&'a AMQPValue>, Option<&'a AMQPValue>)> {
    let (got, cur) = (received.inner().get(key), current.inner().get(key));
    let same = match (got, cur) {
        (None, None) => true,
        (Some(a), Some(b)) => super::exchange::values_equal(a, b),
        _ => false,
    };
    (!same).then_some((got, cur))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::ShortString;
    use bytes::Bytes;

    use crate::core::queue::probe::Probe;

    fn long(n: i64) -> AMQPValue {
        AMQPValue::LongLongInt(n)
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.as_bytes().to_vec().into())
    }

    fn declare_queue(vh: &VHost, name: &str, args: &[(&str, AMQPValue)]) -> Arc<Queue> {
        let mut arguments = FieldTable::default();
        for (k, v) in args {
            arguments.insert((*k).into(), v.clone());
        }
        let options = QueueDeclareOptions {
            arguments,
            ..Default::default()
        };
        let (q, _, _) = vh
            .queue_declare(name, options, 1, |_| Ok(()))
            .expect("queue.declare");
        q
    }

    fn declare_exchange(vh: &VHost, name: &str, kind: &str, args: &[(&str, AMQPValue)]) {
        let mut arguments = FieldTable::default();
        for (k, v) in args {
            arguments.insert((*k).into(), v.clone());
        }
        let options = ExchangeDeclareOptions {
            arguments,
            ..Default::default()
        };
        vh.exchange_declare(name, kind, options, |_| Ok(()))
            .expect("exchange.declare");
    }

    fn bind(vh: &VHost, exchange: &str, queue: &str, key: &str) {
        vh.bind(
            exchange,
            Destination::Queue(queue.into()),
            key,
            FieldTable::default(),
            1,
        )
        .expect("queue.bind");
    }

    fn publish(vh: &VHost, exchange: &str, key: &str, body: &str) -> RouteResult {
        let msg = Arc::new(Message::new(
            ShortString::from(exchange.to_owned()),
            ShortString::from(key.to_owned()),
            BasicProperties::default(),
            Bytes::from(body.to_owned()),
        ));
        vh.publish(exchange, msg).expect("routable exchange")
    }

    /// The ready messages of `queue`, taken off it: (body, x-death reasons).
    fn drain(q: &Arc<Queue>) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        loop {
            let (m, _, dead) = q.get();
            assert!(dead.is_empty());
            let Some(m) = m else { return out };
            let reasons = m
                .msg
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-death").cloned())
                .map(|v| match v {
                    AMQPValue::FieldArray(a) => a
                        .as_slice()
                        .iter()
                        .filter_map(|e| match e {
                            AMQPValue::FieldTable(t) => t
                                .inner()
                                .get("reason")
                                .and_then(super::super::value_as_string),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                })
                .unwrap_or_default();
            out.push((String::from_utf8_lossy(&m.msg.body).into_owned(), reasons));
        }
    }

    #[test]
    fn the_default_exchange_routes_by_queue_name() {
        let vh = VHost::new("/");
        let q = declare_queue(&vh, "q", &[]);
        assert_eq!(publish(&vh, "", "q", "hit").routed, 1);
        assert_eq!(publish(&vh, "", "nowhere", "miss").routed, 0);
        assert_eq!(drain(&q), [("hit".to_string(), vec![])]);
        assert!(vh
            .publish(
                "missing",
                Arc::new(Message::new(
                    "missing".into(),
                    "".into(),
                    BasicProperties::default(),
                    Bytes::new(),
                ))
            )
            .is_err());
    }

    #[test]
    fn an_exchange_routes_to_each_bound_queue_once() {
        let vh = VHost::new("/");
        let (a, b) = (declare_queue(&vh, "a", &[]), declare_queue(&vh, "b", &[]));
        declare_exchange(&vh, "t", "topic", &[]);
        bind(&vh, "t", "a", "x.*");
        bind(&vh, "t", "a", "#");
        bind(&vh, "t", "b", "y.*");
        assert_eq!(publish(&vh, "t", "x.1", "one").routed, 1, "a once");
        assert_eq!(publish(&vh, "t", "y.1", "two").routed, 2);
        assert_eq!(drain(&a).len(), 2);
        assert_eq!(drain(&b).len(), 1);
    }

    #[test]
    fn unroutable_messages_take_the_alternate_exchange() {
        let vh = VHost::new("/");
        let spare = declare_queue(&vh, "spare", &[]);
        declare_exchange(&vh, "ae", "fanout", &[]);
        bind(&vh, "ae", "spare", "");
        declare_exchange(&vh, "x", "direct", &[("alternate-exchange", text("ae"))]);
        assert_eq!(publish(&vh, "x", "k", "lost").routed, 1);
        assert_eq!(drain(&spare), [("lost".to_string(), vec![])]);
    }

    #[test]
    fn the_vhost_runs_the_dead_letters_its_queues_return() {
        let vh = VHost::new("/");
        let dead = declare_queue(&vh, "dead", &[]);
        declare_exchange(&vh, "dlx", "fanout", &[]);
        bind(&vh, "dlx", "dead", "");
        let q = declare_queue(
            &vh,
            "q",
            &[
                ("x-max-length", long(1)),
                ("x-message-ttl", long(1_000)),
                ("x-dead-letter-exchange", text("dlx")),
            ],
        );
        publish(&vh, "", "q", "m0");
        publish(&vh, "", "q", "m1");
        assert_eq!(
            drain(&dead),
            [("m0".to_string(), vec!["maxlen".to_string()])]
        );
        vh.sweep(Instant::now() + Duration::from_secs(2));
        assert_eq!(q.message_count(), 0);
        assert_eq!(
            drain(&dead),
            [("m1".to_string(), vec!["expired".to_string()])]
        );
        assert_eq!(vh.dead_letter_backlog(), 0);
    }

    #[test]
    fn deleting_a_queue_cancels_its_subscribers() {
        let vh = VHost::new("/");
        let q = declare_queue(&vh, "q", &[]);
        let p = Probe::new(1);
        assert!(q.add_consumer(p.clone(), false).is_some());
        publish(&vh, "", "q", "m0");
        publish(&vh, "", "q", "m1");
        let dropped = vh
            .queue_delete("q", QueueDeleteOptions::default(), 1)
            .expect("queue.delete");
        assert_eq!(dropped, 1);
        assert!(p.was_cancelled());
        assert!(vh.queue("q").is_none());
    }

    #[test]
    fn queue_delete_if_unused_and_if_empty_refuse() {
        let vh = VHost::new("/");
        let q = declare_queue(&vh, "q", &[]);
        publish(&vh, "", "q", "m0");
        let if_empty = QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        };
        let e = vh.queue_delete("q", if_empty, 1).expect_err("not empty");
        assert_eq!(e.code, super::super::error::codes::PRECONDITION_FAILED);
        let p = Probe::new(1);
        assert!(q.add_consumer(p, false).is_some());
        let if_unused = QueueDeleteOptions {
            if_unused: true,
            ..Default::default()
        };
        let e = vh.queue_delete("q", if_unused, 1).expect_err("in use");
        assert_eq!(e.code, super::super::error::codes::PRECONDITION_FAILED);
        assert!(vh.queue("q").is_some());
    }

    #[test]
    fn exclusive_queues_belong_to_their_connection() {
        let vh = VHost::new("/");
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        vh.queue_declare("mine", exclusive.clone(), 7, |_| Ok(()))
            .expect("queue.declare");
        let e = vh.queue_for("mine", 8).expect_err("another connection");
        assert_eq!(e.code, super::super::error::codes::RESOURCE_LOCKED);
        assert!(vh.queue_for("mine", 7).is_ok());
        vh.connection_closed(8);
        assert!(vh.queue("mine").is_some());
        vh.connection_closed(7);
        assert!(vh.queue("mine").is_none());
    }

    #[test]
    fn redeclaring_with_other_arguments_is_refused() {
        let vh = VHost::new("/");
        declare_queue(&vh, "q", &[("x-max-length", long(1))]);
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), long(2));
        let options = QueueDeclareOptions {
            arguments,
            ..Default::default()
        };
        let e = vh
            .queue_declare("q", options, 1, |_| Ok(()))
            .expect_err("inequivalent");
        assert_eq!(e.code, super::super::error::codes::PRECONDITION_FAILED);
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let e = vh
            .queue_declare("nope", passive, 1, |_| Ok(()))
            .expect_err("missing");
        assert_eq!(e.code, super::super::error::codes::NOT_FOUND);
    }

    #[test]
    fn deleting_a_destination_finds_every_binding_to_it() {
        let vh = VHost::new("/");
        let declare = |x: &str| {
            vh.exchange_declare(x, "direct", ExchangeDeclareOptions::default(), |_| Ok(()))
                .expect("exchange.declare");
        };
        let bind = |x: &str, key: &str| {
            vh.bind(
                x,
                Destination::Queue("q".into()),
                key,
                FieldTable::default(),
                1,
            )
            .expect("queue.bind");
        };
        vh.queue_declare("q", QueueDeclareOptions::default(), 1, |_| Ok(()))
            .expect("queue.declare");
        declare("x");
        bind("x", "a");
        // Deleted and declared again under the same name, then bound anew.
        vh.exchange_delete("x", false).expect("exchange.delete");
        declare("x");
        bind("x", "b");
        // Unbound, bound again; and a binding from a predeclared exchange.
        vh.unbind(
            "x",
            Destination::Queue("q".into()),
            "b",
            FieldTable::default(),
            1,
        )
        .expect("queue.unbind");
        bind("x", "c");
        bind("amq.direct", "d");
        vh.queue_delete("q", QueueDeleteOptions::default(), 1)
            .expect("queue.delete");
        for x in ["x", "amq.direct"] {
            let x = vh.exchange(x).expect("still declared");
            assert!(read(&x.router).is_empty(), "'{}' still binds to q", x.name);
        }
        assert!(lock(&vh.bound_by).is_empty());
    }

    #[test]
    fn deleting_the_end_of_a_long_auto_delete_chain_needs_no_stack() {
        // Each exchange of the chain is auto-delete and bound only to the next, so
        // deleting the queue at its end deletes them all, one after the other. This
        // took two stack frames per exchange; run it on a 256 KiB stack.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                const N: usize = 2_000;
                let vh = VHost::new("/");
                let name = |i: usize| format!("x{i}");
                for i in 0..N {
                    vh.exchange_declare(
                        &name(i),
                        "fanout",
                        ExchangeDeclareOptions {
                            auto_delete: true,
                            ..Default::default()
                        },
                        |_| Ok(()),
                    )
                    .expect("exchange.declare");
                }
                vh.queue_declare("end", QueueDeclareOptions::default(), 1, |_| Ok(()))
                    .expect("queue.declare");
                for i in 1..N {
                    vh.bind(
                        &name(i - 1),
                        Destination::Exchange(name(i)),
                        "",
                        FieldTable::default(),
                        1,
                    )
                    .expect("exchange.bind");
                }
                vh.bind(
                    &name(N - 1),
                    Destination::Queue("end".into()),
                    "",
                    FieldTable::default(),
                    1,
                )
                .expect("queue.bind");
                vh.queue_delete("end", QueueDeleteOptions::default(), 1)
                    .expect("queue.delete");
                assert!((0..N).all(|i| vh.exchange(&name(i)).is_none()));
                assert!(vh.exchange("amq.direct").is_some());
            })
            .expect("spawn a small-stack thread")
            .join()
            .expect("the test thread panicked");
    }
}
