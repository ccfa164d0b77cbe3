//! Typed AMQP errors raised by the broker core.
//!
//! Every failing core operation returns an [`AmqpError`] carrying the AMQP reply
//! code, a RabbitMQ-style reply text and whether it closes the channel or the connection.

use std::fmt;

/// Whether an error closes only the channel (soft error) or the whole connection (hard error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorScope {
    /// Soft error: `channel.close` is sent, the connection stays open.
    Channel,
    /// Hard error: `connection.close` is sent.
    Connection,
}

/// AMQP 0-9-1 reply codes used by the broker.
pub mod codes {
    /// 312 NO_ROUTE (basic.return).
    pub const NO_ROUTE: u16 = 312;
    /// 320 CONNECTION_FORCED.
    pub const CONNECTION_FORCED: u16 = 320;
    /// 403 ACCESS_REFUSED.
    pub const ACCESS_REFUSED: u16 = 403;
    /// 404 NOT_FOUND.
    pub const NOT_FOUND: u16 = 404;
    /// 405 RESOURCE_LOCKED.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// 406 PRECONDITION_FAILED.
    pub const PRECONDITION_FAILED: u16 = 406;
    /// 501 FRAME_ERROR.
    pub const FRAME_ERROR: u16 = 501;
    /// 502 SYNTAX_ERROR.
    pub const SYNTAX_ERROR: u16 = 502;
    /// 503 COMMAND_INVALID.
    pub const COMMAND_INVALID: u16 = 503;
    /// 504 CHANNEL_ERROR.
    pub const CHANNEL_ERROR: u16 = 504;
    /// 505 UNEXPECTED_FRAME.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// 530 NOT_ALLOWED.
    pub const NOT_ALLOWED: u16 = 530;
    /// 540 NOT_IMPLEMENTED.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// 541 INTERNAL_ERROR.
    pub const INTERNAL_ERROR: u16 = 541;
}

/// Symbolic RabbitMQ name of a reply code (`NOT_FOUND`, ...).
pub(crate) fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => "UNKNOWN",
    }
}

fn scope_of(code: u16) -> ErrorScope {
    match code {
        311..=313 | 403..=406 => ErrorScope::Channel,
        _ => ErrorScope::Connection,
    }
}

/// An AMQP error as it would be carried by `channel.close` / `connection.close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpError {
    /// AMQP reply code (404, 406, 504, ...).
    pub code: u16,
    /// Reply text, RabbitMQ style: `"NOT_FOUND - no queue 'q' in vhost '/'"`.
    pub text: String,
    /// Class id of the method that caused the error (0 if none). The core
    /// leaves it 0: the TCP server sets it from the frame that failed.
    pub class_id: u16,
    /// Method id of the method that caused the error (0 if none); set as
    /// [`class_id`](Self::class_id) is.
    pub method_id: u16,
    /// Whether the channel or the whole connection must be closed.
    pub scope: ErrorScope,
}

impl AmqpError {
    /// Build an error with the given code; the text gets the `NAME - ` prefix and the
    /// scope is derived from the code (soft codes close the channel).
    pub(crate) fn new(code: u16, detail: impl fmt::Display) -> Self {
        let mut text = format!("{} - {}", code_name(code), detail);
        truncate_utf8(&mut text, 255);
        Self {
            code,
            text,
            class_id: 0,
            method_id: 0,
            scope: scope_of(code),
        }
    }

    /// Attach the class and method id of the failing method (keeps existing
    /// non-zero ids): the server's dispatcher does, from the frame it handled.
    #[must_use]
    pub(crate) fn during(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// 404 NOT_FOUND.
    pub(crate) fn not_found(detail: impl fmt::Display) -> Self {
        Self::new(codes::NOT_FOUND, detail)
    }
    /// 406 PRECONDITION_FAILED.
    pub(crate) fn precondition(detail: impl fmt::Display) -> Self {
        Self::new(codes::PRECONDITION_FAILED, detail)
    }
    /// 403 ACCESS_REFUSED.
    pub(crate) fn access_refused(detail: impl fmt::Display) -> Self {
        Self::new(codes::ACCESS_REFUSED, detail)
    }
    /// 405 RESOURCE_LOCKED.
    pub(crate) fn resource_locked(detail: impl fmt::Display) -> Self {
        Self::new(codes::RESOURCE_LOCKED, detail)
    }
    /// 504 CHANNEL_ERROR (connection level).
    pub(crate) fn channel_error(detail: impl fmt::Display) -> Self {
        Self::new(codes::CHANNEL_ERROR, detail)
    }
    /// 503 COMMAND_INVALID (connection level).
    pub(crate) fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::new(codes::COMMAND_INVALID, detail)
    }
    /// 540 NOT_IMPLEMENTED (connection level).
    pub(crate) fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::new(codes::NOT_IMPLEMENTED, detail)
    }
    /// 530 NOT_ALLOWED (connection level).
    pub(crate) fn not_allowed(detail: impl fmt::Display) -> Self {
        Self::new(codes::NOT_ALLOWED, detail)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code)
    }
}

impl std::error::Error for AmqpError {}

/// Truncate a string in place to at most `max` bytes on a char boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}
