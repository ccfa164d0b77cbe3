//! The entities oslo.messaging declares for RPC, with exactly its flags and
//! arguments (a peer declaring different ones gets 406 PRECONDITION_FAILED).

use crate::transport::{ExchangeKind, ExchangeSpec, QueueSpec};
use crate::{Connection, Error};

/// Declares the control exchange and, for each queue, the topic queue
/// bound to it with its own name as the key: what an RPC server (for
/// `<topic>` and `<topic>.<server>`) and a notification queue need.
pub(crate) async fn declare_topic_queues(
    connection: &Connection,
    exchange: &str,
    queues: &[&str],
) -> Result<(), Error> {
    let transport = connection.transport();
    let topology = connection.topology();
    transport
        .declare_exchange(&topology.control_exchange(exchange))
        .await?;
    for queue in queues {
        transport
            .declare_queue(&topology.topic_queue(queue))
            .await?;
        transport.bind_queue(queue, exchange, queue).await?;
    }
    Ok(())
}

/// oslo's `rabbit_transient_queues_ttl` default: 30 minutes.
pub const DEFAULT_TRANSIENT_TTL_MS: u32 = 1_800_000;

/// Options that change the topology (oslo's `transport_url` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// `amqp_durable_queues`: durable control exchange and topic queues.
    pub durable: bool,
    /// `rabbit_quorum_queue`: topic queues as quorum queues (durable).
    pub quorum: bool,
    /// `rabbit_transient_queues_ttl`: `x-expires` of reply and fanout
    /// queues; `None` omits it.
    pub transient_ttl_ms: Option<u32>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            durable: false,
            quorum: false,
            transient_ttl_ms: Some(DEFAULT_TRANSIENT_TTL_MS),
        }
    }
}

impl Topology {
    /// The control exchange: topic, auto_delete=false.
    pub fn control_exchange(&self, name: &str) -> ExchangeSpec {
        ExchangeSpec {
            name: name.to_owned(),
            kind: ExchangeKind::Topic,
            durable: self.durable || self.quorum,
            auto_delete: false,
        }
    }

    /// A topic or per-server queue: shared, never auto-deleted.
    pub fn topic_queue(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            durable: self.durable || self.quorum,
            quorum: self.quorum,
            ..QueueSpec::default()
        }
    }

    /// A topic's fanout exchange: fanout, auto_delete=true.
    pub fn fanout_exchange(&self, name: &str) -> ExchangeSpec {
        ExchangeSpec {
            name: name.to_owned(),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: true,
        }
    }

    /// A transient queue (reply or fanout): expires when unused.
    pub fn transient_queue(&self, name: &str) -> QueueSpec {
        QueueSpec {
            name: name.to_owned(),
            expires_ms: self.transient_ttl_ms,
            ..QueueSpec::default()
        }
    }
}
