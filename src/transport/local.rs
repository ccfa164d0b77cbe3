//! The in-process [`Transport`]: straight into the embedded broker's core,
//! with no socket and no frame encoding, and the same semantics as over TCP
//! (acks, prefetch, fanout, mandatory, TTL, reply queues), because it is the
//! same core.

use std::sync::{Arc, Mutex};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{
    short_owned, Acker, ConsumeSpec, Delivery, ExchangeKind, ExchangeSpec, HasProperties, NoAck,
    Outgoing, Properties, QueueSpec, QueueStats, Subscription, Transport,
};
use crate::broker::core::{
    AmqpError, ChannelEvent, ConsumeOptions, Core, CoreChannel, CoreConnection,
    ExchangeDeclareOptions, Message, QueueDeclareOptions, QueueDeleteOptions,
};
use crate::Error;

fn refused(e: AmqpError) -> Error {
    Error::transport(e.text.clone()).with_source(e)
}

/// A failed publish: a missing exchange is [`Error::is_not_found`].
fn publish_refused(e: AmqpError) -> Error {
    if e.code == 404 {
        return Error::not_found(e.text.clone()).with_source(e);
    }
    refused(e)
}

/// The largest body a [`LocalTransport`] publishes unless told the
/// broker's own limit: the most any broker may be configured to take
/// (RabbitMQ's hard cap, 512 MiB).
const MAX_MESSAGE_SIZE_CAP: u64 = 512 * 1024 * 1024;

/// A connection to a broker core in this process.
pub struct LocalTransport {
    connection: CoreConnection,
    /// The broker's `max_message_size`: the core takes any body it is
    /// handed, so the limit a TCP client meets in the broker's frame reader
    /// is checked here.
    max_message_size: u64,
    /// Publishes go through one channel: they are synchronous calls into
    /// the core, so there is nothing to wait for in between.
    publisher: Mutex<Arc<CoreChannel>>,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport")
            .field("connection", &self.connection.id())
            .finish()
    }
}

impl LocalTransport {
    /// Connects to `vhost` of `core` as `user`.
    pub fn connect(core: Arc<Core>, vhost: &str, user: &str) -> Result<Self, Error> {
        let connection = core.open_connection(vhost, user).map_err(refused)?;
        let (publisher, _events) = connection.open_channel_mpsc();
        Ok(LocalTransport {
            connection,
            max_message_size: MAX_MESSAGE_SIZE_CAP,
            publisher: Mutex::new(Arc::new(publisher)),
        })
    }

    /// Refuses bodies over `bytes`, as the broker's TCP listeners do with
    /// its `max_message_size` (see `BrokerHandle::max_message_size`).
    pub fn with_max_message_size(mut self, bytes: u64) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// A channel for one operation; an AMQP error closes only it.
    fn scratch(&self) -> CoreChannel {
        self.connection.open_channel_mpsc().0
    }

    fn publisher(&self) -> Arc<CoreChannel> {
        let mut slot = self.publisher.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_closed() {
            *slot = Arc::new(self.connection.open_channel_mpsc().0);
        }
        slot.clone()
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.connection.close();
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
        self.scratch()
            .exchange_declare(
                &spec.name,
                kind,
                ExchangeDeclareOptions {
                    durable: spec.durable,
                    auto_delete: spec.auto_delete,
                    ..ExchangeDeclareOptions::default()
                },
            )
            .map_err(refused)
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), Error> {
        let arguments = spec.arguments();
        self.scratch()
            .queue_declare(
                &spec.name,
                QueueDeclareOptions {
                    passive: false,
                    durable: spec.durable,
                    exclusive: spec.exclusive,
                    auto_delete: spec.auto_delete,
                    arguments,
                },
            )
            .map(|_| ())
            .map_err(refused)
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), Error> {
        self.scratch()
            .queue_bind(queue, exchange, routing_key, FieldTable::default())
            .map_err(refused)
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), Error> {
        self.scratch()
            .queue_delete(queue, QueueDeleteOptions::default())
            .map(|_| ())
            .map_err(refused)
    }

    async fn check_queue(&self, queue: &str) -> Result<QueueStats, Error> {
        let ok = self
            .scratch()
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
            )
            .map_err(|e| {
                if e.code == 404 {
                    Error::not_found(e.text.clone()).with_source(e)
                } else {
                    refused(e)
                }
            })?;
        Ok(QueueStats {
            messages: ok.message_count,
            consumers: ok.consumer_count,
        })
    }

    async fn publish(&self, message: Outgoing) -> Result<(), Error> {
        // Like a TCP publisher, an in-process one waits while the broker's
        // memory alarm is on.
        self.connection.memory().wait_clear().await;
        let Outgoing {
            exchange,
            routing_key,
            mandatory,
            confirm,
            properties,
            body,
        } = message;
        if body.len() as u64 > self.max_message_size {
            // What a TCP publisher gets as 406 PRECONDITION_FAILED, in
            // RabbitMQ's words.
            return Err(Error::refused(format!(
                "message size {} is larger than configured max size {}",
                body.len(),
                self.max_message_size
            )));
        }
        // The names move into the core; kept only for a returned message's
        // error, which needs them back.
        let (exchange, routing_key) = (short_owned(exchange)?, short_owned(routing_key)?);
        let names = (mandatory || confirm).then(|| (exchange.clone(), routing_key.clone()));
        let outcome = self
            .publisher()
            .basic_publish(
                exchange,
                routing_key,
                mandatory,
                properties.into_amqp(),
                body,
            )
            .map_err(publish_refused)?;
        if outcome.rejected && confirm {
            let (exchange, routing_key) = names.clone().unwrap_or_default();
            return Err(Error::refused(format!(
                "the broker nacked the message to exchange {:?} with routing key {:?} \
                 (a full queue refuses publishes)",
                exchange.as_str(),
                routing_key.as_str()
            )));
        }
        if outcome.returned {
            let (exchange, routing_key) = names.unwrap_or_default();
            if confirm {
                return Err(Error::returned(format!(
                    "message to exchange {:?} with routing key {:?} was returned: 312 NO_ROUTE",
                    exchange.as_str(),
                    routing_key.as_str()
                )));
            }
            tracing::debug!(exchange = %exchange, routing_key = %routing_key, "unroutable message returned");
        }
        Ok(())
    }

    async fn consume(&self, spec: &ConsumeSpec) -> Result<Box<dyn Subscription>, Error> {
        let (channel, events) = self.connection.open_channel_mpsc();
        if spec.prefetch > 0 {
            channel.basic_qos(spec.prefetch, false).map_err(refused)?;
        }
        let tag = channel
            .basic_consume(
                &spec.queue,
                "",
                ConsumeOptions {
                    no_ack: spec.no_ack,
                    ..ConsumeOptions::default()
                },
            )
            .map_err(refused)?;
        Ok(Box::new(LocalSubscription {
            channel: Arc::new(channel),
            tag: tag.to_string(),
            no_ack: spec.no_ack,
            events,
        }))
    }

    async fn close(&self) -> Result<(), Error> {
        self.connection.close();
        Ok(())
    }
}

impl HasProperties for Message {
    fn properties(&self) -> &BasicProperties {
        &self.properties
    }
}

struct LocalSubscription {
    channel: Arc<CoreChannel>,
    tag: String,
    no_ack: bool,
    events: mpsc::UnboundedReceiver<ChannelEvent>,
}

#[async_trait]
impl Subscription for LocalSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        loop {
            match self.events.recv().await? {
                ChannelEvent::Deliver(d) => {
                    let acker: Box<dyn Acker> = if self.no_ack {
                        Box::new(NoAck)
                    } else {
                        Box::new(LocalAcker {
                            channel: self.channel.clone(),
                            tag: d.delivery_tag,
                        })
                    };
                    return Some(Ok(Delivery {
                        // The message stays the broker's (until acked):
                        // its properties and body are shared, not copied.
                        body: d.message.body.clone(),
                        routing_key: d.message.routing_key.clone(),
                        properties: Properties::shared(d.message),
                        redelivered: d.redelivered,
                        acker,
                    }));
                }
                ChannelEvent::Cancel { .. } => {
                    return Some(Err(Error::transport(
                        "the broker cancelled the consumer (its queue was deleted)",
                    )))
                }
                ChannelEvent::ConsumeOk { .. }
                | ChannelEvent::Return(_)
                | ChannelEvent::Confirm { .. } => {}
            }
        }
    }

    async fn cancel(&mut self) -> Result<(), Error> {
        self.channel.basic_cancel(&self.tag).map_err(refused)
    }

    async fn close(self: Box<Self>) -> Result<(), Error> {
        self.channel.close();
        Ok(())
    }
}

struct LocalAcker {
    channel: Arc<CoreChannel>,
    tag: u64,
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(&self) -> Result<(), Error> {
        self.channel.basic_ack(self.tag, false).map_err(refused)
    }

    async fn reject(&self, requeue: bool) -> Result<(), Error> {
        self.channel
            .basic_reject(self.tag, requeue)
            .map_err(refused)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// The body a publisher hands over is the very buffer the consumer
    /// receives, and the properties arrive as sent: nothing copied, nothing
    /// converted on the way through the broker core.
    #[tokio::test]
    async fn a_message_crosses_the_in_process_broker_without_a_copy() {
        let broker = crate::broker::Broker::builder()
            .no_listen()
            .start()
            .await
            .expect("broker");
        let transport =
            LocalTransport::connect(broker.core(), "/", broker.user()).expect("connect");
        let queue = QueueSpec {
            name: "zero-copy".into(),
            ..QueueSpec::default()
        };
        transport.declare_queue(&queue).await.expect("declare");
        let mut subscription = transport
            .consume(&ConsumeSpec {
                queue: queue.name.clone(),
                prefetch: 0,
                no_ack: true,
            })
            .await
            .expect("consume");
        let body = Bytes::from(vec![7u8; 64]);
        let properties = Properties::default()
            .with_content_type("application/msgpack")
            .and_then(|p| p.with_correlation_id("c1"))
            .expect("properties");
        transport
            .publish(Outgoing {
                exchange: String::new(),
                routing_key: queue.name.clone(),
                mandatory: false,
                confirm: false,
                properties: properties.clone(),
                body: body.clone(),
            })
            .await
            .expect("publish");
        // The timeout is a hang guard.
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("a delivery in time")
            .expect("the subscription is open")
            .expect("a delivery");
        assert_eq!(delivery.body.as_ptr(), body.as_ptr(), "the same buffer");
        assert_eq!(delivery.body, body);
        assert_eq!(delivery.properties, properties);
        assert_eq!(delivery.properties.correlation_id(), Some("c1"));
    }
}
