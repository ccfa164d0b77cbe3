//! The AMQP broker as clients see it: one binary with a module per area, so
//! the suite links the crate once.
//!
//! - [`spec`]: the conformance spec, each behaviour once, run as a matrix of
//!   clients (lapin, pika, kombu) × brokers (warren's over TCP, RabbitMQ),
//!   with the same assertions on both brokers;
//! - [`wire`]: protocol headers and malformed frames;
//! - [`heartbeat`]: heartbeats over a raw socket, on both brokers;
//! - [`management`]: `warren broker --management` (RabbitMQ's management
//!   API, `/metrics`, the dashboard) beside RabbitMQ's own;
//! - [`embedded`] and [`permissions`]: warren's own broker API (the socket-free
//!   core, users and permission patterns, shutdown);
//! - [`ctl`]: `warren ctl` against a `warren broker` process, beside
//!   `rabbitmqctl`, and RabbitMQ's definitions both ways.
//! - [`tutorials`]: RabbitMQ's six tutorials, the Rust examples against the
//!   tutorials' Python programs, on both brokers.
//!
//! Tests share the process: names are unique per test and embedded brokers
//! listen on ephemeral ports.

#[path = "../common/mod.rs"]
mod common;

mod ctl;
mod embedded;
mod heartbeat;
mod lapin_spec;
mod management;
mod permissions;
mod spec;
mod tutorials;
mod wire;
