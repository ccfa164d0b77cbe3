//! RabbitMQ tutorial six (RPC), the server: takes `n` from the queue
//! `rpc_queue` (one at a time), answers `fib(n)` to the request's `reply_to`
//! queue with its `correlation_id`, then acknowledges. Runs until
//! interrupted.
//!
//! This is plain AMQP RPC, as the tutorial teaches it; warren's typed
//! services (`examples/hello.rs`) do the same for you.
//!
//! ```sh
//! cargo run --example rpc_server
//! ```
//!
//! The broker is `$TRANSPORT_URL`, else the tutorials' `localhost`.

use warren::transport::{ConsumeSpec, Outgoing, Properties, QueueSpec};

/// The `n`th Fibonacci number (iteratively: `fib(90)` fits in a `u64`).
fn fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let url = std::env::var("TRANSPORT_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@localhost:5672/%2f".into());
    let connection = warren::connect(&url).await?;
    let channel = connection.transport();

    channel
        .declare_queue(&QueueSpec {
            name: "rpc_queue".into(),
            ..QueueSpec::default()
        })
        .await?;
    let mut requests = channel
        .consume(&ConsumeSpec {
            queue: "rpc_queue".into(),
            prefetch: 1,
            no_ack: false,
        })
        .await?;

    println!(" [x] Awaiting RPC requests");
    while let Some(request) = requests.next().await {
        let request = request?;
        let text = String::from_utf8_lossy(&request.body);
        let Some(n) = text.trim().parse::<u64>().ok().filter(|n| *n <= 90) else {
            // Not a number we can answer: drop it rather than crash.
            eprintln!(" [!] not a number up to 90: {text:?}");
            request.acker.reject(false).await?;
            continue;
        };
        println!(" [.] fib({n})");
        let mut properties = Properties::default();
        if let Some(id) = request.properties.correlation_id() {
            properties = properties.with_correlation_id(id)?;
        }
        if let Some(reply_to) = request.properties.reply_to() {
            channel
                .publish(Outgoing {
                    exchange: String::new(),
                    routing_key: reply_to.to_owned(),
                    mandatory: false,
                    confirm: false,
                    properties,
                    body: fib(n).to_string().into(),
                })
                .await?;
        }
        request.acker.ack().await?;
    }
    Ok(())
}
