//! [`Stage`]: one step of a pipeline of services chained through queues,
//! configured from the environment as edge platforms do.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::worker::check_queue;
use super::{durable_queue, Format, Outcome, Publisher, Worker, WorkerHandle};
use crate::{Connection, Error};

/// How long a message whose output could not be sent for a transient
/// reason (the connection broke) waits before going back to its queue.
const RESEND_PAUSE: Duration = Duration::from_secs(1);

/// A pipeline stage: reads messages from its origin queue, runs a handler,
/// sends the handler's result to each destination queue (persistent,
/// confirmed), and only then acknowledges the input — so a stage killed at
/// any point loses nothing (a message may be sent twice, never lost).
///
/// [`Stage::from_env`] reads the edge platforms' variables:
///
/// | variable | meaning |
/// |---|---|
/// | `RABBITMQ_URL` | the broker (else `TRANSPORT_URL`, else the embedded broker) |
/// | `QUEUE_ORIGIN` | the queue to read (required) |
/// | `QUEUE_TO` | the queues to send to, comma-separated (none: a sink) |
/// | `QUEUE_DLQ` | where to dead-letter input that cannot be processed (optional) |
/// | `QUEUE_PREFETCH` | inputs processed at once, and prefetched (default 1) |
///
/// A stage declares nothing by default: queues belong to the operator, and
/// a missing one is an [`Error::is_not_found`] error naming it.
#[derive(Debug)]
pub struct Stage {
    connection: Connection,
    origin: String,
    to: Vec<String>,
    dead_letter: Option<String>,
    prefetch: u16,
    concurrency: usize,
    declare: bool,
}

/// The value of environment variable `name`, if set and not blank.
fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The queues of a comma-separated list, blanks dropped.
pub(crate) fn queue_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Stage {
    /// A stage reading `origin` and sending to every queue of `to`, with
    /// prefetch 1 and one message at a time.
    pub fn new<I, S>(connection: &Connection, origin: impl Into<String>, to: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Stage {
            connection: connection.clone(),
            origin: origin.into(),
            to: to.into_iter().map(Into::into).collect(),
            dead_letter: None,
            prefetch: 1,
            concurrency: 1,
            declare: false,
        }
    }

    /// A stage as the environment says (see the table above): connects to
    /// `RABBITMQ_URL` (or `TRANSPORT_URL`); a configuration error naming
    /// `QUEUE_ORIGIN` when it is unset, or `QUEUE_PREFETCH` when it is not
    /// a count.
    pub async fn from_env() -> Result<Self, Error> {
        let origin = env("QUEUE_ORIGIN").ok_or_else(|| {
            Error::config("QUEUE_ORIGIN is not set: name the queue this stage reads")
        })?;
        let to = env("QUEUE_TO").map(|l| queue_list(&l)).unwrap_or_default();
        let url = env("RABBITMQ_URL")
            .or_else(|| env("TRANSPORT_URL"))
            .unwrap_or_default();
        let connection = crate::connect(&url).await?;
        let mut stage = Stage::new(&connection, origin, to);
        stage.dead_letter = env("QUEUE_DLQ");
        if let Some(prefetch) = env("QUEUE_PREFETCH") {
            let n: u16 = prefetch.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::config(format!(
                    "QUEUE_PREFETCH={prefetch:?} is not a number from 1 to 65535"
                ))
            })?;
            stage = stage.prefetch(n).concurrency(n.into());
        }
        Ok(stage)
    }

    /// Whether the stage declares its queues, durable (default false: it
    /// only checks that they exist).
    pub fn declare(mut self, declare: bool) -> Self {
        self.declare = declare;
        self
    }

    /// At most this many inputs delivered and not yet acknowledged
    /// (default 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// At most this many inputs processed at once (default 1; outputs of
    /// concurrent inputs may then leave in another order).
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.max(1);
        self
    }

    /// Dead-letters input that cannot be processed (undecodable, rejected
    /// by the handler, an output the broker refuses) into `queue`, with
    /// the reason in its `x-warren-error` header; without one such input is
    /// rejected to the broker, and the reason logged.
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter = Some(queue.into());
        self
    }

    /// The queue the stage reads.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The queues the stage sends to.
    pub fn to(&self) -> &[String] {
        &self.to
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Declares the stage's queues (with [`declare`](Self::declare)) or
    /// checks that each exists, failing on the first missing one with an
    /// [`Error::is_not_found`] error naming it.
    pub async fn check(&self) -> Result<(), Error> {
        let mut queues = vec![self.origin.clone()];
        queues.extend(self.to.iter().cloned());
        queues.extend(self.dead_letter.iter().cloned());
        for queue in &queues {
            if self.declare {
                self.connection
                    .transport()
                    .declare_queue(&durable_queue(queue))
                    .await?;
            } else {
                check_queue(&self.connection, queue).await?;
            }
        }
        Ok(())
    }

    /// Checks the queues ([`check`](Self::check)), then runs `handler` on
    /// each input (JSON, or what its `content_type` says) and sends its
    /// `Ok` output (JSON) to every destination, acknowledging the input
    /// once all have confirmed. An `Err` dead-letters the input with the
    /// error as reason, as does an output a destination refuses (too large,
    /// unroutable); an output that could not be sent because the connection
    /// broke goes back to the origin queue.
    pub async fn run<I, O, E, F, Fut>(self, handler: F) -> Result<WorkerHandle, Error>
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + Sync + 'static,
        E: std::fmt::Display + Send + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        self.check().await?;
        let outputs: Vec<Publisher<O>> = self
            .to
            .iter()
            .map(|queue| Publisher::new(&self.connection, queue.as_str()).format(Format::Json))
            .collect();
        let outputs = std::sync::Arc::new(outputs);
        let mut worker = Worker::<I>::new(&self.connection, self.origin.as_str())
            .prefetch(self.prefetch)
            .concurrency(self.concurrency)
            .declare(self.declare);
        if let Some(dead_letter) = &self.dead_letter {
            worker = worker.dead_letter_queue(dead_letter.as_str());
        }
        let handler = std::sync::Arc::new(handler);
        let handle = worker
            .start(move |message| {
                let outputs = outputs.clone();
                let handler = handler.clone();
                async move {
                    let output = match handler(message.into_body()).await {
                        Ok(output) => output,
                        Err(e) => return Outcome::Reject(e.to_string()),
                    };
                    send(&outputs, &output).await
                }
            })
            .await?;
        tracing::info!(origin = %self.origin, to = ?self.to, "stage running");
        Ok(handle)
    }
}

/// Sends `output` to every destination at once: [`Outcome::Ack`] once all
/// confirmed.
async fn send<O: Serialize + Sync>(outputs: &[Publisher<O>], output: &O) -> Outcome {
    let sent = futures::future::join_all(outputs.iter().map(|p| p.publish(output))).await;
    let mut outcome = Outcome::Ack;
    for (publisher, result) in outputs.iter().zip(sent) {
        let Err(e) = result else { continue };
        if e.is_returned() || e.is_refused() || e.is_not_found() || e.is_config() {
            // It would fail again: dead-letter the input.
            return Outcome::Reject(format!(
                "cannot send the output to {:?}: {e}",
                publisher.routing_key()
            ));
        }
        tracing::warn!(
            to = %publisher.routing_key(),
            error = %e,
            "cannot send the output now: the input goes back to its queue"
        );
        outcome = Outcome::Requeue;
    }
    if outcome == Outcome::Requeue {
        tokio::time::sleep(RESEND_PAUSE).await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::queue_list;

    #[test]
    fn queue_to_is_a_comma_separated_list() {
        assert_eq!(queue_list("a, b,,c ,"), ["a", "b", "c"]);
        assert!(queue_list(" , ").is_empty());
    }
}
