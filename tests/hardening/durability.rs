//! Crashes (issue #11): a broker killed mid-stream keeps every message it
//! confirmed, its durable exchange and binding, and forgets its transient queue;
//! a torn write at the end of the log is dropped alone; a full disk blocks
//! publishers instead of corrupting anything. A real `warren broker` process on a
//! data directory, killed with SIGKILL; the same assertions against RabbitMQ (a
//! node of the test's own, restarted with `stop_app` / `start_app`). The clients
//! are pika (`tests/python/durability.py`).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::rabbit::{RabbitNode, TempDir};
use crate::common::{free_port, python_run, python_script, unique, warren_bin};

/// Hang guard for each step (never a timing claim).
const GUARD: Duration = Duration::from_secs(300);

/// A `warren broker` process on a data directory, restartable.
struct Warren {
    dir: PathBuf,
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Warren {
    fn start(dir: &Path, log: PathBuf, extra: &[&str]) -> Self {
        let mut w = Warren {
            dir: dir.to_path_buf(),
            port: free_port(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            log,
        };
        w.spawn();
        w
    }

    /// Starts the process (appending to its log) and waits until it listens.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the broker log");
        let mut child = Command::new(warren_bin())
            .args(["broker", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("warren broker starts");
        let deadline = Instant::now() + GUARD;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("warren broker exited ({status}):\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "warren broker does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL: no clean shutdown, nothing flushed that was not already.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `durability.py publish`, read line by line as it goes.
struct Publisher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Publisher {
    fn start(url: &str, suffix: &str, count: usize, body: usize) -> Self {
        let mut child = python_script("durability.py")
            .args([
                "publish",
                url,
                suffix,
                &count.to_string(),
                &body.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Publisher { child, lines }
    }

    /// The next line; `None` at the end of the script's output.
    fn next(&self) -> Option<String> {
        match self.lines.recv_timeout(GUARD) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the publisher printed nothing for {GUARD:?}")
            }
        }
    }

    /// Reads lines, recording confirmed ids, until `stop` says so (or the end).
    fn read_until(
        &self,
        confirmed: &mut BTreeSet<u64>,
        stop: impl Fn(&str, usize) -> bool,
    ) -> Option<String> {
        while let Some(line) = self.next() {
            if let Some(id) = line.strip_prefix("ok ") {
                confirmed.insert(id.parse().expect("an id"));
            }
            if stop(&line, confirmed.len()) {
                return Some(line);
            }
        }
        None
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `durability.py check` found: message ids (with their redelivered flag),
/// whether the transient queue is gone and the exchange routes again.
struct Checked {
    ids: Vec<u64>,
    transient_gone: bool,
    routed: bool,
}

fn check(url: &str, suffix: &str) -> Checked {
    let run = python_run(GUARD, "durability.py", &["check", url, suffix]);
    assert!(
        run.status.is_some_and(|s| s.success()),
        "durability.py check failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let mut ids = Vec::new();
    for line in run.stdout.lines() {
        if let Some(rest) = line.strip_prefix("id ") {
            let id = rest.split(' ').next().and_then(|i| i.parse().ok());
            ids.push(id.expect("an id"));
        }
    }
    Checked {
        ids,
        transient_gone: run.stdout.contains("transient gone"),
        routed: run.stdout.contains("routed yes"),
    }
}

/// Every confirmed id is back, each once, and nothing that was never published.
fn assert_all_back(confirmed: &BTreeSet<u64>, published_upto: u64, found: &[u64], broker: &str) {
    let back: BTreeSet<u64> = found.iter().copied().collect();
    assert_eq!(
        back.len(),
        found.len(),
        "{broker}: a message came back twice"
    );
    for id in confirmed {
        assert!(
            back.contains(id),
            "{broker}: confirmed message {id} lost in the crash"
        );
    }
    if let Some(&max) = back.iter().next_back() {
        assert!(
            max <= published_upto,
            "{broker}: message {max} was never published"
        );
    }
}

/// Publishes persistent messages with confirms, crashes the broker once `at`
/// are confirmed, restarts it and checks what came back.
fn crash_mid_stream(
    broker: &str,
    url: String,
    crash: impl FnOnce(),
    restart: impl FnOnce() -> String,
) {
    let suffix = unique("crash");
    let publisher = Publisher::start(&url, &suffix, 1_000_000, 200);
    let mut confirmed = BTreeSet::new();
    let at = 300;
    let line = publisher.read_until(&mut confirmed, |_, n| n >= at);
    assert!(
        line.is_some(),
        "{broker}: the publisher ended before {at} confirms"
    );
    crash();
    // Confirms that arrived before the crash are confirmed too.
    publisher.read_until(&mut confirmed, |l, _| l == "closed" || l == "done");
    let published_upto = confirmed.iter().next_back().map_or(0, |m| m + 1);
    let url = restart();
    let found = check(&url, &suffix);
    assert_all_back(&confirmed, published_upto, &found.ids, broker);
    assert!(
        found.transient_gone,
        "{broker}: the transient queue survived"
    );
    assert!(
        found.routed,
        "{broker}: the durable exchange and binding do not route"
    );
}

#[test]
fn confirmed_messages_survive_kill_9_on_warren() {
    let dir = TempDir::new("warren-durable");
    let mut warren = Warren::start(&dir.join("data"), dir.join("broker.log"), &[]);
    let url = warren.url();
    let w = std::cell::RefCell::new(&mut warren);
    crash_mid_stream(
        "warren",
        url,
        || w.borrow_mut().kill(),
        || {
            let mut w = w.borrow_mut();
            w.spawn();
            w.url()
        },
    );
}

#[test]
fn confirmed_messages_survive_a_restart_on_rabbitmq() {
    let Some(node) = RabbitNode::start("warren-durable", "", &[]) else {
        return;
    };
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.amqp_port);
    let again = url.clone();
    crash_mid_stream(
        "rabbitmq",
        url,
        || node.stop_app(),
        || {
            node.start_app();
            again
        },
    );
}

/// The newest segment holding records, the offset of its last record and that
/// record's payload length (the framing of `broker/src/store/format.rs`:
/// a 32-byte segment header, then 24-byte record headers with the payload
/// length at bytes 8..12, an all-zero header after the last).
fn last_record(data: &Path) -> (PathBuf, u64, u64) {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data)
        .expect("read the data directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    for seg in segments.iter().rev() {
        let bytes = std::fs::read(seg).expect("read a segment");
        let mut at = 32usize;
        let mut last = None;
        while let Some(h) = bytes.get(at..at + 24) {
            if h.iter().all(|&b| b == 0) {
                break;
            }
            let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
            last = Some((at as u64, len as u64));
            at += 24 + len;
        }
        if let Some((off, len)) = last {
            return (seg.clone(), off, len);
        }
    }
    panic!("no record in {}", data.display());
}

#[test]
fn a_torn_tail_is_dropped_alone_and_reported() {
    let dir = TempDir::new("warren-torn");
    let data = dir.join("data");
    let mut warren = Warren::start(&data, dir.join("broker.log"), &[]);
    let suffix = unique("torn");
    let count = 50;
    let publisher = Publisher::start(&warren.url(), &suffix, count, 1000);
    let mut confirmed = BTreeSet::new();
    let end = publisher.read_until(&mut confirmed, |l, _| l == "done" || l == "closed");
    assert_eq!(end.as_deref(), Some("done"));
    assert_eq!(confirmed.len(), count);
    warren.kill();
    // The last record is the last publish: cut it in the middle of its payload,
    // as a crash during its write would (the rest of the file reads as zeros).
    let (seg, offset, len) = last_record(&data);
    let cut = offset + 24 + len / 2;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open the segment");
    f.set_len(cut).expect("truncate");
    drop(f);
    warren.spawn();
    let log = warren.log_text();
    assert!(
        log.contains("torn"),
        "the torn tail is not reported:\n{log}"
    );
    let found = check(&warren.url(), &suffix);
    let expected: Vec<u64> = (0..count as u64 - 1).collect();
    let mut ids = found.ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, expected, "only the torn message is gone");
    assert!(found.routed);
}

/// The (offset, payload length) of every publish record (kind 1) in `seg`.
fn publish_records(seg: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(seg).expect("read a segment");
    let mut at = 32usize;
    let mut out = Vec::new();
    while let Some(h) = bytes.get(at..at + 24) {
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        if h[12] == 1 {
            out.push((at as u64, len as u64));
        }
        at += 24 + len;
    }
    out
}

#[test]
fn damage_inside_the_log_is_refused_and_repair_truncates_there() {
    let dir = TempDir::new("warren-corrupt");
    let data = dir.join("data");
    let mut warren = Warren::start(&data, dir.join("broker.log"), &[]);
    let suffix = unique("corrupt");
    let publisher = Publisher::start(&warren.url(), &suffix, 50, 1000);
    let mut confirmed = BTreeSet::new();
    let end = publisher.read_until(&mut confirmed, |l, _| l == "done" || l == "closed");
    assert_eq!(end.as_deref(), Some("done"));
    warren.kill();
    // Flip one byte of message 20's body: later records check, so this is
    // corruption, not a torn write.
    let (seg, _, _) = last_record(&data);
    let publishes = publish_records(&seg);
    assert_eq!(publishes.len(), 50, "all in one segment");
    let (offset, len) = publishes[20];
    let at = offset + 24 + len - 1;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .expect("open the segment");
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).expect("read");
    f.write_all_at(&[byte[0] ^ 0xff], at).expect("write");
    drop(f);
    // Without --repair the broker refuses to start, and says why.
    let mut refused = Command::new(warren_bin())
        .args(["broker", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warren broker runs");
    let deadline = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = refused.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = refused.kill();
            panic!("warren broker started on a corrupt log");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = refused.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("corrupt data") && err.contains("repair"),
        "{err}"
    );
    // With --repair it truncates the log there: messages 0..=19 stay.
    warren.extra.push("--repair".into());
    warren.spawn();
    assert!(
        warren.log_text().contains("repair: truncating"),
        "{}",
        warren.log_text()
    );
    let found = check(&warren.url(), &suffix);
    let mut ids = found.ids.clone();
    ids.sort_unstable();
    assert_eq!(ids, (0..20).collect::<Vec<u64>>());
    assert!(found.routed);
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at.to_path_buf())),
            other => {
                println!("SKIP: cannot mount a tmpfs (needs root): {other:?}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![1u8; 1 << 20];
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
}

#[test]
fn a_full_disk_blocks_publishers_and_resumes_when_space_returns() {
    let dir = TempDir::new("warren-diskfull");
    // Three 32 MiB segments (the head and two spares) and room for one more.
    let Some(mount) = Tmpfs::mount(&dir.join("fs"), "144m") else {
        return;
    };
    let data = mount.0.join("data");
    let mut warren = Warren::start(&data, dir.join("broker.log"), &["--disk-free-limit", "0"]);
    let filler = mount.0.join("filler");
    fill(&filler);
    let suffix = unique("full");
    // 700 messages of 64 KiB: more than a segment, so the store needs a
    // segment it cannot make.
    let publisher = Publisher::start(&warren.url(), &suffix, 700, 64 << 10);
    let mut confirmed = BTreeSet::new();
    let line = publisher.read_until(&mut confirmed, |l, _| {
        l.starts_with("blocked") || l == "done"
    });
    assert_eq!(
        line.as_deref(),
        Some("blocked low on disk"),
        "the publisher was not blocked:\n{}",
        warren.log_text()
    );
    std::fs::remove_file(&filler).expect("free the space");
    let line = publisher.read_until(&mut confirmed, |l, _| l == "unblocked" || l == "done");
    assert_eq!(line.as_deref(), Some("unblocked"));
    let end = publisher.read_until(&mut confirmed, |l, _| l == "done" || l == "closed");
    assert_eq!(end.as_deref(), Some("done"));
    assert_eq!(confirmed.len(), 700);
    // Nothing was corrupted: all of it comes back after a crash.
    warren.kill();
    warren.spawn();
    let found = check(&warren.url(), &suffix);
    assert_all_back(&confirmed, 700, &found.ids, "warren");
    assert_eq!(found.ids.len(), 700);
    drop(warren);
    drop(mount);
}
