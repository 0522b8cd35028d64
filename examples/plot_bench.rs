//! Draws the latency chart of `bench/load.sh` from its CSV: p50 and p95 of every configuration
//! of the `proxy` example, uncached against each cached store, at each upstream delay and
//! concurrency, as an SVG.
//!
//! ```text
//! cargo run --release --example plot_bench -- bench/results/2026-11-23.csv bench/results/latency.svg
//! ```
//!
//! Arguments: the CSV that `bench/load.sh` wrote, and the SVG to write (default
//! `bench/results/latency.svg`). No environment variables.
//!
//! One panel per upstream delay (rows) and concurrency (columns). In each, one pair of bars per
//! run: the static ceiling (the upstream with no delay and no proxy, measured again in each
//! delay's block of runs), the proxy with no cache, and the hit and miss paths of each cached store the CSV has. The latency
//! axis is logarithmic: a hit is two to three orders of magnitude faster than the upstream.
//!
//! The CSV columns read are `config`, `delay_ms`, `path`, `concurrency`, `p50_ms` and `p95_ms`
//! (found by name in the header line); other columns and rows of other paths (such as the long
//! `soak` run) are ignored.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context as _};
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::prelude::*;

/// The bars of each panel, left to right: (config, path, label under the pair).
const CATEGORIES: [(&str, &str, &str); 8] = [
    ("ceiling", "static", "static"),
    ("none", "uncached", "no cache"),
    ("memory", "hit", "memory hit"),
    ("memory", "miss", "memory miss"),
    ("redis", "hit", "redis hit"),
    ("redis", "miss", "redis miss"),
    ("tiered", "hit", "tiered hit"),
    ("tiered", "miss", "tiered miss"),
];
const P50_COLOR: RGBColor = RGBColor(31, 92, 153);
const P95_COLOR: RGBColor = RGBColor(150, 190, 230);
const WIDTH: u32 = 1500;
const HEIGHT: u32 = 1000;

/// One run of the CSV.
#[derive(Debug)]
struct Run {
    config: String,
    delay_ms: u64,
    path: String,
    concurrency: u64,
    p50_ms: f64,
    p95_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(csv) = args.next() else {
        bail!("usage: plot_bench <results.csv> [latency.svg]");
    };
    let svg = args.next().unwrap_or_else(|| "bench/results/latency.svg".to_owned());
    let runs = read_runs(Path::new(&csv))?;
    draw(&runs, Path::new(&svg), &csv)?;
    println!("wrote {svg}");
    Ok(())
}

fn read_runs(path: &Path) -> anyhow::Result<Vec<Run>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let header: Vec<&str> = lines.next().context("the CSV is empty")?.split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|&h| h.trim() == name)
            .with_context(|| format!("the CSV has no `{name}` column"))
    };
    let (config, delay, kind, concurrency, p50, p95) = (
        column("config")?,
        column("delay_ms")?,
        column("path")?,
        column("concurrency")?,
        column("p50_ms")?,
        column("p95_ms")?,
    );
    let mut runs = Vec::new();
    for (number, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| {
            fields.get(i).copied().with_context(|| format!("row {} is too short", number + 2))
        };
        let number_in = |i: usize| -> anyhow::Result<f64> {
            let value = field(i)?;
            value.parse().with_context(|| format!("row {}: `{value}` is not a number", number + 2))
        };
        runs.push(Run {
            config: field(config)?.to_owned(),
            delay_ms: number_in(delay)? as u64,
            path: field(kind)?.to_owned(),
            concurrency: number_in(concurrency)? as u64,
            p50_ms: number_in(p50)?,
            p95_ms: number_in(p95)?,
        });
    }
    Ok(runs)
}

/// The run of `config`/`path` in the panel of `delay_ms` and `concurrency`. The static ceiling
/// has no delay itself: its rows carry the delay of the block of runs they were measured in.
fn find<'a>(
    runs: &'a [Run],
    (config, path): (&str, &str),
    delay_ms: u64,
    concurrency: u64,
) -> Option<&'a Run> {
    runs.iter().find(|run| {
        run.config == config
            && run.path == path
            && run.concurrency == concurrency
            && run.delay_ms == delay_ms
    })
}

fn draw(runs: &[Run], svg: &Path, source: &str) -> anyhow::Result<()> {
    let delays: BTreeSet<u64> = runs.iter().map(|r| r.delay_ms).collect();
    let delays: Vec<u64> = delays.into_iter().collect();
    let concurrencies: BTreeSet<u64> = runs.iter().map(|r| r.concurrency).collect();
    let concurrencies: Vec<u64> = concurrencies.into_iter().collect();
    if delays.is_empty() || concurrencies.is_empty() {
        bail!("the CSV has no proxy runs to draw");
    }
    // Only the categories that ran (a skipped `tiered` leaves no empty slots).
    let categories: Vec<(&str, &str, &str)> = CATEGORIES
        .into_iter()
        .filter(|&(config, path, _)| runs.iter().any(|r| r.config == config && r.path == path))
        .collect();
    let values = runs
        .iter()
        .filter(|r| categories.iter().any(|&(c, p, _)| r.config == c && r.path == p))
        .flat_map(|r| [r.p50_ms, r.p95_ms])
        .filter(|v| *v > 0.0);
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        bail!("the CSV has no latencies to draw");
    }
    // Whole decades (and a little below the lowest, so that it is labelled), with room above
    // the tallest bar for its figure.
    let y_min = 10f64.powf(low.log10().floor()) / 1.5;
    let y_max = 10f64.powf((high * 3.0).log10().ceil());

    let root = SVGBackend::new(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(70);
    title.draw(&Text::new(
        "tower-redis-cache `proxy` example: latency, p50 and p95 (lower is better)",
        (20, 12),
        ("sans-serif", 26).into_font().style(FontStyle::Bold),
    ))?;
    title.draw(&Text::new(
        format!(
            "Latency seen by the load generator (oha) on loopback, in milliseconds on a log \
             scale. \"static\" is the upstream itself with no delay and no proxy. Data: {source}"
        ),
        (20, 45),
        ("sans-serif", 15).into_font(),
    ))?;
    // One legend for every panel, at the right of the title.
    let legend_x = WIDTH as i32 - 330;
    for (row, (color, name)) in
        [(P50_COLOR, "p50 (median), figure above the pair"), (P95_COLOR, "p95")].iter().enumerate()
    {
        let y = 14 + 24 * row as i32;
        title.draw(&Rectangle::new([(legend_x, y), (legend_x + 18, y + 16)], color.filled()))?;
        title.draw(&Text::new(*name, (legend_x + 26, y + 1), ("sans-serif", 16).into_font()))?;
    }

    let panels = body.split_evenly((delays.len(), concurrencies.len()));
    for (index, panel) in panels.iter().enumerate() {
        let delay_ms = delays[index / concurrencies.len()];
        let concurrency = concurrencies[index % concurrencies.len()];
        let connections = if concurrency == 1 { "connection" } else { "connections" };
        let n = categories.len();
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("upstream delay {delay_ms} ms, {concurrency} {connections}"),
                ("sans-serif", 19).into_font().style(FontStyle::Bold),
            )
            .margin(12)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(Slots(n), (y_min..y_max).log_scale())?;
        let label_of = |x: &f64| {
            let i = x.floor() as usize;
            categories.get(i).map_or_else(String::new, |&(_, _, label)| label.to_owned())
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&label_of)
            .x_label_style(("sans-serif", 14))
            .y_desc("latency (ms, log scale)")
            .y_label_formatter(&|v| format_ms(*v))
            .y_label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .x_desc("configuration and path")
            .draw()?;

        let found: Vec<(usize, &Run)> = categories
            .iter()
            .enumerate()
            .filter_map(|(i, &(config, path, _))| {
                find(runs, (config, path), delay_ms, concurrency).map(|run| (i, run))
            })
            .collect();
        let bar = |i: usize, offset: f64, value: f64, color: RGBColor| {
            let left = i as f64 + offset;
            Rectangle::new([(left, y_min), (left + 0.36, value.max(y_min))], color.filled())
        };
        chart.draw_series(found.iter().map(|&(i, run)| bar(i, 0.13, run.p50_ms, P50_COLOR)))?;
        chart.draw_series(found.iter().map(|&(i, run)| bar(i, 0.51, run.p95_ms, P95_COLOR)))?;
        // The p50 figure above each pair.
        let label_style = ("sans-serif", 13).into_font().color(&BLACK);
        chart.draw_series(found.iter().map(|&(i, run)| {
            let top = run.p50_ms.max(run.p95_ms) * 1.8;
            Text::new(format_ms(run.p50_ms), (i as f64 + 0.12, top), label_style.clone())
        }))?;
    }
    root.present().with_context(|| format!("cannot write {}", svg.display()))?;
    Ok(())
}

/// An x axis of `n` slots of width 1, `[i, i + 1)` for category `i`, with its tick (and label)
/// in the middle of each slot.
struct Slots(usize);

impl Ranged for Slots {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (start, end): (i32, i32)) -> i32 {
        let share = value / self.0.max(1) as f64;
        start + (f64::from(end - start) * share).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.0 as f64
    }
}

impl ValueFormatter<f64> for Slots {
    fn format(value: &f64) -> String {
        format!("{value}")
    }
}

/// `0.12`, `3.4`, `25`, `210`: milliseconds with two or three significant digits.
fn format_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}
