//! Memory watermark, connection.blocked, bounded writer queues and the flood test.
//!
//! - **Flood**: `warren broker` runs as a process of its own (so that its
//!   resident memory can be read from /proc) with a watermark W of its idle
//!   resident memory plus 64 MiB. Four lapin publishers (which announce the
//!   `connection.blocked` capability) and two raw ones (which do not) flood
//!   one queue with 4 KiB messages, more than W can hold, while nobody
//!   consumes. The capable publishers receive `connection.blocked`; the raw
//!   ones are stalled without it and stay connected; the broker's resident
//!   memory never exceeds 1.25·W. Then a consumer drains the queue: the
//!   publishers receive `connection.unblocked`, finish, and every confirmed
//!   message is consumed.
//! - **Watermark 0** blocks the first publish; a consume-only connection is
//!   served meanwhile; raising the watermark unblocks.
//! - **Slow reader**: a no-ack consumer whose socket is never read (a tiny
//!   receive buffer) gets at most a writer's budget plus what the kernel
//!   buffers; the rest of its backlog stays queued (visible to the memory
//!   alarm), and other consumers and clients are served all along.
//! - Replies over a connection's 1 MiB reply budget (big `basic.get-ok`s)
//!   pause its reader only until written.
//! - The gauge counts queued messages, transaction buffers and incomplete
//!   bodies, and releases them; in-process publishes wait for the alarm too.
//!
//! Timeouts are hang guards, not timing assertions.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as RawTable};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::time::timeout;
use warren::broker::core::MemoryWatermark;
use warren::broker::Broker;

use crate::common::raw::{encode, encode_all, next_frame, publish, Opts, Peer};

/// Body size of the flood's messages.
const BODY: usize = 4096;
/// W is the broker's idle resident memory plus this.
const HEADROOM: u64 = 64 << 20;
/// Resident memory must stay at or under W times this.
const RSS_MARGIN: f64 = 1.25;
/// Messages each lapin publisher sends (4 × 6,000 × 4 KiB = 94 MiB).
const PER_PUBLISHER: u32 = 6_000;
/// Messages each raw publisher sends (2 × 12,000 × 4 KiB = 94 MiB).
const PER_RAW_PUBLISHER: u32 = 12_000;
/// Unconfirmed messages a lapin publisher keeps in flight.
const IN_FLIGHT: usize = 256;
/// Hang guard for each phase.
const GUARD: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------- helpers

/// `warren broker` as a child process, killed on drop.
struct BrokerProcess {
    child: Child,
    port: u16,
}

impl BrokerProcess {
    fn start(watermark: &str) -> Self {
        let port = crate::common::free_port();
        let child = Command::new(crate::common::warren_bin())
            .args([
                "broker",
                "--in-memory",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--memory-high-watermark",
                watermark,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("warren broker starts");
        let broker = Self { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "warren broker did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Resident memory in bytes.
    fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Polls a process's resident memory until stopped, keeping the peak.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn connect(url: &str) -> Connection {
    timeout(
        Duration::from_secs(30),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .expect("connect: hang guard")
    .expect("connect")
}

async fn declare(ch: &Channel, q: &str) -> u32 {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare")
    .message_count()
}

/// A body tagged with its publisher and sequence number.
fn body(publisher: u32, seq: u32) -> Vec<u8> {
    let mut b = vec![0u8; BODY];
    b[..4].copy_from_slice(&publisher.to_be_bytes());
    b[4..8].copy_from_slice(&seq.to_be_bytes());
    b
}

fn tag_of(body: &[u8]) -> (u32, u32) {
    let word = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    (word(0), word(4))
}

/// What a connection heard about blocking.
#[derive(Default)]
struct Blocking {
    blocked: AtomicUsize,
    unblocked: AtomicUsize,
    reason: Mutex<Option<String>>,
}

fn watch_blocking(conn: &Connection) -> Arc<Blocking> {
    let heard = Arc::new(Blocking::default());
    let h = heard.clone();
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                Event::ConnectionBlocked(reason) => {
                    *h.reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    h.blocked.fetch_add(1, Ordering::SeqCst);
                }
                Event::ConnectionUnblocked => {
                    h.unblocked.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    heard
}

/// Publishes `count` tagged messages to `queue` with confirms, at most
/// [`IN_FLIGHT`] unconfirmed; returns the confirmed sequence numbers.
async fn publish_confirmed(ch: Channel, queue: String, publisher: u32, count: u32) -> Vec<u32> {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut pending = FuturesUnordered::new();
    let mut confirmed = Vec::new();
    let settle = |r: (u32, lapin::Result<Confirmation>), confirmed: &mut Vec<u32>| {
        if let (seq, Ok(Confirmation::Ack(_))) = r {
            confirmed.push(seq);
        }
    };
    for seq in 0..count {
        if pending.len() >= IN_FLIGHT {
            if let Some(r) = pending.next().await {
                settle(r, &mut confirmed);
            }
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body(publisher, seq),
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish");
        pending.push(async move { (seq, confirm.await) });
    }
    while let Some(r) = pending.next().await {
        settle(r, &mut confirmed);
    }
    confirmed
}

/// A raw peer (no client library) logged in as guest on the broker at
/// `port`, with channel 1 open. `capable`: announce `connection.blocked`
/// (and nothing else); `recv_buffer`: a small SO_RCVBUF for a peer that will
/// stop reading.
async fn raw_peer(port: u16, capable: bool, recv_buffer: Option<u32>) -> Peer {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let sock = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let mut props = RawTable::default();
    props.insert("product".into(), AMQPValue::LongString("raw peer".into()));
    if capable {
        let mut caps = RawTable::default();
        caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    }
    let mut peer = Peer::new(
        sock,
        Opts {
            guard: Duration::from_secs(30),
            channel_max: Some(16),
            frame_max: Some(131_072),
            client_properties: props,
            ..Opts::default()
        },
    );
    peer.start().await;
    peer.log_in(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .await;
    peer.open_ok().await;
    peer.open_channel(1).await;
    peer
}

/// What a raw publisher's socket received.
#[derive(Default)]
struct RawHeard {
    sent: AtomicUsize,
    blocked: AtomicBool,
    closed: AtomicBool,
}

/// A raw publisher that does not announce `connection.blocked`: writes
/// `count` messages, noting what the broker sends meanwhile.
async fn raw_publisher(port: u16, queue: String, publisher: u32, count: u32) -> Arc<RawHeard> {
    let peer = raw_peer(port, false, None).await;
    let heard = Arc::new(RawHeard::default());
    let (mut rd, mut wr) = peer.sock.into_split();
    let mut buf = peer.buf;
    let h = heard.clone();
    tokio::spawn(async move {
        while let Some(f) = next_frame(&mut rd, &mut buf).await {
            if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(_))) =
                f
            {
                h.blocked.store(true, Ordering::SeqCst);
            }
        }
        h.closed.store(true, Ordering::SeqCst);
    });
    let h = heard.clone();
    tokio::spawn(async move {
        for seq in 0..count {
            if wr
                .write_all(&encode_all(&publish(1, "", &queue, &body(publisher, seq))))
                .await
                .is_err()
            {
                return;
            }
            h.sent.fetch_add(1, Ordering::SeqCst);
        }
        // Keep the write half open: the test closes it by dropping the runtime.
        std::future::pending::<()>().await;
    });
    heard
}

/// Polls `cond` every 20 ms until it holds; panics after `guard`.
async fn until(what: &str, guard: Duration, mut cond: impl FnMut() -> bool) {
    let waited = timeout(guard, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "hang guard: {what} within {guard:?}");
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_blocks_publishers_under_the_watermark_and_loses_no_confirmed_message() {
    // The broker's idle footprint, then W above it.
    let idle = {
        let b = BrokerProcess::start("1TiB");
        let c = connect(&b.url()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss = b.rss();
        drop(c);
        rss
    };
    assert!(idle > 0, "resident memory readable from /proc");
    let watermark = idle + HEADROOM;
    let broker = BrokerProcess::start(&watermark.to_string());
    let rss = RssWatch::start(broker.child.id());
    let url = broker.url();
    let queue = "flood".to_owned();

    let setup = connect(&url).await;
    let setup_ch = setup.create_channel().await.expect("channel");
    declare(&setup_ch, &queue).await;

    // Phase 1: four capable and two raw publishers, no consumer.
    let mut publishers = Vec::new();
    let mut heard = Vec::new();
    let mut conns = Vec::new();
    for p in 0..4u32 {
        let conn = connect(&url).await;
        heard.push(watch_blocking(&conn));
        let ch = conn.create_channel().await.expect("channel");
        publishers.push(tokio::spawn(publish_confirmed(
            ch,
            queue.clone(),
            p,
            PER_PUBLISHER,
        )));
        conns.push(conn);
    }
    let mut raw = Vec::new();
    for p in 100..102u32 {
        raw.push(raw_publisher(broker.port, queue.clone(), p, PER_RAW_PUBLISHER).await);
    }
    until(
        "every capable publisher receives connection.blocked",
        GUARD,
        || heard.iter().all(|h| h.blocked.load(Ordering::SeqCst) > 0),
    )
    .await;
    for h in &heard {
        let reason = h.reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(reason.as_deref(), Some("low on memory"));
    }
    // Blocked for a while: nobody is hung up on, the raw publishers are
    // stalled without being told (they did not announce the capability).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in &raw {
        assert!(
            !r.blocked.load(Ordering::SeqCst),
            "connection.blocked only to capable clients"
        );
        assert!(
            !r.closed.load(Ordering::SeqCst),
            "a blocked raw publisher stays connected"
        );
        assert!(
            (r.sent.load(Ordering::SeqCst) as u32) < PER_RAW_PUBLISHER,
            "the raw publisher is stalled"
        );
    }
    assert!(
        heard
            .iter()
            .all(|h| h.unblocked.load(Ordering::SeqCst) == 0),
        "no unblock while nothing drains"
    );
    assert!(
        publishers.iter().all(|p| !p.is_finished()),
        "blocked publishers cannot finish"
    );
    let blocked_peak = rss.peak();

    // Phase 2: a consumer drains; the publishers are unblocked and finish.
    let consumer_conn = connect(&url).await;
    let consumer_ch = consumer_conn.create_channel().await.expect("channel");
    consumer_ch
        .basic_qos(500, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let received = Arc::new(Mutex::new(HashSet::<(u32, u32)>::new()));
    let r = received.clone();
    let drain = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            r.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tag_of(&d.data));
            d.ack(BasicAckOptions::default()).await.expect("basic.ack");
        }
    });
    let mut confirmed = Vec::new();
    for (p, task) in publishers.into_iter().enumerate() {
        let seqs = timeout(GUARD, task)
            .await
            .expect("hang guard: publishers finish once unblocked")
            .expect("publisher task");
        confirmed.extend(seqs.into_iter().map(|s| (p as u32, s)));
    }
    until("the raw publishers finish", GUARD, || {
        raw.iter()
            .all(|r| r.sent.load(Ordering::SeqCst) as u32 == PER_RAW_PUBLISHER)
    })
    .await;
    let raw_total = 2 * PER_RAW_PUBLISHER as usize;
    let expected = confirmed.len() + raw_total;
    until("the consumer receives every message", GUARD, || {
        received.lock().unwrap_or_else(|p| p.into_inner()).len() >= expected
    })
    .await;
    for h in &heard {
        assert!(
            h.unblocked.load(Ordering::SeqCst) >= 1,
            "connection.unblocked follows the drain"
        );
    }
    assert_eq!(
        confirmed.len(),
        4 * PER_PUBLISHER as usize,
        "every publish was confirmed"
    );
    let got = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lost: Vec<_> = confirmed.iter().filter(|t| !got.contains(t)).collect();
    assert!(lost.is_empty(), "{} confirmed messages lost", lost.len());
    let peak = rss.peak();
    let limit = (watermark as f64 * RSS_MARGIN) as u64;
    eprintln!(
        "flood: idle {} MiB, W {} MiB, peak RSS {} MiB while blocked, {} MiB overall (limit {} MiB)",
        idle >> 20,
        watermark >> 20,
        blocked_peak >> 20,
        peak >> 20,
        limit >> 20
    );
    assert!(
        peak <= limit,
        "resident memory peaked at {peak} bytes, over 1.25 x W = {limit}"
    );
    drain.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_watermark_blocks_publishers_and_serves_consumers() {
    let broker = Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .memory_high_watermark(MemoryWatermark::Bytes(0))
        .start()
        .await
        .expect("broker starts");
    let url = broker.url();
    let queue = "zero";
    let consumer_conn = connect(&url).await;
    let consumer_ch = consumer_conn.create_channel().await.expect("channel");
    declare(&consumer_ch, queue).await;
    // Ten messages put in through the core (which no alarm blocks), for a
    // consumer to drain while publishers are blocked.
    let core_conn = broker
        .core()
        .open_connection("/", "guest")
        .expect("core connection");
    let (core_ch, _events) = core_conn.open_channel_mpsc();
    for i in 0..10u8 {
        core_ch
            .basic_publish(
                "".into(),
                queue.into(),
                false,
                Default::default(),
                vec![i].into(),
            )
            .expect("core publish");
    }

    let publisher = connect(&url).await;
    let heard = watch_blocking(&publisher);
    let ch = publisher.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"first",
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish");
    until("connection.blocked", Duration::from_secs(30), || {
        heard.blocked.load(Ordering::SeqCst) > 0
    })
    .await;

    // A consume-only connection is served while the alarm is on.
    let mut consumer = consumer_ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    for i in 0..10u8 {
        let d = timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("hang guard: a delivery while publishers are blocked")
            .expect("consumer open")
            .expect("delivery");
        assert_eq!(d.data, vec![i]);
        d.ack(BasicAckOptions::default()).await.expect("basic.ack");
    }
    // The blocked publish was never read through: not routed, not confirmed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.unblocked.load(Ordering::SeqCst) == 0);

    broker.core().memory().set_watermark(usize::MAX);
    until("connection.unblocked", Duration::from_secs(30), || {
        heard.unblocked.load(Ordering::SeqCst) > 0
    })
    .await;
    let confirmed = timeout(Duration::from_secs(30), confirm)
        .await
        .expect("hang guard: confirm after unblocking")
        .expect("confirm");
    assert!(matches!(confirmed, Confirmation::Ack(_)));
    let d = timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("hang guard: the blocked publish arrives once unblocked")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(d.data, b"first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_pauses_only_its_own_deliveries() {
    const BACKLOG: u32 = 20_000;
    let broker = Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .await
        .expect("broker starts");
    let url = broker.url();
    let port = broker.local_addrs()[0].port();
    let setup = connect(&url).await;
    let ch = setup.create_channel().await.expect("channel");
    declare(&ch, "stuck").await;
    declare(&ch, "served").await;

    // A no-ack consumer (no prefetch bounds it) that never reads its socket.
    let mut slow = raw_peer(port, true, Some(4096)).await;
    slow.send(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "stuck".into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: RawTable::default(),
        })),
    ))
    .await;
    let (_, consume_ok) = slow.method().await;
    assert!(
        matches!(
            consume_ok,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
        ),
        "expected basic.consume-ok, got {consume_ok:?}"
    );

    // Its backlog, published with confirms (all routed and stored).
    let publisher = connect(&url).await;
    let pch = publisher.create_channel().await.expect("channel");
    let confirmed = timeout(
        GUARD,
        publish_confirmed(pch.clone(), "stuck".to_owned(), 1, BACKLOG),
    )
    .await
    .expect("hang guard: publishing the backlog");
    assert_eq!(confirmed.len(), BACKLOG as usize);

    // Another consumer is served meanwhile, and declares are answered.
    let other = connect(&url).await;
    let och = other.create_channel().await.expect("channel");
    let mut consumer = och
        .basic_consume(
            "served".into(),
            "other".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let sent = timeout(GUARD, publish_confirmed(pch, "served".to_owned(), 2, 1_000))
        .await
        .expect("hang guard: publishing to the served queue");
    assert_eq!(sent.len(), 1_000);
    let got = timeout(GUARD, async {
        let mut n = 0;
        while n < 1_000 {
            match consumer.next().await {
                Some(Ok(_)) => n += 1,
                _ => break,
            }
        }
        n
    })
    .await
    .expect("hang guard: the other consumer is served");
    assert_eq!(got, 1_000);
    timeout(Duration::from_secs(30), declare(&och, "another"))
        .await
        .expect("hang guard: queue.declare answered");

    // Most of the backlog is still queued: what left the queue is the
    // writer's budget (200 deliveries) plus what the kernel's socket
    // buffers took, far from all of it.
    let queued = declare(&ch, "stuck").await;
    let left = BACKLOG - queued;
    eprintln!("slow reader: {left} of {BACKLOG} deliveries left the queue");
    assert!(
        left <= BACKLOG / 4,
        "{left} of {BACKLOG} messages left the queue for a consumer that never reads"
    );
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_and_transaction_buffers_count_on_the_gauge() {
    let broker = Broker::builder()
        .no_listen()
        .start()
        .await
        .expect("broker starts");
    let core = broker.core();
    let memory = core.memory().clone();
    let conn = core.open_connection("/", "guest").expect("core connection");
    let (ch, _events) = conn.open_channel_mpsc();
    ch.queue_declare("gauge", Default::default())
        .expect("queue.declare");
    let before = memory.tracked();
    let publish = |ch: &warren::broker::core::CoreChannel| {
        ch.basic_publish(
            "".into(),
            "gauge".into(),
            false,
            Default::default(),
            vec![0u8; 1 << 20].into(),
        )
        .expect("publish")
    };
    publish(&ch);
    assert!(memory.tracked() >= before + (1 << 20), "a queued message");
    ch.queue_purge("gauge").expect("queue.purge");
    assert_eq!(memory.tracked(), before, "released once gone");
    ch.tx_select().expect("tx.select");
    publish(&ch);
    assert!(memory.tracked() >= before + (1 << 20), "a buffered publish");
    ch.tx_rollback().expect("tx.rollback");
    assert_eq!(memory.tracked(), before, "released on rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_body_counts_on_the_gauge_until_its_channel_goes() {
    let broker = Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .await
        .expect("broker starts");
    let memory = broker.core().memory().clone();
    let before = memory.tracked();
    let mut peer = raw_peer(broker.local_addrs()[0].port(), false, None).await;
    let mut frames = encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "nowhere".into(),
            mandatory: false,
            immediate: false,
        })),
    ));
    frames.extend(encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 1 << 20,
            properties: basic::AMQPProperties::default(),
        },
    )));
    frames.extend(encode(&AMQPFrame::Body(1, vec![7u8; 100_000])));
    peer.sock.write_all(&frames).await.expect("write");
    until(
        "the partial body is counted",
        Duration::from_secs(30),
        || memory.tracked() >= before + 100_000,
    )
    .await;
    drop(peer);
    until(
        "released with the connection",
        Duration::from_secs(30),
        || memory.tracked() == before,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_over_the_control_budget_pause_reading_only_until_written() {
    // Each basic.get-ok below is over the 1 MiB a connection's replies may
    // take before its reader waits for the writer: the reader must resume
    // every time (a lost wake-up hangs the connection).
    let broker = Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .await
        .expect("broker starts");
    let conn = connect(&broker.url()).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "big").await;
    let big = vec![5u8; 3 << 19];
    for _ in 0..20 {
        ch.basic_publish(
            "".into(),
            "big".into(),
            BasicPublishOptions::default(),
            &big,
            BasicProperties::default(),
        )
        .await
        .expect("basic.publish");
    }
    for i in 0..20 {
        let got = timeout(Duration::from_secs(30), async {
            loop {
                let m = ch
                    .basic_get(
                        "big".into(),
                        lapin::options::BasicGetOptions { no_ack: true },
                    )
                    .await
                    .expect("basic.get");
                if let Some(m) = m {
                    break m;
                }
            }
        })
        .await
        .expect("hang guard: basic.get-ok");
        assert_eq!(got.delivery.data.len(), big.len());
        timeout(Duration::from_secs(30), declare(&ch, "big"))
            .await
            .unwrap_or_else(|_| panic!("hang guard: queue.declare after get {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_publishes_wait_for_the_alarm_too() {
    use warren::transport::local::LocalTransport;
    use warren::transport::{Outgoing, Transport};

    let broker = Broker::builder()
        .no_listen()
        .memory_high_watermark(MemoryWatermark::Bytes(0))
        .start()
        .await
        .expect("broker starts");
    let transport =
        Arc::new(LocalTransport::connect(broker.core(), "/", "guest").expect("connect"));
    let core_conn = broker
        .core()
        .open_connection("/", "guest")
        .expect("core connection");
    let (ch, _events) = core_conn.open_channel_mpsc();
    ch.queue_declare("local", Default::default())
        .expect("queue.declare");
    let t = transport.clone();
    let publish = tokio::spawn(async move {
        t.publish(Outgoing {
            exchange: String::new(),
            routing_key: "local".into(),
            mandatory: false,
            confirm: false,
            properties: Default::default(),
            body: bytes::Bytes::from_static(b"waited"),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !publish.is_finished(),
        "an in-process publish waits while the alarm is on"
    );
    assert_eq!(
        ch.basic_get("local", true)
            .expect("basic.get")
            .map(|g| g.message_count),
        None
    );
    broker.core().memory().set_watermark(usize::MAX);
    timeout(Duration::from_secs(30), publish)
        .await
        .expect("hang guard: the publish goes through once the alarm clears")
        .expect("task")
        .expect("publish");
    let got = ch
        .basic_get("local", true)
        .expect("basic.get")
        .expect("the message");
    assert_eq!(&got.message.body[..], b"waited");
}
