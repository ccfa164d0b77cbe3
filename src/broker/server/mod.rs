//! The AMQP 0-9-1 TCP server: a thin translator between frames and core calls.
//!
//! `listener` accepts sockets, `connection` runs the handshake and reads frames,
//! `channel` maps channel methods to core calls and `writer` encodes output.

pub(crate) mod channel;
pub(crate) mod connection;
pub(crate) mod listener;
pub(crate) mod writer;

/// Largest frame the server accepts and proposes (`connection.tune`).
pub const FRAME_MAX: u32 = 131_072;
/// Highest channel number the server proposes.
pub const CHANNEL_MAX: u16 = 2047;
/// Heartbeat interval the server proposes, in seconds.
pub const HEARTBEAT: u16 = 60;
