//! RabbitMQ tutorial two (work queues), the producer: publishes one task to
//! the durable queue `task_queue`, persistent and confirmed (the defaults of
//! warren's [`Publisher`]). Each `.` in the task is a second of work for the
//! worker.
//!
//! ```sh
//! cargo run --example new_task -- First message.
//! cargo run --example new_task -- Third message...
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::queue::{Format, Publisher};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    // Plain text bodies, as the tutorial's programs send.
    let tasks = Publisher::<str>::new(&connection, "task_queue").format(Format::Text);
    tasks.declare().await?;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let message = match args.join(" ") {
        m if m.is_empty() => "Hello World!".to_owned(),
        m => m,
    };
    tasks.publish(&message).await?;
    println!(" [x] Sent {message}");
    connection.close().await
}
