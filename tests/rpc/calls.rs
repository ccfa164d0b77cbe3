//! The RPC conformance suite: every behaviour of calls, casts and servers,
//! run against each backend (see `common::Backend`).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use tokio::sync::mpsc;
use warren::rpc::{CallOptions, Client, Context, Target};
use warren::wire::Codec;

crate::conformance!(
    call_returns_the_result,
    cast_reaches_exactly_one_server,
    fanout_cast_reaches_every_server_once,
    to_server_reaches_only_the_named_server,
    calls_round_robin_over_servers_of_the_shared_queue,
    typed_application_error_arrives_as_its_own_type,
    call_without_a_server_times_out,
    incompatible_version_or_namespace_is_unsupported,
    unknown_method_is_no_such_method,
    underscore_methods_are_never_dispatched,
    context_reaches_the_server_method,
    thousand_concurrent_calls_are_all_matched,
    undecodable_arguments_give_a_decode_error_and_the_server_keeps_serving,
    panicking_method_gives_a_remote_failure_and_the_server_keeps_serving,
    graceful_shutdown_finishes_calls_in_flight,
    a_call_cannot_be_fanout,
    server_answers_each_caller_in_its_own_codec,
    several_endpoints_share_a_target_by_version_and_namespace,
    absurd_timeouts_are_answered_and_the_server_still_stops,
    a_request_dequeued_after_its_deadline_is_dropped_and_acked,
    a_call_inside_a_server_method_inherits_the_remaining_budget,
);

/// A second endpoint on the same topic, in its own namespace and version.
#[warren::service(topic = "calc", version = "2.1", namespace = "admin")]
pub trait CalcAdmin {
    /// Which endpoint answered.
    async fn whoami(&self) -> String;
}

struct Admin;

impl CalcAdmin for Admin {
    async fn whoami(&self) -> String {
        "admin".into()
    }
}

/// A connection, a unique topic, and a channel for casts.
struct Setup {
    connection: warren::Connection,
    _broker: Option<warren::broker::BrokerHandle>,
    topic: String,
    records: mpsc::UnboundedSender<(String, i64)>,
    recorded: mpsc::UnboundedReceiver<(String, i64)>,
}

async fn setup(backend: Backend) -> Setup {
    let (records, recorded) = mpsc::unbounded_channel();
    let (connection, broker) = backend.connect().await;
    Setup {
        connection,
        _broker: broker,
        topic: unique("calc"),
        records,
        recorded,
    }
}

impl Setup {
    async fn serve(&self, name: &str) -> warren::rpc::ServerHandle {
        calc(name, &self.records)
            .builder()
            .topic(&self.topic)
            .serve(&self.connection, name)
            .await
            .expect("serve")
    }

    fn client(&self) -> CalcClient {
        CalcClient::new(&self.connection)
            .topic(&self.topic)
            .timeout(Duration::from_secs(20))
    }

    fn raw_options(&self) -> CallOptions {
        let mut target = Target::new(&self.topic);
        target.version = Some("1.0".into());
        CallOptions::new(target).timeout(Duration::from_secs(20))
    }
}

async fn call_returns_the_result(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    assert_eq!(s.client().add(2, 40).await.unwrap(), 42);
    assert_eq!(s.client().add(-5, 3).await.unwrap(), -2);
}

async fn cast_reaches_exactly_one_server(backend: Backend) {
    let mut s = setup(backend).await;
    let _a = s.serve("a").await;
    let _b = s.serve("b").await;
    s.client().record(7).await.unwrap();
    // Wait for a second delivery that must never come.
    let got = drain(&mut s.recorded, 2, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1, "a cast goes to one server: {got:?}");
    assert_eq!(got[0].1, 7);
}

async fn fanout_cast_reaches_every_server_once(backend: Backend) {
    let mut s = setup(backend).await;
    let servers = [s.serve("a").await, s.serve("b").await, s.serve("c").await];
    s.client().fanout().record(99).await.unwrap();
    let mut got = drain(&mut s.recorded, 4, Duration::from_secs(2)).await;
    got.sort();
    assert_eq!(
        got,
        vec![("a".into(), 99), ("b".into(), 99), ("c".into(), 99)],
        "each server exactly once"
    );
    drop(servers);
}

async fn to_server_reaches_only_the_named_server(backend: Backend) {
    let s = setup(backend).await;
    let _a = s.serve("a").await;
    let _b = s.serve("b").await;
    let b = s.client().to_server("b");
    for _ in 0..10 {
        assert_eq!(b.whoami().await.unwrap(), "b");
    }
}

async fn calls_round_robin_over_servers_of_the_shared_queue(backend: Backend) {
    let s = setup(backend).await;
    let _a = s.serve("a").await;
    let _b = s.serve("b").await;
    let client = s.client();
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        *served.entry(client.whoami().await.unwrap()).or_default() += 1;
    }
    assert_eq!(served.get("a"), Some(&10), "{served:?}");
    assert_eq!(served.get("b"), Some(&10), "{served:?}");
}

async fn typed_application_error_arrives_as_its_own_type(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let client = s.client();
    assert_eq!(client.divide(9, 3).await.unwrap(), Ok(3));
    assert_eq!(
        client.divide(9, 0).await.unwrap(),
        Err(CalcError::DivideByZero(9))
    );
}

async fn call_without_a_server_times_out(backend: Backend) {
    let s = setup(backend).await;
    let err = s
        .client()
        .timeout(Duration::from_millis(300))
        .add(1, 1)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(!err.is_transport() && !err.is_remote());
}

async fn incompatible_version_or_namespace_is_unsupported(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let client = s.client();
    assert_eq!(client.version("1.0").add(1, 1).await.unwrap(), 2);
    assert_eq!(client.version("1.5").add(1, 1).await.unwrap(), 2);
    for bad in ["1.6", "2.0", "0.9"] {
        let err = client.version(bad).add(1, 1).await.unwrap_err();
        assert!(err.is_unsupported_version(), "{bad}: {err:?}");
        let failure = err.remote().expect("server-side failure");
        assert_eq!(failure.class, "UnsupportedVersion");
        assert_eq!(failure.module, "oslo_messaging.rpc.dispatcher");
    }
    let err = client.namespace("other").add(1, 1).await.unwrap_err();
    assert!(err.is_unsupported_version(), "{err:?}");
}

async fn unknown_method_is_no_such_method(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let raw = Client::new(&s.connection);
    let err = raw
        .call::<_, i64>(&s.raw_options(), "multiply", &serde_json::json!({"a": 1}))
        .await
        .unwrap_err();
    assert!(err.is_no_such_method(), "{err:?}");
    assert_eq!(
        err.remote().unwrap().message,
        "Endpoint does not support RPC method multiply"
    );
}

async fn underscore_methods_are_never_dispatched(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let raw = Client::new(&s.connection);
    let err = raw
        .call::<_, i64>(
            &s.raw_options(),
            "_add",
            &serde_json::json!({"a": 1, "b": 2}),
        )
        .await
        .unwrap_err();
    assert!(err.is_no_such_method(), "{err:?}");
}

async fn context_reaches_the_server_method(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let ctx = Context::new()
        .with("request_id", "req-42")
        .with("is_admin", true);
    let client = s.client().context(ctx);
    assert_eq!(
        client.context_value("request_id".into()).await.unwrap(),
        Some(serde_json::json!("req-42"))
    );
    assert_eq!(
        client.context_value("is_admin".into()).await.unwrap(),
        Some(serde_json::json!(true))
    );
    assert_eq!(client.context_value("absent".into()).await.unwrap(), None);
    assert!(
        client.has_deadline().await.unwrap(),
        "the call's deadline travels"
    );
}

async fn thousand_concurrent_calls_are_all_matched(backend: Backend) {
    let s = setup(backend).await;
    let _a = s.serve("a").await;
    let _b = s.serve("b").await;
    let client = s.client();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000i64 {
        let client = client.clone();
        tasks.spawn(async move { (i, client.add(i, i).await) });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.unwrap();
        assert_eq!(result.unwrap(), 2 * i, "call {i} got another call's reply");
        answered += 1;
    }
    assert_eq!(answered, 1000);
}

async fn undecodable_arguments_give_a_decode_error_and_the_server_keeps_serving(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let raw = Client::new(&s.connection);
    let err = raw
        .call::<_, i64>(
            &s.raw_options(),
            "add",
            &serde_json::json!({"a": "one", "b": 2}),
        )
        .await
        .unwrap_err();
    assert!(err.is_decode(), "{err:?}");
    assert!(err.remote().is_some(), "the server reported it");
    assert_eq!(s.client().add(1, 2).await.unwrap(), 3);
}

async fn panicking_method_gives_a_remote_failure_and_the_server_keeps_serving(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    let err = s.client().boom().await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert!(
        err.remote().unwrap().message.contains("boom on purpose"),
        "{err:?}"
    );
    assert_eq!(s.client().add(1, 2).await.unwrap(), 3);
}

async fn graceful_shutdown_finishes_calls_in_flight(backend: Backend) {
    let s = setup(backend).await;
    let server = s.serve("s1").await;
    let client = s.client();
    let slow = tokio::spawn(async move { client.sleep_ms(300).await });
    while server.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await.unwrap();
    assert_eq!(
        slow.await.unwrap().unwrap(),
        300,
        "the call in flight was answered"
    );
}

async fn a_call_cannot_be_fanout(backend: Backend) {
    let s = setup(backend).await;
    let err = s.client().fanout().add(1, 2).await.unwrap_err();
    assert!(err.is_config(), "{err:?}");
}

async fn server_answers_each_caller_in_its_own_codec(backend: Backend) {
    let s = setup(backend).await;
    let _server = s.serve("s1").await;
    for codec in [Codec::MsgPack, Codec::OsloJson] {
        let connection = s.connection.clone().with_codec(codec);
        let client = CalcClient::new(&connection).topic(&s.topic);
        assert_eq!(client.add(20, 22).await.unwrap(), 42, "{codec:?}");
        assert_eq!(
            client.divide(1, 0).await.unwrap(),
            Err(CalcError::DivideByZero(1)),
            "{codec:?}"
        );
    }
}

async fn several_endpoints_share_a_target_by_version_and_namespace(backend: Backend) {
    let s = setup(backend).await;
    let _server = calc("s1", &s.records)
        .builder()
        .endpoint(CalcAdminServer::new(Admin))
        .topic(&s.topic)
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let admin = CalcAdminClient::new(&s.connection).topic(&s.topic);
    assert_eq!(admin.whoami().await.unwrap(), "admin");
    assert_eq!(admin.version("2.0").whoami().await.unwrap(), "admin");
    assert_eq!(
        s.client().whoami().await.unwrap(),
        "s1",
        "the default namespace is the first endpoint"
    );
    let err = admin.version("1.0").whoami().await.unwrap_err();
    assert!(err.is_unsupported_version(), "{err:?}");
    // The admin endpoint is a candidate but has no `add`.
    let raw = Client::new(&s.connection);
    let options = CallOptions::new(Target {
        namespace: Some("admin".into()),
        version: Some("2.0".into()),
        ..Target::new(&s.topic)
    });
    let err = raw
        .call::<_, i64>(&options, "add", &serde_json::json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert!(err.is_no_such_method(), "{err:?}");
}

/// A raw MessagePack request for `method` on the test's topic, as a peer
/// could write it (the transport, not the client, so any field can be set).
fn raw_request(
    s: &Setup,
    codec: Codec,
    method: &str,
    args: serde_json::Value,
    reply_q: Option<&str>,
    timeout: Option<f64>,
    deadline: Option<std::time::SystemTime>,
) -> warren::transport::Outgoing {
    let reply = reply_q.map(|queue| warren::wire::ReplyTo {
        queue: queue.to_owned(),
        msg_id: warren::wire::new_id(),
    });
    let mut context = warren::rpc::Context::new();
    if let Some(deadline) = deadline {
        // `_deadline` travels as wall-clock time; the request carries it as
        // an instant on this machine's clock.
        let now = std::time::Instant::now();
        context = context.with_deadline(
            match deadline.duration_since(std::time::SystemTime::now()) {
                Ok(left) => now + left,
                Err(passed) => now.checked_sub(passed.duration()).unwrap_or(now),
            },
        );
    }
    let request = warren::wire::Request {
        method: method.into(),
        args: warren::wire::Args::encode(codec, &args).unwrap(),
        namespace: None,
        version: Some("1.0".into()),
        reply: reply.clone(),
        timeout,
        unique_id: Some(warren::wire::new_id()),
        context,
    };
    // MessagePack carries the reply address only in the AMQP properties.
    let mut properties = warren::transport::Properties::default()
        .with_content_type(codec.content_type())
        .unwrap();
    if let Some(reply) = &reply {
        properties = properties
            .with_reply_to(&reply.queue)
            .unwrap()
            .with_correlation_id(&reply.msg_id)
            .unwrap();
    }
    warren::transport::Outgoing {
        exchange: warren::rpc::DEFAULT_EXCHANGE.into(),
        routing_key: s.topic.clone(),
        mandatory: false,
        confirm: true,
        properties,
        body: codec.encode_request(&request).unwrap(),
    }
}

/// A reply queue of the test's own, consumed without acks.
async fn reply_queue(s: &Setup) -> (String, Box<dyn warren::transport::Subscription>) {
    let name = unique("raw-replies");
    let transport = s.connection.transport();
    transport
        .declare_queue(&s.connection.topology().transient_queue(&name))
        .await
        .unwrap();
    let subscription = transport
        .consume(&warren::transport::ConsumeSpec {
            queue: name.clone(),
            prefetch: 0,
            no_ack: true,
        })
        .await
        .unwrap();
    (name, subscription)
}

/// Issue #12, case 1: `_timeout` is peer data. 1e300 and infinity used to
/// reach `Duration::from_secs_f64` and panic outside the dispatch guard: no
/// reply, no ack, and `in_flight` stuck at 1 so `shutdown` never returned.
/// Each absurd value must get its answer, the server must keep serving, and
/// shut down.
async fn absurd_timeouts_are_answered_and_the_server_still_stops(backend: Backend) {
    let s = setup(backend).await;
    let server = s.serve("s1").await;
    let (reply_q, mut replies) = reply_queue(&s).await;
    // MessagePack carries any f64; oslo's JSON carries the finite ones
    // (serde_json writes infinity and NaN as null).
    let absurd = [1e300, f64::INFINITY, f64::NAN, f64::MAX, 1e-300, -1.0]
        .map(|t| (Codec::MsgPack, t))
        .into_iter()
        .chain([(Codec::OsloJson, 1e300), (Codec::OsloJson, f64::MAX)]);
    for (codec, timeout) in absurd {
        let message = raw_request(
            &s,
            codec,
            "add",
            serde_json::json!({"a": 1, "b": 2}),
            Some(&reply_q),
            Some(timeout),
            None,
        );
        s.connection.transport().publish(message).await.unwrap();
        // Keepalives (`ending: false`) may come first; the hang guard is
        // the only timeout.
        let reply = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let delivery = replies.next().await.expect("reply stream").unwrap();
                let reply = codec.decode_reply(&delivery.body).unwrap();
                if reply.ending {
                    return reply;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no reply for _timeout = {timeout} in {codec:?}"));
        let value: i64 = codec
            .decode_value(&reply.outcome.expect("a result"))
            .unwrap();
        assert_eq!(value, 3, "_timeout = {timeout} in {codec:?}");
    }
    assert_eq!(s.client().add(40, 2).await.unwrap(), 42);
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("shutdown completes")
        .unwrap();
}

/// A request whose `_deadline` passed before a server dequeued it is not
/// executed, not answered, but acknowledged (and counted). The server has
/// room for one unacknowledged request only, so an expired request left
/// unacked would also block the cast after it.
async fn a_request_dequeued_after_its_deadline_is_dropped_and_acked(backend: Backend) {
    let mut s = setup(backend).await;
    let server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .prefetch(1)
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let past = std::time::SystemTime::now() - Duration::from_secs(1);
    for args in [7, 8] {
        let message = raw_request(
            &s,
            Codec::MsgPack,
            "record",
            serde_json::json!({ "value": args }),
            None,
            None,
            Some(past),
        );
        s.connection.transport().publish(message).await.unwrap();
    }
    // A live cast after the expired ones: once it is recorded, the server
    // has been through (and acked) the two before it.
    s.client().record(9).await.unwrap();
    let got = drain(&mut s.recorded, 1, Duration::from_secs(20)).await;
    assert_eq!(
        got,
        vec![("s1".to_owned(), 9)],
        "expired requests never ran"
    );
    assert_eq!(server.expired(), 2);
    // A call still carries a deadline in the future and runs.
    assert!(s.client().has_deadline().await.unwrap());
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("shutdown completes")
        .unwrap();
    assert!(s.recorded.try_recv().is_err(), "nothing else ran");
    // Nothing is left for another server: the queue is empty.
    let mut leftover = s
        .connection
        .transport()
        .consume(&warren::transport::ConsumeSpec {
            queue: s.topic.clone(),
            prefetch: 0,
            no_ack: true,
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_millis(500), leftover.next()).await;
    assert!(next.is_err(), "the queue ends empty");
}

/// Reports the budget a call made inside its method would get.
#[warren::service(topic = "budget", version = "1.0")]
pub trait Budget {
    /// `effective_timeout()` of fresh call options (default 60 s), in ms.
    async fn inner_call_budget_ms(&self) -> u64;
}

struct BudgetImpl;

impl Budget for BudgetImpl {
    async fn inner_call_budget_ms(&self) -> u64 {
        let options = CallOptions::new(Target::new("elsewhere"));
        u64::try_from(options.effective_timeout().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A call made while serving a request gets what is left of its caller's
/// deadline, not a fresh default timeout.
async fn a_call_inside_a_server_method_inherits_the_remaining_budget(backend: Backend) {
    let s = setup(backend).await;
    let _server = BudgetServer::new(BudgetImpl)
        .builder()
        .topic(&s.topic)
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let budget = BudgetClient::new(&s.connection)
        .topic(&s.topic)
        .timeout(Duration::from_secs(5))
        .inner_call_budget_ms()
        .await
        .unwrap();
    assert!(budget <= 5_000, "inherited {budget} ms of a 5 s call");
    assert!(budget > 0, "some budget is left");
}
