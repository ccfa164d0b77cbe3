//! A connection's outbound queue: what its writer task has yet to write,
//! bounded so that a peer which stops reading its socket costs the broker
//! a fixed amount of memory and pauses only its own deliveries.
//!
//! One FIFO keeps wire order (consume-ok before the first delivery, a
//! return before its confirm); its items are accounted in two lanes:
//! - **deliveries** (`basic.deliver` from queues, pushed by whichever
//!   connection's thread dispatches): before taking a message off a queue,
//!   the core asks [`Outbound::has_delivery_room`] (through the channel
//!   sink). Past [`DELIVERY_BYTES`] or [`DELIVERY_COUNT`] (RabbitMQ's 200
//!   unsent deliveries per consumer) the answer is no, the consumer is
//!   skipped and the message stays queued, where the memory alarm sees it.
//!   Once the writer has written the backlog down to half, it calls the
//!   connection's resumer, which offers queued messages again.
//! - **control** (method replies, confirms, returns, `basic.get-ok`): only
//!   the connection's own reader pushes these, in answer to what it read,
//!   and it stops reading while they exceed [`CONTROL_BYTES`]
//!   ([`Outbound::control_full`], [`Outbound::control_room`]). A client
//!   that does not read stops being read.
//!
//! Lock order: core locks (queue, then channel: [`crate::core::locks`]),
//! then this queue's mutex, which is a leaf: nothing is locked or awaited
//! while it is held, and the resumer is called with no lock held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use amq_protocol::frame::AMQPFrame;

use crate::core::{lock, ChannelEvent, ChannelSink, GetOk};

/// One item for the writer task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A complete frame (methods, heartbeats).
    Frame(Box<AMQPFrame>),
    /// An event from a core channel, for AMQP channel `.0`.
    Event(u16, ChannelEvent),
    /// `basic.get-ok` with its content.
    GetOk(u16, GetOk),
    /// New tuning: frame_max and heartbeat seconds.
    Tune(u32, u16),
    /// Flush everything, shut the socket down and stop.
    Close,
}

/// Sink routing a core channel's events into a connection's writer queue.
pub(crate) struct ServerSink {
    pub(crate) channel: u16,
    pub(crate) tx: Arc<Outbound>,
}

impl ChannelSink for ServerSink {
    fn send(&self, event: ChannelEvent) {
        let _ = self.tx.send(Outgoing::Event(self.channel, event));
    }

    fn has_room(&self) -> bool {
        self.tx.has_delivery_room()
    }

    fn accepts_reply(&self) -> bool {
        self.tx.accepts_reply()
    }
}

/// Bytes of deliveries a connection's writer may hold before its consumers
/// pause (LavinMQ's 1 MiB slice).
pub(crate) const DELIVERY_BYTES: usize = 1 << 20;
/// Deliveries a connection's writer may hold before its consumers pause
/// (RabbitMQ's unsent-message limit).
pub(crate) const DELIVERY_COUNT: usize = 200;
/// Bytes of replies above which the connection's reader stops reading.
pub(crate) const CONTROL_BYTES: usize = 1 << 20;
/// Bytes of deliveries above which direct reply-to messages (which have no
/// queue to wait in) are dropped as unroutable: only reached by a client
/// that has stopped reading.
pub(crate) const REPLY_BYTES: usize = 16 << 20;
/// Cost of an item without a message (a method frame, a confirm).
const FRAME_COST: usize = 64;

/// The writer has stopped: nothing more will be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// What the writer took in one batch, to release once written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Taken {
    control: usize,
    delivery_bytes: usize,
    deliveries: usize,
}

/// The bounded queue between a connection (and the queues delivering to
/// it) and its writer task.
pub(crate) struct Outbound {
    items: Mutex<VecDeque<(Outgoing, usize)>>,
    closed: AtomicBool,
    control_bytes: AtomicUsize,
    delivery_bytes: AtomicUsize,
    deliveries: AtomicUsize,
    /// A delivery was refused since the last resume.
    paused: AtomicBool,
    writer_wake: Notify,
    /// Wakes the reader waiting in `control_room` (its only waiter).
    room_wake: Notify,
    /// Wakes the reader waiting in `closed` (its only waiter; a separate
    /// `Notify`, as one `notify_one` wakes a single waiter and the reader
    /// may wait on both at once).
    closed_wake: Notify,
    resume: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("control_bytes", &self.control_bytes)
            .field("delivery_bytes", &self.delivery_bytes)
            .field("deliveries", &self.deliveries)
            .field("closed", &self.closed)
            .finish()
    }
}

/// An item's cost in bytes and whether it is a delivery.
fn cost(item: &Outgoing) -> (usize, bool) {
    match item {
        Outgoing::Event(_, ChannelEvent::Deliver(d)) => (d.message.footprint(), true),
        Outgoing::Event(_, ChannelEvent::Return(r)) => (r.message.footprint(), false),
        Outgoing::GetOk(_, g) => (g.message.footprint(), false),
        _ => (FRAME_COST, false),
    }
}

impl Outbound {
    /// An empty, open queue.
    pub(crate) fn new() -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            control_bytes: AtomicUsize::new(0),
            delivery_bytes: AtomicUsize::new(0),
            deliveries: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            writer_wake: Notify::new(),
            room_wake: Notify::new(),
            closed_wake: Notify::new(),
            resume: OnceLock::new(),
        }
    }

    /// Sets what to call when deliveries may flow again (once; later calls
    /// are ignored).
    pub(crate) fn set_resumer(&self, resume: Box<dyn Fn() + Send + Sync>) {
        let _ = self.resume.set(resume);
    }

    /// Queues `item` for the writer. Never waits: deliveries are bounded by
    /// [`Self::has_delivery_room`], the rest by the reader waiting on
    /// [`Self::control_room`].
    pub(crate) fn send(&self, item: Outgoing) -> Result<(), Closed> {
        let (bytes, delivery) = cost(&item);
        {
            let mut q = lock(&self.items);
            if self.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            if delivery {
                self.delivery_bytes.fetch_add(bytes, Ordering::SeqCst);
                self.deliveries.fetch_add(1, Ordering::SeqCst);
            } else {
                self.control_bytes.fetch_add(bytes, Ordering::AcqRel);
            }
            q.push_back((item, bytes));
        }
        self.writer_wake.notify_one();
        Ok(())
    }

    fn delivery_room(&self) -> bool {
        self.delivery_bytes.load(Ordering::SeqCst) < DELIVERY_BYTES
            && self.deliveries.load(Ordering::SeqCst) < DELIVERY_COUNT
    }

    /// Whether a queue may push one more delivery. A refusal is remembered,
    /// so the writer resumes the connection's consumers once it has written
    /// the backlog down to half.
    pub(crate) fn has_delivery_room(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        if self.delivery_room() {
            return true;
        }
        // Announce the refusal before looking again: either the writer sees
        // the flag after its release (and resumes), or this second look
        // sees the release.
        self.paused.store(true, Ordering::SeqCst);
        self.delivery_room()
    }

    /// Whether a direct reply-to delivery may still be queued.
    pub(crate) fn accepts_reply(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.delivery_bytes.load(Ordering::Relaxed) < REPLY_BYTES
    }

    /// Whether the reader should stop reading until the writer catches up.
    pub(crate) fn control_full(&self) -> bool {
        self.control_bytes.load(Ordering::Acquire) >= CONTROL_BYTES
    }

    /// Whether the writer has stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Returns once replies are below [`CONTROL_BYTES`] or the writer stopped.
    pub(crate) async fn control_room(&self) {
        loop {
            let wake = self.room_wake.notified();
            if !self.control_full() || self.is_closed() {
                return;
            }
            wake.await;
        }
    }

    /// Returns once the writer has stopped.
    pub(crate) async fn closed(&self) {
        loop {
            let wake = self.closed_wake.notified();
            if self.is_closed() {
                return;
            }
            wake.await;
        }
    }

    /// Moves up to `max` items into `batch` for the writer.
    pub(crate) fn take(&self, batch: &mut Vec<Outgoing>, max: usize) -> Taken {
        let mut taken = Taken::default();
        let mut q = lock(&self.items);
        let n = q.len().min(max);
        for (item, bytes) in q.drain(..n) {
            if matches!(item, Outgoing::Event(_, ChannelEvent::Deliver(_))) {
                taken.delivery_bytes += bytes;
                taken.deliveries += 1;
            } else {
                taken.control += bytes;
            }
            batch.push(item);
        }
        taken
    }

    /// Returns once an item may be waiting (spurious returns happen).
    pub(crate) async fn items(&self) {
        self.writer_wake.notified().await;
    }

    /// The writer has written what it took: release it, wake the reader if
    /// it waits for room, resume the consumers if they were paused and the
    /// backlog is down to half.
    pub(crate) fn written(&self, t: Taken) {
        if t.control > 0 {
            let before = self.control_bytes.fetch_sub(t.control, Ordering::AcqRel);
            if before >= CONTROL_BYTES && before - t.control < CONTROL_BYTES {
                self.room_wake.notify_one();
            }
        }
        if t.deliveries == 0 {
            return;
        }
        let bytes = self
            .delivery_bytes
            .fetch_sub(t.delivery_bytes, Ordering::SeqCst)
            .saturating_sub(t.delivery_bytes);
        let count = self
            .deliveries
            .fetch_sub(t.deliveries, Ordering::SeqCst)
            .saturating_sub(t.deliveries);
        if bytes <= DELIVERY_BYTES / 2
            && count <= DELIVERY_COUNT / 2
            && self.paused.load(Ordering::SeqCst)
            && self.paused.swap(false, Ordering::SeqCst)
        {
            if let Some(resume) = self.resume.get() {
                resume();
            }
        }
    }

    /// The writer stops: refuse further items, drop the queued ones.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut q = lock(&self.items);
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *q)
        };
        self.control_bytes.store(0, Ordering::Release);
        self.delivery_bytes.store(0, Ordering::Release);
        self.deliveries.store(0, Ordering::Release);
        // Dropped outside the lock: messages release their memory charges.
        drop(dropped);
        self.room_wake.notify_one();
        self.closed_wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    use super::*;
    use crate::core::{Delivery, Message};

    fn delivery(size: usize) -> Outgoing {
        Outgoing::Event(
            1,
            ChannelEvent::Deliver(Delivery {
                consumer_tag: "c".into(),
                delivery_tag: 1,
                redelivered: false,
                message: Arc::new(Message::new(
                    "".into(),
                    "q".into(),
                    BasicProperties::default(),
                    Bytes::from(vec![0; size]),
                )),
            }),
        )
    }

    #[test]
    fn deliveries_pause_at_the_budget_and_resume_at_half() {
        let out = Outbound::new();
        let resumed = Arc::new(AtomicUsize::new(0));
        let r = resumed.clone();
        out.set_resumer(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        let mut pushed = 0;
        while out.has_delivery_room() {
            assert!(out.send(delivery(100)).is_ok());
            pushed += 1;
        }
        assert_eq!(pushed, DELIVERY_COUNT);
        let mut batch = Vec::new();
        let first = out.take(&mut batch, 60);
        out.written(first);
        assert_eq!(resumed.load(Ordering::SeqCst), 0, "140 left: over half");
        assert!(out.has_delivery_room());
        let rest = out.take(&mut batch, 256);
        out.written(rest);
        assert_eq!(resumed.load(Ordering::SeqCst), 1);
        let empty = out.take(&mut batch, 256);
        out.written(empty);
        assert_eq!(resumed.load(Ordering::SeqCst), 1, "resumed once per pause");
    }

    #[test]
    fn big_deliveries_pause_by_bytes() {
        let out = Outbound::new();
        assert!(out.send(delivery(DELIVERY_BYTES)).is_ok());
        assert!(!out.has_delivery_room());
        assert!(out.accepts_reply());
    }

    #[test]
    fn a_closed_queue_refuses_and_forgets() {
        let out = Outbound::new();
        assert!(out.send(delivery(10)).is_ok());
        out.close();
        assert_eq!(out.send(delivery(10)), Err(Closed));
        assert!(!out.has_delivery_room());
        assert!(!out.accepts_reply());
        let mut batch = Vec::new();
        out.take(&mut batch, 10);
        assert!(batch.is_empty());
    }
}
