//! The `warren` command as a user runs it: `warren bench` measures calls
//! through a `warren broker` process over TCP, and bad arguments are refused
//! with a message and clap's exit code.
//!
//! Being an integration test of this crate also makes `cargo test
//! --workspace` build the `warren` binary, which the broker tests of the
//! `warren` crate run as a process (see `tests/common::warren_bin`).

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// `warren broker` on a free loopback port, killed on drop.
struct BrokerProcess {
    child: Child,
    port: u16,
}

impl BrokerProcess {
    fn start() -> Self {
        Self::start_with(&["--in-memory"])
    }

    /// `warren broker` with `extra` arguments (`start` keeps nothing on disk).
    fn start_with(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(WARREN)
            .args(["broker", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("warren broker starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "warren broker does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        BrokerProcess { child, port }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `warren args…`, killing it after two minutes (a hang guard).
fn warren(args: &[&str]) -> Output {
    let mut child = Command::new(WARREN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for warren") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("warren {args:?} still runs after two minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut stdout).expect("read stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut stderr).expect("read stderr");
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

#[test]
fn bench_counts_every_call_through_a_broker_process() {
    let broker = BrokerProcess::start();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port);
    let json = std::env::temp_dir().join(format!("warren-cli-bench-{}.json", std::process::id()));
    let svg = json.with_extension("svg");
    let out = warren(&[
        "bench",
        "--url",
        &url,
        "--count",
        "500",
        "--warmup",
        "0",
        "--in-flight",
        "8",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--plot",
        svg.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "warren bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    let run = &report[0];
    assert_eq!(run["completed"], 500, "{report}");
    assert_has_series(&report);
    assert_plots_each_run(&svg, 1);
    assert_eq!(run["errors"], 0, "{report}");
    assert_eq!(run["timeouts"], 0, "{report}");
    // The servers also answer the bench's readiness probe before the run.
    let received = run["received"].as_u64().expect("received is a count");
    assert!(
        received >= 500,
        "the bench's own server saw each call: {report}"
    );
}

#[test]
fn bench_queue_mode_receives_every_message_it_sent() {
    let broker = BrokerProcess::start();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port);
    let json = std::env::temp_dir().join(format!(
        "warren-cli-bench-queue-{}.json",
        std::process::id()
    ));
    let svg = json.with_extension("svg");
    let out = warren(&[
        "bench",
        "--mode",
        "queue",
        "--url",
        &url,
        "--count",
        "1000",
        "--warmup",
        "0",
        "-x",
        "2",
        "-y",
        "3",
        "--queues",
        "2",
        "--confirm",
        "8",
        "--persistent",
        "--prefetch",
        "20",
        "--size",
        "100",
        // The same broker again: two runs, one report.
        "--compare",
        &url,
        "--json",
        json.to_str().expect("utf-8 path"),
        "--plot",
        svg.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "warren bench --mode queue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("recv msg/s"), "{stdout}");
    assert!(
        stdout.contains("2 producers, 3 consumers, 2 queues, body 100 B, confirm 8, persistent"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    assert!(stdout.contains(" vs "), "--compare prints ratios: {stdout}");
    let runs = report.as_array().expect("one result per URL");
    assert_eq!(runs.len(), 2, "{report}");
    assert_has_series(&report);
    assert_plots_each_run(&svg, 2);
    for run in runs {
        assert_eq!(run["mode"], "queue", "{report}");
        let queue = &run["queue"];
        assert_eq!(queue["sent"], 1000, "{report}");
        assert_eq!(queue["sent_total"], 1000, "{report}");
        assert_eq!(queue["received_total"], 1000, "no loss: {report}");
        assert_eq!(queue["publish_errors"], 0, "{report}");
        assert_eq!(queue["ack_errors"], 0, "{report}");
        // Every measured message was received and timed.
        assert_eq!(run["completed"], 1000, "{report}");
        let latency = &run["latency_us"];
        assert!(
            latency["p50"].as_u64() <= latency["p99"].as_u64(),
            "{report}"
        );
    }
}

/// What the dashboard's Benchmark view plots is in every run of the
/// `--json` report: the completions second by second (adding up to
/// `completed`) and the latency distribution (percentiles rising to
/// 99.999, latencies never falling).
fn assert_has_series(report: &serde_json::Value) {
    for run in report.as_array().expect("an array of runs") {
        let timeline: Vec<u64> = run["timeline"]
            .as_array()
            .expect("a timeline")
            .iter()
            .map(|n| n.as_u64().expect("a count"))
            .collect();
        assert!(!timeline.is_empty(), "{run}");
        assert_eq!(
            timeline.iter().sum::<u64>(),
            run["completed"].as_u64().expect("completed"),
            "every completion is in a second: {run}"
        );
        let points: Vec<(f64, u64)> = run["distribution"]
            .as_array()
            .expect("a distribution")
            .iter()
            .map(|p| {
                (
                    p[0].as_f64().expect("a percentile"),
                    p[1].as_u64().expect("a latency"),
                )
            })
            .collect();
        assert!(points.len() > 10, "{run}");
        assert_eq!(points[0].0, 0.0, "{run}");
        assert!((points[points.len() - 1].0 - 99.999).abs() < 1e-6, "{run}");
        for w in points.windows(2) {
            assert!(w[0].0 < w[1].0 && w[0].1 <= w[1].1, "{run}");
        }
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(run["latency_us"][p].is_u64(), "{p}: {run}");
        }
    }
}

/// The `--plot` file is an SVG document with, for each of `runs` runs, its
/// own colour on its lines: latency, throughput, and its legend entry.
fn assert_plots_each_run(svg: &std::path::Path, runs: usize) {
    let text = std::fs::read_to_string(svg).expect("the SVG plot");
    let _ = std::fs::remove_file(svg);
    assert!(text.trim_start().starts_with("<svg"), "{text}");
    assert!(text.trim_end().ends_with("</svg>"), "{text}");
    let mut strokes = std::collections::BTreeMap::<&str, usize>::new();
    for polyline in text.split("<polyline").skip(1) {
        let stroke = polyline
            .split("stroke=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_default();
        if stroke != "#000000" {
            *strokes.entry(stroke).or_default() += 1;
        }
    }
    assert_eq!(strokes.len(), runs, "one colour per run: {strokes:?}");
    assert!(
        strokes.values().all(|n| *n >= 3),
        "latency, throughput and legend lines per run: {strokes:?}"
    );
    for i in 1..=runs {
        assert!(text.contains(&format!("{i}. amqp://guest@")), "{text}");
    }
}

#[test]
fn bench_queue_mode_in_process_with_autoack_and_a_rate() {
    let json = std::env::temp_dir().join(format!(
        "warren-cli-bench-queue-local-{}.json",
        std::process::id()
    ));
    let out = warren(&[
        "bench",
        "--mode",
        "queue",
        "--url",
        "",
        "--count",
        "400",
        "--warmup",
        "0",
        "--autoack",
        "-x",
        "2",
        // Per producer: 2 × 2,000 msg/s, 400 messages.
        "--rate",
        "2000",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "warren bench --mode queue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let _ = std::fs::remove_file(&json);
    let run = &report[0];
    assert_eq!(run["url"], "embedded", "{report}");
    assert_eq!(run["queue"]["autoack"], true, "{report}");
    assert_eq!(run["queue"]["sent"], 400, "{report}");
    assert_eq!(run["queue"]["received_total"], 400, "{report}");
    assert_eq!(run["completed"], 400, "{report}");
}

#[test]
fn bench_queue_mode_is_refused_in_split_roles() {
    let out = warren(&["bench", "client", "--mode", "queue"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mode queue"), "{err}");
}

#[test]
fn an_unknown_flag_is_refused_with_clap_exit_code_2() {
    let out = warren(&["broker", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn a_bad_memory_watermark_is_refused_before_listening() {
    let out = warren(&[
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--memory-high-watermark",
        "lots",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lots"), "{err}");
}

#[test]
fn a_data_directory_another_broker_holds_is_refused_naming_it() {
    let dir = std::env::temp_dir().join(format!("warren-cli-locked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().expect("a UTF-8 temporary path");
    let first = BrokerProcess::start_with(&["--data-dir", d]);
    let out = warren(&["broker", "--listen", "127.0.0.1:0", "--data-dir", d]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another broker")
            && err.contains(&format!("pid {}", first.child.id())),
        "{err}"
    );
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unusable_data_directory_is_refused_before_listening() {
    let out = warren(&[
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "/dev/null/warren",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use the data directory /dev/null/warren"),
        "{err}"
    );
    let out = warren(&["broker", "--in-memory", "--disk-free-limit", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lots"), "{err}");
}
