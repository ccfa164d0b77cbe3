//! RabbitMQ tutorial two (work queues), the worker: a warren [`Worker`] on
//! the durable queue `task_queue`, one task at a time (prefetch 1: fair
//! dispatch, a busy worker gets no more). It sleeps a second per `.`,
//! prints ` [x] Done`, and only then is the task acknowledged, so a task
//! whose worker dies is redelivered to another. Runs until Ctrl-C, then
//! lets the task in hand finish; start several.
//!
//! ```sh
//! cargo run --example worker
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use std::time::Duration;

use warren::queue::{Format, Message, Outcome, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // warren's warnings (a task that cannot be decoded, a lost connection)
    // on stderr; stdout is the tutorial's.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;

    println!(" [*] Waiting for messages. To exit press CTRL+C");
    let worker = Worker::<String>::new(&connection, "task_queue")
        .prefetch(1)
        // The tutorial's producers send bare text, with no content type.
        .format(Format::Text)
        .start(|task: Message<String>| async move {
            println!(" [x] Received {}", task.body);
            let dots = task.body.matches('.').count() as u64;
            tokio::time::sleep(Duration::from_secs(dots)).await;
            println!(" [x] Done");
            Outcome::Ack
        })
        .await?;

    tokio::signal::ctrl_c().await?;
    worker.shutdown().await?;
    connection.close().await?;
    Ok(())
}
