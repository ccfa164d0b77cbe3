//! RabbitMQ tutorial one ("Hello World!"), the consumer: declares the queue
//! `hello` and prints every message that arrives on it (no acks: the broker
//! forgets a message once it is delivered). Runs until interrupted.
//!
//! ```sh
//! cargo run --example receive     #  [x] Received Hello World!
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{ConsumeSpec, QueueSpec};

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
    let mut messages = channel
        .consume(&ConsumeSpec {
            queue: "hello".into(),
            prefetch: 0,
            no_ack: true,
        })
        .await?;

    println!(" [*] Waiting for messages. To exit press CTRL+C");
    while let Some(message) = messages.next().await {
        let message = message?;
        println!(" [x] Received {}", String::from_utf8_lossy(&message.body));
    }
    Ok(())
}
