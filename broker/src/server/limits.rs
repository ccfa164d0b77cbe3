//! Limits the TCP server holds its peers to, with RabbitMQ's names and
//! defaults, and the count of open connections `max_connections` is checked
//! against.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Largest frame a peer may send before `connection.tune-ok`: the spec's
/// minimum frame size (RabbitMQ's `initial_frame_max`). Only a few login
/// methods travel before tuning, and none needs more.
pub const INITIAL_FRAME_MAX: u32 = 4096;

/// Default largest message body, in bytes (RabbitMQ 4's `max_message_size`).
pub const MAX_MESSAGE_SIZE: u64 = 16 * 1024 * 1024;

/// The most `max_message_size` may be set to (RabbitMQ's hard cap, 512 MiB).
pub const MAX_MESSAGE_SIZE_CAP: u64 = 512 * 1024 * 1024;

/// Limits on what the broker's peers may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message body a client may publish, in bytes
    /// (`max_message_size`; at most [`MAX_MESSAGE_SIZE_CAP`]). A larger
    /// declared size closes the channel with 406 PRECONDITION_FAILED.
    pub max_message_size: u64,
    /// Most TCP connections open at once (`max_connections`), `None` for no
    /// limit. Counted from accept; one past it is refused with 530
    /// NOT_ALLOWED at `connection.open`.
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: MAX_MESSAGE_SIZE,
            max_connections: None,
        }
    }
}

/// The limits of one broker and the count of its open TCP connections,
/// shared by its listeners and connections.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    pub(crate) limits: Limits,
    open: AtomicUsize,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits: Limits {
                max_message_size: limits.max_message_size.min(MAX_MESSAGE_SIZE_CAP),
                ..limits
            },
            open: AtomicUsize::new(0),
        })
    }

    /// Counts one more connection, until the returned guard is dropped.
    pub(crate) fn count(self: &Arc<Self>) -> Counted {
        self.open.fetch_add(1, Ordering::Relaxed);
        Counted(self.clone())
    }

    /// The limit, when more connections are open than it allows (counting
    /// the one asking, as RabbitMQ does).
    pub(crate) fn over_connection_limit(&self) -> Option<usize> {
        self.limits
            .max_connections
            .filter(|&max| self.open.load(Ordering::Relaxed) > max)
    }
}

/// One open connection in its [`Admission`]'s count.
#[derive(Debug)]
pub(crate) struct Counted(Arc<Admission>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_until_their_guard_drops() {
        let a = Admission::new(Limits {
            max_connections: Some(2),
            ..Limits::default()
        });
        let one = a.count();
        let two = a.count();
        assert_eq!(a.over_connection_limit(), None);
        let three = a.count();
        assert_eq!(a.over_connection_limit(), Some(2));
        drop(three);
        assert_eq!(a.over_connection_limit(), None);
        drop((one, two));
        assert_eq!(a.open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn max_message_size_is_capped_like_rabbitmq() {
        let a = Admission::new(Limits {
            max_message_size: u64::MAX,
            ..Limits::default()
        });
        assert_eq!(a.limits.max_message_size, MAX_MESSAGE_SIZE_CAP);
        assert_eq!(
            Admission::new(Limits::default()).limits.max_connections,
            None
        );
    }
}
