//! End-to-end tests of the embedded broker with the lapin client.
//!
//! Every test starts its own broker on an ephemeral port.

mod common;

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::broker::{Broker, BrokerHandle};

const WAIT: Duration = Duration::from_secs(10);

async fn broker() -> BrokerHandle {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .expect("broker starts")
}

async fn connect(b: &BrokerHandle) -> Connection {
    tokio::time::timeout(
        WAIT,
        Connection::connect(&b.url(), ConnectionProperties::default()),
    )
    .await
    .expect("connect timeout")
    .expect("connect")
}

async fn setup() -> (BrokerHandle, Connection, Channel) {
    let b = broker().await;
    let c = connect(&b).await;
    let ch = c.create_channel().await.expect("channel");
    (b, c, ch)
}

fn s(x: &str) -> ShortString {
    x.into()
}

async fn declare(ch: &Channel, name: &str) -> String {
    ch.queue_declare(
        s(name),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare")
    .name()
    .to_string()
}

async fn publish(ch: &Channel, ex: &str, rk: &str, body: &[u8]) {
    ch.basic_publish(
        s(ex),
        s(rk),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish");
}

async fn get(ch: &Channel, q: &str) -> Option<Vec<u8>> {
    ch.basic_get(s(q), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .map(|m| m.delivery.data.clone())
}

/// Poll basic.get until a message arrives (safety timeout).
async fn get_eventually(ch: &Channel, q: &str) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = get(ch, q).await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("message never arrived")
}

async fn consume(ch: &Channel, q: &str, no_ack: bool) -> Consumer {
    ch.basic_consume(
        s(q),
        s(""),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

async fn next(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(WAIT, c.next())
        .await
        .expect("delivery timeout")
        .expect("consumer ended")
        .expect("delivery error")
}

fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => Some(a.get_id()),
        _ => None,
    }
}

/// Drain every queue name listed and return what each got (sorted).
async fn contents(ch: &Channel, queues: &[&str]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for q in queues {
        let mut got = Vec::new();
        while let Some(m) = get(ch, q).await {
            got.push(String::from_utf8(m).unwrap());
        }
        got.sort();
        out.push((q.to_string(), got));
    }
    out
}

#[tokio::test]
async fn publish_consume_ack_default_exchange() {
    let (_b, _c, ch) = setup().await;
    let q = declare(&ch, "work").await;
    publish(&ch, "", &q, b"hello").await;
    let mut cons = consume(&ch, &q, false).await;
    let d = next(&mut cons).await;
    assert_eq!(d.data, b"hello");
    assert_eq!(d.routing_key.as_str(), "work");
    assert!(!d.redelivered);
    d.ack(BasicAckOptions::default()).await.unwrap();
    // Acked: a fresh declare reports no message.
    let ok = ch
        .queue_declare(s(&q), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 0);
    assert_eq!(ok.consumer_count(), 1);
}

#[tokio::test]
async fn server_named_queue_and_large_message() {
    let (_b, _c, ch) = setup().await;
    let q = declare(&ch, "").await;
    assert!(q.starts_with("amq.gen-"), "{q}");
    // Bigger than frame_max: split into several body frames both ways.
    let body: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", &q, &body).await;
    assert_eq!(get_eventually(&ch, &q).await, body);
}

#[tokio::test]
async fn direct_fanout_topic_routing() {
    let (_b, _c, ch) = setup().await;
    for q in ["d1", "d2", "f1", "f2", "t1", "t2", "t3"] {
        declare(&ch, q).await;
    }
    ch.exchange_declare(
        s("dx"),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let bind = |q: &'static str, x: &'static str, k: &'static str| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(s(q), s(x), s(k), Default::default(), FieldTable::default())
                .await
                .unwrap()
        }
    };
    bind("d1", "dx", "a").await;
    bind("d2", "dx", "b").await;
    bind("f1", "amq.fanout", "").await;
    bind("f2", "amq.fanout", "ignored").await;
    bind("t1", "amq.topic", "stock.*.nyse").await;
    bind("t2", "amq.topic", "stock.#").await;
    bind("t3", "amq.topic", "#.nyse").await;
    publish(&ch, "dx", "a", b"da").await;
    publish(&ch, "dx", "b", b"db").await;
    publish(&ch, "dx", "c", b"dc").await;
    publish(&ch, "amq.fanout", "whatever", b"fan").await;
    publish(&ch, "amq.topic", "stock.ibm.nyse", b"t-ibm").await;
    publish(&ch, "amq.topic", "stock", b"t-stock").await;
    publish(&ch, "amq.topic", "stock.a.b.nyse", b"t-deep").await;
    publish(&ch, "amq.topic", "bond.nyse", b"t-bond").await;
    publish(&ch, "amq.topic", "nothing", b"t-none").await;
    let got = contents(&ch, &["d1", "d2", "f1", "f2", "t1", "t2", "t3"]).await;
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            ("d1".into(), v(&["da"])),
            ("d2".into(), v(&["db"])),
            ("f1".into(), v(&["fan"])),
            ("f2".into(), v(&["fan"])),
            ("t1".into(), v(&["t-ibm"])),
            ("t2".into(), v(&["t-deep", "t-ibm", "t-stock"])),
            ("t3".into(), v(&["t-bond", "t-deep", "t-ibm"])),
        ]
    );
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let (_b, _c, ch) = setup().await;
    declare(&ch, "hall").await;
    declare(&ch, "hany").await;
    let mut all = FieldTable::default();
    all.insert(s("x-match"), AMQPValue::LongString("all".into()));
    all.insert(s("format"), AMQPValue::LongString("pdf".into()));
    all.insert(s("type"), AMQPValue::LongString("report".into()));
    let mut any = FieldTable::default();
    any.insert(s("x-match"), AMQPValue::LongString("any".into()));
    any.insert(s("format"), AMQPValue::LongString("pdf".into()));
    any.insert(s("type"), AMQPValue::LongString("report".into()));
    ch.queue_bind(s("hall"), s("amq.headers"), s(""), Default::default(), all)
        .await
        .unwrap();
    ch.queue_bind(s("hany"), s("amq.match"), s(""), Default::default(), any)
        .await
        .unwrap();
    let pub_h = |body: &'static str, h: &[(&str, &str)]| {
        let mut t = FieldTable::default();
        for (k, v) in h {
            t.insert(s(k), AMQPValue::LongString((*v).into()));
        }
        let ch = ch.clone();
        async move {
            for x in ["amq.headers", "amq.match"] {
                ch.basic_publish(
                    s(x),
                    s(""),
                    Default::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_headers(t.clone()),
                )
                .await
                .unwrap();
            }
        }
    };
    pub_h("both", &[("format", "pdf"), ("type", "report")]).await;
    pub_h("one", &[("format", "pdf"), ("type", "log")]).await;
    pub_h("none", &[("format", "zip")]).await;
    let got = contents(&ch, &["hall", "hany"]).await;
    assert_eq!(got[0].1, vec!["both".to_string()]);
    assert_eq!(got[1].1, vec!["both".to_string(), "one".to_string()]);
}

#[tokio::test]
async fn exchange_to_exchange_binding() {
    let (_b, _c, ch) = setup().await;
    declare(&ch, "e2e").await;
    ch.exchange_declare(
        s("src"),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        s("dst"),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        s("dst"),
        s("src"),
        s(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        s("e2e"),
        s("dst"),
        s("k"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "k", b"via").await;
    assert_eq!(get_eventually(&ch, "e2e").await, b"via");
    ch.exchange_unbind(
        s("dst"),
        s("src"),
        s(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "k", b"lost").await;
    publish(&ch, "dst", "k", b"direct").await;
    assert_eq!(get_eventually(&ch, "e2e").await, b"direct");
}

#[tokio::test]
async fn nack_requeue_sets_redelivered() {
    let (_b, _c, ch) = setup().await;
    let q = declare(&ch, "nq").await;
    publish(&ch, "", &q, b"m").await;
    let mut cons = consume(&ch, &q, false).await;
    let d = next(&mut cons).await;
    assert!(!d.redelivered);
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let d2 = next(&mut cons).await;
    assert!(d2.redelivered);
    assert_eq!(d2.data, b"m");
    d2.reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert_eq!(get(&ch, &q).await, None);
}

#[tokio::test]
async fn prefetch_limits_in_flight() {
    let (_b, _c, ch) = setup().await;
    let q = declare(&ch, "pq").await;
    for i in 0..10 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    let mut cons = consume(&ch, &q, false).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut cons).await);
    }
    // A fourth delivery must not come while three are unacked; a sync round trip on
    // the same channel proves anything already sent would have arrived.
    let ok = ch
        .queue_declare(
            s(&q),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 7);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), cons.next())
            .await
            .is_err(),
        "fourth delivery exceeded prefetch"
    );
    held.remove(0)
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let d = next(&mut cons).await;
    assert_eq!(d.data, b"3");
}

#[tokio::test]
async fn round_robin_between_consumers() {
    let (_b, c, ch) = setup().await;
    let q = declare(&ch, "rr").await;
    let ch2 = c.create_channel().await.unwrap();
    let mut c1 = consume(&ch, &q, true).await;
    let mut c2 = consume(&ch2, &q, true).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let a: Vec<Vec<u8>> = vec![next(&mut c1).await.data, next(&mut c1).await.data];
    let b: Vec<Vec<u8>> = vec![next(&mut c2).await.data, next(&mut c2).await.data];
    assert_eq!(a, vec![b"0".to_vec(), b"2".to_vec()]);
    assert_eq!(b, vec![b"1".to_vec(), b"3".to_vec()]);
}

#[tokio::test]
async fn publisher_confirms() {
    let (_b, _c, ch) = setup().await;
    let q = declare(&ch, "cq").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..50 {
        confirms.push(
            ch.basic_publish(
                s(""),
                s(&q),
                Default::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        let conf = tokio::time::timeout(WAIT, c).await.unwrap().unwrap();
        assert!(conf.is_ack());
    }
    let ok = ch
        .queue_declare(s(&q), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 50);
}

#[tokio::test]
async fn mandatory_unroutable_is_returned() {
    let (_b, _c, ch) = setup().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let conf = ch
        .basic_publish(
            s("amq.direct"),
            s("nobody"),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"ret",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let conf = tokio::time::timeout(WAIT, conf).await.unwrap().unwrap();
    let ret = conf.take_message().expect("returned message");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.delivery.data, b"ret");
}

#[tokio::test]
async fn per_message_and_queue_ttl_expire() {
    let (_b, _c, ch) = setup().await;
    let mut args = FieldTable::default();
    args.insert(s("x-message-ttl"), AMQPValue::LongInt(30));
    ch.queue_declare(s("ttlq"), Default::default(), args)
        .await
        .unwrap();
    declare(&ch, "msgttl").await;
    publish(&ch, "", "ttlq", b"old").await;
    ch.basic_publish(
        s(""),
        s("msgttl"),
        Default::default(),
        b"old",
        BasicProperties::default().with_expiration(s("30")),
    )
    .await
    .unwrap();
    ch.basic_publish(
        s(""),
        s("msgttl"),
        Default::default(),
        b"keep",
        BasicProperties::default().with_expiration(s("600000")),
    )
    .await
    .unwrap();
    // Wait until the queue TTL expired the message (it never comes back).
    tokio::time::timeout(WAIT, async {
        loop {
            let ok = ch
                .queue_declare(
                    s("ttlq"),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            if ok.message_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("queue TTL never expired the message");
    assert_eq!(get(&ch, "ttlq").await, None);
    tokio::time::timeout(WAIT, async {
        loop {
            let ok = ch
                .queue_declare(
                    s("msgttl"),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            if ok.message_count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("per-message TTL never expired");
    assert_eq!(get(&ch, "msgttl").await, Some(b"keep".to_vec()));
}

#[tokio::test]
async fn x_expires_deletes_unused_queue() {
    let (_b, c, ch) = setup().await;
    let mut args = FieldTable::default();
    args.insert(s("x-expires"), AMQPValue::LongInt(50));
    ch.queue_declare(s("expq"), Default::default(), args)
        .await
        .unwrap();
    let deleted = tokio::time::timeout(WAIT, async {
        loop {
            let probe = c.create_channel().await.unwrap();
            let r = probe
                .queue_declare(
                    s("expq"),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match r {
                Ok(_) => {
                    let _ = probe.close(200, s("OK")).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return amqp_code(&e),
            }
        }
    })
    .await
    .expect("queue never expired");
    assert_eq!(deleted, Some(404));
}

#[tokio::test]
async fn exclusive_queue_locked_for_other_connections() {
    let (b, _c, ch) = setup().await;
    ch.queue_declare(
        s("excl"),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let other = connect(&b).await;
    let ch2 = other.create_channel().await.unwrap();
    let err = ch2
        .queue_declare(
            s("excl"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(405));
    let ch3 = other.create_channel().await.unwrap();
    let err = ch3
        .basic_consume(s("excl"), s(""), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(405));
}

#[tokio::test]
async fn exclusive_queue_deleted_with_owner() {
    let (b, c, ch) = setup().await;
    ch.queue_declare(
        s("gone"),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    c.close(200, s("bye")).await.unwrap();
    let other = connect(&b).await;
    let ch2 = other.create_channel().await.unwrap();
    let err = ch2
        .queue_declare(
            s("gone"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404));
}

#[tokio::test]
async fn passive_declare_404_and_redeclare_406() {
    let (_b, c, ch) = setup().await;
    let err = ch
        .queue_declare(
            s("nope"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404));
    let ch = c.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            s("nope"),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404));
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "flags").await;
    let err = ch
        .queue_declare(
            s("flags"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406));
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        s("ex"),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_declare(
            s("ex"),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406));
    let ch = c.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            s("amq.mine"),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(403));
    // The connection survives channel errors.
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "still-fine").await;
}

#[tokio::test]
async fn unknown_delivery_tag_406() {
    let (_b, c, ch) = setup().await;
    let events = c.events_listener();
    ch.basic_ack(42, BasicAckOptions::default()).await.unwrap();
    // The error arrives as channel.close, after the ack has been sent.
    assert_eq!(common::next_error_code(events).await, Some(406));
    let after = ch
        .queue_declare(
            s("x"),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(after.is_err(), "the channel is closed: {after:?}");
}

#[tokio::test]
async fn unacked_returned_on_channel_close() {
    let (_b, c, ch) = setup().await;
    let q = declare(&ch, "uq").await;
    for m in ["a", "b", "c"] {
        publish(&ch, "", &q, m.as_bytes()).await;
    }
    let ch2 = c.create_channel().await.unwrap();
    let mut cons = consume(&ch2, &q, false).await;
    for _ in 0..3 {
        next(&mut cons).await;
    }
    ch2.close(200, s("OK")).await.unwrap();
    let ch3 = c.create_channel().await.unwrap();
    let mut cons = consume(&ch3, &q, false).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut cons).await;
        assert!(d.redelivered);
        got.push(d.data);
    }
    assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

#[tokio::test]
async fn wrong_password_refused() {
    let b = broker().await;
    let url = b.url().replace("guest:guest", "guest:wrong");
    let err = tokio::time::timeout(
        WAIT,
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("timeout")
    .unwrap_err();
    assert_eq!(amqp_code(&err), Some(403), "{err:?}");
}

#[tokio::test]
async fn garbage_gets_header_and_broker_survives() {
    let b = broker().await;
    let addr = b.local_addrs()[0];
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, b"AMQP\x00\x00\x09\x01");

    // Valid header, then a garbage frame: connection.close with 501.
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    sock.write_all(&[1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4, 0x00])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut buf))
        .await
        .unwrap();
    // connection.start then connection.close (class 10, method 50) with 501.
    let close = buf
        .windows(6)
        .position(|w| w[0..4] == [0, 10, 0, 50])
        .expect("connection.close sent");
    assert_eq!(&buf[close + 4..close + 6], &501u16.to_be_bytes());

    let (_c, ch) = {
        let c = connect(&b).await;
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    };
    let q = declare(&ch, "after-garbage").await;
    publish(&ch, "", &q, b"ok").await;
    assert_eq!(get_eventually(&ch, &q).await, b"ok");
}
