//! The typed client's library half: [`Stub`], one generic call path with the
//! per-call options, for any service's request enum ([`ServiceRequest`]).
//!
//! A generated `<Trait>Client` is a newtype over `Stub<<Trait>Request>` that
//! derefs to it: its typed methods build a request and go through
//! [`Stub::call`], the same path that makes it a `tower::Service`, and the
//! options (`.timeout()`, `.to_server()`, …) are `Stub`'s, returning the
//! generated client again so they chain.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::dispatch::{Request, Response, ServiceInfo};
use super::{variant, CallOptions, Client, Context, Target};
use crate::wire::{Args, Codec, Failure};
use crate::{Connection, Error};

/// A service's request enum: one variant per method, whose fields are the
/// arguments. `#[warren::service]` implements it for the `<Trait>Request`
/// it generates; it is what lets one generic [`Stub`] call any service.
///
/// The enum's serde form is its wire form: each variant is renamed to its
/// method, its fields travel as the arguments map (see
/// [`ServiceRequest::from_request`]).
pub trait ServiceRequest: Serialize + DeserializeOwned + Send + Sized + 'static {
    /// The response enum: one variant per method, holding its result.
    type Response: Send + 'static;
    /// The typed client, a newtype over `Stub<Self>`: what [`Stub`]'s
    /// option builders return.
    type Client: From<Stub<Self>>;
    /// Static facts about the service (its topic, version, methods).
    const INFO: &'static ServiceInfo;

    /// This request's method: its name, and how its reply reads.
    fn method(&self) -> Method<Self::Response>;

    /// The request a server received, as this enum: the variant its method
    /// names, with the arguments as fields. Fails with the answer to send
    /// instead: no such method, or arguments that do not decode.
    fn from_request(request: &Request) -> Result<Self, Response> {
        let method = request.method.as_str();
        if !Self::INFO.methods.contains(&method) {
            return Err(Response::failure(Failure::no_such_method(method)));
        }
        variant::decode(method, &request.args).map_err(Response::decode_error)
    }
}

/// A method as the client sends it: its name, and a call's reply decoder or
/// a cast's (fixed) response.
pub struct Method<T> {
    name: &'static str,
    kind: Kind<T>,
}

impl<T> std::fmt::Debug for Method<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Call(_) => "call",
            Kind::Cast(_) => "cast",
        };
        f.debug_struct("Method")
            .field("name", &self.name)
            .field("kind", &kind)
            .finish()
    }
}

enum Kind<T> {
    Call(fn(Outcome) -> Result<T, Error>),
    Cast(T),
}

impl<T> Method<T> {
    /// A call to `name`: the caller waits for the reply and reads it with
    /// `decode`.
    pub fn call(name: &'static str, decode: fn(Outcome) -> Result<T, Error>) -> Self {
        Method {
            name,
            kind: Kind::Call(decode),
        }
    }

    /// A cast to `name`: no reply; once the broker has the request, the
    /// response is `sent`.
    pub fn cast(name: &'static str, sent: T) -> Self {
        Method {
            name,
            kind: Kind::Cast(sent),
        }
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// A call's reply, still encoded: its value, or the server's failure.
#[derive(Debug)]
pub struct Outcome {
    codec: Codec,
    outcome: Result<Bytes, Failure>,
}

impl Outcome {
    pub(crate) fn new(codec: Codec, outcome: Result<Bytes, Failure>) -> Self {
        Outcome { codec, outcome }
    }

    /// The class of the server's failure, if it failed.
    pub(crate) fn failure_class(&self) -> Option<&str> {
        self.outcome.as_ref().err().map(|f| f.class.as_str())
    }

    /// The result of a method returning `T`.
    pub fn value<T: DeserializeOwned>(self) -> Result<T, Error> {
        match self.outcome {
            Ok(value) => self.codec.decode_value(&value),
            Err(failure) => Err(Error::from_failure(failure)),
        }
    }

    /// The result of a method returning `Result<T, E>`: the service's own
    /// error arrives as `Ok(Err(e))`, anything else as `Err(warren::Error)`.
    pub fn fallible<T: DeserializeOwned, E: DeserializeOwned>(self) -> Result<Result<T, E>, Error> {
        match self.outcome {
            Ok(value) => Ok(Ok(self.codec.decode_value(&value)?)),
            Err(failure) => match &failure.data {
                Some(data) => Ok(Err(self.codec.decode_value(data)?)),
                None => Err(Error::from_failure(failure)),
            },
        }
    }
}

/// A client of the service whose request enum is `R`, with the options its
/// calls use. Cheap to clone: a [`Client`] (the reply queue) and the options,
/// both shared.
///
/// Generated clients deref to it: the option builders below are theirs, and
/// return the generated client. A service method named like one of them
/// (say `timeout`) takes its place on the generated client; the option stays
/// reachable as `Stub::timeout(&client, ..)`.
pub struct Stub<R> {
    client: Client,
    options: Arc<CallOptions>,
    request: PhantomData<fn(R) -> R>,
}

impl<R> Clone for Stub<R> {
    fn clone(&self) -> Self {
        Stub {
            client: self.client.clone(),
            options: Arc::clone(&self.options),
            request: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for Stub<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub")
            .field("client", &self.client)
            .field("options", &self.options)
            .finish()
    }
}

impl<R: ServiceRequest> Stub<R> {
    /// A stub on `connection`, with a reply queue of its own (created at the
    /// first call) and the service's target.
    pub fn new(connection: &Connection) -> Self {
        Stub::from_client(Client::new(connection))
    }

    /// A stub over an existing [`Client`], sharing its reply queue, with the
    /// service's target: topic, exchange, version and namespace from
    /// [`ServiceRequest::INFO`].
    pub fn from_client(client: Client) -> Self {
        let info = R::INFO;
        let mut target = Target::new(info.topic);
        if let Some(exchange) = info.exchange {
            target.exchange = exchange.into();
        }
        target.version = Some(info.version.into());
        target.namespace = info.namespace.map(Into::into);
        Stub {
            client,
            options: Arc::new(CallOptions::new(target)),
            request: PhantomData,
        }
    }

    /// The options this stub's calls use.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// The client with other options.
    pub fn with_options(&self, options: CallOptions) -> R::Client {
        R::Client::from(Stub {
            client: self.client.clone(),
            options: Arc::new(options),
            request: PhantomData,
        })
    }

    fn with(&self, change: impl FnOnce(CallOptions) -> CallOptions) -> R::Client {
        self.with_options(change(CallOptions::clone(&self.options)))
    }

    /// The client addressing another topic than the service's own.
    pub fn topic(&self, topic: impl Into<String>) -> R::Client {
        self.with(|o| o.topic(topic))
    }

    /// The client using another control exchange than the service's own.
    pub fn exchange(&self, exchange: impl Into<String>) -> R::Client {
        self.with(|o| o.exchange(exchange))
    }

    /// The client addressing one named server (`<topic>.<server>`).
    pub fn to_server(&self, server: impl Into<String>) -> R::Client {
        self.with(|o| o.to_server(server))
    }

    /// The client whose calls wait at most `timeout` for their reply.
    pub fn timeout(&self, timeout: Duration) -> R::Client {
        self.with(|o| o.timeout(timeout))
    }

    /// The client requesting another version (`major.minor`).
    pub fn version(&self, version: impl Into<String>) -> R::Client {
        self.with(|o| o.version(version))
    }

    /// The client addressing an endpoint namespace.
    pub fn namespace(&self, namespace: impl Into<String>) -> R::Client {
        self.with(|o| o.namespace(namespace))
    }

    /// The client whose casts reach every server of the topic (calls refuse
    /// it).
    pub fn fanout(&self) -> R::Client {
        self.with(CallOptions::fanout)
    }

    /// The client sending `context` with each request.
    pub fn context(&self, context: Context) -> R::Client {
        self.with(|o| o.context(context))
    }

    /// Sends `request`: a call waits for its reply, a cast for the broker.
    /// Every typed method of a generated client goes through here, and so
    /// does its `tower::Service::call`.
    pub fn call(
        &self,
        request: R,
    ) -> impl Future<Output = Result<R::Response, Error>> + Send + 'static {
        let prepared = self.prepare(&request);
        let (client, options) = (self.client.clone(), Arc::clone(&self.options));
        async move {
            let (method, args) = prepared?;
            match method.kind {
                Kind::Call(decode) => decode(client.call_args(&options, method.name, args).await?),
                Kind::Cast(sent) => {
                    client.cast_args(&options, method.name, args).await?;
                    Ok(sent)
                }
            }
        }
    }

    /// The method of `request` and its encoded arguments.
    fn prepare(&self, request: &R) -> Result<(Method<R::Response>, Args), Error> {
        let args = Args::encode(self.client.codec(), &variant::ArgsOf(request))?;
        Ok((request.method(), args))
    }
}

impl<R: ServiceRequest> tower::Service<R> for Stub<R> {
    type Response = R::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<R::Response, Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        Box::pin(Stub::call(self, request))
    }
}

/// What a generated typed method returns if [`Stub::call`] answered with
/// another method's response: impossible unless a hand-written
/// [`ServiceRequest::method`] maps a variant to the wrong response.
#[doc(hidden)]
pub fn mismatched_response(method: &str) -> Error {
    Error::decode(format!(
        "{method}: the request enum answered with another method's response"
    ))
}
