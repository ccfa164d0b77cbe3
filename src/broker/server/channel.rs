//! The channel state machine: methods to core calls, content assembly for
//! `basic.publish`, confirms, transactions, and channel-level errors.

use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, exchange, queue, tx, AMQPClass, BasicProperties,
};

use super::connection::{short, Session};
use super::wire::{Outbound, Writer};
use crate::broker::core::{
    code, AmqpError, ChannelKey, Content, Destination, Event, EventSink, ExchangeOptions,
    QueueOptions, Routed,
};

/// A publish waiting for its content.
struct Pending {
    publish: basic::Publish,
    properties: Option<BasicProperties>,
    body_size: u64,
    body: Vec<u8>,
}

/// A publish or an acknowledgement held until `tx.commit`.
enum TxOp {
    Publish(Box<(basic::Publish, BasicProperties)>, Vec<u8>),
    Ack(u64, bool),
    Reject(u64, bool, bool),
}

/// One open channel.
pub(super) struct ChannelSession {
    key: ChannelKey,
    /// We sent `channel.close` and wait for `close-ok`.
    closing: bool,
    confirm: bool,
    publish_seq: u64,
    pending: Option<Pending>,
    tx: Option<Vec<TxOp>>,
}

fn out(channel: u16, class: AMQPClass) -> Outbound {
    Outbound::Frame(AMQPFrame::Method(channel, class))
}

/// A method with its content, the body split to fit `frame_max`.
pub(super) fn content_frames(
    channel: u16,
    method: AMQPClass,
    content: &Content,
    frame_max: u32,
) -> Vec<AMQPFrame> {
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    let mut frames = Vec::with_capacity(2 + content.body.len() / chunk + 1);
    frames.push(AMQPFrame::Method(channel, method));
    frames.push(AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: content.body.len() as u64,
            properties: content.properties.clone(),
        },
    ));
    for part in content.body.chunks(chunk) {
        frames.push(AMQPFrame::Body(channel, part.to_vec()));
    }
    frames
}

/// Turns core events into frames on the connection's writer.
fn sink(writer: Writer, channel: u16, frame_max: u32) -> EventSink {
    Arc::new(move |event| {
        let frames = match event {
            Event::Deliver {
                consumer_tag,
                delivery_tag,
                message,
            } => content_frames(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: short(&consumer_tag),
                    delivery_tag,
                    redelivered: message.redelivered,
                    exchange: short(&message.content.exchange),
                    routing_key: short(&message.content.routing_key),
                })),
                &message.content,
                frame_max,
            ),
            Event::Cancel { consumer_tag } => vec![AMQPFrame::Method(
                channel,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: short(&consumer_tag),
                    nowait: true,
                })),
            )],
        };
        let _ = writer.send(Outbound::Frames(frames));
    })
}

impl Session {
    fn key(&self, channel: u16) -> ChannelKey {
        ChannelKey {
            connection: self.id,
            channel,
        }
    }

    /// Sends `channel.close` and forgets the channel's core state (its
    /// unacked messages go back to their queues).
    pub(super) fn close_channel_with(&mut self, channel: u16, e: &AmqpError) {
        self.send(out(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: short(e.short_text()),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        ));
        self.vhost.close_channel(self.key(channel));
        if let Some(session) = self.channels.get_mut(&channel) {
            session.closing = true;
            session.pending = None;
        }
    }

    pub(super) fn on_channel_method(
        &mut self,
        channel: u16,
        class: AMQPClass,
    ) -> Result<(), AmqpError> {
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        let in_content = self
            .channels
            .get(&channel)
            .is_some_and(|c| c.pending.is_some());
        match self.channels.get(&channel) {
            None => {
                return match class {
                    AMQPClass::Channel(channel::AMQPMethod::Open(_)) => self.open_channel(channel),
                    _ => Err(AmqpError::connection(
                        code::CHANNEL_ERROR,
                        format!("expected 'channel.open' on channel {channel}"),
                    )
                    .on(class_id, method_id)),
                };
            }
            Some(c) if c.closing => {
                // After our channel.close, only close-ok (or close) matters.
                if matches!(
                    class,
                    AMQPClass::Channel(
                        channel::AMQPMethod::CloseOk(_) | channel::AMQPMethod::Close(_)
                    )
                ) {
                    self.channels.remove(&channel);
                }
                return Ok(());
            }
            Some(_) if in_content => {
                return Err(AmqpError::connection(
                    code::UNEXPECTED_FRAME,
                    format!("expected content header or body on channel {channel}, got a method"),
                )
                .on(class_id, method_id));
            }
            Some(_) => {}
        }
        match self.channel_method(channel, class) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = if e.class_id == 0 {
                    e.on(class_id, method_id)
                } else {
                    e
                };
                self.fail(channel, e)
            }
        }
    }

    fn open_channel(&mut self, channel: u16) -> Result<(), AmqpError> {
        if channel > self.channel_max {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("channel {channel} exceeds channel_max {}", self.channel_max),
            )
            .on(20, 10));
        }
        let key = self.key(channel);
        self.vhost
            .open_channel(key, sink(self.writer.clone(), channel, self.frame_max));
        self.channels.insert(
            channel,
            ChannelSession {
                key,
                closing: false,
                confirm: false,
                publish_seq: 0,
                pending: None,
                tx: None,
            },
        );
        self.send(out(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        ));
        Ok(())
    }

    fn channel_method(&mut self, ch: u16, class: AMQPClass) -> Result<(), AmqpError> {
        let key = self.key(ch);
        let vhost = self.vhost.clone();
        match class {
            AMQPClass::Channel(m) => match m {
                channel::AMQPMethod::Open(_) => Err(AmqpError::connection(
                    code::CHANNEL_ERROR,
                    format!("channel {ch} is already open"),
                )),
                channel::AMQPMethod::Close(_) => {
                    vhost.close_channel(key);
                    self.channels.remove(&ch);
                    self.send(out(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    ));
                    Ok(())
                }
                channel::AMQPMethod::CloseOk(_) => Ok(()),
                channel::AMQPMethod::Flow(f) => {
                    vhost.flow(key, f.active);
                    self.send(out(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                            active: f.active,
                        })),
                    ));
                    Ok(())
                }
                channel::AMQPMethod::FlowOk(_) => Ok(()),
                _ => Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    "unexpected channel method",
                )),
            },
            AMQPClass::Access(_) => {
                self.send(out(
                    ch,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    )),
                ));
                Ok(())
            }
            AMQPClass::Exchange(m) => self.exchange_method(ch, m),
            AMQPClass::Queue(m) => self.queue_method(ch, m),
            AMQPClass::Basic(m) => self.basic_method(ch, m),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let session = self.session(ch)?;
                if session.tx.is_some() {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                session.confirm = true;
                if !s.nowait {
                    self.send(out(
                        ch,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    ));
                }
                Ok(())
            }
            AMQPClass::Confirm(_) => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "unexpected confirm method",
            )),
            AMQPClass::Tx(m) => self.tx_method(ch, m),
            AMQPClass::Connection(_) => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "connection methods are only allowed on channel 0",
            )),
        }
    }

    fn session(&mut self, ch: u16) -> Result<&mut ChannelSession, AmqpError> {
        self.channels.get_mut(&ch).ok_or_else(|| {
            AmqpError::connection(code::CHANNEL_ERROR, format!("channel {ch} is not open"))
        })
    }

    fn exchange_method(&mut self, ch: u16, m: exchange::AMQPMethod) -> Result<(), AmqpError> {
        let vhost = self.vhost.clone();
        let reply = |s: &Session, m: exchange::AMQPMethod| s.send(out(ch, AMQPClass::Exchange(m)));
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let options = ExchangeOptions {
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                };
                vhost.declare_exchange(d.exchange.as_str(), d.kind.as_str(), &options)?;
                if !d.nowait {
                    reply(
                        self,
                        exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    reply(self, exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}));
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                vhost.bind(
                    self.id,
                    b.source.as_str(),
                    Destination::Exchange(b.destination.to_string()),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                if !b.nowait {
                    reply(self, exchange::AMQPMethod::BindOk(exchange::BindOk {}));
                }
            }
            exchange::AMQPMethod::Unbind(u) => {
                vhost.unbind(
                    self.id,
                    u.source.as_str(),
                    Destination::Exchange(u.destination.to_string()),
                    u.routing_key.as_str(),
                    &u.arguments,
                )?;
                if !u.nowait {
                    reply(self, exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}));
                }
            }
            _ => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    "unexpected exchange method",
                ))
            }
        }
        Ok(())
    }

    fn queue_method(&mut self, ch: u16, m: queue::AMQPMethod) -> Result<(), AmqpError> {
        let vhost = self.vhost.clone();
        let reply = |s: &Session, m: queue::AMQPMethod| s.send(out(ch, AMQPClass::Queue(m)));
        match m {
            queue::AMQPMethod::Declare(d) => {
                let options = QueueOptions {
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                };
                let declared = vhost.declare_queue(self.id, d.queue.as_str(), &options)?;
                if !d.nowait {
                    reply(
                        self,
                        queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: short(&declared.name),
                            message_count: declared.message_count,
                            consumer_count: declared.consumer_count,
                        }),
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                vhost.bind(
                    self.id,
                    b.exchange.as_str(),
                    Destination::Queue(b.queue.to_string()),
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                if !b.nowait {
                    reply(self, queue::AMQPMethod::BindOk(queue::BindOk {}));
                }
            }
            queue::AMQPMethod::Unbind(u) => {
                vhost.unbind(
                    self.id,
                    u.exchange.as_str(),
                    Destination::Queue(u.queue.to_string()),
                    u.routing_key.as_str(),
                    &u.arguments,
                )?;
                reply(self, queue::AMQPMethod::UnbindOk(queue::UnbindOk {}));
            }
            queue::AMQPMethod::Purge(p) => {
                let message_count = vhost.purge_queue(self.id, p.queue.as_str())?;
                if !p.nowait {
                    reply(
                        self,
                        queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count }),
                    );
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let message_count =
                    vhost.delete_queue(self.id, d.queue.as_str(), d.if_unused, d.if_empty)?;
                if !d.nowait {
                    reply(
                        self,
                        queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count }),
                    );
                }
            }
            _ => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    "unexpected queue method",
                ))
            }
        }
        Ok(())
    }

    fn basic_method(&mut self, ch: u16, m: basic::AMQPMethod) -> Result<(), AmqpError> {
        let key = self.key(ch);
        let vhost = self.vhost.clone();
        let reply = |s: &Session, m: basic::AMQPMethod| s.send(out(ch, AMQPClass::Basic(m)));
        match m {
            basic::AMQPMethod::Qos(q) => {
                vhost.qos(key, q.prefetch_count, q.global);
                reply(self, basic::AMQPMethod::QosOk(basic::QosOk {}));
            }
            basic::AMQPMethod::Consume(c) => {
                let tag = vhost.consume(
                    key,
                    c.queue.as_str(),
                    c.consumer_tag.as_str(),
                    c.no_ack,
                    c.exclusive,
                )?;
                if !c.nowait {
                    reply(
                        self,
                        basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: short(&tag),
                        }),
                    );
                }
                vhost.dispatch_queue(c.queue.as_str());
            }
            basic::AMQPMethod::Cancel(c) => {
                vhost.cancel(key, c.consumer_tag.as_str());
                if !c.nowait {
                    reply(
                        self,
                        basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        }),
                    );
                }
            }
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "immediate=true",
                    ));
                }
                self.session(ch)?.pending = Some(Pending {
                    publish: p,
                    properties: None,
                    body_size: 0,
                    body: Vec::new(),
                });
            }
            basic::AMQPMethod::Get(g) => match vhost.get(key, g.queue.as_str(), g.no_ack)? {
                None => reply(self, basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                Some(got) => {
                    let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                        delivery_tag: got.delivery_tag,
                        redelivered: got.message.redelivered,
                        exchange: short(&got.message.content.exchange),
                        routing_key: short(&got.message.content.routing_key),
                        message_count: got.message_count,
                    }));
                    self.send(Outbound::Frames(content_frames(
                        ch,
                        method,
                        &got.message.content,
                        self.frame_max,
                    )));
                }
            },
            basic::AMQPMethod::Ack(a) => self.settle(ch, TxOp::Ack(a.delivery_tag, a.multiple))?,
            basic::AMQPMethod::Nack(n) => {
                self.settle(ch, TxOp::Reject(n.delivery_tag, n.multiple, n.requeue))?
            }
            basic::AMQPMethod::Reject(r) => {
                self.settle(ch, TxOp::Reject(r.delivery_tag, false, r.requeue))?
            }
            basic::AMQPMethod::Recover(_) => {
                vhost.recover(key);
                reply(self, basic::AMQPMethod::RecoverOk(basic::RecoverOk {}));
            }
            basic::AMQPMethod::RecoverAsync(_) => vhost.recover(key),
            _ => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    "unexpected basic method",
                ))
            }
        }
        Ok(())
    }

    /// An ack/nack/reject, now or at `tx.commit`.
    fn settle(&mut self, ch: u16, op: TxOp) -> Result<(), AmqpError> {
        let session = self.session(ch)?;
        if let Some(ops) = session.tx.as_mut() {
            ops.push(op);
            return Ok(());
        }
        let key = session.key;
        self.apply_settle(key, op)
    }

    fn apply_settle(&self, key: ChannelKey, op: TxOp) -> Result<(), AmqpError> {
        match op {
            TxOp::Ack(tag, multiple) => self.vhost.ack(key, tag, multiple),
            TxOp::Reject(tag, multiple, requeue) => self.vhost.reject(key, tag, multiple, requeue),
            TxOp::Publish(..) => Ok(()),
        }
    }

    fn tx_method(&mut self, ch: u16, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        let reply = |s: &Session, m: tx::AMQPMethod| s.send(out(ch, AMQPClass::Tx(m)));
        match m {
            tx::AMQPMethod::Select(_) => {
                let session = self.session(ch)?;
                if session.confirm {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                session.tx.get_or_insert_with(Vec::new);
                reply(self, tx::AMQPMethod::SelectOk(tx::SelectOk {}));
            }
            tx::AMQPMethod::Commit(_) => {
                let session = self.session(ch)?;
                let Some(ops) = session.tx.as_mut().map(std::mem::take) else {
                    return Err(AmqpError::channel(
                        code::PRECONDITION_FAILED,
                        "channel is not transactional",
                    ));
                };
                let key = session.key;
                for op in ops {
                    match op {
                        TxOp::Publish(message, body) => {
                            let (publish, properties) = *message;
                            self.route(ch, publish, properties, body)?
                        }
                        op => self.apply_settle(key, op)?,
                    }
                }
                reply(self, tx::AMQPMethod::CommitOk(tx::CommitOk {}));
            }
            tx::AMQPMethod::Rollback(_) => {
                let session = self.session(ch)?;
                match session.tx.as_mut() {
                    Some(ops) => ops.clear(),
                    None => {
                        return Err(AmqpError::channel(
                            code::PRECONDITION_FAILED,
                            "channel is not transactional",
                        ))
                    }
                }
                reply(self, tx::AMQPMethod::RollbackOk(tx::RollbackOk {}));
            }
            _ => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    "unexpected tx method",
                ))
            }
        }
        Ok(())
    }

    pub(super) fn on_header(
        &mut self,
        ch: u16,
        header: AMQPContentHeader,
    ) -> Result<(), AmqpError> {
        let frame_max = self.frame_max;
        let Some(session) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("content on closed channel {ch}"),
            ));
        };
        if session.closing {
            return Ok(());
        }
        match session.pending.as_mut() {
            Some(p) if p.properties.is_none() => {
                if header.class_id != 60 {
                    return Err(AmqpError::connection(
                        code::FRAME_ERROR,
                        format!("content header for class {} (expected 60)", header.class_id),
                    ));
                }
                p.properties = Some(header.properties);
                p.body_size = header.body_size;
                // Refuse absurd sizes before buffering anything.
                if header.body_size > 512 * 1024 * 1024 {
                    return Err(AmqpError::connection(
                        code::FRAME_ERROR,
                        format!("message body of {} bytes is too large", header.body_size),
                    ));
                }
                p.body
                    .reserve(header.body_size.min(frame_max as u64 * 4) as usize);
            }
            _ => {
                return Err(AmqpError::connection(
                    code::UNEXPECTED_FRAME,
                    format!("unexpected content header on channel {ch}"),
                ))
            }
        }
        self.complete_if_ready(ch)
    }

    pub(super) fn on_body(&mut self, ch: u16, body: Vec<u8>) -> Result<(), AmqpError> {
        let Some(session) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                format!("content on closed channel {ch}"),
            ));
        };
        if session.closing {
            return Ok(());
        }
        match session.pending.as_mut() {
            Some(p) if p.properties.is_some() => {
                if p.body.len() as u64 + body.len() as u64 > p.body_size {
                    return Err(AmqpError::connection(
                        code::FRAME_ERROR,
                        format!("content body exceeds the declared size {}", p.body_size),
                    ));
                }
                if p.body.is_empty() && body.len() as u64 == p.body_size {
                    p.body = body;
                } else {
                    p.body.extend_from_slice(&body);
                }
            }
            _ => {
                return Err(AmqpError::connection(
                    code::UNEXPECTED_FRAME,
                    format!("unexpected content body on channel {ch}"),
                ))
            }
        }
        self.complete_if_ready(ch)
    }

    fn complete_if_ready(&mut self, ch: u16) -> Result<(), AmqpError> {
        let Some(session) = self.channels.get_mut(&ch) else {
            return Ok(());
        };
        let ready = session
            .pending
            .as_ref()
            .is_some_and(|p| p.properties.is_some() && p.body.len() as u64 == p.body_size);
        if !ready {
            return Ok(());
        }
        let Some(Pending {
            publish,
            properties: Some(properties),
            body,
            ..
        }) = session.pending.take()
        else {
            return Ok(());
        };
        if let Some(ops) = session.tx.as_mut() {
            ops.push(TxOp::Publish(Box::new((publish, properties)), body));
            return Ok(());
        }
        match self.route(ch, publish, properties, body) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = if e.class_id == 0 { e.on(60, 40) } else { e };
                self.fail(ch, e)
            }
        }
    }

    /// Routes a complete message; sends basic.return and the confirm.
    fn route(
        &mut self,
        ch: u16,
        publish: basic::Publish,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Result<(), AmqpError> {
        let routed = self.vhost.publish(
            publish.exchange.as_str(),
            publish.routing_key.as_str(),
            properties,
            body,
        )?;
        if let Routed::Unroutable(properties, body) = routed {
            if publish.mandatory {
                let content = Content {
                    exchange: publish.exchange.to_string(),
                    routing_key: publish.routing_key.to_string(),
                    properties: *properties,
                    body,
                };
                let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: code::NO_ROUTE,
                    reply_text: short("NO_ROUTE"),
                    exchange: publish.exchange.clone(),
                    routing_key: publish.routing_key.clone(),
                }));
                self.send(Outbound::Frames(content_frames(
                    ch,
                    method,
                    &content,
                    self.frame_max,
                )));
            }
        }
        let Some(session) = self.channels.get_mut(&ch) else {
            return Ok(());
        };
        if session.confirm {
            session.publish_seq += 1;
            let tag = session.publish_seq;
            self.send(out(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: false,
                })),
            ));
        }
        Ok(())
    }
}
