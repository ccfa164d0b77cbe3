//! Per-call options a stub carries: the target, a timeout, a context.

use std::time::Duration;

use super::{Context, Target};

/// How long a call waits for its reply unless told otherwise (oslo's
/// `rpc_response_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The options of the calls and casts a stub makes. Generated clients expose
/// them through builder methods (`.to_server()`, `.timeout()`, …).
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Where requests go.
    pub target: Target,
    /// How long a call waits for its reply.
    pub timeout: Duration,
    /// The context sent with each request.
    pub context: Context,
}

impl CallOptions {
    /// Options for `target` with the default timeout and an empty context.
    pub fn new(target: Target) -> Self {
        CallOptions {
            target,
            timeout: DEFAULT_TIMEOUT,
            context: Context::default(),
        }
    }

    /// Addresses another topic than the service's own.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.target.topic = topic.into();
        self
    }

    /// Uses another control exchange than the service's own.
    pub fn exchange(mut self, exchange: impl Into<String>) -> Self {
        self.target.exchange = exchange.into();
        self
    }

    /// Addresses one named server (`<topic>.<server>`).
    pub fn to_server(mut self, server: impl Into<String>) -> Self {
        self.target.server = Some(server.into());
        self
    }

    /// Sets the call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Requests a version (`major.minor`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.target.version = Some(version.into());
        self
    }

    /// Addresses an endpoint namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.target.namespace = Some(namespace.into());
        self
    }

    /// Makes casts go to every server of the topic (calls refuse this).
    pub fn fanout(mut self) -> Self {
        self.target.fanout = true;
        self
    }

    /// Sends this context with each request.
    pub fn context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// The time a call may wait: the timeout, or less if the deadline of
    /// these options' context, or of the request being served
    /// ([`Context::current`], when called inside a server method), comes
    /// first. A call made while serving a request thus inherits what is left
    /// of its caller's budget; a task spawned with `tokio::spawn` does not
    /// carry the current context, so work meant to outlive the request can
    /// escape it that way.
    pub fn effective_timeout(&self) -> Duration {
        [self.context.remaining(), Context::current_remaining()]
            .into_iter()
            .flatten()
            .fold(self.timeout, Duration::min)
    }
}
