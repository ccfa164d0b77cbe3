//! A queue: ready messages, consumers, and the arguments that govern them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;

use super::{int_arg, ChannelKey, Message};

/// The `x-` arguments this broker implements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct QueueArgs {
    /// `x-expires`: delete after this long unused.
    pub expires: Option<u64>,
    /// `x-message-ttl`: messages expire after this long.
    pub message_ttl: Option<u64>,
    /// `x-queue-type` (recorded for equivalence checks).
    pub queue_type: Option<String>,
}

impl QueueArgs {
    pub(super) fn parse(arguments: &FieldTable) -> Result<Self, String> {
        let mut args = QueueArgs::default();
        for (key, value) in arguments.inner() {
            match key.as_str() {
                "x-expires" => match int_arg(value) {
                    Some(ms) if ms > 0 => args.expires = Some(ms as u64),
                    _ => {
                        return Err(format!(
                            "x-expires must be a positive integer, got {value:?}"
                        ))
                    }
                },
                "x-message-ttl" => match int_arg(value) {
                    Some(ms) if ms >= 0 => args.message_ttl = Some(ms as u64),
                    _ => {
                        return Err(format!(
                            "x-message-ttl must be a non-negative integer, got {value:?}"
                        ))
                    }
                },
                "x-queue-type" => {
                    args.queue_type = Some(match value {
                        amq_protocol::types::AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        amq_protocol::types::AMQPValue::ShortString(s) => s.as_str().to_owned(),
                        other => {
                            return Err(format!("x-queue-type must be a string, got {other:?}"))
                        }
                    })
                }
                // Other arguments are accepted and ignored.
                _ => {}
            }
        }
        Ok(args)
    }

    /// The first argument that differs, for 406 on redeclare.
    pub(super) fn differs(&self, other: &QueueArgs) -> Option<&'static str> {
        if self.expires != other.expires {
            Some("x-expires")
        } else if self.message_ttl != other.message_ttl {
            Some("x-message-ttl")
        } else if self.queue_type.as_deref().unwrap_or("classic")
            != other.queue_type.as_deref().unwrap_or("classic")
        {
            Some("x-queue-type")
        } else {
            None
        }
    }
}

/// A consumer of a queue.
#[derive(Debug)]
pub(super) struct Consumer {
    pub channel: ChannelKey,
    pub tag: String,
    pub no_ack: bool,
    pub prefetch: u16,
    pub unacked: u32,
    pub exclusive: bool,
}

#[derive(Debug)]
pub(super) struct Queue {
    pub durable: bool,
    pub exclusive: Option<u64>,
    pub auto_delete: bool,
    pub args: QueueArgs,
    pub messages: VecDeque<Message>,
    pub consumers: Vec<Consumer>,
    pub next_consumer: usize,
    pub had_consumer: bool,
    last_used: Instant,
}

impl Queue {
    pub(super) fn new(
        durable: bool,
        exclusive: Option<u64>,
        auto_delete: bool,
        args: QueueArgs,
    ) -> Self {
        Queue {
            durable,
            exclusive,
            auto_delete,
            args,
            messages: VecDeque::new(),
            consumers: Vec::new(),
            next_consumer: 0,
            had_consumer: false,
            last_used: Instant::now(),
        }
    }

    /// Ready messages.
    pub(super) fn ready(&self) -> u32 {
        u32::try_from(self.messages.len()).unwrap_or(u32::MAX)
    }

    pub(super) fn touch(&mut self) {
        self.last_used = Instant::now();
    }

    /// Whether `x-expires` has run out: no consumers and unused that long.
    pub(super) fn unused_since(&self, now: Instant) -> bool {
        match self.args.expires {
            Some(ms) => {
                self.consumers.is_empty()
                    && now.duration_since(self.last_used) >= Duration::from_millis(ms)
            }
            None => false,
        }
    }
}
