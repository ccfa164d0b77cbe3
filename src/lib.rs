//! warren: typed RPC over message queues.
//!
//! Annotate a trait with [`service`] and get a typed client stub and a server
//! dispatcher speaking AMQP 0-9-1 the way OpenStack's oslo.messaging does.
//! With no broker configured, everything runs on the broker embedded in the
//! process:
//!
//! ```
//! #[warren::service(topic = "greeter", version = "1.0")]
//! pub trait Greeter {
//!     async fn hello(&self, name: String) -> String;
//! }
//!
//! struct English;
//!
//! impl Greeter for English {
//!     async fn hello(&self, name: String) -> String {
//!         format!("Hello, {name}!")
//!     }
//! }
//!
//! # #[cfg(feature = "embedded")]
//! #[tokio::main]
//! async fn main() -> Result<(), warren::Error> {
//!     // "" or embedded:// is the broker in this process; amqp:// and
//!     // rabbit:// URLs reach RabbitMQ (or any AMQP 0-9-1 server).
//!     let connection = warren::connect("embedded://").await?;
//!     let server = GreeterServer::new(English).serve(&connection, "greeter-1").await?;
//!     let greeter = GreeterClient::new(&connection);
//!     assert_eq!(greeter.hello("world".into()).await?, "Hello, world!");
//!     server.shutdown().await?;
//!     connection.close().await
//! }
//! # #[cfg(not(feature = "embedded"))]
//! # fn main() {}
//! ```
//!
//! - [`rpc`]: clients, servers, targets, contexts — what a service author
//!   touches;
//! - [`wire`]: envelopes and codecs (MessagePack, oslo JSON);
//! - [`transport`]: how the RPC layer reaches a broker (any AMQP server);
//! - [`metrics`]: the process's RPC metrics, in Prometheus' text format;
//! - [`notify`]: oslo-style notifications (notifier and listener);
//! - [`queue`]: work queues and pipelines: typed publishers, workers with
//!   retries and dead-lettering, pipeline stages;
//! - `broker`: the embedded AMQP 0-9-1 broker (crate `warren-broker`,
//!   re-exported with the default `embedded` feature).
#![warn(missing_docs)]

#[cfg(feature = "embedded")]
pub use warren_broker as broker;
mod connection;
#[cfg(feature = "embedded")]
pub mod embedded;
mod error;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod rpc;
pub mod transport;
pub mod wire;

pub use connection::{connect, connect_from_env, Connection};
pub use error::{BoxError, Error};
pub use warren_derive::service;

/// What a service author needs in scope.
pub mod prelude {
    pub use crate::rpc::{Context, ServerHandle};
    pub use crate::{connect, connect_from_env, service, Connection, Error};
}

/// Items the generated code refers to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use futures::future::BoxFuture;
    pub use serde;
    pub use tower;
}
