//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`), in one place.
//!
//! A channel consuming from [`REPLY_TO_QUEUE`] gets a random token and is
//! registered under it in its vhost's [`ReplyTo`] registry; a message it
//! publishes with `reply_to = amq.rabbitmq.reply-to` leaves with the address
//! `amq.rabbitmq.reply-to.<token>` ([`address`]); a reply published to the
//! default exchange with that routing key ([`token_of`]) goes straight to the
//! registered channel ([`ReplyTarget::deliver_reply`]), with no queue between.
//! Neither name is a real queue, but both answer `queue.declare`
//! ([`pseudo_queue`]).
//!
//! The registry holds its channels weakly: a channel's lifetime is its
//! owner's business, and a reply to a channel gone is unroutable.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock, Weak};

use super::locks::{read, write};
use super::message::Message;

/// Queue name clients use for RabbitMQ's direct reply-to.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// Prefix of a reply address: [`REPLY_TO_QUEUE`] and a dot.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel that takes direct replies.
pub(crate) trait ReplyTarget: Send + Sync {
    /// Hands a reply over (no queue, no ack); false when it could not be
    /// (the channel closed, stopped consuming replies, or is backed up),
    /// and the reply counts as unroutable.
    fn deliver_reply(&self, msg: Arc<Message>) -> bool;
}

/// A vhost's reply addresses: token → channel.
#[derive(Default)]
pub(crate) struct ReplyTo {
    targets: RwLock<HashMap<String, Weak<dyn ReplyTarget>>>,
}

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyTo")
            .field("targets", &read(&self.targets).len())
            .finish()
    }
}

impl ReplyTo {
    /// Registers `target` under `token`.
    pub(crate) fn register(&self, token: &str, target: Weak<dyn ReplyTarget>) {
        write(&self.targets).insert(token.to_string(), target);
    }

    /// Forgets `token`.
    pub(crate) fn unregister(&self, token: &str) {
        write(&self.targets).remove(token);
    }

    /// The channel registered under `token`, if it still lives.
    pub(crate) fn target(&self, token: &str) -> Option<Arc<dyn ReplyTarget>> {
        read(&self.targets).get(token).and_then(Weak::upgrade)
    }

    /// Delivers a message published to the default exchange with routing key
    /// `routing_key`, when that key is a reply address: `Some(routed)`;
    /// `None` when it is not one (the message is routed as usual).
    pub(crate) fn deliver(&self, routing_key: &str, msg: &Arc<Message>) -> Option<bool> {
        let token = token_of(routing_key)?;
        Some(
            self.target(token)
                .is_some_and(|t| t.deliver_reply(msg.clone())),
        )
    }

    /// `queue.declare` of a direct reply-to name, as RabbitMQ answers it
    /// (passive or not): the bare name always exists, an address while its
    /// channel lives. `None`: `name` is no such name; `Some(false)`: an
    /// address with no channel (404).
    pub(crate) fn pseudo_queue(&self, name: &str) -> Option<bool> {
        if name == REPLY_TO_QUEUE {
            return Some(true);
        }
        token_of(name).map(|token| self.target(token).is_some())
    }
}

/// The reply address of the channel registered under `token`.
pub(crate) fn address(token: &str) -> String {
    format!("{REPLY_TO_PREFIX}{token}")
}

/// The token of a reply address (`None` when `name` is not one).
pub(crate) fn token_of(name: &str) -> Option<&str> {
    name.strip_prefix(REPLY_TO_PREFIX)
}
