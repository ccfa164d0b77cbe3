//! Results: a table on stdout, JSON (`--json`), and an SVG plot (`--plot`).

use std::path::Path;

use super::run::RunResult;

/// Prints the final table; with several runs, ratios against the first.
pub fn print(results: &[RunResult]) {
    let queues = results.iter().any(|r| r.queue.is_some());
    println!(
        "{:<34} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8}",
        "broker",
        "mode",
        if queues { "recv msg/s" } else { "req/s" },
        "min µs",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
        "errors",
        "timeouts"
    );
    for r in results {
        let l = &r.latency_us;
        println!(
            "{:<34} {:>6} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8}",
            truncate(&r.url, 34),
            format!("{:?}", r.mode).to_lowercase(),
            r.throughput,
            l.min,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            r.errors,
            r.timeouts
        );
    }
    if let Some((first, rest)) = results.split_first() {
        for r in rest {
            println!(
                "{} vs {}: throughput ×{:.2}, p50 ×{:.2}, p99 ×{:.2}",
                r.url,
                first.url,
                r.throughput / first.throughput.max(1e-9),
                r.latency_us.p50 as f64 / first.latency_us.p50.max(1) as f64,
                r.latency_us.p99 as f64 / first.latency_us.p99.max(1) as f64,
            );
        }
    }
    for r in results {
        if let Some(q) = &r.queue {
            println!(
                "{}: {} producers, {} consumers, {} queues, body {} B{}{}{}{}, prefetch {}: \
                 sent {} ({:.0} msg/s), received {} ({:.0} msg/s) in {:.1} s; \
                 whole run sent {} received {}",
                r.url,
                q.producers,
                q.consumers,
                q.queues,
                r.payload,
                q.confirm
                    .map(|n| format!(", confirm {n}"))
                    .unwrap_or_default(),
                if q.persistent { ", persistent" } else { "" },
                if q.autoack { ", autoack" } else { "" },
                r.rate
                    .filter(|x| *x > 0.0)
                    .map(|x| format!(", {x:.0} msg/s per producer"))
                    .unwrap_or_default(),
                q.prefetch,
                q.sent,
                q.sent_rate,
                r.completed,
                r.throughput,
                r.seconds,
                q.sent_total,
                q.received_total,
            );
            continue;
        }
        println!(
            "{}: {} servers, {} clients × {} in flight, payload {} B, {} requests in {:.1} s{}{}",
            r.url,
            r.servers,
            r.clients,
            r.in_flight,
            r.payload,
            r.completed,
            r.seconds,
            r.rate
                .map(|x| format!(", open loop at {x:.0}/s"))
                .unwrap_or_default(),
            r.received
                .map(|x| format!(", servers received {x}"))
                .unwrap_or_default(),
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// Writes `--json` and `--plot` when asked.
pub fn write_outputs(
    results: &[RunResult],
    json: Option<&Path>,
    plot: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(results)?)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = plot {
        std::fs::write(path, super::plot::svg(results)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
