//! Running a workload: servers, clients, workers, histograms.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_bytes::ByteBuf;
use warren::wire::Codec;
use warren::Connection;

use super::{CodecArg, Mode, Workload};

/// The service `warren bench` measures: an echo and a sink.
#[warren::service(topic = "warren_bench", version = "1.0")]
pub trait BenchService {
    /// Returns its payload.
    async fn echo(&self, payload: ByteBuf) -> ByteBuf;
    /// Swallows its payload.
    #[cast]
    async fn sink(&self, payload: ByteBuf);
}

struct Bench {
    received: Arc<AtomicU64>,
}

impl BenchService for Bench {
    async fn echo(&self, payload: ByteBuf) -> ByteBuf {
        self.received.fetch_add(1, Ordering::Relaxed);
        payload
    }

    async fn sink(&self, _payload: ByteBuf) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where the servers run.
pub enum Servers {
    /// Started by this run.
    InProcess,
    /// Started by `warren bench server` elsewhere.
    Elsewhere,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Fastest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// What one run measured: one element of the `--json` array, which the
/// management dashboard's Benchmark view plots (format in the README,
/// "Bench results").
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunResult {
    /// The broker, password redacted; `embedded` for the in-process one.
    pub url: String,
    /// `call`, `cast`, `fanout` or `queue`.
    pub mode: Mode,
    /// Request codec (RPC modes).
    pub codec: CodecArg,
    /// Servers started (RPC modes).
    pub servers: usize,
    /// Clients (RPC modes).
    pub clients: usize,
    /// Requests in flight per client (RPC modes).
    pub in_flight: usize,
    /// `--payload` as given.
    pub payload: String,
    /// `--rate` (open loop), if given.
    pub rate: Option<f64>,
    /// Seconds measured (after warm-up).
    pub seconds: f64,
    /// Requests completed successfully in the measured window.
    pub completed: u64,
    /// Requests that failed, measured window.
    pub errors: u64,
    /// Requests that timed out, measured window.
    pub timeouts: u64,
    /// Requests the servers of this process received, whole run.
    pub received: Option<u64>,
    /// Completed requests (queue mode: received messages) per second.
    pub throughput: f64,
    /// Latency percentiles, µs.
    pub latency_us: Latency,
    /// Completions in each second of the measured window, from its start;
    /// they add up to `completed`.
    pub timeline: Vec<u64>,
    /// (percentile, latency µs) points of the latency distribution.
    pub distribution: Vec<(f64, u64)>,
    /// `--mode queue`: what the producers and consumers did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queue::QueueRun>,
}

/// `SIZE` or `SIZE:WEIGHT,…`.
pub(super) fn parse_payload(spec: &str) -> Result<Vec<(usize, u32)>, String> {
    let sizes = spec
        .split(',')
        .map(|part| {
            let (size, weight) = part.split_once(':').unwrap_or((part, "1"));
            let size = size
                .trim()
                .parse()
                .map_err(|_| format!("bad payload size {size:?}"))?;
            let weight = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad payload weight {weight:?}"))?;
            Ok((size, weight))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if sizes.iter().map(|(_, w)| *w as u64).sum::<u64>() == 0 {
        return Err(format!("payload distribution {spec:?} has no weight"));
    }
    Ok(sizes)
}

/// A tiny xorshift generator: payload sizes need no crypto.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(super) fn pick(sizes: &[(usize, u32)], rng: &mut Rng) -> usize {
    let total: u64 = sizes.iter().map(|(_, w)| *w as u64).sum();
    let mut roll = rng.next() % total.max(1);
    for (size, weight) in sizes {
        if roll < *weight as u64 {
            return *size;
        }
        roll -= *weight as u64;
    }
    sizes.last().map(|(s, _)| *s).unwrap_or(0)
}

pub(super) fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds are valid")
}

async fn connect(workload: &Workload) -> Result<Connection, warren::Error> {
    let codec = match workload.codec {
        CodecArg::Msgpack => Codec::MsgPack,
        CodecArg::Oslo => Codec::OsloJson,
    };
    Ok(warren::connect(&workload.url).await?.with_codec(codec))
}

async fn start_servers(
    workload: &Workload,
    topic: &str,
    received: &Arc<AtomicU64>,
) -> Result<Vec<(Connection, warren::rpc::ServerHandle)>, warren::Error> {
    let mut servers = Vec::new();
    for i in 0..workload.servers.max(1) {
        let connection = connect(workload).await?;
        let handle = BenchServiceServer::new(Bench {
            received: received.clone(),
        })
        .builder()
        .topic(topic)
        .prefetch(256)
        .serve(&connection, &format!("bench-{i}"))
        .await?;
        servers.push((connection, handle));
    }
    Ok(servers)
}

/// `warren bench server`: serve until Ctrl-C.
pub async fn serve_until_ctrl_c(workload: &Workload) -> Result<(), Box<dyn std::error::Error>> {
    let received = Arc::new(AtomicU64::new(0));
    let servers = start_servers(workload, &workload.topic, &received).await?;
    tracing::info!(servers = servers.len(), topic = %workload.topic, "bench servers ready; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    for (connection, handle) in servers {
        handle.shutdown().await?;
        connection.close().await?;
    }
    tracing::info!(
        received = received.load(Ordering::Relaxed),
        "bench servers stopped"
    );
    Ok(())
}

/// Shared by the workers of one run.
///
/// What a completion records goes to its worker's own [`Recorder`], so
/// the load generator adds no lock or counter that every worker contends
/// on (at 250k calls/s a shared one is a cache line bouncing between the
/// cores on every call); the progress bar and the summary merge them.
pub(super) struct Shared {
    pub(super) start: Instant,
    pub(super) measure_from: Instant,
    pub(super) end: Option<Instant>,
    pub(super) remaining: AtomicI64,
    pub(super) errors: AtomicU64,
    pub(super) timeouts: AtomicU64,
    recorders: Vec<Mutex<Recorder>>,
    /// The seconds a timeline may hold.
    seconds: usize,
    pub(super) finished: std::sync::atomic::AtomicBool,
}

/// One worker's completions.
struct Recorder {
    histogram: Histogram<u64>,
    completed: u64,
    /// Completions per second of the measured window (grown as seconds
    /// pass: a run may have thousands of workers).
    timeline: Vec<u64>,
    last_done: Option<Instant>,
}

impl Shared {
    /// Paces the `slot`-th request of the run at `rate` requests per second
    /// (`None` or not above zero: as fast as possible). `None` once the run
    /// is over (its end passed, or its count reached); else when the request
    /// was meant to start and whether it is measured (after the warm-up).
    pub(super) async fn pace(&self, slot: u64, rate: Option<f64>) -> Option<(Instant, bool)> {
        let rate = rate.filter(|r| *r > 0.0);
        let intended = match rate {
            Some(r) => self.start + Duration::from_secs_f64(slot as f64 / r),
            None => Instant::now(),
        };
        let measuring = intended >= self.measure_from;
        match self.end {
            Some(end) if intended >= end => return None,
            None if measuring && self.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 => {
                return None
            }
            _ => {}
        }
        if rate.is_some() {
            tokio::time::sleep_until(intended.into()).await;
        }
        Some((intended, measuring))
    }

    /// The clock and counters of a run starting now, with one histogram
    /// per recorder.
    pub(super) fn new(workload: &Workload, recorders: usize) -> Arc<Shared> {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(workload.warmup.max(0.0));
        let end = match workload.count {
            Some(_) => None,
            None => Some(measure_from + Duration::from_secs_f64(workload.duration.max(0.001))),
        };
        let seconds_hint = end.map_or(3600, |e| (e - measure_from).as_secs() as usize + 2);
        Arc::new(Shared {
            start,
            measure_from,
            end,
            remaining: AtomicI64::new(
                workload
                    .count
                    .map_or(i64::MAX, |c| c.min(i64::MAX as u64) as i64),
            ),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            recorders: (0..recorders.max(1))
                .map(|_| {
                    Mutex::new(Recorder {
                        histogram: new_histogram(),
                        completed: 0,
                        timeline: Vec::new(),
                        last_done: None,
                    })
                })
                .collect(),
            seconds: seconds_hint,
            finished: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records one completion at `done`, `micros` after it was meant to start.
    pub(super) fn record(&self, recorder: usize, micros: u64, done: Instant) {
        let Some(r) = self.recorders.get(recorder) else {
            return;
        };
        let mut r = lock(r);
        let _ = r.histogram.record(micros.max(1));
        r.completed += 1;
        let second = done.saturating_duration_since(self.measure_from).as_secs() as usize;
        if second < self.seconds {
            if r.timeline.len() <= second {
                r.timeline.resize(second + 1, 0);
            }
            r.timeline[second] += 1;
        }
        if r.last_done.is_none_or(|l| l < done) {
            r.last_done = Some(done);
        }
    }

    /// Completions so far.
    pub(super) fn completed(&self) -> u64 {
        self.recorders.iter().map(|r| lock(r).completed).sum()
    }

    /// The histogram of every completion so far.
    pub(super) fn histogram(&self) -> Histogram<u64> {
        let mut histogram = new_histogram();
        for r in &self.recorders {
            let _ = histogram.add(&lock(r).histogram);
        }
        histogram
    }

    /// The merged histogram, the measured seconds and the timeline.
    pub(super) fn summary(&self) -> (Histogram<u64>, f64, Vec<u64>) {
        let histogram = self.histogram();
        let mut last_done = None;
        let mut timeline: Vec<u64> = Vec::new();
        for r in &self.recorders {
            let r = lock(r);
            last_done = last_done.max(r.last_done);
            if timeline.len() < r.timeline.len() {
                timeline.resize(r.timeline.len(), 0);
            }
            for (sum, n) in timeline.iter_mut().zip(&r.timeline) {
                *sum += n;
            }
        }
        let window_end = last_done.unwrap_or_else(Instant::now);
        let seconds = window_end
            .saturating_duration_since(self.measure_from)
            .as_secs_f64()
            .max(1e-9);
        // Second `floor(seconds)` holds the last completion: every
        // recorded completion is in the timeline.
        let timeline_len = (seconds.floor() as usize + 1).min(timeline.len());
        timeline.truncate(timeline_len);
        (histogram, seconds, timeline)
    }
}

impl Latency {
    /// The percentiles of `histogram`.
    pub(super) fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            min: histogram.min(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the workload once and measures it.
pub async fn measure(
    workload: &Workload,
    servers: Servers,
) -> Result<RunResult, Box<dyn std::error::Error>> {
    if workload.mode == Mode::Queue {
        return super::queue::measure(workload).await;
    }
    let sizes = parse_payload(&workload.payload)?;
    let topic = match servers {
        Servers::InProcess => format!("{}_{}", workload.topic, &warren::wire::new_id()[..8]),
        Servers::Elsewhere => workload.topic.clone(),
    };
    let received = Arc::new(AtomicU64::new(0));
    let server_handles = match servers {
        Servers::InProcess => start_servers(workload, &topic, &received).await?,
        Servers::Elsewhere => Vec::new(),
    };
    let workers = workload.clients.max(1) * workload.in_flight.max(1);
    let mut clients = Vec::new();
    for _ in 0..workload.clients.max(1) {
        let connection = connect(workload).await?;
        let client = BenchServiceClient::new(&connection)
            .topic(&topic)
            .timeout(workload.timeout());
        // One call first so reply queues exist before the clock starts.
        if workload.mode == Mode::Call {
            client.echo(ByteBuf::new()).await?;
        }
        clients.push((connection, client));
    }

    let shared = Shared::new(workload, workers);

    let progress = progress_bar(shared.clone(), workload);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..workers {
        let client = clients[index / workload.in_flight.max(1)].1.clone();
        let shared = shared.clone();
        let sizes = sizes.clone();
        let (mode, rate) = (workload.mode, workload.rate);
        tasks.spawn(worker(index, workers, client, shared, sizes, mode, rate));
    }
    while tasks.join_next().await.is_some() {}
    shared.finished.store(true, Ordering::Relaxed);
    let _ = progress.await;

    let (histogram, seconds, timeline) = shared.summary();
    let completed = shared.completed();
    // Casts may still be in the servers' queues: give them a moment.
    if matches!(servers, Servers::InProcess) && workload.mode != Mode::Call {
        let expected = completed
            * if workload.mode == Mode::Fanout {
                workload.servers.max(1) as u64
            } else {
                1
            };
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let result = RunResult {
        url: display_url(&workload.url),
        mode: workload.mode,
        codec: workload.codec,
        servers: workload.servers,
        clients: workload.clients,
        in_flight: workload.in_flight,
        payload: workload.payload.clone(),
        rate: workload.rate,
        seconds,
        completed,
        errors: shared.errors.load(Ordering::Relaxed),
        timeouts: shared.timeouts.load(Ordering::Relaxed),
        received: matches!(servers, Servers::InProcess).then(|| received.load(Ordering::Relaxed)),
        throughput: completed as f64 / seconds,
        latency_us: Latency::of(&histogram),
        timeline,
        distribution: distribution(&histogram),
        queue: None,
    };
    for (connection, handle) in server_handles {
        handle.shutdown().await?;
        connection.close().await?;
    }
    for (connection, _) in clients {
        connection.close().await?;
    }
    Ok(result)
}

/// The URL without passwords; `embedded` for the default.
pub(super) fn display_url(url: &str) -> String {
    if url.is_empty() {
        "embedded".to_owned()
    } else {
        warren::transport::url::redact(url)
    }
}

/// Latency at percentiles 0 .. 99.999 (log-spaced towards the tail).
pub(super) fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=50)
        .map(|i| {
            // 1 - 10^(-i/10): 0, 20.6, 36.9, … 99.999
            let p = 1.0 - 10f64.powf(-(i as f64) / 10.0);
            (p * 100.0, h.value_at_quantile(p.min(0.99999)))
        })
        .collect()
}

async fn worker(
    index: usize,
    workers: usize,
    client: BenchServiceClient,
    shared: Arc<Shared>,
    sizes: Vec<(usize, u32)>,
    mode: Mode,
    rate: Option<f64>,
) {
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let fanout = client.fanout();
    for k in 0u64.. {
        let slot = k * workers as u64 + index as u64;
        let Some((intended, measuring)) = shared.pace(slot, rate).await else {
            break;
        };
        let payload = ByteBuf::from(vec![0x5a; pick(&sizes, &mut rng)]);
        let result = match mode {
            Mode::Call => client.echo(payload).await.map(drop),
            // `measure` hands queue mode to `super::queue`.
            Mode::Cast | Mode::Queue => client.sink(payload).await,
            Mode::Fanout => fanout.sink(payload).await,
        };
        let done = Instant::now();
        if !measuring {
            continue;
        }
        match result {
            Ok(()) => {
                let micros = done.saturating_duration_since(intended).as_micros() as u64;
                shared.record(index, micros, done);
            }
            Err(e) if e.is_timeout() => {
                shared.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if shared.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "request failed");
                }
            }
        }
    }
}

pub(super) fn progress_bar(
    shared: Arc<Shared>,
    workload: &Workload,
) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let label = format!(
        "{} {}",
        display_url(&workload.url),
        format!("{:?}", workload.mode).to_lowercase()
    );
    let unit = if workload.mode == Mode::Queue {
        "msg/s"
    } else {
        "req/s"
    };
    tokio::spawn(async move {
        let mut last = (Instant::now(), 0u64);
        while !shared.finished.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let done = shared.completed();
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, done);
            let h = shared.histogram();
            let phase = if now < shared.measure_from {
                "warm-up "
            } else {
                ""
            };
            bar.set_message(format!(
                "{label}: {phase}{rate:>9.0} {unit}  p50 {:>6} µs  p99 {:>7} µs  errors {}  timeouts {}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                shared.errors.load(Ordering::Relaxed),
                shared.timeouts.load(Ordering::Relaxed),
            ));
            bar.tick();
        }
        bar.finish_and_clear();
    })
}
