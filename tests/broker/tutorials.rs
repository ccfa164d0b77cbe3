//! RabbitMQ's six tutorials: each Rust example (`examples/send.rs` …
//! `examples/rpc_client.rs`) against the tutorial's own Python program
//! (`tests/python/tutorials/`, pika), both directions where the tutorial
//! has two sides, on warren's broker (over TCP, one per test) and on
//! RabbitMQ (a fresh vhost per test, deleted after). The programs run as
//! processes, as a user runs them; the tests read what they print.
//!
//! Needs the examples built: `cargo build --examples` (`cargo test
//! --workspace` builds them).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{
    embedded_broker, example_bin, python, rabbitmq_vhost, rabbitmqctl, repo, Backend,
};

/// How long a program may take to print an expected line: a hang guard far
/// above any real run, not a timing claim.
const GUARD: Duration = Duration::from_secs(120);

/// A broker for one test: its URL, and what keeps it alive or cleans it up.
struct Broker {
    url: String,
    _warren: Option<warren::broker::BrokerHandle>,
    vhost: Option<String>,
}

impl Broker {
    async fn start(backend: Backend) -> Broker {
        match backend {
            Backend::RabbitMq => {
                let (vhost, url) = rabbitmq_vhost();
                Broker {
                    url,
                    _warren: None,
                    vhost: Some(vhost),
                }
            }
            _ => {
                let broker = embedded_broker().await;
                Broker {
                    url: broker.url(),
                    _warren: Some(broker),
                    vhost: None,
                }
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(vhost) = &self.vhost {
            rabbitmqctl(&["delete_vhost", vhost]);
        }
    }
}

/// A tutorial's Python program.
fn tutorial_py(name: &str) -> Command {
    let mut command = Command::new(python());
    command
        .arg(
            repo()
                .join("tests/python/tutorials")
                .join(format!("{name}.py")),
        )
        .env("PYTHONUNBUFFERED", "1");
    command
}

/// Which side of a tutorial runs a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Rust,
    Python,
}

impl Lang {
    fn other(self) -> Lang {
        match self {
            Lang::Rust => Lang::Python,
            Lang::Python => Lang::Rust,
        }
    }
}

/// A running program whose output the test reads line by line; killed on
/// drop.
struct Program {
    label: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far.
    out: Vec<String>,
    /// Standard error so far (for failure messages).
    err: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Program {
    fn start(lang: Lang, name: &str, args: &[&str], url: &str) -> Program {
        let mut command = match lang {
            Lang::Rust => Command::new(example_bin(name)),
            Lang::Python => tutorial_py(name),
        };
        command
            .args(args)
            .env("TRANSPORT_URL", url)
            .env("AMQP_URL", url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{lang:?} {name} does not start: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut stderr) = child.stderr.take() {
            let err = err.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    err.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            });
        }
        Program {
            label: format!("{lang:?} {name} {args:?}"),
            child,
            lines,
            out: Vec::new(),
            err,
        }
    }

    fn report(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.label,
            self.out.join("\n"),
            self.err.lock().unwrap_or_else(|p| p.into_inner())
        )
    }

    /// Waits until the program has printed `line` `times` times in all.
    fn expect_n(&mut self, line: &str, times: usize) {
        let deadline = Instant::now() + GUARD;
        while self.count(line) < times {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.out.push(l),
                Err(_) => panic!(
                    "expected {line:?} ×{times}, got ×{}: {}",
                    self.count(line),
                    self.report()
                ),
            }
        }
    }

    /// Waits until the program has printed `line`.
    fn expect(&mut self, line: &str) {
        self.expect_n(line, 1);
    }

    /// Waits until the program has written `text` to its standard error.
    fn expect_err(&self, text: &str) {
        let deadline = Instant::now() + GUARD;
        while !self
            .err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(text)
        {
            assert!(
                Instant::now() < deadline,
                "expected {text:?} on stderr: {}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to exit; its status.
    fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for a program") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running: {}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many times it printed `line` so far.
    fn count(&self, line: &str) -> usize {
        self.out.iter().filter(|l| l.as_str() == line).count()
    }

    /// Waits for it to exit successfully; returns everything it printed.
    fn finish(mut self) -> Vec<String> {
        let status = self.exit_status();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.out.push(l);
        }
        assert!(status.success(), "{status}: {}", self.report());
        std::mem::take(&mut self.out)
    }

    /// SIGKILL: no goodbye to the broker.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a program to completion and returns what it printed.
fn run(lang: Lang, name: &str, args: &[&str], url: &str) -> Vec<String> {
    Program::start(lang, name, args, url).finish()
}

/// Runs `scenario` with the broker's URL off the async runtime (it waits
/// on processes).
async fn on(backend: Backend, scenario: fn(&str)) {
    let broker = Broker::start(backend).await;
    let url = broker.url.clone();
    tokio::task::spawn_blocking(move || scenario(&url))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    drop(broker);
}

/// One test per broker for each scenario.
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::on(crate::common::Backend::RabbitMq, super::$name).await
                }
            )*
        }
        mod warren_broker {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::on(crate::common::Backend::EmbeddedTcp, super::$name).await
                }
            )*
        }
    };
}

// Each direction is a test of its own, on a broker of its own: the
// tutorials' names are fixed, and a program killed at the end of one
// direction could otherwise still hold a consumer when the next starts.
on_both_brokers!(
    hello_world_to_rust,
    hello_world_to_python,
    work_queue_rust_worker_killed,
    work_queue_python_worker_killed,
    fair_dispatch_rust_worker_busy,
    fair_dispatch_python_worker_busy,
    publish_subscribe,
    routing,
    topics,
    rpc_rust_server,
    rpc_python_server,
    bad_input,
);

fn hello_world_to_rust(url: &str) {
    hello_world(url, Lang::Rust);
}

fn hello_world_to_python(url: &str) {
    hello_world(url, Lang::Python);
}

/// Tutorial one: the other side's sender to `receiver`.
fn hello_world(url: &str, receiver: Lang) {
    let mut receive = Program::start(receiver, "receive", &[], url);
    receive.expect(" [*] Waiting for messages. To exit press CTRL+C");
    let sent = run(receiver.other(), "send", &[], url);
    assert_eq!(sent, [" [x] Sent 'Hello World!'"]);
    receive.expect(" [x] Received Hello World!");
}

fn work_queue_rust_worker_killed(url: &str) {
    work_queue_redelivers(url, Lang::Rust);
}

fn work_queue_python_worker_killed(url: &str) {
    work_queue_redelivers(url, Lang::Python);
}

/// Tutorial two: a worker killed (SIGKILL) holding a task; the task goes
/// back to the queue and the other side's worker does it, with every other
/// task: none lost. Tasks come from the surviving side's `new_task`.
fn work_queue_redelivers(url: &str, killed: Lang) {
    let survivor = killed.other();
    let tasks = ["doomed...", "first", "second", "third"];
    for task in tasks {
        let sent = run(survivor, "new_task", &[task], url);
        assert_eq!(sent, [format!(" [x] Sent {task}")]);
    }
    // Prefetch 1: the first worker holds exactly the first task.
    let mut doomed = Program::start(killed, "worker", &[], url);
    doomed.expect(" [x] Received doomed...");
    doomed.kill9();
    assert_eq!(doomed.count(" [x] Done"), 0, "{}", doomed.report());

    let mut worker = Program::start(survivor, "worker", &[], url);
    worker.expect_n(" [x] Done", tasks.len());
    // Each task once, the redelivered one first: it went back to the head
    // of the queue.
    let received: Vec<&str> = worker
        .out
        .iter()
        .filter(|l| l.starts_with(" [x] Received "))
        .map(String::as_str)
        .collect();
    assert_eq!(
        received,
        tasks.map(|t| format!(" [x] Received {t}")),
        "{}",
        worker.report()
    );
}

fn fair_dispatch_rust_worker_busy(url: &str) {
    fair_dispatch(url, Lang::Rust);
}

fn fair_dispatch_python_worker_busy(url: &str) {
    fair_dispatch(url, Lang::Python);
}

/// Tutorial two: with prefetch 1 a busy worker gets no more tasks, so while
/// one worker sleeps on a long task (eight seconds) the other does every
/// short one. Shown by the task counts: 1 and all the rest.
fn fair_dispatch(url: &str, busy_lang: Lang) {
    const SHORT: usize = 6;
    let free_lang = busy_lang.other();
    assert_eq!(
        run(free_lang, "new_task", &["long........"], url),
        [" [x] Sent long........"]
    );
    for i in 0..SHORT {
        let task = format!("short {i}");
        // Tasks from both programs, alternately.
        let producer = if i % 2 == 0 { busy_lang } else { free_lang };
        assert_eq!(
            run(producer, "new_task", &[&task], url),
            [format!(" [x] Sent {task}")]
        );
    }
    let mut busy = Program::start(busy_lang, "worker", &[], url);
    busy.expect(" [x] Received long........");
    let mut free = Program::start(free_lang, "worker", &[], url);
    free.expect_n(" [x] Done", SHORT);
    busy.expect(" [x] Done");
    let received = |p: &Program| {
        p.out
            .iter()
            .filter(|l| l.starts_with(" [x] Received "))
            .count()
    };
    assert_eq!(received(&busy), 1, "{}", busy.report());
    assert_eq!(received(&free), SHORT, "{}", free.report());
    for i in 0..SHORT {
        assert_eq!(free.count(&format!(" [x] Received short {i}")), 1);
    }
}

/// Tutorial three: every subscriber, Rust and Python, gets every log line,
/// from either emitter.
fn publish_subscribe(url: &str) {
    let mut subscribers = [
        Program::start(Lang::Rust, "receive_logs", &[], url),
        Program::start(Lang::Python, "receive_logs", &[], url),
    ];
    for s in &mut subscribers {
        s.expect(" [*] Waiting for logs. To exit press CTRL+C");
    }
    assert_eq!(
        run(Lang::Rust, "emit_log", &["info: from Rust"], url),
        [" [x] Sent info: from Rust"]
    );
    assert_eq!(
        run(Lang::Python, "emit_log", &[], url),
        [" [x] Sent info: Hello World!"]
    );
    for s in &mut subscribers {
        s.expect(" [x] info: from Rust");
        s.expect(" [x] info: Hello World!");
    }
}

/// Tutorial four: each receiver gets the severities it bound, no others.
fn routing(url: &str) {
    let mut errors = Program::start(Lang::Python, "receive_logs_direct", &["error"], url);
    let mut all = Program::start(
        Lang::Rust,
        "receive_logs_direct",
        &["info", "warning", "error"],
        url,
    );
    errors.expect(" [*] Waiting for logs. To exit press CTRL+C");
    all.expect(" [*] Waiting for logs. To exit press CTRL+C");
    for (lang, severity, message) in [
        (Lang::Rust, "info", "Rust says hi"),
        (Lang::Python, "warning", "Python warns"),
        (Lang::Rust, "error", "Rust fails"),
        (Lang::Python, "error", "Python fails"),
    ] {
        assert_eq!(
            run(lang, "emit_log_direct", &[severity, message], url),
            [format!(" [x] Sent {severity}:{message}")]
        );
    }
    // The last line each should see, in publish order, marks the others
    // as delivered.
    all.expect(" [x] error:Python fails");
    errors.expect(" [x] error:Python fails");
    assert_eq!(
        all.out[1..],
        [
            " [x] info:Rust says hi",
            " [x] warning:Python warns",
            " [x] error:Rust fails",
            " [x] error:Python fails"
        ],
        "{}",
        all.report()
    );
    assert_eq!(
        errors.out[1..],
        [" [x] error:Rust fails", " [x] error:Python fails"],
        "{}",
        errors.report()
    );
}

/// Tutorial five: `*` and `#` bindings, the tutorial's own examples.
fn topics(url: &str) {
    let mut kern = Program::start(Lang::Python, "receive_logs_topic", &["kern.*"], url);
    let mut critical = Program::start(
        Lang::Rust,
        "receive_logs_topic",
        &["*.critical", "audit.#"],
        url,
    );
    kern.expect(" [*] Waiting for logs. To exit press CTRL+C");
    critical.expect(" [*] Waiting for logs. To exit press CTRL+C");
    for (lang, key, message) in [
        (Lang::Rust, "kern.critical", "A critical kernel error"),
        (Lang::Python, "kern.info", "kernel noise"),
        (Lang::Python, "cron.critical", "cron is down"),
        (Lang::Rust, "audit.user.login", "someone logged in"),
        (Lang::Rust, "lazy.orange.rabbit", "nobody listens"),
    ] {
        assert_eq!(
            run(lang, "emit_log_topic", &[key, message], url),
            [format!(" [x] Sent {key}:{message}")]
        );
    }
    // Without a message the key is ignored, as in the tutorial.
    assert_eq!(
        run(Lang::Rust, "emit_log_topic", &["kern.debug"], url),
        [" [x] Sent anonymous.info:Hello World!"]
    );
    // A marker after the rest: once it is in, so is everything before it.
    assert_eq!(
        run(
            Lang::Python,
            "emit_log_topic",
            &["kern.critical", "end"],
            url
        ),
        [" [x] Sent kern.critical:end"]
    );
    kern.expect(" [x] kern.critical:end");
    critical.expect(" [x] kern.critical:end");
    assert_eq!(
        kern.out[1..],
        [
            " [x] kern.critical:A critical kernel error",
            " [x] kern.info:kernel noise",
            " [x] kern.critical:end"
        ],
        "{}",
        kern.report()
    );
    assert_eq!(
        critical.out[1..],
        [
            " [x] kern.critical:A critical kernel error",
            " [x] cron.critical:cron is down",
            " [x] audit.user.login:someone logged in",
            " [x] kern.critical:end"
        ],
        "{}",
        critical.report()
    );
}

fn rpc_rust_server(url: &str) {
    rpc(url, Lang::Rust);
}

fn rpc_python_server(url: &str) {
    rpc(url, Lang::Python);
}

/// Tutorial six: the other side's client against `server_lang`'s server.
fn rpc(url: &str, server_lang: Lang) {
    let mut server = Program::start(server_lang, "rpc_server", &[], url);
    server.expect(" [x] Awaiting RPC requests");
    let client = server_lang.other();
    assert_eq!(
        run(client, "rpc_client", &["10"], url),
        [" [x] Requesting fib(10)", " [.] Got 55"]
    );
    assert_eq!(
        run(client, "rpc_client", &[], url),
        [" [x] Requesting fib(30)", " [.] Got 832040"]
    );
    server.expect(" [.] fib(30)");
    assert_eq!(server.count(" [.] fib(10)"), 1, "{}", server.report());
}

/// Publishes `body` to queue `queue` through the default exchange, as a
/// program that is not a tutorial's would (from the blocking scenario).
fn publish_raw(url: &str, queue: &str, body: &[u8], properties: warren::transport::Properties) {
    let (url, queue, body) = (url.to_owned(), queue.to_owned(), body.to_vec());
    tokio::runtime::Handle::current().block_on(async move {
        let connection = warren::connect(&url).await.expect("connect");
        connection
            .transport()
            .publish(warren::transport::Outgoing {
                exchange: String::new(),
                routing_key: queue,
                mandatory: true,
                confirm: true,
                properties,
                body: body.into(),
            })
            .await
            .expect("publish");
        connection.close().await.expect("close");
    });
}

/// What a user may get wrong: arguments and bodies the tutorials' programs
/// do not expect. The Rust examples refuse or skip them with a message and
/// go on; none panics.
fn bad_input(url: &str) {
    // Arguments: a usage line and exit status 1, or a clear error.
    for name in ["receive_logs_direct", "receive_logs_topic"] {
        let mut p = Program::start(Lang::Rust, name, &[], url);
        assert_eq!(p.exit_status().code(), Some(1), "{}", p.report());
        p.expect_err(&format!("Usage: {name} ["));
    }
    let mut client = Program::start(Lang::Rust, "rpc_client", &["forty-two"], url);
    assert!(!client.exit_status().success(), "{}", client.report());
    client.expect_err("not a number: forty-two");

    // A request that is not a number: rejected, logged, the server goes on.
    let mut server = Program::start(Lang::Rust, "rpc_server", &[], url);
    server.expect(" [x] Awaiting RPC requests");
    let request = warren::transport::Properties::default()
        .with_reply_to("nobody")
        .expect("short")
        .with_correlation_id("1")
        .expect("short");
    publish_raw(url, "rpc_queue", b"forty-two", request);
    assert_eq!(
        run(Lang::Python, "rpc_client", &["7"], url),
        [" [x] Requesting fib(7)", " [.] Got 13"]
    );
    server.expect_err("not a number up to 90: \"forty-two\"");

    // A task that is not UTF-8 text: the worker's queue API rejects it
    // with a warning (the tutorial's queue has no dead-letter queue, so the
    // broker drops it) and does the next task.
    let mut worker = Program::start(Lang::Rust, "worker", &[], url);
    worker.expect(" [*] Waiting for messages. To exit press CTRL+C");
    publish_raw(
        url,
        "task_queue",
        &[0xff, 0xfe, b'.'],
        warren::transport::Properties::default().with_delivery_mode(2),
    );
    assert_eq!(
        run(Lang::Python, "new_task", &["after."], url),
        [" [x] Sent after."]
    );
    worker.expect_err("rejecting a message that cannot be decoded");
    worker.expect(" [x] Received after.");
    worker.expect(" [x] Done");
    assert_eq!(worker.count(" [x] Done"), 1, "{}", worker.report());
}
