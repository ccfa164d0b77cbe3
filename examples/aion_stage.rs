//! aion_stage: one stage of an edge pipeline, services chained through
//! queues. Reads JSON objects from `QUEUE_ORIGIN`, adds a field
//! `processed_by_<STAGE_NAME>` (`STAGE_NAME` defaults to the origin queue)
//! saying it processed them, keeps every other field, sends the result to
//! each queue of `QUEUE_TO` (comma-separated, persistent, confirmed) and
//! only then acknowledges the input: a stage killed at any point loses
//! nothing. Runs until SIGINT or SIGTERM, then finishes the message in hand.
//!
//! It declares nothing: the queues are the operator's, and a missing one
//! stops it at once with an error naming it — unless `--declare` is given,
//! which declares them durable. Input that is not a JSON object is
//! rejected with the reason logged (into `QUEUE_DLQ`, if set).
//!
//! ```text
//! RABBITMQ_URL=amqp://guest:guest@localhost:5672/%2f QUEUE_ORIGIN=resize \
//!     QUEUE_TO=thumbnails,audit cargo run --example aion_stage -- --declare
//! ```
//! `TRANSPORT_URL` works too (warren's broker, or any AMQP server);
//! `QUEUE_PREFETCH=N` processes N inputs at once (default 1, in order).

#[path = "heat/service.rs"]
#[allow(dead_code)]
mod service;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use warren::queue::Stage;

#[tokio::main]
async fn main() -> ExitCode {
    service::init_logging();
    let mut declare = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--declare" => declare = true,
            other => {
                eprintln!("aion_stage: unknown argument {other:?} (usage: aion_stage [--declare])");
                return ExitCode::from(2);
            }
        }
    }
    match run(declare).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "aion_stage stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(declare: bool) -> Result<(), warren::Error> {
    let stage = Stage::from_env().await?.declare(declare);
    let name = std::env::var("STAGE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| stage.origin().to_owned());
    let field = format!("processed_by_{name}");
    let worker = stage
        .run(move |mut object: Map<String, Value>| {
            let field = field.clone();
            async move {
                let at_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default();
                object.insert(field, json!({ "stage": "aion_stage", "at_ms": at_ms }));
                Ok::<_, Infallible>(object)
            }
        })
        .await?;
    tracing::info!("aion_stage ready; Ctrl-C or SIGTERM to stop");
    service::stop_signal().await;
    tracing::info!("stopping: finishing the message in hand");
    worker.shutdown().await
}
