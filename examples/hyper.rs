//! The cache layer in front of a plain hyper 1 server, without axum: a `tower::ServiceBuilder`
//! stack served by hyper's HTTP/1 connection builder through hyper-util's
//! `TowerToHyperService`. Most of the file is the accept loop that `axum::serve` would hide; the
//! cache is one `.layer(..)` call, as for any tower service.
//!
//! ```text
//! cargo run --example hyper
//! ```
//!
//! Environment (no command-line options):
//!
//! | Variable    | Default                 | Meaning                                              |
//! |-------------|-------------------------|------------------------------------------------------|
//! | `BIND`      | `127.0.0.1:3003`        | address to listen on (`127.0.0.1:0`: a free port)    |
//! | `REDIS_URL` | unset: in-process store | cache in Redis, e.g. `redis://127.0.0.1:6379`        |
//! | `RUST_LOG`  | `info`                  | log filter (`tracing_subscriber` env-filter syntax)  |
//!
//! The server is a stopwatch:
//!
//! | Route              | Answer                                        | Cache                 |
//! |--------------------|-----------------------------------------------|-----------------------|
//! | `GET /time`        | after 50 ms, `{"elapsed_ms": .., "runs": ..}` | 30 s, tag `time`      |
//! | `POST /time/reset` | restarts the stopwatch, `{"reset": true}`     | evicts `time`         |
//! | `GET /health`      | `ok`                                          | no rule: never cached |
//!
//! `elapsed_ms` is the time since the last reset and `runs` counts the handler's runs for
//! `/time`, so a cached answer shows itself: the same numbers, at once. Try:
//!
//! ```text
//! curl -i localhost:3003/time            # X-Cache: MISS, after 50 ms, "runs":1
//! curl -i localhost:3003/time            # X-Cache: HIT, at once, the same body
//! curl -i -XPOST localhost:3003/time/reset # X-Cache: BYPASS; evicts tag `time`
//! curl -i localhost:3003/time            # X-Cache: MISS, "runs":2, a small elapsed_ms
//! ```
//!
//! On `Ctrl-C` or `SIGTERM` it stops accepting connections, lets the requests in flight finish
//! (for up to 10 s) and exits.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_redis_cache::{BuildError, CacheLayer, MemoryStore, RedisStore, Rule, Store};

/// How long `GET /time` stays cached (unless a reset evicts it first).
const TTL: Duration = Duration::from_secs(30);
/// How long the handler of `GET /time` takes: the cost that a hit saves.
const WORK: Duration = Duration::from_millis(50);
/// How long connections may take to finish their requests after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// The state the handler shares across requests and connections.
struct Stopwatch {
    /// When the stopwatch was last (re)started.
    started: Mutex<Instant>,
    /// How many times the handler answered `/time`: it only moves on a miss.
    runs: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:3003".to_owned());
    let cache = match env_var("REDIS_URL") {
        Some(url) => {
            let store = RedisStore::from_url(url.as_str())
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            tracing::info!(%url, "caching in Redis");
            cache_layer(store)?
        }
        None => {
            tracing::info!("caching in process (set REDIS_URL to use Redis)");
            cache_layer(MemoryStore::default())?
        }
    };

    let stopwatch =
        Arc::new(Stopwatch { started: Mutex::new(Instant::now()), runs: AtomicU64::new(0) });
    // The layer needs a `Clone` inner service (each request gets the instance that was polled
    // ready): `service_fn` over a closure that only holds an `Arc` is one.
    let svc = ServiceBuilder::new()
        .layer(cache)
        .service(tower::service_fn(move |request| handler(Arc::clone(&stopwatch), request)));

    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    println!("hyper example listening on http://{addr}");

    // Every connection holds a receiver; `closed()` on the sender tells when all have finished.
    let (stop, stopping) = watch::channel(());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors, a connection reset before it was accepted: not
                    // reasons to stop serving the others. The pause keeps EMFILE from spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // hyper 1 calls services with `&self` and has no readiness; `TowerToHyperService` bridges
        // that to tower by cloning the stack for each request and driving it with `Oneshot`.
        let hyper_svc = TowerToHyperService::new(svc.clone());
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), hyper_svc);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stopping.changed() => {
                    // Finish the request in flight, answer it with `Connection: close`, then end.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    drop(stopping);
    tracing::info!("shutting down: waiting for connections to finish");
    let _ = stop.send(());
    if tokio::time::timeout(DRAIN, stop.closed()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}: exiting anyway");
    }
    Ok(())
}

/// The cache rules: `/time` is cached and tagged, and a reset evicts the tag, so the next read
/// is a miss that sees the restarted stopwatch.
fn cache_layer(store: impl Store) -> Result<CacheLayer, BuildError> {
    CacheLayer::builder(store)
        .route("/time", Rule::get().ttl(TTL).tag("time"))
        .route("/time/reset", Rule::post().evicts(["time"]))
        .build()
}

/// The application: a plain hyper handler, `Request<Incoming>` to `Response<Full<Bytes>>`, that
/// knows nothing about the cache. It never fails: errors are responses.
async fn handler(
    stopwatch: Arc<Stopwatch>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        // HEAD as GET: the layer answers it from the GET entry on a hit, and hyper drops the
        // body on a miss.
        (&Method::GET | &Method::HEAD, "/time") => {
            tokio::time::sleep(WORK).await;
            let runs = stopwatch.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let elapsed = stopwatch.started.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
            let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            json_response(StatusCode::OK, &json!({ "elapsed_ms": elapsed_ms, "runs": runs }))
        }
        (&Method::POST, "/time/reset") => {
            *stopwatch.started.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            tracing::info!("stopwatch reset");
            // A 2xx: only successful writes evict.
            json_response(StatusCode::OK, &json!({ "reset": true }))
        }
        (&Method::GET | &Method::HEAD, "/health") => Response::new(Full::from("ok\n")),
        (_, "/time" | "/time/reset" | "/health") => {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method not allowed" }),
            );
            let allow = if request.uri().path() == "/time/reset" { "POST" } else { "GET, HEAD" };
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "not found" })),
    };
    Ok(response)
}

/// A response with `body` as `application/json`.
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
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

/// Logs to stdout, filtered by `RUST_LOG` (default `info`).
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
