//! RPC over AMQP end to end: one binary with a module per area, so the
//! suite links the crate once.
//!
//! - [`calls`]: the RPC conformance suite, every behaviour of calls, casts
//!   and servers on each backend (in-process, warren's broker over TCP,
//!   RabbitMQ);
//! - [`connect`], [`bounded`]: URLs, failover, connection timeouts, and
//!   resources bounded under failure;
//! - [`topology`]: what warren declares equals what oslo.messaging declares;
//! - [`oslo_interop`], [`plain_amqp`]: Python peers (oslo.messaging, pika)
//!   and plain AMQP clients calling and serving warren;
//! - [`tower`]: the generated clients as `tower::Service`s, under tower's
//!   middleware;
//! - [`reliability`]: duplicates, poison requests, a shutdown's grace period;
//! - [`cluster`]: failover on a three-node RabbitMQ cluster of the test's own;
//! - [`tls`]: `amqps://` clients and TLS listeners, on both brokers;
//! - [`queue`]: work queues (`warren::queue`): typed publishers and
//!   workers, outcomes, retries, dead-letter queues, confirms;
//! - [`pipeline`]: the edge pipeline, `aion_stage` processes between a
//!   Python producer and the last queue.
//! - [`trace`]: W3C trace context across calls, and the RPC metrics.
//!
//! Tests share the process: topics and queue names are unique per test,
//! embedded brokers listen on ephemeral ports, and tests that inspect
//! RabbitMQ's whole topology use a vhost of their own. Restarting RabbitMQ
//! would disturb every other test here, so `tests/reconnect.rs` stays a
//! binary of its own.

#[path = "../common/mod.rs"]
mod common;

mod bounded;
mod calls;
mod cluster;
mod connect;
mod oslo_interop;
mod pipeline;
mod plain_amqp;
mod queue;
mod reliability;
mod tls;
mod topology;
mod tower;
mod trace;
