//! `warren ctl` against a running `warren broker` process: each command, its
//! output beside `rabbitmqctl`'s for the same state (built by one pika
//! script on both brokers, in a vhost of the test's own on the shared
//! RabbitMQ, removed after), its exit codes, the control socket's file
//! permissions and how it is shared, the edge operator's provisioning
//! script, and RabbitMQ's definitions both ways.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{connection, AMQPClass};

use crate::common::rabbit::TempDir;
use crate::common::raw::{Opts, Peer};
use crate::common::{ensure_rabbitmq, free_port, python_script, rabbitmqctl, unique, warren_bin};

/// Hang guard for a broker to come up (not a timing claim).
const GUARD: Duration = Duration::from_secs(60);

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `warren broker` process with a data directory of its own.
struct Broker {
    child: Process,
    port: u16,
    dir: TempDir,
}

impl Broker {
    /// Starts `warren broker` on a free port with `extra` arguments; its
    /// data directory (and control socket) in a fresh temporary directory.
    fn start(extra: &[&str]) -> Broker {
        let dir = TempDir::new("warren-ctl");
        let broker = Self::start_in(dir, extra);
        let out = broker.ctl(&["await_startup", "-t", "60"]);
        assert!(out.status.success(), "await_startup: {}", text(&out.stderr));
        broker
    }

    /// Starts `warren broker` with `extra` arguments in `dir`; does not wait.
    fn start_in(dir: TempDir, extra: &[&str]) -> Broker {
        let port = free_port();
        let child = Command::new(warren_bin())
            .args(["broker", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warren broker starts");
        Broker {
            child: Process(child),
            port,
            dir,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `warren ctl --data-dir DIR args…`.
    fn ctl(&self, args: &[&str]) -> Output {
        warren_ctl(&["--data-dir", path_str(&self.data_dir())], args)
    }

    /// `warren ctl args…`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "warren ctl {args:?}: {:?}\n{}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!(
            "amqp://{user}:{password}@127.0.0.1:{}/{}",
            self.port,
            vhost.replace('/', "%2f")
        )
    }

    /// Stops the broker and returns what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let mut log = String::new();
        if let Some(mut err) = self.child.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut log);
        }
        log
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `warren ctl` with `global` options, then `args`.
fn warren_ctl(global: &[&str], args: &[&str]) -> Output {
    Command::new(warren_bin())
        .arg("ctl")
        .args(global)
        .args(args)
        .output()
        .expect("warren ctl runs")
}

/// `rabbitmqctl args…` on the shared node (any exit status).
fn rabbit(args: &[&str]) -> Output {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs")
}

/// A listing's lines: `head` lines (banners, header) as printed, the rows
/// after them sorted (both brokers list in their tables' order), keeping
/// only rows `keep` accepts.
fn listing(stdout: &str, head: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    let mut rows: Vec<String> = lines
        .iter()
        .skip(head)
        .filter(|l| keep(l))
        .cloned()
        .collect();
    rows.sort();
    lines.into_iter().take(head).chain(rows).collect()
}

/// A pika script holding one topology open on a broker (see `ctl_state.py`).
struct State {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl State {
    fn hold(url: &str) -> State {
        let mut child = python_script("ctl_state.py")
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python runs");
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "ready", "ctl_state.py did not get ready");
        State { child, stdin }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Closing its stdin ends the script.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A fresh vhost on the shared RabbitMQ for the same state, deleted on drop.
struct RabbitVhost(String);

impl RabbitVhost {
    fn new() -> RabbitVhost {
        ensure_rabbitmq();
        let vhost = unique("warren-ctl");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        RabbitVhost(vhost)
    }
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        let _ = rabbit(&["delete_vhost", &self.0]);
    }
}

#[test]
fn list_commands_print_what_rabbitmqctl_prints() {
    let vhost = RabbitVhost::new();
    let v = vhost.0.as_str();
    let broker = Broker::start(&[]);
    broker.ok(&["add_vhost", v]);
    broker.ok(&["set_permissions", "-p", v, "guest", ".*", ".*", ".*"]);
    let rabbit_url = format!("amqp://guest:guest@127.0.0.1:5672/{v}");
    let _on_rabbit = State::hold(&rabbit_url);
    let _on_warren = State::hold(&broker.url("guest", "guest", v));

    let in_vhost = |col: usize| move |row: &str| row.split('\t').nth(col) == Some(v);
    let all = |_: &str| true;
    // (arguments, banner and header lines, row filter)
    type Keep<'a> = Box<dyn Fn(&str) -> bool + 'a>;
    let cases: Vec<(Vec<&str>, usize, Keep)> = vec![
        (vec!["list_queues", "-p", v], 3, Box::new(all)),
        (
            vec![
                "list_queues",
                "-p",
                v,
                "name",
                "durable",
                "auto_delete",
                "exclusive",
                "arguments",
                "messages_ready",
                "messages_unacknowledged",
                "messages",
                "message_bytes",
                "consumers",
                "state",
                "type",
                "policy",
            ],
            3,
            Box::new(all),
        ),
        (vec!["-q", "list_queues", "-p", v], 1, Box::new(all)),
        (
            vec!["list_queues", "-p", v, "--no-table-headers", "-q"],
            0,
            Box::new(all),
        ),
        (vec!["list_exchanges", "-p", v], 2, Box::new(all)),
        (
            vec![
                "list_exchanges",
                "-p",
                v,
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ],
            2,
            Box::new(all),
        ),
        (vec!["list_bindings", "-p", v], 2, Box::new(all)),
        (
            vec![
                "list_bindings",
                "-p",
                v,
                "source_name",
                "destination_name",
                "routing_key",
            ],
            2,
            Box::new(all),
        ),
        (
            vec![
                "list_consumers",
                "-p",
                v,
                "queue_name",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "activity_status",
                "arguments",
            ],
            2,
            Box::new(all),
        ),
        (vec!["list_permissions", "-p", v], 2, Box::new(all)),
        (
            vec![
                "list_channels",
                "vhost",
                "number",
                "user",
                "prefetch_count",
                "global_prefetch_count",
                "messages_unacknowledged",
                "consumer_count",
                "confirm",
                "transactional",
                "messages_unconfirmed",
            ],
            2,
            Box::new(in_vhost(0)),
        ),
        (
            vec![
                "list_connections",
                "vhost",
                "user",
                "peer_host",
                "host",
                "channels",
                "state",
                "protocol",
                "auth_mechanism",
                "ssl",
                "timeout",
                "frame_max",
                "channel_max",
            ],
            2,
            Box::new(in_vhost(0)),
        ),
    ];
    for (args, banners, keep) in &cases {
        let theirs = rabbit(args);
        assert!(
            theirs.status.success(),
            "rabbitmqctl {args:?}: {}",
            text(&theirs.stderr)
        );
        let ours = broker.ctl(args);
        assert!(
            ours.status.success(),
            "warren ctl {args:?}: {}",
            text(&ours.stderr)
        );
        assert_eq!(
            listing(&text(&ours.stdout), *banners, keep),
            listing(&text(&theirs.stdout), *banners, keep),
            "warren ctl {args:?} differs from rabbitmqctl"
        );
    }

    // Columns whose values are each broker's own: their shape.
    let names = broker.ok(&[
        "-q",
        "list_connections",
        "name",
        "peer_host",
        "peer_port",
        "port",
    ]);
    let row = names.lines().nth(1).expect("one connection");
    let cells: Vec<&str> = row.split('\t').collect();
    assert_eq!(
        cells[0],
        format!("{}:{} -> 127.0.0.1:{}", cells[1], cells[2], broker.port)
    );
    assert_eq!(cells[3], broker.port.to_string());
    let channels = broker.ok(&["-q", "list_channels", "name", "number"]);
    for row in channels.lines().skip(1) {
        let (name, number) = row.split_once('\t').expect("two columns");
        assert_eq!(name, format!("{} ({number})", cells[0]));
    }
    // Users and vhosts: guest is an administrator on both; the vhost is listed.
    for out in [broker.ok(&["list_users"]), rabbitmqctl(&["list_users"])] {
        assert!(out.lines().any(|l| l == "guest\t[administrator]"), "{out}");
    }
    for out in [
        broker.ok(&["list_vhosts", "--no-table-headers", "--quiet"]),
        rabbitmqctl(&["list_vhosts", "--no-table-headers", "--quiet"]),
    ] {
        assert!(
            out.lines().any(|l| l == v) && out.lines().any(|l| l == "/"),
            "{out}"
        );
    }
    // An unknown column is a usage error on both.
    for out in [
        broker.ctl(&["list_queues", "nope"]),
        rabbit(&["list_queues", "nope"]),
    ] {
        assert_eq!(out.status.code(), Some(64));
        assert!(text(&out.stderr).contains("Info key(s) nope are not supported"));
    }
}

#[test]
fn user_vhost_and_permission_commands() {
    let broker = Broker::start(&[]);
    let v = "edge";
    assert_eq!(
        broker.ok(&["add_user", "ops", "s3cret"]).lines().next(),
        Some("Adding user \"ops\" ...")
    );
    assert_eq!(
        broker.ctl(&["add_user", "ops", "again"]).status.code(),
        Some(70)
    );
    assert_eq!(
        broker.ok(&["set_user_tags", "ops", "administrator", "monitoring"]),
        "Setting tags for user \"ops\" to [administrator, monitoring] ...\n"
    );
    assert_eq!(
        broker.ok(&["list_users"]),
        "Listing users ...\nuser\ttags\nguest\t[administrator]\nops\t[administrator, monitoring]\n"
    );
    broker.ok(&["change_password", "ops", "better"]);
    assert_eq!(broker.ok(&["add_vhost", v]), "Adding vhost \"edge\" ...\n");
    assert_eq!(
        broker.ok(&["set_permissions", "-p", v, "ops", "^ops\\.", ".*", ".*"]),
        "Setting permissions for user \"ops\" in vhost \"edge\" ...\n"
    );
    assert_eq!(
        broker.ok(&["list_permissions", "-p", v]),
        "Listing permissions for vhost \"edge\" ...\nuser\tconfigure\twrite\tread\nops\t^ops\\.\t.*\t.*\n"
    );
    assert_eq!(broker.ok(&["-q", "list_vhosts"]), "name\n/\nedge\n");
    assert_eq!(
        broker.ok(&["list_user_permissions", "ops"]),
        "Listing permissions for user \"ops\" ...\nvhost\tconfigure\twrite\tread\nedge\t^ops\\.\t.*\t.*\n"
    );
    for out in [
        broker.ok(&["-q", "list_user_permissions", "guest"]),
        rabbitmqctl(&["-q", "list_user_permissions", "guest"]),
    ] {
        assert!(out.starts_with("vhost\tconfigure\twrite\tread\n"), "{out}");
        assert!(out.lines().any(|l| l == "/\t.*\t.*\t.*"), "{out}");
    }
    // The new password logs in; the old one does not.
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let login = |password: &str| {
        let url = broker.url("ops", password, v);
        rt.block_on(async {
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .is_ok()
        })
    };
    assert!(login("better"));
    assert!(!login("s3cret"));
    broker.ok(&["clear_permissions", "-p", v, "ops"]);
    assert!(!login("better"), "no permissions on the vhost any more");
    assert_eq!(
        broker.ok(&["-q", "list_permissions", "-p", v]),
        "user\tconfigure\twrite\tread\n"
    );

    // Errors: rabbitmqctl's exit codes.
    let code = |args: &[&str]| broker.ctl(args).status.code();
    assert_eq!(code(&["delete_user", "nobody"]), Some(67));
    assert_eq!(code(&["change_password", "nobody", "x"]), Some(67));
    assert_eq!(code(&["set_user_tags", "nobody"]), Some(67));
    assert_eq!(code(&["clear_permissions", "-p", v, "nobody"]), Some(67));
    assert_eq!(
        code(&["set_permissions", "-p", "nowhere", "ops", ".*", ".*", ".*"]),
        Some(65)
    );
    assert_eq!(
        code(&["set_permissions", "-p", v, "ops", "(", ".*", ".*"]),
        Some(65)
    );
    assert_eq!(code(&["delete_vhost", "nowhere"]), Some(65));
    assert_eq!(code(&["delete_user"]), Some(64));
    assert_eq!(code(&["add_user", "a", "b", "c"]), Some(64));
    assert_eq!(code(&["no_such_command"]), Some(64));
    let missing = warren_ctl(&["--ctl-socket", "/nonexistent/ctl.sock"], &["status"]);
    assert_eq!(missing.status.code(), Some(69));

    assert_eq!(
        broker.ok(&["delete_vhost", v]),
        "Deleting vhost \"edge\" ...\n"
    );
    assert_eq!(broker.ok(&["-q", "list_vhosts"]), "name\n/\n");
    assert_eq!(
        broker.ok(&["delete_user", "ops"]),
        "Deleting user \"ops\" ...\n"
    );
    assert_eq!(broker.ok(&["-s", "list_users"]), "guest\t[administrator]\n");
    let status = broker.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "Interface: 127.0.0.1, port: {}, protocol: amqp",
            broker.port
        )),
        "{status}"
    );
}

fn passive() -> lapin::options::QueueDeclareOptions {
    lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_and_close_connection() {
    let broker = Broker::start(&[]);
    let url = broker.url("guest", "guest", "/");
    // Guarded: a hang fails the test, saying where.
    let with_lapin = async {
        let amqp = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = amqp.create_channel().await.expect("channel");
        ch.queue_declare("jobs".into(), Default::default(), Default::default())
            .await
            .expect("declare");
        for body in [b"1".as_slice(), b"22", b"333"] {
            ch.basic_publish(
                "".into(),
                "jobs".into(),
                Default::default(),
                body,
                Default::default(),
            )
            .await
            .expect("publish");
        }
        ch.queue_declare("more".into(), Default::default(), Default::default())
            .await
            .expect("declare");
        ch.basic_publish(
            "".into(),
            "more".into(),
            Default::default(),
            b"x",
            Default::default(),
        )
        .await
        .expect("publish");
        // Publishes are asynchronous: a declare after them is answered after them.
        ch.queue_declare("jobs".into(), passive(), Default::default())
            .await
            .expect("passive declare");
        assert_eq!(
            broker.ok(&["-q", "list_queues", "name", "messages", "message_bytes"]),
            "name\tmessages\tmessage_bytes\njobs\t3\t6\nmore\t1\t1\n"
        );
        assert_eq!(
            broker.ok(&["purge_queue", "jobs"]),
            "Purging queue 'jobs' in vhost '/' ...\n"
        );
        assert_eq!(
            broker.ok(&["delete_queue", "more"]),
            "Deleting queue 'more' on vhost '/' ...\nQueue was successfully deleted with 1 ready messages\n"
        );
        assert_eq!(
            broker.ok(&["-q", "list_queues"]),
            "name\tmessages\njobs\t0\n"
        );
        assert_eq!(
            broker.ctl(&["delete_queue", "more"]).status.code(),
            Some(65)
        );
        assert_eq!(broker.ctl(&["purge_queue", "more"]).status.code(), Some(65));
        ch.basic_publish(
            "".into(),
            "jobs".into(),
            Default::default(),
            b"kept",
            Default::default(),
        )
        .await
        .expect("publish");
        ch.queue_declare("jobs".into(), passive(), Default::default())
            .await
            .expect("passive declare");
        assert_eq!(
            broker
                .ctl(&["delete_queue", "jobs", "--if-empty"])
                .status
                .code(),
            Some(65)
        );
        drop(ch);
        let _ = amqp.close(200, "bye".into()).await;
    };
    tokio::time::timeout(GUARD, with_lapin)
        .await
        .expect("the lapin client's part finishes within the guard");

    // close_connection: the client is told 320 CONNECTION_FORCED with the reason.
    let mut peer = Peer::open(&url, Opts::default()).await;
    let local = peer.sock.local_addr().expect("local address");
    let name = format!("{local} -> 127.0.0.1:{}", broker.port);
    let listed = broker.ok(&["-q", "list_connections", "name"]);
    assert!(listed.lines().any(|l| l == name), "{listed}");
    assert_eq!(
        broker.ok(&["close_connection", &name, "going down for maintenance"]),
        format!("Closing connection {name}, reason: going down for maintenance...\n")
    );
    match peer.method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
            assert_eq!(c.reply_code, 320);
            assert_eq!(
                c.reply_text.as_str(),
                "CONNECTION_FORCED - going down for maintenance"
            );
        }
        other => panic!("expected connection.close 320, got {other:?}"),
    }
    assert_eq!(
        broker
            .ctl(&["close_connection", "nobody", "x"])
            .status
            .code(),
        Some(65)
    );

    // Deleting a vhost closes its connections the same way, and deleting
    // a user the user's.
    broker.ok(&["add_vhost", "doomed"]);
    broker.ok(&["set_permissions", "-p", "doomed", "guest", ".*", ".*", ".*"]);
    broker.ok(&["add_user", "leaving", "pw"]);
    broker.ok(&["set_permissions", "leaving", ".*", ".*", ".*"]);
    for (url, command, reason) in [
        (
            broker.url("guest", "guest", "doomed"),
            ["delete_vhost", "doomed"],
            "vhost 'doomed' is deleted",
        ),
        (
            broker.url("leaving", "pw", "/"),
            ["delete_user", "leaving"],
            "user 'leaving' is deleted",
        ),
    ] {
        let mut peer = Peer::open(&url, Opts::default()).await;
        broker.ok(&command);
        match peer.method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 320);
                assert_eq!(
                    c.reply_text.as_str(),
                    format!("CONNECTION_FORCED - {reason}")
                );
            }
            other => panic!("expected connection.close 320, got {other:?}"),
        }
    }
}

/// The edge platform's operator script (issue #15), against warren.
#[test]
fn the_edge_operator_script_provisions_warren() {
    let broker = Broker::start(&[]);
    broker.ok(&["add_vhost", "edge"]);
    let script = r#"
set -e
ctl() { "$WARREN" ctl --data-dir "$DATA" "$@"; }
ctl await_startup
ctl delete_user guest
ctl add_user edge-admin "$PASSWORD"
ctl set_user_tags edge-admin administrator
for vhost in $(ctl list_vhosts --no-table-headers --quiet); do
    ctl set_permissions -p "$vhost" edge-admin ".*" ".*" ".*"
done
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .env("WARREN", warren_bin())
        .env("DATA", broker.data_dir())
        .env("PASSWORD", "edge-pass")
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "the script failed: {}",
        text(&out.stderr)
    );
    assert_eq!(
        broker.ok(&["-q", "list_users"]),
        "user\ttags\nedge-admin\t[administrator]\n"
    );
    for v in ["/", "edge"] {
        assert_eq!(
            broker.ok(&["-q", "list_permissions", "-p", v]),
            "user\tconfigure\twrite\tread\nedge-admin\t.*\t.*\t.*\n"
        );
    }
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let login = |user: &str, password: &str, vhost: &str| {
        let url = broker.url(user, password, vhost);
        rt.block_on(async {
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                .await
                .is_ok()
        })
    };
    assert!(login("edge-admin", "edge-pass", "edge"));
    assert!(login("edge-admin", "edge-pass", "/"));
    assert!(!login("guest", "guest", "/"));
}

#[test]
fn the_control_socket_is_private_and_shared_with_care() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let a = Broker::start(&[]);
    let socket = a.data_dir().join("ctl.sock");
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&a.data_dir()), 0o700);
    assert_eq!(
        std::fs::metadata(&socket).expect("exists").uid(),
        std::fs::metadata(a.dir.path()).expect("exists").uid()
    );

    // A second broker on the same socket leaves it to the live one.
    let sock = path_str(&socket).to_owned();
    let b = Broker::start_in(TempDir::new("warren-ctl"), &["--ctl-socket", &sock]);
    let deadline = Instant::now() + GUARD;
    while std::net::TcpStream::connect(("127.0.0.1", b.port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the second broker does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = a.ok(&["status"]);
    assert!(status.contains(&format!("port: {},", a.port)), "{status}");
    let b_log = b.stop();
    assert!(
        b_log.contains("another broker answers on this control socket"),
        "{b_log}"
    );

    // A broker killed leaves a stale socket file: the next one replaces it.
    let dir = {
        let Broker { child, dir, .. } = a;
        drop(child);
        dir
    };
    assert!(socket.exists(), "kill -9 leaves the socket file");
    let c = Broker::start_in(dir, &[]);
    let out = c.ctl(&["await_startup", "-t", "60"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = c.ok(&["status"]);
    assert!(status.contains(&format!("port: {},", c.port)), "{status}");
    let log = c.stop();
    assert!(log.contains("replacing a stale control socket"), "{log}");
}

/// Drops what belongs to other tests from a definitions export of the
/// shared node: keeps `vhost`'s entries, no users, no global parameters.
fn only_vhost(defs: &serde_json::Value, vhost: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for key in ["queues", "exchanges", "bindings", "permissions"] {
        let items: Vec<serde_json::Value> = defs[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["vhost"] == vhost)
            .cloned()
            .collect();
        out.insert(key.to_owned(), items.into());
    }
    out.insert("vhosts".to_owned(), serde_json::json!([{ "name": vhost }]));
    serde_json::Value::Object(out)
}

/// The definitions of `vhost` that both brokers keep, comparable: the
/// vhost renamed to `as_vhost`, entries sorted.
fn comparable(defs: &serde_json::Value, vhost: &str, as_vhost: &str) -> serde_json::Value {
    const FIELDS: &[&str] = &[
        "name",
        "type",
        "durable",
        "auto_delete",
        "arguments",
        "source",
        "destination",
        "destination_type",
        "routing_key",
        "user",
        "configure",
        "write",
        "read",
    ];
    let mut out = serde_json::Map::new();
    for key in ["queues", "exchanges", "bindings", "permissions"] {
        let mut items: Vec<serde_json::Value> = defs[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["vhost"] == vhost)
            .map(|i| {
                // The fields both write (RabbitMQ 3.10 writes no `internal`).
                let mut kept = serde_json::Map::new();
                for field in FIELDS {
                    if let Some(value) = i.get(field) {
                        kept.insert((*field).to_owned(), value.clone());
                    }
                }
                kept.insert("vhost".to_owned(), as_vhost.into());
                serde_json::Value::Object(kept)
            })
            .collect();
        items.sort_by_key(|i| i.to_string());
        out.insert(key.to_owned(), items.into());
    }
    serde_json::Value::Object(out)
}

#[test]
fn definitions_move_between_rabbitmq_and_warren() {
    let vhost = RabbitVhost::new();
    let v = vhost.0.as_str();
    {
        let _state = State::hold(&format!("amqp://guest:guest@127.0.0.1:5672/{v}"));
    }
    let dir = TempDir::new("warren-defs");
    let exported = dir.join("rabbit.json");
    rabbitmqctl(&["export_definitions", path_str(&exported)]);
    let from_rabbit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exported).expect("read")).expect("JSON");
    let mine = only_vhost(&from_rabbit, v);
    assert!(
        !mine["queues"].as_array().is_none_or(Vec::is_empty),
        "{mine}"
    );
    let file = dir.join("mine.json");
    std::fs::write(&file, mine.to_string()).expect("write");

    // Imported by warren ctl, exported back: the same definitions.
    let broker = Broker::start(&[]);
    let out = broker.ok(&["import_definitions", path_str(&file)]);
    assert!(
        out.ends_with("Successfully imported definitions.\n"),
        "{out}"
    );
    let back: serde_json::Value =
        serde_json::from_str(&broker.ok(&["export_definitions", "-"])).expect("JSON");
    assert_eq!(comparable(&back, v, v), comparable(&from_rabbit, v, v));

    // And loaded at start by `warren broker --definitions`.
    let at_start = Broker::start(&["--definitions", path_str(&file)]);
    assert_eq!(
        at_start.ok(&["-q", "list_queues", "-p", v, "name", "durable", "arguments"]),
        broker.ok(&["-q", "list_queues", "-p", v, "name", "durable", "arguments"])
    );
    drop(at_start);

    // What warren exported imports into RabbitMQ unchanged (into a fresh
    // vhost of the test's own: the file's vhost renamed).
    let again = RabbitVhost::new();
    let renamed = comparable(&back, v, &again.0);
    let mut for_rabbit = renamed.as_object().cloned().unwrap_or_default();
    for_rabbit.insert(
        "vhosts".to_owned(),
        serde_json::json!([{ "name": again.0 }]),
    );
    let warren_file = dir.join("from-warren.json");
    std::fs::write(
        &warren_file,
        serde_json::Value::Object(for_rabbit).to_string(),
    )
    .expect("write");
    rabbitmqctl(&["import_definitions", path_str(&warren_file)]);
    let deadline = Instant::now() + GUARD;
    loop {
        let now: serde_json::Value =
            serde_json::from_str(&rabbitmqctl(&["export_definitions", "-"])).expect("JSON");
        if comparable(&now, &again.0, &again.0) == renamed {
            break;
        }
        // rabbitmqctl's import runs in the background.
        assert!(
            Instant::now() < deadline,
            "RabbitMQ's definitions differ: {}",
            comparable(&now, &again.0, &again.0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bad_definitions_are_refused_naming_the_field() {
    let dir = TempDir::new("warren-defs");
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"queues": [{"name": "q", "vhost": "/", "durable": "yes"}]}"#,
    )
    .expect("write");
    let broker = Broker::start(&[]);
    let out = broker.ctl(&["import_definitions", path_str(&bad)]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out.stderr).contains("queues[0].durable: expected a boolean, got a string"),
        "{}",
        text(&out.stderr)
    );
    // At start: the broker refuses to run, and says why.
    let refused = Command::new(warren_bin())
        .args(["broker", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--ctl-socket")
        .arg(dir.join("ctl.sock"))
        .args(["--definitions", path_str(&bad)])
        .output()
        .expect("warren broker runs");
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("queues[0].durable: expected a boolean, got a string"),
        "{}",
        text(&refused.stderr)
    );
}
