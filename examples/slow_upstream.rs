//! A stand-in for a slow origin, for load tests of the `proxy` example: every request is answered
//! with the same JSON list of users after a fixed delay, and the requests it served are counted.
//!
//! ```text
//! DELAY_MS=20 BIND=127.0.0.1:3002 cargo run --release --example slow_upstream
//! UPSTREAM_URL=http://127.0.0.1:3002 cargo run --release --example proxy
//! curl -s localhost:3001/users >/dev/null     # reaches the upstream (a miss)
//! curl -s localhost:3001/users >/dev/null     # answered by the cache
//! curl -s localhost:3002/__count               # 1
//! ```
//!
//! Environment (no command-line options):
//!
//! | Variable   | Default          | Meaning                                                      |
//! |------------|------------------|--------------------------------------------------------------|
//! | `BIND`     | `127.0.0.1:3002` | address to listen on (`127.0.0.1:0` picks a free port)        |
//! | `DELAY_MS` | `20`             | how long each answer waits before it is sent, in milliseconds |
//! | `USERS`    | `40`             | how many users the body lists (40 users: 5,134 bytes)         |
//! | `RUST_LOG` | `info`           | log filter (`tracing_subscriber` env-filter syntax)           |
//!
//! | Route         | Answer                                                                   |
//! |---------------|--------------------------------------------------------------------------|
//! | `GET /__count`| how many requests arrived so far, as a plain-text number; not counted     |
//! | anything else | `200`, `application/json`, the same body for every path, method and query |
//!
//! The body is built once at start and served from memory, with no `Cache-Control`: the proxy's
//! rule decides how long it stays cached. With `DELAY_MS=0` the server is a *static ceiling*: the
//! same bytes from a plain axum handler with no cache and no delay, the fastest a cached answer
//! could hope to be on the same machine. On `Ctrl-C` or `SIGTERM` it prints the final count
//! (`served <n> requests`) and exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Serialize;

#[derive(Clone)]
struct Upstream {
    /// The JSON body, built once.
    body: Bytes,
    /// How long each answer waits.
    delay: Duration,
    /// Requests that arrived (but `/__count`).
    served: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:3002".to_owned());
    let delay_ms: u64 = parse_env("DELAY_MS", 20)?;
    let users: usize = parse_env("USERS", 40)?;

    let body = Bytes::from(serde_json::to_vec(&user_list(users))?);
    let upstream = Upstream {
        body,
        delay: Duration::from_millis(delay_ms),
        served: Arc::new(AtomicU64::new(0)),
    };
    let served = Arc::clone(&upstream.served);
    tracing::info!(delay_ms, body_bytes = upstream.body.len(), "serving a fixed user list");
    let app = Router::new().route("/__count", get(count)).fallback(answer).with_state(upstream);

    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    println!("slow_upstream listening on http://{addr}");
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    println!("served {} requests", served.load(Ordering::Relaxed));
    Ok(())
}

/// Every request but `/__count`: the body, after the delay. Counted as it arrives, so a request
/// whose client gave up during the delay still counts as one that reached the upstream.
async fn answer(State(upstream): State<Upstream>) -> impl IntoResponse {
    upstream.served.fetch_add(1, Ordering::Relaxed);
    if !upstream.delay.is_zero() {
        tokio::time::sleep(upstream.delay).await;
    }
    ([(header::CONTENT_TYPE, "application/json")], upstream.body)
}

async fn count(State(upstream): State<Upstream>) -> String {
    format!("{}\n", upstream.served.load(Ordering::Relaxed))
}

#[derive(Serialize)]
struct User {
    id: usize,
    name: String,
    email: String,
    age: usize,
    bio: &'static str,
}

/// `n` made-up users, the same every time.
fn user_list(n: usize) -> Vec<User> {
    (1..=n)
        .map(|id| User {
            id,
            name: format!("User Number {id}"),
            email: format!("user{id}@example.com"),
            age: 18 + id % 60,
            bio: "Writes software, reads papers, caches responses.",
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Setup helpers

/// Resolves on `Ctrl-C`, or on `SIGTERM` where there is one (what `kill <pid>` sends).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A numeric environment variable, `default` when unset.
fn parse_env<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match env_var(name) {
        Some(value) => {
            value.trim().parse().ok().with_context(|| {
                format!("{name} must be a non-negative whole number, not `{value}`")
            })
        }
        None => Ok(default),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

/// An environment variable, with unset and empty both meaning "not set".
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
