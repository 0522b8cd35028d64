//! The guarantees, end to end, through axum, against a private `redis-server`:
//! no cross-user leaks, no stale read after a write (including the slow-miss race, across
//! instances, and across a store outage), and a cache that never breaks the service.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use support::cluster::RedisCluster;
use support::redis::RedisServer;
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_redis_cache::clock::ManualClock;
use tower_redis_cache::{CacheHandle, CacheLayer, RedisStore, Rule, Store, TieredStore};

/// A stand-in for a database, with a way to hold a read after it has read its row.
#[derive(Default)]
struct Db {
    rows: Mutex<HashMap<String, String>>,
    reads: AtomicUsize,
    hold_next_read: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

type Shared = Arc<Db>;

async fn read_user(State(db): State<Shared>, Path(id): Path<String>) -> (StatusCode, String) {
    db.reads.fetch_add(1, Ordering::SeqCst);
    let row = db.rows.lock().unwrap().get(&id).cloned();
    let hold = db.hold_next_read.lock().unwrap().take();
    if let Some((has_read, release)) = hold {
        has_read.notify_one();
        release.notified().await;
    }
    match row {
        Some(row) => (StatusCode::OK, row),
        None => (StatusCode::NOT_FOUND, "no such user".into()),
    }
}

async fn write_user(State(db): State<Shared>, Path(id): Path<String>, body: String) -> StatusCode {
    db.rows.lock().unwrap().insert(id, body);
    StatusCode::OK
}

fn auth(headers: &HeaderMap) -> Option<String> {
    headers.get("authorization").map(|v| v.to_str().unwrap().to_owned())
}

async fn me(headers: HeaderMap) -> (StatusCode, String) {
    match auth(&headers) {
        Some(token) => (StatusCode::OK, format!("me:{token}")),
        None => (StatusCode::UNAUTHORIZED, "who are you?".into()),
    }
}

/// Personalises its answer although its route is neither per-user nor shared: the layer must
/// keep credentialed answers out of the shared entry.
async fn feed(headers: HeaderMap) -> String {
    format!("feed:{}", auth(&headers).unwrap_or_else(|| "anonymous".into()))
}

async fn app(redis_url: &str, db: Shared) -> (Router, CacheHandle) {
    let store = RedisStore::builder(redis_url)
        .command_timeout(Duration::from_millis(200))
        .connection_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    app_on(store, db)
}

/// The test app over an L1 in front of Redis.
async fn tiered_app(redis_url: &str, db: Shared) -> (Router, CacheHandle, TieredStore) {
    let store = TieredStore::builder(redis_url)
        .redis(|redis| {
            redis
                .command_timeout(Duration::from_millis(200))
                .connection_timeout(Duration::from_millis(500))
        })
        .build()
        .await
        .unwrap();
    let (router, handle) = app_on(store.clone(), db);
    (router, handle, store)
}

fn app_on(store: impl Store, db: Shared) -> (Router, CacheHandle) {
    let cache = CacheLayer::builder(store)
        .store_timeout(Duration::from_millis(50))
        .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]))
        .route("/users/{id}", Rule::put().evicts(["users", "user:{id}"]))
        .route("/me", Rule::get().per_user())
        .route("/feed", Rule::get())
        .route("/public", Rule::get().shared())
        .build()
        .unwrap();
    let handle = cache.handle();
    let router = Router::new()
        .route("/users/{id}", get(read_user).put(write_user))
        .route("/me", get(me))
        .route("/feed", get(feed))
        .route("/public", get(|| async { "public" }))
        .with_state(db)
        .layer(cache);
    (router, handle)
}

struct Reply {
    status: StatusCode,
    x_cache: String,
    body: String,
}

async fn send(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", token);
    }
    let response = router
        .clone()
        .oneshot(request.body(axum::body::Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let x_cache =
        response.headers().get("x-cache").map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, x_cache, body: String::from_utf8(bytes.to_vec()).unwrap() }
}

async fn get_path(router: &Router, path: &str) -> Reply {
    send(router, Method::GET, path, None, "").await
}

/// Waits until the background write of an entry has reached Redis.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_is_ever_served_to_another_user() {
    let server = RedisServer::start();
    let (router, handle) = app(&server.url(), Shared::default()).await;
    let users = 50;
    let mut rng = fastrand::Rng::with_seed(2026);
    let mut checked = 0;
    for _round in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..64 {
            let user = rng.usize(..=users); // `users` stands for "anonymous"
            let token = (user < users).then(|| format!("Bearer u{user}"));
            let path = ["/me", "/feed", "/public"][rng.usize(..3)];
            let router = router.clone();
            batch.push(tokio::spawn(async move {
                let reply = send(&router, Method::GET, path, token.as_deref(), "").await;
                (path, token, reply)
            }));
        }
        for task in batch {
            let (path, token, reply) = task.await.unwrap();
            let expected = match (path, &token) {
                ("/me", Some(token)) => format!("me:{token}"),
                ("/me", None) => "who are you?".to_owned(),
                ("/feed", Some(token)) => format!("feed:{token}"),
                ("/feed", None) => "feed:anonymous".to_owned(),
                _ => "public".to_owned(),
            };
            assert_eq!(reply.body, expected, "{path} as {token:?} ({})", reply.x_cache);
            if path == "/feed" && token.is_some() {
                assert_eq!(
                    reply.x_cache, "BYPASS",
                    "credentialed requests to a default route bypass"
                );
            }
            checked += 1;
        }
    }
    let stats = handle.stats();
    assert_eq!(checked, 40 * 64);
    assert!(stats.hits > 1_000, "the cache must actually serve most of these: {stats:?}");
    assert_eq!(stats.store_errors, 0, "{stats:?}");
}

#[tokio::test]
async fn a_slow_miss_that_read_old_data_is_never_served_after_the_write() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "old".into());
    let (router, _) = app(&server.url(), db.clone()).await;

    let (has_read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    *db.hold_next_read.lock().unwrap() = Some((has_read.clone(), release.clone()));
    let slow_read = tokio::spawn({
        let router = router.clone();
        async move { get_path(&router, "/users/1").await }
    });
    has_read.notified().await; // the slow read has read "old" and is still computing

    let write = send(&router, Method::PUT, "/users/1", None, "new").await;
    assert_eq!(write.status, StatusCode::OK);

    release.notify_one();
    let slow = slow_read.await.unwrap();
    assert_eq!((slow.x_cache.as_str(), slow.body.as_str()), ("MISS", "old"));
    settle().await; // its entry, computed from old data, is now in Redis

    let after = get_path(&router, "/users/1").await;
    assert_eq!((after.x_cache.as_str(), after.body.as_str()), ("MISS", "new"));
    settle().await;
    let cached = get_path(&router, "/users/1").await;
    assert_eq!((cached.x_cache.as_str(), cached.body.as_str()), ("HIT", "new"));
}

/// Two layer instances with their own clients on one Redis (a server or a cluster): an entry
/// one stores is the other's hit, and a write through one evicts for both.
async fn two_instances_share_entries_and_evictions(url: &str) {
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "v1".into());
    let (a, a_handle) = app(url, db.clone()).await;
    let (b, b_handle) = app(url, db.clone()).await;

    assert_eq!(get_path(&a, "/users/1").await.x_cache, "MISS");
    settle().await;
    let from_b = get_path(&b, "/users/1").await;
    assert_eq!((from_b.x_cache.as_str(), from_b.body.as_str()), ("HIT", "v1"));

    send(&b, Method::PUT, "/users/1", None, "v2").await;
    let from_a = get_path(&a, "/users/1").await;
    assert_eq!((from_a.x_cache.as_str(), from_a.body.as_str()), ("MISS", "v2"));
    assert_eq!(db.reads.load(Ordering::SeqCst), 2);
    assert_eq!(a_handle.stats().store_errors + b_handle.stats().store_errors, 0);
}

#[tokio::test]
async fn instances_sharing_redis_share_entries_and_evictions() {
    let server = RedisServer::start();
    two_instances_share_entries_and_evictions(&server.url()).await;
}

/// Calls of `command` Redis has served (`INFO commandstats`).
fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

/// Every command Redis has served (`INFO commandstats`).
fn all_command_calls(server: &RedisServer) -> u64 {
    let stats = server.command(&["INFO", "commandstats"]).unwrap_or_default();
    stats
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(":calls="))
        .filter(|(command, _)| *command != "info")
        .map(|(_, rest)| rest.split(',').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A hit reads its entry and the versions of its tags with one command, so one round trip
/// (guarantee 5 of the design), whatever the number of tags.
#[tokio::test]
async fn a_hit_costs_one_redis_command() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "v0".into());
    let (router, _) = app(&server.url(), db).await;
    get_path(&router, "/users/1").await;
    // The miss's background work is over once its entry is in Redis and its lease is gone: no
    // request may look before then, or it could take (and later give back) a lease of its own.
    loop {
        let keys = server.keys();
        if keys.contains(":e:") && !keys.contains(":lease") {
            break;
        }
        settle().await;
    }
    let (before, mgets) = (all_command_calls(&server), command_calls(&server, "mget"));
    for _ in 0..20 {
        assert_eq!(get_path(&router, "/users/1").await.x_cache, "HIT");
    }
    assert_eq!(all_command_calls(&server) - before, 20, "one command per hit");
    assert_eq!(command_calls(&server, "mget") - mgets, 20, "an MGET of the entry and its tags");
}

/// Two instances with an L1 each, in front of one Redis, with their own clients: hits come
/// from the L1 at no Redis cost, and a write through either is out of the other's L1 before
/// its response leaves (the other confirms the announcement), round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_instances_drop_what_the_other_changes_from_their_l1() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "v0".into());
    let (a, a_handle, a_store) = tiered_app(&server.url(), db.clone()).await;
    let (b, b_handle, _) = tiered_app(&server.url(), db.clone()).await;
    assert!(a_store.l1_in_use());
    get_path(&a, "/users/1").await;
    settle().await;
    assert_eq!(get_path(&b, "/users/1").await.x_cache, "HIT", "from Redis, into b's L1");

    let reads = command_calls(&server, "get") + command_calls(&server, "mget");
    for instance in [&a, &b].repeat(50) {
        let hit = get_path(instance, "/users/1").await;
        assert_eq!((hit.x_cache.as_str(), hit.body.as_str()), ("HIT", "v0"));
    }
    let reads_after = command_calls(&server, "get") + command_calls(&server, "mget");
    assert_eq!(reads_after, reads, "100 hits from the L1s, none from Redis");

    for round in 1..=40 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let value = format!("v{round}");
        // Both L1s hold the current entry.
        for instance in [writer, reader] {
            while get_path(instance, "/users/1").await.x_cache != "HIT" {
                settle().await;
            }
        }
        assert_eq!(
            send(writer, Method::PUT, "/users/1", None, &value).await.status,
            StatusCode::OK
        );
        // The eviction returned once the reader confirmed it dropped the tags: no window.
        for instance in [reader, writer] {
            let seen = get_path(instance, "/users/1").await;
            assert_eq!(seen.body, value, "round {round}: stale after the write");
        }
    }
    assert_eq!(a_handle.stats().store_errors + b_handle.stats().store_errors, 0);
}

/// A lost subscription (Redis restarted) takes the L1 out of use until it is back, so
/// announcements missed meanwhile cannot leave stale entries in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_store_stops_using_its_l1_while_it_cannot_hear_the_others() {
    let mut server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "v1".into());
    let (a, _, a_store) = tiered_app(&server.url(), db.clone()).await;
    get_path(&a, "/users/1").await;
    settle().await;
    assert_eq!(get_path(&a, "/users/1").await.x_cache, "HIT");

    server.kill();
    let killed = Instant::now();
    while a_store.l1_in_use() {
        assert!(killed.elapsed() < Duration::from_secs(5), "the L1 was still trusted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = get_path(&a, "/users/1").await;
    assert_eq!((during.x_cache.as_str(), during.body.as_str()), ("MISS", "v1"), "not from the L1");

    server.restart();
    let restarted = Instant::now();
    while !a_store.l1_in_use() {
        assert!(restarted.elapsed() < Duration::from_secs(10), "the subscription never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.rows.lock().unwrap().insert("1".into(), "v2".into()); // the restarted Redis is empty
    let after = Instant::now();
    loop {
        let reply = get_path(&a, "/users/1").await;
        assert_eq!(reply.body, "v2", "nothing from before the restart");
        if reply.x_cache == "HIT" {
            break;
        }
        assert!(after.elapsed() < Duration::from_secs(10), "hits did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_while_redis_is_killed_and_restarted() {
    let mut server = RedisServer::start();
    let db = Shared::default();
    for id in 0..20 {
        db.rows.lock().unwrap().insert(id.to_string(), format!("user {id}"));
    }
    let (router, handle) = app(&server.url(), db.clone()).await;
    for id in 0..20 {
        get_path(&router, &format!("/users/{id}")).await;
    }
    settle().await;

    let total = 2_016;
    let concurrency = 32;
    let mut answered = 0;
    let mut restarted_at = None;
    for wave in 0..total / concurrency {
        if wave == 20 {
            server.kill();
        }
        if wave == 40 {
            server.restart();
            restarted_at = Some(Instant::now());
        }
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let router = router.clone();
                let id = (wave * concurrency + i) % 20;
                tokio::spawn(async move { (id, get_path(&router, &format!("/users/{id}")).await) })
            })
            .collect();
        for task in tasks {
            let (id, reply) = task.await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, format!("user {id}"));
            answered += 1;
        }
    }
    assert_eq!(answered, total);
    let stats = handle.stats();
    assert!(stats.store_errors > 0, "the outage must have been seen");
    assert!(stats.breaker_opened > 0 && stats.store_skipped > 0, "the breaker spared the rest");

    // Hits come back once Redis does (the restarted server is empty: one miss refills it).
    let restarted_at = restarted_at.unwrap();
    loop {
        let reply = get_path(&router, "/users/3").await;
        assert_eq!(reply.body, "user 3");
        if reply.x_cache == "HIT" {
            break;
        }
        assert!(restarted_at.elapsed() < Duration::from_secs(15), "hits did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("hits resumed {:?} after redis-server restarted", restarted_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_a_redis_stall_never_lets_the_old_entry_back() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "old".into());
    let (router, handle) = app(&server.url(), db.clone()).await;
    get_path(&router, "/users/1").await;
    settle().await;
    assert_eq!(get_path(&router, "/users/1").await.x_cache, "HIT");

    server.pause(); // Redis stalls with the old entry in it
    let write = send(&router, Method::PUT, "/users/1", None, "new").await;
    assert_eq!(write.status, StatusCode::OK, "the write succeeds without the cache");
    let during = get_path(&router, "/users/1").await;
    assert_eq!((during.x_cache.as_str(), during.body.as_str()), ("BYPASS", "new"));

    server.resume();
    reads_stay_fresh_until_the_eviction_lands(&router).await;
    // The eviction lands even while the circuit breaker the stall opened is still open; the
    // route is cached again once the breaker lets lookups through.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        settle().await;
        let cached = get_path(&router, "/users/1").await;
        assert_eq!(cached.body, "new", "served the entry from before the write");
        if cached.x_cache == "HIT" {
            break;
        }
        assert!(Instant::now() < deadline, "never cached again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handle.stats().store_errors > 0);
}

/// Reads `/users/1` (which was written "new") until the retried eviction has reached Redis and
/// the route is cached again; every read on the way must be fresh.
async fn reads_stay_fresh_until_the_eviction_lands(router: &Router) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get_path(router, "/users/1").await;
        assert_eq!(reply.body, "new", "served the entry from before the write ({})", reply.x_cache);
        if reply.x_cache != "BYPASS" {
            return;
        }
        assert!(Instant::now() < deadline, "the eviction never reached Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis refuses writes (full, `maxmemory` with `noeviction`) but still answers reads: the
/// eviction of a write fails while the old entry stays readable. It must not be served.
#[tokio::test]
async fn a_write_whose_eviction_redis_refuses_never_lets_the_old_entry_back() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "old".into());
    let (router, handle) = app(&server.url(), db.clone()).await;
    get_path(&router, "/users/1").await;
    settle().await;
    assert_eq!(get_path(&router, "/users/1").await.x_cache, "HIT");

    server.command(&["CONFIG", "SET", "maxmemory", "1"]).unwrap(); // every SET now fails: OOM
    let write = send(&router, Method::PUT, "/users/1", None, "new").await;
    assert_eq!(write.status, StatusCode::OK, "the write succeeds without the cache");
    for _ in 0..5 {
        let during = get_path(&router, "/users/1").await;
        assert_eq!((during.x_cache.as_str(), during.body.as_str()), ("BYPASS", "new"));
    }

    server.command(&["CONFIG", "SET", "maxmemory", "0"]).unwrap();
    reads_stay_fresh_until_the_eviction_lands(&router).await;
    assert!(handle.stats().store_errors > 0);
}

/// Requests `/users/{0..20}` in waves of 8 while `stall` keeps Redis from answering; each must
/// be answered correctly and wait at most about the store timeout (50 ms) for the cache, not
/// for the stall. Returns how long the slowest took.
async fn requests_during_a_stall(router: &Router, stall: Duration) -> Duration {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < stall - Duration::from_millis(500) {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let router = router.clone();
                tokio::spawn(async move {
                    let id = fastrand::usize(..20);
                    let sent = Instant::now();
                    let reply = get_path(&router, &format!("/users/{id}")).await;
                    assert_eq!((reply.status, reply.body), (StatusCode::OK, format!("user {id}")));
                    sent.elapsed()
                })
            })
            .collect();
        for task in tasks {
            slowest = slowest.max(task.await.unwrap());
        }
    }
    slowest
}

/// A stalled Redis (`CLIENT PAUSE`, then `DEBUG SLEEP`): no request waits for it longer than
/// the store timeout, the breaker then stops asking it, and hits resume once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_each_request_at_most_the_store_timeout_and_the_breaker_skips_it() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let db = Shared::default();
    for id in 0..20 {
        db.rows.lock().unwrap().insert(id.to_string(), format!("user {id}"));
    }
    let (router, handle) = app(&server.url(), db).await;
    for id in 0..20 {
        get_path(&router, &format!("/users/{id}")).await;
    }
    settle().await;
    let stall = Duration::from_secs(3);
    for how in [&["CLIENT", "PAUSE", "3000", "ALL"][..], &["DEBUG", "SLEEP", "3"]] {
        let before = handle.stats();
        let command: Vec<String> = how.iter().map(|s| s.to_string()).collect();
        let port = server.port();
        // DEBUG SLEEP blocks the connection that sends it: send it from a thread of its own.
        let stalling = std::thread::spawn(move || {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            support::redis::command_on(port, &args)
        });
        tokio::time::sleep(Duration::from_millis(100)).await; // the stall has begun
        let slowest = requests_during_a_stall(&router, stall).await;
        let stats = handle.stats();
        println!(
            "{}: slowest request {slowest:?}; store calls failed {}, skipped {}",
            how.join(" "),
            stats.store_errors - before.store_errors,
            stats.store_skipped - before.store_skipped
        );
        // Far below the 3 s stall: the store timeout is 50 ms, the rest is scheduling.
        assert!(slowest < Duration::from_millis(750), "{}: {slowest:?}", how.join(" "));
        assert!(stats.breaker_opened > before.breaker_opened, "{}", how.join(" "));
        assert!(stats.store_skipped > before.store_skipped, "{}", how.join(" "));
        stalling.join().unwrap();

        // Answering again: the breaker's next probe finds it, and the entries are hits again.
        let back = Instant::now();
        while get_path(&router, "/users/3").await.x_cache != "HIT" {
            assert!(back.elapsed() < Duration::from_secs(10), "hits did not resume");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("{}: hits resumed {:?} after the stall", how.join(" "), back.elapsed());
    }
}

/// Redis full (`maxmemory` with `noeviction`): writes fail, reads still hit, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_writes_and_every_request_is_still_served() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let db = Shared::default();
    for id in 0..10 {
        db.rows.lock().unwrap().insert(id.to_string(), format!("user {id}"));
    }
    let (router, handle) = app(&server.url(), db.clone()).await;
    for id in 0..5 {
        get_path(&router, &format!("/users/{id}")).await;
    }
    settle().await;
    server.command(&["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    for round in 0..3 {
        for id in 0..10 {
            let reply = get_path(&router, &format!("/users/{id}")).await;
            assert_eq!((reply.status, reply.body), (StatusCode::OK, format!("user {id}")));
            let expected = if id < 5 { "HIT" } else { "MISS" };
            assert_eq!(reply.x_cache, expected, "round {round}, user {id}");
        }
        settle().await;
    }
    let stats = handle.stats();
    assert!(stats.store_errors >= 15, "refused writes are counted: {stats:?}");
    assert_eq!(stats.breaker_opened, 0, "a full Redis still answers: no reason to stop reading");
}

/// A read-only replica: entries written through the primary are hits, its own writes are
/// refused, and a write's eviction it refuses keeps the old entry from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_serves_hits_and_refuses_writes_without_failing_a_request() {
    let primary = RedisServer::start();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let db = Shared::default();
    for id in 0..3 {
        db.rows.lock().unwrap().insert(id.to_string(), format!("user {id}"));
    }
    let (through_primary, _) = app(&primary.url(), db.clone()).await;
    let (through_replica, handle) = app(&replica.url(), db.clone()).await;
    get_path(&through_primary, "/users/1").await;
    settle().await;
    let replicated = Instant::now();
    while get_path(&through_replica, "/users/1").await.x_cache != "HIT" {
        assert!(replicated.elapsed() < Duration::from_secs(10), "the entry never replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for _ in 0..3 {
        let reply = get_path(&through_replica, "/users/2").await;
        assert_eq!((reply.status, reply.x_cache.as_str()), (StatusCode::OK, "MISS"));
        assert_eq!(reply.body, "user 2");
        settle().await;
    }
    let write = send(&through_replica, Method::PUT, "/users/1", None, "new").await;
    assert_eq!(write.status, StatusCode::OK);
    let after = get_path(&through_replica, "/users/1").await;
    assert_eq!((after.x_cache.as_str(), after.body.as_str()), ("BYPASS", "new"));
    let stats = handle.stats();
    assert!(stats.store_errors >= 3, "READONLY replies are counted: {stats:?}");
    assert_eq!(stats.breaker_opened, 0, "a replica that answers is not down");
}

#[tokio::test]
async fn corrupt_or_foreign_values_under_the_cache_keys_are_misses_and_get_replaced() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "one".into());
    let (router, _) = app(&server.url(), db.clone()).await;
    get_path(&router, "/users/1").await;
    settle().await;
    let keys = server.keys();
    let entry_key =
        keys.lines().find(|l| l.starts_with("trc:v1:e:")).expect("an entry key").to_owned();

    // Foreign values, and the crate's own entry damaged: cut short, or in an older format.
    let foreign = ["", "not an entry", "TRC\u{1}\u{ff}\u{ff}\u{ff}\u{ff}", "{\"json\":true}"];
    let damaged = [
        "string.sub(v, 1, #v - 1)",
        "string.sub(v, 1, 12)",
        "'TRC\\1' .. string.sub(v, 5)",
        "string.sub(v, 1, 6) .. '\\255\\255\\255\\255' .. string.sub(v, 11)",
    ];
    let cases = foreign.iter().map(|value| ("SET", *value)).chain(damaged.map(|lua| ("EVAL", lua)));
    for (how, what) in cases {
        match how {
            "SET" => server.command(&["SET", &entry_key, what]).unwrap(),
            _ => {
                let script = format!(
                    "local v = redis.call('GET', KEYS[1]); return redis.call('SET', KEYS[1], {what})"
                );
                let reply = server.command(&["EVAL", &script, "1", &entry_key]).unwrap();
                assert!(reply.starts_with("+OK"), "{what}: {reply}");
                reply
            }
        };
        let reply = get_path(&router, "/users/1").await;
        assert_eq!(
            (reply.status, reply.x_cache.as_str(), reply.body.as_str()),
            (StatusCode::OK, "MISS", "one"),
            "{what}"
        );
        settle().await;
        let reply = get_path(&router, "/users/1").await;
        assert_eq!(
            (reply.x_cache.as_str(), reply.body.as_str()),
            ("HIT", "one"),
            "overwritten by a good entry after {what}"
        );
    }
    // A foreign type under the key (a list) is an error from Redis: still served.
    server.command(&["DEL", &entry_key]).unwrap();
    server.command(&["LPUSH", &entry_key, "x"]).unwrap();
    let reply = get_path(&router, "/users/1").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "one"));
}

#[tokio::test]
async fn odd_methods_and_unusual_paths_pass_through() {
    let server = RedisServer::start();
    let (router, _) = app(&server.url(), Shared::default()).await;
    for method in ["PURGE", "PROPFIND", "TRACE", "OPTIONS"] {
        let reply =
            send(&router, Method::from_bytes(method.as_bytes()).unwrap(), "/users/1", None, "")
                .await;
        assert_eq!(reply.x_cache, "BYPASS", "{method}");
    }
    for path in [
        "/users/%FF%FE",
        "/users/..%2F..%2Fetc",
        &format!("/users/{}", "9".repeat(8_000)),
        "/users/a%00b",
    ] {
        let reply = get_path(&router, path).await;
        // axum's own answers: 400 for a parameter that is not UTF-8, else the handler's 404.
        assert!([StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND].contains(&reply.status), "{path}");
        assert!(reply.x_cache == "MISS" || reply.x_cache == "BYPASS", "{path}: {}", reply.x_cache);
    }
}

#[tokio::test]
async fn eviction_works_unchanged_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    two_instances_share_entries_and_evictions(&cluster.url()).await;
}

/// One cache layer per instance, each with its own Redis client, all on one server.
async fn layers_on(
    url: &str,
    instances: usize,
    pattern: &str,
    rule: impl Fn() -> Rule,
    clock: &ManualClock,
) -> Vec<CacheLayer> {
    let mut layers = Vec::new();
    for _ in 0..instances {
        let store = RedisStore::builder(url).build().await.unwrap();
        let cache = CacheLayer::builder(store)
            .store_timeout(Duration::from_millis(500))
            .clock(clock.clone())
            .route(pattern, rule());
        layers.push(cache.build().unwrap());
    }
    layers
}

/// Sends `n` concurrent GETs for `path`, spread over `instances` in turn.
async fn fan_out(instances: &[Router], n: usize, path: &'static str) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let router = instances[i % instances.len()].clone();
            tokio::spawn(async move { get_path(&router, path).await })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

/// Stampede protection across instances: 500 concurrent requests for one cold key, spread over
/// three layer instances with their own Redis clients, reach the inner service once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_key_hit_by_500_requests_through_three_instances_is_computed_once() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "one".into());
    let slow_read = |db: Shared| {
        move |Path(id): Path<String>| {
            let db = db.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await; // a slow query
                read_user(State(db), Path(id)).await
            }
        }
    };
    let instances: Vec<Router> =
        layers_on(&server.url(), 3, "/slow/{id}", Rule::get, &ManualClock::new())
            .await
            .into_iter()
            .map(|cache| Router::new().route("/slow/{id}", get(slow_read(db.clone()))).layer(cache))
            .collect();
    for reply in fan_out(&instances, 500, "/slow/1").await {
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "one"));
    }
    assert_eq!(db.reads.load(Ordering::SeqCst), 1, "one request computed the entry");
}

/// stale-while-revalidate across instances: one background refresh in all, whoever serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_entry_is_refreshed_once_across_three_instances() {
    let server = RedisServer::start();
    let db = Shared::default();
    db.rows.lock().unwrap().insert("1".into(), "v1".into());
    let rule =
        || Rule::get().ttl(Duration::from_secs(60)).stale_while_revalidate(Duration::from_secs(30));
    let clock = ManualClock::new(); // the instances' machines agree on the time
    let instances: Vec<Router> = layers_on(&server.url(), 3, "/users/{id}", rule, &clock)
        .await
        .into_iter()
        .map(|cache| {
            Router::new().route("/users/{id}", get(read_user)).with_state(db.clone()).layer(cache)
        })
        .collect();
    get_path(&instances[0], "/users/1").await;
    settle().await;
    db.rows.lock().unwrap().insert("1".into(), "v2".into());
    clock.advance(Duration::from_secs(61)); // now stale

    let replies = fan_out(&instances, 60, "/users/1").await;
    for reply in &replies {
        // Served at once: the stale entry, or, for requests that came after the one refresh
        // landed, its result. Never a wait for the inner service.
        let served = (reply.x_cache.as_str(), reply.body.as_str());
        assert!(served == ("STALE", "v1") || served == ("HIT", "v2"), "{served:?}");
    }
    assert!(replies.iter().any(|r| r.x_cache == "STALE"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(db.reads.load(Ordering::SeqCst), 2, "the first read and one refresh");
    let fresh = get_path(&instances[2], "/users/1").await;
    assert_eq!((fresh.x_cache.as_str(), fresh.body.as_str()), ("HIT", "v2"));
}

/// The users API's JSON, stored compressed and not: what Redis holds for it (MEMORY USAGE).
#[tokio::test]
async fn compressed_entries_take_a_fraction_of_the_redis_memory() {
    let server = RedisServer::start();
    let users: Vec<String> = (1..=500)
        .map(|id| {
            format!(
                r#"{{"id":{id},"name":"User {id}","email":"user{id}@example.com","age":{}}}"#,
                20 + id % 50
            )
        })
        .collect();
    let json = format!("[{}]", users.join(","));
    let mut usage = Vec::new();
    for (prefix, compress) in [("plain", false), ("zstd", true)] {
        let store = RedisStore::from_url(server.url()).await.unwrap();
        let builder = CacheLayer::builder(store).key_prefix(prefix).route("/users", Rule::get());
        let cache = if compress { builder } else { builder.without_compression() }.build().unwrap();
        let body = json.clone();
        let router = Router::new().route("/users", get(move || async move { body })).layer(cache);
        get_path(&router, "/users").await;
        settle().await;
        let keys = server.command(&["KEYS", &format!("{prefix}:v1:e:*")]).unwrap();
        let key = keys.lines().find(|l| l.starts_with(prefix)).expect("the entry").to_owned();
        let bytes: u64 = server
            .command(&["MEMORY", "USAGE", &key])
            .unwrap()
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert_eq!(get_path(&router, "/users").await.body, json, "{prefix}: served whole");
        usage.push(bytes);
    }
    println!(
        "users_api JSON, {} bytes: Redis holds {} bytes plain, {} bytes zstd ({:.1}%)",
        json.len(),
        usage[0],
        usage[1],
        100.0 * usage[1] as f64 / usage[0] as f64
    );
    assert!(usage[1] * 3 < usage[0], "{usage:?}");
}
