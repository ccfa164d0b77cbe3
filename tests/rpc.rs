//! The RPC conformance suite: every behaviour of calls, casts and servers,
//! run against each backend (see `common::Backend`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use warren::rpc::{CallOptions, Client, Context, Target};
use warren::wire::Codec;

conformance!(
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
