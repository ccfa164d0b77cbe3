//! RabbitMQ tutorial one ("Hello World!"), the consumer: declares the queue
//! `hello` and prints every message that arrives on it. Runs until Ctrl-C.
//!
//! ```sh
//! cargo run --example receive     #  [x] Received Hello World!
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::queue::{Format, Message, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    // The tutorial's `hello` is a plain transient queue of plain text.
    let worker = Worker::<String>::new(&connection, "hello")
        .durable(false)
        .format(Format::Text)
        .start(|message: Message<String>| async move {
            println!(" [x] Received {}", message.body);
        })
        .await?;

    println!(" [*] Waiting for messages. To exit press CTRL+C");
    tokio::signal::ctrl_c().await?;
    worker.shutdown().await?;
    connection.close().await?;
    Ok(())
}
