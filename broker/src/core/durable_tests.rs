//! The core on a data directory: what survives a crash (the core dropped without
//! closing its store) or a clean close, and what does not.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;

use super::permission::Permissions;
use super::{Core, CoreChannel, ExchangeDeclareOptions, PasswordHash, QueueDeclareOptions};
use crate::store::StoreError;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "warren-core-durable-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path) -> Result<Arc<Core>, StoreError> {
    let users = [("guest".to_owned(), PasswordHash::new("guest"))];
    let core = Core::open_durable_with(dir, &users, &[], Some(1 << 20), false)?;
    let all = Permissions::new(".*", ".*", ".*").expect("patterns");
    core.set_permissions("guest", "/", all);
    Ok(core)
}

/// A channel with its connection (closing the connection closes the channel).
struct Client {
    ch: CoreChannel,
    _events: tokio::sync::mpsc::UnboundedReceiver<super::ChannelEvent>,
    _conn: super::CoreConnection,
}

impl std::ops::Deref for Client {
    type Target = CoreChannel;
    fn deref(&self) -> &CoreChannel {
        &self.ch
    }
}

fn channel(core: &Core) -> Client {
    let conn = core.open_connection("/", "guest").expect("connection");
    let (ch, events) = conn.open_channel_mpsc();
    Client {
        ch,
        _events: events,
        _conn: conn,
    }
}

fn durable_queue(ch: &CoreChannel, name: &str, args: FieldTable) {
    let options = QueueDeclareOptions {
        durable: true,
        arguments: args,
        ..Default::default()
    };
    ch.queue_declare(name, options).expect("queue.declare");
}

fn publish(ch: &CoreChannel, exchange: &str, key: &str, body: &str, persistent: bool) {
    let mut props = BasicProperties::default();
    if persistent {
        props = props.with_delivery_mode(2);
    }
    ch.basic_publish(
        exchange.into(),
        key.into(),
        false,
        props,
        Bytes::from(body.to_owned()),
    )
    .expect("basic.publish");
}

/// The messages in `queue`, taken (acked): (body, redelivered).
fn take_all(ch: &CoreChannel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch.basic_get(queue, true).expect("basic.get") {
        out.push((
            String::from_utf8_lossy(&m.message.body).into_owned(),
            m.redelivered,
        ));
    }
    out
}

#[test]
fn durable_topology_and_persistent_messages_survive_a_crash() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        let x = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare("x", "direct", x)
            .expect("exchange.declare");
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        durable_queue(&ch, "q", args);
        ch.queue_declare("transient", QueueDeclareOptions::default())
            .expect("queue.declare");
        ch.queue_bind("q", "x", "k", FieldTable::default())
            .expect("queue.bind");
        ch.queue_bind("transient", "x", "k", FieldTable::default())
            .expect("queue.bind");
        for (body, persistent) in [("a", true), ("b", false), ("c", true), ("d", true)] {
            publish(&ch, "x", "k", body, persistent);
        }
        // "a" is acked, "c" delivered and left unacked: it comes back redelivered.
        let a = ch.basic_get("q", false).expect("get").expect("a");
        ch.basic_ack(a.delivery_tag, false).expect("ack");
        let _b = ch.basic_get("q", false).expect("get").expect("b");
        let _c = ch.basic_get("q", false).expect("get").expect("c");
        // Dropped without close_durable: a crash as far as the store knows.
    }
    let core = open(&dir.0).expect("reopen");
    let report = core.recovery().expect("a durable core reports").clone();
    assert!(!report.clean_shutdown);
    assert_eq!(
        (report.exchanges, report.queues, report.bindings),
        (1, 1, 1)
    );
    assert_eq!(report.messages, 2);
    let ch = channel(&core);
    assert_eq!(
        take_all(&ch, "q"),
        [("c".to_owned(), true), ("d".to_owned(), true)],
        "persistent messages, in order, none acked; after a crash all may have been seen"
    );
    let vh = core.vhost("/").expect("vhost");
    assert!(vh.queue("transient").is_none());
    assert_eq!(
        vh.queue("q").and_then(|q| q.config.max_length),
        Some(10),
        "arguments survive"
    );
    publish(&ch, "x", "k", "again", true);
    assert_eq!(take_all(&ch, "q"), [("again".to_owned(), false)]);
}

#[test]
fn a_clean_close_leaves_nothing_redelivered_and_acks_hold() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        durable_queue(&ch, "q", FieldTable::default());
        for body in ["a", "b", "c"] {
            publish(&ch, "", "q", body, true);
        }
        assert_eq!(take_all(&ch, "q").len(), 3);
        publish(&ch, "", "q", "d", true);
        drop(ch);
        core.close_durable().expect("close");
    }
    let core = open(&dir.0).expect("reopen");
    assert!(core.recovery().expect("report").clean_shutdown);
    let ch = channel(&core);
    assert_eq!(take_all(&ch, "q"), [("d".to_owned(), false)]);
}

#[test]
fn a_queue_deleted_and_declared_again_loses_its_old_bindings_and_messages() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        durable_queue(&ch, "q", FieldTable::default());
        ch.queue_bind("q", "amq.direct", "old", FieldTable::default())
            .expect("bind");
        publish(&ch, "", "q", "gone", true);
        ch.queue_delete("q", Default::default()).expect("delete");
        durable_queue(&ch, "q", FieldTable::default());
        publish(&ch, "", "q", "kept", true);
        ch.queue_purge("q").expect("purge");
        publish(&ch, "", "q", "new", true);
    }
    let core = open(&dir.0).expect("reopen");
    let ch = channel(&core);
    publish(&ch, "amq.direct", "old", "misrouted", true);
    assert_eq!(take_all(&ch, "q"), [("new".to_owned(), true)]);
}

#[test]
fn vhosts_and_permissions_survive_and_a_second_core_is_refused() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        core.add_vhost("extra");
        let p = Permissions::new("^c$", "^w$", "^r$").expect("patterns");
        core.set_permissions("guest", "extra", p);
        assert!(matches!(open(&dir.0), Err(StoreError::Locked { .. })));
    }
    let core = open(&dir.0).expect("reopen");
    assert!(core.can_access("guest", "extra"));
    let p = core.permissions_of("guest", "extra").expect("kept");
    assert_eq!(p.patterns(), ["^c$", "^w$", "^r$"]);
}

#[test]
fn a_quorum_queue_keeps_transient_messages_and_delivery_counts() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        durable_queue(&ch, "qq", args);
        publish(&ch, "", "qq", "m", false);
        let m = ch.basic_get("qq", false).expect("get").expect("m");
        ch.basic_nack(m.delivery_tag, false, true).expect("nack");
        core.close_durable().expect("close");
    }
    let core = open(&dir.0).expect("reopen");
    let ch = channel(&core);
    let m = ch.basic_get("qq", true).expect("get").expect("kept");
    assert!(m.redelivered, "given back once before the restart");
    assert_eq!(&m.message.body[..], b"m");
    let count = m
        .message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert_eq!(count, Some(AMQPValue::LongLongInt(1)));
}

#[test]
fn users_with_tags_survive_and_deletions_hold() {
    let dir = TempDir::new();
    {
        let core = Core::open_durable_with(&dir.0, &[], &[], Some(1 << 20), false).expect("open");
        core.add_user("ops", "s3cret").expect("add");
        core.set_user_tags("ops", &["administrator".to_owned()])
            .expect("tags");
        core.add_user("gone", "x").expect("add");
        core.create_vhost("edge").expect("vhost");
        core.grant_permissions("ops", "edge", ".*", ".*", ".*")
            .expect("grant");
        core.grant_permissions("gone", "edge", ".*", ".*", ".*")
            .expect("grant");
        core.change_password("ops", "n3w").expect("password");
        core.delete_user("gone").expect("delete");
        core.create_vhost("dropped").expect("vhost");
        core.grant_permissions("ops", "dropped", ".*", ".*", ".*")
            .expect("grant");
        core.delete_vhost("dropped").expect("delete vhost");
    }
    let core = Core::open_durable_with(&dir.0, &[], &[], Some(1 << 20), false).expect("reopen");
    assert!(core.authenticate("ops", "n3w"));
    assert!(!core.authenticate("ops", "s3cret"));
    assert_eq!(
        core.user_tags("ops"),
        Some(vec!["administrator".to_owned()])
    );
    assert!(!core.has_user("gone"));
    assert!(core.can_access("ops", "edge"));
    assert!(!core.vhost_exists("dropped"));
    // Declared again, the vhost starts without the old permissions.
    core.create_vhost("dropped").expect("vhost");
    assert!(!core.can_access("ops", "dropped"));
}

#[test]
fn a_message_given_back_before_a_clean_close_comes_back_redelivered() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        durable_queue(&ch, "q", FieldTable::default());
        publish(&ch, "", "q", "seen", true);
        publish(&ch, "", "q", "unseen", true);
        let _seen = ch.basic_get("q", false).expect("get").expect("seen");
        // Closing the channel gives "seen" back, unacked.
        drop(ch);
        core.close_durable().expect("close");
    }
    let core = open(&dir.0).expect("reopen");
    assert!(core.recovery().expect("report").clean_shutdown);
    let ch = channel(&core);
    assert_eq!(
        take_all(&ch, "q"),
        [("seen".to_owned(), true), ("unseen".to_owned(), false)]
    );
}

#[test]
fn a_transaction_commits_once_its_persistent_messages_are_on_disk() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        durable_queue(&ch, "q", FieldTable::default());
        ch.tx_select().expect("tx.select");
        publish(&ch, "", "q", "t1", true);
        publish(&ch, "", "q", "t2", true);
        let (tx, rx) = std::sync::mpsc::channel();
        ch.tx_commit_then(Box::new(move |ok| {
            let _ = tx.send(ok);
        }))
        .expect("tx.commit");
        assert_eq!(rx.recv().ok(), Some(true), "committed and durable");
    }
    let core = open(&dir.0).expect("reopen");
    let ch = channel(&core);
    let bodies: Vec<String> = take_all(&ch, "q").into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["t1", "t2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_refuses_persistent_messages_blocks_publishers_and_is_reported() {
    let dir = TempDir::new();
    let core = open(&dir.0).expect("open");
    super::disk::spawn(&core, 0);
    let ch = channel(&core);
    durable_queue(&ch, "q", FieldTable::default());
    publish(&ch, "", "q", "before", true);
    assert!(core.store_failure().is_none());
    assert!(!core.memory().alarm());

    let reported = tokio::spawn({
        let core = core.clone();
        async move { core.store_failed().await }
    });
    core.durable
        .as_ref()
        .expect("a durable core")
        .fail_as_if_written(std::io::Error::other("injected EIO"));

    let e = tokio::time::timeout(std::time::Duration::from_secs(10), reported)
        .await
        .expect("store_failed resolves")
        .expect("join");
    assert!(e.to_string().contains("injected EIO"), "{e}");
    assert!(core.store_failure().is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !core.memory().alarm() {
        assert!(
            std::time::Instant::now() < deadline,
            "the disk alarm blocks publishers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = ch
        .basic_publish(
            "".into(),
            "q".into(),
            false,
            BasicProperties::default().with_delivery_mode(2),
            Bytes::from_static(b"after"),
        )
        .expect("basic.publish");
    assert!(
        refused.rejected,
        "a persistent message is nacked, not confirmed"
    );
    // Nor does a transaction commit one.
    let tx = channel(&core);
    tx.tx_select().expect("tx.select");
    publish(&tx, "", "q", "in a transaction", true);
    let e = tx.tx_commit().expect_err("the commit fails");
    assert_eq!(e.code, 406, "{e:?}");
    assert!(e.text.contains("partial tx completion"), "{e:?}");
    // What was queued before stays deliverable from memory.
    let bodies: Vec<String> = take_all(&ch, "q").into_iter().map(|(b, _)| b).collect();
    assert_eq!(bodies, ["before"]);
}

#[test]
fn durable_auto_delete_queues_and_exchanges_survive_a_crash_and_go_with_their_last_user() {
    let dir = TempDir::new();
    {
        let core = open(&dir.0).expect("open");
        let ch = channel(&core);
        let x = ExchangeDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.exchange_declare("adx", "direct", x)
            .expect("exchange.declare");
        let q = QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..Default::default()
        };
        ch.queue_declare("adq", q).expect("queue.declare");
        ch.queue_bind("adq", "adx", "k", FieldTable::default())
            .expect("queue.bind");
        publish(&ch, "adx", "k", "kept", true);
        // Dropped without close_durable: a crash.
    }
    {
        let core = open(&dir.0).expect("reopen");
        let report = core.recovery().expect("a durable core reports").clone();
        assert_eq!(
            (
                report.exchanges,
                report.queues,
                report.bindings,
                report.messages
            ),
            (1, 1, 1, 1),
            "as RabbitMQ recovers them"
        );
        let vh = core.vhost("/").expect("vhost");
        assert!(vh.queue("adq").is_some_and(|q| q.auto_delete));
        let ch = channel(&core);
        publish(&ch, "adx", "k", "routed again", true);
        // A consumer comes and goes: the queue goes with it, and the exchange
        // with its last binding.
        let tag = ch
            .basic_consume("adq", "", super::ConsumeOptions::default())
            .expect("basic.consume");
        ch.basic_cancel(tag.as_str()).expect("basic.cancel");
        assert!(vh.queue("adq").is_none(), "auto-deleted");
        assert!(
            vh.exchange("adx").is_none(),
            "auto-deleted with its last binding"
        );
        core.close_durable().expect("close");
    }
    let core = open(&dir.0).expect("reopen again");
    let report = core.recovery().expect("a durable core reports").clone();
    assert_eq!(
        (report.exchanges, report.queues),
        (0, 0),
        "their deletions hold"
    );
    let vh = core.vhost("/").expect("vhost");
    assert!(vh.queue("adq").is_none() && vh.exchange("adx").is_none());
}
