//! [`CacheLayer`] and its builder.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tower_layer::Layer;

use crate::clock::{Clock, SystemClock};
use crate::error::BuildError;
use crate::grpc::GrpcCacheLayer;
use crate::handle::CacheHandle;
use crate::protocol::cache_status::StatusHeaders;
use crate::protocol::guard;
use crate::rules::{RouteTable, Rule, RuleDefaults};
use crate::service::shared::{Settings, Shared};
use crate::service::CacheService;
use crate::store::breaker::BreakerSettings;
use crate::store::Store;
use crate::user::{IdentifyUser, UserFromHeader};

/// Applies [`CacheService`] to a service: caches responses by route rule, in a [`Store`].
///
/// Build it with [`CacheLayer::builder`]. Clones share everything (store, rules, counters).
#[derive(Clone)]
pub struct CacheLayer {
    shared: Arc<Shared>,
}

impl CacheLayer {
    /// Starts configuring a layer that keeps its entries in `store`.
    pub fn builder(store: impl Store) -> CacheLayerBuilder {
        CacheLayerBuilder {
            store: Arc::new(store),
            routes: Vec::new(),
            bypass: Vec::new(),
            defaults: RuleDefaults {
                ttl: Duration::from_secs(60),
                statuses: vec![StatusCode::OK],
                identify: Arc::new(UserFromHeader::authorization()),
                key_headers: guard::KEYED.map(HeaderName::from_static).to_vec(),
                bypass_headers: guard::BYPASSED.map(HeaderName::from_static).to_vec(),
                cache_control_targets: Arc::new([HeaderName::from_static("cdn-cache-control")]),
            },
            strip_targeted_cache_control: false,
            settings: Settings {
                key_prefix: "trc".to_owned(),
                store_timeout: Duration::from_millis(100),
                eviction_hold: Duration::from_secs(1),
                breaker: Some(BreakerSettings { failures: 5, open_for: Duration::from_secs(2) }),
                max_body_bytes: 1024 * 1024,
                max_capture_bytes: 64 * 1024 * 1024,
                ttl_jitter: 0,
                invalidate_unsafe: true,
                method_override_headers: Vec::new(),
                credential_cookies: None,
                outcome_extension: false,
                miss_lock_timeout: Some(Duration::from_secs(5)),
                release_miss_lock_on_head: false,
                honor_request_no_cache: false,
                stale_if_error_timeout: None,
                refresh_ahead: Some(1.0),
                compress_above: cfg!(feature = "zstd").then_some(1024),
                decoded_cache_bytes: 16 * 1024 * 1024,
                surrogate_keys: false,
                clock: Arc::new(SystemClock),
                status: StatusHeaders {
                    x_cache: Some(HeaderName::from_static("x-cache")),
                    cache_status: Some("tower-redis-cache".to_owned()),
                    cache_status_key: false,
                    strip_groups: false,
                    strip_targeted: Vec::new(),
                },
            },
        }
    }

    /// A handle for code outside the request path: evicting tags from a background job, reading
    /// the counters.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(Arc::clone(&self.shared))
    }

    /// The layer for gRPC servers: the same cache, which also reads the request message of
    /// calls to methods with a [`Rule::grpc`](crate::Rule::grpc), so that they can be keyed on
    /// it. See [`grpc`](crate::grpc).
    ///
    /// ```
    /// # use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
    /// let cache = CacheLayer::builder(MemoryStore::default())
    ///     .route("/grpc.health.v1.Health/Check", Rule::grpc())
    ///     .build()?;
    /// # let _ = (cache.grpc(), 0);
    /// // tonic::transport::Server::builder().layer(cache.grpc()).add_service(health)
    /// # Ok::<(), tower_redis_cache::BuildError>(())
    /// ```
    pub fn grpc(&self) -> GrpcCacheLayer {
        GrpcCacheLayer::new(Arc::clone(&self.shared))
    }

    /// The state the benchmarks of the request path's steps run against.
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`CacheLayer`]. Made by [`CacheLayer::builder`]; checked by
/// [`build`](Self::build).
///
/// Setters are named after their setting: one that takes a value is `setting(value)`, and is
/// turned off, where it can be, with `without_setting()` (`refresh_ahead(beta)`,
/// `without_refresh_ahead()`); a switch is `setting(bool)` (`surrogate_keys(true)`).
#[must_use]
pub struct CacheLayerBuilder {
    store: Arc<dyn Store>,
    routes: Vec<(String, Rule)>,
    bypass: Vec<String>,
    /// What rules that do not say take.
    defaults: RuleDefaults,
    /// The layer-wide options, as the layer keeps them.
    settings: Settings,
    /// Whether responses lose their targeted cache-control fields on their way out.
    strip_targeted_cache_control: bool,
}

impl std::fmt::Debug for CacheLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayerBuilder")
            .field("routes", &self.routes)
            .field("bypass", &self.bypass)
            .field("default_ttl", &self.defaults.ttl)
            .field("key_prefix", &self.settings.key_prefix)
            .finish_non_exhaustive()
    }
}

impl CacheLayerBuilder {
    /// Adds a rule for the route `pattern` (axum 0.8 syntax: `/users/{id}`, `/files/{*rest}`).
    /// A pattern may have one read rule and several mutation rules for distinct methods.
    pub fn route(mut self, pattern: impl Into<String>, rule: Rule) -> Self {
        self.routes.push((pattern.into(), rule));
        self
    }

    /// Keeps the cache out of every request matching `pattern` (e.g. `/auth/{*rest}`), whatever
    /// other rules say: nothing is looked up, stored or evicted for them.
    pub fn bypass(mut self, pattern: impl Into<String>) -> Self {
        self.bypass.push(pattern.into());
        self
    }

    /// The time to live of entries whose rule sets none (default 60 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.defaults.ttl = ttl;
        self
    }

    /// The response statuses that may be stored when a rule does not say (default: `200`).
    pub fn cache_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.defaults.statuses = statuses.into_iter().collect();
        self
    }

    /// How [`Rule::per_user`] routes identify users (default: a digest of the `Authorization`
    /// header, [`UserFromHeader::authorization`]).
    pub fn identify_users(mut self, identify: impl IdentifyUser) -> Self {
        self.defaults.identify = Arc::new(identify);
        self
    }

    /// The namespace of every key the layer writes (default `trc`). Give layers that share a
    /// Redis but must not share entries different prefixes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.key_prefix = prefix.into();
        self
    }

    /// The longest a store operation may take before the layer gives up on it and serves the
    /// request from the inner service (default 100 ms). This bounds the latency a sick store
    /// adds to a request.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }

    /// How long a write's response waits, when its eviction failed, for the background
    /// retries to land it (default 1 s; zero answers at once).
    ///
    /// A failed eviction is retried until the store takes it, and this process bypasses the
    /// evicted entries meanwhile. Other instances do not know: if they still reach the store
    /// (this process reconnecting later than they did, after a restart), they serve those
    /// entries to clients who read after the write's response. Holding the response closes
    /// that window for outages shorter than the hold, at the cost of that much more latency on
    /// writes while the store is unreachable.
    pub fn eviction_hold(mut self, hold: Duration) -> Self {
        self.settings.eviction_hold = hold;
        self
    }

    /// The circuit breaker in front of the store: after `failures` store calls in a row time
    /// out or find the store unreachable, the layer stops calling it for `open_for`, then lets
    /// one call through to see whether it is back (default: 5 failures, 2 s). While it is open,
    /// requests are served by the inner service as when a store call fails, without paying
    /// [`store_timeout`](Self::store_timeout) each. Commands the store refuses (a full Redis
    /// refusing writes, a read-only replica) do not count.
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.settings.breaker = Some(BreakerSettings { failures, open_for });
        self
    }

    /// Calls the store for every request, however it is doing.
    pub fn without_circuit_breaker(mut self) -> Self {
        self.settings.breaker = None;
        self
    }

    /// The largest body that is stored (default 1 MiB). Larger bodies stream through untouched,
    /// and no more than this is ever held in memory for one response.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.settings.max_body_bytes = max;
        self
    }

    /// The most memory all copies of response bodies being captured may hold together (default
    /// 64 MiB), so that many large responses at once cannot exhaust memory. Responses that
    /// would go over it stream through to their clients uncaptured, and are not stored.
    pub fn max_capture_bytes(mut self, max: usize) -> Self {
        self.settings.max_capture_bytes = max;
        self
    }

    /// Shortens each entry's freshness by a random share of up to `percent` (default 0, at most
    /// 50), so that entries filled together (after a deploy, an eviction) do not all expire, and
    /// reach the inner service, together.
    pub fn ttl_jitter(mut self, percent: u8) -> Self {
        self.settings.ttl_jitter = percent;
        self
    }

    /// Stampede protection: when requests miss on a key that another request is already
    /// filling, they wait up to `timeout` (default 5 s) for its entry instead of all calling the
    /// inner service; after that they call it themselves. Within a process the wait is a
    /// shared flight; across processes sharing a store, a short store lease (`SET NX PX`) picks
    /// the one that calls, as nginx's `proxy_cache_lock` does.
    pub fn miss_lock_timeout(mut self, timeout: Duration) -> Self {
        self.settings.miss_lock_timeout = Some(timeout);
        self
    }

    /// Lets the misses waiting on a key go as soon as the leader's response head is known
    /// (default `false`: they wait until its entry is stored, or the lock times out).
    ///
    /// With a body that takes long to arrive (a slow upstream, a large download), waiting
    /// requests would otherwise wait for all of it. Let go, they call the inner service
    /// themselves, as they do after [`miss_lock_timeout`](Self::miss_lock_timeout): the inner
    /// service sees them all again, but none waits for another's body. The store lease goes
    /// with the lock, so other instances' requests call too.
    pub fn release_miss_lock_on_head(mut self, release: bool) -> Self {
        self.settings.release_miss_lock_on_head = release;
        self
    }

    /// Turns stampede protection off: every miss calls the inner service.
    pub fn without_miss_lock(mut self) -> Self {
        self.settings.miss_lock_timeout = None;
        self
    }

    /// Refreshes entries that are read often shortly before they expire, so that steady
    /// traffic on a hot key never meets a miss (default on, with `beta` 1.0).
    ///
    /// Each hit on a fresh entry may expire it early, at random, by probabilistic early
    /// expiration (XFetch, Vattani et al., VLDB 2015): the likelier the nearer its expiry and
    /// the longer the response took to make. The hit is answered from the entry, and the
    /// request is sent on to the inner service in the background, under the miss lock, to
    /// store a fresh entry. A key read once a minute is seldom refreshed early; a key read
    /// hundreds of times a second is refreshed about as long before expiry as making it takes.
    /// A larger `beta` refreshes earlier.
    pub fn refresh_ahead(mut self, beta: f64) -> Self {
        self.settings.refresh_ahead = Some(beta);
        self
    }

    /// Turns refreshing ahead off: entries expire when their time is up, and the next request
    /// misses (or is answered stale, where the rule allows).
    pub fn without_refresh_ahead(mut self) -> Self {
        self.settings.refresh_ahead = None;
        self
    }

    /// When a stale entry may answer if the inner service fails (`stale-if-error`), how long
    /// to wait for the inner service before answering with it (default: no limit, only errors
    /// and `5xx` count as failures).
    pub fn stale_if_error_timeout(mut self, timeout: Duration) -> Self {
        self.settings.stale_if_error_timeout = Some(timeout);
        self
    }

    /// Stores bodies of at least `bytes` (default 1 KiB) compressed with zstd, unless the inner
    /// service encoded them already. Clients that accept `zstd` are served the compressed
    /// bytes as they are; the others get them decompressed.
    ///
    /// Needs the `zstd` feature (on by default); without it bodies are stored as they are.
    #[cfg(feature = "zstd")]
    #[cfg_attr(docsrs, doc(cfg(feature = "zstd")))]
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.settings.compress_above = Some(bytes);
        self
    }

    /// Stores every body as the inner service sent it.
    pub fn without_compression(mut self) -> Self {
        self.settings.compress_above = None;
        self
    }

    /// How many bytes of decoded entries the layer keeps in memory (default 16 MiB; 0 keeps
    /// none).
    ///
    /// A hit decodes the stored bytes and, for a client that does not accept `zstd`,
    /// decompresses the body: more CPU than the rest of a hit from an in-process store. The
    /// layer keeps the decoded form of hot entries next to the bytes it came from, and reuses
    /// it whenever the store returns the very same bytes, so it never serves anything the store
    /// does not hold. The budget counts the stored bytes and the decompressed body.
    pub fn decoded_cache_bytes(mut self, bytes: u64) -> Self {
        self.settings.decoded_cache_bytes = bytes;
        self
    }

    /// Request headers whose values are part of every cached route's key, besides each rule's
    /// [`vary`](Rule::vary) (default: `Forwarded` and the `X-Forwarded-Host`/`-Proto`/`-Port`/
    /// `-Prefix`/`-Scheme`/`-Server`, `X-Host` and `X-Original-Host` headers).
    ///
    /// Handlers often build links from these headers. Were they not in the key, one request
    /// with `X-Forwarded-Host: evil.example` could store links to `evil.example` for everyone
    /// (web cache poisoning); keyed, it gets an entry of its own. A proxy in front sets them to
    /// the same few values on every request, so entries are still shared. Replaces the default
    /// list; `key_headers([] as [HeaderName; 0])` keys on none.
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.defaults.key_headers = names.into_iter().collect();
        self
    }

    /// Request headers whose presence keeps the cache out of a read (default:
    /// `X-Original-URL`, `X-Rewrite-URL`, `X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`), because they make some frameworks serve another URL or method
    /// than the one in the key. Rules add their own with [`Rule::bypass_header`]; a rule that
    /// keys on one of these with [`Rule::vary`] caches such requests. Replaces the default list.
    pub fn bypass_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.defaults.bypass_headers = names.into_iter().collect();
        self
    }

    /// Whether `Surrogate-Key` response headers (space-separated, as Fastly reads them) count
    /// as cache groups, like `Cache-Groups` does (default off).
    pub fn surrogate_keys(mut self, read: bool) -> Self {
        self.settings.surrogate_keys = read;
        self
    }

    /// Whether `Cache-Groups`, `Cache-Group-Invalidation` and `Surrogate-Key` are removed from
    /// responses on their way out (default off), for origins that do not want their groups
    /// seen by clients.
    pub fn strip_cache_group_headers(mut self, strip: bool) -> Self {
        self.settings.status.strip_groups = strip;
        self
    }

    /// Names this cache's own targeted cache-control field (RFC 9213), which
    /// [`Rule::http_cache`] rules read before `CDN-Cache-Control`, and which stands in for
    /// `Cache-Control` and `Expires` when a response carries a valid one. Call it again to name
    /// more than one; the first named is read first. Rules other than `http_cache` ones read
    /// `Cache-Control` only.
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
    ///
    /// // The origin says `Acme-Cache-Control: max-age=3600` to this cache, and
    /// // `Cache-Control: max-age=60` to browsers.
    /// let cache = CacheLayer::builder(MemoryStore::default())
    ///     .targeted_cache_control(HeaderName::from_static("acme-cache-control"))
    ///     .route("/{*path}", Rule::http_cache())
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::BuildError>(())
    /// ```
    pub fn targeted_cache_control(mut self, name: HeaderName) -> Self {
        // After those named before, ahead of `CDN-Cache-Control`, which stays last.
        let own = self.defaults.cache_control_targets.len().saturating_sub(1);
        let mut targets = self.defaults.cache_control_targets.to_vec();
        targets.insert(own, name);
        self.defaults.cache_control_targets = targets.into();
        self
    }

    /// Whether the targeted cache-control fields that `http_cache` rules read (this cache's own
    /// and `CDN-Cache-Control`) are removed from responses on their way out (default off: they
    /// go on, for the caches further down that read them too).
    pub fn strip_targeted_cache_control(mut self, strip: bool) -> Self {
        self.strip_targeted_cache_control = strip;
        self
    }

    /// Whether a request's own `Cache-Control: no-cache` or `max-age=0` (or `Pragma:
    /// no-cache`) makes the layer skip the stored entry, ask the inner service and store its
    /// fresh response (default off).
    ///
    /// Off by default because any client could otherwise send every request to the origin,
    /// which is what the cache is there to prevent (browsers send `max-age=0` on reload).
    /// Turn it on for internal clients you trust.
    pub fn honor_request_no_cache(mut self, honor: bool) -> Self {
        self.settings.honor_request_no_cache = honor;
        self
    }

    /// Whether a non-error response (2xx, 3xx) to an unsafe request (`POST`, `PUT`, `PATCH`,
    /// `DELETE`, ...) invalidates the entries of its target path and of the paths its `Location`
    /// and `Content-Location` headers name on the same host, as RFC 9111 section 4.4 asks of
    /// caches (default on). This works without any mutation rule, for every query of the path;
    /// declared tags still cover what a path cannot (`/users` after `PUT /users/1`).
    pub fn invalidate_on_unsafe_requests(mut self, invalidate: bool) -> Self {
        self.settings.invalidate_unsafe = invalidate;
        self
    }

    /// The method-override headers the application honours (default: none), such as
    /// `X-HTTP-Method-Override`: a `GET` or `HEAD` carrying one that names an unsafe method
    /// invalidates like that method (its mutation rule's tags on a 2xx, its URI on a non-error
    /// answer), because the application treats it as one.
    ///
    /// Off by default, because the layer cannot tell whether the application honours them and
    /// anyone can send them: were they honoured by the layer and not the application, any
    /// anonymous `GET` could evict entries. Reads carrying a method override bypass the cache
    /// either way ([`bypass_headers`](Self::bypass_headers)). Name here every override header
    /// your application (or a middleware in front of it) honours; otherwise a write made
    /// through one evicts nothing, and reads may see the old entries until they expire.
    pub fn method_override_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.settings.method_override_headers = names.into_iter().collect();
        self
    }

    /// The cookies that are credentials, such as a session cookie (default: every cookie is).
    ///
    /// A request carrying `Cookie` is treated as credentialed (it bypasses routes that are
    /// neither [`per_user`](Rule::per_user) nor [`shared`](Rule::shared), and is kept out of
    /// the anonymous entries of `share_anonymous()` routes) only when one of these cookies is
    /// in it. Browsers send analytics and preference cookies (`_ga`, `theme`) with every
    /// request; with this setting those requests are anonymous ones. Name every cookie your
    /// application reads to tell who is asking, and render nothing from the others: they are
    /// not in the key either. Pair it with [`UserFromCookie`](crate::UserFromCookie) on
    /// per-user routes.
    ///
    /// ```
    /// use tower_redis_cache::{CacheLayer, MemoryStore, Rule, UserFromCookie};
    ///
    /// let cache = CacheLayer::builder(MemoryStore::default())
    ///     .credential_cookies(["session"])
    ///     .route("/", Rule::get().per_user_by(UserFromCookie::new("session")).share_anonymous())
    ///     .build()?;
    /// # Ok::<(), tower_redis_cache::BuildError>(())
    /// ```
    pub fn credential_cookies<T: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = T>,
    ) -> Self {
        self.settings.credential_cookies = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Whether each response carries a [`CacheOutcome`](crate::CacheOutcome) in its extensions
    /// (default off), for middleware around the layer (`TraceLayer::on_response`, metrics) to
    /// read instead of parsing `X-Cache`. Off by default: the first extension a response gets
    /// allocates its map, on every hit too.
    ///
    /// ```
    /// use tower::{Service, ServiceExt};
    /// use tower_redis_cache::{CacheLayer, CacheOutcome, MemoryStore, Rule};
    ///
    /// # tokio_test::block_on(async {
    /// let cache = CacheLayer::builder(MemoryStore::default())
    ///     .outcome_extension(true)
    ///     .route("/users", Rule::get())
    ///     .build()?;
    /// let mut service = tower::ServiceBuilder::new().layer(cache).service_fn(|_req| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
    ///         bytes::Bytes::from_static(b"[]"),
    ///     )))
    /// });
    /// let request = || http::Request::get("/users").body(String::new()).unwrap();
    /// let first = service.ready().await?.call(request()).await?;
    /// assert_eq!(first.extensions().get(), Some(&CacheOutcome::Miss { stored: true }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn outcome_extension(mut self, on: bool) -> Self {
        self.settings.outcome_extension = on;
        self
    }

    /// The response header that tells `HIT`, `MISS` or `BYPASS` (default `x-cache`).
    pub fn x_cache_header(mut self, name: HeaderName) -> Self {
        self.settings.status.x_cache = Some(name);
        self
    }

    /// Adds no `X-Cache` header to responses.
    pub fn without_x_cache_header(mut self) -> Self {
        self.settings.status.x_cache = None;
        self
    }

    /// The name this cache gives itself in the RFC 9211 `Cache-Status` header (default
    /// `tower-redis-cache`): `Cache-Status: tower-redis-cache; hit; ttl=42`. A token: letters,
    /// digits and `!#$%&'*+-.^_`|~:/`, starting with a letter.
    pub fn cache_status_name(mut self, name: impl Into<String>) -> Self {
        self.settings.status.cache_status = Some(name.into());
        self
    }

    /// Adds no `Cache-Status` header to responses.
    pub fn without_cache_status(mut self) -> Self {
        self.settings.status.cache_status = None;
        self
    }

    /// Whether `Cache-Status` names the store key of each response (`key="trc:v1:e:..."`), to
    /// find it in Redis while debugging (default off: keys are digests, but they still tell
    /// clients which requests share entries).
    pub fn cache_status_key(mut self, show: bool) -> Self {
        self.settings.status.cache_status_key = show;
        self
    }

    /// The clock entries' freshness and `Age` are judged by (default: the system's). Tests give
    /// a [`ManualClock`](crate::clock::ManualClock) to step past a TTL without waiting for it.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Arc::new(clock);
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// Fails with a [`BuildError`] naming the route or option at fault: an invalid or
    /// conflicting pattern, a tag naming a parameter the pattern does not capture, two rules
    /// for one method, settings that contradict each other.
    pub fn build(mut self) -> Result<CacheLayer, BuildError> {
        let prefix_ok = !self.settings.key_prefix.is_empty()
            && self.settings.key_prefix.len() <= 64
            && self
                .settings
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
        if !prefix_ok {
            return Err(BuildError::option(
                "key_prefix",
                "must be 1 to 64 visible ASCII characters, without `{` or `}`",
            ));
        }
        if let Some(name) = &self.settings.status.cache_status {
            let token = name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
            if !token {
                return Err(BuildError::option(
                    "cache_status_name",
                    format!("`{name}` is not a token (letters, digits and !#$%&'*+-.^_`|~:/)"),
                ));
            }
        }
        if self.settings.ttl_jitter > 50 {
            return Err(BuildError::option("ttl_jitter", "must be a percentage from 0 to 50"));
        }
        if self.settings.refresh_ahead.is_some_and(|beta| !(beta.is_finite() && beta > 0.0)) {
            return Err(BuildError::option("refresh_ahead", "beta must be a number above zero"));
        }
        if self.settings.miss_lock_timeout.is_some_and(|t| t.is_zero()) {
            return Err(BuildError::option("miss_lock_timeout", "must be more than zero"));
        }
        if self.defaults.ttl.is_zero() {
            return Err(BuildError::option("default_ttl", "must be more than zero"));
        }
        if self.settings.store_timeout.is_zero() {
            return Err(BuildError::option("store_timeout", "must be more than zero"));
        }
        if let Some(breaker) = self.settings.breaker {
            if breaker.failures == 0 || breaker.open_for.is_zero() {
                return Err(BuildError::option(
                    "circuit_breaker",
                    "failures and open_for must be more than zero",
                ));
            }
        }
        if self.settings.max_body_bytes == 0 {
            return Err(BuildError::option("max_body_bytes", "must be more than zero"));
        }
        if self.settings.max_capture_bytes < self.settings.max_body_bytes {
            return Err(BuildError::option(
                "max_capture_bytes",
                "must be at least max_body_bytes, or no body that size could ever be stored",
            ));
        }
        if self.defaults.statuses.is_empty() {
            return Err(BuildError::option("cache_statuses", "must name at least one status"));
        }
        let cookie_name_ok = |name: &String| {
            !name.is_empty() && name.bytes().all(crate::protocol::cache_control::is_tchar)
        };
        if let Some(bad) =
            self.settings.credential_cookies.iter().flatten().find(|n| !cookie_name_ok(n))
        {
            return Err(BuildError::option(
                "credential_cookies",
                format!(
                    "`{bad}` is not a cookie name (a token: letters, digits and !#$%&'*+-.^_`|~)"
                ),
            ));
        }
        if let Some(name) = self
            .defaults
            .cache_control_targets
            .iter()
            .find(|name| [http::header::CACHE_CONTROL, http::header::EXPIRES].contains(name))
        {
            return Err(BuildError::option(
                "targeted_cache_control",
                format!("`{name}` is not a targeted field: name one for this cache"),
            ));
        }
        if self.strip_targeted_cache_control {
            self.settings.status.strip_targeted = self.defaults.cache_control_targets.to_vec();
        }
        let routes = RouteTable::build(self.routes, self.bypass, &self.defaults)?;
        let shared = Shared::new(self.store, routes, self.settings);
        Ok(CacheLayer { shared: Arc::new(shared) })
    }
}
