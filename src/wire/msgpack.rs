//! warren's native envelope in MessagePack.
//!
//! The keys mirror oslo.messaging's so that both codecs describe the same
//! message; the arguments and the result are nested as MessagePack `bin`
//! values so the server can hand them, still encoded, to the method that
//! knows their types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_bytes::Bytes;

use super::{Args, Codec, ContextMap, Failure, Reply, Request};
use crate::Error;

#[derive(Serialize)]
struct RequestOut<'a> {
    method: &'a str,
    args: &'a Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    #[serde(rename = "_msg_id", skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
    #[serde(rename = "_reply_q", skip_serializing_if = "Option::is_none")]
    reply_q: Option<&'a str>,
    #[serde(rename = "_timeout", skip_serializing_if = "Option::is_none")]
    timeout: Option<f64>,
    #[serde(rename = "_deadline", skip_serializing_if = "Option::is_none")]
    deadline: Option<u64>,
    #[serde(rename = "_unique_id", skip_serializing_if = "Option::is_none")]
    unique_id: Option<&'a str>,
    #[serde(rename = "_context", skip_serializing_if = "ContextMap::is_empty")]
    context: &'a ContextMap,
}

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
        msg_id: request.msg_id.as_deref(),
        reply_q: request.reply_q.as_deref(),
        timeout: request.timeout,
        deadline: request.deadline.map(to_epoch_ms),
        unique_id: request.unique_id.as_deref(),
        context: &request.context,
    };
    to_vec(&out, 160 + request.args.raw().len()).map_err(|e| encoded("request", e))
}

pub(super) fn decode_request(body: &[u8]) -> Result<Request, Error> {
    let r: RequestIn<'_> = rmp_serde::from_slice(body).map_err(|e| invalid("request", e))?;
    let args = match r.args {
        Some(raw) => raw.to_vec(),
        // No arguments: an empty map.
        None => vec![0x80],
    };
    Ok(Request {
        method: r.method,
        args: Args::from_raw(Codec::MsgPack, args),
        namespace: r.namespace,
        version: r.version,
        msg_id: r.msg_id,
        reply_q: r.reply_q,
        timeout: r.timeout,
        // A deadline past what `SystemTime` can hold is no deadline.
        deadline: r
            .deadline
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        unique_id: r.unique_id,
        context: r.context,
    })
}

/// A wall-clock time as `_deadline` carries it; times before the epoch (a
/// clock set far back) become 0, i.e. already passed.
fn to_epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

pub(super) fn decode_reply(body: &[u8]) -> Result<Reply, Error> {
    let r: ReplyIn<'_> = rmp_serde::from_slice(body).map_err(|e| invalid("reply", e))?;
    let outcome = match (r.failure, r.result) {
        (Some(failure), _) => Err(failure),
        (None, Some(value)) => Ok(value.to_vec()),
        // A unit result travels as nil.
        (None, None) => Ok(vec![0xc0]),
    };
    Ok(Reply {
        msg_id: r.msg_id,
        outcome,
        ending: r.ending,
        unique_id: r.unique_id,
    })
}
