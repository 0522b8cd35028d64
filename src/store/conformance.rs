//! The conformance suite every [`Store`] must pass, for authors of stores of their own: the
//! behaviour the layer's guarantees rest on (no stale read after a write, stampede protection
//! across instances), checked against a running store.
//!
//! Enabled by the `test-util` feature. Run it from a test, against a store of its own (the
//! checks write keys under `test:v1:`):
//!
//! ```
//! # tokio_test::block_on(async {
//! use std::sync::Arc;
//! use tower_redis_cache::store::conformance;
//! use tower_redis_cache::MemoryStore;
//!
//! conformance::check_store(Arc::new(MemoryStore::default())).await;
//! conformance::check_leases(&MemoryStore::default()).await;
//! # });
//! ```
//!
//! `examples/custom_store.rs` is a store written from scratch that passes it. Each check panics,
//! naming what the store got wrong.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Lookup, Store};

/// Checks everything a store must do: entries, their expiry, tag versions and evictions. A
/// store that keeps the default leases (every lease granted) passes it; one that implements
/// them passes [`check_leases`] too. Panics at the first check the store fails.
pub async fn check_store(store: Arc<dyn Store>) {
    missing_keys_and_tags_are_reported_as_missing(&*store).await;
    put_values_come_back_byte_for_byte(&*store).await;
    entries_expire_after_their_ttl(&*store).await;
    tag_versions_are_given_once_and_kept(&*store).await;
    keeping_tag_versions_never_changes_them(&*store).await;
    eviction_changes_only_the_evicted_tags(&*store).await;
    repeated_evictions_never_reuse_a_version(&*store).await;
    an_index_lists_each_key_once_or_nothing(&*store).await;
    concurrent_first_uses_agree_on_one_version(store).await;
}

/// Checks the leases that make one instance of many fill a missing entry: one holder at a
/// time, released (by their holder only) or expired, and taken before the look that goes with
/// it.
pub async fn check_leases(store: &dyn Store) {
    leases_go_to_one_holder_at_a_time(store).await;
    a_lease_and_a_lookup_go_together(store).await;
}

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("test:v1:t:{n}")).collect()
}

async fn missing_keys_and_tags_are_reported_as_missing(store: &dyn Store) {
    let found = store.lookup("test:v1:e:nothing", &tags(&["a", "b"])).await.unwrap();
    assert_eq!(found.entry, None);
    assert_eq!(found.versions, vec![None, None]);
    let found = store.lookup("test:v1:e:nothing", &[]).await.unwrap();
    assert!(found.versions.is_empty());
}

async fn put_values_come_back_byte_for_byte(store: &dyn Store) {
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for (key, value) in [
        ("test:v1:e:binary", Bytes::from(binary)),
        ("test:v1:e:empty", Bytes::new()),
        ("test:v1:e:text", Bytes::from_static(b"hello")),
    ] {
        store.put(key, value.clone(), Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.lookup(key, &[]).await.unwrap().entry, Some(value), "{key}");
    }
    store
        .put("test:v1:e:text", Bytes::from_static(b"replaced"), Duration::from_secs(60))
        .await
        .unwrap();
    let found = store.lookup("test:v1:e:text", &[]).await.unwrap();
    assert_eq!(found.entry.as_deref(), Some(&b"replaced"[..]));
}

async fn entries_expire_after_their_ttl(store: &dyn Store) {
    store
        .put("test:v1:e:short", Bytes::from_static(b"x"), Duration::from_millis(150))
        .await
        .unwrap();
    store.put("test:v1:e:long", Bytes::from_static(b"y"), Duration::from_secs(60)).await.unwrap();
    assert!(store.lookup("test:v1:e:short", &[]).await.unwrap().entry.is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.lookup("test:v1:e:short", &[]).await.unwrap().entry, None);
    assert!(store.lookup("test:v1:e:long", &[]).await.unwrap().entry.is_some());
}

async fn tag_versions_are_given_once_and_kept(store: &dyn Store) {
    let t = tags(&["users", "user:1"]);
    let first = store.ensure_tag_versions(&t).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(store.ensure_tag_versions(&t).await.unwrap(), first);
    let found = store.lookup("test:v1:e:any", &t).await.unwrap();
    assert_eq!(found.versions, first.iter().copied().map(Some).collect::<Vec<_>>());
    // Order follows the request.
    let reversed: Vec<String> = t.iter().rev().cloned().collect();
    let mut expected = first.clone();
    expected.reverse();
    assert_eq!(store.ensure_tag_versions(&reversed).await.unwrap(), expected);
}

async fn keeping_tag_versions_never_changes_them(store: &dyn Store) {
    let t = tags(&["kept", "kept:1"]);
    let made = store.ensure_tag_versions(&t).await.unwrap();
    store.keep_tag_versions(&t).await.unwrap();
    let found = store.lookup("test:v1:e:any", &t).await.unwrap();
    assert_eq!(found.versions, made.iter().copied().map(Some).collect::<Vec<_>>());
    // An eviction between a miss's versions and its entry is never undone by keeping them.
    store.evict_tags(&t[..1]).await.unwrap();
    let evicted = store.lookup("test:v1:e:any", &t).await.unwrap().versions;
    store.keep_tag_versions(&t).await.unwrap();
    assert_eq!(store.lookup("test:v1:e:any", &t).await.unwrap().versions, evicted);
    assert_ne!(evicted[0], Some(made[0]));
    // Tags with no version stay without one.
    let none = tags(&["kept-but-never-made"]);
    store.keep_tag_versions(&none).await.unwrap();
    assert_eq!(store.lookup("test:v1:e:any", &none).await.unwrap().versions, vec![None]);
}

async fn eviction_changes_only_the_evicted_tags(store: &dyn Store) {
    let t = tags(&["posts", "post:9"]);
    let before = store.ensure_tag_versions(&t).await.unwrap();
    store.evict_tags(&t[..1]).await.unwrap();
    let after = store.lookup("test:v1:e:any", &t).await.unwrap().versions;
    assert_ne!(after[0], Some(before[0]));
    assert!(after[0].is_some(), "an evicted tag has a (new) version");
    assert_eq!(after[1], Some(before[1]));
    // Evicting a tag that never had a version gives it one.
    let fresh = tags(&["never-used"]);
    store.evict_tags(&fresh).await.unwrap();
    assert!(store.lookup("test:v1:e:any", &fresh).await.unwrap().versions[0].is_some());
    store.evict_tags(&[]).await.unwrap();
}

async fn repeated_evictions_never_reuse_a_version(store: &dyn Store) {
    let t = tags(&["churn"]);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        store.evict_tags(&t).await.unwrap();
        let version = store.lookup("test:v1:e:any", &t).await.unwrap().versions[0].unwrap();
        assert!(seen.insert(version), "version {version} came back");
    }
}

async fn concurrent_first_uses_agree_on_one_version(store: Arc<dyn Store>) {
    let t = tags(&["raced"]);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let t = t.clone();
        tasks.push(tokio::spawn(async move { store.ensure_tag_versions(&t).await.unwrap() }));
    }
    let mut versions = HashSet::new();
    for task in tasks {
        versions.insert(task.await.unwrap());
    }
    assert_eq!(versions.len(), 1, "every caller must see the one version that won");
}

/// A store that keeps indexes (for `CacheHandle::inspect`) lists what was added, each key once;
/// one that keeps none lists nothing.
async fn an_index_lists_each_key_once_or_nothing(store: &dyn Store) {
    let ttl = Duration::from_secs(60);
    for key in ["test:v1:e:i1", "test:v1:e:i2", "test:v1:e:i1"] {
        store.add_to_index("test:v1:i:path", key, ttl).await.unwrap();
    }
    store.add_to_index("test:v1:i:other", "test:v1:e:i3", ttl).await.unwrap();
    let mut listed = store.index_members("test:v1:i:path").await.unwrap();
    listed.sort();
    if !listed.is_empty() {
        assert_eq!(listed, ["test:v1:e:i1", "test:v1:e:i2"]);
    }
    assert!(store.index_members("test:v1:i:none").await.unwrap().is_empty());
}

async fn leases_go_to_one_holder_at_a_time(store: &dyn Store) {
    let ttl = Duration::from_millis(300);
    assert!(store.acquire_lease("test:v1:l:a", 1, ttl).await.unwrap());
    assert!(!store.acquire_lease("test:v1:l:a", 2, ttl).await.unwrap(), "held");
    assert!(store.acquire_lease("test:v1:l:b", 2, ttl).await.unwrap(), "another key");
    store.release_lease("test:v1:l:a", 2).await.unwrap();
    assert!(!store.acquire_lease("test:v1:l:a", 2, ttl).await.unwrap(), "not 2's to release");
    store.release_lease("test:v1:l:a", 1).await.unwrap();
    assert!(store.acquire_lease("test:v1:l:a", 2, ttl).await.unwrap(), "released");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(store.acquire_lease("test:v1:l:b", 3, ttl).await.unwrap(), "expired");
    // Holder 2's lease expired and went to 3: 2 letting go late leaves it 3's.
    store.release_lease("test:v1:l:b", 2).await.unwrap();
    assert!(!store.acquire_lease("test:v1:l:b", 4, ttl).await.unwrap(), "still 3's");
    store.release_lease("test:v1:l:b", 3).await.unwrap();
}

/// The lease is taken before the read, and the read sees what the store holds then.
async fn a_lease_and_a_lookup_go_together(store: &dyn Store) {
    let ttl = Duration::from_millis(300);
    let tags = ["test:v1:t:lease-users".to_owned()];
    let versions = store.ensure_tag_versions(&tags).await.unwrap();
    let (leased, found) =
        store.acquire_lease_then_lookup("test:v1:l:c", 1, ttl, "test:v1:e:c", &tags).await.unwrap();
    assert!(leased);
    assert_eq!(found, Lookup { entry: None, versions: vec![Some(versions[0])] });
    store.put("test:v1:e:c", Bytes::from_static(b"entry"), ttl).await.unwrap();
    let (leased, found) =
        store.acquire_lease_then_lookup("test:v1:l:c", 2, ttl, "test:v1:e:c", &tags).await.unwrap();
    assert!(!leased, "held");
    assert_eq!(found.entry.as_deref(), Some(&b"entry"[..]));
    assert!(!store.acquire_lease("test:v1:l:c", 2, ttl).await.unwrap(), "taken by the first call");
    store.release_lease("test:v1:l:c", 1).await.unwrap();
}
