//! What a connection's channels share: the authenticated user, the vhost,
//! the permissions, the memory gauge, and the register of open channels.
//!
//! Sits between the vhost and the channel layers: channels hold their
//! [`Session`] (to reach the vhost), a [`super::CoreConnection`] owns it and
//! the channels appear in it only as [`Attached`] trait objects, held
//! weakly, so that this module needs nothing from the channel module and no
//! reference cycle runs through it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use tokio::sync::watch;

use super::error::{codes, AmqpError};
use super::locks::lock;
use super::memory::MemoryMonitor;
use super::permission::Permissions;
use super::snapshot::{ChannelSnapshot, ConnectionInfo, ConnectionSnapshot, ConsumerSnapshot};
use super::vhost::VHost;

/// An open channel, as its connection sees it.
pub(crate) trait Attached: Send + Sync {
    /// Closes the channel (cancels its consumers, requeues its unacked messages).
    fn close(&self);

    /// Offers queued messages to the channel's consumers again.
    fn redispatch(&self);

    /// The channel and its consumers, for operators. Takes the channel's
    /// lock: call with no queue or channel lock held.
    fn snapshot(&self) -> (ChannelSnapshot, Vec<ConsumerSnapshot>);
}

/// The core's register of open connections (a leaf of the lock order:
/// looked up and released), for operators. Holds them weakly.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<u64, Weak<Session>>>,
}

impl Registry {
    /// Registers an open connection.
    fn add(&self, session: &Arc<Session>) {
        lock(&self.sessions).insert(session.id, Arc::downgrade(session));
    }

    /// Forgets a closed connection.
    fn remove(&self, id: u64) {
        lock(&self.sessions).remove(&id);
    }

    /// The open connections, by id.
    pub(crate) fn sessions(&self) -> Vec<Arc<Session>> {
        let mut out: Vec<Arc<Session>> = lock(&self.sessions)
            .values()
            .filter_map(Weak::upgrade)
            .filter(|s| !s.closed.load(Ordering::Acquire))
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// The open connection with this id.
    pub(crate) fn session(&self, id: u64) -> Option<Arc<Session>> {
        lock(&self.sessions)
            .get(&id)
            .and_then(Weak::upgrade)
            .filter(|s| !s.closed.load(Ordering::Acquire))
    }
}

/// The shared state of one connection.
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) user: String,
    pub(crate) vhost: Arc<VHost>,
    pub(crate) permissions: Arc<Permissions>,
    /// The core's memory gauge, charged for what this connection publishes.
    pub(crate) memory: Arc<MemoryMonitor>,
    channels: Mutex<HashMap<u64, Weak<dyn Attached>>>,
    next_channel: AtomicU64,
    closed: AtomicBool,
    /// What the AMQP server recorded about the connection (a leaf lock).
    info: Mutex<Option<ConnectionInfo>>,
    /// When the connection was opened in the core.
    opened_at: SystemTime,
    /// A request to close the connection (an operator's, or the core's on
    /// an internal error), with the `connection.close` to send.
    forced: watch::Sender<Option<AmqpError>>,
    registry: Arc<Registry>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("vhost", &self.vhost.name)
            .finish()
    }
}

impl Session {
    /// A session, registered in `registry` until it closes.
    pub(crate) fn new(
        id: u64,
        user: &str,
        vhost: Arc<VHost>,
        permissions: Arc<Permissions>,
        memory: Arc<MemoryMonitor>,
        registry: Arc<Registry>,
    ) -> Arc<Self> {
        let session = Arc::new(Self {
            id,
            user: user.to_string(),
            vhost,
            permissions,
            memory,
            channels: Mutex::new(HashMap::new()),
            next_channel: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            info: Mutex::new(None),
            opened_at: SystemTime::now(),
            forced: watch::Sender::new(None),
            registry,
        });
        session.registry.add(&session);
        session
    }

    /// Records what the AMQP server knows of the connection.
    pub(crate) fn set_info(&self, info: ConnectionInfo) {
        *lock(&self.info) = Some(info);
    }

    /// RabbitMQ's name of the connection (`"in-process <id>"` without
    /// [`set_info`](Self::set_info)).
    pub(crate) fn name(&self) -> String {
        lock(&self.info)
            .as_ref()
            .map_or_else(|| format!("in-process {}", self.id), |i| i.name.clone())
    }

    /// Watches for a request to close the connection.
    pub(crate) fn forced_close(&self) -> watch::Receiver<Option<AmqpError>> {
        self.forced.subscribe()
    }

    /// An operator closes the connection: 320 CONNECTION_FORCED with the
    /// reason, as RabbitMQ's `close_connection`.
    pub(crate) fn force_close(&self, reason: &str) {
        self.close_with_error(AmqpError::new(codes::CONNECTION_FORCED, reason));
    }

    /// Closes the connection with `error`: whoever serves it (the AMQP
    /// server, watching [`forced_close`](Self::forced_close)) sends
    /// `connection.close` with it; with nobody watching (an in-process
    /// connection) the core closes it at once.
    pub(crate) fn close_with_error(&self, error: AmqpError) {
        self.forced.send_replace(Some(error));
        if self.forced.receiver_count() == 0 {
            self.close();
        }
    }

    /// The connection, for operators.
    pub(crate) fn snapshot(&self) -> ConnectionSnapshot {
        let info = lock(&self.info).clone();
        let channels = lock(&self.channels)
            .values()
            .filter(|c| c.strong_count() > 0)
            .count() as u64;
        let name = info
            .as_ref()
            .map_or_else(|| format!("in-process {}", self.id), |i| i.name.clone());
        match info {
            Some(i) => ConnectionSnapshot {
                id: self.id,
                name,
                user: self.user.clone(),
                vhost: self.vhost.name.clone(),
                peer_host: i.peer_host,
                peer_port: i.peer_port,
                host: i.host,
                port: i.port,
                channels,
                state: "running".to_owned(),
                connected_at: i.connected_at,
                client_properties: i.client_properties,
                frame_max: i.frame_max,
                channel_max: i.channel_max,
                timeout: i.timeout,
                protocol: i.protocol,
                auth_mechanism: i.auth_mechanism,
                ssl: i.ssl,
            },
            None => ConnectionSnapshot {
                id: self.id,
                name,
                user: self.user.clone(),
                vhost: self.vhost.name.clone(),
                peer_host: String::new(),
                peer_port: 0,
                host: String::new(),
                port: 0,
                channels,
                state: "running".to_owned(),
                connected_at: self.opened_at,
                client_properties: Default::default(),
                frame_max: 0,
                channel_max: 0,
                timeout: 0,
                protocol: "in-process".to_owned(),
                auth_mechanism: String::new(),
                ssl: false,
            },
        }
    }

    /// Its channels and their consumers, for operators, by channel number.
    pub(crate) fn channel_snapshots(&self) -> Vec<(ChannelSnapshot, Vec<ConsumerSnapshot>)> {
        let mut out: Vec<_> = self.channels().iter().map(|c| c.snapshot()).collect();
        out.sort_by_key(|(c, _)| c.number);
        out
    }

    /// A fresh channel id.
    pub(crate) fn next_channel_id(&self) -> u64 {
        self.next_channel.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers an open channel.
    pub(crate) fn attach(&self, id: u64, channel: Weak<dyn Attached>) {
        lock(&self.channels).insert(id, channel);
    }

    /// Forgets a closed channel.
    pub(crate) fn forget_channel(&self, id: u64) {
        lock(&self.channels).remove(&id);
    }

    /// The open channels (the register's lock is released on return: lock
    /// order, see [`super::locks`]).
    fn channels(&self) -> Vec<Arc<dyn Attached>> {
        lock(&self.channels)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Offers queued messages to every consumer of this connection again.
    pub(crate) fn redispatch(&self) {
        for c in self.channels() {
            c.redispatch();
        }
    }

    /// Closes every channel and deletes this connection's exclusive queues
    /// (once; later calls do nothing).
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for c in self.channels() {
            c.close();
        }
        self.vhost.connection_closed(self.id);
        self.registry.remove(self.id);
    }
}
