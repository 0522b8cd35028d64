//! What the store holds for a URL, for [`CacheHandle::inspect`](crate::CacheHandle::inspect).
//!
//! Each stored entry is recorded in an index of its path (see `Store::add_to_index`), so that
//! the entries of a URL can be found although their keys are digests.

use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::entry::key::{index_key, uri_tag};
use crate::entry::Entry;
use crate::service::shared::Shared;
use crate::store::StoreError;

/// One entry stored for a URL, as [`CacheHandle::inspect`](crate::CacheHandle::inspect) found
/// it: one variant (method, query, user, varying headers) of the path.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredEntry {
    /// Its store key: a digest of the method, authority, path, query, user and varying headers.
    pub key: String,
    /// The stored response's status.
    pub status: StatusCode,
    /// The stored response's headers; `Vary` names the request headers this variant is for.
    pub headers: HeaderMap,
    /// How long ago the response was made (by the layer's clock, counting its `Age`).
    pub age: Duration,
    /// How long it is fresh for, from when it was made.
    pub ttl: Duration,
    /// Its tags: the route's, and the layer's own (they start with `#`: the path's, and the
    /// one every entry carries).
    pub tags: Vec<String>,
    /// Whether one of its tags was evicted since it was stored: it is then never served again,
    /// and stays in the store until its time is up.
    pub evicted: bool,
    /// The bytes it takes in the store (encoded, with the body compressed where it was).
    pub stored_bytes: usize,
    /// The body's length as the inner service sent it.
    pub body_bytes: u64,
}

impl StoredEntry {
    /// Whether a request for this variant would be answered from it now: not evicted, and
    /// fresh.
    pub fn is_fresh(&self) -> bool {
        !self.evicted && self.age < self.ttl
    }
}

/// The entries the index of `path` lists that the store still holds, oldest first.
pub(crate) async fn stored_entries(
    shared: &Shared,
    path: &str,
) -> Result<Vec<StoredEntry>, StoreError> {
    let store = shared.store.unguarded();
    let index = index_key(&shared.settings.key_prefix, &uri_tag(path));
    let mut found = Vec::new();
    for key in store.index_members(&index).await? {
        let Some(bytes) = store.lookup(&key, &[]).await?.entry else { continue };
        let stored_bytes = bytes.len();
        // A value that does not decode is never served either.
        let Some(entry) = Entry::decode(bytes) else { continue };
        let (names, recorded): (Vec<String>, Vec<_>) = entry.tags.iter().cloned().unzip();
        let current = store.lookup(&key, &shared.tag_keys(&names)).await?.versions;
        let evicted = current.iter().zip(&recorded).any(|(now, then)| *now != Some(*then));
        let Entry { status, headers, stored_at_ms, ttl, identity_len, body, .. } = entry;
        found.push(StoredEntry {
            key,
            status,
            headers,
            age: Duration::from_millis(shared.now_ms().saturating_sub(stored_at_ms)),
            ttl,
            tags: names,
            evicted,
            stored_bytes,
            body_bytes: identity_len.unwrap_or(body.len() as u64),
        });
    }
    Ok(found)
}
