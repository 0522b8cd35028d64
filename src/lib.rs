//! A [Tower] layer that answers slow, read-heavy HTTP endpoints from Redis (or an in-process
//! store), per route, per user, and evicts by tag after writes.
//!
//! It replaces the cache-aside code people write around handlers:
//!
//! ```text
//! GET  /users      cached = redis.get("users") ?: db.query(...) then redis.set("users", json, EX 60)
//! POST /users      db.insert(...) then redis.del("users")
//! ```
//!
//! with rules declared once. With axum (feature `axum`), each route is declared once, with its
//! rules, by a `CacheRouter`:
//!
//! ```
//! # tokio_test::block_on(async {
//! use std::time::Duration;
//! use axum::{body::Body, http::Request, routing::get};
//! use tower::ServiceExt; // `oneshot`
//! use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
//!
//! async fn list_users() -> &'static str { "[]" }
//! async fn create_user() -> &'static str { "{}" }
//! async fn me() -> &'static str { "{}" }
//!
//! // `RedisStore::from_url("redis://127.0.0.1:6379").await?` in production.
//! let (app, cache) = CacheLayer::builder(MemoryStore::default())
//!     .router()
//!     .route("/users", get(list_users).post(create_user), [
//!         Rule::get().ttl(Duration::from_secs(60)).tag("users"),
//!         Rule::post().evicts(["users"]),
//!     ])
//!     .route("/me", get(me), [Rule::get().per_user()])
//!     .build()
//!     .unwrap();
//!
//! let users = || Request::get("/users").body(Body::empty()).unwrap();
//! let first = app.clone().oneshot(users()).await.unwrap();
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! # while cache.stats().stores == 0 { tokio::task::yield_now().await }
//! let second = app.clone().oneshot(users()).await.unwrap();
//! assert_eq!(second.headers()["x-cache"], "HIT");
//!
//! // A successful POST evicts the `users` tag: the next GET is a miss.
//! app.clone().oneshot(Request::post("/users").body(Body::empty()).unwrap()).await.unwrap();
//! let third = app.oneshot(users()).await.unwrap();
//! assert_eq!(third.headers()["x-cache"], "MISS");
//! # });
//! ```
//!
//! Any other Tower service takes the same rules as a table, and the layer:
//!
//! ```
//! # tokio_test::block_on(async {
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt};
//! use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
//!
//! let cache = CacheLayer::builder(MemoryStore::default())
//!     .route("/users", Rule::get().ttl(Duration::from_secs(60)).tag("users"))
//!     .route("/users", Rule::post().evicts(["users"]))
//!     .route("/me", Rule::get().per_user())
//!     .bypass("/auth/{*rest}")
//!     .build()
//!     .unwrap();
//! let service = cache.layer(tower::service_fn(|_request: Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("[]")))
//! }));
//!
//! let users = || Request::get("/users").body(String::new()).unwrap();
//! let first = service.clone().oneshot(users()).await.unwrap();
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! # while cache.handle().stats().stores == 0 { tokio::task::yield_now().await }
//! let second = service.clone().oneshot(users()).await.unwrap();
//! assert_eq!(second.headers()["x-cache"], "HIT");
//!
//! // Credentials on a route that is neither per-user nor shared: straight to the service.
//! let private = Request::get("/users").header("authorization", "Bearer x");
//! let third = service.oneshot(private.body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(third.headers()["x-cache"], "BYPASS");
//! # });
//! ```
//!
//! # What happens to a request
//!
//! 1. **Decide.** The request's method and path pick a [`Rule`]. No rule, a
//!    [bypass](CacheLayerBuilder::bypass) pattern, a request with `Authorization` or `Cookie` to
//!    a route that is neither [per-user](Rule::per_user) nor [shared](Rule::shared), or a
//!    per-user route whose user is unknown: the request goes to the inner service untouched
//!    (`X-Cache: BYPASS`).
//! 2. **Look up** (`GET`, and `HEAD` from the `GET` entry). One store round trip reads the entry
//!    and the current versions of its tags. A fresh entry whose tag versions still match is
//!    served (`X-Cache: HIT`, with `Age`), or answered `304 Not Modified` when the request's
//!    `If-None-Match` matches its `ETag` (computed from the body when the inner service sent
//!    none) or its `If-Modified-Since` is not older than its `Last-Modified`.
//! 3. **Miss.** The inner service is called and its response streams to the client as it comes,
//!    while a copy of at most [`max_body_bytes`](CacheLayerBuilder::max_body_bytes) is taken.
//!    If the body ends normally and the response may be stored (see below), the entry is
//!    written in the background (`X-Cache: MISS`). A body being stored is read by a task of its
//!    own at the inner service's pace, so the entry is written, and the requests waiting for it
//!    served, when the inner body ends, however slowly the client reads, or if it disconnects.
//!    Past `max_body_bytes` that task stops reading ahead and the client reads the rest itself.
//! 4. **Writes.** A `POST`, `PUT`, `PATCH` or `DELETE` covered by a mutation rule that succeeds
//!    (2xx) evicts the rule's tags before the response goes back to the client. Any unsafe
//!    request with a non-error response also invalidates the entries of its target path and of
//!    the same-host paths in its `Location` and `Content-Location` headers (RFC 9111 section
//!    4.4), mutation rule or not.
//!
//! # Default safety rules
//!
//! | Rule | Why |
//! |---|---|
//! | Only `GET` and `HEAD` are looked up | other methods change things or depend on their body |
//! | Freshness comes from the response (`s-maxage`, `max-age`, `Expires`, less `Age`), else the rule's `ttl` | the origin knows how long its data stays good |
//! | Only `200` is stored (configurable; a reverse proxy uses [`Rule::http_cache`], RFC 9111's shared-cache rules) | errors and redirects are rarely meant to be shared |
//! | `Expires`, `Date` and `Last-Modified` are read in all three HTTP-date forms and any letter case; an invalid `Expires` is expired, an `Age` that is not digits is stale | a date the cache cannot read never becomes "fresh for the rule's TTL" |
//! | `Set-Cookie`, `Cache-Control: no-store`, `no-cache="field"` and `Vary: *` are never stored; `no-cache` only with a validator, revalidated before every use | they are meant for one client, or for no cache |
//! | `Cache-Control: private`, with a field list or without, only into per-user entries | it is for one user |
//! | A `Cache-Control` that does not follow RFC 9111's grammar (`private;`, `"private"`), or whose `max-age` is not a number or is given twice, is never stored | a lenient reading could miss a `private` or a `no-store` in it |
//! | A response's `Vary` headers become part of its key, their values merged only where RFC 9110 makes them equal | it is only served to requests it was made for |
//! | Whatever else the inner service can see is keyed too: the target's authority and any `Host` line that says otherwise, the headers `Connection` names; a `GET` or `HEAD` with a body bypasses | a request never fills the entry of another that its handler would answer differently |
//! | A method-override header (`X-HTTP-Method-Override: DELETE`) invalidates only when the application says it honours it ([`method_override_headers`](CacheLayerBuilder::method_override_headers)) | otherwise any anonymous `GET` could evict entries |
//! | Credentialed requests to routes neither per-user nor shared bypass | their response may be that user's |
//! | Bypass patterns win over every other rule | `/auth/{*rest}` stays out of the cache whatever else matches |
//! | Bodies over `max_body_bytes`, and bodies that fail or are cut short, are not stored (a client that disconnects does not cut the body short: it is read to its end and stored) | nothing partial is ever served |
//!
//! # Guarantees
//!
//! - **No cross-user leaks.** Per-user entries are keyed by a digest of the user; credentialed
//!   requests never read or fill shared entries unless the route says [`Rule::shared`], or,
//!   under [`Rule::http_cache`], the response says it is for anyone (RFC 9111 section 3.5).
//! - **No stale read after a write.** Each tag has a version in the store. An entry records its
//!   tags' versions as read *before* the inner service computed it, and is a hit only while they
//!   are current; an eviction gives the tag a new version. So a slow miss that computed its
//!   response from old data and stores it after the eviction is never served. If the store is
//!   down when a write succeeds, the eviction is retried in the background and this process
//!   bypasses the affected entries until it lands.
//! - **The cache never breaks the service.** Every store call runs under
//!   [`store_timeout`](CacheLayerBuilder::store_timeout); a failure or timeout serves the
//!   request from the inner service, is logged with `tracing` and counted in [`Stats`].
//! - **Hits cost one round trip** and serve the body without copying it again.
//!
//! # Stores
//!
//! `RedisStore` (through `fred`: single node, cluster, sentinel, Unix socket and TLS URLs, a
//! pool that reconnects by itself) and [`MemoryStore`] (bounded by bytes, through `moka`)
//! implement [`Store`]; so can your own.
//!
//! # Cargo features
//!
//! - `redis` (default): `RedisStore` and `TieredStore`, through `fred`. Without it the crate
//!   builds no Redis client.
//! - `tls-rustls-ring` (default) and `tls-rustls-aws-lc-rs`: `rediss://` with rustls. The
//!   process's default crypto provider is used when one is installed, otherwise the one the
//!   feature names.
//! - `zstd` (default): entries stored compressed
//!   ([`compress_above`](CacheLayerBuilder::compress_above)).
//! - `axum`: `CacheRouter`, and [`CacheHandle`] as an extractor.
//! - `test-util`: [`store::conformance`], the suite a `Store` of your own must pass.
//!
//! # gRPC
//!
//! Unary gRPC methods are cached with [`Rule::grpc`], keyed on their request message, behind
//! [`CacheLayer::grpc`] in front of a tonic server: see [`grpc`].
//!
//! [Tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unreachable_pub, missing_docs)]

mod background;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod bench_internals;
pub mod clock;
mod entry;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
mod handle;
mod inspect;
mod layer;
mod outcome;
mod protocol;
#[cfg(feature = "axum")]
mod router;
mod rules;
mod service;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod test_util;

// The README's Rust blocks, compiled (and, where they need no server, run) as doctests.
#[cfg(all(doctest, feature = "redis", feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub mod user;

pub use self::error::BuildError;
pub use self::grpc::GrpcCacheLayer;
pub use self::handle::CacheHandle;
pub use self::inspect::StoredEntry;
pub use self::layer::{CacheLayer, CacheLayerBuilder};
pub use self::outcome::CacheOutcome;
#[cfg(feature = "axum")]
pub use self::router::CacheRouter;
pub use self::rules::{escape_tag_param, Rule};
pub use self::service::body::CacheBody;
pub use self::service::future::ResponseFuture;
pub use self::service::CacheService;
#[doc(inline)]
pub use self::store::{MemoryStore, Store, StoreError};
#[cfg(feature = "redis")]
#[doc(inline)]
pub use self::store::{RedisStore, RedisStoreBuilder, TieredStore, TieredStoreBuilder};
pub use self::telemetry::Stats;
#[doc(inline)]
pub use self::user::{
    user_fn, IdentifyUser, UserFromCookie, UserFromExtension, UserFromHeader, UserId,
};
