//! The embedded AMQP 0-9-1 broker: a real AMQP server that lapin, pika,
//! kombu and oslo.messaging use as they use RabbitMQ, and a socket-free core
//! that the in-process transport drives directly.
//!
//! - [`core`]: virtual hosts, exchanges, queues, consumers, acks;
//! - [`server`]: the TCP listener and the connection and channel state
//!   machines, translating `amq-protocol` frames into core calls.
//!
//! ```no_run
//! # async fn demo() -> Result<(), warren::broker::BrokerError> {
//! let broker = warren::broker::Broker::builder()
//!     .listen("127.0.0.1:0".parse().unwrap())
//!     .start()
//!     .await?;
//! println!("AMQP on {}", broker.url());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

pub mod core;
pub mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Entry point: [`Broker::builder`].
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// A builder with RabbitMQ's defaults: `127.0.0.1:5672`, `guest:guest`,
    /// vhost `/`.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }
}

/// Configures and starts a broker.
#[derive(Debug, Default)]
pub struct BrokerBuilder {
    listen: Vec<SocketAddr>,
    no_listen: bool,
    users: Vec<(String, String)>,
    vhosts: Vec<String>,
}

impl BrokerBuilder {
    /// Listens on `addr` (repeatable; port 0 picks a free port). The first
    /// call replaces the default `127.0.0.1:5672`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self.no_listen = false;
        self
    }

    /// No TCP listener: only the in-process core.
    pub fn no_listen(mut self) -> Self {
        self.listen.clear();
        self.no_listen = true;
        self
    }

    /// Adds a user (repeatable). Without any, `guest:guest`.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Adds a virtual host (`/` always exists).
    pub fn vhost(mut self, name: &str) -> Self {
        self.vhosts.push(name.to_owned());
        self
    }

    /// Starts the broker.
    pub async fn start(self) -> Result<BrokerHandle, BrokerError> {
        let users: Vec<(String, String)> = if self.users.is_empty() {
            vec![("guest".to_owned(), "guest".to_owned())]
        } else {
            self.users
        };
        let core = core::Core::new(
            users.iter().cloned().collect::<HashMap<_, _>>(),
            self.vhosts,
        );
        let addrs = if self.no_listen {
            Vec::new()
        } else if self.listen.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 5672))]
        } else {
            self.listen
        };
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut local_addrs = Vec::new();
        for addr in addrs {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| BrokerError(format!("cannot listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| BrokerError(format!("cannot read the address of {addr}: {e}")))?;
            local_addrs.push(local);
            tasks.push(tokio::spawn(server::accept(
                listener,
                core.clone(),
                stopped.clone(),
            )));
        }
        tasks.push(tokio::spawn(sweep(core.clone(), stopped)));
        Ok(BrokerHandle {
            inner: Arc::new(Inner {
                core,
                local_addrs,
                user: users[0].clone(),
                stop,
                tasks: std::sync::Mutex::new(tasks),
            }),
        })
    }
}

/// Expires queues and messages periodically.
async fn sweep(core: Arc<core::Core>, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => core.sweep(),
            _ = stopped.changed() => return,
        }
    }
}

/// A running broker. Cheap to clone; when the last clone is dropped (or
/// [`BrokerHandle::shutdown`] is called) the broker stops.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    core: Arc<core::Core>,
    local_addrs: Vec<SocketAddr>,
    user: (String, String),
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl BrokerHandle {
    /// `amqp://user:password@addr/%2f` for the first listener and user
    /// (`embedded://` without a listener).
    pub fn url(&self) -> String {
        match self.inner.local_addrs.first() {
            Some(addr) => format!(
                "amqp://{}:{}@{addr}/%2f",
                self.inner.user.0, self.inner.user.1
            ),
            None => "embedded://".to_owned(),
        }
    }

    /// The addresses it listens on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.local_addrs.clone()
    }

    /// The socket-free core.
    pub fn core(&self) -> Arc<core::Core> {
        self.inner.core.clone()
    }

    /// Stops accepting, closes every connection with 320
    /// CONNECTION_FORCED, and waits for the listeners to stop.
    pub async fn shutdown(self) {
        let _ = self.inner.stop.send(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Why a broker could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker: {0}")]
pub struct BrokerError(String);
