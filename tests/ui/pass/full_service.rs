use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackId(pub u64);

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("no stack named {0}")]
pub struct EngineError(String);

/// An engine.
#[warren::service(topic = "engine", version = "1.35", exchange = "heat", namespace = "ns", derive(Clone, Debug))]
pub trait Engine {
    /// A call.
    async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String);
    /// A fallible call.
    async fn create_stack(&self, name: String) -> Result<StackId, EngineError>;
    /// A call without arguments or result.
    async fn ping(&self);
    /// A cast.
    #[cast]
    async fn stack_deleted(&self, id: StackId);
}

struct MyEngine;

impl Engine for MyEngine {
    async fn health_check(&self, seqid: u64, host: String, _req: String) -> (u64, String, String) {
        (seqid, host, "I'm fine!".into())
    }
    async fn create_stack(&self, name: String) -> Result<StackId, EngineError> {
        Err(EngineError(name))
    }
    async fn ping(&self) {}
    async fn stack_deleted(&self, _id: StackId) {}
}

fn main() {
    let _server = EngineServer::new(MyEngine);
    let _request = EngineRequest::StackDeleted { id: StackId(7) }.clone();
}
