//! Runs `tests/python/pika_smoke.py` (Python + pika, from the harness's
//! venv) against the embedded broker.

mod common;

use warren::broker::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_smoke() {
    let b = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let url = b.url();
    let stdout = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        common::run_python("pika_smoke.py", &[&url]),
    )
    .await
    .expect("pika script hangs");
    assert!(stdout.contains("pika OK"));
}
