//! RabbitMQ tutorial two (work queues), the worker: takes tasks from the
//! durable queue `task_queue` one at a time (prefetch 1: fair dispatch, a
//! busy worker gets no more), sleeps a second per `.`, prints ` [x] Done`
//! and only then acknowledges, so a task whose worker dies is redelivered to
//! another. Runs until interrupted; start several.
//!
//! ```sh
//! cargo run --example worker
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use std::time::Duration;

use warren::transport::{ConsumeSpec, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    channel
        .declare_queue(&QueueSpec {
            name: "task_queue".into(),
            durable: true,
            ..QueueSpec::default()
        })
        .await?;
    println!(" [*] Waiting for messages. To exit press CTRL+C");

    let mut tasks = channel
        .consume(&ConsumeSpec {
            queue: "task_queue".into(),
            prefetch: 1,
            no_ack: false,
        })
        .await?;
    while let Some(task) = tasks.next().await {
        let task = task?;
        println!(" [x] Received {}", String::from_utf8_lossy(&task.body));
        let dots = task.body.iter().filter(|b| **b == b'.').count();
        tokio::time::sleep(Duration::from_secs(dots as u64)).await;
        println!(" [x] Done");
        task.acker.ack().await?;
    }
    Ok(())
}
