//! Broker hardening (issue #9): what a hostile or broken peer does to warren's
//! broker over TCP, and what it must do instead. Every attack asserts that the
//! broker closes or refuses the offending peer *and* serves a new client
//! afterwards; races and permission cases run on both brokers (warren's and
//! RabbitMQ) with the same assertions.
//!
//! One test binary with a module per area, so the suite links the crate once.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod dead_letter;
mod durability;
mod flow;
mod frames;
