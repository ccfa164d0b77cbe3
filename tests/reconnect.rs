//! A broker restart: a call in flight at the cut fails at once with an
//! outcome-unknown error; while the broker is down, calls and casts fail at
//! once with a transport error; once it is back, the client reconnects on its
//! next call and the server declares its topology again and resumes
//! consuming, with nothing restarted on the application's side.
//!
//! Runs against warren's broker (stopped, then started again on the same
//! port) and against RabbitMQ (`rabbitmqctl stop_app` / `start_app`, which
//! forgets every transient exchange and queue, as a node restart does).

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::mpsc;
use warren::broker::Broker;

/// Serves `Calc` and checks call, cast and fanout cast before the broker
/// goes `down`, while it is down, and after it comes back `up` (futures do
/// nothing until awaited).
async fn survives_a_restart<T>(
    url: &str,
    down: impl Future<Output = ()>,
    up: impl Future<Output = T>,
) {
    let connection = warren::connect(url).await.expect("connect");
    let topic = unique("calc");
    let (records, mut recorded) = mpsc::unbounded_channel();
    let server = calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .expect("serve");
    let client = CalcClient::new(&connection)
        .topic(&topic)
        .timeout(Duration::from_secs(2));
    assert_eq!(client.add(1, 2).await.expect("call before the restart"), 3);

    // A call the server is running when the connection goes: its reply
    // cannot come, and the caller hears so at once rather than at its
    // timeout (30 s: a timeout fails the assertion below).
    let in_flight = {
        let client = client.clone().timeout(Duration::from_secs(30));
        tokio::spawn(async move { client.sleep_ms(3_000).await })
    };
    let guard = Instant::now() + Duration::from_secs(60);
    while server.in_flight() == 0 {
        assert!(Instant::now() < guard, "the server never got the call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    down.await;
    let err = in_flight
        .await
        .expect("the call's task")
        .expect_err("the connection broke under the call");
    assert!(err.is_outcome_unknown(), "{err:?}");
    assert!(
        err.is_transport(),
        "outcome unknown is a transport error: {err:?}"
    );
    let err = client.add(1, 2).await.expect_err("the broker is down");
    assert!(err.is_transport(), "{err:?}");
    assert!(!err.is_outcome_unknown(), "nothing was sent: {err:?}");
    let err = client.record(1).await.expect_err("the broker is down");
    assert!(err.is_transport(), "{err:?}");
    let _restarted = up.await;

    // The server resumes by itself (backoff up to 5 s); meanwhile a call may
    // time out or find the connection not yet back. A generous bound keeps
    // a broken recovery from hanging the suite; it is not a timing claim.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.add(2, 3).await {
            Ok(sum) => {
                assert_eq!(sum, 5);
                break;
            }
            Err(e) => {
                assert!(e.is_transport() || e.is_timeout(), "{e:?}");
                assert!(Instant::now() < deadline, "no recovery: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    client.record(7).await.expect("cast after the restart");
    client
        .fanout()
        .record(8)
        .await
        .expect("fanout after the restart");
    let got = drain(&mut recorded, 2, Duration::from_secs(10)).await;
    let mut values: Vec<i64> = got.into_iter().map(|(_, v)| v).collect();
    values.sort();
    assert_eq!(values, vec![7, 8]);
    server.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_resumes_after_the_embedded_broker_restarts() {
    let broker = embedded_broker().await;
    let addr = broker.local_addrs()[0];
    let url = broker.url();
    let up = async move {
        Broker::builder()
            .listen(addr)
            .start()
            .await
            .expect("restart on the same port")
    };
    survives_a_restart(&url, broker.shutdown(), up).await;
}

/// Starts RabbitMQ's application again however the test ends, so a failing
/// assertion while it is stopped cannot take the rest of the suite down
/// with it (`start_app` on a running node is a no-op).
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .status();
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "120"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_resumes_after_rabbitmq_restarts() {
    let url = rabbitmq_url();
    let _restart_anyway = StartAppOnDrop;
    let down = async {
        tokio::task::spawn_blocking(|| rabbitmqctl(&["stop_app"]))
            .await
            .expect("stop_app");
    };
    let up = async {
        tokio::task::spawn_blocking(|| {
            rabbitmqctl(&["start_app"]);
            rabbitmqctl(&["await_startup", "--timeout", "120"]);
        })
        .await
        .expect("start_app");
    };
    survives_a_restart(&url, down, up).await;
}

/// A queue worker (`warren::queue::Worker`) lives through a broker restart
/// as RPC servers do: its consumer is cut off, it declares its queues again
/// on the restarted broker (which forgot them) and consumes again; the
/// publisher reconnects on its next publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_worker_resumes_after_the_embedded_broker_restarts() {
    use warren::queue::{Publisher, Worker};

    let broker = embedded_broker().await;
    let addr = broker.local_addrs()[0];
    let connection = warren::connect(&broker.url()).await.expect("connect");
    let queue = unique("work");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::<u32>::new(&connection, &queue)
        .start(move |message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(message.into_body());
            }
        })
        .await
        .expect("worker");
    let publisher = Publisher::<u32>::new(&connection, &queue);
    publisher.publish(&1).await.expect("before the restart");
    assert_eq!(drain(&mut rx, 1, Duration::from_secs(30)).await, [1]);

    broker.shutdown().await;
    let err = publisher.publish(&2).await.expect_err("the broker is down");
    assert!(err.is_transport(), "{err:?}");
    let _restarted = Broker::builder()
        .listen(addr)
        .start()
        .await
        .expect("restart on the same port");
    // The worker declares its queue again and consumes it.
    let guard = Instant::now() + Duration::from_secs(60);
    loop {
        match connection.transport().check_queue(&queue).await {
            Ok(stats) if stats.consumers > 0 => break,
            _ => {
                assert!(Instant::now() < guard, "the worker never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    publisher.publish(&3).await.expect("after the restart");
    assert_eq!(drain(&mut rx, 1, Duration::from_secs(30)).await, [3]);
    worker.shutdown().await.expect("shutdown");
}
