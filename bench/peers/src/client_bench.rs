//! `client_bench`: how much of a Redis hit is the client. Sends a Redis hit's command (`MGET`
//! of a 5 KiB entry and two tag versions, as `RedisStore::lookup` does) from 32 concurrent
//! tasks for a few seconds, through `fred` in the ways the crate could use it and through
//! `redis-rs` (the client tower-http-cache uses), in interleaved rounds, and prints the commands
//! per second and the CPU each used per command: this process's, and Redis's.
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no &
//! REDIS_URL=redis://127.0.0.1:6390 bench/peers/target/release/client_bench
//! ```
//!
//! Environment: `REDIS_URL` (required; the keys `client_bench:*` are written there),
//! `SECONDS` per run (default 5), `ROUNDS` (default 2), `TASKS` (default 32). The runtime has two
//! worker threads, as the proxy has on this machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use fred::prelude::{Builder, ClientLike, Config, KeysInterface, Pool, Value};
use redis::AsyncCommands;

const ENTRY: &str = "client_bench:entry";
const TAGS: [&str; 2] = ["client_bench:t:users", "client_bench:t:#uri"];

/// One way of sending the hit's command.
#[derive(Clone)]
enum Sender {
    /// `fred`, the `MGET` sent as a command of its own.
    Fred(Pool),
    /// `fred`, the `MGET` in a pipeline of one (what `RedisStore::lookup` did before).
    FredPipeline(Pool),
    /// `redis-rs`, one multiplexed connection.
    RedisRs(redis::aio::MultiplexedConnection),
}

impl Sender {
    async fn hit(&mut self) -> anyhow::Result<usize> {
        let keys = vec![ENTRY, TAGS[0], TAGS[1]];
        let values: Vec<Value> = match self {
            Sender::Fred(pool) => pool.next().mget(keys).await?,
            Sender::FredPipeline(pool) => {
                let pipeline = pool.next().pipeline();
                let _: () = pipeline.mget(keys).await?;
                let mut all: Vec<Value> = pipeline.all().await?;
                match all.pop() {
                    Some(Value::Array(values)) => values,
                    other => anyhow::bail!("unexpected reply {other:?}"),
                }
            }
            Sender::RedisRs(connection) => {
                let values: Vec<Option<Bytes>> = connection.mget(&keys).await?;
                return Ok(values.first().and_then(Option::as_ref).map_or(0, Bytes::len));
            }
        };
        Ok(values.into_iter().next().and_then(Value::into_bytes).map_or(0, |b| b.len()))
    }
}

fn cpu_micros() -> f64 {
    // utime and stime of this process, in clock ticks (100 a second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 =
        fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks * 10_000.0
}

async fn redis_cpu_micros(info: &Pool) -> anyhow::Result<f64> {
    let text: String = info.next().info(Some(fred::types::InfoKind::Cpu)).await?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("used_cpu_user") + field("used_cpu_sys")) * 1e6)
}

async fn run(sender: Sender, tasks: usize, seconds: u64, info: &Pool) -> anyhow::Result<String> {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (cpu0, redis0, started) = (cpu_micros(), redis_cpu_micros(info).await?, Instant::now());
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (mut sender, done, count) = (sender.clone(), Arc::clone(&done), Arc::clone(&count));
        handles.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let len = sender.hit().await?;
                anyhow::ensure!(len == 5 * 1024, "the entry came back with {len} bytes");
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    done.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, redis) = (cpu_micros() - cpu0, redis_cpu_micros(info).await? - redis0);
    let n = count.load(Ordering::Relaxed) as f64;
    Ok(format!("{:.0} | {:.1} | {:.1}", n / elapsed, cpu / n, redis / n))
}

async fn fred_pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let pool = Builder::from_config(Config::from_url(url)?).build_pool(size)?;
    pool.init().await?;
    Ok(pool)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").context("REDIS_URL is not set")?;
    let var = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (seconds, rounds, tasks) = (var("SECONDS", 5), var("ROUNDS", 2), var("TASKS", 32) as usize);
    let info = fred_pool(&url, 1).await?;
    let _: () = info.next().set(ENTRY, vec![b'x'; 5 * 1024], None, None, false).await?;
    for tag in TAGS {
        let _: () = info.next().set(tag, "1234567890", None, None, false).await?;
    }
    let redis_rs = redis::Client::open(url.as_str())?.get_multiplexed_async_connection().await?;
    let senders = [
        ("fred, pool 1, MGET", Sender::Fred(fred_pool(&url, 1).await?)),
        ("fred, pool 2, MGET", Sender::Fred(fred_pool(&url, 2).await?)),
        ("fred, pool 4, MGET", Sender::Fred(fred_pool(&url, 4).await?)),
        ("fred, pool 4, pipeline of one MGET", Sender::FredPipeline(fred_pool(&url, 4).await?)),
        ("redis-rs, multiplexed connection, MGET", Sender::RedisRs(redis_rs)),
    ];
    println!("| round: client | commands/s | client CPU µs/command | Redis CPU µs/command |");
    println!("|---|--:|--:|--:|");
    for round in 1..=rounds {
        for (name, sender) in &senders {
            let figures = run(sender.clone(), tasks, seconds, &info).await?;
            println!("| {round}: {name} | {figures} |");
        }
    }
    Ok(())
}
