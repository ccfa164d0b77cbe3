//! The RPC layer: what a service author touches.
//!
//! [`Client`] makes calls and casts to a [`Target`]; [`ServerBuilder`] serves
//! [`Dispatch`] endpoints on one. `#[warren::service]` generates typed stubs
//! and dispatchers on top of both: a request enum implementing
//! [`ServiceRequest`], a client that derefs to the generic [`Stub`] (one call
//! path, the per-call options, the `tower::Service`), and a server
//! implementing [`Dispatch`]. Everything here reaches the broker only
//! through [`crate::transport::Transport`].

mod client;
mod context;
mod dispatch;
mod duplicates;
mod exception;
mod id_key;
mod options;
mod reply_queue;
mod server;
mod stub;
mod target;
mod topology;
mod trace;
mod variant;
mod version;

pub use client::Client;
pub use context::Context;
pub(crate) use dispatch::panic_message;
pub use dispatch::{Dispatch, Endpoints, Request, Response, ServiceInfo};
pub use duplicates::{DEFAULT_DUPLICATE_WINDOW, MAX_REMEMBERED_IDS};
pub use exception::RemoteException;
#[doc(hidden)]
pub use exception::{ClassOf, ViaRemoteException, ViaTypeName};
pub use options::{CallOptions, DEFAULT_TIMEOUT};
pub use server::{
    DispatchService, ServerBuilder, ServerHandle, DEFAULT_DELIVERY_LIMIT, DEFAULT_GRACE_PERIOD,
    DEFAULT_PREFETCH, POISON_FAILURE_CLASS,
};
#[doc(hidden)]
pub use stub::mismatched_response;
pub use stub::{Method, Outcome, ServiceRequest, Stub};
pub use target::{fanout_exchange, server_queue, Target, DEFAULT_EXCHANGE};
pub(crate) use topology::declare_topic_queues;
pub use topology::{Topology, DEFAULT_TRANSIENT_TTL_MS};
pub use trace::{TraceContext, TRACEPARENT, TRACESTATE};
pub use version::Version;
