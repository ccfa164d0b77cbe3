//! The broker's core: virtual hosts, exchanges, queues, bindings, consumers,
//! deliveries and acknowledgements, as plain method calls. It knows nothing
//! of sockets or frames: the TCP server and the in-process transport both
//! drive it.
//!
//! Each virtual host keeps its state behind one short-held lock (never held
//! across an `.await`); deliveries leave it through each channel's
//! unbounded event queue, so no publisher ever waits on a slow consumer.

pub mod error;
pub mod exchange;
mod queue;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};

pub use error::{code, AmqpError, Scope};
use exchange::Exchange;
pub use exchange::{Binding, Destination, Kind};
use queue::{Consumer, Queue, QueueArgs};

/// A message as published: shared by every queue it was routed to.
#[derive(Debug)]
pub struct Content {
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: Vec<u8>,
}

/// A message in a queue (or delivered and not yet acknowledged).
#[derive(Debug, Clone)]
pub struct Message {
    /// What was published.
    pub content: Arc<Content>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    expires_at: Option<Instant>,
}

impl Message {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Identifies a channel: its connection and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey {
    /// The connection's id (from [`Core::next_connection_id`]).
    pub connection: u64,
    /// The channel number.
    pub channel: u16,
}

/// What the core pushes to a channel.
#[derive(Debug)]
pub enum Event {
    /// A message for one of the channel's consumers.
    Deliver {
        /// The consumer.
        consumer_tag: String,
        /// The channel's delivery tag.
        delivery_tag: u64,
        /// The message.
        message: Message,
    },
    /// The broker cancelled a consumer (its queue was deleted).
    Cancel {
        /// The consumer.
        consumer_tag: String,
    },
}

impl std::fmt::Debug for ChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelState")
            .field("unacked", &self.unacked.len())
            .field("consumers", &self.consumers)
            .finish_non_exhaustive()
    }
}

/// Where a channel's events go. Called under the virtual host's lock, in
/// order: it must only hand the event on (to a socket writer's queue, an
/// in-process consumer's channel), never block.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// The answer to `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclared {
    /// The queue's name (generated for an empty name).
    pub name: String,
    /// Messages ready.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// What became of a published message.
#[derive(Debug)]
pub enum Routed {
    /// At least one queue took it.
    Queued,
    /// No queue did: here it is back (properties, body).
    Unroutable(Box<BasicProperties>, Vec<u8>),
}

/// A message handed out by `basic.get`.
#[derive(Debug)]
pub struct Got {
    /// The channel's delivery tag.
    pub delivery_tag: u64,
    /// The message.
    pub message: Message,
    /// Messages left in the queue.
    pub message_count: u32,
}

/// `queue.declare` arguments.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts (recorded; this broker keeps nothing on disk).
    pub durable: bool,
    /// Owned by the declaring connection.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// `x-…` arguments.
    pub arguments: FieldTable,
}

/// `exchange.declare` arguments.
#[derive(Debug, Clone, Default)]
pub struct ExchangeOptions {
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restarts (recorded).
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable directly.
    pub internal: bool,
}

/// Users, virtual hosts and ids.
#[derive(Debug)]
pub struct Core {
    vhosts: HashMap<String, Arc<VHost>>,
    users: HashMap<String, String>,
    ids: AtomicU64,
}

impl Core {
    /// A core with these users (name → password) and virtual hosts (`/`
    /// always exists).
    pub fn new(
        users: HashMap<String, String>,
        vhosts: impl IntoIterator<Item = String>,
    ) -> Arc<Self> {
        let mut map = HashMap::new();
        for name in std::iter::once("/".to_owned()).chain(vhosts) {
            map.insert(name.clone(), Arc::new(VHost::new(name)));
        }
        Arc::new(Core {
            vhosts: map,
            users,
            ids: AtomicU64::new(1),
        })
    }

    /// Whether `user` may log in with `password`.
    pub fn authenticate(&self, user: &str, password: &str) -> bool {
        self.users.get(user).is_some_and(|p| p == password)
    }

    /// A virtual host.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Expires queues (`x-expires`) and messages (TTL) everywhere.
    pub fn sweep(&self) {
        let now = Instant::now();
        for vhost in self.vhosts.values() {
            vhost.sweep(now);
        }
    }
}

/// One virtual host.
pub struct VHost {
    name: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    channels: HashMap<ChannelKey, ChannelState>,
}

struct ChannelState {
    sink: EventSink,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// basic.qos with global=false: the limit of consumers created after it.
    consumer_prefetch: u16,
    /// basic.qos with global=true: the limit of the whole channel.
    channel_prefetch: u16,
    consumers: BTreeSet<String>,
    active: bool,
}

#[derive(Debug)]
struct Unacked {
    queue: String,
    consumer: Option<String>,
    message: Message,
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl VHost {
    fn new(name: String) -> Self {
        let mut exchanges = HashMap::new();
        for (name, kind) in [
            ("amq.direct", Kind::Direct),
            ("amq.fanout", Kind::Fanout),
            ("amq.topic", Kind::Topic),
            ("amq.headers", Kind::Headers),
            ("amq.match", Kind::Headers),
        ] {
            exchanges.insert(name.to_owned(), Exchange::new(kind, true, false, false));
        }
        VHost {
            name,
            state: Mutex::new(State {
                exchanges,
                ..State::default()
            }),
        }
    }

    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere
        // must not take the broker down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a channel and where its events go.
    pub fn open_channel(&self, key: ChannelKey, sink: EventSink) {
        self.lock().channels.insert(
            key,
            ChannelState {
                sink,
                next_tag: 1,
                unacked: BTreeMap::new(),
                consumer_prefetch: 0,
                channel_prefetch: 0,
                consumers: BTreeSet::new(),
                active: true,
            },
        );
    }

    /// Closes a channel: cancels its consumers and returns its unacknowledged
    /// messages to their queues, in order, marked redelivered.
    pub fn close_channel(&self, key: ChannelKey) {
        let mut state = self.lock();
        let Some(channel) = state.channels.remove(&key) else {
            return;
        };
        let mut touched = BTreeSet::new();
        for tag in &channel.consumers {
            if let Some(queue) = remove_consumer(&mut state, key, tag) {
                touched.insert(queue);
            }
        }
        requeue(&mut state, channel.unacked.into_values(), &mut touched);
        for queue in touched {
            after_consumer_change(&mut state, &queue);
            dispatch(&mut state, &queue);
        }
    }

    /// Closes every channel of a connection and deletes its exclusive queues.
    pub fn close_connection(&self, connection: u64) {
        let keys: Vec<ChannelKey> = self
            .lock()
            .channels
            .keys()
            .filter(|k| k.connection == connection)
            .copied()
            .collect();
        for key in keys {
            self.close_channel(key);
        }
        let mut state = self.lock();
        let exclusive: Vec<String> = state
            .queues
            .iter()
            .filter(|(_, q)| q.exclusive == Some(connection))
            .map(|(n, _)| n.clone())
            .collect();
        for name in exclusive {
            delete_queue(&mut state, &name);
        }
    }

    /// `exchange.declare`.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        options: &ExchangeOptions,
    ) -> Result<(), AmqpError> {
        let mut state = self.lock();
        if let Some(existing) = state.exchanges.get(name) {
            if options.passive {
                return Ok(());
            }
            let inequivalent = |what: &str,
                                received: &dyn std::fmt::Display,
                                current: &dyn std::fmt::Display| {
                AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    format!(
                        "inequivalent arg '{what}' for exchange '{name}' in vhost '{}': received '{received}' but current is '{current}'",
                        self.name
                    ),
                )
            };
            if existing.kind.name() != kind {
                return Err(inequivalent("type", &kind, &existing.kind.name()));
            }
            if existing.durable != options.durable {
                return Err(inequivalent("durable", &options.durable, &existing.durable));
            }
            if existing.auto_delete != options.auto_delete {
                return Err(inequivalent(
                    "auto_delete",
                    &options.auto_delete,
                    &existing.auto_delete,
                ));
            }
            if existing.internal != options.internal {
                return Err(inequivalent(
                    "internal",
                    &options.internal,
                    &existing.internal,
                ));
            }
            return Ok(());
        }
        if options.passive {
            return Err(self.no_exchange(name));
        }
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let Some(kind) = Kind::parse(kind) else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                format!("unknown exchange type '{kind}'"),
            ));
        };
        state.exchanges.insert(
            name.to_owned(),
            Exchange::new(kind, options.durable, options.auto_delete, options.internal),
        );
        Ok(())
    }

    /// `exchange.delete`.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        let mut state = self.lock();
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!("operation not permitted on exchange '{name}'"),
            ));
        }
        let Some(exchange) = state.exchanges.get(name) else {
            // RabbitMQ: deleting a missing exchange succeeds.
            return Ok(());
        };
        if if_unused && !exchange.bindings().is_empty() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("exchange '{name}' in vhost '{}' in use", self.name),
            ));
        }
        state.exchanges.remove(name);
        let gone = Destination::Exchange(name.to_owned());
        remove_bindings_to(&mut state, &gone);
        Ok(())
    }

    /// `queue.declare`. `owner` is the declaring connection.
    pub fn declare_queue(
        &self,
        owner: u64,
        name: &str,
        options: &QueueOptions,
    ) -> Result<QueueDeclared, AmqpError> {
        let mut state = self.lock();
        let name = if name.is_empty() && !options.passive {
            format!("amq.gen-{}", random_suffix())
        } else {
            name.to_owned()
        };
        if let Some(queue) = state.queues.get_mut(&name) {
            if let Some(other) = queue.exclusive.filter(|o| *o != owner) {
                let _ = other;
                return Err(self.locked(&name));
            }
            if !options.passive {
                let args = QueueArgs::parse(&options.arguments)
                    .map_err(|e| self.bad_argument(&name, e))?;
                let inequivalent = |what: &str| {
                    AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        format!(
                            "inequivalent arg '{what}' for queue '{name}' in vhost '{}'",
                            self.name
                        ),
                    )
                };
                if queue.durable != options.durable {
                    return Err(inequivalent("durable"));
                }
                if queue.exclusive.is_some() != options.exclusive {
                    return Err(inequivalent("exclusive"));
                }
                if queue.auto_delete != options.auto_delete {
                    return Err(inequivalent("auto_delete"));
                }
                if let Some(arg) = queue.args.differs(&args) {
                    return Err(inequivalent(arg));
                }
            }
            queue.touch();
            return Ok(QueueDeclared {
                name: name.clone(),
                message_count: queue.ready(),
                consumer_count: queue.consumers.len() as u32,
            });
        }
        if options.passive {
            return Err(self.no_queue(&name));
        }
        if name.starts_with("amq.") && !name.starts_with("amq.gen-") {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!("queue name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        let args = QueueArgs::parse(&options.arguments).map_err(|e| self.bad_argument(&name, e))?;
        let queue = Queue::new(
            options.durable,
            options.exclusive.then_some(owner),
            options.auto_delete,
            args,
        );
        state.queues.insert(name.clone(), queue);
        Ok(QueueDeclared {
            name,
            message_count: 0,
            consumer_count: 0,
        })
    }

    /// `queue.bind` (and, with an exchange destination, `exchange.bind`).
    pub fn bind(
        &self,
        owner: u64,
        source: &str,
        destination: Destination,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        let mut state = self.lock();
        self.check_destination(&state, owner, &destination)?;
        if source.is_empty() {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        let Some(exchange) = state.exchanges.get_mut(source) else {
            return Err(self.no_exchange(source));
        };
        exchange.bind(Binding {
            destination,
            key: key.to_owned(),
            arguments,
        });
        Ok(())
    }

    /// `queue.unbind` / `exchange.unbind`.
    pub fn unbind(
        &self,
        owner: u64,
        source: &str,
        destination: Destination,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let mut state = self.lock();
        self.check_destination(&state, owner, &destination)?;
        if source.is_empty() {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                "operation not permitted on the default exchange",
            ));
        }
        let Some(exchange) = state.exchanges.get_mut(source) else {
            return Err(self.no_exchange(source));
        };
        exchange.unbind_where(|b| {
            b.destination == destination && b.key == key && b.arguments == *arguments
        });
        let empty_auto_delete = exchange.auto_delete && exchange.bindings().is_empty();
        if empty_auto_delete {
            state.exchanges.remove(source);
        }
        Ok(())
    }

    fn check_destination(
        &self,
        state: &State,
        owner: u64,
        destination: &Destination,
    ) -> Result<(), AmqpError> {
        match destination {
            Destination::Queue(q) => match state.queues.get(q) {
                None => Err(self.no_queue(q)),
                Some(queue) if queue.exclusive.is_some_and(|o| o != owner) => Err(self.locked(q)),
                Some(_) => Ok(()),
            },
            Destination::Exchange(x) if !state.exchanges.contains_key(x) => {
                Err(self.no_exchange(x))
            }
            Destination::Exchange(_) => Ok(()),
        }
    }

    /// `queue.purge`: drops the ready messages; returns how many.
    pub fn purge_queue(&self, owner: u64, name: &str) -> Result<u32, AmqpError> {
        let mut state = self.lock();
        let queue = self.owned_queue(&mut state, owner, name)?;
        let count = queue.ready();
        queue.messages.clear();
        Ok(count)
    }

    /// `queue.delete`: returns the number of messages it held.
    pub fn delete_queue(
        &self,
        owner: u64,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, AmqpError> {
        let mut state = self.lock();
        let Some(queue) = state.queues.get(name) else {
            // RabbitMQ: deleting a missing queue succeeds with 0 messages.
            return Ok(0);
        };
        if queue.exclusive.is_some_and(|o| o != owner) {
            return Err(self.locked(name));
        }
        if if_unused && !queue.consumers.is_empty() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("queue '{name}' in vhost '{}' in use", self.name),
            ));
        }
        if if_empty && !queue.messages.is_empty() {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("queue '{name}' in vhost '{}' is not empty", self.name),
            ));
        }
        let count = queue.ready();
        delete_queue(&mut state, name);
        Ok(count)
    }

    /// `basic.publish`: routes and enqueues; an unroutable message comes
    /// back (for `mandatory`'s basic.return).
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Result<Routed, AmqpError> {
        let mut state = self.lock();
        let mut destinations = BTreeSet::new();
        if exchange.is_empty() {
            if state.queues.contains_key(routing_key) {
                destinations.insert(routing_key.to_owned());
            }
        } else {
            match state.exchanges.get(exchange) {
                None => return Err(self.no_exchange(exchange)),
                Some(x) if x.internal => {
                    return Err(AmqpError::channel(
                        code::ACCESS_REFUSED,
                        format!(
                            "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                            self.name
                        ),
                    ))
                }
                Some(_) => {}
            }
            route(
                &state,
                exchange,
                routing_key,
                properties.headers().as_ref(),
                &mut destinations,
            );
        }
        if destinations.is_empty() {
            return Ok(Routed::Unroutable(Box::new(properties), body));
        }
        let now = Instant::now();
        let per_message_ttl = properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok());
        let content = Arc::new(Content {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            properties,
            body,
        });
        for name in &destinations {
            if let Some(queue) = state.queues.get_mut(name) {
                let ttl = match (per_message_ttl, queue.args.message_ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                queue.messages.push_back(Message {
                    content: content.clone(),
                    redelivered: false,
                    expires_at: ttl.map(|ms| now + Duration::from_millis(ms)),
                });
            }
        }
        for name in &destinations {
            dispatch(&mut state, name);
        }
        Ok(Routed::Queued)
    }

    /// `basic.qos`.
    pub fn qos(&self, key: ChannelKey, prefetch_count: u16, global: bool) {
        let mut state = self.lock();
        if let Some(channel) = state.channels.get_mut(&key) {
            if global {
                channel.channel_prefetch = prefetch_count;
            } else {
                channel.consumer_prefetch = prefetch_count;
            }
        }
        let queues: Vec<String> = state.queues.keys().cloned().collect();
        for q in queues {
            dispatch(&mut state, &q);
        }
    }

    /// `basic.consume`: returns the consumer tag (generated for an empty one).
    /// Deliveries start at the next [`VHost::dispatch_queue`], so the caller
    /// can answer `consume-ok` before the first delivery.
    pub fn consume(
        &self,
        key: ChannelKey,
        queue: &str,
        tag: &str,
        no_ack: bool,
        exclusive: bool,
    ) -> Result<String, AmqpError> {
        let mut state = self.lock();
        let Some(channel) = state.channels.get(&key) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "channel is not open",
            ));
        };
        let tag = if tag.is_empty() {
            format!("amq.ctag-{}", random_suffix())
        } else {
            tag.to_owned()
        };
        if channel.consumers.contains(&tag) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let prefetch = channel.consumer_prefetch;
        let q = self.owned_queue(&mut state, key.connection, queue)?;
        if q.consumers.iter().any(|c| c.exclusive) || (exclusive && !q.consumers.is_empty()) {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!("queue '{queue}' in vhost '{}' in exclusive use", self.name),
            ));
        }
        q.consumers.push(Consumer {
            channel: key,
            tag: tag.clone(),
            no_ack,
            prefetch,
            unacked: 0,
            exclusive,
        });
        q.had_consumer = true;
        q.touch();
        if let Some(channel) = state.channels.get_mut(&key) {
            channel.consumers.insert(tag.clone());
        }
        Ok(tag)
    }

    /// Hands a queue's ready messages to its consumers.
    pub fn dispatch_queue(&self, queue: &str) {
        dispatch(&mut self.lock(), queue);
    }

    /// `basic.cancel`. Unknown tags are ignored, as RabbitMQ does.
    pub fn cancel(&self, key: ChannelKey, tag: &str) {
        let mut state = self.lock();
        if let Some(channel) = state.channels.get_mut(&key) {
            channel.consumers.remove(tag);
        }
        if let Some(queue) = remove_consumer(&mut state, key, tag) {
            after_consumer_change(&mut state, &queue);
        }
    }

    /// `basic.get`.
    pub fn get(
        &self,
        key: ChannelKey,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<Got>, AmqpError> {
        let mut state = self.lock();
        let now = Instant::now();
        let q = self.owned_queue(&mut state, key.connection, queue)?;
        q.touch();
        let message = loop {
            match q.messages.pop_front() {
                None => return Ok(None),
                Some(m) if m.expired(now) => continue,
                Some(m) => break m,
            }
        };
        let message_count = q.ready();
        let Some(channel) = state.channels.get_mut(&key) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "channel is not open",
            ));
        };
        let delivery_tag = channel.next_tag;
        channel.next_tag += 1;
        if !no_ack {
            channel.unacked.insert(
                delivery_tag,
                Unacked {
                    queue: queue.to_owned(),
                    consumer: None,
                    message: message.clone(),
                },
            );
        }
        Ok(Some(Got {
            delivery_tag,
            message,
            message_count,
        }))
    }

    /// `basic.ack`.
    pub fn ack(&self, key: ChannelKey, delivery_tag: u64, multiple: bool) -> Result<(), AmqpError> {
        self.settle(key, delivery_tag, multiple, None)
    }

    /// `basic.nack` / `basic.reject`: requeued (redelivered) or dropped.
    pub fn reject(
        &self,
        key: ChannelKey,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        self.settle(key, delivery_tag, multiple, Some(requeue))
    }

    fn settle(
        &self,
        key: ChannelKey,
        tag: u64,
        multiple: bool,
        reject: Option<bool>,
    ) -> Result<(), AmqpError> {
        let mut state = self.lock();
        let Some(channel) = state.channels.get_mut(&key) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "channel is not open",
            ));
        };
        let settled: Vec<Unacked> = if multiple {
            let tags: Vec<u64> = if tag == 0 {
                channel.unacked.keys().copied().collect()
            } else {
                channel.unacked.range(..=tag).map(|(t, _)| *t).collect()
            };
            if tag != 0 && tags.is_empty() {
                return Err(unknown_tag(tag));
            }
            tags.iter()
                .filter_map(|t| channel.unacked.remove(t))
                .collect()
        } else {
            match channel.unacked.remove(&tag) {
                Some(u) => vec![u],
                None => return Err(unknown_tag(tag)),
            }
        };
        let mut touched = BTreeSet::new();
        for u in &settled {
            credit(&mut state, key, u);
            touched.insert(u.queue.clone());
        }
        if reject == Some(true) {
            requeue(&mut state, settled, &mut touched);
        }
        for q in touched {
            dispatch(&mut state, &q);
        }
        Ok(())
    }

    /// `basic.recover`: every unacknowledged message goes back, redelivered.
    pub fn recover(&self, key: ChannelKey) {
        let mut state = self.lock();
        let Some(channel) = state.channels.get_mut(&key) else {
            return;
        };
        let unacked: Vec<Unacked> = std::mem::take(&mut channel.unacked).into_values().collect();
        let mut touched = BTreeSet::new();
        for u in &unacked {
            credit(&mut state, key, u);
        }
        requeue(&mut state, unacked, &mut touched);
        for q in touched {
            dispatch(&mut state, &q);
        }
    }

    /// `channel.flow`.
    pub fn flow(&self, key: ChannelKey, active: bool) {
        let mut state = self.lock();
        if let Some(channel) = state.channels.get_mut(&key) {
            channel.active = active;
        }
        if active {
            let queues: Vec<String> = state.queues.keys().cloned().collect();
            for q in queues {
                dispatch(&mut state, &q);
            }
        }
    }

    fn sweep(&self, now: Instant) {
        let mut state = self.lock();
        let expired: Vec<String> = state
            .queues
            .iter()
            .filter(|(_, q)| q.unused_since(now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            tracing::debug!(queue = %name, vhost = %self.name, "queue expired (x-expires)");
            delete_queue(&mut state, &name);
        }
        for queue in state.queues.values_mut() {
            queue.messages.retain(|m| !m.expired(now));
        }
    }

    /// Queue names, for tests and tools.
    pub fn queue_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().queues.keys().cloned().collect();
        names.sort();
        names
    }

    /// Exchange names, for tests and tools.
    pub fn exchange_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().exchanges.keys().cloned().collect();
        names.sort();
        names
    }

    fn owned_queue<'s>(
        &self,
        state: &'s mut State,
        owner: u64,
        name: &str,
    ) -> Result<&'s mut Queue, AmqpError> {
        match state.queues.get_mut(name) {
            None => Err(self.no_queue(name)),
            Some(q) if q.exclusive.is_some_and(|o| o != owner) => Err(self.locked(name)),
            Some(q) => Ok(q),
        }
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::channel(
            code::NOT_FOUND,
            format!("no queue '{name}' in vhost '{}'", self.name),
        )
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::channel(
            code::NOT_FOUND,
            format!("no exchange '{name}' in vhost '{}'", self.name),
        )
    }

    fn locked(&self, name: &str) -> AmqpError {
        AmqpError::channel(
            code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'",
                self.name
            ),
        )
    }

    fn bad_argument(&self, name: &str, e: String) -> AmqpError {
        AmqpError::channel(
            code::PRECONDITION_FAILED,
            format!(
                "invalid arg for queue '{name}' in vhost '{}': {e}",
                self.name
            ),
        )
    }
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!("unknown delivery tag {tag}"),
    )
}

/// Follows exchange-to-exchange bindings; each queue once.
fn route(
    state: &State,
    exchange: &str,
    key: &str,
    headers: Option<&FieldTable>,
    queues: &mut BTreeSet<String>,
) {
    let mut seen = BTreeSet::new();
    let mut pending = vec![exchange.to_owned()];
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(x) = state.exchanges.get(&name) else {
            continue;
        };
        let mut out = BTreeSet::new();
        x.route(key, headers, &mut out);
        for d in out {
            match d {
                Destination::Queue(q) => {
                    queues.insert(q);
                }
                Destination::Exchange(e) => pending.push(e),
            }
        }
    }
}

/// Gives back a consumer's credit for a settled delivery.
fn credit(state: &mut State, key: ChannelKey, unacked: &Unacked) {
    let Some(tag) = &unacked.consumer else { return };
    if let Some(q) = state.queues.get_mut(&unacked.queue) {
        if let Some(c) = q
            .consumers
            .iter_mut()
            .find(|c| c.channel == key && &c.tag == tag)
        {
            c.unacked = c.unacked.saturating_sub(1);
        }
    }
}

/// Puts messages back at the head of their queues, keeping their order.
fn requeue(
    state: &mut State,
    unacked: impl IntoIterator<Item = Unacked>,
    touched: &mut BTreeSet<String>,
) {
    let mut by_queue: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for u in unacked {
        by_queue.entry(u.queue).or_default().push(u.message);
    }
    for (name, messages) in by_queue {
        if let Some(q) = state.queues.get_mut(&name) {
            for mut m in messages.into_iter().rev() {
                m.redelivered = true;
                q.messages.push_front(m);
            }
            touched.insert(name);
        }
    }
}

fn remove_consumer(state: &mut State, key: ChannelKey, tag: &str) -> Option<String> {
    for (name, q) in state.queues.iter_mut() {
        if let Some(i) = q
            .consumers
            .iter()
            .position(|c| c.channel == key && c.tag == tag)
        {
            q.consumers.remove(i);
            q.touch();
            return Some(name.clone());
        }
    }
    None
}

/// Deletes an auto-delete queue whose last consumer went.
fn after_consumer_change(state: &mut State, queue: &str) {
    let delete = state
        .queues
        .get(queue)
        .is_some_and(|q| q.auto_delete && q.had_consumer && q.consumers.is_empty());
    if delete {
        delete_queue(state, queue);
    }
}

fn delete_queue(state: &mut State, name: &str) {
    let Some(queue) = state.queues.remove(name) else {
        return;
    };
    for consumer in queue.consumers {
        if let Some(channel) = state.channels.get_mut(&consumer.channel) {
            channel.consumers.remove(&consumer.tag);
            (channel.sink)(Event::Cancel {
                consumer_tag: consumer.tag,
            });
        }
    }
    remove_bindings_to(state, &Destination::Queue(name.to_owned()));
}

/// Removes every binding to `destination`, then auto-delete exchanges left
/// without bindings.
fn remove_bindings_to(state: &mut State, destination: &Destination) {
    let mut emptied = Vec::new();
    for (name, x) in state.exchanges.iter_mut() {
        if x.unbind_where(|b| b.destination == *destination) > 0
            && x.auto_delete
            && x.bindings().is_empty()
        {
            emptied.push(name.clone());
        }
    }
    for name in emptied {
        state.exchanges.remove(&name);
        remove_bindings_to(state, &Destination::Exchange(name));
    }
}

/// Hands ready messages to consumers with credit, round-robin.
fn dispatch(state: &mut State, queue_name: &str) {
    let State {
        queues, channels, ..
    } = state;
    let Some(queue) = queues.get_mut(queue_name) else {
        return;
    };
    if queue.consumers.is_empty() {
        return;
    }
    let now = Instant::now();
    while !queue.messages.is_empty() {
        let count = queue.consumers.len();
        let mut chosen = None;
        for step in 0..count {
            let i = (queue.next_consumer + step) % count;
            let c = &queue.consumers[i];
            let Some(channel) = channels.get(&c.channel) else {
                continue;
            };
            let consumer_ok = c.no_ack || c.prefetch == 0 || c.unacked < c.prefetch as u32;
            let channel_ok = c.no_ack
                || channel.channel_prefetch == 0
                || channel.unacked.len() < channel.channel_prefetch as usize;
            if channel.active && consumer_ok && channel_ok {
                chosen = Some(i);
                break;
            }
        }
        let Some(i) = chosen else { return };
        queue.next_consumer = (i + 1) % count;
        let Some(message) = queue.messages.pop_front() else {
            return;
        };
        if message.expired(now) {
            continue;
        }
        let consumer = &mut queue.consumers[i];
        let Some(channel) = channels.get_mut(&consumer.channel) else {
            continue;
        };
        let delivery_tag = channel.next_tag;
        channel.next_tag += 1;
        if !consumer.no_ack {
            consumer.unacked += 1;
            channel.unacked.insert(
                delivery_tag,
                Unacked {
                    queue: queue_name.to_owned(),
                    consumer: Some(consumer.tag.clone()),
                    message: message.clone(),
                },
            );
        }
        (channel.sink)(Event::Deliver {
            consumer_tag: consumer.tag.clone(),
            delivery_tag,
            message,
        });
    }
}

/// Reads an integer argument of any AMQP integer type.
pub(crate) fn int_arg(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(*v as i64),
        AMQPValue::ShortShortUInt(v) => Some(*v as i64),
        AMQPValue::ShortInt(v) => Some(*v as i64),
        AMQPValue::ShortUInt(v) => Some(*v as i64),
        AMQPValue::LongInt(v) => Some(*v as i64),
        AMQPValue::LongUInt(v) => Some(*v as i64),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}
