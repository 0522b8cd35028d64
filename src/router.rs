//! [`CacheRouter`]: axum routes declared together with their cache rules, so that each route
//! pattern is written once (feature `axum`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::MethodRouter;
use axum::Router;

use crate::error::BuildError;
use crate::handle::CacheHandle;
use crate::layer::CacheLayerBuilder;
use crate::rules::Rule;

/// An axum [`Router`] whose routes are declared with their cache rules: each pattern is
/// written once, for the router and for the cache, so renaming a route cannot leave its rules
/// behind. Made by [`CacheLayerBuilder::router`]; [`build`](Self::build) checks the rules,
/// as [`CacheLayerBuilder::build`] does, and gives the router with the layer on it.
///
/// ```
/// use axum::routing::{get, post};
/// use http::Method;
/// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
///
/// async fn list() -> &'static str { "[]" }
/// async fn create() -> &'static str { "created" }
/// async fn show() -> &'static str { "{}" }
/// async fn update() -> &'static str { "updated" }
///
/// let (app, cache) = CacheLayer::builder(MemoryStore::default())
///     .router()
///     .route("/users", get(list).post(create), [
///         Rule::get().tag("users"),
///         Rule::post().evicts(["users"]),
///     ])
///     .route("/users/{id}", get(show).put(update), [
///         Rule::get().tags(["users", "user:{id}"]),
///         Rule::methods([Method::PUT]).evicts(["users", "user:{id}"]),
///     ])
///     .uncached("/health", get(|| async { "ok" }))
///     .build()?;
/// // `app` is an `axum::Router`: nest it, merge it, serve it. `cache` evicts from outside.
/// let app: axum::Router = axum::Router::new().nest("/api", app);
/// # let _ = cache;
/// # Ok::<(), tower_redis_cache::BuildError>(())
/// ```
///
/// Under [`Router::nest`] the rules are the nested router's own patterns (`/users/{id}`), but
/// entries are keyed, and invalidated by `Location`, by the full path the client used
/// (`/api/users/7`, from axum's `OriginalUri`): two mounts of one router keep apart, and a
/// `Location: /api/users/7` reaches the entry.
#[must_use]
pub struct CacheRouter<S = ()> {
    router: Router<S>,
    builder: CacheLayerBuilder,
}

impl CacheLayerBuilder {
    /// Declares axum routes with their rules (see [`CacheRouter`]), instead of the rules alone
    /// with [`route`](Self::route).
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> CacheRouter<S> {
        CacheRouter { router: Router::new(), builder: self }
    }
}

impl<S: Clone + Send + Sync + 'static> CacheRouter<S> {
    /// Routes `path` to `method_router`, under `rules`: read rules for its `GET`s, mutation
    /// rules for the writes that evict.
    pub fn route(
        mut self,
        path: &str,
        method_router: MethodRouter<S>,
        rules: impl IntoIterator<Item = Rule>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        for rule in rules {
            self.builder = self.builder.route(path, rule);
        }
        self
    }

    /// Routes `path` to `method_router`, and keeps the cache out of it whatever else matches
    /// (as [`CacheLayerBuilder::bypass`] does): login, sessions, anything with side effects
    /// on a `GET`.
    pub fn bypass(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router);
        self.builder = self.builder.bypass(path);
        self
    }

    /// Routes `path` to `method_router` with no cache rule: its requests pass through (and
    /// its unsafe ones still invalidate by URI, as every unsafe request does).
    pub fn uncached(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router);
        self
    }

    /// Checks the rules (a mistake is a [`BuildError`] naming the route) and gives the router
    /// with the cache layer on it, and the cache's handle.
    pub fn build(self) -> Result<(Router<S>, CacheHandle), BuildError> {
        let layer = self.builder.build()?;
        let handle = layer.handle();
        Ok((self.router.layer(layer), handle))
    }
}

impl<S> std::fmt::Debug for CacheRouter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRouter").field("builder", &self.builder).finish_non_exhaustive()
    }
}

/// A handler takes the cache's handle as an argument, to evict from inside it: the layer hands
/// it to every request that reaches the handler. Without the layer in front, the request is
/// answered `500`.
///
/// For handlers behind no cache layer (an admin router), put the handle in the application
/// state and take it with `State<CacheHandle>`, through `impl FromRef<AppState> for
/// CacheHandle` (or `#[derive(FromRef)]`).
///
/// ```
/// use axum::routing::post;
/// use tower_redis_cache::{CacheHandle, CacheLayer, MemoryStore, Rule};
///
/// async fn import(cache: CacheHandle) -> &'static str {
///     // ... a bulk import that changed every user:
///     let _ = cache.evict_tags(["users"]).await;
///     "imported"
/// }
///
/// let (app, _cache) = CacheLayer::builder(MemoryStore::default())
///     .router::<()>()
///     .uncached("/import", post(import))
///     .build()?;
/// # let _ = app;
/// # Ok::<(), tower_redis_cache::BuildError>(())
/// ```
impl<S: Send + Sync> FromRequestParts<S> for CacheHandle {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let handle = parts.extensions.get::<CacheHandle>().cloned();
        handle.ok_or((StatusCode::INTERNAL_SERVER_ERROR, "no cache layer in front of this handler"))
    }
}
