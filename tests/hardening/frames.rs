//! Frame-level limits: deep tables, frame sizes before tune, content sizes, channel and connection limits.
//!
//! Each attack goes over TCP from a raw peer (frames from amq-protocol's
//! generator; only tables deeper than its recursive encoder can write are
//! built by hand, iteratively) and asserts the close the broker answers with,
//! then that a new client (lapin) is still served. What RabbitMQ defines and
//! a test can reach without reconfiguring it runs on both brokers.

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{
    basic, channel, connection, exchange, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use tokio::time::timeout;

use crate::common::raw::{channel_open, encode, Opts, Peer};
use crate::common::{embedded_broker, rabbitmq_url, repo, unique};

/// Hang guard for anything the broker must do.
const GUARD: Duration = Duration::from_secs(15);
/// The field-table depth the broker accepts (the outermost table is 1).
const MAX_DEPTH: usize = 100;

crate::on_both_brokers!(
    a_frame_over_4096_bytes_before_tune_is_refused,
    a_frame_header_declaring_over_4096_bytes_before_tune_is_refused_at_once,
    a_channel_past_channel_max_is_refused_with_530,
);

// ---------------------------------------------------------------- helpers

/// A field table (length prefix included) whose containers nest `depth`
/// deep, the table itself counting 1: key "d" → array → array → … → empty
/// array. Written iteratively: amq-protocol's encoder recurses, like its
/// parser, and could not write the deepest of these.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 2 + 5 * depth);
    if depth < 2 {
        out.extend_from_slice(&[0; 4]);
        return out;
    }
    out.extend_from_slice(&len32(2 + 5 * (depth - 1)));
    out.extend_from_slice(&[1, b'd']);
    for level in 2..=depth {
        out.push(b'A');
        out.extend_from_slice(&len32(5 * (depth - level)));
    }
    out
}

/// The same table as amq-protocol values (fine for the depths it handles).
fn nested_value(depth: usize) -> FieldTable {
    let mut inner: Option<AMQPValue> = None;
    for _ in 1..depth {
        inner = Some(AMQPValue::FieldArray(FieldArray::from(
            inner.into_iter().collect::<Vec<_>>(),
        )));
    }
    let mut table = FieldTable::default();
    if let Some(v) = inner {
        table.insert("d".into(), v);
    }
    table
}

fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).expect("fits a u32").to_be_bytes()
}

/// `frame` as amq-protocol encodes it, holding an empty field table whose
/// 4 length bytes start `at` bytes into the payload, with `table` in its
/// place (and the frame's size adjusted to match).
fn splice_table(frame: &AMQPFrame, at: usize, table: &[u8]) -> Vec<u8> {
    let mut bytes = encode(frame);
    let start = 7 + at;
    assert_eq!(
        bytes.get(start..start + 4),
        Some(&[0u8; 4][..]),
        "no empty table at payload offset {at} of {frame:?}"
    );
    bytes.splice(start..start + 4, table.iter().copied());
    let payload = bytes.len() - 8;
    bytes[3..7].copy_from_slice(&len32(payload));
    bytes
}

/// Where the empty table sits in `frame`'s payload: first in start-ok,
/// after the flags in a content header with only `headers`, last in the
/// other methods.
fn table_offset(frame: &AMQPFrame) -> usize {
    match frame {
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::StartOk(_))) => 4,
        AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => 6,
        AMQPFrame::Header(..) => 14,
        _ => encode(frame).len() - 8 - 4,
    }
}

/// `frame` (holding an empty table) with its table nested `depth` deep.
fn with_depth(frame: &AMQPFrame, depth: usize) -> Vec<u8> {
    splice_table(frame, table_offset(frame), &nested_table(depth))
}

fn start_ok(client_properties: FieldTable, mechanism: &str, response: &[u8]) -> AMQPFrame {
    AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: mechanism.into(),
            response: response.to_vec().into(),
            locale: "en_US".into(),
        })),
    )
}

fn guest_start_ok() -> AMQPFrame {
    start_ok(FieldTable::default(), "PLAIN", b"\0guest\0guest")
}

/// The peer's options: the hang guard, writes that outlive a broker that
/// hung up, and `channel_max` in tune-ok (0: the broker's).
fn opts(channel_max: u16) -> Opts {
    Opts {
        guard: GUARD,
        tolerate_hangup: true,
        channel_max: (channel_max != 0).then_some(channel_max),
        ..Opts::default()
    }
}

/// How the broker ended a connection.
#[derive(Debug, PartialEq)]
enum Ended {
    /// With connection.close: code, class id, method id.
    Close(u16, u16, u16, String),
    /// By hanging up (EOF or reset) without connection.close.
    HungUp,
}

impl Peer {
    /// How the broker ends this connection: the first connection.close it
    /// sends (other methods before it are skipped), or its hanging up.
    async fn ended(&mut self) -> Ended {
        loop {
            match self.next_method().await {
                None => return Ended::HungUp,
                Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                    return Ended::Close(
                        c.reply_code,
                        c.class_id,
                        c.method_id,
                        c.reply_text.to_string(),
                    )
                }
                Some(_) => continue,
            }
        }
    }

    /// The broker's connection.close: code, class id and method id.
    async fn closed_with(&mut self) -> (u16, u16, u16) {
        match self.ended().await {
            Ended::Close(code, class, method, text) => {
                eprintln!("closed with {code} ({class}, {method}): {text}");
                (code, class, method)
            }
            Ended::HungUp => panic!("the broker hung up without connection.close"),
        }
    }
}

/// A new client (lapin) is served by the broker at `url`: it declares a
/// queue, publishes to it and gets the message back.
async fn served(url: &str) {
    let conn = timeout(
        GUARD,
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect within the guard")
    .expect("a new client connects");
    served_on(conn).await;
}

/// `conn` declares a queue, publishes to it and gets the message back.
async fn served_on(conn: lapin::Connection) {
    let ch = conn.create_channel().await.expect("a channel");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    ch.basic_publish(
        "".into(),
        q.name().clone(),
        BasicPublishOptions::default(),
        b"still served",
        lapin::BasicProperties::default(),
    )
    .await
    .expect("basic.publish");
    let got = timeout(
        GUARD,
        ch.basic_get(q.name().clone(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get within the guard")
    .expect("basic.get");
    assert_eq!(
        got.map(|m| m.delivery.data.clone()),
        Some(b"still served".to_vec())
    );
    let _ = conn.close(200, "bye".into()).await;
}

// ------------------------------------------------------------ deep tables

/// One method carrying a table, sent with that table nested deep: what it
/// needs first, and the reply it gets when the table is acceptable.
struct Case {
    name: &'static str,
    /// The frame, with an empty table to nest.
    frame: AMQPFrame,
    /// Frames sent first (prerequisites).
    before: Vec<AMQPFrame>,
    /// Class and method ids of the frame (0, 0 for a content header).
    ids: (u16, u16),
}

fn declare_queue(ch: u16, name: &str, arguments: FieldTable) -> AMQPFrame {
    AMQPFrame::Method(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments,
        })),
    )
}

fn declare_exchange(ch: u16, name: &str, arguments: FieldTable) -> AMQPFrame {
    AMQPFrame::Method(
        ch,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: "direct".into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments,
        })),
    )
}

fn publish(ch: u16, routing_key: &str) -> AMQPFrame {
    AMQPFrame::Method(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

fn header(ch: u16, body_size: u64, properties: BasicProperties) -> AMQPFrame {
    AMQPFrame::Header(
        ch,
        AMQPContentHeader {
            class_id: 60,
            body_size,
            properties,
        },
    )
}

/// Every method a client may send with a table, on channel 1, plus a
/// content header's `headers`; names unique to this call.
fn cases() -> Vec<Case> {
    let q = unique("deep-q");
    let x = unique("deep-x");
    let empty = FieldTable::default;
    vec![
        Case {
            name: "exchange.declare",
            frame: declare_exchange(1, &unique("deep-x"), empty()),
            before: vec![],
            ids: (40, 10),
        },
        Case {
            name: "exchange.bind",
            frame: AMQPFrame::Method(
                1,
                AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                    destination: x.as_str().into(),
                    source: "amq.direct".into(),
                    routing_key: "k".into(),
                    nowait: false,
                    arguments: empty(),
                })),
            ),
            before: vec![declare_exchange(1, &x, empty())],
            ids: (40, 30),
        },
        Case {
            name: "exchange.unbind",
            frame: AMQPFrame::Method(
                1,
                AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                    destination: x.as_str().into(),
                    source: "amq.direct".into(),
                    routing_key: "k".into(),
                    nowait: false,
                    arguments: empty(),
                })),
            ),
            before: vec![declare_exchange(1, &x, empty())],
            ids: (40, 40),
        },
        Case {
            name: "queue.declare",
            frame: declare_queue(1, &unique("deep-q"), empty()),
            before: vec![],
            ids: (50, 10),
        },
        Case {
            name: "queue.bind",
            frame: AMQPFrame::Method(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: q.as_str().into(),
                    exchange: "amq.direct".into(),
                    routing_key: "k".into(),
                    nowait: false,
                    arguments: empty(),
                })),
            ),
            before: vec![declare_queue(1, &q, empty())],
            ids: (50, 20),
        },
        Case {
            name: "queue.unbind",
            frame: AMQPFrame::Method(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                    queue: q.as_str().into(),
                    exchange: "amq.direct".into(),
                    routing_key: "k".into(),
                    arguments: empty(),
                })),
            ),
            before: vec![declare_queue(1, &q, empty())],
            ids: (50, 50),
        },
        Case {
            name: "basic.consume",
            frame: AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: q.as_str().into(),
                    consumer_tag: "".into(),
                    no_local: false,
                    no_ack: true,
                    exclusive: false,
                    nowait: false,
                    arguments: empty(),
                })),
            ),
            before: vec![declare_queue(1, &q, empty())],
            ids: (60, 20),
        },
        Case {
            name: "content header",
            frame: header(1, 0, BasicProperties::default().with_headers(empty())),
            before: vec![declare_queue(1, &q, empty()), publish(1, &q)],
            ids: (0, 0),
        },
    ]
}

/// Sends `case`'s prerequisites on a fresh channel 1, reading their replies.
async fn prepare(peer: &mut Peer, case: &Case) {
    peer.open_channel(1).await;
    for frame in &case.before {
        peer.send(frame).await;
        if !matches!(
            frame,
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(_)))
        ) {
            let reply = peer.next_method().await;
            assert!(
                matches!(reply, Some((1, _))),
                "{}: prerequisite {frame:?} got {reply:?}",
                case.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_ok_nested_26000_deep_closes_only_that_connection() {
    let broker = embedded_broker().await;
    let url = broker.url();
    // ~130 KB of arrays in client-properties: before any login, this took
    // the whole process down with a tokio worker's stack. Now the frame is
    // over the 4096 bytes allowed before tune.
    let mut peer = Peer::connect(&url, opts(0)).await;
    let deep = with_depth(
        &start_ok(FieldTable::default(), "PLAIN", b"\0guest\0guest"),
        26_000,
    );
    assert!(deep.len() > 100_000, "{}", deep.len());
    peer.send_raw(&deep).await;
    assert_eq!(peer.closed_with().await, (501, 0, 0));
    // 800 levels fit in 4096 bytes and are still far too deep for the parser
    // on a 2 MiB stack: refused by depth, with the method's ids.
    let mut peer = Peer::connect(&url, opts(0)).await;
    let deep = with_depth(&guest_start_ok(), 800);
    assert!(deep.len() <= 4096, "{}", deep.len());
    peer.send_raw(&deep).await;
    assert_eq!(peer.closed_with().await, (502, 10, 11));
    served(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqplain_response_nested_deep_is_refused() {
    let broker = embedded_broker().await;
    let url = broker.url();
    // AMQPLAIN's response is a field table without its length prefix, which
    // the broker parses for LOGIN and PASSWORD.
    let table = nested_table(800);
    let response = &table[4..];
    let mut peer = Peer::connect(&url, opts(0)).await;
    peer.send(&start_ok(FieldTable::default(), "AMQPLAIN", response))
        .await;
    assert_eq!(peer.closed_with().await, (403, 10, 11));
    served(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_tables_after_login_close_the_connection_with_502() {
    let broker = embedded_broker().await;
    let url = broker.url();
    let mut all = cases();
    // A server-only method is parsed all the same when a client sends it.
    all.push(Case {
        name: "connection.start from a client",
        frame: AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: FieldTable::default(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            })),
        ),
        before: vec![],
        ids: (10, 10),
    });
    for case in all {
        let mut peer = Peer::open(&url, opts(0)).await;
        prepare(&mut peer, &case).await;
        // 20,000 levels in ~100 KB, within frame_max after tune.
        let deep = with_depth(&case.frame, 20_000);
        assert!(deep.len() < 131_072, "{}", deep.len());
        peer.send_raw(&deep).await;
        let (code, class, method) = peer.closed_with().await;
        assert_eq!(
            (code, (class, method)),
            (502, case.ids),
            "{}: wrong close",
            case.name
        );
    }
    served(&url).await;
}

/// The reply `case.frame` gets when its table is acceptable: the method's
/// -ok, or for a content header, the message got back with its headers.
async fn assert_accepted(peer: &mut Peer, case: &Case, depth: usize) {
    if let AMQPFrame::Header(..) = case.frame {
        let AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Publish(p))) =
            &case.before.last().expect("the publish")
        else {
            panic!("a content header case ends its prerequisites with basic.publish");
        };
        peer.send(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: p.routing_key.clone(),
                no_ack: true,
            })),
        ))
        .await;
        let got = peer.next_method().await;
        assert!(
            matches!(
                got,
                Some((1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))))
            ),
            "{}: {got:?}",
            case.name
        );
        let head = timeout(GUARD, peer.recv()).await.expect("a content header");
        let Some(AMQPFrame::Header(1, head)) = head else {
            panic!("{}: expected the content header, got {head:?}", case.name);
        };
        assert_eq!(
            head.properties.headers().as_ref(),
            Some(&nested_value(depth)),
            "{}: headers changed on the way",
            case.name
        );
        return;
    }
    let reply = peer.next_method().await;
    let ok = match &reply {
        Some((1, AMQPClass::Exchange(m))) => matches!(
            m,
            exchange::AMQPMethod::DeclareOk(_)
                | exchange::AMQPMethod::BindOk(_)
                | exchange::AMQPMethod::UnbindOk(_)
        ),
        Some((1, AMQPClass::Queue(m))) => matches!(
            m,
            queue::AMQPMethod::DeclareOk(_)
                | queue::AMQPMethod::BindOk(_)
                | queue::AMQPMethod::UnbindOk(_)
        ),
        Some((1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) => true,
        _ => false,
    };
    assert!(ok, "{} with a table {depth} deep: {reply:?}", case.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_depth_100_is_served_and_101_is_refused_with_502() {
    let broker = embedded_broker().await;
    let url = broker.url();
    for case in cases() {
        let mut peer = Peer::open(&url, opts(0)).await;
        prepare(&mut peer, &case).await;
        peer.send_raw(&with_depth(&case.frame, MAX_DEPTH)).await;
        assert_accepted(&mut peer, &case, MAX_DEPTH).await;
        if let AMQPFrame::Header(..) = case.frame {
            peer.send(case.before.last().expect("the publish")).await;
        }
        peer.send_raw(&with_depth(&case.frame, MAX_DEPTH + 1)).await;
        let (code, class, method) = peer.closed_with().await;
        assert_eq!(
            (code, (class, method)),
            (502, case.ids),
            "{}: a table {} deep",
            case.name,
            MAX_DEPTH + 1
        );
    }
    // In client-properties, before login.
    let mut peer = Peer::connect(&url, opts(0)).await;
    peer.send_raw(&with_depth(&guest_start_ok(), MAX_DEPTH))
        .await;
    let tune = peer.next_method().await;
    assert!(
        matches!(
            tune,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
        ),
        "{tune:?}"
    );
    let mut peer = Peer::connect(&url, opts(0)).await;
    peer.send_raw(&with_depth(&guest_start_ok(), MAX_DEPTH + 1))
        .await;
    assert_eq!(peer.closed_with().await, (502, 10, 11));
    served(&url).await;
}

// --------------------------------------------------- frame size before tune

/// A start-ok whose client properties make its payload `size` bytes.
fn start_ok_of_size(size: usize) -> Vec<u8> {
    let base = encode(&guest_start_ok()).len() - 8;
    // One entry: key "pad" (1 + 3), tag 'S', length (4), then the string.
    let pad = size - base - (1 + 3 + 1 + 4);
    let mut props = FieldTable::default();
    props.insert("pad".into(), AMQPValue::LongString(vec![b'x'; pad].into()));
    let frame = encode(&start_ok(props, "PLAIN", b"\0guest\0guest"));
    assert_eq!(frame.len() - 8, size);
    frame
}

/// The broker at `url` refused the connection before tuning: warren with
/// connection.close 501 FRAME_ERROR; RabbitMQ, which does not answer a peer
/// it has not authenticated, by that or by hanging up. Never with
/// connection.tune, and (warren) not by the 10 s handshake timeout, which
/// hangs up without a close.
fn refused_before_tune(url: &str, ended: &Ended) {
    match ended {
        Ended::Close(501, ..) => {}
        Ended::HungUp if url == rabbitmq_url() => {}
        other => panic!("expected 501 FRAME_ERROR before tune, got {other:?}"),
    }
}

async fn a_frame_over_4096_bytes_before_tune_is_refused(url: String) {
    let mut peer = Peer::connect(&url, opts(0)).await;
    peer.send_raw(&start_ok_of_size(5000)).await;
    refused_before_tune(&url, &peer.ended().await);
    // Within 4096 bytes, the same login is served (RabbitMQ lets frames
    // reach frame_max + 8; warren keeps to frame_max).
    let mut peer = Peer::connect(&url, opts(0)).await;
    peer.send_raw(&start_ok_of_size(4096 - 8)).await;
    let tune = peer.next_method().await;
    assert!(
        matches!(
            tune,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
        ),
        "{tune:?}"
    );
    served(&url).await;
}

async fn a_frame_header_declaring_over_4096_bytes_before_tune_is_refused_at_once(url: String) {
    let mut peer = Peer::connect(&url, opts(0)).await;
    // Only the 7-byte header of a 100 KB method frame (under the 128 KiB
    // frame_max a tuned connection may use): the broker must refuse it from
    // the header, not wait for (and buffer) the payload.
    let mut head = vec![1, 0, 0];
    head.extend_from_slice(&len32(100_000));
    peer.send_raw(&head).await;
    let ended = timeout(GUARD, peer.ended())
        .await
        .expect("refused without waiting for the payload");
    refused_before_tune(&url, &ended);
    served(&url).await;
}

// ------------------------------------------------------------ channel_max

async fn a_channel_past_channel_max_is_refused_with_530(url: String) {
    let mut peer = Peer::open(&url, opts(2)).await;
    peer.open_channel(1).await;
    peer.open_channel(2).await;
    peer.send(&channel_open(3)).await;
    let (code, ..) = peer.closed_with().await;
    assert_eq!(code, 530, "a third channel with channel_max 2");
    served(&url).await;
}

/// Channel numbers run 1..=channel_max (the spec); RabbitMQ limits only how
/// many are open, so this one is warren's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_2048_is_refused_with_530_at_the_default_channel_max() {
    let broker = embedded_broker().await;
    let url = broker.url();
    let mut peer = Peer::open(&url, opts(0)).await;
    peer.open_channel(2047).await;
    peer.send(&channel_open(2048)).await;
    assert_eq!(peer.closed_with().await, (530, 20, 10));
    served(&url).await;
}

// ------------------------------------------------------------ content sizes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_size_closes_its_channel_with_406() {
    let broker = embedded_broker().await;
    let url = broker.url();
    let mut peer = Peer::open(&url, opts(0)).await;
    peer.open_channel(1).await;
    let q = unique("big");
    peer.send(&declare_queue(1, &q, FieldTable::default()))
        .await;
    assert!(peer.next_method().await.is_some());
    // Declared one byte over the default 16 MiB; no body byte is sent.
    let over = 16 * 1024 * 1024 + 1;
    peer.send(&publish(1, &q)).await;
    peer.send(&header(1, over, BasicProperties::default()))
        .await;
    let reply = peer.next_method().await;
    let Some((1, AMQPClass::Channel(channel::AMQPMethod::Close(close)))) = reply else {
        panic!("expected channel.close, got {reply:?}");
    };
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (406, 60, 40)
    );
    assert_eq!(
        close.reply_text.as_str(),
        "PRECONDITION_FAILED - message size 16777217 is larger than configured max size 16777216"
    );
    // Bodies already on their way are dropped with the channel; the
    // connection lives on.
    peer.send(&AMQPFrame::Body(1, vec![0; 1000])).await;
    peer.send(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    ))
    .await;
    peer.open_channel(2).await;
    peer.send(&declare_queue(2, &q, FieldTable::default()))
        .await;
    let reply = peer.next_method().await;
    assert!(
        matches!(
            reply,
            Some((2, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))))
        ),
        "{reply:?}"
    );
    served(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_is_configurable() {
    let broker = warren::broker::Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .max_message_size(1000)
        .start()
        .await
        .expect("start the embedded broker");
    let url = broker.url();
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("a channel");
    // With confirms the over-size publish has a pending confirm when the
    // broker's channel.close arrives, and lapin fails it with the close's
    // reason (a later call on the channel might instead see only that the
    // channel is closed, if lapin has processed the close by then).
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let publish = |size: usize| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "".into(),
                "nowhere".into(),
                BasicPublishOptions::default(),
                &vec![0; size],
                lapin::BasicProperties::default(),
            )
            .await?
            .await
        }
    };
    publish(1000).await.expect("1000 bytes are allowed");
    let err = timeout(GUARD, publish(1001))
        .await
        .expect("an answer in time")
        .expect_err("1001 bytes are refused");
    assert!(
        err.to_string()
            .contains("larger than configured max size 1000"),
        "{err}"
    );
    assert!(conn.status().connected(), "only the channel is closed");
    served(&url).await;
}

/// The in-process path meets the limit a TCP client meets: the core takes
/// any body, so the transport checks the broker's `max_message_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_holds_for_in_process_publishers_too() {
    use warren::transport::{Outgoing, Properties, QueueSpec};
    let broker = warren::broker::Broker::builder()
        .no_listen()
        .max_message_size(1000)
        .start()
        .await
        .expect("start the embedded broker");
    assert_eq!(broker.max_message_size(), 1000);
    let connection = warren::Connection::in_process(&broker).expect("connect");
    let queue = unique("in-process-size");
    let transport = connection.transport();
    transport
        .declare_queue(&QueueSpec {
            name: queue.clone(),
            ..QueueSpec::default()
        })
        .await
        .expect("declare");
    let publish = |size: usize| Outgoing {
        exchange: String::new(),
        routing_key: queue.clone(),
        mandatory: false,
        confirm: true,
        properties: Properties::default(),
        body: vec![0; size].into(),
    };
    transport
        .publish(publish(1000))
        .await
        .expect("1000 bytes are allowed");
    let err = transport
        .publish(publish(1001))
        .await
        .expect_err("1001 bytes are refused");
    assert!(err.is_refused(), "{err}");
    assert!(
        err.to_string()
            .contains("larger than configured max size 1000"),
        "{err}"
    );
    let left = transport.check_queue(&queue).await.expect("check");
    assert_eq!(left.messages, 1, "only the allowed message was queued");
    transport
        .publish(publish(10))
        .await
        .expect("the connection still publishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_its_declared_size_closes_the_connection_with_501() {
    let broker = embedded_broker().await;
    let url = broker.url();
    let mut peer = Peer::open(&url, opts(0)).await;
    peer.open_channel(1).await;
    peer.send(&publish(1, "nowhere")).await;
    peer.send(&header(1, 5, BasicProperties::default())).await;
    // As RabbitMQ 4 ("content body frame exceeds remaining content size");
    // 3.10 waits for more body instead.
    peer.send(&AMQPFrame::Body(1, b"0123456789".to_vec())).await;
    assert_eq!(peer.closed_with().await.0, 501);
    served(&url).await;
}

// ------------------------------------------------------------ max_connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_max_connections_is_refused_with_530() {
    let broker = warren::broker::Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .max_connections(2)
        .start()
        .await
        .expect("start the embedded broker");
    let url = broker.url();
    let first = Peer::open(&url, opts(0)).await;
    let mut second = Peer::open(&url, opts(0)).await;
    // The third is counted from accept and refused at connection.open, as
    // RabbitMQ's node connection limit.
    let mut third = Peer::connect(&url, opts(0)).await;
    third.send(&guest_start_ok()).await;
    let tune = third.next_method().await;
    let Some((_, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)))) = tune else {
        panic!("expected connection.tune, got {tune:?}");
    };
    third
        .send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        ))
        .await;
    third
        .send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
    match third.ended().await {
        Ended::Close(530, 10, 40, text) => assert_eq!(
            text,
            "NOT_ALLOWED - connection refused: node connection limit (2) is reached"
        ),
        other => panic!("expected 530 at connection.open, got {other:?}"),
    }
    drop(third);
    // Those within the limit are still served.
    second.open_channel(1).await;
    // Once one leaves, a new client gets its place (as soon as the broker
    // has seen it go).
    drop(first);
    let conn = timeout(GUARD, async {
        loop {
            match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("a place frees up when a connection closes");
    served_on(conn).await;
}

// ------------------------------------------------------------ fuzz seeds

/// Writes the deep-table seeds of the fuzz target (`fuzz/seeds/deep-*`),
/// from the frames these tests send: run with `--ignored` after changing
/// them. The first byte picks the target's mode: 0 raw, 1 after its
/// handshake (which opens channel 1 with frame_max 131072).
#[test]
#[ignore = "writes fuzz/seeds/; run by hand"]
fn write_fuzz_seeds() {
    let protocol_header = encode(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()));
    let raw = |frames: &[Vec<u8>]| {
        let mut out = vec![0];
        out.extend_from_slice(&protocol_header);
        frames.iter().for_each(|f| out.extend_from_slice(f));
        out
    };
    let tuned = |frames: &[Vec<u8>]| {
        let mut out = vec![1];
        frames.iter().for_each(|f| out.extend_from_slice(f));
        out
    };
    let declare = declare_queue(1, "q", FieldTable::default());
    let headers = header(
        1,
        0,
        BasicProperties::default().with_headers(FieldTable::default()),
    );
    let get = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "q".into(),
            no_ack: true,
        })),
    ));
    let seeds = [
        // The attack itself: 26,000 levels before login (130 KB).
        (
            "deep-start-ok-26000",
            raw(&[with_depth(&guest_start_ok(), 26_000)]),
        ),
        // Deep enough to overflow, small enough for the pre-tune limit.
        (
            "deep-start-ok-800",
            raw(&[with_depth(&guest_start_ok(), 800)]),
        ),
        ("deep-declare-20000", tuned(&[with_depth(&declare, 20_000)])),
        (
            "deep-headers-20000",
            tuned(&[encode(&publish(1, "q")), with_depth(&headers, 20_000)]),
        ),
        // At the limit: accepted, stored and delivered back.
        (
            "depth-100-declare-publish-get",
            tuned(&[
                with_depth(&declare, MAX_DEPTH),
                encode(&publish(1, "q")),
                with_depth(&headers, MAX_DEPTH),
                get,
            ]),
        ),
    ];
    for (name, bytes) in seeds {
        assert!(bytes.len() <= 131_072, "{name}: {} bytes", bytes.len());
        std::fs::write(repo().join("fuzz/seeds").join(name), bytes).expect("write a seed");
    }
}
