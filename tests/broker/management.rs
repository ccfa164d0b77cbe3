//! `warren broker --management`: RabbitMQ's management HTTP API, `/metrics`
//! and the dashboard. The same requests go to warren and to a RabbitMQ node
//! of the test's own with `rabbitmq_management` and `rabbitmq_prometheus`
//! enabled (never the shared node), and the answers are compared field by
//! field for the subset warren implements; RabbitMQ's own `rabbitmqadmin`
//! provisions a warren broker; headless Chromium renders the dashboard.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::{request, Answer};
use crate::common::rabbit::RabbitNode;
use crate::common::*;

/// `warren broker` with a management listener, killed on drop.
struct ManagedBroker {
    child: Child,
    amqp: u16,
    http: u16,
}

impl ManagedBroker {
    fn start() -> Self {
        let (amqp, http) = (free_port(), free_port());
        let child = Command::new(warren_bin())
            .args(["broker", "--listen", &format!("127.0.0.1:{amqp}")])
            .args(["--management", &format!("127.0.0.1:{http}")])
            .arg("--in-memory")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("warren broker starts");
        let broker = ManagedBroker { child, amqp, http };
        wait_for_port(http);
        broker
    }
}

impl Drop for ManagedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on port {port} after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

fn call(port: u16, method: &str, path: &str, body: Option<Value>) -> Answer {
    request(port, method, path, GUEST, body.as_ref())
}

/// The named fields of `value` (absent ones as `null`).
fn pick(value: &Value, fields: &[&str]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    value.get(*f).cloned().unwrap_or(Value::Null),
                )
            })
            .collect(),
    )
}

/// Polls `GET path` until `ready` holds (RabbitMQ's statistics lag by its
/// collection interval); the last answer either way.
fn poll(port: u16, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = call(port, "GET", path, None).json();
        if ready(&answer) || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The same scenario against one broker's API: what each step answered,
/// reduced to what warren and RabbitMQ must agree on.
fn scenario(port: u16, vhost: &str) -> Vec<(String, Value)> {
    let v = vhost.replace('/', "%2F");
    let mut seen = Vec::new();
    let mut step = |name: &str, observed: Value| seen.push((name.to_owned(), observed));
    let status = |a: Answer| json!(a.status);

    step(
        "create vhost",
        status(call(port, "PUT", &format!("/api/vhosts/{v}"), None)),
    );
    step(
        "create vhost again",
        status(call(port, "PUT", &format!("/api/vhosts/{v}"), None)),
    );
    step(
        "vhost",
        pick(
            &call(port, "GET", &format!("/api/vhosts/{v}"), None).json(),
            &["name", "tracing"],
        ),
    );
    step(
        "creator's permissions",
        call(port, "GET", &format!("/api/permissions/{v}/guest"), None).json(),
    );
    let queue =
        json!({"durable": true, "auto_delete": false, "arguments": {"x-message-ttl": 60000}});
    step(
        "declare queue",
        status(call(
            port,
            "PUT",
            &format!("/api/queues/{v}/q1"),
            Some(queue.clone()),
        )),
    );
    step(
        "declare queue again",
        status(call(
            port,
            "PUT",
            &format!("/api/queues/{v}/q1"),
            Some(queue),
        )),
    );
    step(
        "declare queue inequivalently",
        status(call(
            port,
            "PUT",
            &format!("/api/queues/{v}/q1"),
            Some(json!({"durable": false})),
        )),
    );
    step(
        "declare exchange",
        status(call(
            port,
            "PUT",
            &format!("/api/exchanges/{v}/x1"),
            Some(json!({"type": "topic", "durable": true})),
        )),
    );
    step(
        "declare exchange without a type (direct)",
        status(call(
            port,
            "PUT",
            &format!("/api/exchanges/{v}/x2"),
            Some(json!({"durable": true})),
        )),
    );
    step(
        "bind",
        status(call(
            port,
            "POST",
            &format!("/api/bindings/{v}/e/x1/q/q1"),
            Some(json!({"routing_key": "a.*"})),
        )),
    );
    let properties = json!({"delivery_mode": 2, "content_type": "text/plain"});
    for (exchange, key) in [("x1", "a.b"), ("amq.default", "q1"), ("x1", "nowhere")] {
        let body = json!({"routing_key": key, "payload": format!("to {key}"), "payload_encoding": "string", "properties": properties});
        step(
            &format!("publish to {exchange} with {key}"),
            call(
                port,
                "POST",
                &format!("/api/exchanges/{v}/{exchange}/publish"),
                Some(body),
            )
            .json(),
        );
    }
    let q = poll(port, &format!("/api/queues/{v}/q1"), |q| q["messages"] == 2);
    step(
        "queue",
        pick(
            &q,
            &[
                "name",
                "vhost",
                "durable",
                "auto_delete",
                "exclusive",
                "arguments",
                "consumers",
                "messages",
                "messages_ready",
                "messages_unacknowledged",
                "state",
                "type",
            ],
        ),
    );
    let queues = call(port, "GET", &format!("/api/queues/{v}"), None).json();
    step("queue names", json!(names(&queues)));
    step(
        "exchange",
        pick(
            &call(port, "GET", &format!("/api/exchanges/{v}/x1"), None).json(),
            &[
                "name",
                "vhost",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ],
        ),
    );
    let exchanges = call(port, "GET", &format!("/api/exchanges/{v}"), None).json();
    step("exchange names", json!(names(&exchanges)));
    step(
        "exchange declared without a type",
        pick(
            &call(port, "GET", &format!("/api/exchanges/{v}/x2"), None).json(),
            &["name", "type"],
        ),
    );
    let mut bindings: Vec<Value> = call(port, "GET", &format!("/api/bindings/{v}"), None)
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            pick(
                b,
                &[
                    "source",
                    "vhost",
                    "destination",
                    "destination_type",
                    "routing_key",
                    "arguments",
                    "properties_key",
                ],
            )
        })
        .collect();
    bindings.sort_by_key(Value::to_string);
    step("bindings", json!(bindings));
    let got = call(
        port,
        "POST",
        &format!("/api/queues/{v}/q1/get"),
        Some(json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto", "truncate": 50000})),
    )
    .json();
    let got: Vec<Value> = got
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            pick(
                m,
                &[
                    "payload",
                    "payload_bytes",
                    "payload_encoding",
                    "redelivered",
                    "exchange",
                    "routing_key",
                    "message_count",
                    "properties",
                ],
            )
        })
        .collect();
    step("get", json!(got));
    step(
        "purge",
        status(call(
            port,
            "DELETE",
            &format!("/api/queues/{v}/q1/contents"),
            None,
        )),
    );
    let missing = call(port, "GET", &format!("/api/queues/{v}/nope"), None);
    step(
        "missing queue",
        json!([missing.status, missing.json()["error"]]),
    );
    step(
        "unbind",
        status(call(
            port,
            "DELETE",
            &format!("/api/bindings/{v}/e/x1/q/q1/a.*"),
            None,
        )),
    );
    step("whoami", call(port, "GET", "/api/whoami", None).json());
    let wrong = request(port, "GET", "/api/overview", Some(("guest", "wrong")), None);
    step(
        "wrong password",
        json!([wrong.status, wrong.header("www-authenticate").is_some()]),
    );
    let user = format!("{}-user", vhost.trim_start_matches('/'));
    step(
        "add a user without tags",
        status(call(
            port,
            "PUT",
            &format!("/api/users/{user}"),
            Some(json!({"password": "pw", "tags": ""})),
        )),
    );
    step(
        "update the user",
        status(call(
            port,
            "PUT",
            &format!("/api/users/{user}"),
            Some(json!({"password": "pw", "tags": ""})),
        )),
    );
    step(
        "user",
        pick(
            &call(port, "GET", &format!("/api/users/{user}"), None).json(),
            &["name", "tags"],
        ),
    );
    step(
        "a user without tags may not use the API",
        json!(request(port, "GET", "/api/overview", Some((&user, "pw")), None).status),
    );
    step(
        "grant",
        status(call(
            port,
            "PUT",
            &format!("/api/permissions/{v}/{user}"),
            Some(json!({"configure": "^q", "write": ".*", "read": ".*"})),
        )),
    );
    step(
        "permission",
        call(port, "GET", &format!("/api/permissions/{v}/{user}"), None).json(),
    );
    // What the tags allow: `management` sees the vhosts it has permissions
    // on, `monitoring` sees everything, neither manages users or vhosts.
    step(
        "tag the user management",
        status(call(
            port,
            "PUT",
            &format!("/api/users/{user}"),
            Some(json!({"password": "pw", "tags": "management"})),
        )),
    );
    let as_user = |method: &str, path: &str| request(port, method, path, Some((&user, "pw")), None);
    step(
        "management: vhosts",
        json!(names(&as_user("GET", "/api/vhosts").json())),
    );
    step(
        "management: queues",
        json!(names(&as_user("GET", "/api/queues").json())),
    );
    step(
        "management: users",
        json!(as_user("GET", "/api/users").status),
    );
    step(
        "management: create a vhost",
        json!(as_user("PUT", "/api/vhosts/not-mine").status),
    );
    step(
        "management: another vhost's queues",
        json!(as_user("GET", "/api/queues/%2F").status),
    );
    step(
        "tag the user monitoring",
        status(call(
            port,
            "PUT",
            &format!("/api/users/{user}"),
            Some(json!({"password": "pw", "tags": ["monitoring"]})),
        )),
    );
    step("monitoring: whoami", as_user("GET", "/api/whoami").json());
    step(
        "monitoring: users",
        json!(as_user("GET", "/api/users").status),
    );
    step(
        "monitoring: sees every vhost",
        json!(names(&as_user("GET", "/api/vhosts").json()).contains(&"/".to_owned())),
    );
    step(
        "no password: cannot log in",
        json!([
            call(
                port,
                "PUT",
                &format!("/api/users/{user}"),
                Some(json!({"tags": "monitoring"}))
            )
            .status,
            as_user("GET", "/api/whoami").status,
        ]),
    );
    step(
        "revoke",
        status(call(
            port,
            "DELETE",
            &format!("/api/permissions/{v}/{user}"),
            None,
        )),
    );
    step(
        "delete the user",
        status(call(port, "DELETE", &format!("/api/users/{user}"), None)),
    );
    step("alarms", {
        let a = call(port, "GET", "/api/health/checks/alarms", None);
        json!([a.status, a.json()])
    });
    let overview = call(port, "GET", "/api/overview", None).json();
    let keys = [
        "management_version",
        "rates_mode",
        "queue_totals",
        "object_totals",
        "node",
        "listeners",
        "exchange_types",
        "rabbitmq_version",
        "cluster_name",
    ];
    step(
        "overview fields",
        json!(keys
            .iter()
            .map(|k| overview.get(*k).is_some())
            .collect::<Vec<_>>()),
    );
    let totals = overview["object_totals"].as_object().map(|o| {
        let mut k: Vec<&String> = o.keys().collect();
        k.sort();
        json!(k)
    });
    step("object_totals fields", totals.unwrap_or(Value::Null));
    step(
        "delete exchange",
        status(call(
            port,
            "DELETE",
            &format!("/api/exchanges/{v}/x1"),
            None,
        )),
    );
    step(
        "delete queue",
        status(call(port, "DELETE", &format!("/api/queues/{v}/q1"), None)),
    );
    step(
        "delete vhost",
        status(call(port, "DELETE", &format!("/api/vhosts/{v}"), None)),
    );
    step(
        "delete vhost again",
        status(call(port, "DELETE", &format!("/api/vhosts/{v}"), None)),
    );
    seen
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A Prometheus text page as the reference Python parser reads it.
fn parse_metrics(url: &str) -> Value {
    let run = python_run(Duration::from_secs(60), "prometheus_parse.py", &[url]);
    serde_json::from_str(run.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("prometheus_parse.py printed no JSON ({e}): {run:?}"))
}

#[test]
fn the_management_api_and_metrics_answer_as_rabbitmqs_do() {
    let (api, prom) = (free_port(), free_port());
    let config = format!(
        "management.tcp.port = {api}\nmanagement.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {prom}\ncollect_statistics_interval = 500"
    );
    let Some(_rabbit) = RabbitNode::start(
        "mgmt",
        &config,
        &["rabbitmq_management", "rabbitmq_prometheus"],
    ) else {
        return;
    };
    wait_for_port(api);
    let warren = ManagedBroker::start();
    let vhost = unique("mgmt-vhost");
    let expected = scenario(api, &vhost);
    let got = scenario(warren.http, &vhost);
    assert_eq!(got.len(), expected.len());
    let mut differences = Vec::new();
    for ((step, theirs), (_, ours)) in expected.iter().zip(&got) {
        if theirs != ours {
            differences.push(format!("{step}:\n  RabbitMQ: {theirs}\n  warren:   {ours}"));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));

    // /metrics: parsed by the reference parser; every rabbitmq_* family
    // warren exports is one RabbitMQ's plugin exports too.
    let theirs = parse_metrics(&format!("http://127.0.0.1:{prom}/metrics"));
    // Three messages from an AMQP client (whose connection stays open
    // while /metrics is read), one through the API.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    for queue in ["metrics-q1", "metrics-q2"] {
        call(
            warren.http,
            "PUT",
            &format!("/api/queues/%2F/{queue}"),
            None,
        );
    }
    // Through a named exchange: the core counts no `publish_in` on the
    // default one.
    call(
        warren.http,
        "POST",
        "/api/bindings/%2F/e/amq.fanout/q/metrics-q1",
        None,
    );
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", warren.amqp);
    let _client = runtime.block_on(async {
        let connection = warren::connect(&url).await.expect("connect over AMQP");
        for _ in 0..3 {
            let message = warren::transport::Outgoing {
                exchange: "amq.fanout".into(),
                routing_key: String::new(),
                mandatory: false,
                confirm: true,
                properties: Default::default(),
                body: "x".into(),
            };
            connection
                .transport()
                .publish(message)
                .await
                .expect("publish");
        }
        connection
    });
    let body = json!({"routing_key": "metrics-q2", "payload": "x", "payload_encoding": "string", "properties": {}});
    call(
        warren.http,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        Some(body),
    );
    let ours = parse_metrics(&format!("http://127.0.0.1:{}/metrics", warren.http));
    let ours = ours.as_object().expect("families");
    let foreign: Vec<&String> = ours
        .keys()
        .filter(|name| name.starts_with("rabbitmq_") && theirs.get(name.as_str()).is_none())
        .collect();
    assert!(foreign.is_empty(), "not RabbitMQ's names: {foreign:?}");
    let value = |name: &str| ours[name]["samples"][0][2].as_f64();
    assert_eq!(value("rabbitmq_queue_messages_ready"), Some(4.0));
    assert_eq!(value("rabbitmq_queue_messages_unacked"), Some(0.0));
    assert!(value("rabbitmq_global_messages_received") >= Some(3.0));
    assert_eq!(value("rabbitmq_connections"), Some(1.0));
    assert_eq!(value("rabbitmq_alarms_memory_used_watermark"), Some(0.0));
    for name in [
        "rabbitmq_connections",
        "rabbitmq_channels",
        "rabbitmq_global_messages_delivered",
        "rabbitmq_global_messages_acknowledged",
        "rabbitmq_process_resident_memory_bytes",
        "warren_rpc_client_calls",
        "warren_rpc_server_duration_seconds",
        "warren_rpc_reconnects",
    ] {
        assert!(ours.contains_key(name), "{name} missing from /metrics");
    }
    let per_queue = parse_metrics(&format!(
        "http://127.0.0.1:{}/metrics/per-object",
        warren.http
    ));
    let samples = per_queue["rabbitmq_queue_messages_ready"]["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        samples
            .iter()
            .any(|s| s[1]["queue"] == "metrics-q1" && s[1]["vhost"] == "/" && s[2] == 3.0),
        "{samples:?}"
    );
}

#[test]
fn rabbitmqadmin_provisions_a_warren_broker() {
    if Command::new("rabbitmqadmin")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("SKIP: rabbitmqadmin is not installed (Debian's rabbitmq-server has it)");
        return;
    }
    let warren = ManagedBroker::start();
    let admin = |user: &str, password: &str, args: &[&str]| -> String {
        let out = Command::new("rabbitmqadmin")
            .args([
                "-H",
                "127.0.0.1",
                "-P",
                &warren.http.to_string(),
                "-u",
                user,
                "-p",
                password,
            ])
            .args(args)
            .output()
            .expect("rabbitmqadmin runs");
        assert!(
            out.status.success(),
            "rabbitmqadmin {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The edge platform's script: its own administrator, permissions on
    // every vhost, guest gone, then its vhost and durable queues.
    admin(
        "guest",
        "guest",
        &[
            "declare",
            "user",
            "name=ops",
            "password=s3cret",
            "tags=administrator",
        ],
    );
    let vhosts = admin(
        "guest",
        "guest",
        &["-f", "tsv", "-q", "list", "vhosts", "name"],
    );
    for vhost in vhosts.lines().filter(|l| !l.is_empty()) {
        admin(
            "guest",
            "guest",
            &[
                "declare",
                "permission",
                &format!("vhost={vhost}"),
                "user=ops",
                "configure=.*",
                "write=.*",
                "read=.*",
            ],
        );
    }
    admin("ops", "s3cret", &["delete", "user", "name=guest"]);
    admin("ops", "s3cret", &["declare", "vhost", "name=edge"]);
    for queue in ["edge.events", "edge.commands"] {
        admin(
            "ops",
            "s3cret",
            &[
                "-V",
                "edge",
                "declare",
                "queue",
                &format!("name={queue}"),
                "durable=true",
            ],
        );
    }
    admin(
        "ops",
        "s3cret",
        &[
            "-V",
            "edge",
            "publish",
            "exchange=amq.default",
            "routing_key=edge.events",
            "payload=hello",
        ],
    );
    let queues = admin(
        "ops",
        "s3cret",
        &[
            "-V", "edge", "-f", "tsv", "-q", "list", "queues", "name", "durable", "messages",
        ],
    );
    let mut lines: Vec<&str> = queues.lines().collect();
    lines.sort();
    assert_eq!(lines, ["edge.commands\tTrue\t0", "edge.events\tTrue\t1"]);
    let got = admin(
        "ops",
        "s3cret",
        &[
            "-V",
            "edge",
            "-f",
            "tsv",
            "-q",
            "get",
            "queue=edge.events",
            "ackmode=ack_requeue_false",
        ],
    );
    assert!(got.contains("hello"), "{got}");
    let users = admin(
        "ops",
        "s3cret",
        &["-f", "tsv", "-q", "list", "users", "name"],
    );
    assert_eq!(users.trim(), "ops", "guest is gone");
    // guest can no longer log in, over HTTP or AMQP.
    assert_eq!(
        request(warren.http, "GET", "/api/whoami", GUEST, None).status,
        401
    );
    let _ = warren.amqp;
}

/// Runs headless Chromium on `url` with `args`; `None` (after saying so)
/// where there is no Chromium.
fn chromium(args: &[&str], url: &str) -> Option<String> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
        ])
        .args(args)
        .arg(url)
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => {
            println!("SKIP: cannot run chromium ({e}); Debian: apt-get install chromium");
            None
        }
    }
}

#[test]
fn the_dashboard_lists_the_queues_in_headless_chromium() {
    let warren = ManagedBroker::start();
    let queues = [unique("dash-orders"), unique("dash-invoices")];
    for q in &queues {
        assert_eq!(
            call(warren.http, "PUT", &format!("/api/queues/%2F/{q}"), None).status,
            201
        );
    }
    // A warren RPC server and a client that called it: the RPC view groups
    // their queues into a service.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let topic = unique("dash-calc");
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", warren.amqp);
    let _rpc = runtime.block_on(async {
        let connection = warren::connect(&amqp).await.expect("connect over AMQP");
        let (records, _) = tokio::sync::mpsc::unbounded_channel();
        let server = calc("dash-server-1", &records)
            .builder()
            .topic(&topic)
            .serve(&connection, "dash-server-1")
            .await
            .expect("serve");
        let client = CalcClient::new(&connection)
            .topic(&topic)
            .timeout(Duration::from_secs(20));
        assert_eq!(client.add(1, 2).await.expect("call"), 3);
        (connection, server, client)
    });
    let url = format!("http://guest:guest@127.0.0.1:{}/", warren.http);
    let Some(dom) = chromium(&["--dump-dom"], &url) else {
        return;
    };
    let services = dom.split("id=\"services\"").nth(1).unwrap_or_default();
    assert!(
        services.contains(topic.as_str()),
        "{topic} not in the RPC view:\n{dom}"
    );
    assert!(
        services.contains("servers: dash-server-1"),
        "the server under its topic:\n{services}"
    );
    assert!(
        services.contains(&format!("{topic}_fanout_")),
        "its fanout queue:\n{services}"
    );
    assert!(
        services.contains("reply_"),
        "the client's reply queue:\n{services}"
    );
    for q in &queues {
        assert!(
            dom.contains(q.as_str()),
            "{q} not in the dashboard's DOM:\n{dom}"
        );
    }
    assert!(
        dom.contains("<form id=\"login\" hidden"),
        "logged in from the URL"
    );
    let shot = repo().join("target/management-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &[
            "--window-size=1200,800",
            &format!("--screenshot={}", shot.display()),
        ],
        &url,
    );
    assert!(
        Path::new(&shot).is_file(),
        "a screenshot at {}",
        shot.display()
    );

    // Without credentials the page asks for them.
    let dom = chromium(
        &["--dump-dom"],
        &format!("http://127.0.0.1:{}/", warren.http),
    )
    .unwrap_or_default();
    assert!(dom.contains("<form id=\"login\">"), "{dom}");
    assert!(!dom.contains(queues[0].as_str()));
    // Wrong credentials are refused before the page loads.
    let wrong = request(warren.http, "GET", "/", Some(("guest", "nope")), None);
    assert_eq!(wrong.status, 401);
}

#[test]
fn the_benchmark_view_plots_a_bench_json_file_in_headless_chromium() {
    let warren = ManagedBroker::start();
    // A real result: `warren bench` twice through the broker (`--compare`).
    let amqp = format!("amqp://guest:guest@127.0.0.1:{}/%2f", warren.amqp);
    let json = std::env::temp_dir().join(unique("dash-bench") + ".json");
    let out = Command::new(warren_bin())
        .args(["bench", "--url", &amqp, "--compare", &amqp])
        .args(["--count", "200", "--warmup", "0", "--in-flight", "4"])
        .arg("--json")
        .arg(&json)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .output()
        .expect("warren bench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read(&json).expect("the bench's JSON");
    let _ = std::fs::remove_file(&json);
    // The file picker's path without a picker: the result in the link.
    let encoded: String = report
        .iter()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => char::from(*b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!(
        "http://guest:guest@127.0.0.1:{}/#bench={encoded}",
        warren.http
    );
    let Some(dom) = chromium(&["--dump-dom"], &url) else {
        return;
    };
    let section = dom
        .split("<section id=\"benchmark\"")
        .nth(1)
        .unwrap_or_default();
    assert!(
        section.starts_with(" class=\"active\""),
        "the link opens the Benchmark view:\n{dom}"
    );
    let runs = section
        .split("id=\"bench-runs\">")
        .nth(1)
        .and_then(|s| s.split("</tbody>").next())
        .unwrap_or_default();
    assert_eq!(
        runs.matches("<tr>").count(),
        2,
        "one row per run:\n{section}"
    );
    assert!(runs.contains("amqp://guest@127.0.0.1:"), "{runs}");
    for plot in ["bench-throughput", "bench-latency"] {
        let svg = section
            .split(&format!("id=\"{plot}\""))
            .nth(1)
            .and_then(|s| s.split("</svg>").next())
            .unwrap_or_default();
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "{plot}: one line per run:\n{svg}"
        );
    }
    assert!(
        section.contains("id=\"bench-error\"></span>"),
        "no error:\n{section}"
    );
    // Something else is refused with a message, not plotted.
    let dom = chromium(
        &["--dump-dom"],
        &format!(
            "http://guest:guest@127.0.0.1:{}/#bench=%5B%7B%22url%22%3A1%7D%5D",
            warren.http
        ),
    )
    .unwrap_or_default();
    assert!(
        dom.contains("not a warren bench --json file"),
        "an error for [{{\"url\":1}}]:\n{dom}"
    );
    assert!(
        dom.contains("id=\"bench-runs\"></tbody>"),
        "nothing plotted:\n{dom}"
    );
}

#[test]
fn message_rates_follow_the_traffic() {
    let warren = ManagedBroker::start();
    let queue = unique("rates");
    call(
        warren.http,
        "PUT",
        &format!("/api/queues/%2F/{queue}"),
        None,
    );
    call(
        warren.http,
        "POST",
        &format!("/api/bindings/%2F/e/amq.fanout/q/{queue}"),
        None,
    );
    let publish =
        json!({"routing_key": "", "payload": "x", "payload_encoding": "string", "properties": {}});
    // Rates are sampled every 5 s: publish until two samples apart show it
    // (the guard only bounds a broken broker).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (queue_rate, overview_rate) = loop {
        for _ in 0..10 {
            call(
                warren.http,
                "POST",
                "/api/exchanges/%2F/amq.fanout/publish",
                Some(publish.clone()),
            );
        }
        let q = call(
            warren.http,
            "GET",
            &format!("/api/queues/%2F/{queue}"),
            None,
        )
        .json();
        let o = call(warren.http, "GET", "/api/overview", None).json();
        let rates = (
            q["message_stats"]["publish_details"]["rate"].as_f64(),
            o["message_stats"]["publish_details"]["rate"].as_f64(),
        );
        if rates.0 > Some(0.0) && rates.1 > Some(0.0) || Instant::now() >= deadline {
            break rates;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(queue_rate > Some(0.0), "{queue_rate:?}");
    assert!(overview_rate > Some(0.0), "{overview_rate:?}");
}
