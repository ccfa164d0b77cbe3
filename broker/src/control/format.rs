//! Values as `rabbitmqctl` prints them in its tab-separated listings:
//! booleans as `true`/`false`, tables as Erlang-ish lists
//! (`[{"x-max-length",10}]`), tags as `[administrator, monitoring]`.

use std::time::SystemTime;

use amq_protocol::types::{AMQPValue, FieldTable};

/// `true` or `false`.
pub fn boolean(b: bool) -> String {
    b.to_string()
}

/// A field table as `rabbitmqctl` prints arguments: `[{"key",value},…]`,
/// strings quoted, numbers bare, `[]` when empty.
pub fn table(t: &FieldTable) -> String {
    let items: Vec<String> = t
        .inner()
        .iter()
        .map(|(k, v)| format!("{{\"{}\",{}}}", k.as_str(), value(v)))
        .collect();
    format!("[{}]", items.join(","))
}

/// One field value, as inside [`table`].
fn value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => {
            (f64::from(d.value) / 10f64.powi(i32::from(d.scale))).to_string()
        }
        AMQPValue::ShortString(s) => format!("\"{}\"", s.as_str()),
        AMQPValue::LongString(s) => format!("\"{}\"", String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => format!("\"{}\"", String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => {
            let items: Vec<String> = a.as_slice().iter().map(value).collect();
            format!("[{}]", items.join(","))
        }
        AMQPValue::FieldTable(t) => table(t),
        AMQPValue::Void => "undefined".to_owned(),
    }
}

/// Tags as `[administrator, monitoring]`.
pub fn tags(tags: &[String]) -> String {
    format!("[{}]", tags.join(", "))
}

/// Milliseconds since the Unix epoch (RabbitMQ's `connected_at`).
pub fn epoch_ms(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

/// The AMQP version as RabbitMQ prints it: `{0,9,1}`.
pub fn protocol(p: &str) -> String {
    if p == "AMQP 0-9-1" {
        "{0,9,1}".to_owned()
    } else {
        p.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_rabbitmqctl_prints_them() {
        let mut t = FieldTable::default();
        t.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("dlx".into()),
        );
        t.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
        assert_eq!(
            table(&t),
            r#"[{"x-dead-letter-exchange","dlx"},{"x-max-length",10}]"#
        );
        assert_eq!(table(&FieldTable::default()), "[]");
        assert_eq!(
            tags(&["administrator".into(), "monitoring".into()]),
            "[administrator, monitoring]"
        );
        assert_eq!(tags(&[]), "[]");
        assert_eq!(protocol("AMQP 0-9-1"), "{0,9,1}");
    }
}
