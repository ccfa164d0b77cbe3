//! The memory gauge and its alarm (RabbitMQ's `vm_memory_high_watermark`).
//!
//! Two figures feed the alarm:
//! - `tracked`: a cheap byte count of what peers made the broker hold
//!   (messages in queues, unacked or in writer queues, transaction
//!   buffers), kept by [`Charge`]s and checked on every charge, so a flood
//!   trips the alarm between samples;
//! - a sample of the process's resident memory (`VmRSS`), taken about once
//!   a second by [`spawn_sampler`], which sees everything else (buffers,
//!   fragmentation, the application around an embedded broker).
//!
//! The estimate is `tracked` now plus the *untracked* memory of the last
//! sample (resident memory minus `tracked` then), so growth between samples
//! counts at once. The untracked part counts for at most
//! [`UNTRACKED_SHARE`] of the watermark: allocators keep freed pages
//! (mimalloc keeps them until its threads run again, and blocked publishers
//! leave them idle), so resident memory can stay up after every queue has
//! drained. Blocking publishers only helps when messages are what fills
//! memory; counted in full, kept pages would hold the alarm on with nothing
//! left to drain, and block publishers for good.
//!
//! The alarm goes on when the estimate reaches the watermark W and clears
//! only below [`CLEAR_RATIO`]·W: without that gap, a broker hovering at W
//! would block and unblock its publishers on every message (RabbitMQ has no
//! gap, but samples only once a second, which hides the flapping).
//!
//! Publishers wait on the alarm: the TCP server stops reading their sockets
//! (`server::flow`), the in-process transport awaits [`MemoryMonitor::wait_clear`].

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// The alarm clears once the estimate falls below this share of the watermark.
pub(crate) const CLEAR_RATIO: f64 = 0.95;

/// RabbitMQ 3.x's default watermark: 0.4 of the memory available.
pub const DEFAULT_WATERMARK_FRACTION: f64 = 0.4;

/// The most of the watermark that memory not held by messages may take
/// in the estimate (see the module documentation).
pub(crate) const UNTRACKED_SHARE: f64 = 0.5;

/// Alarm transitions are logged at info at most this often (the rest at debug).
const LOG_INTERVAL_MS: u64 = 10_000;

/// How often resident memory is sampled (RabbitMQ's interval).
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A memory high watermark: bytes, or a fraction of the memory available
/// (the smaller of physical RAM and the cgroup's `memory.max`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryWatermark {
    /// An absolute limit in bytes (`0` blocks every publisher).
    Bytes(u64),
    /// A fraction of the memory available, e.g. `0.4`.
    Fraction(f64),
}

impl Default for MemoryWatermark {
    fn default() -> Self {
        Self::Fraction(DEFAULT_WATERMARK_FRACTION)
    }
}

impl MemoryWatermark {
    /// The limit in bytes on this machine. A fraction of an unknown total
    /// (no `/proc/meminfo`) is no limit at all.
    pub fn resolve(self) -> usize {
        match self {
            Self::Bytes(b) => usize::try_from(b).unwrap_or(usize::MAX),
            Self::Fraction(f) => match available_memory() {
                Some(total) => (total as f64 * f.max(0.0)) as usize,
                None => usize::MAX,
            },
        }
    }
}

impl std::str::FromStr for MemoryWatermark {
    type Err = String;

    /// `0.4` (a fraction: the number has a decimal point), `1073741824`
    /// (bytes), or a size with a unit: `512MiB`, `2GB`, `100kB` (`k`, `M`,
    /// `G`, `T` are powers of 1000 and `Ki`, `Mi`, `Gi`, `Ti` of 1024; a
    /// trailing `B` is optional).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let bad = || {
            format!(
                "invalid memory watermark {s:?}: expected a fraction like 0.4 or a size like 512MiB"
            )
        };
        if number.is_empty() {
            return Err(bad());
        }
        let unit = unit.trim();
        if unit.is_empty() && number.contains('.') {
            let f: f64 = number.parse().map_err(|_| bad())?;
            if !(0.0..=1.0).contains(&f) {
                return Err(format!(
                    "invalid memory watermark {s:?}: a fraction must be between 0 and 1"
                ));
            }
            return Ok(Self::Fraction(f));
        }
        let multiplier: u64 = match unit.trim_end_matches(['B', 'b']) {
            "" => 1,
            "k" | "K" => 1000,
            "Ki" | "ki" => 1 << 10,
            "M" | "m" => 1000 * 1000,
            "Mi" | "mi" => 1 << 20,
            "G" | "g" => 1000 * 1000 * 1000,
            "Gi" | "gi" => 1 << 30,
            "T" | "t" => 1000 * 1000 * 1000 * 1000,
            "Ti" | "ti" => 1 << 40,
            _ => return Err(bad()),
        };
        let bytes = if number.contains('.') {
            let n: f64 = number.parse().map_err(|_| bad())?;
            n * multiplier as f64
        } else {
            let n: u64 = number.parse().map_err(|_| bad())?;
            return n.checked_mul(multiplier).map(Self::Bytes).ok_or_else(bad);
        };
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Self::Bytes(bytes as u64))
    }
}

/// The memory gauge and alarm of one broker core.
#[derive(Debug)]
pub struct MemoryMonitor {
    watermark: AtomicUsize,
    tracked: AtomicUsize,
    /// Resident memory at the last sample (0 before the first), for logs.
    sampled: AtomicUsize,
    /// Resident memory minus `tracked` at the last sample.
    untracked: AtomicUsize,
    /// The alarm, read on every publish (the watch below is for waiters).
    on: AtomicBool,
    /// The disk alarm (free space under `--disk-free-limit`, or the store's disk
    /// full), which blocks publishers the same way.
    disk: AtomicBool,
    /// Memory or disk alarm.
    alarm: watch::Sender<bool>,
    /// When the monitor was made, and the last transition logged at info
    /// (ms after it): at the watermark the alarm may flip many times a
    /// second, and the log should not.
    born: std::time::Instant,
    logged_ms: std::sync::atomic::AtomicU64,
}

impl MemoryMonitor {
    /// A monitor with the given watermark in bytes.
    pub(crate) fn new(watermark: usize) -> Arc<Self> {
        let m = Arc::new(Self {
            watermark: AtomicUsize::new(watermark),
            tracked: AtomicUsize::new(0),
            sampled: AtomicUsize::new(0),
            untracked: AtomicUsize::new(0),
            on: AtomicBool::new(false),
            disk: AtomicBool::new(false),
            alarm: watch::Sender::new(false),
            born: std::time::Instant::now(),
            logged_ms: std::sync::atomic::AtomicU64::new(0),
        });
        m.evaluate();
        m
    }

    /// The watermark in bytes.
    pub fn watermark(&self) -> usize {
        self.watermark.load(Ordering::Relaxed)
    }

    /// Sets the watermark in bytes and re-evaluates the alarm.
    pub fn set_watermark(&self, bytes: usize) {
        self.watermark.store(bytes, Ordering::Relaxed);
        self.evaluate();
    }

    /// Bytes currently held by charges (queued, unacked and buffered messages).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Whether the memory or the disk alarm is on (publishers are to be blocked).
    pub fn alarm(&self) -> bool {
        self.on.load(Ordering::Acquire) || self.disk.load(Ordering::Acquire)
    }

    /// Whether the disk alarm is on.
    pub fn disk_alarm(&self) -> bool {
        self.disk.load(Ordering::Acquire)
    }

    /// Sets or clears the disk alarm (see [`super::disk`]).
    pub(crate) fn set_disk_alarm(&self, on: bool) {
        if self.disk.swap(on, Ordering::AcqRel) == on {
            return;
        }
        if on {
            tracing::warn!("disk alarm set: blocking publishers");
        } else {
            tracing::info!("disk alarm cleared: unblocking publishers");
        }
        self.publish_alarm();
    }

    /// Publishes the alarm as it is now, inside the watch's lock: two racing
    /// transitions then leave the watch agreeing with the last of them.
    fn publish_alarm(&self) {
        self.alarm.send_if_modified(|v| {
            let now = self.alarm();
            let changed = *v != now;
            *v = now;
            changed
        });
    }

    /// The alarm, for waiting on its changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alarm.subscribe()
    }

    /// Returns once the alarm is off (at once if it is).
    pub async fn wait_clear(&self) {
        if !self.alarm() {
            return;
        }
        let mut rx = self.subscribe();
        // The sender lives as long as `self`: this cannot fail while borrowed.
        let _ = rx.wait_for(|on| !on).await;
    }

    /// Counts `bytes` as held until the returned charge is dropped.
    pub(crate) fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.add(bytes);
        Charge {
            monitor: Some(self.clone()),
            bytes,
        }
    }

    fn add(&self, bytes: usize) {
        let t = self
            .tracked
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if !self.on.load(Ordering::Relaxed) && self.estimate(t) >= self.watermark() {
            self.set(true);
        }
    }

    fn sub(&self, bytes: usize) {
        let t = self
            .tracked
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        if self.on.load(Ordering::Relaxed) && self.estimate(t) < self.clear_level() {
            self.set(false);
        }
    }

    /// Records a sample of resident memory and re-evaluates the alarm.
    pub(crate) fn sample(&self, resident: usize) {
        let untracked = resident.saturating_sub(self.tracked.load(Ordering::Relaxed));
        self.untracked.store(untracked, Ordering::Relaxed);
        self.sampled.store(resident, Ordering::Relaxed);
        self.evaluate();
    }

    /// The estimated memory use given `tracked` bytes now.
    fn estimate(&self, tracked: usize) -> usize {
        let cap = (self.watermark() as f64 * UNTRACKED_SHARE) as usize;
        tracked.saturating_add(self.untracked.load(Ordering::Relaxed).min(cap))
    }

    fn clear_level(&self) -> usize {
        (self.watermark() as f64 * CLEAR_RATIO) as usize
    }

    fn evaluate(&self) {
        let e = self.estimate(self.tracked());
        if e >= self.watermark() {
            self.set(true);
        } else if e < self.clear_level() {
            self.set(false);
        }
    }

    fn set(&self, on: bool) {
        if self.on.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let now_ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.logged_ms.load(Ordering::Relaxed);
        let loud = last == 0 || now_ms.saturating_sub(last) >= LOG_INTERVAL_MS;
        if loud {
            self.logged_ms.store(now_ms.max(1), Ordering::Relaxed);
        }
        let (watermark, tracked) = (self.watermark(), self.tracked());
        let resident = self.sampled.load(Ordering::Relaxed);
        match (on, loud) {
            (true, true) => tracing::info!(
                watermark,
                tracked,
                resident,
                "memory alarm set: blocking publishers"
            ),
            (true, false) => tracing::debug!(watermark, tracked, resident, "memory alarm set"),
            (false, true) => tracing::info!(tracked, "memory alarm cleared: unblocking publishers"),
            (false, false) => tracing::debug!(tracked, "memory alarm cleared"),
        }
        self.publish_alarm();
    }
}

/// Bytes counted by a [`MemoryMonitor`] until dropped. Cloning counts the
/// bytes again (the clone holds its own copy).
///
/// It holds the monitor strongly (one reference count per message, no
/// upgrade on drop): the monitor holds nothing back, so there is no cycle.
#[derive(Debug)]
pub(crate) struct Charge {
    monitor: Option<Arc<MemoryMonitor>>,
    bytes: usize,
}

impl Charge {
    /// A charge that counts nothing.
    pub fn none() -> Self {
        Self {
            monitor: None,
            bytes: 0,
        }
    }

    /// The bytes counted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The gauge it counts on, if any.
    pub(crate) fn monitor(&self) -> Option<&Arc<MemoryMonitor>> {
        self.monitor.as_ref()
    }

    /// Counts `more` bytes on top.
    pub fn grow(&mut self, more: usize) {
        if let Some(m) = &self.monitor {
            m.add(more);
            self.bytes = self.bytes.saturating_add(more);
        }
    }
}

impl Clone for Charge {
    fn clone(&self) -> Self {
        match &self.monitor {
            Some(m) => m.charge(self.bytes),
            None => Self::none(),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(m) = &self.monitor {
            m.sub(self.bytes);
        }
    }
}

/// Samples resident memory into `monitor` every [`SAMPLE_INTERVAL`] until
/// the monitor is dropped. Needs a tokio runtime; does nothing where
/// `/proc/self/status` cannot be read.
pub(crate) fn spawn_sampler(handle: &tokio::runtime::Handle, monitor: &Arc<MemoryMonitor>) {
    let Ok(mut reader) = ResidentReader::open() else {
        return;
    };
    let weak = Arc::downgrade(monitor);
    handle.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(m) = weak.upgrade() else { break };
            match reader.read() {
                Ok(rss) => m.sample(rss),
                Err(_) => break,
            }
        }
    });
}

/// Reads this process's `VmRSS` through a file kept open (a read is a
/// single `pread`, no path lookup).
#[derive(Debug)]
pub(crate) struct ResidentReader {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl ResidentReader {
    /// Opens `/proc/self/status`.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open("/proc/self/status")?,
            buf: vec![0; 4096],
        })
    }

    /// Resident memory in bytes.
    pub fn read(&mut self) -> io::Result<usize> {
        #[cfg(unix)]
        let n = {
            use std::os::unix::fs::FileExt;
            self.file.read_at(&mut self.buf, 0)?
        };
        #[cfg(not(unix))]
        let n = 0;
        let text = String::from_utf8_lossy(self.buf.get(..n).unwrap_or_default());
        kib_field(&text, "VmRSS:")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
    }
}

/// The `kB` figure of a `/proc` line starting with `key`, in bytes.
fn kib_field(text: &str, key: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: usize = line
        .get(key.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The memory this process may use: physical RAM, or the cgroup's limit
/// when lower (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`).
pub(crate) fn available_memory() -> Option<usize> {
    let ram = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| kib_field(&t, "MemTotal:"));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<usize>().ok());
    match (ram, cgroup) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_parse_as_sizes_or_fractions() {
        let p = |s: &str| s.parse::<MemoryWatermark>();
        assert_eq!(p("0.4"), Ok(MemoryWatermark::Fraction(0.4)));
        assert_eq!(p("256MiB"), Ok(MemoryWatermark::Bytes(256 << 20)));
        assert_eq!(p("2GB"), Ok(MemoryWatermark::Bytes(2_000_000_000)));
        assert_eq!(p("100kB"), Ok(MemoryWatermark::Bytes(100_000)));
        assert_eq!(p("1Gi"), Ok(MemoryWatermark::Bytes(1 << 30)));
        assert_eq!(p("1073741824"), Ok(MemoryWatermark::Bytes(1 << 30)));
        assert_eq!(p("0"), Ok(MemoryWatermark::Bytes(0)));
        assert_eq!(p("1.5GiB"), Ok(MemoryWatermark::Bytes(3 << 29)));
        assert!(p("1.5").is_err());
        assert!(p("MiB").is_err());
        assert!(p("12 parsecs").is_err());
        assert!(p("99999999999TiB").is_err());
    }

    #[test]
    fn the_alarm_sets_at_the_watermark_and_clears_below_the_gap() {
        let m = MemoryMonitor::new(1000);
        let a = m.charge(960);
        assert!(!m.alarm());
        let b = m.charge(40);
        assert!(m.alarm(), "tracked reached the watermark");
        drop(b);
        assert!(m.alarm(), "960 is not below 0.95 of 1000");
        drop(a);
        assert!(!m.alarm());
        let mut c = m.charge(10);
        c.grow(990);
        assert!(m.alarm());
        let d = c.clone();
        drop(c);
        assert!(m.alarm(), "the clone holds its own 1000");
        drop(d);
        assert!(!m.alarm());
        assert_eq!(m.tracked(), 0);
    }

    #[test]
    fn untracked_memory_counts_up_to_half_the_watermark() {
        let m = MemoryMonitor::new(1000);
        m.sample(400);
        let a = m.charge(500);
        assert!(!m.alarm());
        let b = m.charge(100);
        assert!(m.alarm(), "400 untracked + 600 tracked");
        drop((a, b));
        assert!(!m.alarm(), "back to the untracked 400");
        m.sample(5000);
        assert!(!m.alarm(), "resident memory alone cannot hold the alarm on");
        let c = m.charge(500);
        assert!(
            m.alarm(),
            "500 of untracked memory counted, and 500 tracked"
        );
        m.sample(5000);
        assert!(m.alarm(), "4500 untracked, capped at 500");
        drop(c);
        assert!(!m.alarm(), "draining the messages clears it");
    }

    #[test]
    fn a_zero_watermark_blocks_from_the_start() {
        assert!(MemoryMonitor::new(0).alarm());
    }

    #[test]
    fn resident_memory_is_readable() {
        let mut r = ResidentReader::open().expect("/proc/self/status");
        assert!(r.read().expect("VmRSS") > 0);
    }
}
