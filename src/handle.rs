//! [`CacheHandle`]: the cache, seen from outside the request path.

use std::sync::Arc;

use crate::service::shared::Shared;
use crate::store::StoreError;
use crate::telemetry::Stats;

/// Evicts tags and reads counters from code outside HTTP: background jobs, admin tasks,
/// message consumers. Made by [`CacheLayer::handle`](crate::CacheLayer::handle); cheap to clone.
///
/// ```
/// # async fn example() {
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
/// # }
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
