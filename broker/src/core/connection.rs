//! Core connections: an authenticated session bound to one vhost.
//!
//! Owns exclusive queues (deleted on close) and opens [`CoreChannel`]s. Closing (or
//! dropping) a connection closes its channels, requeueing their unacked messages.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;

use super::channel::{ChannelEvent, ChannelShared, ChannelSink, CoreChannel};
use super::lock;
use super::memory::MemoryMonitor;
use super::vhost::VHost;

pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) user: String,
    pub(crate) vhost: Arc<VHost>,
    pub(crate) permissions: Arc<super::permission::Permissions>,
    /// The core's memory gauge, charged for what this connection publishes.
    pub(crate) memory: Arc<MemoryMonitor>,
    channels: Mutex<HashMap<u64, Weak<ChannelShared>>>,
    next_channel: AtomicU64,
    closed: AtomicBool,
}

impl ConnShared {
    pub(crate) fn forget_channel(&self, id: u64) {
        lock(&self.channels).remove(&id);
    }

    /// Offers queued messages to every consumer of this connection again.
    fn redispatch(&self) {
        let chans: Vec<Arc<ChannelShared>> = lock(&self.channels)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for c in chans {
            c.redispatch(true);
        }
    }
}

/// A client connection to the core.
pub struct CoreConnection {
    shared: Arc<ConnShared>,
}

impl fmt::Debug for CoreConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoreConnection")
            .field("id", &self.shared.id)
            .field("user", &self.shared.user)
            .field("vhost", &self.shared.vhost.name)
            .finish()
    }
}

impl CoreConnection {
    pub(crate) fn new(
        id: u64,
        user: &str,
        vhost: Arc<VHost>,
        permissions: Arc<super::permission::Permissions>,
        memory: Arc<MemoryMonitor>,
    ) -> Self {
        Self {
            shared: Arc::new(ConnShared {
                id,
                user: user.to_string(),
                vhost,
                permissions,
                memory,
                channels: Mutex::new(HashMap::new()),
                next_channel: AtomicU64::new(1),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Unique id of this connection (owner id of its exclusive queues).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The authenticated user.
    pub fn user(&self) -> &str {
        &self.shared.user
    }

    /// The core's memory gauge: above its watermark, publishers are to wait
    /// (see [`MemoryMonitor::wait_clear`]).
    pub fn memory(&self) -> &Arc<MemoryMonitor> {
        &self.shared.memory
    }

    /// The vhost this connection is bound to.
    pub fn vhost(&self) -> &Arc<VHost> {
        &self.shared.vhost
    }

    /// A function that offers queued messages to this connection's consumers
    /// again, for a sink that refused deliveries ([`ChannelSink::has_room`])
    /// to call once it has room. It holds the connection weakly, and must be
    /// called with no lock held (it takes queue and channel locks).
    pub fn resumer(&self) -> Box<dyn Fn() + Send + Sync> {
        let weak = Arc::downgrade(&self.shared);
        Box::new(move || {
            if let Some(conn) = weak.upgrade() {
                conn.redispatch();
            }
        })
    }

    /// Open a channel whose events go to `sink`.
    pub fn open_channel(&self, sink: Box<dyn ChannelSink>) -> CoreChannel {
        let id = self.shared.next_channel.fetch_add(1, Ordering::Relaxed);
        let ch = CoreChannel::new(self.shared.clone(), id, sink);
        lock(&self.shared.channels).insert(id, Arc::downgrade(&ch.shared));
        ch
    }

    /// Open a channel whose events arrive on an unbounded tokio mpsc receiver.
    pub fn open_channel_mpsc(&self) -> (CoreChannel, mpsc::UnboundedReceiver<ChannelEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (self.open_channel(Box::new(tx)), rx)
    }

    /// Close every channel and delete this connection's exclusive queues.
    pub fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let chans: Vec<Arc<ChannelShared>> = lock(&self.shared.channels)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for c in chans {
            c.close();
        }
        self.shared.vhost.connection_closed(self.shared.id);
    }
}

impl Drop for CoreConnection {
    fn drop(&mut self) {
        self.close();
    }
}
