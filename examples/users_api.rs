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
//!
//! Every response carries `X-Cache: HIT`, `MISS` or `BYPASS`. Try:
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

use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Connection, Row};
use tower_redis_cache::{BuildError, CacheLayer, MemoryStore, RedisStore, Rule, Store};

/// The embedded database: in memory, shared by every connection of this process.
const SQLITE_URL: &str = "sqlite:file:users_api?mode=memory&cache=shared";
/// How long `GET /users` (and the other read routes) stay cached.
const TTL: Duration = Duration::from_secs(60);
/// How many times `POST /users` without an id retries when another insert took the same id.
const INSERT_ATTEMPTS: u32 = 8;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:3000".to_owned());

    // `_keeper` holds the in-memory SQLite database open for the life of the process.
    let (db, _keeper) = open_database(env_var("DATABASE_URL")).await?;
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
    let app = router(db).layer(cache);

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

/// The cache rules, next to the routes they cover.
fn cache_layer(store: impl Store) -> Result<CacheLayer, BuildError> {
    CacheLayer::builder(store)
        .default_ttl(TTL)
        // The same for every caller, so credentialed requests share these entries too.
        .route("/users", Rule::get().ttl(TTL).tag("users").shared())
        .route("/users", Rule::post().evicts(["users"]))
        .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]).shared())
        .route(
            "/users/{id}",
            Rule::methods([Method::PUT, Method::DELETE]).evicts(["users", "user:{id}"]),
        )
        // One entry per `Authorization` header (the layer's default identity). Tags can only be
        // filled from path parameters, not from the user, so `/me` carries the coarse `users`
        // tag: any write to users evicts every `/me` entry, and none is ever stale.
        .route("/me", Rule::get().per_user().tag("users"))
        .bypass("/auth/{*rest}")
        .build()
}

fn router(db: AnyPool) -> Router {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(get_user).put(update_user).delete(delete_user))
        .route("/me", get(me))
        .route("/auth/login", post(login))
        .route("/health", get(health))
        .with_state(db)
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
