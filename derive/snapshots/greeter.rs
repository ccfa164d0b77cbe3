// The expansion of `#[warren::service]` for the service below, pretty-printed.
// Written by derive/src/snapshot.rs: `WARREN_BLESS=1 cargo test -p warren-derive`
// rewrites it, and the test fails while it differs from the macro's output.
//
// #[warren::service(topic = "greeter", version = "1.2", derive(Clone, Debug))]
// pub trait Greeter {
//     /// A call: the caller waits for the greeting.
//     async fn hello(&self, name: String) -> String;
//     /// A call whose error is the service's own type.
//     async fn divide(&self, a: i64, b: i64) -> Result<i64, DivideError>;
//     /// A cast: no reply.
//     #[cast]
//     async fn forget(&self, note: String);
// }

pub trait Greeter: ::core::marker::Send + ::core::marker::Sync + 'static {
    /// A call: the caller waits for the greeting.
    fn hello(
        &self,
        name: String,
    ) -> impl ::core::future::Future<Output = String> + ::core::marker::Send;
    /// A call whose error is the service's own type.
    fn divide(
        &self,
        a: i64,
        b: i64,
    ) -> impl ::core::future::Future<
        Output = ::core::result::Result<i64, DivideError>,
    > + ::core::marker::Send;
    /// A cast: no reply.
    fn forget(
        &self,
        note: String,
    ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send;
}
/// A request to any method of [`Greeter`]: the method's arguments as fields. What the client sends and the server dispatches, and the `tower::Service` request.
#[derive(Clone, Debug)]
#[derive(::warren::__private::serde::Serialize, ::warren::__private::serde::Deserialize)]
#[serde(crate = "::warren::__private::serde")]
#[allow(dead_code, missing_docs)]
pub enum GreeterRequest {
    /// A request for [`Greeter::hello`].
    #[serde(rename = "hello")]
    Hello { name: String },
    /// A request for [`Greeter::divide`].
    #[serde(rename = "divide")]
    Divide { a: i64, b: i64 },
    /// A request for [`Greeter::forget`].
    #[serde(rename = "forget")]
    Forget { note: String },
}
impl ::warren::rpc::ServiceRequest for GreeterRequest {
    type Response = GreeterResponse;
    type Client = GreeterClient;
    const INFO: &'static ::warren::rpc::ServiceInfo = &::warren::rpc::ServiceInfo {
        name: "Greeter",
        topic: "greeter",
        exchange: ::core::option::Option::None,
        version: "1.2",
        namespace: ::core::option::Option::None,
        methods: &["hello", "divide", "forget"],
    };
    fn method(&self) -> ::warren::rpc::Method<GreeterResponse> {
        match *self {
            Self::Hello { .. } => {
                ::warren::rpc::Method::call(
                    "hello",
                    |reply| reply.value().map(GreeterResponse::Hello),
                )
            }
            Self::Divide { .. } => {
                ::warren::rpc::Method::call(
                    "divide",
                    |reply| reply.fallible().map(GreeterResponse::Divide),
                )
            }
            Self::Forget { .. } => {
                ::warren::rpc::Method::cast("forget", GreeterResponse::Forget)
            }
        }
    }
}
/// The response to a [`GreeterRequest`].
#[allow(dead_code)]
pub enum GreeterResponse {
    /// The result of [`Greeter::hello`].
    Hello(String),
    /// The result of [`Greeter::divide`].
    Divide(::core::result::Result<i64, DivideError>),
    /// The result of [`Greeter::forget`].
    Forget,
}
/// The client of [`Greeter`]: one method per service method, each sending a [`GreeterRequest`] through `warren::rpc::Stub::call`, the path that also makes it a `tower::Service<GreeterRequest>`. It derefs to that `Stub`, whose per-call options (`.to_server()`, `.timeout()`, `.version()`, `.fanout()`, `.context()`, …) return a `GreeterClient` again.
#[derive(Clone, Debug)]
pub struct GreeterClient(::warren::rpc::Stub<GreeterRequest>);
impl GreeterClient {
    /// A client on `connection`, addressing the service's topic.
    pub fn new(connection: &::warren::Connection) -> Self {
        GreeterClient(::warren::rpc::Stub::new(connection))
    }
    /// A call: the caller waits for the greeting.
    pub async fn hello(
        &self,
        name: String,
    ) -> ::core::result::Result<String, ::warren::Error> {
        match ::warren::rpc::Stub::call(&self.0, GreeterRequest::Hello { name }).await? {
            GreeterResponse::Hello(response) => ::core::result::Result::Ok(response),
            #[allow(unreachable_patterns)]
            _ => ::core::result::Result::Err(::warren::rpc::mismatched_response("hello")),
        }
    }
    /// A call whose error is the service's own type.
    pub async fn divide(
        &self,
        a: i64,
        b: i64,
    ) -> ::core::result::Result<
        ::core::result::Result<i64, DivideError>,
        ::warren::Error,
    > {
        match ::warren::rpc::Stub::call(&self.0, GreeterRequest::Divide { a, b }).await?
        {
            GreeterResponse::Divide(response) => ::core::result::Result::Ok(response),
            #[allow(unreachable_patterns)]
            _ => {
                ::core::result::Result::Err(::warren::rpc::mismatched_response("divide"))
            }
        }
    }
    /// A cast: no reply.
    pub async fn forget(
        &self,
        note: String,
    ) -> ::core::result::Result<(), ::warren::Error> {
        match ::warren::rpc::Stub::call(&self.0, GreeterRequest::Forget { note }).await?
        {
            GreeterResponse::Forget => ::core::result::Result::Ok(()),
            #[allow(unreachable_patterns)]
            _ => {
                ::core::result::Result::Err(::warren::rpc::mismatched_response("forget"))
            }
        }
    }
}
impl ::core::convert::From<::warren::rpc::Stub<GreeterRequest>> for GreeterClient {
    fn from(stub: ::warren::rpc::Stub<GreeterRequest>) -> Self {
        GreeterClient(stub)
    }
}
impl ::core::ops::Deref for GreeterClient {
    type Target = ::warren::rpc::Stub<GreeterRequest>;
    fn deref(&self) -> &::warren::rpc::Stub<GreeterRequest> {
        &self.0
    }
}
impl ::warren::__private::tower::Service<GreeterRequest> for GreeterClient {
    type Response = GreeterResponse;
    type Error = ::warren::Error;
    type Future = <::warren::rpc::Stub<
        GreeterRequest,
    > as ::warren::__private::tower::Service<GreeterRequest>>::Future;
    fn poll_ready(
        &mut self,
        cx: &mut ::core::task::Context<'_>,
    ) -> ::core::task::Poll<::core::result::Result<(), ::warren::Error>> {
        ::warren::__private::tower::Service::poll_ready(&mut self.0, cx)
    }
    fn call(&mut self, request: GreeterRequest) -> Self::Future {
        ::warren::__private::tower::Service::call(&mut self.0, request)
    }
}
/// The server side of [`Greeter`]: wraps an implementation (shared as an `Arc`) and dispatches requests to it by method name.
pub struct GreeterServer<S> {
    service: ::std::sync::Arc<S>,
}
impl<S> ::core::clone::Clone for GreeterServer<S> {
    fn clone(&self) -> Self {
        GreeterServer {
            service: ::std::sync::Arc::clone(&self.service),
        }
    }
}
impl<S: Greeter> GreeterServer<S> {
    /// Wraps an implementation.
    pub fn new(service: S) -> Self {
        GreeterServer {
            service: ::std::sync::Arc::new(service),
        }
    }
    /// Wraps an implementation already behind an `Arc`.
    pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {
        GreeterServer { service }
    }
    /// A server builder, for middleware layers, more endpoints or a prefetch count.
    pub fn builder(self) -> ::warren::rpc::ServerBuilder {
        ::warren::rpc::ServerBuilder::new(self)
    }
    /// Declares the service's topology and serves it as `server` until
    /// the handle is shut down or dropped.
    pub async fn serve(
        self,
        connection: &::warren::Connection,
        server: &str,
    ) -> ::core::result::Result<::warren::rpc::ServerHandle, ::warren::Error> {
        self.builder().serve(connection, server).await
    }
}
impl<S: Greeter> ::warren::rpc::Dispatch for GreeterServer<S> {
    fn info(&self) -> &'static ::warren::rpc::ServiceInfo {
        <GreeterRequest as ::warren::rpc::ServiceRequest>::INFO
    }
    fn dispatch(
        &self,
        request: ::warren::rpc::Request,
    ) -> ::warren::__private::BoxFuture<'static, ::warren::rpc::Response> {
        let __warren_codec = request.codec();
        let __warren_request = match <GreeterRequest as ::warren::rpc::ServiceRequest>::from_request(
            &request,
        ) {
            ::core::result::Result::Ok(decoded) => decoded,
            ::core::result::Result::Err(failure) => {
                return ::std::boxed::Box::pin(::core::future::ready(failure));
            }
        };
        let __warren_service = ::std::sync::Arc::clone(&self.service);
        ::std::boxed::Box::pin(async move {
            match __warren_request {
                GreeterRequest::Hello { name } => {
                    ::warren::rpc::Response::value(
                        __warren_codec,
                        &__warren_service.hello(name).await,
                    )
                }
                GreeterRequest::Divide { a, b } => {
                    let __warren_result = __warren_service.divide(a, b).await;
                    #[allow(clippy::needless_borrow)]
                    let __warren_class = {
                        #[allow(unused_imports)]
                        use ::warren::rpc::{ViaRemoteException as _, ViaTypeName as _};
                        (&::warren::rpc::ClassOf::<DivideError>::new()).class_of()
                    };
                    ::warren::rpc::Response::result_as(
                        __warren_codec,
                        &__warren_result,
                        __warren_class,
                    )
                }
                GreeterRequest::Forget { note } => {
                    ::warren::rpc::Response::value(
                        __warren_codec,
                        &__warren_service.forget(note).await,
                    )
                }
            }
        })
    }
}
