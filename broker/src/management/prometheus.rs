//! `/metrics`: the broker's metrics in Prometheus' text format, under the
//! names of RabbitMQ's `rabbitmq_prometheus` plugin so existing dashboards
//! and alerts work (aggregated over objects, as its `/metrics`; per queue
//! at `/metrics/per-object`), followed by whatever the embedding process
//! adds (warren's RPC metrics in `warren broker`).

use std::fmt::Write as _;

use super::Shared;
use crate::core::admin::QueueSnapshot;

/// The process's resident memory in bytes, where the system tells.
pub(crate) fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

/// A queue metric: its name, its help, how to read it off a snapshot.
type QueueMetric = (&'static str, &'static str, fn(&QueueSnapshot) -> u64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as Prometheus' text format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The broker's metrics; with `per_object`, queue metrics per queue
/// (labels `vhost` and `queue`) instead of summed.
pub(crate) fn render(s: &Shared, per_object: bool) -> String {
    let mut out = String::new();
    let core = &s.core;
    let queues = core.list_queues(None).unwrap_or_default();
    let exchanges = core.list_exchanges(None).unwrap_or_default();
    let connections = core.list_connections();
    let channels = core.list_channels();
    let consumers = core.list_consumers(None).unwrap_or_default();
    family(
        &mut out,
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    let _ = writeln!(
        out,
        "rabbitmq_identity_info{{rabbitmq_node=\"{0}\",rabbitmq_cluster=\"{0}\",rabbitmq_cluster_permanent_id=\"{0}\"}} 1",
        escape(&s.node)
    );
    family(
        &mut out,
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    let _ = writeln!(
        out,
        "rabbitmq_build_info{{rabbitmq_version=\"{}\",prometheus_plugin_version=\"{}\",erlang_version=\"none\",product=\"warren\",product_version=\"{}\"}} 1",
        super::RABBITMQ_VERSION,
        super::RABBITMQ_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    one(
        &mut out,
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        connections.len() as u64,
    );
    one(
        &mut out,
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels.len() as u64,
    );
    one(
        &mut out,
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers.len() as u64,
    );
    one(
        &mut out,
        "rabbitmq_queues",
        "gauge",
        "Queues available",
        queues.len() as u64,
    );
    one(
        &mut out,
        "warren_exchanges",
        "gauge",
        "Exchanges available",
        exchanges.len() as u64,
    );
    let gauges: [QueueMetric; 5] = [
        (
            "rabbitmq_queue_messages_ready",
            "Messages ready to be delivered to consumers",
            |q| q.messages_ready,
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.messages_unacknowledged,
        ),
        (
            "rabbitmq_queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
            |q| q.messages,
        ),
        (
            "rabbitmq_queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
            |q| q.message_bytes,
        ),
        ("rabbitmq_queue_consumers", "Consumers on a queue", |q| {
            q.consumers
        }),
    ];
    let counters: [QueueMetric; 4] = [
        (
            "rabbitmq_queue_messages_published_total",
            "Total number of messages published to queues",
            |q| q.published,
        ),
        (
            "warren_queue_messages_delivered_total",
            "Total number of messages delivered from queues to consumers",
            |q| q.delivered,
        ),
        (
            "warren_queue_messages_acked_total",
            "Total number of messages acknowledged by consumers on queues",
            |q| q.acked,
        ),
        (
            "warren_queue_messages_redelivered_total",
            "Total number of messages redelivered from queues to consumers",
            |q| q.redelivered,
        ),
    ];
    for (names, kind) in [(&gauges[..], "gauge"), (&counters[..], "counter")] {
        for (name, help, get) in names {
            family(&mut out, name, kind, help);
            if per_object {
                for q in &queues {
                    let _ = writeln!(
                        out,
                        "{name}{{vhost=\"{}\",queue=\"{}\"}} {}",
                        escape(&q.vhost),
                        escape(&q.name),
                        get(q)
                    );
                }
            } else {
                let _ = writeln!(out, "{name} {}", queues.iter().map(get).sum::<u64>());
            }
        }
    }
    let published: u64 = exchanges.iter().map(|x| x.publish_in).sum();
    let routed: u64 = exchanges.iter().map(|x| x.publish_out).sum();
    let sum = |get: fn(&QueueSnapshot) -> u64| queues.iter().map(get).sum::<u64>();
    one(
        &mut out,
        "rabbitmq_global_messages_received_total",
        "counter",
        "Total number of messages received from publishers",
        published,
    );
    one(
        &mut out,
        "rabbitmq_global_messages_routed_total",
        "counter",
        "Total number of messages routed to queues or streams",
        routed,
    );
    one(&mut out, "rabbitmq_global_messages_unroutable_dropped_total", "counter", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", published.saturating_sub(routed));
    one(
        &mut out,
        "rabbitmq_global_messages_delivered_total",
        "counter",
        "Total number of messages delivered to consumers",
        sum(|q| q.delivered),
    );
    one(
        &mut out,
        "rabbitmq_global_messages_acknowledged_total",
        "counter",
        "Total number of messages acknowledged by consumers",
        sum(|q| q.acked),
    );
    one(
        &mut out,
        "rabbitmq_global_messages_redelivered_total",
        "counter",
        "Total number of messages redelivered to consumers",
        sum(|q| q.redelivered),
    );
    let memory = core.memory();
    one(
        &mut out,
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        resident_memory().unwrap_or(memory.tracked() as u64),
    );
    one(
        &mut out,
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        memory.watermark() as u64,
    );
    one(
        &mut out,
        "warren_message_memory_bytes",
        "gauge",
        "Bytes of messages the broker holds (what the memory alarm counts)",
        memory.tracked() as u64,
    );
    one(
        &mut out,
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "is 1 if VM memory watermark alarm is in effect",
        u64::from(s.alarms().0),
    );
    one(
        &mut out,
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "is 1 if free disk space watermark alarm is in effect",
        u64::from(s.alarms().1),
    );
    one(
        &mut out,
        "rabbitmq_alarms_file_descriptor_limit",
        "gauge",
        "is 1 if file descriptor limit alarm is in effect",
        0,
    );
    if let Some(extra) = &s.extra_metrics {
        out.push_str(&extra());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
