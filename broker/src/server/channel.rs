//! Server-side AMQP channel: translates channel-scoped methods and content frames
//! into [`CoreChannel`] calls and queues the replies for the writer.
//!
//! Also assembles published content (method + header + body frames) into one message.

use std::sync::Arc;

use amq_protocol::protocol::{
    basic, channel, confirm, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};

use crate::core::error::codes;
use crate::core::memory::Charge;
use crate::core::{
    AmqpError, ConsumeOptions, CoreChannel, ExchangeDeclareOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};

use super::outbound::Outbound;
use super::outbound::Outgoing;

struct Pending {
    exchange: ShortString,
    routing_key: ShortString,
    mandatory: bool,
    header: Option<(BasicProperties, u64)>,
    body: BytesMut,
    /// An incomplete body's bytes on the memory gauge.
    charge: Charge,
}

/// What the connection must do after a channel handled a frame.
pub(crate) enum After {
    /// Nothing special.
    Nothing,
    /// The channel is finished (close / close-ok): forget it.
    Remove,
}

/// State of one open (or closing) channel on a connection.
pub(crate) struct ServerChannel {
    id: u16,
    core: CoreChannel,
    /// Server sent channel.close and waits for close-ok.
    closing: bool,
    pending: Option<Pending>,
    /// Largest body a publish may declare (`max_message_size`).
    max_message_size: u64,
}

/// `basic.publish`'s class and method ids.
const PUBLISH: (u16, u16) = (60, 40);

fn unexpected(detail: &str) -> AmqpError {
    AmqpError::new(codes::UNEXPECTED_FRAME, detail)
}

impl ServerChannel {
    pub(crate) fn new(id: u16, core: CoreChannel, max_message_size: u64) -> Self {
        Self {
            id,
            core,
            closing: false,
            pending: None,
            max_message_size,
        }
    }

    fn reply(&self, out: &Outbound, m: AMQPClass) {
        let _ = out.send(Outgoing::Frame(Box::new(
            amq_protocol::frame::AMQPFrame::Method(self.id, m),
        )));
    }

    /// Server-initiated close after a soft error.
    pub(crate) fn fail(&mut self, out: &Outbound, e: &AmqpError) {
        self.core.close();
        self.pending = None;
        self.closing = true;
        self.reply(
            out,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: super::writer::short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Closes the channel with 406, as RabbitMQ's `consumer_timeout` does,
    /// when its oldest delivery has waited for an ack longer than `timeout`;
    /// closing requeues its unacknowledged deliveries.
    pub(crate) fn check_consumer_timeout(
        &mut self,
        timeout: std::time::Duration,
        now: std::time::Instant,
        out: &Outbound,
    ) {
        if self.closing
            || self
                .core
                .oldest_unacked_age(now)
                .is_none_or(|age| age <= timeout)
        {
            return;
        }
        let e = AmqpError::precondition(format!(
            "delivery acknowledgement on channel {} timed out. Timeout value used: {} ms. This \
             timeout value can be configured, see consumers doc guide to learn more",
            self.id,
            timeout.as_millis()
        ));
        self.fail(out, &e);
    }

    /// A content header frame arrived for this channel.
    pub(crate) fn on_header(
        &mut self,
        class_id: u16,
        body_size: u64,
        properties: BasicProperties,
        out: &Outbound,
    ) -> Result<After, AmqpError> {
        if self.closing {
            return Ok(After::Nothing);
        }
        let Some(p) = self.pending.as_mut() else {
            return Err(unexpected(
                "expected method frame, got non method frame instead",
            ));
        };
        if p.header.is_some() {
            return Err(unexpected(
                "expected content body, got non content body frame instead",
            ));
        }
        if class_id != 60 {
            return Err(unexpected(&format!(
                "expected content header for class 60, got one for class {class_id} instead"
            )));
        }
        if body_size > self.max_message_size {
            // Refused from the declared size, before any body arrives: a
            // channel error (RabbitMQ's text), and the closing channel drops
            // the bodies the peer already sent.
            let e = AmqpError::precondition(format!(
                "message size {body_size} is larger than configured max size {}",
                self.max_message_size
            ))
            .during(PUBLISH.0, PUBLISH.1);
            self.fail(out, &e);
            return Ok(After::Nothing);
        }
        p.header = Some((properties, body_size));
        // Nothing reserved from the declared size: the body grows with the
        // bytes that actually arrive (see `on_body`).
        p.body = BytesMut::new();
        if body_size == 0 {
            return self.complete(out);
        }
        Ok(After::Nothing)
    }

    /// A content body frame arrived for this channel.
    pub(crate) fn on_body(&mut self, data: &[u8], out: &Outbound) -> Result<After, AmqpError> {
        if self.closing {
            return Ok(After::Nothing);
        }
        let Some(p) = self.pending.as_mut() else {
            return Err(unexpected(
                "expected method frame, got non method frame instead",
            ));
        };
        let Some((_, size)) = p.header.as_ref() else {
            return Err(unexpected(
                "expected content header for class 60, got non content header frame instead",
            ));
        };
        let size = *size;
        let got = p.body.len().saturating_add(data.len());
        // RabbitMQ's frame_error for a body frame past the declared size.
        if u64::try_from(got).map_or(true, |got| got > size) {
            return Err(AmqpError::new(
                codes::FRAME_ERROR,
                format!("content body exceeds declared size {size} (got {got})"),
            ));
        }
        // One frame is one exact allocation; more grow the buffer by doubling
        // (amortised copies), so its capacity stays within twice what arrived.
        p.body.extend_from_slice(data);
        if u64::try_from(p.body.len()).is_ok_and(|len| len == size) {
            return self.complete(out);
        }
        // Only bodies spanning several frames wait here; the usual
        // single-frame body never touches the gauge.
        if p.charge.bytes() == 0 {
            p.charge = self.core.memory().charge(p.body.len());
        } else {
            p.charge.grow(data.len());
        }
        Ok(After::Nothing)
    }

    fn complete(&mut self, out: &Outbound) -> Result<After, AmqpError> {
        let Some(p) = self.pending.take() else {
            return Ok(After::Nothing);
        };
        let Some((props, _)) = p.header else {
            return Ok(After::Nothing);
        };
        let body: Bytes = p.body.freeze();
        match self
            .core
            .basic_publish(p.exchange, p.routing_key, p.mandatory, props, body)
        {
            Ok(_) => Ok(After::Nothing),
            // The content completes the `basic.publish` it followed.
            Err(e) => self.soft_or_hard(e.during(PUBLISH.0, PUBLISH.1), out),
        }
    }

    fn soft_or_hard(&mut self, e: AmqpError, out: &Outbound) -> Result<After, AmqpError> {
        match e.scope {
            crate::core::ErrorScope::Channel => {
                self.fail(out, &e);
                Ok(After::Nothing)
            }
            crate::core::ErrorScope::Connection => Err(e),
        }
    }

    /// A method frame arrived for this channel.
    pub(crate) fn on_method(
        &mut self,
        m: AMQPClass,
        out: &Arc<Outbound>,
    ) -> Result<After, AmqpError> {
        if self.closing {
            // As RabbitMQ: until the client's close-ok, a close it sent
            // meanwhile (its close crossed ours) gets a close-ok and the
            // channel stays, so that close-ok still finds it.
            return Ok(match m {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => After::Remove,
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.reply(
                        out,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    After::Nothing
                }
                _ => After::Nothing,
            });
        }
        if let Some(p) = &self.pending {
            return Err(unexpected(if p.header.is_none() {
                "expected content header for class 60, got non content header frame instead"
            } else {
                "expected content body, got non content body frame instead"
            }));
        }
        // The core knows no wire ids: an error names the method it failed
        // (`channel.close`'s class and method ids) here, from the frame.
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        match self.dispatch(m, out) {
            Ok(a) => Ok(a),
            Err(e) => self.soft_or_hard(e.during(class_id, method_id), out),
        }
    }

    fn dispatch(&mut self, m: AMQPClass, out: &Arc<Outbound>) -> Result<After, AmqpError> {
        let ch = &self.core;
        match m {
            AMQPClass::Channel(cm) => match cm {
                channel::AMQPMethod::Open(_) => {
                    return Err(
                        AmqpError::channel_error("second 'channel.open' seen").during(20, 10)
                    )
                }
                channel::AMQPMethod::Close(_) => {
                    self.core.close();
                    self.reply(
                        out,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    return Ok(After::Remove);
                }
                channel::AMQPMethod::CloseOk(_) => {}
                channel::AMQPMethod::Flow(f) => {
                    ch.flow(f.active)?;
                    self.reply(
                        out,
                        AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                            active: f.active,
                        })),
                    );
                }
                channel::AMQPMethod::FlowOk(_) => {}
                other => return Err(invalid(&AMQPClass::Channel(other))),
            },
            AMQPClass::Exchange(em) => match em {
                exchange::AMQPMethod::Declare(d) => {
                    ch.exchange_declare(
                        d.exchange.as_str(),
                        d.kind.as_str(),
                        ExchangeDeclareOptions {
                            passive: d.passive,
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            internal: d.internal,
                            arguments: d.arguments,
                        },
                    )?;
                    if !d.nowait {
                        self.reply(
                            out,
                            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                                exchange::DeclareOk {},
                            )),
                        );
                    }
                }
                exchange::AMQPMethod::Delete(d) => {
                    ch.exchange_delete(d.exchange.as_str(), d.if_unused)?;
                    if !d.nowait {
                        self.reply(
                            out,
                            AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                                exchange::DeleteOk {},
                            )),
                        );
                    }
                }
                exchange::AMQPMethod::Bind(b) => {
                    ch.exchange_bind(
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                    if !b.nowait {
                        self.reply(
                            out,
                            AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                        );
                    }
                }
                exchange::AMQPMethod::Unbind(b) => {
                    ch.exchange_unbind(
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                    if !b.nowait {
                        self.reply(
                            out,
                            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                                exchange::UnbindOk {},
                            )),
                        );
                    }
                }
                other => return Err(invalid(&AMQPClass::Exchange(other))),
            },
            AMQPClass::Queue(qm) => match qm {
                queue::AMQPMethod::Declare(d) => {
                    let ok = ch.queue_declare(
                        d.queue.as_str(),
                        QueueDeclareOptions {
                            passive: d.passive,
                            durable: d.durable,
                            exclusive: d.exclusive,
                            auto_delete: d.auto_delete,
                            arguments: d.arguments,
                        },
                    )?;
                    if !d.nowait {
                        self.reply(
                            out,
                            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                                queue: super::writer::short(&ok.queue),
                                message_count: ok.message_count,
                                consumer_count: ok.consumer_count,
                            })),
                        );
                    }
                }
                queue::AMQPMethod::Bind(b) => {
                    ch.queue_bind(
                        b.queue.as_str(),
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                    if !b.nowait {
                        self.reply(
                            out,
                            AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                        );
                    }
                }
                queue::AMQPMethod::Unbind(b) => {
                    ch.queue_unbind(
                        b.queue.as_str(),
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                    self.reply(
                        out,
                        AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                    );
                }
                queue::AMQPMethod::Purge(p) => {
                    let n = ch.queue_purge(p.queue.as_str())?;
                    if !p.nowait {
                        self.reply(
                            out,
                            AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                                message_count: n,
                            })),
                        );
                    }
                }
                queue::AMQPMethod::Delete(d) => {
                    let n = ch.queue_delete(
                        d.queue.as_str(),
                        QueueDeleteOptions {
                            if_unused: d.if_unused,
                            if_empty: d.if_empty,
                        },
                    )?;
                    if !d.nowait {
                        self.reply(
                            out,
                            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                                message_count: n,
                            })),
                        );
                    }
                }
                other => return Err(invalid(&AMQPClass::Queue(other))),
            },
            AMQPClass::Basic(bm) => match bm {
                basic::AMQPMethod::Qos(q) => {
                    ch.basic_qos(q.prefetch_count, q.global)?;
                    self.reply(
                        out,
                        AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                    );
                }
                basic::AMQPMethod::Consume(c) => {
                    ch.basic_consume(
                        c.queue.as_str(),
                        c.consumer_tag.as_str(),
                        ConsumeOptions {
                            no_ack: c.no_ack,
                            exclusive: c.exclusive,
                            nowait: c.nowait,
                            arguments: c.arguments,
                        },
                    )?;
                }
                basic::AMQPMethod::Cancel(c) => {
                    ch.basic_cancel(c.consumer_tag.as_str())?;
                    if !c.nowait {
                        self.reply(
                            out,
                            AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                                consumer_tag: c.consumer_tag,
                            })),
                        );
                    }
                }
                basic::AMQPMethod::Publish(p) => {
                    if p.immediate {
                        return Err(AmqpError::not_implemented("immediate=true")
                            .during(PUBLISH.0, PUBLISH.1));
                    }
                    self.pending = Some(Pending {
                        exchange: p.exchange,
                        routing_key: p.routing_key,
                        mandatory: p.mandatory,
                        header: None,
                        body: BytesMut::new(),
                        charge: Charge::none(),
                    });
                }
                basic::AMQPMethod::Get(g) => match ch.basic_get(g.queue.as_str(), g.no_ack)? {
                    Some(ok) => {
                        let _ = out.send(Outgoing::GetOk(self.id, ok));
                    }
                    None => self.reply(
                        out,
                        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                    ),
                },
                basic::AMQPMethod::Ack(a) => ch.basic_ack(a.delivery_tag, a.multiple)?,
                basic::AMQPMethod::Nack(n) => {
                    ch.basic_nack(n.delivery_tag, n.multiple, n.requeue)?
                }
                basic::AMQPMethod::Reject(r) => ch.basic_reject(r.delivery_tag, r.requeue)?,
                basic::AMQPMethod::Recover(r) => {
                    ch.basic_recover(r.requeue)?;
                    self.reply(
                        out,
                        AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                    );
                }
                basic::AMQPMethod::RecoverAsync(r) => ch.basic_recover(r.requeue)?,
                other => return Err(invalid(&AMQPClass::Basic(other))),
            },
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                ch.confirm_select()?;
                if !s.nowait {
                    self.reply(
                        out,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            AMQPClass::Tx(t) => match t {
                tx::AMQPMethod::Select(_) => {
                    ch.tx_select()?;
                    self.reply(
                        out,
                        AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                    );
                }
                tx::AMQPMethod::Commit(_) => {
                    // commit-ok once the committed persistent messages are on
                    // disk; if the store fails them, the core closes the
                    // connection (541) instead.
                    let (out, id) = (out.clone(), self.id);
                    ch.tx_commit_then(Box::new(move |ok| {
                        if ok {
                            let _ = out.send(Outgoing::Frame(Box::new(
                                amq_protocol::frame::AMQPFrame::Method(
                                    id,
                                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                                ),
                            )));
                        }
                    }))?;
                }
                tx::AMQPMethod::Rollback(_) => {
                    ch.tx_rollback()?;
                    self.reply(
                        out,
                        AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                    );
                }
                other => return Err(invalid(&AMQPClass::Tx(other))),
            },
            AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => {
                self.reply(
                    out,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                );
            }
            other => return Err(invalid(&other)),
        }
        Ok(After::Nothing)
    }
}

/// A known method the client must not send (server-to-client only, or wrong place).
pub(crate) fn invalid(m: &AMQPClass) -> AmqpError {
    AmqpError::command_invalid(format!(
        "unexpected method {}.{} from client",
        m.get_amqp_class_id(),
        m.get_amqp_method_id()
    ))
    .during(m.get_amqp_class_id(), m.get_amqp_method_id())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Outgoing, ServerChannel};
    use crate::core::permission::Permissions;
    use crate::core::Core;
    use crate::server::outbound::Outbound;
    use crate::server::outbound::ServerSink;
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, channel, AMQPClass, BasicProperties};

    fn publishing_channel(max: u64) -> (ServerChannel, Arc<Outbound>) {
        let core: Arc<Core> = Core::new(&[("guest".into(), "guest".into())], &[]);
        let all = Permissions::new(".*", ".*", ".*").expect("valid patterns");
        core.set_permissions("guest", "/", all);
        let conn = core
            .open_connection("/", "guest")
            .expect("connection opens");
        let out = Arc::new(Outbound::new());
        let sink = Box::new(ServerSink {
            channel: 1,
            tx: out.clone(),
        });
        let mut ch = ServerChannel::new(1, conn.open_channel(sink), max);
        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "nowhere".into(),
            mandatory: false,
            immediate: false,
        }));
        assert!(ch.on_method(publish, &out).is_ok());
        (ch, out)
    }

    #[test]
    fn a_declared_body_size_reserves_nothing_until_bytes_arrive() {
        let (mut ch, out) = publishing_channel(16 << 20);
        let declared = 16 << 20;
        assert!(ch
            .on_header(60, declared, BasicProperties::default(), &out)
            .is_ok());
        let capacity = |ch: &ServerChannel| ch.pending.as_ref().map(|p| p.body.capacity());
        assert_eq!(capacity(&ch), Some(0));
        assert!(ch.on_body(&[7; 10], &out).is_ok());
        assert!(capacity(&ch).is_some_and(|c| (10..=20).contains(&c)));
    }

    #[test]
    fn a_body_over_max_message_size_closes_the_channel_only() {
        let (mut ch, out) = publishing_channel(1000);
        assert!(ch
            .on_header(60, 1001, BasicProperties::default(), &out)
            .is_ok());
        let mut sent = Vec::new();
        out.take(&mut sent, 16);
        let Some(Outgoing::Frame(frame)) = sent.pop() else {
            panic!("no channel.close");
        };
        let AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(close))) = *frame
        else {
            panic!("not a channel.close: {frame:?}");
        };
        assert_eq!(close.reply_code, 406);
        assert_eq!(
            close.reply_text.as_str(),
            "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
        );
        // The bodies already on their way are dropped, not an error.
        assert!(ch.on_body(&[0; 1001], &out).is_ok());
    }
}
