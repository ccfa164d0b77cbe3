//! [`Worker`]: consume queues, decode, run a handler, settle each message
//! as the handler decides.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

mod settle;

use settle::handle;

use super::outcome::{IntoOutcome, Message, Outcome};
use super::{durable_queue, Format, Retry};
use crate::transport::recovery::resubscribe;
use crate::transport::{ConsumeSpec, QueueSpec, Subscription};
use crate::{Connection, Error};

/// How long [`WorkerHandle::shutdown`] lets handlers finish unless set.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Builds a worker for messages of type `T`; [`start`](Self::start) runs it.
pub struct Worker<T> {
    connection: Connection,
    queues: Vec<String>,
    format: Format,
    prefetch: Option<u16>,
    concurrency: usize,
    retry: Option<Retry>,
    dead_letter: Option<String>,
    declare: bool,
    durable: bool,
    exclusive: bool,
    bindings: Vec<(String, String)>,
    grace_period: Duration,
    _message: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.queues)
            .field("format", &self.format)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("dead_letter", &self.dead_letter)
            .field("declare", &self.declare)
            .field("durable", &self.durable)
            .field("exclusive", &self.exclusive)
            .field("bindings", &self.bindings)
            .finish()
    }
}

impl<T: DeserializeOwned + Send + 'static> Worker<T> {
    /// A worker consuming `queue`: one message at a time (see
    /// [`concurrency`](Self::concurrency)), the queue declared durable,
    /// no retries, no dead-letter queue. An empty name gets a unique
    /// `warren.gen-…` one (for [`exclusive`](Self::exclusive) queues;
    /// [`WorkerHandle::queues`] tells it).
    pub fn new(connection: &Connection, queue: impl Into<String>) -> Self {
        Worker {
            connection: connection.clone(),
            queues: vec![queue.into()],
            format: Format::default(),
            prefetch: None,
            concurrency: 1,
            retry: None,
            dead_letter: None,
            declare: true,
            durable: true,
            exclusive: false,
            bindings: Vec::new(),
            grace_period: DEFAULT_GRACE_PERIOD,
            _message: PhantomData,
        }
    }

    /// Consumes `queue` as well (same handler, same concurrency bound).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// How to decode a message that carries no `content_type` (default
    /// [`Format::Json`]); one that does is decoded as it says.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// At most this many messages delivered and not yet settled, per
    /// queue (AMQP `basic.qos`; default: the concurrency).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    /// At most this many handlers running at once, over all the worker's
    /// queues (default 1).
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// Retries a message whose handler asked ([`Outcome::Retry`], or an
    /// `Err`) after a back-off, through retry queues (see [`Retry`]);
    /// without a policy such a message is dead-lettered at once.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Dead-letters into `queue` (durable): messages rejected, out of
    /// retries, or undecodable, with the reason in their `x-warren-error`
    /// header. Without one, such messages are rejected to the broker,
    /// which drops them (or dead-letters them as their queue's arguments
    /// or policy say), and the reason is only logged.
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter = Some(queue.into());
        self
    }

    /// Dead-letters into `<first queue>.dlq` (see
    /// [`dead_letter_queue`](Self::dead_letter_queue)).
    pub fn dead_letter(mut self) -> Self {
        if self.queues[0].is_empty() {
            self.queues[0] = generated_name();
        }
        let name = format!("{}.dlq", self.queues[0]);
        self.dead_letter_queue(name)
    }

    /// Whether the worker declares its queues, durable (default), or only
    /// checks they exist (passively), failing with an
    /// [`Error::is_not_found`] error naming the first missing one: for
    /// queues an operator creates, with arguments of their own.
    pub fn declare(mut self, declare: bool) -> Self {
        self.declare = declare;
        self
    }

    /// Whether the worker's queues are declared durable (default) or
    /// transient; match how other clients declare them (RabbitMQ refuses
    /// a redeclaration with other flags). Retry and dead-letter queues are
    /// always durable.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Declares the worker's queues exclusive: this connection's only,
    /// deleted when it closes (publish/subscribe's per-subscriber queues).
    /// Implies transient.
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Binds each of the worker's queues to `exchange` with `routing_key`
    /// (after declaring them, and again after a reconnection). The
    /// exchange must exist: declare it with the connection's transport.
    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), routing_key.into()));
        self
    }

    /// How long [`WorkerHandle::shutdown`] waits for handlers still
    /// running (default 30 s, as RPC servers).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = grace;
        self
    }

    /// Declares (or checks) the queues, then consumes them, running
    /// `handler` on each message; returns once consuming.
    ///
    /// The handler returns an [`Outcome`], `()` or a `Result` (see
    /// [`IntoOutcome`]); a panicking handler counts as
    /// [`Outcome::Retry`]. A message that cannot be decoded into `T` never
    /// reaches the handler: it is dead-lettered with the reason, and a
    /// warning says why.
    pub async fn start<F, Fut, R>(self, handler: F) -> Result<WorkerHandle, Error>
    where
        F: Fn(Message<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoOutcome,
    {
        let queues = self
            .queues
            .into_iter()
            .map(|q| if q.is_empty() { generated_name() } else { q })
            .collect();
        let plan = Plan {
            queues,
            durable: self.durable && !self.exclusive,
            exclusive: self.exclusive,
            bindings: self.bindings,
            prefetch: self
                .prefetch
                .unwrap_or_else(|| u16::try_from(self.concurrency).unwrap_or(u16::MAX)),
            retry: self.retry,
            dead_letter: self.dead_letter,
            declare: self.declare,
        };
        plan.prepare(&self.connection).await?;
        let (stop, stopped) = watch::channel(false);
        let (abort, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            connection: self.connection,
            format: self.format,
            handler: Box::new(move |message| {
                let future = handler(message);
                async move { future.await.into_outcome() }.boxed()
            }),
            permits: Arc::new(Semaphore::new(self.concurrency)),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            abort,
            stats: Counters::default(),
            plan,
        });
        let mut loops = Vec::new();
        for queue in &shared.plan.queues {
            let subscription = shared.plan.consume(&shared.connection, queue).await?;
            loops.push(tokio::spawn(consume(
                Arc::from(queue.as_str()),
                subscription,
                shared.clone(),
                stopped.clone(),
            )));
        }
        tracing::info!(queues = ?shared.plan.queues, "worker consuming");
        Ok(WorkerHandle {
            queues: shared.plan.queues.clone(),
            shared,
            stop,
            loops,
            grace_period: self.grace_period,
        })
    }
}

/// A unique queue name, for a worker given an empty one.
fn generated_name() -> String {
    format!("warren.gen-{}", uuid::Uuid::new_v4().simple())
}

type Handler<T> =
    Box<dyn Fn(Message<T>) -> futures::future::BoxFuture<'static, Outcome> + Send + Sync>;

struct Shared<T> {
    connection: Connection,
    format: Format,
    handler: Handler<T>,
    permits: Arc<Semaphore>,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Turns true when the grace period is over: handlers still running
    /// stop where they are, their messages unacknowledged.
    abort: watch::Sender<bool>,
    stats: Counters,
    plan: Plan,
}

/// What a worker declares (or checks) and consumes; prepared again when a
/// lost connection comes back.
struct Plan {
    queues: Vec<String>,
    durable: bool,
    exclusive: bool,
    bindings: Vec<(String, String)>,
    prefetch: u16,
    retry: Option<Retry>,
    dead_letter: Option<String>,
    declare: bool,
}

impl Plan {
    /// Every queue the worker uses, declared or checked.
    async fn prepare(&self, connection: &Connection) -> Result<(), Error> {
        let mut specs: Vec<QueueSpec> = self
            .queues
            .iter()
            .map(|q| QueueSpec {
                name: q.clone(),
                durable: self.durable,
                exclusive: self.exclusive,
                ..QueueSpec::default()
            })
            .collect();
        if let Some(retry) = &self.retry {
            for queue in &self.queues {
                for n in 1..=retry.retries() {
                    specs.push(retry.queue_spec(queue, n));
                }
            }
        }
        if let Some(dead_letter) = &self.dead_letter {
            specs.push(durable_queue(dead_letter));
        }
        let transport = connection.transport();
        for spec in &specs {
            if self.declare {
                transport.declare_queue(spec).await?;
            } else {
                check_queue(connection, &spec.name).await?;
            }
        }
        for queue in &self.queues {
            for (exchange, routing_key) in &self.bindings {
                transport.bind_queue(queue, exchange, routing_key).await?;
            }
        }
        Ok(())
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

/// Checks that `queue` exists, with an error naming it if not.
pub(crate) async fn check_queue(connection: &Connection, queue: &str) -> Result<(), Error> {
    match connection.transport().check_queue(queue).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Err(Error::not_found(format!(
            "queue {queue:?} does not exist: declare it first (it is not declared here) ({e})"
        ))
        .with_source(e)),
        Err(e) => Err(e),
    }
}

#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    requeued: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    rejected: AtomicU64,
    undecodable: AtomicU64,
}

/// What a worker did with the messages it took so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    /// Acknowledged after their handler succeeded.
    pub acked: u64,
    /// Put back on their queue ([`Outcome::Requeue`]).
    pub requeued: u64,
    /// Sent to a retry queue.
    pub retried: u64,
    /// Moved to the worker's dead-letter queue.
    pub dead_lettered: u64,
    /// Rejected to the broker (no dead-letter queue of the worker's).
    pub rejected: u64,
    /// Of those dead-lettered or rejected, how many could not be decoded.
    pub undecodable: u64,
}

/// A running worker. [`shutdown`](Self::shutdown) stops it gracefully;
/// dropping the handle stops consuming without waiting for the handlers
/// running (they still settle their messages).
pub struct WorkerHandle {
    shared: Arc<dyn Running>,
    queues: Vec<String>,
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<Option<Box<dyn Subscription>>>>,
    grace_period: Duration,
}

/// The parts of a worker's shared state that do not depend on `T`.
trait Running: Send + Sync {
    fn in_flight(&self) -> usize;
    fn stats(&self) -> WorkerStats;
    fn abort(&self);
    fn idle(&self) -> futures::future::BoxFuture<'_, ()>;
}

impl<T: Send + 'static> Running for Shared<T> {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn stats(&self) -> WorkerStats {
        let c = &self.stats;
        WorkerStats {
            acked: c.acked.load(Ordering::Relaxed),
            requeued: c.requeued.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            undecodable: c.undecodable.load(Ordering::Relaxed),
        }
    }

    fn abort(&self) {
        let _ = self.abort.send(true);
    }

    fn idle(&self) -> futures::future::BoxFuture<'_, ()> {
        async move {
            loop {
                let idle = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        }
        .boxed()
    }
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("in_flight", &self.shared.in_flight())
            .field("stats", &self.shared.stats())
            .finish()
    }
}

impl WorkerHandle {
    /// The queues the worker consumes (generated names included).
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Handlers running right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// What the worker did so far.
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats()
    }

    /// Stops taking messages, lets the handlers running finish (and their
    /// messages be settled) within the grace period, then closes the
    /// consumers: messages delivered but not started go back to their
    /// queues, as do those of handlers still running when the grace period
    /// ends (cancelled where they are).
    pub async fn shutdown(self) -> Result<(), Error> {
        let grace = self.grace_period;
        self.shutdown_within(grace).await
    }

    /// [`shutdown`](Self::shutdown) with a grace period of `grace`.
    pub async fn shutdown_within(mut self, grace: Duration) -> Result<(), Error> {
        let _ = self.stop.send(true);
        let mut subscriptions = Vec::new();
        for handle in std::mem::take(&mut self.loops) {
            match handle.await {
                Ok(subscription) => subscriptions.extend(subscription),
                Err(e) => tracing::warn!(error = %e, "worker consumer task failed"),
            }
        }
        if tokio::time::timeout(grace, self.shared.idle())
            .await
            .is_err()
        {
            tracing::warn!(
                handlers = self.shared.in_flight(),
                ?grace,
                "grace period over: cancelling the handlers still running; \
                 their messages go back to the queue"
            );
            self.shared.abort();
            self.shared.idle().await;
        }
        let mut result = Ok(());
        for subscription in subscriptions {
            if let Err(e) = subscription.close().await {
                result = Err(e);
            }
        }
        result
    }
}

impl Drop for WorkerHandle {
    /// Stops consuming without waiting for the handlers; the consumers
    /// close in the background once the handlers finished, so deliveries
    /// not started go back to their queues rather than wait,
    /// unacknowledged, for the connection to close.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let loops = std::mem::take(&mut self.loops);
        if loops.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut subscriptions = Vec::new();
                for handle in loops {
                    if let Ok(Some(subscription)) = handle.await {
                        subscriptions.push(subscription);
                    }
                }
                // The handlers running settle their messages first.
                shared.idle().await;
                for subscription in subscriptions {
                    let _ = subscription.close().await;
                }
            });
        }
    }
}

/// Consumes one queue until told to stop, handing each delivery to a
/// handler once one may run; returns the subscription for `shutdown` to close.
/// A subscription cut off is re-established (queues prepared again), with
/// back-off, as RPC servers do.
async fn consume<T: DeserializeOwned + Send + 'static>(
    queue: Arc<str>,
    mut subscription: Box<dyn Subscription>,
    shared: Arc<Shared<T>>,
    mut stop: watch::Receiver<bool>,
) -> Option<Box<dyn Subscription>> {
    loop {
        let delivery = tokio::select! {
            biased;
            () = stopped(&mut stop) => {
                cancel(&queue, &mut subscription).await;
                return Some(subscription);
            }
            delivery = subscription.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => {
                // The delivery waits for a handler slot (the permits every
                // queue of the worker shares; prefetch bounds how many
                // deliveries wait).
                let permit = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => None,
                    permit = shared.permits.clone().acquire_owned() => permit.ok(),
                };
                let Some(permit) = permit else {
                    // Not started: it goes back to the queue when the
                    // consumer closes.
                    drop(delivery);
                    cancel(&queue, &mut subscription).await;
                    return Some(subscription);
                };
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
                let shared = shared.clone();
                let queue = queue.clone();
                let mut abort = shared.abort.subscribe();
                tokio::spawn(async move {
                    let _permit = permit;
                    let _in_flight = InFlight(&shared.in_flight, &shared.idle);
                    tokio::select! {
                        () = handle(&shared, &queue, delivery) => {}
                        // Past the grace period: left unacknowledged.
                        () = stopped(&mut abort) => {}
                    }
                });
            }
            Some(Err(e)) => {
                tracing::warn!(%queue, error = %e, "consumer cut off; consuming again");
                subscription = resubscribe(&queue, &mut stop, || async {
                    shared.plan.prepare(&shared.connection).await?;
                    shared.plan.consume(&shared.connection, &queue).await
                })
                .await?;
            }
            None => return Some(subscription),
        }
    }
}

async fn cancel(queue: &str, subscription: &mut Box<dyn Subscription>) {
    if let Err(e) = subscription.cancel().await {
        tracing::warn!(%queue, error = %e, "cannot cancel consumer");
    }
}

/// Resolves once `stop` is (or turns) true, or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// One handler running; counted down on drop, waking `shutdown` at zero.
struct InFlight<'a>(&'a AtomicUsize, &'a Notify);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.1.notify_waiters();
        }
    }
}
