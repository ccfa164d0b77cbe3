//! Publish→consume throughput through the embedded broker and through
//! RabbitMQ in the same run, with the same client (lapin), printed as a
//! ratio; then memory per idle connection and per queued message of a
//! `warren broker` process and of RabbitMQ's: `cargo bench --bench broker`.
//! A benchmark, not a test.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::broker::Broker;

const N: usize = 100_000;

async fn run(url: &str, qname: &str) -> f64 {
    let pc = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let cc = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let pch = pc.create_channel().await.unwrap();
    let cch = cc.create_channel().await.unwrap();
    let _ = cch
        .queue_delete(qname.into(), QueueDeleteOptions::default())
        .await;
    cch.queue_declare(
        qname.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    cch.basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cch
        .basic_consume(
            qname.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    pch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![7u8; 128];
    let start = Instant::now();
    let q = qname.to_string();
    let publisher = tokio::spawn(async move {
        let mut pending = Vec::with_capacity(1000);
        for _ in 0..N {
            pending.push(
                pch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    Default::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
            );
            if pending.len() == 1000 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending.drain(..) {
            p.await.unwrap();
        }
    });
    let mut got = 0;
    while got < N {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("stalled")
            .unwrap()
            .unwrap();
        got += 1;
        if got % 100 == 0 {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    publisher.await.unwrap();
    let rate = N as f64 / start.elapsed().as_secs_f64();
    let _ = cch
        .queue_delete(qname.into(), QueueDeleteOptions::default())
        .await;
    rate
}

/// Resident memory of a process, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const IDLE_CONNECTIONS: usize = 200;
const QUEUED: usize = 100_000;

/// Bytes per idle connection and per queued 64-byte message, measured on the
/// broker process `pid` reached at `url`.
async fn memory(url: &str, pid: u32, queue: &str) -> (f64, f64) {
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let before = rss_kib(pid).unwrap_or(0);
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        let c = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = c.create_channel().await.expect("channel");
        idle.push((c, ch));
    }
    settle().await;
    let with_connections = rss_kib(pid).unwrap_or(0);
    let (_, ch) = &idle[0];
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = [7u8; 64];
    for _ in 0..QUEUED {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    ch.wait_for_confirms().await.expect("confirms");
    settle().await;
    let with_messages = rss_kib(pid).unwrap_or(0);
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let per_connection =
        with_connections.saturating_sub(before) as f64 * 1024.0 / IDLE_CONNECTIONS as f64;
    let per_message =
        with_messages.saturating_sub(with_connections) as f64 * 1024.0 / QUEUED as f64;
    (per_connection, per_message)
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `warren` command next to this benchmark (`cargo build --release -p
/// warren-cli` builds it).
fn warren_bin() -> std::path::PathBuf {
    let name = format!("warren{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(&name)))
        .filter(|bin| bin.is_file())
        .unwrap_or_else(|| panic!("build the broker first: cargo build --release -p warren-cli"))
}

/// `warren broker` as a process of its own, so its memory is its own.
async fn spawn_broker() -> (std::process::Child, String) {
    let port = free_port();
    let child = std::process::Command::new(warren_bin())
        .args([
            "broker",
            "--in-memory",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("warren broker starts");
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, url)
}

fn rabbitmq_pid() -> Option<u32> {
    let out = std::process::Command::new("pidof")
        .arg("beam.smp")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let b = Broker::builder()
            .listen("127.0.0.1:0".parse().expect("an address"))
            .start()
            .await
            .expect("the embedded broker starts");
        let ours = run(&b.url(), "perf").await;
        println!("warren broker: {ours:.0} msg/s");
        let rabbit_url = std::env::var("WARREN_TEST_RABBITMQ")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
        match Connection::connect(&rabbit_url, ConnectionProperties::default()).await {
            Ok(_) => {
                let rabbit = run(&rabbit_url, "warren-perf").await;
                println!(
                    "rabbitmq:      {rabbit:.0} msg/s  (warren/rabbitmq ×{:.2})",
                    ours / rabbit
                );
            }
            Err(e) => println!("rabbitmq:      not reachable at {rabbit_url} ({e})"),
        }

        let (mut child, url) = spawn_broker().await;
        let (conn, msg) = memory(&url, child.id(), "memory").await;
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "warren broker: {conn:.0} bytes per idle connection, {msg:.0} bytes per queued 64-byte message"
        );
        if let Some(pid) = rabbitmq_pid() {
            let (conn, msg) = memory(&rabbit_url, pid, "warren-memory").await;
            println!(
                "rabbitmq:      {conn:.0} bytes per idle connection, {msg:.0} bytes per queued 64-byte message"
            );
        }
    });
}
