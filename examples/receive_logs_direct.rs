//! RabbitMQ tutorial four (routing), the consumer: a fresh exclusive queue
//! bound to the direct exchange `direct_logs` once per severity given, so it
//! gets only those log lines. Runs until interrupted.
//!
//! ```sh
//! cargo run --example receive_logs_direct -- warning error
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{ConsumeSpec, ExchangeKind, ExchangeSpec, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let severities: Vec<String> = std::env::args().skip(1).collect();
    if severities.is_empty() {
        eprintln!("Usage: receive_logs_direct [info] [warning] [error]");
        std::process::exit(1);
    }
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    channel
        .declare_exchange(&ExchangeSpec {
            name: "direct_logs".into(),
            kind: ExchangeKind::Direct,
            durable: false,
            auto_delete: false,
        })
        .await?;
    let queue = format!("receive_logs_direct-{}", warren::wire::new_id());
    channel
        .declare_queue(&QueueSpec {
            name: queue.clone(),
            exclusive: true,
            ..QueueSpec::default()
        })
        .await?;
    for severity in &severities {
        channel.bind_queue(&queue, "direct_logs", severity).await?;
    }

    println!(" [*] Waiting for logs. To exit press CTRL+C");
    let mut logs = channel
        .consume(&ConsumeSpec {
            queue,
            prefetch: 0,
            no_ack: true,
        })
        .await?;
    while let Some(log) = logs.next().await {
        let log = log?;
        let line = String::from_utf8_lossy(&log.body);
        println!(" [x] {}:{line}", log.routing_key);
    }
    Ok(())
}
