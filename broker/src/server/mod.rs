//! The AMQP 0-9-1 TCP server: a thin translator between frames and core calls.
//!
//! `listener` accepts sockets, `connection` runs the handshake and reads frames,
//! `channel` maps channel methods to core calls, `writer` encodes output from the
//! bounded `outbound` queue, and `flow` blocks publishers while memory is short.
//! `tables` checks field tables before they are parsed, `limits` holds what
//! peers may do, `tls` the TLS listeners' configuration.

pub(crate) mod channel;
pub(crate) mod connection;
pub(crate) mod flow;
pub mod limits;
pub(crate) mod listener;
pub(crate) mod outbound;
pub(crate) mod tables;
pub mod tls;
pub(crate) mod writer;

pub use limits::Limits;
pub use tls::{TlsConfig, TlsError};

/// Largest frame the server accepts and proposes (`connection.tune`).
pub const FRAME_MAX: u32 = 131_072;
/// Highest channel number the server proposes.
pub const CHANNEL_MAX: u16 = 2047;
/// Heartbeat interval the server proposes, in seconds.
pub const HEARTBEAT: u16 = 60;

/// Runs one connection over an in-memory stream fed with `input`, then
/// returns what the broker wrote back. For the fuzz target
/// (`fuzz/fuzz_targets/connection.rs`): a panic in the connection state
/// machine is re-raised here so the fuzzer sees it.
#[doc(hidden)]
pub async fn serve_bytes(core: std::sync::Arc<super::core::Core>, input: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(1 << 16);
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let admission = limits::Admission::new(Limits::default());
    let task = tokio::spawn(connection::serve(
        server, None, None, core, admission, stopped,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        // The broker may stop reading early (it closed the connection).
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
    });
    let mut output = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        rd.read_to_end(&mut output),
    )
    .await;
    let _ = writer.await;
    if let Err(e) = task.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    output
}
