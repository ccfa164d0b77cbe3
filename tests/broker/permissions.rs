//! Users, vhosts and permission patterns on the embedded broker, seen by
//! lapin: what RabbitMQ's `set_permissions` allows, and 403 for the rest.

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use warren::broker::{Broker, BrokerHandle};

fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

async fn broker() -> BrokerHandle {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .user("admin", "secret")
        .user("alice", "pw")
        .vhost("other")
        .permission("admin", "/", ".*", ".*", ".*")
        .permission("admin", "other", ".*", ".*", ".*")
        .permission(
            "alice",
            "/",
            "^alice\\.",
            "^(alice\\.|amq\\.default$)",
            "^alice\\.",
        )
        .start()
        .await
        .expect("broker")
}

fn url(b: &BrokerHandle, user: &str, vhost: &str) -> String {
    let addr = b.local_addrs()[0];
    format!("amqp://{user}@{addr}/{vhost}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_patterns_allow_and_refuse_like_rabbitmq() {
    let b = broker().await;
    let admin = Connection::connect(
        &url(&b, "admin:secret", "%2f"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ach = admin.create_channel().await.unwrap();
    ach.queue_declare(
        "bob.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let alice = Connection::connect(&url(&b, "alice:pw", "%2f"), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = alice.create_channel().await.unwrap();
    // Allowed: her own names, and publishing through the default exchange.
    ch.queue_declare(
        "alice.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "alice.q".into(),
        BasicPublishOptions::default(),
        b"hi",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get("alice.q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert_eq!(got.expect("a message").delivery.data, b"hi");

    // Refused: configure someone else's exchange, read someone else's queue.
    let err = ch
        .exchange_declare(
            "bob.x".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
    let ch = alice.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            "bob.q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
    let ch = alice.create_channel().await.unwrap();
    let err = ch
        .queue_delete("bob.q".into(), QueueDeleteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");

    // A vhost she has no permissions on is closed to her; admin may use
    // the vhosts it has permissions on.
    assert!(Connection::connect(
        &url(&b, "alice:pw", "other"),
        ConnectionProperties::default()
    )
    .await
    .is_err());
    assert!(Connection::connect(
        &url(&b, "admin:secret", "other"),
        ConnectionProperties::default()
    )
    .await
    .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_patterns_are_refused_at_start() {
    let err = Broker::builder()
        .no_listen()
        .permission("u", "/", "(", ".*", ".*")
        .start()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid permission pattern"),
        "{err}"
    );
}
