//! Permissions, password handling, the three connection races, channel.flow and signals.
//!
//! The races and the permission cases run on warren's broker and on RabbitMQ
//! with the same assertions; the races with raw frames, since a client
//! library would serialize them away. Each test ends by checking that the
//! connection, or a new client, is still served. Timeouts are hang guards.

use std::time::Duration;

use amq_protocol::protocol::{channel, connection, queue, AMQPClass};
use amq_protocol::types::FieldTable;

use crate::common::raw::{connection_close, method, publish, Opts, Peer};
use crate::common::unique;
use crate::on_both_brokers;

/// Hang guard for anything a broker must do.
const GUARD: Duration = Duration::from_secs(20);

on_both_brokers!(
    a_channel_close_crossing_the_brokers_close_is_answered,
    every_connection_close_of_a_racing_client_gets_close_ok,
    channel_flow_false_is_refused_with_540,
);

/// The peer's options: the hang guard, and a delivery's content frames
/// skipped between methods.
fn opts() -> Opts {
    Opts {
        guard: GUARD,
        skip_content: true,
        ..Opts::default()
    }
}

impl Peer {
    /// Declares a server-named exclusive queue on `ch`: proof the
    /// connection is served.
    async fn declare_queue(&mut self, ch: u16) -> String {
        self.send_all(&[method(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "".into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )])
        .await;
        match self.method().await {
            (c, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) if c == ch => {
                ok.queue.to_string()
            }
            other => panic!("expected queue.declare-ok on {ch}, got {other:?}"),
        }
    }

    /// Closes the connection cleanly.
    async fn close(mut self) {
        self.send(&connection_close()).await;
        loop {
            match self.method().await {
                (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => return,
                (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                    panic!("broker closed the connection: {c:?}")
                }
                _ => {}
            }
        }
    }
}

/// A client publishes to a missing exchange and closes the channel before
/// the broker's 404 channel.close reaches it: the two closes cross. The
/// broker answers the client's close with close-ok, takes the client's
/// close-ok for its own, and the connection lives on (warren used to
/// forget the channel at the first close and fail the second with 504).
async fn a_channel_close_crossing_the_brokers_close_is_answered(url: String) {
    let mut peer = Peer::open(&url, opts()).await;
    peer.open_channel(1).await;
    let missing = unique("warren-missing");
    let mut frames = publish(1, &missing, "rk", b"lost").to_vec();
    frames.push(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "client closes".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    peer.send_all(&frames).await;

    let (ch, got) = peer.method().await;
    match got {
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) if ch == 1 => {
            assert_eq!(c.reply_code, 404, "{c:?}")
        }
        other => panic!("expected the broker's channel.close 404, got {ch} {other:?}"),
    }
    let (ch, got) = peer.method().await;
    assert!(
        ch == 1 && matches!(got, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "expected channel.close-ok for the client's close, got {ch} {got:?}"
    );
    // The client's answer to the broker's close.
    peer.send_all(&[method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )])
    .await;

    // Still served: channel 1 opens again and works.
    peer.open_channel(1).await;
    peer.declare_queue(1).await;
    peer.close().await;
}

/// What amqp091-go's concurrent-close test does on the wire: 32 threads
/// close one connection at once, so 32 connection.close frames arrive.
/// Each gets a close-ok, and the broker leaves hanging up to the client
/// (warren used to answer the first and hang up, so the other 31 callers
/// saw EOF, reported as 501).
async fn every_connection_close_of_a_racing_client_gets_close_ok(url: String) {
    const CLOSERS: usize = 32;
    let mut peer = Peer::open(&url, opts()).await;
    peer.open_channel(1).await;
    peer.send_all(&vec![connection_close(); CLOSERS]).await;
    let mut close_oks = 0;
    while close_oks < CLOSERS {
        match peer.next_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))) => close_oks += 1,
            Some(other) => panic!("expected connection.close-ok, got {other:?}"),
            None => break,
        }
    }
    assert_eq!(close_oks, CLOSERS, "close-oks before the broker hung up");
    drop(peer);

    // A new client is served.
    let mut next = Peer::open(&url, opts()).await;
    next.open_channel(1).await;
    next.declare_queue(1).await;
    next.close().await;
}

/// `channel.flow(active=true)` is acknowledged; `active=false` is refused
/// with 540 NOT_IMPLEMENTED, closing the connection, as RabbitMQ 3.x does
/// (warren used to answer flow-ok).
async fn channel_flow_false_is_refused_with_540(url: String) {
    let flow = |active| {
        method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active })),
        )
    };
    let mut peer = Peer::open(&url, opts()).await;
    peer.open_channel(1).await;
    peer.send_all(&[flow(true)]).await;
    let got = peer.method().await;
    assert!(
        matches!(
            got,
            (
                1,
                AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: true
                }))
            )
        ),
        "expected channel.flow-ok(active=true), got {got:?}"
    );
    peer.send_all(&[flow(false)]).await;
    match peer.method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
            assert_eq!(
                (c.reply_code, c.class_id, c.method_id),
                (540, 20, 20),
                "{c:?}"
            );
        }
        other => panic!("expected connection.close 540, got {other:?}"),
    }
    peer.send_all(&[method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )])
    .await;

    let mut next = Peer::open(&url, opts()).await;
    next.open_channel(1).await;
    next.declare_queue(1).await;
    next.close().await;
}

/// Users, vhosts and permissions set up the same way on both brokers.
mod permissions {
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{Connection, ConnectionProperties, ExchangeKind};

    use crate::common::{self, rabbitmqctl, unique};

    /// Which broker a permission test runs on.
    #[derive(Clone, Copy, Debug)]
    pub(super) enum On {
        Warren,
        RabbitMq,
    }

    /// A user: name, password, and `[configure, write, read]` on the
    /// test's vhost (`None`: no permissions at all).
    struct User {
        name: String,
        password: String,
        on_vhost: Option<[&'static str; 3]>,
    }

    /// A vhost of the test's own with its users, on one broker; RabbitMQ's
    /// are deleted on drop.
    struct Site {
        vhost: String,
        host: String,
        users: Vec<String>,
        warren: Option<warren::broker::BrokerHandle>,
    }

    impl Site {
        async fn new(on: On, users: &[&User]) -> Site {
            let vhost = unique("warren-access");
            match on {
                On::Warren => {
                    let mut b = warren::broker::Broker::builder()
                        .listen(([127, 0, 0, 1], 0).into())
                        .vhost(&vhost);
                    for u in users {
                        b = b.user(&u.name, &u.password);
                        if let Some([c, w, r]) = u.on_vhost {
                            b = b.permission(&u.name, &vhost, c, w, r);
                        }
                    }
                    let broker = b.start().await.expect("start the embedded broker");
                    Site {
                        vhost,
                        host: broker.local_addrs()[0].to_string(),
                        users: Vec::new(),
                        warren: Some(broker),
                    }
                }
                On::RabbitMq => {
                    common::ensure_rabbitmq();
                    rabbitmqctl(&["add_vhost", &vhost]);
                    let mut site = Site {
                        vhost,
                        host: "127.0.0.1:5672".to_owned(),
                        users: Vec::new(),
                        warren: None,
                    };
                    for u in users {
                        rabbitmqctl(&["add_user", &u.name, &u.password]);
                        site.users.push(u.name.clone());
                        if let Some([c, w, r]) = u.on_vhost {
                            rabbitmqctl(&["set_permissions", "-p", &site.vhost, &u.name, c, w, r]);
                        }
                    }
                    site
                }
            }
        }

        fn url(&self, user: &User, vhost: &str) -> String {
            let vhost = vhost.replace('/', "%2f");
            format!(
                "amqp://{}:{}@{}/{vhost}",
                user.name, user.password, self.host
            )
        }

        async fn connect(&self, user: &User) -> Result<Connection, lapin::Error> {
            Connection::connect(
                &self.url(user, &self.vhost),
                ConnectionProperties::default(),
            )
            .await
        }
    }

    impl Drop for Site {
        fn drop(&mut self) {
            if self.warren.is_some() {
                return;
            }
            // Best effort, and no panic: this may run while a test unwinds.
            let ctl = |args: &[&str]| {
                let _ = std::process::Command::new("rabbitmqctl")
                    .args(args)
                    .output();
            };
            for u in &self.users {
                ctl(&["delete_user", u]);
            }
            ctl(&["delete_vhost", &self.vhost]);
        }
    }

    fn user(prefix: &str, on_vhost: Option<[&'static str; 3]>) -> User {
        User {
            name: unique(prefix),
            password: "pw-1".to_owned(),
            on_vhost,
        }
    }

    fn code(e: &lapin::Error) -> Option<u16> {
        match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
            _ => None,
        }
    }

    fn args(key: &str, exchange: &str) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(key.into(), AMQPValue::LongString(exchange.into()));
        t
    }

    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod embedded {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(super::On::Warren).await
                    }
                )*
            }
            mod rabbitmq {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(super::On::RabbitMq).await
                    }
                )*
            }
        };
    }

    on_both!(
        a_user_without_permissions_may_open_no_vhost,
        a_new_queues_dead_letter_exchange_needs_write_on_it_and_read_on_the_queue,
        a_new_exchanges_alternate_exchange_needs_write_on_it_and_read_on_the_exchange,
    );

    /// A user with no permissions may not open any vhost (530); one with
    /// permissions on a vhost opens it, and only it (warren used to let a
    /// user without any permissions use every vhost).
    async fn a_user_without_permissions_may_open_no_vhost(on: On) {
        let nobody = user("nobody", None);
        let alice = user("alice", Some([".*", ".*", ".*"]));
        let site = Site::new(on, &[&nobody, &alice]).await;

        let err = site.connect(&nobody).await.expect_err("no permissions");
        assert_eq!(code(&err), Some(530), "{err:?}");
        for who in [&nobody, &alice] {
            let err = Connection::connect(&site.url(who, "/"), ConnectionProperties::default())
                .await
                .expect_err("no permissions on /");
            assert_eq!(code(&err), Some(530), "{err:?}");
        }

        // Served afterwards: alice on her vhost.
        let conn = site.connect(&alice).await.expect("alice opens her vhost");
        let ch = conn.create_channel().await.expect("a channel");
        ch.queue_declare(
            "alice.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("alice declares");
        conn.close(200, "bye".into()).await.expect("close");
    }

    /// Declares queue `name` with `args` on a fresh channel of `conn`.
    async fn declare_queue(
        conn: &Connection,
        name: &str,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        let ch = conn.create_channel().await.expect("a channel");
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
            .await
            .map(|_| ())
    }

    /// Declares direct exchange `name` with `args` on a fresh channel.
    async fn declare_exchange(
        conn: &Connection,
        name: &str,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        let ch = conn.create_channel().await.expect("a channel");
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
    }

    /// Declaring a queue whose `x-dead-letter-exchange` the user may not
    /// write to is refused (403), as is one the user may not read from: the
    /// queue would otherwise publish where its declarer may not. Redeclaring
    /// an existing queue is not checked again, as in RabbitMQ.
    async fn a_new_queues_dead_letter_exchange_needs_write_on_it_and_read_on_the_queue(on: On) {
        const DLX: &str = "x-dead-letter-exchange";
        let admin = user("admin", Some([".*", ".*", ".*"]));
        let writer = user("writer", Some([".*", "^mine\\.", ".*"]));
        let blind = user("blind", Some([".*", ".*", "^$"]));
        let site = Site::new(on, &[&admin, &writer, &blind]).await;
        let admin = site.connect(&admin).await.expect("admin connects");
        let writer = site.connect(&writer).await.expect("writer connects");
        let blind = site.connect(&blind).await.expect("blind connects");

        let err = declare_queue(&writer, "mine.q1", args(DLX, "theirs.dlx"))
            .await
            .expect_err("no write on the dead-letter exchange");
        assert_eq!(code(&err), Some(403), "{err:?}");
        declare_queue(&writer, "mine.q2", args(DLX, "mine.dlx"))
            .await
            .expect("write on the dead-letter exchange");

        let err = declare_queue(&blind, "mine.q3", args(DLX, "mine.dlx"))
            .await
            .expect_err("no read on the queue");
        assert_eq!(code(&err), Some(403), "{err:?}");
        declare_queue(&blind, "mine.q4", FieldTable::default())
            .await
            .expect("no dead-letter exchange, no read needed");

        declare_queue(&admin, "shared.q", args(DLX, "theirs.dlx"))
            .await
            .expect("admin may");
        declare_queue(&writer, "shared.q", args(DLX, "theirs.dlx"))
            .await
            .expect("an existing queue is not checked again");

        // Still served.
        declare_queue(&writer, "mine.q5", FieldTable::default())
            .await
            .expect("writer still served");
    }

    /// Declaring an exchange whose `alternate-exchange` the user may not
    /// write to is refused (403), as is one the user may not read from.
    async fn a_new_exchanges_alternate_exchange_needs_write_on_it_and_read_on_the_exchange(on: On) {
        const AE: &str = "alternate-exchange";
        let writer = user("writer", Some([".*", "^mine\\.", ".*"]));
        let blind = user("blind", Some([".*", ".*", "^$"]));
        let site = Site::new(on, &[&writer, &blind]).await;
        let writer = site.connect(&writer).await.expect("writer connects");
        let blind = site.connect(&blind).await.expect("blind connects");

        let err = declare_exchange(&writer, "mine.x1", args(AE, "theirs.ae"))
            .await
            .expect_err("no write on the alternate exchange");
        assert_eq!(code(&err), Some(403), "{err:?}");
        declare_exchange(&writer, "mine.x2", args(AE, "mine.ae"))
            .await
            .expect("write on the alternate exchange");

        let err = declare_exchange(&blind, "mine.x3", args(AE, "mine.ae"))
            .await
            .expect_err("no read on the exchange");
        assert_eq!(code(&err), Some(403), "{err:?}");

        // Still served.
        declare_exchange(&blind, "mine.x4", FieldTable::default())
            .await
            .expect("blind still served");
    }
}

/// Password hashes move between RabbitMQ and warren.
mod password_hashes {
    use lapin::{Connection, ConnectionProperties};
    use warren::broker::core::PasswordHash;
    use warren::broker::Broker;

    use crate::common::{self, rabbitmqctl, unique};

    /// Made by RabbitMQ 3.10.8 for the password `test12` (`add_user`, then
    /// `export_definitions`).
    const RABBITMQ_HASH: &str = "FDz+5gRfDNzycJvT+d7ERrAP1KfxcSK9WFUNEOMdR+0HI2Np";

    /// A user given by RabbitMQ's hash logs in to warren with the password,
    /// and not without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rabbitmq_password_hash_logs_in_towarren() {
        let hash = PasswordHash::parse(RABBITMQ_HASH).expect("RabbitMQ's hash parses");
        let broker = Broker::builder()
            .listen(([127, 0, 0, 1], 0).into())
            .user_with_password_hash("moved", hash)
            .permission("moved", "/", ".*", ".*", ".*")
            .start()
            .await
            .expect("start");
        let addr = broker.local_addrs()[0];
        let login = |password: &str| format!("amqp://moved:{password}@{addr}/%2f");
        let wrong = Connection::connect(&login("test13"), ConnectionProperties::default()).await;
        assert!(wrong.is_err(), "a wrong password");
        let conn = Connection::connect(&login("test12"), ConnectionProperties::default())
            .await
            .expect("the right password");
        conn.create_channel().await.expect("served");
    }

    /// A hash made by warren, imported into RabbitMQ as a definition, logs
    /// in to RabbitMQ with the password.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn awarren_password_hash_logs_in_to_rabbitmq() {
        common::ensure_rabbitmq();
        let name = unique("moved");
        let hash = PasswordHash::new("s3cret:with colon").encode();
        let definitions = serde_json::json!({
            "users": [{
                "name": name,
                "password_hash": hash,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "",
            }],
            "permissions": [{
                "user": name, "vhost": "/",
                "configure": ".*", "write": ".*", "read": ".*",
            }],
        });
        let file = std::env::temp_dir().join(format!("{name}.json"));
        std::fs::write(&file, definitions.to_string()).expect("write definitions");
        rabbitmqctl(&["import_definitions", file.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&file);
        let url = |password: &str| {
            format!(
                "amqp://{name}:{}@127.0.0.1:5672/%2f",
                password.replace(':', "%3A").replace(' ', "%20")
            )
        };
        let wrong = Connection::connect(&url("s3cret"), ConnectionProperties::default()).await;
        let right =
            Connection::connect(&url("s3cret:with colon"), ConnectionProperties::default()).await;
        let served = match &right {
            Ok(conn) => conn.create_channel().await.map(|_| ()),
            Err(e) => Err(e.clone()),
        };
        // Deleting the user closes its connections: only once done with them.
        rabbitmqctl(&["delete_user", &name]);
        assert!(wrong.is_err(), "a wrong password");
        right.expect("the right password");
        served.expect("served");
    }
}

/// Unacknowledged deliveries past the consumer timeout.
mod consumer_timeout {
    use std::time::Duration;

    use amq_protocol::protocol::{basic, channel, AMQPClass};
    use amq_protocol::types::FieldTable;
    use warren::broker::Broker;

    use super::{method, opts, publish, Peer};

    /// A delivery left unacknowledged past `consumer_timeout` closes its
    /// channel with 406 and RabbitMQ's text; the message is requeued, and
    /// the connection still serves another channel, which gets it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unacked_delivery_past_the_timeout_closes_the_channel_and_is_requeued() {
        let broker = Broker::builder()
            .listen(([127, 0, 0, 1], 0).into())
            .consumer_timeout(Some(Duration::from_millis(1000)))
            .start()
            .await
            .expect("start");
        let mut peer = Peer::open(&broker.url(), opts()).await;
        peer.open_channel(1).await;
        let q = peer.declare_queue(1).await;
        let mut frames = publish(1, "", &q, b"slow").to_vec();
        frames.push(method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: q.as_str().into(),
                consumer_tag: "slow".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ));
        peer.send_all(&frames).await;

        let close = loop {
            match peer.method().await {
                (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {}
                (1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => {}
                (1, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => break c,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(close.reply_code, 406, "{close:?}");
        assert_eq!(
            close.reply_text.as_str(),
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout \
             value used: 1000 ms. This timeout value can be configured, see consumers doc \
             guide to learn more"
        );
        peer.send_all(&[method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )])
        .await;

        peer.open_channel(2).await;
        peer.send_all(&[method(
            2,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: q.as_str().into(),
                no_ack: true,
            })),
        )])
        .await;
        match peer.method().await {
            (2, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => {
                assert!(ok.redelivered, "requeued after the timeout: {ok:?}")
            }
            other => panic!("expected basic.get-ok, got {other:?}"),
        }
        peer.close().await;
    }
}

/// `warren broker` stopped by a signal.
mod signals {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use amq_protocol::protocol::{connection, AMQPClass};

    use super::{method, opts, Peer, GUARD};
    use crate::common::free_port;

    /// Starts `warren broker` on a free port with `extra` arguments and
    /// environment, and waits until it accepts connections.
    fn spawn_broker(extra: &[&str], env: &[(&str, &str)]) -> (std::process::Child, u16) {
        let port = free_port();
        let mut cmd = Command::new(crate::common::warren_bin());
        cmd.args([
            "broker",
            "--in-memory",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().expect("warren broker starts");
        let deadline = Instant::now() + GUARD;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "warren broker does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, port)
    }

    /// Sends `signal` to the broker, asserts the client is told 320
    /// CONNECTION_FORCED, and that the process then exits with success.
    async fn stops_gracefully_on(signal: &str, mut child: std::process::Child, mut peer: Peer) {
        // The shell's builtin kill: a minimal machine may lack procps' binary.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", child.id())])
            .status()
            .expect("sh runs");
        assert!(status.success());
        match peer.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 320, "{c:?}")
            }
            other => panic!("expected connection.close 320, got {other:?}"),
        }
        peer.send_all(&[method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        )])
        .await;
        let deadline = Instant::now() + GUARD;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the broker") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("warren broker still runs after {signal}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit after {signal}: {status}");
    }

    /// SIGTERM (what `kill`, systemd and container runtimes send) closes
    /// the clients with 320 and exits 0, as SIGINT does. The users here come
    /// from `--users-file`, so no password shows in `ps`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_closes_clients_with_320_and_exits_0() {
        let file = std::env::temp_dir().join(format!("{}.users", crate::common::unique("warren")));
        std::fs::write(&file, "# a comment\n\nalice:pa:ss\n").expect("write the users file");
        let (child, port) = spawn_broker(
            &[
                "--users-file",
                file.to_str().expect("utf-8 path"),
                "--permission",
                "alice",
                "/",
                ".*",
                ".*",
                ".*",
            ],
            &[],
        );
        let _ = std::fs::remove_file(&file);
        let mut peer = Peer::open(
            &format!("amqp://alice:pa%3Ass@127.0.0.1:{port}/%2f"),
            opts(),
        )
        .await;
        peer.open_channel(1).await;
        stops_gracefully_on("TERM", child, peer).await;
    }

    /// SIGINT (Ctrl-C) does the same; the user comes from
    /// `$WARREN_BROKER_USER`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigint_closes_clients_with_320_and_exits_0() {
        let (child, port) = spawn_broker(
            &["--permission", "bob", "/", ".*", ".*", ".*"],
            &[("WARREN_BROKER_USER", "bob:pw")],
        );
        let mut peer = Peer::open(&format!("amqp://bob:pw@127.0.0.1:{port}/%2f"), opts()).await;
        peer.open_channel(1).await;
        stops_gracefully_on("INT", child, peer).await;
    }
}
