//! The broker's snapshots as the JSON objects RabbitMQ's management API
//! returns: its field names, its nesting (`message_stats`,
//! `*_details.rate`, `connection_details`), its defaults for what warren
//! does not have (policies, nodes' internals).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::convert::table_to_json;
use super::rates::{ExchangeRates, QueueRates};
use crate::core::admin::{
    BindingSnapshot, ChannelSnapshot, ConnectionSnapshot, ConsumerSnapshot, ExchangeSnapshot,
    PermissionSnapshot, QueueSnapshot, UserSnapshot, VhostSnapshot,
};

/// `{"rate": r}`.
pub(crate) fn details(rate: f64) -> Value {
    json!({ "rate": (rate * 10.0).round() / 10.0 })
}

/// Milliseconds since the Unix epoch.
pub(crate) fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A queue, with its rates.
pub(crate) fn queue(q: &QueueSnapshot, rates: &QueueRates, node: &str) -> Value {
    json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive,
        "owner_pid_details": q.exclusive_owner.as_ref().map(|name| json!({"name": name})),
        "arguments": table_to_json(&q.arguments),
        "type": q.queue_type,
        "node": node,
        "state": q.state,
        "policy": null,
        "operator_policy": null,
        "effective_policy_definition": {},
        "exclusive_consumer_tag": null,
        "single_active_consumer_tag": null,
        "consumers": q.consumers,
        "consumer_capacity": if q.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if q.consumers > 0 { 1.0 } else { 0.0 },
        "messages": q.messages,
        "messages_details": details(rates.messages),
        "messages_ready": q.messages_ready,
        "messages_ready_details": details(rates.ready),
        "messages_unacknowledged": q.messages_unacknowledged,
        "messages_unacknowledged_details": details(rates.unacked),
        "message_bytes": q.message_bytes,
        "message_bytes_ready": q.message_bytes_ready,
        "message_bytes_unacknowledged": q.message_bytes_unacknowledged,
        "message_stats": {
            "publish": q.published,
            "publish_details": details(rates.published),
            "deliver_get": q.delivered,
            "deliver_get_details": details(rates.delivered),
            "ack": q.acked,
            "ack_details": details(rates.acked),
            "redeliver": q.redelivered,
            "redeliver_details": details(rates.redelivered),
        },
    })
}

/// An exchange, with its rates.
pub(crate) fn exchange(x: &ExchangeSnapshot, rates: &ExchangeRates) -> Value {
    json!({
        "name": x.name,
        "vhost": x.vhost,
        "type": x.exchange_type,
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "rmq-internal",
        "policy": null,
        "message_stats": {
            "publish_in": x.publish_in,
            "publish_in_details": details(rates.publish_in),
            "publish_out": x.publish_out,
            "publish_out_details": details(rates.publish_out),
        },
    })
}

/// A binding's `properties_key`, which names it in the API's paths: `~`
/// for an empty routing key without arguments, else the routing key
/// (percent-encoded), with a hash of the arguments when it has some.
pub(crate) fn properties_key(routing_key: &str, arguments: &Value) -> String {
    let mut key = if routing_key.is_empty() {
        "~".to_owned()
    } else {
        percent_encode(routing_key)
    };
    if arguments.as_object().is_some_and(|a| !a.is_empty()) {
        // A stable, short digest of the arguments (RabbitMQ's is a hash of
        // its term; clients only ever echo the key back).
        let text = arguments.to_string();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        if routing_key.is_empty() {
            key.clear();
        }
        key.push_str(&format!("~{hash:016x}"));
    }
    key
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A binding.
pub(crate) fn binding(b: &BindingSnapshot) -> Value {
    let arguments = table_to_json(&b.arguments);
    json!({
        "source": b.source,
        "vhost": b.vhost,
        "destination": b.destination,
        "destination_type": b.destination_type.as_str(),
        "routing_key": b.routing_key,
        "arguments": arguments,
        "properties_key": properties_key(&b.routing_key, &arguments),
    })
}

/// A connection.
pub(crate) fn connection(c: &ConnectionSnapshot, node: &str) -> Value {
    json!({
        "name": c.name,
        "node": node,
        "type": if c.peer_port == 0 { "direct" } else { "network" },
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "host": c.host,
        "port": c.port,
        "peer_host": c.peer_host,
        "peer_port": c.peer_port,
        "channels": c.channels,
        "channel_max": c.channel_max,
        "frame_max": c.frame_max,
        "timeout": c.timeout,
        "state": c.state,
        "protocol": c.protocol,
        "auth_mechanism": c.auth_mechanism,
        "ssl": c.ssl,
        "connected_at": epoch_ms(c.connected_at),
        "client_properties": table_to_json(&c.client_properties),
    })
}

/// A channel.
pub(crate) fn channel(c: &ChannelSnapshot, peer: Option<&ConnectionSnapshot>, node: &str) -> Value {
    json!({
        "name": c.name,
        "node": node,
        "number": c.number,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "state": "running",
        "connection_details": {
            "name": c.connection,
            "peer_host": peer.map_or("", |p| p.peer_host.as_str()),
            "peer_port": peer.map_or(0, |p| p.peer_port),
        },
        "prefetch_count": c.prefetch_count,
        "global_prefetch_count": c.global_prefetch_count,
        "messages_unacknowledged": c.messages_unacknowledged,
        "consumer_count": c.consumer_count,
        "confirm": c.confirm,
        "transactional": c.transactional,
    })
}

/// A consumer.
pub(crate) fn consumer(
    c: &ConsumerSnapshot,
    peer: Option<&ConnectionSnapshot>,
    node: &str,
) -> Value {
    json!({
        "consumer_tag": c.consumer_tag,
        "queue": {"name": c.queue, "vhost": c.vhost},
        "channel_details": {
            "name": c.channel,
            "number": c.channel_number,
            "connection_name": peer.map_or("", |p| p.name.as_str()),
            "peer_host": peer.map_or("", |p| p.peer_host.as_str()),
            "peer_port": peer.map_or(0, |p| p.peer_port),
            "user": peer.map_or("", |p| p.user.as_str()),
            "node": node,
        },
        "ack_required": c.ack_required,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch_count,
        "arguments": table_to_json(&c.arguments),
        "active": c.active,
        "activity_status": if c.active { "up" } else { "waiting" },
    })
}

/// A user.
pub(crate) fn user(u: &UserSnapshot) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": {},
    })
}

/// A vhost, with its queues' message totals.
pub(crate) fn vhost(v: &VhostSnapshot, totals: (u64, u64, u64), node: &str) -> Value {
    let (messages, ready, unacked) = totals;
    json!({
        "name": v.name,
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "default_queue_type": "classic",
        "tracing": false,
        "cluster_state": {node: "running"},
        "messages": messages,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

/// A permission.
pub(crate) fn permission(p: &PermissionSnapshot) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_are_rabbitmqs_for_plain_bindings() {
        assert_eq!(properties_key("", &json!({})), "~");
        assert_eq!(properties_key("a.b", &json!({})), "a.b");
        assert_eq!(properties_key("a b/c", &json!({})), "a%20b%2Fc");
        let with_args = properties_key("k", &json!({"x-match": "all"}));
        assert!(with_args.starts_with("k~"), "{with_args}");
        assert_ne!(with_args, properties_key("k", &json!({"x-match": "any"})));
    }
}
