//! warren: typed RPC over message queues.
#![warn(missing_docs)]

pub mod broker;
mod error;
pub mod wire;

pub use error::{BoxError, Error};
