//! The Redis store, through `fred`.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::Pipeline;
use fred::prelude::{
    Builder, Client, ClientLike, ClusterInterface, Config, ErrorKind, Expiration, KeysInterface,
    Pool, ReconnectPolicy, ServerInterface, SetOptions, SetsInterface, TcpConfig, Value,
};

use fred::types::config::Server;
use fred::types::scripts::Script;
use fred::types::InfoKind;
use fred::util::redis_keyslot;

use super::tls::{self, TlsSettings};
use super::{fresh_version, Lookup, Store, StoreError, TagVersion, PROVISIONAL_TAG_VERSION_TTL};

/// Deletes the lease `KEYS[1]` only if its holder is `ARGV[1]`.
static RELEASE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
         return 0",
    )
});

/// How long a tag version lives in Redis after it was last set. Losing a version is safe
/// (entries that recorded it become misses), so this only bounds the memory of templated tags.
const DEFAULT_TAG_VERSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A store on a Redis server (or a Redis Cluster, Sentinel or TLS deployment, by URL), through a
/// pool of `fred` clients that reconnect by themselves.
///
/// Every operation is a single round trip: a lookup reads the entry and its tag versions with
/// one `MGET` (pipelined `GET`s where a cluster puts them in different slots), and no other
/// command names more than one key, so nothing spans hash slots on a cluster.
///
/// ```no_run
/// # async fn example() -> Result<(), tower_redis_cache::StoreError> {
/// use std::time::Duration;
/// use tower_redis_cache::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .pool_size(4)
///     .command_timeout(Duration::from_millis(200))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    tag_version_ttl: Duration,
    /// Evictions wait for this many replicas, this long (see
    /// [`RedisStoreBuilder::wait_for_replicas`]), on a connection of their own: `WAIT` blocks
    /// the connection it is sent on, which must not hold up the pool's lookups.
    wait_for_replicas: Option<(u32, Duration, Client)>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("clients", &self.pool.size())
            .field("tag_version_ttl", &self.tag_version_ttl)
            .finish()
    }
}

/// Configures and connects a [`RedisStore`]. Made by [`RedisStore::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    pool_size: usize,
    connection_timeout: Duration,
    command_timeout: Duration,
    tag_version_ttl: Duration,
    wait_for_replicas: Option<(u32, Duration)>,
    tls: TlsSettings,
}

/// One round trip of reads (see [`RedisStore::read`]).
pub(super) struct Read<'a> {
    pub(super) key: &'a str,
    pub(super) tags: &'a [String],
    /// Also read how long the entry has left.
    pub(super) read_ttl: bool,
    /// Take this lease, for this holder, for this long before reading.
    pub(super) lease: Option<(&'a str, u64, Duration)>,
}

/// What [`RedisStore::read`] found.
pub(super) struct ReadReply {
    pub(super) lookup: Lookup,
    /// How long the entry has left, when asked for and it has an expiry.
    pub(super) ttl: Option<Duration>,
    /// Whether the lease asked for was taken.
    pub(super) leased: bool,
}

impl RedisStore {
    /// Starts configuring a store for a Redis URL: `redis://`, `rediss://` (TLS),
    /// `redis-cluster://`, `redis-sentinel://` or `redis+unix://`, as `fred` reads them.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            pool_size: default_pool_size(),
            connection_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_millis(500),
            tag_version_ttl: DEFAULT_TAG_VERSION_TTL,
            wait_for_replicas: None,
            tls: TlsSettings::default(),
        }
    }

    /// Connects to `url` with the default settings.
    pub async fn from_url(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build().await
    }

    /// The pool, for the tiered store's announcements and evictions.
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A lookup, in one round trip: first `lease` taken (`SET NX PX`) when there is one,
    /// then the entry and its tag versions, then, with `read_ttl`, how long the entry has left.
    ///
    /// The entry and its tag versions are read with one `MGET` where they share a hash slot
    /// (always, off a cluster): one command for Redis to parse and answer and one reply to read,
    /// which is half the cost of a hit. On a cluster, keys in different slots are read with one
    /// `GET` each, pipelined.
    pub(super) async fn read(&self, read: Read<'_>) -> Result<ReadReply, StoreError> {
        let Read { key, tags, read_ttl, lease } = read;
        let client = self.pool.next();
        let mut keys = Vec::with_capacity(tags.len() + 1);
        keys.push(key);
        keys.extend(tags.iter().map(String::as_str));
        let one_command = !client.is_clustered() || one_slot(&keys);
        if one_command && lease.is_none() && !read_ttl {
            // A plain lookup (every hit's): one command, with no pipeline around it.
            let values: Vec<Value> =
                client.mget(keys).await.map_err(redis_error("Redis lookup failed"))?;
            let lookup = entry_and_versions(values, tags)?;
            return Ok(ReadReply { lookup, ttl: None, leased: false });
        }
        let pipeline = client.pipeline();
        if let Some((lease, holder, ttl)) = lease {
            let _: () = pipeline
                .set(lease, holder.to_string(), Some(px(ttl)), Some(SetOptions::NX), false)
                .await
                .map_err(redis_error("cannot queue SET NX"))?;
        }
        if one_command {
            let _: () = pipeline.mget(keys).await.map_err(redis_error("cannot queue MGET"))?;
        } else {
            for key in keys {
                let _: () = pipeline.get(key).await.map_err(redis_error("cannot queue GET"))?;
            }
        }
        if read_ttl {
            let _: () = pipeline.pttl(key).await.map_err(redis_error("cannot queue PTTL"))?;
        }
        let mut values: Vec<Value> =
            pipeline.all().await.map_err(redis_error("Redis lookup failed"))?;
        // PTTL is negative for a key without expiry (-1) or without a value (-2).
        let ttl = match read_ttl {
            true => values.pop().and_then(|v| v.as_i64()).and_then(|ms| u64::try_from(ms).ok()),
            false => None,
        };
        // `SET NX` answers `OK` when it set the key, nil when the key was there.
        let leased = match lease {
            Some(_) if values.is_empty() => {
                return Err(StoreError::msg("Redis lookup returned no reply to SET NX"))
            }
            Some(_) => !values.remove(0).is_null(),
            None => false,
        };
        if one_command {
            values = match (values.pop(), values.is_empty()) {
                (Some(Value::Array(replies)), true) => replies,
                _ => return Err(StoreError::msg("Redis MGET returned an unexpected reply")),
            };
        }
        Ok(ReadReply {
            lookup: entry_and_versions(values, tags)?,
            ttl: ttl.map(Duration::from_millis),
            leased,
        })
    }

    /// The client evictions go through: the connection kept for them when they wait for
    /// replicas, else any of the pool's.
    pub(super) fn eviction_client(&self) -> &Client {
        match &self.wait_for_replicas {
            Some((_, _, evictions)) => evictions,
            None => self.pool.next(),
        }
    }

    /// After the eviction of `tags` that `client` sent: waits for the replicas, when the store
    /// was built to (see [`RedisStoreBuilder::wait_for_replicas`]).
    pub(super) async fn replicate_eviction(
        &self,
        client: &Client,
        tags: &[String],
    ) -> Result<(), StoreError> {
        match &self.wait_for_replicas {
            Some((replicas, timeout, _)) => replicated(client, tags, *replicas, *timeout).await,
            None => Ok(()),
        }
    }

    /// Queues on `pipeline` a fresh version for each of `tags`.
    pub(super) async fn queue_evictions(
        &self,
        pipeline: &Pipeline<Client>,
        tags: &[String],
    ) -> Result<(), StoreError> {
        for tag in tags {
            let _: () = pipeline
                .set(
                    tag.as_str(),
                    fresh_version().to_string(),
                    self.tag_version_expiry(),
                    None,
                    false,
                )
                .await
                .map_err(redis_error("cannot queue SET"))?;
        }
        Ok(())
    }

    fn tag_version_expiry(&self) -> Option<Expiration> {
        let secs = i64::try_from(self.tag_version_ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        Some(Expiration::EX(secs))
    }
}

/// Waits until the evictions of `tags` that `client` just made are on `replicas` replicas of
/// each primary that took them, or on every replica it has connected if that is fewer.
async fn replicated(
    client: &Client,
    tags: &[String],
    replicas: u32,
    timeout: Duration,
) -> Result<(), StoreError> {
    let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let wanted = i64::from(replicas);
    if !client.is_clustered() {
        return wait_on(client, wanted, timeout).await;
    }
    // On a cluster, `WAIT` on the connection to each primary that took one of the evictions.
    let routing = client.cached_cluster_state().ok_or_else(|| {
        StoreError::msg("Redis Cluster: no cluster state to find the primaries").unavailable()
    })?;
    let mut primaries: Vec<Server> = tags
        .iter()
        .filter_map(|tag| routing.get_server(redis_keyslot(tag.as_bytes())))
        .cloned()
        .collect();
    primaries.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    primaries.dedup();
    for primary in primaries {
        wait_on(&client.with_cluster_node(primary), wanted, timeout).await?;
    }
    Ok(())
}

/// `WAIT` on `client`'s connection for `wanted` replicas, or for every replica the primary
/// has connected if that is fewer (none: nothing to wait for, as on a primary whose replica
/// was just promoted away from it).
async fn wait_on<C: ServerInterface>(
    client: &C,
    wanted: i64,
    timeout: i64,
) -> Result<(), StoreError> {
    let info: String = client
        .info(Some(InfoKind::Replication))
        .await
        .map_err(redis_error("Redis INFO replication failed"))?;
    let connected = info
        .lines()
        .find_map(|line| line.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse::<i64>().ok())
        .ok_or_else(|| StoreError::msg("Redis INFO replication: no connected_slaves"))?;
    let wanted = wanted.min(connected);
    if wanted == 0 {
        return Ok(());
    }
    let acknowledged: i64 =
        client.wait(wanted, timeout).await.map_err(redis_error("Redis WAIT failed"))?;
    match acknowledged >= wanted {
        true => Ok(()),
        false => Err(StoreError::msg(format!(
            "eviction acknowledged by {acknowledged} of {wanted} replicas in time"
        ))),
    }
}

/// Half the cores, at least 1 and at most 8 (see [`RedisStoreBuilder::pool_size`]).
fn default_pool_size() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores / 2).clamp(1, 8)
}

impl RedisStoreBuilder {
    /// How many connections the pool keeps (default: half the cores, at least 1 and at most 8).
    ///
    /// `fred` pipelines commands from many tasks over each connection, writing them out
    /// together when several are queued. Fewer connections queue more commands each, so Redis
    /// and this process both do less per command: on 2 cores, one connection served 15–20%
    /// more hits than four (see `BENCHMARKS.md`). More cores keep more connections busy.
    /// Misses go the other way: on a 2-core machine their latency stayed closer to the inner
    /// service's with four connections than with one, since each miss sends five commands.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long connecting (TCP, TLS, `AUTH`) may take (default 2 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long one command may take before the client gives up on it (default 500 ms). The
    /// layer's own [`store_timeout`](crate::CacheLayerBuilder::store_timeout) is usually shorter.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long a tag version lives in Redis after it was last set by an eviction or kept by a
    /// stored entry (default 24 h; one a miss made lives
    /// [`PROVISIONAL_TAG_VERSION_TTL`](crate::store::PROVISIONAL_TAG_VERSION_TTL) unless its
    /// entry is stored). When it expires, the entries that recorded it become misses, so keep
    /// it longer than the longest entry TTL; it bounds the memory templated tags such as
    /// `user:{id}` take.
    pub fn tag_version_ttl(mut self, ttl: Duration) -> Self {
        self.tag_version_ttl = ttl;
        self
    }

    /// Makes every eviction wait until `replicas` replicas of the primary that took it have it
    /// too (`WAIT`), up to `timeout`; on a cluster, the replicas of each primary it touched.
    /// Off by default.
    ///
    /// Replication is asynchronous: an eviction that a primary acknowledged and then lost,
    /// dying before its replica received it, is undone by the failover that promotes the
    /// replica. The tags' old versions come back, and with them the entries the write had
    /// made stale. Waiting closes that window, at the cost of two more round trips (`INFO
    /// replication`, then `WAIT`) on every write that evicts, on a connection kept for
    /// evictions, so that lookups never queue behind a `WAIT`.
    ///
    /// An eviction counts once `replicas` replicas, or every replica the primary has
    /// connected if that is fewer, acknowledged it. Past `timeout` it counts as failed: the
    /// write's response still leaves, and, as for any failed eviction, this process bypasses
    /// the cache for the evicted tags and retries the eviction in the background until it is
    /// acknowledged. Other processes keep serving the entries until then, as they would if the
    /// store were down.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_for_replicas = Some((replicas, timeout));
        self
    }

    /// Verifies the server's TLS certificate against the certificate authorities in this PEM
    /// instead of the system's: for a server whose certificate a private CA signed.
    ///
    /// Only for TLS URLs (`rediss://`, `rediss-cluster://`, `rediss-sentinel://`); with any
    /// other, [`build`](Self::build) fails. A PEM that holds no certificate fails there too.
    #[cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs")))
    )]
    pub fn tls_ca_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain and private key (both PEM) to servers that ask for
    /// one: mutual TLS (`tls-auth-clients yes`).
    ///
    /// Only for TLS URLs, as [`tls_ca_certificates`](Self::tls_ca_certificates).
    #[cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs"))]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "tls-rustls-ring", feature = "tls-rustls-aws-lc-rs")))
    )]
    pub fn tls_client_certificate(
        mut self,
        certificate_chain_pem: impl Into<Vec<u8>>,
        private_key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client_certificate = Some((certificate_chain_pem.into(), private_key_pem.into()));
        self
    }

    /// The `fred` configuration for the URL, with TLS built by this crate.
    pub(super) fn config(&self) -> Result<Config, StoreError> {
        tls::fred_config(&self.url, &self.tls)
    }

    /// Builds the pool and waits for its first connection.
    ///
    /// Fails when the URL is invalid or the server cannot be reached within the connection
    /// timeout. Once connected, the clients reconnect by themselves (exponential backoff from
    /// 100 ms to 1 s, with jitter, without limit), and the layer serves from the inner service
    /// meanwhile.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        if self.pool_size == 0 {
            return Err(StoreError::msg("option `pool_size`: must be at least 1"));
        }
        // `WAIT` with a timeout of 0 blocks until the replicas answer, however long.
        if self.wait_for_replicas.is_some_and(|(n, timeout)| n == 0 || timeout.as_millis() == 0) {
            return Err(StoreError::msg(
                "option `wait_for_replicas`: needs at least 1 replica and a timeout of at least \
                 1 ms",
            ));
        }
        let config = self.config()?;
        let connection_timeout = self.connection_timeout;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = connection_timeout;
                c.internal_command_timeout = connection_timeout;
                // A cache read is worthless once it is late: never replay it after a reconnect.
                c.max_command_attempts = 1;
                c.tcp = TcpConfig { nodelay: Some(true), ..Default::default() };
            })
            .with_performance_config(|p| p.default_command_timeout = self.command_timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 1_000, 2))
            .build_pool(self.pool_size)
            .map_err(|e| StoreError::from_source("cannot build the Redis pool", e))?;
        match tokio::time::timeout(self.connection_timeout, pool.init()).await {
            Ok(Ok(_connection_task)) => {}
            Ok(Err(e)) => return Err(StoreError::from_source("cannot connect to Redis", e)),
            Err(_) => {
                let _ = pool.quit().await;
                return Err(StoreError::msg("cannot connect to Redis: timed out"));
            }
        }
        let wait_for_replicas = match self.wait_for_replicas {
            None => None,
            Some((replicas, timeout)) => {
                let evictions = pool.next().clone_new();
                match tokio::time::timeout(self.connection_timeout, evictions.init()).await {
                    Ok(Ok(_connection_task)) => Some((replicas, timeout, evictions)),
                    _ => return Err(StoreError::msg("cannot connect to Redis for evictions")),
                }
            }
        };
        Ok(RedisStore { pool, tag_version_ttl: self.tag_version_ttl, wait_for_replicas })
    }
}

pub(super) fn redis_error(context: &'static str) -> impl FnOnce(fred::error::Error) -> StoreError {
    move |e| {
        // Redis not answering, as opposed to Redis refusing the command (OOM, READONLY, ...).
        let unreachable = matches!(
            e.kind(),
            ErrorKind::IO
                | ErrorKind::Timeout
                | ErrorKind::Canceled
                | ErrorKind::Backpressure
                | ErrorKind::Cluster
        );
        let error = StoreError::from_source(context, e);
        if unreachable {
            error.unavailable()
        } else {
            error
        }
    }
}

/// A `PX` expiry of `ttl`, at least a millisecond.
pub(super) fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

/// The replies to reading an entry and its tags, in that order, as a [`Lookup`].
fn entry_and_versions(mut values: Vec<Value>, tags: &[String]) -> Result<Lookup, StoreError> {
    if values.len() != tags.len() + 1 {
        return Err(StoreError::msg("Redis lookup returned an unexpected number of replies"));
    }
    let versions = values.split_off(1).into_iter().map(parse_version).collect();
    let entry = values.pop().and_then(Value::into_bytes);
    Ok(Lookup { entry, versions })
}

/// Whether all `keys` hash to one cluster slot, so that one command may name them all.
fn one_slot(keys: &[&str]) -> bool {
    let mut slots = keys.iter().map(|key| redis_keyslot(key.as_bytes()));
    let first = slots.next();
    slots.all(|slot| Some(slot) == first)
}

/// The expiry of a tag version made for a miss, until an entry carrying it is stored.
fn provisional_expiry() -> Expiration {
    Expiration::EX(PROVISIONAL_TAG_VERSION_TTL.as_secs() as i64)
}

/// Reads a tag version written by this store; anything else (foreign or corrupt) is `None`.
fn parse_version(value: Value) -> Option<TagVersion> {
    let bytes = value.into_bytes()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}

#[async_trait]
impl Store for RedisStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        let read = Read { key, tags, read_ttl: false, lease: None };
        Ok(self.read(read).await?.lookup)
    }

    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        let client = self.pool.next();
        let pipeline = client.pipeline();
        for tag in tags {
            let _: () = pipeline
                .set(
                    tag.as_str(),
                    fresh_version().to_string(),
                    Some(provisional_expiry()),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(redis_error("cannot queue SET"))?;
            let _: () =
                pipeline.get(tag.as_str()).await.map_err(redis_error("cannot queue GET"))?;
        }
        let values: Vec<Value> =
            pipeline.all().await.map_err(redis_error("Redis tag version update failed"))?;
        let mut versions = Vec::with_capacity(tags.len());
        for (tag, current) in tags.iter().zip(values.into_iter().skip(1).step_by(2)) {
            match parse_version(current) {
                Some(version) => versions.push(version),
                None => {
                    // Something else sits under the tag's key: replace it, which is what an
                    // eviction would do and so is always safe.
                    let version = fresh_version();
                    let _: () = client
                        .set(
                            tag.as_str(),
                            version.to_string(),
                            Some(provisional_expiry()),
                            None,
                            false,
                        )
                        .await
                        .map_err(redis_error("cannot replace a corrupt tag version"))?;
                    versions.push(version);
                }
            }
        }
        if versions.len() != tags.len() {
            return Err(StoreError::msg("Redis returned an unexpected number of tag versions"));
        }
        Ok(versions)
    }

    async fn keep_tag_versions(&self, tags: &[String]) -> Result<(), StoreError> {
        if tags.is_empty() {
            return Ok(());
        }
        let secs = i64::try_from(self.tag_version_ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        // One key per command, so it works unchanged on a cluster.
        let pipeline = self.pool.next().pipeline();
        for tag in tags {
            let _: () = pipeline
                .expire(tag.as_str(), secs, None)
                .await
                .map_err(redis_error("cannot queue EXPIRE"))?;
        }
        let _: Vec<Value> =
            pipeline.all().await.map_err(redis_error("Redis tag version EXPIRE failed"))?;
        Ok(())
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.pool
            .set::<(), _, _>(key, value, Some(px(ttl)), None, false)
            .await
            .map_err(redis_error("Redis SET failed"))
    }

    async fn acquire_lease(
        &self,
        key: &str,
        holder: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = self
            .pool
            .set(key, holder.to_string(), Some(px(ttl)), Some(SetOptions::NX), false)
            .await
            .map_err(redis_error("Redis lease SET NX failed"))?;
        Ok(set.is_some())
    }

    /// Compare and delete, in one script: a lease that expired and was taken by another
    /// instance is theirs.
    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        let released: Result<i64, _> = RELEASE_LEASE
            .evalsha_with_reload(self.pool.next(), vec![key], vec![holder.to_string()])
            .await;
        released.map(drop).map_err(redis_error("Redis lease release failed"))
    }

    /// A set per URL (`SADD`), which lives as long as tag versions do after its last entry was
    /// stored.
    async fn add_to_index(&self, index: &str, key: &str, _: Duration) -> Result<(), StoreError> {
        let lifetime = i64::try_from(self.tag_version_ttl.as_millis()).unwrap_or(i64::MAX);
        let pipeline = self.pool.next().pipeline();
        let queued: Result<(), _> = pipeline.sadd(index, key).await;
        queued.map_err(redis_error("Redis index SADD failed"))?;
        let queued: Result<(), _> = pipeline.pexpire(index, lifetime, None).await;
        queued.map_err(redis_error("Redis index PEXPIRE failed"))?;
        pipeline.all::<()>().await.map_err(redis_error("Redis index write failed"))
    }

    async fn index_members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        self.pool.smembers(index).await.map_err(redis_error("Redis index SMEMBERS failed"))
    }

    async fn acquire_lease_then_lookup(
        &self,
        lease: &str,
        holder: u64,
        ttl: Duration,
        key: &str,
        tags: &[String],
    ) -> Result<(bool, Lookup), StoreError> {
        let read = Read { key, tags, read_ttl: false, lease: Some((lease, holder, ttl)) };
        let reply = self.read(read).await?;
        Ok((reply.leased, reply.lookup))
    }

    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        if tags.is_empty() {
            return Ok(());
        }
        let client = self.eviction_client();
        let pipeline = client.pipeline();
        self.queue_evictions(&pipeline, tags).await?;
        let _: Vec<Value> = pipeline.all().await.map_err(redis_error("Redis eviction failed"))?;
        self.replicate_eviction(client, tags).await
    }
}
