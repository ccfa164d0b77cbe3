//! warren's native envelope in MessagePack.
//!
//! The keys mirror oslo.messaging's so that both codecs describe the same
//! message; the arguments and the result are nested as MessagePack `bin`
//! values so the server can hand them, still encoded, to the method that
//! knows their types.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_bytes::Bytes;

use super::{Args, Codec, Context, ContextMap, Failure, Reply, ReplyTo, Request};
use crate::Error;

#[derive(Serialize)]
struct RequestOut<'a> {
    method: &'a str,
    args: &'a Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(rename = "_timeout", skip_serializing_if = "Option::is_none")]
    timeout: Option<f64>,
    #[serde(rename = "_deadline", skip_serializing_if = "Option::is_none")]
    deadline: Option<u64>,
    #[serde(rename = "_unique_id", skip_serializing_if = "Option::is_none")]
    unique_id: Option<&'a str>,
    #[serde(rename = "_context", skip_serializing_if = "ContextMap::is_empty")]
    context: &'a ContextMap,
}

/// Older warren peers also wrote `_msg_id` and `_reply_q`; they are read
/// when present (the AMQP properties carry the same address).
#[derive(Deserialize)]
struct RequestIn<'a> {
    method: String,
    #[serde(borrow)]
    args: Option<&'a Bytes>,
    namespace: Option<String>,
    version: Option<String>,
    #[serde(rename = "_msg_id")]
    msg_id: Option<String>,
    #[serde(rename = "_reply_q")]
    reply_q: Option<String>,
    #[serde(rename = "_timeout")]
    timeout: Option<f64>,
    #[serde(rename = "_deadline")]
    deadline: Option<u64>,
    #[serde(rename = "_unique_id")]
    unique_id: Option<String>,
    #[serde(rename = "_context", default)]
    context: ContextMap,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    result: Option<&'a Bytes>,
    failure: Option<&'a Failure>,
    ending: bool,
    #[serde(rename = "_msg_id", skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
    #[serde(rename = "_unique_id", skip_serializing_if = "Option::is_none")]
    unique_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct ReplyIn<'a> {
    #[serde(borrow)]
    result: Option<&'a Bytes>,
    failure: Option<Failure>,
    #[serde(default = "yes")]
    ending: bool,
    #[serde(rename = "_msg_id")]
    msg_id: Option<String>,
    #[serde(rename = "_unique_id")]
    unique_id: Option<String>,
}

fn yes() -> bool {
    true
}

/// `rmp_serde::to_vec_named` into a buffer sized up front: growing from
/// empty costs several reallocations per message.
pub(super) fn to_vec<T: Serialize + ?Sized>(
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let mut buf = Vec::with_capacity(capacity);
    value.serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())?;
    Ok(buf)
}

fn encoded(what: &str, e: rmp_serde::encode::Error) -> Error {
    Error::decode(format!("cannot encode {what} as MessagePack")).with_source(e)
}

fn invalid(what: &str, e: rmp_serde::decode::Error) -> Error {
    Error::decode(format!("invalid MessagePack {what}: {e}")).with_source(e)
}

pub(super) fn encode_request(request: &Request) -> Result<Vec<u8>, Error> {
    let out = RequestOut {
        method: &request.method,
        args: Bytes::new(request.args.raw()),
        namespace: request.namespace.as_deref(),
        version: request.version.as_deref(),
        timeout: request.timeout,
        deadline: request.context.deadline.map(to_epoch_ms),
        unique_id: request.unique_id.as_deref(),
        context: &request.context.values,
    };
    to_vec(&out, 128 + request.args.raw().len()).map_err(|e| encoded("request", e))
}

pub(super) fn decode_request(body: &bytes::Bytes) -> Result<Request, Error> {
    let r: RequestIn<'_> = rmp_serde::from_slice(body).map_err(|e| invalid("request", e))?;
    let args = match r.args {
        Some(raw) => super::view(body, raw),
        // No arguments: an empty map.
        None => bytes::Bytes::from_static(&[0x80]),
    };
    let reply = match (r.reply_q, r.msg_id) {
        (Some(queue), Some(msg_id)) => Some(ReplyTo { queue, msg_id }),
        _ => None,
    };
    Ok(Request {
        method: r.method,
        args: Args::from_raw(Codec::MsgPack, args),
        namespace: r.namespace,
        version: r.version,
        reply,
        timeout: r.timeout,
        unique_id: r.unique_id,
        context: Context {
            deadline: r.deadline.and_then(from_epoch_ms),
            values: r.context,
        },
    })
}

/// A deadline as `_deadline` carries it: wall-clock milliseconds since the
/// epoch. A deadline already passed is "now" (so, passed); times before the
/// epoch (a clock set far back) become 0, i.e. already passed.
fn to_epoch_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now());
    SystemTime::now()
        .checked_add(left)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The instant a `_deadline` names on this machine's monotonic clock; a
/// deadline past what the clocks can hold is no deadline, one already
/// passed is an instant in the past.
fn from_epoch_ms(ms: u64) -> Option<Instant> {
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms))?;
    let (now, wall) = (Instant::now(), SystemTime::now());
    match at.duration_since(wall) {
        Ok(left) => now.checked_add(left),
        Err(passed) => Some(now.checked_sub(passed.duration()).unwrap_or(now)),
    }
}

pub(super) fn encode_reply(reply: &Reply) -> Result<Vec<u8>, Error> {
    let (result, failure) = match &reply.outcome {
        Ok(value) => (Some(Bytes::new(value)), None),
        Err(failure) => (None, Some(failure)),
    };
    let out = ReplyOut {
        result,
        failure,
        ending: reply.ending,
        msg_id: reply.msg_id.as_deref(),
        unique_id: reply.unique_id.as_deref(),
    };
    let size = 96 + reply.outcome.as_ref().map_or(128, |v| v.len());
    to_vec(&out, size).map_err(|e| encoded("reply", e))
}

pub(super) fn decode_reply(body: &bytes::Bytes) -> Result<Reply, Error> {
    let r: ReplyIn<'_> = rmp_serde::from_slice(body).map_err(|e| invalid("reply", e))?;
    let outcome = match (r.failure, r.result) {
        (Some(failure), _) => Err(failure),
        (None, Some(value)) => Ok(super::view(body, value)),
        // A unit result travels as nil.
        (None, None) => Ok(bytes::Bytes::from_static(&[0xc0])),
    };
    Ok(Reply {
        msg_id: r.msg_id,
        outcome,
        ending: r.ending,
        unique_id: r.unique_id,
    })
}
