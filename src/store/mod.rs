//! Where entries and tag versions live.
//!
//! The layer talks to storage through the [`Store`] trait. Two implementations ship with the
//! crate: [`RedisStore`] (a Redis server, pool of connections, through `fred`) and
//! [`MemoryStore`] (a bounded in-process cache, through `moka`).
//!
//! # Tags and versions
//!
//! Eviction uses generations rather than sets of keys: every tag has a *version* in the store.
//! An entry records the versions of its tags as they were read *before* the inner service was
//! called, and a lookup reads the entry together with the current versions. Evicting a tag gives
//! it a fresh version, which makes every entry that recorded the old one a miss. This is one
//! write per tag whatever the number of entries, it cannot be undone by a slow miss that
//! finishes after the eviction, and every command touches a single key, so it works unchanged
//! on Redis Cluster.
//!
//! A tag with no version (never used, or its version was lost) never matches an entry: lookups
//! report it as missing and the layer gives it a version with
//! [`Store::ensure_tag_versions`] before it calls the inner service. That version is
//! provisional: it lasts [`PROVISIONAL_TAG_VERSION_TTL`] unless an entry carrying it is stored,
//! when [`Store::keep_tag_versions`] gives it the store's full lifetime. So requests whose
//! responses are never stored (junk paths answered `400`) leave nothing that lasts, while the
//! version a miss records is still made before the inner service runs: made later, an eviction
//! during the miss whose own version was then lost (memory pressure) would go unseen.

// The stores (`memory.rs`, `redis.rs`, `tiered.rs`) behind the public `Store` trait, and what
// the request path puts in front of any of them: `guarded.rs` (timeout, circuit breaker in
// `breaker.rs`, eviction retries). Imports only `background`; reports through `StoreEvents`.
pub(crate) mod breaker;
#[cfg(feature = "test-util")]
pub mod conformance;
pub(crate) mod guarded;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod tiered;
#[cfg(feature = "redis")]
mod tls;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::tiered::{TieredStore, TieredStoreBuilder};

/// A tag's version: an opaque number that changes every time the tag is evicted.
pub type TagVersion = u64;

/// How long a tag version that [`Store::ensure_tag_versions`] made lasts unless
/// [`Store::keep_tag_versions`] keeps it: longer than a miss takes to call the inner service and
/// store its entry (an entry stored after its provisional version is gone is never served).
pub const PROVISIONAL_TAG_VERSION_TTL: Duration = Duration::from_secs(60);

/// What a lookup found: the raw entry (if any) and the current version of each tag asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The stored bytes under the key, if there were any.
    pub entry: Option<Bytes>,
    /// The current version of each tag, in the order the tags were given; `None` for a tag that
    /// has no version.
    pub versions: Vec<Option<TagVersion>>,
}

/// Storage for cached entries and tag versions.
///
/// Implementations must be safe to share between threads and every method must do its work in
/// a single round trip to the backing server where it has one (guarantee 5 of the design: a hit
/// costs one round trip). The layer runs every call under its own timeout, so an
/// implementation need not add one, though it may.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads the entry under `key` and the current versions of `tags`, in one round trip.
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError>;

    /// The same lookup, answered at once from this process's memory when the store can: an
    /// in-process store always, a tiered one when its L1 holds the entry and every version.
    /// `None` sends the request to [`lookup`](Self::lookup).
    ///
    /// A hit answered here never leaves the caller's task: no future, no timer, no timeout.
    /// Answer only what costs no I/O and cannot fail. The default answers nothing.
    fn lookup_in_process(&self, key: &str, tags: &[String]) -> Option<Lookup> {
        let _ = (key, tags);
        None
    }

    /// Gives each tag that has no version a fresh, provisional one (it lasts
    /// [`PROVISIONAL_TAG_VERSION_TTL`] unless kept), keeps the versions that exist, and returns
    /// the current version of every tag, in order.
    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError>;

    /// Gives the tags' current versions, provisional or not, the store's full lifetime for tag
    /// versions: an entry carrying them was just stored. It never changes a version.
    ///
    /// The default does nothing, for stores whose tag versions do not expire.
    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        let _ = tags;
        Ok(())
    }

    /// Stores `value` under `key` for `ttl`, replacing what was there.
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError>;

    /// Gives every tag in `tags` a fresh version, so that no entry stored before becomes a hit.
    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError>;

    /// Takes the short lease `key` for `holder` (a number each layer draws for itself) for
    /// `ttl` if nobody holds it: `true` when this caller got it.
    ///
    /// Instances sharing a store use leases so that one of them computes a missing entry while
    /// the others wait for it. The default grants every lease, which keeps the stampede
    /// protection to one process.
    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let _ = (key, holder, ttl);
        Ok(true)
    }

    /// Gives the lease `key` back before its time is up, if `holder` still holds it: a lease
    /// that expired and was taken by another holder stays theirs (compare and delete).
    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        let _ = (key, holder);
        Ok(())
    }

    /// Records that the entry under `key` is one of the entries of the URL that `index` names,
    /// for [`CacheHandle::inspect`](crate::CacheHandle::inspect). The record may outlive the
    /// entry, and need not outlive `ttl`. The default records nothing, and inspection then
    /// finds nothing.
    async fn add_to_index(&self, index: &str, key: &str, ttl: Duration) -> Result<(), StoreError> {
        let _ = (index, key, ttl);
        Ok(())
    }

    /// The keys recorded under `index` by [`add_to_index`](Store::add_to_index); some may have
    /// expired since.
    async fn index_members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let _ = index;
        Ok(Vec::new())
    }

    /// Takes the lease `lease` like [`acquire_lease`](Self::acquire_lease), *then* reads `key`
    /// and `tags` like [`lookup`](Self::lookup): whether this caller got the lease, and what
    /// the store holds once it has. A missing request that becomes a leader looks again after
    /// taking the lease, for an entry another instance stored meanwhile.
    ///
    /// The default makes the two calls in turn; a store on a server should make them in one
    /// round trip, the lease first.
    async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        holder: u64,
        ttl: Duration,
        key: &str,
        tags: &[String],
    ) -> Result<(bool, Lookup), StoreError> {
        let leased = self.acquire_lease(lease, holder, ttl).await?;
        Ok((leased, self.lookup(key, tags).await?))
    }
}

/// A shared store is a store: lets an application pick its store at run time
/// (`Arc<dyn Store>`) or hand the same one to several layers.
#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        (**self).lookup(key, tags).await
    }

    fn lookup_in_process(&self, key: &str, tags: &[String]) -> Option<Lookup> {
        (**self).lookup_in_process(key, tags)
    }

    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        (**self).ensure_tag_versions(tags).await
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        (**self).put(key, value, ttl).await
    }

    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        (**self).evict_tags(tags).await
    }

    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        (**self).keep_tag_versions(tags).await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        (**self).acquire_lease(key, holder, ttl).await
    }

    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        (**self).release_lease(key, holder).await
    }

    async fn add_to_index(&self, index: &str, key: &str, ttl: Duration) -> Result<(), StoreError> {
        (**self).add_to_index(index, key, ttl).await
    }

    async fn index_members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        (**self).index_members(index).await
    }

    async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        holder: u64,
        ttl: Duration,
        key: &str,
        tags: &[String],
    ) -> Result<(bool, Lookup), StoreError> {
        (**self).acquire_lease_then_lookup(lease, holder, ttl, key, tags).await
    }
}

/// An error from a [`Store`].
///
/// The layer never returns these to clients: it logs them, counts them and carries on as if the
/// request were not cached.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    unavailable: bool,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl StoreError {
    /// An error with a message and no underlying cause.
    pub fn msg(message: impl Into<String>) -> Self {
        Self { message: message.into(), source: None, unavailable: false }
    }

    /// An error caused by another error.
    pub fn from_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { message: message.into(), source: Some(Box::new(source)), unavailable: false }
    }

    /// Marks the error as the store being unreachable (connection lost, cluster down), as
    /// opposed to the store refusing one command. Unavailability counts towards opening the
    /// layer's circuit breaker (see
    /// [`CacheLayerBuilder::circuit_breaker`](crate::CacheLayerBuilder::circuit_breaker)).
    pub fn unavailable(mut self) -> Self {
        self.unavailable = true;
        self
    }

    /// Whether the store was unreachable, rather than refusing a command.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

/// A new, effectively unique tag version.
///
/// Random rather than a counter so that a version lost in the store (expired, evicted under
/// memory pressure, flushed) and then given again can never equal one that an old entry recorded.
pub(crate) fn fresh_version() -> TagVersion {
    fastrand::u64(..)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fresh_versions_differ() {
        let a: std::collections::HashSet<_> = (0..10_000).map(|_| super::fresh_version()).collect();
        assert_eq!(a.len(), 10_000);
    }
}
