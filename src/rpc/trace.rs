//! W3C trace context for calls and casts: a `traceparent` (and the vendors'
//! `tracestate`) travels with each request, in the AMQP headers and in the
//! request context (oslo's `_context_traceparent`, so a Python service that
//! passes its context on keeps the trace), and links the client's and the
//! server's `tracing` spans into one trace.
//!
//! A call made while serving a request continues that request's trace; any
//! other call starts one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde_json::Value;

use super::Context;
use crate::transport::Properties;

/// The header and context key of the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The header and context key of the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// One span's place in a trace: the W3C trace context of a call, a cast or
/// the serving of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<String>,
}

impl TraceContext {
    /// The first span of a new trace (sampled).
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: (u128::from(random_u64()) << 64) | u128::from(random_u64()),
            span_id: random_u64(),
            flags: 1,
            state: None,
        }
    }

    /// A span in the same trace whose parent is this one.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: random_u64(),
            ..self.clone()
        }
    }

    /// Reads a `traceparent` header (and `tracestate`, kept as it is);
    /// `None` if it is not a valid W3C trace parent.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four fields; later versions may add more.
        let version = hex_field(version, 2)?;
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let trace_id = hex_field(trace, 32)?;
        let span_id = u64::try_from(hex_field(span, 16)?).ok()?;
        let flags = u8::try_from(hex_field(flags, 2)?).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
            state: tracestate
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 512)
                .map(str::to_owned),
        })
    }

    /// The trace context a request context carries, if any.
    pub fn from_context(context: &Context) -> Option<Self> {
        let parent = context.get(TRACEPARENT)?.as_str()?;
        let state = context.get(TRACESTATE).and_then(Value::as_str);
        TraceContext::parse(parent, state)
    }

    /// The trace context of the request this task is serving, if it
    /// carried one: what calls made from here continue.
    pub fn current() -> Option<Self> {
        TraceContext::from_context(&Context::current())
    }

    /// The trace context of a received request: its AMQP headers', else its
    /// request context's (oslo peers carry it only there).
    pub(crate) fn of_request(properties: &Properties, context: &Context) -> Option<Self> {
        let headers = properties.as_amqp().headers().as_ref();
        let header = |name: &str| -> Option<&str> {
            let (_, value) = headers?.inner().iter().find(|(k, _)| k.as_str() == name)?;
            match value {
                amq_protocol::types::AMQPValue::LongString(s) => {
                    std::str::from_utf8(s.as_bytes()).ok()
                }
                amq_protocol::types::AMQPValue::ShortString(s) => Some(s.as_str()),
                _ => None,
            }
        };
        match header(TRACEPARENT) {
            Some(parent) => TraceContext::parse(parent, header(TRACESTATE)),
            None => None,
        }
        .or_else(|| TraceContext::from_context(context))
    }

    /// Writes this trace context into a request context.
    pub(crate) fn write_to(&self, context: &mut Context) {
        context.insert(TRACEPARENT, self.traceparent());
        match &self.state {
            Some(state) => context.insert(TRACESTATE, state.clone()),
            None => {
                context.values.remove(TRACESTATE);
            }
        }
    }

    /// Adds the `traceparent` and `tracestate` headers to `properties`.
    pub(crate) fn write_headers(&self, properties: Properties) -> Properties {
        use amq_protocol::types::{AMQPValue, LongString};
        let amqp = properties.into_amqp();
        let mut headers = amqp.headers().clone().unwrap_or_default();
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(self.traceparent())),
        );
        if let Some(state) = &self.state {
            headers.insert(
                TRACESTATE.into(),
                AMQPValue::LongString(LongString::from(state.as_str())),
            );
        }
        Properties::from(amqp.with_headers(headers))
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        // By hand: `format!` with three hex fields was a visible share of an
        // in-process call, and every request writes this twice.
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        write_hex(&mut text[3..35], self.trace_id);
        text[35] = b'-';
        write_hex(&mut text[36..52], u128::from(self.span_id));
        text[52] = b'-';
        write_hex(&mut text[53..], u128::from(self.flags));
        ascii(&text)
    }

    /// The vendors' `tracestate`, as received.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        let mut text = [0u8; 32];
        write_hex(&mut text, self.trace_id);
        ascii(&text)
    }

    /// This span's id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        let mut text = [0u8; 16];
        write_hex(&mut text, u128::from(self.span_id));
        ascii(&text)
    }

    /// This span's id as a number (its text is [`span_id`](Self::span_id)).
    pub(crate) fn span_id_value(&self) -> u64 {
        self.span_id
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Fills `out` with the low `out.len()` hex digits of `value`, lowercase,
/// zero-padded.
fn write_hex(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The text of ASCII bytes (hex digits and dashes: always valid UTF-8).
fn ascii(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// A span id shown as 16 hex digits, formatted only if a span records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanId(pub(crate) u64);

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A field of exactly `len` lowercase hex digits.
fn hex_field(field: &str, len: usize) -> Option<u128> {
    let lower = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if field.len() != len || !field.bytes().all(lower) {
        return None;
    }
    u128::from_str_radix(field, 16).ok()
}

/// A non-zero pseudo-random id: a per-process random seed and a counter
/// through splitmix64 (unique in the process, no system call per id).
fn random_u64() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().1);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = (n ^ seed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_a_child_keeps_the_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = TraceContext::parse(parent, Some("rojo=00f067aa0ba902b7")).expect("valid");
        assert_eq!(trace.traceparent(), parent);
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.tracestate(), Some("rojo=00f067aa0ba902b7"));
        let child = trace.child();
        assert_eq!(child.trace_id(), trace.trace_id());
        assert_ne!(child.span_id(), trace.span_id());
        assert!(child.sampled());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceContext::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            None
        )
        .is_some());
    }

    #[test]
    fn roots_are_distinct_and_valid() {
        let (a, b) = (TraceContext::new_root(), TraceContext::new_root());
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(TraceContext::parse(&a.traceparent(), None), Some(a));
    }
}
