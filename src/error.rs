//! warren's one public error type: opaque, with kind predicates.
//!
//! Transport failures, timeouts, decode failures and failures raised by a
//! remote server are distinct kinds of [`Error`]. A service's *own* error type
//! (the `E` of a method returning `Result<T, E>`) never becomes an `Error`: it
//! reaches the caller as `E`.

use std::fmt;

use crate::wire::Failure;

/// A boxed error, the currency of `tower` middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error returned by warren's clients, servers and transports.
///
/// Match on it with the predicates (`is_timeout()`, `is_transport()`, …);
/// failures raised on the server side expose their details through
/// [`Error::remote`].
pub struct Error {
    kind: Kind,
    message: String,
    remote: Option<Box<Failure>>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Timeout,
    Transport,
    OutcomeUnknown,
    Remote,
    Decode,
    NoSuchMethod,
    UnsupportedVersion,
    Config,
    Returned,
    Refused,
    NotFound,
}

impl Error {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            remote: None,
            source: None,
        }
    }

    /// The `kind` label this error is counted under in the RPC metrics.
    pub(crate) fn kind_label(&self) -> &'static str {
        match self.kind {
            Kind::Timeout => "timeout",
            Kind::Transport => "transport",
            Kind::OutcomeUnknown => "outcome_unknown",
            Kind::Remote => self
                .remote
                .as_ref()
                .map_or("remote", |f| crate::metrics::failure_kind(&f.class)),
            Kind::Decode => "decode",
            Kind::NoSuchMethod => "no_such_method",
            Kind::UnsupportedVersion => "unsupported_version",
            Kind::Config => "config",
            Kind::Returned => "returned",
            Kind::Refused => "refused",
            Kind::NotFound => "not_found",
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Self::new(Kind::Timeout, message)
    }

    pub(crate) fn transport(message: impl Into<String>) -> Self {
        Self::new(Kind::Transport, message)
    }

    /// The connection broke after the request was sent and before its
    /// reply came: the server may or may not have run it.
    pub(crate) fn outcome_unknown(message: impl Into<String>) -> Self {
        Self::new(Kind::OutcomeUnknown, message)
    }

    pub(crate) fn decode(message: impl Into<String>) -> Self {
        Self::new(Kind::Decode, message)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }

    /// The broker returned a mandatory message: no queue took it.
    pub(crate) fn returned(message: impl Into<String>) -> Self {
        Self::new(Kind::Returned, message)
    }

    /// The broker refused a message: a publisher-confirm nack, or a
    /// channel closed over it (RabbitMQ's 406 for a body over its
    /// `max_message_size`).
    pub(crate) fn refused(message: impl Into<String>) -> Self {
        Self::new(Kind::Refused, message)
    }

    /// The broker has no such queue or exchange (AMQP 404).
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, message)
    }

    /// An error raised by the server side of a call, classified by the
    /// failure's class (oslo.messaging's `NoSuchMethod`, `UnsupportedVersion`,
    /// warren's decode failure, or anything else as a remote failure).
    pub(crate) fn from_failure(failure: Failure) -> Self {
        let kind = match (failure.class.as_str(), failure.module.as_str()) {
            ("NoSuchMethod", _) => Kind::NoSuchMethod,
            ("UnsupportedVersion", _) => Kind::UnsupportedVersion,
            (crate::wire::DECODE_FAILURE_CLASS, crate::wire::WARREN_MODULE) => Kind::Decode,
            _ => Kind::Remote,
        };
        Error {
            kind,
            message: format!("{}: {}", failure.class, failure.message),
            remote: Some(Box::new(failure)),
            source: None,
        }
    }

    /// The call got no reply within its timeout (no server listening, or a
    /// server too slow).
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The broker could not be reached, refused an operation, or the
    /// connection to it broke. Unless [`is_outcome_unknown`](Self::is_outcome_unknown)
    /// is also true, the request was not delivered: retrying it cannot run
    /// it twice.
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport | Kind::OutcomeUnknown)
    }

    /// The connection broke while a call was in flight: its request was
    /// sent, but its reply cannot come (the reply queue went with the
    /// connection). The server may have run the call, may run it later (a
    /// request left unacknowledged is redelivered to another server), or
    /// may never run it. Retry only what is idempotent, or what the server
    /// deduplicates (warren's servers drop a request id seen within their
    /// duplicate window). Implies [`is_transport`](Self::is_transport).
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind == Kind::OutcomeUnknown
    }

    /// The server raised a failure that is not one of the more specific kinds
    /// below: a panic in the service method, an error from middleware, or an
    /// exception from a Python server. See [`Error::remote`] for details.
    pub fn is_remote(&self) -> bool {
        self.kind == Kind::Remote
    }

    /// A message could not be decoded: a reply this side received, or (when
    /// [`Error::remote`] is set) the request the server received.
    pub fn is_decode(&self) -> bool {
        self.kind == Kind::Decode
    }

    /// The server serves the target but has no such method.
    pub fn is_no_such_method(&self) -> bool {
        self.kind == Kind::NoSuchMethod
    }

    /// No server endpoint accepts the requested version and namespace.
    pub fn is_unsupported_version(&self) -> bool {
        self.kind == Kind::UnsupportedVersion
    }

    /// The request was invalid before anything was sent: a bad URL, a call
    /// marked fanout, an unparsable version.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// A message published with `mandatory` came back: no queue was bound
    /// to take it (for a publish straight to a queue: the queue does not
    /// exist). Nothing was delivered; the message was not stored.
    pub fn is_returned(&self) -> bool {
        self.kind == Kind::Returned
    }

    /// The broker refused a message it received: it nacked the publish
    /// (publisher confirms), or closed the channel over it (a body larger
    /// than the broker's `max_message_size`). Nothing was stored.
    pub fn is_refused(&self) -> bool {
        self.kind == Kind::Refused
    }

    /// The broker has no queue or exchange of that name (AMQP 404
    /// `NOT_FOUND`), e.g. a passive check of a queue nobody declared.
    pub fn is_not_found(&self) -> bool {
        self.kind == Kind::NotFound
    }

    /// The failure as the server described it (class, module, message,
    /// traceback), when this error came from a server.
    pub fn remote(&self) -> Option<&Failure> {
        self.remote.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("warren::Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(remote) = &self.remote {
            d.field("remote", remote);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Timeout => "timed out",
            Kind::Transport => "transport error",
            Kind::OutcomeUnknown => "outcome unknown",
            Kind::Remote => "remote failure",
            Kind::Decode => "decode error",
            Kind::NoSuchMethod => "no such method",
            Kind::UnsupportedVersion => "unsupported version",
            Kind::Config => "invalid configuration",
            Kind::Returned => "message returned",
            Kind::Refused => "message refused",
            Kind::NotFound => "not found",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
