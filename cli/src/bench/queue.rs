//! `--mode queue`: PerfTest-style producers and consumers on plain queues.
//!
//! Each producer and each consumer has its own connection. Producers publish
//! to the default exchange, spread round-robin over `--queues` queues;
//! consumers are spread the same way. A body starts with its send time (µs
//! since the run started, little-endian; the intended time under `--rate`,
//! so stalls are not hidden), and a consumer records now minus that: the
//! end-to-end latency. After the producers stop, consumers drain what is
//! still queued, so `received` can be compared with `sent`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use warren::transport::{ConsumeSpec, Outgoing, Properties, QueueSpec, Transport};

use super::run::{self, RunResult, Shared};
use super::Workload;

/// Bytes of a body the send time takes.
const STAMP: usize = 8;

/// How long consumers may go without a message, after the producers
/// stopped, before the drain gives up on the rest.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// What the producers and consumers of a queue run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueRun {
    /// Producers.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Queues.
    pub queues: usize,
    /// Outstanding confirms per producer, if confirming.
    pub confirm: Option<usize>,
    /// Persistent messages on durable queues.
    pub persistent: bool,
    /// Consumed without acknowledgements.
    pub autoack: bool,
    /// Prefetch per consumer (0: unlimited).
    pub prefetch: u16,
    /// Messages published in the measured window.
    pub sent: u64,
    /// Published per second in the measured window.
    pub sent_rate: f64,
    /// Messages published over the whole run (warm-up included).
    pub sent_total: u64,
    /// Messages consumed over the whole run, drain included.
    pub received_total: u64,
    /// Publishes that failed (refused, returned or nacked).
    pub publish_errors: u64,
    /// Acknowledgements that failed.
    pub ack_errors: u64,
}

/// Counters beyond [`Shared`]'s.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    sent_total: AtomicU64,
    received_total: AtomicU64,
    publish_errors: AtomicU64,
    ack_errors: AtomicU64,
}

/// Runs the queue workload once and measures it.
pub async fn measure(workload: &Workload) -> Result<RunResult, Box<dyn std::error::Error>> {
    let sizes = run::parse_payload(&workload.payload)?;
    let prefix = format!("{}_{}", workload.topic, &warren::wire::new_id()[..8]);
    let names: Vec<String> = (0..workload.queues.max(1))
        .map(|i| format!("{prefix}_q{i}"))
        .collect();
    let admin = warren::connect(&workload.url).await?;
    for name in &names {
        admin
            .transport()
            .declare_queue(&QueueSpec {
                name: name.clone(),
                durable: workload.persistent,
                ..QueueSpec::default()
            })
            .await?;
    }

    let mut producers = Vec::new();
    for _ in 0..workload.producers.max(1) {
        producers.push(warren::connect(&workload.url).await?);
    }
    let mut subscriptions = Vec::new();
    let mut consumer_connections = Vec::new();
    for i in 0..workload.consumers.max(1) {
        let connection = warren::connect(&workload.url).await?;
        let subscription = connection
            .transport()
            .consume(&ConsumeSpec {
                queue: names[i % names.len()].clone(),
                prefetch: workload.prefetch,
                no_ack: workload.autoack,
            })
            .await?;
        subscriptions.push(subscription);
        consumer_connections.push(connection);
    }

    let shared = Shared::new(workload, subscriptions.len());
    let counts = Arc::new(Counts::default());
    let progress = run::progress_bar(shared.clone(), workload);
    let mut consumers = tokio::task::JoinSet::new();
    for (index, subscription) in subscriptions.into_iter().enumerate() {
        consumers.spawn(consume(
            index,
            subscription,
            shared.clone(),
            counts.clone(),
            workload.autoack,
        ));
    }
    let mut publishing = tokio::task::JoinSet::new();
    for (index, connection) in producers.iter().enumerate() {
        publishing.spawn(produce(
            index,
            connection.transport().clone(),
            names[index % names.len()].clone(),
            shared.clone(),
            counts.clone(),
            sizes.clone(),
            workload.clone(),
        ));
    }
    while publishing.join_next().await.is_some() {}
    let producers_done = Instant::now();
    let measured_sent = counts.sent.load(Ordering::Relaxed);
    let publish_window = producers_done
        .saturating_duration_since(shared.measure_from)
        .as_secs_f64()
        .max(1e-9);

    // Drain: until everything sent arrived, or consumers stall.
    let mut last = (
        counts.received_total.load(Ordering::Relaxed),
        Instant::now(),
    );
    loop {
        let received = counts.received_total.load(Ordering::Relaxed);
        if received >= counts.sent_total.load(Ordering::Relaxed) || consumers.is_empty() {
            break;
        }
        if received != last.0 {
            last = (received, Instant::now());
        } else if last.1.elapsed() >= DRAIN_IDLE {
            tracing::warn!(
                received,
                sent = counts.sent_total.load(Ordering::Relaxed),
                "consumers stalled while draining"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumers.abort_all();
    while consumers.join_next().await.is_some() {}
    shared.finished.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let (histogram, seconds, timeline) = shared.summary();
    let completed = shared.completed();
    let received_total = counts.received_total.load(Ordering::Relaxed);
    let result = RunResult {
        url: run::display_url(&workload.url),
        mode: workload.mode,
        codec: workload.codec,
        servers: workload.consumers,
        clients: workload.producers,
        in_flight: workload.confirm.unwrap_or(1),
        payload: workload.payload.clone(),
        rate: workload.rate,
        seconds,
        completed,
        errors: counts.publish_errors.load(Ordering::Relaxed),
        timeouts: 0,
        received: Some(received_total),
        throughput: completed as f64 / seconds,
        latency_us: run::Latency::of(&histogram),
        timeline,
        distribution: run::distribution(&histogram),
        queue: Some(QueueRun {
            producers: workload.producers.max(1),
            consumers: workload.consumers.max(1),
            queues: names.len(),
            confirm: workload.confirm,
            persistent: workload.persistent,
            autoack: workload.autoack,
            prefetch: workload.prefetch,
            sent: measured_sent,
            sent_rate: measured_sent as f64 / publish_window,
            sent_total: counts.sent_total.load(Ordering::Relaxed),
            received_total,
            publish_errors: counts.publish_errors.load(Ordering::Relaxed),
            ack_errors: counts.ack_errors.load(Ordering::Relaxed),
        }),
    };

    for connection in producers.iter().chain(&consumer_connections) {
        connection.close().await?;
    }
    for name in &names {
        admin.transport().delete_queue(name).await?;
    }
    admin.close().await?;
    Ok(result)
}

/// One producer: publishes until the run ends, at most `--confirm`
/// publishes awaiting their confirm at once.
async fn produce(
    index: usize,
    transport: Arc<dyn Transport>,
    queue: String,
    shared: Arc<Shared>,
    counts: Arc<Counts>,
    sizes: Vec<(usize, u32)>,
    workload: Workload,
) {
    let mut rng =
        run::Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let window = Arc::new(Semaphore::new(workload.confirm.unwrap_or(1).max(1)));
    let properties = if workload.persistent {
        Properties::default().with_delivery_mode(2)
    } else {
        Properties::default()
    };
    for k in 0u64.. {
        let Some((intended, measuring)) = shared.pace(k, workload.rate).await else {
            break;
        };
        let mut body = vec![0x5a; run::pick(&sizes, &mut rng).max(STAMP)];
        let stamp = intended.saturating_duration_since(shared.start).as_micros() as u64;
        body[..STAMP].copy_from_slice(&stamp.to_le_bytes());
        let message = Outgoing {
            exchange: String::new(),
            routing_key: queue.clone(),
            mandatory: workload.confirm.is_some(),
            confirm: workload.confirm.is_some(),
            properties: properties.clone(),
            body: body.into(),
        };
        // Counted when handed over, so the drain knows what to wait for.
        counts.sent_total.fetch_add(1, Ordering::Relaxed);
        if measuring {
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
        if workload.confirm.is_none() {
            if let Err(e) = transport.publish(message).await {
                failed(&counts, &e);
            }
            continue;
        }
        let Ok(permit) = window.clone().acquire_owned().await else {
            break;
        };
        let transport = transport.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            if let Err(e) = transport.publish(message).await {
                failed(&counts, &e);
            }
            drop(permit);
        });
    }
    // Wait for the outstanding confirms.
    let _ = window
        .acquire_many(workload.confirm.unwrap_or(1).max(1) as u32)
        .await;
}

/// A publish that failed: counted (and no longer expected by the drain).
fn failed(counts: &Counts, error: &warren::Error) {
    counts.sent_total.fetch_sub(1, Ordering::Relaxed);
    if counts.publish_errors.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!(%error, "publish failed");
    }
}

/// One consumer: records each message's latency and acknowledges it.
async fn consume(
    index: usize,
    mut subscription: Box<dyn warren::transport::Subscription>,
    shared: Arc<Shared>,
    counts: Arc<Counts>,
    autoack: bool,
) {
    while let Some(delivery) = subscription.next().await {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "consumer cut off");
                break;
            }
        };
        let done = Instant::now();
        counts.received_total.fetch_add(1, Ordering::Relaxed);
        let now = done.saturating_duration_since(shared.start).as_micros() as u64;
        if let Some(stamp) = delivery.body.get(..STAMP) {
            let mut raw = [0u8; STAMP];
            raw.copy_from_slice(stamp);
            let sent = shared.start + Duration::from_micros(u64::from_le_bytes(raw));
            if sent >= shared.measure_from {
                shared.record(index, now.saturating_sub(u64::from_le_bytes(raw)), done);
            }
        }
        if !autoack {
            // Acknowledgements are pipelined, as a Java client's are: an ack
            // awaited here would wait for the connection to write it.
            let acker = delivery.acker;
            let counts = counts.clone();
            tokio::spawn(async move {
                if let Err(e) = acker.ack().await {
                    if counts.ack_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, "ack failed");
                    }
                }
            });
        }
    }
}
