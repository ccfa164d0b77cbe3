//! warren: typed RPC over message queues.
//!
//! Annotate a trait with [`service`] and get a typed client stub and a server
//! dispatcher speaking AMQP 0-9-1 the way OpenStack's oslo.messaging does.
//!
//! - [`rpc`]: clients, servers, targets, contexts — what a service author
//!   touches;
//! - [`wire`]: envelopes and codecs (MessagePack, oslo JSON);
//! - [`transport`]: how the RPC layer reaches a broker (any AMQP server);
//! - [`notify`]: oslo-style notifications (notifier and listener);
//! - `broker`: the embedded AMQP 0-9-1 broker (crate `warren-broker`,
//!   re-exported with the default `embedded` feature).
#![warn(missing_docs)]

#[cfg(feature = "embedded")]
pub use warren_broker as broker;
mod connection;
#[cfg(feature = "embedded")]
pub mod embedded;
mod error;
pub mod notify;
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
