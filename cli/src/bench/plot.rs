//! `--plot`: an SVG of the runs, drawn with `plotters` (SVG backend, no
//! font rendering: the viewer lays out the text).
//!
//! Two panels, one line per run: latency by percentile (log scales, the
//! tail spread out by nines) and throughput second by second.

use plotters::prelude::*;

use super::run::RunResult;

/// Width and height of the whole picture, in pixels.
const SIZE: (u32, u32) = (900, 760);

/// Line colours, one per run (cycled).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Caption and label fonts (the SVG names them; the viewer renders them).
const CAPTION: (&str, u32) = ("sans-serif", 24);
const LABELS: (&str, u32) = ("sans-serif", 16);

/// The highest percentile the distribution reaches, in nines (99.999 %).
const MAX_NINES: f64 = 5.0;

/// The SVG document for `results`.
pub fn svg(results: &[RunResult]) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (top, bottom) = root.split_vertically(SIZE.1 / 2);
        latency(&top, results).map_err(|e| e.to_string())?;
        throughput(&bottom, results).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    out.push('\n');
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// The legend entry of run `i`.
fn label(i: usize, r: &RunResult, unit: &str) -> String {
    format!(
        "{}. {} — {:.0} {unit}, p50 {} µs, p99 {} µs",
        i + 1,
        r.url,
        r.throughput,
        r.latency_us.p50,
        r.latency_us.p99
    )
}

/// `req/s` for RPC, `msg/s` for queues.
fn unit(results: &[RunResult]) -> &'static str {
    if results.iter().any(|r| r.queue.is_some()) {
        "msg/s"
    } else {
        "req/s"
    }
}

/// Percentile `p` (0–100) as nines: 90 → 1, 99 → 2, 99.9 → 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(10f64.powf(-MAX_NINES)).log10()
}

/// The percentile at `nines`, printed with as many decimals as it needs.
fn percentile_label(nines: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.round() as i32 - 2).max(0) as usize;
    format!("{p:.decimals$}%")
}

fn latency(area: &Area<'_>, results: &[RunResult]) -> DrawResult {
    let values = || {
        results
            .iter()
            .flat_map(|r| r.distribution.iter().map(|(_, v)| *v))
    };
    let max = values().max().unwrap_or(1).max(10) as f64;
    // From the power of ten below the fastest call.
    let min = 10f64.powf((values().min().unwrap_or(1).max(1) as f64).log10().floor());
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile (µs, log scale)", CAPTION)
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .margin_right(40)
        .build_cartesian_2d(0f64..MAX_NINES, (min..max * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .label_style(LABELS)
        .x_labels(MAX_NINES as usize + 1)
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("percentile")
        .y_desc("µs")
        .draw()?;
    let unit = unit(results);
    for (i, r) in results.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(
                r.distribution
                    .iter()
                    .map(|(p, v)| (nines(*p), (*v).max(1) as f64)),
                c.stroke_width(2),
            ))?
            .label(label(i, r, unit))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(LABELS)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// The timeline without its last, partial second (which would plot as a
/// drop): the seconds a rate can be read from.
fn whole_seconds(r: &RunResult) -> &[u64] {
    let whole = (r.seconds.floor() as usize).clamp(1, r.timeline.len().max(1));
    &r.timeline[..whole.min(r.timeline.len())]
}

fn throughput(area: &Area<'_>, results: &[RunResult]) -> DrawResult {
    let max = results
        .iter()
        .flat_map(|r| r.timeline.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let seconds = results
        .iter()
        .map(|r| whole_seconds(r).len())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let unit = unit(results);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("throughput over time ({unit})"), CAPTION)
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .margin_right(40)
        .build_cartesian_2d(0f64..seconds - 1.0, 0f64..max * 1.1)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .label_style(LABELS)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_labels((seconds as usize).min(11))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("second of the measured window")
        .y_desc(unit)
        .draw()?;
    for (i, r) in results.iter().enumerate() {
        chart.draw_series(LineSeries::new(
            whole_seconds(r)
                .iter()
                .enumerate()
                .map(|(t, n)| (t as f64, *n as f64)),
            colour(i).stroke_width(2),
        ))?;
    }
    Ok(())
}
