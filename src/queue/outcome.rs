//! What a worker's handler receives ([`Message`]) and what it decides
//! ([`Outcome`]).

use std::sync::Arc;

use crate::transport::Properties;

/// A message a worker received, decoded.
#[derive(Debug)]
pub struct Message<T> {
    /// The decoded body.
    pub body: T,
    pub(crate) queue: Arc<str>,
    pub(crate) routing_key: String,
    pub(crate) properties: Properties,
    pub(crate) redelivered: bool,
    pub(crate) retries: u32,
}

impl<T> Message<T> {
    /// The decoded body, taken.
    pub fn into_body(self) -> T {
        self.body
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The routing key it was delivered with: as published, or for a
    /// message back from a retry, the key that brought it back (its
    /// `x-death` header keeps the original).
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    /// Its AMQP properties (`reply_to`, `correlation_id`, headers…).
    pub fn properties(&self) -> &Properties {
        &self.properties
    }

    /// Whether the broker delivered it before (to a worker that did not
    /// acknowledge it: it stopped, or its connection broke).
    pub fn redelivered(&self) -> bool {
        self.redelivered
    }

    /// How many times a handler asked to retry it before
    /// ([`Outcome::Retry`]); 0 on its first attempt.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

/// What becomes of a message once its handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge it, the broker forgets it.
    Ack,
    /// Put it back on its queue now, for any worker (use for a worker
    /// that cannot take it, not for a failure: that is `Retry`).
    Requeue,
    /// It failed, perhaps for a while: try again after the worker's
    /// back-off ([`Retry`](super::Retry)), and dead-letter it once the
    /// retries are spent (at once if the worker has no retry policy). The
    /// reason travels in the `x-warren-error` header.
    Retry(String),
    /// It can never succeed: dead-letter it now (to the worker's
    /// dead-letter queue, if it has one; else the broker drops it or
    /// dead-letters it as the queue says). The reason is logged and travels
    /// in the `x-warren-error` header.
    Reject(String),
}

/// What a handler may return: an [`Outcome`], `()` (acknowledge), or a
/// `Result` whose error means [`Outcome::Retry`] with the error's text.
pub trait IntoOutcome {
    /// The outcome.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Ack
    }
}

impl<E: std::fmt::Display> IntoOutcome for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}

impl<E: std::fmt::Display> IntoOutcome for Result<Outcome, E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }
}
