//! The soak run of `bench/soak.sh`: three instances of the `proxy` example on one Redis, in
//! front of an origin whose items change, under reads and writes for ten minutes while Redis is
//! restarted every two. Every read is checked against the last write acknowledged before it
//! began.
//!
//! ```text
//! cargo build --release --example proxy --example soak
//! target/release/examples/soak            # or: bash bench/soak.sh
//! ```
//!
//! Everything runs on loopback and stops by itself: a private `redis-server` on a free port
//! (restarted empty, on the same port, every `RESTART_EVERY_SECS`), the origin in this process,
//! the three proxies as child processes, and the load.
//!
//! | Variable             | Default                         | Meaning                                   |
//! |----------------------|---------------------------------|-------------------------------------------|
//! | `DURATION_SECS`      | `600`                           | how long the load runs                    |
//! | `RESTART_EVERY_SECS` | `120`                           | how often Redis is killed and restarted   |
//! | `URLS`               | `3000`                          | how many items the load spreads over      |
//! | `CLIENTS`            | `32`                            | concurrent clients                        |
//! | `WRITES_PERCENT`     | `10`                            | the share of requests that are writes     |
//! | `PROXY_BIN`          | `target/release/examples/proxy` | the proxy binary                          |
//! | `OUT_DIR`            | `bench/results`                 | where `soak.csv`, `soak-rss.svg` and `soak.md` go |
//!
//! The origin answers `GET /items/{n}` with the item's version and `Cache-Control:
//! max-age=300`, and `PUT /items/{n}` by making a new version, which it answers with. Through a
//! proxy, the `PUT` invalidates the item's URL (RFC 9111 section 4.4) in every instance, through
//! Redis. A read is *stale* when it returns a version older than the newest one a `PUT` had
//! returned before the read was sent; a request *fails* when the client gets no `2xx`. The goal
//! is 0 for both: the run ends with an error (status 1) otherwise.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::extract::{Path, State};
use axum::http::header;
use axum::routing::get;
use axum::Router;
use plotters::prelude::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(value) => value.parse().ok().with_context(|| format!("{name}={value} is not valid")),
        Err(_) => Ok(default),
    }
}

/// A `redis-server` this run owns, on a port that stays the same across restarts.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut redis = Self { port, child: None };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("run redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `proxy` example process, killed on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(binary: &PathBuf, upstream: SocketAddr, redis_port: u16) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .env("UPSTREAM_URL", format!("http://{upstream}"))
            .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
            .env("BIND", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {} (build it with bench/soak.sh)", binary.display()))?;
        let stdout = child.stdout.take().context("the proxy's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().context("the proxy ended before listening")??;
            if let Some(addr) = line.strip_prefix("proxy listening on http://") {
                break addr.parse()?;
            }
        };
        // Keep reading its output, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, addr })
    }

    /// Resident memory, from `/proc` (Linux), in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()));
        let kib = status.ok().and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        });
        kib.unwrap_or(0.0) / 1024.0
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each item's version at the origin.
type Versions = Arc<Vec<AtomicU64>>;

async fn origin_read(
    State(versions): State<Versions>,
    Path(n): Path<usize>,
) -> impl axum::response::IntoResponse {
    let version = versions.get(n).map_or(0, |v| v.load(Ordering::SeqCst));
    ([(header::CACHE_CONTROL, "max-age=300")], version.to_string())
}

async fn origin_write(State(versions): State<Versions>, Path(n): Path<usize>) -> String {
    versions.get(n).map_or(0, |v| v.fetch_add(1, Ordering::SeqCst) + 1).to_string()
}

/// What the load counted so far.
#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    hits: AtomicU64,
    writes: AtomicU64,
    failed: AtomicU64,
    stale: AtomicU64,
    /// Each stale read: when, which item and proxy, what it got and should have.
    stale_reads: std::sync::Mutex<Vec<String>>,
}

/// One line of `soak.csv`.
struct Sample {
    second: f64,
    rss_mib: Vec<f64>,
    reads: u64,
    hits: u64,
    writes: u64,
    failed: u64,
    stale: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let duration = Duration::from_secs(env_or("DURATION_SECS", 600)?);
    let restart_every = Duration::from_secs(env_or("RESTART_EVERY_SECS", 120)?);
    let urls: usize = env_or("URLS", 3000)?;
    let clients: usize = env_or("CLIENTS", 32)?;
    let writes_percent: u8 = env_or("WRITES_PERCENT", 10)?;
    let proxy_bin = PathBuf::from(env_or("PROXY_BIN", "target/release/examples/proxy".to_owned())?);
    let out_dir = PathBuf::from(env_or("OUT_DIR", "bench/results".to_owned())?);
    std::fs::create_dir_all(&out_dir)?;

    let mut redis = Redis::start()?;
    let versions: Versions = Arc::new((0..urls).map(|_| AtomicU64::new(0)).collect());
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin_addr = origin.local_addr()?;
    let app = Router::new()
        .route("/items/{n}", get(origin_read).put(origin_write))
        .with_state(Arc::clone(&versions));
    tokio::spawn(async move { axum::serve(origin, app).await });
    let proxies: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(&proxy_bin, origin_addr, redis.port))
        .collect::<anyhow::Result<_>>()?;
    let targets: Arc<Vec<SocketAddr>> = Arc::new(proxies.iter().map(|p| p.addr).collect());
    println!(
        "soak: {} s, Redis on {} restarted every {} s, proxies {:?}, {urls} items, {clients} \
         clients, {writes_percent}% writes",
        duration.as_secs(),
        redis.port,
        restart_every.as_secs(),
        targets
    );

    let counts = Arc::new(Counts::default());
    let acknowledged: Arc<Vec<AtomicU64>> =
        Arc::new((0..urls).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let load: Vec<_> = (0..clients)
        .map(|client| {
            let (http, targets, counts, acknowledged) = (
                http.clone(),
                Arc::clone(&targets),
                Arc::clone(&counts),
                Arc::clone(&acknowledged),
            );
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(client as u64);
                while started.elapsed() < duration {
                    let n = rng.usize(..acknowledged.len());
                    let proxy = rng.usize(..targets.len());
                    let url = format!("http://{}/items/{n}", targets[proxy]);
                    let writing = rng.u8(..100) < writes_percent;
                    let floor = acknowledged[n].load(Ordering::SeqCst);
                    let request = if writing { http.put(&url) } else { http.get(&url) };
                    let Ok(response) = request.send().await else {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let ok = response.status().is_success();
                    let hit = response.headers().get("x-cache").is_some_and(|v| v == "HIT");
                    let status = response.headers().get("cache-status").cloned();
                    let version = response.text().await.ok().and_then(|b| b.parse::<u64>().ok());
                    match (ok, version) {
                        (true, Some(version)) if writing => {
                            counts.writes.fetch_add(1, Ordering::Relaxed);
                            acknowledged[n].fetch_max(version, Ordering::SeqCst);
                        }
                        (true, Some(version)) => {
                            counts.reads.fetch_add(1, Ordering::Relaxed);
                            counts.hits.fetch_add(u64::from(hit), Ordering::Relaxed);
                            if version < floor {
                                counts.stale.fetch_add(1, Ordering::Relaxed);
                                counts.stale_reads.lock().unwrap().push(format!(
                                    "{:.3} s: item {n} through proxy {} got v{version} after v{floor} \
                                     was acknowledged ({status:?})",
                                    started.elapsed().as_secs_f64(),
                                    proxy + 1,
                                ));
                            }
                        }
                        _ => {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let mut samples = Vec::new();
    let mut next_restart = restart_every;
    let mut restarts = Vec::new();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if started.elapsed() >= next_restart && started.elapsed() < duration {
            restarts.push(started.elapsed().as_secs_f64());
            redis.kill();
            redis.spawn()?;
            next_restart += restart_every;
        }
        samples.push(Sample {
            second: started.elapsed().as_secs_f64(),
            rss_mib: proxies.iter().map(Proxy::rss_mib).collect(),
            reads: counts.reads.load(Ordering::Relaxed),
            hits: counts.hits.load(Ordering::Relaxed),
            writes: counts.writes.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            stale: counts.stale.load(Ordering::Relaxed),
        });
    }
    for task in load {
        task.await?;
    }
    let last = samples.last().context("no sample: DURATION_SECS is under 5")?;
    let (reads, hits) = (counts.reads.load(Ordering::Relaxed), counts.hits.load(Ordering::Relaxed));
    let (failed, stale) =
        (counts.failed.load(Ordering::Relaxed), counts.stale.load(Ordering::Relaxed));
    let writes = counts.writes.load(Ordering::Relaxed);
    let first_rss: Vec<f64> = samples.first().map_or(vec![], |s| s.rss_mib.clone());
    let peak_rss: Vec<f64> = (0..proxies.len())
        .map(|i| samples.iter().map(|s| s.rss_mib[i]).fold(0.0, f64::max))
        .collect();
    let summary = format!(
        "{} s, {} Redis restarts (at {}), 3 proxies, {urls} items, {clients} clients, \
         {writes_percent}% writes\n\n\
         | reads | writes | failed | stale reads | hit ratio | RSS at 5 s (MiB) | RSS peak (MiB) | RSS at the end (MiB) |\n\
         |--:|--:|--:|--:|--:|---|---|---|\n\
         | {reads} | {writes} | {failed} | {stale} | {:.3} | {} | {} | {} |\n",
        started.elapsed().as_secs(),
        restarts.len(),
        restarts.iter().map(|s| format!("{s:.1} s")).collect::<Vec<_>>().join(", "),
        hits as f64 / reads.max(1) as f64,
        mib_list(&first_rss),
        mib_list(&peak_rss),
        mib_list(&last.rss_mib),
    );
    let stale_reads = counts.stale_reads.lock().unwrap().join("\n");
    let summary = match stale_reads.is_empty() {
        true => summary,
        false => format!("{summary}\nStale reads:\n\n```text\n{stale_reads}\n```\n"),
    };
    print!("{summary}");
    std::fs::write(out_dir.join("soak.md"), &summary)?;
    write_csv(&out_dir.join("soak.csv"), &samples)?;
    draw_rss(&out_dir.join("soak-rss.svg"), &samples, restart_every)?;
    drop(proxies);
    // An error, not `process::exit`: Redis and the proxies are stopped on the way out.
    if failed > 0 || stale > 0 {
        bail!("the goal is 0 failed and 0 stale: {failed} failed, {stale} stale");
    }
    Ok(())
}

fn mib_list(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" / ")
}

fn write_csv(path: &std::path::Path, samples: &[Sample]) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)?;
    writeln!(file, "second,rss_mib_1,rss_mib_2,rss_mib_3,reads,hits,writes,failed,stale")?;
    for s in samples {
        let rss: Vec<String> = s.rss_mib.iter().map(|v| format!("{v:.1}")).collect();
        writeln!(
            file,
            "{:.0},{},{},{},{},{},{}",
            s.second,
            rss.join(","),
            s.reads,
            s.hits,
            s.writes,
            s.failed,
            s.stale
        )?;
    }
    Ok(())
}

/// Each proxy's resident memory over the run, with the Redis restarts marked.
fn draw_rss(
    path: &std::path::Path,
    samples: &[Sample],
    restart_every: Duration,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let end = samples.last().map_or(1.0, |s| s.second);
    let top = samples.iter().flat_map(|s| s.rss_mib.iter().copied()).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "proxy RSS during the soak (Redis restarted at the grey lines)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart.configure_mesh().x_desc("seconds").y_desc("RSS (MiB)").draw()?;
    let mut restart = restart_every.as_secs_f64();
    while restart < end {
        chart.draw_series(LineSeries::new(
            [(restart, 0.0), (restart, top)],
            &RGBColor(190, 190, 190),
        ))?;
        restart += restart_every.as_secs_f64();
    }
    for (i, color) in [RGBColor(31, 92, 153), RGBColor(200, 90, 40), RGBColor(60, 150, 60)]
        .into_iter()
        .enumerate()
    {
        chart
            .draw_series(LineSeries::new(samples.iter().map(|s| (s.second, s.rss_mib[i])), &color))?
            .label(format!("proxy {}", i + 1))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw()?;
    root.present()?;
    Ok(())
}
