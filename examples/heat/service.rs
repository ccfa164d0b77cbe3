//! The service the classic oslo.messaging demo runs between heat-api and
//! heat-engine, shared by the `heat`, `heat_engine` and `heat_api` examples.

/// heat-engine's RPC API, as the Python demo defines it.
#[warren::service(topic = "engine", version = "1.0", exchange = "heat")]
pub trait Engine {
    /// Answers `(seqid, hostname, "I'm fine!")`.
    async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String);
}

/// The engine: reports this machine's hostname.
pub struct HeatEngine {
    pub hostname: String,
}

impl HeatEngine {
    /// An engine named after this machine.
    pub fn new() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".to_owned());
        HeatEngine { hostname }
    }
}

impl Engine for HeatEngine {
    async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String) {
        tracing::info!(seqid, %host, %req, "health_check");
        (seqid, self.hostname.clone(), "I'm fine!".to_owned())
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what `kill`, systemd and
/// container runtimes send), whichever comes first.
#[allow(dead_code)] // heat_engine waits for it; heat runs to completion.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGINT/SIGTERM; waiting for Ctrl-C only")
            }
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot wait for Ctrl-C; stopping");
    }
}

/// Logs to stderr at `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
