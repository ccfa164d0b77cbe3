//! The in-process [`Transport`]: straight into the embedded broker's core,
//! with no socket and no frame encoding, and the same semantics as over TCP
//! (acks, prefetch, fanout, mandatory, TTL, reply queues), because it is the
//! same core.

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};
use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    Acker, ConsumeSpec, Delivery, ExchangeKind, ExchangeSpec, NoAck, Outgoing, Properties,
    QueueSpec, Subscription, Transport,
};
use crate::broker::core::{
    AmqpError, ChannelKey, Core, Destination, Event, ExchangeOptions, QueueOptions, Routed, VHost,
};
use crate::Error;

fn refused(e: AmqpError) -> Error {
    Error::transport(e.text.clone()).with_source(e)
}

/// A connection to a broker core in this process.
pub struct LocalTransport {
    core: Arc<Core>,
    vhost: Arc<VHost>,
    id: u64,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport")
            .field("vhost", &self.vhost.name())
            .field("id", &self.id)
            .finish()
    }
}

impl LocalTransport {
    /// Connects to `vhost` of `core`.
    pub fn connect(core: Arc<Core>, vhost: &str) -> Result<Self, Error> {
        let vhost = core
            .vhost(vhost)
            .ok_or_else(|| Error::config(format!("the embedded broker has no vhost {vhost:?}")))?;
        let id = core.next_connection_id();
        Ok(LocalTransport { core, vhost, id })
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.vhost.close_connection(self.id);
    }
}

#[async_trait]
impl Transport for LocalTransport {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), Error> {
        let kind = match spec.kind {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
        };
        let options = ExchangeOptions {
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            ..ExchangeOptions::default()
        };
        self.vhost
            .declare_exchange(&spec.name, kind, &options)
            .map_err(refused)
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        let mut arguments = FieldTable::default();
        if let Some(ms) = spec.expires_ms {
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongInt(i32::try_from(ms).unwrap_or(i32::MAX)),
            );
        }
        if spec.quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        let options = QueueOptions {
            passive: false,
            durable: spec.durable,
            exclusive: spec.exclusive,
            auto_delete: spec.auto_delete,
            arguments,
        };
        self.vhost
            .declare_queue(self.id, &spec.name, &options)
            .map(|_| ())
            .map_err(refused)
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), Error> {
        self.vhost
            .bind(
                self.id,
                exchange,
                Destination::Queue(queue.to_owned()),
                routing_key,
                FieldTable::default(),
            )
            .map_err(refused)
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), Error> {
        self.vhost
            .delete_queue(self.id, queue, false, false)
            .map(|_| ())
            .map_err(refused)
    }

    async fn publish(&self, message: Outgoing) -> Result<(), Error> {
        let properties = message.properties.to_amqp()?;
        match self
            .vhost
            .publish(
                &message.exchange,
                &message.routing_key,
                properties,
                message.body,
            )
            .map_err(refused)?
        {
            Routed::Queued => Ok(()),
            Routed::Unroutable(..) if message.mandatory && message.confirm => {
                Err(Error::transport(format!(
                    "message to exchange {:?} with routing key {:?} was returned: 312 NO_ROUTE",
                    message.exchange, message.routing_key
                )))
            }
            Routed::Unroutable(..) => {
                if message.mandatory {
                    tracing::debug!(exchange = %message.exchange, routing_key = %message.routing_key, "unroutable message returned");
                }
                Ok(())
            }
        }
    }

    async fn consume(&self, spec: &ConsumeSpec) -> Result<Box<dyn Subscription>, Error> {
        // Each subscription is a channel of a connection of its own, as a
        // consumer channel is over TCP.
        let key = ChannelKey {
            connection: self.core.next_connection_id(),
            channel: 1,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.vhost.open_channel(
            key,
            Arc::new(move |event| {
                let _ = tx.send(event);
            }),
        );
        if spec.prefetch > 0 {
            self.vhost.qos(key, spec.prefetch, false);
        }
        let tag = match self.vhost.consume(key, &spec.queue, "", spec.no_ack, false) {
            Ok(tag) => tag,
            Err(e) => {
                self.vhost.close_channel(key);
                return Err(refused(e));
            }
        };
        self.vhost.dispatch_queue(&spec.queue);
        Ok(Box::new(LocalSubscription {
            vhost: self.vhost.clone(),
            key,
            tag,
            no_ack: spec.no_ack,
            events: rx,
        }))
    }

    async fn close(&self) -> Result<(), Error> {
        self.vhost.close_connection(self.id);
        Ok(())
    }
}

struct LocalSubscription {
    vhost: Arc<VHost>,
    key: ChannelKey,
    tag: String,
    no_ack: bool,
    events: mpsc::UnboundedReceiver<Event>,
}

#[async_trait]
impl Subscription for LocalSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        match self.events.recv().await? {
            Event::Deliver {
                delivery_tag,
                message,
                ..
            } => {
                let acker: Box<dyn Acker> = if self.no_ack {
                    Box::new(NoAck)
                } else {
                    Box::new(LocalAcker {
                        vhost: self.vhost.clone(),
                        key: self.key,
                        tag: delivery_tag,
                    })
                };
                Some(Ok(Delivery {
                    properties: Properties::from_amqp(&message.content.properties),
                    body: message.content.body.clone(),
                    redelivered: message.redelivered,
                    acker,
                }))
            }
            Event::Cancel { .. } => None,
        }
    }

    async fn cancel(&mut self) -> Result<(), Error> {
        self.vhost.cancel(self.key, &self.tag);
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        self.vhost.close_channel(self.key);
        Ok(())
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        // Unacknowledged deliveries go back to their queue, as when a
        // channel closes.
        self.vhost.close_channel(self.key);
    }
}

struct LocalAcker {
    vhost: Arc<VHost>,
    key: ChannelKey,
    tag: u64,
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.vhost.ack(self.key, self.tag, false).map_err(refused)
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.vhost
            .reject(self.key, self.tag, false, requeue)
            .map_err(refused)
    }
}
