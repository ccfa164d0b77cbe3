//! Feature tests of the embedded broker with lapin: dead-lettering, length limits,
//! transactions, direct reply-to, consumer cancel notification, raw-protocol errors.

mod common;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::broker::{Broker, BrokerHandle};

const WAIT: Duration = Duration::from_secs(10);

fn s(x: &str) -> ShortString {
    x.into()
}

async fn setup() -> (BrokerHandle, Connection, Channel) {
    let b = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let c = Connection::connect(&b.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    (b, c, ch)
}

async fn get_eventually(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = ch
                .basic_get(s(q), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("no message")
}

fn x_death(props: &BasicProperties) -> Vec<FieldTable> {
    match props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn str_of(t: &FieldTable, k: &str) -> String {
    match t.inner().get(k) {
        Some(AMQPValue::LongString(v)) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(v)) => v.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn dead_letter_on_reject_and_expiry_with_x_death() {
    let (_b, _c, ch) = setup().await;
    ch.queue_declare(s("dlq"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        s("dlq"),
        s("amq.direct"),
        s("dead"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        s("x-dead-letter-exchange"),
        AMQPValue::LongString("amq.direct".into()),
    );
    args.insert(
        s("x-dead-letter-routing-key"),
        AMQPValue::LongString("dead".into()),
    );
    ch.queue_declare(s("src"), Default::default(), args.clone())
        .await
        .unwrap();
    ch.basic_publish(
        s(""),
        s("src"),
        Default::default(),
        b"rej",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = ch
                .basic_get(s("src"), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
            {
                return m;
            }
        }
    })
    .await
    .unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(d.delivery.data, b"rej");
    let deaths = x_death(&d.delivery.properties);
    assert_eq!(deaths.len(), 1);
    assert_eq!(str_of(&deaths[0], "reason"), "rejected");
    assert_eq!(str_of(&deaths[0], "queue"), "src");

    // Expired messages are dead-lettered with reason "expired".
    let mut targs = args.clone();
    targs.insert(s("x-message-ttl"), AMQPValue::LongInt(10));
    ch.queue_declare(s("src-ttl"), Default::default(), targs)
        .await
        .unwrap();
    ch.basic_publish(
        s(""),
        s("src-ttl"),
        Default::default(),
        b"exp",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(d.delivery.data, b"exp");
    assert_eq!(
        str_of(&x_death(&d.delivery.properties)[0], "reason"),
        "expired"
    );
}

#[tokio::test]
async fn max_length_drop_head_and_reject_publish() {
    let (_b, _c, ch) = setup().await;
    let mut args = FieldTable::default();
    args.insert(s("x-max-length"), AMQPValue::LongInt(2));
    ch.queue_declare(s("ml"), Default::default(), args.clone())
        .await
        .unwrap();
    for m in ["1", "2", "3"] {
        ch.basic_publish(
            s(""),
            s("ml"),
            Default::default(),
            m.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(get_eventually(&ch, "ml").await.delivery.data, b"2");
    assert_eq!(get_eventually(&ch, "ml").await.delivery.data, b"3");

    args.insert(
        s("x-overflow"),
        AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(s("mlr"), Default::default(), args)
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let mut confs = Vec::new();
    for m in ["1", "2", "3"] {
        confs.push(
            ch.basic_publish(
                s(""),
                s("mlr"),
                Default::default(),
                m.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    let mut acks = Vec::new();
    for c in confs {
        acks.push(
            tokio::time::timeout(WAIT, c)
                .await
                .unwrap()
                .unwrap()
                .is_ack(),
        );
    }
    assert_eq!(acks, vec![true, true, false]);
}

#[tokio::test]
async fn transactions_commit_and_rollback() {
    let (_b, _c, ch) = setup().await;
    ch.queue_declare(s("txq"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.tx_select().await.unwrap();
    ch.basic_publish(
        s(""),
        s("txq"),
        Default::default(),
        b"rolled",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    ch.tx_rollback().await.unwrap();
    ch.basic_publish(
        s(""),
        s("txq"),
        Default::default(),
        b"committed",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let before = ch
        .queue_declare(
            s("txq"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(before.message_count(), 0);
    ch.tx_commit().await.unwrap();
    assert_eq!(get_eventually(&ch, "txq").await.delivery.data, b"committed");
    let after = ch
        .queue_declare(
            s("txq"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(after.message_count(), 0);
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let (_b, c, ch) = setup().await;
    ch.queue_declare(s("rpc"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut replies = ch
        .basic_consume(
            s("amq.rabbitmq.reply-to"),
            s(""),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        s(""),
        s("rpc"),
        Default::default(),
        b"ping",
        BasicProperties::default().with_reply_to(s("amq.rabbitmq.reply-to")),
    )
    .await
    .unwrap();
    let server = c.create_channel().await.unwrap();
    let req = get_eventually(&server, "rpc").await;
    let reply_to = req.delivery.properties.reply_to().clone().unwrap();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    server
        .basic_publish(
            s(""),
            reply_to,
            Default::default(),
            b"pong",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"pong");
}

#[tokio::test]
async fn queue_delete_cancels_consumers() {
    let (_b, c, ch) = setup().await;
    ch.queue_declare(s("doomed"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut cons = ch
        .basic_consume(
            s("doomed"),
            s("ctag"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let other = c.create_channel().await.unwrap();
    other
        .queue_delete(s("doomed"), Default::default())
        .await
        .unwrap();
    // lapin ends the consumer stream on basic.cancel from the broker.
    let end = tokio::time::timeout(WAIT, cons.next())
        .await
        .expect("cancel not received");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn unknown_exchange_publish_closes_channel_404() {
    let (_b, c, ch) = setup().await;
    let events = c.events_listener();
    ch.basic_publish(
        s("no-such-x"),
        s(""),
        Default::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // The error arrives as channel.close, after the publish has been sent.
    assert_eq!(common::next_error_code(events).await, Some(404));
    let after = ch
        .queue_declare(s("q"), Default::default(), FieldTable::default())
        .await;
    assert!(after.is_err(), "the channel is closed: {after:?}");
    // Connection still usable.
    let ch2 = c.create_channel().await.unwrap();
    ch2.queue_declare(s("q"), Default::default(), FieldTable::default())
        .await
        .unwrap();
}

/// Open a raw connection up to connection.open-ok (PLAIN or AMQPLAIN auth) and return it.
async fn raw_open(b: &BrokerHandle, amqplain: bool) -> tokio::net::TcpStream {
    use amq_protocol::frame::{gen_frame, AMQPFrame, WriteContext};
    use amq_protocol::protocol::{connection, AMQPClass};
    let mut sock = tokio::net::TcpStream::connect(b.local_addrs()[0])
        .await
        .unwrap();
    sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let (mech, resp) = if amqplain {
        let creds = amq_protocol::auth::Credentials::default();
        (
            "AMQPLAIN",
            creds.sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain),
        )
    } else {
        ("PLAIN", "\0guest\0guest".into())
    };
    let frames = vec![
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: mech.into(),
                response: resp,
                locale: "en_US".into(),
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 10,
                frame_max: 131072,
                heartbeat: 0,
            })),
        ),
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
    ];
    for f in frames {
        let (buf, _) = gen_frame(&f)(WriteContext::from(Vec::new()))
            .unwrap()
            .into_inner();
        sock.write_all(&buf).await.unwrap();
    }
    // Read until open-ok (class 10 method 41).
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during handshake: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == [0, 10, 0, 41]) {
                break;
            }
        }
    })
    .await
    .expect("no open-ok");
    sock
}

async fn read_close(sock: &mut tokio::net::TcpStream) -> u16 {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut buf)).await;
    let i = buf
        .windows(4)
        .position(|w| w == [0, 10, 0, 50])
        .unwrap_or_else(|| panic!("no connection.close in {buf:?}"));
    u16::from_be_bytes([buf[i + 4], buf[i + 5]])
}

#[tokio::test]
async fn amqplain_login_works() {
    let (b, _c, _ch) = setup().await;
    let _sock = raw_open(&b, true).await;
}

#[tokio::test]
async fn raw_protocol_errors() {
    let (b, c, ch) = setup().await;
    // Frame larger than frame_max -> 501.
    let mut sock = raw_open(&b, false).await;
    let mut big = vec![1u8, 0, 1];
    big.extend_from_slice(&200_000u32.to_be_bytes());
    sock.write_all(&big).await.unwrap();
    assert_eq!(read_close(&mut sock).await, 501);
    // Bad frame end -> 501.
    let mut sock = raw_open(&b, false).await;
    sock.write_all(&[1, 0, 1, 0, 0, 0, 4, 0, 20, 0, 10, 0xAB])
        .await
        .unwrap();
    assert_eq!(read_close(&mut sock).await, 501);
    // Method on a channel that was never opened -> 504.
    let mut sock = raw_open(&b, false).await;
    // queue.declare-ish payload on channel 3: class 50 method 10 with junk args is fine
    // since the channel check comes first; use basic.qos (class 60, method 10).
    sock.write_all(&[
        1, 0, 3, 0, 0, 0, 11, 0, 60, 0, 10, 0, 0, 0, 0, 0, 1, 0, 0xCE,
    ])
    .await
    .unwrap();
    assert_eq!(read_close(&mut sock).await, 504);
    // Unknown class -> 540.
    let mut sock = raw_open(&b, false).await;
    sock.write_all(&[1, 0, 0, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE])
        .await
        .unwrap();
    assert_eq!(read_close(&mut sock).await, 540);
    // Content header without a publish -> 505.
    let mut sock = raw_open(&b, false).await;
    sock.write_all(&[1, 0, 1, 0, 0, 0, 5, 0, 20, 0, 10, 0, 0xCE])
        .await
        .unwrap(); // channel.open
    sock.write_all(&[
        2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0xCE,
    ])
    .await
    .unwrap();
    assert_eq!(read_close(&mut sock).await, 505);
    // The broker still serves the original lapin connection.
    ch.queue_declare(s("alive"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    drop(c);
}

#[tokio::test]
async fn immediate_publish_closes_connection_540() {
    let (_b, c, ch) = setup().await;
    let _ = ch
        .basic_publish(
            s(""),
            s("x"),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await;
    let err = tokio::time::timeout(WAIT, async {
        loop {
            match c.create_channel().await {
                Err(e) => return e,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .unwrap();
    assert!(!c.status().connected(), "{err:?}");
}

#[tokio::test]
async fn graceful_shutdown_closes_clients() {
    let (b, c, _ch) = setup().await;
    tokio::time::timeout(WAIT, b.shutdown())
        .await
        .expect("shutdown hangs");
    tokio::time::timeout(WAIT, async {
        while c.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("client still connected");
}
