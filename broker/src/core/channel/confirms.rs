//! Publisher confirms that wait for the disk.
//!
//! A persistent message routed to durable queues is confirmed only once its
//! record is fsync'd (its [`Durable`] resolves). Confirms leave in delivery-tag
//! order: while any confirm waits for the disk, the later ones (even of messages
//! that needed no disk) queue behind it in one task per channel, which sends each
//! as its turn comes; with nothing waiting, a confirm is sent at once, as before.
//! A record the store fails to write is nacked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::events::ChannelEvent;
use super::state::ChannelShared;
use crate::store::Durable;

/// One confirm waiting its turn.
struct Pending {
    tag: u64,
    ack: bool,
    durable: Option<Durable>,
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
        let send_now = |ack| {
            channel.sink.send(ChannelEvent::Confirm {
                delivery_tag: tag,
                multiple: false,
                ack,
            })
        };
        if durable.is_none() && self.waiting.load(Ordering::Acquire) == 0 {
            send_now(ack);
            return;
        }
        if self.queue.is_none() {
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                // No runtime to wait in (a core driven synchronously): wait here.
                let ok = durable.is_none_or(|d| d.wait_blocking().is_ok());
                send_now(ack && ok);
                return;
            };
            let (tx, rx) = mpsc::unbounded_channel();
            handle.spawn(run(rx, Arc::downgrade(channel), self.waiting.clone()));
            self.queue = Some(tx);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let pending = Pending { tag, ack, durable };
        if let Some(Err(mpsc::error::SendError(p))) = self.queue.as_ref().map(|q| q.send(pending)) {
            // The task ended (the channel is closing): nobody waits for it.
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            drop(p);
        }
    }
}

/// Sends the queued confirms in order, each once its record is durable.
async fn run(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    channel: Weak<ChannelShared>,
    waiting: Arc<AtomicUsize>,
) {
    while let Some(p) = rx.recv().await {
        let ok = match p.durable {
            Some(d) => match d.await {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, "a persistent message did not reach the disk: nacked");
                    false
                }
            },
            None => true,
        };
        let Some(ch) = channel.upgrade() else { break };
        ch.sink.send(ChannelEvent::Confirm {
            delivery_tag: p.tag,
            multiple: false,
            ack: p.ack && ok,
        });
        // After the send: a confirm sent at once never overtakes this one.
        waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
