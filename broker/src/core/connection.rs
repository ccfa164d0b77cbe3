//! Core connections: an authenticated session bound to one vhost.
//!
//! Owns exclusive queues (deleted on close) and opens [`CoreChannel`]s. Closing (or
//! dropping) a connection closes its channels, requeueing their unacked messages.

use std::fmt;
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, watch};

use super::channel::{ChannelEvent, ChannelSink, CoreChannel};
use super::error::AmqpError;
use super::memory::MemoryMonitor;
use super::permission::Permissions;
use super::session::{Attached, Registry, Session};
use super::snapshot::ConnectionInfo;
use super::vhost::VHost;

/// A client connection to the core.
pub struct CoreConnection {
    shared: Arc<Session>,
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
        permissions: Arc<Permissions>,
        memory: Arc<MemoryMonitor>,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            shared: Session::new(id, user, vhost, permissions, memory, registry),
        }
    }

    /// Records what the AMQP server knows of this connection (its name,
    /// peer, client properties, negotiated limits), for operators.
    pub fn set_info(&self, info: ConnectionInfo) {
        self.shared.set_info(info);
    }

    /// Watches for a request to close this connection: an operator's
    /// ([`Core::close_connection`](super::Core::close_connection), 320
    /// CONNECTION_FORCED with the reason) or the core's (541 INTERNAL_ERROR
    /// when the store fails a transaction's messages). The value becomes
    /// `Some(error)`, and the server is to send `connection.close` with it.
    /// A connection nobody watches is closed by the core itself.
    pub fn forced_close(&self) -> watch::Receiver<Option<AmqpError>> {
        self.shared.forced_close()
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

    /// Open a channel whose events go to `sink` (numbered in the order
    /// opened, for operators: see [`open_numbered_channel`](Self::open_numbered_channel)).
    pub fn open_channel(&self, sink: Box<dyn ChannelSink>) -> CoreChannel {
        let id = self.shared.next_channel_id();
        self.open_channel_as(id, u16::try_from(id).unwrap_or(u16::MAX), sink)
    }

    /// Open a channel whose events go to `sink`, known to operators by
    /// its AMQP channel `number`.
    pub fn open_numbered_channel(&self, number: u16, sink: Box<dyn ChannelSink>) -> CoreChannel {
        let id = self.shared.next_channel_id();
        self.open_channel_as(id, number, sink)
    }

    fn open_channel_as(&self, id: u64, number: u16, sink: Box<dyn ChannelSink>) -> CoreChannel {
        let ch = CoreChannel::new(self.shared.clone(), id, number, sink);
        let attached: Weak<dyn Attached> = ch.attached();
        self.shared.attach(id, attached);
        ch
    }

    /// Open a channel whose events arrive on an unbounded tokio mpsc receiver.
    pub fn open_channel_mpsc(&self) -> (CoreChannel, mpsc::UnboundedReceiver<ChannelEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (self.open_channel(Box::new(tx)), rx)
    }

    /// Close every channel and delete this connection's exclusive queues.
    pub fn close(&self) {
        self.shared.close();
    }
}

impl Drop for CoreConnection {
    fn drop(&mut self) {
        self.close();
    }
}
