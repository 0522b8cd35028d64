//! End-to-end tests of the examples: the built `users_api`, `proxy`, `slow_upstream`, `hyper`,
//! `grpc` and `custom_store` binaries run as child processes and are driven over HTTP (and gRPC, by the `grpc`
//! example's own client).
//!
//! A plain `cargo test` builds the examples first; `cargo test --test examples` does not, so run
//! `cargo build --examples` before it. A missing or out-of-date binary fails the test with a
//! message saying so.
//!
//! The Redis runs use a private `redis-server` on a free port (tests/support). The PostgreSQL run
//! needs a server at `postgres://postgres@127.0.0.1:5432/test` (or `TEST_POSTGRES_URL`); without
//! one it is skipped with a note, unless `CI` is set, where it fails.
//!
//! The `users_api` live page (`/cache`) is checked in Debian's headless Chromium (`chromium` on
//! `PATH` or at `/usr/bin/chromium`); without it that test is skipped with a note, unless `CI`
//! is set, where it fails (`.ci/run` installs it).
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::redis::{free_port, RedisServer};

/// How long an example may take to start answering.
const STARTUP: Duration = Duration::from_secs(30);
/// How long a response may take to reach the store after it was served.
const STORE_WAIT: Duration = Duration::from_secs(3);
/// The environment the examples read; cleared so that the caller's shell cannot leak in.
const EXAMPLE_ENV: [&str; 11] = [
    "BIND",
    "SERVER",
    "REDIS_URL",
    "DATABASE_URL",
    "UPSTREAM_URL",
    "CACHE_TTL_SECS",
    "CACHE_STORE",
    "CACHE_L1_BYTES",
    "DELAY_MS",
    "USERS",
    "RUST_LOG",
];

static RUNS: AtomicUsize = AtomicUsize::new(0);

// =============================================================================================
// users_api

#[tokio::test(flavor = "multi_thread")]
async fn users_api_in_process_store_and_sqlite_core_flow() {
    let app = Example::start("users_api", &[]).await;
    users_core_flow(&app.api()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_api_errors_are_json_and_bypass_routes_stay_uncached() {
    let app = Example::start("users_api", &[]).await;
    let api = app.api();

    // /health has no rule, /auth/* is bypassed: never cached.
    for _ in 0..2 {
        let health = api.get("/health", None).await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.cache, "BYPASS");
        assert_eq!(health.json(), json!({ "status": "ok" }));
    }
    for _ in 0..2 {
        let login = api.post_json("/auth/login", &json!({ "id": 1 })).await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        assert_eq!(login.cache, "BYPASS");
        assert_eq!(login.json()["token"], "1");
    }
    let bad_login = api.post_json("/auth/login", &json!({ "user": 1 })).await;
    assert_json_error(&bad_login, StatusCode::BAD_REQUEST);
    assert_eq!(bad_login.cache, "BYPASS");

    // /me needs a bearer user id, of a user that exists.
    let anonymous = api.get("/me", None).await;
    assert_json_error(&anonymous, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.cache, "BYPASS");
    let garbage = api.get("/me", Some("Bearer not-a-number")).await;
    assert_json_error(&garbage, StatusCode::UNAUTHORIZED);
    let basic = api.get("/me", Some("Basic YTpi")).await;
    assert_json_error(&basic, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        // Errors are never stored.
        let ghost = api.get("/me", Some("Bearer 999")).await;
        assert_json_error(&ghost, StatusCode::NOT_FOUND);
        assert_eq!(ghost.cache, "MISS");
    }

    // Prime the list, so that we can see that failed writes evict nothing.
    let list = api.get("/users", None).await;
    api.wait_stored("/users", None).await;

    let bad_bodies: [(&str, Option<&str>); 8] = [
        ("{not json", Some("application/json")),
        ("", Some("application/json")),
        ("[]", Some("application/json")),
        (r#"{"name":"x","email":"x@example.com"}"#, Some("application/json")),
        (r#"{"name":"x","age":3}"#, Some("application/json")),
        (r#"{"name":"x","email":"x@example.com","age":"old"}"#, Some("application/json")),
        (r#"{"name":7,"email":"x@example.com","age":3}"#, Some("application/json")),
        (r#"{"name":"x","email":"x@example.com","age":3}"#, None),
    ];
    for (body, content_type) in bad_bodies {
        for (method, path) in [(Method::POST, "/users"), (Method::PUT, "/users/1")] {
            let reply = api.send(method.clone(), path, None, content_type, body).await;
            assert_json_error(&reply, StatusCode::BAD_REQUEST);
            assert_eq!(reply.cache, "BYPASS", "{method} {path}");
        }
    }
    let empty_name =
        api.post_json("/users", &json!({ "name": " ", "email": "x@example.com", "age": 3 })).await;
    assert_json_error(&empty_name, StatusCode::BAD_REQUEST);

    let taken = api
        .post_json("/users", &json!({ "id": 1, "name": "Dup", "email": "d@example.com", "age": 1 }))
        .await;
    assert_json_error(&taken, StatusCode::CONFLICT);
    let missing = api
        .put_json("/users/12345", &json!({ "name": "N", "email": "n@example.com", "age": 1 }))
        .await;
    assert_json_error(&missing, StatusCode::NOT_FOUND);
    let gone = api.send(Method::DELETE, "/users/12345", None, None, "").await;
    assert_json_error(&gone, StatusCode::NOT_FOUND);
    let bad_id = api.get("/users/abc", None).await;
    assert_json_error(&bad_id, StatusCode::BAD_REQUEST);

    // None of the failed writes evicted anything.
    let still = api.get("/users", None).await;
    assert_eq!(still.cache, "HIT", "a failed write must not evict");
    assert_eq!(still.body, list.body);

    // An explicit, free id is used as given, and evicts the list.
    let chosen = api
        .post_json(
            "/users",
            &json!({ "id": 100, "name": "Hedy", "email": "hedy@example.com", "age": 40 }),
        )
        .await;
    assert_eq!(chosen.status, StatusCode::CREATED, "{}", chosen.body);
    assert_eq!(chosen.json()["id"], 100);
    let list = api.get("/users", None).await;
    assert_eq!(list.cache, "MISS");
    assert!(user_ids(&list.json()).contains(&100));

    // A path the router does not know still passes the layer.
    let unknown = api.get("/nope", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.cache, "BYPASS");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_api_redis_store_core_flow() {
    let redis = RedisServer::start();
    let app = Example::start("users_api", &[("REDIS_URL", redis.url())]).await;
    users_core_flow(&app.api()).await;

    let keys = redis.keys();
    assert!(keys.contains("trc:v1:e:"), "no entry keys in Redis: {keys}");
    assert!(keys.contains("trc:v1:t:users"), "no `users` tag version in Redis: {keys}");
    assert!(!keys.contains("Bearer"), "a raw token ended up in a key: {keys}");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_api_postgres_core_flow() {
    use sqlx::{Connection, Executor, PgConnection};

    let admin_url = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let connected =
        tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&admin_url)).await;
    let mut admin = match connected {
        Ok(Ok(connection)) => connection,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_owned(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("PostgreSQL at {admin_url} is unreachable in CI: {why}");
            }
            eprintln!(
                "\n!!!!!!!!\n!!! SKIPPED users_api_postgres_core_flow: PostgreSQL at {admin_url} is \
                 unreachable ({why}).\n!!! Start one or set TEST_POSTGRES_URL to run it.\n!!!!!!!!\n"
            );
            return;
        }
    };

    let name =
        format!("trc_users_api_{}_{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
    admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create the test database");
    let database_url = with_database(&admin_url, &name);

    // Run the flow in its own task, so that the database is dropped whatever happens to it.
    let flow = tokio::spawn(async move {
        let app = Example::start("users_api", &[("DATABASE_URL", database_url)]).await;
        users_core_flow(&app.api()).await;
        let log = app.log();
        assert!(log.contains("DATABASE_URL"), "the example did not use PostgreSQL:\n{log}");
    })
    .await;

    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("drop the test database");
    if let Err(e) = flow {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Reads, writes and per-user reads, checking that every write is seen by the next read and that
/// no user ever gets another's `/me`. Expects the seeded users 1 and 2.
async fn users_core_flow(api: &Api) {
    // The list: a miss, then a hit with the very same body.
    let first = api.get("/users", None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.cache, "MISS");
    let ids = user_ids(&first.json());
    assert!(ids.starts_with(&[1, 2]), "seeded users missing: {}", first.body);
    api.wait_stored("/users", None).await;
    let second = api.get("/users", None).await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(second.body, first.body);

    // A create evicts the list: the next read is a miss that shows the new user.
    let created = api
        .post_json(
            "/users",
            &json!({ "name": "Alan Turing", "email": "alan@example.com", "age": 41 }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.cache, "BYPASS");
    let user = created.json();
    let id = user["id"].as_i64().expect("the created user has an id");
    assert!(!ids.contains(&id), "id {id} reused");
    assert_eq!(user["name"], "Alan Turing");
    assert_eq!(user["email"], "alan@example.com");
    assert_eq!(user["age"], 41);
    let list = api.get("/users", None).await;
    assert_eq!(list.cache, "MISS", "stale list after a create");
    assert!(list.json().as_array().unwrap().contains(&user), "{}", list.body);

    // One user: miss, hit; an update is seen by the next read of it and of the list.
    let path = format!("/users/{id}");
    let one = api.get(&path, None).await;
    assert_eq!((one.status, one.cache.as_str()), (StatusCode::OK, "MISS"));
    assert_eq!(one.json(), user);
    api.wait_stored(&path, None).await;
    let again = api.get(&path, None).await;
    assert_eq!(again.cache, "HIT");
    assert_eq!(again.body, one.body);
    api.wait_stored("/users", None).await;

    let changes = json!({ "name": "Alan M. Turing", "email": "turing@example.com", "age": 42 });
    let updated = api.put_json(&path, &changes).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(updated.cache, "BYPASS");
    let expected =
        json!({ "id": id, "name": "Alan M. Turing", "email": "turing@example.com", "age": 42 });
    assert_eq!(updated.json(), expected);
    let fresh = api.get(&path, None).await;
    assert_eq!(fresh.cache, "MISS", "stale user after an update");
    assert_eq!(fresh.json(), expected);
    let list = api.get("/users", None).await;
    assert_eq!(list.cache, "MISS", "stale list after an update");
    assert!(list.json().as_array().unwrap().contains(&expected));

    // A delete: the user is gone for the next reads.
    api.wait_stored(&path, None).await;
    let deleted = api.send(Method::DELETE, &path, None, None, "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    assert_eq!(deleted.cache, "BYPASS");
    let missing = api.get(&path, None).await;
    assert_json_error(&missing, StatusCode::NOT_FOUND);
    assert_ne!(missing.cache, "HIT");
    let list = api.get("/users", None).await;
    assert_eq!(list.cache, "MISS");
    assert!(!user_ids(&list.json()).contains(&id));

    // Concurrent creates without ids all succeed, with distinct ids.
    let creates = (0..6).map(|i| {
        let api = api.clone();
        tokio::spawn(async move {
            let body = json!({ "name": format!("Racer {i}"), "email": format!("r{i}@example.com"), "age": i });
            let reply = api.post_json("/users", &body).await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
            reply.json()["id"].as_i64().unwrap()
        })
    });
    let mut new_ids = Vec::new();
    for create in creates {
        new_ids.push(create.await.unwrap());
    }
    new_ids.sort_unstable();
    new_ids.dedup();
    assert_eq!(new_ids.len(), 6, "concurrent creates shared ids: {new_ids:?}");
    let list = api.get("/users", None).await;
    assert_eq!(list.cache, "MISS");
    let ids = user_ids(&list.json());
    assert!(new_ids.iter().all(|id| ids.contains(id)), "{}", list.body);

    me_isolation(api).await;
}

/// `/me` is cached per user: each bearer gets its own record, never the other's, and a write to
/// users is seen by the next `/me`.
async fn me_isolation(api: &Api) {
    let one = api.get("/me", Some("Bearer 1")).await;
    assert_eq!((one.status, one.cache.as_str()), (StatusCode::OK, "MISS"), "{}", one.body);
    assert_eq!(one.json()["id"], 1);
    api.wait_stored("/me", Some("Bearer 1")).await;

    // User 1's entry is stored: user 2 must not get it.
    let two = api.get("/me", Some("Bearer 2")).await;
    assert_eq!(two.status, StatusCode::OK, "{}", two.body);
    assert_eq!(two.cache, "MISS", "user 2 was served from user 1's entry");
    assert_eq!(two.json()["id"], 2);
    api.wait_stored("/me", Some("Bearer 2")).await;

    for _ in 0..3 {
        for (token, reply) in [("Bearer 1", &one), ("Bearer 2", &two)] {
            let again = api.get("/me", Some(token)).await;
            assert_eq!(again.cache, "HIT", "{token}");
            assert_eq!(again.body, reply.body, "{token} got another user's record");
        }
    }

    // A write to user 1 evicts `/me` too (tag `users`).
    let renamed = json!({ "name": "Ada King", "email": "ada@example.com", "age": 36 });
    let put = api.put_json("/users/1", &renamed).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    let fresh = api.get("/me", Some("Bearer 1")).await;
    assert_eq!(fresh.cache, "MISS", "stale /me after an update");
    assert_eq!(fresh.json()["name"], "Ada King");
    let other = api.get("/me", Some("Bearer 2")).await;
    assert_eq!(other.json()["id"], 2);
    assert_eq!(other.json()["name"], two.json()["name"]);
}

fn user_ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {list}"))
        .iter()
        .map(|user| user["id"].as_i64().expect("a user id"))
        .collect()
}

fn assert_json_error(reply: &Reply, status: StatusCode) {
    assert_eq!(reply.status, status, "body: {}", reply.body);
    let body: Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|_| panic!("error body is not JSON: {:?}", reply.body));
    let message = body["error"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no `error` message in {body}");
}

/// `postgres://.../test?x` with the database `name` instead of `test`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

// =============================================================================================
// users_api: /metrics and the /cache page

/// The counters the page shows, which nothing but the test's traffic may move.
const PAGE_COUNTERS: [&str; 5] = ["hits", "misses", "stale", "bypasses", "stores"];
/// How long headless Chromium may take to load the page and run its script.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn users_api_serves_prometheus_metrics_with_buckets_outside_the_cache() {
    let app = Example::start("users_api", &[]).await;
    let api = app.api();
    api.get("/users", None).await;
    api.wait_stored("/users", None).await;
    assert_eq!(api.get("/users", None).await.cache, "HIT");

    let before = cache_stats(&app).await;
    let client = http_client();
    let response = client.get(format!("http://{}/metrics", app.addr())).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    assert!(response.headers().get("x-cache").is_none(), "/metrics passed the cache layer");
    let metrics = response.text().await.unwrap();
    // The exporter counts what `Stats` counts. How many misses there were depends on the
    // machine: a HEAD probe of `wait_stored` that runs before the store lands is a miss too.
    let (hits, misses) = (&before["hits"], &before["misses"]);
    for series in [
        format!("{}{hits}\n", r#"tower_redis_cache_requests_total{route="/users",outcome="hit"} "#),
        format!(
            "{}{misses}\n",
            r#"tower_redis_cache_requests_total{route="/users",outcome="miss"} "#
        ),
        // Buckets, not summaries: the Grafana dashboard's histogram_quantile needs them.
        r#"tower_redis_cache_request_duration_seconds_bucket{route="/users",outcome="hit",le="#
            .to_owned(),
        r#"tower_redis_cache_store_duration_seconds_bucket{operation="lookup",le="#.to_owned(),
    ] {
        assert!(metrics.contains(&series), "/metrics has no `{series}`:\n{metrics}");
    }
    assert!(!metrics.contains("quantile=\""), "a histogram rendered as a summary:\n{metrics}");

    // Scrapes and the page are outside the layer: they count nowhere.
    for path in ["/metrics", "/cache", "/cache/stats", "/cache?every=100"] {
        let response = client.get(format!("http://{}{path}", app.addr())).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(response.headers().get("x-cache").is_none(), "{path} passed the cache layer");
    }
    let after = cache_stats(&app).await;
    for counter in PAGE_COUNTERS {
        assert_eq!(after[counter], before[counter], "{counter} moved: {before} then {after}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_api_cache_page_shows_the_stats_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "chromium is not installed (not on PATH, not /usr/bin/chromium), and CI is set: \
                 .ci/run installs it (apt-get install chromium)"
            );
        }
        eprintln!(
            "\n!!!!!!!!\n!!! SKIPPED users_api_cache_page_shows_the_stats_in_headless_chromium: \
             no `chromium` on PATH or at /usr/bin/chromium.\n!!! Install it (Debian: \
             apt-get install chromium) to run it.\n!!!!!!!!\n"
        );
        return;
    };
    assert_page_built_in("users_api", "examples/dashboard/cache.html");
    let app = Example::start("users_api", &[]).await;
    let api = app.api();

    // Three misses, then nine hits (the probes of wait_stored count too; the page says what
    // /cache/stats says, whatever the numbers).
    let paths = ["/users", "/users/1", "/users/2"];
    for path in paths {
        assert_eq!(api.get(path, None).await.cache, "MISS", "{path}");
        api.wait_stored(path, None).await;
    }
    for _ in 0..3 {
        for path in paths {
            assert_eq!(api.get(path, None).await.cache, "HIT", "{path}");
        }
    }

    // Without JavaScript, the server-rendered figures.
    let stats = cache_stats(&app).await;
    let page = http_client()
        .get(format!("http://{}/cache", app.addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_page_shows(&page, &stats, "the page as served");
    assert!(!page.contains("{{"), "a placeholder was left unfilled:\n{page}");

    // With JavaScript: the script polls every 200 ms, in virtual time.
    let dom = dump_dom(&chromium, &format!("http://{}/cache?every=200", app.addr())).await;
    let after = cache_stats(&app).await;
    for counter in PAGE_COUNTERS {
        // The page's own requests (its polls, no favicon) stay outside the layer.
        assert_eq!(after[counter], stats[counter], "{counter} moved: {stats} then {after}");
    }
    assert_page_shows(&dom, &after, "the page in Chromium");

    // The script ran: it polled more than once, said so, and drew the chart.
    let polls: u64 = body_attribute(&dom, "data-polls").parse().unwrap();
    assert!(polls >= 2, "the script polled {polls} times in Chromium:\n{dom}");
    let updated: u64 = body_attribute(&dom, "data-updated").parse().unwrap();
    assert!(updated >= stats["server_time_ms"].as_u64().unwrap(), "data-updated {updated}");
    assert_eq!(element_text(&dom, "status"), "live, every 200 ms");
    for line in ["chart-hit-p50", "chart-hit-p95", "chart-miss-p50", "chart-miss-p95"] {
        let path = element_attribute(&dom, line, "d");
        assert!(path.starts_with('M') && path.contains('L'), "#{line} has no line: {path:?}");
    }
    for rate in ["hits-rate", "misses-rate", "stale-rate", "bypasses-rate"] {
        assert_eq!(
            element_text(&dom, rate),
            "0.0/s",
            "#{rate}: no traffic while the page was open"
        );
    }
}

/// `GET /cache/stats`.
async fn cache_stats(app: &Example) -> Value {
    let url = format!("http://{}/cache/stats", app.addr());
    let response = http_client().get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Checks the figures `html` shows against `stats`, formatted as the page formats them.
fn assert_page_shows(html: &str, stats: &Value, what: &str) {
    for counter in PAGE_COUNTERS {
        assert_eq!(element_text(html, counter), stats[counter].to_string(), "#{counter} in {what}");
    }
    let ratio = stats["hit_ratio"].as_f64().unwrap();
    assert_eq!(
        element_text(html, "hit-ratio"),
        format!("{:.1} %", (ratio * 1000.0).round() / 10.0)
    );
    for (outcome, summary) in [("hit", "recent_hit_latency_ms"), ("miss", "recent_miss_latency_ms")]
    {
        let summary = &stats[summary];
        assert!(summary["count"].as_u64().unwrap() > 0, "no recent {outcome}s: {stats}");
        assert_eq!(element_text(html, &format!("{outcome}-count")), summary["count"].to_string());
        for quantile in ["p50", "p95"] {
            let shown = element_text(html, &format!("{outcome}-{quantile}"));
            let ms = summary[quantile].as_f64().unwrap();
            assert_eq!(shown, format_millis(ms), "#{outcome}-{quantile} in {what} ({ms} ms)");
        }
    }
}

/// `0.12 ms`, `12.3 ms`, `123 ms`, rounded half up, as the page writes latencies.
fn format_millis(ms: f64) -> String {
    let digits = if ms >= 100.0 {
        0
    } else if ms >= 10.0 {
        1
    } else {
        2
    };
    let scale = 10f64.powi(digits);
    format!("{:.*} ms", digits as usize, (ms * scale).round() / scale)
}

/// The text of the element with `id` (its first text, up to a child element).
fn element_text(html: &str, id: &str) -> String {
    let at = html.find(&format!(r#"id="{id}""#)).unwrap_or_else(|| panic!("no #{id} in:\n{html}"));
    let text = &html[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].trim().to_owned()
}

/// The attribute `name` of the element with `id`.
fn element_attribute(html: &str, id: &str, name: &str) -> String {
    let at = html.find(&format!(r#"id="{id}""#)).unwrap_or_else(|| panic!("no #{id} in:\n{html}"));
    let tag = &html[html[..at].rfind('<').unwrap()..];
    attribute(&tag[..tag.find('>').unwrap()], name)
        .unwrap_or_else(|| panic!("#{id} has no {name}: {tag}"))
}

/// The attribute `name` of `<body>`.
fn body_attribute(html: &str, name: &str) -> String {
    let tag = &html[html.find("<body").expect("a <body>")..];
    attribute(&tag[..tag.find('>').unwrap()], name)
        .unwrap_or_else(|| panic!("<body> has no {name}: {tag}"))
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let value = &tag[tag.find(&format!(r#" {name}=""#))? + name.len() + 3..];
    Some(value[..value.find('"')?].to_owned())
}

/// Debian's `chromium`, on `PATH` or at `/usr/bin/chromium`.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|candidate| candidate.is_file())
}

/// Loads `url` in headless Chromium and returns the DOM once the page's timers have had
/// 4 s of virtual time (which passes as fast as the page lets it), with a profile of its own.
async fn dump_dom(chromium: &Path, url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "trc-chromium-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            // Root in a container has no sandbox to use.
            "--no-sandbox",
            "--disable-gpu",
            // A small /dev/shm (containers) would crash the renderer.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-proxy-server",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROWSER_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("chromium did not dump {url} within {BROWSER_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromium.display()));
    let _ = std::fs::remove_dir_all(&profile);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed ({}):\n{stderr}", output.status);
    let dom = String::from_utf8(output.stdout).expect("the DOM is UTF-8");
    assert!(dom.contains("</html>"), "chromium dumped no page:\n{dom}\n{stderr}");
    dom
}

/// Fails when the example `name` was built before `file`, which it embeds (`include_str!`) but
/// `example_binary` does not look at.
fn assert_page_built_in(name: &str, file: &str) {
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let binary = example_binary(name);
    assert!(
        modified(&binary) >= modified(&source),
        "example binary {} is older than {file}: run `cargo build --examples` first",
        binary.display()
    );
}

// =============================================================================================
// proxy

#[tokio::test(flavor = "multi_thread")]
async fn proxy_in_process_store_caches_gets_and_isolates_credentials() {
    let upstream = Upstream::start().await;
    let proxy = Example::start(
        "proxy",
        &[("UPSTREAM_URL", upstream.url()), ("CACHE_TTL_SECS", "30".to_owned())],
    )
    .await;
    proxy_flow(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_reads_targeted_cache_control_before_cache_control() {
    let upstream = Upstream::start().await;
    let env =
        [("UPSTREAM_URL", upstream.url()), ("CACHE_TARGETED_FIELD", "proxy-cache-control".into())];
    let proxy = Example::start("proxy", &env).await;
    let api = proxy.api();
    // `CDN-Cache-Control` lets the proxy keep what browsers may not.
    let for_cdns = "/t/cdn?cache-control=no-store&cdn-cache-control=max-age%3D60";
    assert_eq!(api.get(for_cdns, None).await.cache, "MISS");
    api.wait_stored(for_cdns, None).await;
    let hit = api.get(for_cdns, None).await;
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.headers["cache-control"], "no-store");
    assert_eq!(hit.headers["cdn-cache-control"], "max-age=60");
    // The proxy's own field wins over both.
    let own = "/t/own?cache-control=max-age%3D60&cdn-cache-control=max-age%3D60&proxy-cache-control=no-store";
    for round in 1..=2 {
        assert_eq!(api.get(own, None).await.cache, "MISS");
        assert_eq!(upstream.hits("GET /t/own"), round);
    }
    let bad = [("UPSTREAM_URL", upstream.url()), ("CACHE_TARGETED_FIELD", "bad name".into())];
    let (status, log) = run_to_exit("proxy", &[], &bad).await;
    assert!(
        !status.success() && log.contains("CACHE_TARGETED_FIELD must be a header name"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_revalidates_an_entry_that_varies_and_keeps_the_304s_headers() {
    let upstream = Upstream::start().await;
    let proxy = Example::start("proxy", &[("UPSTREAM_URL", upstream.url())]).await;
    let api = proxy.api();
    let path = "/r/greeting?etag=%22v1%22&vary=accept-language&cache-control=max-age%3D2";
    let english = one_header("accept-language", "en");
    let first = api.get_with(path, &english).await;
    assert_eq!((first.status, first.cache.as_str()), (StatusCode::OK, "MISS"));
    api.wait_stored_with(path, &english).await;
    assert_eq!(api.get_with(path, &english).await.cache, "HIT");
    let before = upstream.hits("GET /r/greeting");

    // Stale, but within the time it may be revalidated for: one conditional request, a 304.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let revalidated = api.get_with(path, &english).await;
    assert_eq!((revalidated.status, revalidated.cache.as_str()), (StatusCode::OK, "REVALIDATED"));
    assert_eq!(revalidated.body, first.body, "the stored body, which did not cross the wire");
    assert_eq!(upstream.hits("GET /r/greeting"), before + 1);
    let validated_at = revalidated.headers["x-validated-at-hit"].clone();
    // Stored again with the 304's headers.
    let hit = api.get_with(path, &english).await;
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.headers["x-validated-at-hit"], validated_at);
    assert_eq!(upstream.hits("GET /r/greeting"), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_adds_an_upstreams_early_hints_to_its_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends `103 Early Hints` before each answer, as no axum server can.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut head, mut buf) = (Vec::new(), [0; 1024]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                              HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\
                              Connection: close\r\n\r\nok";
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let proxy = Example::start("proxy", &[("UPSTREAM_URL", format!("http://{addr}"))]).await;
    let api = proxy.api();
    let first = api.get("/page", None).await;
    assert_eq!(
        (first.status, first.cache.as_str(), first.body.as_str()),
        (StatusCode::OK, "MISS", "ok")
    );
    assert_eq!(first.headers["link"], "</style.css>; rel=preload");
    api.wait_stored("/page", None).await;
    let hit = api.get("/page", None).await;
    assert_eq!(hit.cache, "HIT");
    assert_eq!(hit.headers.get_all("link").iter().count(), 1);
    assert_eq!(hit.headers["link"], "</style.css>; rel=preload");
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_serves_ranges_from_stored_bodies() {
    let upstream = Upstream::start().await;
    let proxy = Example::start("proxy", &[("UPSTREAM_URL", upstream.url())]).await;
    let api = proxy.api();
    let range = |value| one_header("range", value);
    // A range that misses goes to the upstream as it is, and its answer is not stored.
    let path = "/r/file?cache-control=max-age%3D60";
    let missed = api.get_with(path, &range("bytes=0-9")).await;
    assert_eq!(missed.cache, "MISS");
    let whole = api.get(path, None).await;
    assert_eq!(whole.cache, "MISS", "the ranged answer was stored");
    api.wait_stored(path, None).await;
    let length = whole.body.len();
    let part = api.get_with(path, &range("bytes=0-9")).await;
    assert_eq!((part.status, part.cache.as_str()), (StatusCode::PARTIAL_CONTENT, "HIT"));
    assert_eq!(part.body, whole.body[..10]);
    assert_eq!(part.headers["content-range"], format!("bytes 0-9/{length}").as_str());
    let suffix = api.get_with(path, &range("bytes=-5")).await;
    assert_eq!(suffix.body, whole.body[length - 5..]);
    let past = api.get_with(path, &range("bytes=999999-")).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(upstream.hits("GET /r/file"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_keys_only_on_what_responses_vary_on() {
    let upstream = Upstream::start().await;
    let proxy = Example::start("proxy", &[("UPSTREAM_URL", upstream.url())]).await;
    let api = proxy.api();
    let with = one_header;
    // The upstream ignores these headers, and says so by not varying on them: one entry.
    let plain = "/k/plain?cache-control=max-age%3D60";
    let identity = with("accept-encoding", "identity");
    assert_eq!(api.get_with(plain, &identity).await.cache, "MISS");
    api.wait_stored_with(plain, &identity).await;
    assert_eq!(api.get(plain, None).await.cache, "HIT");
    assert_eq!(api.get_with(plain, &with("accept-language", "fr")).await.cache, "HIT");
    let head = api.request(Method::HEAD, plain, &HeaderMap::new(), None, "").await;
    assert_eq!(head.cache, "HIT");
    assert_eq!(upstream.hits("GET /k/plain"), 1);
    // What it varies on splits the entries.
    let varied = "/k/varied?cache-control=max-age%3D60&vary=accept-language";
    for language in ["en", "fr"] {
        let headers = with("accept-language", language);
        api.get_with(varied, &headers).await;
        api.wait_stored_with(varied, &headers).await;
    }
    let en = api.get_with(varied, &with("accept-language", "en")).await;
    let fr = api.get_with(varied, &with("accept-language", "fr")).await;
    assert_eq!((en.cache.as_str(), fr.cache.as_str()), ("HIT", "HIT"));
    assert_ne!(en.json()["hit"], fr.json()["hit"], "each language its own answer");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_reads_dates_ages_and_directives_to_the_letter() {
    let upstream = Upstream::start().await;
    let proxy = Example::start("proxy", &[("UPSTREAM_URL", upstream.url())]).await;
    let api = proxy.api();
    let encode =
        |value: &str| form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    // An hour from now, as IMF-fixdate in lower case and as asctime.
    let fixdate = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let parts: Vec<&str> = fixdate.split_whitespace().collect();
    let asctime = format!(
        "{} {} {:>2} {} {}",
        parts[0].trim_end_matches(','),
        parts[2],
        parts[1].trim_start_matches('0'),
        parts[4],
        parts[3]
    );
    let stored = [
        format!("/d/lower?expires={}", encode(&fixdate.to_lowercase())),
        format!("/d/asctime?expires={}", encode(&asctime)),
        format!("/d/understood?cache-control={}", encode("max-age=60, must-understand, no-store")),
        format!("/d/ages?cache-control=max-age%3D60&age={}", encode("10, 0")),
    ];
    for path in &stored {
        assert_eq!(api.get(path, None).await.cache, "MISS", "{path}");
        api.wait_stored(path, None).await;
        assert_eq!(api.get(path, None).await.cache, "HIT", "{path}");
    }
    // An `Age` whose first member is not digits: stale, never stored.
    let old = format!("/d/old?cache-control=max-age%3D60&age={}", encode("old, 0"));
    for _ in 0..2 {
        assert_eq!(api.get(&old, None).await.cache, "MISS");
    }
    assert_eq!(upstream.hits("GET /d/old"), 2);
    // A language list in another order is the same request.
    let varied = "/d/languages?cache-control=max-age%3D60&vary=accept-language";
    let languages = |value| one_header("accept-language", value);
    api.get_with(varied, &languages("fr, en;q=0.5")).await;
    api.get_with(varied, &languages("fr, en;q=0.5")).await;
    api.wait_stored_with(varied, &languages("fr, en;q=0.5")).await;
    assert_eq!(api.get_with(varied, &languages("en;q=0.5 ,FR")).await.cache, "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_session_cookies_name_the_cookies_that_are_credentials() {
    let upstream = Upstream::start().await;
    let env = [("UPSTREAM_URL", upstream.url()), ("SESSION_COOKIES", "session, sid".into())];
    let proxy = Example::start("proxy", &env).await;
    let api = proxy.api();
    let anonymous = api.get("/c/page", None).await;
    api.wait_stored("/c/page", None).await;
    // Only analytics and preference cookies: an anonymous request.
    let tracked = api.get_with("/c/page", &one_header("cookie", "_ga=GA1.2.3; theme=dark")).await;
    assert_eq!((tracked.cache.as_str(), &tracked.body), ("HIT", &anonymous.body));
    // A session cookie: never the anonymous entry, nor stored for others.
    for round in 1..=2 {
        let signed_in = api.get_with("/c/page", &one_header("cookie", "_ga=1; session=abc")).await;
        assert_eq!(signed_in.cache, "MISS");
        assert_eq!(signed_in.json()["cookie"], "_ga=1; session=abc");
        assert_eq!(upstream.hits("GET /c/page"), 1 + round);
    }
    let bad = [("UPSTREAM_URL", upstream.url()), ("SESSION_COOKIES", " , ".into())];
    let (status, log) = run_to_exit("proxy", &[], &bad).await;
    assert!(!status.success() && log.contains("SESSION_COOKIES must name cookies"), "{log}");
}

/// The proxy over a private Redis, with `store_env` choosing the store: it caches, and what it
/// writes to Redis holds digests, never the credentials.
async fn proxy_over_redis_caches_gets_and_isolates_credentials(store_env: &[(&str, String)]) {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let mut env = vec![
        ("UPSTREAM_URL", upstream.url()),
        ("CACHE_TTL_SECS", "30".to_owned()),
        ("REDIS_URL", redis.url()),
    ];
    env.extend(store_env.iter().cloned());
    let proxy = Example::start("proxy", &env).await;
    proxy_flow(&proxy, &upstream).await;

    let keys = redis.keys();
    assert!(keys.contains("trc:v1:e:"), "no entry keys in Redis: {keys}");
    assert!(!keys.contains("alice"), "a raw token ended up in a key: {keys}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_redis_store_caches_gets_and_isolates_credentials() {
    proxy_over_redis_caches_gets_and_isolates_credentials(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_tiered_store_caches_gets_and_isolates_credentials() {
    // The entries are in Redis too, behind the in-process level.
    proxy_over_redis_caches_gets_and_isolates_credentials(&[
        ("CACHE_STORE", "tiered".to_owned()),
        ("CACHE_L1_BYTES", (8 * 1024 * 1024).to_string()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_answers_502_when_the_upstream_is_down() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let proxy = Example::start("proxy", &[("UPSTREAM_URL", closed)]).await;
    let api = proxy.api();
    for _ in 0..2 {
        let reply = api.get("/anything", None).await;
        assert_json_error(&reply, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.cache, "MISS", "a 502 must not be stored");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_without_upstream_url_exits_with_a_clear_error() {
    let (status, log) = run_to_exit("proxy", &[], &[]).await;
    assert!(!status.success(), "the proxy started without UPSTREAM_URL:\n{log}");
    assert!(log.contains("UPSTREAM_URL"), "the error does not name UPSTREAM_URL:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_cache_store_none_is_a_plain_proxy() {
    let upstream = Upstream::start().await;
    let proxy = Example::start(
        "proxy",
        &[
            ("UPSTREAM_URL", upstream.url()),
            ("CACHE_STORE", "none".to_owned()),
            // Ignored: `none` wins over the default choice that REDIS_URL makes.
            ("REDIS_URL", format!("redis://127.0.0.1:{}", free_port())),
        ],
    )
    .await;
    let client = http_client();
    for round in 1..=3 {
        let reply = client.get(format!("http://{}/items/7", proxy.addr())).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        assert!(reply.headers().get("x-cache").is_none(), "CACHE_STORE=none still has a cache");
        assert_eq!(reply.headers()["x-upstream"], "yes");
        assert_eq!(upstream.hits("GET /items/7"), round);
    }
    assert!(proxy.log().contains("CACHE_STORE=none"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_cache_store_memory_ignores_redis_url() {
    let upstream = Upstream::start().await;
    let unreachable = format!("redis://127.0.0.1:{}", free_port());
    let proxy = Example::start(
        "proxy",
        &[
            ("UPSTREAM_URL", upstream.url()),
            ("CACHE_STORE", "memory".to_owned()),
            ("REDIS_URL", unreachable),
        ],
    )
    .await;
    let api = proxy.api();
    assert_eq!(api.get("/items/8", None).await.cache, "MISS");
    api.wait_stored("/items/8", None).await;
    assert_eq!(api.get("/items/8", None).await.cache, "HIT");
    assert_eq!(upstream.hits("GET /items/8"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_cache_store_mistakes_exit_with_a_clear_error() {
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let (status, log) = run_to_exit(
        "proxy",
        &[],
        &[("UPSTREAM_URL", upstream.clone()), ("CACHE_STORE", "disk".to_owned())],
    )
    .await;
    assert!(!status.success(), "the proxy started with CACHE_STORE=disk:\n{log}");
    assert!(log.contains("CACHE_STORE must be"), "the error does not name CACHE_STORE:\n{log}");

    for store in ["redis", "tiered"] {
        let (status, log) = run_to_exit(
            "proxy",
            &[],
            &[("UPSTREAM_URL", upstream.clone()), ("CACHE_STORE", store.to_owned())],
        )
        .await;
        assert!(!status.success(), "CACHE_STORE={store} started without REDIS_URL:\n{log}");
        assert!(log.contains("needs REDIS_URL"), "CACHE_STORE={store}: {log}");
    }
}

async fn proxy_flow(proxy: &Example, upstream: &Upstream) {
    let api = proxy.api();

    // A GET: miss, then a hit with the same body and headers; the upstream saw one request.
    let path = "/items/1?b=2&a=1";
    let first = api.get(path, None).await;
    assert_eq!((first.status, first.cache.as_str()), (StatusCode::OK, "MISS"), "{}", first.body);
    let seen = first.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/items/1");
    assert_eq!(seen["query"], "b=2&a=1");
    assert_eq!(seen["authorization"], Value::Null);
    assert_eq!(seen["host"], upstream.addr.to_string(), "Host must be the upstream's");
    assert_eq!(seen["x_forwarded_host"], proxy.addr());
    assert_eq!(first.headers["x-upstream"], "yes");
    api.wait_stored(path, None).await;
    let second = api.get(path, None).await;
    assert_eq!(second.cache, "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["x-upstream"], "yes");
    assert_eq!(upstream.hits("GET /items/1"), 1);

    // Another query string is another entry.
    let other = api.get("/items/1?a=1", None).await;
    assert_eq!(other.cache, "MISS");
    assert_eq!(other.json()["query"], "a=1");
    assert_eq!(upstream.hits("GET /items/1"), 2);

    // The root is cached too.
    let root = api.get("/", None).await;
    assert_eq!((root.status, root.cache.as_str()), (StatusCode::OK, "MISS"));
    api.wait_stored("/", None).await;
    assert_eq!(api.get("/", None).await.cache, "HIT");
    assert_eq!(upstream.hits("GET /"), 1);

    // Other methods pass through, with their body, every time.
    for round in 1..=2 {
        for method in [Method::POST, Method::PUT] {
            let reply = api
                .send(
                    method.clone(),
                    "/items?kind=new",
                    None,
                    Some("application/json"),
                    r#"{"x":1}"#,
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert_eq!(reply.cache, "BYPASS");
            let seen = reply.json();
            assert_eq!(seen["method"], method.as_str());
            assert_eq!(seen["query"], "kind=new");
            assert_eq!(seen["body"], r#"{"x":1}"#);
            assert_eq!(seen["content_type"], "application/json");
            assert_eq!(upstream.hits(&format!("{method} /items")), round);
        }
    }

    // Statuses come back as they are, and are stored as a shared HTTP cache stores them: any
    // with explicit freshness, heuristically cacheable ones without, others never.
    for round in 1..=2 {
        let reply = api.get("/status/503", None).await;
        assert_eq!((reply.status, reply.cache.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "MISS"));
        assert_eq!(upstream.hits("GET /status/503"), round);
    }
    let fresh_503 = "/status/503?cache-control=max-age%3D60";
    for path in
        [fresh_503, "/status/404", "/status/410?last-modified=Sun,+06+Nov+1994+08:49:37+GMT"]
    {
        let first = api.get(path, None).await;
        assert_eq!(first.cache, "MISS", "{path}");
        api.wait_stored(path, None).await;
        let second = api.get(path, None).await;
        assert_eq!((second.status, second.cache.as_str()), (first.status, "HIT"), "{path}");
        assert_eq!(second.body, first.body, "{path}");
    }
    assert_eq!(upstream.hits("GET /status/503"), 3);
    assert_eq!((upstream.hits("GET /status/404"), upstream.hits("GET /status/410")), (1, 1));

    // Requests with credentials (RFC 9111 section 3.5) are never answered from an entry made
    // for anonymous requests, and their own answers are stored only when they say they are
    // for anyone.
    let anonymous = api.get("/private", None).await;
    assert_eq!(anonymous.cache, "MISS");
    api.wait_stored("/private", None).await;
    let callers: [(&str, Option<&str>, Option<&str>); 3] = [
        ("alice", Some("Bearer alice"), None),
        ("bob", Some("Bearer bob"), None),
        ("cookie", None, Some("session=s1")),
    ];
    for round in 1..=2 {
        for (who, authorization, cookie) in callers {
            let reply = api.get_with("/private", &credentials(authorization, cookie)).await;
            assert_eq!(reply.status, StatusCode::OK, "{who}: {}", reply.body);
            assert_eq!(reply.cache, "MISS", "{who} was served a stored answer: {}", reply.body);
            let seen = reply.json();
            assert_eq!(seen["authorization"], json!(authorization), "{who}");
            assert_eq!(seen["cookie"], json!(cookie), "{who}");
        }
        assert_eq!(upstream.hits("GET /private"), 1 + round * callers.len());
    }
    let again = api.get("/private", None).await;
    assert_eq!((again.cache.as_str(), &again.body), ("HIT", &anonymous.body));
    assert_eq!(again.json()["authorization"], Value::Null);

    // An answer that says it is for anyone is stored once and serves every requester: the
    // origin vouched for it (here it echoes who asked first, to show whose answer it is).
    let public = "/public?cache-control=public,+max-age%3D60";
    let alice = credentials(Some("Bearer alice"), None);
    let first = api.get_with(public, &alice).await;
    assert_eq!(first.cache, "MISS");
    api.wait_stored_with(public, &alice).await;
    for headers in [credentials(Some("Bearer bob"), None), credentials(None, Some("s=1"))] {
        let reply = api.get_with(public, &headers).await;
        assert_eq!((reply.cache.as_str(), &reply.body), ("HIT", &first.body));
    }
    assert_eq!(api.get(public, None).await.cache, "HIT");
    assert_eq!(upstream.hits("GET /public"), 1);
}

/// Request headers of one `name: value` line.
fn one_header(name: &'static str, value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name, HeaderValue::from_static(value));
    headers
}

fn credentials(authorization: Option<&str>, cookie: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert("authorization", HeaderValue::from_str(value).unwrap());
    }
    if let Some(value) = cookie {
        headers.insert("cookie", HeaderValue::from_str(value).unwrap());
    }
    headers
}

/// Requests per `METHOD /path`.
type HitCounts = Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>;

/// An upstream for the proxy: answers every request with JSON describing what it saw, and counts
/// requests per `METHOD /path`.
struct Upstream {
    addr: std::net::SocketAddr,
    hits: HitCounts,
    server: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: HitCounts = Arc::default();
        let app = axum::Router::new().fallback(upstream_handler).with_state(Arc::clone(&hits));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, hits, server }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many `METHOD /path` requests arrived.
    fn hits(&self, key: &str) -> usize {
        let hits = self.hits.lock().unwrap();
        hits.get(key).map_or(0, |n| n.load(Ordering::SeqCst))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn upstream_handler(
    axum::extract::State(hits): axum::extract::State<HitCounts>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;

    let counter = {
        let mut hits = hits.lock().unwrap();
        Arc::clone(hits.entry(format!("{method} {}", uri.path())).or_default())
    };
    let hit = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let status = uri
        .path()
        .strip_prefix("/status/")
        .and_then(|code| code.parse().ok())
        .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
        .unwrap_or(axum::http::StatusCode::OK);
    let seen = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "authorization": header("authorization"),
        "cookie": header("cookie"),
        "host": header("host"),
        "x_forwarded_host": header("x-forwarded-host"),
        "content_type": header("content-type"),
        "body": String::from_utf8_lossy(&body),
        "hit": hit,
    });
    let mut response = (status, [("x-upstream", "yes")], axum::Json(seen)).into_response();
    // `?cache-control=...`, `?etag=...`, `?vary=...` and the like become those response headers.
    let query = uri.query().unwrap_or("").as_bytes();
    for (name, value) in form_urlencoded::parse(query) {
        let echoed = [
            "cache-control",
            "last-modified",
            "cdn-cache-control",
            "proxy-cache-control",
            "etag",
            "vary",
            "expires",
            "age",
        ];
        if echoed.contains(&name.as_ref()) {
            let value = axum::http::HeaderValue::from_str(&value).unwrap();
            let name = axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            response.headers_mut().insert(name, value);
        }
    }
    // A request that names the `ETag` it would get is answered `304`, with the same headers
    // and the count of requests so far.
    let etag = response.headers().get("etag");
    if etag.is_some() && etag == headers.get("if-none-match") {
        *response.status_mut() = axum::http::StatusCode::NOT_MODIFIED;
        *response.body_mut() = axum::body::Body::empty();
        response.headers_mut().remove("content-type");
        response.headers_mut().insert("x-validated-at-hit", hit.into());
    }
    response
}

// =============================================================================================
// slow_upstream

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_answers_after_its_delay_and_counts_requests() {
    let upstream = Example::start(
        "slow_upstream",
        &[("DELAY_MS", "60".to_owned()), ("USERS", "3".to_owned())],
    )
    .await;
    let client = http_client();
    let base = format!("http://{}", upstream.addr());
    let count = || async {
        let text =
            client.get(format!("{base}/__count")).send().await.unwrap().text().await.unwrap();
        text.trim().parse::<u64>().unwrap_or_else(|_| panic!("/__count said {text:?}"))
    };
    // The start-up probe (`GET /health`) was one request already.
    let before = count().await;
    let mut bodies = Vec::new();
    for path in ["/users", "/users?page=2"] {
        let started = Instant::now();
        let reply = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()["content-type"], "application/json");
        bodies.push(reply.text().await.unwrap());
        assert!(started.elapsed() >= Duration::from_millis(60), "{path} did not wait");
    }
    assert_eq!(bodies[0], bodies[1], "the body must not depend on the path");
    let users: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(users.as_array().map(Vec::len), Some(3), "{users}");
    assert_eq!(users[0]["id"], 1);
    assert_eq!(count().await, before + 2, "/__count must count answers, not itself");
}

// =============================================================================================
// hyper

#[tokio::test(flavor = "multi_thread")]
async fn hyper_in_process_store_caches_time_until_a_reset_evicts_it() {
    let app = Example::start("hyper", &[]).await;
    hyper_time_flow(&app.api()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hyper_redis_store_caches_time_until_a_reset_evicts_it() {
    let redis = RedisServer::start();
    let app = Example::start("hyper", &[("REDIS_URL", redis.url())]).await;
    hyper_time_flow(&app.api()).await;

    let keys = redis.keys();
    assert!(keys.contains("trc:v1:e:"), "no entry keys in Redis: {keys}");
}

/// `GET /time` is a miss, then a hit with the same body (the handler did not run again);
/// `POST /time/reset` evicts its tag, so the next read is a miss that reaches the handler.
async fn hyper_time_flow(api: &Api) {
    let runs = |reply: &Reply| {
        reply.json()["runs"].as_u64().unwrap_or_else(|| panic!("no `runs` in {}", reply.body))
    };

    let first = api.get("/time", None).await;
    assert_eq!((first.status, first.cache.as_str()), (StatusCode::OK, "MISS"), "{}", first.body);
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(runs(&first), 1, "only this request reached the handler of /time");
    api.wait_stored("/time", None).await;
    let second = api.get("/time", None).await;
    assert_eq!((second.status, second.cache.as_str()), (StatusCode::OK, "HIT"));
    assert_eq!(second.body, first.body, "a hit must replay the stored answer");

    let reset = api.send(Method::POST, "/time/reset", None, None, "").await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    assert_eq!(reset.cache, "BYPASS");
    assert_eq!(reset.json(), json!({ "reset": true }));

    // The `HEAD` probes of `wait_stored` may have reached the handler too, so only "more runs".
    let fresh = api.get("/time", None).await;
    assert_eq!((fresh.status, fresh.cache.as_str()), (StatusCode::OK, "MISS"), "stale after reset");
    assert!(runs(&fresh) > runs(&first), "the handler did not run: {}", fresh.body);
    api.wait_stored("/time", None).await;
    let again = api.get("/time", None).await;
    assert_eq!(again.cache, "HIT");
    assert_eq!(again.body, fresh.body);
}

// =============================================================================================
// grpc

#[tokio::test(flavor = "multi_thread")]
async fn grpc_in_process_store_caches_get_user_until_an_update_evicts_it() {
    let server = Example::start_listening("grpc", &[]).await;
    grpc_call_flow(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_redis_store_caches_get_user_until_an_update_evicts_it() {
    let redis = RedisServer::start();
    let server = Example::start_listening("grpc", &[("REDIS_URL", redis.url())]).await;
    grpc_call_flow(&server).await;

    let keys = redis.keys();
    assert!(keys.contains("trc:v1:e:"), "no entry keys in Redis: {keys}");
}

/// The example's own client (`grpc call`, the calls its docs show) against the server: `GetUser`
/// is a miss then a hit, `UpdateUser` evicts it, `NOT_FOUND` is not cached, `ListUsers` streams
/// past the cache.
async fn grpc_call_flow(server: &Example) {
    let env = [("SERVER", format!("http://{}", server.addr()))];
    let (status, output) = run_to_exit("grpc", &["call"], &env).await;
    assert!(status.success(), "grpc call failed:\n{output}");
    let calls: Vec<(&str, &str)> = output
        .lines()
        .filter_map(|line| {
            let (call, rest) = line.split_once(' ')?;
            let cache = rest.trim_start().strip_prefix("x-cache=")?.split_whitespace().next()?;
            Some((call, cache))
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("GetUser(1)", "MISS"),
            ("GetUser(1)", "HIT"),
            ("UpdateUser(1)", "BYPASS"),
            ("GetUser(1)", "MISS"),
            ("GetUser(1)", "HIT"),
            ("ListUsers", "BYPASS"),
        ],
        "{output}"
    );
    let names: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("GetUser(1)"))
        .map(|line| if line.contains("Ada Lovelace") { "Lovelace" } else { "King" })
        .collect();
    assert_eq!(names, ["Lovelace", "Lovelace", "King", "King"], "{output}");
    assert!(output.contains("GetUser(42)    NotFound \"no user 42\""), "{output}");
    assert!(output.contains("  1 Ada King <ada@example.com>\n  2 Alan Turing"), "{output}");
}

// =============================================================================================
// custom_store

#[tokio::test(flavor = "multi_thread")]
async fn custom_store_passes_the_conformance_suite() {
    let (status, log) = run_to_exit("custom_store", &[], &[]).await;
    assert!(status.success(), "custom_store failed:\n{log}");
    assert!(log.contains("HashMapStore conforms"), "{log}");
}

// =============================================================================================
// Running the examples

/// A running example binary, killed on drop. On a failing test its log is printed.
struct Example {
    name: &'static str,
    child: Child,
    addr: String,
    log_path: PathBuf,
}

impl Example {
    /// Starts the example `name` on a free port with `env` (nothing else of the examples'
    /// environment is inherited), and waits until it answers `GET /health`.
    async fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        let mut example = Self::start_listening(name, env).await;
        example.wait_until_answering().await;
        example
    }

    /// Starts the example `name` as [`start`](Self::start) does, but only waits until it says
    /// where it listens: for servers with no `GET /health` (gRPC).
    async fn start_listening(name: &'static str, env: &[(&str, String)]) -> Self {
        let (child, log_path) = spawn_example(name, &[], env);
        let mut example = Self { name, child, addr: String::new(), log_path };
        example.addr = example.wait_for_address().await;
        example
    }

    fn api(&self) -> Api {
        Api::new(format!("http://{}", self.addr))
    }

    /// `127.0.0.1:<port>`.
    fn addr(&self) -> &str {
        &self.addr
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The address from the example's `... listening on http://<addr>` line.
    async fn wait_for_address(&mut self) -> String {
        let deadline = Instant::now() + STARTUP;
        loop {
            let log = self.log();
            if let Some(at) = log.find("listening on http://") {
                let rest = &log[at + "listening on http://".len()..];
                return rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited during startup ({status}):\n{log}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} printed no address within {STARTUP:?}:\n{log}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `GET /health` gets an answer (any status: the proxy forwards it).
    async fn wait_until_answering(&mut self) {
        let client = http_client();
        let url = format!("http://{}/health", self.addr);
        let deadline = Instant::now() + STARTUP;
        loop {
            if client.get(&url).send().await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited during startup ({status}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer /health within {STARTUP:?}:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}) -----\n{}\n----- end of log -----",
                self.name,
                self.log_path.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// Runs the example `name` with `args` and `env` until it exits (at most 30 s), and returns its
/// status and output.
async fn run_to_exit(
    name: &'static str,
    args: &[&str],
    env: &[(&str, String)],
) -> (ExitStatus, String) {
    let (mut child, log_path) = spawn_example(name, args, env);
    let deadline = Instant::now() + STARTUP;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not exit within {STARTUP:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    (status, log)
}

fn spawn_example(name: &str, args: &[&str], env: &[(&str, String)]) -> (Child, PathBuf) {
    let binary = example_binary(name);
    let log_path = std::env::temp_dir().join(format!(
        "trc-example-{name}-{}-{}.log",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let log = std::fs::File::create(&log_path).expect("create the example's log file");
    let mut command = Command::new(&binary);
    command.args(args);
    for var in EXAMPLE_ENV {
        command.env_remove(var);
    }
    command
        .env("BIND", "127.0.0.1:0")
        .env("RUST_LOG", "info,tower_redis_cache=debug")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log);
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
    (child, log_path)
}

/// The built example: `<target>/<profile>/examples/<name>`, next to this test's `deps` directory.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let binary =
        profile_dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "example binary {} is missing: run `cargo build --examples` first \
         (a plain `cargo test` builds the examples; `cargo test --test examples` does not)",
        binary.display()
    );
    if let Some(newer) = newer_source(&binary, name) {
        panic!(
            "example binary {} is older than {}: run `cargo build --examples` first \
             (a plain `cargo test` builds the examples; `cargo test --test examples` does not)",
            binary.display(),
            newer.display()
        );
    }
    binary
}

/// A source file the example is built from that changed after `binary` was built, if any.
fn newer_source(binary: &Path, name: &str) -> Option<PathBuf> {
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    let built = modified(binary)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("examples").join(format!("{name}.rs"))];
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    sources.into_iter().find(|source| modified(source).is_some_and(|m: SystemTime| m > built))
}

// =============================================================================================
// HTTP

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
}

/// A client for one example.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
}

/// A response, read whole. Only made for responses that carry `X-Cache`.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    /// The `X-Cache` value.
    cache: String,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

impl Api {
    fn new(base: String) -> Self {
        Self { client: http_client(), base }
    }

    /// Sends a request and checks that the response carries `X-Cache`, as every response that
    /// passes the layer does.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        content_type: Option<&str>,
        body: &str,
    ) -> Reply {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .headers(headers.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if !body.is_empty() || content_type.is_some() {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let cache = headers
            .get("x-cache")
            .unwrap_or_else(|| panic!("{method} {path} ({status}): no X-Cache header"))
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        Reply { status, cache, headers, body }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: &str,
    ) -> Reply {
        let headers = credentials(authorization, None);
        self.request(method, path, &headers, content_type, body).await
    }

    async fn get(&self, path: &str, authorization: Option<&str>) -> Reply {
        self.send(Method::GET, path, authorization, None, "").await
    }

    async fn get_with(&self, path: &str, headers: &HeaderMap) -> Reply {
        self.request(Method::GET, path, headers, None, "").await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let body = body.to_string();
        self.send(Method::POST, path, None, Some("application/json"), &body).await
    }

    async fn put_json(&self, path: &str, body: &Value) -> Reply {
        let body = body.to_string();
        self.send(Method::PUT, path, None, Some("application/json"), &body).await
    }

    /// Waits until the entry for `GET path` is in the store: the layer writes it in the
    /// background once the response is served. Probes with `HEAD`, which is answered from the
    /// `GET` entry but never stores one, so the probes change nothing.
    async fn wait_stored(&self, path: &str, authorization: Option<&str>) {
        self.wait_stored_with(path, &credentials(authorization, None)).await;
    }

    async fn wait_stored_with(&self, path: &str, headers: &HeaderMap) {
        let deadline = Instant::now() + STORE_WAIT;
        loop {
            let probe = self.request(Method::HEAD, path, headers, None, "").await;
            if probe.cache == "HIT" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} was not stored within {STORE_WAIT:?} (HEAD says {} {})",
                probe.status,
                probe.cache
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
