//! The typed queue API (`warren::queue`) on each backend: publishers and
//! workers, the handler's outcomes, retries through TTL queues, dead-letter
//! queues, publisher confirms' typed errors, draining on shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warren::queue::{
    Format, Message, Outcome, Publisher, Retry, Worker, ERROR_HEADER, QUEUE_HEADER,
};
use warren::transport::{ConsumeSpec, Delivery, Outgoing, Properties};

crate::conformance!(
    a_typed_message_makes_the_round_trip_in_each_format,
    the_handler_decides_ack_requeue_or_dead_letter,
    a_failing_message_is_retried_with_backoff_then_dead_lettered,
    an_undecodable_message_is_dead_lettered_with_its_reason,
    returned_and_nacked_messages_are_typed_errors,
    a_missing_queue_is_named_when_the_worker_only_checks,
    one_worker_consumes_several_queues,
    concurrency_is_bounded_and_shutdown_drains,
    subscribers_get_every_message_through_exclusive_bound_queues,
    a_panicking_handler_dead_letters_its_message_and_the_worker_goes_on,
    dropping_the_handle_gives_back_what_was_not_started,
    a_stage_sends_to_every_destination_then_acks,
    unconfirmed_publishes_from_one_publisher_arrive_in_order,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Task {
    id: u32,
    name: String,
}

fn task(id: u32) -> Task {
    Task {
        id,
        name: format!("task-{id}"),
    }
}

/// A handler that sends what `pick` takes from each message to `tx`, and
/// acknowledges the message.
fn forward<T, U: Send + 'static>(
    tx: mpsc::UnboundedSender<U>,
    pick: impl Fn(Message<T>) -> U + Send + Sync + 'static,
) -> impl Fn(Message<T>) -> std::future::Ready<()> + Send + Sync + 'static {
    move |message| {
        let _ = tx.send(pick(message));
        std::future::ready(())
    }
}

/// Hang guard for waiting on a message: far above any real wait.
const WAIT: Duration = Duration::from_secs(30);

async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("the channel is open")
}

/// The worker's stats once `done` holds for them (the test has seen the
/// messages move; the worker counts them just after).
async fn stats_when(
    worker: &warren::queue::WorkerHandle,
    done: impl Fn(&warren::queue::WorkerStats) -> bool,
) -> warren::queue::WorkerStats {
    tokio::time::timeout(WAIT, async {
        loop {
            let stats = worker.stats();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stats never settled: {:?}", worker.stats()))
}

/// The next `n` messages of `queue`, taken (acknowledged one by one) with
/// the raw transport, so undecodable bodies can be read too; messages the
/// broker pushed beyond `n` go back to the queue.
pub(crate) async fn take(connection: &warren::Connection, queue: &str, n: usize) -> Vec<Delivery> {
    let mut subscription = connection
        .transport()
        .consume(&ConsumeSpec {
            queue: queue.to_owned(),
            prefetch: u16::try_from(n.clamp(1, 100)).unwrap_or(100),
            no_ack: false,
        })
        .await
        .expect("consume");
    let mut out = Vec::new();
    while out.len() < n {
        let delivery = tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("{n} messages on {queue}, got {}", out.len()))
            .expect("subscription open")
            .expect("a delivery");
        delivery.acker.ack().await.expect("ack");
        out.push(delivery);
    }
    subscription.close().await.expect("close");
    out
}

/// Deletes the test's queues (RabbitMQ is shared between tests).
pub(crate) async fn cleanup(connection: &warren::Connection, queues: &[&str]) {
    for queue in queues {
        let _ = connection.transport().delete_queue(queue).await;
    }
}

async fn a_typed_message_makes_the_round_trip_in_each_format(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("tasks");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<Task>::new(&connection, &queue)
        .start(forward(tx, |message| {
            let content_type = message.properties().content_type().map(str::to_owned);
            let persistent = message.properties().delivery_mode();
            (message.into_body(), content_type, persistent)
        }))
        .await
        .expect("worker");
    // The worker reads each message as its content_type says.
    Publisher::<Task>::new(&connection, &queue)
        .publish(&task(1))
        .await
        .expect("JSON publish");
    Publisher::<Task>::new(&connection, &queue)
        .format(Format::MsgPack)
        .publish(&task(2))
        .await
        .expect("MessagePack publish");
    let (first, json, persistent) = recv(&mut rx).await;
    assert_eq!(first, task(1));
    assert_eq!(json.as_deref(), Some("application/json"));
    assert_eq!(persistent, Some(2), "persistent by default");
    let (second, msgpack, _) = recv(&mut rx).await;
    assert_eq!(second, task(2));
    assert_eq!(msgpack.as_deref(), Some("application/msgpack"));
    worker.shutdown().await.expect("shutdown");

    // Plain text, as RabbitMQ's tutorials send it, with no content type.
    let hello = unique("hello");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<String>::new(&connection, &hello)
        .format(Format::Text)
        .start(forward(tx, |message| message.into_body()))
        .await
        .expect("text worker");
    publish_raw(&connection, &hello, Properties::default(), b"Hello World!").await;
    assert_eq!(recv(&mut rx).await, "Hello World!");
    worker.shutdown().await.expect("shutdown");
    cleanup(&connection, &[&queue, &hello]).await;
}

async fn publish_raw(
    connection: &warren::Connection,
    queue: &str,
    properties: Properties,
    body: &[u8],
) {
    connection
        .transport()
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            mandatory: true,
            confirm: true,
            properties,
            body: body.to_vec().into(),
        })
        .await
        .expect("raw publish");
}

async fn the_handler_decides_ack_requeue_or_dead_letter(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("outcomes");
    let dlq = format!("{queue}.dlq");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<Task>::new(&connection, &queue)
        .dead_letter()
        .start(move |message| {
            let tx = tx.clone();
            async move {
                let redelivered = message.redelivered();
                let task = message.into_body();
                let _ = tx.send((task.id, redelivered));
                match task.id {
                    // Requeued once, then taken.
                    1 if !redelivered => Outcome::Requeue,
                    1 => Outcome::Ack,
                    _ => Outcome::Reject(format!("task {} is not wanted", task.id)),
                }
            }
        })
        .await
        .expect("worker");
    let publisher = Publisher::<Task>::new(&connection, &queue);
    publisher.publish(&task(1)).await.expect("publish 1");
    assert_eq!(recv(&mut rx).await, (1, false));
    assert_eq!(recv(&mut rx).await, (1, true), "requeued, delivered again");
    publisher.publish(&task(2)).await.expect("publish 2");
    assert_eq!(recv(&mut rx).await, (2, false));
    let dead = take(&connection, &dlq, 1).await;
    let body: Task = serde_json::from_slice(&dead[0].body).expect("the body as sent");
    assert_eq!(body, task(2));
    assert_eq!(
        warren::queue::text_header(&dead[0].properties, ERROR_HEADER),
        Some("task 2 is not wanted")
    );
    assert_eq!(
        warren::queue::text_header(&dead[0].properties, QUEUE_HEADER),
        Some(queue.as_str())
    );
    let stats = stats_when(&worker, |s| s.dead_lettered == 1).await;
    assert_eq!(
        (stats.acked, stats.requeued, stats.dead_lettered),
        (1, 1, 1),
        "{stats:?}"
    );
    worker.shutdown().await.expect("shutdown");
    let left = connection
        .transport()
        .check_queue(&queue)
        .await
        .expect("check");
    assert_eq!(left.messages, 0, "nothing left behind");
    cleanup(&connection, &[&queue, &dlq]).await;
}

async fn a_failing_message_is_retried_with_backoff_then_dead_lettered(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("retried");
    let dlq = format!("{queue}.dlq");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let retry = Retry::new(2).backoff(Duration::from_millis(50), Duration::from_millis(200));
    let worker = Worker::<Task>::new(&connection, &queue)
        .retry(retry)
        .dead_letter()
        .start(move |message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(message.retries());
                Err::<(), _>(format!("flaky backend (attempt {})", message.retries() + 1))
            }
        })
        .await
        .expect("worker");
    // The retry queues exist, with their TTL and dead-letter target.
    for n in 1..=2 {
        connection
            .transport()
            .check_queue(&Retry::queue_name(&queue, n))
            .await
            .expect("a retry queue");
    }
    Publisher::<Task>::new(&connection, &queue)
        .publish(&task(9))
        .await
        .expect("publish");
    // First attempt, then one per retry, each counted in the header.
    assert_eq!(recv(&mut rx).await, 0);
    assert_eq!(recv(&mut rx).await, 1);
    assert_eq!(recv(&mut rx).await, 2);
    let dead = take(&connection, &dlq, 1).await;
    let reason = warren::queue::text_header(&dead[0].properties, ERROR_HEADER).expect("a reason");
    assert!(
        reason.contains("gave up after 2 retries") && reason.contains("flaky backend (attempt 3)"),
        "{reason}"
    );
    let stats = stats_when(&worker, |s| s.dead_lettered == 1).await;
    assert_eq!(
        (stats.retried, stats.dead_lettered, stats.acked),
        (2, 1, 0),
        "{stats:?}"
    );
    worker.shutdown().await.expect("shutdown");
    let retries = [Retry::queue_name(&queue, 1), Retry::queue_name(&queue, 2)];
    cleanup(&connection, &[&queue, &dlq, &retries[0], &retries[1]]).await;
}

async fn an_undecodable_message_is_dead_lettered_with_its_reason(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("undecodable");
    let dlq = format!("{queue}.dlq");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<Task>::new(&connection, &queue)
        .dead_letter()
        .start(forward(tx, |message| message.into_body()))
        .await
        .expect("worker");
    let json = Properties::default()
        .with_content_type("application/json")
        .expect("properties");
    // Not JSON; JSON of the wrong shape; a content type nobody reads.
    publish_raw(&connection, &queue, json.clone(), b"\x00\xffnot json").await;
    publish_raw(&connection, &queue, json, br#"{"id": "seven"}"#).await;
    let png = Properties::default()
        .with_content_type("image/png")
        .expect("properties");
    publish_raw(&connection, &queue, png, b"\x89PNG").await;
    // The worker is still there for a good one.
    Publisher::<Task>::new(&connection, &queue)
        .publish(&task(3))
        .await
        .expect("publish");
    assert_eq!(recv(&mut rx).await, task(3));
    let dead = take(&connection, &dlq, 3).await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| warren::queue::text_header(&d.properties, ERROR_HEADER).expect("a reason"))
        .collect();
    assert!(
        reasons.iter().all(|r| r.starts_with("undecodable")),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("invalid type"), "{reasons:?}");
    assert!(reasons[2].contains("image/png"), "{reasons:?}");
    assert_eq!(
        &dead[0].body[..],
        b"\x00\xffnot json",
        "the body kept as it was"
    );
    stats_when(&worker, |s| s.dead_lettered == 3 && s.undecodable == 3).await;
    worker.shutdown().await.expect("shutdown");
    cleanup(&connection, &[&queue, &dlq]).await;
}

async fn returned_and_nacked_messages_are_typed_errors(backend: Backend) {
    let (connection, broker) = backend.connect().await;
    let missing = unique("missing");
    let err = Publisher::<Task>::new(&connection, &missing)
        .publish(&task(1))
        .await
        .expect_err("no such queue");
    assert!(err.is_returned() && !err.is_transport(), "{err:?}");
    assert!(err.to_string().contains(&missing), "{err}");

    // A full queue that refuses publishes nacks them.
    let full = unique("full");
    declare_overflowing(backend, broker.as_ref(), &full).await;
    let publisher = Publisher::<Task>::new(&connection, &full);
    publisher.publish(&task(1)).await.expect("room for one");
    let err = publisher.publish(&task(2)).await.expect_err("full");
    assert!(err.is_refused() && !err.is_transport(), "{err:?}");
    // Unconfirmed publishes do not wait, and do not know.
    publisher
        .clone()
        .confirm(false)
        .publish(&task(3))
        .await
        .expect("fire and forget");
    cleanup(&connection, &[&full]).await;
}

/// A queue holding one message that refuses publishes beyond it
/// (`x-max-length: 1`, `x-overflow: reject-publish`: warren's transport
/// declares no length limits), declared by a second client: lapin over TCP,
/// the broker's core in-process.
async fn declare_overflowing(
    backend: Backend,
    broker: Option<&warren::broker::BrokerHandle>,
    name: &str,
) {
    use amq_protocol::types::{AMQPValue, FieldTable};
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let url = match (backend, broker) {
        (Backend::InProcess, Some(broker)) => {
            let connection = broker
                .core()
                .open_connection("/", broker.user())
                .expect("core connection");
            let (channel, _events) = connection.open_channel_mpsc();
            channel
                .queue_declare(
                    name,
                    warren::broker::core::QueueDeclareOptions {
                        arguments,
                        ..Default::default()
                    },
                )
                .expect("declare");
            return;
        }
        (Backend::EmbeddedTcp, Some(broker)) => broker.url(),
        _ => rabbitmq_url(),
    };
    let amqp = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("lapin");
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .expect("declare");
    let _ = amqp.close(200, "OK".into()).await;
}

async fn a_missing_queue_is_named_when_the_worker_only_checks(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("operator-made");
    let err = Worker::<Task>::new(&connection, &queue)
        .declare(false)
        .start(|_| async {})
        .await
        .expect_err("nobody declared it");
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains(&queue), "{err}");
    // Its dead-letter queue is checked too.
    Publisher::<Task>::new(&connection, &queue)
        .declare()
        .await
        .expect("declare");
    let err = Worker::<Task>::new(&connection, &queue)
        .declare(false)
        .dead_letter()
        .start(|_| async {})
        .await
        .expect_err("no dead-letter queue");
    assert!(err.to_string().contains(&format!("{queue}.dlq")), "{err}");
    let worker = Worker::<Task>::new(&connection, &queue)
        .declare(false)
        .start(|_| async {})
        .await
        .expect("the queue exists now");
    worker.shutdown().await.expect("shutdown");
    cleanup(&connection, &[&queue]).await;
}

async fn one_worker_consumes_several_queues(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let (a, b) = (unique("a"), unique("b"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<Task>::new(&connection, &a)
        .queue(&b)
        .start(forward(tx, |message: Message<Task>| {
            (message.queue().to_owned(), message.into_body().id)
        }))
        .await
        .expect("worker");
    Publisher::<Task>::new(&connection, &a)
        .publish(&task(1))
        .await
        .expect("a");
    Publisher::<Task>::new(&connection, &b)
        .publish(&task(2))
        .await
        .expect("b");
    let mut got = vec![recv(&mut rx).await, recv(&mut rx).await];
    got.sort();
    let mut want = vec![(a.clone(), 1), (b.clone(), 2)];
    want.sort();
    assert_eq!(got, want);
    worker.shutdown().await.expect("shutdown");
    cleanup(&connection, &[&a, &b]).await;
}

async fn concurrency_is_bounded_and_shutdown_drains(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("bounded");
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (started, mut starts) = mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = {
        let (running, most, gate) = (running.clone(), most.clone(), gate.clone());
        Worker::<Task>::new(&connection, &queue)
            .concurrency(2)
            .prefetch(5)
            .start(move |message| {
                let (running, most, gate, started) =
                    (running.clone(), most.clone(), gate.clone(), started.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = started.send(message.body.id);
                    // Held until the test lets it go.
                    let _ = gate.acquire().await.map(|p| p.forget());
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .await
            .expect("worker")
    };
    let publisher = Publisher::<Task>::new(&connection, &queue);
    for id in 0..6 {
        publisher.publish(&task(id)).await.expect("publish");
    }
    recv(&mut starts).await;
    recv(&mut starts).await;
    // A third handler must not start while two hold their permits.
    let third = drain(&mut starts, 1, Duration::from_millis(300)).await;
    assert!(third.is_empty(), "a third handler ran: {third:?}");
    assert_eq!(worker.in_flight(), 2);
    // Shut down while two run: they finish and are acknowledged (as is any
    // handler that started before the shutdown did); the messages
    // prefetched or still queued stay in the queue.
    let stopping = tokio::spawn(worker.shutdown_within(WAIT));
    gate.add_permits(6);
    stopping.await.expect("join").expect("shutdown");
    assert_eq!(most.load(Ordering::SeqCst), 2);
    let handled = 2 + drain(&mut starts, 4, Duration::ZERO).await.len();
    let left = connection
        .transport()
        .check_queue(&queue)
        .await
        .expect("check");
    assert_eq!(
        left.messages as usize,
        6 - handled,
        "the {handled} handled were acked, the rest kept"
    );
    cleanup(&connection, &[&queue]).await;
}

async fn subscribers_get_every_message_through_exclusive_bound_queues(backend: Backend) {
    use warren::transport::{ExchangeKind, ExchangeSpec, QueueSpec};
    let (connection, _broker) = backend.connect().await;
    let exchange = unique("logs");
    connection
        .transport()
        .declare_exchange(&ExchangeSpec {
            name: exchange.clone(),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: false,
        })
        .await
        .expect("exchange");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for subscriber in 0..2 {
        let tx = tx.clone();
        // An empty name: a generated one, for this connection only.
        let worker = Worker::<String>::new(&connection, "")
            .exclusive(true)
            .bind(&exchange, "")
            .format(Format::Text)
            .start(forward(tx, move |message| {
                (subscriber, message.into_body())
            }))
            .await
            .expect("subscriber");
        assert!(
            worker.queues()[0].starts_with("warren.gen-"),
            "{:?}",
            worker.queues()
        );
        workers.push(worker);
    }
    assert_ne!(workers[0].queues(), workers[1].queues());
    Publisher::<str>::to_exchange(&connection, &exchange, "")
        .format(Format::Text)
        .publish("info: hello")
        .await
        .expect("publish");
    let mut got = vec![recv(&mut rx).await, recv(&mut rx).await];
    got.sort();
    assert_eq!(
        got,
        [(0, "info: hello".to_owned()), (1, "info: hello".to_owned())]
    );
    // Nobody bound: dropped by the broker, not an error (not mandatory).
    let nobody = unique("nobody");
    connection
        .transport()
        .declare_exchange(&ExchangeSpec {
            name: nobody.clone(),
            kind: ExchangeKind::Fanout,
            durable: false,
            auto_delete: false,
        })
        .await
        .expect("exchange");
    Publisher::<str>::to_exchange(&connection, &nobody, "")
        .format(Format::Text)
        .publish("lost")
        .await
        .expect("no subscriber is not an error");
    for worker in workers {
        worker.shutdown().await.expect("shutdown");
    }

    // A transient queue another client declared: declared alike.
    let hello = unique("hello");
    connection
        .transport()
        .declare_queue(&QueueSpec {
            name: hello.clone(),
            ..QueueSpec::default()
        })
        .await
        .expect("transient queue");
    let publisher = Publisher::<str>::new(&connection, &hello)
        .format(Format::Text)
        .durable(false);
    publisher.declare().await.expect("declared alike");
    let worker = Worker::<String>::new(&connection, &hello)
        .durable(false)
        .format(Format::Text)
        .start(forward(tx, |message| (2, message.into_body())))
        .await
        .expect("worker on the transient queue");
    publisher.publish("Hello World!").await.expect("publish");
    assert_eq!(recv(&mut rx).await, (2, "Hello World!".to_owned()));
    worker.shutdown().await.expect("shutdown");
    cleanup(&connection, &[&hello]).await;
}

async fn a_panicking_handler_dead_letters_its_message_and_the_worker_goes_on(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("panics");
    let dlq = format!("{queue}.dlq");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<Task>::new(&connection, &queue)
        .dead_letter()
        .start(move |message| {
            let tx = tx.clone();
            async move {
                let task = message.into_body();
                if task.id == 13 {
                    panic!("unlucky task {}", task.id);
                }
                let _ = tx.send(task.id);
            }
        })
        .await
        .expect("worker");
    let publisher = Publisher::<Task>::new(&connection, &queue);
    publisher.publish(&task(13)).await.expect("publish");
    publisher.publish(&task(14)).await.expect("publish");
    assert_eq!(recv(&mut rx).await, 14, "the worker went on");
    let dead = take(&connection, &dlq, 1).await;
    let reason = warren::queue::text_header(&dead[0].properties, ERROR_HEADER).expect("reason");
    assert_eq!(reason, "handler panicked: unlucky task 13");
    worker.shutdown().await.expect("shutdown");
    cleanup(&connection, &[&queue, &dlq]).await;
}

async fn dropping_the_handle_gives_back_what_was_not_started(backend: Backend) {
    let (connection, _broker) = backend.connect().await;
    let queue = unique("dropped");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (started, mut starts) = mpsc::unbounded_channel();
    let worker = {
        let gate = gate.clone();
        Worker::<Task>::new(&connection, &queue)
            .prefetch(5)
            .start(move |message| {
                let (gate, started) = (gate.clone(), started.clone());
                async move {
                    let _ = started.send(message.body.id);
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
            })
            .await
            .expect("worker")
    };
    let publisher = Publisher::<Task>::new(&connection, &queue);
    for id in 0..3 {
        publisher.publish(&task(id)).await.expect("publish");
    }
    assert_eq!(recv(&mut starts).await, 0);
    drop(worker);
    // The handler running finishes and is acknowledged; the two prefetched
    // behind it go back to the queue.
    gate.add_permits(3);
    let back = tokio::time::timeout(WAIT, async {
        loop {
            let stats = connection
                .transport()
                .check_queue(&queue)
                .await
                .expect("check");
            if stats.messages == 2 && stats.consumers == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the prefetched messages never came back");
    cleanup(&connection, &[&queue]).await;
}

async fn a_stage_sends_to_every_destination_then_acks(backend: Backend) {
    use warren::queue::Stage;
    let (connection, _broker) = backend.connect().await;
    let (origin, a, b, dlq) = (unique("origin"), unique("a"), unique("b"), unique("dlq"));
    // Nothing declared: the stage names the missing origin.
    let err = Stage::new(&connection, &origin, [&a, &b])
        .run(|task: Task| async move { Ok::<_, String>(task) })
        .await
        .expect_err("no queues");
    assert!(
        err.is_not_found() && err.to_string().contains(&origin),
        "{err}"
    );
    let stage = Stage::new(&connection, &origin, [&a, &b])
        .declare(true)
        .dead_letter_queue(&dlq)
        .run(|task: Task| async move {
            if task.id == 0 {
                return Err(format!("task {} cannot be done", task.id));
            }
            Ok(Task {
                id: task.id * 10,
                name: format!("{} done", task.name),
            })
        })
        .await
        .expect("stage");
    let publisher = Publisher::<Task>::new(&connection, &origin);
    publisher.publish(&task(0)).await.expect("publish");
    publisher.publish(&task(4)).await.expect("publish");
    for queue in [&a, &b] {
        let out = take(&connection, queue, 1).await;
        let done: Task = serde_json::from_slice(&out[0].body).expect("JSON");
        assert_eq!(done.id, 40);
        assert_eq!(done.name, "task-4 done");
    }
    let dead = take(&connection, &dlq, 1).await;
    assert_eq!(
        warren::queue::text_header(&dead[0].properties, ERROR_HEADER),
        Some("task 0 cannot be done")
    );
    stage.shutdown().await.expect("shutdown");
    let left = connection
        .transport()
        .check_queue(&origin)
        .await
        .expect("check");
    assert_eq!(left.messages, 0);
    cleanup(&connection, &[&origin, &a, &b, &dlq]).await;
}

/// Publishes awaited one after another arrive in that order, confirms or
/// not: AMQP orders messages per channel only, so a client that spread its
/// publishes over several channels could see two of them overtake each
/// other at the broker (RabbitMQ runs a process per channel).
async fn unconfirmed_publishes_from_one_publisher_arrive_in_order(backend: Backend) {
    const COUNT: u32 = 2_000;
    let (connection, _broker) = backend.connect().await;
    let queue = unique("ordered");
    let publisher = Publisher::<Task>::new(&connection, &queue)
        .confirm(false)
        .persistent(false);
    publisher.declare().await.expect("declare");
    for id in 0..COUNT {
        publisher.publish(&task(id)).await.expect("publish");
    }
    let ids: Vec<u32> = take(&connection, &queue, COUNT as usize)
        .await
        .iter()
        .map(|d| serde_json::from_slice::<Task>(&d.body).expect("JSON").id)
        .collect();
    if let Some(at) = ids.iter().zip(0..).position(|(id, i)| *id != i) {
        let near = &ids[at..(at + 10).min(ids.len())];
        panic!("out of the order published from message {at}: then {near:?}");
    }
    assert_eq!(ids.len(), COUNT as usize);
    cleanup(&connection, &[&queue]).await;
}
