//! The control socket behind `warren ctl`: a Unix socket in the broker's
//! data directory (`ctl.sock`, mode 0600 in a 0700 directory), so that, as
//! with `rabbitmqctl`, whoever may read the broker's files may operate it,
//! with no password.
//!
//! The protocol is private to warren: JSON lines, one request
//! (`{"command": "list_queues", "vhost": "/"}`) and one answer
//! (`{"ok": …}` or `{"error": {"code": "no_such_user", "message": …}}`)
//! each, any number per connection. [`info`] holds the listings' columns
//! and [`mod@format`] how values print, shared with the client.
//!
//! A socket file another live broker answers on is left alone (this
//! broker runs without a control socket and says so); a stale one (nobody
//! answers) is replaced.

pub mod format;
pub mod info;
mod requests;

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::BrokerHandle;

/// The control socket's file name in the data directory.
pub const SOCKET_NAME: &str = "ctl.sock";

/// The largest request line (an imported definitions file travels in one).
const MAX_REQUEST: u64 = 256 << 20;

/// A running control socket; [`stop`](Self::stop) removes its file.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    stop: watch::Sender<bool>,
}

impl ControlSocket {
    /// Listens on `path` for `warren ctl`, serving `broker`. Creates the
    /// directory (mode 0700) if missing. `Ok(None)` when another live
    /// broker answers on `path` (logged as a warning): this one runs
    /// without a control socket.
    pub async fn start(path: &Path, broker: BrokerHandle) -> io::Result<Option<Self>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                tracing::warn!(
                    path = %path.display(),
                    "another broker answers on this control socket: running without one \
                     (give --ctl-socket or --data-dir to have one)"
                );
                return Ok(None);
            }
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
        tracing::info!(path = %path.display(), "control socket (warren ctl) listening");
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(listener, broker, stopped));
        Ok(Some(Self {
            path: path.to_owned(),
            stop,
        }))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops listening and removes the socket file.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(
    listener: UnixListener,
    broker: BrokerHandle,
    mut stopped: watch::Receiver<bool>,
) {
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let broker = broker.clone();
                    tokio::spawn(serve(stream, broker, started));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            r = stopped.changed() => {
                if r.is_err() || *stopped.borrow() {
                    break;
                }
            }
        }
    }
}

/// Answers one client's requests, a line each, until it hangs up.
async fn serve(stream: UnixStream, broker: BrokerHandle, started: std::time::Instant) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut rd).take(MAX_REQUEST);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let answer = match serde_json::from_slice::<serde_json::Value>(&line) {
            Ok(request) => requests::answer(&broker, started, &request),
            Err(e) => requests::error("usage", format!("not a JSON request: {e}")),
        };
        let mut out = answer.to_string().into_bytes();
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() {
            return;
        }
        if !line.ends_with(b"\n") {
            // Over the limit, or the client half-closed: done.
            return;
        }
    }
}
