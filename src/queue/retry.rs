//! [`Retry`]: back-off through TTL retry queues.

use std::time::Duration;

use super::durable_queue;
use crate::transport::QueueSpec;

/// Retries with back-off, through TTL and dead-lettering: a message to try
/// again goes to a retry queue `<queue>.retry.<n>` whose messages expire
/// after the `n`-th delay and are then dead-lettered back to `<queue>`.
/// The broker holds the message meanwhile; nothing spins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    first: Duration,
    longest: Duration,
}

impl Retry {
    /// At most `retries` retries (at least 1), after 1 s, 2 s, 4 s, …
    /// capped at 60 s.
    pub fn new(retries: u32) -> Self {
        Retry {
            attempts: retries.max(1),
            first: Duration::from_secs(1),
            longest: Duration::from_secs(60),
        }
    }

    /// The first delay and the longest; each retry waits twice the one
    /// before, up to `longest`.
    pub fn backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.first = first.max(Duration::from_millis(1));
        self.longest = longest.max(self.first);
        self
    }

    /// How many retries.
    pub fn retries(&self) -> u32 {
        self.attempts
    }

    /// The delay before retry `n` (1-based).
    pub fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.longest)
            .min(self.longest)
    }

    /// The name of retry queue `n` of `queue`.
    pub fn queue_name(queue: &str, n: u32) -> String {
        format!("{queue}.retry.{n}")
    }

    pub(crate) fn queue_spec(&self, queue: &str, n: u32) -> QueueSpec {
        let ms = u32::try_from(self.delay(n).as_millis()).unwrap_or(u32::MAX);
        QueueSpec {
            message_ttl_ms: Some(ms),
            dead_letter_exchange: Some(String::new()),
            dead_letter_routing_key: Some(queue.to_owned()),
            ..durable_queue(&Retry::queue_name(queue, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_longest_and_name_their_queues() {
        let retry = Retry::new(6).backoff(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (1..=6).map(|n| retry.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        // No overflow however far it goes.
        assert_eq!(retry.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(Retry::new(0).retries(), 1);
        let spec = retry.queue_spec("resize", 3);
        assert_eq!(spec.name, "resize.retry.3");
        assert_eq!(spec.message_ttl_ms, Some(400));
        assert_eq!(spec.dead_letter_exchange.as_deref(), Some(""));
        assert_eq!(spec.dead_letter_routing_key.as_deref(), Some("resize"));
        assert!(spec.durable);
    }
}
