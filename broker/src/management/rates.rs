//! Message rates: the broker keeps only cumulative counters, so a sampler
//! reads them every [`SAMPLE_INTERVAL`] and a rate is the difference
//! between the last two samples over the time between them (RabbitMQ's
//! `*_details.rate`, per second).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::core::Core;

/// How often counters are sampled (RabbitMQ's default
/// `collect_statistics_interval`).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// A queue's counters at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueCounts {
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub messages: u64,
    pub ready: u64,
    pub unacked: u64,
}

/// An exchange's counters at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExchangeCounts {
    pub publish_in: u64,
    pub publish_out: u64,
}

/// Every counter at one instant.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    queues: HashMap<(String, String), QueueCounts>,
    exchanges: HashMap<(String, String), ExchangeCounts>,
}

impl Sample {
    fn take(core: &Core) -> Sample {
        let queues = core
            .list_queues(None)
            .unwrap_or_default()
            .into_iter()
            .map(|q| {
                let counts = QueueCounts {
                    published: q.published,
                    delivered: q.delivered,
                    acked: q.acked,
                    redelivered: q.redelivered,
                    messages: q.messages,
                    ready: q.messages_ready,
                    unacked: q.messages_unacknowledged,
                };
                ((q.vhost, q.name), counts)
            })
            .collect();
        let exchanges = core
            .list_exchanges(None)
            .unwrap_or_default()
            .into_iter()
            .map(|x| {
                let counts = ExchangeCounts {
                    publish_in: x.publish_in,
                    publish_out: x.publish_out,
                };
                ((x.vhost, x.name), counts)
            })
            .collect();
        Sample {
            at: Instant::now(),
            queues,
            exchanges,
        }
    }

    fn queue_total(&self) -> QueueCounts {
        self.queues
            .values()
            .fold(QueueCounts::default(), |a, q| QueueCounts {
                published: a.published + q.published,
                delivered: a.delivered + q.delivered,
                acked: a.acked + q.acked,
                redelivered: a.redelivered + q.redelivered,
                messages: a.messages + q.messages,
                ready: a.ready + q.ready,
                unacked: a.unacked + q.unacked,
            })
    }

    fn publish_total(&self) -> u64 {
        self.exchanges.values().map(|x| x.publish_in).sum()
    }
}

/// Per-second rates of a queue's counters (those of the overview's totals
/// too), between the last two samples; zero until there are two.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueRates {
    pub published: f64,
    pub delivered: f64,
    pub acked: f64,
    pub redelivered: f64,
    pub messages: f64,
    pub ready: f64,
    pub unacked: f64,
}

/// Per-second rates of an exchange's counters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ExchangeRates {
    pub publish_in: f64,
    pub publish_out: f64,
}

/// The last two samples.
#[derive(Default)]
pub(crate) struct Rates {
    samples: Mutex<(Option<Sample>, Option<Sample>)>,
}

/// `(now - before) / seconds`, for counters that may also shrink (gauges;
/// a deleted and re-created queue).
fn per_second(now: u64, before: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    (now as f64 - before as f64) / seconds
}

impl Rates {
    /// Rates sampled from `core` every [`SAMPLE_INTERVAL`] until `core` goes.
    pub fn start(core: &Arc<Core>) -> Arc<Rates> {
        let rates = Arc::new(Rates::default());
        rates.sample(core);
        let (weak_core, weak_rates): (Weak<Core>, Weak<Rates>) =
            (Arc::downgrade(core), Arc::downgrade(&rates));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(core), Some(rates)) = (weak_core.upgrade(), weak_rates.upgrade()) else {
                    return;
                };
                rates.sample(&core);
            }
        });
        rates
    }

    fn sample(&self, core: &Core) {
        let sample = Sample::take(core);
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let last = samples.1.take();
        *samples = (last, Some(sample));
    }

    fn with<T: Default>(&self, f: impl FnOnce(&Sample, &Sample, f64) -> T) -> T {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        match &*samples {
            (Some(before), Some(now)) => {
                f(before, now, now.at.duration_since(before.at).as_secs_f64())
            }
            _ => T::default(),
        }
    }

    fn queue_rates(now: &QueueCounts, before: &QueueCounts, secs: f64) -> QueueRates {
        QueueRates {
            published: per_second(now.published, before.published, secs).max(0.0),
            delivered: per_second(now.delivered, before.delivered, secs).max(0.0),
            acked: per_second(now.acked, before.acked, secs).max(0.0),
            redelivered: per_second(now.redelivered, before.redelivered, secs).max(0.0),
            messages: per_second(now.messages, before.messages, secs),
            ready: per_second(now.ready, before.ready, secs),
            unacked: per_second(now.unacked, before.unacked, secs),
        }
    }

    /// A queue's rates.
    pub fn queue(&self, vhost: &str, name: &str) -> QueueRates {
        let key = (vhost.to_owned(), name.to_owned());
        self.with(
            |before, now, secs| match (now.queues.get(&key), before.queues.get(&key)) {
                (Some(n), Some(b)) => Rates::queue_rates(n, b, secs),
                _ => QueueRates::default(),
            },
        )
    }

    /// The rates of every queue together, and the rate of publishes into
    /// exchanges (the overview's `publish`).
    pub fn totals(&self) -> (QueueRates, f64) {
        self.with(|before, now, secs| {
            let queues = Rates::queue_rates(&now.queue_total(), &before.queue_total(), secs);
            let publish = per_second(now.publish_total(), before.publish_total(), secs).max(0.0);
            (queues, publish)
        })
    }

    /// An exchange's rates.
    pub fn exchange(&self, vhost: &str, name: &str) -> ExchangeRates {
        let key = (vhost.to_owned(), name.to_owned());
        self.with(
            |before, now, secs| match (now.exchanges.get(&key), before.exchanges.get(&key)) {
                (Some(n), Some(b)) => ExchangeRates {
                    publish_in: per_second(n.publish_in, b.publish_in, secs).max(0.0),
                    publish_out: per_second(n.publish_out, b.publish_out, secs).max(0.0),
                },
                _ => ExchangeRates::default(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::per_second;

    #[test]
    fn a_rate_is_the_difference_over_the_interval() {
        assert_eq!(per_second(150, 100, 5.0), 10.0);
        assert_eq!(per_second(100, 150, 5.0), -10.0);
        assert_eq!(per_second(100, 50, 0.0), 0.0);
    }
}
