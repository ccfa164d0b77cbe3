//! kombu (the AMQP client under oslo.messaging) against the embedded broker
//! and RabbitMQ alike: `tests/python/kombu_smoke.py`.

mod common;

use std::process::Command;

use common::*;

async fn kombu_smoke(url: String) {
    let script = repo().join("tests/python/kombu_smoke.py");
    let suffix = unique("k");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(url)
            .arg(suffix)
            .output()
    })
    .await
    .expect("join")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("kombu OK"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
