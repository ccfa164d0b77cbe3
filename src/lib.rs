//! warren: typed RPC over message queues.
#![warn(missing_docs)]

pub mod broker;
