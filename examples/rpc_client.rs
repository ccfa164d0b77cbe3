//! RabbitMQ tutorial six (RPC), the client: sends `n` (from the command
//! line, 30 by default) to the queue `rpc_queue` with a `reply_to` queue of
//! its own and a fresh `correlation_id`, and waits for the reply carrying
//! that id.
//!
//! ```sh
//! cargo run --example rpc_client          #  [x] Requesting fib(30)
//!                                         #  [.] Got 832040
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{ConsumeSpec, Outgoing, Properties, QueueSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|_| format!("not a number: {arg}"))?,
        None => 30,
    };
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    // The callback queue: exclusive to this connection.
    let callback_queue = format!("rpc_client-{}", warren::wire::new_id());
    channel
        .declare_queue(&QueueSpec {
            name: callback_queue.clone(),
            exclusive: true,
            ..QueueSpec::default()
        })
        .await?;
    let mut replies = channel
        .consume(&ConsumeSpec {
            queue: callback_queue.clone(),
            prefetch: 0,
            no_ack: true,
        })
        .await?;

    let corr_id = warren::wire::new_id();
    println!(" [x] Requesting fib({n})");
    channel
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: "rpc_queue".into(),
            mandatory: false,
            confirm: false,
            properties: Properties::default()
                .with_reply_to(callback_queue)?
                .with_correlation_id(corr_id.clone())?,
            body: n.to_string().into(),
        })
        .await?;
    while let Some(reply) = replies.next().await {
        let reply = reply?;
        if reply.properties.correlation_id() == Some(corr_id.as_str()) {
            let response: u64 = String::from_utf8_lossy(&reply.body).trim().parse()?;
            println!(" [.] Got {response}");
            break;
        }
    }
    connection.close().await?;
    Ok(())
}
