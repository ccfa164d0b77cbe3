//! pika (the reference Python AMQP client) exercising every broker feature,
//! on warren's embedded broker and on RabbitMQ alike:
//! `tests/python/pika_features.py`, one function per feature (routing through
//! every exchange type, acks and redelivery, prefetch, confirms, returns,
//! TTL, dead-lettering with `x-death`, length limits, priorities, exclusive
//! and auto-delete queues, transactions, direct reply-to, and the errors with
//! their exact reply codes). RabbitMQ is the reference: the same script must
//! pass on both.

mod common;

use std::time::Duration;

use common::*;

/// Generous: the script takes seconds; this only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(240);

async fn pika_features(url: String) {
    let suffix = unique("p");
    let stdout = run_python_within(LIMIT, "pika_features.py", &[&url, &suffix]).await;
    assert!(stdout.contains("pika OK"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_exercises_every_feature_on_the_embedded_broker() {
    let broker = embedded_broker().await;
    pika_features(broker.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_exercises_every_feature_on_rabbitmq() {
    pika_features(rabbitmq_url()).await
}
