//! RabbitMQ tutorial one ("Hello World!"), the producer: declares the queue
//! `hello` and publishes one message to it through the default exchange.
//!
//! ```sh
//! warren broker &                 # or RabbitMQ
//! cargo run --example receive &   # or the tutorial's receive.py
//! cargo run --example send        #  [x] Sent 'Hello World!'
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{Outgoing, Properties, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    channel
        .declare_queue(&QueueSpec {
            name: "hello".into(),
            ..QueueSpec::default()
        })
        .await?;
    channel
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: "hello".into(),
            mandatory: false,
            // Wait for the broker to take it before closing.
            confirm: true,
            properties: Properties::default(),
            body: "Hello World!".into(),
        })
        .await?;
    println!(" [x] Sent 'Hello World!'");
    connection.close().await
}
