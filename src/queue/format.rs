//! How a queue message's body is encoded: JSON (the default, for peers in
//! any language), MessagePack, or plain text; chosen per message on receive
//! by its `content_type`.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// A body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `application/json` (the default).
    #[default]
    Json,
    /// `application/msgpack`: MessagePack, structs as maps (field names
    /// kept, so other languages read them).
    MsgPack,
    /// `text/plain`: the body is the message itself, UTF-8, for types that
    /// serialize as a string (`String`, `&str`, unit-only enums…): what
    /// RabbitMQ's tutorials send.
    Text,
}

impl Format {
    /// The `content_type` messages in this format carry.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::MsgPack => "application/msgpack",
            Format::Text => "text/plain",
        }
    }

    /// The format a `content_type` names (parameters such as `;
    /// charset=utf-8` ignored), if warren reads it.
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" | "text/json" => Some(Format::Json),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Some(Format::MsgPack)
            }
            "text/plain" => Some(Format::Text),
            _ => None,
        }
    }

    /// Encodes `value`; a configuration error if it cannot be (a map with
    /// non-string keys in JSON, a non-string value as text).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, Error> {
        let encoded = match self {
            Format::Json => serde_json::to_vec(value)
                .map_err(|e| Error::config(format!("cannot encode the message as JSON: {e}")))?,
            Format::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| {
                Error::config(format!("cannot encode the message as MessagePack: {e}"))
            })?,
            Format::Text => match serde_json::to_value(value) {
                Ok(serde_json::Value::String(text)) => text.into_bytes(),
                Ok(other) => {
                    return Err(Error::config(format!(
                        "a text/plain message must serialize as a string, not {}",
                        kind_of(&other)
                    )))
                }
                Err(e) => return Err(Error::config(format!("cannot encode the message: {e}"))),
            },
        };
        Ok(Bytes::from(encoded))
    }

    /// Decodes a body in this format; a decode error saying why not.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, Error> {
        match self {
            Format::Json => serde_json::from_slice(body)
                .map_err(|e| Error::decode(format!("not the expected JSON: {e}"))),
            Format::MsgPack => rmp_serde::from_slice(body)
                .map_err(|e| Error::decode(format!("not the expected MessagePack: {e}"))),
            Format::Text => {
                let text = std::str::from_utf8(body)
                    .map_err(|e| Error::decode(format!("a text/plain body is not UTF-8: {e}")))?;
                serde_json::from_value(serde_json::Value::String(text.to_owned()))
                    .map_err(|e| Error::decode(format!("not the expected text: {e}")))
            }
        }
    }

    /// Decodes a received body by its `content_type`, or as `fallback`
    /// when it has none; a decode error for a content type warren does not
    /// read.
    pub fn decode_as<T: DeserializeOwned>(
        content_type: Option<&str>,
        fallback: Format,
        body: &[u8],
    ) -> Result<T, Error> {
        let format = match content_type.filter(|c| !c.trim().is_empty()) {
            None => fallback,
            Some(content_type) => Format::from_content_type(content_type).ok_or_else(|| {
                Error::decode(format!(
                    "unknown content_type {content_type:?} (warren reads application/json, \
                     application/msgpack and text/plain)"
                ))
            })?,
        };
        format.decode(body)
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Task {
        id: u32,
        name: String,
    }

    #[test]
    fn each_format_round_trips_and_the_content_type_picks_the_decoder() {
        let task = Task {
            id: 7,
            name: "resize".into(),
        };
        for format in [Format::Json, Format::MsgPack] {
            let body = format.encode(&task).expect("encode");
            let back: Task = Format::decode_as(Some(format.content_type()), Format::Text, &body)
                .expect("decode");
            assert_eq!(back, task);
        }
        let body = Format::Text.encode("Hello World!").expect("text");
        assert_eq!(&body[..], b"Hello World!");
        let back: String = Format::decode_as(None, Format::Text, &body).expect("text back");
        assert_eq!(back, "Hello World!");
        let charset: Task = Format::decode_as(
            Some("application/json; charset=utf-8"),
            Format::MsgPack,
            br#"{"id":1,"name":"x"}"#,
        )
        .expect("parameters ignored");
        assert_eq!(charset.id, 1);
    }

    #[test]
    fn bad_bodies_are_decode_errors_not_panics() {
        let not_json = Format::decode_as::<Task>(None, Format::Json, b"\xff\x00 not json");
        assert!(not_json.is_err_and(|e| e.is_decode()));
        let wrong_shape = Format::decode_as::<Task>(None, Format::Json, b"[1, 2, 3]");
        assert!(wrong_shape.is_err_and(|e| e.is_decode()));
        let unknown = Format::decode_as::<Task>(Some("image/png"), Format::Json, b"{}");
        assert!(unknown.is_err_and(|e| e.is_decode() && e.to_string().contains("image/png")));
        let not_utf8 = Format::decode_as::<String>(None, Format::Text, b"\xff");
        assert!(not_utf8.is_err_and(|e| e.is_decode()));
        let not_text = Format::Text.encode(&Task {
            id: 1,
            name: String::new(),
        });
        assert!(not_text.is_err_and(|e| e.is_config()));
    }
}
