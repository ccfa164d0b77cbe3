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

/// Option names are free: a method named like one hides the option on the
/// client, where `Stub`'s stays reachable.
#[warren::service(topic = "options", version = "1.0")]
pub trait Options {
    async fn timeout(&self) -> u32;
    async fn version(&self) -> String;
    async fn to_server(&self, server: String);
    async fn r#type(&self) -> String;
}

struct MyOptions;

impl Options for MyOptions {
    async fn timeout(&self) -> u32 {
        60
    }
    async fn version(&self) -> String {
        "1.0".into()
    }
    async fn to_server(&self, _server: String) {}
    async fn r#type(&self) -> String {
        "options".into()
    }
}

#[allow(dead_code)]
async fn options(client: &OptionsClient) -> Result<u32, warren::Error> {
    let shorter: OptionsClient = warren::rpc::Stub::timeout(client, std::time::Duration::from_secs(1));
    let version: String = shorter.version().await?;
    assert_eq!(version, "1.0");
    shorter.to_server("s1".into()).await?;
    shorter.timeout().await
}

#[allow(dead_code)]
fn engine_options(client: &EngineClient) -> EngineClient {
    client.to_server("s1").timeout(std::time::Duration::from_secs(1)).version("1.2")
}

fn main() {
    let _options = OptionsServer::new(MyOptions);
    let _server = EngineServer::new(MyEngine);
    let _request = EngineRequest::StackDeleted { id: StackId(7) }.clone();
}
