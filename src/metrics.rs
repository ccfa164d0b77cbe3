//! The process's RPC metrics, in Prometheus' text format: per service
//! (topic) and method, on the client and the server side, calls, errors by
//! kind, timeouts, a latency histogram and requests in flight; and the
//! transport's reconnections.
//!
//! warren serves nothing itself: an application that embeds it adds
//! [`render`]'s text to its own `/metrics` (`warren broker --management`
//! does). Counting is a few atomic additions per call in a small in-tree
//! registry, so the library needs no metrics dependency.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// At most this many (side, service, method) series are kept; further
/// ones (a peer can name any method) are counted under `_other`.
pub const MAX_SERIES: usize = 1024;

/// The kinds errors are counted by (the `kind` label).
const KINDS: [&str; 15] = [
    "timeout",
    "transport",
    "outcome_unknown",
    "decode",
    "no_such_method",
    "unsupported_version",
    "config",
    "returned",
    "refused",
    "not_found",
    "remote",
    "overloaded",
    "poison",
    "cancelled",
    "other",
];

/// Which end of a call a series counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    /// Calls and casts this process sent.
    Client = 0,
    /// Requests this process served.
    Server = 1,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// The counters of one (side, service, method).
#[derive(Default)]
pub(crate) struct Series {
    calls: AtomicU64,
    timeouts: AtomicU64,
    in_flight: AtomicI64,
    errors: [AtomicU64; KINDS.len()],
    /// Per bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

type Key = (Side, String, String);

/// Service → method → series, looked up without allocating.
///
/// Series live as long as the process (there are at most [`MAX_SERIES`]),
/// so a measurement holds a plain reference: no reference count for the
/// client's and the server's threads to fight over on every call.
type BySide = HashMap<String, HashMap<String, &'static Series>>;

#[derive(Default)]
struct Registry {
    /// Clients' series, then servers'.
    sides: [RwLock<BySide>; 2],
    /// How many series exist (bounded by [`MAX_SERIES`]).
    count: std::sync::atomic::AtomicUsize,
    reconnects: AtomicU64,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// How many series each thread remembers in front of the registry.
const RECENT_SERIES: usize = 16;

/// The series of `(side, service, method)`, created on first use. Each
/// thread keeps the last few it used, so a call does not take the
/// registry's lock (a cache line both cores would pass back and forth on
/// every call and reply).
fn series(side: Side, service: &str, method: &str) -> &'static Series {
    type Recent = Vec<(Side, Box<str>, Box<str>, &'static Series)>;
    thread_local! {
        static RECENT: std::cell::RefCell<Recent> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let hit = |recent: &std::cell::RefCell<Recent>| {
        recent
            .borrow()
            .iter()
            .find(|(s, sv, m, _)| *s == side && &**sv == service && &**m == method)
            .map(|entry| entry.3)
    };
    // `try_with`: a measurement may end while its thread is being torn down.
    if let Ok(Some(found)) = RECENT.try_with(hit) {
        return found;
    }
    let found = registered(side, service, method);
    let _ = RECENT.try_with(|recent| {
        let mut recent = recent.borrow_mut();
        if recent.len() >= RECENT_SERIES {
            recent.remove(0);
        }
        recent.push((side, service.into(), method.into(), found));
    });
    found
}

/// The registry's series of `(side, service, method)`, created on first use.
fn registered(side: Side, service: &str, method: &str) -> &'static Series {
    let lock = &registry().sides[side as usize];
    let found = lock
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(service)
        .and_then(|methods| methods.get(method))
        .copied();
    if let Some(series) = found {
        return series;
    }
    let mut map = lock.write().unwrap_or_else(|p| p.into_inner());
    let full = registry().count.load(Ordering::Relaxed) >= MAX_SERIES;
    let service = if full && !map.contains_key(service) {
        "_other"
    } else {
        service
    };
    let methods = map.entry(service.to_owned()).or_default();
    if let Some(series) = methods.get(method) {
        return series;
    }
    let method = if full { "_other" } else { method };
    methods.entry(method.to_owned()).or_insert_with(|| {
        registry().count.fetch_add(1, Ordering::Relaxed);
        Box::leak(Box::default())
    })
}

/// Counts one transport reconnection.
pub(crate) fn reconnected() {
    registry().reconnects.fetch_add(1, Ordering::Relaxed);
}

/// A call or a served request in flight: counted as one until
/// [`finish`](Self::finish)ed, or dropped (counted as cancelled).
pub(crate) struct Measured {
    series: &'static Series,
    started: Instant,
    done: bool,
}

impl Measured {
    /// Starts counting a call (or a served request) of `service`'s `method`.
    pub(crate) fn start(side: Side, service: &str, method: &str) -> Self {
        let series = series(side, service, method);
        series.calls.fetch_add(1, Ordering::Relaxed);
        series.in_flight.fetch_add(1, Ordering::Relaxed);
        Measured {
            series,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the outcome: `None` on success, else the error's kind.
    pub(crate) fn finish(mut self, error: Option<&'static str>) {
        self.record(error);
    }

    fn record(&mut self, error: Option<&'static str>) {
        if self.done {
            return;
        }
        self.done = true;
        let series = &self.series;
        series.in_flight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        series.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(kind) = error {
            let index = KINDS
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(KINDS.len() - 1);
            series.errors[index].fetch_add(1, Ordering::Relaxed);
            if kind == "timeout" {
                series.timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        self.record(Some("cancelled"));
    }
}

/// The error kind (the `kind` label) of a failure a server raised, by its
/// class.
pub(crate) fn failure_kind(class: &str) -> &'static str {
    match class {
        "NoSuchMethod" => "no_such_method",
        "UnsupportedVersion" => "unsupported_version",
        crate::wire::DECODE_FAILURE_CLASS => "decode",
        "Timeout" => "timeout",
        "Overloaded" => "overloaded",
        crate::rpc::POISON_FAILURE_CLASS => "poison",
        _ => "remote",
    }
}

/// The process's RPC metrics in Prometheus' text exposition format
/// (version 0.0.4), for an application's `/metrics`:
///
/// - `warren_rpc_{client,server}_calls_total{service,method}`: calls and
///   casts sent (client) or requests served (server);
/// - `warren_rpc_{client,server}_errors_total{service,method,kind}`;
/// - `warren_rpc_{client,server}_timeouts_total{service,method}`;
/// - `warren_rpc_{client,server}_in_flight{service,method}`;
/// - `warren_rpc_{client,server}_duration_seconds{service,method}`: a
///   histogram of latencies ([`LATENCY_BUCKETS`]);
/// - `warren_rpc_reconnects_total`: transport reconnections.
pub fn render() -> String {
    let mut out = String::new();
    let registry = registry();
    let mut series: Vec<(Key, &'static Series)> = Vec::new();
    for side in [Side::Client, Side::Server] {
        let map = registry.sides[side as usize]
            .read()
            .unwrap_or_else(|p| p.into_inner());
        for (service, methods) in map.iter() {
            for (method, s) in methods {
                series.push(((side, service.clone(), method.clone()), *s));
            }
        }
    }
    series.sort_by(|a, b| {
        (a.0 .0.as_str(), &a.0 .1, &a.0 .2).cmp(&(b.0 .0.as_str(), &b.0 .1, &b.0 .2))
    });
    for side in [Side::Client, Side::Server] {
        let mine: Vec<_> = series.iter().filter(|(k, _)| k.0 == side).collect();
        let prefix = format!("warren_rpc_{}", side.as_str());
        let what = match side {
            Side::Client => "Calls and casts sent",
            Side::Server => "Requests served",
        };
        family(&mut out, &prefix, "calls_total", "counter", what);
        for ((_, service, method), s) in &mine {
            sample(
                &mut out,
                &prefix,
                "calls_total",
                service,
                method,
                "",
                s.calls.load(Ordering::Relaxed) as f64,
            );
        }
        family(
            &mut out,
            &prefix,
            "errors_total",
            "counter",
            "Failed calls, by kind of error",
        );
        for ((_, service, method), s) in &mine {
            for (kind, count) in KINDS.iter().zip(&s.errors) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let extra = format!(",kind=\"{kind}\"");
                    sample(
                        &mut out,
                        &prefix,
                        "errors_total",
                        service,
                        method,
                        &extra,
                        count as f64,
                    );
                }
            }
        }
        family(
            &mut out,
            &prefix,
            "timeouts_total",
            "counter",
            "Calls that timed out",
        );
        for ((_, service, method), s) in &mine {
            sample(
                &mut out,
                &prefix,
                "timeouts_total",
                service,
                method,
                "",
                s.timeouts.load(Ordering::Relaxed) as f64,
            );
        }
        family(&mut out, &prefix, "in_flight", "gauge", "Calls in flight");
        for ((_, service, method), s) in &mine {
            sample(
                &mut out,
                &prefix,
                "in_flight",
                service,
                method,
                "",
                s.in_flight.load(Ordering::Relaxed) as f64,
            );
        }
        family(
            &mut out,
            &prefix,
            "duration_seconds",
            "histogram",
            "Latency of calls, in seconds",
        );
        for ((_, service, method), s) in &mine {
            let mut cumulative = 0;
            for (i, count) in s.buckets.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let extra = format!(",le=\"{le}\"");
                sample(
                    &mut out,
                    &prefix,
                    "duration_seconds_bucket",
                    service,
                    method,
                    &extra,
                    cumulative as f64,
                );
            }
            let sum = s.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            sample(
                &mut out,
                &prefix,
                "duration_seconds_sum",
                service,
                method,
                "",
                sum,
            );
            sample(
                &mut out,
                &prefix,
                "duration_seconds_count",
                service,
                method,
                "",
                cumulative as f64,
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP warren_rpc_reconnects_total Connections re-established after a loss\n\
         # TYPE warren_rpc_reconnects_total counter\n\
         warren_rpc_reconnects_total {}",
        registry.reconnects.load(Ordering::Relaxed)
    );
    out
}

fn family(out: &mut String, prefix: &str, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} {kind}"
    );
}

fn sample(
    out: &mut String,
    prefix: &str,
    name: &str,
    service: &str,
    method: &str,
    extra: &str,
    value: f64,
) {
    let _ = writeln!(
        out,
        "{prefix}_{name}{{service=\"{}\",method=\"{}\"{extra}}} {value}",
        escape(service),
        escape(method)
    );
}

/// A label value as Prometheus' text format writes it.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_call_is_counted_with_its_latency_and_error_kind() {
        Measured::start(Side::Client, "metrics-test", "ok").finish(None);
        Measured::start(Side::Client, "metrics-test", "ok").finish(Some("timeout"));
        drop(Measured::start(Side::Server, "metrics-test", "gone"));
        let text = render();
        assert!(text
            .contains("warren_rpc_client_calls_total{service=\"metrics-test\",method=\"ok\"} 2"));
        assert!(text.contains(
            "warren_rpc_client_errors_total{service=\"metrics-test\",method=\"ok\",kind=\"timeout\"} 1"
        ));
        assert!(text.contains(
            "warren_rpc_client_timeouts_total{service=\"metrics-test\",method=\"ok\"} 1"
        ));
        assert!(text.contains(
            "warren_rpc_client_duration_seconds_bucket{service=\"metrics-test\",method=\"ok\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains(
            "warren_rpc_server_errors_total{service=\"metrics-test\",method=\"gone\",kind=\"cancelled\"} 1"
        ));
        assert!(text
            .contains("warren_rpc_server_in_flight{service=\"metrics-test\",method=\"gone\"} 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
