//! Point-in-time views of the broker's objects, for operators: what
//! `warren ctl list_*`, the management API and the definitions export show.
//!
//! Plain data, `Clone`, taken under each object's own lock one at a time (so
//! a listing is not one atomic picture of the broker, as in RabbitMQ). The
//! names follow RabbitMQ's `rabbitmqctl list_*` columns. Cumulative counters
//! (`published`, `delivered`, …) only grow: a rate is the difference between
//! two snapshots over the time between them.
//!
//! A leaf of the core (see the layers in [`super`]): the lower layers fill
//! these in, [`super::admin`] hands them out.

use std::time::SystemTime;

use amq_protocol::types::FieldTable;

/// A queue, as `rabbitmqctl list_queues` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSnapshot {
    /// The vhost it lives in.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Declared durable.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Owned by one connection ([`exclusive_owner`](Self::exclusive_owner)).
    pub exclusive: bool,
    /// The owning connection's name, for an exclusive queue whose owner is open.
    pub exclusive_owner: Option<String>,
    /// The declaration arguments.
    pub arguments: FieldTable,
    /// `classic` (warren's queues are all one kind; the `x-queue-type`
    /// argument, when given, is reported as declared).
    pub queue_type: String,
    /// Ready to be delivered.
    pub messages_ready: u64,
    /// Delivered and not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// `messages_ready + messages_unacknowledged`.
    pub messages: u64,
    /// Body bytes of the ready messages.
    pub message_bytes_ready: u64,
    /// Body bytes of the unacknowledged messages.
    pub message_bytes_unacknowledged: u64,
    /// `message_bytes_ready + message_bytes_unacknowledged`.
    pub message_bytes: u64,
    /// Subscribed consumers.
    pub consumers: u64,
    /// `running` (a deleted queue is no longer listed).
    pub state: String,
    /// Messages accepted into the queue, ever.
    pub published: u64,
    /// Messages handed to consumers or `basic.get`, ever (redeliveries included).
    pub delivered: u64,
    /// Deliveries acknowledged, ever.
    pub acked: u64,
    /// Deliveries of messages that had been delivered before, ever.
    pub redelivered: u64,
}

/// An exchange, as `rabbitmqctl list_exchanges` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeSnapshot {
    /// The vhost it lives in.
    pub vhost: String,
    /// Its name (`""` is the default exchange).
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub exchange_type: String,
    /// Declared durable.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Only other exchanges may publish to it.
    pub internal: bool,
    /// The declaration arguments.
    pub arguments: FieldTable,
    /// Messages published to it, ever (RabbitMQ's `publish_in`).
    pub publish_in: u64,
    /// Of those, the ones it routed to at least one queue (`publish_out`).
    pub publish_out: u64,
}

/// What a binding leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationType {
    /// A queue (`queue.bind`).
    Queue,
    /// An exchange (`exchange.bind`).
    Exchange,
}

impl DestinationType {
    /// RabbitMQ's name: `queue` or `exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queue => "queue",
            Self::Exchange => "exchange",
        }
    }
}

/// A binding, as `rabbitmqctl list_bindings` shows it. As in RabbitMQ, every
/// queue is also bound to the default exchange (`""`) by its name.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingSnapshot {
    /// The vhost it lives in.
    pub vhost: String,
    /// The exchange it binds from.
    pub source: String,
    /// The queue or exchange it binds to.
    pub destination: String,
    /// Whether [`destination`](Self::destination) is a queue or an exchange.
    pub destination_type: DestinationType,
    /// The binding key.
    pub routing_key: String,
    /// The binding arguments (a headers exchange's match; other exchange
    /// types keep none).
    pub arguments: FieldTable,
}

/// What the AMQP server records about a connection for operators
/// (connections opened in-process have none).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionInfo {
    /// RabbitMQ's name: `"127.0.0.1:5555 -> 127.0.0.1:5672"`.
    pub name: String,
    /// The client's address.
    pub peer_host: String,
    /// The client's port.
    pub peer_port: u16,
    /// The broker's address the client reached.
    pub host: String,
    /// The broker's port the client reached.
    pub port: u16,
    /// The client's `client_properties` (product, version, capabilities, …).
    pub client_properties: FieldTable,
    /// The negotiated largest frame, in bytes.
    pub frame_max: u32,
    /// The negotiated most channels.
    pub channel_max: u16,
    /// The negotiated heartbeat timeout, in seconds (0: none).
    pub timeout: u16,
    /// `AMQP 0-9-1`.
    pub protocol: String,
    /// The SASL mechanism the client logged in with.
    pub auth_mechanism: String,
    /// Whether the connection runs over TLS.
    pub ssl: bool,
    /// When the client connected.
    pub connected_at: SystemTime,
}

/// A connection, as `rabbitmqctl list_connections` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionSnapshot {
    /// The core's id of the connection (unique while the broker runs).
    pub id: u64,
    /// RabbitMQ's name (`"127.0.0.1:5555 -> 127.0.0.1:5672"`), or
    /// `"in-process <id>"` for a connection opened in-process.
    pub name: String,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it opened.
    pub vhost: String,
    /// The client's address (empty in-process).
    pub peer_host: String,
    /// The client's port (0 in-process).
    pub peer_port: u16,
    /// The broker's address the client reached (empty in-process).
    pub host: String,
    /// The broker's port the client reached (0 in-process).
    pub port: u16,
    /// Open channels.
    pub channels: u64,
    /// `running`.
    pub state: String,
    /// When the client connected.
    pub connected_at: SystemTime,
    /// The client's `client_properties`.
    pub client_properties: FieldTable,
    /// The negotiated largest frame, in bytes (0 in-process).
    pub frame_max: u32,
    /// The negotiated most channels (0 in-process).
    pub channel_max: u16,
    /// The negotiated heartbeat timeout, in seconds (0: none).
    pub timeout: u16,
    /// `AMQP 0-9-1`, or `in-process`.
    pub protocol: String,
    /// The SASL mechanism it logged in with (empty in-process).
    pub auth_mechanism: String,
    /// Whether it runs over TLS.
    pub ssl: bool,
}

/// A channel, as `rabbitmqctl list_channels` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelSnapshot {
    /// Its connection's id ([`ConnectionSnapshot::id`]).
    pub connection_id: u64,
    /// Its connection's name ([`ConnectionSnapshot::name`]).
    pub connection: String,
    /// RabbitMQ's name: `"<connection name> (<number>)"`.
    pub name: String,
    /// The channel number on its connection.
    pub number: u16,
    /// The user of its connection.
    pub user: String,
    /// The vhost of its connection.
    pub vhost: String,
    /// The per-consumer prefetch window new consumers get (`basic.qos`, 0: none).
    pub prefetch_count: u32,
    /// The channel-wide prefetch window (`basic.qos` global, 0: none).
    pub global_prefetch_count: u32,
    /// Deliveries not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Its consumers.
    pub consumer_count: u64,
    /// In confirm mode.
    pub confirm: bool,
    /// In a transaction (`tx.select`).
    pub transactional: bool,
}

/// A consumer, as `rabbitmqctl list_consumers` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerSnapshot {
    /// The vhost of its queue.
    pub vhost: String,
    /// The queue it consumes from.
    pub queue: String,
    /// Its channel's name ([`ChannelSnapshot::name`]).
    pub channel: String,
    /// Its connection's id.
    pub connection_id: u64,
    /// Its channel's number.
    pub channel_number: u16,
    /// The consumer tag.
    pub consumer_tag: String,
    /// Deliveries must be acknowledged (not `no_ack`).
    pub ack_required: bool,
    /// An exclusive consumer.
    pub exclusive: bool,
    /// Its own prefetch window (0: none).
    pub prefetch_count: u32,
    /// `basic.consume`'s arguments.
    pub arguments: FieldTable,
    /// `true`: warren does not suspend consumers (RabbitMQ's `active`).
    pub active: bool,
}

/// A user, as `rabbitmqctl list_users` and the definitions show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSnapshot {
    /// The user name.
    pub name: String,
    /// The salted hash, base64, as RabbitMQ's definitions carry it.
    pub password_hash: String,
    /// `rabbit_password_hashing_sha256`.
    pub hashing_algorithm: String,
    /// Tags (`administrator`, `monitoring`, `management`, …), in the order set.
    pub tags: Vec<String>,
}

/// A vhost, as `rabbitmqctl list_vhosts` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostSnapshot {
    /// Its name.
    pub name: String,
    /// Its queues.
    pub queues: u64,
    /// Its exchanges (the predeclared ones included).
    pub exchanges: u64,
}

/// One user's permissions on one vhost, as `rabbitmqctl list_permissions` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionSnapshot {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: String,
    /// The configure pattern.
    pub configure: String,
    /// The write pattern.
    pub write: String,
    /// The read pattern.
    pub read: String,
}
