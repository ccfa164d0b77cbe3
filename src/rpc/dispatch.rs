//! The server side's vocabulary: what a dispatcher receives ([`Request`]),
//! what it answers ([`Response`]), and the [`Dispatch`] trait generated
//! `<Trait>Server`s implement.
//!
//! Requests reach dispatchers through a `tower` stack: [`Endpoints`] at the
//! bottom applies oslo's rules (version, namespace, method lookup, no `_`
//! methods) and turns panics into failures; middleware layers wrap it.

use std::fmt::Display;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Serialize;

use super::exception::type_path;
use super::Version;
use crate::wire::{Codec, Failure, WARREN_MODULE};
use crate::{BoxError, Error};

/// Static facts about a service, written by `#[warren::service]`.
#[derive(Debug)]
pub struct ServiceInfo {
    /// The trait's name.
    pub name: &'static str,
    /// The topic it serves.
    pub topic: &'static str,
    /// Its control exchange, if it names one.
    pub exchange: Option<&'static str>,
    /// Its version (`major.minor`).
    pub version: &'static str,
    /// Its namespace, if any.
    pub namespace: Option<&'static str>,
    /// The methods it dispatches.
    pub methods: &'static [&'static str],
}

/// A request as a server dispatches it: the one request type, decoded once
/// from the message (see [`crate::wire::Request`]).
pub use crate::wire::Request;

/// A dispatcher's answer: an encoded value or a failure.
#[derive(Debug, Clone)]
pub struct Response {
    outcome: Result<Bytes, Failure>,
}

impl Response {
    /// A successful result.
    pub fn value<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Self {
        match codec.encode_value(value) {
            Ok(bytes) => Response {
                outcome: Ok(bytes.into()),
            },
            Err(e) => Response::failure(Failure::new("EncodeError", WARREN_MODULE, e.to_string())),
        }
    }

    /// The result of a method returning `Result<T, E>`: `E` travels typed,
    /// with its `Display` as the failure's message and its type name as the
    /// class.
    pub fn result<T, E>(codec: Codec, result: &Result<T, E>) -> Self
    where
        T: Serialize,
        E: Serialize + Display,
    {
        Response::result_as(codec, result, type_path::<E>())
    }

    /// Like [`Response::result`], with the failure's (module, class) given
    /// (generated code passes the error's [`super::RemoteException`] class).
    pub fn result_as<T, E>(codec: Codec, result: &Result<T, E>, class: (String, String)) -> Self
    where
        T: Serialize,
        E: Serialize + Display,
    {
        match result {
            Ok(value) => Response::value(codec, value),
            Err(error) => {
                let (module, class) = class;
                let mut failure = Failure::new(class, module, error.to_string());
                match codec.encode_value(error) {
                    Ok(data) => failure.data = Some(data),
                    Err(e) => {
                        failure.message = format!("{} (and cannot encode it: {e})", failure.message)
                    }
                }
                Response::failure(failure)
            }
        }
    }

    /// A failure.
    pub fn failure(failure: Failure) -> Self {
        Response {
            outcome: Err(failure),
        }
    }

    /// The arguments of a request could not be decoded.
    pub fn decode_error(error: Error) -> Self {
        Response::failure(Failure::decode(error.to_string()))
    }

    /// The outcome.
    pub fn outcome(&self) -> &Result<Bytes, Failure> {
        &self.outcome
    }

    /// The outcome, owned.
    pub fn into_outcome(self) -> Result<Bytes, Failure> {
        self.outcome
    }
}

/// A service's server side: routes a request to the method it names.
/// Implemented by the `<Trait>Server` that `#[warren::service]` generates.
pub trait Dispatch: Send + Sync + 'static {
    /// Static facts about the service.
    fn info(&self) -> &'static ServiceInfo;

    /// Runs the method `request` names. Called only for methods in
    /// [`ServiceInfo::methods`].
    fn dispatch(&self, request: Request) -> BoxFuture<'static, Response>;
}

/// The bottom of a server's `tower` stack: several endpoints on one target,
/// tried in order with oslo.messaging's rules.
#[derive(Clone)]
pub struct Endpoints {
    endpoints: Arc<[Arc<dyn Dispatch>]>,
}

impl Endpoints {
    /// The endpoints, in the order they are tried.
    pub fn new(endpoints: Vec<Arc<dyn Dispatch>>) -> Self {
        Endpoints {
            endpoints: endpoints.into(),
        }
    }

    /// Picks the endpoint for a request, and the method's name as the
    /// endpoint spells it, or the failure oslo would raise.
    fn select(&self, request: &Request) -> Result<(&Arc<dyn Dispatch>, &'static str), Failure> {
        let method = request.method.as_str();
        let requested = request.version.as_deref().unwrap_or("1.0");
        if method.starts_with('_') {
            return Err(Failure::no_such_method(method));
        }
        let Ok(wanted) = requested.parse::<Version>() else {
            return Err(Failure::unsupported_version(requested, method));
        };
        let mut candidates = self
            .endpoints
            .iter()
            .filter(|e| {
                let info = e.info();
                info.namespace == request.namespace.as_deref()
                    && info
                        .version
                        .parse::<Version>()
                        .map(|v| v.can_serve(wanted))
                        .unwrap_or(false)
            })
            .peekable();
        if candidates.peek().is_none() {
            return Err(Failure::unsupported_version(requested, method));
        }
        candidates
            .find_map(|e| {
                let name = e.info().methods.iter().find(|m| **m == method)?;
                Some((e, *name))
            })
            .ok_or_else(|| Failure::no_such_method(method))
    }
}

impl tower::Service<Request> for Endpoints {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (endpoint, method) = match self.select(&request) {
            Ok((endpoint, method)) => (endpoint.clone(), method),
            Err(failure) => return Box::pin(async move { Ok(Response::failure(failure)) }),
        };
        let context = request.context.clone();
        let call = context.scope(endpoint.dispatch(request));
        Box::pin(async move {
            match AssertUnwindSafe(call).catch_unwind().await {
                Ok(response) => Ok(response),
                Err(panic) => {
                    let message = panic_message(&panic);
                    tracing::error!(%method, %message, "service method panicked");
                    Ok(Response::failure(Failure::new(
                        "Panic",
                        WARREN_MODULE,
                        format!("{method} panicked: {message}"),
                    )))
                }
            }
        })
    }
}

/// What a caught panic said (its `&str` or `String` payload).
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
