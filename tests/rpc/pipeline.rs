//! The edge pipeline: a Python (pika) producer publishes JSON into
//! `QUEUE_ORIGIN`, `aion_stage` processes (the example, run as the platforms
//! run it, configured by environment) relay it through queues an operator
//! declared, and the last queue must hold every message exactly once with
//! all its fields; killed stages lose nothing; bad input has a logged,
//! tested outcome. On warren's broker over TCP and on RabbitMQ.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::queue::{cleanup, take};
use serde_json::Value;
use warren::queue::{Publisher, ERROR_HEADER};

crate::on_both_brokers!(
    two_chained_stages_relay_every_message_exactly_once,
    a_stage_killed_mid_stream_loses_nothing,
    bad_input_is_dead_lettered_with_a_logged_reason,
    a_missing_queue_stops_the_stage_naming_it,
    a_python_stage_and_a_warren_stage_chain,
);

/// Hang guard for a stage to come up or a queue to fill: far above any
/// real wait.
const WAIT: Duration = Duration::from_secs(60);

/// An `aion_stage` process; killed (SIGKILL) on drop.
struct StageProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Reads stderr into `stderr` until the process closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StageProcess {
    fn spawn(url: &str, origin: &str, to: &str, env: &[(&str, &str)], args: &[&str]) -> Self {
        let mut command = Command::new(example_bin("aion_stage"));
        command
            .args(args)
            .env_remove("TRANSPORT_URL")
            .env("RABBITMQ_URL", url)
            .env("QUEUE_ORIGIN", origin)
            .env("QUEUE_TO", to)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("aion_stage runs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut reader = None;
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            reader = Some(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            }));
        }
        StageProcess {
            child,
            stderr,
            reader,
        }
    }

    fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// SIGTERM, then waits for the graceful exit.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        self.read_all();
        status
    }

    /// Waits until everything the exited process wrote is in the log.
    fn read_all(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.read_all();
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "aion_stage still runs: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Declares `queues` durable, as the operator's script does.
async fn operator_declares(connection: &warren::Connection, queues: &[&str]) {
    for queue in queues {
        Publisher::<Value>::new(connection, *queue)
            .declare()
            .await
            .expect("declare");
    }
}

/// Waits until `queue` has a consumer (a stage is up).
async fn consumed(connection: &warren::Connection, queue: &str, stage: &StageProcess) {
    let up = tokio::time::timeout(WAIT, async {
        loop {
            match connection.transport().check_queue(queue).await {
                Ok(stats) if stats.consumers > 0 => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(up.is_ok(), "no stage consumes {queue}: {}", stage.log());
}

/// Waits until `queue` holds at least `n` ready messages.
async fn holds(connection: &warren::Connection, queue: &str, n: u32) {
    let full = tokio::time::timeout(WAIT, async {
        loop {
            match connection.transport().check_queue(queue).await {
                Ok(stats) if stats.messages >= n => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(full.is_ok(), "{queue} never held {n} messages");
}

async fn produce(url: &str, queue: &str, count: usize) {
    let out = run_python("pika_json_producer.py", &[url, queue, &count.to_string()]).await;
    assert_eq!(out.trim(), count.to_string());
}

/// The ids of the JSON objects taken, and how often each came.
fn ids(messages: &[Value]) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    for message in messages {
        let id = message["id"].as_u64().expect("an id");
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

async fn take_json(connection: &warren::Connection, queue: &str, n: usize) -> Vec<Value> {
    take(connection, queue, n)
        .await
        .iter()
        .map(|d| serde_json::from_slice(&d.body).expect("JSON"))
        .collect()
}

async fn two_chained_stages_relay_every_message_exactly_once(url: String) {
    const N: usize = 300;
    let connection = warren::connect(&url).await.expect("connect");
    let (origin, middle, last) = (unique("origin"), unique("middle"), unique("last"));
    operator_declares(&connection, &[&origin, &middle, &last]).await;
    let first = StageProcess::spawn(&url, &origin, &middle, &[("STAGE_NAME", "one")], &[]);
    // The second takes eight at a time (their order is not kept).
    let second = StageProcess::spawn(
        &url,
        &middle,
        &last,
        &[("STAGE_NAME", "two"), ("QUEUE_PREFETCH", "8")],
        &[],
    );
    consumed(&connection, &origin, &first).await;
    consumed(&connection, &middle, &second).await;
    produce(&url, &origin, N).await;
    let messages = take_json(&connection, &last, N).await;
    // Stopped gracefully, the stages leave nothing behind.
    assert!(first.stop().success());
    assert!(second.stop().success());
    for queue in [&origin, &middle, &last] {
        let stats = connection
            .transport()
            .check_queue(queue)
            .await
            .expect("check");
        assert_eq!(stats.messages, 0, "{queue} still holds messages");
    }
    let ids = ids(&messages);
    assert_eq!(ids.len(), N, "every message");
    assert!(ids.values().all(|&n| n == 1), "exactly once");
    for message in &messages {
        for field in ["id", "source", "sent_at", "pad"] {
            assert!(message.get(field).is_some(), "{field} kept: {message}");
        }
        assert_eq!(
            message["processed_by_one"]["stage"], "aion_stage",
            "{message}"
        );
        assert_eq!(
            message["processed_by_two"]["stage"], "aion_stage",
            "{message}"
        );
    }
    cleanup(&connection, &[&origin, &middle, &last]).await;
}

async fn a_stage_killed_mid_stream_loses_nothing(url: String) {
    const N: usize = 1000;
    let connection = warren::connect(&url).await.expect("connect");
    let (origin, middle, last) = (unique("origin"), unique("middle"), unique("last"));
    operator_declares(&connection, &[&origin, &middle, &last]).await;
    produce(&url, &origin, N).await;
    let first = StageProcess::spawn(&url, &origin, &middle, &[("STAGE_NAME", "one")], &[]);
    let second = StageProcess::spawn(&url, &middle, &last, &[("STAGE_NAME", "two")], &[]);
    // Mid-stream: a quarter through, the second stage dies (SIGKILL), with
    // a message in hand; a new one takes over.
    holds(&connection, &last, (N / 4) as u32).await;
    drop(second);
    let second = StageProcess::spawn(&url, &middle, &last, &[("STAGE_NAME", "two")], &[]);
    let messages = take_json(&connection, &last, N).await;
    assert!(first.stop().success());
    assert!(second.stop().success());
    // What the killed stage had sent but not acknowledged comes again:
    // at most its one message in hand (prefetch 1).
    let extra = connection
        .transport()
        .check_queue(&last)
        .await
        .expect("check")
        .messages;
    let mut all = messages;
    all.extend(take_json(&connection, &last, extra as usize).await);
    let ids = ids(&all);
    assert_eq!(ids.len(), N, "nothing lost");
    let duplicates: usize = ids.values().map(|n| n - 1).sum();
    assert!(duplicates <= 1, "{duplicates} duplicates");
    cleanup(&connection, &[&origin, &middle, &last]).await;
}

async fn bad_input_is_dead_lettered_with_a_logged_reason(url: String) {
    let connection = warren::connect(&url).await.expect("connect");
    let (origin, last, dlq) = (unique("origin"), unique("last"), unique("dlq"));
    operator_declares(&connection, &[&origin, &last, &dlq]).await;
    let stage = StageProcess::spawn(&url, &origin, &last, &[("QUEUE_DLQ", dlq.as_str())], &[]);
    consumed(&connection, &origin, &stage).await;
    for body in ["this is not JSON", "[1, 2, 3]"] {
        run_python("pika_json_producer.py", &[&url, &origin, "--raw", body]).await;
    }
    // The stage goes on with good input.
    produce(&url, &origin, 1).await;
    let good = take_json(&connection, &last, 1).await;
    assert_eq!(good[0]["id"], 0);
    let dead = take(&connection, &dlq, 2).await;
    assert_eq!(&dead[0].body[..], b"this is not JSON", "kept as it came");
    assert_eq!(&dead[1].body[..], b"[1, 2, 3]");
    let log = stage.log();
    assert_eq!(
        log.matches("rejecting a message that cannot be decoded")
            .count(),
        2,
        "{log}"
    );
    for delivery in &dead {
        let reason =
            warren::queue::text_header(&delivery.properties, ERROR_HEADER).expect("reason");
        assert!(reason.starts_with("undecodable: "), "{reason}");
        assert!(reason.contains("not the expected JSON"), "{reason}");
        // The log says why, as the header does.
        let why = reason.rsplit(": ").next().unwrap_or(reason);
        assert!(log.contains(why), "{why:?} not logged: {log}");
    }
    assert!(log.contains("invalid type: sequence"), "{log}");
    assert!(stage.stop().success());
    cleanup(&connection, &[&origin, &last, &dlq]).await;
}

async fn a_missing_queue_stops_the_stage_naming_it(url: String) {
    let connection = warren::connect(&url).await.expect("connect");
    let (origin, to) = (unique("origin"), unique("to"));
    // Neither exists: the origin is named.
    let mut stage = StageProcess::spawn(&url, &origin, &to, &[], &[]);
    assert!(!stage.wait_exit().success());
    assert!(
        stage
            .log()
            .contains(&format!("queue \"{origin}\" does not exist")),
        "{}",
        stage.log()
    );
    // The origin exists, a destination does not: the destination is named.
    operator_declares(&connection, &[&origin]).await;
    let second = unique("to");
    let both = format!("{to}, {second}");
    let mut stage = StageProcess::spawn(&url, &origin, &both, &[], &[]);
    assert!(!stage.wait_exit().success());
    assert!(
        stage
            .log()
            .contains(&format!("queue \"{to}\" does not exist")),
        "{}",
        stage.log()
    );
    // With --declare the stage declares them, and runs.
    let stage = StageProcess::spawn(&url, &origin, &both, &[], &["--declare"]);
    consumed(&connection, &origin, &stage).await;
    produce(&url, &origin, 1).await;
    for queue in [&to, &second] {
        assert_eq!(take_json(&connection, queue, 1).await[0]["id"], 0);
    }
    assert!(stage.stop().success());
    // A prefetch that is not a count.
    let mut stage = StageProcess::spawn(&url, &origin, &to, &[("QUEUE_PREFETCH", "0")], &[]);
    assert!(!stage.wait_exit().success());
    assert!(
        stage.log().contains("QUEUE_PREFETCH=\"0\""),
        "{}",
        stage.log()
    );
    // No QUEUE_ORIGIN at all.
    let mut stage = StageProcess::spawn(&url, "", &to, &[], &[]);
    assert!(!stage.wait_exit().success());
    assert!(
        stage.log().contains("QUEUE_ORIGIN is not set"),
        "{}",
        stage.log()
    );
    cleanup(&connection, &[&origin, &to, &second]).await;
}

/// aio-pika stages (`tests/python/aio_stage.py`, the benchmark's
/// comparison) and `aion_stage` in one pipeline, each reading what the
/// other wrote: Python, then warren, then Python again.
async fn a_python_stage_and_a_warren_stage_chain(url: String) {
    const N: usize = 100;
    let connection = warren::connect(&url).await.expect("connect");
    let queues: Vec<String> = (0..4).map(|i| unique(&format!("mixed{i}"))).collect();
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    operator_declares(&connection, &names).await;
    let python = |origin: &str, to: &str, name: &str| {
        let mut command = python_script("aio_stage.py");
        command
            .env("RABBITMQ_URL", &url)
            .env("QUEUE_ORIGIN", origin)
            .env("QUEUE_TO", to)
            .env("STAGE_NAME", name)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().expect("aio_stage.py runs")
    };
    let mut first = python(names[0], names[1], "python1");
    let warren = StageProcess::spawn(&url, names[1], names[2], &[("STAGE_NAME", "rust")], &[]);
    let mut last = python(names[2], names[3], "python2");
    consumed(&connection, names[1], &warren).await;
    produce(&url, names[0], N).await;
    let messages = take_json(&connection, names[3], N).await;
    for child in [&mut first, &mut last] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(warren.stop().success());
    assert_eq!(ids(&messages).len(), N);
    for message in &messages {
        assert_eq!(
            message["processed_by_python1"]["stage"], "aio_stage",
            "{message}"
        );
        assert_eq!(
            message["processed_by_rust"]["stage"], "aion_stage",
            "{message}"
        );
        assert_eq!(
            message["processed_by_python2"]["stage"], "aio_stage",
            "{message}"
        );
        assert_eq!(message["source"], "pika", "{message}");
    }
    cleanup(&connection, &names).await;
}

/// The `max_message_size` of the over-limit tests' brokers.
const LIMIT: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_warrens_limit_is_refused_with_a_reason() {
    let broker = warren::broker::Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .max_message_size(LIMIT)
        .start()
        .await
        .expect("broker");
    over_the_limit(&broker.url()).await;
}

/// On a RabbitMQ node of the test's own (the shared one keeps its 128 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_rabbitmqs_limit_is_refused_with_a_reason() {
    let config = format!("max_message_size = {LIMIT}");
    let Some(node) = tokio::task::spawn_blocking(move || {
        crate::common::rabbit::RabbitNode::start("warren-limit", &config, &[])
    })
    .await
    .expect("join") else {
        return; // RabbitNode::start printed why.
    };
    over_the_limit(&format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        node.amqp_port
    ))
    .await;
}

/// A message larger than the broker's `max_message_size` ([`LIMIT`]): the
/// producer's is refused by the broker, and a stage whose output grows
/// past the limit dead-letters its input with the reason (logged) instead
/// of looping on it, then goes on.
async fn over_the_limit(url: &str) {
    let connection = warren::connect(url).await.expect("connect");
    let (origin, last, dlq) = (unique("origin"), unique("last"), unique("dlq"));
    operator_declares(&connection, &[&origin, &last, &dlq]).await;
    let over = python_run(
        Duration::from_secs(120),
        "pika_json_producer.py",
        &[url, &origin, "1", "--pad", &(LIMIT + 1).to_string()],
    );
    assert!(
        over.status.is_some_and(|s| !s.success()) && over.stderr.contains("larger than"),
        "{over:?}"
    );
    // One under the limit whose output is over it.
    let stage = StageProcess::spawn(url, &origin, &last, &[("QUEUE_DLQ", dlq.as_str())], &[]);
    consumed(&connection, &origin, &stage).await;
    let pad = (LIMIT - 100).to_string();
    run_python("pika_json_producer.py", &[url, &origin, "1", "--pad", &pad]).await;
    let dead = take(&connection, &dlq, 1).await;
    let reason = warren::queue::text_header(&dead[0].properties, ERROR_HEADER).expect("reason");
    assert!(reason.contains("larger than"), "{reason}");
    // The stage goes on.
    produce(url, &origin, 1).await;
    assert_eq!(take_json(&connection, &last, 1).await[0]["id"], 0);
    assert!(stage.log().contains("larger than"), "{}", stage.log());
    assert!(stage.stop().success());
}
