//! Headers exchange routing: bindings match on message header values.
//!
//! Supports `x-match` = `all` (default), `any`, `all-with-x` and `any-with-x` as RabbitMQ
//! does; a binding argument with a void value only requires the header to be present.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::{Binding, Destination};
use crate::core::AmqpError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatchMode {
    All,
    Any,
}

#[derive(Debug)]
struct HeaderBinding {
    destination: Destination,
    routing_key: String,
    arguments: FieldTable,
    mode: MatchMode,
    with_x: bool,
}

/// Binding table of a headers exchange.
#[derive(Debug, Default)]
pub struct HeadersRouter {
    bindings: Vec<HeaderBinding>,
}

/// Compare two AMQP values the way a headers exchange should (numbers by value,
/// short and long strings by bytes).
pub fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (as_bytes(a), as_bytes(b)) {
        return x == y;
    }
    false
}

fn as_int(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => i128::from(*x),
        AMQPValue::ShortShortUInt(x) => i128::from(*x),
        AMQPValue::ShortInt(x) => i128::from(*x),
        AMQPValue::ShortUInt(x) => i128::from(*x),
        AMQPValue::LongInt(x) => i128::from(*x),
        AMQPValue::LongUInt(x) => i128::from(*x),
        AMQPValue::LongLongInt(x) => i128::from(*x),
        AMQPValue::Timestamp(x) => i128::from(*x),
        _ => return None,
    })
}

fn as_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Checks a headers binding's `x-match` as RabbitMQ does: absent, or one of
/// `all`, `any`, `all-with-x`, `any-with-x` (406 otherwise).
pub fn validate_binding(args: &FieldTable) -> Result<(), AmqpError> {
    let Some(v) = args.inner().get("x-match") else {
        return Ok(());
    };
    match as_bytes(v) {
        Some(b"all" | b"any" | b"all-with-x" | b"any-with-x") => Ok(()),
        Some(other) => Err(AmqpError::precondition(format!(
            "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(other)
        ))),
        None => Err(AmqpError::precondition(format!(
            "Invalid x-match field type (value {}); expected longstr",
            crate::core::value_display(v)
        ))),
    }
}

fn parse_mode(args: &FieldTable) -> (MatchMode, bool) {
    let mode = args
        .inner()
        .get("x-match")
        .and_then(as_bytes)
        .unwrap_or(b"all");
    match mode {
        b"any" => (MatchMode::Any, false),
        b"any-with-x" => (MatchMode::Any, true),
        b"all-with-x" => (MatchMode::All, true),
        _ => (MatchMode::All, false),
    }
}

impl HeaderBinding {
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        for (k, v) in self.arguments.inner() {
            let key = k.as_str();
            if key == "x-match" || (!self.with_x && key.starts_with("x-")) {
                continue;
            }
            let present = headers.and_then(|h| h.inner().get(key));
            let ok = match (v, present) {
                (_, None) => false,
                (AMQPValue::Void, Some(_)) => true,
                (v, Some(h)) => values_equal(v, h),
            };
            match self.mode {
                MatchMode::All if !ok => return false,
                MatchMode::Any if ok => return true,
                _ => {}
            }
        }
        match self.mode {
            MatchMode::All => true,
            MatchMode::Any => false,
        }
    }
}

impl HeadersRouter {
    /// The destinations of its bindings (each at least once).
    pub fn destinations(&self) -> Vec<Destination> {
        self.bindings
            .iter()
            .map(|b| b.destination.clone())
            .collect()
    }

    /// Add a binding; false if already present.
    pub fn bind(&mut self, b: Binding) -> bool {
        if self.bindings.iter().any(|x| {
            x.destination == b.destination
                && x.routing_key == b.routing_key
                && x.arguments == b.arguments
        }) {
            return false;
        }
        let (mode, with_x) = parse_mode(&b.arguments);
        self.bindings.push(HeaderBinding {
            destination: b.destination,
            routing_key: b.routing_key,
            arguments: b.arguments,
            mode,
            with_x,
        });
        true
    }

    /// Remove a binding (same destination, key and arguments); false if absent.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        let before = self.bindings.len();
        self.bindings.retain(|x| {
            !(x.destination == b.destination
                && x.routing_key == b.routing_key
                && x.arguments == b.arguments)
        });
        before != self.bindings.len()
    }

    /// Remove all bindings to `dest`.
    pub fn remove_destination(&mut self, dest: &Destination) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|x| &x.destination != dest);
        before - self.bindings.len()
    }

    /// Its bindings, with their arguments.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings
            .iter()
            .map(|b| Binding {
                destination: b.destination.clone(),
                routing_key: b.routing_key.clone(),
                arguments: b.arguments.clone(),
            })
            .collect()
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// Report destinations whose binding arguments match the message headers.
    pub fn route(&self, headers: Option<&FieldTable>, out: &mut dyn FnMut(&Destination)) {
        for b in &self.bindings {
            if b.matches(headers) {
                out(&b.destination);
            }
        }
    }
}
