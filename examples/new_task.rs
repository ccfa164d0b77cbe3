//! RabbitMQ tutorial two (work queues), the producer: publishes one task,
//! persistent, to the durable queue `task_queue`. Each `.` in the task is a
//! second of work for the worker.
//!
//! ```sh
//! cargo run --example new_task -- First message.
//! cargo run --example new_task -- Third message...
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

    // Durable: the queue survives a broker restart.
    channel
        .declare_queue(&QueueSpec {
            name: "task_queue".into(),
            durable: true,
            ..QueueSpec::default()
        })
        .await?;

    let args: Vec<String> = std::env::args().skip(1).collect();
    let message = match args.join(" ") {
        m if m.is_empty() => "Hello World!".to_owned(),
        m => m,
    };
    channel
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: "task_queue".into(),
            mandatory: false,
            confirm: true,
            // Persistent (delivery mode 2): the message survives it too.
            properties: Properties::default().with_delivery_mode(2),
            body: message.clone().into(),
        })
        .await?;
    println!(" [x] Sent {message}");
    connection.close().await
}
