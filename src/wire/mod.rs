//! What travels in a message body: request and reply envelopes and the codecs
//! that write them.
//!
//! Two codecs exist: MessagePack (warren's default, compact and fast) and
//! JSON in oslo.messaging's 2.0 envelope (to talk to Python OpenStack
//! services). The codec is carried by the AMQP `content_type` of each message,
//! so a server decodes whatever its caller sent and answers in kind.

mod context;
mod failure;
mod msgpack;
pub(crate) mod oslo;

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

pub use context::Context;
pub use failure::Failure;

use crate::Error;

/// `content_type` of MessagePack-encoded messages.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";
/// `content_type` of JSON-encoded messages (oslo.messaging's).
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The failure class a server reports when it cannot decode a request.
pub const DECODE_FAILURE_CLASS: &str = "DecodeError";
/// The module warren's own failures (decode errors, panics) claim.
pub const WARREN_MODULE: &str = "warren";

/// A message codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    /// MessagePack (`application/msgpack`), arguments and results as maps
    /// with named fields. warren's default.
    #[default]
    MsgPack,
    /// JSON in oslo.messaging's 2.0 envelope (`application/json`), exactly as
    /// Python OpenStack services write it.
    OsloJson,
}

impl Codec {
    /// The AMQP `content_type` this codec's messages carry.
    pub fn content_type(self) -> &'static str {
        match self {
            Codec::MsgPack => MSGPACK_CONTENT_TYPE,
            Codec::OsloJson => JSON_CONTENT_TYPE,
        }
    }

    /// The codec of an incoming message, from its `content_type`. A missing
    /// content type (a plain AMQP client) is sniffed: a body starting with
    /// `{` is JSON, anything else MessagePack.
    pub fn for_message(content_type: Option<&str>, body: &[u8]) -> Result<Codec, Error> {
        match content_type {
            Some(ct) if ct.eq_ignore_ascii_case(MSGPACK_CONTENT_TYPE) => Ok(Codec::MsgPack),
            Some(ct)
                if ct.eq_ignore_ascii_case("application/x-msgpack")
                    || ct.eq_ignore_ascii_case("application/vnd.msgpack") =>
            {
                Ok(Codec::MsgPack)
            }
            Some(ct) if ct.eq_ignore_ascii_case(JSON_CONTENT_TYPE) => Ok(Codec::OsloJson),
            Some(other) => Err(Error::decode(format!(
                "unsupported content_type {other:?} (expected {MSGPACK_CONTENT_TYPE} or {JSON_CONTENT_TYPE})"
            ))),
            None if body.first() == Some(&b'{') => Ok(Codec::OsloJson),
            None => Ok(Codec::MsgPack),
        }
    }

    /// Encodes one value (arguments, a result, an application error).
    pub fn encode_value<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, Error> {
        match self {
            Codec::MsgPack => msgpack::to_vec(value, 128)
                .map_err(|e| Error::decode("cannot encode value as MessagePack").with_source(e)),
            Codec::OsloJson => serde_json::to_vec(value)
                .map_err(|e| Error::decode("cannot encode value as JSON").with_source(e)),
        }
    }

    /// Decodes one value encoded by [`Codec::encode_value`].
    pub fn decode_value<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Error> {
        match self {
            Codec::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| {
                Error::decode(format!("invalid MessagePack value: {e}")).with_source(e)
            }),
            Codec::OsloJson => serde_json::from_slice(bytes)
                .map_err(|e| Error::decode(format!("invalid JSON value: {e}")).with_source(e)),
        }
    }

    /// Whether this codec's envelope carries the reply address (`_msg_id`,
    /// `_reply_q`) in the body. oslo's JSON does; MessagePack leaves it to
    /// the AMQP `reply_to` and `correlation_id` properties, so the address
    /// travels in one place (its decoder still reads the body fields older
    /// warren peers wrote).
    pub fn carries_reply_address(self) -> bool {
        self == Codec::OsloJson
    }

    /// Writes a request envelope.
    pub fn encode_request(self, request: &Request) -> Result<Bytes, Error> {
        match self {
            Codec::MsgPack => msgpack::encode_request(request),
            Codec::OsloJson => oslo::encode_request(request),
        }
        .map(Bytes::from)
    }

    /// Reads a request envelope. Its arguments stay a slice of `body`.
    pub fn decode_request(self, body: &Bytes) -> Result<Request, Error> {
        match self {
            Codec::MsgPack => msgpack::decode_request(body),
            Codec::OsloJson => oslo::decode_request(body),
        }
    }

    /// Writes a reply envelope.
    pub fn encode_reply(self, reply: &Reply) -> Result<Bytes, Error> {
        match self {
            Codec::MsgPack => msgpack::encode_reply(reply),
            Codec::OsloJson => oslo::encode_reply(reply),
        }
        .map(Bytes::from)
    }

    /// Reads a reply envelope. Its result stays a slice of `body`.
    pub fn decode_reply(self, body: &Bytes) -> Result<Reply, Error> {
        match self {
            Codec::MsgPack => msgpack::decode_reply(body),
            Codec::OsloJson => oslo::decode_reply(body),
        }
    }
}

/// A method's arguments, still encoded: a map of parameter name → value in
/// the codec of the message that carried them. Received arguments are a
/// slice of the message body, not a copy.
#[derive(Debug, Clone)]
pub struct Args {
    codec: Codec,
    raw: Bytes,
}

impl Args {
    /// Encodes arguments (a struct or map whose fields are the parameters).
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, args: &T) -> Result<Self, Error> {
        Ok(Args {
            codec,
            raw: codec.encode_value(args)?.into(),
        })
    }

    /// Wraps already encoded arguments.
    pub fn from_raw(codec: Codec, raw: impl Into<Bytes>) -> Self {
        Args {
            codec,
            raw: raw.into(),
        }
    }

    /// Decodes the arguments into the method's parameter struct.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.codec.decode_value(&self.raw)
    }

    /// The codec the arguments are encoded in.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The encoded bytes.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

/// Request-context items, as they travel (oslo's `_context_<key>` entries).
pub type ContextMap = BTreeMap<String, serde_json::Value>;

/// Where the reply to a call goes: the caller's reply queue and the
/// correlation id its reply must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The queue to reply to (`_reply_q`, AMQP `reply_to`).
    pub queue: String,
    /// The correlation id (`_msg_id`, AMQP `correlation_id`).
    pub msg_id: String,
}

/// A request: what a client sends for a call or a cast, and what a server's
/// dispatch stack receives (`warren::rpc::Request` is this type). Decoded
/// once from the message, its arguments a slice of the body.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method to invoke.
    pub method: String,
    /// Its arguments.
    pub args: Args,
    /// The endpoint namespace, if any.
    pub namespace: Option<String>,
    /// The requested version (`major.minor`); none means `1.0`.
    pub version: Option<String>,
    /// For a call: where to reply. On the server, the AMQP `reply_to` and
    /// `correlation_id` properties fill it when the body does not.
    pub reply: Option<ReplyTo>,
    /// oslo's call-monitor timeout in seconds: when set, the server sends
    /// keepalive replies. Peer data: may be absurd, infinite or NaN.
    pub timeout: Option<f64>,
    /// A unique id per message, used to drop duplicates.
    pub unique_id: Option<String>,
    /// The request context (also [`Context::current`] inside the method).
    /// Its deadline is when the caller stops waiting: MessagePack carries it
    /// as `_deadline` (wall-clock milliseconds since the Unix epoch), so a
    /// server can drop a request that waited in a queue past it; oslo's
    /// JSON envelope has no such field (oslo peers rely on the AMQP
    /// `expiration` property, which a server folds in).
    pub context: Context,
}

impl Request {
    /// The codec of the request, which the reply uses too.
    pub fn codec(&self) -> Codec {
        self.args.codec()
    }
}

/// A reply envelope: what a server sends back for a call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The request's correlation id (in the body for oslo's JSON; MessagePack
    /// leaves it to the AMQP `correlation_id`).
    pub msg_id: Option<String>,
    /// The encoded result (received: a slice of the body), or the failure
    /// the server raised.
    pub outcome: Result<Bytes, Failure>,
    /// `false` for oslo's keepalive replies, `true` for the final one.
    pub ending: bool,
    /// A unique id for this reply.
    pub unique_id: Option<String>,
}

/// `part` of `body` as a view into it (no copy); a copy if `part` is not
/// inside `body` after all (which a codec that borrows from its input never
/// does, but a panic here would be reachable from the network).
pub(crate) fn view(body: &Bytes, part: &[u8]) -> Bytes {
    let range = body.as_ptr_range();
    let inside = range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end;
    if inside && !part.is_empty() {
        body.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// A fresh 32-hex-digit id, the form oslo.messaging uses for `_msg_id` and
/// `_unique_id`. A per-process random seed and a counter passed through a
/// bijective mixer: unique within the process by construction, across
/// processes by the 64-bit seed, and without the system call a uuid4 costs
/// on every call.
pub fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Written by hand: `format!` grows its string twice on the way.
    let mut id = String::with_capacity(32);
    for word in [seed, mix(n ^ seed.rotate_left(17))] {
        for shift in (0..16).rev() {
            let digit = ((word >> (shift * 4)) & 0xf) as u8;
            id.push(char::from(b"0123456789abcdef"[usize::from(digit)]));
        }
    }
    id
}

/// splitmix64's finalizer: a bijection on u64 that scatters a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
