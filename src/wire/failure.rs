//! A failure raised on the server side of a call, as it travels.

use serde::{Deserialize, Serialize};

/// What went wrong on the server: the exception class and module (oslo's
/// vocabulary), a message, the traceback lines, and, for a service's own
/// error type, its encoded value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The failure's class, e.g. `NoSuchMethod`, `ValueError`, or a Rust
    /// error type's name.
    pub class: String,
    /// The module the class lives in (`builtins`,
    /// `oslo_messaging.rpc.dispatcher`, `warren`, …).
    pub module: String,
    /// A human-readable message.
    pub message: String,
    /// Traceback lines, when the server had any.
    #[serde(default)]
    pub tb: Vec<String>,
    /// The service's own error value, encoded in the reply's codec.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<u8>>,
}

impl Failure {
    /// A failure without traceback or data.
    pub fn new(
        class: impl Into<String>,
        module: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Failure {
            class: class.into(),
            module: module.into(),
            message: message.into(),
            tb: Vec::new(),
            data: None,
        }
    }

    /// oslo.messaging's `NoSuchMethod`, worded as oslo words it.
    pub fn no_such_method(method: &str) -> Self {
        Failure::new(
            "NoSuchMethod",
            "oslo_messaging.rpc.dispatcher",
            format!("Endpoint does not support RPC method {method}"),
        )
    }

    /// oslo.messaging's `UnsupportedVersion`, worded as oslo words it.
    pub fn unsupported_version(version: &str, method: &str) -> Self {
        Failure::new(
            "UnsupportedVersion",
            "oslo_messaging.rpc.dispatcher",
            format!("Endpoint does not support RPC version {version}. Attempted method: {method}"),
        )
    }

    /// A request the server could not decode.
    pub fn decode(message: impl Into<String>) -> Self {
        Failure::new(super::DECODE_FAILURE_CLASS, super::WARREN_MODULE, message)
    }
}
