//! RabbitMQ tutorial four (routing), the consumer: a fresh exclusive queue
//! bound to the direct exchange `direct_logs` once per severity given, so it
//! gets only those log lines. Runs until interrupted.
//!
//! ```sh
//! cargo run --example receive_logs_direct -- warning error
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::queue::{Format, Message, Worker};
use warren::transport::{ExchangeKind, ExchangeSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let severities: Vec<String> = std::env::args().skip(1).collect();
    if severities.is_empty() {
        eprintln!("Usage: receive_logs_direct [info] [warning] [error]");
        std::process::exit(1);
    }
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    connection
        .transport()
        .declare_exchange(&ExchangeSpec {
            name: "direct_logs".into(),
            kind: ExchangeKind::Direct,
            durable: false,
            auto_delete: false,
        })
        .await?;
    // An empty name: warren generates one, as the broker does for the
    // tutorial's `queue_declare(queue="", exclusive=True)`.
    let mut worker = Worker::<String>::new(&connection, "")
        .exclusive(true)
        .format(Format::Text);
    for key in &severities {
        worker = worker.bind("direct_logs", key.as_str());
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
