//! Heartbeats over a raw socket: the handshake is done by hand with
//! amq-protocol's frame types, generator and parser (no client library to
//! send heartbeats behind the test's back), negotiating a 1 s interval. Every
//! scenario runs on warren's embedded broker and on RabbitMQ, the reference.
//!
//! - a peer that goes silent is hung up on (two missed intervals; 15 s is only
//!   a hang guard, not a timing assertion);
//! - a peer that keeps sending heartbeats stays connected past several
//!   intervals, and is still served;
//! - the broker itself sends heartbeats at the negotiated interval (a silent
//!   broker would be dropped by its clients).

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel, connection, AMQPClass};
use tokio::time::{timeout, Instant};

use crate::common::raw::{channel_open, Opts, Peer};

/// The heartbeat interval the tests negotiate, in seconds.
const HEARTBEAT: u16 = 1;
/// Hang guard for anything the broker must do.
const GUARD: Duration = Duration::from_secs(15);

crate::on_both_brokers!(
    a_silent_peer_is_hung_up_on,
    a_peer_sending_heartbeats_stays_connected,
    the_broker_sends_heartbeats_at_the_negotiated_interval,
);

/// The peer's options: a [`HEARTBEAT`]-second interval in tune-ok.
fn opts() -> Opts {
    Opts {
        guard: GUARD,
        heartbeat: HEARTBEAT,
        ..Opts::default()
    }
}

/// What the broker sent while the peer kept its side alive for `period`.
#[derive(Debug, Default)]
struct Heard {
    /// Arrival times of heartbeat frames, from the start of the period.
    heartbeats: Vec<Duration>,
    /// Whether the broker closed the socket or sent connection.close.
    closed: bool,
}

/// Sends a heartbeat every half interval for `period`, noting what arrives.
async fn keep_alive(peer: &mut Peer, period: Duration) -> Heard {
    let start = Instant::now();
    let mut heard = Heard::default();
    let mut next_beat = start;
    while start.elapsed() < period && !heard.closed {
        if Instant::now() >= next_beat {
            peer.send(&AMQPFrame::Heartbeat).await;
            next_beat += Duration::from_millis(u64::from(HEARTBEAT) * 500);
        }
        let wait = next_beat.min(start + period);
        match tokio::time::timeout_at(wait, peer.recv()).await {
            Err(_) => {}
            Ok(None) => heard.closed = true,
            Ok(Some(AMQPFrame::Heartbeat)) => heard.heartbeats.push(start.elapsed()),
            Ok(Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(c)),
            ))) => panic!("broker closed a live connection: {c:?}"),
            Ok(Some(other)) => panic!("unexpected frame {other:?}"),
        }
    }
    heard
}

async fn a_silent_peer_is_hung_up_on(url: String) {
    let mut peer = Peer::open(&url, opts()).await;
    let silent_since = Instant::now();
    // Read (the broker's own heartbeats may arrive) but never write.
    let hung_up = timeout(GUARD, async { while peer.recv().await.is_some() {} }).await;
    let after = silent_since.elapsed();
    assert!(
        hung_up.is_ok(),
        "the broker still held a silent peer after {GUARD:?} (heartbeat {HEARTBEAT} s)"
    );
    // Not at once: it waited for the missed heartbeats.
    assert!(
        after >= Duration::from_secs(u64::from(HEARTBEAT)),
        "hung up after {after:?}, before one interval had passed"
    );
    eprintln!("silent peer hung up on after {after:?}");
}

async fn a_peer_sending_heartbeats_stays_connected(url: String) {
    let mut peer = Peer::open(&url, opts()).await;
    let period = Duration::from_secs(u64::from(HEARTBEAT) * 5);
    let heard = keep_alive(&mut peer, period).await;
    assert!(
        !heard.closed,
        "the broker hung up on a peer sending heartbeats: {heard:?}"
    );
    // And it is still served: a channel opens.
    peer.send(&channel_open(1)).await;
    let (ch, open_ok) = peer.method().await;
    assert!(
        ch == 1 && matches!(open_ok, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
        "{ch} {open_ok:?}"
    );
}

async fn the_broker_sends_heartbeats_at_the_negotiated_interval(url: String) {
    let mut peer = Peer::open(&url, opts()).await;
    let interval = Duration::from_secs(u64::from(HEARTBEAT));
    let heard = keep_alive(&mut peer, interval * 4).await;
    assert!(!heard.closed, "{heard:?}");
    let beats = &heard.heartbeats;
    // The first within a couple of intervals, then at least one per
    // interval and a half (timing slack, not a precise rate).
    assert!(
        beats.first().is_some_and(|t| *t <= interval * 2),
        "no heartbeat from the broker within two intervals: {beats:?}"
    );
    assert!(
        beats.len() >= 2,
        "fewer than two heartbeats in four intervals: {beats:?}"
    );
    for pair in beats.windows(2) {
        assert!(
            pair[1] - pair[0] <= interval * 3 / 2,
            "a gap of {:?} between broker heartbeats: {beats:?}",
            pair[1] - pair[0]
        );
    }
    eprintln!("broker heartbeats at {beats:?}");
}
