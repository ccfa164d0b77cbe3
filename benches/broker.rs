//! Publish→consume throughput through the embedded broker and through
//! RabbitMQ in the same run, with the same client (lapin), printed as a
//! ratio: `cargo bench --bench broker`. A benchmark, not a test.

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
    });
}
