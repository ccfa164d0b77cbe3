//! Dead-lettering (`x-dead-letter-exchange`): the `x-death` bookkeeping, RabbitMQ's
//! cycle rule, and a work list that runs it without recursion.
//!
//! Expiry, rejection and overflow happen under a queue's lock. There they only push a
//! `DeadLetter` onto a `DeadLetters` list that the operation owns. Once the lock
//! is released the list is drained: each task is rerouted through its queue's
//! dead-letter exchange and offered to the targets one queue lock at a time, and what
//! those targets drop in turn goes onto the same list. Rerouting by calling back into
//! the target queue instead recursed once per hop, and one message with a forged
//! `x-death` circling a TTL-0 queue overflowed the stack and aborted the process.
//!
//! Three bounds keep a publish from becoming unbounded work:
//! - the cycle rule (see `cycle_queues`) stops a message that has gone round a
//!   loop of queues with no client rejection in it, as RabbitMQ does;
//! - an operation runs at most [`INLINE_BUDGET`] tasks itself. The rest waits in the
//!   vhost's `Backlog`, which later operations help drain and the sweeper drains
//!   `SWEEP_BUDGET` at a time, so the publisher gets its reply and other clients are
//!   served while a long chain reaction (two full max-length queues overflowing into
//!   each other) runs to its end. Nothing in the backlog is dropped;
//! - the copies of one message may be dead-lettered at most [`LINEAGE_BUDGET`] times
//!   with no client rejection in between. The cycle rule alone stops every loop, but
//!   a fanout dead-letter exchange bound to k queues that dead-letter back into it
//!   sends copies down every loop-free path: about (k - 1)! of them, hours of work
//!   from one publish. RabbitMQ does all of that work; warren drops the copies past
//!   the budget and says so in the log.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, ShortString};

use super::error::AmqpError;
use super::locks::lock;
use super::message::{Lineage, Message};
use super::queue::{DeadLetter, DeadLetters, DeadReason, Queue};

/// Dead letters one operation runs itself before leaving the rest to the backlog:
/// a few milliseconds of work, so its reply is not held up for long.
pub const INLINE_BUDGET: usize = 10_000;

/// Dead letters the sweeper takes from a vhost's backlog per tick.
pub(crate) const SWEEP_BUDGET: usize = 10_000;

/// How often the copies of one message may be dead-lettered with no client
/// rejection in between. Far above any chain of queues a topology needs, far
/// below the factorial blow-up of a fanout dead-letter exchange feeding itself.
pub const LINEAGE_BUDGET: usize = 10_000;

/// Where dead letters are routed: the vhost, seen from below (this module
/// knows nothing of vhosts, so the vhost can own a [`Backlog`] without the two
/// modules importing each other).
pub(crate) trait Router {
    /// The queues a message published to `exchange` with `routing_key` and
    /// `headers` reaches (deduplicated).
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, AmqpError>;
}

/// Count one more dead-lettering of `lineage`'s copies; false once
/// [`LINEAGE_BUDGET`] is spent.
fn spend(lineage: &Lineage) -> bool {
    let before = lineage.bump();
    if before == LINEAGE_BUDGET {
        tracing::warn!(
            "dropping dead letters: the copies of one message were dead-lettered \
             {LINEAGE_BUDGET} times with no rejection by a client (a dead-letter \
             exchange that fans out into queues dead-lettering back into it?)"
        );
    }
    before < LINEAGE_BUDGET
}

/// A vhost's dead letters that outlived their operation's [`INLINE_BUDGET`].
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    tasks: Mutex<VecDeque<DeadLetter>>,
}

impl Backlog {
    /// Run an operation's dead letters. They go behind any backlog so that what one
    /// queue dead-letters reaches its targets in order; then this operation runs up
    /// to [`INLINE_BUDGET`] tasks (its own, or the backlog's), leaving the rest.
    pub(crate) fn run(&self, vhost: &dyn Router, work: DeadLetters) {
        let mut local = work.into_inner();
        {
            let mut waiting = lock(&self.tasks);
            if !waiting.is_empty() {
                waiting.append(&mut local);
            }
        }
        let mut budget = INLINE_BUDGET;
        while budget > 0 {
            let Some(task) = local.pop_front() else { break };
            budget -= 1;
            let mut out = DeadLetters::default();
            reroute(vhost, task, &mut out);
            local.append(&mut out.into_inner());
        }
        if !local.is_empty() {
            lock(&self.tasks).append(&mut local);
            return;
        }
        self.drain(vhost, budget);
    }

    /// Run up to `budget` tasks from the backlog (the sweeper's share, and what an
    /// operation with budget to spare helps with).
    pub(crate) fn drain(&self, vhost: &dyn Router, budget: usize) {
        for _ in 0..budget {
            // Never hold the backlog's lock while rerouting: that takes queue locks,
            // and operations take this lock with none held.
            let Some(task) = lock(&self.tasks).pop_front() else {
                return;
            };
            let mut out = DeadLetters::default();
            reroute(vhost, task, &mut out);
            if !out.is_empty() {
                lock(&self.tasks).append(&mut out.into_inner());
            }
        }
    }

    /// Number of dead letters waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.tasks).len()
    }
}

/// Dead-letter one message: record the death in `x-death`, route the new message
/// through the dead-letter exchange, and offer it to every target queue that is not
/// a cycle. Whatever the targets drop in turn is pushed onto `out`.
fn reroute(vhost: &dyn Router, task: DeadLetter, out: &mut DeadLetters) {
    let DeadLetter {
        msg,
        reason,
        source,
    } = task;
    let Some(dlx) = source.config.dead_letter_exchange.as_deref() else {
        return;
    };
    let old = &msg.msg;
    // A rejection is a client's doing, so it starts a fresh budget.
    let lineage = match (&old.lineage, reason) {
        (Some(l), DeadReason::Expired | DeadReason::MaxLen) => l.clone(),
        _ => Arc::new(Lineage::default()),
    };
    if !spend(&lineage) {
        return;
    }
    let rk = source
        .config
        .dead_letter_routing_key
        .as_deref()
        .unwrap_or(old.routing_key.as_str());
    let Ok(rk_s) = ShortString::try_new(rk) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let props = with_x_death(&old.properties, &source.name, reason.as_str(), old, now);
    let mut dead = Message::new(
        ShortString::from(truncated(dlx)),
        rk_s,
        props,
        old.body.clone(),
    );
    dead.lineage = Some(lineage);
    let dead = Arc::new(dead.charged_like(old));
    let Ok(targets) = vhost.route(dlx, rk, dead.properties.headers().as_ref()) else {
        return;
    };
    let cycles = cycle_queues(&dead.properties);
    let mut targets = targets;
    targets.retain(|t| {
        let cycle = cycles.contains(t.name.as_str());
        if cycle {
            tracing::debug!(
                "dead letter from '{}' dropped: it would cycle back into '{}' with no \
                 rejection on the way",
                source.name,
                t.name
            );
        }
        !cycle
    });
    // Stored before any target holds it; nobody waits for it to be on disk.
    if let Err(e) = super::durable::persist_routed(&dead, &targets) {
        tracing::warn!(error = %e, "durable store refused a dead letter: dropped");
        return;
    }
    for t in targets {
        t.enqueue_into(dead.clone(), out);
    }
}

/// The queues a dead letter must not enter again, by RabbitMQ's rule: `x-death` lists
/// deaths most recent first, and a queue is a cycle when it appears before any death
/// with reason `rejected`. A rejection (a client's decision, possibly to retry) breaks
/// the cycle, and a message just rejected is never a cycle. Since each death moves its
/// (queue, reason) entry to the front, a forged `x-death` cannot keep a message
/// circling: after one round every queue of the loop sits in front of it.
fn cycle_queues(props: &BasicProperties) -> HashSet<String> {
    let mut out = HashSet::new();
    for e in x_death_entries(props) {
        if entry_str(&e, "reason").as_deref() == Some("rejected") {
            break;
        }
        if let Some(q) = entry_str(&e, "queue") {
            out.insert(q);
        }
    }
    out
}

/// `s` cut to at most 255 bytes on a character boundary (a short string).
fn truncated(s: &str) -> &str {
    let mut cut = s.len().min(255);
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.get(..cut).unwrap_or("")
}

/// A long-string field value.
fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.as_bytes().to_vec().into())
}

/// The table entries of the `x-death` header (anything else in it is ignored).
fn x_death_entries(props: &BasicProperties) -> Vec<FieldTable> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
        .and_then(|v| match v {
            AMQPValue::FieldArray(a) => Some(
                a.as_slice()
                    .iter()
                    .filter_map(|e| match e {
                        AMQPValue::FieldTable(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn entry_str(t: &FieldTable, key: &str) -> Option<String> {
    t.inner().get(key).and_then(super::value_as_string)
}

/// `props` with this death recorded as RabbitMQ records it: the (queue, reason) entry
/// of `x-death` counted up (or created) and moved to the front, the `x-first-death-*`
/// headers set once and the `x-last-death-*` ones every time, and a per-message TTL
/// removed (kept as `original-expiration`).
fn with_x_death(
    props: &BasicProperties,
    queue: &str,
    reason: &str,
    msg: &Message,
    now: u64,
) -> BasicProperties {
    let mut entries = x_death_entries(props);
    let pos = entries.iter().position(|e| {
        entry_str(e, "queue").as_deref() == Some(queue)
            && entry_str(e, "reason").as_deref() == Some(reason)
    });
    let entry = match pos {
        Some(i) => {
            let mut e = entries.remove(i);
            // The count comes from the client when it republished a dead letter:
            // saturate rather than overflow at its maximum.
            let count = e
                .inner()
                .get("count")
                .and_then(super::value_as_i64)
                .unwrap_or(0);
            e.insert(
                "count".into(),
                AMQPValue::LongLongInt(count.saturating_add(1)),
            );
            e.insert("time".into(), AMQPValue::Timestamp(now));
            e
        }
        None => {
            let mut e = FieldTable::default();
            e.insert("count".into(), AMQPValue::LongLongInt(1));
            e.insert("reason".into(), long_str(reason));
            e.insert("queue".into(), long_str(queue));
            e.insert("time".into(), AMQPValue::Timestamp(now));
            e.insert("exchange".into(), long_str(msg.exchange.as_str()));
            let mut rks = FieldArray::default();
            rks.push(long_str(msg.routing_key.as_str()));
            e.insert("routing-keys".into(), AMQPValue::FieldArray(rks));
            if let Some(exp) = props.expiration() {
                e.insert("original-expiration".into(), long_str(exp.as_str()));
            }
            e
        }
    };
    entries.insert(0, entry);
    let mut headers = props.headers().clone().unwrap_or_default();
    let arr: Vec<AMQPValue> = entries.into_iter().map(AMQPValue::FieldTable).collect();
    headers.insert("x-death".into(), AMQPValue::FieldArray(arr.into()));
    for (k, v) in [
        ("x-first-death-reason", reason),
        ("x-first-death-queue", queue),
        ("x-first-death-exchange", msg.exchange.as_str()),
    ] {
        if !headers.contains_key(k) {
            headers.insert(k.into(), long_str(v));
        }
    }
    headers.insert("x-last-death-reason".into(), long_str(reason));
    headers.insert("x-last-death-queue".into(), long_str(queue));
    headers.insert(
        "x-last-death-exchange".into(),
        long_str(msg.exchange.as_str()),
    );
    let mut p = props.clone().with_headers(headers);
    if p.expiration().is_some() {
        p = clear_expiration(p);
    }
    p
}

/// `p` without its `expiration` (amq-protocol has no setter to unset one field).
fn clear_expiration(p: BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use amq_protocol::types::LongString;
    use bytes::Bytes;

    use super::*;
    use crate::core::permission::Permissions;
    use crate::core::vhost::VHost;
    use crate::core::{
        Core, CoreChannel, CoreConnection, ExchangeDeclareOptions, QueueDeclareOptions,
    };

    /// Runs `f` on a thread with a 256 KiB stack. Rerouting by recursion took a few
    /// stack frames per hop, so the long chains below overflowed it (aborting the
    /// test process, which is how these tests fail without the work list).
    fn small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn a small-stack thread")
            .join()
            .expect("the test thread panicked");
    }

    struct Broker {
        core: Arc<Core>,
        _conn: CoreConnection,
        ch: CoreChannel,
    }

    impl Broker {
        fn new() -> Self {
            // Outside a runtime there is no sweeper: `settle` plays its part.
            let core = Core::new(&[("guest".into(), "guest".into())], &[]);
            let all = Permissions::new(".*", ".*", ".*").expect("valid patterns");
            core.set_permissions("guest", "/", all);
            let conn = core.open_connection("/", "guest").expect("connection");
            let (ch, events) = conn.open_channel_mpsc();
            // Nothing here consumes; the channel's events are not needed.
            drop(events);
            Self {
                core,
                _conn: conn,
                ch,
            }
        }

        fn vhost(&self) -> Arc<VHost> {
            self.core.vhost("/").expect("the default vhost")
        }

        fn queue(&self, name: &str, args: &[(&str, AMQPValue)]) {
            let mut t = FieldTable::default();
            for (k, v) in args {
                t.insert((*k).into(), v.clone());
            }
            self.ch
                .queue_declare(
                    name,
                    QueueDeclareOptions {
                        arguments: t,
                        ..Default::default()
                    },
                )
                .expect("queue.declare");
        }

        fn fanout(&self, name: &str, queues: &[&str]) {
            self.ch
                .exchange_declare(name, "fanout", ExchangeDeclareOptions::default())
                .expect("exchange.declare");
            for q in queues {
                self.ch
                    .queue_bind(q, name, "", FieldTable::default())
                    .expect("queue.bind");
            }
        }

        fn publish(&self, queue: &str, body: &str, props: BasicProperties) {
            self.ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    false,
                    props,
                    Bytes::from(body.to_owned()),
                )
                .expect("basic.publish");
        }

        fn count(&self, queue: &str) -> u32 {
            self.ch
                .queue_declare(
                    queue,
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                )
                .expect("passive queue.declare")
                .message_count
        }

        fn get(&self, queue: &str) -> Option<Arc<Message>> {
            self.ch
                .basic_get(queue, true)
                .expect("basic.get")
                .map(|g| g.message)
        }

        /// Run the backlog to its end, as the sweeper does tick after tick.
        fn settle(&self) {
            while self.vhost().dead_letter_backlog() > 0 {
                self.core.sweep(Instant::now());
            }
        }
    }

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
    }

    fn int(n: i64) -> AMQPValue {
        AMQPValue::LongLongInt(n)
    }

    /// Properties whose `x-death` claims one death with the given fields.
    fn forged(death: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut entry = FieldTable::default();
        for (k, v) in death {
            entry.insert((*k).into(), v.clone());
        }
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(entry)].into()),
        );
        BasicProperties::default().with_headers(headers)
    }

    /// (queue, reason, count) of each `x-death` entry, most recent first.
    fn deaths(m: &Message) -> Vec<(String, String, i64)> {
        x_death_entries(&m.properties)
            .iter()
            .map(|e| {
                (
                    entry_str(e, "queue").unwrap_or_default(),
                    entry_str(e, "reason").unwrap_or_default(),
                    e.inner()
                        .get("count")
                        .and_then(crate::core::value_as_i64)
                        .unwrap_or(-1),
                )
            })
            .collect()
    }

    #[test]
    fn a_forged_rejection_does_not_keep_a_ttl_loop_going() {
        // Issue #9, attack 2: a TTL-0 queue dead-lettering into itself, and a
        // message claiming an earlier rejection, which the old rule read as "never
        // a cycle" and looped on until the stack overflowed.
        small_stack(|| {
            let b = Broker::new();
            let rejected = forged(&[
                ("queue", text("self")),
                ("reason", text("rejected")),
                ("count", int(1)),
            ]);
            b.queue(
                "self",
                &[
                    ("x-message-ttl", int(0)),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text("self")),
                ],
            );
            b.publish("self", "loop", rejected.clone());
            b.settle();
            assert_eq!(b.count("self"), 0);

            // The same through a fanout that also feeds a spy, to count the rounds.
            b.queue(
                "ttl",
                &[
                    ("x-message-ttl", int(0)),
                    ("x-dead-letter-exchange", text("dlx")),
                ],
            );
            b.queue("spy", &[]);
            b.fanout("dlx", &["ttl", "spy"]);
            b.publish("ttl", "loop", rejected);
            b.settle();
            assert_eq!(b.count("spy"), 1, "dead-lettered once, then a cycle");
            let m = b.get("spy").expect("the dead letter");
            assert_eq!(
                deaths(&m),
                [
                    ("ttl".into(), "expired".into(), 1),
                    ("self".into(), "rejected".into(), 1)
                ]
            );
        });
    }

    #[test]
    fn a_ttl_cycle_is_dropped_after_one_round() {
        small_stack(|| {
            let b = Broker::new();
            for (q, dlx) in [("q1", "x1"), ("q2", "x2")] {
                b.queue(
                    q,
                    &[
                        ("x-message-ttl", int(0)),
                        ("x-dead-letter-exchange", text(dlx)),
                    ],
                );
            }
            b.queue("spy", &[]);
            b.fanout("x1", &["q2", "spy"]);
            b.fanout("x2", &["q1", "spy"]);
            b.publish("q1", "m", BasicProperties::default());
            b.settle();
            assert_eq!(b.count("spy"), 2);
            assert_eq!(b.count("q1") + b.count("q2"), 0);
        });
    }

    #[test]
    fn a_rejection_in_the_cycle_keeps_it_going() {
        small_stack(|| {
            let b = Broker::new();
            b.queue(
                "work",
                &[
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text("wait")),
                ],
            );
            b.queue(
                "wait",
                &[
                    ("x-message-ttl", int(0)),
                    ("x-dead-letter-exchange", text("")),
                    ("x-dead-letter-routing-key", text("work")),
                ],
            );
            b.publish("work", "retry me", BasicProperties::default());
            for round in 1..=3 {
                let got = b.ch.basic_get("work", false).expect("basic.get");
                let got = got.expect("the message is back in 'work'");
                b.ch.basic_reject(got.delivery_tag, false).expect("reject");
                b.settle();
                let m = b.get("work").expect("back after the retry queue");
                assert_eq!(
                    deaths(&m),
                    [
                        ("wait".into(), "expired".into(), round),
                        ("work".into(), "rejected".into(), round)
                    ]
                );
                // Put it back for the next round, x-death and all.
                b.publish("work", "retry me", m.properties.clone());
            }
        });
    }

    #[test]
    fn mutual_max_length_queues_overflow_into_each_other_without_recursing() {
        small_stack(|| {
            let b = Broker::new();
            const N: i64 = 10_000;
            for (q, other) in [("a", "b"), ("b", "a")] {
                b.queue(
                    q,
                    &[
                        ("x-max-length", int(N)),
                        ("x-dead-letter-exchange", text("")),
                        ("x-dead-letter-routing-key", text(other)),
                    ],
                );
            }
            for q in ["a", "b"] {
                for i in 0..N {
                    b.publish(q, &format!("{q}{i}"), BasicProperties::default());
                }
            }
            // The trigger pushes a0 into b, which pushes b0 into a, and so on until
            // a0 comes back to a: 20,000 hops, more than one publish runs itself.
            b.publish("a", "trigger", BasicProperties::default());
            assert!(b.vhost().dead_letter_backlog() > 0, "the rest waits");
            b.settle();
            assert_eq!((b.count("a"), b.count("b")), (10_000, 10_000));
            // Everything moved across once: a holds b's messages; b holds a's but a0
            // (pushed out of b by the trigger, it would have re-entered a: a cycle),
            // then the trigger, pushed out of a by b9999.
            let bodies = |q: &str| -> Vec<Bytes> {
                std::iter::from_fn(|| b.get(q))
                    .map(|m| m.body.clone())
                    .collect()
            };
            let want_a: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("b{i}"))).collect();
            let mut want_b: Vec<Bytes> = (1..N).map(|i| Bytes::from(format!("a{i}"))).collect();
            want_b.push(Bytes::from_static(b"trigger"));
            assert!(bodies("a") == want_a, "a holds b0..b9999");
            assert!(bodies("b") == want_b, "b holds a1..a9999, trigger");
        });
    }

    #[test]
    fn a_long_chain_of_max_length_one_queues_moves_one_step() {
        small_stack(|| {
            let b = Broker::new();
            const N: usize = 200;
            for i in 0..N {
                let mut args = vec![("x-max-length", int(1))];
                if i + 1 < N {
                    args.push(("x-dead-letter-exchange", text("")));
                    args.push(("x-dead-letter-routing-key", text(&format!("c{}", i + 1))));
                }
                b.queue(&format!("c{i}"), &args);
                b.publish(
                    &format!("c{i}"),
                    &format!("m{i}"),
                    BasicProperties::default(),
                );
            }
            b.publish("c0", "trigger", BasicProperties::default());
            b.settle();
            let head = b.get("c0").expect("c0's message");
            assert_eq!(&head.body[..], b"trigger");
            for i in 1..N {
                let m = b.get(&format!("c{i}")).expect("one message per queue");
                assert_eq!(m.body, Bytes::from(format!("m{}", i - 1)));
            }
        });
    }

    #[test]
    fn fanout_amplification_is_bounded_per_message() {
        // Nine TTL-0 queues dead-lettering into one fanout bound to all of them:
        // the cycle rule stops each copy, but the copies take every loop-free path,
        // 109,601 of them (with twelve queues, 10^8). The budget stops them.
        small_stack(|| {
            let b = Broker::new();
            let names: Vec<String> = (0..9).map(|i| format!("f{i}")).collect();
            for q in &names {
                b.queue(
                    q,
                    &[
                        ("x-message-ttl", int(0)),
                        ("x-dead-letter-exchange", text("fan")),
                    ],
                );
            }
            b.queue("spy", &[]);
            let mut bound: Vec<&str> = names.iter().map(String::as_str).collect();
            bound.push("spy");
            b.fanout("fan", &bound);
            b.publish("f0", "m", BasicProperties::default());
            b.settle();
            // Each dead-lettering the budget allowed left one copy in the spy.
            assert_eq!(b.count("spy"), LINEAGE_BUDGET as u32);
        });
    }

    #[test]
    fn dead_letters_count_on_the_memory_gauge() {
        let b = Broker::new();
        b.queue(
            "ttl",
            &[
                ("x-message-ttl", int(0)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("dlq")),
            ],
        );
        b.queue("dlq", &[]);
        let gauge = || b.core.memory().tracked();
        let before = gauge();
        b.publish("ttl", &"x".repeat(10_000), BasicProperties::default());
        b.settle();
        assert_eq!(b.count("dlq"), 1);
        assert!(gauge() >= before + 10_000, "the dead letter is not counted");
        b.ch.queue_purge("dlq").expect("queue.purge");
        assert_eq!(gauge(), before);
    }

    #[test]
    fn an_x_death_count_at_its_maximum_saturates() {
        let msg = Message::new(
            "".into(),
            "q".into(),
            forged(&[
                ("queue", text("q")),
                ("reason", text("expired")),
                ("count", int(i64::MAX)),
            ]),
            Bytes::new(),
        );
        let p = with_x_death(&msg.properties, "q", "expired", &msg, 0);
        let dead = Message::new("".into(), "q".into(), p, Bytes::new());
        assert_eq!(deaths(&dead), [("q".into(), "expired".into(), i64::MAX)]);

        // A count no integer type holds (a timestamp past i64) counts from zero.
        let msg = Message::new(
            "".into(),
            "q".into(),
            forged(&[
                ("queue", text("q")),
                ("reason", text("expired")),
                ("count", AMQPValue::Timestamp(u64::MAX)),
            ]),
            Bytes::new(),
        );
        let p = with_x_death(&msg.properties, "q", "expired", &msg, 0);
        let dead = Message::new("".into(), "q".into(), p, Bytes::new());
        assert_eq!(deaths(&dead), [("q".into(), "expired".into(), 1)]);
    }
}
