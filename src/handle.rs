//! [`CacheHandle`]: the cache, seen from outside the request path.

use std::sync::Arc;

use crate::entry::key::{uri_tag, EVERY_ENTRY_TAG};
use crate::inspect::{self, StoredEntry};
use crate::service::shared::Shared;
use crate::store::StoreError;
use crate::telemetry::Stats;

/// Evicts tags and reads counters from code outside HTTP: background jobs, admin tasks,
/// message consumers. Made by [`CacheLayer::handle`](crate::CacheLayer::handle); cheap to clone.
///
/// ```
/// # tokio_test::block_on(async {
/// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
///
/// let layer = CacheLayer::builder(MemoryStore::default())
///     .route("/users", Rule::get().tag("users"))
///     .build()
///     .unwrap();
/// let cache = layer.handle();
///
/// // After a batch import changed the users table:
/// cache.evict_tags(["users"]).await.unwrap();
/// assert_eq!(cache.stats().evictions, 1);
/// # });
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

impl CacheHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Evicts every entry carrying any of `tags`, as a successful mutation rule would. Tags are
    /// taken literally: build a templated tag's value with
    /// [`escape_tag_param`](crate::escape_tag_param).
    ///
    /// On error (store down or slow) the eviction is retried in the background, and until it
    /// succeeds this process bypasses the cache for entries carrying those tags.
    pub async fn evict_tags<T: Into<String>>(
        &self,
        tags: impl IntoIterator<Item = T>,
    ) -> Result<(), StoreError> {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        self.shared.evict(&tags).await
    }

    /// Evicts every entry of `path`: every query of it, every `Vary` variant, every user's
    /// entry, as a successful unsafe request to it would (RFC 9111 section 4.4). For an
    /// administrator's "purge this URL", or an origin that changed a page behind the cache's
    /// back.
    ///
    /// Entries carry their path's tag while the layer invalidates on unsafe requests (the
    /// default, [`invalidate_on_unsafe_requests`](crate::CacheLayerBuilder::invalidate_on_unsafe_requests)):
    /// with that turned off, this evicts nothing and says so in a warning.
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// # let cache = tower_redis_cache::CacheLayer::builder(tower_redis_cache::MemoryStore::default())
    /// #     .build().unwrap().handle();
    /// cache.purge_path("/articles/rust-2026").await?;
    /// # Ok::<(), tower_redis_cache::StoreError>(())
    /// # }).unwrap();
    /// ```
    pub async fn purge_path(&self, path: &str) -> Result<(), StoreError> {
        if !self.shared.settings.invalidate_unsafe {
            tracing::warn!(path, "purge_path evicts nothing: entries carry no path tags");
            return Ok(());
        }
        self.shared.evict(&[uri_tag(path)]).await
    }

    /// What the store holds for `path`: every entry of it (each query, `Vary` variant and
    /// user) that was stored while the layer invalidates on unsafe requests (the default), with
    /// its age, TTL, tags and size, and whether an eviction has made it unservable.
    ///
    /// Entries are found through an index of their path that the layer keeps in the store
    /// (`Store::add_to_index`): a `MemoryStore` keeps the latest 32 entries of each path, for
    /// as many paths as a sixty-fourth of its bound holds (the most used first); a `RedisStore`
    /// keeps a set per path, which expires with tag versions. A store of your own that keeps no
    /// index shows nothing.
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
    ///
    /// let layer = CacheLayer::builder(MemoryStore::default())
    ///     .route("/users", Rule::get().tag("users"))
    ///     .build()
    ///     .unwrap();
    /// let cache = layer.handle();
    /// let app = layer.layer(service_fn(|_: Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(String::from("[]")))
    /// }));
    /// app.oneshot(Request::get("/users?page=2").body(String::new()).unwrap()).await.unwrap();
    /// # while cache.stats().stores == 0 { tokio::task::yield_now().await }
    ///
    /// let stored = cache.inspect("/users").await.unwrap();
    /// assert_eq!(stored.len(), 1);
    /// assert!(stored[0].tags.contains(&"users".to_owned()));
    /// assert!(stored[0].is_fresh());
    /// # });
    /// ```
    pub async fn inspect(&self, path: &str) -> Result<Vec<StoredEntry>, StoreError> {
        inspect::stored_entries(&self.shared, path).await
    }

    /// Evicts every entry this layer's routes stored (every entry under its key prefix, in
    /// every process sharing the store): one write, a new version of the tag every entry
    /// carries. For "purge everything" after a deploy that changed what pages look like.
    ///
    /// The entries stay in the store until their TTL ends or the store's memory bound evicts
    /// them; none is served again.
    ///
    /// ```
    /// # tokio_test::block_on(async {
    /// use tower_redis_cache::{CacheLayer, MemoryStore, Rule};
    ///
    /// let layer = CacheLayer::builder(MemoryStore::default())
    ///     .route("/users", Rule::get())
    ///     .build()
    ///     .unwrap();
    /// layer.handle().purge_all().await.unwrap();
    /// # });
    /// ```
    pub async fn purge_all(&self) -> Result<(), StoreError> {
        self.shared.evict(&[EVERY_ENTRY_TAG.to_owned()]).await
    }

    /// The counters so far, with the latency percentiles of hits and misses, for code that
    /// wants numbers without a metrics backend (see [`crate::telemetry`] for the metrics).
    pub fn stats(&self) -> Stats {
        self.shared.telemetry.stats()
    }
}

impl std::fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheHandle").field("stats", &self.stats()).finish()
    }
}
