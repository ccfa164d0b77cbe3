//! The connection state machine: protocol header, SASL (PLAIN and
//! AMQPLAIN), tuning, vhost, then frames routed to channels; `close` in both
//! directions, heartbeats, and errors closing with RabbitMQ's codes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::channel::ChannelSession;
use super::wire::{spawn_writer, Outbound, ReadError, Reader, Writer};
use crate::broker::core::{code, AmqpError, Core, Scope, VHost};

/// What this broker offers in `connection.tune`.
pub(super) const FRAME_MAX: u32 = 131_072;
const CHANNEL_MAX: u16 = 2047;
const HEARTBEAT: u16 = 60;
const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// A short string from any text, cut to 255 bytes rather than panicking.
pub(super) fn short(s: &str) -> ShortString {
    ShortString::try_new(crate::broker::core::error::truncate(s, 255)).unwrap_or_default()
}

/// One client connection.
pub(super) struct Session {
    pub id: u64,
    pub writer: Writer,
    pub vhost: Arc<VHost>,
    pub channels: HashMap<u16, ChannelSession>,
    pub channel_max: u16,
    pub frame_max: u32,
}

/// Serves one TCP connection to its end.
pub(super) async fn serve(
    core: Arc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    stopped: watch::Receiver<bool>,
) {
    let (read, write) = stream.into_split();
    let heartbeat = Arc::new(AtomicU16::new(0));
    let (writer, writer_task) = spawn_writer(write, heartbeat.clone());
    let mut reader = Reader::new(read);
    match handshake(&core, &mut reader, &writer, &heartbeat).await {
        Ok((vhost, channel_max, frame_max)) => {
            tracing::debug!(%peer, vhost = %vhost.name(), "connection open");
            let mut session = Session {
                id: core.next_connection_id(),
                writer: writer.clone(),
                vhost,
                channels: HashMap::new(),
                channel_max,
                frame_max,
            };
            let idle = match heartbeat.load(Ordering::Relaxed) {
                0 => None,
                s => Some(Duration::from_secs(2 * s as u64)),
            };
            session.run(&mut reader, idle, stopped).await;
            session.vhost.close_connection(session.id);
            tracing::debug!(%peer, "connection closed");
        }
        Err(Some(e)) => {
            tracing::info!(%peer, error = %e, "connection refused");
            let _ = close_connection(&writer, &mut reader, &e).await;
        }
        Err(None) => {}
    }
    let _ = writer.send(Outbound::Close);
    let _ = writer_task.await;
}

fn method(channel: u16, class: AMQPClass) -> Outbound {
    Outbound::Frame(AMQPFrame::Method(channel, class))
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    props.insert("product".into(), AMQPValue::LongString("warren".into()));
    props.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    props.insert("platform".into(), AMQPValue::LongString("Rust".into()));
    props.insert(
        "information".into(),
        AMQPValue::LongString("warren's embedded AMQP 0-9-1 broker".into()),
    );
    props
}

/// Expects a connection method on channel 0.
async fn expect(
    reader: &mut Reader,
    what: &str,
) -> Result<connection::AMQPMethod, Option<AmqpError>> {
    loop {
        match reader.next(Some(Duration::from_secs(30))).await {
            Ok(AMQPFrame::Method(0, AMQPClass::Connection(m))) => return Ok(m),
            Ok(AMQPFrame::Heartbeat) => continue,
            Ok(_) => {
                return Err(Some(AmqpError::connection(
                    code::COMMAND_INVALID,
                    format!("expected '{what}'"),
                )))
            }
            Err(ReadError::Closed) => return Err(None),
            Err(ReadError::Protocol(e)) => return Err(Some(e)),
        }
    }
}

/// Header, start/start-ok, tune/tune-ok, open/open-ok.
async fn handshake(
    core: &Core,
    reader: &mut Reader,
    writer: &Writer,
    heartbeat: &AtomicU16,
) -> Result<(Arc<VHost>, u16, u32), Option<AmqpError>> {
    let header = match tokio::time::timeout(Duration::from_secs(10), reader.read_exact(8)).await {
        Ok(Ok(header)) => header,
        _ => return Err(None),
    };
    if header != PROTOCOL_HEADER {
        // The spec: answer with the protocol we speak, then close.
        let _ = writer.send(Outbound::Raw(PROTOCOL_HEADER));
        return Err(None);
    }
    let _ = writer.send(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
    ));
    let start_ok = match expect(reader, "connection.start-ok").await? {
        connection::AMQPMethod::StartOk(s) => s,
        _ => {
            return Err(Some(AmqpError::connection(
                code::COMMAND_INVALID,
                "expected 'connection.start-ok'",
            )))
        }
    };
    let mechanism = start_ok.mechanism.as_str();
    let (user, password) =
        credentials(mechanism, start_ok.response.as_bytes()).ok_or_else(|| {
            Some(AmqpError::connection(
                code::ACCESS_REFUSED,
                format!("cannot read credentials for mechanism {mechanism}"),
            ))
        })?;
    if !core.authenticate(&user, &password) {
        return Err(Some(AmqpError::connection(
            code::ACCESS_REFUSED,
            format!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."),
        )));
    }
    let _ = writer.send(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max: CHANNEL_MAX,
            frame_max: FRAME_MAX,
            heartbeat: HEARTBEAT,
        })),
    ));
    let tune_ok = match expect(reader, "connection.tune-ok").await? {
        connection::AMQPMethod::TuneOk(t) => t,
        _ => {
            return Err(Some(AmqpError::connection(
                code::COMMAND_INVALID,
                "expected 'connection.tune-ok'",
            )))
        }
    };
    let frame_max = match tune_ok.frame_max {
        0 => FRAME_MAX,
        f => f.clamp(amq_protocol::protocol::constants::FRAME_MIN_SIZE, FRAME_MAX),
    };
    let channel_max = match tune_ok.channel_max {
        0 => CHANNEL_MAX,
        c => c.min(CHANNEL_MAX),
    };
    reader.frame_max = frame_max;
    heartbeat.store(tune_ok.heartbeat, Ordering::Relaxed);
    let open = match expect(reader, "connection.open").await? {
        connection::AMQPMethod::Open(o) => o,
        _ => {
            return Err(Some(AmqpError::connection(
                code::COMMAND_INVALID,
                "expected 'connection.open'",
            )))
        }
    };
    let name = open.virtual_host.as_str();
    let Some(vhost) = core.vhost(name) else {
        return Err(Some(AmqpError::connection(
            code::INVALID_PATH,
            format!("vhost '{name}' not found"),
        )));
    };
    let _ = writer.send(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    ));
    Ok((vhost, channel_max, frame_max))
}

/// PLAIN (`\0user\0password`) or AMQPLAIN (a field table without its
/// length prefix, with LOGIN and PASSWORD).
fn credentials(mechanism: &str, response: &[u8]) -> Option<(String, String)> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next()?;
            let user = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let password = String::from_utf8(parts.next()?.to_vec()).ok()?;
            Some((user, password))
        }
        "AMQPLAIN" => {
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..]).ok()?;
            let text = |key: &str| match table.inner().get(key)? {
                AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            };
            Some((text("LOGIN")?, text("PASSWORD")?))
        }
        _ => None,
    }
}

/// Sends `connection.close` and waits (briefly) for `close-ok`.
async fn close_connection(writer: &Writer, reader: &mut Reader, e: &AmqpError) -> Result<(), ()> {
    let _ = writer.send(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: e.code,
            reply_text: short(e.short_text()),
            class_id: e.class_id,
            method_id: e.method_id,
        })),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match reader.next(Some(left.max(Duration::from_millis(1)))).await {
            Ok(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))) => {
                return Ok(())
            }
            Ok(_) => continue,
            Err(_) => return Err(()),
        }
    }
}

impl Session {
    async fn run(
        &mut self,
        reader: &mut Reader,
        idle: Option<Duration>,
        mut stopped: watch::Receiver<bool>,
    ) {
        loop {
            let frame = tokio::select! {
                frame = reader.next(idle) => frame,
                _ = stopped.changed() => {
                    let e = AmqpError::connection(code::CONNECTION_FORCED, "broker shutdown");
                    let _ = close_connection(&self.writer, reader, &e).await;
                    return;
                }
            };
            let result = match frame {
                Ok(frame) => self.on_frame(frame),
                Err(ReadError::Closed) => return,
                Err(ReadError::Protocol(e)) => Err(e),
            };
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Closed) => return,
                Err(e) => {
                    tracing::info!(error = %e, "closing connection on error");
                    let _ = close_connection(&self.writer, reader, &e).await;
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, frame: AMQPFrame) -> Result<Flow, AmqpError> {
        match frame {
            AMQPFrame::Heartbeat => Ok(Flow::Continue),
            AMQPFrame::InvalidHeartbeat(_) => Err(AmqpError::connection(
                code::FRAME_ERROR,
                "heartbeat frame on a channel other than 0",
            )),
            AMQPFrame::ProtocolHeader(_) => Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                "protocol header after the handshake",
            )),
            AMQPFrame::Method(0, AMQPClass::Connection(m)) => self.on_connection_method(m),
            AMQPFrame::Method(0, class) => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "only connection methods are allowed on channel 0",
            )
            .on(class.get_amqp_class_id(), class.get_amqp_method_id())),
            AMQPFrame::Method(_, AMQPClass::Connection(m)) => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "connection methods are only allowed on channel 0",
            )
            .on(10, connection_method_id(&m))),
            AMQPFrame::Header(0, _) | AMQPFrame::Body(0, _) => Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                "content frame on channel 0",
            )),
            AMQPFrame::Method(channel, class) => self
                .on_channel_method(channel, class)
                .map(|()| Flow::Continue),
            AMQPFrame::Header(channel, header) => {
                self.on_header(channel, header).map(|()| Flow::Continue)
            }
            AMQPFrame::Body(channel, body) => self.on_body(channel, body).map(|()| Flow::Continue),
        }
    }

    fn on_connection_method(&mut self, m: connection::AMQPMethod) -> Result<Flow, AmqpError> {
        match m {
            connection::AMQPMethod::Close(close) => {
                tracing::debug!(code = close.reply_code, text = %close.reply_text, "client closed the connection");
                let _ = self.writer.send(method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                ));
                Ok(Flow::Closed)
            }
            connection::AMQPMethod::CloseOk(_) => Ok(Flow::Closed),
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => {
                Ok(Flow::Continue)
            }
            connection::AMQPMethod::UpdateSecret(_) => {
                let _ = self.writer.send(method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                ));
                Ok(Flow::Continue)
            }
            other => Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "unexpected connection method",
            )
            .on(10, connection_method_id(&other))),
        }
    }

    /// Reports a channel- or connection-level error raised on `channel`.
    pub(super) fn fail(&mut self, channel: u16, e: AmqpError) -> Result<(), AmqpError> {
        match e.scope {
            Scope::Connection => Err(e),
            Scope::Channel => {
                tracing::debug!(channel, error = %e, "closing channel on error");
                self.close_channel_with(channel, &e);
                Ok(())
            }
        }
    }

    pub(super) fn send(&self, out: Outbound) {
        let _ = self.writer.send(out);
    }
}

fn connection_method_id(m: &connection::AMQPMethod) -> u16 {
    AMQPClass::Connection(m.clone()).get_amqp_method_id()
}

/// Whether the connection goes on.
pub(super) enum Flow {
    Continue,
    Closed,
}

#[cfg(test)]
mod tests {
    use super::credentials;

    #[test]
    fn plain_and_amqplain_credentials() {
        assert_eq!(
            credentials("PLAIN", b"\0guest\0secret"),
            Some(("guest".into(), "secret".into()))
        );
        let amqplain = amq_protocol::auth::Credentials::new("u".into(), "p".into())
            .sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
        assert_eq!(
            credentials("AMQPLAIN", amqplain.as_bytes()),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(credentials("PLAIN", b"garbage"), None);
        assert_eq!(credentials("AMQPLAIN", b"\xff\xff"), None);
        assert_eq!(credentials("EXTERNAL", b""), None);
    }
}
