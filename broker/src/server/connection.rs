//! One AMQP connection over TCP: handshake, frame reading, channel 0, error closes.
//!
//! The reader side runs here (frame boundaries and limits are checked before frames
//! are handed to amq-protocol's parser); all output goes to the writer task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::error::codes;
use crate::core::snapshot::ConnectionInfo;
use crate::core::{AmqpError, Core, CoreConnection};

use super::channel::{After, ServerChannel};
use super::flow::Flow;
use super::limits::{Admission, INITIAL_FRAME_MAX};
use super::outbound::{Outbound, Outgoing, ServerSink};
use super::tables::{self, TableError};
use super::writer::{self, short};
use super::{CHANNEL_MAX, FRAME_MAX, HEARTBEAT};

/// Room made in the read buffer before a read once it runs low, so a busy
/// connection reads many frames per system call.
const READ_SPARE: usize = 16 * 1024;

const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a closed connection keeps reading (and dropping) the peer's input.
const LINGER: Duration = Duration::from_secs(1);
/// How long, at most, a connection the client closed stays open for the
/// client to hang up (RabbitMQ's `CLOSING_TIMEOUT`; shorter when the
/// heartbeat timeout is). Meanwhile every further connection.close gets a
/// close-ok: a client whose threads close it at once sends several, and
/// hanging up after the first leaves the others an EOF instead.
const CLOSED_LINGER: Duration = Duration::from_secs(30);
/// How often unacknowledged deliveries are checked against the consumer
/// timeout (RabbitMQ checks on its channel tick).
const CONSUMER_TIMEOUT_CHECK: Duration = Duration::from_secs(1);

/// A frame cut from the input: parsed, or a raw body frame (payload kept as is).
#[allow(clippy::large_enum_variant)] // short-lived, never stored
enum Incoming {
    Frame(AMQPFrame),
    Body(u16, BytesMut),
}

impl Incoming {
    /// Part of a publish: what blocks a connection while memory is short.
    fn is_publish(&self) -> bool {
        matches!(
            self,
            Incoming::Body(..)
                | Incoming::Frame(AMQPFrame::Header(..))
                | Incoming::Frame(AMQPFrame::Method(
                    _,
                    AMQPClass::Basic(basic::AMQPMethod::Publish(_))
                ))
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    StartOk,
    TuneOk,
    Open,
    Running,
    /// We sent connection.close and wait for close-ok.
    Closing,
    /// The client closed the connection and got close-ok; we wait for it to
    /// hang up (see [`CLOSED_LINGER`]).
    Closed,
    Done,
}

/// The two ends of a TCP connection, for operators.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Endpoints {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The broker's address the client reached.
    pub(crate) local: SocketAddr,
    /// Whether the connection runs over TLS.
    pub(crate) tls: bool,
}

struct Conn {
    core: Arc<Core>,
    admission: Arc<Admission>,
    peer: Option<IpAddr>,
    /// Both ends of the socket (`None` in-process).
    endpoints: Option<Endpoints>,
    connected_at: std::time::SystemTime,
    /// What the client sent in `connection.start-ok`, kept for operators.
    client_properties: FieldTable,
    auth_mechanism: String,
    /// An operator's request to close the connection (once it is open).
    forced: Option<watch::Receiver<Option<AmqpError>>>,
    /// The common name of the client's verified TLS certificate: the user
    /// an `EXTERNAL` login is.
    external: Option<String>,
    out: Arc<Outbound>,
    /// Blocked while the memory alarm is on (see `flow`).
    flow: Flow,
    phase: Phase,
    user: Option<String>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    conn: Option<CoreConnection>,
    channels: HashMap<u16, ServerChannel>,
    cancel_notify: Arc<AtomicBool>,
    close_deadline: Option<Instant>,
}

/// Whether `user` may log in from `peer`: like RabbitMQ, `guest` only from
/// loopback (`None` is an in-process peer).
fn may_log_in_from(user: &str, peer: Option<IpAddr>) -> bool {
    user != "guest" || peer.is_none_or(|ip| ip.to_canonical().is_loopback())
}

/// Serve one accepted socket until it closes. `endpoints` are the socket's
/// two ends (`None` for an in-process stream); `external` the common name of
/// its verified TLS client certificate, if any.
pub(crate) async fn serve<S>(
    stream: S,
    endpoints: Option<Endpoints>,
    external: Option<String>,
    core: Arc<Core>,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = endpoints.map(|e| e.peer.ip());
    let connected_at = std::time::SystemTime::now();
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Protocol header: answer a mismatch as soon as it is visible.
    // Small to start with: most connections are idle most of the time. The
    // buffer grows before each read while traffic flows (see `READ_SPARE`).
    let mut buf = BytesMut::with_capacity(4 * 1024);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while buf.len() < 8 {
        let n = match tokio::time::timeout_at(deadline, rd.read_buf(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return,
        };
        let seen = buf.len().min(8);
        if buf.get(..seen) != PROTOCOL_HEADER.get(..seen) {
            // A TLS record (handshake, TLS 1.x): the client wants amqps.
            // It gets the protocol header as any bad header does, which
            // its TLS layer reports as a server that does not speak TLS.
            if buf.starts_with(&[0x16, 0x03]) {
                tracing::info!(
                    ?peer,
                    "TLS client on a plain AMQP port: hung up on (it should use amqp://, \
                     or the TLS port)"
                );
            }
            let _ = wr.write_all(PROTOCOL_HEADER).await;
            let _ = wr.shutdown().await;
            return;
        }
        if n == 0 {
            return;
        }
    }
    buf.advance(8);

    let out = Arc::new(Outbound::new());
    let cancel_notify = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(writer::run(wr, out.clone(), cancel_notify.clone()));
    let flow = Flow::new(core.memory().clone());
    let mut c = Conn {
        core,
        admission,
        peer,
        endpoints,
        connected_at,
        client_properties: FieldTable::default(),
        auth_mechanism: String::new(),
        forced: None,
        external,
        out,
        flow,
        phase: Phase::StartOk,
        user: None,
        // Until tune-ok: a login needs no more, and an unauthenticated peer
        // gets no bigger buffer.
        frame_max: INITIAL_FRAME_MAX,
        channel_max: CHANNEL_MAX,
        heartbeat: 0,
        conn: None,
        channels: HashMap::new(),
        cancel_notify,
        close_deadline: Some(deadline),
    };
    c.send_start();
    c.run(&mut rd, buf, &mut shutdown).await;
    // Close channels (requeue unacked) and the core connection (exclusive queues).
    c.channels.clear();
    if let Some(conn) = c.conn.take() {
        conn.close();
    }
    let _ = c.out.send(Outgoing::Close);
    drop(c);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    // The writer has half-closed the socket. Read and drop what the peer
    // still sends until it hangs up (for a moment at most): closing with
    // unread input resets the connection, and a peer still writing (say, a
    // frame over frame_max) then loses the connection.close and its reply
    // code along with it. RabbitMQ lets such a peer read the close too.
    // On the heap: an array here would sit in every connection's task.
    let mut sink = vec![0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

fn bool_field(t: &mut FieldTable, k: &str, v: bool) {
    t.insert(k.into(), AMQPValue::Boolean(v));
}

fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

impl Conn {
    fn send(&self, ch: u16, m: AMQPClass) {
        let _ = self
            .out
            .send(Outgoing::Frame(Box::new(AMQPFrame::Method(ch, m))));
    }

    fn send_start(&self) {
        let mut caps = FieldTable::default();
        for k in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            bool_field(&mut caps, k, true);
        }
        let mut props = FieldTable::default();
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        props.insert("product".into(), lstr("warren"));
        props.insert("version".into(), lstr(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), lstr("Rust"));
        props.insert("cluster_name".into(), lstr("warren"));
        props.insert(
            "information".into(),
            lstr("warren embedded AMQP 0-9-1 broker"),
        );
        props.insert("copyright".into(), lstr("warren authors"));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: if self.external.is_some() {
                    "PLAIN AMQPLAIN EXTERNAL".into()
                } else {
                    "PLAIN AMQPLAIN".into()
                },
                locales: "en_US".into(),
            })),
        );
    }

    /// Send connection.close and wait for close-ok.
    fn close_with(&mut self, e: &AmqpError) {
        if matches!(self.phase, Phase::Closing | Phase::Closed | Phase::Done) {
            return;
        }
        tracing::debug!(code = e.code, text = %e.text, "closing connection");
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.phase = Phase::Closing;
        self.close_deadline = Some(Instant::now() + CLOSE_OK_TIMEOUT);
        // Channels are gone from the client's point of view: release their messages now.
        self.channels.clear();
    }

    /// Whether the reader must stop reading: blocked by the memory alarm,
    /// or replies piling up unread. Not once closing: close-ok must be read.
    fn paused(&self) -> bool {
        self.phase == Phase::Running && (self.flow.is_blocked() || self.out.control_full())
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let mut shutdown_seen = false;
        let mut ack_check = tokio::time::interval(CONSUMER_TIMEOUT_CHECK);
        ack_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Frames already read are handled until the connection pauses;
            // the rest wait in `buf` (at most one read's worth).
            while !self.paused() {
                match self.next_frame(&mut buf) {
                    Ok(Some(incoming)) => {
                        let publishing = incoming.is_publish();
                        let r = match incoming {
                            Incoming::Frame(f) => self.handle(f),
                            Incoming::Body(ch, raw) => {
                                let end = raw.len().saturating_sub(1);
                                self.on_body(ch, raw.get(7..end).unwrap_or_default())
                            }
                        };
                        if let Err(e) = r {
                            self.close_with(&e);
                        }
                        if self.phase == Phase::Running {
                            if let Some(blocked) = self.flow.after_frame(publishing) {
                                let _ = self.out.send(Outgoing::Frame(Box::new(blocked)));
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The stream is unusable past a framing error: send the close
                        // and hang up without waiting for close-ok.
                        self.close_with(&e);
                        self.phase = Phase::Done;
                        return;
                    }
                }
                if self.phase == Phase::Done {
                    return;
                }
            }
            if self.phase == Phase::Done || self.out.is_closed() {
                return;
            }
            if !shutdown_seen && *shutdown.borrow() {
                shutdown_seen = true;
                if self.phase == Phase::Closed {
                    return;
                }
                self.close_with(&AmqpError::new(
                    codes::CONNECTION_FORCED,
                    "broker forced connection closure with reason 'shutdown'",
                ));
            }
            if self.paused() {
                // Not reading: no heartbeat can come through, so none is
                // expected; a dead peer shows as the writer failing.
                let out = self.out.clone();
                tokio::select! {
                    unblocked = self.flow.unblocked(), if self.flow.is_blocked() => {
                        if let Some(f) = unblocked {
                            let _ = self.out.send(Outgoing::Frame(Box::new(f)));
                        }
                    }
                    () = out.control_room(), if !self.flow.is_blocked() => {}
                    () = out.closed() => return,
                    error = forced_close(self.forced.clone()) => self.forced_closed(&error),
                    changed = shutdown.changed(), if !shutdown_seen => {
                        if changed.is_err() {
                            shutdown_seen = true;
                        }
                    }
                }
                continue;
            }
            let mut deadline = self.close_deadline;
            if self.heartbeat > 0 && matches!(self.phase, Phase::Running) {
                let hb = Instant::now() + Duration::from_secs(u64::from(self.heartbeat) * 2);
                deadline = Some(deadline.map_or(hb, |d| d.min(hb)));
            }
            if buf.capacity() - buf.len() < READ_SPARE / 4 {
                buf.reserve(READ_SPARE);
            }
            let read = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, rd.read_buf(&mut buf)).await,
                    None => Ok(rd.read_buf(&mut buf).await),
                }
            };
            let out = self.out.clone();
            tokio::select! {
                r = read => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        if self.phase == Phase::Running {
                            tracing::debug!("missed heartbeats from client, closing");
                        }
                        return;
                    }
                },
                () = out.closed() => return,
                error = forced_close(self.forced.clone()) => self.forced_closed(&error),
                changed = shutdown.changed(), if !shutdown_seen => {
                    if changed.is_err() {
                        shutdown_seen = true;
                    }
                }
                _ = ack_check.tick(), if self.phase == Phase::Running && !self.channels.is_empty() => {
                    self.check_consumer_timeout();
                }
            }
        }
    }

    /// The core asked to close the connection (an operator, or an internal
    /// error): `connection.close` with its error.
    fn forced_closed(&mut self, error: &AmqpError) {
        self.forced = None;
        if error.code == codes::CONNECTION_FORCED {
            tracing::info!(reason = %error.text, "connection closed by an operator");
        } else {
            tracing::error!(code = error.code, text = %error.text, "the broker closes the connection");
        }
        self.close_with(error);
    }

    /// Closes each channel whose oldest delivery has waited for its ack
    /// longer than the consumer timeout.
    fn check_consumer_timeout(&mut self) {
        let Some(timeout) = self.core.consumer_timeout() else {
            return;
        };
        let now = std::time::Instant::now();
        for c in self.channels.values_mut() {
            c.check_consumer_timeout(timeout, now, &self.out);
        }
    }

    /// Cut the next complete frame out of `buf`, checking type, size and end
    /// marker, and the depth of its field tables before amq-protocol parses them.
    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, AmqpError> {
        let Some(&[ftype, ch_hi, ch_lo, s0, s1, s2, s3]) = buf.get(..7) else {
            return Ok(None);
        };
        if !matches!(ftype, 1 | 2 | 3 | 8) {
            return Err(AmqpError::new(
                codes::FRAME_ERROR,
                format!("unknown frame type {ftype}"),
            ));
        }
        // Checked from the header alone, in u64 (no overflow whatever the
        // peer declares), so nothing is reserved for an oversize frame.
        let total = u64::from(u32::from_be_bytes([s0, s1, s2, s3])) + 8;
        let max = self.frame_max.max(INITIAL_FRAME_MAX);
        let too_large = || {
            AmqpError::new(
                codes::FRAME_ERROR,
                format!("frame size {total} larger than negotiated maximum {max}"),
            )
        };
        if total > u64::from(max) {
            return Err(too_large());
        }
        let total = usize::try_from(total).map_err(|_| too_large())?;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        if buf.get(total - 1) != Some(&0xCE) {
            return Err(AmqpError::new(
                codes::FRAME_ERROR,
                "frame end marker missing (expected 0xCE)",
            ));
        }
        let raw = buf.split_to(total);
        if ftype == 3 {
            // Body payloads are opaque bytes: hand the slice over without re-collecting.
            let ch = u16::from_be_bytes([ch_hi, ch_lo]);
            return Ok(Some(Incoming::Body(ch, raw)));
        }
        let payload = raw.get(7..total - 1).unwrap_or_default();
        match tables::check_frame(ftype, payload) {
            Ok(()) => {}
            Err(TableError::TooDeep) => return Err(tables::too_deep(ftype, payload)),
            Err(TableError::Malformed) => return Err(Self::parse_error(ftype, payload)),
        }
        match parse_frame(&raw[..]) {
            Ok((_, f)) => Ok(Some(Incoming::Frame(f))),
            Err(_) => Err(Self::parse_error(ftype, payload)),
        }
    }

    fn parse_error(ftype: u8, payload: &[u8]) -> AmqpError {
        if let (1, Some(&[c0, c1, m0, m1])) = (ftype, payload.get(..4)) {
            let class = u16::from_be_bytes([c0, c1]);
            let method = u16::from_be_bytes([m0, m1]);
            if !known_method(class, method) {
                return AmqpError::not_implemented(format!(
                    "unknown method (class {class}, method {method})"
                ))
                .during(class, method);
            }
            return AmqpError::new(
                codes::SYNTAX_ERROR,
                format!("malformed arguments for method (class {class}, method {method})"),
            )
            .during(class, method);
        }
        AmqpError::new(
            codes::FRAME_ERROR,
            format!("malformed frame of type {ftype}"),
        )
    }

    fn handle(&mut self, frame: AMQPFrame) -> Result<(), AmqpError> {
        if self.phase == Phase::Closed {
            // Already answered; as RabbitMQ, answer each further close too.
            if let AMQPFrame::Method(0, AMQPClass::Connection(m)) = frame {
                match m {
                    connection::AMQPMethod::Close(_) => self.send_close_ok(),
                    connection::AMQPMethod::CloseOk(_) => self.phase = Phase::Done,
                    _ => {}
                }
            }
            return Ok(());
        }
        if self.phase == Phase::Closing {
            if let AMQPFrame::Method(0, AMQPClass::Connection(m)) = frame {
                match m {
                    connection::AMQPMethod::CloseOk(_) => self.phase = Phase::Done,
                    connection::AMQPMethod::Close(_) => {
                        self.send(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.phase = Phase::Done;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        match frame {
            AMQPFrame::Heartbeat => Ok(()),
            AMQPFrame::InvalidHeartbeat(_) => Err(AmqpError::new(
                codes::FRAME_ERROR,
                "heartbeat frame on a non-zero channel",
            )),
            AMQPFrame::ProtocolHeader(_) => Err(AmqpError::new(
                codes::FRAME_ERROR,
                "unexpected protocol header",
            )),
            AMQPFrame::Method(0, AMQPClass::Connection(m)) => self.on_connection_method(m),
            AMQPFrame::Method(0, m) => Err(AmqpError::command_invalid(format!(
                "method {}.{} not allowed on channel 0",
                m.get_amqp_class_id(),
                m.get_amqp_method_id()
            ))
            .during(m.get_amqp_class_id(), m.get_amqp_method_id())),
            AMQPFrame::Header(0, _) | AMQPFrame::Body(0, _) => Err(AmqpError::new(
                codes::UNEXPECTED_FRAME,
                "content frame on channel 0",
            )),
            _ if self.phase != Phase::Running => Err(AmqpError::command_invalid(
                "expected connection handshake method",
            )),
            AMQPFrame::Method(ch, m) => self.on_channel_method(ch, m),
            AMQPFrame::Header(ch, h) => {
                let Some(c) = self.channels.get_mut(&ch) else {
                    return Err(not_open(ch));
                };
                let after = c.on_header(h.class_id, h.body_size, h.properties, &self.out)?;
                self.after(ch, after);
                Ok(())
            }
            AMQPFrame::Body(ch, data) => self.on_body(ch, &data),
        }
    }

    fn on_body(&mut self, ch: u16, data: &[u8]) -> Result<(), AmqpError> {
        if self.phase != Phase::Running {
            return match self.phase {
                Phase::Closing | Phase::Closed | Phase::Done => Ok(()),
                _ => Err(AmqpError::command_invalid(
                    "expected connection handshake method",
                )),
            };
        }
        if ch == 0 {
            return Err(AmqpError::new(
                codes::UNEXPECTED_FRAME,
                "content frame on channel 0",
            ));
        }
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(not_open(ch));
        };
        let after = c.on_body(data, &self.out)?;
        self.after(ch, after);
        Ok(())
    }

    fn after(&mut self, ch: u16, a: After) {
        if let After::Remove = a {
            self.channels.remove(&ch);
        }
    }

    fn on_channel_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = &m {
            if self.channels.contains_key(&ch) {
                return Err(AmqpError::channel_error("second 'channel.open' seen").during(20, 10));
            }
            // Channel numbers run 1..=channel_max (the spec), which also
            // bounds how many are open; past it, RabbitMQ's 530 for its limit.
            if ch > self.channel_max {
                return Err(AmqpError::not_allowed(format!(
                    "channel number {ch} exceeds the negotiated channel_max ({})",
                    self.channel_max
                ))
                .during(20, 10));
            }
            let Some(conn) = self.conn.as_ref() else {
                return Err(AmqpError::command_invalid("connection not open"));
            };
            let core = conn.open_numbered_channel(
                ch,
                Box::new(ServerSink {
                    channel: ch,
                    tx: self.out.clone(),
                }),
            );
            let max_message_size = self.admission.limits.max_message_size;
            self.channels
                .insert(ch, ServerChannel::new(ch, core, max_message_size));
            self.send(
                ch,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
            );
            return Ok(());
        }
        let out = self.out.clone();
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::channel_error(format!(
                "expected 'channel.open' for channel {ch}"
            ))
            .during(m.get_amqp_class_id(), m.get_amqp_method_id()));
        };
        let after = c.on_method(m, &out)?;
        self.after(ch, after);
        Ok(())
    }

    fn on_connection_method(&mut self, m: connection::AMQPMethod) -> Result<(), AmqpError> {
        use connection::AMQPMethod as M;
        match (self.phase, m) {
            (Phase::StartOk, M::StartOk(s)) => self.on_start_ok(s),
            (Phase::TuneOk, M::TuneOk(t)) => {
                self.channel_max = if t.channel_max == 0 {
                    CHANNEL_MAX
                } else {
                    t.channel_max.min(CHANNEL_MAX)
                };
                self.frame_max = if t.frame_max == 0 {
                    FRAME_MAX
                } else {
                    t.frame_max.clamp(4096, FRAME_MAX)
                };
                self.heartbeat = t.heartbeat;
                let _ = self
                    .out
                    .send(Outgoing::Tune(self.frame_max, self.heartbeat));
                self.phase = Phase::Open;
                Ok(())
            }
            (Phase::Open, M::Open(o)) => {
                if let Some(max) = self.admission.over_connection_limit() {
                    return Err(AmqpError::not_allowed(format!(
                        "connection refused: node connection limit ({max}) is reached"
                    ))
                    .during(10, 40));
                }
                let user = self.user.clone().unwrap_or_default();
                let conn = self
                    .core
                    .open_connection(o.virtual_host.as_str(), &user)
                    .map_err(|e| e.during(10, 40))?;
                // Consumers refused for a full writer queue resume from it.
                self.out.set_resumer(conn.resumer());
                if let Some(e) = self.endpoints {
                    conn.set_info(self.info(e));
                }
                self.forced = Some(conn.forced_close());
                self.conn = Some(conn);
                self.phase = Phase::Running;
                self.close_deadline = None;
                self.send(0, AMQPClass::Connection(M::OpenOk(connection::OpenOk {})));
                Ok(())
            }
            (Phase::Running, M::Close(_)) => {
                // Release everything before answering, as RabbitMQ does: the
                // client may reconnect at once and redeclare its exclusive queues.
                self.channels.clear();
                if let Some(conn) = self.conn.take() {
                    conn.close();
                }
                self.send_close_ok();
                self.phase = Phase::Closed;
                let linger = match self.heartbeat {
                    0 => CLOSED_LINGER,
                    hb => CLOSED_LINGER.min(Duration::from_secs(u64::from(hb))),
                };
                self.close_deadline = Some(Instant::now() + linger);
                Ok(())
            }
            (_, M::Close(_)) => {
                self.channels.clear();
                self.send_close_ok();
                self.phase = Phase::Done;
                Ok(())
            }
            (_, M::CloseOk(_)) => {
                self.phase = Phase::Done;
                Ok(())
            }
            (Phase::Running, M::Blocked(_) | M::Unblocked(_)) => Ok(()),
            (Phase::Running, M::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(M::UpdateSecretOk(connection::UpdateSecretOk {})),
                );
                Ok(())
            }
            (_, m) => {
                let c = AMQPClass::Connection(m);
                Err(AmqpError::command_invalid(format!(
                    "unexpected method connection.{} in this state",
                    c.get_amqp_method_id()
                ))
                .during(10, c.get_amqp_method_id()))
            }
        }
    }

    /// What operators see of this connection.
    fn info(&self, e: Endpoints) -> ConnectionInfo {
        ConnectionInfo {
            name: format!("{} -> {}", e.peer, e.local),
            peer_host: e.peer.ip().to_canonical().to_string(),
            peer_port: e.peer.port(),
            host: e.local.ip().to_canonical().to_string(),
            port: e.local.port(),
            client_properties: self.client_properties.clone(),
            frame_max: self.frame_max,
            channel_max: self.channel_max,
            timeout: self.heartbeat,
            protocol: "AMQP 0-9-1".to_owned(),
            auth_mechanism: self.auth_mechanism.clone(),
            ssl: e.tls,
            connected_at: self.connected_at,
        }
    }

    fn send_close_ok(&self) {
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }

    fn on_start_ok(&mut self, s: connection::StartOk) -> Result<(), AmqpError> {
        if let Some(AMQPValue::FieldTable(caps)) = s.client_properties.inner().get("capabilities") {
            let on = |k: &str| matches!(caps.inner().get(k), Some(AMQPValue::Boolean(true)));
            self.cancel_notify
                .store(on("consumer_cancel_notify"), Ordering::Relaxed);
            self.flow.set_capable(on("connection.blocked"));
        }
        let mech = s.mechanism.as_str();
        self.auth_mechanism = mech.to_owned();
        self.client_properties = s.client_properties.clone();
        let creds = match mech {
            "PLAIN" => parse_plain(s.response.as_bytes()),
            "AMQPLAIN" => parse_amqplain(s.response.as_bytes()),
            // The user the client's verified certificate names, who must
            // exist (as in RabbitMQ); its password plays no part.
            "EXTERNAL" => match &self.external {
                Some(user) if self.core.has_user(user) => {
                    return self.logged_in(user.clone(), mech);
                }
                Some(user) => {
                    return Err(AmqpError::access_refused(format!(
                        "EXTERNAL login refused: no user '{user}' (the client \
                         certificate's common name)"
                    ))
                    .during(10, 11))
                }
                None => {
                    return Err(AmqpError::access_refused(
                        "EXTERNAL login needs a TLS client certificate the broker verified",
                    )
                    .during(10, 11))
                }
            },
            _ => {
                return Err(AmqpError::command_invalid(format!(
                    "unknown authentication mechanism '{mech}'"
                ))
                .during(10, 11))
            }
        };
        match creds {
            Some((user, _)) if !may_log_in_from(&user, self.peer) => Err(
                AmqpError::access_refused(format!("User '{user}' can only connect via localhost"))
                    .during(10, 11),
            ),
            Some((user, pass)) if self.core.authenticate(&user, &pass) => {
                self.logged_in(user, mech)
            }
            _ => Err(AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mech}. For details see the \
                 broker logfile."
            ))
            .during(10, 11)),
        }
    }

    /// `user` is authenticated: on to tune (guest only from loopback).
    fn logged_in(&mut self, user: String, mech: &str) -> Result<(), AmqpError> {
        if !may_log_in_from(&user, self.peer) {
            return Err(AmqpError::access_refused(format!(
                "User '{user}' can only connect via localhost"
            ))
            .during(10, 11));
        }
        tracing::debug!(%user, mechanism = mech, "logged in");
        self.user = Some(user);
        self.phase = Phase::TuneOk;
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: CHANNEL_MAX,
                frame_max: FRAME_MAX,
                heartbeat: HEARTBEAT,
            })),
        );
        Ok(())
    }
}

/// Resolves with the error once the core asks to close the connection;
/// never without a watch (or once the watch is gone).
async fn forced_close(rx: Option<watch::Receiver<Option<AmqpError>>>) -> AmqpError {
    if let Some(mut rx) = rx {
        loop {
            if let Some(error) = rx.borrow_and_update().clone() {
                return error;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
    std::future::pending().await
}

fn not_open(ch: u16) -> AmqpError {
    AmqpError::channel_error(format!("expected 'channel.open' for channel {ch}"))
}

fn parse_plain(resp: &[u8]) -> Option<(String, String)> {
    let mut parts = resp.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        String::from_utf8(user.to_vec()).ok()?,
        String::from_utf8(pass.to_vec()).ok()?,
    ))
}

fn parse_amqplain(resp: &[u8]) -> Option<(String, String)> {
    // The response is a field table without its length prefix, parsed
    // recursively below: check its depth first.
    super::tables::check_table_body(resp).ok()?;
    let mut framed = Vec::with_capacity(resp.len() + 4);
    framed.extend_from_slice(&u32::try_from(resp.len()).ok()?.to_be_bytes());
    framed.extend_from_slice(resp);
    let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
    let get = |k: &str| -> Option<String> {
        match table.inner().get(k)? {
            AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    };
    Some((get("LOGIN")?, get("PASSWORD")?))
}

fn known_method(class: u16, method: u16) -> bool {
    match class {
        10 => matches!(
            method,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method, 10 | 11),
        40 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method, 10 | 11),
        90 => matches!(method, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

#[cfg(test)]
mod peer_tests {
    use super::may_log_in_from;

    #[test]
    fn guest_logs_in_only_from_loopback() {
        let ip = |s: &str| Some(s.parse().expect("an address"));
        assert!(may_log_in_from("guest", ip("127.0.0.1")));
        assert!(may_log_in_from("guest", ip("::1")));
        assert!(may_log_in_from("guest", ip("::ffff:127.0.0.1")));
        assert!(may_log_in_from("guest", None));
        assert!(!may_log_in_from("guest", ip("10.0.0.7")));
        assert!(!may_log_in_from("guest", ip("2001:db8::1")));
        assert!(may_log_in_from("alice", ip("10.0.0.7")));
    }
}
