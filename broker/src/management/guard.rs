//! Limits on the management listener's connections, which share the
//! process's file descriptors with the broker: at most
//! [`MAX_CONNECTIONS`] at once (more wait in the kernel's accept backlog,
//! not in memory), and a connection without traffic either way for
//! [`IDLE_TIMEOUT`] (a slow or silent client, or an idle keep-alive) is
//! closed. `axum::serve` has neither setting, so the listener handed to it
//! applies them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Most management connections open at once.
pub const MAX_CONNECTIONS: usize = 128;

/// How long a management connection may go without traffic before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`TcpListener`] that accepts only while fewer than its limit of
/// connections are open.
pub(crate) struct GuardedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
}

impl GuardedListener {
    pub(crate) fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            idle,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // The semaphore is never closed; should it be, accept anyway.
            let permit = self.permits.clone().acquire_owned().await.ok();
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let guarded = GuardedStream {
                        stream,
                        idle: self.idle,
                        deadline: Box::pin(tokio::time::sleep(self.idle)),
                        _permit: permit,
                    };
                    return (guarded, addr);
                }
                Err(e) => {
                    // Out of descriptors and the like: back off, as axum does.
                    tracing::warn!(error = %e, "management listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: holds its place among the open ones, and fails
/// reads once the client has been silent for the idle timeout.
pub(crate) struct GuardedStream {
    stream: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl GuardedStream {
    /// Traffic either way: the idle clock starts again (so a slow response
    /// does not count against the client's next request).
    fn touch(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "management connection idle for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(_))) {
            self.touch();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(_))) {
            self.touch();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(max: usize, idle: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let guarded = GuardedListener::new(listener, max, idle);
        let addr = axum::serve::Listener::local_addr(&guarded).expect("addr");
        let app = axum::Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(guarded, app).await });
        addr
    }

    async fn get_root(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_until_one_closes() {
        let addr = server(2, Duration::from_secs(60)).await;
        let mut a = TcpStream::connect(addr).await.expect("a");
        let mut b = TcpStream::connect(addr).await.expect("b");
        assert!(get_root(&mut a).await.ends_with("ok"));
        assert!(get_root(&mut b).await.ends_with("ok"));
        // The third connects (the kernel's backlog) but is not served…
        let mut c = TcpStream::connect(addr).await.expect("c");
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let waited = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "a third connection was served at a limit of two"
        );
        // …until one of the two closes.
        drop(a);
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("served once a place is free")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_frees_its_place() {
        let addr = server(1, Duration::from_millis(200)).await;
        let mut silent = TcpStream::connect(addr).await.expect("silent");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
            .await
            .expect("closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0, "the server closed the silent connection");
        let mut next = TcpStream::connect(addr).await.expect("next");
        assert!(get_root(&mut next).await.ends_with("ok"));
    }
}
