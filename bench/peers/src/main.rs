//! `peer_proxy`: the `proxy` example's caching reverse proxy, with `tower-http-cache` 0.6 in place
//! of `tower-redis-cache`, for side-by-side hit benchmarks against the nearest Rust peer.
//!
//! ```text
//! UPSTREAM_URL=http://127.0.0.1:3002 PEER_BACKEND=moka \
//!   cargo run --release --manifest-path bench/peers/Cargo.toml
//! ```
//!
//! Environment (no command-line options), named as the `proxy` example names them:
//!
//! | Variable         | Default          | Meaning                                                     |
//! |------------------|------------------|-------------------------------------------------------------|
//! | `UPSTREAM_URL`   | required         | `http://host:port`, optionally with a base path             |
//! | `BIND`           | `127.0.0.1:3001` | address to listen on (`127.0.0.1:0` picks a free port)      |
//! | `CACHE_TTL_SECS` | `60`             | how long `GET` responses stay cached                        |
//! | `PEER_BACKEND`   | `moka`           | `moka` (`InMemoryBackend`) or `redis` (`RedisBackend`)      |
//! | `REDIS_URL`      | unset            | `PEER_BACKEND=redis` only (required), e.g. `redis://127.0.0.1:6379` |
//! | `PEER_MOKA_ENTRIES` | `10000`       | `moka` only: the most entries the in-process cache holds    |
//! | `RUST_LOG`       | `info`           | log filter (`tracing_subscriber` env-filter syntax)         |
//!
//! Forwarding is the `proxy` example's: hop-by-hop headers and `Host` are dropped, the host the
//! client asked for goes in `X-Forwarded-Host`, the client's address is appended to
//! `X-Forwarded-For`, and an unreachable upstream is a `502`, a silent one a `504`.
//!
//! `GET` requests without `Authorization` or `Cookie` go through `tower-http-cache`'s
//! `CacheLayer`, keyed by path and query, and only `200` responses are stored, for
//! `CACHE_TTL_SECS`. `tower-http-cache` has no per-user keys, so requests with credentials (and
//! every other method) bypass the cache rather than share entries. Every response carries
//! `X-Cache`: `HIT` when the upstream was not asked, `MISS` when it was, `BYPASS` when the request
//! did not go through the cache.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Uri, Version};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::aio::ConnectionManagerConfig;
use tower::{Layer, Service};
use tower_http_cache::backend::CacheBackend;
use tower_http_cache::layer::CacheService;
use tower_http_cache::prelude::{CacheLayer, InMemoryBackend, KeyExtractor, RedisBackend};

/// The longest the upstream may take to start answering (the `proxy` example's bound).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:3001".to_owned());
    let upstream = Forward::from_env()?;
    let ttl = match env_var("CACHE_TTL_SECS") {
        Some(secs) => secs
            .trim()
            .parse()
            .ok()
            .filter(|&secs| secs > 0)
            .map(Duration::from_secs)
            .with_context(|| {
                format!("CACHE_TTL_SECS must be a positive number of seconds, not `{secs}`")
            })?,
        None => Duration::from_secs(60),
    };
    let backend = env_var("PEER_BACKEND").map(|choice| choice.trim().to_ascii_lowercase());
    let backend = backend.as_deref().unwrap_or("moka");

    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    tracing::info!(upstream = %upstream.base, ttl_secs = ttl.as_secs(), backend, "proxying");
    match backend {
        "moka" => {
            let entries: u64 = match env_var("PEER_MOKA_ENTRIES") {
                Some(n) => n.trim().parse().ok().filter(|&n| n > 0).with_context(|| {
                    format!("PEER_MOKA_ENTRIES must be a positive number of entries, not `{n}`")
                })?,
                None => 10_000,
            };
            tracing::info!(entries, "caching in process (tower-http-cache InMemoryBackend, moka)");
            serve(listener, InMemoryBackend::new(entries), ttl, upstream).await
        }
        "redis" => {
            let Some(url) = env_var("REDIS_URL") else {
                bail!("PEER_BACKEND=redis needs REDIS_URL, e.g. REDIS_URL=redis://127.0.0.1:6379");
            };
            let client = redis::Client::open(url.as_str())
                .with_context(|| format!("REDIS_URL `{url}` is not a valid Redis URL"))?;
            // redis 1.x defaults to a 500 ms response timeout; tower-http-cache's docs and
            // examples lift it to these bounds for whole response bodies.
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_connection_timeout(Some(Duration::from_secs(5)));
            let manager = client
                .get_connection_manager_with_config(config)
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            tracing::info!(%url, "caching in Redis (tower-http-cache RedisBackend)");
            serve(listener, RedisBackend::new(manager), ttl, upstream).await
        }
        other => bail!("PEER_BACKEND must be moka or redis, not `{other}`"),
    }
}

/// Serves the proxy, with `tower-http-cache` over `backend` in front of the upstream.
async fn serve<B: CacheBackend>(
    listener: tokio::net::TcpListener,
    backend: B,
    ttl: Duration,
    upstream: Forward,
) -> anyhow::Result<()> {
    let cache = CacheLayer::builder(backend)
        .ttl(ttl)
        // Only `200`s, as the `proxy` example's rule (the default also stores 203, 300, 301 and
        // 404, and 4xx for a negative TTL of 5 s).
        .statuses([200])
        .negative_ttl(Duration::ZERO)
        // `GET` only (the default also caches `HEAD`).
        .method_predicate(|method| method == Method::GET)
        // The default, spelled out: honour `Cache-Control`/`Pragma` of requests and responses.
        .respect_cache_control(true)
        .key_extractor(KeyExtractor::path_and_query())
        .build();
    let app = Peer { cached: cache.layer(upstream.clone()), plain: upstream };
    let app = Router::new().fallback_service(app);

    let addr = listener.local_addr()?;
    println!("peer_proxy listening on http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The cache in front of the upstream

/// Sends cacheable requests through the cache and the others straight upstream, and says which
/// in `X-Cache`.
#[derive(Clone)]
struct Peer<B> {
    cached: CacheService<Forward, B>,
    plain: Forward,
}

/// Set by [`Forward`] when a request reaches the upstream: a cached request that did not is a hit.
#[derive(Clone)]
struct Reached(Arc<AtomicBool>);

impl<B: CacheBackend> Service<Request<Body>> for Peer<B> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // `Forward` is always ready, and `CacheService` is ready when its inner service is.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let cacheable = request.method() == Method::GET
            && !request.headers().contains_key(header::AUTHORIZATION)
            && !request.headers().contains_key(header::COOKIE);
        if !cacheable {
            let sent = self.plain.call(request);
            return Box::pin(async move {
                let response = match sent.await {
                    Ok(response) => response.map(Body::new),
                    Err(e) => e.into_response(),
                };
                Ok(with_x_cache(response, "BYPASS"))
            });
        }
        let reached = Arc::new(AtomicBool::new(false));
        request.extensions_mut().insert(Reached(Arc::clone(&reached)));
        let sent = self.cached.call(request);
        Box::pin(async move {
            let response = match sent.await {
                Ok(response) => response.map(Body::new),
                Err(e) => match e.downcast::<UpstreamError>() {
                    Ok(e) => e.into_response(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cache layer failed");
                        UpstreamError::new(StatusCode::BAD_GATEWAY, "the response cannot be read")
                            .into_response()
                    }
                },
            };
            let state = if reached.load(Ordering::Relaxed) { "MISS" } else { "HIT" };
            Ok(with_x_cache(response, state))
        })
    }
}

fn with_x_cache(mut response: Response<Body>, state: &'static str) -> Response<Body> {
    response.headers_mut().insert("x-cache", HeaderValue::from_static(state));
    response
}

// ---------------------------------------------------------------------------------------------
// Forwarding (as the `proxy` example forwards)

/// The upstream, as a service: forwards each request and returns the upstream's response.
#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, Body>,
    /// `http://host:port`.
    base: String,
    /// The upstream's base path without its trailing `/` (often empty).
    prefix: String,
}

impl Forward {
    fn from_env() -> anyhow::Result<Self> {
        let Some(url) = env_var("UPSTREAM_URL") else {
            bail!("UPSTREAM_URL is not set: say where to forward requests, e.g. UPSTREAM_URL=http://127.0.0.1:3000");
        };
        let uri: Uri =
            url.parse().with_context(|| format!("UPSTREAM_URL `{url}` is not a valid URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("UPSTREAM_URL `{url}` must start with http:// (peer_proxy has no TLS)");
        }
        let Some(authority) = uri.authority() else {
            bail!("UPSTREAM_URL `{url}` has no host");
        };
        if uri.query().is_some() {
            bail!("UPSTREAM_URL `{url}` must not have a query");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("http://{authority}"),
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Where `uri` (path and query, as the client sent them) goes upstream.
    fn target(&self, uri: &Uri) -> Result<Uri, axum::http::uri::InvalidUri> {
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        format!("{}{}{path_and_query}", self.base, self.prefix).parse()
    }
}

impl Service<Request<Body>> for Forward {
    type Response = Response<Incoming>;
    type Error = UpstreamError;
    type Future = BoxFuture<Result<Response<Incoming>, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        if let Some(Reached(reached)) = parts.extensions.get::<Reached>() {
            reached.store(true, Ordering::Relaxed);
        }
        let target = match self.target(&parts.uri) {
            Ok(target) => target,
            Err(_) => {
                let e = UpstreamError::new(StatusCode::BAD_REQUEST, "invalid request target");
                return Box::pin(async move { Err(e) });
            }
        };
        remove_hop_by_hop(&mut parts.headers);
        let host = match parts.uri.authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => parts.headers.get(header::HOST).cloned(),
        };
        parts.headers.remove(header::HOST);
        if let Some(host) = host {
            parts.headers.insert("x-forwarded-host", host);
        }
        if let Some(ConnectInfo(client_addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            append_forwarded_for(&mut parts.headers, *client_addr);
        }
        parts.uri = target;
        parts.version = Version::HTTP_11;
        let method = parts.method.clone();
        let uri = parts.uri.clone();
        let sent = self.client.request(Request::from_parts(parts, body));
        Box::pin(async move {
            match tokio::time::timeout(UPSTREAM_TIMEOUT, sent).await {
                Ok(Ok(response)) => {
                    tracing::debug!(%method, %uri, status = %response.status(), "forwarded");
                    let (mut parts, body) = response.into_parts();
                    remove_hop_by_hop(&mut parts.headers);
                    Ok(Response::from_parts(parts, body))
                }
                Ok(Err(e)) => {
                    tracing::warn!(%method, %uri, error = %e, "upstream request failed");
                    Err(UpstreamError::new(
                        StatusCode::BAD_GATEWAY,
                        "the upstream cannot be reached",
                    ))
                }
                Err(_) => {
                    tracing::warn!(%method, %uri, "upstream timed out");
                    Err(UpstreamError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream did not answer in time",
                    ))
                }
            }
        })
    }
}

/// Why a request got no answer from the upstream: the status and message the client gets.
#[derive(Debug)]
struct UpstreamError {
    status: StatusCode,
    message: &'static str,
}

impl UpstreamError {
    fn new(status: StatusCode, message: &'static str) -> Self {
        Self { status, message }
    }

    fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for UpstreamError {}

/// Removes the headers that concern one connection only (RFC 9110 section 7.6.1), including
/// those the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {ip}"),
        None => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}

// ---------------------------------------------------------------------------------------------
// Setup helpers

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
