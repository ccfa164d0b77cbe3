//! Dead-letter cycles, topic-pattern blow-ups and peer-controlled numbers in the core.
//!
//! Each test is an attack over TCP that asserts the attacker gets its defined outcome
//! and that a new client is served afterwards. Where RabbitMQ behaves the same the
//! test runs on both brokers; the rest would pin or crash a shared RabbitMQ (3.10's
//! topic trie backtracks as warren's did, and it does every step of a dead-letter
//! fanout amplification), so they run on warren's only. Without the fixes the
//! broker's process (this test's, for the embedded broker) aborts on a stack
//! overflow or a panic, or never answers: every wait is under a hang guard.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::common::{embedded_broker, unique};
use crate::on_both_brokers;

/// Hang guard for one step: far beyond what any step needs, short of forever.
const HANG: Duration = Duration::from_secs(60);

/// The copies of one message the embedded broker dead-letters with no client
/// rejection in between (`warren::broker::core::dead_letter::LINEAGE_BUDGET`).
const LINEAGE_BUDGET: u32 = warren::broker::core::dead_letter::LINEAGE_BUDGET as u32;

fn s(x: &str) -> ShortString {
    x.into()
}

fn text(x: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(x))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(s(k), v.clone());
    }
    t
}

/// An embedded broker on a runtime of its own, left running to the end of the
/// process. An attack that stalls one of the broker's tasks in a loop that never
/// yields would otherwise stall the test's runtime too, whose shutdown waits for
/// that task: a failing test would hang instead of failing.
fn detached_broker() -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the broker");
        rt.block_on(async move {
            let broker = embedded_broker().await;
            let _ = tx.send(broker.url());
            std::future::pending::<()>().await
        })
    });
    rx.recv().expect("the broker's address")
}

/// Runs `step` under the hang guard.
async fn guarded<T>(what: &str, step: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG, step)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {HANG:?}"))
}

async fn open(url: &str) -> (Connection, Channel) {
    let conn = guarded(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = guarded("channel.open", conn.create_channel())
        .await
        .expect("channel.open");
    (conn, ch)
}

/// Declares a queue exclusive to this connection, so RabbitMQ forgets it with us.
async fn queue(ch: &Channel, name: &str, args: FieldTable) {
    let options = QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    };
    guarded("queue.declare", ch.queue_declare(s(name), options, args))
        .await
        .expect("queue.declare");
}

/// Declares an auto-delete exchange of `kind` and binds `queues` to it with `key`.
async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, key: &str, queues: &[&str]) {
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    guarded(
        "exchange.declare",
        ch.exchange_declare(s(name), kind, options, FieldTable::default()),
    )
    .await
    .expect("exchange.declare");
    for q in queues {
        guarded(
            "queue.bind",
            ch.queue_bind(
                s(q),
                s(name),
                s(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.bind");
    }
}

/// Publishes and waits for the confirm (the channel is in confirm mode): true on ack.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> bool {
    let confirm = guarded(
        "basic.publish",
        ch.basic_publish(
            s(exchange),
            s(key),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        ),
    )
    .await
    .expect("basic.publish");
    guarded("the publisher confirm", confirm)
        .await
        .expect("confirm")
        .is_ack()
}

async fn publish(ch: &Channel, key: &str, body: &str) {
    guarded(
        "basic.publish",
        ch.basic_publish(
            s(""),
            s(key),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
}

async fn count(ch: &Channel, q: &str) -> u32 {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    guarded(
        "passive queue.declare",
        ch.queue_declare(s(q), options, FieldTable::default()),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Polls until `q` holds `want` messages, then checks it still does a little later
/// (so a loop that keeps going is caught, not a snapshot of it).
async fn settles_at(ch: &Channel, q: &str, want: u32) {
    guarded(&format!("'{q}' reaching {want} messages"), async {
        while count(ch, q).await < want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(ch, q).await, want, "'{q}' kept growing");
}

/// The body at the head of `q`, left in place (fetched, then nacked with requeue).
async fn head(ch: &Channel, q: &str) -> Option<Vec<u8>> {
    let got = guarded(
        "basic.get",
        ch.basic_get(s(q), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")?;
    let body = got.delivery.data.clone();
    guarded(
        "basic.nack",
        got.delivery.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        }),
    )
    .await
    .expect("basic.nack");
    Some(body)
}

/// `x-death`'s (queue, reason, count) entries of a message's headers.
fn deaths(props: &BasicProperties) -> Vec<(String, String, i64)> {
    let Some(AMQPValue::FieldArray(entries)) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        return Vec::new();
    };
    let as_string = |v: Option<&AMQPValue>| match v {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some((
                as_string(t.inner().get("queue")),
                as_string(t.inner().get("reason")),
                match t.inner().get("count") {
                    Some(AMQPValue::LongLongInt(n)) => *n,
                    _ => -1,
                },
            )),
            _ => None,
        })
        .collect()
}

/// Headers claiming one earlier death, as a client forging `x-death` sends them.
fn forged_death(queue: &str, reason: &str, count: i64) -> BasicProperties {
    let entry = table(&[
        ("queue", text(queue)),
        ("reason", text(reason)),
        ("count", AMQPValue::LongLongInt(count)),
        ("exchange", text("")),
        (
            "routing-keys",
            AMQPValue::FieldArray(FieldArray::from(vec![text(queue)])),
        ),
        ("time", AMQPValue::Timestamp(0)),
    ]);
    let headers = table(&[(
        "x-death",
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
    )]);
    BasicProperties::default().with_headers(headers)
}

/// A new client, on a new connection, is served: declare, publish, get.
async fn serves_a_new_client(url: &str) {
    let (conn, ch) = open(url).await;
    let q = unique("after");
    queue(&ch, &q, FieldTable::default()).await;
    publish(&ch, &q, "still here").await;
    let got = guarded("basic.get", async {
        loop {
            let got = ch
                .basic_get(s(&q), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(m) = got {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(got.delivery.data, b"still here");
    let _ = conn.close(200, "done".into()).await;
}

/// Issue #9, attack 2: a TTL-0 queue dead-lettering into itself, and one message
/// whose forged `x-death` claims a rejection. Warren read any rejection as "not a
/// cycle" and recursed until the stack overflowed. The message must die once and
/// stop there, as in RabbitMQ; a fanout feeding a spy queue counts the rounds.
async fn forged_x_death_does_not_keep_a_ttl_loop_going(url: String) {
    let (conn, ch) = open(&url).await;
    guarded(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");

    // The attack as reported.
    let own = unique("dl-self");
    let args = table(&[
        ("x-message-ttl", AMQPValue::LongInt(0)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&own)),
    ]);
    queue(&ch, &own, args).await;
    let forged = forged_death(&own, "rejected", 1);
    assert!(publish_confirmed(&ch, "", &own, "loop", forged.clone()).await);

    // The same loop through a fanout that also feeds a spy.
    let (ttl, spy, fan) = (unique("dl-ttl"), unique("dl-spy"), unique("dl-fan"));
    let args = table(&[
        ("x-message-ttl", AMQPValue::LongInt(0)),
        ("x-dead-letter-exchange", text(&fan)),
    ]);
    queue(&ch, &ttl, args).await;
    queue(&ch, &spy, FieldTable::default()).await;
    exchange(&ch, &fan, ExchangeKind::Fanout, "", &[&ttl, &spy]).await;
    let forged = forged_death(&ttl, "rejected", 1);
    assert!(publish_confirmed(&ch, "", &ttl, "loop", forged).await);
    settles_at(&ch, &spy, 1).await;
    assert_eq!(count(&ch, &own).await, 0);
    assert_eq!(count(&ch, &ttl).await, 0);
    let got = guarded(
        "basic.get",
        ch.basic_get(s(&spy), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .expect("the dead letter");
    assert_eq!(
        deaths(&got.delivery.properties),
        [
            (ttl.clone(), "expired".to_owned(), 1),
            (ttl.clone(), "rejected".to_owned(), 1)
        ]
    );
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}

/// Two full max-length queues dead-lettering into each other, and one more message:
/// each push-out pushes the other queue's head out, 2N hops until a message
/// would re-enter a queue it died in. Warren recursed once per hop (8,000 deep
/// overflowed the stack); the chain must run to its end with both queues full and
/// every message moved across once.
///
/// The heads can only be read with get-and-requeue, which reorders a queue the
/// chain is still running through, so they are read once the chain has ended:
/// on warren, 2N hops stay within one publish's inline budget (the backlog past
/// it is covered by `dead_letter`'s unit tests), so the chain ends before the
/// confirm; RabbitMQ dead-letters asynchronously after confirming, so it is
/// given a moment first.
async fn mutual_max_length_overflow_runs_to_its_end(url: String) {
    const N: u32 = 4_000;
    const _: () = assert!(2 * N as usize + 1 < warren::broker::core::dead_letter::INLINE_BUDGET);
    let (conn, ch) = open(&url).await;
    let (a, b) = (unique("dl-a"), unique("dl-b"));
    for (q, other) in [(&a, &b), (&b, &a)] {
        let args = table(&[
            ("x-max-length", AMQPValue::LongInt(N as i32)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(other)),
        ]);
        queue(&ch, q, args).await;
    }
    for (q, tag) in [(&a, "a"), (&b, "b")] {
        for i in 0..N {
            publish(&ch, q, &format!("{tag}{i}")).await;
        }
    }
    settles_at(&ch, &a, N).await;
    settles_at(&ch, &b, N).await;
    guarded(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    assert!(publish_confirmed(&ch, "", &a, "trigger", BasicProperties::default()).await);
    if url == crate::common::rabbitmq_url() {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // The heads reach these values only at the very end: a's once the trigger has
    // been pushed out of it (by b's last), b's once a0 has (by the trigger), and
    // a0, which died in a, is then dropped as a cycle.
    guarded("the chain reaction's end", async {
        loop {
            let heads = (head(&ch, &a).await, head(&ch, &b).await);
            if heads == (Some(b"b0".to_vec()), Some(b"a1".to_vec())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!((count(&ch, &a).await, count(&ch, &b).await), (N, N));
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}

/// Exchange-to-exchange bindings were followed by a recursion cut off at depth 16,
/// so the 17th exchange of a chain silently routed nowhere. RabbitMQ has no limit,
/// and a work list needs none: a chain of 40 delivers, as does a loop back to its
/// start (each exchange is visited once).
async fn a_long_chain_of_exchanges_routes_to_its_end(url: String) {
    let (conn, ch) = open(&url).await;
    guarded(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let names: Vec<String> = (0..40).map(|i| unique(&format!("chain{i}"))).collect();
    for x in &names {
        guarded(
            "exchange.declare",
            ch.exchange_declare(
                s(x),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.declare");
    }
    let mut links: Vec<(&String, &String)> = names.iter().zip(names.iter().skip(1)).collect();
    links.extend(names.last().zip(names.first()));
    for (source, destination) in links {
        guarded(
            "exchange.bind",
            ch.exchange_bind(
                s(destination),
                s(source),
                s(""),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.bind");
    }
    let q = unique("chain-end");
    queue(&ch, &q, FieldTable::default()).await;
    let last = names.last().expect("a chain");
    guarded(
        "queue.bind",
        ch.queue_bind(
            s(&q),
            s(last),
            s(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    assert!(publish_confirmed(&ch, &names[0], "", "far", BasicProperties::default()).await);
    settles_at(&ch, &q, 1).await;
    for x in &names {
        guarded(
            "exchange.delete",
            ch.exchange_delete(s(x), ExchangeDeleteOptions::default()),
        )
        .await
        .expect("exchange.delete");
    }
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}

on_both_brokers!(
    forged_x_death_does_not_keep_a_ttl_loop_going,
    mutual_max_length_overflow_runs_to_its_end,
    a_long_chain_of_exchanges_routes_to_its_end,
);

/// Issue #9, attack 3: a binding of 30 `#` then `z`, and a 60-word key. The
/// backtracking matcher never returned (holding the vhost's read locks); the
/// confirm must come, and the matching key must still route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_pattern_of_hash_runs_is_matched_in_bounded_time() {
    let url = detached_broker();
    let (conn, ch) = open(&url).await;
    guarded(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let (x, q) = (unique("topic"), unique("hashes"));
    queue(&ch, &q, FieldTable::default()).await;
    let pattern = format!("{}z", "#.".repeat(30));
    exchange(&ch, &x, ExchangeKind::Topic, &pattern, &[&q]).await;
    let miss = vec!["a"; 60].join(".");
    assert!(publish_confirmed(&ch, &x, &miss, "miss", BasicProperties::default()).await);
    let hit = format!("{}.z", vec!["a"; 59].join("."));
    assert!(publish_confirmed(&ch, &x, &hit, "hit", BasicProperties::default()).await);
    settles_at(&ch, &q, 1).await;
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}

/// Issue #9, attack 7: a forged `x-death` count at `i64::MAX` (the largest AMQP
/// integer), dead-lettered once more. `count + 1` overflowed: a panic in debug
/// builds, a negative count in release ones. It must stay at its maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_death_count_at_its_maximum_saturates() {
    let url = detached_broker();
    let (conn, ch) = open(&url).await;
    guarded(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let (ttl, spy) = (unique("dl-ttl"), unique("dl-spy"));
    let args = table(&[
        ("x-message-ttl", AMQPValue::LongInt(0)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(&spy)),
    ]);
    queue(&ch, &ttl, args).await;
    queue(&ch, &spy, FieldTable::default()).await;
    let forged = forged_death(&ttl, "expired", i64::MAX);
    assert!(publish_confirmed(&ch, "", &ttl, "max", forged).await);
    settles_at(&ch, &spy, 1).await;
    let got = guarded(
        "basic.get",
        ch.basic_get(s(&spy), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    .expect("the dead letter");
    assert_eq!(
        deaths(&got.delivery.properties),
        [(ttl.clone(), "expired".to_owned(), i64::MAX)]
    );
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}

/// Eleven TTL-0 queues dead-lettering into one fanout bound to all of them: the
/// cycle rule stops each copy, but the copies take every loop-free path, about
/// 10! of them, from one publish (RabbitMQ does them all). The copies of one
/// message are dead-lettered at most `LINEAGE_BUDGET` times; a spy bound to the
/// fanout gets one copy per dead-lettering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_fanout_amplification_is_bounded() {
    let url = detached_broker();
    let (conn, ch) = open(&url).await;
    guarded(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let fan = unique("dl-fan");
    let names: Vec<String> = (0..11).map(|i| unique(&format!("dl-amp{i}"))).collect();
    for q in &names {
        let args = table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", text(&fan)),
        ]);
        queue(&ch, q, args).await;
    }
    let spy = unique("dl-spy");
    queue(&ch, &spy, FieldTable::default()).await;
    let mut bound: Vec<&str> = names.iter().map(String::as_str).collect();
    bound.push(&spy);
    exchange(&ch, &fan, ExchangeKind::Fanout, "", &bound).await;
    assert!(publish_confirmed(&ch, "", &names[0], "m", BasicProperties::default()).await);
    settles_at(&ch, &spy, LINEAGE_BUDGET).await;
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}

/// A chain of auto-delete exchanges, each bound only to the next, the last to a
/// queue: deleting the queue deletes the whole chain, which warren did by
/// recursion, two stack frames per exchange. The deletion must finish and the
/// chain be gone (a passive declare of its first exchange is a 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_end_of_a_long_auto_delete_chain() {
    const N: usize = 10_000;
    let url = detached_broker();
    let (conn, ch) = open(&url).await;
    let names: Vec<String> = (0..N).map(|i| format!("auto{i}")).collect();
    let options = ExchangeDeclareOptions {
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    for x in &names {
        guarded(
            "exchange.declare",
            ch.exchange_declare(s(x), ExchangeKind::Fanout, options, FieldTable::default()),
        )
        .await
        .expect("exchange.declare");
    }
    for (source, destination) in names.iter().zip(names.iter().skip(1)) {
        guarded(
            "exchange.bind",
            ch.exchange_bind(
                s(destination),
                s(source),
                s(""),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.bind");
    }
    let q = unique("chain-end");
    queue(&ch, &q, FieldTable::default()).await;
    exchange(&ch, &names[N - 1], ExchangeKind::Fanout, "", &[&q]).await;
    guarded(
        "queue.delete",
        ch.queue_delete(s(&q), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let gone = guarded(
        "passive exchange.declare",
        ch.exchange_declare(
            s(&names[0]),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    assert!(gone.is_err(), "the chain's first exchange is still there");
    let _ = conn.close(200, "done".into()).await;
    serves_a_new_client(&url).await;
}
