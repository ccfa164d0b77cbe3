//! The one harness every integration test shares: brokers (RabbitMQ, started
//! on demand), unique names, a test service, and Python peers in a venv.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use warren::rpc::Context;

pub mod http;
pub mod rabbit;
pub mod raw;
pub mod tls;

/// The RabbitMQ the tests use: `$WARREN_TEST_RABBITMQ`, else the local one.
pub fn rabbitmq_url() -> String {
    ensure_rabbitmq();
    std::env::var("WARREN_TEST_RABBITMQ")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Starts the local RabbitMQ (Debian's `rabbitmq-server`) unless it is
/// already listening. Tests need a real broker: no RabbitMQ is a failure,
/// not a skip.
pub fn ensure_rabbitmq() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        if std::env::var("WARREN_TEST_RABBITMQ").is_ok() || listening(5672) {
            return;
        }
        install_rabbitmq();
        let status = Command::new("rabbitmq-server").arg("-detached").status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "RabbitMQ is not running and `rabbitmq-server -detached` failed ({status:?}); install Debian's rabbitmq-server"
        );
        // `-detached` returns before the node registers with epmd, and
        // `await_startup` fails at once on a node it cannot reach yet: retry.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let output = Command::new("rabbitmqctl")
                .args(["await_startup", "--timeout", "120"])
                .output();
            match output {
                Ok(out) if out.status.success() => break,
                Ok(out) if std::time::Instant::now() >= deadline => panic!(
                    "RabbitMQ did not start within 180 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => panic!("cannot run rabbitmqctl: {e}"),
                Ok(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    });
}

/// Installs Debian's `rabbitmq-server` when it is missing and this runs as
/// root (CI, a fresh machine); otherwise says what to install.
fn install_rabbitmq() {
    let present = Command::new("sh")
        .args(["-c", "command -v rabbitmq-server"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if present {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    assert!(
        root,
        "the tests need RabbitMQ: run `apt-get install rabbitmq-server` (or set WARREN_TEST_RABBITMQ=amqp://...)"
    );
    let status = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server"])
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "apt-get install rabbitmq-server failed: {status:?}"
    );
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

/// A free TCP port on loopback (free when asked; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Runs `rabbitmqctl` with `args`, returning its standard output.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh RabbitMQ vhost (guest has all rights), for tests that inspect the
/// whole topology.
pub fn rabbitmq_vhost() -> (String, String) {
    ensure_rabbitmq();
    let vhost = unique("warren-test");
    rabbitmqctl(&["add_vhost", &vhost]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
    (vhost, url)
}

/// Why a `divide` failed: the service's own error type.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum CalcError {
    /// Division by zero.
    #[error("cannot divide {0} by zero")]
    DivideByZero(i64),
}

/// The test service.
#[warren::service(topic = "calc", version = "1.5", derive(Clone, Debug))]
pub trait Calc {
    /// a + b
    async fn add(&self, a: i64, b: i64) -> i64;
    /// a / b, or the service's own error.
    async fn divide(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    /// The serving server's name.
    async fn whoami(&self) -> String;
    /// A request-context item, as the server sees it.
    async fn context_value(&self, key: String) -> Option<serde_json::Value>;
    /// Whether the server saw a deadline.
    async fn has_deadline(&self) -> bool;
    /// Sleeps, then answers `ms`.
    async fn sleep_ms(&self, ms: u64) -> u64;
    /// Panics.
    async fn boom(&self) -> u64;
    /// Records `value` (fire-and-forget).
    #[cast]
    async fn record(&self, value: i64);
}

/// A `Calc` that reports casts to the test.
pub struct CalcImpl {
    pub name: String,
    pub records: mpsc::UnboundedSender<(String, i64)>,
}

impl Calc for CalcImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }

    async fn divide(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        if b == 0 {
            Err(CalcError::DivideByZero(a))
        } else {
            Ok(a / b)
        }
    }

    async fn whoami(&self) -> String {
        self.name.clone()
    }

    async fn context_value(&self, key: String) -> Option<serde_json::Value> {
        Context::current().get(&key).cloned()
    }

    async fn has_deadline(&self) -> bool {
        Context::current().deadline().is_some()
    }

    async fn sleep_ms(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn boom(&self) -> u64 {
        panic!("boom on purpose")
    }

    async fn record(&self, value: i64) {
        let _ = self.records.send((self.name.clone(), value));
    }
}

/// A `Calc` server named `name`, reporting casts on `records`.
pub fn calc(name: &str, records: &mpsc::UnboundedSender<(String, i64)>) -> CalcServer<CalcImpl> {
    CalcServer::new(CalcImpl {
        name: name.to_owned(),
        records: records.clone(),
    })
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `warren` command (crate `warren-cli`), for tests that run
/// `warren broker` as a process of its own.
///
/// `cargo test --workspace` builds it before any test runs (the cli crate
/// has integration tests, so cargo builds its binary); a narrower run
/// (`cargo test -p warren --test NAME`) needs `cargo build -p warren-cli`
/// first, which the panic below says.
pub fn warren_bin() -> PathBuf {
    let name = format!("warren{}", std::env::consts::EXE_SUFFIX);
    // target/<profile>/deps/<test binary> -> target/<profile>/warren
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(&name)));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "the `warren` binary is not built next to this test: run \
             `cargo build -p warren-cli` (or `cargo test --workspace`, which builds it)"
        ),
    }
}

/// The binary of example `name` (`examples/<name>.rs`), for tests that run
/// an example as a process of its own.
///
/// `cargo test` builds the examples before any test runs; a narrower run
/// (`cargo test --test NAME`) needs `cargo build --examples` (or
/// `--example <name>`) first, which the panic below says.
pub fn example_bin(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    // target/<profile>/deps/<test binary> -> target/<profile>/examples/<name>
    let bin = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join(&file)));
    match bin {
        Some(bin) if bin.is_file() => bin,
        _ => panic!(
            "example `{name}` is not built next to this test: run \
             `cargo build --example {name}` (or `cargo test`, which builds the examples)"
        ),
    }
}

/// A Python with pika and oslo.messaging: `$WARREN_PYTHON`, else a venv
/// under `target/` that this creates once (from PyPI) when missing.
pub fn python() -> PathBuf {
    static PYTHON: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut slot = PYTHON.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = slot.as_ref() {
        return p.clone();
    }
    let python = match std::env::var_os("WARREN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = repo().join("target/pyenv");
            let python = venv.join("bin/python");
            let ready = Command::new(&python)
                .args(["-c", "import pika, oslo_messaging"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ready {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "cannot create a venv at {}", venv.display());
                let ok = Command::new(&python)
                    .args(["-m", "pip", "install", "-q", "-r"])
                    .arg(repo().join("tests/python/requirements.txt"))
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                assert!(ok, "cannot pip install tests/python/requirements.txt");
            }
            python
        }
    };
    *slot = Some(python.clone());
    python
}

/// A command running `tests/python/<script>` with the harness's Python.
pub fn python_script(script: &str) -> Command {
    let mut command = Command::new(python());
    command.arg(repo().join("tests/python").join(script));
    command
}

/// How long a Python peer may run before [`run_python`] kills it: a hang
/// guard far above any script's real run time, not a timing claim.
const PYTHON_LIMIT: Duration = Duration::from_secs(300);

/// Runs `tests/python/<script>` with `args` to completion (off the async
/// runtime); panics with its output unless it succeeds; returns its stdout.
pub async fn run_python(script: &str, args: &[&str]) -> String {
    run_python_within(PYTHON_LIMIT, script, args).await
}

/// Runs `tests/python/<script>` with `args` like [`run_python`], killing a
/// script still running after `limit` and failing with what it printed so
/// far.
pub async fn run_python_within(limit: Duration, script: &str, args: &[&str]) -> String {
    let script = script.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = python_run(limit, &script, &args);
        match run.status {
            None => panic!(
                "{script} {args:?} still ran after {limit:?} (killed)\nstdout:\n{}\nstderr:\n{}",
                run.stdout, run.stderr
            ),
            Some(status) => assert!(
                status.success(),
                "{script} {args:?} failed ({status})\nstdout:\n{}\nstderr:\n{}",
                run.stdout,
                run.stderr
            ),
        }
        run.stdout
    })
    .await
    .expect("join")
}

/// What a Python peer did: its exit status (`None`: still running at its
/// limit, and killed) and what it printed.
#[derive(Debug)]
pub struct PythonRun {
    /// The exit status, or `None` when the script was killed at its limit.
    pub status: Option<std::process::ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Runs `tests/python/<script>` with `args` to completion, blocking the
/// calling thread, and kills it if still running after `limit`. Whatever the
/// script's outcome, returns it: the caller judges.
pub fn python_run(limit: Duration, script: &str, args: &[&str]) -> PythonRun {
    use std::io::Read;
    use std::process::Stdio;

    let mut command = python_script(script);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("python runs");
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut out);
            }
            out
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    PythonRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Collects what arrives on `rx` within `wait` (a safety net, not a timing
/// assertion: tests compare contents).
pub async fn drain<T>(rx: &mut mpsc::UnboundedReceiver<T>, count: usize, wait: Duration) -> Vec<T> {
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(v)) => out.push(v),
            _ => break,
        }
    }
    out
}

/// Shared counters for middleware tests.
pub type Counter = Arc<std::sync::atomic::AtomicUsize>;

/// A broker an RPC test runs against. The conformance suite runs every
/// behaviour on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// RabbitMQ over TCP.
    RabbitMq,
    /// warren's embedded broker over TCP (a broker of its own per test).
    EmbeddedTcp,
    /// warren's embedded broker in this process, no socket (one per test).
    InProcess,
}

impl Backend {
    /// A connection for one test, and the broker it started (which lives as
    /// long as the returned handle). Tests isolate themselves with unique
    /// topics, so RabbitMQ is shared.
    pub async fn connect(self) -> (warren::Connection, Option<warren::broker::BrokerHandle>) {
        match self {
            Backend::RabbitMq => (
                warren::connect(&rabbitmq_url())
                    .await
                    .expect("connect to RabbitMQ"),
                None,
            ),
            Backend::EmbeddedTcp => {
                let broker = embedded_broker().await;
                let connection = warren::connect(&broker.url())
                    .await
                    .expect("connect to the embedded broker");
                (connection, Some(broker))
            }
            Backend::InProcess => {
                let broker = warren::broker::Broker::builder()
                    .no_listen()
                    .start()
                    .await
                    .expect("start the embedded broker");
                let connection =
                    warren::Connection::in_process(&broker).expect("in-process connection");
                (connection, Some(broker))
            }
        }
    }
}

/// Connects to `url`, serves `Calc` there and answers one call: the URL
/// works end to end. A connect still hanging after 60 s fails the test.
pub async fn answers(url: &str) {
    let connection = tokio::time::timeout(Duration::from_secs(60), warren::connect(url))
        .await
        .unwrap_or_else(|_| panic!("{url}: connect hung"))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let topic = unique("calc");
    let (records, _) = mpsc::unbounded_channel();
    let _server = calc("s1", &records)
        .builder()
        .topic(&topic)
        .serve(&connection, "s1")
        .await
        .expect("serve");
    let client = CalcClient::new(&connection)
        .topic(&topic)
        .timeout(Duration::from_secs(20));
    assert_eq!(client.add(2, 3).await.expect("call"), 5, "{url}");
}

/// A broker of this test's own on a free port (dropped with the runtime).
pub async fn embedded_broker() -> warren::broker::BrokerHandle {
    warren::broker::Broker::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .start()
        .await
        .expect("start the embedded broker")
}

/// Declares one test per backend for each scenario `async fn name(Backend)`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::RabbitMq).await
                }
            )*
        }
        mod embedded_tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::EmbeddedTcp).await
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::InProcess).await
                }
            )*
        }
    };
}

/// Declares one test per broker (warren's embedded broker over TCP and
/// RabbitMQ) for each scenario `async fn name(url: String)`.
#[macro_export]
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let broker = $crate::common::embedded_broker().await;
                    super::$name(broker.url()).await
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::rabbitmq_url()).await
                }
            )*
        }
    };
}

/// The reply code of the next error the broker reports on a connection's
/// `events_listener()` (taken before the action that provokes it), within 10 s.
///
/// For errors raised by asynchronous methods (publish, ack): lapin reports
/// those on the channel's next call only when that call is sent before the
/// broker's `channel.close` arrives; otherwise the call fails with
/// "channel closing" and the code is only on the connection's events.
pub async fn next_error_code(
    events: impl futures::Stream<Item = lapin::Event> + Send + 'static,
) -> Option<u16> {
    use futures::StreamExt;
    let mut events = std::pin::pin!(events);
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
                    return Some(amqp.get_id());
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}
