//! A raw AMQP 0-9-1 peer for the tests that speak frames by hand (heartbeats,
//! races, malformed input, flow control): a socket and a read buffer, frames
//! written with amq-protocol's generator and read with its parser, so no
//! client library acts behind the test's back.

use std::time::Duration;

use amq_protocol::frame::{
    gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, ProtocolVersion, WriteContext,
};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::FieldTable;
use amq_protocol::uri::AMQPUri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// `frame` as amq-protocol encodes it.
pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("frame encodes")
        .into_inner()
        .0
}

/// `frames` encoded back to back, for one write.
pub fn encode_all(frames: &[AMQPFrame]) -> Vec<u8> {
    frames.iter().flat_map(encode).collect()
}

/// A method frame on channel `ch`.
pub fn method(ch: u16, m: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(ch, m)
}

/// channel.open for channel `ch`.
pub fn channel_open(ch: u16) -> AMQPFrame {
    method(
        ch,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
}

/// A clean connection.close (200, "bye").
pub fn connection_close() -> AMQPFrame {
    method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
}

/// A `basic.publish` of `body` on channel `ch` with its content frames.
pub fn publish(ch: u16, exchange: &str, routing_key: &str, body: &[u8]) -> [AMQPFrame; 3] {
    [
        method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            ch,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: Default::default(),
            },
        ),
        AMQPFrame::Body(ch, body.to_vec()),
    ]
}

/// The next frame from `sock`, buffering in `buf` what is read but not yet
/// parsed; `None` once the broker has closed the socket.
pub async fn next_frame<R: AsyncRead + Unpin>(
    sock: &mut R,
    buf: &mut Vec<u8>,
) -> Option<AMQPFrame> {
    loop {
        if !buf.is_empty() {
            match parse_frame(&buf[..]) {
                Ok((rest, frame)) => {
                    let used = buf.len() - rest.len();
                    buf.drain(..used);
                    return Some(frame);
                }
                Err(e) if e.is_incomplete() => {}
                Err(e) => panic!("unparsable input from the broker: {e:?}"),
            }
        }
        let mut chunk = vec![0u8; 64 * 1024];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// How a [`Peer`] behaves and what it asks for in the handshake.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Hang guard for each method the peer awaits.
    pub guard: Duration,
    /// Skip content frames (a delivery's) between methods instead of
    /// panicking on them.
    pub skip_content: bool,
    /// A failed write is not an error (the broker may already have hung up;
    /// what it answered is read afterwards); writes then time out after
    /// `guard`.
    pub tolerate_hangup: bool,
    /// tune-ok's heartbeat interval in seconds (0: none).
    pub heartbeat: u16,
    /// tune-ok's channel_max; `None`: the broker's.
    pub channel_max: Option<u16>,
    /// tune-ok's frame_max; `None`: the broker's.
    pub frame_max: Option<u32>,
    /// start-ok's client properties.
    pub client_properties: FieldTable,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            guard: Duration::from_secs(15),
            skip_content: false,
            tolerate_hangup: false,
            heartbeat: 0,
            channel_max: None,
            frame_max: None,
            client_properties: FieldTable::default(),
        }
    }
}

/// A raw AMQP peer: a socket and what it has read but not yet parsed.
pub struct Peer {
    pub sock: TcpStream,
    pub buf: Vec<u8>,
    pub opts: Opts,
}

impl Peer {
    /// A peer on an already connected socket (nothing sent yet).
    pub fn new(sock: TcpStream, opts: Opts) -> Peer {
        Peer {
            sock,
            buf: Vec::new(),
            opts,
        }
    }

    /// Connects to the broker at `url`, sends the protocol header and reads
    /// connection.start.
    pub async fn connect(url: &str, opts: Opts) -> Peer {
        let uri: AMQPUri = url.parse().expect("an AMQP URL");
        let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
        let sock = TcpStream::connect(addr).await.expect("connect");
        let mut peer = Peer::new(sock, opts);
        peer.start().await;
        peer
    }

    /// The handshake up to and including connection.open (not its answer),
    /// as `url`'s user on `url`'s vhost.
    pub async fn login(url: &str, opts: Opts) -> Peer {
        let mut peer = Peer::connect(url, opts).await;
        peer.log_in(url).await;
        peer
    }

    /// Connects to the broker at `url` (its user, password and vhost) and
    /// opens the connection.
    pub async fn open(url: &str, opts: Opts) -> Peer {
        let mut peer = Peer::login(url, opts).await;
        peer.open_ok().await;
        peer
    }

    /// Sends the protocol header and expects connection.start.
    pub async fn start(&mut self) {
        self.send(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()))
            .await;
        let start = self.next_method().await;
        assert!(
            matches!(
                start,
                Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
            ),
            "{start:?}"
        );
    }

    /// After connection.start: PLAIN start-ok as `url`'s user, tune-ok with
    /// the peer's options, and connection.open of `url`'s vhost.
    pub async fn log_in(&mut self, url: &str) {
        let uri: AMQPUri = url.parse().expect("an AMQP URL");
        let user = &uri.authority.userinfo;
        self.send(&method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: self.opts.client_properties.clone(),
                mechanism: "PLAIN".into(),
                response: format!("\0{}\0{}", user.username, user.password).into(),
                locale: "en_US".into(),
            })),
        ))
        .await;
        let (_, tune) = self.method().await;
        let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = tune else {
            panic!("expected connection.tune, got {tune:?}");
        };
        self.send_all(&[
            method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: self.opts.channel_max.unwrap_or(tune.channel_max),
                    frame_max: self.opts.frame_max.unwrap_or(tune.frame_max),
                    heartbeat: self.opts.heartbeat,
                })),
            ),
            method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: uri.vhost.as_str().into(),
                })),
            ),
        ])
        .await;
    }

    /// Expects connection.open-ok.
    pub async fn open_ok(&mut self) {
        let (ch, open_ok) = self.method().await;
        assert!(
            ch == 0
                && matches!(
                    open_ok,
                    AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
                ),
            "expected connection.open-ok, got {ch} {open_ok:?}"
        );
    }

    /// Opens channel `ch`, expecting open-ok.
    pub async fn open_channel(&mut self, ch: u16) {
        self.send(&channel_open(ch)).await;
        let got = self.method().await;
        assert!(
            matches!(
                got,
                (c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == ch
            ),
            "expected channel.open-ok on {ch}, got {got:?}"
        );
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &AMQPFrame) {
        self.send_raw(&encode(frame)).await;
    }

    /// Writes `frames` in one write, so the broker has them all at once.
    pub async fn send_all(&mut self, frames: &[AMQPFrame]) {
        self.send_raw(&encode_all(frames)).await;
    }

    /// Writes `bytes` as they are (see [`Opts::tolerate_hangup`]).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        if self.opts.tolerate_hangup {
            let _ = timeout(self.opts.guard, self.sock.write_all(bytes)).await;
        } else {
            self.sock.write_all(bytes).await.expect("write to broker");
        }
    }

    /// The next frame, or `None` once the broker has closed the socket.
    pub async fn recv(&mut self) -> Option<AMQPFrame> {
        next_frame(&mut self.sock, &mut self.buf).await
    }

    /// The next method (skipping heartbeats), or `None` once the broker has
    /// closed the socket. Content frames panic unless
    /// [`Opts::skip_content`]: use [`Peer::recv`] for them.
    pub async fn next_method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            match timeout(self.opts.guard, self.recv())
                .await
                .expect("the broker answers within the guard")?
            {
                AMQPFrame::Method(ch, m) => return Some((ch, m)),
                AMQPFrame::Heartbeat => continue,
                AMQPFrame::Header(..) | AMQPFrame::Body(..) if self.opts.skip_content => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next method (skipping heartbeats); panics at EOF.
    pub async fn method(&mut self) -> (u16, AMQPClass) {
        self.next_method()
            .await
            .expect("broker closed the connection")
    }
}
