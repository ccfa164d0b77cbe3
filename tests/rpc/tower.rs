//! tower on both sides: the generated client as a `tower::Service` under
//! tower's timeout, retry, concurrency-limit and load-shed layers, and
//! server-side layers around dispatch (auth, limits, counting).

use std::future::{ready, Ready};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use crate::common::*;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::retry::Policy;
use tower::{Service, ServiceBuilder, ServiceExt};
use warren::rpc::{Context, Request, Response};
use warren::BoxError;

/// Counts requests and the most seen in flight at once.
#[derive(Clone)]
struct Counting<S> {
    inner: S,
    seen: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl<S> Service<Request> for Counting<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.seen.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let (future, current) = (self.inner.call(request), self.now.clone());
        Box::pin(async move {
            let out = future.await;
            current.fetch_sub(1, Ordering::SeqCst);
            out
        })
    }
}

#[derive(Clone, Default)]
struct Counters {
    seen: Arc<AtomicUsize>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Counters {
    fn layer<S>(&self) -> impl tower::Layer<S, Service = Counting<S>> + Clone {
        let c = self.clone();
        tower::layer::layer_fn(move |inner| Counting {
            inner,
            seen: c.seen.clone(),
            now: c.now.clone(),
            peak: c.peak.clone(),
        })
    }
}

/// Refuses requests whose context has no `token: "secret"`.
#[derive(Clone)]
struct RequireToken<S>(S);

impl<S> Service<Request> for RequireToken<S>
where
    S: Service<Request, Response = Response, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.context.get("token") != Some(&serde_json::json!("secret")) {
            return Box::pin(ready(Err::<Response, BoxError>(
                "missing or wrong token".into(),
            )));
        }
        Box::pin(self.0.call(request))
    }
}

struct Setup {
    connection: warren::Connection,
    topic: String,
    records: mpsc::UnboundedSender<(String, i64)>,
}

async fn setup() -> Setup {
    let (records, _) = mpsc::unbounded_channel();
    Setup {
        connection: warren::connect(&rabbitmq_url()).await.unwrap(),
        topic: unique("calc"),
        records,
    }
}

impl Setup {
    fn client(&self) -> CalcClient {
        CalcClient::new(&self.connection).topic(&self.topic)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_under_tower_timeout() {
    let s = setup().await;
    let _server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(50))
        .service(s.client());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(CalcRequest::SleepMs { ms: 2_000 })
        .await
        .err()
        .expect("the timeout layer fires");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err:?}");
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(CalcRequest::Add { a: 1, b: 2 })
        .await
        .unwrap();
    assert!(matches!(ok, CalcResponse::Add(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_concurrency_limit_bounds_what_the_server_sees() {
    let s = setup().await;
    let counters = Counters::default();
    let _server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .layer(counters.layer())
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let svc = ServiceBuilder::new()
        .concurrency_limit(2)
        .service(s.client());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let svc = svc.clone();
        tasks.spawn(async move { svc.oneshot(CalcRequest::SleepMs { ms: 30 }).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(matches!(r.unwrap().unwrap(), CalcResponse::SleepMs(30)));
    }
    assert_eq!(counters.seen.load(Ordering::SeqCst), 8);
    assert!(
        counters.peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        counters.peak.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_load_shed_refuses_beyond_the_limit() {
    let s = setup().await;
    let counters = Counters::default();
    let _server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .layer(counters.layer())
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let svc = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(s.client());
    let busy = tokio::spawn(svc.clone().oneshot(CalcRequest::SleepMs { ms: 300 }));
    // Once the slow call holds the only slot (the server has it), the next
    // request is shed at once, without reaching the broker.
    while counters.now.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let err = svc
        .clone()
        .oneshot(CalcRequest::Add { a: 1, b: 1 })
        .await
        .err()
        .expect("shed");
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err:?}");
    assert!(matches!(
        busy.await.unwrap().unwrap(),
        CalcResponse::SleepMs(300)
    ));
    assert_eq!(
        counters.seen.load(Ordering::SeqCst),
        1,
        "the shed request never reached the server"
    );
}

/// Retries remote failures up to `left` more times.
#[derive(Clone)]
struct RetryRemote {
    left: usize,
}

impl Policy<CalcRequest, CalcResponse, warren::Error> for RetryRemote {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut CalcRequest,
        result: &mut Result<CalcResponse, warren::Error>,
    ) -> Option<Self::Future> {
        match result {
            Err(e) if e.is_remote() && self.left > 0 => {
                self.left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &CalcRequest) -> Option<CalcRequest> {
        Some(request.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retry_resends_failed_calls() {
    let s = setup().await;
    let counters = Counters::default();
    let _server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .layer(counters.layer())
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let svc = ServiceBuilder::new()
        .retry(RetryRemote { left: 2 })
        .service(s.client());
    let err = svc
        .oneshot(CalcRequest::Boom {})
        .await
        .err()
        .expect("boom always fails");
    assert!(err.is_remote(), "{err:?}");
    assert_eq!(
        counters.seen.load(Ordering::SeqCst),
        3,
        "one call and two retries reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_layer_refuses_requests_without_a_token() {
    let s = setup().await;
    let _server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .layer(tower::layer::layer_fn(RequireToken))
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let err = s.client().add(1, 2).await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert_eq!(err.remote().unwrap().message, "missing or wrong token");
    let authorized = s.client().context(Context::new().with("token", "secret"));
    assert_eq!(authorized.add(1, 2).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_load_shed_and_concurrency_limit_layers() {
    let s = setup().await;
    let counters = Counters::default();
    let _server = calc("s1", &s.records)
        .builder()
        .topic(&s.topic)
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(1))
        .layer(counters.layer())
        .serve(&s.connection, "s1")
        .await
        .unwrap();
    let client = s.client();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.sleep_ms(300).await })
    };
    // Once the slow call holds the server's only slot, the next is shed.
    while counters.now.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let err = client.add(1, 1).await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert_eq!(err.remote().unwrap().class, "Overloaded");
    assert_eq!(slow.await.unwrap().unwrap(), 300);
    assert_eq!(
        client.add(1, 1).await.unwrap(),
        2,
        "served again once the slot is free"
    );
}

/// The per-call options are the library stub's, and the `tower::Service`
/// path is the typed methods' path: options set on the client (a named
/// server, a context, fanout) apply to requests sent through tower, through
/// the generated client and through `warren::rpc::Stub` itself alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_options_apply_on_the_tower_path() {
    let s = setup().await;
    let (records, mut recorded) = mpsc::unbounded_channel();
    let mut servers = Vec::new();
    for name in ["s1", "s2"] {
        servers.push(
            calc(name, &records)
                .builder()
                .topic(&s.topic)
                .serve(&s.connection, name)
                .await
                .unwrap(),
        );
    }
    let to_s2 = s
        .client()
        .to_server("s2")
        .context(Context::new().with("k", "v"));
    for _ in 0..4 {
        let who = to_s2.clone().oneshot(CalcRequest::Whoami {}).await.unwrap();
        assert!(matches!(&who, CalcResponse::Whoami(name) if name == "s2"));
    }
    let seen = to_s2
        .clone()
        .oneshot(CalcRequest::ContextValue { key: "k".into() })
        .await
        .unwrap();
    assert!(matches!(seen, CalcResponse::ContextValue(Some(v)) if v == "v"));

    // The service's own error travels typed through the tower path too.
    let divided = to_s2
        .clone()
        .oneshot(CalcRequest::Divide { a: 1, b: 0 })
        .await
        .unwrap();
    assert!(matches!(
        divided,
        CalcResponse::Divide(Err(CalcError::DivideByZero(1)))
    ));

    // The library stub alone is the same service.
    let stub: warren::rpc::Stub<CalcRequest> = (*to_s2).clone();
    assert_eq!(stub.options().target.server.as_deref(), Some("s2"));
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(20))
        .service(stub);
    let who = svc
        .ready()
        .await
        .unwrap()
        .call(CalcRequest::Whoami {})
        .await
        .unwrap();
    assert!(matches!(&who, CalcResponse::Whoami(name) if name == "s2"));

    // A fanout cast through tower reaches both servers.
    let sent = s
        .client()
        .fanout()
        .oneshot(CalcRequest::Record { value: 7 })
        .await
        .unwrap();
    assert!(matches!(sent, CalcResponse::Record));
    let mut got = Vec::new();
    while got.len() < 2 {
        let record = tokio::time::timeout(Duration::from_secs(20), recorded.recv())
            .await
            .expect("both servers get the fanout cast")
            .unwrap();
        got.push(record);
    }
    got.sort();
    assert_eq!(got, [("s1".to_owned(), 7), ("s2".to_owned(), 7)]);

    // Typed stubs made from one rpc::Client share its reply queue.
    let shared = warren::rpc::Client::new(&s.connection);
    let one: CalcClient = shared.stub::<CalcRequest>().topic(&s.topic);
    let other: CalcClient = shared.stub::<CalcRequest>().topic(&s.topic);
    assert_eq!(one.add(2, 3).await.unwrap(), 5);
    assert_eq!(other.add(3, 4).await.unwrap(), 7);

    // A call cannot be fanout, on the tower path as on the typed one.
    let err = s
        .client()
        .fanout()
        .oneshot(CalcRequest::Add { a: 1, b: 1 })
        .await
        .err()
        .expect("a fanout call is refused");
    assert!(err.is_config(), "{err:?}");
}
