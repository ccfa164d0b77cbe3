//! Publisher confirms that wait for the disk.
//!
//! A persistent message routed to durable queues is confirmed only once its
//! record is fsync'd (its [`Durable`] resolves). Confirms leave in delivery-tag
//! order: while any confirm waits for the disk, the later ones (even of messages
//! that needed no disk) queue behind it in one task per channel, which sends each
//! as its turn comes; with nothing waiting, a confirm is sent at once, as before.
//! A record the store fails to write is nacked. A transaction's `tx.commit-ok`
//! takes the same queue, after the messages it committed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::events::ChannelEvent;
use super::state::ChannelShared;
use crate::store::Durable;

/// One confirm (or commit) waiting its turn.
enum Pending {
    Confirm {
        tag: u64,
        ack: bool,
        durable: Option<Durable>,
    },
    /// Run `done(all durable)` once these are on disk.
    Then {
        durables: Vec<Durable>,
        done: Box<dyn FnOnce(bool) + Send>,
    },
}

/// A channel's confirms in flight (kept in its state, so tags are assigned and
/// queued in one step).
#[derive(Default)]
pub(super) struct Confirms {
    queue: Option<mpsc::UnboundedSender<Pending>>,
    /// Confirms queued and not yet sent.
    waiting: Arc<AtomicUsize>,
}

impl Confirms {
    /// Confirms `tag` (`ack`: ack or nack), once `durable` resolves if given.
    /// Called with the channel's state locked.
    pub(super) fn confirm(
        &mut self,
        channel: &Arc<ChannelShared>,
        tag: u64,
        ack: bool,
        durable: Option<Durable>,
    ) {
        let durables = durable.is_some();
        self.push(channel, durables, Pending::Confirm { tag, ack, durable });
    }

    /// Runs `done` once `durables` are on disk, after the confirms before it.
    pub(super) fn then(
        &mut self,
        channel: &Arc<ChannelShared>,
        durables: Vec<Durable>,
        done: Box<dyn FnOnce(bool) + Send>,
    ) {
        let any = !durables.is_empty();
        self.push(channel, any, Pending::Then { durables, done });
    }

    /// Sends `p` at once when it waits for nothing and nothing waits before it;
    /// else queues it for the channel's task.
    fn push(&mut self, channel: &Arc<ChannelShared>, waits: bool, p: Pending) {
        if !waits && self.waiting.load(Ordering::Acquire) == 0 {
            finish(channel, p, true);
            return;
        }
        if self.queue.is_none() {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                // No runtime to wait in (a core driven synchronously): wait here.
                let mut p = p;
                let mut ok = true;
                for d in take_durables(&mut p) {
                    ok &= d.wait_blocking().is_ok();
                }
                finish(channel, p, ok);
                return;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            handle.spawn(run(rx, Arc::downgrade(channel), self.waiting.clone()));
            self.queue = Some(tx);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if let Some(Err(mpsc::error::SendError(p))) = self.queue.as_ref().map(|q| q.send(p)) {
            // The task ended (the channel is closing): nobody waits for it.
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            drop(p);
        }
    }
}

/// Takes the durable records `p` waits for, leaving it to be finished.
fn take_durables(p: &mut Pending) -> Vec<Durable> {
    match p {
        Pending::Confirm { durable, .. } => durable.take().into_iter().collect(),
        Pending::Then { durables, .. } => std::mem::take(durables),
    }
}

/// Sends the confirm (a nack unless `ok`) or runs the commit's continuation.
fn finish(channel: &ChannelShared, p: Pending, ok: bool) {
    match p {
        Pending::Confirm { tag, ack, .. } => channel.sink.send(ChannelEvent::Confirm {
            delivery_tag: tag,
            multiple: false,
            ack: ack && ok,
        }),
        Pending::Then { done, .. } => done(ok),
    }
}

/// Sends the queued confirms in order, each once its record is durable.
async fn run(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    channel: Weak<ChannelShared>,
    waiting: Arc<AtomicUsize>,
) {
    while let Some(mut p) = rx.recv().await {
        let mut ok = true;
        for d in take_durables(&mut p) {
            if let Err(e) = d.await {
                tracing::error!(error = %e, "a persistent message did not reach the disk");
                ok = false;
            }
        }
        let Some(ch) = channel.upgrade() else { break };
        finish(&ch, p, ok);
        // After the send: a confirm sent at once never overtakes this one.
        waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
