//! The tiered store: an in-process L1 in front of Redis.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, EventInterface, KeysInterface, PubsubInterface, ReconnectPolicy, Value,
};
use fred::types::config::Server;
use fred::types::Message;
use moka::sync::Cache;
use moka::Expiry;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;

use super::redis::{px, redis_error, Read, ReadReply};
use super::{Lookup, RedisStore, Store, StoreError, TagVersion};

/// Default bound on the bytes of entries the L1 holds: 64 MiB.
const DEFAULT_L1_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default longest time the L1 keeps anything.
const DEFAULT_L1_MAX_AGE: Duration = Duration::from_secs(10);
/// How many tag versions the L1 keeps.
const L1_TAG_VERSIONS: u64 = 1_000_000;
/// Default channel on which instances announce the keys they changed.
const DEFAULT_CHANNEL: &str = "trc:v1:changed";
/// Default longest wait for the other instances to confirm an eviction.
const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_millis(100);
/// Stripes of change counters that let a fill from Redis tell whether a key it read changed
/// meanwhile (see [`L1::fill`]).
const STRIPES: usize = 256;

/// A [`RedisStore`] with an in-process first level (L1): hits on entries and tag versions the
/// process has seen are answered from memory, with no round trip.
///
/// Every instance announces the keys it changes (entries it stores, tags it evicts) on a Redis
/// pub/sub channel, and every instance drops those keys from its L1 when the announcement
/// arrives. An eviction also waits (up to [`confirm_timeout`](TieredStoreBuilder::confirm_timeout),
/// 100 ms) until every instance that received it has confirmed it applied it. So a tag evicted
/// anywhere is out of every L1 before the write's response leaves, and the no-stale-read
/// guarantee holds across processes as it does with Redis alone. An instance that does not
/// confirm in time makes the eviction count as failed: the writer's process bypasses the tags
/// and retries, as for any eviction the store did not take.
///
/// When the subscription is lost (Redis restarted, connection dropped, announcements missed
/// because this process fell behind), the L1 is emptied and not used until the subscription is
/// back. As a last resort against a connection that dies without a sign, nothing stays in the
/// L1 longer than [`l1_max_age`](TieredStoreBuilder::l1_max_age) (default 10 s).
///
/// ```no_run
/// # async fn example() -> Result<(), tower_redis_cache::StoreError> {
/// use tower_redis_cache::TieredStore;
///
/// let store = TieredStore::builder("redis://127.0.0.1:6379")
///     .l1_max_bytes(128 * 1024 * 1024)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TieredStore {
    l2: RedisStore,
    l1: Arc<L1>,
    announcer: Arc<Announcer>,
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("l2", &self.l2)
            .field("l1_entries", &self.l1.entries.entry_count())
            .field("l1_synced", &self.l1.synced.load(Ordering::SeqCst))
            .field("channel", &self.announcer.channel)
            .finish()
    }
}

/// Configures and connects a [`TieredStore`]. Made by [`TieredStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TieredStoreBuilder {
    redis: super::RedisStoreBuilder,
    l1_max_bytes: u64,
    l1_max_age: Duration,
    channel: String,
    confirm_timeout: Duration,
}

impl TieredStore {
    /// Starts configuring a tiered store over the Redis at `url` (any URL
    /// [`RedisStore::builder`] takes).
    pub fn builder(url: impl Into<String>) -> TieredStoreBuilder {
        TieredStoreBuilder {
            redis: RedisStore::builder(url),
            l1_max_bytes: DEFAULT_L1_MAX_BYTES,
            l1_max_age: DEFAULT_L1_MAX_AGE,
            channel: DEFAULT_CHANNEL.to_owned(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
        }
    }

    /// The Redis store behind the L1.
    pub fn l2(&self) -> &RedisStore {
        &self.l2
    }

    /// Whether the L1 is in use: the process is subscribed to the other instances' changes.
    pub fn l1_in_use(&self) -> bool {
        self.l1.synced.load(Ordering::SeqCst)
    }

    /// Reads from Redis (after taking `lease`, if any) and fills the L1 with what it found.
    async fn read_through(
        &self,
        key: &str,
        tags: &[String],
        lease: Option<(&str, u64, Duration)>,
    ) -> Result<ReadReply, StoreError> {
        let snapshot =
            self.l1.snapshot(std::iter::once(key).chain(tags.iter().map(String::as_str)));
        let reply = self.l2.read(Read { key, tags, read_ttl: true, lease }).await?;
        let found = &reply.lookup;
        let entry = found.entry.as_ref().zip(reply.ttl).map(|(bytes, ttl)| (key, bytes, ttl));
        self.l1.fill(&snapshot, entry, tags, &found.versions);
        Ok(reply)
    }
}

impl TieredStoreBuilder {
    /// Settings of the Redis connection pool, as for a [`RedisStore`].
    pub fn redis(
        mut self,
        configure: impl FnOnce(super::RedisStoreBuilder) -> super::RedisStoreBuilder,
    ) -> Self {
        self.redis = configure(self.redis);
        self
    }

    /// The most bytes of keys and entries the L1 holds (default 64 MiB); the least useful go
    /// first (moka's TinyLFU).
    pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_bytes = bytes;
        self
    }

    /// The longest the L1 keeps an entry or a tag version (default 10 s): how stale an
    /// instance could serve if its subscription died without any sign, which TCP allows.
    pub fn l1_max_age(mut self, age: Duration) -> Self {
        self.l1_max_age = age;
        self
    }

    /// The pub/sub channel on which instances announce the keys they changed (default
    /// `trc:v1:changed`). Instances sharing entries must share it.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// How long an eviction waits for the other instances to confirm they dropped the tags
    /// from their L1 (default 100 ms). Past it, the eviction counts as failed.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Connects the pool and the subscriber, and waits until the subscription is in place.
    pub async fn build(self) -> Result<TieredStore, StoreError> {
        if self.l1_max_age.is_zero() || self.l1_max_bytes == 0 {
            return Err(StoreError::msg(
                "options `l1_max_age`, `l1_max_bytes`: must be more than zero",
            ));
        }
        let config = self.redis.config()?;
        let l2 = self.redis.build().await?;
        let l1 = Arc::new(L1::new(self.l1_max_bytes, self.l1_max_age));
        let subscriber = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2))
            .build_subscriber_client()
            .map_err(|e| StoreError::from_source("cannot build the Redis subscriber", e))?;
        // Listen before subscribing, so that no announcement slips between the two.
        let events = Events {
            messages: subscriber.message_rx(),
            reconnects: subscriber.reconnect_rx(),
            errors: subscriber.error_rx(),
        };
        let announcer = Arc::new(Announcer {
            id: l1.id.clone(),
            confirmations: format!("{}:confirm:{}", self.channel, l1.id),
            channel: self.channel,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            confirm_timeout: self.confirm_timeout,
        });
        let connect = async {
            subscriber.init().await?;
            let channels = vec![announcer.channel.clone(), announcer.confirmations.clone()];
            subscriber.subscribe(channels).await
        };
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StoreError::from_source("cannot subscribe to Redis", e)),
            Err(_) => return Err(StoreError::msg("cannot subscribe to Redis: timed out")),
        }
        l1.synced.store(true, Ordering::SeqCst);
        let follower = Follower {
            l1: Arc::downgrade(&l1),
            announcer: Arc::downgrade(&announcer),
            l2: l2.clone(),
        };
        tokio::spawn(follower.run(subscriber, events));
        Ok(TieredStore { l2, l1, announcer })
    }
}

struct Events {
    messages: tokio::sync::broadcast::Receiver<Message>,
    reconnects: tokio::sync::broadcast::Receiver<Server>,
    errors: tokio::sync::broadcast::Receiver<(fred::error::Error, Option<Server>)>,
}

/// What this store announces on the channel, and the confirmations it waits for.
struct Announcer {
    /// This store's id in its announcements.
    id: String,
    channel: String,
    /// The channel on which other stores confirm this one's evictions.
    confirmations: String,
    next: AtomicU64,
    /// Evictions waiting for confirmations: how many came, and who waits.
    waiting: Mutex<HashMap<u64, (usize, Arc<Notify>)>>,
    confirm_timeout: Duration,
}

impl Announcer {
    /// `<id> <number> <keys>`, the keys separated by newlines, with `%` and newlines escaped;
    /// number 0 asks for no confirmation.
    fn announcement(&self, number: u64, keys: &[&str]) -> String {
        let keys: Vec<String> =
            keys.iter().map(|k| k.replace('%', "%25").replace('\n', "%0A")).collect();
        format!("{} {number} {}", self.id, keys.join("\n"))
    }

    /// A number for an announcement whose confirmations are counted from now on, before it
    /// is sent: they may come back before its sender hears from Redis.
    fn expect_confirmations(&self) -> (u64, Arc<Notify>) {
        let number = self.next.fetch_add(1, Ordering::SeqCst);
        let notify = Arc::new(Notify::new());
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.insert(number, (0, Arc::clone(&notify)));
        (number, notify)
    }

    /// Waits until `expected` stores confirmed announcement `number`, or the timeout passes.
    async fn confirmed(&self, number: u64, notify: &Notify, expected: usize) -> bool {
        let count = || {
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.get(&number).map_or(0, |(count, _)| *count)
        };
        let waited = tokio::time::timeout(self.confirm_timeout, async {
            loop {
                let notified = notify.notified();
                if count() >= expected {
                    return;
                }
                notified.await;
            }
        });
        let done = waited.await.is_ok();
        self.forget(number);
        done
    }

    fn forget(&self, number: u64) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&number);
    }

    /// Another store confirmed announcement `number`.
    fn confirm(&self, number: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((count, notify)) = waiting.get_mut(&number) {
            *count += 1;
            notify.notify_one();
        }
    }
}

/// Reads `<id> <number> <keys>`.
fn read_announcement(text: &str) -> Option<(&str, u64, Vec<String>)> {
    let (from, rest) = text.split_once(' ')?;
    let (number, keys) = rest.split_once(' ')?;
    let keys = keys.split('\n').map(|k| k.replace("%0A", "\n").replace("%25", "%")).collect();
    Some((from, number.parse().ok()?, keys))
}

/// Applies the other stores' announcements to the L1 and confirms them, for as long as the
/// store lives.
struct Follower {
    l1: Weak<L1>,
    announcer: Weak<Announcer>,
    /// For confirmations: a subscribed connection cannot publish.
    l2: RedisStore,
}

impl Follower {
    async fn run(self, subscriber: fred::clients::SubscriberClient, mut events: Events) {
        loop {
            let (Some(l1), Some(announcer)) = (self.l1.upgrade(), self.announcer.upgrade()) else {
                break;
            };
            tokio::select! {
                message = events.messages.recv() => match message {
                    Ok(message) => self.apply(&l1, &announcer, &message),
                    // Announcements were dropped: anything in the L1 may be stale.
                    Err(RecvError::Lagged(_)) => l1.lost_track("announcements were missed"),
                    Err(RecvError::Closed) => break,
                },
                error = events.errors.recv() => {
                    if let Err(RecvError::Closed) = error { break }
                    l1.lost_track("the subscriber connection failed");
                }
                reconnected = events.reconnects.recv() => {
                    if let Err(RecvError::Closed) = reconnected { break }
                    l1.lost_track("the subscriber reconnected");
                    // Announcements made while it was away are lost: start again from empty.
                    match subscriber.resubscribe_all().await {
                        Ok(()) => {
                            l1.clear();
                            l1.synced.store(true, Ordering::SeqCst);
                            tracing::info!("tiered store: subscribed again, L1 back in use");
                        }
                        Err(error) => tracing::warn!(%error, "tiered store: cannot subscribe again"),
                    }
                }
            }
        }
        let _ = subscriber.quit().await;
    }

    fn apply(&self, l1: &L1, announcer: &Announcer, message: &Message) {
        let text = message.value.as_bytes_str();
        if *message.channel == *announcer.confirmations {
            if let Some(number) = text.and_then(|t| t.parse().ok()) {
                announcer.confirm(number);
            }
            return;
        }
        match text.as_deref().and_then(read_announcement) {
            Some((from, _, _)) if from == announcer.id => {}
            Some((from, number, keys)) => {
                for key in &keys {
                    l1.changed(key);
                }
                if number > 0 {
                    let (pool, channel) = (self.l2.pool().clone(), announcer.channel.clone());
                    let to = format!("{channel}:confirm:{from}");
                    tokio::spawn(async move {
                        let _: Result<(), _> = pool.next().publish(to, number.to_string()).await;
                    });
                }
            }
            // Not an announcement of ours: forget everything, to be safe.
            None => l1.clear(),
        }
    }
}

/// The first level: entries and tag versions read from or written to Redis.
struct L1 {
    /// This store's id in its announcements.
    id: String,
    entries: Cache<String, L1Entry>,
    max_age: Duration,
    versions: Cache<String, TagVersion>,
    /// Whether the process follows the announcements, so that the L1 may be used.
    synced: AtomicBool,
    /// Bumped on every change a key of the stripe sees, and on every clear (`generation`).
    stripes: Vec<AtomicU64>,
    generation: AtomicU64,
    hasher: RandomState,
}

/// An entry in the L1, with how long it may stay: no longer than Redis keeps it, nor than
/// the L1's max age.
#[derive(Clone)]
struct L1Entry {
    bytes: Bytes,
    ttl: Duration,
}

struct EntryTtl;

impl Expiry<String, L1Entry> for EntryTtl {
    fn expire_after_create(&self, _: &String, entry: &L1Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &L1Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// What a fill from Redis compares against: the change counters before the read.
struct Snapshot {
    generation: u64,
    stripes: Vec<(usize, u64)>,
}

impl L1 {
    fn new(max_bytes: u64, max_age: Duration) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &L1Entry| {
                u32::try_from(key.len() + entry.bytes.len()).unwrap_or(u32::MAX)
            })
            .expire_after(EntryTtl)
            .build();
        let versions = Cache::builder().max_capacity(L1_TAG_VERSIONS).time_to_live(max_age).build();
        Self {
            id: format!("{:016x}", fastrand::u64(..)),
            entries,
            max_age,
            versions,
            synced: AtomicBool::new(false),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            hasher: RandomState::new(),
        }
    }

    fn stripe(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % STRIPES as u64) as usize
    }

    /// The entry and every tag version, if the L1 has them all.
    fn get(&self, key: &str, tags: &[String]) -> Option<Lookup> {
        if !self.synced.load(Ordering::SeqCst) {
            return None;
        }
        let versions: Option<Vec<_>> = tags.iter().map(|tag| self.versions.get(tag)).collect();
        let versions = versions?;
        let entry = self.entries.get(key)?;
        Some(Lookup {
            entry: Some(entry.bytes),
            versions: versions.into_iter().map(Some).collect(),
        })
    }

    fn snapshot<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Snapshot {
        let generation = self.generation.load(Ordering::SeqCst);
        let stripes = keys
            .into_iter()
            .map(|key| {
                let stripe = self.stripe(key);
                (stripe, self.stripes[stripe].load(Ordering::SeqCst))
            })
            .collect();
        Snapshot { generation, stripes }
    }

    fn unchanged_since(&self, snapshot: &Snapshot) -> bool {
        self.synced.load(Ordering::SeqCst)
            && self.generation.load(Ordering::SeqCst) == snapshot.generation
            && snapshot.stripes.iter().all(|(s, n)| self.stripes[*s].load(Ordering::SeqCst) == *n)
    }

    /// Keeps what a read from Redis found, unless one of the keys changed since `snapshot`
    /// was taken before the read: the announcement may have been applied before this fill,
    /// and the value read would then outlive it. Filling first and checking after (while
    /// announcements count first and remove after) leaves no order in which a stale value
    /// stays.
    ///
    /// `entry` is the key, bytes and remaining time to live of an entry read, if any.
    fn fill(
        &self,
        snapshot: &Snapshot,
        entry: Option<(&str, &Bytes, Duration)>,
        tags: &[String],
        versions: &[Option<TagVersion>],
    ) {
        if let Some((key, bytes, ttl)) = entry {
            self.keep(key, bytes.clone(), ttl);
        }
        for (tag, version) in tags.iter().zip(versions) {
            if let Some(version) = version {
                self.versions.insert(tag.clone(), *version);
            }
        }
        if !self.unchanged_since(snapshot) {
            if let Some((key, _, _)) = entry {
                self.entries.invalidate(key);
            }
            for tag in tags {
                self.versions.invalidate(tag);
            }
        }
    }

    fn keep(&self, key: &str, bytes: Bytes, ttl: Duration) {
        self.entries.insert(key.to_owned(), L1Entry { bytes, ttl: ttl.min(self.max_age) });
    }

    /// Another instance (or this one) changed `key` in Redis.
    fn changed(&self, key: &str) {
        self.stripes[self.stripe(key)].fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
        self.versions.invalidate(key);
    }

    /// Announcements may have been missed: stop using the L1 until the subscription is back.
    fn lost_track(&self, why: &'static str) {
        if self.synced.swap(false, Ordering::SeqCst) {
            tracing::warn!(why, "tiered store: L1 out of use until the subscription is back");
        }
        self.clear();
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate_all();
        self.versions.invalidate_all();
    }
}

#[async_trait]
impl Store for TieredStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        if let Some(found) = self.l1.get(key, tags) {
            return Ok(found);
        }
        Ok(self.read_through(key, tags, None).await?.lookup)
    }

    fn lookup_in_process(&self, key: &str, tags: &[String]) -> Option<Lookup> {
        self.l1.get(key, tags)
    }

    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        let snapshot = self.l1.snapshot(tags.iter().map(String::as_str));
        let versions = self.l2.ensure_tag_versions(tags).await?;
        let known: Vec<_> = versions.iter().copied().map(Some).collect();
        self.l1.fill(&snapshot, None, tags, &known);
        Ok(versions)
    }

    /// Tag versions live in Redis; the L1 keeps no lifetime of its own for them.
    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        self.l2.keep_tag_versions(tags).await
    }

    /// Stores in Redis and announces the change in the same round trip; other instances drop
    /// their L1 copy of the key, and this one keeps the new value.
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let pipeline = self.l2.pool().next().pipeline();
        let _: () = pipeline
            .set(key, value.clone(), Some(px(ttl)), None, false)
            .await
            .map_err(redis_error("cannot queue SET"))?;
        let _: () = pipeline
            .publish(&self.announcer.channel, self.announcer.announcement(0, &[key]))
            .await
            .map_err(redis_error("cannot queue PUBLISH"))?;
        let _: Vec<Value> = pipeline.all().await.map_err(redis_error("Redis SET failed"))?;
        self.l1.changed(key);
        self.l1.keep(key, value, ttl);
        Ok(())
    }

    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        if tags.is_empty() {
            return Ok(());
        }
        let announcer = &self.announcer;
        let keys: Vec<&str> = tags.iter().map(String::as_str).collect();
        let client = self.l2.eviction_client();
        let pipeline = client.pipeline();
        self.l2.queue_evictions(&pipeline, tags).await?;
        // Counted from before the pipeline leaves: confirmations may come back before its reply.
        let (number, notify) = announcer.expect_confirmations();
        let queued: Result<(), _> = pipeline
            .publish(&announcer.channel, announcer.announcement(number, &keys))
            .await
            .map_err(redis_error("cannot queue PUBLISH"));
        if let Err(error) = queued {
            announcer.forget(number);
            return Err(error);
        }
        let result = pipeline.all::<Vec<Value>>().await;
        // After the write (not only before): a lookup of this process that read the old
        // version while the write was on its way must not keep it (see `L1::fill`).
        for tag in tags {
            self.l1.changed(tag);
        }
        let replies = match result {
            Ok(replies) => replies,
            Err(error) => {
                announcer.forget(number);
                return Err(redis_error("Redis eviction failed")(error));
            }
        };
        // PUBLISH answers how many subscribers got the announcement, this store's included.
        let others = replies.last().and_then(Value::as_i64).unwrap_or(0).max(1) as usize - 1;
        if !announcer.confirmed(number, &notify, others).await {
            return Err(StoreError::msg(format!(
                "not every instance confirmed the eviction within {:?}",
                announcer.confirm_timeout
            )));
        }
        self.l2.replicate_eviction(client, tags).await
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.l2.acquire_lease(key, holder, ttl).await
    }

    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        self.l2.release_lease(key, holder).await
    }

    async fn add_to_index(&self, index: &str, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.l2.add_to_index(index, key, ttl).await
    }

    async fn index_members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        self.l2.index_members(index).await
    }

    async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        holder: u64,
        ttl: Duration,
        key: &str,
        tags: &[String],
    ) -> Result<(bool, Lookup), StoreError> {
        let reply = self.read_through(key, tags, Some((lease, holder, ttl))).await?;
        Ok((reply.leased, reply.lookup))
    }
}
