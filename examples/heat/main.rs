//! heat-api ↔ heat-engine in one process: the engine serves `engine` on
//! exchange `heat` as server `heat-engine`, the api asks it "How are you?"
//! a few times and prints each answer.
//!
//! With no `TRANSPORT_URL` this runs on warren's embedded broker, with
//! nothing else installed: `cargo run --release --example heat`.

mod service;

use service::{EngineClient, EngineServer, HeatEngine};

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    service::init_logging();
    let connection = warren::connect_from_env().await?;
    let engine = EngineServer::new(HeatEngine::new())
        .serve(&connection, "heat-engine")
        .await?;
    let api = EngineClient::new(&connection);
    for seqid in 0..5 {
        let (seqid, host, answer) = api
            .health_check(seqid, "heat-api".into(), "How are you?".into())
            .await?;
        println!("heat-engine answered #{seqid} from {host}: {answer}");
    }
    engine.shutdown().await?;
    connection.close().await
}
