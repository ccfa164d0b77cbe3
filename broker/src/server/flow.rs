//! Blocking publishing connections while the memory alarm is on, as
//! RabbitMQ does (<https://www.rabbitmq.com/docs/connection-blocked>).
//!
//! Per connection:
//! - **Running → Blocking** when the alarm is on. Reading continues: a
//!   connection that only consumes (and acks) is never blocked, so
//!   consumers keep draining the queues.
//! - **Blocking → Blocked** when the reader has handled a `basic.publish`
//!   or content frame. That frame is finished, `connection.blocked` is sent
//!   once if the client announced the `connection.blocked` capability, and
//!   the reader stops reading the socket (the TCP window closes on the
//!   publisher). The inbound heartbeat timeout is suspended meanwhile: a
//!   client cannot send heartbeats through a closed window.
//! - **Blocking or Blocked → Running** when the alarm clears;
//!   `connection.unblocked` follows only a `connection.blocked` sent.

use std::sync::Arc;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{connection, AMQPClass};

use crate::core::MemoryMonitor;

/// The reason RabbitMQ gives in `connection.blocked` for a memory alarm.
pub(crate) const LOW_ON_MEMORY: &str = "low on memory";
/// The reason RabbitMQ gives in `connection.blocked` for a disk alarm.
pub(crate) const LOW_ON_DISK: &str = "low on disk";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Blocking,
    Blocked { notified: bool },
}

/// The blocking state of one connection.
#[derive(Debug)]
pub(crate) struct Flow {
    monitor: Arc<MemoryMonitor>,
    /// The client announced the `connection.blocked` capability.
    capable: bool,
    state: State,
}

impl Flow {
    pub(crate) fn new(monitor: Arc<MemoryMonitor>) -> Self {
        Self {
            monitor,
            capable: false,
            state: State::Running,
        }
    }

    /// Records whether the client announced `connection.blocked: true`.
    pub(crate) fn set_capable(&mut self, capable: bool) {
        self.capable = capable;
    }

    /// Whether the reader must stop reading.
    pub(crate) fn is_blocked(&self) -> bool {
        matches!(self.state, State::Blocked { .. })
    }

    /// After the reader handled a frame (`publishing`: a `basic.publish`,
    /// content header or body). Returns `connection.blocked` when it must
    /// be sent.
    pub(crate) fn after_frame(&mut self, publishing: bool) -> Option<AMQPFrame> {
        let alarm = self.monitor.alarm();
        match self.state {
            State::Running if alarm => self.state = State::Blocking,
            State::Blocking if !alarm => self.state = State::Running,
            _ => {}
        }
        if self.state != State::Blocking || !publishing {
            return None;
        }
        tracing::debug!(notify = self.capable, "blocking a publishing connection");
        self.state = State::Blocked {
            notified: self.capable,
        };
        self.capable.then(|| {
            frame(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: if self.monitor.disk_alarm() {
                    LOW_ON_DISK
                } else {
                    LOW_ON_MEMORY
                }
                .into(),
            }))
        })
    }

    /// Waits while blocked until the alarm clears, then runs again. Returns
    /// `connection.unblocked` when it must be sent.
    pub(crate) async fn unblocked(&mut self) -> Option<AMQPFrame> {
        let State::Blocked { notified } = self.state else {
            return None;
        };
        self.monitor.wait_clear().await;
        tracing::debug!("unblocking a connection");
        self.state = State::Running;
        notified.then(|| frame(connection::AMQPMethod::Unblocked(connection::Unblocked {})))
    }
}

fn frame(m: connection::AMQPMethod) -> AMQPFrame {
    AMQPFrame::Method(0, AMQPClass::Connection(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publisher_blocks_once_at_its_next_publish_and_is_told_when_capable() {
        let monitor = MemoryMonitor::new(1000);
        let mut flow = Flow::new(monitor.clone());
        flow.set_capable(true);
        assert!(flow.after_frame(true).is_none());
        let charge = monitor.charge(1000);
        assert!(
            flow.after_frame(false).is_none(),
            "a consumer's ack reads on"
        );
        assert!(!flow.is_blocked());
        assert!(matches!(
            flow.after_frame(true),
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
            ))
        ));
        assert!(flow.is_blocked());
        assert!(flow.after_frame(true).is_none(), "blocked is sent once");
        drop(charge);
        assert!(matches!(
            flow.unblocked().await,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
            ))
        ));
        assert!(!flow.is_blocked());
    }

    #[tokio::test]
    async fn a_client_without_the_capability_is_blocked_silently() {
        let monitor = MemoryMonitor::new(0);
        let mut flow = Flow::new(monitor.clone());
        assert!(flow.after_frame(true).is_none());
        assert!(flow.is_blocked());
        monitor.set_watermark(1000);
        assert!(flow.unblocked().await.is_none());
        assert!(!flow.is_blocked());
    }
}
