//! The embedded broker as AMQP clients see it, with lapin: every test runs
//! against warren's broker and against RabbitMQ, so they check AMQP as the
//! world reads it, not our own reading of it.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_brokers!(
    every_exchange_type_routes_as_specified,
    nack_with_requeue_redelivers_and_reject_without_drops,
    prefetch_bounds_unacknowledged_deliveries,
    confirms_and_mandatory_returns,
    unacked_messages_return_in_order_when_a_channel_closes,
    passive_declare_of_a_missing_queue_is_404,
    redeclare_with_other_flags_is_406,
    exclusive_queue_is_405_for_other_connections,
    unknown_delivery_tag_is_406,
    publishing_to_a_missing_exchange_is_404,
    message_ttl_and_queue_expiry,
    deleting_a_queue_cancels_its_consumers,
);

async fn connect(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// The AMQP reply code of a lapin error, if the broker sent one.
fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

fn name(prefix: &str) -> ShortString {
    unique(prefix).into()
}

async fn declare(channel: &Channel, queue: &ShortString) {
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
}

async fn publish(
    channel: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish");
}

/// Bodies ready in `queue`, taken with basic.get (auto-ack).
async fn drain_queue(channel: &Channel, queue: &ShortString) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // A message published just before is routed by the time a basic.get on
    // the same channel is answered (per-channel ordering).
    while let Some(m) = channel
        .basic_get(queue.clone(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m.delivery.data.clone());
    }
    out
}

async fn every_exchange_type_routes_as_specified(url: String) {
    let (_c, ch) = connect(&url).await;
    let opts = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    let (direct, fanout, topic, headers) = (name("d"), name("f"), name("t"), name("h"));
    ch.exchange_declare(
        direct.clone(),
        ExchangeKind::Direct,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        fanout.clone(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        topic.clone(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        headers.clone(),
        ExchangeKind::Headers,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (q1, q2) = (name("q1"), name("q2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    let bind = |q: &ShortString, x: &ShortString, key: &str, args: FieldTable| {
        let (ch, q, x, key) = (ch.clone(), q.clone(), x.clone(), key.to_owned());
        async move {
            ch.queue_bind(q, x, key.as_str().into(), QueueBindOptions::default(), args)
                .await
                .expect("bind")
        }
    };
    bind(&q1, &direct, "k1", FieldTable::default()).await;
    bind(&q2, &direct, "k2", FieldTable::default()).await;
    bind(&q1, &fanout, "", FieldTable::default()).await;
    bind(&q2, &fanout, "", FieldTable::default()).await;
    bind(&q1, &topic, "a.*.c", FieldTable::default()).await;
    bind(&q2, &topic, "a.#", FieldTable::default()).await;
    let mut all = FieldTable::default();
    all.insert("x-match".into(), AMQPValue::LongString("all".into()));
    all.insert("kind".into(), AMQPValue::LongString("x".into()));
    all.insert("n".into(), AMQPValue::LongInt(1));
    bind(&q1, &headers, "", all).await;
    let mut any = FieldTable::default();
    any.insert("x-match".into(), AMQPValue::LongString("any".into()));
    any.insert("kind".into(), AMQPValue::LongString("x".into()));
    any.insert("n".into(), AMQPValue::LongInt(2));
    bind(&q2, &headers, "", any).await;

    let none = BasicProperties::default;
    publish(&ch, direct.as_str(), "k1", b"direct-1", none()).await;
    publish(&ch, direct.as_str(), "k3", b"direct-none", none()).await;
    publish(&ch, fanout.as_str(), "whatever", b"fanout", none()).await;
    publish(&ch, topic.as_str(), "a.b.c", b"topic-abc", none()).await;
    publish(&ch, topic.as_str(), "a.b", b"topic-ab", none()).await;
    let mut h = FieldTable::default();
    h.insert("kind".into(), AMQPValue::LongString("x".into()));
    h.insert("n".into(), AMQPValue::LongInt(1));
    publish(
        &ch,
        headers.as_str(),
        "",
        b"headers-x1",
        none().with_headers(h),
    )
    .await;
    publish(&ch, "", q2.as_str(), b"default", none()).await;

    assert_eq!(
        drain_queue(&ch, &q1).await,
        vec![
            b"direct-1".to_vec(),
            b"fanout".to_vec(),
            b"topic-abc".to_vec(),
            b"headers-x1".to_vec()
        ]
    );
    assert_eq!(
        drain_queue(&ch, &q2).await,
        vec![
            b"fanout".to_vec(),
            b"topic-abc".to_vec(),
            b"topic-ab".to_vec(),
            b"headers-x1".to_vec(),
            b"default".to_vec()
        ]
    );
    for q in [q1, q2] {
        ch.queue_delete(q, QueueDeleteOptions::default())
            .await
            .unwrap();
    }
}

async fn nack_with_requeue_redelivers_and_reject_without_drops(url: String) {
    let (_c, ch) = connect(&url).await;
    let q = name("q");
    declare(&ch, &q).await;
    publish(&ch, "", q.as_str(), b"m", BasicProperties::default()).await;
    let first = ch
        .basic_get(q.clone(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert!(!first.delivery.redelivered);
    first
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let again = ch
        .basic_get(q.clone(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("requeued");
    assert!(
        again.delivery.redelivered,
        "a requeued message is marked redelivered"
    );
    again
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert!(ch
        .basic_get(q.clone(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
}

async fn prefetch_bounds_unacknowledged_deliveries(url: String) {
    let (_c, ch) = connect(&url).await;
    let q = name("q");
    declare(&ch, &q).await;
    for i in 0..10u8 {
        publish(&ch, "", q.as_str(), &[i], BasicProperties::default()).await;
    }
    ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            q.clone(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        held.push(d);
    }
    // A fourth must not come while three are unacknowledged.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "prefetch 3 delivered a fourth message"
    );
    held[0].acker.ack(BasicAckOptions::default()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.data, vec![3]);
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
}

async fn confirms_and_mandatory_returns(url: String) {
    let (_c, ch) = connect(&url).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = name("q");
    declare(&ch, &q).await;
    let confirm = ch
        .basic_publish(
            "".into(),
            q.clone(),
            BasicPublishOptions::default(),
            b"kept",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm, Confirmation::Ack(None));
    let confirm = ch
        .basic_publish(
            "".into(),
            "no-such-queue-anywhere".into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = confirm.take_message().expect("a basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.data, b"lost");
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
}

async fn unacked_messages_return_in_order_when_a_channel_closes(url: String) {
    let (c, ch) = connect(&url).await;
    let q = name("q");
    declare(&ch, &q).await;
    for i in 0..5u8 {
        publish(&ch, "", q.as_str(), &[i], BasicProperties::default()).await;
    }
    let taker = c.create_channel().await.unwrap();
    for _ in 0..3 {
        taker
            .basic_get(q.clone(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("message");
    }
    taker.close(200, "bye".into()).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(q.clone(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push((m.delivery.data[0], m.delivery.redelivered));
    }
    assert_eq!(
        got,
        vec![(0, true), (1, true), (2, true), (3, false), (4, false)]
    );
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
}

async fn passive_declare_of_a_missing_queue_is_404(url: String) {
    let (_c, ch) = connect(&url).await;
    let err = ch
        .queue_declare(
            name("missing"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404), "{err:?}");
}

async fn redeclare_with_other_flags_is_406(url: String) {
    let (c, ch) = connect(&url).await;
    let q = name("q");
    declare(&ch, &q).await;
    let err = ch
        .queue_declare(
            q.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(406), "{err:?}");
    let ch = c.create_channel().await.unwrap();
    let x = name("x");
    ch.exchange_declare(
        x.clone(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_declare(
            x.clone(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(406), "{err:?}");
    let ch = c.create_channel().await.unwrap();
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(x, ExchangeDeleteOptions::default())
        .await
        .unwrap();
}

async fn exclusive_queue_is_405_for_other_connections(url: String) {
    let (_owner, ch) = connect(&url).await;
    let q = name("q");
    ch.queue_declare(
        q.clone(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_other, ch2) = connect(&url).await;
    let err = ch2
        .basic_consume(
            q,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(405), "{err:?}");
}

async fn unknown_delivery_tag_is_406(url: String) {
    let (_c, ch) = connect(&url).await;
    ch.basic_ack(999, BasicAckOptions::default()).await.unwrap();
    // The error arrives as a channel.close; the next call sees it.
    let err = loop {
        match ch.basic_qos(1, BasicQosOptions::default()).await {
            Err(e) => break e,
            Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    // lapin reports the broker's channel.close on the failing call, or as
    // a closed channel on the next one.
    assert!(
        code(&err) == Some(406) || !ch.status().connected(),
        "{err:?}"
    );
}

async fn publishing_to_a_missing_exchange_is_404(url: String) {
    let (_c, ch) = connect(&url).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let result = match ch
        .basic_publish(
            name("nowhere"),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
    {
        Ok(confirm) => confirm.await,
        Err(e) => Err(e),
    };
    let err = match result {
        Err(e) => e,
        Ok(_) => ch
            .basic_qos(1, BasicQosOptions::default())
            .await
            .unwrap_err(),
    };
    assert!(
        code(&err) == Some(404) || !ch.status().connected(),
        "{err:?}"
    );
}

async fn message_ttl_and_queue_expiry(url: String) {
    let (_c, ch) = connect(&url).await;
    let q = name("q");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(100));
    ch.queue_declare(q.clone(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    publish(
        &ch,
        "",
        q.as_str(),
        b"short-lived",
        BasicProperties::default(),
    )
    .await;
    publish(
        &ch,
        "",
        q.as_str(),
        b"per-message",
        BasicProperties::default().with_expiration("50".into()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        drain_queue(&ch, &q).await.is_empty(),
        "expired messages are gone"
    );

    let gone = name("expiring");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(200));
    ch.queue_declare(gone.clone(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    // Any declare (even passive) counts as use and restarts the clock, so
    // look only once, well after the 200 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_c2, probe) = connect(&url).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let probed = probe
        .queue_declare(gone.clone(), passive, FieldTable::default())
        .await;
    let deleted = matches!(&probed, Err(e) if code(e) == Some(404));
    assert!(deleted, "x-expires deleted the unused queue");
    ch.queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
}

async fn deleting_a_queue_cancels_its_consumers(url: String) {
    let (_c, ch) = connect(&url).await;
    let q = name("q");
    declare(&ch, &q).await;
    let mut consumer = ch
        .basic_consume(
            q.clone(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (_c2, other) = connect(&url).await;
    other
        .queue_delete(q, QueueDeleteOptions::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "the consumer stream ends on a broker-sent cancel: {end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_gets_the_0_9_1_header_back() {
    let broker = embedded_broker().await;
    let mut s = tokio::net::TcpStream::connect(broker.local_addrs()[0])
        .await
        .unwrap();
    s.write_all(b"HTTP/1.1").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
}

/// Reads frames until connection.close arrives; returns its reply code.
async fn close_code(s: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Frames: type(1) channel(2) size(4) payload end(1).
        let mut at = 0;
        while buf.len() >= at + 7 {
            let size =
                u32::from_be_bytes([buf[at + 3], buf[at + 4], buf[at + 5], buf[at + 6]]) as usize;
            if buf.len() < at + size + 8 {
                break;
            }
            let payload = &buf[at + 7..at + 7 + size];
            if buf[at] == 1 && payload.len() >= 6 && payload[..4] == [0, 10, 0, 50] {
                return Some(u16::from_be_bytes([payload[4], payload[5]]));
            }
            at += size + 8;
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_gets_a_frame_error_and_the_broker_keeps_serving() {
    let broker = embedded_broker().await;
    let addr = broker.local_addrs()[0];
    let garbage: [&[u8]; 3] = [
        b"\x01\x00\x00\xff\xff\xff\xffjunk", // a frame larger than frame_max
        b"\x01\x00\x00\x00\x00\x00\x02ab\x00", // bad frame-end byte
        b"\x09\x00\x00\x00\x00\x00\x00\xce", // unknown frame type
    ];
    for bytes in garbage {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        s.write_all(bytes).await.unwrap();
        assert_eq!(close_code(&mut s).await, Some(501), "{bytes:?}");
    }
    // Everyone else is still served.
    let (_c, ch) = connect(&broker.url()).await;
    let q = name("q");
    declare(&ch, &q).await;
    publish(
        &ch,
        "",
        q.as_str(),
        b"still here",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain_queue(&ch, &q).await, vec![b"still here".to_vec()]);
}
