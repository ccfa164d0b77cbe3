//! `warren broker`: the embedded broker as a standalone AMQP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use warren_broker::control::ControlSocket;
use warren_broker::core::PasswordHash;
use warren_broker::definitions::Definitions;
use warren_broker::server::TlsConfig;

/// `warren broker` options.
#[derive(Args)]
pub struct BrokerArgs {
    /// Address to listen on (repeatable, e.g. also `[::1]:5672`). Default
    /// 127.0.0.1:5672, unless only --tls-listen is given.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Address to listen on for AMQP over TLS (repeatable; amqps, usually
    /// port 5671), with --tls-cert and --tls-key. SIGHUP reads the
    /// certificate files again without dropping connections.
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Vec<SocketAddr>,
    /// The TLS listeners' certificate chain (PEM, leaf first).
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    tls_cert: Option<PathBuf>,
    /// The TLS listeners' private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: clients are
    /// asked for one, and a client whose certificate checks out may log in
    /// with EXTERNAL as the certificate's common name (the user must exist).
    #[arg(long, value_name = "PEM", requires = "tls_listen")]
    tls_ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate (RabbitMQ's
    /// fail_if_no_peer_cert); needs --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls_verify_peer: bool,
    /// A user as `name:password` (repeatable; default guest:guest). Other
    /// processes see command lines: prefer `--users-file` or the variable.
    #[arg(
        long = "user",
        value_name = "NAME:PASSWORD",
        env = "WARREN_BROKER_USER",
        hide_env_values = true
    )]
    users: Vec<String>,
    /// A file of users, one `name:password` a line (blank lines and `#`
    /// comments skipped).
    #[arg(long, value_name = "PATH")]
    users_file: Option<PathBuf>,
    /// A user by its password hash, `name:hash` (repeatable), in RabbitMQ's
    /// SHA-256 scheme: the `password_hash` of `rabbitmqctl export_definitions`.
    #[arg(long = "user-hash", value_name = "NAME:HASH")]
    user_hashes: Vec<String>,
    /// An extra virtual host (repeatable; `/` always exists).
    #[arg(long = "vhost")]
    vhosts: Vec<String>,
    /// Lets a user use a vhost, on names matching the configure, write and
    /// read regular expressions (repeatable), as RabbitMQ's set_permissions.
    /// Users other than the default guest may use nothing without one.
    #[arg(long = "permission", num_args = 5, value_names = ["USER", "VHOST", "CONFIGURE", "WRITE", "READ"])]
    permissions: Vec<String>,
    /// Close a channel whose delivery stays unacknowledged longer than this
    /// many milliseconds (RabbitMQ's consumer_timeout; 0: never).
    #[arg(long, value_name = "MS", default_value_t = 1_800_000)]
    consumer_timeout: u64,
    /// Block publishers while the broker's memory is above SIZE: bytes
    /// with a unit (`512MiB`, `2GB`) or a fraction of the memory available
    /// (`0.4`, RabbitMQ 3.x's default; RAM or the cgroup limit). `0` blocks
    /// every publisher.
    #[arg(long, value_name = "SIZE", default_value = "0.4")]
    memory_high_watermark: warren_broker::core::MemoryWatermark,
    /// Largest message body clients may publish, in bytes (RabbitMQ's
    /// max_message_size; at most 536870912).
    #[arg(long, value_name = "BYTES", default_value_t = warren_broker::server::limits::MAX_MESSAGE_SIZE)]
    max_message_size: u64,
    /// Most client connections open at once (RabbitMQ's max_connections);
    /// unlimited when unset.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Keep durable exchanges, queues, bindings, users, vhosts, permissions
    /// and persistent messages here, beside the control socket (`ctl.sock`,
    /// for `warren ctl`). Default: `$XDG_DATA_HOME/warren`, else
    /// `~/.local/share/warren`. One broker at a time may use a directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk: every restart starts empty. (With --data-dir,
    /// the directory holds only the control socket.)
    #[arg(long)]
    in_memory: bool,
    /// Start even if the data directory's log is damaged (not just a torn
    /// last write, which is always dropped): truncate it at the damage,
    /// logging what is lost. Without it such a broker refuses to start.
    #[arg(long, conflicts_with = "in_memory")]
    repair: bool,
    /// Block publishers while the data directory's disk has less free space
    /// than SIZE (RabbitMQ's disk_free_limit): bytes or a size with a unit
    /// (`50MB`, `1GB`, `512MiB`).
    #[arg(long, value_name = "SIZE", default_value = "50MB", value_parser = parse_size)]
    disk_free_limit: u64,
    /// The control socket's path, instead of `ctl.sock` in the data
    /// directory. A socket another live broker answers on is left alone
    /// (this broker then runs without one, and says so).
    #[arg(long, value_name = "PATH")]
    ctl_socket: Option<PathBuf>,
    /// A RabbitMQ definitions file (`rabbitmqctl export_definitions`) to
    /// load at start, as RabbitMQ's `load_definitions`: users, vhosts,
    /// permissions, exchanges, queues, bindings.
    #[arg(long, value_name = "FILE")]
    definitions: Option<PathBuf>,
    /// Serve RabbitMQ's management HTTP API, Prometheus `/metrics` and the
    /// dashboard on this address (RabbitMQ uses port 15672). Basic
    /// authentication with the broker's users; their tags
    /// (`administrator`, `monitoring`, `management`) decide what they see.
    #[arg(long, value_name = "ADDR")]
    management: Option<SocketAddr>,
}

/// A size in bytes: `50MB`, `1GB`, `512MiB`, `1000000`.
fn parse_size(s: &str) -> Result<u64, String> {
    match s.parse::<warren_broker::core::MemoryWatermark>() {
        Ok(warren_broker::core::MemoryWatermark::Bytes(b)) => Ok(b),
        _ => Err(format!(
            "invalid size {s:?}: expected bytes or a size with a unit, like 50MB or 1GB"
        )),
    }
}

/// `name:secret` split at the first colon (names have none, secrets may).
fn name_and_secret<'a>(
    flag: &str,
    entry: &'a str,
) -> Result<(&'a str, &'a str), Box<dyn std::error::Error>> {
    entry
        .split_once(':')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("{flag}: expected NAME:SECRET").into())
}

pub async fn run(args: BrokerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = warren_broker::Broker::builder();
    let listen = if args.listen.is_empty() && args.tls_listen.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 5672))]
    } else {
        args.listen
    };
    for addr in listen {
        builder = builder.listen(addr);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = TlsConfig::new(cert, key).verify_peer(args.tls_verify_peer);
        if let Some(ca) = &args.tls_ca {
            tls = tls.client_ca(ca);
        }
        builder = builder.tls(tls);
    }
    for addr in args.tls_listen {
        builder = builder.tls_listen(addr);
    }
    for user in &args.users {
        let (name, password) = name_and_secret("--user", user)?;
        builder = builder.user(name, password);
    }
    if let Some(path) = &args.users_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--users-file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let where_ = format!("--users-file {} line {}", path.display(), n + 1);
            let (name, password) = name_and_secret(&where_, line)?;
            builder = builder.user(name, password);
        }
    }
    for entry in &args.user_hashes {
        let (name, hash) = name_and_secret("--user-hash", entry)?;
        let hash = PasswordHash::parse(hash).map_err(|e| format!("--user-hash {name}: {e}"))?;
        builder = builder.user_with_password_hash(name, hash);
    }
    for vhost in &args.vhosts {
        builder = builder.vhost(vhost);
    }
    for p in args.permissions.chunks(5) {
        if let [user, vhost, configure, write, read] = p {
            builder = builder.permission(user, vhost, configure, write, read);
        }
    }
    builder = builder.consumer_timeout(match args.consumer_timeout {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    });
    builder = builder.memory_high_watermark(args.memory_high_watermark);
    builder = builder.max_message_size(args.max_message_size);
    if let Some(max) = args.max_connections {
        builder = builder.max_connections(max);
    }
    if !args.in_memory {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(crate::data_dir::default_data_dir);
        tracing::info!(dir = %dir.display(), "data directory");
        builder = builder
            .data_dir(dir)
            .disk_free_limit(args.disk_free_limit)
            .repair(args.repair);
    } else {
        tracing::info!("in memory: nothing is kept on disk");
    }
    // (What was recovered from the data directory is logged by the broker.)
    let broker = builder.start().await?;
    if let Some(path) = &args.definitions {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--definitions {}: {e}", path.display()))?;
        let summary = Definitions::parse(&text)
            .and_then(|d| d.import(&broker.core()))
            .map_err(|e| format!("--definitions {}: {e}", path.display()))?;
        tracing::info!(
            file = %path.display(),
            users = summary.users,
            vhosts = summary.vhosts,
            queues = summary.queues,
            exchanges = summary.exchanges,
            bindings = summary.bindings,
            "definitions loaded"
        );
        for ignored in &summary.ignored {
            tracing::warn!(%ignored, "definitions warren does not keep were ignored");
        }
    }
    let ctl_path = args.ctl_socket.clone().unwrap_or_else(|| {
        args.data_dir
            .clone()
            .unwrap_or_else(crate::data_dir::default_data_dir)
            .join(warren_broker::control::SOCKET_NAME)
    });
    let ctl = match ControlSocket::start(&ctl_path, broker.clone()).await {
        Ok(ctl) => ctl,
        Err(e) => {
            tracing::warn!(path = %ctl_path.display(), error = %e, "no control socket (warren ctl)");
            None
        }
    };
    tracing::info!(
        bytes = broker.core().memory().watermark(),
        "memory high watermark"
    );
    for addr in broker.local_addrs() {
        tracing::info!(%addr, "warren broker listening");
    }
    for addr in broker.tls_addrs() {
        tracing::info!(%addr, "warren broker listening (TLS)");
    }
    if let Some(addr) = args.management {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--management {addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "management API, /metrics and dashboard listening");
        let management = warren_broker::management::Management::new(broker.core())
            .amqp_listeners(broker.local_addrs())
            .extra_metrics(warren::metrics::render);
        tokio::spawn(async move {
            if let Err(e) = management.serve(listener).await {
                tracing::error!(error = %e, "the management listener failed");
            }
        });
    }
    // A failed durable store cannot make anything durable again: stop, so
    // that a supervisor restarts the broker and recovery replays the log
    // (RabbitMQ's node stops its message store the same way).
    let core = broker.core();
    let failure = tokio::select! {
        signal = stop_signal(&broker) => {
            tracing::info!(signal = signal?, "shutting down");
            None
        }
        e = core.store_failed() => {
            tracing::error!(error = %e, "the durable store failed: shutting down; a restart recovers what reached the disk");
            Some(e)
        }
    };
    if let Some(ctl) = ctl {
        ctl.stop();
    }
    broker.shutdown().await;
    match failure {
        None => Ok(()),
        Some(e) => {
            let dir = core.data_dir().unwrap_or(std::path::Path::new("?"));
            Err(format!(
                "the durable store in {} failed ({e}); restart the broker to recover",
                dir.display()
            )
            .into())
        }
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what `kill`, systemd and
/// container runtimes send) and names the one that came. SIGHUP meanwhile
/// reloads the TLS certificate files (a failed reload is logged and the
/// previous files stay in use).
async fn stop_signal(broker: &warren_broker::BrokerHandle) -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.map(|()| "SIGINT"),
                _ = term.recv() => return Ok("SIGTERM"),
                _ = hangup.recv() => match broker.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS reload failed; the previous certificates stay in use"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = broker;
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}
