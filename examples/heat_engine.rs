//! heat-engine: serves the classic oslo.messaging demo's `health_check` on
//! topic `engine`, server `heat-engine`, exchange `heat`, until SIGINT
//! (Ctrl-C) or SIGTERM; calls still running after the grace period (30 s)
//! are left to another engine.
//!
//! ```text
//! TRANSPORT_URL=rabbit://guest:guest@localhost:5672/ cargo run --example heat_engine
//! ```
//! A `rabbit://` URL speaks oslo's JSON, so the unmodified Python heat-api
//! can call this engine.

#[path = "heat/service.rs"]
#[allow(dead_code)]
mod service;

use service::{EngineServer, HeatEngine};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    service::init_logging();
    let connection = warren::connect_from_env().await?;
    let server = EngineServer::new(HeatEngine::new())
        .serve(&connection, "heat-engine")
        .await?;
    tracing::info!("heat-engine ready; Ctrl-C or SIGTERM to stop");
    service::stop_signal().await;
    tracing::info!("stopping: finishing the calls in flight (30 s at most)");
    server.shutdown().await?;
    connection.close().await
}
