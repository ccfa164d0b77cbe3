//! W3C trace context across calls (client → server → nested call), and the
//! RPC metrics those calls leave behind, on each backend.

use std::time::Duration;

use crate::common::*;
use warren::rpc::{Context, TraceContext, TRACEPARENT};

crate::conformance!(
    a_trace_id_follows_a_call_into_a_nested_call,
    a_call_outside_any_trace_starts_one_its_server_continues,
    calls_and_errors_are_counted_per_service_and_method,
);

/// The outer service: answers with the trace it served in and the trace
/// the inner service saw for the call it made meanwhile.
#[warren::service(topic = "trace-outer", version = "1.0")]
pub trait Outer {
    async fn relay(&self) -> (String, String);
}

/// The inner service: answers with the trace it served in.
#[warren::service(topic = "trace-inner", version = "1.0")]
pub trait Inner {
    async fn whereami(&self) -> String;
    async fn fail(&self) -> Result<(), String>;
}

struct OuterImpl {
    inner: InnerClient,
}

impl Outer for OuterImpl {
    async fn relay(&self) -> (String, String) {
        let mine = TraceContext::current().map(|t| t.traceparent());
        let theirs = self.inner.whereami().await;
        (
            mine.unwrap_or_default(),
            theirs.unwrap_or_else(|e| e.to_string()),
        )
    }
}

struct InnerImpl;

impl Inner for InnerImpl {
    async fn whereami(&self) -> String {
        TraceContext::current()
            .map(|t| t.traceparent())
            .unwrap_or_default()
    }

    async fn fail(&self) -> Result<(), String> {
        Err("no".into())
    }
}

/// The outer and inner servers on unique topics, and a client of the outer.
struct Setup {
    _broker: Option<warren::broker::BrokerHandle>,
    _servers: (warren::rpc::ServerHandle, warren::rpc::ServerHandle),
    outer: OuterClient,
    inner: InnerClient,
    inner_topic: String,
}

async fn setup(backend: Backend) -> Setup {
    let (connection, broker) = backend.connect().await;
    let (outer_topic, inner_topic) = (unique("trace-outer"), unique("trace-inner"));
    let inner = InnerClient::new(&connection)
        .topic(&inner_topic)
        .timeout(Duration::from_secs(20));
    let inner_server = InnerServer::new(InnerImpl)
        .builder()
        .topic(&inner_topic)
        .serve(&connection, "inner-1")
        .await
        .expect("serve inner");
    let outer_server = OuterServer::new(OuterImpl {
        inner: inner.clone(),
    })
    .builder()
    .topic(&outer_topic)
    .serve(&connection, "outer-1")
    .await
    .expect("serve outer");
    let outer = OuterClient::new(&connection)
        .topic(&outer_topic)
        .timeout(Duration::from_secs(20));
    Setup {
        _broker: broker,
        _servers: (outer_server, inner_server),
        outer,
        inner,
        inner_topic,
    }
}

fn parse(traceparent: &str) -> TraceContext {
    TraceContext::parse(traceparent, None)
        .unwrap_or_else(|| panic!("not a traceparent: {traceparent:?}"))
}

async fn a_trace_id_follows_a_call_into_a_nested_call(backend: Backend) {
    let setup = setup(backend).await;
    let caller = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        None,
    )
    .expect("valid");
    let (outer, inner) = setup
        .outer
        .context(Context::new().with(TRACEPARENT, caller.traceparent()))
        .relay()
        .await
        .expect("call");
    let (outer, inner) = (parse(&outer), parse(&inner));
    assert_eq!(outer.trace_id(), caller.trace_id());
    assert_eq!(inner.trace_id(), caller.trace_id());
    let spans = [caller.span_id(), outer.span_id(), inner.span_id()];
    assert!(
        spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2],
        "each hop is a span of its own: {spans:?}"
    );
}

async fn a_call_outside_any_trace_starts_one_its_server_continues(backend: Backend) {
    let setup = setup(backend).await;
    let (outer, inner) = setup.outer.relay().await.expect("call");
    let (outer, inner) = (parse(&outer), parse(&inner));
    assert_eq!(outer.trace_id(), inner.trace_id());
    let (again, _) = setup.outer.relay().await.expect("call");
    assert_ne!(
        parse(&again).trace_id(),
        outer.trace_id(),
        "another call, another trace"
    );
}

async fn calls_and_errors_are_counted_per_service_and_method(backend: Backend) {
    let setup = setup(backend).await;
    for _ in 0..3 {
        setup.inner.whereami().await.expect("call");
    }
    assert_eq!(
        setup.inner.fail().await.expect("the call completes"),
        Err("no".to_owned())
    );
    let err = setup
        .inner
        .topic(format!("{}-nobody", setup.inner_topic))
        .timeout(Duration::from_millis(200))
        .whereami()
        .await
        .expect_err("nobody serves it");
    assert!(err.is_timeout(), "{err:?}");
    let text = warren::metrics::render();
    let topic = &setup.inner_topic;
    for expected in [
        format!("warren_rpc_client_calls_total{{service=\"{topic}\",method=\"whereami\"}} 3"),
        format!("warren_rpc_server_calls_total{{service=\"{topic}\",method=\"whereami\"}} 3"),
        format!("warren_rpc_client_errors_total{{service=\"{topic}\",method=\"fail\",kind=\"remote\"}} 1"),
        format!("warren_rpc_server_errors_total{{service=\"{topic}\",method=\"fail\",kind=\"remote\"}} 1"),
        format!("warren_rpc_client_timeouts_total{{service=\"{topic}-nobody\",method=\"whereami\"}} 1"),
        format!("warren_rpc_client_duration_seconds_count{{service=\"{topic}\",method=\"whereami\"}} 3"),
        format!("warren_rpc_server_in_flight{{service=\"{topic}\",method=\"whereami\"}} 0"),
    ] {
        assert!(text.contains(&expected), "{expected} not in\n{text}");
    }
}

/// A span's name and fields.
type SpanFields = (String, std::collections::HashMap<String, String>);

/// The fields of the `rpc.*` spans a test's calls opened.
#[derive(Clone, Default)]
struct Spans(std::sync::Arc<std::sync::Mutex<Vec<SpanFields>>>);

struct Fields<'a>(&'a mut std::collections::HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let name = attrs.metadata().name();
        if name.starts_with("rpc.") {
            let mut fields = std::collections::HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((name.to_owned(), fields));
        }
    }
}

/// The client and server spans of a call and of the nested call it makes:
/// one trace, each server span the child of its client span.
#[tokio::test]
async fn spans_carry_the_trace_and_each_server_span_is_its_clients_child() {
    use tracing_subscriber::layer::SubscriberExt;
    let spans = Spans::default();
    // A current-thread runtime: the servers' tasks run on this thread,
    // under this subscriber.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let setup = setup(Backend::InProcess).await;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    setup
        .outer
        .context(Context::new().with(TRACEPARENT, caller))
        .relay()
        .await
        .expect("call");
    let seen = spans.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let find = |name: &str, method: &str| {
        seen.iter()
            .find(|(n, f)| n == name && f.get("rpc.method").map(String::as_str) == Some(method))
            .map(|(_, f)| f.clone())
            .unwrap_or_else(|| panic!("no {name} span for {method}: {:?}", seen))
    };
    let (outer_client, outer_server) = (find("rpc.client", "relay"), find("rpc.server", "relay"));
    let (inner_client, inner_server) = (
        find("rpc.client", "whereami"),
        find("rpc.server", "whereami"),
    );
    for span in [&outer_client, &outer_server, &inner_client, &inner_server] {
        assert_eq!(
            span["trace_id"], "0af7651916cd43dd8448eb211c80319c",
            "{span:?}"
        );
    }
    assert_eq!(outer_server["parent_id"], outer_client["span_id"]);
    assert_eq!(inner_server["parent_id"], inner_client["span_id"]);
    assert_eq!(inner_client["parent_id"], outer_server["span_id"]);
    assert_eq!(outer_client["parent_id"], "b7ad6b7169203331");
    assert_ne!(outer_server["span_id"], inner_client["span_id"]);
}
