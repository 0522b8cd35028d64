//! Caching unary gRPC calls (tonic, or any gRPC server built on tower).
//!
//! Every gRPC call is a `POST` whose body is the request message, so the cache must read the
//! message before it can tell two calls apart. [`CacheLayer::grpc`](crate::CacheLayer::grpc)
//! makes the layer that does: in front of the usual [`CacheService`](crate::CacheService), a
//! [`GrpcCacheService`] reads the request stream of each call to a method with a
//! [`Rule::grpc`](crate::Rule::grpc) (up to
//! [`max_body_bytes`](crate::CacheLayerBuilder::max_body_bytes)), keys the call on a digest of
//! its message, and hands the server the same stream, replayed.
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
//!
//! # fn main() -> Result<(), tower_redis_cache::BuildError> {
//! let cache = CacheLayer::builder(MemoryStore::default())
//!     .route("/demo.Users/GetUser", Rule::grpc().ttl(Duration::from_secs(30)).tag("users"))
//!     .route("/demo.Users/UpdateUser", Rule::post().evicts(["users"]))
//!     .build()?;
//! let layer = cache.grpc();
//! // tonic::transport::Server::builder().layer(layer).add_service(UsersServer::new(..))
//! # drop(layer);
//! # Ok(()) }
//! ```
//!
//! What is stored, and what is not:
//!
//! - A response is stored only when it is one message followed by `grpc-status: 0`, in its
//!   trailers (or in its headers, for a trailers-only response). gRPC errors are HTTP `200`s
//!   carrying another `grpc-status`: they are never stored. The trailers are stored with the
//!   entry and replayed on every hit, since a gRPC client needs them.
//! - The key also holds the call's `content-type` and `grpc-accept-encoding`, and, for a
//!   [per-user](crate::Rule::per_user) rule, its user (from the `authorization` metadata by
//!   default); calls with credentials to other rules bypass, as over HTTP.
//! - A call whose request stream holds more than one message, or more than `max_body_bytes`,
//!   passes through untouched, as do all calls to methods without a gRPC rule.
//! - A write declared with [`Rule::post`](crate::Rule::post) evicts its tags when its HTTP
//!   status is `2xx`, which a gRPC error's is too: an error may evict for nothing, but a write
//!   that succeeded is never missed.

// The gRPC front of the layer: `layer.rs` reads a call's message and hands the request to the
// cache service (it imports `service`); `message.rs` and `body.rs` are pure framing and status
// checks, which `service` and `entry` import through this file (so this file imports nothing).
mod body;
mod layer;
mod message;

pub use self::body::RequestBody;
pub use self::layer::{GrpcCacheLayer, GrpcCacheService, ResponseFuture};
pub(crate) use self::message::{completed_ok, status_ok_so_far, MessageDigest};
