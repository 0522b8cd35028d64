//! A users API whose reads are cached by `tower-redis-cache`, and whose writes evict by tag.
//!
//! ```text
//! cargo run --example users_api
//! ```
//!
//! Environment (no command-line options):
//!
//! | Variable       | Default                      | Meaning                                                |
//! |----------------|------------------------------|--------------------------------------------------------|
//! | `BIND`         | `127.0.0.1:3000`             | address to listen on (`127.0.0.1:0` picks a free port) |
//! | `REDIS_URL`    | unset: in-process store      | cache in Redis, e.g. `redis://127.0.0.1:6379`          |
//! | `DATABASE_URL` | unset: embedded SQLite       | e.g. `postgres://postgres@127.0.0.1:5432/app`          |
//! | `RUST_LOG`     | `info`                       | log filter (`tracing_subscriber` env-filter syntax)    |
//!
//! The `users(id, name, email, age)` table is created at start, and seeded with two users when
//! it is empty. Without `DATABASE_URL` the database is an in-memory SQLite one that lives as long
//! as the process.
//!
//! | Route               | Cache                                                   |
//! |---------------------|---------------------------------------------------------|
//! | `GET /users`        | shared, 60 s, tag `users`                               |
//! | `POST /users`       | evicts `users`                                          |
//! | `GET /users/{id}`   | shared, tags `users`, `user:{id}`                       |
//! | `PUT /users/{id}`   | evicts `users`, `user:{id}`                             |
//! | `DELETE /users/{id}`| evicts `users`, `user:{id}`                             |
//! | `GET /me`           | one entry per `Authorization` header, tag `users`       |
//! | `POST /auth/login`  | bypassed (`/auth/{*rest}`)                               |
//! | `GET /health`       | no rule: never cached                                   |
//! | `GET /metrics`      | outside the layer: Prometheus text format               |
//! | `GET /cache`        | outside the layer: a live page of the cache's figures   |
//! | `GET /cache/stats`  | outside the layer: `CacheHandle::stats()` as JSON       |
//!
//! Every response of the API carries `X-Cache: HIT`, `MISS` or `BYPASS`. Try:
//!
//! ```text
//! curl -i localhost:3000/users                    # X-Cache: MISS, then HIT
//! curl -i localhost:3000/users -H 'content-type: application/json' \
//!      -d '{"name":"Alan","email":"alan@example.com","age":41}'
//! curl -i localhost:3000/users                    # X-Cache: MISS again, with Alan
//! curl -i localhost:3000/me -H 'authorization: Bearer 1'
//! ```
//!
//! `/me` identifies the caller by `Authorization: Bearer <user id>` (a stand-in for real
//! authentication). Errors are JSON: `{"error": "..."}`.
//!
//! Observability: `/metrics` renders the layer's metrics (see `tower_redis_cache::telemetry`)
//! for Prometheus, with histogram buckets for the two duration metrics so that
//! `histogram_quantile` works on them (`contrib/grafana/tower-redis-cache.json` is a dashboard
//! for them). `/cache` is one page, with no build step and nothing fetched from elsewhere, that
//! shows the hit ratio, the requests by outcome and the p50/p95 latency of hits and misses over
//! the last minute, refreshed from `/cache/stats` every 2 s (`/cache?every=500` for every
//! 500 ms). The three routes are mounted outside the cache layer, so scrapes and the page's
//! polling never count in the figures they show.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tower_redis_cache::telemetry::LatencySummary;
use tower_redis_cache::{
    BuildError, CacheHandle, CacheLayer, MemoryStore, RedisStore, Rule, Stats, Store,
};

/// The embedded database: in memory, shared by every connection of this process.
const SQLITE_URL: &str = "sqlite:file:users_api?mode=memory&cache=shared";
/// How long `GET /users` (and the other read routes) stay cached.
const TTL: Duration = Duration::from_secs(60);
/// How many times `POST /users` without an id retries when another insert took the same id.
const INSERT_ATTEMPTS: u32 = 8;
/// Upper bounds of the request duration buckets, in seconds: hits take tens of microseconds to
/// a millisecond, misses as long as the database takes.
const REQUEST_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Upper bounds of the store call buckets, in seconds: microseconds in process, a fraction of a
/// millisecond to Redis on the same host, up to the store's timeouts.
const STORE_BUCKETS: [f64; 13] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// How often the Prometheus recorder drains its histograms when nobody scrapes `/metrics`.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// The page of `GET /cache`, with `{{name}}` placeholders for the figures at page load.
const CACHE_PAGE: &str = include_str!("dashboard/cache.html");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // Before the layer serves: it registers its metrics with the recorder installed at its
    // first request, and with none, its metrics would go nowhere.
    let prometheus = install_prometheus()?;
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:3000".to_owned());

    // `_keeper` holds the in-memory SQLite database open for the life of the process.
    let (db, _keeper) = open_database(env_var("DATABASE_URL")).await?;
    let (api, cache) = match env_var("REDIS_URL") {
        Some(url) => {
            let store = RedisStore::from_url(url.as_str())
                .await
                .with_context(|| format!("cannot connect to Redis at {url}"))?;
            tracing::info!(%url, "caching in Redis");
            api(store)?
        }
        None => {
            tracing::info!("caching in process (set REDIS_URL to use Redis)");
            api(MemoryStore::default())?
        }
    };
    let observed = Observed { prometheus, cache };
    // The observability routes outside the cache; everything else goes to the API through it,
    // paths it does not know included. (`merge` would not do: it keeps the fallback of the
    // router merged in, which the layer does not cover.)
    let app = observability(observed).fallback_service(api.with_state(db));

    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    println!("users_api listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The API's routes, each with its cache rules: every pattern written once. Gives the router
/// (the cache layer on it) and the cache's handle.
fn api(store: impl Store) -> Result<(Router<AnyPool>, CacheHandle), BuildError> {
    CacheLayer::builder(store)
        .default_ttl(TTL)
        .router()
        // The same for every caller, so credentialed requests share these entries too.
        .route(
            "/users",
            get(list_users).post(create_user),
            [Rule::get().ttl(TTL).tag("users").shared(), Rule::post().evicts(["users"])],
        )
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
            [
                Rule::get().tags(["users", "user:{id}"]).shared(),
                Rule::methods([Method::PUT, Method::DELETE]).evicts(["users", "user:{id}"]),
            ],
        )
        // One entry per `Authorization` header (the layer's default identity). Tags can only be
        // filled from path parameters, not from the user, so `/me` carries the coarse `users`
        // tag: any write to users evicts every `/me` entry, and none is ever stale.
        .route("/me", get(me), [Rule::get().per_user().tag("users")])
        .bypass("/auth/login", post(login))
        .uncached("/health", get(health))
        .build()
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn list_users(State(db): State<AnyPool>) -> Result<Json<Vec<User>>, ApiError> {
    let rows =
        sqlx::query("SELECT id, name, email, age FROM users ORDER BY id").fetch_all(&db).await?;
    Ok(Json(rows.iter().map(User::from_row).collect::<Result<_, _>>()?))
}

async fn create_user(
    State(db): State<AnyPool>,
    JsonBody(input): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let (id, fields) = input.into_parts();
    fields.validate()?;
    let user = match id {
        Some(id) => insert_with_id(&db, id, &fields).await?,
        None => insert_with_next_id(&db, &fields).await?,
    };
    tracing::info!(id = user.id, "user created");
    Ok((StatusCode::CREATED, Json(user)))
}

async fn get_user(
    State(db): State<AnyPool>,
    UserIdParam(id): UserIdParam,
) -> Result<Json<User>, ApiError> {
    find_user(&db, id).await?.map(Json).ok_or_else(|| not_found(id))
}

async fn update_user(
    State(db): State<AnyPool>,
    UserIdParam(id): UserIdParam,
    JsonBody(fields): JsonBody<UserFields>,
) -> Result<Json<User>, ApiError> {
    fields.validate()?;
    let row = sqlx::query(
        "UPDATE users SET name = $1, email = $2, age = $3 WHERE id = $4 \
         RETURNING id, name, email, age",
    )
    .bind(&fields.name)
    .bind(&fields.email)
    .bind(fields.age)
    .bind(id)
    .fetch_optional(&db)
    .await?;
    let user = User::from_row(&row.ok_or_else(|| not_found(id))?)?;
    tracing::info!(id, "user updated");
    Ok(Json(user))
}

async fn delete_user(
    State(db): State<AnyPool>,
    UserIdParam(id): UserIdParam,
) -> Result<StatusCode, ApiError> {
    let done = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&db).await?;
    if done.rows_affected() == 0 {
        return Err(not_found(id));
    }
    tracing::info!(id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(db): State<AnyPool>, Bearer(id): Bearer) -> Result<Json<User>, ApiError> {
    find_user(&db, id).await?.map(Json).ok_or_else(|| not_found(id))
}

/// A stand-in for real authentication: the "token" is the user id, as `/me` expects it.
async fn login(JsonBody(input): JsonBody<LoginRequest>) -> Json<serde_json::Value> {
    Json(json!({ "token": input.id.to_string(), "token_type": "Bearer" }))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

// ---------------------------------------------------------------------------------------------
// Observability: /metrics, /cache and /cache/stats

/// What the observability routes read: the Prometheus recorder and the cache's counters.
#[derive(Clone)]
struct Observed {
    prometheus: PrometheusHandle,
    cache: CacheHandle,
}

/// `/metrics`, `/cache` and `/cache/stats`: mounted in front of the cache layer, not behind it.
fn observability(observed: Observed) -> Router {
    Router::new()
        .route("/metrics", get(prometheus_metrics))
        .route("/cache", get(cache_page))
        .route("/cache/stats", get(cache_stats))
        .with_state(observed)
}

/// Installs the Prometheus recorder the layer reports to. Histograms get buckets: without them
/// the exporter renders summaries (`quantile` labels, per process), which `histogram_quantile`
/// cannot aggregate across instances or over a time range.
fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("tower_redis_cache_request_duration_seconds".to_owned()),
            &REQUEST_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("tower_redis_cache_store_duration_seconds".to_owned()),
            &STORE_BUCKETS,
        )?
        .install_recorder()
        .context("cannot install the Prometheus recorder")?;
    // `install_recorder` leaves upkeep to the caller; without it, histogram samples pile up
    // between scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(METRICS_UPKEEP);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The Prometheus text exposition format, version 0.0.4 (what Prometheus scrapes by default).
async fn prometheus_metrics(State(observed): State<Observed>) -> impl IntoResponse {
    let content_type = [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    (content_type, observed.prometheus.render())
}

/// The counters and latencies of now, for the page's script (and `curl`).
async fn cache_stats(State(observed): State<Observed>) -> Json<serde_json::Value> {
    Json(stats_json(&observed.cache.stats(), SystemTime::now()))
}

/// The page with the figures of now in place, so that it says something without JavaScript.
/// Every value is a number or formatted from one, so nothing needs HTML escaping.
async fn cache_page(State(observed): State<Observed>) -> Html<String> {
    let stats = observed.cache.stats();
    let now = SystemTime::now();
    let latency = |summary: &LatencySummary, quantile: Duration| {
        if summary.count == 0 {
            "–".to_owned()
        } else {
            format_millis(millis(quantile))
        }
    };
    let (hit, miss) = (&stats.recent_hit_latency, &stats.recent_miss_latency);
    let figures = [
        ("server_time_ms", unix_millis(now).to_string()),
        ("updated_at", utc_time_of_day(now)),
        ("hit_ratio", format_ratio(stats.hit_ratio())),
        ("hits", stats.hits.to_string()),
        ("misses", stats.misses.to_string()),
        ("stale", stats.stale.to_string()),
        ("bypasses", stats.bypasses.to_string()),
        ("stores", stats.stores.to_string()),
        ("evictions", stats.evictions.to_string()),
        ("store_errors", stats.store_errors.to_string()),
        ("store_skipped", stats.store_skipped.to_string()),
        ("breaker_opened", stats.breaker_opened.to_string()),
        ("hit_p50", latency(hit, hit.p50)),
        ("hit_p95", latency(hit, hit.p95)),
        ("hit_count", hit.count.to_string()),
        ("miss_p50", latency(miss, miss.p50)),
        ("miss_p95", latency(miss, miss.p95)),
        ("miss_count", miss.count.to_string()),
    ];
    let page = figures.iter().fold(CACHE_PAGE.to_owned(), |page, (name, value)| {
        page.replace(&format!("{{{{{name}}}}}"), value)
    });
    Html(page)
}

/// [`Stats`] as JSON, latencies in milliseconds, with the server's time for the page's rates.
fn stats_json(stats: &Stats, now: SystemTime) -> serde_json::Value {
    let latency = |summary: &LatencySummary| {
        json!({
            "count": summary.count,
            "p50": millis(summary.p50),
            "p95": millis(summary.p95),
            "p99": millis(summary.p99),
            "max": millis(summary.max),
        })
    };
    json!({
        "server_time_ms": unix_millis(now),
        "hits": stats.hits,
        "misses": stats.misses,
        "stale": stats.stale,
        "bypasses": stats.bypasses,
        "stores": stats.stores,
        "evictions": stats.evictions,
        "store_errors": stats.store_errors,
        "store_skipped": stats.store_skipped,
        "breaker_opened": stats.breaker_opened,
        "hit_ratio": stats.hit_ratio(),
        "hit_latency_ms": latency(&stats.hit_latency),
        "miss_latency_ms": latency(&stats.miss_latency),
        "recent_hit_latency_ms": latency(&stats.recent_hit_latency),
        "recent_miss_latency_ms": latency(&stats.recent_miss_latency),
    })
}

/// Milliseconds, from whole microseconds (the precision of the latencies), so that the JSON
/// says `0.329`, not `0.32899999999999996`.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// Milliseconds since the Unix epoch, as JavaScript's `Date` takes them.
fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS UTC`, as the page's script writes it.
fn utc_time_of_day(at: SystemTime) -> String {
    let seconds = unix_millis(at) / 1000 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

// The page's script formats the same figures the same way (`percent`, `millis` in
// dashboard/cache.html): rounding half up first keeps the two from differing on ties, where
// Rust's formatting rounds to even and JavaScript's `toFixed` rounds up.

/// `83.3 %`.
fn format_ratio(ratio: f64) -> String {
    format!("{} %", round(ratio * 100.0, 1))
}

/// `0.12 ms`, `12.3 ms`, `123 ms`: three significant digits or so.
fn format_millis(ms: f64) -> String {
    let digits = match ms {
        ms if ms >= 100.0 => 0,
        ms if ms >= 10.0 => 1,
        _ => 2,
    };
    format!("{} ms", round(ms, digits))
}

/// `value` with `digits` decimals, ties rounded up (away from zero), as the page's `round`.
fn round(value: f64, digits: i32) -> String {
    let scale = 10f64.powi(digits);
    format!("{:.*}", digits as usize, (value * scale).round() / scale)
}

// ---------------------------------------------------------------------------------------------
// Data

#[derive(Debug, Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    age: i64,
}

impl User {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            age: row.try_get("age")?,
        })
    }
}

/// The body of `POST /users`: the fields, and an id if the client picks it.
#[derive(Debug, Deserialize)]
struct NewUser {
    id: Option<i64>,
    name: String,
    email: String,
    age: i64,
}

impl NewUser {
    fn into_parts(self) -> (Option<i64>, UserFields) {
        let fields = UserFields { name: self.name, email: self.email, age: self.age };
        (self.id, fields)
    }
}

/// The body of `PUT /users/{id}`.
#[derive(Debug, Deserialize)]
struct UserFields {
    name: String,
    email: String,
    age: i64,
}

impl UserFields {
    fn validate(&self) -> Result<(), ApiError> {
        if self.name.trim().is_empty() {
            return Err(ApiError::bad_request("`name` must not be empty"));
        }
        if self.email.trim().is_empty() {
            return Err(ApiError::bad_request("`email` must not be empty"));
        }
        if self.age < 0 {
            return Err(ApiError::bad_request("`age` must not be negative"));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct LoginRequest {
    id: i64,
}

// ---------------------------------------------------------------------------------------------
// Database

/// Connects, creates the table and seeds it when empty. For the embedded SQLite database it also
/// returns a connection to hold for the life of the process: an in-memory database disappears
/// with its last connection.
async fn open_database(url: Option<String>) -> anyhow::Result<(AnyPool, Option<AnyConnection>)> {
    sqlx::any::install_default_drivers();
    let (pool, keeper) = match url {
        Some(url) => {
            let pool = AnyPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
                .await
                .context("cannot connect to DATABASE_URL")?;
            tracing::info!("database connected (DATABASE_URL)");
            (pool, None)
        }
        None => {
            let keeper = AnyConnection::connect(SQLITE_URL)
                .await
                .context("cannot open the embedded SQLite database")?;
            // One connection: SQLite runs one write at a time anyway, and a single connection
            // never meets the table locks of shared-cache mode.
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect(SQLITE_URL)
                .await
                .context("cannot open the embedded SQLite database")?;
            tracing::info!("embedded SQLite database (in memory; set DATABASE_URL for PostgreSQL)");
            (pool, Some(keeper))
        }
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (\
            id BIGINT PRIMARY KEY, \
            name TEXT NOT NULL, \
            email TEXT NOT NULL, \
            age BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .context("cannot create the users table")?;
    seed(&pool).await?;
    Ok((pool, keeper))
}

async fn seed(pool: &AnyPool) -> anyhow::Result<()> {
    let count: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM users").fetch_one(pool).await?.try_get("n")?;
    if count == 0 {
        sqlx::query(
            "INSERT INTO users (id, name, email, age) VALUES \
             (1, 'Ada Lovelace', 'ada@example.com', 36), \
             (2, 'Grace Hopper', 'grace@example.com', 85) \
             ON CONFLICT (id) DO NOTHING",
        )
        .execute(pool)
        .await
        .context("cannot seed the users table")?;
        tracing::info!("seeded users 1 and 2");
    }
    Ok(())
}

async fn find_user(db: &AnyPool, id: i64) -> Result<Option<User>, ApiError> {
    let row = sqlx::query("SELECT id, name, email, age FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.as_ref().map(User::from_row).transpose()?)
}

async fn insert_with_id(db: &AnyPool, id: i64, fields: &UserFields) -> Result<User, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO users (id, name, email, age) VALUES ($1, $2, $3, $4) \
         RETURNING id, name, email, age",
    )
    .bind(id)
    .bind(&fields.name)
    .bind(&fields.email)
    .bind(fields.age)
    .fetch_one(db)
    .await;
    match inserted {
        Ok(row) => Ok(User::from_row(&row)?),
        Err(e) if is_unique_violation(&e) => {
            Err(ApiError::new(StatusCode::CONFLICT, format!("a user with id {id} already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Takes the next id in the statement itself; two concurrent inserts may pick the same one, and
/// the loser retries.
async fn insert_with_next_id(db: &AnyPool, fields: &UserFields) -> Result<User, ApiError> {
    for attempt in 1..=INSERT_ATTEMPTS {
        let inserted = sqlx::query(
            "INSERT INTO users (id, name, email, age) \
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3 FROM users \
             RETURNING id, name, email, age",
        )
        .bind(&fields.name)
        .bind(&fields.email)
        .bind(fields.age)
        .fetch_one(db)
        .await;
        match inserted {
            Ok(row) => return Ok(User::from_row(&row)?),
            Err(e) if is_unique_violation(&e) => {
                tracing::debug!(attempt, "id taken by a concurrent insert; retrying");
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 3)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many concurrent inserts; try again"))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

// ---------------------------------------------------------------------------------------------
// Extractors and errors

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no user with id {id}"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
            return (self.status, challenge, body).into_response();
        }
        (self.status, body).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(%error, "database error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

/// Bad JSON, a missing or wrongly typed field, a missing `Content-Type`: all 400, in JSON (axum's
/// own rejections are plain text, and 415 or 422 for some of these).
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, rejection.body_text())
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// The `{id}` of `/users/{id}`, as an integer (400 in JSON otherwise).
struct UserIdParam(i64);

impl<S: Send + Sync> FromRequestParts<S> for UserIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text()))?;
        raw.parse().map(Self).map_err(|_| ApiError::bad_request(format!("invalid user id `{raw}`")))
    }
}

/// The caller's user id, from `Authorization: Bearer <id>` (401 in JSON otherwise).
struct Bearer(i64);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let unauthorized =
            || ApiError::new(StatusCode::UNAUTHORIZED, "send `Authorization: Bearer <user id>`");
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthorized)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized());
        }
        token.trim().parse().map(Self).map_err(|_| unauthorized())
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
