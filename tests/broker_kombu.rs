//! kombu (the AMQP client under oslo.messaging) against the embedded broker
//! and RabbitMQ alike: `tests/python/kombu_smoke.py`, one function per
//! feature (routing, acks and prefetch, TTL and dead-lettering, confirms,
//! nacks and returns, error codes).

mod common;

use std::time::Duration;

use common::*;

/// Generous: the script takes seconds; this only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(180);

async fn kombu_smoke(url: String) {
    let suffix = unique("k");
    let stdout = run_python_within(LIMIT, "kombu_smoke.py", &[&url, &suffix]).await;
    assert!(stdout.contains("kombu OK"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_works_against_the_embedded_broker() {
    let broker = embedded_broker().await;
    kombu_smoke(broker.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kombu_works_against_rabbitmq() {
    kombu_smoke(rabbitmq_url()).await
}
