//! Scaling past one machine, shown: a three-node RabbitMQ cluster with
//! quorum queues, and the node a server or a client is connected to
//! stopped under load.
//!
//! The server connects to node 1 first, the client to node 2 first, each
//! with the other nodes as fail-over hosts (`rabbit://h1,h2,h3`). While four
//! callers call in a loop and a fifth casts:
//! 1. node 1 stops: the server reconnects to a surviving node and consumes
//!    its quorum queue again; requests it held unacknowledged come back to it;
//! 2. node 1 returns and node 2 stops: the client's reply queue goes with
//!    its connection, so each call in flight fails with an outcome-unknown
//!    error, and the next call reconnects to node 3.
//!
//! Only calls in flight at a cut may fail (each caller has one at a time, so
//! at most one failure per caller per cut), and only as outcome-unknown or
//! timed out; calls succeed again after each cut; casts sent after the
//! last cut all arrive. Failover times are printed, not asserted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::rabbit::RabbitCluster;
use crate::common::*;
use tokio::sync::mpsc;

const CALLERS: usize = 4;
/// Successful calls to see in each phase before moving on.
const PER_PHASE: u64 = 50;
/// Hang guard for each phase (not a timing claim).
const GUARD: Duration = Duration::from_secs(180);

/// What the callers saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// (when, outcome unknown?, timed out?, debug text) of each failure.
    failures: Mutex<Vec<(Instant, bool, bool, String)>>,
    /// When the last success completed.
    last_ok: Mutex<Option<Instant>>,
}

impl Tally {
    /// Waits for `n` more successes; returns when the first of them came.
    async fn more(&self, n: u64, what: &str) -> Instant {
        let start = self.ok.load(Ordering::Acquire);
        let deadline = Instant::now() + GUARD;
        let mut first = None;
        loop {
            let now = self.ok.load(Ordering::Acquire);
            if now > start && first.is_none() {
                first = *self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
            }
            if now >= start + n {
                return first.unwrap_or_else(Instant::now);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: calls did not resume ({} of {n} after {GUARD:?}); failures: {:?}",
                now - start,
                self.failures.lock().unwrap_or_else(|p| p.into_inner())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn failures_between(&self, from: Instant, to: Instant) -> Vec<(bool, bool, String)> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(at, ..)| *at >= from && *at < to)
            .map(|(_, unknown, timeout, text)| (*unknown, *timeout, text.clone()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_and_casts_survive_stopping_the_servers_node_then_the_clients_node() {
    let cluster = match tokio::task::spawn_blocking(|| RabbitCluster::start(3))
        .await
        .expect("start the cluster")
    {
        Some(cluster) => Arc::new(cluster),
        // RabbitNode::start printed why.
        None => return,
    };
    let topic = unique("calc");
    let server_conn = warren::connect(&cluster.url(&[0, 1, 2]))
        .await
        .expect("server connects to node 1");
    let client_conn = warren::connect(&cluster.url(&[1, 2, 0]))
        .await
        .expect("client connects to node 2");
    let (records, mut recorded) = mpsc::unbounded_channel();
    let server = calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&server_conn, "s1")
        .await
        .expect("serve on the cluster");
    let client = CalcClient::new(&client_conn)
        .topic(&topic)
        .timeout(Duration::from_secs(30));
    assert_eq!(client.add(1, 2).await.expect("a first call"), 3);

    let start = Instant::now();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..CALLERS as i64 {
        let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                match client.add(caller, i).await {
                    Ok(sum) => {
                        assert_eq!(sum, caller + i);
                        *tally.last_ok.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now());
                        tally.ok.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        tally
                            .failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((
                                Instant::now(),
                                e.is_outcome_unknown(),
                                e.is_timeout(),
                                format!("{e:?}"),
                            ));
                        // A failed call is retried by the next iteration;
                        // don't spin while the client reconnects.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let casts_sent = Arc::new(Mutex::new(Vec::<(Instant, i64)>::new()));
    let caster = {
        let (client, stop, sent) = (client.clone(), stop.clone(), casts_sent.clone());
        tokio::spawn(async move {
            let mut v = 0i64;
            while !stop.load(Ordering::Acquire) {
                v += 1;
                if client.record(v).await.is_ok() {
                    sent.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), v));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    tally.more(PER_PHASE, "before any cut").await;

    // Cut 1: the server's node.
    let cut1 = Instant::now();
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.nodes[0].stop_app())
        .await
        .expect("stop node 1");
    let resumed1 = tally
        .more(PER_PHASE, "after stopping the server's node")
        .await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.nodes[0].start_app())
        .await
        .expect("restart node 1");

    // Cut 2: the client's node.
    let cut2 = Instant::now();
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.nodes[1].stop_app())
        .await
        .expect("stop node 2");
    let resumed2 = tally
        .more(PER_PHASE, "after stopping the client's node")
        .await;
    let after_cuts = Instant::now();
    tally.more(PER_PHASE, "after both cuts").await;

    stop.store(true, Ordering::Release);
    for caller in callers {
        caller.await.expect("a caller");
    }
    caster.await.expect("the caster");
    let end = Instant::now();

    println!(
        "failover: server's node {:?} until calls complete again, client's node {:?}; \
         {} calls, failures {:?}",
        resumed1.saturating_duration_since(cut1),
        resumed2.saturating_duration_since(cut2),
        tally.ok.load(Ordering::Acquire),
        tally.failures_between(cut1, end)
    );
    for (name, from, to) in [("cut 1", cut1, cut2), ("cut 2", cut2, end)] {
        let failures = tally.failures_between(from, to);
        assert!(
            failures.len() <= CALLERS,
            "{name}: only calls in flight may fail (one per caller): {failures:?}"
        );
        for (unknown, timeout, text) in &failures {
            assert!(
                *unknown || *timeout,
                "{name}: a failed call is outcome-unknown or timed out: {text}"
            );
        }
    }
    assert!(
        tally.failures_between(start, cut1).is_empty(),
        "nothing fails before the first cut"
    );

    // Casts sent once both cuts were over all arrive.
    let late: Vec<i64> = casts_sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|(at, _)| *at >= after_cuts)
        .map(|(_, v)| *v)
        .collect();
    assert!(!late.is_empty(), "casts flowed after the cuts");
    let deadline = Instant::now() + GUARD;
    let mut seen = std::collections::HashSet::new();
    while !late.iter().all(|v| seen.contains(v)) {
        assert!(Instant::now() < deadline, "casts after the cuts were lost");
        match tokio::time::timeout(Duration::from_secs(1), recorded.recv()).await {
            Ok(Some((_, v))) => {
                seen.insert(v);
            }
            Ok(None) => panic!("the server's record channel closed"),
            Err(_) => {}
        }
    }
    server.shutdown().await.expect("graceful shutdown");
    client_conn.close().await.expect("close the client");
    server_conn.close().await.expect("close the server");
}
