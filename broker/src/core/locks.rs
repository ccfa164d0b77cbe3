//! The core's lock order, written down once, and the helpers that take locks.
//!
//! Every lock of the core is a `std::sync` lock held for a few steps, never
//! across an `.await`. Deadlock freedom rests on this order: a thread holding
//! a lock of one rank takes only locks of a *later* rank (or none).
//!
//! 1. **Topology** (`VHost::topology`, a mutex per vhost): serializes declare,
//!    delete, bind and unbind. Under it the vhost may take everything below.
//! 2. **Vhost tables**, in this order: the exchange map (`VHost::exchanges`),
//!    the queue map (`VHost::queues`), one exchange's binding table
//!    (`Exchange::router`, one at a time), `VHost::bound_by`. Routing takes
//!    only read locks, without the topology lock; it holds the two maps while
//!    walking the exchanges and releases all of them before any queue is
//!    offered the message.
//! 3. **Queue** (`Queue::state`): one queue at a time. Never taken while a
//!    channel's state is locked; the work that would reach another queue
//!    (dead letters, auto-delete, cancellations) is returned to the caller and
//!    run once the queue's lock is released.
//! 4. **Channel state** (`ChannelShared::state`): taken under a queue's lock
//!    when the queue delivers to the channel's consumer
//!    ([`Subscriber::deliver`](super::queue::Subscriber::deliver)); a channel
//!    releases its own lock before it calls into a queue (requeue, dispatch,
//!    cancel).
//! 5. **Leaves**: the channel's sink (the server's outbound queue, or an mpsc
//!    sender), the memory gauge's watch, and the registers that are only
//!    looked up and released: `Core`'s users, permissions and vhosts, a
//!    vhost's direct reply-to targets, a session's channels, the dead-letter
//!    backlog. Nothing is locked or called while one of these is held.
//!
//! The lock helpers below ignore poisoning: the broker never panics while
//! holding a lock, and a poisoned lock must not take the whole broker down.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks a mutex, ignoring poisoning (see the lock order above).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks a lock, ignoring poisoning (see the lock order above).
pub(crate) fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks a lock, ignoring poisoning (see the lock order above).
pub(crate) fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
