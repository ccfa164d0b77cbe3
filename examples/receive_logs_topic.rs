//! RabbitMQ tutorial five (topics), the consumer: a fresh exclusive queue
//! bound to the topic exchange `topic_logs` with each binding key given
//! (`*` matches one word, `#` zero or more). Runs until interrupted.
//!
//! ```sh
//! cargo run --example receive_logs_topic -- "kern.*" "*.critical"
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::queue::{Format, Message, Worker};
use warren::transport::{ExchangeKind, ExchangeSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let binding_keys: Vec<String> = std::env::args().skip(1).collect();
    if binding_keys.is_empty() {
        eprintln!("Usage: receive_logs_topic [binding_key]...");
        std::process::exit(1);
    }
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    connection
        .transport()
        .declare_exchange(&ExchangeSpec {
            name: "topic_logs".into(),
            kind: ExchangeKind::Topic,
            durable: false,
            auto_delete: false,
        })
        .await?;
    // An empty name: warren generates one, as the broker does for the
    // tutorial's `queue_declare(queue="", exclusive=True)`.
    let mut worker = Worker::<String>::new(&connection, "")
        .exclusive(true)
        .format(Format::Text);
    for key in &binding_keys {
        worker = worker.bind("topic_logs", key.as_str());
    }
    let worker = worker
        .start(|log: Message<String>| async move {
            println!(" [x] {}:{}", log.routing_key(), log.body);
        })
        .await?;

    println!(" [*] Waiting for logs. To exit press CTRL+C");
    tokio::signal::ctrl_c().await?;
    worker.shutdown().await?;
    connection.close().await?;
    Ok(())
}
