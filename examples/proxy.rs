//! A caching reverse proxy: every request goes to one upstream, and `GET` responses are cached by
//! `tower-redis-cache` as a shared HTTP cache caches them (RFC 9111).
//!
//! ```text
//! UPSTREAM_URL=http://127.0.0.1:3000 cargo run --example proxy
//! ```
//!
//! Environment (no command-line options):
//!
//! | Variable         | Default                 | Meaning                                                 |
//! |------------------|-------------------------|---------------------------------------------------------|
//! | `UPSTREAM_URL`   | required                | `http://host:port`, optionally with a base path         |
//! | `BIND`           | `127.0.0.1:3001`        | address to listen on (`127.0.0.1:0` picks a free port)  |
//! | `CACHE_TTL_SECS` | `60`                    | how long responses that say nothing of it stay cached   |
//! | `CACHE_STORE`    | see below               | `none`, `memory`, `redis` or `tiered`                   |
//! | `REDIS_URL`      | unset: in-process store | cache in Redis, e.g. `redis://127.0.0.1:6379`           |
//! | `CACHE_L1_BYTES` | `67108864` (64 MiB)     | `tiered` only: the in-process cache in front of Redis   |
//! | `CACHE_REFRESH_AHEAD` | `on`               | `off` lets hot entries expire into a miss (see `CacheLayerBuilder::refresh_ahead`) |
//! | `SESSION_COOKIES` | unset: every cookie    | the cookies that say who is asking, comma-separated; requests with only other cookies (`_ga`, `theme`) are anonymous |
//! | `CACHE_TARGETED_FIELD` | unset             | this proxy's own targeted cache-control field (RFC 9213), read before `CDN-Cache-Control` and `Cache-Control` |
//! | `REDIS_POOL_SIZE`| half the cores (1–8)    | `redis` and `tiered`: connections to Redis              |
//! | `RUST_LOG`       | `info`                  | log filter (`tracing_subscriber` env-filter syntax)     |
//!
//! `CACHE_STORE` picks where responses are cached:
//!
//! | `CACHE_STORE` | Store                                                                       |
//! |---------------|-----------------------------------------------------------------------------|
//! | unset         | `redis` when `REDIS_URL` is set, `memory` otherwise                         |
//! | `none`        | no cache layer at all: a plain proxy (no `X-Cache`), the baseline of benchmarks |
//! | `memory`      | `MemoryStore`, in this process (`REDIS_URL` is ignored)                     |
//! | `redis`       | `RedisStore` at `REDIS_URL` (required)                                      |
//! | `tiered`      | `TieredStore`: an in-process L1 of `CACHE_L1_BYTES` in front of Redis at `REDIS_URL` (required) |
//!
//! The method, path, query, headers and body of each request are forwarded, but for the
//! hop-by-hop headers (those `Connection` names included) and `Host` (the upstream's is used;
//! the host the client asked for, the target's authority if it has one, else `Host`, goes in
//! `X-Forwarded-Host`). The upstream's status, headers (but hop-by-hop ones) and body come back
//! as they are, streamed both ways. Responses to `GET` are stored as a shared HTTP cache stores
//! them (`Rule::http_cache`, RFC 9111): any status the upstream gives explicit freshness
//! (`max-age`, `s-maxage`, `Expires`), and the heuristically cacheable ones (`200`, `301`,
//! `404`, `410`...) for 10% of the time since their `Last-Modified`, else for `CACHE_TTL_SECS`;
//! never with `Set-Cookie`, `no-store` or `private`. A request with `Authorization` or `Cookie`
//! is answered only from, and fills only, entries whose response says it is for anyone
//! (`public`, `s-maxage`, `must-revalidate`: RFC 9111 section 3.5). A valid
//! `CDN-Cache-Control` (or the field `CACHE_TARGETED_FIELD` names) stands in for
//! `Cache-Control` and `Expires`, and is passed on to the client. Other methods pass
//! straight through. The upstream must be plain `http://`: this example has no TLS.
//!
//! Interim `1xx` responses cannot reach the client (a hyper 1 server cannot send them); the
//! `Link` headers of an upstream's `103 Early Hints` are added to its final response instead.
//!
//! Every response carries `X-Cache: HIT`, `MISS` or `BYPASS` (but with `CACHE_STORE=none`); an
//! unreachable upstream is a `502`, a silent one a `504`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_redis_cache::{
    BuildError, CacheLayer, MemoryStore, RedisStore, Rule, Store, TieredStore,
};

/// The longest the upstream may take to start answering.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:3001".to_owned());
    let upstream = Upstream::from_env()?;
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

    let cache = cache_from_env(ttl).await?;
    tracing::info!(upstream = %upstream.base, ttl_secs = ttl.as_secs(), "proxying");
    let app = Router::new().fallback(forward).with_state(upstream);
    let app = match cache {
        Some(cache) => app.layer(cache),
        None => app,
    };

    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    println!("proxy listening on http://{addr}");
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The cache layer over the store that `CACHE_STORE` (or, unset, `REDIS_URL`) names; `None` for
/// `CACHE_STORE=none`.
async fn cache_from_env(ttl: Duration) -> anyhow::Result<Option<CacheLayer>> {
    let options = CacheOptions {
        ttl,
        refresh_ahead: refresh_ahead_from_env()?,
        targeted_field: targeted_field_from_env()?,
        session_cookies: session_cookies_from_env()?,
    };
    let choice = env_var("CACHE_STORE").map(|choice| choice.trim().to_ascii_lowercase());
    let choice = choice.as_deref().unwrap_or(match env_var("REDIS_URL") {
        Some(_) => "redis",
        None => "memory",
    });
    let redis_url = || {
        env_var("REDIS_URL").with_context(|| {
            format!("CACHE_STORE={choice} needs REDIS_URL, e.g. REDIS_URL=redis://127.0.0.1:6379")
        })
    };
    let cache = match choice {
        "none" => {
            tracing::info!("no cache (CACHE_STORE=none): every request goes to the upstream");
            return Ok(None);
        }
        "memory" => {
            tracing::info!("caching in process");
            cache_layer(MemoryStore::default(), &options)?
        }
        "redis" => {
            let url = redis_url()?;
            let mut builder = RedisStore::builder(url.as_str());
            if let Some(size) = redis_pool_size()? {
                builder = builder.pool_size(size);
            }
            let store = builder
                .build()
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            tracing::info!(%url, "caching in Redis");
            cache_layer(store, &options)?
        }
        "tiered" => {
            let url = redis_url()?;
            let l1_max_bytes: u64 = match env_var("CACHE_L1_BYTES") {
                Some(bytes) => {
                    bytes.trim().parse().ok().filter(|&bytes| bytes > 0).with_context(|| {
                        format!("CACHE_L1_BYTES must be a positive number of bytes, not `{bytes}`")
                    })?
                }
                None => 64 * 1024 * 1024,
            };
            let pool_size = redis_pool_size()?;
            let store = TieredStore::builder(url.as_str())
                .l1_max_bytes(l1_max_bytes)
                .redis(|redis| match pool_size {
                    Some(size) => redis.pool_size(size),
                    None => redis,
                })
                .build()
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            tracing::info!(%url, l1_max_bytes, "caching in process, in front of Redis");
            cache_layer(store, &options)?
        }
        other => bail!("CACHE_STORE must be none, memory, redis or tiered, not `{other}`"),
    };
    Ok(Some(cache))
}

/// Caches every `GET` (`/` and everything under it) as a shared HTTP cache does, for `ttl` when
/// a heuristically cacheable response has neither freshness nor `Last-Modified`.
///
/// A request with `Authorization` or `Cookie` is answered only from an entry whose response
/// says it is for anyone (`public`, `s-maxage`, `must-revalidate`), and its own answer is
/// stored only when it says so (RFC 9111 section 3.5): a personal page is never stored, nor an
/// anonymous one served to a signed-in user. `Cache-Control: private` is never stored.
///
/// Keyed on no request header up front: what a response `Vary`s on is learned from it, so that
/// requests differing only in headers the upstream ignores share one entry.
fn cache_layer(store: impl Store, options: &CacheOptions) -> Result<CacheLayer, BuildError> {
    let rule = || Rule::http_cache().ttl(options.ttl);
    let mut builder = CacheLayer::builder(store);
    if !options.refresh_ahead {
        builder = builder.without_refresh_ahead();
    }
    if let Some(name) = &options.targeted_field {
        builder = builder.targeted_cache_control(name.clone());
    }
    if let Some(names) = &options.session_cookies {
        builder = builder.credential_cookies(names.iter().cloned());
    }
    builder.route("/", rule()).route("/{*path}", rule()).build()
}

/// What the environment says of the cache, whatever its store.
struct CacheOptions {
    ttl: Duration,
    refresh_ahead: bool,
    /// `CACHE_TARGETED_FIELD`: this proxy's own targeted cache-control field (RFC 9213).
    targeted_field: Option<HeaderName>,
    /// `SESSION_COOKIES`: the cookies that are credentials; `None`: every cookie is.
    session_cookies: Option<Vec<String>>,
}

/// `SESSION_COOKIES`: cookie names, comma-separated, or unset.
fn session_cookies_from_env() -> anyhow::Result<Option<Vec<String>>> {
    let Some(list) = env_var("SESSION_COOKIES") else { return Ok(None) };
    let names: Vec<String> =
        list.split(',').map(|name| name.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        bail!("SESSION_COOKIES must name cookies, e.g. SESSION_COOKIES=session, not `{list}`");
    }
    Ok(Some(names))
}

/// `CACHE_TARGETED_FIELD`: a header name, or unset.
fn targeted_field_from_env() -> anyhow::Result<Option<HeaderName>> {
    let Some(name) = env_var("CACHE_TARGETED_FIELD") else { return Ok(None) };
    let parsed = HeaderName::from_bytes(name.trim().as_bytes());
    parsed.map(Some).with_context(|| {
        format!(
            "CACHE_TARGETED_FIELD must be a header name, e.g. proxy-cache-control, not `{name}`"
        )
    })
}

/// `CACHE_REFRESH_AHEAD`: `on` (the default) or `off`.
fn refresh_ahead_from_env() -> anyhow::Result<bool> {
    match env_var("CACHE_REFRESH_AHEAD").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => bail!("CACHE_REFRESH_AHEAD must be on or off, not `{other}`"),
    }
}

/// `REDIS_POOL_SIZE`: how many connections to Redis; `None` (unset) keeps the store's default.
fn redis_pool_size() -> anyhow::Result<Option<usize>> {
    let Some(size) = env_var("REDIS_POOL_SIZE") else { return Ok(None) };
    let parsed = size.trim().parse().ok().filter(|&size| size > 0);
    parsed.map(Some).with_context(|| {
        format!("REDIS_POOL_SIZE must be a positive number of connections, not `{size}`")
    })
}

// ---------------------------------------------------------------------------------------------
// Forwarding

#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Body>,
    /// `http://host:port`.
    base: String,
    /// The upstream's base path without its trailing `/` (often empty).
    prefix: String,
}

impl Upstream {
    fn from_env() -> anyhow::Result<Self> {
        let Some(url) = env_var("UPSTREAM_URL") else {
            bail!("UPSTREAM_URL is not set: say where to forward requests, e.g. UPSTREAM_URL=http://127.0.0.1:3000");
        };
        let uri: Uri =
            url.parse().with_context(|| format!("UPSTREAM_URL `{url}` is not a valid URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("UPSTREAM_URL `{url}` must start with http:// (this example has no TLS)");
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

async fn forward(
    State(upstream): State<Upstream>,
    ConnectInfo(client_addr): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let target = match upstream.target(&parts.uri) {
        Ok(target) => target,
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid request target"),
    };
    remove_hop_by_hop(&mut parts.headers);
    // The host the client asked for: the target's authority when it has one (absolute form,
    // HTTP/2 `:authority`), which wins over `Host` (RFC 9112 section 3.2.2), as it does in
    // the cache's key.
    let host = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    parts.headers.remove(header::HOST);
    if let Some(host) = host {
        parts.headers.insert("x-forwarded-host", host);
    }
    append_forwarded_for(&mut parts.headers, client_addr);
    parts.uri = target;
    // The client speaks HTTP/1.1 to the upstream whatever the caller spoke to us.
    parts.version = Version::HTTP_11;
    let method = parts.method.clone();
    let uri = parts.uri.clone();

    let mut request = Request::from_parts(parts, body);
    let early_hints = collect_early_hints(&mut request);
    let sent = upstream.client.request(request);
    let response = match tokio::time::timeout(UPSTREAM_TIMEOUT, sent).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!(%method, %uri, error = %e, "upstream request failed");
            return error(StatusCode::BAD_GATEWAY, "the upstream cannot be reached");
        }
        Err(_) => {
            tracing::warn!(%method, %uri, "upstream timed out");
            return error(StatusCode::GATEWAY_TIMEOUT, "the upstream did not answer in time");
        }
    };
    tracing::debug!(%method, %uri, status = %response.status(), "forwarded");
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    add_early_hints(&mut parts.headers, &early_hints);
    Response::from_parts(parts, Body::new(body))
}

/// The `Link` headers of the `103 Early Hints` the upstream sends before its answer.
type EarlyHints = Arc<Mutex<Vec<HeaderValue>>>;

/// Has the client collect the `Link` headers of any `103 Early Hints` the upstream sends
/// (over HTTP/1, where hyper reports them).
///
/// A 1xx cannot be passed on: a hyper 1 server has no way to send one before its response, and
/// a Tower service gives exactly one. So the hints go out with the final response instead
/// (most origins repeat them there anyway), and are stored with it.
fn collect_early_hints(request: &mut Request) -> EarlyHints {
    let hints = EarlyHints::default();
    let collected = Arc::clone(&hints);
    hyper::ext::on_informational(request, move |interim| {
        if interim.status() == StatusCode::EARLY_HINTS {
            let links = interim.headers().get_all(header::LINK).iter().cloned();
            collected.lock().unwrap_or_else(|e| e.into_inner()).extend(links);
        }
    });
    hints
}

/// Adds the early hints' `Link` values that the final response does not carry itself.
fn add_early_hints(headers: &mut HeaderMap, hints: &EarlyHints) {
    let hints = std::mem::take(&mut *hints.lock().unwrap_or_else(|e| e.into_inner()));
    for link in hints {
        if !headers.get_all(header::LINK).iter().any(|known| *known == link) {
            headers.append(header::LINK, link);
        }
    }
}

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

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
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
