//! oslo.messaging interoperability with real, unmodified Python peers
//! (oslo.messaging from PyPI): a Python client calling warren servers, and a
//! warren client calling a Python server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warren::rpc::{Context, RemoteException, TraceContext, TRACEPARENT};

const EXCHANGE: &str = "heat";

/// The engine a Python client calls.
#[warren::service(topic = "engine", version = "1.2", exchange = "heat")]
pub trait Engine {
    async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String);
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn fail(&self, message: String) -> Result<i64, BadValue>;
    async fn get_context(&self, key: String) -> Option<Value>;
    async fn sleep(&self, seconds: f64) -> f64;
    #[cast]
    async fn record(&self, value: i64);
}

/// A service error that Python clients rebuild as `ValueError`.
#[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

impl RemoteException for BadValue {
    const CLASS: &'static str = "ValueError";
}

struct RustEngine {
    records: mpsc::UnboundedSender<i64>,
}

impl Engine for RustEngine {
    async fn health_check(&self, seqid: u64, _host: String, _req: String) -> (u64, String, String) {
        (seqid, "rust-engine".into(), "I'm fine!".into())
    }
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn fail(&self, message: String) -> Result<i64, BadValue> {
        Err(BadValue(message))
    }
    async fn get_context(&self, key: String) -> Option<Value> {
        Context::current().get(&key).cloned()
    }
    async fn sleep(&self, seconds: f64) -> f64 {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        seconds
    }
    async fn record(&self, value: i64) {
        let _ = self.records.send(value);
    }
}

fn rabbit_url() -> String {
    as_rabbit(&rabbitmq_url())
}

/// Runs a Python peer that prints one JSON object last, and returns it.
async fn run_python_json(script: &str, args: &[&str]) -> Value {
    let stdout = run_python(script, args).await;
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("python printed no JSON ({e}): {stdout}"))
}

/// oslo's URL for a broker's `amqp://` one.
fn as_rabbit(amqp: &str) -> String {
    amqp.replacen("amqp://", "rabbit://", 1)
        .replace("/%2f", "/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_warren_servers_on_rabbitmq() {
    python_client_calls_warren_servers(&rabbit_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_calls_warren_servers_on_the_embedded_broker() {
    let broker = embedded_broker().await;
    python_client_calls_warren_servers(&as_rabbit(&broker.url())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_client_calls_a_python_server_on_rabbitmq() {
    warren_client_calls_a_python_server(&rabbit_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warren_client_calls_a_python_server_on_the_embedded_broker() {
    let broker = embedded_broker().await;
    warren_client_calls_a_python_server(&as_rabbit(&broker.url())).await
}

async fn python_client_calls_warren_servers(url: &str) {
    let url = url.to_owned();
    let connection = warren::connect(&url).await.unwrap();
    let topic = unique("engine");
    let (records, mut recorded) = mpsc::unbounded_channel();
    let mut servers = Vec::new();
    for name in ["rust-engine", "rust-engine-2"] {
        servers.push(
            EngineServer::new(RustEngine {
                records: records.clone(),
            })
            .builder()
            .topic(&topic)
            .serve(&connection, name)
            .await
            .unwrap(),
        );
    }
    let out = run_python_json(
        "oslo_client.py",
        &[url.as_str(), EXCHANGE, topic.as_str(), "rust-engine"],
    )
    .await;

    assert_eq!(
        out["health_check"],
        json!({"result": [7, "rust-engine", "I'm fine!"]})
    );
    assert_eq!(out["add"], json!({"result": 42}));
    assert_eq!(out["to_server"], json!({"result": 3}));
    assert_eq!(out["fail"]["error"], "ValueError", "{}", out["fail"]);
    assert!(out["fail"]["message"].as_str().unwrap().contains("boom"));
    assert_eq!(
        out["no_such_method"]["exc_type"], "NoSuchMethod",
        "{}",
        out["no_such_method"]
    );
    assert_eq!(out["private_method"]["exc_type"], "NoSuchMethod");
    assert_eq!(out["unsupported_version"]["exc_type"], "UnsupportedVersion");
    assert_eq!(out["wrong_namespace"]["exc_type"], "UnsupportedVersion");
    assert_eq!(out["context"], json!({"result": "u1"}));
    assert_eq!(out["context_is_admin"], json!({"result": false}));
    // The warren server's span continues the Python caller's trace: same
    // trace id, a span of its own.
    let served = out["traceparent"]["result"].as_str().unwrap_or_default();
    assert!(
        served.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && !served.contains("00f067aa0ba902b7"),
        "{}",
        out["traceparent"]
    );
    assert_eq!(
        out["call_monitor"],
        json!({"result": 2.5}),
        "keepalives kept a 2.5 s call alive under a 1 s call monitor"
    );
    assert_eq!(out["cast"], json!({"result": null}));
    assert_eq!(out["timeout"], json!({"error": "MessagingTimeout"}));

    let mut got = drain(&mut recorded, 4, Duration::from_secs(5)).await;
    got.sort();
    assert_eq!(got, vec![5, 6, 6], "cast once, fanout to both servers");
}

/// The Python engine, as a warren client sees it (only its generated client
/// is used).
#[warren::service(topic = "engine", version = "1.2", exchange = "heat")]
#[allow(dead_code)]
pub trait PyEngine {
    async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String);
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn fail(&self, message: String) -> i64;
    async fn get_context(&self, key: String) -> Option<Value>;
    async fn nope(&self) -> i64;
    #[cast]
    async fn record(&self, value: i64);
}

struct PythonServer {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl PythonServer {
    async fn start(url: &str, topic: &str, server: &str) -> Self {
        Self::spawn(python_script("oslo_server.py").args([url, EXCHANGE, topic, server])).await
    }

    /// Runs a Python peer that prints "ready", then JSON lines.
    async fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.recv()).await;
        assert_eq!(
            ready.ok().flatten().as_deref(),
            Some("ready"),
            "the Python server started"
        );
        PythonServer { child, lines }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn warren_client_calls_a_python_server(url: &str) {
    let url = url.to_owned();
    let topic = unique("engine");
    let mut python = PythonServer::start(&url, &topic, "py-engine").await;
    let connection = warren::connect(&url).await.unwrap();
    let engine = PyEngineClient::new(&connection)
        .topic(&topic)
        .timeout(Duration::from_secs(20));

    let (seqid, _host, answer) = engine
        .health_check(7, "heat-api".into(), "How are you?".into())
        .await
        .unwrap();
    assert_eq!((seqid, answer.as_str()), (7, "I'm fine!"));
    assert_eq!(engine.add(20, 22).await.unwrap(), 42);
    assert_eq!(engine.to_server("py-engine").add(1, 2).await.unwrap(), 3);

    let err = engine.fail("boom".into()).await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    let failure = err.remote().unwrap();
    assert_eq!(
        (failure.class.as_str(), failure.module.as_str()),
        ("ValueError", "builtins")
    );
    assert_eq!(failure.message, "boom");
    assert!(
        failure.tb.iter().any(|l| l.contains("Traceback")),
        "{:?}",
        failure.tb
    );

    assert!(engine.nope().await.unwrap_err().is_no_such_method());
    assert!(engine
        .version("2.0")
        .add(1, 2)
        .await
        .unwrap_err()
        .is_unsupported_version());
    assert!(engine
        .version("1.3")
        .add(1, 2)
        .await
        .unwrap_err()
        .is_unsupported_version());

    let ctx = Context::new().with("user_id", "u1").with("is_admin", false);
    assert_eq!(
        engine
            .context(ctx)
            .get_context("user_id".into())
            .await
            .unwrap(),
        Some(json!("u1"))
    );

    // The trace context reaches the Python server's context (as oslo's
    // `_context_traceparent`) and comes back: the id survives the round trip.
    let trace = TraceContext::new_root();
    let seen = engine
        .context(Context::new().with(TRACEPARENT, trace.traceparent()))
        .get_context(TRACEPARENT.into())
        .await
        .unwrap();
    let seen = seen.as_ref().and_then(Value::as_str).unwrap_or_default();
    let seen = TraceContext::parse(seen, None).expect("a traceparent came back");
    assert_eq!(seen.trace_id(), trace.trace_id());
    assert_ne!(
        seen.span_id(),
        trace.span_id(),
        "the client span is a child"
    );

    engine.record(5).await.unwrap();
    engine.fanout().record(6).await.unwrap();
    let mut casts = Vec::new();
    while casts.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(20), python.lines.recv())
            .await
            .expect("the Python server printed the cast")
            .unwrap();
        casts.push(serde_json::from_str::<Value>(&line).unwrap()["cast"].clone());
    }
    casts.sort_by_key(|v| v.as_i64());
    assert_eq!(casts, vec![json!(5), json!(6)]);

    let err = engine
        .topic(format!("{topic}-nobody"))
        .timeout(Duration::from_millis(500))
        .add(1, 2)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_between_python_and_warren_on_rabbitmq() {
    notifications_both_ways(&rabbit_url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_between_python_and_warren_on_the_embedded_broker() {
    let broker = embedded_broker().await;
    notifications_both_ways(&as_rabbit(&broker.url())).await
}

async fn notifications_both_ways(url: &str) {
    use warren::notify::{Notification, NotificationListener, Notifier, Priority};

    let connection = warren::connect(url).await.unwrap();

    // oslo's notifier → warren's listener.
    let topic = unique("notifications");
    let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
    let _listener = NotificationListener::new(&connection)
        .topic(&topic)
        .exchange(EXCHANGE)
        .serve(move |n: Notification| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(n);
            }
        })
        .await
        .unwrap();
    run_python(
        "oslo_notify.py",
        &[url, EXCHANGE, topic.as_str(), "info", "error"],
    )
    .await;
    let mut got = drain(&mut rx, 2, Duration::from_secs(20)).await;
    got.sort_by_key(|n| n.priority.name());
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].priority, Priority::Error);
    assert_eq!(got[1].priority, Priority::Info);
    for n in &got {
        assert_eq!(n.publisher_id, "compute.host1");
        assert_eq!(n.event_type, "compute.instance.create.end");
        assert_eq!(n.payload["id"], json!(1));
        assert_eq!(n.payload["priority"], json!(n.priority.name()));
        // oslo.messaging 18's notifier sends no context, so none arrives.
    }

    // warren's notifier → oslo's listener.
    let topic = unique("notifications");
    let mut python = PythonServer::spawn(python_script("oslo_listen.py").args([
        url,
        EXCHANGE,
        topic.as_str(),
        "2",
    ]))
    .await;
    let notifier = Notifier::new(&connection, "warren.host2")
        .topic(&topic)
        .exchange(EXCHANGE);
    let ctx = Context::new().with("user_id", "u2");
    notifier
        .info(&ctx, "volume.attach", &json!({"size": 10}))
        .await
        .unwrap();
    notifier
        .error(&ctx, "volume.fail", &json!({"size": 11}))
        .await
        .unwrap();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), python.lines.recv())
            .await
            .expect("the Python listener printed the notification")
            .unwrap();
        lines.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    lines.sort_by_key(|v| v["priority"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        lines,
        vec![
            json!({"priority": "error", "publisher_id": "warren.host2", "event_type": "volume.fail", "payload": {"size": 11}, "user_id": "u2"}),
            json!({"priority": "info", "publisher_id": "warren.host2", "event_type": "volume.attach", "payload": {"size": 10}, "user_id": "u2"}),
        ]
    );
}
