//! AMQP field tables as JSON, the way RabbitMQ's definitions and management
//! API write them: integers as numbers, strings as strings, tables as
//! objects, arrays as arrays.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use serde_json::{Map, Number, Value};

/// A field table as a JSON object.
pub fn table_to_json(table: &FieldTable) -> Value {
    let mut map = Map::new();
    for (k, v) in table.inner() {
        map.insert(k.as_str().to_owned(), value_to_json(v));
    }
    Value::Object(map)
}

/// A field value as JSON (binary as a lossy string, void as `null`).
pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let value = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(value).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// A JSON value that is no field table: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct JsonTableError {
    /// Where in the document: `queues[0].arguments.x-max-length`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

fn error(path: &str, message: String) -> JsonTableError {
    JsonTableError {
        path: path.to_owned(),
        message,
    }
}

/// A JSON object as a field table; `what` names it in the error.
pub fn json_to_table(v: &Value, what: &str) -> Result<FieldTable, JsonTableError> {
    let Value::Object(map) = v else {
        return Err(error(what, format!("expected an object, got {}", kind(v))));
    };
    let mut table = FieldTable::default();
    for (k, v) in map {
        if k.len() > 255 {
            return Err(error(what, format!("key '{k}' longer than 255 bytes")));
        }
        table.insert(k.as_str().into(), json_to_value(v, &format!("{what}.{k}"))?);
    }
    Ok(table)
}

/// A JSON value as a field value: integers as `long` (RabbitMQ's signed
/// 64-bit), other numbers as `double`, strings as `longstr`.
pub fn json_to_value(v: &Value, what: &str) -> Result<AMQPValue, JsonTableError> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => match n.as_f64() {
                Some(f) => AMQPValue::Double(f),
                None => return Err(error(what, format!("number {n} out of range"))),
            },
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => {
            let mut array = FieldArray::default();
            for (i, item) in items.iter().enumerate() {
                array.push(json_to_value(item, &format!("{what}[{i}]"))?);
            }
            AMQPValue::FieldArray(array)
        }
        Value::Object(_) => AMQPValue::FieldTable(json_to_table(v, what)?),
    })
}

/// The JSON kind of a value, for error texts.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() {
        let v = serde_json::json!({
            "x-message-ttl": 60000,
            "x-dead-letter-exchange": "dlx",
            "flag": true,
            "ratio": 0.5,
            "nested": {"list": [1, "two"]},
            "none": null
        });
        let t = json_to_table(&v, "arguments").expect("a table");
        assert_eq!(
            t.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(60000))
        );
        assert_eq!(table_to_json(&t), v);
        let e = json_to_table(&serde_json::json!([1]), "queues[0].arguments")
            .expect_err("not an object");
        assert_eq!(
            e.to_string(),
            "queues[0].arguments: expected an object, got an array"
        );
    }
}
