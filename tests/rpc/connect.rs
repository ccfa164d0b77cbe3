//! Connecting: URLs, SASL mechanisms, fail-over, refused logins.

use std::time::Duration;

use crate::common::*;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_and_plain_logins_work_on_both_brokers() {
    let broker = embedded_broker().await;
    for base in [rabbitmq_url(), broker.url()] {
        let rabbit = base.replacen("amqp://", "rabbit://", 1);
        for method in ["AMQPLAIN", "PLAIN"] {
            answers(&format!(
                "{rabbit}?rabbit_login_method={method}&codec=msgpack"
            ))
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hosts_fail_over_in_order() {
    let broker = embedded_broker().await;
    let addr = broker.local_addrs()[0];
    // Nothing listens on port 1: the second host takes over.
    answers(&format!(
        "rabbit://guest:guest@127.0.0.1:1,guest:guest@{addr}/"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_or_no_broker_is_a_transport_error() {
    let broker = embedded_broker().await;
    let addr = broker.local_addrs()[0];
    for url in [
        format!("amqp://guest:wrong@{addr}/%2f"),
        rabbitmq_url().replacen("guest:guest", "guest:wrong", 1),
        "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
    ] {
        let err = warren::connect(&url).await.unwrap_err();
        assert!(err.is_transport(), "{url}: {err:?}");
    }
    let err = warren::connect("amqp://h:port/").await.unwrap_err();
    assert!(err.is_config(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_with_a_transport_error_once_the_broker_is_gone() {
    let broker = embedded_broker().await;
    let connection = warren::connect(&broker.url()).await.unwrap();
    let topic = unique("calc");
    let (records, _) = mpsc::unbounded_channel();
    let _server = calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .unwrap();
    let client = CalcClient::new(&connection)
        .topic(&topic)
        .timeout(Duration::from_secs(20));
    assert_eq!(client.add(1, 1).await.unwrap(), 2);
    broker.shutdown().await;
    // Not a hang until the timeout: the broken connection is reported as such.
    let err = client.add(1, 1).await.unwrap_err();
    assert!(err.is_transport(), "{err:?}");
    let err = client.record(1).await.unwrap_err();
    assert!(err.is_transport(), "{err:?}");
}

/// Closing a connection ends its subscriptions as expected (`None`), not as
/// a failure: a failure is what servers recover from and what the reply
/// consumer logs at WARN (every `warren bench` against RabbitMQ did, at exit).
async fn closing_ends_subscriptions_cleanly(url: String) {
    let connection = warren::connect(&url).await.expect("connect");
    let queue = unique("closing");
    let transport = connection.transport();
    transport
        .declare_queue(&warren::transport::QueueSpec {
            name: queue.clone(),
            durable: false,
            auto_delete: false,
            exclusive: true,
            ..warren::transport::QueueSpec::default()
        })
        .await
        .expect("declare");
    let mut subscription = transport
        .consume(&warren::transport::ConsumeSpec {
            queue,
            prefetch: 0,
            no_ack: true,
        })
        .await
        .expect("consume");
    connection.close().await.expect("close");
    let next = tokio::time::timeout(Duration::from_secs(20), subscription.next())
        .await
        .expect("the subscription ends");
    assert!(
        next.is_none(),
        "ended as a failure: {:?}",
        next.map(|d| d.err())
    );
}

crate::on_both_brokers!(closing_ends_subscriptions_cleanly);
