//! AMQP errors the core raises: a reply code, RabbitMQ-like text, and
//! whether they close the channel or the whole connection.

use std::fmt;

/// Reply codes (AMQP 0-9-1 constants).
pub mod code {
    /// Channel error: the message could not be routed (basic.return).
    pub const NO_ROUTE: u16 = 312;
    /// Connection error: the broker is shutting down.
    pub const CONNECTION_FORCED: u16 = 320;
    /// Connection error: unknown virtual host.
    pub const INVALID_PATH: u16 = 402;
    /// Channel error: permission denied.
    pub const ACCESS_REFUSED: u16 = 403;
    /// Channel error: no such entity.
    pub const NOT_FOUND: u16 = 404;
    /// Channel error: exclusive entity of another connection.
    pub const RESOURCE_LOCKED: u16 = 405;
    /// Channel error: inequivalent redeclare, unknown delivery tag, ….
    pub const PRECONDITION_FAILED: u16 = 406;
    /// Connection error: malformed frame.
    pub const FRAME_ERROR: u16 = 501;
    /// Connection error: a field could not be decoded.
    pub const SYNTAX_ERROR: u16 = 502;
    /// Connection error: a method not allowed now.
    pub const COMMAND_INVALID: u16 = 503;
    /// Connection error: a closed or unknown channel.
    pub const CHANNEL_ERROR: u16 = 504;
    /// Connection error: a frame that was not expected.
    pub const UNEXPECTED_FRAME: u16 = 505;
    /// Connection error: not allowed (duplicate consumer tag, …).
    pub const NOT_ALLOWED: u16 = 530;
    /// Connection error: unsupported functionality.
    pub const NOT_IMPLEMENTED: u16 = 540;
    /// Connection error: internal failure.
    pub const INTERNAL_ERROR: u16 = 541;
}

/// Whether an error closes a channel or the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `channel.close`: the connection lives on.
    Channel,
    /// `connection.close`.
    Connection,
}

/// An AMQP error, as sent in `channel.close` / `connection.close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: u16,
    /// The reply text, RabbitMQ-style (`NOT_FOUND - no queue 'x' in vhost '/'`).
    pub text: String,
    /// The class of the method that failed (0 if none).
    pub class_id: u16,
    /// The method that failed (0 if none).
    pub method_id: u16,
    /// What closes.
    pub scope: Scope,
}

fn name(code: u16) -> &'static str {
    match code {
        code::NO_ROUTE => "NO_ROUTE",
        code::CONNECTION_FORCED => "CONNECTION_FORCED",
        code::INVALID_PATH => "INVALID_PATH",
        code::ACCESS_REFUSED => "ACCESS_REFUSED",
        code::NOT_FOUND => "NOT_FOUND",
        code::RESOURCE_LOCKED => "RESOURCE_LOCKED",
        code::PRECONDITION_FAILED => "PRECONDITION_FAILED",
        code::FRAME_ERROR => "FRAME_ERROR",
        code::SYNTAX_ERROR => "SYNTAX_ERROR",
        code::COMMAND_INVALID => "COMMAND_INVALID",
        code::CHANNEL_ERROR => "CHANNEL_ERROR",
        code::UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        code::NOT_ALLOWED => "NOT_ALLOWED",
        code::NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

impl AmqpError {
    fn new(code: u16, scope: Scope, detail: impl fmt::Display) -> Self {
        AmqpError {
            code,
            text: format!("{} - {detail}", name(code)),
            class_id: 0,
            method_id: 0,
            scope,
        }
    }

    /// A channel-level error.
    pub fn channel(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(code, Scope::Channel, detail)
    }

    /// A connection-level error.
    pub fn connection(code: u16, detail: impl fmt::Display) -> Self {
        Self::new(code, Scope::Connection, detail)
    }

    /// Names the method that failed.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// The reply text, cut to the 255 bytes a short string holds.
    pub fn short_text(&self) -> &str {
        truncate(&self.text, 255)
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code)
    }
}

impl std::error::Error for AmqpError {}
