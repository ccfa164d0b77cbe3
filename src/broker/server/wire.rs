//! Frames in and out of a socket, with `amq-protocol`'s codec: a reader that
//! checks sizes and frame ends before parsing, and a writer task that
//! coalesces queued frames into one write and sends heartbeats when idle.

use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::constants::FRAME_END;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::broker::core::{code, AmqpError};

/// What the writer task sends. Frames travel unboxed: boxing each would
/// cost an allocation per frame on the hottest path.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Outbound {
    /// One frame.
    Frame(AMQPFrame),
    /// Frames that belong together (a method with its content).
    Frames(Vec<AMQPFrame>),
    /// Raw bytes (the protocol header answer to a bad header).
    Raw(&'static [u8]),
    /// Flush, then close the socket.
    Close,
}

/// The writer's queue.
pub(super) type Writer = mpsc::UnboundedSender<Outbound>;

/// Starts the writer task. `heartbeat` (seconds, 0 = none) is read at each
/// idle wait, so it can be set after tuning.
pub(super) fn spawn_writer(
    mut socket: OwnedWriteHalf,
    heartbeat: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> (Writer, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outbound>();
    let task = tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let seconds = heartbeat.load(std::sync::atomic::Ordering::Relaxed);
            let next = if seconds == 0 {
                rx.recv().await
            } else {
                match tokio::time::timeout(Duration::from_secs_f64(seconds as f64 / 2.0), rx.recv())
                    .await
                {
                    Ok(next) => next,
                    Err(_) => Some(Outbound::Frame(AMQPFrame::Heartbeat)),
                }
            };
            let Some(first) = next else { break };
            let mut close = encode(first, &mut buf);
            while !close && buf.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => close = encode(more, &mut buf),
                    Err(_) => break,
                }
            }
            if socket.write_all(&buf).await.is_err() {
                break;
            }
            buf.clear();
            if close {
                let _ = socket.shutdown().await;
                break;
            }
        }
    });
    (tx, task)
}

/// Appends `out` to `buf`; returns whether the socket should close after.
fn encode(out: Outbound, buf: &mut Vec<u8>) -> bool {
    match out {
        Outbound::Frame(frame) => !encode_frame(&frame, buf),
        Outbound::Frames(frames) => !frames.iter().all(|f| encode_frame(f, buf)),
        Outbound::Raw(bytes) => {
            buf.extend_from_slice(bytes);
            false
        }
        Outbound::Close => true,
    }
}

/// Appends one frame; false if it could not be encoded (an encoder bug: the
/// stream is no longer trustworthy and the connection closes).
fn encode_frame(frame: &AMQPFrame, buf: &mut Vec<u8>) -> bool {
    match gen_frame(frame)(WriteContext::from(std::mem::take(buf))) {
        Ok(ctx) => {
            *buf = ctx.into_inner().0;
            true
        }
        Err(e) => {
            tracing::error!(error = ?e, ?frame, "cannot encode frame; closing the connection");
            false
        }
    }
}

/// Reads frames from a socket.
pub(super) struct Reader {
    socket: OwnedReadHalf,
    buf: Vec<u8>,
    /// Largest frame accepted (negotiated `frame_max`).
    pub frame_max: u32,
}

/// Why reading stopped.
pub(super) enum ReadError {
    /// The peer closed or the socket failed.
    Closed,
    /// Bytes that are not AMQP: close with this error.
    Protocol(AmqpError),
}

const KNOWN_CLASSES: [u16; 8] = [10, 20, 30, 40, 50, 60, 85, 90];

impl Reader {
    pub(super) fn new(socket: OwnedReadHalf) -> Self {
        Reader {
            socket,
            buf: Vec::with_capacity(64 * 1024),
            frame_max: amq_protocol::protocol::constants::FRAME_MIN_SIZE,
        }
    }

    /// Reads exactly `n` bytes (the protocol header).
    pub(super) async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    async fn fill(&mut self) -> Result<(), ReadError> {
        self.buf.reserve(64 * 1024);
        match self.socket.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
        }
    }

    /// The next frame. `idle` bounds the wait (two heartbeat intervals).
    pub(super) async fn next(&mut self, idle: Option<Duration>) -> Result<AMQPFrame, ReadError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            match idle {
                Some(limit) => match tokio::time::timeout(limit, self.fill()).await {
                    Ok(result) => result?,
                    Err(_) => {
                        tracing::info!("missed heartbeats: closing the connection");
                        return Err(ReadError::Closed);
                    }
                },
                None => self.fill().await?,
            }
        }
    }

    fn parse(&mut self) -> Result<Option<AMQPFrame>, ReadError> {
        if self.buf.len() < 7 {
            return Ok(None);
        }
        let kind = self.buf[0];
        if !matches!(kind, 1 | 2 | 3 | 8) {
            return Err(frame_error(format!("unknown frame type {kind}")));
        }
        let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
        if size.saturating_add(8) > self.frame_max {
            return Err(frame_error(format!(
                "frame size {} exceeds frame_max {}",
                size.saturating_add(8),
                self.frame_max
            )));
        }
        let total = size as usize + 8;
        if self.buf.len() < total {
            return Ok(None);
        }
        if self.buf[total - 1] != FRAME_END {
            return Err(frame_error(format!(
                "frame end byte {:#04x} (expected {FRAME_END:#04x})",
                self.buf[total - 1]
            )));
        }
        let parsed = parse_frame(&self.buf[..total]).map(|(_, frame)| frame);
        let frame = match parsed {
            Ok(frame) => frame,
            Err(_) if kind == 1 && size >= 4 => {
                let class = u16::from_be_bytes([self.buf[7], self.buf[8]]);
                let method = u16::from_be_bytes([self.buf[9], self.buf[10]]);
                let e = if KNOWN_CLASSES.contains(&class) {
                    AmqpError::connection(
                        code::SYNTAX_ERROR,
                        format!("cannot decode method {class}.{method} (unknown method or malformed arguments)"),
                    )
                } else {
                    AmqpError::connection(code::NOT_IMPLEMENTED, format!("unknown class {class}"))
                };
                return Err(ReadError::Protocol(e.on(class, method)));
            }
            Err(_) => return Err(frame_error(format!("cannot decode a frame of type {kind}"))),
        };
        self.buf.drain(..total);
        Ok(Some(frame))
    }
}

fn frame_error(detail: String) -> ReadError {
    ReadError::Protocol(AmqpError::connection(code::FRAME_ERROR, detail))
}
