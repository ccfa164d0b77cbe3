//! RabbitMQ tutorial five (topics), the consumer: a fresh exclusive queue
//! bound to the topic exchange `topic_logs` with each binding key given
//! (`*` matches one word, `#` zero or more). Runs until interrupted.
//!
//! ```sh
//! cargo run --example receive_logs_topic -- "kern.*" "*.critical"
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{ConsumeSpec, ExchangeKind, ExchangeSpec, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let binding_keys: Vec<String> = std::env::args().skip(1).collect();
    if binding_keys.is_empty() {
        eprintln!("Usage: receive_logs_topic [binding_key]...");
        std::process::exit(1);
    }
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    channel
        .declare_exchange(&ExchangeSpec {
            name: "topic_logs".into(),
            kind: ExchangeKind::Topic,
            durable: false,
            auto_delete: false,
        })
        .await?;
    let queue = format!("receive_logs_topic-{}", warren::wire::new_id());
    channel
        .declare_queue(&QueueSpec {
            name: queue.clone(),
            exclusive: true,
            ..QueueSpec::default()
        })
        .await?;
    for key in &binding_keys {
        channel.bind_queue(&queue, "topic_logs", key).await?;
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
