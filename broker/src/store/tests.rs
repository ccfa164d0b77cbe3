//! Tests of the store against real files; `#[ignore]`d measurements at the end
//! (`cargo test --release --lib store::tests::measure -- --ignored --nocapture --test-threads 1`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{publish_len, RECORD_HEADER, SEGMENT_HEADER};
use super::*;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "warren-store-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small() -> StoreOptions {
    StoreOptions {
        segment_size: 64 << 10,
        background_gc: false,
        ..StoreOptions::default()
    }
}

fn open(dir: &Path, opts: StoreOptions) -> (Store, Recovered) {
    Store::open(dir, opts).expect("open store")
}

fn publish(s: &Store, queues: &[QueueId], meta: &[u8], body: &[u8]) -> MsgId {
    let (id, d) = s.publish(queues, meta, body).expect("publish");
    d.wait_blocking().expect("durable");
    id
}

fn bodies(r: &Recovered) -> Vec<Vec<u8>> {
    r.messages.iter().map(|m| m.body().to_vec()).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Size of a one-queue publish record.
fn rec_len(meta: usize, body: usize) -> u64 {
    (RECORD_HEADER + publish_len(1, meta, body)) as u64
}

#[test]
fn messages_and_definitions_round_trip() {
    let dir = TempDir::new("roundtrip");
    let (s, r) = open(dir.path(), small());
    assert!(r.messages.is_empty() && r.definitions.is_empty() && !r.clean_shutdown);
    s.put_definition(DefClass::VHOST, b"/", b"{}")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    s.put_definition(DefClass::QUEUE, b"/ q1", b"v1")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    s.put_definition(DefClass::QUEUE, b"/ q1", b"v2")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    s.put_definition(DefClass::EXCHANGE, b"/ x", b"topic")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    s.delete_definition(DefClass::EXCHANGE, b"/ x")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    let a = publish(&s, &[1], b"meta-a", b"body-a");
    let b = publish(&s, &[1, 2], b"meta-b", b"body-b");
    let c = publish(&s, &[2], b"", b"body-c");
    let d = publish(&s, &[3], b"m", b"body-d");
    let e = publish(&s, &[1], b"m", b"");
    assert!(a < b && b < c && c < d && d < e);
    s.settle(1, &[a])
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    s.settle(2, &[b])
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    s.delivered(1, b, 3)
        .expect("delivered")
        .wait_blocking()
        .expect("durable");
    s.purge(3).expect("purge").wait_blocking().expect("durable");
    let f = publish(&s, &[3], b"m", b"body-f");
    s.close().expect("close");

    let (s, r) = open(dir.path(), small());
    assert!(r.clean_shutdown);
    assert!(r.torn_tail.is_none());
    type Got = (MsgId, Vec<(QueueId, u32)>, Vec<u8>, Vec<u8>);
    let got: Vec<Got> = r
        .messages
        .iter()
        .map(|m| {
            (
                m.id,
                m.queues.iter().collect(),
                m.meta().to_vec(),
                m.body().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (b, vec![(1, 3)], b"meta-b".to_vec(), b"body-b".to_vec()),
            (c, vec![(2, 0)], vec![], b"body-c".to_vec()),
            (e, vec![(1, 0)], b"m".to_vec(), vec![]),
            (f, vec![(3, 0)], b"m".to_vec(), b"body-f".to_vec()),
        ]
    );
    let defs: Vec<(DefClass, &[u8], &[u8])> = r
        .definitions
        .iter()
        .map(|d| (d.class, &d.key[..], &d.value[..]))
        .collect();
    assert_eq!(
        defs,
        vec![
            (DefClass::VHOST, &b"/"[..], &b"{}"[..]),
            (DefClass::QUEUE, b"/ q1", b"v2")
        ]
    );
    // Ids keep increasing across a restart; a crash (drop without close) is not clean.
    let g = publish(&s, &[1], b"", b"g");
    assert!(g > f);
    drop(s);
    let (_s, r) = open(dir.path(), small());
    assert!(!r.clean_shutdown);
    assert_eq!(r.messages.len(), 5);
}

#[test]
fn a_second_opener_is_refused_with_the_holders_pid() {
    let dir = TempDir::new("lock");
    let (s, _) = open(dir.path(), small());
    match Store::open(dir.path(), small()) {
        Err(e @ StoreError::Locked { holder, .. }) => {
            assert_eq!(holder, Some(std::process::id()));
            assert!(e.to_string().contains("in use by another broker"), "{e}");
        }
        other => panic!("second open: {other:?}"),
    }
    drop(s);
    let (_s, _) = open(dir.path(), small());
}

/// Publishes `n` one-queue messages with bodies of 8 bytes `i + 1`, then crashes (drop).
fn fill(dir: &Path, n: u64) -> u64 {
    let (s, _) = open(dir, small());
    for i in 0..n {
        publish(&s, &[7], b"", &fill_body(i));
    }
    drop(s);
    rec_len(0, 8)
}

fn fill_body(i: u64) -> Vec<u8> {
    vec![i as u8 + 1; 8]
}

#[test]
fn a_torn_last_record_is_dropped_and_reported_at_every_cut() {
    // The bytes of the last record after `cut` never reached the disk.
    let rl = fill(TempDir::new("probe").path(), 0).max(rec_len(0, 8));
    let last_start = SEGMENT_HEADER as u64 + 9 * rl;
    for cut in 1..rl {
        let dir = TempDir::new("torn");
        fill(dir.path(), 10);
        let seg = &segments(dir.path())[0];
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .expect("open");
        f.write_all_at(&vec![0u8; (rl - cut) as usize], last_start + cut)
            .expect("zero");
        drop(f);
        let (s, r) = open(dir.path(), small());
        let want: Vec<Vec<u8>> = (0..9).map(fill_body).collect();
        assert_eq!(bodies(&r), want, "cut at {cut}");
        let t = r.torn_tail.expect("torn tail reported");
        assert_eq!(
            (t.offset, t.repaired),
            (last_start, false),
            "cut at {cut}: {t:?}"
        );
        assert!(t.bytes > 0 && t.bytes <= cut, "cut at {cut}: {t:?}");
        // The log continues cleanly after the dropped record.
        publish(&s, &[7], b"", b"after");
        drop(s);
        let (_s, r) = open(dir.path(), small());
        assert!(r.torn_tail.is_none());
        assert_eq!(r.messages.len(), 10);
        assert_eq!(r.messages[9].body(), &b"after"[..]);
    }
}

#[test]
fn a_file_truncated_at_any_byte_of_the_last_record_drops_only_it() {
    let dir = TempDir::new("truncated");
    let rl = fill(dir.path(), 10);
    let seg = segments(dir.path())[0].clone();
    let last_start = SEGMENT_HEADER as u64 + 9 * rl;
    let pristine = std::fs::read(&seg).expect("read");
    for cut in 1..rl {
        std::fs::write(&seg, &pristine[..(last_start + cut) as usize]).expect("truncate");
        let (s, r) = open(dir.path(), small());
        assert_eq!(r.messages.len(), 9, "cut at {cut}");
        let t = r.torn_tail.expect("reported");
        assert_eq!(t.offset, last_start, "cut at {cut}");
        drop(s);
    }
}

#[test]
fn a_lost_sector_before_later_records_of_the_same_write_is_a_tear() {
    // Records of ~1.5 KiB span sectors; the crash kept the last record's sectors but
    // lost one of the one before it (writeback order is not write order).
    let dir = TempDir::new("hole");
    let (s, _) = open(dir.path(), small());
    for i in 0..10u8 {
        publish(&s, &[1], b"", &vec![i + 1; 1500]);
    }
    drop(s);
    let rl = rec_len(0, 1500);
    let eighth = SEGMENT_HEADER as u64 + 8 * rl;
    let sector = (eighth / 512 + 1) * 512;
    let seg = segments(dir.path())[0].clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.write_all_at(&[0u8; 512], sector).expect("zero a sector");
    drop(f);
    let (_s, r) = open(dir.path(), small());
    assert_eq!(r.messages.len(), 8);
    let t = r.torn_tail.expect("reported");
    assert_eq!((t.offset, t.repaired), (eighth, false));
}

#[test]
fn a_corrupt_byte_mid_log_is_refused_and_repair_truncates_there() {
    let dir = TempDir::new("corrupt");
    let rl = fill(dir.path(), 10);
    let seg = segments(dir.path())[0].clone();
    let third = SEGMENT_HEADER as u64 + 2 * rl;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, third + rl - 1).expect("read");
    f.write_all_at(&[b[0] ^ 0x40], third + rl - 1)
        .expect("flip");
    drop(f);
    match Store::open(dir.path(), small()) {
        Err(StoreError::Corrupt { offset, after, .. }) => {
            assert_eq!(offset, third);
            assert_eq!(after, 8 * rl);
        }
        other => panic!("opened a corrupt log: {other:?}"),
    }
    let (_s, r) = open(
        dir.path(),
        StoreOptions {
            repair: true,
            ..small()
        },
    );
    assert_eq!(bodies(&r), vec![fill_body(0), fill_body(1)]);
    assert!(r.torn_tail.expect("reported").repaired);
}

#[test]
fn a_corrupt_last_record_is_a_torn_tail() {
    let dir = TempDir::new("corrupt-last");
    let rl = fill(dir.path(), 10);
    let seg = segments(dir.path())[0].clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.write_all_at(&[0xff], SEGMENT_HEADER as u64 + 9 * rl + 30)
        .expect("flip");
    drop(f);
    let (_s, r) = open(dir.path(), small());
    assert_eq!(r.messages.len(), 9);
    assert_eq!(
        r.torn_tail.expect("reported").reason,
        "record payload checksum mismatch"
    );
}

#[test]
fn damage_in_an_older_segment_is_corruption_even_at_its_end() {
    let dir = TempDir::new("older");
    let (s, _) = open(dir.path(), small());
    let body = vec![5u8; 1000];
    while segments(dir.path()).len() < 3 || s.stats().records < 130 {
        publish(&s, &[1], b"", &body);
    }
    drop(s);
    // The last record of the first segment: a tear there is impossible (the writer
    // synced it before moving on), so it is corruption.
    let rl = rec_len(0, 1000);
    let per_seg = (small().segment_size - SEGMENT_HEADER as u64) / rl;
    let seg = segments(dir.path())[0].clone();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.write_all_at(&[0u8; 8], SEGMENT_HEADER as u64 + (per_seg - 1) * rl + 100)
        .expect("zero");
    drop(f);
    assert!(matches!(
        Store::open(dir.path(), small()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn concurrent_appenders_are_all_durable_and_in_order_after_reopen() {
    let dir = TempDir::new("group");
    const TASKS: u64 = 16;
    const EACH: u64 = 300;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let (s, _) = open(dir.path(), small());
    let s = Arc::new(s);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let mut body = t.to_le_bytes().to_vec();
                    body.extend_from_slice(&i.to_le_bytes());
                    let (_, d) = s.publish(&[t], b"", &body).expect("publish");
                    d.await.expect("durable");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    let stats = s.stats();
    assert_eq!(stats.records, TASKS * EACH);
    assert!(stats.syncs <= stats.records);
    let s = Arc::into_inner(s).expect("sole owner");
    drop(s); // a crash: no clean marker
    let (_s, r) = open(dir.path(), small());
    assert_eq!(r.messages.len() as u64, TASKS * EACH);
    let mut next = vec![0u64; TASKS as usize];
    for m in &r.messages {
        let body = m.body();
        let t = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let i = u64::from_le_bytes(body[8..].try_into().expect("8 bytes"));
        assert_eq!(m.queues.iter().collect::<Vec<_>>(), vec![(t, 0)]);
        assert_eq!(i, next[t as usize], "appender {t} out of order");
        next[t as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == EACH));
}

#[test]
fn gc_deletes_settled_segments_and_compacts_a_straggler() {
    let dir = TempDir::new("gc");
    let (s, _) = open(dir.path(), small());
    s.put_definition(DefClass::QUEUE, b"q", b"queue 1")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    let body = vec![9u8; 1000];
    let straggler = publish(&s, &[1, 2], b"keep", b"straggler");
    s.delivered(2, straggler, 4)
        .expect("delivered")
        .wait_blocking()
        .expect("durable");
    // Four segments' worth: the head is the fifth.
    let per_seg = (small().segment_size - SEGMENT_HEADER as u64) / rec_len(0, 1000);
    let ids: Vec<MsgId> = (0..4 * per_seg)
        .map(|_| publish(&s, &[1], b"", &body))
        .collect();
    let before = segments(dir.path());
    // Nothing is settled yet: nothing to collect.
    assert_eq!(s.collect_garbage().expect("gc"), 0);
    s.settle(1, &ids)
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    s.settle(1, &[straggler])
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    let deleted = s.collect_garbage().expect("gc");
    assert!(deleted >= 3, "deleted {deleted}");
    let after = segments(dir.path());
    assert!(!after.contains(&before[0]), "first segment still there");
    assert!(s.stats().gc_relocated >= 2);
    drop(s);
    let (s, r) = open(dir.path(), small());
    assert_eq!(r.messages.len(), 1);
    let m = &r.messages[0];
    assert_eq!(
        (m.id, m.queues.iter().collect::<Vec<_>>()),
        (straggler, vec![(2, 4)])
    );
    assert_eq!(
        (&m.meta()[..], &m.body()[..]),
        (&b"keep"[..], &b"straggler"[..])
    );
    assert_eq!(r.definitions.len(), 1);
    assert_eq!(r.definitions[0].value, b"queue 1");
    // Settling the relocated copy makes it go for good.
    s.settle(2, &[straggler])
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    drop(s);
    let (_s, r) = open(dir.path(), small());
    assert!(r.messages.is_empty());
}

#[test]
fn a_crash_after_compaction_but_before_unlinking_recovers_each_message_once() {
    let dir = TempDir::new("gc-crash");
    let (s, _) = open(dir.path(), small());
    s.put_definition(DefClass::QUEUE, b"q", b"queue 1")
        .expect("def")
        .wait_blocking()
        .expect("durable");
    let straggler = publish(&s, &[1, 2], b"keep", b"straggler");
    s.delivered(2, straggler, 4)
        .expect("delivered")
        .wait_blocking()
        .expect("durable");
    s.settle(1, &[straggler])
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    let per_seg = (small().segment_size - SEGMENT_HEADER as u64) / rec_len(0, 1000);
    let ids: Vec<MsgId> = (0..4 * per_seg)
        .map(|_| publish(&s, &[1], b"", &[9u8; 1000]))
        .collect();
    s.settle(1, &ids)
        .expect("settle")
        .wait_blocking()
        .expect("durable");
    let before: Vec<(PathBuf, Vec<u8>)> = segments(dir.path())
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).expect("read");
            (p, b)
        })
        .collect();
    assert!(s.collect_garbage().expect("gc") >= 4);
    drop(s);
    // Put back the segments GC unlinked, as if it had crashed right after the copies
    // became durable.
    for (p, b) in &before {
        if !p.exists() {
            std::fs::write(p, b).expect("restore");
        }
    }
    let (s, r) = open(dir.path(), small());
    assert_eq!(r.messages.len(), 1, "{:?}", r.messages);
    let m = &r.messages[0];
    assert_eq!(
        (m.id, m.queues.iter().collect::<Vec<_>>()),
        (straggler, vec![(2, 4)])
    );
    assert_eq!(&m.body()[..], &b"straggler"[..]);
    assert_eq!(r.definitions.len(), 1);
    // And collecting again deletes the restored segments.
    assert!(s.collect_garbage().expect("gc") >= 4);
}

#[test]
fn background_gc_keeps_an_acked_stream_small() {
    let dir = TempDir::new("bg-gc");
    let (s, _) = open(
        dir.path(),
        StoreOptions {
            background_gc: true,
            ..small()
        },
    );
    let body = vec![1u8; 2000];
    for _ in 0..2000 {
        let id = publish(&s, &[1], b"", &body);
        drop(s.settle(1, &[id]).expect("settle"));
    }
    // 4 MB went through 64 KiB segments; what stays is the head, a spare and the
    // segments not yet collected.
    let done = s.collect_garbage().expect("gc");
    let left = segments(dir.path()).len();
    assert!(left <= 4, "{left} segments left ({done} collected now)");
    assert!(s.stats().gc_deleted > 50);
}

#[test]
fn close_flushes_a_backlog_spanning_several_segments() {
    let dir = TempDir::new("close-backlog");
    let (s, _) = open(dir.path(), small());
    let pending: Vec<Durable> = (0..300u32)
        .map(|i| s.publish(&[1], b"", &[i as u8; 1000]).expect("publish").1)
        .collect();
    // Closing stops the maintenance thread at once; the writer makes the segments
    // it still needs.
    s.close().expect("close");
    for d in pending {
        d.wait_blocking().expect("durable before close returned");
    }
    let (_s, r) = open(dir.path(), small());
    assert!(r.clean_shutdown);
    assert_eq!(r.messages.len(), 300);
    assert!(r.segments >= 5);
}

#[test]
fn too_large_and_empty_records_are_refused() {
    let dir = TempDir::new("large");
    let (s, _) = open(dir.path(), small());
    let big = vec![0u8; 64 << 10];
    assert!(matches!(
        s.publish(&[1], b"", &big),
        Err(StoreError::TooLarge { .. })
    ));
    assert!(matches!(
        s.publish(&[], b"", b"x"),
        Err(StoreError::Invalid(_))
    ));
    // A record bigger than a write slice goes header first, then payload.
    let opts = StoreOptions {
        max_batch_bytes: 1000,
        ..small()
    };
    drop(s);
    let (s, _) = open(dir.path(), opts.clone());
    publish(&s, &[1], b"", &vec![3u8; 30_000]);
    drop(s);
    let (_s, r) = open(dir.path(), opts);
    assert_eq!(r.messages[0].body().len(), 30_000);
}

/// Mounts a tmpfs of `kib` KiB on `dir` (needs root); unmounts on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, or a container without
    /// CAP_SYS_ADMIN); any other failure fails the test.
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let target = c(dir.to_str().expect("utf-8 path"));
        let opts = c(&format!("size={kib}k"));
        // SAFETY: valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "mount tmpfs: {e}");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(p) = std::ffi::CString::new(self.0.to_str().unwrap_or_default()) {
            // SAFETY: a valid path string.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn a_full_disk_refuses_publishes_keeps_acks_and_resumes() {
    let base = TempDir::new("full");
    let Some(_fs) = Tmpfs::mount(base.path(), 1400) else {
        eprintln!("skipped: mounting a tmpfs needs root with CAP_SYS_ADMIN (CI runs as root)");
        return;
    };
    let ballast = base.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 760 << 10]).expect("ballast");
    let dir = base.path().join("data");
    let opts = StoreOptions {
        segment_size: 256 << 10,
        background_gc: false,
        ..StoreOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (s, _) = open(&dir, opts.clone());
    let mut full = s.watch_disk_full();
    // 640 KiB free: the head and one spare fit, the second spare does not, so the
    // disk is flagged full right after open.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), full.wait_for(|f| *f))
            .await
            .expect("disk-full flagged within 30 s")
            .expect("watch");
    });
    let body = vec![2u8; 4000];
    let mut confirmed = Vec::new();
    let refused = loop {
        match s.publish(&[1], b"", &body) {
            Ok((id, d)) => {
                d.wait_blocking().expect("durable");
                confirmed.push(id);
            }
            Err(e) => break e,
        }
        assert!(confirmed.len() < 1000, "the disk never filled");
    };
    assert!(matches!(refused, StoreError::DiskFull { .. }), "{refused}");
    assert!(s.disk_full() && *full.borrow_and_update());
    // Publishes filled the head; the spare is the reserve.
    let per_seg = (opts.segment_size - SEGMENT_HEADER as u64) / rec_len(0, 4000);
    assert_eq!(confirmed.len() as u64, per_seg);
    // Acks still go through, into the reserve.
    s.settle(1, &confirmed[..10])
        .expect("settle")
        .wait_blocking()
        .expect("ack durable");
    // Space returns: publishes resume.
    std::fs::remove_file(&ballast).expect("free space");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), full.wait_for(|f| !f))
            .await
            .expect("disk-full cleared within 30 s")
            .expect("watch");
    });
    confirmed.push(publish(&s, &[1], b"", &body));
    drop(s);
    let (_s, r) = open(&dir, opts);
    assert!(r.torn_tail.is_none());
    let ids: Vec<MsgId> = r.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, confirmed[10..]);
}

// ---------------------------------------------------------------- measurements

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Throughput of persistent appends (each awaited: a confirm) by 1, 4 and 64
/// concurrent appenders, 16 B and 4 KiB bodies; raw write+fdatasync latency.
#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn measure_group_commit_throughput() {
    let base = std::env::var("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    // Raw fdatasync latency on a preallocated file, as the writer sees it.
    {
        let dir = TempDir(base.join(format!("warren-store-bench-raw-{}", std::process::id())));
        std::fs::create_dir_all(dir.path()).expect("dir");
        let f = fsutil::prepare_segment(dir.path(), 1, 64 << 20).expect("segment");
        let page = vec![7u8; 4096];
        let mut lat = Vec::new();
        for i in 0..2000u64 {
            let t = Instant::now();
            f.write_all_at(&page, 4096 + i * 4096).expect("write");
            f.sync_data().expect("fdatasync");
            lat.push(t.elapsed());
        }
        lat.sort();
        println!(
            "raw 4 KiB pwrite+fdatasync (zero-filled file): p50 {:?} p90 {:?} p99 {:?} max {:?}",
            lat[1000], lat[1800], lat[1980], lat[1999]
        );
    }
    for &size in &[16usize, 4096] {
        for &appenders in &[1usize, 4, 64] {
            let dir = TempDir(base.join(format!(
                "warren-store-bench-{}-{size}-{appenders}",
                std::process::id()
            )));
            std::fs::create_dir_all(dir.path()).expect("dir");
            let (s, _) = open(dir.path(), StoreOptions::default());
            let s = Arc::new(s);
            let per = (if appenders == 64 {
                64_000
            } else {
                2_000 * appenders
            } / appenders)
                .max(1);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let body = vec![0x5au8; size];
            let t0 = Instant::now();
            let lats = rt.block_on(async {
                let mut tasks = Vec::new();
                for q in 0..appenders {
                    let s = s.clone();
                    let body = body.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(per);
                        for _ in 0..per {
                            let t = Instant::now();
                            let (_, d) = s.publish(&[q as u64], b"", &body).expect("publish");
                            d.await.expect("durable");
                            lat.push(t.elapsed());
                        }
                        lat
                    }));
                }
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.expect("task"));
                }
                all
            });
            let el = t0.elapsed();
            let mut lats = lats;
            lats.sort();
            let n = lats.len();
            let st = s.stats();
            println!(
                "{size:>5} B x {appenders:>2} appenders: {n} appends in {:.2?} = {:>7.0}/s, {:.1} MB/s, {} fdatasyncs ({:.1} records/sync), confirm p50 {:?} p99 {:?}",
                el,
                n as f64 / el.as_secs_f64(),
                st.bytes as f64 / el.as_secs_f64() / 1e6,
                st.syncs,
                st.records as f64 / st.syncs.max(1) as f64,
                lats[n / 2],
                lats[n * 99 / 100],
            );
        }
    }
}

/// Publishers with a confirm window (as `amqp-perf -confirm 1000`): each keeps up to
/// `window` appends unconfirmed, 128 B bodies.
#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn measure_pipelined_appends() {
    let base = std::env::var("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    for &(appenders, window) in &[(1usize, 1000usize), (4, 1000), (4, 100)] {
        let dir = TempDir(base.join(format!(
            "warren-store-pipe-{}-{appenders}-{window}",
            std::process::id()
        )));
        std::fs::create_dir_all(dir.path()).expect("dir");
        let (s, _) = open(dir.path(), StoreOptions::default());
        let s = Arc::new(s);
        let per = 400_000 / appenders;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let t0 = Instant::now();
        let c0 = cpu_time();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for q in 0..appenders {
                let s = s.clone();
                tasks.push(tokio::spawn(async move {
                    let body = [0x5au8; 128];
                    let mut inflight = std::collections::VecDeque::with_capacity(window);
                    for _ in 0..per {
                        if inflight.len() == window {
                            if let Some(d) = inflight.pop_front() {
                                let d: Durable = d;
                                d.await.expect("durable");
                            }
                        }
                        let (_, d) = s.publish(&[q as u64], &[0u8; 16], &body).expect("publish");
                        inflight.push_back(d);
                    }
                    for d in inflight {
                        d.await.expect("durable");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        let el = t0.elapsed();
        let st = s.stats();
        println!(
            "128 B x {appenders} appenders, window {window}: {} confirmed in {:.2?} = {:.0}/s ({:.2?} CPU), {} fdatasyncs ({:.0} records/sync)",
            st.records,
            el,
            st.records as f64 / el.as_secs_f64(),
            cpu_time() - c0,
            st.syncs,
            st.records as f64 / st.syncs.max(1) as f64,
        );
    }
}

const MILLION_DIR: &str = "STORE_MILLION_DIR";

/// The child test's name as the harness knows it (module path without the crate).
fn child_test_name() -> String {
    let path = module_path!();
    let rel = path.split_once("::").map_or(path, |(_, r)| r);
    format!("{rel}::recover_million_child")
}

/// Writes 1,000,000 messages of 128 B (4 queues, all unacked), then recovers them in a
/// fresh process and reports seconds and memory.
#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn measure_recovery_of_a_million_messages() {
    let base = std::env::var("STORE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = TempDir(base.join(format!("warren-store-million-{}", std::process::id())));
    std::fs::create_dir_all(dir.path()).expect("dir");
    let (s, _) = open(dir.path(), StoreOptions::default());
    let body = vec![0x42u8; 128];
    let meta = [0u8; 16];
    let t0 = Instant::now();
    let mut last = None;
    for i in 0..1_000_000u64 {
        let (_, d) = s.publish(&[i % 4], &meta, &body).expect("publish");
        last = Some(d);
        if i % 10_000 == 9_999 {
            if let Some(d) = last.take() {
                d.wait_blocking().expect("durable");
            }
        }
    }
    if let Some(d) = last {
        d.wait_blocking().expect("durable");
    }
    let st = s.stats();
    println!(
        "wrote 1,000,000 x 128 B (+16 B meta) in {:.2?}: {} bytes of records, {} fdatasyncs",
        t0.elapsed(),
        st.bytes,
        st.syncs
    );
    drop(s);
    let disk: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    println!(
        "on disk: {disk} bytes in {} segments",
        segments(dir.path()).len()
    );
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(exe)
        .args(["--exact", &child_test_name(), "--ignored", "--nocapture"])
        .env(MILLION_DIR, dir.path())
        .output()
        .expect("run child");
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by measure_recovery_of_a_million_messages"]
fn recover_million_child() {
    let Ok(dir) = std::env::var(MILLION_DIR) else {
        return;
    };
    let before = rss_kib("VmRSS:");
    let t0 = Instant::now();
    let c0 = cpu_time();
    let (s, r) = open(Path::new(&dir), StoreOptions::default());
    let el = t0.elapsed();
    let cpu = cpu_time() - c0;
    println!(
        "recovered {} messages ({} records, {} segments) in {:.2?} ({:.2?} CPU); RSS {} MiB -> {} MiB, peak {} MiB",
        r.messages.len(),
        r.records,
        r.segments,
        el,
        cpu,
        before / 1024,
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024
    );
    assert_eq!(r.messages.len(), 1_000_000);
    drop(r);
    println!(
        "RSS with the store's index alone: {} MiB",
        rss_kib("VmRSS:") / 1024
    );
    drop(s);
}
