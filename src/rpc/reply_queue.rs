//! A client's reply queue and its correlation table.
//!
//! One `reply_<uuid>` queue per client serves all its calls: a call registers
//! its correlation id here before publishing, and the consumer task hands
//! each reply to the call waiting for it. Replies nobody waits for (late,
//! duplicated, garbled) are logged and dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::id_key::IdKey;
use crate::transport::{ConsumeSpec, Delivery, Subscription};
use crate::wire::{Codec, Reply};
use crate::{Connection, Error};

/// What a waiting call receives: the reply and the codec it came in, or why
/// it could not be read.
pub(crate) type ReplyResult = Result<(Codec, Reply), Error>;

/// The calls waiting for a reply, by correlation id; `None` once the
/// consumer stopped, so a call cannot register on a queue whose replies
/// will never be read (it takes a fresh queue instead).
type Table = Mutex<Option<HashMap<IdKey, oneshot::Sender<ReplyResult>>>>;

/// A declared, consumed reply queue.
pub(crate) struct ReplyQueue {
    name: String,
    pending: Arc<Table>,
    consumer: tokio::task::JoinHandle<()>,
}

impl ReplyQueue {
    /// Declares `reply_<uuid>` and starts consuming it.
    pub(crate) async fn start(connection: &Connection) -> Result<Self, Error> {
        let name = super::target::reply_queue();
        let transport = connection.transport();
        transport
            .declare_queue(&connection.topology().transient_queue(&name))
            .await?;
        let subscription = transport
            .consume(&ConsumeSpec {
                queue: name.clone(),
                prefetch: 0,
                no_ack: true,
            })
            .await?;
        let pending: Arc<Table> = Arc::new(Mutex::new(Some(HashMap::new())));
        let consumer = tokio::spawn(consume(subscription, pending.clone(), name.clone()));
        Ok(ReplyQueue {
            name,
            pending,
            consumer,
        })
    }

    /// The queue's name, for `_reply_q` / `reply_to`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the consumer still runs (it stops when the connection breaks).
    pub(crate) fn is_alive(&self) -> bool {
        lock(&self.pending).is_some() && !self.consumer.is_finished()
    }

    /// Registers a call; the guard unregisters it when dropped. `None` if
    /// the consumer has stopped: take a fresh reply queue.
    pub(crate) fn register(
        &self,
        msg_id: &str,
    ) -> Option<(Registration, oneshot::Receiver<ReplyResult>)> {
        let (tx, rx) = oneshot::channel();
        let msg_id = IdKey::of(msg_id);
        lock(&self.pending).as_mut()?.insert(msg_id.clone(), tx);
        Some((
            Registration {
                msg_id,
                pending: self.pending.clone(),
            },
            rx,
        ))
    }
}

impl Drop for ReplyQueue {
    fn drop(&mut self) {
        self.consumer.abort();
    }
}

/// Removes a call from the correlation table when the call ends, however it
/// ends (reply, timeout, cancellation).
pub(crate) struct Registration {
    msg_id: IdKey,
    pending: Arc<Table>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(table) = lock(&self.pending).as_mut() {
            table.remove(&self.msg_id);
        }
    }
}

type Waiting = Option<HashMap<IdKey, oneshot::Sender<ReplyResult>>>;

fn lock(table: &Table) -> std::sync::MutexGuard<'_, Waiting> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

async fn consume(mut subscription: Box<dyn Subscription>, pending: Arc<Table>, queue: String) {
    while let Some(delivery) = subscription.next().await {
        match delivery {
            Ok(delivery) => route(&pending, &queue, delivery),
            Err(e) => {
                tracing::warn!(%queue, error = %e, "reply consumer failed");
                // Every waiting call sent its request: say why no reply comes.
                let waiting = lock(&pending).take().unwrap_or_default();
                for (msg_id, waiter) in waiting {
                    let _ = waiter.send(Err(Error::outcome_unknown(format!(
                        "call {msg_id}: the reply queue {queue} was lost with its \
                         connection ({e}); the server may or may not have run the call"
                    ))));
                }
                break;
            }
        }
    }
    tracing::debug!(%queue, "reply consumer stopped");
    // Dropping the senders wakes every waiting call with an error.
    lock(&pending).take();
}

fn route(pending: &Table, queue: &str, delivery: Delivery) {
    let props = &delivery.properties;
    let decoded = Codec::for_message(props.content_type(), &delivery.body)
        .and_then(|codec| Ok((codec, codec.decode_reply(&delivery.body)?)));
    if let Ok((_, reply)) = &decoded {
        if !reply.ending {
            tracing::trace!(%queue, "keepalive reply");
            return;
        }
    }
    // The correlation id: the body's (oslo's JSON), else the AMQP property.
    let body_id = decoded.as_ref().ok().and_then(|(_, r)| r.msg_id.as_deref());
    let Some(msg_id) = body_id.or(props.correlation_id()) else {
        tracing::warn!(%queue, "dropping a reply without correlation id");
        return;
    };
    let waiter = lock(pending)
        .as_mut()
        .and_then(|t| t.remove(&IdKey::of(msg_id)));
    match waiter {
        Some(waiter) => {
            let _ = waiter.send(decoded);
        }
        None => tracing::debug!(%queue, %msg_id, "dropping a reply no call waits for"),
    }
}
