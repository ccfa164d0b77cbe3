//! The spec's rows as lapin does them (see [`crate::spec`]): each function
//! takes a broker's URL and runs unchanged on warren's broker and on
//! RabbitMQ. Names are unique per run (RabbitMQ is shared), and what a row
//! declares it deletes when it passes.

use std::time::Duration;

use futures::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};

use crate::common::{next_error_code, unique};

/// Hang guard for anything the broker must do; not a timing claim.
const WAIT: Duration = Duration::from_secs(10);

async fn open(url: &str) -> Connection {
    tokio::time::timeout(
        WAIT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect hung")
    .expect("connect")
}

async fn connect(url: &str) -> (Connection, Channel) {
    let connection = open(url).await;
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

/// The names a row declares, deleted by [`Names::clean`].
struct Names {
    url: String,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Names {
    fn new(url: &str) -> Names {
        Names {
            url: url.to_owned(),
            queues: Vec::new(),
            exchanges: Vec::new(),
        }
    }

    /// A unique queue name.
    fn q(&mut self, tag: &str) -> String {
        let name = unique(&format!("lapin-{tag}"));
        self.queues.push(name.clone());
        name
    }

    /// A unique exchange name.
    fn x(&mut self, tag: &str) -> String {
        let name = unique(&format!("lapin-x-{tag}"));
        self.exchanges.push(name.clone());
        name
    }

    /// Deletes every queue and exchange named (missing ones are fine).
    async fn clean(self) {
        let connection = open(&self.url).await;
        let ch = connection.create_channel().await.expect("channel");
        for q in self.queues {
            ch.queue_delete(q.into(), QueueDeleteOptions::default())
                .await
                .expect("queue.delete");
        }
        for x in self.exchanges {
            ch.exchange_delete(x.into(), ExchangeDeleteOptions::default())
                .await
                .expect("exchange.delete");
        }
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

async fn declare(ch: &Channel, q: &str) {
    declare_with(ch, q, FieldTable::default()).await
}

async fn declare_with(ch: &Channel, q: &str, args: FieldTable) {
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue.declare");
}

async fn exchange(ch: &Channel, x: &str, kind: ExchangeKind) {
    ch.exchange_declare(
        x.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        q.into(),
        x.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .expect("queue.bind");
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish");
}

/// Publishes on the default exchange to `q` and waits for the broker's ack
/// (the channel is in confirm mode).
async fn publish_confirmed(ch: &Channel, q: &str, body: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish");
    let confirmation = tokio::time::timeout(WAIT, confirm)
        .await
        .expect("no confirm")
        .expect("confirm");
    assert_eq!(confirmation, Confirmation::Ack(None));
}

async fn send(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish(ch, exchange, key, body, BasicProperties::default()).await
}

/// Bodies ready in `queue`, taken with basic.get (auto-ack). A message
/// published just before on the same channel is routed by the time the
/// basic.get is answered (per-channel ordering).
async fn drain_queue(ch: &Channel, q: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        out.push(m.delivery.data.clone());
    }
    out
}

/// basic.get until a message arrives (dead-lettering is asynchronous).
async fn get_eventually(ch: &Channel, q: &str, no_ack: bool) -> BasicGetMessage {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(m) = ch
                .basic_get(q.into(), BasicGetOptions { no_ack })
                .await
                .expect("basic.get")
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nothing arrived in {q}"))
}

/// The ready-message count of `q` (passive declare).
async fn message_count(ch: &Channel, q: &str) -> u32 {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Polls `q`'s message count until it is `want` (within [`WAIT`]).
async fn settles_at(ch: &Channel, q: &str, want: u32) {
    let mut last = None;
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            let n = message_count(ch, q).await;
            if n == want {
                return;
            }
            last = Some(n);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "{q} holds {last:?} messages, not {want}");
}

async fn consume(ch: &Channel, q: &str, no_ack: bool) -> Consumer {
    ch.basic_consume(
        q.into(),
        "".into(),
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
        .expect("no delivery")
        .expect("consumer ended")
        .expect("delivery error")
}

/// Passive queue.declare on a fresh channel: the reply code of its error.
async fn probe_queue(c: &Connection, q: &str) -> Option<u16> {
    let ch = c.create_channel().await.expect("channel");
    let got = ch
        .queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match got {
        Ok(_) => {
            let _ = ch.close(200, "OK".into()).await;
            None
        }
        Err(e) => code(&e),
    }
}

fn utf8(bodies: Vec<Vec<u8>>) -> Vec<String> {
    bodies
        .into_iter()
        .map(|b| String::from_utf8(b).expect("utf-8 body"))
        .collect()
}

fn strings(x: &[&str]) -> Vec<String> {
    x.iter().map(|s| (*s).to_owned()).collect()
}

// ----------------------------------------------------------------- routing

/// A direct exchange routes by exact key, to every queue bound with it; the
/// default exchange routes by queue name; `amq.direct` is predeclared.
pub async fn direct_routing(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let x = n.x("direct");
    exchange(&ch, &x, ExchangeKind::Direct).await;
    let (qa, qb, qa2) = (n.q("a"), n.q("b"), n.q("a2"));
    for (q, key) in [(&qa, "a"), (&qb, "b"), (&qa2, "a")] {
        declare(&ch, q).await;
        bind(&ch, q, &x, key, FieldTable::default()).await;
    }
    send(&ch, &x, "a", b"to-a").await;
    send(&ch, &x, "b", b"to-b").await;
    send(&ch, &x, "c", b"nowhere").await;
    send(&ch, "", qb.as_str(), b"default").await;
    let key = unique("key");
    bind(&ch, &qa, "amq.direct", &key, FieldTable::default()).await;
    send(&ch, "amq.direct", &key, b"predeclared").await;
    assert_eq!(utf8(drain_queue(&ch, &qa).await), ["to-a", "predeclared"]);
    assert_eq!(utf8(drain_queue(&ch, &qa2).await), ["to-a"]);
    assert_eq!(utf8(drain_queue(&ch, &qb).await), ["to-b", "default"]);
    n.clean().await;
}

/// A fanout exchange copies every message to every bound queue, whatever
/// the keys.
pub async fn fanout_routing(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let x = n.x("fanout");
    exchange(&ch, &x, ExchangeKind::Fanout).await;
    let (q1, q2) = (n.q("1"), n.q("2"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    bind(&ch, &q1, &x, "", FieldTable::default()).await;
    bind(&ch, &q2, &x, "ignored", FieldTable::default()).await;
    send(&ch, &x, "whatever", b"m1").await;
    send(&ch, &x, "", b"m2").await;
    assert_eq!(utf8(drain_queue(&ch, &q1).await), ["m1", "m2"]);
    assert_eq!(utf8(drain_queue(&ch, &q2).await), ["m1", "m2"]);
    n.clean().await;
}

/// A topic exchange matches `*` (one word) and `#` (zero or more words)
/// anywhere in the pattern; `amq.topic` is predeclared.
pub async fn topic_routing(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let x = n.x("topic");
    exchange(&ch, &x, ExchangeKind::Topic).await;
    let patterns = ["a.*.c", "a.#", "stock.*.nyse", "stock.#", "#.nyse"];
    let mut queues = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let q = n.q(&format!("t{i}"));
        declare(&ch, &q).await;
        bind(&ch, &q, &x, pattern, FieldTable::default()).await;
        queues.push(q);
    }
    for key in [
        "a.b.c",
        "a.b",
        "stock.ibm.nyse",
        "stock",
        "stock.a.b.nyse",
        "bond.nyse",
        "nothing",
    ] {
        send(&ch, &x, key, key.as_bytes()).await;
    }
    let expected = [
        strings(&["a.b.c"]),
        strings(&["a.b.c", "a.b"]),
        strings(&["stock.ibm.nyse"]),
        strings(&["stock.ibm.nyse", "stock", "stock.a.b.nyse"]),
        strings(&["stock.ibm.nyse", "stock.a.b.nyse", "bond.nyse"]),
    ];
    for ((q, pattern), want) in queues.iter().zip(patterns).zip(expected) {
        assert_eq!(utf8(drain_queue(&ch, q).await), want, "{pattern}");
    }
    let own = unique("run");
    let q = n.q("amq-topic");
    declare(&ch, &q).await;
    bind(
        &ch,
        &q,
        "amq.topic",
        &format!("{own}.#"),
        FieldTable::default(),
    )
    .await;
    send(&ch, "amq.topic", &format!("{own}.x.y"), b"predeclared").await;
    assert_eq!(utf8(drain_queue(&ch, &q).await), ["predeclared"]);
    n.clean().await;
}

/// A headers exchange matches `x-match` `all` or `any` of the binding's
/// headers, typed values included; `amq.headers` and `amq.match` are
/// predeclared.
pub async fn headers_routing(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let x = n.x("headers");
    exchange(&ch, &x, ExchangeKind::Headers).await;
    let (q_all, q_any, q_typed) = (n.q("all"), n.q("any"), n.q("typed"));
    for q in [&q_all, &q_any, &q_typed] {
        declare(&ch, q).await;
    }
    let wanted = |mode: &str| {
        table(&[
            ("x-match", text(mode)),
            ("format", text("pdf")),
            ("type", text("report")),
        ])
    };
    bind(&ch, &q_all, &x, "", wanted("all")).await;
    bind(&ch, &q_any, &x, "", wanted("any")).await;
    bind(
        &ch,
        &q_typed,
        &x,
        "",
        table(&[
            ("x-match", text("all")),
            ("kind", text("x")),
            ("n", AMQPValue::LongInt(1)),
        ]),
    )
    .await;
    let with = |h: &[(&str, AMQPValue)]| BasicProperties::default().with_headers(table(h));
    let cases = [
        (
            "both",
            with(&[("format", text("pdf")), ("type", text("report"))]),
        ),
        (
            "one",
            with(&[("format", text("pdf")), ("type", text("log"))]),
        ),
        ("none", with(&[("format", text("zip"))])),
        (
            "typed",
            with(&[("kind", text("x")), ("n", AMQPValue::LongInt(1))]),
        ),
        (
            "mistyped",
            with(&[("kind", text("x")), ("n", AMQPValue::LongInt(2))]),
        ),
    ];
    for (body, props) in cases {
        publish(&ch, &x, "key-ignored", body.as_bytes(), props).await;
    }
    assert_eq!(utf8(drain_queue(&ch, &q_all).await), ["both"]);
    assert_eq!(utf8(drain_queue(&ch, &q_any).await), ["both", "one"]);
    assert_eq!(utf8(drain_queue(&ch, &q_typed).await), ["typed"]);
    // The predeclared headers exchanges route too.
    let own = unique("run");
    for predeclared in ["amq.headers", "amq.match"] {
        let q = n.q(predeclared);
        declare(&ch, &q).await;
        bind(
            &ch,
            &q,
            predeclared,
            "",
            table(&[("x-match", text("all")), ("run", text(&own))]),
        )
        .await;
        publish(
            &ch,
            predeclared,
            "",
            predeclared.as_bytes(),
            with(&[("run", text(&own))]),
        )
        .await;
        assert_eq!(utf8(drain_queue(&ch, &q).await), [predeclared]);
    }
    n.clean().await;
}

/// An exchange bound to an exchange forwards what it routes; unbinding
/// stops it.
pub async fn exchange_to_exchange_binding(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let (src, dst) = (n.x("src"), n.x("dst"));
    exchange(&ch, &src, ExchangeKind::Fanout).await;
    exchange(&ch, &dst, ExchangeKind::Direct).await;
    let q = n.q("q");
    declare(&ch, &q).await;
    ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.bind");
    bind(&ch, &q, &dst, "k", FieldTable::default()).await;
    send(&ch, &src, "k", b"via").await;
    send(&ch, &src, "other", b"filtered").await;
    assert_eq!(utf8(drain_queue(&ch, &q).await), ["via"]);
    ch.exchange_unbind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.unbind");
    send(&ch, &src, "k", b"lost").await;
    send(&ch, &dst, "k", b"direct").await;
    assert_eq!(utf8(drain_queue(&ch, &q).await), ["direct"]);
    n.clean().await;
}

// ------------------------------------------------------- getting, consuming

/// A consumer gets the message with its routing key, not redelivered; once
/// acked it is gone, and queue.declare-ok counts the consumer.
pub async fn consume_and_ack(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("work");
    declare(&ch, &q).await;
    send(&ch, "", &q, b"hello").await;
    let mut consumer = consume(&ch, &q, false).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"hello");
    assert_eq!(d.routing_key.as_str(), q.as_str());
    assert!(!d.redelivered);
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let ok = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    assert_eq!(ok.message_count(), 0);
    assert_eq!(ok.consumer_count(), 1);
    n.clean().await;
}

/// Consumers of one queue take turns.
pub async fn round_robin_between_consumers(url: String) {
    let (c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("rr");
    declare(&ch, &q).await;
    let ch2 = c.create_channel().await.expect("channel");
    let mut c1 = consume(&ch, &q, true).await;
    let mut c2 = consume(&ch2, &q, true).await;
    for i in 0..4 {
        send(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let a = utf8(vec![next(&mut c1).await.data, next(&mut c1).await.data]);
    let b = utf8(vec![next(&mut c2).await.data, next(&mut c2).await.data]);
    assert_eq!((a, b), (strings(&["0", "2"]), strings(&["1", "3"])));
    n.clean().await;
}

/// A queue declared without a name gets an `amq.gen-` one; a body larger
/// than frame_max crosses in several body frames both ways.
pub async fn server_named_queue_and_large_message(url: String) {
    let (_c, ch) = connect(&url).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare")
        .name()
        .as_str()
        .to_owned();
    assert!(q.starts_with("amq.gen-"), "{q}");
    let body: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    send(&ch, "", &q, &body).await;
    assert_eq!(get_eventually(&ch, &q, true).await.delivery.data, body);
}

// --------------------------------------------------------- acknowledgements

/// nack with requeue puts a message back, marked redelivered; reject
/// without requeue drops it.
pub async fn ack_nack_reject_requeue(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("q");
    declare(&ch, &q).await;
    send(&ch, "", &q, b"m").await;
    let first = get_eventually(&ch, &q, false).await;
    assert!(!first.delivery.redelivered);
    first
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
    let again = get_eventually(&ch, &q, false).await;
    assert_eq!(again.delivery.data, b"m");
    assert!(again.delivery.redelivered, "requeued is redelivered");
    again
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    assert!(drain_queue(&ch, &q).await.is_empty(), "rejected is gone");
    n.clean().await;
}

/// A consumer that nacks with requeue gets the message again, redelivered.
pub async fn consumer_redelivery(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("q");
    declare(&ch, &q).await;
    send(&ch, "", &q, b"m").await;
    let mut consumer = consume(&ch, &q, false).await;
    let d = next(&mut consumer).await;
    assert!(!d.redelivered);
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .expect("nack");
    let d = next(&mut consumer).await;
    assert!(d.redelivered);
    assert_eq!(d.data, b"m");
    d.ack(BasicAckOptions::default()).await.expect("ack");
    n.clean().await;
}

/// Messages unacknowledged when their channel closes go back to the queue
/// in their original order, redelivered, ahead of those never delivered;
/// for basic.get and for a consumer alike.
pub async fn unacked_messages_return_in_order_when_a_channel_closes(url: String) {
    let (c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("got");
    declare(&ch, &q).await;
    for i in 0..5u8 {
        send(&ch, "", &q, &[i]).await;
    }
    let taker = c.create_channel().await.expect("channel");
    for _ in 0..3 {
        get_eventually(&taker, &q, false).await;
    }
    taker.close(200, "bye".into()).await.expect("close");
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        got.push((m.delivery.data[0], m.delivery.redelivered));
    }
    assert_eq!(
        got,
        vec![(0, true), (1, true), (2, true), (3, false), (4, false)]
    );

    let q = n.q("consumed");
    declare(&ch, &q).await;
    for m in ["a", "b", "c"] {
        send(&ch, "", &q, m.as_bytes()).await;
    }
    let ch2 = c.create_channel().await.expect("channel");
    let mut consumer = consume(&ch2, &q, false).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    ch2.close(200, "OK".into()).await.expect("close");
    let ch3 = c.create_channel().await.expect("channel");
    let mut consumer = consume(&ch3, &q, false).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next(&mut consumer).await;
        assert!(d.redelivered);
        got.push(d.data);
    }
    assert_eq!(utf8(got), ["a", "b", "c"]);
    n.clean().await;
}

/// basic.qos 3: three unacknowledged deliveries and no fourth, until one is
/// acked.
pub async fn prefetch(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("q");
    declare(&ch, &q).await;
    for i in 0..10u8 {
        send(&ch, "", &q, &[i]).await;
    }
    ch.basic_qos(3, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = consume(&ch, &q, false).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut consumer).await);
    }
    // Seven stay ready; anything already sent would have arrived before a
    // round trip on the same channel answers.
    settles_at(&ch, &q, 7).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "prefetch 3 delivered a fourth message"
    );
    held.remove(0)
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    assert_eq!(next(&mut consumer).await.data, vec![3]);
    n.clean().await;
}

// ---------------------------------------------------------------- publishing

/// Every publish on a confirm channel is acked, and every one is queued.
pub async fn publisher_confirms(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("q");
    declare(&ch, &q).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut confirms = Vec::new();
    for i in 0..50 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for confirm in confirms {
        let confirmation = tokio::time::timeout(WAIT, confirm)
            .await
            .expect("no confirm")
            .expect("confirm");
        assert_eq!(confirmation, Confirmation::Ack(None));
    }
    assert_eq!(message_count(&ch, &q).await, 50);
    n.clean().await;
}

/// An unroutable mandatory publish comes back as basic.return 312 NO_ROUTE
/// with its body, and is still confirmed.
pub async fn mandatory_returns(url: String) {
    let (_c, ch) = connect(&url).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for exchange in ["", "amq.direct"] {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                unique("nobody").into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                b"lost",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        let confirmation = tokio::time::timeout(WAIT, confirm)
            .await
            .expect("no confirm")
            .expect("confirm");
        assert!(confirmation.is_ack(), "{confirmation:?}");
        let returned = confirmation.take_message().expect("a basic.return");
        assert_eq!(returned.reply_code, 312);
        assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
        assert_eq!(returned.delivery.data, b"lost");
    }
}

/// tx.rollback discards what was published; tx.commit delivers it, and not
/// before.
pub async fn transactions(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("tx");
    declare(&ch, &q).await;
    ch.tx_select().await.expect("tx.select");
    send(&ch, "", &q, b"rolled").await;
    ch.tx_rollback().await.expect("tx.rollback");
    send(&ch, "", &q, b"committed").await;
    assert_eq!(message_count(&ch, &q).await, 0);
    ch.tx_commit().await.expect("tx.commit");
    assert_eq!(
        get_eventually(&ch, &q, true).await.delivery.data,
        b"committed"
    );
    assert_eq!(message_count(&ch, &q).await, 0);
    n.clean().await;
}

/// A request whose reply_to is `amq.rabbitmq.reply-to` reaches the server
/// with a channel-specific address, and the reply reaches the consumer.
pub async fn direct_reply_to(url: String) {
    let (c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let rpc = n.q("rpc");
    declare(&ch, &rpc).await;
    let mut replies = consume(&ch, "amq.rabbitmq.reply-to", true).await;
    publish(
        &ch,
        "",
        &rpc,
        b"ping",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    let server = c.create_channel().await.expect("channel");
    let request = get_eventually(&server, &rpc, true).await;
    let reply_to = request
        .delivery
        .properties
        .reply_to()
        .clone()
        .expect("a reply_to");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    send(&server, "", reply_to.as_str(), b"pong").await;
    assert_eq!(next(&mut replies).await.data, b"pong");
    n.clean().await;
}

// ------------------------------------------------------------ queue arguments

/// x-message-ttl expires a queue's messages, a message's expiration expires
/// that message only, and a message whose time is not up stays.
pub async fn message_ttl(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let (per_queue, per_message) = (n.q("per-queue"), n.q("per-message"));
    declare_with(
        &ch,
        &per_queue,
        table(&[("x-message-ttl", AMQPValue::LongInt(100))]),
    )
    .await;
    declare(&ch, &per_message).await;
    // Confirmed: RabbitMQ answers a queue's message count ahead of
    // deliveries it has not handled yet, so count only once they are in.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let none = BasicProperties::default();
    publish_confirmed(&ch, &per_queue, b"short-lived", none).await;
    let expiring = |ms: &str| BasicProperties::default().with_expiration(ms.into());
    publish_confirmed(&ch, &per_message, b"old", expiring("50")).await;
    publish_confirmed(&ch, &per_message, b"keep", expiring("600000")).await;
    settles_at(&ch, &per_queue, 0).await;
    settles_at(&ch, &per_message, 1).await;
    assert!(drain_queue(&ch, &per_queue).await.is_empty());
    assert_eq!(utf8(drain_queue(&ch, &per_message).await), ["keep"]);
    n.clean().await;
}

/// x-expires deletes a queue left unused that long.
pub async fn queue_expires(url: String) {
    let (c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("expiring");
    declare_with(&ch, &q, table(&[("x-expires", AMQPValue::LongInt(200))])).await;
    // Any declare (even passive) counts as use and restarts the clock, so
    // look only once, well after the 200 ms.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probe_queue(&c, &q).await, Some(404), "x-expires deleted it");
    n.clean().await;
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

/// A rejected message and an expired one go to the dead-letter exchange
/// with the routing key set for it, each with an `x-death` naming why and
/// where.
pub async fn dead_lettering(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let dlq = n.q("dead");
    declare(&ch, &dlq).await;
    let key = unique("dead");
    bind(&ch, &dlq, "amq.direct", &key, FieldTable::default()).await;
    let dlx = [
        ("x-dead-letter-exchange", text("amq.direct")),
        ("x-dead-letter-routing-key", text(&key)),
    ];
    let src = n.q("src");
    declare_with(&ch, &src, table(&dlx)).await;
    send(&ch, "", &src, b"rej").await;
    get_eventually(&ch, &src, false)
        .await
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    let d = get_eventually(&ch, &dlq, true).await;
    assert_eq!(d.delivery.data, b"rej");
    let deaths = x_death(&d.delivery.properties);
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    assert_eq!(str_of(&deaths[0], "reason"), "rejected");
    assert_eq!(str_of(&deaths[0], "queue"), src.as_str());

    let timed = n.q("ttl");
    let mut args = table(&dlx);
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(10));
    declare_with(&ch, &timed, args).await;
    send(&ch, "", &timed, b"exp").await;
    let d = get_eventually(&ch, &dlq, true).await;
    assert_eq!(d.delivery.data, b"exp");
    let deaths = x_death(&d.delivery.properties);
    assert_eq!(str_of(&deaths[0], "reason"), "expired");
    assert_eq!(str_of(&deaths[0], "queue"), timed.as_str());
    n.clean().await;
}

/// x-max-length drops the head by default; with x-overflow reject-publish
/// the publish past the limit is nacked.
pub async fn max_length(url: String) {
    let (_c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let (head, reject) = (n.q("drop-head"), n.q("reject"));
    declare_with(
        &ch,
        &head,
        table(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    for m in ["1", "2", "3"] {
        send(&ch, "", &head, m.as_bytes()).await;
    }
    assert_eq!(utf8(drain_queue(&ch, &head).await), ["2", "3"]);
    declare_with(
        &ch,
        &reject,
        table(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut confirms = Vec::new();
    for m in ["1", "2", "3"] {
        confirms.push(
            ch.basic_publish(
                "".into(),
                reject.as_str().into(),
                BasicPublishOptions::default(),
                m.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    let mut acks = Vec::new();
    for confirm in confirms {
        let confirmation = tokio::time::timeout(WAIT, confirm)
            .await
            .expect("no confirm")
            .expect("confirm");
        acks.push(confirmation.is_ack());
    }
    assert_eq!(acks, vec![true, true, false]);
    assert_eq!(utf8(drain_queue(&ch, &reject).await), ["1", "2"]);
    n.clean().await;
}

// ----------------------------------------------------------------- lifetimes

/// An exclusive queue is locked (405) to other connections, for declare and
/// consume alike, and goes with its owner's connection.
pub async fn exclusive_queue(url: String) {
    let (owner, ch) = connect(&url).await;
    let q = unique("lapin-exclusive");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    let other = open(&url).await;
    let ch2 = other.create_channel().await.expect("channel");
    let err = ch2
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("declared another connection's exclusive queue");
    assert_eq!(code(&err), Some(405), "{err:?}");
    let ch3 = other.create_channel().await.expect("channel");
    let err = ch3
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("consumed another connection's exclusive queue");
    assert_eq!(code(&err), Some(405), "{err:?}");
    owner.close(200, "bye".into()).await.expect("close");
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            match probe_queue(&other, &q).await {
                None => tokio::time::sleep(Duration::from_millis(20)).await,
                found => return found,
            }
        }
    })
    .await
    .expect("the exclusive queue outlived its connection");
    assert_eq!(gone, Some(404));
}

/// Deleting a queue cancels its consumers (basic.cancel from the broker,
/// which ends lapin's consumer stream), from the same connection or another.
pub async fn deleting_a_queue_cancels_consumers(url: String) {
    let (c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let (q1, q2) = (n.q("same-connection"), n.q("other-connection"));
    declare(&ch, &q1).await;
    declare(&ch, &q2).await;
    let mut c1 = consume(&ch, &q1, false).await;
    let mut c2 = consume(&ch, &q2, false).await;
    let same = c.create_channel().await.expect("channel");
    same.queue_delete(q1.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let (_c2, other) = connect(&url).await;
    other
        .queue_delete(q2.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    for consumer in [&mut c1, &mut c2] {
        let end = tokio::time::timeout(WAIT, consumer.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "the consumer stream ends on a broker-sent cancel: {end:?}"
        );
    }
    n.clean().await;
}

// -------------------------------------------------------------------- errors

/// Passive declare of a missing queue or exchange is 404 NOT_FOUND.
pub async fn passive_declare_missing_is_404(url: String) {
    let (c, ch) = connect(&url).await;
    let err = ch
        .queue_declare(
            unique("missing").into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a missing queue declared passively");
    assert_eq!(code(&err), Some(404), "{err:?}");
    let ch = c.create_channel().await.expect("channel");
    let err = ch
        .exchange_declare(
            unique("missing").into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a missing exchange declared passively");
    assert_eq!(code(&err), Some(404), "{err:?}");
}

/// Publishing to a missing exchange closes the channel with 404; the
/// connection survives.
pub async fn publish_to_missing_exchange_is_404(url: String) {
    let (c, ch) = connect(&url).await;
    let events = c.events_listener();
    send(&ch, &unique("nowhere"), "k", b"x").await;
    // The error arrives as channel.close, after the publish has been sent.
    assert_eq!(next_error_code(events).await, Some(404));
    let after = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(after.is_err(), "the channel is closed: {after:?}");
    let ch2 = c.create_channel().await.expect("the connection survives");
    ch2.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
}

/// `amq.` names are reserved: declaring one is 403 ACCESS_REFUSED; the
/// connection survives.
pub async fn reserved_names_are_403(url: String) {
    let (c, ch) = connect(&url).await;
    let err = ch
        .exchange_declare(
            unique("amq.mine").into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("declared an amq. exchange");
    assert_eq!(code(&err), Some(403), "{err:?}");
    let ch = c.create_channel().await.expect("channel");
    let err = ch
        .queue_declare(
            unique("amq.mine").into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("declared an amq. queue");
    assert_eq!(code(&err), Some(403), "{err:?}");
    let ch = c.create_channel().await.expect("the connection survives");
    ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
}

/// Redeclaring a queue or an exchange with other properties is 406
/// PRECONDITION_FAILED.
pub async fn redeclare_with_other_flags_is_406(url: String) {
    let (c, ch) = connect(&url).await;
    let mut n = Names::new(&url);
    let q = n.q("q");
    declare(&ch, &q).await;
    let err = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("redeclared durable");
    assert_eq!(code(&err), Some(406), "{err:?}");
    let ch = c.create_channel().await.expect("channel");
    let x = n.x("x");
    exchange(&ch, &x, ExchangeKind::Topic).await;
    let err = ch
        .exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("redeclared as fanout");
    assert_eq!(code(&err), Some(406), "{err:?}");
    n.clean().await;
}

/// Acking a delivery tag the channel never gave is 406, and closes it.
pub async fn unknown_delivery_tag_is_406(url: String) {
    let (c, ch) = connect(&url).await;
    let events = c.events_listener();
    ch.basic_ack(999, BasicAckOptions::default())
        .await
        .expect("basic.ack sent");
    // The error arrives as channel.close, after the ack has been sent.
    assert_eq!(next_error_code(events).await, Some(406));
    let after = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(after.is_err(), "the channel is closed: {after:?}");
}

/// basic.publish with immediate set is 540 NOT_IMPLEMENTED, which closes
/// the connection.
pub async fn immediate_publish_is_540(url: String) {
    let (c, ch) = connect(&url).await;
    let events = c.events_listener();
    let _ = ch
        .basic_publish(
            "".into(),
            unique("q").into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(next_error_code(events).await, Some(540));
    let closed = tokio::time::timeout(WAIT, async {
        while c.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is still open");
}

// --------------------------------------------------------------- connections

/// A wrong password is refused with 403 ACCESS_REFUSED.
pub async fn wrong_password_is_refused(url: String) {
    let bad = url.replace("guest:guest", "guest:wrong");
    assert_ne!(bad, url, "the URL must carry guest:guest");
    let err = tokio::time::timeout(
        WAIT,
        Connection::connect(&bad, ConnectionProperties::default()),
    )
    .await
    .expect("connect hung")
    .expect_err("logged in with a wrong password");
    assert_eq!(code(&err), Some(403), "{err:?}");
}

/// Logging in with the AMQPLAIN mechanism (a field table of LOGIN and
/// PASSWORD) opens the connection, as PLAIN does.
pub async fn amqplain_login(url: String) {
    use amq_protocol::auth::{Credentials, SASLMechanism};
    use amq_protocol::protocol::{connection, AMQPClass};
    use amq_protocol::uri::AMQPUri;

    use crate::common::raw::{method, Opts, Peer};

    let uri: AMQPUri = url.parse().expect("an AMQP URL");
    let credentials = Credentials::new(
        uri.authority.userinfo.username.as_str().into(),
        uri.authority.userinfo.password.as_str().into(),
    );
    let mut peer = Peer::connect(&url, Opts::default()).await;
    peer.send(&method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "AMQPLAIN".into(),
            response: credentials.sasl_auth_string(SASLMechanism::AMQPlain),
            locale: "en_US".into(),
        })),
    ))
    .await;
    let (_, tune) = peer.method().await;
    let AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) = tune else {
        panic!("expected connection.tune, got {tune:?}");
    };
    peer.send_all(&[
        method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
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
    peer.open_ok().await;
    peer.open_channel(1).await;
}
