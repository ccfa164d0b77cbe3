//! Exchanges: their declared attributes and their binding tables (routers).
//!
//! An [`Exchange`] owns a [`Router`] (one per exchange type) that maps a routing key and
//! message headers to a set of [`Destination`]s (queues or other exchanges).

mod direct;
mod fanout;
mod headers;
mod topic;

use std::sync::atomic::AtomicU64;
use std::sync::RwLock;

use amq_protocol::types::FieldTable;

pub use direct::DirectRouter;
pub use fanout::FanoutRouter;
pub use headers::{validate_binding, values_equal, HeadersRouter};
pub use topic::TopicRouter;

/// How `exchange.declare` declares an exchange.
#[derive(Clone, Debug, Default)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists (404 if not); change nothing.
    pub passive: bool,
    /// Durable: kept in the data directory of a durable core.
    pub durable: bool,
    /// Deleted when its last binding goes away.
    pub auto_delete: bool,
    /// Clients may not publish to it, only other exchanges.
    pub internal: bool,
    /// Its arguments (`alternate-exchange`).
    pub arguments: FieldTable,
}

/// The type of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing key match.
    Direct,
    /// Every bound destination.
    Fanout,
    /// Dotted-word patterns with `*` (one word) and `#` (zero or more words).
    Topic,
    /// Header matching with `x-match` all/any.
    Headers,
}

impl ExchangeKind {
    /// Parse an AMQP exchange type name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(Self::Direct),
            "fanout" => Some(Self::Fanout),
            "topic" => Some(Self::Topic),
            "headers" => Some(Self::Headers),
            _ => None,
        }
    }

    /// The AMQP name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// Where a binding sends matching messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A queue, by name.
    Queue(String),
    /// Another exchange (exchange-to-exchange binding), by name.
    Exchange(String),
}

/// One binding of an exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (used by headers exchanges).
    pub arguments: FieldTable,
}

/// Per-type binding table.
#[derive(Debug)]
pub enum Router {
    /// Direct exchange table.
    Direct(DirectRouter),
    /// Fanout exchange table.
    Fanout(FanoutRouter),
    /// Topic exchange trie.
    Topic(TopicRouter),
    /// Headers exchange table.
    Headers(HeadersRouter),
}

impl Router {
    /// An empty table for the given exchange type.
    pub fn new(kind: ExchangeKind) -> Self {
        match kind {
            ExchangeKind::Direct => Self::Direct(DirectRouter::default()),
            ExchangeKind::Fanout => Self::Fanout(FanoutRouter::default()),
            ExchangeKind::Topic => Self::Topic(TopicRouter::default()),
            ExchangeKind::Headers => Self::Headers(HeadersRouter::default()),
        }
    }

    /// Add a binding; returns false if it already existed.
    pub fn bind(&mut self, b: Binding) -> bool {
        match self {
            Self::Direct(r) => r.bind(b),
            Self::Fanout(r) => r.bind(b),
            Self::Topic(r) => r.bind(b),
            Self::Headers(r) => r.bind(b),
        }
    }

    /// Remove a binding; returns false if it did not exist.
    pub fn unbind(&mut self, b: &Binding) -> bool {
        match self {
            Self::Direct(r) => r.unbind(b),
            Self::Fanout(r) => r.unbind(b),
            Self::Topic(r) => r.unbind(b),
            Self::Headers(r) => r.unbind(b),
        }
    }

    /// Remove every binding to `dest`; returns how many were removed.
    pub fn remove_destination(&mut self, dest: &Destination) -> usize {
        match self {
            Self::Direct(r) => r.remove_destination(dest),
            Self::Fanout(r) => r.remove_destination(dest),
            Self::Topic(r) => r.remove_destination(dest),
            Self::Headers(r) => r.remove_destination(dest),
        }
    }

    /// The destinations of its bindings (each at least once).
    pub fn destinations(&self) -> Vec<Destination> {
        match self {
            Self::Direct(r) => r.destinations(),
            Self::Fanout(r) => r.destinations(),
            Self::Topic(r) => r.destinations(),
            Self::Headers(r) => r.destinations(),
        }
    }

    /// Its bindings, in no particular order.
    pub fn bindings(&self) -> Vec<Binding> {
        match self {
            Self::Direct(r) => r.bindings(),
            Self::Fanout(r) => r.bindings(),
            Self::Topic(r) => r.bindings(),
            Self::Headers(r) => r.bindings(),
        }
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        match self {
            Self::Direct(r) => r.len(),
            Self::Fanout(r) => r.len(),
            Self::Topic(r) => r.len(),
            Self::Headers(r) => r.len(),
        }
    }

    /// True if there is no binding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `out` for each destination matching the routing key / headers (may repeat).
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut dyn FnMut(&Destination),
    ) {
        match self {
            Self::Direct(r) => r.route(routing_key, out),
            Self::Fanout(r) => r.route(out),
            Self::Topic(r) => r.route(routing_key, out),
            Self::Headers(r) => r.route(headers, out),
        }
    }
}

/// A declared exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Exchange name ("" for the default exchange).
    pub name: String,
    /// Exchange type.
    pub kind: ExchangeKind,
    /// Declared durable (kept in the data directory of a durable core unless
    /// auto-delete).
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Internal exchanges cannot be published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// The binding table.
    pub router: RwLock<Router>,
    /// Messages published to it, ever (RabbitMQ's `publish_in`).
    pub(crate) publish_in: AtomicU64,
    /// Of those, the ones routed to a queue (`publish_out`).
    pub(crate) publish_out: AtomicU64,
}

impl Exchange {
    /// Create an exchange with no bindings.
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        Self {
            name: name.to_string(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            router: RwLock::new(Router::new(kind)),
            publish_in: AtomicU64::new(0),
            publish_out: AtomicU64::new(0),
        }
    }

    /// The `alternate-exchange` argument, if any.
    pub fn alternate_exchange(&self) -> Option<String> {
        self.arguments
            .inner()
            .get("alternate-exchange")
            .and_then(super::value_as_string)
    }
}
