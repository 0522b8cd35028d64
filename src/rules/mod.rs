//! Per-route rules: what is cached, for whom, for how long, and what a write evicts.
//!
//! A [`Rule`] covers some methods of one route pattern. Read rules ([`Rule::get`]) make `GET`
//! (and `HEAD`, answered from the `GET` entry) cacheable, and [`Rule::grpc`] rules make a unary
//! gRPC method cacheable; mutation rules ([`Rule::mutations`], [`Rule::post`], ...) name the
//! tags a successful write evicts. Patterns use axum 0.8's syntax
//! (`/users/{id}`, `/files/{*rest}`), and tags may name the pattern's parameters (`user:{id}`).
//!
//! Everything is checked when the layer is built, and a mistake is a
//! [`BuildError`](crate::BuildError) that names the route.
//!
//! Rules are compiled once into a [`RouteTable`] that the request path reads. May import:
//! `user` (how per-user routes identify users) and `error`; nothing of the request path.

mod table;
mod template;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

pub(crate) use self::table::{
    HttpCache, Matched, ReadRule, RouteTable, RuleDefaults, Scope, NEVER_STORED,
};
pub use self::template::escape_tag_param;
use crate::user::IdentifyUser;

/// The cache rule for some methods of one route. Register it with
/// [`CacheLayerBuilder::route`](crate::CacheLayerBuilder::route).
///
/// ```
/// use std::time::Duration;
/// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
///
/// let layer = CacheLayer::builder(MemoryStore::default())
///     // Shared by everyone, for a minute, tagged so that writes can evict it.
///     .route("/users", Rule::get().ttl(Duration::from_secs(60)).tag("users"))
///     .route("/users", Rule::post().evicts(["users"]))
///     .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]))
///     .route("/users/{id}", Rule::methods([http::Method::PUT, http::Method::DELETE])
///         .evicts(["users", "user:{id}"]))
///     // One entry per user, keyed by a digest of the `Authorization` header.
///     .route("/me", Rule::get().per_user())
///     .build()?;
/// # Ok::<(), tower_redis_cache::BuildError>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct Rule {
    pub(crate) methods: Vec<Method>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) upstream_cache_control: bool,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) tags: Vec<String>,
    pub(crate) evicts: Vec<String>,
    pub(crate) scope: ScopeSetting,
    pub(crate) share_anonymous: bool,
    pub(crate) vary: Vec<String>,
    pub(crate) bypass_headers: Vec<String>,
    pub(crate) query_params: Option<Vec<String>>,
    pub(crate) statuses: Option<Vec<StatusCode>>,
    /// [`Rule::http_cache`]: RFC 9111's rules for a shared cache instead of the app defaults.
    pub(crate) http_cache: bool,
    pub(crate) heuristic_percent: Option<u8>,
    pub(crate) max_heuristic_ttl: Option<Duration>,
    /// A unary gRPC method's rule: its `POST`s are reads, keyed on their message.
    pub(crate) grpc: bool,
}

/// Whose entry a cacheable response goes into, as the rule asked.
#[derive(Clone, Default)]
pub(crate) enum ScopeSetting {
    /// Not said: anonymous requests share entries; credentialed ones bypass the cache.
    #[default]
    Default,
    /// Explicitly public: credentialed requests share entries too.
    Shared,
    /// One entry per user, identified by the layer's identity or by the rule's own.
    PerUser(Option<Arc<dyn IdentifyUser>>),
    /// Said both `shared()` and `per_user()`: rejected at build time.
    Contradictory,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("methods", &self.methods)
            .field("ttl", &self.ttl)
            .field("tags", &self.tags)
            .field("evicts", &self.evicts)
            .field("vary", &self.vary)
            .field("statuses", &self.statuses)
            .field("http_cache", &self.http_cache)
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl Rule {
    /// Caches `GET` responses of the route (and answers `HEAD` from them).
    pub fn get() -> Self {
        Self::methods([Method::GET])
    }

    /// Evicts tags after successful `POST`, `PUT`, `PATCH` and `DELETE` requests.
    pub fn mutations() -> Self {
        Self::methods([Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
    }

    /// Evicts tags after successful `POST` requests.
    pub fn post() -> Self {
        Self::methods([Method::POST])
    }

    /// Evicts tags after successful `PUT` requests.
    pub fn put() -> Self {
        Self::methods([Method::PUT])
    }

    /// Evicts tags after successful `PATCH` requests.
    pub fn patch() -> Self {
        Self::methods([Method::PATCH])
    }

    /// Evicts tags after successful `DELETE` requests.
    pub fn delete() -> Self {
        Self::methods([Method::DELETE])
    }

    /// A rule for the given methods: either `GET` (a read rule) or any of `POST`, `PUT`,
    /// `PATCH`, `DELETE` and extension methods (a mutation rule). Mixing the two is a build error.
    pub fn methods(methods: impl IntoIterator<Item = Method>) -> Self {
        Self {
            methods: methods.into_iter().collect(),
            ttl: None,
            max_ttl: None,
            upstream_cache_control: true,
            stale_while_revalidate: None,
            stale_if_error: None,
            tags: Vec::new(),
            evicts: Vec::new(),
            scope: ScopeSetting::Default,
            share_anonymous: false,
            vary: Vec::new(),
            bypass_headers: Vec::new(),
            query_params: None,
            statuses: None,
            http_cache: false,
            heuristic_percent: None,
            max_heuristic_ttl: None,
            grpc: false,
        }
    }

    /// Caches `GET` responses as a shared HTTP cache does (RFC 9111), for a cache in front of a
    /// whole upstream: a reverse proxy, where the upstream's headers are the only rules.
    ///
    /// What it does differently from [`Rule::get`]:
    ///
    /// - **Any final status may be stored** when the response gives it explicit freshness
    ///   (`s-maxage`, `max-age` or `Expires`; RFC 9111 section 3): a `404` or a `503` with
    ///   `max-age=10` is served from the cache for 10 seconds. `206` (a part of a body), `304`,
    ///   `412` and `416` (answers to the request's own conditions or ranges) never are.
    /// - **Heuristic freshness** (section 4.2.2) for a response without explicit freshness
    ///   whose status is heuristically cacheable (RFC 9110 section 15.1: `200`, `203`, `204`,
    ///   `300`, `301`, `308`, `404`, `405`, `410`, `414`, `501`) or that says `public`:
    ///   [`heuristic_percent`](Self::heuristic_percent) of the time since its `Last-Modified`
    ///   (default 10%), at most [`max_heuristic_ttl`](Self::max_heuristic_ttl) (default a day).
    ///   Without `Last-Modified` it is the rule's [`ttl`](Self::ttl) when one is set; without
    ///   one, such a response is not stored. The layer's `default_ttl` does not apply.
    /// - **`must-understand`** (section 5.2.2.3): such a response is stored, `no-store`
    ///   notwithstanding, when its status is one whose caching RFC 9110 defines and this cache
    ///   implements (all but the four above); with any other status it is never stored.
    ///
    /// - **Targeted fields** (RFC 9213): a valid `CDN-Cache-Control`, or the field named for
    ///   this cache with [`targeted_cache_control`](crate::CacheLayerBuilder::targeted_cache_control),
    ///   stands in for `Cache-Control` and `Expires`.
    ///
    /// - **Requests with credentials** (`Authorization`, `Cookie`) on a route that is neither
    ///   [`per_user`](Self::per_user) nor [`shared`](Self::shared) are looked up instead of
    ///   bypassing the cache, but meet only entries whose response says `public`, `s-maxage`
    ///   or `must-revalidate`, and fill them only with such a response, which then serves
    ///   every requester (RFC 9111 section 3.5).
    ///
    /// Everything else is as for [`Rule::get`]: who shares entries ([`per_user`](Self::per_user),
    /// [`shared`](Self::shared)), `private`, `no-store`, `no-cache`, `Vary`, `Set-Cookie`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
    ///
    /// let proxy_cache = CacheLayer::builder(MemoryStore::default())
    ///     .route("/{*path}", Rule::http_cache().max_heuristic_ttl(Duration::from_secs(3600)))
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::BuildError>(())
    /// ```
    pub fn http_cache() -> Self {
        Self { http_cache: true, ..Self::get() }
    }

    /// With [`http_cache`](Self::http_cache): the share of the time since a response's
    /// `Last-Modified` that it is heuristically fresh for (default 10, at most 100).
    pub fn heuristic_percent(mut self, percent: u8) -> Self {
        self.heuristic_percent = Some(percent);
        self
    }

    /// With [`http_cache`](Self::http_cache): the longest heuristic freshness (default a day).
    pub fn max_heuristic_ttl(mut self, max: Duration) -> Self {
        self.max_heuristic_ttl = Some(max);
        self
    }

    /// Caches the responses of a unary gRPC method, on its `/package.Service/Method` path.
    ///
    /// Every gRPC call is a `POST`; under this rule it is a read, keyed on a digest of its
    /// request message (besides the path, the user where the rule is [per-user](Self::per_user),
    /// and the `content-type` and `grpc-accept-encoding` metadata, which change what the
    /// response looks like). Only responses whose `grpc-status` is `0` are stored, with their
    /// trailers; errors, and responses of more than one message, never are.
    ///
    /// Reading the message takes [`CacheLayer::grpc`](crate::CacheLayer::grpc) in front of the
    /// server instead of the plain layer, which has no way to read it: under the plain layer
    /// these calls bypass the cache. A method that evicts is a [`post`](Self::post) rule, as
    /// over HTTP.
    ///
    /// Streaming methods must not have this rule. A call whose request stream holds more than
    /// one message passes through, and so does one whose stream stays open after its first
    /// message (a bidirectional call waiting for an answer), once that has lasted a second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
    ///
    /// let cache = CacheLayer::builder(MemoryStore::default())
    ///     .route("/demo.Users/GetUser", Rule::grpc().ttl(Duration::from_secs(30)).tag("users"))
    ///     .route("/demo.Users/UpdateUser", Rule::post().evicts(["users"]))
    ///     .build()?;
    /// // tonic::transport::Server::builder().layer(cache.grpc()).add_service(..)
    /// # let _ = cache.grpc();
    /// # Ok::<(), tower_redis_cache::BuildError>(())
    /// ```
    pub fn grpc() -> Self {
        Self { grpc: true, ..Self::methods([Method::POST]) }
    }

    /// How long entries of this route stay fresh when the response does not say (default: the
    /// layer's [`default_ttl`](crate::CacheLayerBuilder::default_ttl); for
    /// [`http_cache`](Self::http_cache) rules, see there).
    ///
    /// A response's own `Cache-Control: s-maxage` or `max-age`, or its `Expires`, take
    /// precedence (RFC 9111 section 4.2.1), within [`max_ttl`](Self::max_ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The longest this route's entries stay fresh, whatever the response asks for.
    pub fn max_ttl(mut self, max: Duration) -> Self {
        self.max_ttl = Some(max);
        self
    }

    /// How long past its freshness an entry may still be served, at once, while one request
    /// refreshes it in the background (RFC 5861; default none). The response's own
    /// `stale-while-revalidate` directive takes precedence; `must-revalidate` turns it off.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// How long past its freshness an entry may still be served when the inner service fails
    /// (an error, a `5xx`, or no answer within the layer's
    /// [`stale_if_error_timeout`](crate::CacheLayerBuilder::stale_if_error_timeout)) (RFC 5861;
    /// default none). The response's own `stale-if-error` directive takes precedence.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Ignores the response's `Cache-Control` and `Expires` altogether: entries live for the
    /// rule's [`ttl`](Self::ttl), and `no-store`, `no-cache` and `private` are not honoured.
    ///
    /// For upstreams that send `Cache-Control: private, no-cache` on everything by habit. Only
    /// use it when you know what the route returns: `Set-Cookie` responses are still never
    /// stored, and a per-user route still keeps one entry per user.
    pub fn ignore_upstream_cache_control(mut self) -> Self {
        self.upstream_cache_control = false;
        self
    }

    /// Adds a tag to this route's entries. `{name}` placeholders are filled from the path
    /// parameters (`user:{id}`), escaped so that a parameter cannot forge another tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds several tags to this route's entries, as [`tag`](Self::tag) does.
    pub fn tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The tags a successful (2xx) request of this mutation rule evicts; templates as for
    /// [`tag`](Self::tag).
    pub fn evicts<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.evicts.extend(tags.into_iter().map(Into::into));
        self
    }

    /// One entry per user: the key includes the user, as found by the layer's
    /// [`identify_users`](crate::CacheLayerBuilder::identify_users) setting (by default a
    /// digest of the `Authorization` header). Requests with no identifiable user bypass the cache.
    pub fn per_user(mut self) -> Self {
        self.scope = self.scope.with(ScopeSetting::PerUser(None));
        self
    }

    /// One entry per user, identified by `identify` rather than the layer's setting.
    pub fn per_user_by(mut self, identify: impl IdentifyUser) -> Self {
        self.scope = self.scope.with(ScopeSetting::PerUser(Some(Arc::new(identify))));
        self
    }

    /// With [`per_user`](Self::per_user): requests with neither `Authorization` nor `Cookie`
    /// share one set of entries instead of bypassing the cache. Credentialed requests still get
    /// entries of their own (or bypass, when their user cannot be identified), and
    /// `Cache-Control: private` responses are stored only for identified users.
    ///
    /// This is the usual shape for pages that logged-in users see personalised:
    ///
    /// ```
    /// use tower_redis_cache::Rule;
    /// let rule = Rule::get().per_user().share_anonymous();
    /// ```
    pub fn share_anonymous(mut self) -> Self {
        self.share_anonymous = true;
        self
    }

    /// Declares the route's responses public: requests carrying `Authorization` or `Cookie` are
    /// answered from, and stored into, the same entries as anonymous ones.
    ///
    /// Without this (or [`per_user`](Self::per_user)) such requests bypass the cache, because
    /// their responses may depend on who is asking.
    pub fn shared(mut self) -> Self {
        self.scope = self.scope.with(ScopeSetting::Shared);
        self
    }

    /// Request headers whose values are part of the key from the first request on (e.g.
    /// `accept-language`). Headers a response names in its own `Vary` are added to its key
    /// anyway, once the layer has seen the response; naming them here saves that lesson.
    pub fn vary<T: Into<String>>(mut self, headers: impl IntoIterator<Item = T>) -> Self {
        self.vary.extend(headers.into_iter().map(Into::into));
        self
    }

    /// Request headers whose presence keeps the cache out of this route's requests, in addition
    /// to the layer's [`bypass_headers`](crate::CacheLayerBuilder::bypass_headers): for headers
    /// the handler reads but that should not multiply entries (`x-debug`, say). To share
    /// entries between requests that differ in such a header, key on it with
    /// [`vary`](Self::vary) instead.
    pub fn bypass_header(mut self, name: impl Into<String>) -> Self {
        self.bypass_headers.push(name.into());
        self
    }

    /// Only these query parameters are part of the key; the others (tracking parameters such
    /// as `utm_source`, or random ones a cache-busting flood adds) are left out of it, so that
    /// they neither split nor multiply entries (default: every parameter counts).
    ///
    /// The handler must ignore the others too: a request is answered with the entry of the
    /// same request without them.
    pub fn key_query_params<T: Into<String>>(mut self, names: impl IntoIterator<Item = T>) -> Self {
        self.query_params.get_or_insert_with(Vec::new).extend(names.into_iter().map(Into::into));
        self
    }

    /// The response statuses that may be stored (default: the layer's
    /// [`cache_statuses`](crate::CacheLayerBuilder::cache_statuses), itself `200` by default;
    /// for [`http_cache`](Self::http_cache) rules, any final status it may store).
    pub fn cache_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = Some(statuses.into_iter().collect());
        self
    }
}

impl ScopeSetting {
    fn with(self, next: ScopeSetting) -> ScopeSetting {
        match (&self, &next) {
            (ScopeSetting::Default, _) => next,
            (ScopeSetting::Shared, ScopeSetting::Shared) => self,
            (ScopeSetting::PerUser(_), ScopeSetting::PerUser(_)) => next,
            _ => ScopeSetting::Contradictory,
        }
    }
}
