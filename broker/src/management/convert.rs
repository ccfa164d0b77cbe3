//! AMQP tables and properties to and from JSON, as RabbitMQ's management
//! API writes and reads them (arguments, headers, client properties,
//! message properties).

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// An AMQP value as JSON.
pub(crate) fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::Timestamp(v) => (*v).into(),
        AMQPValue::Float(v) => Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(v) => Number::from_f64(*v).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP table as a JSON object.
pub(crate) fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

/// A JSON value as the AMQP value RabbitMQ would store: integers as
/// `long`s (64-bit), other numbers as doubles, strings as long strings.
pub(crate) fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(map) => AMQPValue::FieldTable(object_to_table(map)),
    }
}

/// A JSON object as an AMQP table; keys longer than a short string are
/// dropped (RabbitMQ refuses them too).
pub(crate) fn object_to_table(map: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in map {
        if let Ok(key) = ShortString::try_new(k.clone()) {
            table.insert(key, json_to_value(v));
        }
    }
    table
}

/// `arguments` of a request body: an object (or absent); anything else is
/// a bad request.
pub(crate) fn arguments(body: &Map<String, Value>) -> Result<FieldTable, String> {
    match body.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(Value::Object(map)) => Ok(object_to_table(map)),
        Some(_) => Err("arguments must be an object".into()),
    }
}

/// A boolean field of a request body; rabbitmqadmin sends `"true"` and
/// `"false"` as strings.
pub(crate) fn flag(body: &Map<String, Value>, name: &str, default: bool) -> Result<bool, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("{name} must be a boolean, not {other}")),
    }
}

/// A string field of a request body.
pub(crate) fn text<'a>(
    body: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name} must be a string, not {other}")),
    }
}

/// An unsigned integer field of a request body (a number or a numeric string).
pub(crate) fn count(body: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{name} must be a non-negative integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} must be a non-negative integer, not {s:?}")),
        Some(other) => Err(format!(
            "{name} must be a non-negative integer, not {other}"
        )),
    }
}

/// Message properties as the management API shows them (only those set).
pub(crate) fn properties_to_json(p: &BasicProperties) -> Value {
    let mut out = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.to_owned(), v);
        }
    };
    let s = |v: &Option<ShortString>| v.as_ref().map(|s| Value::String(s.as_str().to_owned()));
    put("content_type", s(p.content_type()));
    put("content_encoding", s(p.content_encoding()));
    put("headers", p.headers().as_ref().map(table_to_json));
    put("delivery_mode", p.delivery_mode().map(Value::from));
    put("priority", p.priority().map(Value::from));
    put("correlation_id", s(p.correlation_id()));
    put("reply_to", s(p.reply_to()));
    put("expiration", s(p.expiration()));
    put("message_id", s(p.message_id()));
    put("timestamp", p.timestamp().map(Value::from));
    put("type", s(p.kind()));
    put("user_id", s(p.user_id()));
    put("app_id", s(p.app_id()));
    Value::Object(out)
}

/// Message properties from the management API's `properties` object.
pub(crate) fn properties_from_json(map: &Map<String, Value>) -> Result<BasicProperties, String> {
    let mut p = BasicProperties::default();
    let short = |name: &str, v: &Value| -> Result<ShortString, String> {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("property {name} must be a string, not {other}")),
        };
        ShortString::try_new(s).map_err(|_| format!("property {name} is longer than 255 bytes"))
    };
    let octet = |name: &str, v: &Value| -> Result<u8, String> {
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.and_then(|n| u8::try_from(n).ok())
            .ok_or_else(|| format!("property {name} must be an integer from 0 to 255"))
    };
    for (k, v) in map {
        p = match k.as_str() {
            "content_type" => p.with_content_type(short(k, v)?),
            "content_encoding" => p.with_content_encoding(short(k, v)?),
            "headers" => match v {
                Value::Object(h) => p.with_headers(object_to_table(h)),
                _ => return Err("property headers must be an object".into()),
            },
            "delivery_mode" => p.with_delivery_mode(octet(k, v)?),
            "priority" => p.with_priority(octet(k, v)?),
            "correlation_id" => p.with_correlation_id(short(k, v)?),
            "reply_to" => p.with_reply_to(short(k, v)?),
            "expiration" => p.with_expiration(short(k, v)?),
            "message_id" => p.with_message_id(short(k, v)?),
            "timestamp" => match v.as_u64() {
                Some(t) => p.with_timestamp(t),
                None => return Err("property timestamp must be an integer".into()),
            },
            "type" => p.with_type(short(k, v)?),
            "user_id" => p.with_user_id(short(k, v)?),
            "app_id" => p.with_app_id(short(k, v)?),
            other => return Err(format!("unknown message property {other:?}")),
        };
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_as_rabbitmq_stores_them() {
        let json = serde_json::json!({"x-message-ttl": 5000, "x-dead-letter-exchange": "dlx", "flag": true, "f": 1.5});
        let Value::Object(map) = &json else {
            unreachable!()
        };
        let table = object_to_table(map);
        assert_eq!(
            table.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(5000))
        );
        assert_eq!(table_to_json(&table), json);
    }

    #[test]
    fn flags_accept_rabbitmqadmins_strings_and_refuse_the_rest() {
        let body = serde_json::json!({"a": "true", "b": false, "c": "FALSE", "d": 3});
        let Value::Object(body) = body else {
            unreachable!()
        };
        assert_eq!(flag(&body, "a", false), Ok(true));
        assert_eq!(flag(&body, "b", true), Ok(false));
        assert_eq!(flag(&body, "c", true), Ok(false));
        assert_eq!(flag(&body, "missing", true), Ok(true));
        assert!(flag(&body, "d", true).is_err());
    }

    #[test]
    fn properties_round_trip_and_bad_ones_are_refused() {
        let json = serde_json::json!({"delivery_mode": 2, "content_type": "text/plain", "headers": {"k": "v"}, "priority": 3});
        let Value::Object(map) = &json else {
            unreachable!()
        };
        let p = properties_from_json(map).expect("valid");
        assert_eq!(properties_to_json(&p), json);
        let bad = serde_json::json!({"delivery_mode": 300});
        let Value::Object(bad) = &bad else {
            unreachable!()
        };
        assert!(properties_from_json(bad).is_err());
        let unknown = serde_json::json!({"colour": "red"});
        let Value::Object(unknown) = &unknown else {
            unreachable!()
        };
        assert!(properties_from_json(unknown).is_err());
    }
}
