//! What travels in a message body: request and reply envelopes and the codecs
//! that write them.
//!
//! Two codecs exist: MessagePack (warren's default, compact and fast) and
//! JSON in oslo.messaging's 2.0 envelope (to talk to Python OpenStack
//! services). The codec is carried by the AMQP `content_type` of each message,
//! so a server decodes whatever its caller sent and answers in kind.

mod failure;
mod msgpack;
pub(crate) mod oslo;

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

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
            Codec::MsgPack => msgpack::to_vec(value, 64)
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

    /// Writes a request envelope.
    pub fn encode_request(self, request: &Request) -> Result<Vec<u8>, Error> {
        match self {
            Codec::MsgPack => msgpack::encode_request(request),
            Codec::OsloJson => oslo::encode_request(request),
        }
    }

    /// Reads a request envelope.
    pub fn decode_request(self, body: &[u8]) -> Result<Request, Error> {
        match self {
            Codec::MsgPack => msgpack::decode_request(body),
            Codec::OsloJson => oslo::decode_request(body),
        }
    }

    /// Writes a reply envelope.
    pub fn encode_reply(self, reply: &Reply) -> Result<Vec<u8>, Error> {
        match self {
            Codec::MsgPack => msgpack::encode_reply(reply),
            Codec::OsloJson => oslo::encode_reply(reply),
        }
    }

    /// Reads a reply envelope.
    pub fn decode_reply(self, body: &[u8]) -> Result<Reply, Error> {
        match self {
            Codec::MsgPack => msgpack::decode_reply(body),
            Codec::OsloJson => oslo::decode_reply(body),
        }
    }
}

/// A method's arguments, still encoded: a map of parameter name → value in
/// the codec of the message that carried them.
#[derive(Debug, Clone)]
pub struct Args {
    codec: Codec,
    raw: Vec<u8>,
}

impl Args {
    /// Encodes arguments (a struct or map whose fields are the parameters).
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, args: &T) -> Result<Self, Error> {
        Ok(Args {
            codec,
            raw: codec.encode_value(args)?,
        })
    }

    /// Wraps already encoded arguments.
    pub fn from_raw(codec: Codec, raw: Vec<u8>) -> Self {
        Args { codec, raw }
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
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Request-context items, as they travel (oslo's `_context_<key>` entries).
pub type ContextMap = BTreeMap<String, serde_json::Value>;

/// A request envelope: what a client sends for a call or a cast.
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
    /// For a call: the correlation id the reply must carry.
    pub msg_id: Option<String>,
    /// For a call: the queue to reply to.
    pub reply_q: Option<String>,
    /// oslo's call-monitor timeout in seconds: when set, the server sends
    /// keepalive replies. Peer data: may be absurd, infinite or NaN.
    pub timeout: Option<f64>,
    /// When the caller stops waiting, as wall-clock time. MessagePack
    /// carries it as `_deadline` (milliseconds since the Unix epoch), so a
    /// server can drop a request that waited in a queue past it; oslo's JSON
    /// envelope has no such field (oslo peers rely on the AMQP `expiration`
    /// property) and ignores it.
    pub deadline: Option<std::time::SystemTime>,
    /// A unique id per message, used to drop duplicates.
    pub unique_id: Option<String>,
    /// The request context.
    pub context: ContextMap,
}

/// A reply envelope: what a server sends back for a call.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The request's correlation id.
    pub msg_id: Option<String>,
    /// The encoded result, or the failure the server raised.
    pub outcome: Result<Vec<u8>, Failure>,
    /// `false` for oslo's keepalive replies, `true` for the final one.
    pub ending: bool,
    /// A unique id for this reply.
    pub unique_id: Option<String>,
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
    format!("{:016x}{:016x}", seed, mix(n ^ seed.rotate_left(17)))
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
