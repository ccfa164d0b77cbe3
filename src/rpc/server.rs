//! The server side of RPC: consume a target's queues, dispatch each request
//! through the `tower` stack, reply to the caller, ack.
//!
//! A server consumes `<topic>`, `<topic>.<server>` and its own
//! `<topic>_fanout_<uuid>` queue. Requests are handled concurrently, up to
//! the prefetch count per queue, and acknowledged once handled (so a server
//! that dies mid-call leaves the request to another server).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use super::dispatch::{Dispatch, Endpoints, Request, Response};
use super::duplicates::{Duplicates, DEFAULT_DUPLICATE_WINDOW};
use super::target::{fanout_exchange, fanout_queue, server_queue, DEFAULT_EXCHANGE};
use super::topology::declare_topic_queues;
use super::TraceContext;
use crate::metrics::{failure_kind, Measured, Side};
use crate::transport::recovery::resubscribe;
use crate::transport::{ConsumeSpec, Delivery, Outgoing, Properties, QueueSpec, Subscription};
use crate::wire::{new_id, Codec, Failure, Reply, ReplyTo, WARREN_MODULE};
use crate::{BoxError, Connection, Error};

/// The type-erased dispatch stack layers wrap.
pub type DispatchService = BoxCloneSyncService<Request, Response, BoxError>;

/// Requests in flight per queue unless set: the prefetch count.
pub const DEFAULT_PREFETCH: u16 = 64;

/// How many times a request may be delivered again before the poison
/// guard sets it aside unless set: RabbitMQ's default `x-delivery-limit`
/// for quorum queues.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The failure class a caller receives for a request the poison guard set
/// aside ([`Error::remote`](crate::Error::remote)'s `class`).
pub const POISON_FAILURE_CLASS: &str = "PoisonRequest";

/// How long [`ServerHandle::shutdown`] lets requests in flight finish
/// unless set: Kubernetes' default termination grace period.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

type LayerFn = Box<dyn FnOnce(DispatchService) -> DispatchService + Send>;

/// Builds a server: endpoints, middleware, prefetch; then [`serve`](Self::serve).
pub struct ServerBuilder {
    endpoints: Vec<Arc<dyn Dispatch>>,
    layers: Vec<LayerFn>,
    prefetch: u16,
    topic: Option<String>,
    exchange: Option<String>,
    duplicate_window: Duration,
    grace_period: Duration,
    delivery_limit: u32,
    poison_queue: Option<String>,
}

impl ServerBuilder {
    /// A server for one endpoint.
    pub fn new<D: Dispatch>(endpoint: D) -> Self {
        ServerBuilder {
            endpoints: vec![Arc::new(endpoint)],
            layers: Vec::new(),
            prefetch: DEFAULT_PREFETCH,
            topic: None,
            exchange: None,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            grace_period: DEFAULT_GRACE_PERIOD,
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            poison_queue: None,
        }
    }

    /// The poison guard: a request delivered again more than `limit` times
    /// (each time, presumably, because handling it killed a server) is not
    /// executed again but moved to the poison queue, and its caller gets a
    /// [`POISON_FAILURE_CLASS`] failure (default [`DEFAULT_DELIVERY_LIMIT`]).
    ///
    /// Deliveries are counted by the broker on quorum queues
    /// (`x-delivery-count`, RabbitMQ's and warren's); elsewhere a server
    /// that receives a redelivered request publishes it again to the same
    /// queue with the count in its `x-warren-delivery-count` header, with
    /// a publisher confirm, before acknowledging the original.
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit;
        self
    }

    /// Where the poison guard moves requests (default `<topic>.poison`, a
    /// durable queue declared when first needed).
    pub fn poison_queue(mut self, queue: impl Into<String>) -> Self {
        self.poison_queue = Some(queue.into());
        self
    }

    /// How long a request id (`_unique_id`) is remembered, so that the same
    /// request delivered again within it is acknowledged and dropped rather
    /// than executed twice (default [`DEFAULT_DUPLICATE_WINDOW`]; an id is
    /// also kept until its request's deadline).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// How long [`ServerHandle::shutdown`] waits for requests in flight
    /// (default [`DEFAULT_GRACE_PERIOD`]); those still running then are
    /// cancelled and left unacknowledged, so the broker gives them to
    /// another server.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Adds another endpoint on the same target; endpoints are tried in the
    /// order added (oslo's version and namespace rules pick among them).
    pub fn endpoint<D: Dispatch>(mut self, endpoint: D) -> Self {
        self.endpoints.push(Arc::new(endpoint));
        self
    }

    /// Wraps dispatch in a `tower` layer (tracing, auth, limits, …). The
    /// first layer added is the outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<DispatchService> + Send + 'static,
        L::Service: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Error: Into<BoxError>,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |inner| {
            BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into))
        }));
        self
    }

    /// At most this many requests in flight per queue (default 64).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Serves another topic than the first endpoint's.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Uses another control exchange than the first endpoint's.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Declares the target's topology and starts serving as `server`.
    pub async fn serve(self, connection: &Connection, server: &str) -> Result<ServerHandle, Error> {
        let info = self.endpoints[0].info();
        let topic = self.topic.unwrap_or_else(|| info.topic.to_owned());
        let exchange = self
            .exchange
            .or_else(|| info.exchange.map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned());
        let mut service = DispatchService::new(Endpoints::new(self.endpoints));
        for layer in self.layers.into_iter().rev() {
            service = layer(service);
        }

        let poison_queue = self
            .poison_queue
            .unwrap_or_else(|| format!("{topic}.poison"));
        let plan = Plan {
            own_queue: server_queue(&topic, server),
            fanout: fanout_exchange(&topic),
            fanout_queue: fanout_queue(&topic),
            exchange: exchange.clone(),
            topic: topic.clone(),
            prefetch: self.prefetch,
        };
        plan.declare(connection).await?;

        let (stop, stopped) = watch::channel(false);
        let (abort, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            connection: connection.clone(),
            service,
            in_flight: AtomicUsize::new(0),
            expired: AtomicU64::new(0),
            idle: Notify::new(),
            duplicates: Mutex::new(Duplicates::new(self.duplicate_window)),
            grace_period: self.grace_period,
            delivery_limit: self.delivery_limit,
            poison_queue,
            abort,
            plan,
        });
        let mut loops = Vec::new();
        for queue in shared.plan.queues() {
            let subscription = shared.plan.consume(connection, queue).await?;
            loops.push(tokio::spawn(consume(
                queue.to_owned(),
                subscription,
                shared.clone(),
                stopped.clone(),
            )));
        }
        tracing::info!(%exchange, %topic, %server, "serving");
        Ok(ServerHandle {
            shared,
            stop,
            loops,
        })
    }
}

struct Shared {
    connection: Connection,
    service: DispatchService,
    in_flight: AtomicUsize,
    /// Requests dropped unexecuted because their deadline had passed.
    expired: AtomicU64,
    idle: Notify,
    duplicates: Mutex<Duplicates>,
    grace_period: Duration,
    delivery_limit: u32,
    poison_queue: String,
    /// Turns true when the grace period is over: handlers still running
    /// stop where they are.
    abort: watch::Sender<bool>,
    plan: Plan,
}

/// What a server declares and consumes; declared again when a lost
/// connection comes back (a restarted broker forgets transient queues).
struct Plan {
    exchange: String,
    topic: String,
    own_queue: String,
    fanout: String,
    fanout_queue: String,
    prefetch: u16,
}

impl Plan {
    /// The control exchange, `<topic>` and `<topic>.<server>` bound to it,
    /// the fanout exchange and this server's queue bound to that.
    async fn declare(&self, connection: &Connection) -> Result<(), Error> {
        declare_topic_queues(connection, &self.exchange, &[&self.topic, &self.own_queue]).await?;
        let transport = connection.transport();
        let topology = connection.topology();
        transport
            .declare_exchange(&topology.fanout_exchange(&self.fanout))
            .await?;
        transport
            .declare_queue(&topology.transient_queue(&self.fanout_queue))
            .await?;
        transport
            .bind_queue(&self.fanout_queue, &self.fanout, &self.topic)
            .await
    }

    /// The queues the server consumes.
    fn queues(&self) -> [&str; 3] {
        [&self.topic, &self.own_queue, &self.fanout_queue]
    }

    async fn consume(
        &self,
        connection: &Connection,
        queue: &str,
    ) -> Result<Box<dyn Subscription>, Error> {
        connection
            .transport()
            .consume(&ConsumeSpec {
                queue: queue.to_owned(),
                prefetch: self.prefetch,
                no_ack: false,
            })
            .await
    }
}

impl Shared {
    /// Whether this request id was taken within the duplicate window
    /// (remembering it, until the window ends or `deadline`, if not).
    fn is_known(&self, id: &str) -> bool {
        self.duplicates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    fn seen_before(&self, unique_id: Option<&str>, deadline: Option<Instant>) -> bool {
        let Some(id) = unique_id else { return false };
        self.duplicates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen_before(id, deadline)
    }
}

/// A running server. [`shutdown`](Self::shutdown) stops it gracefully;
/// dropping the handle stops consuming without waiting.
pub struct ServerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<Option<Box<dyn Subscription>>>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("fanout_queue", &self.shared.plan.fanout_queue)
            .field("in_flight", &self.shared.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl ServerHandle {
    /// The requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// The requests dropped (acknowledged, not executed, not answered)
    /// because their caller's deadline had passed when they were dequeued.
    pub fn expired(&self) -> u64 {
        self.shared.expired.load(Ordering::Relaxed)
    }

    /// Stops taking requests, finishes (and replies to) the ones in flight
    /// within the grace period ([`ServerBuilder::grace_period`]), then
    /// closes the consumers and deletes this server's fanout queue.
    /// Requests still running when the grace period ends are cancelled
    /// unanswered and unacknowledged: closing the consumers' channels gives
    /// them back to the broker for another server.
    pub async fn shutdown(self) -> Result<(), Error> {
        let grace = self.shared.grace_period;
        self.shutdown_within(grace).await
    }

    /// [`shutdown`](Self::shutdown) with a grace period of `grace`.
    pub async fn shutdown_within(mut self, grace: Duration) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let mut subscriptions = Vec::new();
        for handle in std::mem::take(&mut self.loops) {
            match handle.await {
                Ok(subscription) => subscriptions.extend(subscription),
                Err(e) => tracing::warn!(error = %e, "consumer task failed"),
            }
        }
        if tokio::time::timeout(grace, self.idle()).await.is_err() {
            let left = self.shared.in_flight.load(Ordering::Acquire);
            tracing::warn!(
                requests = left,
                ?grace,
                "grace period over: cancelling the requests still running; \
                 the broker gives them to another server"
            );
            let _ = self.shared.abort.send(true);
            self.idle().await;
        }
        for subscription in subscriptions {
            subscription.close().await?;
        }
        self.shared
            .connection
            .transport()
            .delete_queue(&self.shared.plan.fanout_queue)
            .await
    }
}

impl ServerHandle {
    /// Resolves when no request is in flight.
    async fn idle(&self) {
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Consumes one queue until told to stop; returns the subscription (if any)
/// for [`ServerHandle::shutdown`] to close.
///
/// A subscription cut off (lost connection, consumer cancelled by the broker)
/// is re-established: the server declares its topology again and consumes
/// again, retrying with backoff until it succeeds or the server stops, as
/// oslo.messaging's servers do. Requests that were in flight then could not
/// be acknowledged, so the broker delivers them again (at least once).
async fn consume(
    queue: String,
    subscription: Box<dyn Subscription>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Option<Box<dyn Subscription>> {
    let mut subscription = subscription;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                if let Err(e) = subscription.cancel().await {
                    tracing::warn!(error = %e, "cannot cancel consumer");
                }
                return Some(subscription);
            }
            delivery = subscription.next() => match delivery {
                Some(Ok(delivery)) => {
                    shared.in_flight.fetch_add(1, Ordering::AcqRel);
                    let shared = shared.clone();
                    let mut abort = shared.abort.subscribe();
                    let queue = queue.clone();
                    tokio::spawn(async move {
                        // Released on drop, so that even a panic outside
                        // the dispatch guard cannot wedge `shutdown`.
                        let _in_flight = InFlight(&shared);
                        tokio::select! {
                            () = handle(&shared, &queue, delivery) => {}
                            // Past the grace period: dropped unacknowledged.
                            _ = abort.wait_for(|abort| *abort) => {}
                        }
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(%queue, error = %e, "consumer cut off; consuming again");
                    subscription = resubscribe(&queue, &mut stop, || async {
                        shared.plan.declare(&shared.connection).await?;
                        shared.plan.consume(&shared.connection, &queue).await
                    })
                    .await?;
                }
                None => return Some(subscription),
            }
        }
    }
}

/// One request in flight; counted down on drop, waking `shutdown` at zero.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The shortest and longest keepalive periods a caller's `_timeout` can ask
/// for: `_timeout` is peer data and may be tiny (a keepalive flood, or a zero
/// period that `tokio::time::interval` refuses), huge, or infinite.
const KEEPALIVE_PERIODS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));

/// How often to send oslo keepalives for a `_timeout` (half of it, as oslo
/// does, clamped); none for a missing, zero, negative or NaN timeout.
fn keepalive_period(timeout: Option<f64>) -> Option<Duration> {
    let half = timeout.filter(|t| *t > 0.0)? / 2.0;
    let (shortest, longest) = KEEPALIVE_PERIODS;
    // `try_from` fails on values past `Duration::MAX`, infinity included.
    let period = Duration::try_from_secs_f64(half).unwrap_or(longest);
    Some(period.clamp(shortest, longest))
}

/// The instant a request's caller stops waiting, from the AMQP `expiration`
/// (relative, restarted at dequeue) and the deadline the request carried
/// (warren's `_deadline`: wall clock, so it also counts time spent queued);
/// the earlier of the two. `Err` when the carried deadline has already
/// passed. Values too large for the clock mean no deadline rather than an
/// overflow panic.
fn request_deadline(
    expiration: Option<&str>,
    carried: Option<Instant>,
) -> Result<Option<Instant>, ()> {
    let now = Instant::now();
    if carried.is_some_and(|deadline| deadline <= now) {
        return Err(());
    }
    let relative = expiration
        .and_then(|ms| ms.parse::<u64>().ok())
        .and_then(|ms| now.checked_add(Duration::from_millis(ms)));
    Ok(relative.into_iter().chain(carried).min())
}

/// Publishes a redelivered request again to `queue` with its delivery count
/// raised, for the poison guard to see next time (the broker does not
/// count on this queue); `false` if that failed, so the caller handles
/// the original instead.
async fn count_redelivery(shared: &Shared, queue: &str, delivery: &Delivery) -> bool {
    let count = delivery.properties.deliveries_before().saturating_add(1);
    let properties = delivery.properties.clone().with_delivery_count(count);
    let copy = Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        mandatory: false,
        confirm: true,
        properties,
        body: delivery.body.clone(),
    };
    match shared.connection.transport().publish(copy).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(%queue, error = %e, "cannot count a redelivery; handling the request");
            false
        }
    }
}

/// Moves a request delivered too many times to the poison queue; `Err`
/// (and the request stays unacknowledged) if it cannot be stored there.
async fn set_aside(shared: &Shared, delivery: &Delivery) -> Result<(), Error> {
    let transport = shared.connection.transport();
    transport
        .declare_queue(&QueueSpec {
            name: shared.poison_queue.clone(),
            durable: true,
            quorum: shared.connection.topology().quorum,
            ..QueueSpec::default()
        })
        .await?;
    transport
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: shared.poison_queue.clone(),
            mandatory: false,
            confirm: true,
            properties: delivery.properties.clone(),
            body: delivery.body.clone(),
        })
        .await
}

/// Where a request asks its reply to go: the address its body carries
/// (oslo's `_reply_q` and `_msg_id`), else the AMQP `reply_to` and
/// `correlation_id` (warren's MessagePack clients, plain AMQP clients).
fn reply_address(request: Option<&mut Request>, props: &Properties) -> Option<ReplyTo> {
    if let Some(reply) = request.and_then(|r| r.reply.take()) {
        return Some(reply);
    }
    match (props.reply_to(), props.correlation_id()) {
        (Some(queue), Some(msg_id)) => Some(ReplyTo {
            queue: queue.to_owned(),
            msg_id: msg_id.to_owned(),
        }),
        _ => None,
    }
}

async fn handle(shared: &Shared, queue: &str, delivery: Delivery) {
    let props = &delivery.properties;
    // Answer in the caller's codec when known, else MessagePack.
    let (codec, decoded) = match Codec::for_message(props.content_type(), &delivery.body) {
        Ok(codec) => (codec, codec.decode_request(&delivery.body)),
        Err(e) => (Codec::default(), Err(e)),
    };
    let (address, outcome) = match decoded {
        Err(e) => {
            tracing::warn!(error = %e, "undecodable request");
            (
                reply_address(None, props),
                Err(Failure::decode(e.to_string())),
            )
        }
        Ok(request)
            if request_deadline(props.expiration(), request.context.deadline()).is_err() =>
        {
            // The caller gave up while the request sat in the queue:
            // executing it would be wasted (or, worse, a surprise) and no
            // one reads the reply.
            shared.expired.fetch_add(1, Ordering::Relaxed);
            tracing::info!(method = %request.method, "dropping a request whose deadline passed while it was queued");
            (None, Ok(Bytes::new()))
        }
        Ok(mut request) if props.deliveries_before() > shared.delivery_limit => {
            let count = props.deliveries_before();
            if let Err(e) = set_aside(shared, &delivery).await {
                // Not acknowledged: the broker keeps it (and redelivers it).
                tracing::error!(method = %request.method, error = %e, "cannot move a poison request aside");
                return;
            }
            tracing::warn!(
                method = %request.method,
                deliveries = count,
                poison_queue = %shared.poison_queue,
                "a request delivered more often than the delivery limit was set aside, not executed"
            );
            let address = reply_address(Some(&mut request), props);
            let failure = Failure::new(
                POISON_FAILURE_CLASS,
                WARREN_MODULE,
                format!(
                    "{} was delivered {count} times before, more than the limit of {}; \
                     it was moved to queue {} and not executed again",
                    request.method, shared.delivery_limit, shared.poison_queue
                ),
            );
            (address, Err(failure))
        }
        Ok(request)
            if delivery.redelivered
                && props.broker_delivery_count().is_none()
                && !request
                    .unique_id
                    .as_deref()
                    .is_some_and(|id| shared.is_known(id)) =>
        {
            // Possibly the request that killed a server: count it and let
            // the copy come round, unless the copy cannot be published.
            if count_redelivery(shared, queue, &delivery).await {
                if let Err(e) = delivery.acker.ack().await {
                    tracing::warn!(error = %e, "cannot ack a counted redelivery");
                }
                return;
            }
            let _ = shared.seen_before(request.unique_id.as_deref(), None);
            execute(shared, codec, request, props).await
        }
        Ok(request)
            if shared.seen_before(
                request.unique_id.as_deref(),
                request_deadline(props.expiration(), request.context.deadline())
                    .ok()
                    .flatten(),
            ) =>
        {
            tracing::debug!(method = %request.method, "dropping a duplicate request");
            (None, Ok(Bytes::new()))
        }
        Ok(request) => execute(shared, codec, request, props).await,
    };
    if let Some(address) = address {
        if let Err(e) = send_reply(&shared.connection, codec, address, outcome, true).await {
            tracing::warn!(error = %e, "cannot send reply");
        }
    }
    if let Err(e) = delivery.acker.ack().await {
        tracing::warn!(error = %e, "cannot ack request");
    }
}

/// Runs a request through the dispatch stack: where to reply, and what.
async fn execute(
    shared: &Shared,
    codec: Codec,
    mut request: Request,
    props: &Properties,
) -> (Option<ReplyTo>, Result<Bytes, Failure>) {
    let address = reply_address(Some(&mut request), props);
    let keepalive = keepalive_period(request.timeout);
    // Checked above; a deadline reached since then is not dropped (the
    // method can watch `Context::deadline_passed`).
    request.context.deadline = request_deadline(props.expiration(), request.context.deadline())
        .unwrap_or_else(|()| Some(Instant::now()));
    // The server span continues the caller's trace (or starts one); calls
    // the method makes continue the server span, through its context.
    let parent = TraceContext::of_request(props, &request.context);
    let trace = parent
        .as_ref()
        .map_or_else(TraceContext::new_root, TraceContext::child);
    trace.write_to(&mut request.context);
    let span = tracing::debug_span!(
        "rpc.server",
        otel.kind = "server",
        rpc.system = "oslo",
        rpc.service = %shared.plan.topic,
        rpc.method = %request.method,
        trace_id = %trace.trace_id(),
        span_id = %trace.span_id(),
        parent_id = parent
            .as_ref()
            .map(|p| tracing::field::display(super::trace::SpanId(p.span_id_value()))),
    );
    let counted = Measured::start(Side::Server, &shared.plan.topic, &request.method);
    let dispatch = tracing::Instrument::instrument(shared.service.clone().oneshot(request), span);
    let response = match (keepalive, &address) {
        // Boxed: only oslo callers ask for keepalives, and the timer
        // would otherwise enlarge every request's task.
        (Some(period), Some(address)) => {
            Box::pin(with_keepalives(
                &shared.connection,
                codec,
                address,
                period,
                dispatch,
            ))
            .await
        }
        _ => dispatch.await,
    };
    let outcome = match response {
        Ok(response) => response.into_outcome(),
        Err(e) => Err(middleware_failure(e)),
    };
    counted.finish(outcome.as_ref().err().map(|f| failure_kind(&f.class)));
    (address, outcome)
}

/// Runs `dispatch`, sending oslo's `ending: false` keepalive replies every
/// `period` meanwhile (only for callers that asked, with `_timeout`).
async fn with_keepalives<F: std::future::Future>(
    connection: &Connection,
    codec: Codec,
    address: &ReplyTo,
    period: Duration,
    dispatch: F,
) -> F::Output {
    tokio::pin!(dispatch);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            output = &mut dispatch => return output,
            _ = ticks.tick() => {
                let outcome = codec
                    .encode_value(&())
                    .map(Bytes::from)
                    .map_err(|e| Failure::new("EncodeError", WARREN_MODULE, e.to_string()));
                if let Err(e) = send_reply(connection, codec, address.clone(), outcome, false).await {
                    tracing::warn!(error = %e, "cannot send keepalive");
                }
            }
        }
    }
}

/// An error from middleware (load shedding, a timeout layer, an auth layer)
/// as the failure the caller receives.
fn middleware_failure(e: BoxError) -> Failure {
    let class = if e.is::<tower::load_shed::error::Overloaded>() {
        "Overloaded"
    } else if e.is::<tower::timeout::error::Elapsed>() {
        "Timeout"
    } else {
        "ServiceError"
    };
    Failure::new(class, WARREN_MODULE, e.to_string())
}

/// Sends a reply (`ending`) or a keepalive to `address`, in `codec`.
async fn send_reply(
    connection: &Connection,
    codec: Codec,
    address: ReplyTo,
    outcome: Result<Bytes, Failure>,
    ending: bool,
) -> Result<(), Error> {
    // oslo's JSON carries the correlation id in the body (and oslo's
    // clients drop replies whose `_unique_id` they saw); MessagePack leaves
    // it to the AMQP `correlation_id`.
    let oslo = codec.carries_reply_address();
    let reply = Reply {
        msg_id: oslo.then(|| address.msg_id.clone()),
        outcome,
        ending,
        unique_id: oslo.then(new_id),
    };
    let body = match codec.encode_reply(&reply) {
        Ok(body) => body,
        // A result this codec cannot carry (JSON with non-string map keys,
        // say) becomes a failure rather than silence.
        Err(e) => codec.encode_reply(&Reply {
            outcome: Err(Failure::new("EncodeError", WARREN_MODULE, e.to_string())),
            ..reply
        })?,
    };
    let ReplyTo { queue, msg_id } = address;
    let mut properties = Properties::default()
        .with_content_type(codec.content_type())?
        .with_correlation_id(msg_id)?;
    if oslo {
        properties = properties
            .with_content_encoding("utf-8")?
            .with_delivery_mode(2)
            .with_priority(0);
    }
    connection
        .transport()
        .publish(Outgoing {
            exchange: String::new(),
            routing_key: queue,
            // A reply whose caller is gone (its queue deleted) is dropped
            // by the broker. oslo.messaging publishes replies mandatory only
            // to log that it abandoned one; without confirms on the reply
            // channels the return would only pile up in lapin.
            mandatory: false,
            confirm: false,
            properties,
            body,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_period_is_clamped_for_any_timeout_a_peer_sends() {
        let (shortest, longest) = KEEPALIVE_PERIODS;
        assert_eq!(keepalive_period(Some(60.0)), Some(Duration::from_secs(30)));
        for absurd in [1e300, f64::INFINITY, f64::MAX] {
            assert_eq!(keepalive_period(Some(absurd)), Some(longest), "{absurd}");
        }
        for tiny in [1e-300, f64::MIN_POSITIVE, 0.001] {
            assert_eq!(keepalive_period(Some(tiny)), Some(shortest), "{tiny}");
        }
        for none in [
            None,
            Some(0.0),
            Some(-1.0),
            Some(f64::NAN),
            Some(f64::NEG_INFINITY),
        ] {
            assert_eq!(keepalive_period(none), None, "{none:?}");
        }
    }

    #[test]
    fn request_deadline_never_overflows_and_spots_a_passed_deadline() {
        let max = u64::MAX.to_string();
        // Far off (or none where the clock cannot hold it), never a panic.
        assert!(request_deadline(Some(&max), None).is_ok());
        assert_eq!(request_deadline(Some("soon"), None), Ok(None));
        assert!(matches!(request_deadline(Some("60000"), None), Ok(Some(_))));
        let past = Instant::now() - Duration::from_secs(1);
        assert_eq!(request_deadline(Some("60000"), Some(past)), Err(()));
        let far = Instant::now() + Duration::from_secs(3600);
        let near = request_deadline(Some("1000"), Some(far)).unwrap().unwrap();
        assert!(near <= Instant::now() + Duration::from_secs(1));
    }
}
