//! The per-connection writer task: encodes outgoing frames into one reusable buffer.
//!
//! Everything sent to a client goes through the connection's bounded [`Outbound`]
//! queue of [`Outgoing`] items; the writer drains it in batches, coalesces
//! consecutive publisher confirms into one `multiple` ack, flushes once per batch,
//! releases the batch's budget once written and sends heartbeats when idle.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::{gen_frame, AMQPFrame, GenError, WriteContext};
use amq_protocol::protocol::{basic, constants, AMQPClass, BasicProperties};
use amq_protocol::types::generation::{
    gen_id, gen_long_long_uint, gen_long_uint, gen_short_short_uint, gen_short_uint, gen_with_len,
};
use amq_protocol::types::ShortString;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::core::{ChannelEvent, ChannelSink, GetOk, Message};

use super::outbound::Outbound;

/// One item for the writer task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A complete frame (methods, heartbeats).
    Frame(Box<AMQPFrame>),
    /// An event from a core channel, for AMQP channel `.0`.
    Event(u16, ChannelEvent),
    /// `basic.get-ok` with its content.
    GetOk(u16, GetOk),
    /// New tuning: frame_max and heartbeat seconds.
    Tune(u32, u16),
    /// Flush everything, shut the socket down and stop.
    Close,
}

/// Sink routing a core channel's events into a connection's writer queue.
pub(crate) struct ServerSink {
    pub(crate) channel: u16,
    pub(crate) tx: Arc<Outbound>,
}

impl ChannelSink for ServerSink {
    fn send(&self, event: ChannelEvent) {
        let _ = self.tx.send(Outgoing::Event(self.channel, event));
    }

    fn has_room(&self) -> bool {
        self.tx.has_delivery_room()
    }

    fn accepts_reply(&self) -> bool {
        self.tx.accepts_reply()
    }
}

/// Append one generated item to `buf`; false if generation failed (buffer lost).
fn put<F>(buf: &mut Vec<u8>, f: F) -> bool
where
    F: Fn(WriteContext<Vec<u8>>) -> Result<WriteContext<Vec<u8>>, GenError>,
{
    match f(WriteContext::from(std::mem::take(buf))) {
        Ok(ctx) => {
            *buf = ctx.into_inner().0;
            true
        }
        Err(_) => false,
    }
}

pub(crate) struct Encoder {
    pub(crate) buf: Vec<u8>,
    frame_max: u32,
    /// Pending coalesced confirms: (channel, last tag, count).
    confirms: Vec<(u16, u64, u32)>,
    cancel_notify: bool,
}

impl Encoder {
    pub(crate) fn new(cancel_notify: bool) -> Self {
        Self {
            // Grows with the traffic (and shrinks back after a burst).
            buf: Vec::with_capacity(4 * 1024),
            frame_max: super::FRAME_MAX,
            confirms: Vec::new(),
            cancel_notify,
        }
    }

    fn frame(&mut self, f: &AMQPFrame) -> bool {
        put(&mut self.buf, gen_frame(f))
    }

    fn method(&mut self, ch: u16, m: AMQPClass) -> bool {
        self.frame(&AMQPFrame::Method(ch, m))
    }

    fn content(&mut self, ch: u16, props: &BasicProperties, body: &[u8]) -> bool {
        let size = body.len() as u64;
        let ok = put(&mut self.buf, |ctx| {
            let ctx = gen_short_short_uint(constants::FRAME_HEADER)(ctx)?;
            let ctx = gen_id(ch)(ctx)?;
            let ctx = gen_with_len(|ctx| {
                let ctx = gen_id(60)(ctx)?;
                let ctx = gen_short_uint(0)(ctx)?;
                let ctx = gen_long_long_uint(size)(ctx)?;
                basic::gen_properties(props)(ctx)
            })(ctx)?;
            gen_short_short_uint(constants::FRAME_END)(ctx)
        });
        if !ok {
            return false;
        }
        let chunk = (self.frame_max.max(4096) - 8) as usize;
        for part in body.chunks(chunk) {
            let len = part.len() as u32;
            if !put(&mut self.buf, |ctx| {
                let ctx = gen_short_short_uint(constants::FRAME_BODY)(ctx)?;
                let ctx = gen_id(ch)(ctx)?;
                gen_long_uint(len)(ctx)
            }) {
                return false;
            }
            self.buf.extend_from_slice(part);
            self.buf.push(constants::FRAME_END);
        }
        true
    }

    fn flush_confirms(&mut self) -> bool {
        let pending = std::mem::take(&mut self.confirms);
        for (ch, tag, n) in pending {
            let ok = self.method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: n > 1,
                })),
            );
            if !ok {
                return false;
            }
        }
        true
    }

    fn flush_confirms_for(&mut self, ch: u16) -> bool {
        if let Some(i) = self.confirms.iter().position(|c| c.0 == ch) {
            let (ch, tag, n) = self.confirms.swap_remove(i);
            return self.method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: n > 1,
                })),
            );
        }
        true
    }

    fn message_frames(&mut self, ch: u16, method: basic::AMQPMethod, msg: &Message) -> bool {
        self.method(ch, AMQPClass::Basic(method)) && self.content(ch, &msg.properties, &msg.body)
    }

    /// Encode one item; `Err(())` on encoding failure, `Ok(false)` on Close.
    pub(crate) fn encode(&mut self, item: Outgoing) -> Result<bool, ()> {
        let ok = match item {
            Outgoing::Frame(f) => self.flush_confirms() && self.frame(&f),
            Outgoing::Tune(frame_max, _) => {
                self.frame_max = frame_max;
                true
            }
            Outgoing::Close => {
                self.flush_confirms();
                return Ok(false);
            }
            Outgoing::GetOk(ch, g) => {
                let m = &g.message;
                self.flush_confirms_for(ch)
                    && self.message_frames(
                        ch,
                        basic::AMQPMethod::GetOk(basic::GetOk {
                            delivery_tag: g.delivery_tag,
                            redelivered: g.redelivered,
                            exchange: m.exchange.clone(),
                            routing_key: m.routing_key.clone(),
                            message_count: g.message_count,
                        }),
                        m,
                    )
            }
            Outgoing::Event(ch, ev) => match ev {
                ChannelEvent::Deliver(d) => {
                    let m = &d.message;
                    self.message_frames(
                        ch,
                        basic::AMQPMethod::Deliver(basic::Deliver {
                            consumer_tag: d.consumer_tag,
                            delivery_tag: d.delivery_tag,
                            redelivered: d.redelivered,
                            exchange: m.exchange.clone(),
                            routing_key: m.routing_key.clone(),
                        }),
                        m,
                    )
                }
                ChannelEvent::Return(r) => {
                    let m = &r.message;
                    self.flush_confirms_for(ch)
                        && self.message_frames(
                            ch,
                            basic::AMQPMethod::Return(basic::Return {
                                reply_code: r.reply_code,
                                reply_text: r.reply_text,
                                exchange: m.exchange.clone(),
                                routing_key: m.routing_key.clone(),
                            }),
                            m,
                        )
                }
                ChannelEvent::Confirm {
                    delivery_tag,
                    multiple,
                    ack,
                } => {
                    if ack && !multiple {
                        match self.confirms.iter_mut().find(|c| c.0 == ch) {
                            Some(c) => {
                                c.1 = delivery_tag;
                                c.2 += 1;
                            }
                            None => self.confirms.push((ch, delivery_tag, 1)),
                        }
                        true
                    } else {
                        let m = if ack {
                            basic::AMQPMethod::Ack(basic::Ack {
                                delivery_tag,
                                multiple,
                            })
                        } else {
                            basic::AMQPMethod::Nack(basic::Nack {
                                delivery_tag,
                                multiple,
                                requeue: false,
                            })
                        };
                        self.flush_confirms_for(ch) && self.method(ch, AMQPClass::Basic(m))
                    }
                }
                ChannelEvent::ConsumeOk { consumer_tag } => self.method(
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag,
                    })),
                ),
                ChannelEvent::Cancel { consumer_tag } => {
                    !self.cancel_notify
                        || self.method(
                            ch,
                            AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                                consumer_tag,
                                nowait: true,
                            })),
                        )
                }
            },
        };
        if ok {
            Ok(true)
        } else {
            Err(())
        }
    }
}

/// Writer loop: runs until [`Outgoing::Close`] or a write error, then
/// closes `out` (refusing further items) and the socket.
pub(crate) async fn run<W: AsyncWrite + Unpin>(
    mut sock: W,
    out: Arc<Outbound>,
    cancel_notify: Arc<std::sync::atomic::AtomicBool>,
) {
    write_all_items(&mut sock, &out, &cancel_notify).await;
    out.close();
    let _ = sock.flush().await;
    let _ = sock.shutdown().await;
}

async fn write_all_items<W: AsyncWrite + Unpin>(
    sock: &mut W,
    out: &Outbound,
    cancel_notify: &std::sync::atomic::AtomicBool,
) {
    let mut enc = Encoder::new(true);
    let mut batch: Vec<Outgoing> = Vec::with_capacity(256);
    let mut heartbeat: Option<Duration> = None;
    let heartbeat_frame = AMQPFrame::Heartbeat;
    loop {
        let taken = out.take(&mut batch, 256);
        if batch.is_empty() {
            match heartbeat {
                Some(hb) => {
                    if tokio::time::timeout(hb, out.items()).await.is_err() {
                        if !enc.frame(&heartbeat_frame) {
                            return;
                        }
                        if sock.write_all(&enc.buf).await.is_err() || sock.flush().await.is_err() {
                            return;
                        }
                        enc.buf.clear();
                    }
                }
                None => out.items().await,
            }
            continue;
        }
        enc.cancel_notify = cancel_notify.load(std::sync::atomic::Ordering::Relaxed);
        let mut closing = false;
        for item in batch.drain(..) {
            if let Outgoing::Tune(_, hb) = &item {
                heartbeat = (*hb > 0).then(|| Duration::from_millis(u64::from(*hb) * 500));
            }
            match enc.encode(item) {
                Ok(true) => {}
                Ok(false) | Err(()) => {
                    closing = true;
                    break;
                }
            }
            if enc.buf.len() >= 256 * 1024 {
                if sock.write_all(&enc.buf).await.is_err() {
                    return;
                }
                enc.buf.clear();
            }
        }
        // Whatever the loop stopped before is dropped with the batch.
        batch.clear();
        if !enc.flush_confirms() {
            closing = true;
        }
        if !enc.buf.is_empty() {
            // Flushed too: a TLS stream takes bytes into its own buffer
            // when the socket is full and writes them only on the next
            // write or flush (a no-op on TCP).
            if sock.write_all(&enc.buf).await.is_err() || sock.flush().await.is_err() {
                return;
            }
            enc.buf.clear();
            if enc.buf.capacity() > 4 * 1024 * 1024 {
                enc.buf.shrink_to(64 * 1024);
            }
        }
        // Written (to the kernel): the budget is free again.
        out.written(taken);
        if closing {
            return;
        }
    }
}

/// Build a `ShortString`, truncating to 255 bytes.
pub(crate) fn short(s: &str) -> ShortString {
    let mut cut = s.len().min(255);
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    ShortString::try_new(s.get(..cut).unwrap_or("")).unwrap_or_default()
}
