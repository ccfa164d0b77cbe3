//! RabbitMQ tutorial three (publish/subscribe), the consumer: a fresh
//! exclusive queue (named by warren, deleted when this program's connection
//! goes) bound to the fanout exchange `logs`, so it gets a copy of every log
//! line. Runs until Ctrl-C; start several.
//!
//! ```sh
//! cargo run --example receive_logs
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::queue::{Format, Message, Worker};
use warren::transport::{ExchangeKind, ExchangeSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    connection
        .transport()
        .declare_exchange(&ExchangeSpec {
            name: "logs".into(),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: false,
        })
        .await?;
    // An empty name: warren generates one, as the broker does for the
    // tutorial's `queue_declare(queue="")`.
    let worker = Worker::<String>::new(&connection, "")
        .exclusive(true)
        .bind("logs", "")
        .format(Format::Text)
        .start(|log: Message<String>| async move {
            println!(" [x] {}", log.body);
        })
        .await?;

    println!(" [*] Waiting for logs. To exit press CTRL+C");
    tokio::signal::ctrl_c().await?;
    worker.shutdown().await?;
    connection.close().await?;
    Ok(())
}
