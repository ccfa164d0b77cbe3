//! Request bodies and message properties as RabbitMQ's management API
//! reads and writes them (field tables go through the definitions' JSON
//! mapping, [`crate::definitions::json`]).

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{FieldTable, ShortString};
use serde_json::{Map, Value};

use crate::definitions::json_to_table;
pub(crate) use crate::definitions::table_to_json;

/// `arguments` of a request body: an object (or absent); anything else is
/// a bad request.
pub(crate) fn arguments(body: &Map<String, Value>) -> Result<FieldTable, String> {
    match body.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(v) => json_to_table(v, "arguments").map_err(|e| e.to_string()),
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
            "headers" => {
                p.with_headers(json_to_table(v, "properties.headers").map_err(|e| e.to_string())?)
            }
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
    fn arguments_must_be_an_object() {
        let Value::Object(good) = serde_json::json!({"arguments": {"x-message-ttl": 5000}}) else {
            unreachable!()
        };
        let table = arguments(&good).expect("an object");
        assert_eq!(
            table_to_json(&table),
            serde_json::json!({"x-message-ttl": 5000})
        );
        let Value::Object(bad) = serde_json::json!({"arguments": [1]}) else {
            unreachable!()
        };
        assert!(arguments(&bad).is_err());
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
