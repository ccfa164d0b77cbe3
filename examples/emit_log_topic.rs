//! RabbitMQ tutorial five (topics), the producer: publishes one log line to
//! the topic exchange `topic_logs` with a `<facility>.<severity>` routing key.
//!
//! ```sh
//! cargo run --example emit_log_topic -- kern.critical "A critical kernel error"
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
            name: "topic_logs".into(),
            kind: ExchangeKind::Topic,
            durable: false,
            auto_delete: false,
        })
        .await?;

    let args: Vec<String> = std::env::args().skip(1).collect();
    // As in the tutorial: the key only counts when a message follows it.
    let routing_key = match args.len() {
        0 | 1 => "anonymous.info".to_owned(),
        _ => args[0].clone(),
    };
    let message = match args.get(1..).unwrap_or_default().join(" ") {
        m if m.is_empty() => "Hello World!".to_owned(),
        m => m,
    };
    Publisher::<str>::to_exchange(&connection, "topic_logs", &routing_key)
        .format(Format::Text)
        .persistent(false)
        .publish(&message)
        .await?;
    println!(" [x] Sent {routing_key}:{message}");
    connection.close().await
}
