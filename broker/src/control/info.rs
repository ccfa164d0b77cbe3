//! The columns of `warren ctl list_*`: RabbitMQ's info keys (the ones
//! warren has), the defaults `rabbitmqctl` shows, and each object's row of
//! values formatted as `rabbitmqctl` prints them.

use serde_json::{Map, Value};

use super::format;
use crate::core::admin::{
    BindingSnapshot, ChannelSnapshot, ConnectionSnapshot, ConsumerSnapshot, ExchangeSnapshot,
    PermissionSnapshot, QueueSnapshot, UserSnapshot, VhostSnapshot,
};

/// What can be listed, with its info keys and default columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// `list_queues`.
    Queues,
    /// `list_exchanges`.
    Exchanges,
    /// `list_bindings`.
    Bindings,
    /// `list_connections`.
    Connections,
    /// `list_channels`.
    Channels,
    /// `list_consumers`.
    Consumers,
    /// `list_users`.
    Users,
    /// `list_vhosts`.
    Vhosts,
    /// `list_permissions`.
    Permissions,
}

impl Listing {
    /// The listing of a `list_*` command.
    pub fn of_command(command: &str) -> Option<Self> {
        Some(match command {
            "list_queues" => Self::Queues,
            "list_exchanges" => Self::Exchanges,
            "list_bindings" => Self::Bindings,
            "list_connections" => Self::Connections,
            "list_channels" => Self::Channels,
            "list_consumers" => Self::Consumers,
            "list_users" => Self::Users,
            "list_vhosts" => Self::Vhosts,
            "list_permissions" => Self::Permissions,
            _ => return None,
        })
    }

    /// The info keys warren can show (a subset of RabbitMQ's).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Queues => &[
                "arguments",
                "auto_delete",
                "consumers",
                "durable",
                "exclusive",
                "message_bytes",
                "message_bytes_ready",
                "message_bytes_unacknowledged",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
                "name",
                "owner_pid",
                "pid",
                "policy",
                "state",
                "type",
            ],
            Self::Exchanges => &[
                "arguments",
                "auto_delete",
                "durable",
                "internal",
                "name",
                "policy",
                "type",
            ],
            Self::Bindings => &[
                "arguments",
                "destination_kind",
                "destination_name",
                "routing_key",
                "source_kind",
                "source_name",
            ],
            Self::Connections => &[
                "auth_mechanism",
                "channel_max",
                "channels",
                "client_properties",
                "connected_at",
                "frame_max",
                "host",
                "name",
                "peer_host",
                "peer_port",
                "pid",
                "port",
                "protocol",
                "ssl",
                "state",
                "timeout",
                "user",
                "vhost",
            ],
            Self::Channels => &[
                "confirm",
                "connection",
                "consumer_count",
                "global_prefetch_count",
                "messages_unacknowledged",
                "messages_unconfirmed",
                "name",
                "number",
                "pid",
                "prefetch_count",
                "transactional",
                "user",
                "vhost",
            ],
            Self::Consumers => &[
                "ack_required",
                "active",
                "activity_status",
                "arguments",
                "channel_pid",
                "consumer_tag",
                "prefetch_count",
                "queue_name",
            ],
            Self::Users => &["tags", "user"],
            Self::Vhosts => &["name", "tracing", "description", "tags"],
            Self::Permissions => &["configure", "read", "user", "write"],
        }
    }

    /// The columns `rabbitmqctl` shows when none are given.
    pub fn default_columns(self) -> &'static [&'static str] {
        match self {
            Self::Queues => &["name", "messages"],
            Self::Exchanges => &["name", "type"],
            Self::Bindings => &[
                "source_name",
                "source_kind",
                "destination_name",
                "destination_kind",
                "routing_key",
                "arguments",
            ],
            Self::Connections => &["user", "peer_host", "peer_port", "state"],
            Self::Channels => &["pid", "user", "consumer_count", "messages_unacknowledged"],
            Self::Consumers => &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "arguments",
            ],
            Self::Users => &["user", "tags"],
            Self::Vhosts => &["name"],
            Self::Permissions => &["user", "configure", "write", "read"],
        }
    }

    /// Whether it lists one vhost's objects (`-p VHOST`).
    pub fn per_vhost(self) -> bool {
        matches!(
            self,
            Self::Queues | Self::Exchanges | Self::Bindings | Self::Consumers | Self::Permissions
        )
    }
}

/// A row: info key → value as printed.
pub type Row = Map<String, Value>;

fn row<const N: usize>(cells: [(&str, String); N]) -> Row {
    cells
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect()
}

/// A channel's stand-in for RabbitMQ's Erlang pid: `<warren.CONN.CHANNEL.0>`.
fn channel_pid(connection: u64, number: u16) -> String {
    format!("<warren.{connection}.{number}.0>")
}

/// A connection's stand-in for RabbitMQ's Erlang pid: `<warren.CONN.0.0>`.
fn connection_pid(connection: u64) -> String {
    format!("<warren.{connection}.0.0>")
}

/// A queue's row.
pub fn queue(q: &QueueSnapshot) -> Row {
    row([
        ("arguments", format::table(&q.arguments)),
        ("auto_delete", format::boolean(q.auto_delete)),
        ("consumers", q.consumers.to_string()),
        ("durable", format::boolean(q.durable)),
        ("exclusive", format::boolean(q.exclusive)),
        ("message_bytes", q.message_bytes.to_string()),
        ("message_bytes_ready", q.message_bytes_ready.to_string()),
        (
            "message_bytes_unacknowledged",
            q.message_bytes_unacknowledged.to_string(),
        ),
        ("messages", q.messages.to_string()),
        ("messages_ready", q.messages_ready.to_string()),
        (
            "messages_unacknowledged",
            q.messages_unacknowledged.to_string(),
        ),
        ("name", q.name.clone()),
        ("owner_pid", q.exclusive_owner.clone().unwrap_or_default()),
        ("pid", format!("<warren.queue.{}>", q.name)),
        ("policy", String::new()),
        ("state", q.state.clone()),
        ("type", q.queue_type.clone()),
    ])
}

/// An exchange's row.
pub fn exchange(x: &ExchangeSnapshot) -> Row {
    row([
        ("arguments", format::table(&x.arguments)),
        ("auto_delete", format::boolean(x.auto_delete)),
        ("durable", format::boolean(x.durable)),
        ("internal", format::boolean(x.internal)),
        ("name", x.name.clone()),
        ("policy", String::new()),
        ("type", x.exchange_type.clone()),
    ])
}

/// A binding's row.
pub fn binding(b: &BindingSnapshot) -> Row {
    row([
        ("arguments", format::table(&b.arguments)),
        ("destination_kind", b.destination_type.as_str().to_owned()),
        ("destination_name", b.destination.clone()),
        ("routing_key", b.routing_key.clone()),
        ("source_kind", "exchange".to_owned()),
        ("source_name", b.source.clone()),
    ])
}

/// A connection's row.
pub fn connection(c: &ConnectionSnapshot) -> Row {
    row([
        ("auth_mechanism", c.auth_mechanism.clone()),
        ("channel_max", c.channel_max.to_string()),
        ("channels", c.channels.to_string()),
        ("client_properties", format::table(&c.client_properties)),
        ("connected_at", format::epoch_ms(c.connected_at)),
        ("frame_max", c.frame_max.to_string()),
        ("host", c.host.clone()),
        ("name", c.name.clone()),
        ("peer_host", c.peer_host.clone()),
        ("peer_port", c.peer_port.to_string()),
        ("pid", connection_pid(c.id)),
        ("port", c.port.to_string()),
        ("protocol", format::protocol(&c.protocol)),
        ("ssl", format::boolean(c.ssl)),
        ("state", c.state.clone()),
        ("timeout", c.timeout.to_string()),
        ("user", c.user.clone()),
        ("vhost", c.vhost.clone()),
    ])
}

/// A channel's row.
pub fn channel(c: &ChannelSnapshot) -> Row {
    row([
        ("confirm", format::boolean(c.confirm)),
        ("connection", connection_pid(c.connection_id)),
        ("consumer_count", c.consumer_count.to_string()),
        ("global_prefetch_count", c.global_prefetch_count.to_string()),
        (
            "messages_unacknowledged",
            c.messages_unacknowledged.to_string(),
        ),
        ("messages_unconfirmed", "0".to_owned()),
        ("name", c.name.clone()),
        ("number", c.number.to_string()),
        ("pid", channel_pid(c.connection_id, c.number)),
        ("prefetch_count", c.prefetch_count.to_string()),
        ("transactional", format::boolean(c.transactional)),
        ("user", c.user.clone()),
        ("vhost", c.vhost.clone()),
    ])
}

/// A consumer's row.
pub fn consumer(c: &ConsumerSnapshot) -> Row {
    row([
        ("ack_required", format::boolean(c.ack_required)),
        ("active", format::boolean(c.active)),
        ("activity_status", "up".to_owned()),
        ("arguments", format::table(&c.arguments)),
        (
            "channel_pid",
            channel_pid(c.connection_id, c.channel_number),
        ),
        ("consumer_tag", c.consumer_tag.clone()),
        ("prefetch_count", c.prefetch_count.to_string()),
        ("queue_name", c.queue.clone()),
    ])
}

/// A user's row.
pub fn user(u: &UserSnapshot) -> Row {
    row([("tags", format::tags(&u.tags)), ("user", u.name.clone())])
}

/// A vhost's row.
pub fn vhost(v: &VhostSnapshot) -> Row {
    row([
        ("name", v.name.clone()),
        ("tracing", "false".to_owned()),
        ("description", String::new()),
        ("tags", String::new()),
    ])
}

/// A permission's row (`list_permissions` shows its user,
/// `list_user_permissions` its vhost).
pub fn permission(p: &PermissionSnapshot) -> Row {
    row([
        ("configure", p.configure.clone()),
        ("read", p.read.clone()),
        ("user", p.user.clone()),
        ("vhost", p.vhost.clone()),
        ("write", p.write.clone()),
    ])
}
