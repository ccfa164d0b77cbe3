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

use super::locks::lock;
use super::memory::MemoryMonitor;
use super::permission::Permissions;
use super::vhost::VHost;

/// An open channel, as its connection sees it.
pub(crate) trait Attached: Send + Sync {
    /// Closes the channel (cancels its consumers, requeues its unacked messages).
    fn close(&self);

    /// Offers queued messages to the channel's consumers again.
    fn redispatch(&self);
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
    pub(crate) fn new(
        id: u64,
        user: &str,
        vhost: Arc<VHost>,
        permissions: Arc<Permissions>,
        memory: Arc<MemoryMonitor>,
    ) -> Self {
        Self {
            id,
            user: user.to_string(),
            vhost,
            permissions,
            memory,
            channels: Mutex::new(HashMap::new()),
            next_channel: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        }
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
    }
}
