//! Plain AMQP RPC clients (the RabbitMQ tutorial's `reply_to` +
//! `correlation_id` pattern) against a warren server: pika from Python, and
//! lapin sending a body no codec can read.

use std::time::Duration;

use crate::common::*;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio::sync::mpsc;
use warren::wire::Codec;

async fn serve_calc(url: &str) -> (warren::Connection, String, warren::rpc::ServerHandle) {
    let connection = warren::connect(url).await.unwrap();
    let topic = unique("calc");
    let (records, _) = mpsc::unbounded_channel();
    let server = calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .unwrap();
    (connection, topic, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_tutorial_client_calls_a_warren_server() {
    let url = rabbitmq_url();
    let (_connection, topic, _server) = serve_calc(&url).await;
    for extra in [None, Some("--no-content-type")] {
        let mut args = vec![url.as_str(), topic.as_str(), "20", "22"];
        args.extend(extra);
        let stdout = run_python("pika_rpc_client.py", &args).await;
        assert_eq!(stdout.trim(), "42", "{extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_request_gets_a_decode_failure_and_the_server_keeps_serving() {
    let url = rabbitmq_url();
    let (connection, topic, _server) = serve_calc(&url).await;
    let amqp = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = amqp.create_channel().await.unwrap();
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (content_type, body) in [
        ("application/msgpack", &b"\xc1\xc1 not msgpack"[..]),
        ("application/json", b"{\"method\": "),
        ("text/plain", b"hello"),
    ] {
        channel
            .basic_publish(
                "".into(),
                topic.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_content_type(content_type.into())
                    .with_reply_to(reply_queue.name().clone())
                    .with_correlation_id("garbage-1".into()),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(20), replies.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        assert_eq!(
            delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str()),
            Some("garbage-1")
        );
        let codec = Codec::for_message(
            delivery
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str()),
            &delivery.data,
        )
        .unwrap();
        let failure = codec
            .decode_reply(&delivery.data.clone().into())
            .unwrap()
            .outcome
            .unwrap_err();
        assert_eq!(failure.class, "DecodeError", "{content_type}: {failure:?}");
    }
    let client = CalcClient::new(&connection).topic(&topic);
    assert_eq!(client.add(1, 2).await.unwrap(), 3, "still serving");
}
