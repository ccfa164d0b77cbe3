//! [`Publisher`]: typed messages onto a queue or an exchange, persistent and
//! confirmed by default.

use std::marker::PhantomData;

use serde::Serialize;

use super::{durable_queue, Format};
use crate::transport::{Outgoing, Properties, QueueSpec};
use crate::{Connection, Error};

/// Publishes messages of type `T`.
///
/// [`Publisher::new`] sends to one queue (through the default exchange),
/// [`Publisher::to_exchange`] to an exchange with a routing key. By default
/// messages are JSON, persistent (delivery mode 2) and confirmed: `publish`
/// returns once the broker has taken the message, and fails with a typed
/// error when it did not, [`Error::is_returned`] (published `mandatory`
/// and no queue took it) or [`Error::is_refused`] (the broker nacked it, or
/// refused it as larger than its `max_message_size`).
pub struct Publisher<T: ?Sized> {
    connection: Connection,
    exchange: String,
    routing_key: String,
    format: Format,
    persistent: bool,
    confirm: bool,
    mandatory: bool,
    durable: bool,
    _message: PhantomData<fn(&T)>,
}

impl<T: ?Sized> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        Publisher {
            connection: self.connection.clone(),
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            format: self.format,
            persistent: self.persistent,
            confirm: self.confirm,
            mandatory: self.mandatory,
            durable: self.durable,
            _message: PhantomData,
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("format", &self.format)
            .field("persistent", &self.persistent)
            .field("confirm", &self.confirm)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl<T: Serialize + ?Sized> Publisher<T> {
    /// A publisher to `queue`, through the default exchange. Messages are
    /// `mandatory`: one sent to a queue that does not exist comes back as
    /// an [`Error::is_returned`] error rather than vanishing.
    pub fn new(connection: &Connection, queue: impl Into<String>) -> Self {
        Publisher {
            connection: connection.clone(),
            exchange: String::new(),
            routing_key: queue.into(),
            format: Format::default(),
            persistent: true,
            confirm: true,
            mandatory: true,
            durable: true,
            _message: PhantomData,
        }
    }

    /// A publisher to `exchange` with `routing_key` (change the key per
    /// message with [`publish_with_key`](Self::publish_with_key)). Not
    /// `mandatory` by default: a message no queue is bound for (a log
    /// line nobody listens to) is dropped by the broker, as in
    /// publish/subscribe it should be; set [`mandatory`](Self::mandatory)
    /// to have it returned as an error instead.
    pub fn to_exchange(
        connection: &Connection,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        Publisher {
            mandatory: false,
            exchange: exchange.into(),
            ..Publisher::new(connection, routing_key)
        }
    }

    /// The body encoding (default [`Format::Json`]).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Whether messages are persistent, delivery mode 2 (default), or
    /// transient, 1. A persistent message in a durable queue survives a
    /// broker restart.
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Whether `publish` waits for the broker's publisher confirm (default
    /// true). Without it, a publish returns once the message is written to
    /// the connection, and returns and nacks go unreported.
    pub fn confirm(mut self, confirm: bool) -> Self {
        self.confirm = confirm;
        self
    }

    /// Whether the broker returns a message no queue takes (reported, with
    /// confirms on, as [`Error::is_returned`]).
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Whether [`declare`](Self::declare) declares the queue durable
    /// (default) or transient, to match how other clients declare it.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// The exchange messages go to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key [`publish`](Self::publish) uses (for
    /// [`Publisher::new`], the queue).
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// The connection publishes go through.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Declares the queue a [`Publisher::new`] publishes to, durable
    /// unless set otherwise ([`durable`](Self::durable); idempotent). Nothing to declare for an exchange publisher: declare
    /// the exchange with the transport.
    pub async fn declare(&self) -> Result<(), Error> {
        if !self.exchange.is_empty() {
            return Ok(());
        }
        self.connection
            .transport()
            .declare_queue(&QueueSpec {
                durable: self.durable,
                ..durable_queue(&self.routing_key)
            })
            .await
    }

    /// Publishes `message` with the publisher's routing key.
    pub async fn publish(&self, message: &T) -> Result<(), Error> {
        self.publish_with(&self.routing_key, message, Properties::default())
            .await
    }

    /// Publishes `message` with `routing_key` (the severity of a log line,
    /// a topic…).
    pub async fn publish_with_key(&self, routing_key: &str, message: &T) -> Result<(), Error> {
        self.publish_with(routing_key, message, Properties::default())
            .await
    }

    /// Publishes `message` with `routing_key` and `properties` (a
    /// `reply_to` and `correlation_id`, an expiration, a priority…); the
    /// content type and delivery mode are the publisher's.
    pub async fn publish_with(
        &self,
        routing_key: &str,
        message: &T,
        properties: Properties,
    ) -> Result<(), Error> {
        let body = self.format.encode(message)?;
        let properties = properties
            .with_content_type(self.format.content_type())?
            .with_delivery_mode(if self.persistent { 2 } else { 1 });
        self.connection
            .transport()
            .publish(Outgoing {
                exchange: self.exchange.clone(),
                routing_key: routing_key.to_owned(),
                mandatory: self.mandatory,
                confirm: self.confirm,
                properties,
                body,
            })
            .await
    }
}
