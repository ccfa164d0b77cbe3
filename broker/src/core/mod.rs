//! The socket-free broker core: vhosts, exchanges, queues, consumers and acks.
//!
//! Everything here is plain Rust method calls; the TCP server (and any in-process
//! transport) translate their protocol into [`Core`] / [`CoreConnection`] / [`CoreChannel`] calls.

pub mod channel;
pub mod connection;
pub mod consumer;
pub mod dead_letter;
pub mod error;
pub mod exchange;
pub mod memory;
pub mod message;
pub mod password;
pub mod permission;
pub mod queue;
pub mod vhost;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::AMQPValue;

pub use channel::{
    ChannelEvent, ChannelSink, CoreChannel, Delivery, GetOk, PublishOutcome, QueueDeclareOk,
    Returned, REPLY_TO_QUEUE,
};
pub use connection::CoreConnection;
pub use error::{AmqpError, ErrorScope};
pub use memory::{MemoryMonitor, MemoryWatermark};
pub use message::Message;
pub use password::{InvalidPasswordHash, PasswordHash};
pub use vhost::VHost;

/// How often TTL expiry and `x-expires` are checked.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// Lock a mutex, ignoring poisoning (the broker never panics while holding locks,
/// and a poisoned lock must not take the whole broker down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// The broker core: users, vhosts and connections.
#[derive(Debug)]
pub struct Core {
    users: HashMap<String, PasswordHash>,
    /// (user, vhost) → permissions. As in RabbitMQ, a user may use only
    /// the vhosts it has permissions on: none until they are set.
    permissions: RwLock<HashMap<(String, String), Arc<permission::Permissions>>>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    next_connection: AtomicU64,
    /// In milliseconds; [`NO_CONSUMER_TIMEOUT`] for none.
    consumer_timeout_ms: AtomicU64,
    memory: Arc<MemoryMonitor>,
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
        let mut map = HashMap::new();
        map.insert("/".to_string(), VHost::new("/"));
        for v in vhosts {
            map.entry(v.clone()).or_insert_with(|| VHost::new(v));
        }
        let core = Arc::new(Self {
            users: users.iter().cloned().collect(),
            permissions: RwLock::new(HashMap::new()),
            vhosts: RwLock::new(map),
            next_connection: AtomicU64::new(1),
            consumer_timeout_ms: AtomicU64::new(timeout_ms(Some(DEFAULT_CONSUMER_TIMEOUT))),
            memory: MemoryMonitor::new(MemoryWatermark::default().resolve()),
        });
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
        match self.users.get(user) {
            Some(hash) => hash.verify(password) && !password.is_empty(),
            None => false,
        }
    }

    /// Sets `user`'s permissions on `vhost`, as RabbitMQ's `set_permissions`:
    /// a user may use only the vhosts it has permissions on.
    pub fn set_permissions(&self, user: &str, vhost: &str, permissions: permission::Permissions) {
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
        self.users.contains_key(user)
    }

    /// Whether `user` may use `vhost`.
    pub fn can_access(&self, user: &str, vhost: &str) -> bool {
        self.users.contains_key(user)
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
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        read(&self.vhosts).get(name).cloned()
    }

    /// Add a vhost at runtime.
    pub fn add_vhost(&self, name: &str) {
        write(&self.vhosts)
            .entry(name.to_string())
            .or_insert_with(|| VHost::new(name));
    }

    /// Open a connection for an (already authenticated) user on a vhost.
    /// Fails with 530 NOT_ALLOWED when the vhost does not exist or is not permitted.
    pub fn open_connection(&self, vhost: &str, user: &str) -> Result<CoreConnection, AmqpError> {
        let vh = self.vhost(vhost).ok_or_else(|| {
            AmqpError::not_allowed(format!("vhost {vhost} not found")).during(10, 40)
        })?;
        let permissions = self
            .permissions_of(user, vhost)
            .filter(|_| self.users.contains_key(user))
            .ok_or_else(|| {
                AmqpError::not_allowed(format!(
                    "access to vhost '{vhost}' refused for user '{user}'"
                ))
                .during(10, 40)
            })?;
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        Ok(CoreConnection::new(
            id,
            user,
            vh,
            permissions,
            self.memory.clone(),
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
