//! Runs `tests/python/pika_smoke.py` (Python + pika, from the harness's
//! venv) against the embedded broker.

mod common;

use warren::broker::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_smoke() {
    let python = common::python();
    let b = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/pika_smoke.py");
    let url = b.url();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .arg(script)
                .arg(url)
                .output()
        }),
    )
    .await
    .expect("pika script hangs")
    .expect("join")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("pika OK"));
}
