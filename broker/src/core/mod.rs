//! The socket-free broker core: vhosts, exchanges, queues, consumers and acks.
//!
//! Everything here is plain Rust method calls; the TCP server (and any in-process
//! transport) translate their protocol into [`Core`] / [`CoreConnection`] / [`CoreChannel`] calls.
//!
//! # Public API
//!
//! [`Core`] (users, permissions, vhosts) opens [`CoreConnection`]s, which open
//! [`CoreChannel`]s: one method per AMQP method, taking argument structs
//! ([`QueueDeclareOptions`], [`ExchangeDeclareOptions`], [`ConsumeOptions`],
//! [`QueueDeleteOptions`]) and failing with an [`AmqpError`] (reply code and
//! text; the wire's class and method ids are the server's to add). What a
//! channel emits on its own (deliveries, returns, confirms, cancels) reaches
//! its [`ChannelSink`] as [`ChannelEvent`]s. The rest is private to the crate.
//!
//! # Layers
//!
//! Modules depend on the ones before them only; no two import each other:
//!
//! 1. `error`, `locks` (the lock order, written down once), `memory`,
//!    `password`, `permission`: leaves;
//! 2. `message`: a published message, shared by `Arc`;
//! 3. `queue`: storage and dispatch to a `Subscriber` trait (capacity,
//!    deliver, cancelled); it returns what it causes elsewhere (dead letters,
//!    subscribers to cancel, an auto-delete due) instead of calling up;
//! 4. `exchange` (routers), `dead_letter` (`x-death`, the work list and its
//!    budgets, routing through a `Router` trait), `reply_to` (direct
//!    reply-to's registry);
//! 5. `vhost`: the registry of exchanges and queues, routing, and the runner
//!    of what queues return;
//! 6. `session`: what a connection's channels share;
//! 7. `channel` (whose consumers are the queues' subscribers), then
//!    `connection`; this module's [`Core`] on top;
//! 8. [`admin`]: what operators see and do ([`snapshot`]s of every object,
//!    users, vhosts, permissions, topology, closing connections), as
//!    methods of [`Core`] built on the ones below. `snapshot` itself, plain
//!    data, is a leaf of layer 1.
//!
//! # No reference cycle
//!
//! A queue holds its subscribers (`Arc<dyn Subscriber>`), a channel its
//! session, the session its vhost, the vhost its queues; the one link back, a
//! consumer's to its channel, is a `Weak`. So a queue never keeps a channel
//! (and through it a connection) alive, and nothing relies on an explicit
//! close to be freed. The other back links are weak too: a session's
//! register of channels and a vhost's direct reply-to targets.

pub mod admin;
pub(crate) mod channel;
pub(crate) mod connection;
pub mod dead_letter;
pub mod disk;
pub(crate) mod durable;
#[cfg(test)]
mod durable_tests;
pub(crate) mod error;
pub(crate) mod exchange;
pub(crate) mod locks;
pub(crate) mod memory;
pub(crate) mod message;
pub(crate) mod password;
pub mod permission;
pub(crate) mod queue;
pub(crate) mod reply_to;
pub(crate) mod restore;
pub(crate) mod session;
pub mod snapshot;
pub(crate) mod vhost;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::AMQPValue;

pub use crate::store::StoreError;
pub use channel::{
    ChannelEvent, ChannelSink, ConsumeOptions, CoreChannel, Delivery, GetOk, PublishOutcome,
    QueueDeclareOk, Returned,
};
pub use connection::CoreConnection;
pub use error::{AmqpError, ErrorScope};
pub use exchange::ExchangeDeclareOptions;
pub use memory::{MemoryMonitor, MemoryWatermark};
pub use message::Message;
pub use password::{InvalidPasswordHash, PasswordHash};
pub use queue::{QueueDeclareOptions, QueueDeleteOptions};
pub use restore::RecoveryReport;
use vhost::VHost;

use crate::store;

/// How often TTL expiry and `x-expires` are checked.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

pub(crate) use locks::{lock, read, write};

/// An integer-typed AMQP value as i64 (strings are not converted).
pub(crate) fn value_as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(x) => Some(i64::from(*x)),
        AMQPValue::ShortShortUInt(x) => Some(i64::from(*x)),
        AMQPValue::ShortInt(x) => Some(i64::from(*x)),
        AMQPValue::ShortUInt(x) => Some(i64::from(*x)),
        AMQPValue::LongInt(x) => Some(i64::from(*x)),
        AMQPValue::LongUInt(x) => Some(i64::from(*x)),
        AMQPValue::LongLongInt(x) => Some(*x),
        AMQPValue::Timestamp(x) => i64::try_from(*x).ok(),
        _ => None,
    }
}

/// A string-typed AMQP value as String.
pub(crate) fn value_as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// RabbitMQ's name for the type of a field-table value (`longstr`, `long`, ...),
/// for error texts.
pub(crate) fn value_type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// Human-readable rendering of an argument value for error texts.
pub(crate) fn value_display(v: &AMQPValue) -> String {
    value_as_i64(v)
        .map(|n| n.to_string())
        .or_else(|| value_as_string(v))
        .unwrap_or_else(|| format!("{v:?}"))
}

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_millis(1_800_000);

/// [`Core::consumer_timeout`] when there is none.
const NO_CONSUMER_TIMEOUT: u64 = u64::MAX;

/// A user: its password hash and its tags (`administrator`, …).
#[derive(Clone, Debug)]
pub(crate) struct User {
    hash: PasswordHash,
    tags: Vec<String>,
}

impl User {
    /// A user without tags.
    fn new(hash: PasswordHash) -> Self {
        Self {
            hash,
            tags: Vec::new(),
        }
    }
}

/// The broker core: users, vhosts and connections.
#[derive(Debug)]
pub struct Core {
    /// Users by name (a leaf of the lock order).
    users: RwLock<HashMap<String, User>>,
    /// (user, vhost) → permissions. As in RabbitMQ, a user may use only
    /// the vhosts it has permissions on: none until they are set.
    permissions: RwLock<HashMap<(String, String), Arc<permission::Permissions>>>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection: AtomicU64,
    /// In milliseconds; [`NO_CONSUMER_TIMEOUT`] for none.
    consumer_timeout_ms: AtomicU64,
    memory: Arc<MemoryMonitor>,
    /// The durable store, for a core opened on a data directory.
    durable: Option<Arc<durable::Persistence>>,
    /// What was restored from the store at start.
    recovery: Option<RecoveryReport>,
    /// The open connections, for operators.
    connections: Arc<session::Registry>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // Dropping the queues must not record their messages as settled.
        if let Some(p) = &self.durable {
            p.abandon();
        }
    }
}

impl Core {
    /// Create a core with the given users (name, password) and extra vhosts ("/" always
    /// exists), with the default memory watermark ([`MemoryWatermark::default`]).
    /// Starts the TTL/expiry sweeper and the memory sampler if called inside a
    /// tokio runtime. Users may use nothing until
    /// [`set_permissions`](Self::set_permissions).
    pub fn new(users: &[(String, String)], vhosts: &[String]) -> Arc<Self> {
        let users: Vec<(String, PasswordHash)> = users
            .iter()
            .map(|(name, password)| (name.clone(), PasswordHash::new(password)))
            .collect();
        Self::with_password_hashes(&users, vhosts)
    }

    /// [`new`](Self::new) with users given by their password hashes.
    pub fn with_password_hashes(users: &[(String, PasswordHash)], vhosts: &[String]) -> Arc<Self> {
        let users = users
            .iter()
            .map(|(name, hash)| (name.clone(), User::new(hash.clone())))
            .collect();
        Self::started(Self::build(users, vhosts, None))
    }

    /// A core keeping its durable state in `dir` (the durable store): what the
    /// store holds is restored first (vhosts, users, permissions, durable
    /// exchanges, queues, bindings, persistent messages; see [`Core::recovery`]),
    /// then `users` (which win over stored ones of the same name) and `vhosts`
    /// are added. Fails when another broker holds `dir`
    /// ([`StoreError::Locked`]) or its files cannot be read.
    pub fn open_durable(
        dir: &Path,
        users: &[(String, PasswordHash)],
        vhosts: &[String],
    ) -> Result<Arc<Self>, StoreError> {
        Self::open_durable_with(dir, users, vhosts, None, false)
    }

    /// [`open_durable`](Self::open_durable) with segments of `segment_size` bytes;
    /// `repair`: truncate the log at damage that is not a torn tail (logging what
    /// is dropped) instead of refusing to start.
    pub(crate) fn open_durable_with(
        dir: &Path,
        users: &[(String, PasswordHash)],
        vhosts: &[String],
        segment_size: Option<u64>,
        repair: bool,
    ) -> Result<Arc<Self>, StoreError> {
        let started = Instant::now();
        let (p, recovered) = durable::Persistence::open(dir, segment_size, repair)?;
        let (mut stored_users, rest) = restore::split_users(recovered);
        for (name, hash) in users {
            // A given password wins; tags set by an operator stay.
            stored_users
                .entry(name.clone())
                .and_modify(|u| u.hash = hash.clone())
                .or_insert_with(|| User::new(hash.clone()));
        }
        let mut core = Self::build(stored_users, &[], Some(p.clone()));
        let mut report = restore::restore(&core, &p, rest);
        for v in vhosts {
            core.add_vhost(v);
        }
        report.duration = started.elapsed();
        report.log();
        core.recovery = Some(report);
        Ok(Self::started(core))
    }

    fn build(
        users: HashMap<String, User>,
        vhosts: &[String],
        durable: Option<Arc<durable::Persistence>>,
    ) -> Self {
        let mut map = HashMap::new();
        map.insert("/".to_string(), VHost::with_store("/", durable.clone()));
        for v in vhosts {
            map.entry(v.clone())
                .or_insert_with(|| VHost::with_store(v, durable.clone()));
        }
        Self {
            users: RwLock::new(users),
            permissions: RwLock::new(HashMap::new()),
            vhosts: RwLock::new(map),
            next_connection: AtomicU64::new(1),
            consumer_timeout_ms: AtomicU64::new(timeout_ms(Some(DEFAULT_CONSUMER_TIMEOUT))),
            memory: MemoryMonitor::new(MemoryWatermark::default().resolve()),
            durable,
            recovery: None,
            connections: Arc::default(),
        }
    }

    /// Shares the core and starts its background tasks.
    fn started(core: Self) -> Arc<Self> {
        let core = Arc::new(core);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            memory::spawn_sampler(&handle, &core.memory);
            let weak: Weak<Core> = Arc::downgrade(&core);
            handle.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(core) = weak.upgrade() else { break };
                    core.sweep(Instant::now());
                }
            });
        }
        core
    }

    /// What was restored from the data directory at start (`None` for a core
    /// kept in memory).
    pub fn recovery(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// The data directory, for a durable core.
    pub fn data_dir(&self) -> Option<&Path> {
        self.durable.as_ref().map(|p| p.dir())
    }

    /// Follows the store's disk-full state (`None` for a core kept in memory).
    pub(crate) fn watch_disk_full(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.durable.as_ref().map(|p| p.watch_disk_full())
    }

    /// Follows whether the store has failed (`None` for a core kept in memory).
    pub(crate) fn watch_store_failed(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.durable.as_ref().map(|p| p.watch_failed())
    }

    /// The write or fsync that failed the durable store, if one did (never
    /// for a core kept in memory). From then on nothing more can be made
    /// durable: persistent publishes are refused, the disk alarm blocks
    /// publishers, and the broker should be restarted, which recovers what
    /// reached the disk (a failed fsync's pages are not trusted again, as
    /// PostgreSQL learned).
    pub fn store_failure(&self) -> Option<std::sync::Arc<std::io::Error>> {
        self.durable.as_ref().and_then(|p| p.failure())
    }

    /// Resolves with [`store_failure`](Self::store_failure) once the durable
    /// store fails; pending forever for a core kept in memory or a store
    /// closed cleanly. `warren broker` exits on it.
    pub async fn store_failed(&self) -> std::sync::Arc<std::io::Error> {
        if let Some(mut failed) = self.watch_store_failed() {
            if failed.wait_for(|f| *f).await.is_ok() {
                return self.store_failure().unwrap_or_else(|| {
                    std::sync::Arc::new(std::io::Error::other("the durable store failed"))
                });
            }
        }
        std::future::pending().await
    }

    /// Closes the durable store cleanly: everything pending reaches the disk and
    /// the next start knows the shutdown was clean. Settlements after this are
    /// not recorded (the broker is stopping). A no-op for a core kept in memory.
    pub fn close_durable(&self) -> Result<(), StoreError> {
        match &self.durable {
            Some(p) => p.close(),
            None => Ok(()),
        }
    }

    /// The memory gauge and alarm: above its watermark, publishers are blocked.
    pub fn memory(&self) -> &Arc<MemoryMonitor> {
        &self.memory
    }

    /// Run TTL expiry and `x-expires` checks now (normally done by the sweeper task).
    pub fn sweep(&self, now: Instant) {
        let vhs: Vec<Arc<VHost>> = read(&self.vhosts).values().cloned().collect();
        for vh in vhs {
            vh.sweep(now);
        }
    }

    /// Check a user's password (RabbitMQ refuses empty ones too).
    pub fn authenticate(&self, user: &str, password: &str) -> bool {
        // The hash is checked with the users' lock released.
        let hash = read(&self.users).get(user).map(|u| u.hash.clone());
        match hash {
            Some(hash) => hash.verify(password) && !password.is_empty(),
            None => false,
        }
    }

    /// Sets `user`'s permissions on `vhost`, as RabbitMQ's `set_permissions`:
    /// a user may use only the vhosts it has permissions on.
    pub fn set_permissions(&self, user: &str, vhost: &str, permissions: permission::Permissions) {
        if let Some(p) = &self.durable {
            restore::store_permissions(p, user, vhost, &permissions);
        }
        self.insert_permissions(user, vhost, permissions);
    }

    /// Records `name` in the data directory as it is now, or its deletion
    /// when it is gone (a no-op for a core kept in memory).
    pub(crate) fn store_user(&self, name: &str) {
        let Some(p) = &self.durable else { return };
        let value = read(&self.users).get(name).map(restore::encode_user);
        match value {
            Some(value) => p.put(store::DefClass::USER, name.as_bytes(), &value),
            None => p.delete(store::DefClass::USER, name.as_bytes()),
        }
    }

    /// Records that `user` has no permissions on `vhost` any more.
    pub(crate) fn store_permissions_cleared(&self, user: &str, vhost: &str) {
        if let Some(p) = &self.durable {
            p.delete(
                store::DefClass::PERMISSION,
                &restore::permissions_key(user, vhost),
            );
        }
    }

    /// Records that the vhost `name` is gone.
    pub(crate) fn store_vhost_deleted(&self, name: &str) {
        if let Some(p) = &self.durable {
            p.delete(store::DefClass::VHOST, name.as_bytes());
        }
    }

    /// Sets permissions without recording them (restore).
    fn insert_permissions(&self, user: &str, vhost: &str, permissions: permission::Permissions) {
        write(&self.permissions).insert((user.to_owned(), vhost.to_owned()), Arc::new(permissions));
    }

    /// `user`'s permissions on `vhost`, if any were set.
    fn permissions_of(&self, user: &str, vhost: &str) -> Option<Arc<permission::Permissions>> {
        read(&self.permissions)
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned()
    }

    /// Whether `user` exists (an `EXTERNAL` login needs only that).
    pub fn has_user(&self, user: &str) -> bool {
        read(&self.users).contains_key(user)
    }

    /// Whether `user` may use `vhost`.
    pub fn can_access(&self, user: &str, vhost: &str) -> bool {
        self.has_user(user)
            && read(&self.vhosts).contains_key(vhost)
            && self.permissions_of(user, vhost).is_some()
    }

    /// How long a delivery may stay unacknowledged before the server closes
    /// its channel (RabbitMQ's `consumer_timeout`); `None`: forever.
    pub fn consumer_timeout(&self) -> Option<Duration> {
        match self.consumer_timeout_ms.load(Ordering::Relaxed) {
            NO_CONSUMER_TIMEOUT => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Sets [`consumer_timeout`](Self::consumer_timeout) for the checks
    /// from now on.
    pub fn set_consumer_timeout(&self, timeout: Option<Duration>) {
        self.consumer_timeout_ms
            .store(timeout_ms(timeout), Ordering::Relaxed);
    }

    /// Look up a vhost.
    pub(crate) fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        read(&self.vhosts).get(name).cloned()
    }

    /// Add a vhost at runtime.
    pub fn add_vhost(&self, name: &str) {
        let added = {
            let mut vhosts = write(&self.vhosts);
            match vhosts.entry(name.to_string()) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(VHost::with_store(name, self.durable.clone()));
                    true
                }
            }
        };
        if let (true, Some(p)) = (added, &self.durable) {
            p.put(crate::store::DefClass::VHOST, name.as_bytes(), b"");
        }
    }

    /// Open a connection for an (already authenticated) user on a vhost.
    /// Fails with 530 NOT_ALLOWED when the vhost does not exist or is not permitted.
    pub fn open_connection(&self, vhost: &str, user: &str) -> Result<CoreConnection, AmqpError> {
        let vh = self
            .vhost(vhost)
            .ok_or_else(|| AmqpError::not_allowed(format!("vhost {vhost} not found")))?;
        let permissions = self
            .permissions_of(user, vhost)
            .filter(|_| self.has_user(user))
            .ok_or_else(|| {
                AmqpError::not_allowed(format!(
                    "access to vhost '{vhost}' refused for user '{user}'"
                ))
            })?;
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        Ok(CoreConnection::new(
            id,
            user,
            vh,
            permissions,
            self.memory.clone(),
            self.connections.clone(),
        ))
    }
}

/// A timeout in milliseconds, saturating below [`NO_CONSUMER_TIMEOUT`].
fn timeout_ms(timeout: Option<Duration>) -> u64 {
    timeout.map_or(NO_CONSUMER_TIMEOUT, |t| {
        u64::try_from(t.as_millis())
            .unwrap_or(u64::MAX)
            .min(NO_CONSUMER_TIMEOUT - 1)
    })
}
