//! Attacks on a shared cache, end to end through axum, with requests built from raw URIs (no
//! client-side normalisation): web cache poisoning, method overrides, web cache deception,
//! cache-busting floods and hostile input. Where a defence can be turned off, the attack is
//! also shown to succeed without it, so that each test depends on the defence it checks.
// Most scenarios run against Redis; their handlers go unused without it.
#![cfg_attr(not(feature = "redis"), allow(dead_code, unused_imports))]

mod support;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
#[cfg(feature = "redis")]
use support::redis::RedisServer;
use tower::ServiceExt;
#[cfg(feature = "redis")]
use tower_redis_cache::RedisStore;
use tower_redis_cache::{CacheHandle, CacheLayer, CacheLayerBuilder, MemoryStore, Rule};

/// Generous, so that a loaded machine does not make store calls fail open.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(feature = "redis")]
async fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url()).build().await.unwrap()
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    x_cache: String,
    headers: HeaderMap,
    body: String,
}

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let x_cache =
        response.headers().get("x-cache").map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, x_cache, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn get_with(router: &Router, uri: &str, headers: &[(&str, &str)]) -> Reply {
    send(router, request(Method::GET, uri, headers)).await
}

#[cfg(feature = "redis")]
/// `DBSIZE`, through the test's own connection.
fn dbsize(server: &RedisServer) -> usize {
    let reply = server.command(&["DBSIZE"]).expect("DBSIZE");
    reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("DBSIZE: {reply:?}"))
}

#[cfg(feature = "redis")]
/// Every key in the server with its value as `GET` returns it (raw RESP).
fn dump(server: &RedisServer) -> Vec<(String, String)> {
    let keys = server.keys();
    keys.split("\r\n")
        .filter(|line| !line.is_empty() && !line.starts_with('*') && !line.starts_with('$'))
        .map(|key| (key.to_owned(), server.command(&["GET", key]).unwrap_or_default()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Web cache poisoning
// ---------------------------------------------------------------------------------------------

/// Builds its links from the forwarding headers, as frameworks behind proxies do.
async fn link_page(headers: HeaderMap) -> String {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let forwarded_host = text("forwarded").and_then(|f| {
        f.split(';').find_map(|part| part.trim().strip_prefix("host=").map(str::to_owned))
    });
    let host = text("x-forwarded-host")
        .or_else(|| text("x-host"))
        .or_else(|| text("x-original-host"))
        .or(forwarded_host)
        .unwrap_or_else(|| "api.example.com".to_owned());
    let proto = text("x-forwarded-proto").unwrap_or_else(|| "https".to_owned());
    let prefix = text("x-forwarded-prefix").unwrap_or_default();
    format!("<a href=\"{proto}://{host}{prefix}/next\">next</a>")
}

/// Serves another page when `X-Original-URL` or `X-Rewrite-URL` names one, as some frameworks
/// (Symfony, IIS rewrites) do.
async fn rewritten_page(headers: HeaderMap) -> String {
    let rewrite = headers.get("x-original-url").or_else(|| headers.get("x-rewrite-url"));
    match rewrite.and_then(|v| v.to_str().ok()) {
        Some(url) => format!("page {url}: ADMIN CONSOLE"),
        None => "page /home: welcome".to_owned(),
    }
}

/// Dumps internals when asked to debug.
async fn status_page(headers: HeaderMap) -> String {
    match headers.contains_key("x-debug") {
        true => "DEBUG db=postgres://admin:hunter2@db".to_owned(),
        false => "status: ok".to_owned(),
    }
}

#[cfg(feature = "redis")]
/// The poisoning app, with the layer's defences on or (`defended: false`) off: no keyed
/// headers, no bypassed headers, no rule-level `bypass_header`.
async fn poisoning_app(server: &RedisServer, defended: bool) -> Router {
    let builder = CacheLayer::builder(redis_store(server).await)
        .store_timeout(STORE_TIMEOUT)
        .route("/page", Rule::get())
        .route("/home", Rule::get())
        .route("/home-keyed", Rule::get().vary(["x-original-url"]));
    let cache = match defended {
        true => builder.key_prefix("on").route("/status", Rule::get().bypass_header("x-debug")),
        false => builder
            .key_prefix("off")
            .key_headers([] as [HeaderName; 0])
            .bypass_headers([] as [HeaderName; 0])
            .route("/status", Rule::get()),
    };
    Router::new()
        .route("/page", get(link_page))
        .route("/home", get(rewritten_page))
        .route("/home-keyed", get(rewritten_page))
        .route("/status", get(status_page))
        .layer(cache.build().unwrap())
}

// Web cache poisoning through an unkeyed input: an attacker's forwarding header makes the
// handler emit links to their host, which must not be stored for everyone else.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_forwarding_header_set_by_an_attacker_never_poisons_what_others_get() {
    let server = RedisServer::start();
    let app = poisoning_app(&server, true).await;
    let clean = "<a href=\"https://api.example.com/next\">next</a>";

    let attacks: [(&str, &str, &str); 6] = [
        ("x-forwarded-host", "evil.example", "https://evil.example/next"),
        ("x-host", "evil.example", "https://evil.example/next"),
        ("x-original-host", "evil.example", "https://evil.example/next"),
        ("forwarded", "for=1.2.3.4;host=evil.example", "https://evil.example/next"),
        ("x-forwarded-proto", "javascript", "javascript://api.example.com/next"),
        ("x-forwarded-prefix", "/evil", "https://api.example.com/evil/next"),
    ];
    for (name, value, link) in attacks {
        // The attacker twice (the second may be a hit, of the attacker's own entry) ...
        for _ in 0..2 {
            let attack = get_with(&app, "/page", &[(name, value)]).await;
            assert!(attack.body.contains(link), "{name}: the handler reflects it: {attack:?}");
        }
        // ... then everyone else, who must get the clean page, from a shared entry.
        for _ in 0..2 {
            let plain = get_with(&app, "/page", &[]).await;
            assert_eq!(plain.body, clean, "{name}: {plain:?}");
        }
    }
    let plain = get_with(&app, "/page", &[]).await;
    assert_eq!((plain.x_cache.as_str(), plain.body.as_str()), ("HIT", clean));

    // A proxy that sets the header to the same value on every request keeps entries shared.
    let proxied = [("x-forwarded-host", "api.example.com"), ("x-forwarded-proto", "https")];
    let first = get_with(&app, "/page", &proxied).await;
    assert_eq!((first.x_cache.as_str(), first.body.as_str()), ("MISS", clean));
    for _ in 0..3 {
        let next = get_with(&app, "/page", &proxied).await;
        assert_eq!((next.x_cache.as_str(), next.body.as_str()), ("HIT", clean));
    }

    // Without keyed headers, the same attack poisons the entry everyone gets.
    let undefended = poisoning_app(&server, false).await;
    let attack = get_with(&undefended, "/page", &[("x-forwarded-host", "evil.example")]).await;
    assert_eq!(attack.x_cache, "MISS");
    let victim = get_with(&undefended, "/page", &[]).await;
    assert_eq!(victim.x_cache, "HIT", "{victim:?}");
    assert!(victim.body.contains("evil.example"), "the attack needs the defence: {victim:?}");
}

// Web cache poisoning through a rewriting header: `X-Original-URL: /admin` makes the framework
// serve another page under the requested URL's key.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_rewriting_header_never_stores_another_page_under_the_requested_url() {
    let server = RedisServer::start();
    let app = poisoning_app(&server, true).await;

    for header in ["x-original-url", "x-rewrite-url"] {
        for _ in 0..2 {
            let attack = get_with(&app, "/home", &[(header, "/admin")]).await;
            assert_eq!(attack.body, "page /admin: ADMIN CONSOLE");
            assert_eq!(attack.x_cache, "BYPASS", "{header}");
        }
    }
    let first = get_with(&app, "/home", &[]).await;
    assert_eq!((first.x_cache.as_str(), first.body.as_str()), ("MISS", "page /home: welcome"));
    let attack = get_with(&app, "/home", &[("x-original-url", "/admin")]).await;
    assert_eq!(
        (attack.x_cache.as_str(), attack.body.as_str()),
        ("BYPASS", "page /admin: ADMIN CONSOLE")
    );
    let plain = get_with(&app, "/home", &[]).await;
    assert_eq!((plain.x_cache.as_str(), plain.body.as_str()), ("HIT", "page /home: welcome"));

    // A rule that keys on the header caches such requests, each under its own key.
    let admin = [("x-original-url", "/admin")];
    let keyed = get_with(&app, "/home-keyed", &admin).await;
    assert_eq!(
        (keyed.x_cache.as_str(), keyed.body.as_str()),
        ("MISS", "page /admin: ADMIN CONSOLE")
    );
    let keyed = get_with(&app, "/home-keyed", &admin).await;
    assert_eq!(
        (keyed.x_cache.as_str(), keyed.body.as_str()),
        ("HIT", "page /admin: ADMIN CONSOLE")
    );
    let plain = get_with(&app, "/home-keyed", &[]).await;
    assert_eq!((plain.x_cache.as_str(), plain.body.as_str()), ("MISS", "page /home: welcome"));
    let plain = get_with(&app, "/home-keyed", &[]).await;
    assert_eq!((plain.x_cache.as_str(), plain.body.as_str()), ("HIT", "page /home: welcome"));
    let other = get_with(&app, "/home-keyed", &[("x-original-url", "/other")]).await;
    assert_eq!(
        (other.x_cache.as_str(), other.body.as_str()),
        ("MISS", "page /other: ADMIN CONSOLE")
    );
    // Only the header the rule keys on is let in: the other rewriting headers still bypass.
    let rewrite = get_with(&app, "/home-keyed", &[("x-rewrite-url", "/admin")]).await;
    assert_eq!(rewrite.x_cache, "BYPASS");

    // Without bypassed headers, the attack stores the admin page for the plain URL.
    let undefended = poisoning_app(&server, false).await;
    let attack = get_with(&undefended, "/home", &admin).await;
    assert_eq!(attack.x_cache, "MISS");
    let victim = get_with(&undefended, "/home", &[]).await;
    assert_eq!(victim.x_cache, "HIT");
    assert_eq!(victim.body, "page /admin: ADMIN CONSOLE", "the attack needs the defence");
}

// Web cache poisoning through a header only one route reads: `X-Debug` dumps internals, and a
// rule's `bypass_header` keeps such requests out of the cache.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_rule_s_bypass_header_keeps_debug_answers_out_of_the_cache() {
    let server = RedisServer::start();
    let app = poisoning_app(&server, true).await;

    let debug = get_with(&app, "/status", &[("x-debug", "1")]).await;
    assert_eq!(
        (debug.x_cache.as_str(), debug.body.as_str()),
        ("BYPASS", "DEBUG db=postgres://admin:hunter2@db")
    );
    let plain = get_with(&app, "/status", &[]).await;
    assert_eq!((plain.x_cache.as_str(), plain.body.as_str()), ("MISS", "status: ok"));
    let debug = get_with(&app, "/status", &[("x-debug", "1")]).await;
    assert_eq!(debug.x_cache, "BYPASS", "never answered from the shared entry either");
    assert!(debug.body.starts_with("DEBUG"));
    let plain = get_with(&app, "/status", &[]).await;
    assert_eq!((plain.x_cache.as_str(), plain.body.as_str()), ("HIT", "status: ok"));

    // Without it, the debug dump is stored for everyone.
    let undefended = poisoning_app(&server, false).await;
    assert_eq!(get_with(&undefended, "/status", &[("x-debug", "1")]).await.x_cache, "MISS");
    let victim = get_with(&undefended, "/status", &[]).await;
    assert_eq!(victim.x_cache, "HIT");
    assert!(victim.body.starts_with("DEBUG"), "the attack needs the defence: {victim:?}");
}

// ---------------------------------------------------------------------------------------------
// Method overrides
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Users {
    rows: Mutex<HashMap<String, String>>,
}

const OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// A `GET` that honours method-override headers, as some frameworks do: with `DELETE`, it
/// deletes the row.
async fn user(
    State(db): State<Arc<Users>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let overridden = OVERRIDES
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|m| m.trim().to_ascii_uppercase());
    if overridden.as_deref() == Some("DELETE") {
        db.rows.lock().unwrap().remove(&id);
        return (StatusCode::OK, format!("deleted {id}"));
    }
    match db.rows.lock().unwrap().get(&id) {
        Some(row) => (StatusCode::OK, row.clone()),
        None => (StatusCode::NOT_FOUND, "no such user".to_owned()),
    }
}

/// Another read of the same row, under another path: only the rule's tag connects them.
async fn user_card(State(db): State<Arc<Users>>, Path(id): Path<String>) -> (StatusCode, String) {
    match db.rows.lock().unwrap().get(&id) {
        Some(row) => (StatusCode::OK, format!("card of {row}")),
        None => (StatusCode::NOT_FOUND, "no such user".to_owned()),
    }
}

// A `GET` carrying `X-HTTP-Method-Override: DELETE` is a delete to a framework that honours
// it, and the application says so: the cache must neither answer it from the entry nor keep
// serving the deleted row afterwards.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_get_that_overrides_its_method_to_delete_evicts_like_a_delete_where_the_app_honours_it() {
    let server = RedisServer::start();
    let db = Arc::new(Users::default());
    let cache = CacheLayer::builder(redis_store(&server).await)
        .store_timeout(STORE_TIMEOUT)
        .method_override_headers(OVERRIDES.map(HeaderName::from_static))
        .route("/users/{id}", Rule::get().tags(["user:{id}"]))
        .route("/users/{id}", Rule::delete().evicts(["user:{id}"]))
        .route("/users/{id}/card", Rule::get().tags(["user:{id}"]))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/{id}", get(user))
        .route("/users/{id}/card", get(user_card))
        .with_state(db.clone())
        .layer(cache);

    let spellings = [("DELETE", 0), (" delete ", 1), ("Delete", 2)];
    for (id, (spelling, header)) in spellings.into_iter().enumerate() {
        let (path, card) = (format!("/users/{id}"), format!("/users/{id}/card"));
        let row = format!("user {id}");
        db.rows.lock().unwrap().insert(id.to_string(), row.clone());
        let first = get_with(&app, &path, &[]).await;
        assert_eq!((first.x_cache.as_str(), first.body.as_str()), ("MISS", row.as_str()));
        let second = get_with(&app, &path, &[]).await;
        assert_eq!((second.x_cache.as_str(), second.body.as_str()), ("HIT", row.as_str()));
        get_with(&app, &card, &[]).await;
        assert_eq!(get_with(&app, &card, &[]).await.x_cache, "HIT");

        let delete = get_with(&app, &path, &[(OVERRIDES[header], spelling)]).await;
        assert_eq!(delete.status, StatusCode::OK, "{}: {spelling:?}", OVERRIDES[header]);
        assert_eq!(delete.body, format!("deleted {id}"), "reached the handler, not the entry");
        assert!(!db.rows.lock().unwrap().contains_key(&id.to_string()));

        let after = get_with(&app, &path, &[]).await;
        assert_eq!((after.status, after.body.as_str()), (StatusCode::NOT_FOUND, "no such user"));
        assert_ne!(after.x_cache, "HIT");
        let card = get_with(&app, &card, &[]).await;
        assert_eq!(card.status, StatusCode::NOT_FOUND, "evicted through the tag: {card:?}");
    }
}

/// Reads a row; knows nothing of method overrides, like axum.
async fn plain_user(State(db): State<Arc<Users>>, Path(id): Path<String>) -> (StatusCode, String) {
    match db.rows.lock().unwrap().get(&id) {
        Some(row) => (StatusCode::OK, row.clone()),
        None => (StatusCode::NOT_FOUND, "no such user".to_owned()),
    }
}

// Where the application honours no override (the default), an anonymous `GET` with
// `X-HTTP-Method-Override: DELETE` is the plain read axum serves it as: it evicts nothing, so
// nobody can flush entries by sending one.
#[tokio::test]
async fn an_anonymous_get_with_a_method_override_the_app_ignores_evicts_nothing() {
    let db = Arc::new(Users::default());
    db.rows.lock().unwrap().insert("2".to_owned(), "user 2".to_owned());
    let cache = CacheLayer::builder(MemoryStore::default())
        .route("/users", Rule::get().tag("users"))
        .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]))
        .route("/users/{id}", Rule::delete().evicts(["users", "user:{id}"]))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users", get(|| async { "all users" }))
        .route("/users/{id}", get(plain_user))
        .with_state(db.clone())
        .layer(cache);

    get_with(&app, "/users", &[]).await;
    get_with(&app, "/users/2", &[]).await;
    assert_eq!(get_with(&app, "/users", &[]).await.x_cache, "HIT");
    for name in OVERRIDES {
        let overridden = get_with(&app, "/users/2", &[(name, "DELETE")]).await;
        assert_eq!((overridden.status, overridden.body.as_str()), (StatusCode::OK, "user 2"));
        assert_eq!(overridden.x_cache, "BYPASS", "{name}: a read the key does not describe");
    }
    assert_eq!(get_with(&app, "/users", &[]).await.x_cache, "HIT", "`users` was not evicted");
    assert_eq!(get_with(&app, "/users/2", &[]).await.x_cache, "HIT", "`user:2` was not evicted");
}

// ---------------------------------------------------------------------------------------------
// Parts of a request the inner service sees differently from the key
// ---------------------------------------------------------------------------------------------

/// Answers with what it sees of the host, the language and the body, varying on the language.
async fn sees(headers: HeaderMap, body: String) -> ([(HeaderName, &'static str); 1], String) {
    let text = |name: &str| -> Vec<String> {
        let values = headers.get_all(name).iter();
        values.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
    };
    let answer =
        format!("host={:?} lang={:?} body={body:?}", text("host"), text("accept-language"));
    ([(axum::http::header::VARY, "accept-language")], answer)
}

/// Removes the headers `Connection` names before the handler sees them, as a proxy does
/// (RFC 9110 section 7.6.1).
async fn strip_connection_options(
    mut request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let named: Vec<HeaderName> = request
        .headers()
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        request.headers_mut().remove(name);
    }
    next.run(request).await
}

/// The reply to `uri` once it is a hit (entries are written in the background), or the last
/// reply after a bounded number of tries.
async fn once_hit(router: &Router, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut reply = get_with(router, uri, headers).await;
    for _ in 0..200 {
        if reply.x_cache == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        reply = get_with(router, uri, headers).await;
    }
    reply
}

fn seeing_app(store: MemoryStore) -> Router {
    let cache = CacheLayer::builder(store).route("/a", Rule::get()).build().unwrap();
    Router::new()
        .route("/a", get(sees))
        .layer(axum::middleware::from_fn(strip_connection_options))
        .layer(cache)
}

// RFC 9112 section 3.2.2: the target's authority wins over `Host`. A handler may still read
// `Host`, so a request whose `Host` disagrees with its target must not fill the entry of the
// target's plain requests.
#[tokio::test]
async fn a_host_that_disagrees_with_the_target_never_poisons_the_target_s_entry() {
    let app = seeing_app(MemoryStore::default());
    let poison = once_hit(&app, "http://127.0.0.1:1/a", &[("host", "evil.example")]).await;
    assert!(poison.body.contains("evil.example") && poison.x_cache == "HIT", "{poison:?}");
    for plain in [
        get_with(&app, "/a", &[("host", "127.0.0.1:1")]).await,
        get_with(&app, "http://127.0.0.1:1/a", &[("host", "127.0.0.1:1")]).await,
        get_with(&app, "http://127.0.0.1:1/a", &[]).await,
    ] {
        assert!(!plain.body.contains("evil"), "served the poisoned answer: {plain:?}");
    }
    let twice = get_with(&app, "/a", &[("host", "127.0.0.1:1"), ("host", "evil.example")]).await;
    assert!(twice.body.contains("evil.example") && twice.x_cache == "MISS", "{twice:?}");
}

// A header that `Connection` names is dropped before the handler sees it: the request is not
// the one whose key has that header's value, and must not fill its entry.
#[tokio::test]
async fn a_header_named_in_connection_never_fills_the_entry_of_its_value() {
    let app = seeing_app(MemoryStore::default());
    let lang = [("host", "h"), ("accept-language", "fr")];
    let stripped =
        get_with(&app, "/a", &[lang[0], lang[1], ("connection", "Accept-Language")]).await;
    assert!(stripped.body.contains("lang=[]"), "{stripped:?}");
    let french = get_with(&app, "/a", &lang).await;
    assert!(french.body.contains("lang=[\"fr\"]"), "got the stripped answer: {french:?}");
    // Options naming headers the request does not carry change nothing.
    let keep_alive = once_hit(&app, "/a", &[lang[0], lang[1], ("connection", "keep-alive")]).await;
    assert_eq!((keep_alive.x_cache.as_str(), keep_alive.body), ("HIT", french.body));
}

// A `GET` body reaches the handler but is not in the key: such a request must stay out of the
// cache, or its answer would be served to plain `GET`s.
#[tokio::test]
async fn a_get_with_a_body_neither_reads_nor_fills_the_cache() {
    let app = seeing_app(MemoryStore::default());
    let plain = get_with(&app, "/a", &[("host", "h")]).await;
    let mut with_body = request(Method::GET, "/a", &[("host", "h")]);
    *with_body.body_mut() = Body::from("callback=evil");
    let bodied = send(&app, with_body).await;
    assert_eq!(bodied.x_cache, "BYPASS");
    assert!(bodied.body.contains("callback=evil"), "{bodied:?}");
    let again = once_hit(&app, "/a", &[("host", "h")]).await;
    assert_eq!((again.x_cache.as_str(), again.body), ("HIT", plain.body));
}

// ---------------------------------------------------------------------------------------------
// Web cache deception
// ---------------------------------------------------------------------------------------------

/// How a lenient framework (Spring on Tomcat, say) reads a path: matrix parameters stripped
/// from each segment, percent-escapes decoded (`%2f` and `%2e` included), dot segments
/// resolved, and anything under `/me/` served by `/me`.
fn lenient_path(raw: &str) -> String {
    let stripped: Vec<&str> =
        raw.split('/').map(|segment| segment.split(';').next().unwrap_or("")).collect();
    let stripped = stripped.join("/");
    let decoded = percent_encoding::percent_decode_str(&stripped).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/').skip(1) {
        match segment {
            "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let path = format!("/{}", segments.join("/"));
    if path.starts_with("/me/") {
        return "/me".to_owned();
    }
    path
}

fn secret_of(user: &str) -> String {
    format!("{user}-SECRET-7f3a")
}

/// The lenient app: the requesting user's private profile at `/me`, public assets under
/// `/static/`, pages elsewhere.
async fn lenient_app(uri: Uri, headers: HeaderMap) -> (StatusCode, String) {
    let path = lenient_path(uri.path());
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if path == "/me" {
        return match user {
            Some(user) => (StatusCode::OK, format!("profile of {user}: key {}", secret_of(user))),
            None => (StatusCode::UNAUTHORIZED, "log in first".to_owned()),
        };
    }
    match path.strip_prefix("/static/") {
        Some(file) => (StatusCode::OK, format!("asset {file}")),
        None => (StatusCode::OK, format!("page {path}")),
    }
}

// Web cache deception: the victim is lured to a URL the cache thinks is public (an asset, a
// page) but the framework serves as the victim's profile; the attacker then fetches it.
#[cfg(feature = "redis")]
#[tokio::test]
async fn paths_a_lenient_framework_reads_as_a_private_page_never_leak_it() {
    let server = RedisServer::start();
    let cache = CacheLayer::builder(redis_store(&server).await)
        .store_timeout(STORE_TIMEOUT)
        .without_compression()
        .route("/me", Rule::get().per_user())
        .route("/static/{*file}", Rule::get().shared())
        .route("/{*page}", Rule::get())
        .build()
        .unwrap();
    let app = Router::new().fallback(lenient_app).layer(cache);
    let alice = [("authorization", "Bearer alice")];
    let mallory = [("authorization", "Bearer mallory")];
    let secret = secret_of("alice");

    // The shared routes do cache what they should.
    assert_eq!(get_with(&app, "/static/app.css", &alice).await.x_cache, "MISS");
    let asset = get_with(&app, "/static/app.css", &[]).await;
    assert_eq!((asset.x_cache.as_str(), asset.body.as_str()), ("HIT", "asset app.css"));

    let lures = [
        "/me/anything.css",
        "/me;.css",
        "/me%2f.css",
        "/me/.%2e/x",
        "/static/..%2fme",
        "/static/%2e%2e/me",
        "/static/../me",
        "/static/.%2e/me",
        "/static/..;/me",
    ];
    for lure in lures {
        for _ in 0..2 {
            let victim = get_with(&app, lure, &alice).await;
            assert_eq!(victim.status, StatusCode::OK, "{lure}");
            assert_eq!(victim.x_cache, "BYPASS", "{lure}: the victim's answer is never shared");
        }
        let anonymous = get_with(&app, lure, &[]).await;
        assert!(!anonymous.body.contains(&secret), "{lure}: leaked to anonymous: {anonymous:?}");
        let attacker = get_with(&app, lure, &mallory).await;
        assert!(!attacker.body.contains(&secret), "{lure}: leaked to mallory: {attacker:?}");
    }
    // The lures do reach the profile (the framework is lenient): the test is not vacuous.
    assert!(get_with(&app, "/static/..;/me", &alice).await.body.contains(&secret));
    // Nothing holds alice's data in the store.
    let dumped = dump(&server);
    assert!(!dumped.is_empty());
    for (key, value) in &dumped {
        assert!(!value.contains(&secret), "{key} holds alice's secret");
    }

    // Her own page is cached, for her alone: the one place the store may hold her secret.
    let before = dumped.len();
    assert_eq!(get_with(&app, "/me", &alice).await.x_cache, "MISS");
    let again = get_with(&app, "/me", &alice).await;
    assert_eq!(again.x_cache, "HIT");
    assert!(again.body.contains(&secret));
    let anonymous = get_with(&app, "/me", &[]).await;
    assert_eq!(
        (anonymous.status, anonymous.x_cache.as_str()),
        (StatusCode::UNAUTHORIZED, "BYPASS")
    );
    let attacker = get_with(&app, "/me", &mallory).await;
    assert!(attacker.body.contains(&secret_of("mallory")) && !attacker.body.contains(&secret));
    let holding: Vec<String> =
        dump(&server).into_iter().filter(|(_, v)| v.contains(&secret)).map(|(k, _)| k).collect();
    assert_eq!(holding.len(), 1, "one per-user entry: {holding:?} (store had {before} keys)");
}

// ---------------------------------------------------------------------------------------------
// Cache-Control a lenient parser misreads
// ---------------------------------------------------------------------------------------------

/// Reflects the caller's `X-Client` into `X-Reflect-X-Client`, as apps that echo a caller's
/// identity or token do, under the `Cache-Control` its `cc` query parameter names. The body is
/// the same for everyone: only the header is the caller's.
async fn reflect(Query(query): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    let client = headers.get("x-client").cloned().unwrap_or(HeaderValue::from_static("nobody"));
    let mut response = Response::new(Body::from("the same page for everyone"));
    if let Some(cc) = query.get("cc") {
        response.headers_mut().insert("cache-control", HeaderValue::from_str(cc).unwrap());
    }
    response.headers_mut().insert("x-reflect-x-client", client);
    response
}

/// `Cache-Control` values that keep a response out of shared entries, in forms a lenient
/// parser misses: field lists, the sloppy lists nginx and Varnish refuse, and freshness that
/// contradicts itself.
const KEPT_OUT_OF_SHARED_ENTRIES: [&str; 12] = [
    "private=\"x-reflect-x-client\", max-age=60",
    "max-age=60, private=x-reflect-x-client",
    "no-cache=\"x-reflect-x-client\", max-age=60",
    "no-store; max-age=0",
    "no-store; max-age=60",
    "private; max-age=60",
    "private;",
    "\"private\"",
    "max-age=60, \"private\"",
    "max-age = 60, private",
    "max-age=60, max-age=5",
    "max-age=60, stale-if-error=soon",
];

fn reflect_app(builder: CacheLayerBuilder) -> (Router, CacheHandle) {
    let cache = builder
        .store_timeout(STORE_TIMEOUT)
        .without_compression()
        .route("/reflect", Rule::get())
        .route("/reflect-per-user", Rule::get().per_user())
        .build()
        .unwrap();
    let handle = cache.handle();
    let app =
        Router::new().route("/reflect", get(reflect)).route("/reflect-per-user", get(reflect));
    (app.layer(cache), handle)
}

fn reflected(reply: &Reply) -> &str {
    reply.headers.get("x-reflect-x-client").map_or("", |v| v.to_str().unwrap())
}

/// Whether the layer said it is storing the response (RFC 9211 `Cache-Status: ...; stored`).
fn stored(reply: &Reply) -> bool {
    reply.headers.get("cache-status").is_some_and(|v| v.to_str().unwrap().contains("stored"))
}

/// Alice, then bob, for each value: bob never gets alice's header, and nothing is stored (in
/// what `stored_values` lists, when given, no value holds alice's); then the same with a plain `max-age=60`,
/// which shows the attack without the directives; and a per-user route, which may keep a
/// `private` response for its own user.
async fn cache_control_a_lenient_parser_misreads_is_never_shared(
    app: &Router,
    cache: &CacheHandle,
    stored_values: Option<&dyn Fn() -> Vec<(String, String)>>,
) {
    let alice = [("x-client", "alice-secret")];
    let bob = [("x-client", "bob")];
    let uri =
        |path: &str, cc: &str| format!("{path}?cc={}", utf8_percent_encode(cc, NON_ALPHANUMERIC));
    for cc in KEPT_OUT_OF_SHARED_ENTRIES {
        let first = get_with(app, &uri("/reflect", cc), &alice).await;
        assert_eq!((first.x_cache.as_str(), reflected(&first)), ("MISS", "alice-secret"), "{cc}");
        assert!(!stored(&first), "{cc}: alice's response is being stored: {first:?}");
        for _ in 0..2 {
            let second = get_with(app, &uri("/reflect", cc), &bob).await;
            assert_eq!(reflected(&second), "bob", "{cc}: bob got alice's header: {second:?}");
            assert_eq!(second.x_cache, "MISS", "{cc}");
        }
    }
    assert_eq!(cache.stats().stores, 0, "nothing was stored");
    if let Some(stored_values) = stored_values {
        for (key, value) in stored_values() {
            assert!(!value.contains("alice-secret"), "{key} holds alice's value");
        }
    }

    // Without them, the same handler hands alice's header to bob: the test is not vacuous.
    let plain = uri("/reflect", "max-age=60");
    let first = get_with(app, &plain, &alice).await;
    assert!(first.x_cache == "MISS" && stored(&first), "{first:?}");
    let mut second = get_with(app, &plain, &bob).await;
    for _ in 0..200 {
        if second.x_cache == "HIT" {
            break;
        }
        // The entry is written in the background.
        tokio::time::sleep(Duration::from_millis(10)).await;
        second = get_with(app, &plain, &bob).await;
    }
    assert_eq!((second.x_cache.as_str(), reflected(&second)), ("HIT", "alice-secret"));

    // `private` in any form may fill the user's own entry.
    let private = uri("/reflect-per-user", "private=\"x-reflect-x-client\", max-age=60");
    let alice = [("x-client", "alice-secret"), ("authorization", "Bearer alice")];
    let bob = [("x-client", "bob"), ("authorization", "Bearer bob")];
    let first = get_with(app, &private, &alice).await;
    assert!(first.x_cache == "MISS" && stored(&first), "{first:?}");
    let theirs = get_with(app, &private, &bob).await;
    assert_eq!((theirs.x_cache.as_str(), reflected(&theirs)), ("MISS", "bob"));
}

// Cache-Control in forms a lenient parser misreads (a `private` or `no-cache` with a field
// list, a `;` where a comma belongs, a quoted directive, contradicting `max-age`s), on a
// response that reflects the caller's header, against the in-process store.
#[tokio::test]
async fn cache_control_a_lenient_parser_misreads_never_shares_a_response_in_memory() {
    let (app, cache) = reflect_app(CacheLayer::builder(MemoryStore::new(16 * 1024 * 1024)));
    cache_control_a_lenient_parser_misreads_is_never_shared(&app, &cache, None).await;
}

// The same, against Redis.
#[cfg(feature = "redis")]
#[tokio::test]
async fn cache_control_a_lenient_parser_misreads_never_shares_a_response_in_redis() {
    let server = RedisServer::start();
    let (app, cache) = reflect_app(CacheLayer::builder(redis_store(&server).await));
    let stored_values = || dump(&server);
    cache_control_a_lenient_parser_misreads_is_never_shared(&app, &cache, Some(&stored_values))
        .await;
}

// ---------------------------------------------------------------------------------------------
// Cache-busting floods
// ---------------------------------------------------------------------------------------------

const BODY_BYTES: usize = 2048;

async fn padded(Path(name): Path<String>) -> String {
    let mut body = format!("item {name} ");
    body.extend(std::iter::repeat_n('.', BODY_BYTES - body.len()));
    body
}

// A cache-busting flood against a small in-process store: thousands of one-off URLs must not
// push out the entries that are actually in use (TinyLFU admission).
// The working set is what keeps being read: a flood of one-off URLs interleaved with that
// traffic must not push it out. (Frequencies age as the flood goes on, by moka's design, so a
// working set nobody reads any more does give way.)
#[tokio::test]
async fn a_flood_of_one_off_urls_does_not_evict_the_hot_working_set() {
    const CAPACITY: u64 = 256 * 1024;
    const HOT: usize = 20;
    let store = MemoryStore::new(CAPACITY);
    let cache = CacheLayer::builder(store.clone())
        .store_timeout(STORE_TIMEOUT)
        .without_compression()
        .route("/items/{name}", Rule::get())
        .build()
        .unwrap();
    let app = Router::new().route("/items/{name}", get(padded)).layer(cache);
    let working_set: Vec<String> = (0..HOT).map(|i| format!("/items/hot{i}")).collect();
    for uri in &working_set {
        assert_eq!(once_hit(&app, uri, &[]).await.body.len(), BODY_BYTES, "{uri} is stored");
    }

    let mut rng = fastrand::Rng::with_seed(7);
    let flood = 3_000;
    let mut hot_misses = 0;
    for i in 0..flood {
        let uri = format!("/items/cold{i}?cb={}", rng.u64(..));
        let reply = get_with(&app, &uri, &[]).await;
        assert_eq!(reply.x_cache, "MISS");
        // Each hot entry is read once every 200 one-off URLs, more than the store holds: an
        // LRU store would have pushed it out by then; admission by frequency does not.
        if i % 10 == 0 && get_with(&app, &working_set[i / 10 % HOT], &[]).await.x_cache != "HIT" {
            hot_misses += 1;
        }
        // Entries are written in the background: let the flood's reach the store.
        tokio::task::yield_now().await;
    }
    assert!(flood as u64 * BODY_BYTES as u64 > 20 * CAPACITY, "the flood is far over capacity");
    let used = store.used_bytes();
    assert!(used <= CAPACITY + BODY_BYTES as u64 * 2, "the store stays bounded: {used}");
    assert!(used > CAPACITY / 2, "the flood reached the store: {used} bytes");
    // Most stay (about 85% here): an LRU store would have none left by their next read
    // (moka's frequencies take a pass or two to build up, and age as the flood goes on).
    let hot_reads = flood / 10;
    assert!(
        hot_misses * 3 <= hot_reads,
        "{hot_misses} of {hot_reads} reads of the working set missed during the flood"
    );
}

/// Reads only `page`, as `key_query_params(["page"])` requires of the handler.
async fn list(
    State(calls): State<Arc<AtomicUsize>>,
    Query(q): Query<HashMap<String, String>>,
) -> String {
    calls.fetch_add(1, Ordering::SeqCst);
    format!("list page {}", q.get("page").map_or("1", String::as_str))
}

#[cfg(feature = "redis")]
async fn list_app(server: &RedisServer, prefix: &str, rule: Rule) -> (Router, Arc<AtomicUsize>) {
    let cache = CacheLayer::builder(redis_store(server).await)
        .store_timeout(STORE_TIMEOUT)
        .key_prefix(prefix)
        .route("/list", rule)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    (Router::new().route("/list", get(list)).with_state(calls.clone()).layer(cache), calls)
}

// A cache-busting flood against Redis: random junk parameters would each create an entry and
// reach the origin; `key_query_params` keeps them out of the key.
#[cfg(feature = "redis")]
#[tokio::test]
async fn random_junk_parameters_neither_reach_the_origin_nor_fill_redis() {
    const FLOOD: usize = 500;
    let server = RedisServer::start();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut junk = || format!("/list?page=1&junk={}", rng.u64(..));

    let (app, calls) = list_app(&server, "kept", Rule::get().key_query_params(["page"])).await;
    let first = get_with(&app, &junk(), &[]).await;
    assert_eq!((first.x_cache.as_str(), first.body.as_str()), ("MISS", "list page 1"));
    assert_eq!(get_with(&app, &junk(), &[]).await.x_cache, "HIT");
    let before = dbsize(&server);
    for _ in 2..FLOOD {
        let reply = get_with(&app, &junk(), &[]).await;
        assert_eq!((reply.x_cache.as_str(), reply.body.as_str()), ("HIT", "list page 1"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the origin saw the flood once");
    // (`<=`: the first miss's store lease may still have been there when `before` was read.)
    assert!(dbsize(&server) <= before, "Redis grew with the junk values");
    assert!(before <= 5, "an entry and a few tag versions: {before} keys");
    // The kept parameter still splits entries.
    assert_eq!(get_with(&app, "/list?page=2&junk=1", &[]).await.body, "list page 2");

    // Without the option, the same flood is one entry per junk value.
    let (app, calls) = list_app(&server, "all", Rule::get()).await;
    let before = dbsize(&server);
    for _ in 0..FLOOD {
        assert_eq!(get_with(&app, &junk(), &[]).await.x_cache, "MISS");
    }
    assert_eq!(calls.load(Ordering::SeqCst), FLOOD);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dbsize(&server) < before + FLOOD && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grown = dbsize(&server) - before;
    assert!(grown >= FLOOD, "one entry per junk value without the option: {grown} new keys");
}

/// A user's page, or `400` for an id that cannot be one (those start with `x`).
async fn user_or_400(Path(id): Path<String>) -> (StatusCode, String) {
    match id.starts_with('x') {
        true => (StatusCode::BAD_REQUEST, "bad id".into()),
        false => (StatusCode::OK, format!("user {id}")),
    }
}

fn users_app(store: impl tower_redis_cache::Store) -> Router {
    let cache = CacheLayer::builder(store)
        .store_timeout(STORE_TIMEOUT)
        .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]))
        .build()
        .unwrap();
    Router::new().route("/users/{id}", get(user_or_400)).layer(cache)
}

#[cfg(feature = "redis")]
/// The seconds Redis gives `key` to live (`TTL`).
fn ttl(server: &RedisServer, key: &str) -> i64 {
    let reply = server.command(&["TTL", key]).expect("TTL");
    reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("TTL: {reply:?}"))
}

// Junk paths answered `400` store nothing, and what their misses made (the provisional
// versions of their tags) goes away within a minute, where it used to stay a day. A stored
// entry's tag versions get the full lifetime.
#[cfg(feature = "redis")]
#[tokio::test]
async fn junk_paths_answered_400_leave_nothing_that_lasts_in_redis() {
    const FLOOD: usize = 1_000;
    let server = RedisServer::start();
    let app = users_app(redis_store(&server).await);
    for i in 0..FLOOD {
        let reply = get_with(&app, &format!("/users/x{i}"), &[]).await;
        assert_eq!((reply.status, reply.x_cache.as_str()), (StatusCode::BAD_REQUEST, "MISS"));
    }
    // Two tag versions each (`user:x<i>` and its path's), `users`, the one every entry
    // carries (`#all`) and perhaps the last miss lock; no entry.
    assert!(dbsize(&server) <= 2 * FLOOD + 3, "{} keys", dbsize(&server));
    for _ in 0..200 {
        let reply = server.command(&["RANDOMKEY"]).expect("RANDOMKEY");
        let key = reply.lines().nth(1).expect("a key");
        // Entry keys are `<prefix>:v1:e:<digest>`; a miss lock is that and `:lease`.
        assert!(!key.contains(":e:") || key.ends_with(":lease"), "a 400 was stored under {key}");
        let left = ttl(&server, key);
        assert!((0..=60).contains(&left), "{key} lasts {left} s");
    }

    assert_eq!(once_hit(&app, "/users/1", &[]).await.body, "user 1");
    let users_ttl = ttl(&server, "trc:v1:t:users");
    assert!(users_ttl > 3600, "a stored entry's tag versions are kept: {users_ttl} s");
    assert!(ttl(&server, "trc:v1:t:user:1") > 3600);
}

// The same in process: the versions junk paths leave expire, and meanwhile take no more than
// their share of the store's bound, however many there are.
#[tokio::test]
async fn junk_paths_answered_400_take_a_bounded_share_of_the_memory_store() {
    const CAPACITY: u64 = 1024 * 1024;
    let store = MemoryStore::new(CAPACITY);
    let app = users_app(store.clone());
    for i in 0..5_000 {
        let reply = get_with(&app, &format!("/users/x{i}"), &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }
    let versions = store.tag_version_bytes();
    assert!(versions <= CAPACITY / 16 + 512, "versions take {versions} bytes");
    assert!(versions >= CAPACITY / 32, "the flood filled the versions' share: {versions}");
    assert!(store.used_bytes() <= CAPACITY, "the whole store stays bounded");
    // A good path is stored, its tags' versions made and kept.
    assert_eq!(once_hit(&app, "/users/1", &[]).await.x_cache, "HIT");
}

// ---------------------------------------------------------------------------------------------
// Oversized and hostile input
// ---------------------------------------------------------------------------------------------

fn digest(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Describes the request in a way that changes with every input it reads: a response served
/// to the wrong request shows.
async fn echo(method: Method, uri: Uri, headers: HeaderMap) -> String {
    let header = |name: &str| headers.get(name).map_or(0, |v| digest(v.as_bytes()));
    // As tower-http's compression reads it: values that are not UTF-8 are ignored.
    let gzip = headers
        .get_all("accept-encoding")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.trim().eq_ignore_ascii_case("gzip"));
    format!(
        "{method} path={:x} ({} bytes) query={:x} ({} params) xfh={:x} lang={:x} auth={:x} gzip={gzip}",
        digest(uri.path().as_bytes()),
        uri.path().len(),
        digest(uri.query().unwrap_or("").as_bytes()),
        uri.query().map_or(0, |q| q.split('&').count()),
        header("x-forwarded-host"),
        header("accept-language"),
        header("authorization"),
    )
}

/// Reads only `q`, as `key_query_params(["q"])` requires.
async fn search(Query(q): Query<HashMap<String, String>>) -> String {
    format!("results for {:?}", q.get("q"))
}

async fn user_by_id(Path(id): Path<String>) -> String {
    format!("user {id}")
}

fn hostile_router() -> Router {
    Router::new()
        .route("/files/{*rest}", get(echo))
        .route("/search", get(search))
        .route("/users/{id}", get(user_by_id))
        .route("/any/{id}", any(echo))
        .route("/me", get(echo))
}

fn hostile_layer(builder: CacheLayerBuilder) -> CacheLayer {
    builder
        .store_timeout(STORE_TIMEOUT)
        .route("/files/{*rest}", Rule::get().vary(["accept-encoding", "accept-language"]))
        .route("/search", Rule::get().key_query_params(["q"]))
        .route("/users/{id}", Rule::get().tags(["user:{id}"]))
        .route("/users/{id}", Rule::delete().evicts(["user:{id}"]))
        .route("/any/{id}", Rule::get())
        .route("/me", Rule::get().per_user())
        .build()
        .unwrap()
}

/// One hostile request, rebuildable: requests cannot be cloned.
struct Hostile {
    what: &'static str,
    method: Method,
    uri: String,
    headers: Vec<(&'static str, HeaderValue)>,
    /// Whether a second identical request may be answered from the cache.
    may_hit: bool,
}

impl Hostile {
    fn new(what: &'static str, method: &[u8], uri: impl Into<String>, may_hit: bool) -> Self {
        let method = Method::from_bytes(method).unwrap();
        Self { what, method, uri: uri.into(), headers: Vec::new(), may_hit }
    }

    fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn request(&self) -> Request<Body> {
        let mut builder = Request::builder().method(self.method.clone()).uri(&self.uri);
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.clone());
        }
        builder.body(Body::empty()).unwrap()
    }
}

fn hostile_requests() -> Vec<Hostile> {
    let bytes = |b: &[u8]| HeaderValue::from_bytes(b).unwrap();
    let text = |s: &str| HeaderValue::from_str(s).unwrap();
    let long = |last: char| text(&format!("{}{last}", "a".repeat(32 * 1024 - 1)));
    // `http::Uri` takes at most 65,534 bytes (a 64 KiB path cannot be built): close to that.
    let long_path = format!("/files/{}", "a".repeat(65_000));
    // Many segments, but few enough not to hit the quadratic cost in `ambiguous_path` (see
    // `a_path_of_many_segments_costs_the_layer_about_what_it_costs_the_router`).
    let many_segments = format!("/files{}", "/a".repeat(2_000));
    // Distinct names, in reverse order so that the key has to sort them all.
    let many_params: Vec<String> = (0..10_000).rev().map(|i| format!("{i:x}=")).collect();
    let many_params = many_params.join("&");
    vec![
        Hostile::new("65,000-byte path", b"GET", long_path, true),
        Hostile::new("2,000 path segments", b"GET", many_segments, true),
        Hostile::new("32 KiB x-forwarded-host", b"GET", "/files/h", true)
            .header("x-forwarded-host", long('a')),
        Hostile::new("another 32 KiB x-forwarded-host", b"GET", "/files/h", true)
            .header("x-forwarded-host", long('b')),
        Hostile::new("32 KiB accept-language", b"GET", "/files/h", true)
            .header("accept-language", long('a')),
        Hostile::new("10,000 parameters", b"GET", format!("/files/q?{many_params}"), true),
        Hostile::new(
            "10,000 unkeyed parameters",
            b"GET",
            format!("/search?q=x&{many_params}"),
            true,
        ),
        Hostile::new("non-UTF-8 x-forwarded-host", b"GET", "/files/u", true)
            .header("x-forwarded-host", bytes(&[0xff, 0xfe, b'a'])),
        Hostile::new("another non-UTF-8 x-forwarded-host", b"GET", "/files/u", true)
            .header("x-forwarded-host", bytes(&[0xff, 0xfd, b'a'])),
        Hostile::new("gzip", b"GET", "/files/u", true).header("accept-encoding", text("gzip")),
        Hostile::new("non-UTF-8 accept-encoding", b"GET", "/files/u", true)
            .header("accept-encoding", bytes(&[0xff, 0xfe, b'a'])),
        Hostile::new("non-UTF-8 accept-language", b"GET", "/files/u", true)
            .header("accept-language", bytes(&[0xff, 0xfe, b'a'])),
        Hostile::new("non-UTF-8 authorization", b"GET", "/me", true)
            .header("authorization", bytes(&[0xff, 0xfe, b'a'])),
        Hostile::new("another non-UTF-8 authorization", b"GET", "/me", true)
            .header("authorization", bytes(&[0xff, 0xfd, b'a'])),
        Hostile::new("invalid UTF-8 path parameter", b"GET", "/users/%FF%FE", false),
        Hostile::new("invalid UTF-8 path parameter, lower case", b"GET", "/users/%ff%fe", false),
        Hostile::new("overlong UTF-8 path parameter", b"GET", "/users/%C0%AF", false),
        Hostile::new("plain GET", b"GET", "/any/1", true),
        Hostile::new("lower-case get", b"get", "/any/1", false),
        Hostile::new("FOO", b"FOO", "/any/1", false),
        Hostile::new("PURGE", b"PURGE", "/any/1", false),
        Hostile::new("FOO on a GET-only route", b"FOO", "/users/1", false),
        Hostile::new("PURGE on a GET-only route", b"PURGE", "/users/1", false),
        Hostile::new("lower-case get on a GET-only route", b"get", "/users/1", false),
        Hostile::new("override to FOO", b"GET", "/any/1", false)
            .header("x-http-method-override", text("FOO")),
    ]
}

/// The names of threads on which something panicked, for the tests to check their own.
fn panicked_threads() -> &'static Mutex<Vec<String>> {
    static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(name);
            previous(info);
        }));
    });
    &PANICS
}

/// Sends every hostile request to the bare router and twice through the layer: same status and
/// body each time, and no hit where there must be none.
async fn hostile_input_is_answered_as_the_handler_would(layer: CacheLayer) {
    let panics = panicked_threads();
    let bare = hostile_router();
    let cached = hostile_router().layer(layer);
    for hostile in hostile_requests() {
        let started = Instant::now();
        let expected = send(&bare, hostile.request()).await;
        let bare_time = started.elapsed();
        for attempt in 0..2 {
            let started = Instant::now();
            let reply = send(&cached, hostile.request()).await;
            let what = format!(
                "{} (attempt {attempt}, {:?} bare, {:?} cached)",
                hostile.what,
                bare_time,
                started.elapsed()
            );
            assert_eq!((reply.status, &reply.body), (expected.status, &expected.body), "{what}");
            if !hostile.may_hit || attempt == 0 {
                assert_ne!(reply.x_cache, "HIT", "{what}");
            }
        }
    }
    let me = std::thread::current().name().unwrap_or("").to_owned();
    let panics = panics.lock().unwrap().iter().filter(|name| **name == me).count();
    assert_eq!(panics, 0, "something panicked on this test's runtime");
}

// Oversized and malformed requests (huge paths, headers and queries, bytes that are not UTF-8,
// unknown methods) against the in-process store: no panic, no wrong or misplaced hit.
#[tokio::test]
async fn hostile_input_through_the_memory_store_is_answered_as_the_handler_would() {
    let layer = hostile_layer(CacheLayer::builder(MemoryStore::new(16 * 1024 * 1024)));
    hostile_input_is_answered_as_the_handler_would(layer).await;
}

// The same, against Redis.
#[cfg(feature = "redis")]
#[tokio::test]
async fn hostile_input_through_redis_is_answered_as_the_handler_would() {
    let server = RedisServer::start();
    let layer = hostile_layer(CacheLayer::builder(redis_store(&server).await));
    hostile_input_is_answered_as_the_handler_would(layer).await;
}

// CPU exhaustion through one long path: the longest URI `http::Uri` takes (65,534 bytes), made
// of 32,500 segments, to a wildcard route. Checking it for ambiguity must not cost more than
// routing it does.
#[tokio::test]
async fn a_path_of_many_segments_costs_the_layer_about_what_it_costs_the_router() {
    let layer = hostile_layer(CacheLayer::builder(MemoryStore::new(16 * 1024 * 1024)));
    let (bare, cached) = (hostile_router(), hostile_router().layer(layer));
    let path = format!("/files{}", "/a".repeat(32_500));
    let started = Instant::now();
    let expected = send(&bare, request(Method::GET, &path, &[])).await;
    let bare_time = started.elapsed();
    let started = Instant::now();
    let reply = send(&cached, request(Method::GET, &path, &[])).await;
    let cached_time = started.elapsed();
    assert_eq!(reply.body, expected.body);
    assert!(
        cached_time < bare_time + Duration::from_secs(1),
        "{cached_time:?} through the layer, {bare_time:?} without"
    );
}
