//! The cache layer in front of a tonic gRPC server: the unary `GetUser` method is cached per
//! request message, `UpdateUser` evicts it, and the streaming `ListUsers` passes through.
//! The service, `demo.Users`, is written by hand in `examples/grpc/users.rs` (what
//! `tonic-prost-build` would generate, so no `protoc` is needed).
//!
//! ```text
//! cargo run --example grpc              # the server, on 127.0.0.1:50051
//! cargo run --example grpc -- call      # in another terminal: a client's calls, with X-Cache
//! ```
//!
//! Environment (no command-line options besides `call`):
//!
//! | Variable    | Default                  | Meaning                                             |
//! |-------------|--------------------------|-----------------------------------------------------|
//! | `BIND`      | `127.0.0.1:50051`        | address to listen on (`127.0.0.1:0`: a free port)   |
//! | `SERVER`    | `http://127.0.0.1:50051` | the server `call` talks to                          |
//! | `REDIS_URL` | unset: in-process store  | cache in Redis, e.g. `redis://127.0.0.1:6379`       |
//! | `RUST_LOG`  | `info`                   | log filter (`tracing_subscriber` env-filter syntax) |
//!
//! The whole of the caching is the rules and one `.layer(cache.grpc())`:
//!
//! ```text
//! let cache = CacheLayer::builder(store)
//!     .route("/demo.Users/GetUser", Rule::grpc().ttl(TTL).tag("users"))
//!     .route("/demo.Users/UpdateUser", Rule::post().evicts(["users"]))
//!     .build()?;
//! Server::builder().layer(cache.grpc()).add_service(UsersServer::new(users))
//! ```
//!
//! A client sees nothing of it but speed, and an `x-cache` entry in the response metadata:
//!
//! ```text
//! let mut client = UsersClient::connect("http://127.0.0.1:50051").await?;
//! let response = client.get_user(GetUserRequest { id: 1 }).await?;
//! let cache = response.metadata().get("x-cache");  // MISS (50 ms), then HIT (well under 1 ms)
//! let user = response.into_inner();                // User { id: 1, name: "Ada Lovelace", .. }
//! ```
//!
//! `call` runs that and more: a miss, a hit, a write that evicts, the miss after it, an unknown
//! user (`NOT_FOUND`, never stored) and the stream. Clients in other languages need the
//! `.proto` at the top of `examples/grpc/users.rs`; the server offers no reflection.
//!
//! On `Ctrl-C` or `SIGTERM` the server lets the calls in flight finish and exits.

#[path = "grpc/users.rs"]
mod users;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tower_redis_cache::{BuildError, CacheLayer, MemoryStore, RedisStore, Rule, Store};
use users::{GetUserRequest, ListUsersRequest, User, UsersClient, UsersServer, UsersService};

/// How long a `GetUser` answer stays cached (unless an update evicts it first).
const TTL: Duration = Duration::from_secs(60);
/// How long the handlers of `GetUser` and `ListUsers` take: the cost a hit saves.
const READ_DELAY: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    match std::env::args().nth(1).as_deref() {
        None => serve().await,
        Some("call") => {
            let server = env_var("SERVER").unwrap_or_else(|| "http://127.0.0.1:50051".to_owned());
            call(&server).await
        }
        Some(other) => anyhow::bail!("unknown argument {other:?}: run with no argument, or `call`"),
    }
}

/// The server: `demo.Users` behind the cache.
async fn serve() -> anyhow::Result<()> {
    let bind = env_var("BIND").unwrap_or_else(|| "127.0.0.1:50051".to_owned());
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
    let users = UsersService::seeded().with_read_delay(READ_DELAY);

    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    println!("grpc example listening on http://{}", listener.local_addr()?);
    Server::builder()
        .layer(cache.grpc())
        .add_service(UsersServer::new(users))
        // Without TCP_NODELAY, a small write that follows another (the trailers after the
        // message) can wait for the client's delayed ACK: 40 ms on Linux.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown_signal(),
        )
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// The cache rules: `GetUser` answers are cached per request message and tagged; a successful
/// `UpdateUser` evicts the tag. `ListUsers`, a stream, has no rule and is never cached.
fn cache_layer(store: impl Store) -> Result<CacheLayer, BuildError> {
    CacheLayer::builder(store)
        .route("/demo.Users/GetUser", Rule::grpc().ttl(TTL).tag("users"))
        .route("/demo.Users/UpdateUser", Rule::post().evicts(["users"]))
        .build()
}

/// The client: calls that show what the cache does, each with its `x-cache` and time.
async fn call(server: &str) -> anyhow::Result<()> {
    let mut client = UsersClient::connect(server)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;

    for _ in 0..2 {
        get_user(&mut client, 1).await?;
    }
    let started = Instant::now();
    let update = User { id: 1, name: "Ada King".into(), email: "ada@example.com".into() };
    let response = client.update_user(update).await?;
    println!(
        "UpdateUser(1)  x-cache={:<6} {:>9.3?}",
        x_cache(response.metadata()),
        started.elapsed()
    );
    get_user(&mut client, 1).await?;
    get_user(&mut client, 1).await?;

    let started = Instant::now();
    match client.get_user(GetUserRequest { id: 42 }).await {
        Ok(response) => anyhow::bail!("user 42 exists: {:?}", response.into_inner()),
        Err(status) => {
            println!(
                "GetUser(42)    {:?} {:?} {:>9.3?}",
                status.code(),
                status.message(),
                started.elapsed()
            );
        }
    }

    let started = Instant::now();
    let response = client.list_users(ListUsersRequest {}).await?;
    println!("ListUsers      x-cache={:<6}", x_cache(response.metadata()));
    let mut stream = response.into_inner();
    while let Some(user) = stream.message().await? {
        println!("  {} {} <{}>", user.id, user.name, user.email);
    }
    println!("               {:>9.3?}", started.elapsed());
    Ok(())
}

/// Calls `GetUser(id)` and prints what came back, and how.
async fn get_user(client: &mut UsersClient, id: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let response = client.get_user(GetUserRequest { id }).await?;
    let elapsed = started.elapsed();
    let cache = x_cache(response.metadata()).to_owned();
    let user = response.into_inner();
    println!(
        "GetUser({id})     x-cache={cache:<6} {elapsed:>9.3?}  {} <{}>",
        user.name, user.email
    );
    Ok(())
}

fn x_cache(metadata: &tonic::metadata::MetadataMap) -> &str {
    metadata.get("x-cache").and_then(|value| value.to_str().ok()).unwrap_or("-")
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

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), so that `call`'s stdout is only
/// the calls.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// An environment variable, with unset and empty both meaning "not set".
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
