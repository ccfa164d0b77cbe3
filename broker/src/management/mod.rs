//! The management listener (feature `management`): RabbitMQ's management
//! HTTP API under `/api` (its paths, JSON field names, status codes and
//! basic authentication with the broker's users and tags, so
//! `rabbitmqadmin` and scripts written for RabbitMQ work), Prometheus
//! metrics at `/metrics` with RabbitMQ's names, and a dashboard at `/`.
//!
//! Everything it shows and does goes through the core's admin surface
//! ([`crate::core::admin`]); this module only speaks HTTP.
//!
//! ```no_run
//! # async fn f(broker: warren_broker::BrokerHandle) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15672").await?;
//! let management = warren_broker::management::Management::new(broker.core())
//!     .amqp_listeners(broker.local_addrs());
//! tokio::spawn(management.serve(listener));
//! # Ok(()) }
//! ```

mod auth;
mod convert;
mod dashboard;
mod definitions;
mod error;
mod guard;
mod prometheus;
mod rates;
mod read;
mod views;
mod write;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::core::admin::ConnectionSnapshot;
use crate::core::Core;
use auth::Caller;
use error::ApiError;
use rates::Rates;

pub use guard::{IDLE_TIMEOUT, MAX_CONNECTIONS};
pub use rates::SAMPLE_INTERVAL;

/// The RabbitMQ version the API reports (`rabbitmq_version`,
/// `management_version`): the one whose API it follows, so tools that
/// check it accept it.
pub const RABBITMQ_VERSION: &str = "3.10.8";

/// Text appended to `/metrics` (the embedding process's own metrics).
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// What the handlers share.
pub(crate) struct Shared {
    core: Arc<Core>,
    rates: Arc<Rates>,
    node: String,
    port: u16,
    amqp_listeners: Vec<SocketAddr>,
    extra_metrics: Option<ExtraMetrics>,
}

impl Shared {
    /// The authenticated caller of a request.
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        auth::authenticate(&self.core, headers)
    }

    /// The resource alarms in effect: (memory, disk). The monitor reports
    /// the disk alarm alone and both together; while the disk alarm is on,
    /// the memory one is read off its watermark.
    fn alarms(&self) -> (bool, bool) {
        let memory = self.core.memory();
        let disk = memory.disk_alarm();
        let mem = if disk {
            memory.tracked() >= memory.watermark()
        } else {
            memory.alarm()
        };
        (mem, disk)
    }

    /// The connections `caller` may see: all of them for `administrator`
    /// and `monitoring`, else its own.
    fn visible_connections(&self, caller: &Caller) -> Vec<ConnectionSnapshot> {
        self.core
            .list_connections()
            .into_iter()
            .filter(|c| caller.sees_everything() || c.user == caller.name)
            .collect()
    }
}

/// The management listener of one broker, to configure and then
/// [`serve`](Management::serve).
pub struct Management {
    core: Arc<Core>,
    node: String,
    amqp_listeners: Vec<SocketAddr>,
    extra_metrics: Option<ExtraMetrics>,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("node", &self.node)
            .field("amqp_listeners", &self.amqp_listeners)
            .finish_non_exhaustive()
    }
}

/// `warren@<host name>`, as RabbitMQ names its nodes `rabbit@<host>`.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("warren@{host}")
}

impl Management {
    /// The management listener of the broker whose core is `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Management {
            core,
            node: node_name(),
            amqp_listeners: Vec::new(),
            extra_metrics: None,
        }
    }

    /// The AMQP listeners the overview reports.
    pub fn amqp_listeners(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.amqp_listeners = addrs.into_iter().collect();
        self
    }

    /// Text `/metrics` appends to the broker's metrics, read at each
    /// scrape: `warren broker` adds `warren::metrics::render`.
    pub fn extra_metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.extra_metrics = Some(Arc::new(render));
        self
    }

    /// Serves HTTP on `listener` until the process ends (or the future is
    /// dropped): at most [`MAX_CONNECTIONS`] connections at once (more wait
    /// in the accept backlog), each closed after [`IDLE_TIMEOUT`] without
    /// traffic either way, so a slow or hostile client cannot take the
    /// file descriptors the broker needs.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            rates: Rates::start(&self.core),
            core: self.core,
            node: self.node,
            port,
            amqp_listeners: self.amqp_listeners,
            extra_metrics: self.extra_metrics,
        });
        let listener = guard::GuardedListener::new(listener, MAX_CONNECTIONS, IDLE_TIMEOUT);
        axum::serve(listener, router(shared)).await
    }
}

fn router(shared: Arc<Shared>) -> Router {
    use read as r;
    use write as w;
    let api = Router::new()
        .route("/overview", get(r::overview))
        .route("/whoami", get(r::whoami))
        .route("/nodes", get(r::nodes))
        .route("/health/checks/alarms", get(r::alarms))
        .route("/vhosts", get(r::vhosts))
        .route(
            "/vhosts/{vhost}",
            get(r::vhost).put(w::put_vhost).delete(w::delete_vhost),
        )
        .route("/users", get(r::users))
        .route(
            "/users/{name}",
            get(r::user).put(w::put_user).delete(w::delete_user),
        )
        .route("/permissions", get(r::permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(r::permission)
                .put(w::put_permission)
                .delete(w::delete_permission),
        )
        .route("/queues", get(r::queues))
        .route("/queues/{vhost}", get(r::queues_of))
        .route(
            "/queues/{vhost}/{name}",
            get(r::queue).put(w::put_queue).delete(w::delete_queue),
        )
        .route(
            "/queues/{vhost}/{name}/contents",
            axum::routing::delete(w::purge_queue),
        )
        .route("/queues/{vhost}/{name}/get", post(w::get_messages))
        .route("/queues/{vhost}/{name}/bindings", get(r::bindings_of_queue))
        .route("/exchanges", get(r::exchanges))
        .route("/exchanges/{vhost}", get(r::exchanges_of))
        .route(
            "/exchanges/{vhost}/{name}",
            get(r::exchange)
                .put(w::put_exchange)
                .delete(w::delete_exchange),
        )
        .route("/exchanges/{vhost}/{name}/publish", post(w::publish))
        .route(
            "/exchanges/{vhost}/{name}/bindings/source",
            get(r::bindings_of_exchange),
        )
        .route("/bindings", get(r::bindings))
        .route("/bindings/{vhost}", get(r::bindings_of))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(r::bindings_between).post(w::post_binding),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            axum::routing::delete(w::delete_binding),
        )
        .route("/connections", get(r::connections))
        .route(
            "/connections/{name}",
            get(r::connection).delete(w::close_connection),
        )
        .route("/channels", get(r::channels))
        .route("/consumers", get(r::consumers))
        .route("/consumers/{vhost}", get(r::consumers_of))
        .route(
            "/definitions",
            get(definitions::export).post(definitions::import),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    Router::new()
        .nest("/api", api)
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics_per_object))
        .route("/", get(dashboard::page))
        .with_state(shared)
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` (no authentication, as RabbitMQ's Prometheus endpoint).
async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        prometheus::render(&s, false),
    )
        .into_response()
}

/// `GET /metrics/per-object`.
async fn metrics_per_object(State(s): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        prometheus::render(&s, true),
    )
        .into_response()
}
