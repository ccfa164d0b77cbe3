//! Work queues and pipelines: typed publishers and workers.
//!
//! The other half of what teams do over a broker, beside RPC: a
//! [`Publisher<T>`] puts messages of type `T` on a queue (or an exchange),
//! a [`Worker<T>`] consumes one or several queues and runs a handler on
//! each message, and a [`Stage`] is the pipeline step of the edge pattern
//! (read a queue, process, send to the next queues, acknowledge).
//!
//! ```
//! use warren::queue::{Outcome, Publisher, Worker};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Resize { image: String, width: u32 }
//!
//! # #[cfg(feature = "embedded")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), warren::Error> {
//! let connection = warren::connect("embedded://").await?;
//! let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
//! let worker = Worker::<Resize>::new(&connection, "resize")
//!     .concurrency(4)
//!     .start(move |task| {
//!         let done = done.clone();
//!         async move {
//!             let _ = done.send(task.body.image);
//!             Outcome::Ack
//!         }
//!     })
//!     .await?;
//! let publisher = Publisher::<Resize>::new(&connection, "resize");
//! publisher.publish(&Resize { image: "cat.png".into(), width: 64 }).await?;
//! assert_eq!(finished.recv().await.as_deref(), Some("cat.png"));
//! worker.shutdown().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "embedded"))]
//! # fn main() {}
//! ```
//!
//! Defaults follow the RabbitMQ guides on reliability: durable queues,
//! persistent messages, publisher confirms, manual acknowledgements sent
//! only once the handler succeeded. Bodies are JSON unless chosen otherwise
//! ([`Format`]); a received message is decoded by its own `content_type`.
//!
//! Headers warren sets on messages it moves: `x-warren-retries` (the
//! retries so far), `x-warren-error` (why it was retried or dead-lettered),
//! `x-warren-queue` (the queue it was consumed from).

mod format;
mod outcome;
mod publisher;
mod retry;
mod stage;
mod worker;

pub use format::Format;
pub use outcome::{IntoOutcome, Message, Outcome};
pub use publisher::Publisher;
pub use retry::Retry;
pub use stage::Stage;
pub use worker::{Worker, WorkerHandle, WorkerStats};

use amq_protocol::types::AMQPValue;

use crate::transport::{Properties, QueueSpec};

/// The header counting a message's retries so far.
pub const RETRIES_HEADER: &str = "x-warren-retries";
/// The header saying why a message was retried or dead-lettered.
pub const ERROR_HEADER: &str = "x-warren-error";
/// The header naming the queue a dead-lettered message was consumed from.
pub const QUEUE_HEADER: &str = "x-warren-queue";

/// A durable queue named `name`, no arguments.
pub(crate) fn durable_queue(name: &str) -> QueueSpec {
    QueueSpec {
        name: name.to_owned(),
        durable: true,
        ..QueueSpec::default()
    }
}

/// `properties` with header `name` set to `value`.
pub(crate) fn with_header(properties: Properties, name: &str, value: AMQPValue) -> Properties {
    let properties = properties.into_amqp();
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    Properties::from(properties.with_headers(headers))
}

/// A text header's value (`x-warren-error`), if present.
pub fn text_header<'a>(properties: &'a Properties, name: &str) -> Option<&'a str> {
    let headers = properties.as_amqp().headers().as_ref()?;
    let (_, value) = headers.inner().iter().find(|(k, _)| k.as_str() == name)?;
    match value {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str()),
        _ => None,
    }
}
