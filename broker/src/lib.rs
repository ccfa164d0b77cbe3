//! warren-broker: an AMQP 0-9-1 broker, embeddable in a process or run
//! standalone (`warren broker`).
//!
//! It is the broker behind the `warren` RPC library's zero-setup default, and
//! stands on its own: any AMQP 0-9-1 client (lapin, pika, kombu,
//! oslo.messaging) can use it over TCP. It knows nothing of RPC.
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Port 0: any free port, so many brokers can run side by side.
//! let broker = warren_broker::Broker::builder()
//!     .listen("127.0.0.1:0".parse()?)
//!     .user("app", "s3cret")
//!     .start()
//!     .await?;
//! println!("AMQP clients connect to {}", broker.url());
//!
//! // Any AMQP 0-9-1 client can now log in; the broker opens with
//! // connection.start (a method frame, type 1, on channel 0).
//! let mut socket = tokio::net::TcpStream::connect(broker.local_addrs()[0]).await?;
//! socket.write_all(b"AMQP\x00\x00\x09\x01").await?;
//! let mut header = [0u8; 7];
//! socket.read_exact(&mut header).await?;
//! assert_eq!((header[0], header[1], header[2]), (1, 0, 0));
//! broker.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! [`core`] holds the socket-free broker model (usable in-process); [`server`] speaks
//! AMQP 0-9-1 over TCP on top of it. [`Broker::builder`] starts both.
//!
//! Core state sits behind std locks, taken in one order (written down once,
//! in the core's `locks` module), that are never held across an `.await`
//! (the lint below keeps it so): a task waiting while holding one would stall
//! every connection touching that queue or channel.
#![deny(clippy::await_holding_lock)]

pub mod control;
pub mod core;
pub mod definitions;
#[cfg(feature = "management")]
pub mod management;
pub mod server;
// The durable store: some of its API (statistics, explicit GC) serves its own
// tests and measurements only.
#[allow(dead_code)]
pub(crate) mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use core::DEFAULT_CONSUMER_TIMEOUT;

/// Error starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate, key or CA cannot be used.
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    /// TLS listeners without a TLS configuration.
    #[error("tls_listen needs a certificate and key (BrokerBuilder::tls)")]
    NoTlsConfig,
    /// The data directory cannot be used: another broker holds it, or its files
    /// cannot be read.
    #[error("cannot use the data directory {}: {source}", dir.display())]
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: core::StoreError,
    },
    /// A permission pattern is not a valid regular expression.
    #[error("invalid permission pattern for user {user} on vhost {vhost}: {source}")]
    Permission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The regex error.
        #[source]
        source: regex::Error,
    },
}

/// The store's segment size when the default (32 MiB) cannot hold the largest
/// message a client may publish (its body, a content header of at most a frame,
/// and the record's framing): `None` to keep the default.
fn segment_size_for(max_message_size: u64) -> Option<u64> {
    const DEFAULT: u64 = 32 << 20;
    const MARGIN: u64 = 1 << 20;
    let need = max_message_size
        .min(server::limits::MAX_MESSAGE_SIZE_CAP)
        .saturating_add(MARGIN);
    (need > DEFAULT).then(|| need.next_multiple_of(MARGIN))
}

#[cfg(test)]
mod segment_tests {
    #[test]
    fn segments_grow_only_for_messages_the_default_cannot_hold() {
        assert_eq!(super::segment_size_for(16 << 20), None);
        assert_eq!(super::segment_size_for(31 << 20), None);
        assert_eq!(super::segment_size_for(40 << 20), Some(41 << 20));
        assert_eq!(super::segment_size_for(u64::MAX), Some(513 << 20));
    }
}

/// Entry point of the embedded broker.
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// A builder with the defaults: listen on 127.0.0.1:5672, user guest:guest, vhost "/".
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }
}

/// Configures and starts a broker.
#[derive(Debug, Clone, Default)]
pub struct BrokerBuilder {
    listen: Vec<SocketAddr>,
    no_listen: bool,
    tls_listen: Vec<SocketAddr>,
    tls: Option<server::TlsConfig>,
    users: Vec<(String, core::PasswordHash)>,
    /// The first user's password when it was given as one, for
    /// [`BrokerHandle::url`] (never logged: see its `Debug`).
    first_password: Option<Secret>,
    vhosts: Vec<String>,
    permissions: Vec<[String; 5]>,
    consumer_timeout: ConsumerTimeout,
    memory_high_watermark: Option<core::MemoryWatermark>,
    limits: server::Limits,
    data_dir: Option<PathBuf>,
    disk_free_limit: Option<u64>,
    repair: bool,
}

/// A password kept for [`BrokerHandle::url`], hidden from `Debug` output.
#[derive(Clone, Default)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// The builder's consumer timeout: unset means RabbitMQ's default.
#[derive(Debug, Clone, Copy, Default)]
enum ConsumerTimeout {
    #[default]
    Default,
    Set(Option<Duration>),
}

impl BrokerBuilder {
    /// Listen on `addr` (repeatable; port 0 picks a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen.push(addr);
        self.no_listen = false;
        self
    }

    /// Do not open any plain TCP listener (core only, for in-process use,
    /// unless TLS listeners are added).
    pub fn no_listen(mut self) -> Self {
        self.no_listen = true;
        self.listen.clear();
        self
    }

    /// Listen for AMQP over TLS (`amqps`) on `addr` (repeatable; port 0
    /// picks a free port), with the certificate of [`tls`](Self::tls).
    /// Without [`listen`](Self::listen), no plain listener is opened.
    pub fn tls_listen(mut self, addr: SocketAddr) -> Self {
        self.tls_listen.push(addr);
        self
    }

    /// The TLS listeners' certificate, key and optional client CA.
    pub fn tls(mut self, config: server::TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Add a user (repeatable), stored as a salted hash. Without any,
    /// `guest:guest` exists with all permissions on `/` and the `administrator`
    /// tag; users added here
    /// have none until [`permission`](Self::permission) grants them, as in
    /// RabbitMQ.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        if self.users.is_empty() {
            self.first_password = Some(Secret(password.to_owned()));
        }
        self.users
            .push((name.to_string(), core::PasswordHash::new(password)));
        self
    }

    /// Add a user by its password hash in RabbitMQ's SHA-256 scheme (the
    /// `password_hash` of `rabbitmqctl export_definitions`), so users move
    /// between RabbitMQ and warren without their passwords.
    pub fn user_with_password_hash(mut self, name: &str, hash: core::PasswordHash) -> Self {
        self.users.push((name.to_string(), hash));
        self
    }

    /// Add a vhost ("/" always exists).
    pub fn vhost(mut self, name: &str) -> Self {
        self.vhosts.push(name.to_string());
        self
    }

    /// Lets `user` use `vhost`, on names matching these patterns (RabbitMQ's
    /// configure / write / read regular expressions; `.*` allows all). A
    /// user may use only the vhosts it has permissions on.
    pub fn permission(
        mut self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Self {
        self.permissions
            .push([user, vhost, configure, write, read].map(str::to_owned));
        self
    }

    /// Closes a channel whose oldest unacknowledged delivery is older than
    /// `timeout` (406 PRECONDITION_FAILED, its deliveries requeued), as
    /// RabbitMQ's `consumer_timeout`; `None` never does. Default:
    /// [`DEFAULT_CONSUMER_TIMEOUT`]. Checked about once a second.
    pub fn consumer_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.consumer_timeout = ConsumerTimeout::Set(timeout);
        self
    }

    /// Blocks publishers while the broker's memory is at or above this
    /// watermark (RabbitMQ's `vm_memory_high_watermark`), until it falls
    /// below 0.95 of it: bytes, or a fraction of the memory available (RAM,
    /// or the cgroup's `memory.max` when lower). Defaults to 0.4 of it, as
    /// RabbitMQ 3.x; `Bytes(0)` blocks every publisher.
    ///
    /// The broker's memory is what messages hold plus the rest of its
    /// process's resident memory (sampled each second, and counted for at
    /// most half the watermark, see [`core::MemoryMonitor`]): in `embedded://` mode
    /// that rest includes the application around it.
    pub fn memory_high_watermark(mut self, watermark: core::MemoryWatermark) -> Self {
        self.memory_high_watermark = Some(watermark);
        self
    }

    /// Largest message body clients may publish, in bytes (RabbitMQ's
    /// `max_message_size`; default 16 MiB, at most 512 MiB). A publish
    /// declaring more gets its channel closed with 406 PRECONDITION_FAILED.
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.limits.max_message_size = bytes;
        self
    }

    /// Most TCP connections open at once (RabbitMQ's `max_connections`;
    /// default unlimited). Connections are counted from accept; one past the
    /// limit is refused with 530 NOT_ALLOWED at `connection.open`.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = Some(max);
        self
    }

    /// Keep durable state in `dir` (created if needed): durable exchanges, queues
    /// and bindings, vhosts, permissions, and persistent messages in durable
    /// queues survive a restart, and confirms of those messages wait for the
    /// disk. Without it the broker keeps everything in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// When the data directory's log is damaged other than by a torn last write
    /// (which is always dropped), truncate it there, logging everything dropped,
    /// instead of refusing to start (the default). Only with
    /// [`data_dir`](Self::data_dir).
    pub fn repair(mut self, repair: bool) -> Self {
        self.repair = repair;
        self
    }

    /// Block publishers while the data directory's file system has less than
    /// `bytes` free (RabbitMQ's `disk_free_limit`; default
    /// [`core::disk::DEFAULT_DISK_FREE_LIMIT`], 50 MB). Only with
    /// [`data_dir`](Self::data_dir).
    pub fn disk_free_limit(mut self, bytes: u64) -> Self {
        self.disk_free_limit = Some(bytes);
        self
    }

    /// Bind the listeners and start serving.
    pub async fn start(mut self) -> Result<BrokerHandle, BrokerError> {
        for (user, _) in &self.users {
            if !self.permissions.iter().any(|p| p[0] == *user) {
                tracing::warn!(%user, "user has no permissions: it can use no vhost");
            }
        }
        let default_user = self.users.is_empty();
        let users = std::mem::take(&mut self.users);
        let core = match &self.data_dir {
            Some(dir) => {
                let core = core::Core::open_durable_with(
                    dir,
                    &users,
                    &self.vhosts,
                    segment_size_for(self.limits.max_message_size),
                    self.repair,
                )
                .map_err(|source| BrokerError::DataDir {
                    dir: dir.clone(),
                    source,
                })?;
                core::disk::spawn(
                    &core,
                    self.disk_free_limit
                        .unwrap_or(core::disk::DEFAULT_DISK_FREE_LIMIT),
                );
                core
            }
            None => core::Core::with_password_hashes(&users, &self.vhosts),
        };
        // RabbitMQ's default user (an administrator, with its default
        // permissions), on a node without users only: a data directory keeps
        // an operator's deletion of guest across restarts.
        let mut guest_created = false;
        if default_user && core.list_users().is_empty() {
            guest_created = true;
            let guest = core
                .add_user("guest", "guest")
                .and_then(|()| core.set_user_tags("guest", &["administrator".to_owned()]));
            if let Err(e) = guest {
                tracing::warn!(error = %e, "the default user guest could not be added");
            }
            let all = ".*";
            self.permissions
                .insert(0, ["guest", "/", all, all, all].map(str::to_owned));
        }
        core.set_consumer_timeout(match self.consumer_timeout {
            ConsumerTimeout::Default => Some(DEFAULT_CONSUMER_TIMEOUT),
            ConsumerTimeout::Set(t) => t,
        });
        if let Some(w) = self.memory_high_watermark {
            core.memory().set_watermark(w.resolve());
        }
        for [user, vhost, configure, write, read] in self.permissions {
            match core::permission::Permissions::new(&configure, &write, &read) {
                Ok(p) => core.set_permissions(&user, &vhost, p),
                Err(source) => {
                    return Err(BrokerError::Permission {
                        user,
                        vhost,
                        source,
                    })
                }
            }
        }
        let tls = match (&self.tls, self.tls_listen.is_empty()) {
            (_, true) => None,
            (None, false) => return Err(BrokerError::NoTlsConfig),
            (Some(config), false) => Some(Arc::new(server::tls::TlsAcceptor::new(config.clone())?)),
        };
        let addrs = if self.no_listen || (self.listen.is_empty() && tls.is_some()) {
            Vec::new()
        } else if self.listen.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 5672))]
        } else {
            self.listen
        };
        let mut listeners = Vec::new();
        for addr in addrs {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Bind { addr, source })?;
            listeners.push(l);
        }
        let local_addrs: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let mut tls_listeners = Vec::new();
        for addr in self.tls_listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| BrokerError::Bind { addr, source })?;
            tls_listeners.push(l);
        }
        let tls_addrs: Vec<SocketAddr> = tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (tracker, done) = mpsc::channel::<()>(1);
        let admission = server::limits::Admission::new(self.limits);
        let plain = listeners.into_iter().map(|l| (l, None));
        let secure = tls_listeners.into_iter().map(|l| (l, tls.clone()));
        for (l, tls) in plain.chain(secure) {
            tokio::spawn(server::listener::accept_loop(
                l,
                tls,
                core.clone(),
                admission.clone(),
                shutdown_rx.clone(),
                tracker.clone(),
            ));
        }
        // The user of `url()` and of in-process connections: the first one
        // given; else guest, created now (its password known) or kept in the
        // data directory; else the first user kept there.
        let first_user = match users.into_iter().next() {
            Some((name, _)) => (name, self.first_password.map(|Secret(p)| p)),
            None if guest_created => ("guest".to_owned(), Some("guest".to_owned())),
            None => {
                let kept = core.list_users();
                let name = kept
                    .iter()
                    .find(|u| u.name == "guest")
                    .or_else(|| kept.first())
                    .map(|u| u.name.clone())
                    .unwrap_or_default();
                // Its password only if it is still the default.
                let password = (name == "guest" && core.authenticate("guest", "guest"))
                    .then(|| "guest".to_owned());
                (name, password)
            }
        };
        Ok(BrokerHandle {
            inner: Arc::new(HandleInner {
                core,
                local_addrs,
                tls_addrs,
                tls,
                first_user,
                max_message_size: admission.limits.max_message_size,
                shutdown: shutdown_tx,
                tracker: Mutex::new(Some(tracker)),
                done: tokio::sync::Mutex::new(Some(done)),
            }),
        })
    }
}

#[derive(Debug)]
struct HandleInner {
    core: Arc<core::Core>,
    local_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    tls: Option<Arc<server::tls::TlsAcceptor>>,
    /// The first user's name, and its password unless it was given as a hash.
    first_user: (String, Option<String>),
    /// The largest message body accepted (capped like RabbitMQ's).
    max_message_size: u64,
    shutdown: watch::Sender<bool>,
    tracker: Mutex<Option<mpsc::Sender<()>>>,
    done: tokio::sync::Mutex<Option<mpsc::Receiver<()>>>,
}

/// Handle on a running broker (cheap to clone).
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    inner: Arc<HandleInner>,
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl BrokerHandle {
    /// `amqp://user:pass@host:port/%2f` for the first listener and first
    /// user (`amqp://user@…` when that user was given by its hash);
    /// `embedded://` for a broker without a listener (reach it with
    /// `warren::Connection::in_process`).
    pub fn url(&self) -> String {
        let (u, p) = &self.inner.first_user;
        let login = match p {
            Some(p) => format!("{}:{}", url_escape(u), url_escape(p)),
            None => url_escape(u),
        };
        match self.inner.local_addrs.first() {
            Some(addr) => format!("amqp://{login}@{addr}/%2f"),
            None => "embedded://".to_owned(),
        }
    }

    /// `amqps://user:pass@host:port/%2f` for the first TLS listener and
    /// first user, if there is a TLS listener. Clients need the server's
    /// CA (`?cacertfile=`) and a name its certificate lists.
    pub fn tls_url(&self) -> Option<String> {
        let (u, p) = &self.inner.first_user;
        let login = match p {
            Some(p) => format!("{}:{}", url_escape(u), url_escape(p)),
            None => url_escape(u),
        };
        let addr = self.inner.tls_addrs.first()?;
        Some(format!("amqps://{login}@{addr}/%2f"))
    }

    /// The bound TLS listener addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.inner.tls_addrs.clone()
    }

    /// Reads the TLS certificate, key and CA files again: connections
    /// accepted from now on use them, established ones keep theirs (none is
    /// dropped). On error the previous files stay in use. `warren broker`
    /// does this on SIGHUP.
    pub fn reload_tls(&self) -> Result<(), BrokerError> {
        match &self.inner.tls {
            Some(tls) => Ok(tls.reload()?),
            None => Ok(()),
        }
    }

    /// The first configured user's name (in-process connections log in as it).
    pub fn user(&self) -> &str {
        &self.inner.first_user.0
    }

    /// The bound listener addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.inner.local_addrs.clone()
    }

    /// The largest message body the broker accepts, in bytes
    /// ([`BrokerBuilder::max_message_size`], capped at 512 MiB as on
    /// RabbitMQ). The TCP listeners refuse a larger one with 406; an
    /// in-process publisher must check it itself, since the core takes
    /// whatever body it is handed.
    pub fn max_message_size(&self) -> u64 {
        self.inner.max_message_size
    }

    /// The socket-free core.
    pub fn core(&self) -> Arc<core::Core> {
        self.inner.core.clone()
    }

    /// What was restored from the data directory at start (`None` without one).
    pub fn recovery(&self) -> Option<core::RecoveryReport> {
        self.inner.core.recovery().cloned()
    }

    /// Stop accepting, close every connection with 320 CONNECTION_FORCED and wait;
    /// then close the data directory's store cleanly, if there is one.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let tracker = core::lock(&self.inner.tracker).take();
        drop(tracker);
        let done = self.inner.done.lock().await.take();
        if let Some(mut done) = done {
            let _ = done.recv().await;
        }
        if let Err(e) = self.inner.core.close_durable() {
            tracing::error!(error = %e, "closing the durable store");
        }
    }
}
