//! oslo.messaging's JSON envelope, version 2.0.
//!
//! The body is `{"oslo.version": "2.0", "oslo.message": "<inner JSON>"}` with
//! the inner message as a JSON *string*; a body without those two keys is the
//! legacy form, the inner message itself. Inner keys are written in the order
//! oslo.messaging writes them (see `shared/design/oslo-wire.md`).

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::{view, Args, Codec, Context, ContextMap, Failure, Reply, ReplyTo, Request};
use crate::Error;

const ENVELOPE_VERSION: &str = "2.0";
const CONTEXT_PREFIX: &str = "_context_";

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    #[serde(rename = "oslo.version")]
    version: &'a str,
    #[serde(rename = "oslo.message")]
    message: &'a str,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    #[serde(rename = "oslo.version")]
    version: Option<String>,
    #[serde(rename = "oslo.message")]
    message: Option<String>,
}

fn invalid(what: &str, e: serde_json::Error) -> Error {
    Error::decode(format!("invalid oslo JSON {what}: {e}")).with_source(e)
}

/// Wraps any inner message in the 2.0 envelope.
pub(crate) fn wrap(inner: &impl Serialize) -> Result<Vec<u8>, Error> {
    let message = serde_json::to_string(inner)
        .map_err(|e| Error::decode("cannot encode oslo message").with_source(e))?;
    serde_json::to_vec(&EnvelopeOut {
        version: ENVELOPE_VERSION,
        message: &message,
    })
    .map_err(|e| Error::decode("cannot encode oslo envelope").with_source(e))
}

/// Returns the inner message of a body: the envelope's string (unescaped:
/// the one copy JSON cannot avoid), or the body itself in the legacy form.
pub(crate) fn unwrap(body: &Bytes) -> Result<Bytes, Error> {
    let envelope: EnvelopeIn = serde_json::from_slice(body).map_err(|e| invalid("message", e))?;
    match (envelope.version, envelope.message) {
        (Some(v), Some(m)) if v == ENVELOPE_VERSION => Ok(m.into_bytes().into()),
        (Some(v), Some(_)) => Err(Error::decode(format!(
            "unsupported oslo envelope version {v:?} (this side speaks {ENVELOPE_VERSION})"
        ))),
        (None, None) => Ok(body.clone()),
        _ => Err(Error::decode(
            "malformed oslo envelope: needs both oslo.version and oslo.message",
        )),
    }
}

fn raw_json(bytes: &[u8]) -> Result<&RawValue, Error> {
    serde_json::from_slice(bytes).map_err(|e| invalid("value", e))
}

struct InnerRequestOut<'a> {
    request: &'a Request,
    args: &'a RawValue,
}

impl Serialize for InnerRequestOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.request;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("method", &r.method)?;
        map.serialize_entry("args", self.args)?;
        if let Some(ns) = &r.namespace {
            map.serialize_entry("namespace", ns)?;
        }
        if let Some(v) = &r.version {
            map.serialize_entry("version", v)?;
        }
        if let Some(reply) = &r.reply {
            map.serialize_entry("_msg_id", &reply.msg_id)?;
            map.serialize_entry("_reply_q", &reply.queue)?;
            map.serialize_entry("_timeout", &r.timeout)?;
        }
        if let Some(id) = &r.unique_id {
            map.serialize_entry("_unique_id", id)?;
        }
        for (key, value) in r.context.values() {
            map.serialize_entry(&format!("{CONTEXT_PREFIX}{key}"), value)?;
        }
        map.end()
    }
}

pub(super) fn encode_request(request: &Request) -> Result<Vec<u8>, Error> {
    let args = raw_json(request.args.raw())?;
    wrap(&InnerRequestOut { request, args })
}

#[derive(Default)]
struct InnerRequestIn<'a> {
    method: Option<String>,
    args: Option<&'a RawValue>,
    namespace: Option<String>,
    version: Option<String>,
    msg_id: Option<String>,
    reply_q: Option<String>,
    timeout: Option<f64>,
    unique_id: Option<String>,
    context: ContextMap,
}

impl<'de> Deserialize<'de> for InnerRequestIn<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InnerRequestIn<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an oslo.messaging request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut r = InnerRequestIn::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "method" => r.method = Some(map.next_value()?),
                        "args" => r.args = map.next_value()?,
                        "namespace" => r.namespace = map.next_value()?,
                        "version" => r.version = map.next_value()?,
                        "_msg_id" => r.msg_id = map.next_value()?,
                        "_reply_q" => r.reply_q = map.next_value()?,
                        "_timeout" => r.timeout = map.next_value()?,
                        "_unique_id" => r.unique_id = map.next_value()?,
                        k if k.starts_with(CONTEXT_PREFIX) => {
                            let value = map.next_value()?;
                            r.context
                                .insert(k[CONTEXT_PREFIX.len()..].to_owned(), value);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if r.method.is_none() {
                    return Err(de::Error::missing_field("method"));
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn decode_request(body: &Bytes) -> Result<Request, Error> {
    let inner = unwrap(body)?;
    let r: InnerRequestIn = serde_json::from_slice(&inner).map_err(|e| invalid("request", e))?;
    let args = match r.args {
        Some(raw) if raw.get() != "null" => view(&inner, raw.get().as_bytes()),
        _ => Bytes::from_static(b"{}"),
    };
    let reply = match (r.reply_q, r.msg_id) {
        (Some(queue), Some(msg_id)) => Some(ReplyTo { queue, msg_id }),
        _ => None,
    };
    Ok(Request {
        method: r.method.unwrap_or_default(),
        args: Args::from_raw(Codec::OsloJson, args),
        namespace: r.namespace,
        version: r.version,
        reply,
        timeout: r.timeout,
        unique_id: r.unique_id,
        context: Context {
            deadline: None,
            values: r.context,
        },
    })
}

/// The failure as oslo serializes it (the `failure` string of a reply).
#[derive(Serialize, Deserialize)]
struct OsloFailure {
    class: String,
    module: String,
    message: String,
    #[serde(default)]
    tb: Vec<String>,
    #[serde(default)]
    args: Vec<serde_json::Value>,
    #[serde(default)]
    kwargs: serde_json::Map<String, serde_json::Value>,
    /// A Rust service error's value. Python ignores keys it does not know,
    /// and `kwargs` must stay empty for the builtin exceptions it rebuilds.
    #[serde(
        rename = "warren_data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    data: Option<Box<RawValue>>,
}

fn encode_failure(failure: &Failure) -> Result<String, Error> {
    let data = match &failure.data {
        Some(data) => Some(raw_json(data)?.to_owned()),
        None => None,
    };
    let oslo = OsloFailure {
        class: failure.class.clone(),
        module: failure.module.clone(),
        message: failure.message.clone(),
        tb: failure.tb.clone(),
        args: vec![serde_json::Value::String(failure.message.clone())],
        kwargs: serde_json::Map::new(),
        data,
    };
    serde_json::to_string(&oslo).map_err(|e| Error::decode("cannot encode failure").with_source(e))
}

fn decode_failure(text: &str) -> Result<Failure, Error> {
    let oslo: OsloFailure = serde_json::from_str(text).map_err(|e| invalid("failure", e))?;
    Ok(Failure {
        class: oslo.class,
        module: oslo.module,
        message: oslo.message,
        tb: oslo.tb,
        data: oslo.data.map(|raw| raw.get().as_bytes().to_vec()),
    })
}

#[derive(Serialize)]
struct InnerReplyOut<'a> {
    result: Option<&'a RawValue>,
    failure: Option<String>,
    ending: bool,
    #[serde(rename = "_msg_id")]
    msg_id: Option<&'a str>,
    #[serde(rename = "_unique_id", skip_serializing_if = "Option::is_none")]
    unique_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct InnerReplyIn<'a> {
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    failure: Option<String>,
    #[serde(default)]
    ending: Option<bool>,
    #[serde(rename = "_msg_id")]
    msg_id: Option<String>,
    #[serde(rename = "_unique_id")]
    unique_id: Option<String>,
}

pub(super) fn encode_reply(reply: &Reply) -> Result<Vec<u8>, Error> {
    let (result, failure) = match &reply.outcome {
        Ok(value) => (Some(raw_json(value)?), None),
        Err(failure) => (None, Some(encode_failure(failure)?)),
    };
    wrap(&InnerReplyOut {
        result,
        failure,
        ending: reply.ending,
        msg_id: reply.msg_id.as_deref(),
        unique_id: reply.unique_id.as_deref(),
    })
}

pub(super) fn decode_reply(body: &Bytes) -> Result<Reply, Error> {
    let inner = unwrap(body)?;
    let r: InnerReplyIn = serde_json::from_slice(&inner).map_err(|e| invalid("reply", e))?;
    let outcome = match r.failure {
        Some(text) => Err(decode_failure(&text)?),
        None => Ok(match r.result {
            Some(raw) => view(&inner, raw.get().as_bytes()),
            None => Bytes::from_static(b"null"),
        }),
    };
    Ok(Reply {
        msg_id: r.msg_id,
        outcome,
        // Replies from before the `ending` flag are final.
        ending: r.ending.unwrap_or(true),
        unique_id: r.unique_id,
    })
}
