//! RabbitMQ tutorial four (routing), the producer: publishes one log line to
//! the direct exchange `direct_logs` with its severity as the routing key.
//!
//! ```sh
//! cargo run --example emit_log_direct -- error "Run. Run. Or it will explode."
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
            name: "direct_logs".into(),
            kind: ExchangeKind::Direct,
            durable: false,
            auto_delete: false,
        })
        .await?;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let severity = args.first().cloned().unwrap_or_else(|| "info".into());
    let message = match args.get(1..).unwrap_or_default().join(" ") {
        m if m.is_empty() => "Hello World!".to_owned(),
        m => m,
    };
    Publisher::<str>::to_exchange(&connection, "direct_logs", &severity)
        .format(Format::Text)
        .persistent(false)
        .publish(&message)
        .await?;
    println!(" [x] Sent {severity}:{message}");
    connection.close().await
}
