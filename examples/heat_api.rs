//! heat-api: calls heat-engine's `health_check` in a loop, once a second,
//! logging each answer, as the classic oslo.messaging demo does.
//!
//! ```text
//! TRANSPORT_URL=rabbit://guest:guest@localhost:5672/ cargo run --example heat_api -- 10
//! ```
//! The optional argument is the number of calls (default: forever).

#[path = "heat/service.rs"]
#[allow(dead_code)]
mod service;

use std::time::Duration;

use service::EngineClient;

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    service::init_logging();
    let count: Option<u64> = match std::env::args().nth(1).map(|n| n.parse()) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            eprintln!("usage: heat_api [COUNT]: {e}");
            std::process::exit(2);
        }
        None => None,
    };
    let connection = warren::connect_from_env().await?;
    let engine = EngineClient::new(&connection).timeout(Duration::from_secs(10));
    let mut seqid = 0;
    while count.is_none_or(|n| seqid < n) {
        match engine
            .health_check(seqid, "heat-api".into(), "How are you?".into())
            .await
        {
            Ok((seqid, host, answer)) => {
                tracing::info!(seqid, %host, %answer, "heat-engine answered")
            }
            Err(e) => tracing::warn!(seqid, error = %e, "health_check failed"),
        }
        seqid += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    connection.close().await
}
