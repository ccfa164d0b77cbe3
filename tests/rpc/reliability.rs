//! RPC under failure (issue #12), on warren's broker and on RabbitMQ: a
//! request delivered twice is executed once, and a server's shutdown is
//! bounded by its grace period, handing what it could not finish to
//! another server.

use std::time::Duration;

use crate::common::*;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::sync::mpsc;

crate::on_both_brokers!(
    a_request_delivered_twice_is_executed_once,
    a_call_outliving_the_grace_period_is_answered_by_another_server,
    a_request_that_keeps_killing_servers_is_set_aside,
);

/// The poison guard where RabbitMQ counts deliveries itself (quorum
/// queues' `x-delivery-count`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_keeps_killing_servers_is_set_aside_on_quorum_queues() {
    // A vhost of its own: quorum topology declares `openstack` durable,
    // which the shared vhost has as transient.
    let (_vhost, url) = rabbitmq_vhost();
    let url = format!("{url}?rabbit_quorum_queue=true");
    a_request_that_keeps_killing_servers_is_set_aside(url).await
}

/// A service whose one method never returns, and says when it started.
#[warren::service(topic = "fragile", version = "1.0")]
pub trait Fragile {
    /// Handles the request that kills its server.
    async fn crash(&self) -> u64;
}

struct FragileImpl(mpsc::UnboundedSender<()>);

impl Fragile for FragileImpl {
    async fn crash(&self) -> u64 {
        let _ = self.0.send(());
        std::future::pending().await
    }
}

/// oslo.messaging's 2.0 envelope of a cast of `record(value)` with the
/// request id `unique_id`, as a Python peer sends it.
fn oslo_cast(unique_id: &str, value: i64) -> Vec<u8> {
    let message = serde_json::json!({
        "method": "record",
        "args": {"value": value},
        "namespace": null,
        "version": "1.5",
        "_unique_id": unique_id,
        "_context_request_id": "req-1",
    });
    serde_json::to_vec(&serde_json::json!({
        "oslo.version": "2.0",
        "oslo.message": message.to_string(),
    }))
    .expect("JSON")
}

/// The same request arrives twice (as it does when the first delivery's
/// ack is lost with a connection and the broker delivers it again, or a
/// publisher retries), minutes apart in a real failure, here back to back
/// and also after other traffic that oslo's 16-id memory would forget it
/// behind: the server runs it once.
async fn a_request_delivered_twice_is_executed_once(url: String) {
    let connection = warren::connect(&url).await.expect("connect");
    let topic = unique("calc");
    let (records, mut recorded) = mpsc::unbounded_channel();
    let _server = calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .expect("serve");
    let amqp = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("lapin connects");
    let channel = amqp.create_channel().await.expect("channel");
    let publish = |body: Vec<u8>| {
        let channel = channel.clone();
        let topic = topic.clone();
        async move {
            channel
                .basic_publish(
                    "openstack".into(),
                    topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_content_type("application/json".into()),
                )
                .await
                .expect("publish")
                .await
                .expect("published");
        }
    };
    let twice = unique("request");
    publish(oslo_cast(&twice, 1)).await;
    publish(oslo_cast(&twice, 1)).await;
    // Twenty other requests: more than oslo.messaging remembers.
    for value in 2..22 {
        publish(oslo_cast(&unique("request"), value)).await;
    }
    publish(oslo_cast(&twice, 1)).await;
    publish(oslo_cast(&unique("request"), 99)).await;
    // The server handles requests concurrently: wait until every distinct
    // one arrived (the last, 99, among them), then for any straggler.
    let mut values = Vec::new();
    let guard = std::time::Instant::now() + Duration::from_secs(60);
    while values.len() < 22 {
        assert!(std::time::Instant::now() < guard, "only got {values:?}");
        if let Ok(Some((_, v))) =
            tokio::time::timeout(Duration::from_secs(1), recorded.recv()).await
        {
            values.push(v);
        }
    }
    values.extend(
        drain(&mut recorded, 1, Duration::from_millis(500))
            .await
            .into_iter()
            .map(|(_, v)| v),
    );
    values.sort();
    let mut expected: Vec<i64> = (1..22).collect();
    expected.push(99);
    assert_eq!(values, expected, "each request once, the repeated one too");
    let _ = amqp.close(200, "OK".into()).await;
}

/// A server shut down with a 100 ms grace period while it runs a 3 s call:
/// its shutdown ends first, and the call, cancelled there unacknowledged,
/// is delivered to the other server, whose answer the caller gets.
async fn a_call_outliving_the_grace_period_is_answered_by_another_server(url: String) {
    let connection = warren::connect(&url).await.expect("connect");
    let topic = unique("calc");
    let (records, _) = mpsc::unbounded_channel();
    let first = calc("s1", &records)
        .builder()
        .topic(&topic)
        .grace_period(Duration::from_millis(100))
        .serve(&connection, "s1")
        .await
        .expect("serve s1");
    let client = CalcClient::new(&connection)
        .topic(&topic)
        .timeout(Duration::from_secs(60));
    let call = tokio::spawn(async move { client.sleep_ms(3_000).await });
    let guard = std::time::Instant::now() + Duration::from_secs(60);
    while first.in_flight() == 0 {
        assert!(std::time::Instant::now() < guard, "s1 never got the call");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = calc("s2", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s2")
        .await
        .expect("serve s2");
    let shutdown = first.shutdown();
    tokio::pin!(shutdown);
    tokio::pin!(call);
    tokio::select! {
        done = &mut shutdown => done.expect("s1 shuts down"),
        answered = &mut call => panic!(
            "the call ended ({answered:?}) before s1's shutdown: the grace period was not kept"
        ),
    }
    let answer = call
        .await
        .expect("the call's task")
        .expect("s2 answers the call s1 gave up");
    assert_eq!(answer, 3_000);
    second.shutdown().await.expect("s2 shuts down");
}

/// A request that kills every server handling it (here: its connection
/// goes, unacknowledged, while the method runs) is redelivered; with a
/// delivery limit of 2 the third redelivery is not executed but moved to
/// `<topic>.poison`, and the caller is told so.
async fn a_request_that_keeps_killing_servers_is_set_aside(url: String) {
    const LIMIT: u32 = 2;
    let topic = unique("fragile");
    let caller = warren::connect(&url).await.expect("connect the caller");
    let client = FragileClient::new(&caller)
        .topic(&topic)
        .timeout(Duration::from_secs(120));
    let mut call = None;
    let guard = Duration::from_secs(60);
    let mut lingering = Vec::new();
    for crash in 0..=LIMIT {
        let connection = warren::connect(&url).await.expect("connect a server");
        let (started, mut running) = mpsc::unbounded_channel();
        let server = FragileServer::new(FragileImpl(started))
            .builder()
            .topic(&topic)
            .delivery_limit(LIMIT)
            .serve(&connection, &format!("s{crash}"))
            .await
            .expect("serve");
        if call.is_none() {
            // Once the first server declared the queues.
            let client = client.clone();
            call = Some(tokio::spawn(async move { client.crash().await }));
        }
        tokio::time::timeout(guard, running.recv())
            .await
            .unwrap_or_else(|_| panic!("server {crash} never ran the request"));
        // The request "kills" this server: its connection goes, the
        // request unacknowledged.
        connection
            .close()
            .await
            .expect("close the server's connection");
        lingering.push(server);
    }
    let connection = warren::connect(&url)
        .await
        .expect("connect the last server");
    let (started, mut running) = mpsc::unbounded_channel();
    let _last = FragileServer::new(FragileImpl(started))
        .builder()
        .topic(&topic)
        .delivery_limit(LIMIT)
        .serve(&connection, "last")
        .await
        .expect("serve");
    let call = call.expect("the call was made");
    let err = tokio::time::timeout(guard, call)
        .await
        .expect("the caller hears within the guard")
        .expect("the call's task")
        .expect_err("the poison request is refused");
    let failure = err
        .remote()
        .unwrap_or_else(|| panic!("a remote failure: {err:?}"));
    assert_eq!(failure.class, warren::rpc::POISON_FAILURE_CLASS, "{err:?}");
    assert!(
        running.try_recv().is_err(),
        "the last server did not run the request"
    );

    // The request waits in the poison queue for someone to look at it.
    let amqp = lapin::Connection::connect(
        url.split('?').next().expect("a URL"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("lapin connects");
    let channel = amqp.create_channel().await.expect("channel");
    let poison = format!("{topic}.poison");
    let got = channel
        .basic_get(
            poison.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the request is in the poison queue");
    let body = String::from_utf8_lossy(&got.delivery.data).into_owned();
    assert!(body.contains("crash"), "the request itself: {body}");
    channel
        .queue_delete(poison.as_str().into(), Default::default())
        .await
        .expect("delete the poison queue");
    let _ = amqp.close(200, "OK".into()).await;
}
