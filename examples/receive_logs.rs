//! RabbitMQ tutorial three (publish/subscribe), the consumer: a fresh
//! exclusive queue (deleted when this program's connection goes) bound to
//! the fanout exchange `logs`, so it gets a copy of every log line. Runs
//! until interrupted; start several.
//!
//! ```sh
//! cargo run --example receive_logs
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{ConsumeSpec, ExchangeKind, ExchangeSpec, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    channel
        .declare_exchange(&ExchangeSpec {
            name: "logs".into(),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: false,
        })
        .await?;
    // The tutorial lets the broker name the queue; any unique name will do.
    let queue = format!("receive_logs-{}", warren::wire::new_id());
    channel
        .declare_queue(&QueueSpec {
            name: queue.clone(),
            exclusive: true,
            ..QueueSpec::default()
        })
        .await?;
    channel.bind_queue(&queue, "logs", "").await?;

    println!(" [*] Waiting for logs. To exit press CTRL+C");
    let mut logs = channel
        .consume(&ConsumeSpec {
            queue,
            prefetch: 0,
            no_ack: true,
        })
        .await?;
    while let Some(log) = logs.next().await {
        println!(" [x] {}", String::from_utf8_lossy(&log?.body));
    }
    Ok(())
}
