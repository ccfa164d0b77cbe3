//! The smallest complete warren program: a service, a server and a call.
//!
//! With no `TRANSPORT_URL` it runs on the broker embedded in this process;
//! set `TRANSPORT_URL=amqp://guest:guest@localhost:5672/%2f` to use RabbitMQ.

/// A greeter.
#[warren::service(topic = "greeter", version = "1.0")]
pub trait Greeter {
    /// Says hello to `name`.
    async fn hello(&self, name: String) -> String;
}

struct English;

impl Greeter for English {
    async fn hello(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
}

#[tokio::main]
async fn main() -> Result<(), warren::Error> {
    let connection = warren::connect_from_env().await?;
    let server = GreeterServer::new(English)
        .serve(&connection, "greeter-1")
        .await?;
    let greeter = GreeterClient::new(&connection);
    println!("{}", greeter.hello("world".into()).await?);
    server.shutdown().await?;
    connection.close().await
}
