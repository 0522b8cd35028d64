//! What responses teach the layer, and how it writes it down for other instances: the request
//! headers a response `Vary`s on beyond its rule's (see [`crate::protocol::vary`]), and the cache
//! groups it belongs to (see [`crate::protocol::groups`]).
//!
//! Both are learned in process and written to the store as a small marker: the `Vary` marker
//! under the key with the rule's headers only, the groups marker under the entry's key. A
//! lookup that finds a marker learns from it and looks up again: two round trips, once per key
//! and process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use super::decide::Plan;
use super::shared::Shared;
use crate::background;
use crate::entry::key::vary_union;
use crate::protocol::{groups, vary};
use crate::store::Lookup;

/// How many keys' learned `Vary` headers a process remembers; forgetting costs one more
/// round trip to read the marker again.
const LEARNED_VARY: u64 = 100_000;

/// How many entries' learned cache groups a process remembers; forgetting costs a response
/// that is not stored, to learn them again.
const LEARNED_GROUPS: u64 = 100_000;

/// What responses taught this process.
pub(crate) struct Learned {
    /// Request headers learned from responses' `Vary`, by the key with the rule's headers only.
    pub(crate) vary: LearnedBy<Arc<Vec<HeaderName>>>,
    /// Cache groups learned from responses, by entry key.
    pub(crate) groups: LearnedBy<Arc<Vec<String>>>,
}

impl Default for Learned {
    fn default() -> Self {
        Self { vary: LearnedBy::new(LEARNED_VARY), groups: LearnedBy::new(LEARNED_GROUPS) }
    }
}

/// Something learned, by key. Most applications never teach the layer anything, so until
/// something is learned, reading skips hashing the key.
pub(crate) struct LearnedBy<V> {
    cache: moka::sync::Cache<String, V>,
    any: AtomicBool,
}

impl<V: Clone + Send + Sync + 'static> LearnedBy<V> {
    fn new(capacity: u64) -> Self {
        Self { cache: moka::sync::Cache::new(capacity), any: AtomicBool::new(false) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<V> {
        match self.any.load(Ordering::Relaxed) {
            true => self.cache.get(key),
            false => None,
        }
    }

    pub(crate) fn insert(&self, key: String, value: V) {
        self.any.store(true, Ordering::Relaxed);
        self.cache.insert(key, value);
    }
}

/// Writes a marker in the background, kept as long as the entry it is about.
fn write_marker(shared: &Arc<Shared>, key: String, marker: bytes::Bytes, keep_for: Duration) {
    let shared = Arc::clone(shared);
    background::spawn(async move { shared.store.put(&key, marker, keep_for).await });
}

/// Learns that entries under `plan`'s rule key vary on `extra` too: for this process, and,
/// through a marker kept as long as the entry, for the others. Returns all the headers.
pub(crate) fn learn_vary(
    shared: &Arc<Shared>,
    plan: &Plan,
    extra: &[HeaderName],
    keep_for: Duration,
) -> Vec<HeaderName> {
    let all = vary_union(&plan.vary, extra);
    let learned: Vec<HeaderName> =
        all.iter().filter(|n| !plan.rule.vary.contains(n)).cloned().collect();
    let marker = vary::encode(&learned);
    shared.learned.vary.insert(plan.rule_vary_key().to_owned(), Arc::new(learned));
    write_marker(shared, plan.rule_vary_key().to_owned(), marker, keep_for);
    all
}

/// Whether stored bytes are a marker (of learned `Vary` or cache groups) rather than an entry.
pub(crate) fn is_marker(stored: &[u8]) -> bool {
    vary::decode(stored).is_some() || groups::decode_marker(stored).is_some()
}

/// When a lookup found a `Vary` marker instead of an entry, learns from it and looks up the
/// key it points to (the second round trip). Otherwise returns the lookup as it was.
pub(crate) async fn follow_vary_marker(
    shared: &Shared,
    plan: &mut Plan,
    request: &HeaderMap,
    found: Lookup,
) -> Option<Lookup> {
    let Some(learned) = found.entry.as_deref().and_then(vary::decode) else {
        return Some(found);
    };
    plan.vary_on(shared, request, vary_union(&plan.rule.vary, &learned));
    shared.learned.vary.insert(plan.rule_vary_key().to_owned(), Arc::new(learned));
    shared.store.lookup(&plan.key, &plan.tag_keys).await
}

/// Learns that `plan`'s entry belongs to `new` groups: for this process, and for the others
/// through a marker under the entry's key (until an entry replaces it).
pub(crate) fn learn_groups(
    shared: &Arc<Shared>,
    plan: &Plan,
    new: Vec<String>,
    keep_for: Duration,
) {
    let mut all =
        shared.learned.groups.get(&plan.key).map_or_else(Vec::new, |known| known.to_vec());
    all.extend(new);
    let all = groups::tidy(all);
    let marker = groups::encode_marker(&all);
    shared.learned.groups.insert(plan.key.clone(), Arc::new(all));
    write_marker(shared, plan.key.clone(), marker, keep_for);
}

/// When a lookup found a group marker instead of an entry, learns its groups and looks up
/// again, now reading their versions too (the second round trip). Otherwise returns the lookup.
pub(crate) async fn follow_groups_marker(
    shared: &Shared,
    plan: &mut Plan,
    found: Lookup,
) -> Option<Lookup> {
    let Some(learned) = found.entry.as_deref().and_then(groups::decode_marker) else {
        return Some(found);
    };
    plan.add_tags(shared, &learned);
    shared.learned.groups.insert(plan.key.clone(), Arc::new(learned));
    shared.store.lookup(&plan.key, &plan.tag_keys).await
}
