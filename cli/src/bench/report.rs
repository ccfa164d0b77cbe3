//! Results: a table on stdout, JSON, and an SVG plot.

use std::fmt::Write as _;
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
        std::fs::write(path, svg(results))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Two panels: latency by percentile (log-scaled tail), requests/s over time.
pub fn svg(results: &[RunResult]) -> String {
    let (w, h, pad) = (900.0, 360.0, 60.0);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
        2.0 * h + 40.0
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);

    // Panel 1: latency distribution. x: -log10(1 - p), y: latency (log).
    let max_lat = results
        .iter()
        .flat_map(|r| r.distribution.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(1)
        .max(10) as f64;
    let ly = |v: u64| {
        let top = max_lat.log10().ceil().max(1.0);
        h - pad - ((v.max(1) as f64).log10() / top) * (h - 2.0 * pad)
    };
    let lx = |p: f64| {
        let nines = -(1.0 - p / 100.0).max(1e-5).log10();
        pad + nines / 5.0 * (w - 2.0 * pad)
    };
    axes(
        &mut out,
        0.0,
        w,
        h,
        pad,
        "latency by percentile (µs, log scale)",
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = pad + i as f64 / 5.0 * (w - 2.0 * pad);
        let _ = write!(
            out,
            r#"<text x="{x}" y="{}" text-anchor="middle">{label}</text>"#,
            h - pad + 16.0
        );
    }
    let top = max_lat.log10().ceil().max(1.0) as u32;
    for e in 0..=top {
        let v = 10u64.pow(e);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{v}</text>"#,
            pad - 6.0,
            ly(v) + 4.0
        );
    }
    for (i, r) in results.iter().enumerate() {
        let points: Vec<String> = r
            .distribution
            .iter()
            .map(|(p, v)| format!("{:.1},{:.1}", lx(*p), ly(*v)))
            .collect();
        let colour = COLOURS[i % COLOURS.len()];
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" fill="{colour}">{} — {:.0} req/s, p50 {} µs, p99 {} µs</text>"#,
            pad + 10.0,
            pad + 16.0 * i as f64,
            escape(&r.url),
            r.throughput,
            r.latency_us.p50,
            r.latency_us.p99
        );
    }

    // Panel 2: throughput over time.
    let y0 = h + 40.0;
    let max_rate = results
        .iter()
        .flat_map(|r| r.timeline.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_len = results
        .iter()
        .map(|r| r.timeline.len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    axes(&mut out, y0, w, h, pad, "requests per second over time (s)");
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="end">{max_rate:.0}</text>"#,
        pad - 6.0,
        y0 + pad + 4.0
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        w - pad,
        y0 + h - pad + 16.0,
        max_len - 1.0
    );
    for (i, r) in results.iter().enumerate() {
        let points: Vec<String> = r
            .timeline
            .iter()
            .enumerate()
            .map(|(t, c)| {
                let x = pad + t as f64 / (max_len - 1.0) * (w - 2.0 * pad);
                let y = y0 + h - pad - *c as f64 / max_rate * (h - 2.0 * pad);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            COLOURS[i % COLOURS.len()],
            points.join(" ")
        );
    }
    out.push_str("</svg>\n");
    out
}

fn axes(out: &mut String, y0: f64, w: f64, h: f64, pad: f64, title: &str) {
    let _ = write!(
        out,
        r#"<line x1="{pad}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{pad}" y1="{}" x2="{pad}" y2="{}" stroke="black"/><text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        y0 + h - pad,
        w - pad,
        y0 + h - pad,
        y0 + pad,
        y0 + h - pad,
        w / 2.0,
        y0 + pad - 20.0,
        escape(title)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
