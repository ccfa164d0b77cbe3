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

use warren::queue::{Format, Publisher};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    // The tutorial's `hello` is a plain transient queue with transient,
    // plain-text messages (warren's defaults are durable, persistent, JSON).
    let hello = Publisher::<str>::new(&connection, "hello")
        .durable(false)
        .persistent(false)
        .format(Format::Text);
    hello.declare().await?;
    hello.publish("Hello World!").await?;
    println!(" [x] Sent 'Hello World!'");
    connection.close().await
}
