//! The socket-free core used directly (what an in-process transport does).

use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use warren::broker::core::permission::Permissions;
use warren::broker::core::{ChannelEvent, ConsumeOptions, Core, ErrorScope, QueueDeclareOptions};
use warren::broker::Broker;

#[tokio::test]
async fn core_publish_consume_ack_confirm() {
    let b = Broker::builder().no_listen().start().await.unwrap();
    assert!(b.local_addrs().is_empty());
    let core = b.core();
    assert!(core.authenticate("guest", "guest"));
    let conn = core.open_connection("/", "guest").unwrap();
    let (ch, mut events) = conn.open_channel_mpsc();
    let ok = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    ch.confirm_select().unwrap();
    let tag = ch
        .basic_consume(&ok.queue, "", ConsumeOptions::default())
        .unwrap();
    assert!(tag.as_str().starts_with("amq.ctag-"));
    let out = ch
        .basic_publish(
            "".into(),
            ok.queue.as_str().into(),
            true,
            BasicProperties::default(),
            bytes::Bytes::from_static(b"hi"),
        )
        .unwrap();
    assert_eq!(out.routed, 1);
    assert_eq!(out.confirm_tag, Some(1));
    let mut delivery_tag = None;
    let mut confirmed = false;
    while delivery_tag.is_none() || !confirmed {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            ChannelEvent::ConsumeOk { consumer_tag } => assert_eq!(consumer_tag, tag),
            ChannelEvent::Deliver(d) => {
                assert_eq!(&d.message.body[..], b"hi");
                delivery_tag = Some(d.delivery_tag);
            }
            ChannelEvent::Confirm {
                delivery_tag, ack, ..
            } => {
                assert_eq!(delivery_tag, 1);
                assert!(ack);
                confirmed = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ch.basic_ack(delivery_tag.unwrap(), false).unwrap();
    let err = ch.basic_ack(99, false).unwrap_err();
    assert_eq!(err.code, 406);
    assert_eq!(err.scope, ErrorScope::Channel);
    // The core names no wire method: the TCP server's dispatcher stamps the
    // frame's (class, method) on the channel.close it sends.
    assert_eq!((err.class_id, err.method_id), (0, 0));
    assert!(core.open_connection("nope", "guest").is_err());
}

#[tokio::test]
async fn core_without_broker() {
    let core = Core::new(&[("u".into(), "p".into())], &["v".into()]);
    assert!(
        core.open_connection("v", "u").is_err(),
        "no permissions, no vhost"
    );
    core.set_permissions("u", "v", Permissions::new(".*", ".*", ".*").unwrap());
    let conn = core.open_connection("v", "u").unwrap();
    let (ch, _rx) = conn.open_channel_mpsc();
    ch.queue_declare("q", QueueDeclareOptions::default())
        .unwrap();
    ch.basic_publish(
        "".into(),
        "q".into(),
        false,
        BasicProperties::default(),
        bytes::Bytes::from_static(b"x"),
    )
    .unwrap();
    let got = ch.basic_get("q", true).unwrap().unwrap();
    assert_eq!(&got.message.body[..], b"x");
    assert!(ch.basic_get("q", true).unwrap().is_none());
}

/// Shutting the broker down closes its clients' connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_clients() {
    let b = Broker::builder()
        .listen("127.0.0.1:0".parse().expect("an address"))
        .start()
        .await
        .expect("the broker starts");
    let c = lapin::Connection::connect(&b.url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let _ch = c.create_channel().await.expect("channel");
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("shutdown hangs");
    tokio::time::timeout(Duration::from_secs(10), async {
        while c.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("client still connected");
}
