//! RabbitMQ tutorial three (publish/subscribe), the producer: publishes one
//! log line to the fanout exchange `logs`, which copies it to every bound
//! queue (and drops it when none is bound).
//!
//! ```sh
//! cargo run --example emit_log -- "info: a log line"
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::queue::{Format, Publisher};
use warren::transport::{ExchangeKind, ExchangeSpec};

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

    let args: Vec<String> = std::env::args().skip(1).collect();
    let message = match args.join(" ") {
        m if m.is_empty() => "info: Hello World!".to_owned(),
        m => m,
    };
    Publisher::<str>::to_exchange(&connection, "logs", "")
        .format(Format::Text)
        .persistent(false)
        .publish(&message)
        .await?;
    println!(" [x] Sent {message}");
    connection.close().await
}
