//! The client side of RPC: calls (request/reply with a timeout) and casts
//! (fire-and-forget, optionally fanout), over any transport.
//!
//! Generated `<Trait>Client`s are [`Stub`]s over a [`Client`]; it can also
//! be used directly with hand-built arguments.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use tracing::Instrument;

use super::reply_queue::{Registration, ReplyQueue, ReplyResult};
use super::target::fanout_exchange;
use super::trace::SpanId;
use super::{CallOptions, Outcome, ServiceRequest, Stub, TraceContext};
use crate::metrics::{failure_kind, Measured, Side};
use crate::transport::recovery::DeclaredOnce;
use crate::transport::{Outgoing, Properties};
use crate::wire::{new_id, Args, Codec, Reply, ReplyTo, Request};
use crate::{Connection, Error};

/// A call's place in its reply queue's table, and where its reply arrives.
type Registered = (Registration, tokio::sync::oneshot::Receiver<ReplyResult>);

/// An RPC client: one reply queue, reused by all its calls. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    codec: Codec,
    /// The reply queue, read without waiting on the hot path.
    replies: std::sync::RwLock<Option<Arc<ReplyQueue>>>,
    /// Serializes (re)creating the reply queue.
    replies_init: tokio::sync::Mutex<()>,
    /// Exchanges declared on the current connection.
    declared: DeclaredOnce,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("codec", &self.inner.codec)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client on `connection`, using the connection's codec.
    pub fn new(connection: &Connection) -> Self {
        Client {
            inner: Arc::new(Inner {
                connection: connection.clone(),
                codec: connection.codec(),
                replies: std::sync::RwLock::new(None),
                replies_init: tokio::sync::Mutex::new(()),
                declared: DeclaredOnce::default(),
            }),
        }
    }

    /// A typed client of the service whose request enum is `R` (a
    /// generated `<Trait>Client`), sharing this client's reply queue:
    /// `client.stub::<EngineRequest>()` is an `EngineClient`.
    pub fn stub<R: ServiceRequest>(&self) -> R::Client {
        R::Client::from(Stub::from_client(self.clone()))
    }

    /// The codec requests are written in.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// Calls `method` and decodes its result as `T`.
    pub async fn call<A, T>(
        &self,
        options: &CallOptions,
        method: &str,
        args: &A,
    ) -> Result<T, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let args = Args::encode(self.inner.codec, args)?;
        self.call_args(options, method, args).await?.value()
    }

    /// Calls a method returning `Result<T, E>`: the service's own error
    /// arrives as `Ok(Err(e))`, anything else as `Err(warren::Error)`.
    pub async fn call_fallible<A, T, E>(
        &self,
        options: &CallOptions,
        method: &str,
        args: &A,
    ) -> Result<Result<T, E>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let args = Args::encode(self.inner.codec, args)?;
        self.call_args(options, method, args).await?.fallible()
    }

    /// Sends `method` without waiting for a result; returns once the broker
    /// confirmed the message. With `options.target.fanout`, every server of
    /// the topic receives it.
    pub async fn cast<A>(&self, options: &CallOptions, method: &str, args: &A) -> Result<(), Error>
    where
        A: Serialize + ?Sized,
    {
        let args = Args::encode(self.inner.codec, args)?;
        self.cast_args(options, method, args).await
    }

    /// [`Client::cast`] with the arguments already encoded, in a span of
    /// its own, counted.
    pub(crate) async fn cast_args(
        &self,
        options: &CallOptions,
        method: &str,
        args: Args,
    ) -> Result<(), Error> {
        let traced = trace_for(options);
        let span = client_span("cast", &options.target.topic, method, &traced);
        let trace = traced.0;
        let counted = Measured::start(Side::Client, &options.target.topic, method);
        let result = self
            .send_cast(options, method, args, &trace)
            .instrument(span)
            .await;
        counted.finish(result.as_ref().err().map(Error::kind_label));
        result
    }

    async fn send_cast(
        &self,
        options: &CallOptions,
        method: &str,
        args: Args,
        trace: &TraceContext,
    ) -> Result<(), Error> {
        let target = &options.target;
        let request = self.request(options, method, args, None, trace);
        let (exchange, routing_key) = if target.fanout {
            let exchange = fanout_exchange(&target.topic);
            let spec = self.inner.connection.topology().fanout_exchange(&exchange);
            self.declare_once(&spec).await?;
            (exchange, String::new())
        } else {
            self.declare_control_exchange(&target.exchange).await?;
            (target.exchange.clone(), target.routing_key())
        };
        let message = self.outgoing(exchange, routing_key, &request, None, true, trace)?;
        self.inner.connection.transport().publish(message).await
    }

    /// A call with the arguments already encoded: its reply, still encoded;
    /// in a span of its own, counted.
    pub(crate) async fn call_args(
        &self,
        options: &CallOptions,
        method: &str,
        args: Args,
    ) -> Result<Outcome, Error> {
        let traced = trace_for(options);
        let span = client_span("call", &options.target.topic, method, &traced);
        let trace = traced.0;
        let counted = Measured::start(Side::Client, &options.target.topic, method);
        let result = self
            .send_call(options, method, args, &trace)
            .instrument(span)
            .await;
        counted.finish(match &result {
            Ok(outcome) => outcome.failure_class().map(failure_kind),
            Err(e) => Some(e.kind_label()),
        });
        result
    }

    async fn send_call(
        &self,
        options: &CallOptions,
        method: &str,
        args: Args,
        trace: &TraceContext,
    ) -> Result<Outcome, Error> {
        let target = &options.target;
        if target.fanout {
            return Err(Error::config(format!(
                "{method}: a call cannot be fanout (only casts can)"
            )));
        }
        let timeout = options.effective_timeout();
        let msg_id = new_id();
        let (replies, (_registration, reply)) = self.register(&msg_id).await?;
        let reply_to = ReplyTo {
            queue: replies.name().to_owned(),
            msg_id,
        };
        let mut request = self.request(options, method, args, Some(reply_to), trace);
        // The deadline travels so a server can drop the request if it is
        // dequeued after the caller gave up; a timeout too large for the
        // clock is no deadline.
        request.context.deadline = Instant::now().checked_add(timeout);
        self.declare_control_exchange(&target.exchange).await?;
        let message = self.outgoing(
            target.exchange.clone(),
            target.routing_key(),
            &request,
            Some(timeout),
            false,
            trace,
        )?;
        self.inner.connection.transport().publish(message).await?;
        let reply = match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(reply)) => reply?,
            // The request went out; the reply queue's consumer ended
            // (the connection broke, or the client closed) before the reply.
            Ok(Err(_)) => {
                return Err(Error::outcome_unknown(format!(
                    "{method}: the connection was lost after the request was sent; \
                     the server may or may not have run it"
                )))
            }
            Err(_) => {
                return Err(Error::timeout(format!(
                    "no reply to {method} on topic {:?} within {timeout:?}",
                    target.routing_key()
                )))
            }
        };
        let (codec, Reply { outcome, .. }) = reply;
        Ok(Outcome::new(codec, outcome))
    }

    fn request(
        &self,
        options: &CallOptions,
        method: &str,
        args: Args,
        reply: Option<ReplyTo>,
        trace: &TraceContext,
    ) -> Request {
        let mut context = options.context.clone();
        trace.write_to(&mut context);
        Request {
            method: method.to_owned(),
            args,
            namespace: options.target.namespace.clone(),
            version: options.target.version.clone(),
            reply,
            timeout: None,
            unique_id: Some(new_id()),
            context,
        }
    }

    fn outgoing(
        &self,
        exchange: String,
        routing_key: String,
        request: &Request,
        timeout: Option<Duration>,
        confirm: bool,
        trace: &TraceContext,
    ) -> Result<Outgoing, Error> {
        let codec = self.inner.codec;
        let mut properties =
            trace.write_headers(Properties::default().with_content_type(codec.content_type())?);
        if let Some(timeout) = timeout {
            properties = properties.with_expiration_ms(timeout.as_millis().max(1))?;
        }
        match (codec, &request.reply) {
            // Exactly oslo's properties, so Python peers see what they expect.
            (Codec::OsloJson, _) => {
                properties = properties
                    .with_content_encoding("utf-8")?
                    .with_delivery_mode(2)
                    .with_priority(0);
            }
            // The reply address as plain AMQP RPC carries it, the only place
            // MessagePack carries it (so a server can answer even a request
            // whose body it cannot read).
            (Codec::MsgPack, Some(reply)) => {
                properties = properties
                    .with_reply_to(&reply.queue)?
                    .with_correlation_id(&reply.msg_id)?;
            }
            (Codec::MsgPack, None) => {}
        }
        Ok(Outgoing {
            exchange,
            routing_key,
            mandatory: false,
            confirm,
            properties,
            body: codec.encode_request(request)?,
        })
    }

    fn live_reply_queue(&self) -> Option<Arc<ReplyQueue>> {
        let slot = self.inner.replies.read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|q| q.is_alive()).cloned()
    }

    /// Registers call `msg_id` on a live reply queue (a fresh one if the
    /// last one's consumer stopped, even between the check and the
    /// registration), before anything is sent.
    async fn register(&self, msg_id: &str) -> Result<(Arc<ReplyQueue>, Registered), Error> {
        for _ in 0..2 {
            let queue = self.reply_queue().await?;
            if let Some(registration) = queue.register(msg_id) {
                return Ok((queue, registration));
            }
        }
        Err(Error::transport(
            "the reply queue stopped twice while a call registered (connection lost?)",
        ))
    }

    async fn reply_queue(&self) -> Result<Arc<ReplyQueue>, Error> {
        if let Some(queue) = self.live_reply_queue() {
            return Ok(queue);
        }
        let _init = self.inner.replies_init.lock().await;
        if let Some(queue) = self.live_reply_queue() {
            return Ok(queue);
        }
        let queue = Arc::new(ReplyQueue::start(&self.inner.connection).await?);
        *self
            .inner
            .replies
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(queue.clone());
        Ok(queue)
    }

    async fn declare_control_exchange(&self, exchange: &str) -> Result<(), Error> {
        let spec = self.inner.connection.topology().control_exchange(exchange);
        self.declare_once(&spec).await
    }

    /// Declares an exchange the first time this client publishes to it (a
    /// publish to a missing exchange would close the channel).
    async fn declare_once(&self, spec: &crate::transport::ExchangeSpec) -> Result<(), Error> {
        if spec.name.is_empty() {
            return Ok(());
        }
        let transport = self.inner.connection.transport();
        self.inner
            .declared
            .ensure(transport.as_ref(), &spec.name, || {
                transport.declare_exchange(spec)
            })
            .await
    }
}

/// The trace context of a request sent with `options`: a child of the one
/// its context carries, else of the request this task serves, else a new
/// trace.
fn trace_for(options: &CallOptions) -> (TraceContext, Option<SpanId>) {
    match TraceContext::from_context(&options.context).or_else(TraceContext::current) {
        Some(parent) => (parent.child(), Some(SpanId(parent.span_id_value()))),
        None => (TraceContext::new_root(), None),
    }
}

/// The client span of a call or cast, named after OpenTelemetry's RPC
/// conventions. At DEBUG level: a subscriber that formats INFO spans (as
/// `warren`'s own does) would otherwise spend a third of an in-process
/// call formatting its fields.
fn client_span(
    kind: &str,
    service: &str,
    method: &str,
    (trace, parent): &(TraceContext, Option<SpanId>),
) -> tracing::Span {
    tracing::debug_span!(
        "rpc.client",
        otel.kind = "client",
        rpc.system = "oslo",
        rpc.service = %service,
        rpc.method = %method,
        rpc.kind = %kind,
        trace_id = %trace.trace_id(),
        span_id = %trace.span_id(),
        parent_id = parent.map(tracing::field::display),
    )
}
