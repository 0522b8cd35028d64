// The service seen through tower-test: the inner service is a mock whose every call the test
// answers by hand, so each test knows exactly when the inner service was reached. Included by
// `tests/service_memory.rs` and `tests/service_redis.rs`, which each define `test_store()`.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio_test::{assert_pending, assert_ready_ok};
use tower_redis_cache::clock::ManualClock;
use tower_redis_cache::store::{Lookup, TagVersion};
use tower_redis_cache::{
    CacheBody, CacheHandle, CacheLayer, CacheLayerBuilder, CacheService, MemoryStore, Rule, Store,
    StoreError,
};
use tower_test::mock::{self, Handle, Mock};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;
type Req = Request<String>;
type Resp = Response<Body>;

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn ok(text: &'static str) -> Resp {
    Response::new(full(text))
}

fn with_header(mut response: Resp, name: &'static str, value: &'static str) -> Resp {
    response.headers_mut().append(name, HeaderValue::from_static(value));
    response
}

fn with_status(mut response: Resp, status: StatusCode) -> Resp {
    *response.status_mut() = status;
    response
}

fn get(path: &str) -> Req {
    Request::get(path).body(String::new()).unwrap()
}

fn get_as(path: &str, header: &str, value: &str) -> Req {
    Request::get(path).header(header, value).body(String::new()).unwrap()
}

fn request(method: Method, path: &str) -> Req {
    Request::builder().method(method).uri(path).body(String::new()).unwrap()
}

/// The time of day in this suite, on a whole second: it stands still unless a test moves it
/// (see [`clocked`]), so that ages and TTLs are exact and expiry takes no waiting.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A layer builder over a test store, with the clock stopped at [`t0`]. Store calls get time
/// enough on a loaded machine: a timed-out call fails open, which is right for the layer and
/// wrong for a test that counts inner calls.
fn builder_for(store: std::sync::Arc<dyn Store>) -> CacheLayerBuilder {
    CacheLayer::builder(store)
        .store_timeout(Duration::from_secs(2))
        .clock(ManualClock::starting_at(t0()))
}

/// `builder` with a clock (starting at [`t0`]) that the test moves forward by hand.
fn clocked(builder: CacheLayerBuilder) -> (CacheLayerBuilder, ManualClock) {
    let clock = ManualClock::starting_at(t0());
    (builder.clock(clock.clone()), clock)
}

/// The users API's rules, over whichever store.
fn users_rules(builder: CacheLayerBuilder) -> CacheLayerBuilder {
    builder
        .route("/users", Rule::get().tag("users"))
        .route("/users", Rule::post().evicts(["users"]))
        .route("/users/{id}", Rule::get().tags(["users", "user:{id}"]))
        .route("/users/{id}", Rule::mutations().evicts(["users", "user:{id}"]))
        .route("/me", Rule::get().per_user())
        .route("/public", Rule::get().shared())
        .bypass("/auth/{*rest}")
}

struct Harness {
    svc: mock::Spawn<CacheService<Mock<Req, Resp>>>,
    inner: Handle<Req, Resp>,
    cache: CacheHandle,
}

/// What a request through the harness gave.
struct Outcome {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    /// The request as the inner service saw it, if it was reached.
    reached_inner: Option<Req>,
}

impl Outcome {
    fn x_cache(&self) -> &str {
        self.headers.get("x-cache").map_or("", |v| v.to_str().unwrap())
    }
}

impl Harness {
    fn new(layer: CacheLayer) -> Self {
        let cache = layer.handle();
        let (svc, inner) = mock::spawn_layer(layer);
        Self { svc, inner, cache }
    }

    async fn users() -> Self {
        Self::new(users_rules(builder_for(test_store().await)).build().unwrap())
    }

    /// Sends `req`; if it reaches the inner service, answers with `respond`. Reads the whole
    /// body, then gives the background store write time to land.
    async fn send(&mut self, req: Req, respond: impl FnOnce(&Req) -> Resp) -> Outcome {
        assert_ready_ok!(self.svc.poll_ready());
        let mut call = tokio::spawn(self.svc.call(req));
        let mut reached_inner = None;
        let response = tokio::select! {
            response = &mut call => response,
            next = self.inner.next_request() => {
                let (seen, reply) = next.expect("the inner mock is alive");
                reply.send_response(respond(&seen));
                reached_inner = Some(seen);
                call.await
            }
        };
        let response = response.expect("no panic").expect("no error");
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("body reads");
        let trailers = collected.trailers().cloned();
        tokio::time::sleep(Duration::from_millis(5)).await;
        Outcome {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
            reached_inner,
        }
    }

    async fn get(&mut self, path: &str, text: &'static str) -> Outcome {
        self.send(get(path), |_| ok(text)).await
    }

    /// Sends `req` in this task and returns its response, leaving the inner service unanswered:
    /// a request that reaches it (a background refresh) waits there for the test to see.
    async fn call_unanswered(&mut self, req: Req) -> Response<CacheBody<Body>> {
        assert_ready_ok!(self.svc.poll_ready());
        self.svc.call(req).await.expect("no error")
    }
}

#[tokio::test]
async fn a_miss_is_stored_and_the_next_request_is_a_hit() {
    let mut h = Harness::users().await;
    let first =
        h.send(get("/users"), |_| with_header(ok("[1]"), "content-type", "application/json")).await;
    assert_eq!(first.x_cache(), "MISS");
    assert!(first.reached_inner.is_some());
    assert_eq!(first.body, "[1]");

    let second = h.get("/users", "must not be called").await;
    assert_eq!(second.x_cache(), "HIT");
    assert!(second.reached_inner.is_none(), "a hit must not reach the inner service");
    assert_eq!(second.body, "[1]");
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.headers["content-type"], "application/json");
    assert_eq!(second.headers["content-length"], "3");
    assert_eq!(second.headers["age"], "0");
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 1, 1));
}

#[tokio::test]
async fn entries_expire_after_the_rule_ttl() {
    let (builder, clock) = clocked(builder_for(test_store().await));
    let mut h = Harness::new(builder.route("/short", Rule::get().ttl(Duration::from_secs(60))).build().unwrap());
    h.get("/short", "one").await;
    clock.advance(Duration::from_secs(59));
    let hit = h.get("/short", "two").await;
    assert_eq!((hit.x_cache(), hit.headers["age"].to_str().unwrap()), ("HIT", "59"));
    clock.advance(Duration::from_secs(1));
    let after = h.get("/short", "three").await;
    assert_eq!((after.x_cache(), &after.body[..]), ("MISS", &b"three"[..]));
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry_without_a_body() {
    let mut h = Harness::users().await;
    let head_miss = h.send(request(Method::HEAD, "/users"), |_| ok("")).await;
    assert_eq!(head_miss.x_cache(), "MISS");
    assert_eq!(
        h.get("/users", "[1,2]").await.x_cache(),
        "MISS",
        "HEAD must not have stored an empty entry"
    );

    let head = h.send(request(Method::HEAD, "/users"), |_| ok("unused")).await;
    assert_eq!(head.x_cache(), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-length"], "5");
}

#[tokio::test]
async fn query_order_shares_an_entry_and_query_values_do_not() {
    let mut h = Harness::users().await;
    h.get("/users?a=1&b=2", "ab").await;
    assert_eq!(h.get("/users?b=2&a=1", "unused").await.body, "ab");
    let other = h.get("/users?a=2&b=2", "other").await;
    assert_eq!((other.x_cache(), &other.body[..]), ("MISS", &b"other"[..]));
}

#[tokio::test]
async fn requests_without_a_rule_or_with_a_bypass_rule_pass_through() {
    let mut h = Harness::users().await;
    for path in ["/health", "/auth/login", "/auth/a/b"] {
        for _ in 0..2 {
            let outcome = h.get(path, "fresh").await;
            assert_eq!(outcome.x_cache(), "BYPASS", "{path}");
            assert!(outcome.reached_inner.is_some(), "{path}");
        }
    }
    let options = h.send(request(Method::OPTIONS, "/users"), |_| ok("")).await;
    assert_eq!(options.x_cache(), "BYPASS");
    assert_eq!(h.cache.stats().bypasses, 7);
}

#[tokio::test]
async fn credentialed_requests_to_a_route_that_is_not_per_user_or_shared_bypass() {
    let mut h = Harness::users().await;
    h.get("/users", "anonymous").await;
    for (header, value) in [("authorization", "Bearer 1"), ("cookie", "session=1")] {
        let outcome = h.send(get_as("/users", header, value), |_| ok("for this user")).await;
        assert_eq!(outcome.x_cache(), "BYPASS", "{header}");
        assert_eq!(outcome.body, "for this user");
    }
    // And what they got was not stored for anyone else.
    assert_eq!(h.get("/users", "unused").await.body, "anonymous");
}

#[tokio::test]
async fn shared_routes_serve_credentialed_requests_from_the_shared_entry() {
    let mut h = Harness::users().await;
    h.send(get_as("/public", "authorization", "Bearer 1"), |_| ok("public")).await;
    let other = h.send(get_as("/public", "cookie", "s=2"), |_| ok("unused")).await;
    assert_eq!((other.x_cache(), &other.body[..]), ("HIT", &b"public"[..]));
    assert_eq!(h.get("/public", "unused").await.x_cache(), "HIT");
}

#[tokio::test]
async fn per_user_routes_keep_one_entry_per_user() {
    let mut h = Harness::users().await;
    let one = h.send(get_as("/me", "authorization", "Bearer 1"), |_| ok("user 1")).await;
    assert_eq!(one.x_cache(), "MISS");
    let two = h.send(get_as("/me", "authorization", "Bearer 2"), |_| ok("user 2")).await;
    assert_eq!((two.x_cache(), &two.body[..]), ("MISS", &b"user 2"[..]));
    let one_again = h.send(get_as("/me", "authorization", "Bearer 1"), |_| ok("unused")).await;
    assert_eq!((one_again.x_cache(), &one_again.body[..]), ("HIT", &b"user 1"[..]));
    let anonymous = h.send(get("/me"), |_| with_status(ok("who?"), StatusCode::UNAUTHORIZED)).await;
    assert_eq!(anonymous.x_cache(), "BYPASS");
}

#[tokio::test]
async fn successful_mutations_evict_their_tags() {
    let mut h = Harness::users().await;
    h.get("/users", "[1]").await;
    h.get("/users/1", "one").await;
    h.get("/users/2", "two").await;

    let put = h.send(request(Method::PUT, "/users/1"), |_| ok("updated")).await;
    assert_eq!(put.x_cache(), "BYPASS");
    // `users`, `user:1`, and the URI `/users/1` itself.
    assert_eq!(h.cache.stats().evictions, 3);

    assert_eq!(h.get("/users", "[1']").await.x_cache(), "MISS", "`users` was evicted");
    assert_eq!(h.get("/users/1", "one'").await.x_cache(), "MISS", "`user:1` was evicted");
    // `/users/2` carries `users` too, so it went as well: tags are shared.
    assert_eq!(h.get("/users/2", "two'").await.x_cache(), "MISS");
    assert_eq!(h.get("/users/2", "unused").await.body, "two'");
}

#[tokio::test]
async fn a_write_evicts_only_what_its_tags_name() {
    let layer = builder_for(test_store().await)
        .route("/items/{id}", Rule::get().tag("item:{id}"))
        .route("/items/{id}", Rule::delete().evicts(["item:{id}"]))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.get("/items/1", "one").await;
    h.get("/items/2", "two").await;
    h.send(request(Method::DELETE, "/items/1"), |_| with_status(ok(""), StatusCode::NO_CONTENT))
        .await;
    assert_eq!(h.get("/items/1", "gone").await.x_cache(), "MISS");
    assert_eq!(h.get("/items/2", "unused").await.x_cache(), "HIT");
}

#[tokio::test]
async fn percent_encoded_params_evict_the_same_tag() {
    let mut h = Harness::users().await;
    h.get("/users/%31", "one").await;
    h.send(request(Method::PUT, "/users/1"), |_| ok("")).await;
    assert_eq!(h.get("/users/%31", "one'").await.x_cache(), "MISS");
}

#[tokio::test]
async fn failed_mutations_evict_nothing() {
    let mut h = Harness::users().await;
    h.get("/users", "[1]").await;
    for status in [StatusCode::BAD_REQUEST, StatusCode::INTERNAL_SERVER_ERROR, StatusCode::CONFLICT]
    {
        h.send(request(Method::POST, "/users"), move |_| with_status(ok(""), status)).await;
        assert_eq!(h.get("/users", "unused").await.x_cache(), "HIT", "{status}");
    }
    assert_eq!(h.cache.stats().evictions, 0);
}

#[tokio::test]
async fn a_redirect_invalidates_the_target_uri_but_not_the_declared_tags() {
    let mut h = Harness::users().await;
    h.get("/users", "[1]").await;
    h.get("/users/1", "one").await;
    h.send(request(Method::POST, "/users"), |_| with_status(ok(""), StatusCode::FOUND)).await;
    assert_eq!(
        h.get("/users", "[1']").await.x_cache(),
        "MISS",
        "RFC 9111 4.4: 3xx is not an error"
    );
    assert_eq!(
        h.get("/users/1", "unused").await.x_cache(),
        "HIT",
        "`users` is evicted on 2xx only"
    );
}

#[tokio::test]
async fn the_handle_evicts_from_outside_http() {
    let mut h = Harness::users().await;
    h.get("/users/7", "seven").await;
    h.cache.evict_tags(["user:7"]).await.unwrap();
    assert_eq!(h.get("/users/7", "seven'").await.x_cache(), "MISS");
}

#[tokio::test]
async fn only_cacheable_responses_are_stored() {
    type Responder = fn() -> Resp;
    let cases: Vec<(&str, Responder)> = vec![
        ("404", || with_status(ok("missing"), StatusCode::NOT_FOUND)),
        ("500", || with_status(ok("boom"), StatusCode::INTERNAL_SERVER_ERROR)),
        ("set-cookie", || with_header(ok("x"), "set-cookie", "session=secret")),
        ("no-store", || with_header(ok("x"), "cache-control", "no-store")),
        ("no-store among others", || with_header(ok("x"), "cache-control", "max-age=60, No-Store")),
        ("no-cache", || with_header(ok("x"), "cache-control", "no-cache")),
        ("private on a shared route", || with_header(ok("x"), "cache-control", "private")),
        ("vary *", || with_header(ok("x"), "vary", "*")),
    ];
    for (name, respond) in cases {
        let mut h = Harness::users().await;
        let first = h.send(get("/users"), |_| respond()).await;
        assert_eq!(first.x_cache(), "MISS", "{name}");
        let second = h.send(get("/users"), |_| respond()).await;
        assert!(second.reached_inner.is_some(), "{name}: must not have been stored");
        assert_eq!(h.cache.stats().stores, 0, "{name}");
    }
}

#[tokio::test]
async fn private_responses_are_stored_per_user_only() {
    let mut h = Harness::users().await;
    let private = || with_header(ok("mine"), "cache-control", "private, max-age=60");
    h.send(get_as("/me", "authorization", "Bearer 1"), |_| private()).await;
    let again = h.send(get_as("/me", "authorization", "Bearer 1"), |_| private()).await;
    assert_eq!(again.x_cache(), "HIT");
}

#[tokio::test]
async fn statuses_and_vary_headers_are_configurable() {
    let layer = builder_for(test_store().await)
        .route("/gone", Rule::get().cache_statuses([StatusCode::OK, StatusCode::NOT_FOUND]))
        .route("/greeting", Rule::get().vary(["accept-language"]))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.send(get("/gone"), |_| with_status(ok("no"), StatusCode::NOT_FOUND)).await;
    let hit = h.get("/gone", "unused").await;
    assert_eq!((hit.x_cache(), hit.status), ("HIT", StatusCode::NOT_FOUND));

    let vary = |text| move |_: &Req| with_header(ok(text), "vary", "Accept-Language");
    h.send(get_as("/greeting", "accept-language", "en"), vary("hello")).await;
    h.send(get_as("/greeting", "accept-language", "fr"), vary("bonjour")).await;
    let en = h.send(get_as("/greeting", "accept-language", "en"), vary("unused")).await;
    let fr = h.send(get_as("/greeting", "accept-language", "fr"), vary("unused")).await;
    assert_eq!((en.x_cache(), &en.body[..]), ("HIT", &b"hello"[..]));
    assert_eq!((fr.x_cache(), &fr.body[..]), ("HIT", &b"bonjour"[..]));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_replayed() {
    let mut h = Harness::users().await;
    h.send(get("/users"), |_| {
        with_header(with_header(ok("x"), "connection", "close"), "x-kept", "1")
    })
    .await;
    let hit = h.get("/users", "unused").await;
    assert!(hit.headers.get("connection").is_none());
    assert_eq!(hit.headers["x-kept"], "1");
}

fn streamed(frames: Vec<Result<http_body::Frame<Bytes>, BoxError>>) -> Body {
    StreamBody::new(futures_stream(frames)).boxed_unsync()
}

fn futures_stream(
    frames: Vec<Result<http_body::Frame<Bytes>, BoxError>>,
) -> impl tokio_stream::Stream<Item = Result<http_body::Frame<Bytes>, BoxError>> {
    tokio_stream::iter(frames)
}

#[tokio::test]
async fn streamed_bodies_and_trailers_are_stored_whole() {
    let mut h = Harness::users().await;
    let respond = |_: &Req| {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        Response::new(streamed(vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"hello "))),
            Ok(http_body::Frame::data(Bytes::from_static(b"world"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]))
    };
    let first = h.send(get("/users"), respond).await;
    assert_eq!(first.body, "hello world");
    let hit = h.get("/users", "unused").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, "hello world");
    assert_eq!(hit.trailers.unwrap()["x-checksum"], "abc");
}

#[tokio::test]
async fn bodies_that_fail_midway_are_not_stored() {
    let mut h = Harness::users().await;
    let respond = |_: &Req| {
        Response::new(streamed(vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
            Err("upstream reset".into()),
        ]))
    };
    assert_ready_ok!(h.svc.poll_ready());
    let call = tokio::spawn(h.svc.call(get("/users")));
    let (seen, reply) = h.inner.next_request().await.unwrap();
    reply.send_response(respond(&seen));
    let response = call.await.unwrap().unwrap();
    assert!(response.into_body().collect().await.is_err(), "the body error reaches the client");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.get("/users", "whole").await.x_cache(), "MISS");
}

#[tokio::test]
async fn a_client_that_disconnects_midway_does_not_stop_the_entry_being_stored() {
    let mut h = Harness::users().await;
    assert_ready_ok!(h.svc.poll_ready());
    let call = tokio::spawn(h.svc.call(get("/users")));
    let (_, reply) = h.inner.next_request().await.unwrap();
    let (feed, body) = fed();
    reply.send_response(Response::new(body));
    let mut body = call.await.unwrap().unwrap().into_body();
    feed.send("first half ").await.unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first half ");
    drop(body); // the client went away
    feed.send("second half").await.unwrap();
    drop(feed);
    // The requests waiting on the miss lock want the entry: it is read to its end and stored.
    let next = h.get("/users", "must not be called").await;
    assert_eq!((next.x_cache(), &next.body[..]), ("HIT", &b"first half second half"[..]));
    assert_eq!(h.cache.stats().stores, 1);
}

#[tokio::test]
async fn bodies_over_the_limit_stream_through_unstored() {
    let layer =
        users_rules(builder_for(test_store().await)).max_body_bytes(8).build().unwrap();
    let mut h = Harness::new(layer);
    // Known length over the limit.
    let big = h.get("/users", "0123456789").await;
    assert_eq!(big.body, "0123456789");
    // Unknown length that grows over the limit while streaming.
    let respond = |_: &Req| {
        Response::new(streamed(vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"01234"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"56789"))),
        ]))
    };
    let streamed = h.send(get("/users/1"), respond).await;
    assert_eq!(streamed.body, "0123456789");
    assert_eq!(h.get("/users", "again").await.x_cache(), "MISS");
    assert_eq!(h.get("/users/1", "again").await.x_cache(), "MISS");
    // At the limit is fine.
    h.get("/users/2", "01234567").await;
    assert_eq!(h.get("/users/2", "unused").await.x_cache(), "HIT");
}

/// A body the test feeds frame by frame.
fn fed() -> (tokio::sync::mpsc::Sender<&'static str>, Body) {
    let (feed, frames) = tokio::sync::mpsc::channel(4);
    let frames = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(frames),
        |text: &'static str| Ok(http_body::Frame::data(Bytes::from_static(text.as_bytes()))),
    );
    (feed, StreamBody::new(frames).boxed_unsync())
}

#[tokio::test]
async fn copies_in_flight_share_one_memory_budget_and_past_it_bodies_stream_uncaptured() {
    let layer = users_rules(builder_for(test_store().await))
        .max_body_bytes(100)
        .max_capture_bytes(150)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let mut start = |path: &str| {
        assert_ready_ok!(h.svc.poll_ready());
        tokio::spawn(h.svc.call(get(path)))
    };
    let calls = [start("/users/1"), start("/users/2")];
    // The calls reach the inner service in whichever order their lookups finish: answer each,
    // then keep the feeds in the order of the calls.
    let mut feeds = Vec::new();
    for _ in 0..2 {
        let (seen, reply) = h.inner.next_request().await.unwrap();
        let (feed, body) = fed();
        reply.send_response(Response::new(body));
        feeds.push((seen.uri().path().to_owned(), feed));
    }
    feeds.sort_by(|(a, _), (b, _)| a.cmp(b));
    let feeds: Vec<_> = feeds.into_iter().map(|(_, feed)| feed).collect();
    let mut bodies = Vec::new();
    for call in calls {
        bodies.push(call.await.unwrap().unwrap().into_body());
    }
    // 80 bytes each, streamed side by side: the second copy would take the total past 150.
    for _ in 0..2 {
        for (feed, body) in feeds.iter().zip(&mut bodies) {
            feed.send("0123456789012345678901234567890123456789").await.unwrap();
            body.frame().await.unwrap().unwrap();
        }
    }
    drop(feeds);
    for body in bodies {
        assert!(body.collect().await.unwrap().to_bytes().is_empty(), "all read already");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(h.get("/users/1", "unused").await.x_cache(), "HIT");
    assert_eq!(h.get("/users/2", "again").await.x_cache(), "MISS", "streamed through uncaptured");
    assert_eq!(h.get("/users/2", "unused").await.x_cache(), "HIT", "the budget was given back");
    let err = CacheLayer::builder(MemoryStore::default())
        .max_capture_bytes(10)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("option `max_capture_bytes`: must be at least max_body_bytes"), "{err}");
}

/// A response whose body is `len` bytes.
fn of_len(len: usize) -> Resp {
    Response::new(Full::new(Bytes::from(vec![b'x'; len])).map_err(|e: Infallible| match e {}).boxed_unsync())
}

/// Runs `test` within a bound far below the miss lock timeouts below, so that a request that
/// waited one out fails the test instead of passing slowly.
async fn well_within_the_miss_lock(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("a request waited out the miss lock");
}

#[tokio::test]
async fn a_leader_whose_client_never_reads_still_stores_the_entry_for_the_waiting_requests() {
    let layer = users_rules(builder_for(test_store().await))
        .miss_lock_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    well_within_the_miss_lock(async {
        assert_ready_ok!(h.svc.poll_ready());
        let leader = tokio::spawn(h.svc.call(get("/users")));
        let (_, reply) = h.inner.next_request().await.unwrap();
        reply.send_response(of_len(10_000));
        // An HTTP/2 client that never opens its window: its body is never polled.
        let unread = leader.await.unwrap().unwrap();
        let next = h.get("/users", "must not be called").await;
        assert_eq!(next.x_cache(), "HIT");
        assert!(next.reached_inner.is_none());
        assert_eq!(next.body.len(), 10_000);
        assert_eq!(body_text(unread).await.len(), 10_000, "the client still gets it all");
    })
    .await;
}

#[tokio::test]
async fn leaders_whose_clients_never_read_give_the_capture_budget_back_once_their_bodies_end() {
    let layer = users_rules(builder_for(test_store().await))
        .max_body_bytes(1_000)
        .max_capture_bytes(3_000)
        .miss_lock_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    well_within_the_miss_lock(async {
        let mut unread = Vec::new();
        for id in 0..10 {
            let path = format!("/users/{id}");
            assert_ready_ok!(h.svc.poll_ready());
            let leader = tokio::spawn(h.svc.call(get(&path)));
            let (_, reply) = h.inner.next_request().await.unwrap();
            reply.send_response(of_len(1_000));
            let response = leader.await.unwrap().unwrap();
            let status = response.headers()["cache-status"].to_str().unwrap();
            assert!(status.contains("stored"), "{path} was captured: {status}");
            unread.push(response);
            // Waits for the leader's flight, which ends once its entry is stored.
            let next = h.get(&path, "must not be called").await;
            assert_eq!(next.x_cache(), "HIT", "{path}");
        }
        assert_eq!(h.cache.stats().stores, 10);
    })
    .await;
}

#[tokio::test]
async fn past_max_body_bytes_a_client_that_does_not_read_holds_the_rest_of_the_body_back() {
    let layer = users_rules(builder_for(test_store().await))
        .max_body_bytes(1_024)
        .miss_lock_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&pulled);
    let frames = tokio_stream::StreamExt::map(tokio_stream::iter(0..100), move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(vec![b'x'; 512])))
    });
    well_within_the_miss_lock(async {
        assert_ready_ok!(h.svc.poll_ready());
        let leader = tokio::spawn(h.svc.call(get("/users")));
        let (_, reply) = h.inner.next_request().await.unwrap();
        reply.send_response(Response::new(StreamBody::new(frames).boxed_unsync()));
        let unread = leader.await.unwrap().unwrap();
        // The leader's flight ends when its capture goes over the limit; this request calls
        // the inner service itself then.
        let next = h.get("/users", "small").await;
        assert_eq!(next.x_cache(), "MISS");
        // Two frames fit in 1 KiB, the third went over: nothing was read past it.
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(body_text(unread).await.len(), 100 * 512, "the client reads the rest itself");
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 100);
    })
    .await;
}

#[tokio::test]
async fn empty_bodies_are_stored_too() {
    let mut h = Harness::users().await;
    h.get("/users", "").await;
    let hit = h.get("/users", "unused").await;
    assert_eq!((hit.x_cache(), hit.body.len()), ("HIT", 0));
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let mut h = Harness::users().await;
    h.inner.allow(0);
    assert_pending!(h.svc.poll_ready());
    h.inner.allow(1);
    assert_ready_ok!(h.svc.poll_ready());
    h.inner.send_error("not ready");
    let err = match h.svc.poll_ready() {
        std::task::Poll::Ready(Err(e)) => e,
        _ => panic!("the inner readiness error must come through"),
    };
    assert_eq!(err.to_string(), "not ready");
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged() {
    for req in [get("/users"), get("/health"), request(Method::POST, "/users")] {
        let mut h = Harness::users().await;
        let path = req.uri().to_string();
        assert_ready_ok!(h.svc.poll_ready());
        let call = tokio::spawn(h.svc.call(req));
        let (_, reply) = h.inner.next_request().await.unwrap();
        reply.send_error("inner failed");
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "inner failed", "{path}");
    }
}

#[tokio::test]
async fn the_status_header_can_be_renamed_or_left_out() {
    let renamed = builder_for(test_store().await)
        .route("/a", Rule::get())
        .x_cache_header(http::HeaderName::from_static("x-edge-cache"))
        .build()
        .unwrap();
    let mut h = Harness::new(renamed);
    h.get("/a", "a").await;
    let hit = h.get("/a", "unused").await;
    assert_eq!(hit.headers["x-edge-cache"], "HIT");
    assert!(hit.headers.get("x-cache").is_none());

    let silent = builder_for(test_store().await)
        .route("/a", Rule::get())
        .without_x_cache_header()
        .without_cache_status()
        .build()
        .unwrap();
    let mut h = Harness::new(silent);
    h.get("/a", "a").await;
    assert!(h.get("/a", "unused").await.headers.get("x-cache").is_none());
    let other = h.get("/other", "x").await;
    assert!(other.headers.get("x-cache").is_none());
    assert!(other.headers.get("cache-status").is_none());
}

#[tokio::test]
async fn cache_status_tells_what_happened_as_rfc_9211_says() {
    let mut h = Harness::users().await;
    let cache_status = |o: &Outcome| o.headers["cache-status"].to_str().unwrap().to_owned();
    let first = h.get("/users", "[]").await;
    assert_eq!(cache_status(&first), "tower-redis-cache; fwd=uri-miss; stored; ttl=60");
    let hit = h.get("/users", "unused").await;
    assert_eq!(cache_status(&hit), "tower-redis-cache; hit; ttl=60");
    h.send(request(Method::POST, "/users"), |_| with_status(ok(""), StatusCode::CREATED)).await;
    let evicted = h.send(get("/users"), |_| with_status(ok("x"), StatusCode::NOT_FOUND)).await;
    assert_eq!(cache_status(&evicted), "tower-redis-cache; fwd=miss");
    assert_eq!(cache_status(&h.get("/health", "ok").await), "tower-redis-cache; fwd=bypass");

    // Upstream caches' entries are kept, ours goes last.
    let chained =
        h.send(get("/users/1"), |_| with_header(ok("x"), "cache-status", "origin; hit")).await;
    let values: Vec<_> = chained.headers.get_all("cache-status").iter().collect();
    assert_eq!(values, ["origin; hit", "tower-redis-cache; fwd=uri-miss; stored; ttl=60"]);
}

#[tokio::test]
async fn cache_status_names_the_key_only_when_debugging() {
    let layer = builder_for(test_store().await)
        .route("/a", Rule::get())
        .cache_status_name("edge-1")
        .cache_status_key(true)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let miss = h.get("/a", "a").await;
    let value = miss.headers["cache-status"].to_str().unwrap();
    assert!(value.starts_with("edge-1; fwd=uri-miss; stored; ttl=60; key=\"trc:v1:e:"), "{value}");
    assert!(Harness::users().await.get("/users", "x").await.headers["cache-status"]
        .to_str()
        .unwrap()
        .find("key=")
        .is_none());
}

#[tokio::test]
async fn a_store_error_shows_in_cache_status() {
    let layer = users_rules(CacheLayer::builder(BrokenStore::Failing)).build().unwrap();
    let mut h = Harness::new(layer);
    let outcome = h.get("/users", "x").await;
    assert_eq!(outcome.headers["cache-status"], "tower-redis-cache; fwd=miss; detail=store-error");
}

/// The slow-miss race of guarantee 2: a miss reads old data, a write and its eviction complete,
/// then the slow miss stores its (old) response. That entry must never be served.
#[tokio::test]
async fn a_slow_miss_that_finishes_after_a_write_is_never_served() {
    let mut h = Harness::users().await;
    assert_ready_ok!(h.svc.poll_ready());
    let slow_read = tokio::spawn(h.svc.call(get("/users/1")));
    let (_, answer_slow_read) = h.inner.next_request().await.unwrap();
    // The read has computed its answer from the old row ("old") but not returned yet.

    let write = h.send(request(Method::PUT, "/users/1"), |_| ok("new")).await;
    assert_eq!(write.status, StatusCode::OK);

    answer_slow_read.send_response(ok("old"));
    let stale = slow_read.await.unwrap().unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(stale, "old", "the slow read itself started before the write");
    tokio::time::sleep(Duration::from_millis(5)).await;

    let after = h.get("/users/1", "new").await;
    assert_eq!((after.x_cache(), &after.body[..]), ("MISS", &b"new"[..]));
    assert_eq!(h.get("/users/1", "unused").await.body, "new");
}

/// A store that always fails, or never answers: the layer must serve every request anyway.
#[derive(Clone, Copy)]
enum BrokenStore {
    Failing,
    Hanging,
}

#[async_trait]
impl Store for BrokenStore {
    async fn lookup(&self, _: &str, _: &[String]) -> Result<Lookup, StoreError> {
        self.fail().await
    }
    async fn ensure_tag_versions(&self, _: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        self.fail().await
    }
    async fn put(&self, _: &str, _: Bytes, _: Duration) -> Result<(), StoreError> {
        self.fail().await
    }
    async fn evict_tags(&self, _: &[String]) -> Result<(), StoreError> {
        self.fail().await
    }
}

impl BrokenStore {
    async fn fail<T>(&self) -> Result<T, StoreError> {
        match self {
            BrokenStore::Failing => Err(StoreError::msg("connection refused")),
            BrokenStore::Hanging => std::future::pending().await,
        }
    }
}

#[tokio::test]
async fn a_broken_store_never_fails_a_request() {
    let timeout = Duration::from_millis(150);
    for store in [BrokenStore::Failing, BrokenStore::Hanging] {
        let layer = users_rules(CacheLayer::builder(store)).store_timeout(timeout).build().unwrap();
        let mut h = Harness::new(layer);
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let outcome = h.get("/users", "from the handler").await;
            assert_eq!(
                (outcome.status, &outcome.body[..]),
                (StatusCode::OK, &b"from the handler"[..])
            );
            assert_eq!(outcome.x_cache(), "MISS");
            // One store call, bounded by the timeout: a failed lookup is not followed by more.
            assert!(started.elapsed() < timeout * 2, "took {:?}", started.elapsed());
        }
        let write = h
            .send(request(Method::POST, "/users"), |_| {
                with_status(ok("created"), StatusCode::CREATED)
            })
            .await;
        assert_eq!(write.status, StatusCode::CREATED);
        assert!(h.cache.stats().store_errors >= 4);
    }
}

/// The test store, made to stop answering (a stalled Redis) at will; counts the calls it gets.
struct StallingStore {
    inner: std::sync::Arc<dyn Store>,
    stalled: std::sync::atomic::AtomicBool,
    calls: std::sync::atomic::AtomicUsize,
}

impl StallingStore {
    async fn answer<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        call.await
    }
}

#[async_trait]
impl Store for StallingStore {
    async fn lookup(&self, key: &str, tags: &[String]) -> Result<Lookup, StoreError> {
        self.answer(self.inner.lookup(key, tags)).await
    }
    async fn ensure_tag_versions(&self, tags: &[String]) -> Result<Vec<TagVersion>, StoreError> {
        self.answer(self.inner.ensure_tag_versions(tags)).await
    }
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        self.answer(self.inner.put(key, value, ttl)).await
    }
    async fn evict_tags(&self, tags: &[String]) -> Result<(), StoreError> {
        self.answer(self.inner.evict_tags(tags)).await
    }
    async fn acquire_lease(&self, key: &str, holder: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.answer(self.inner.acquire_lease(key, holder, ttl)).await
    }
    async fn release_lease(&self, key: &str, holder: u64) -> Result<(), StoreError> {
        self.answer(self.inner.release_lease(key, holder)).await
    }
}

#[tokio::test]
async fn a_stalled_store_is_skipped_once_the_breaker_opens_and_probed_until_it_is_back() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = std::sync::Arc::new(StallingStore {
        inner: test_store().await,
        stalled: true.into(),
        calls: 0.into(),
    });
    let timeout = Duration::from_millis(100);
    let layer = users_rules(CacheLayer::builder(store.clone()))
        .store_timeout(timeout)
        .circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(h.get("/users", "from the handler").await.body, "from the handler");
        assert!(started.elapsed() >= timeout, "each waited for the store");
    }
    assert_eq!((h.cache.stats().breaker_opened, store.calls.load(SeqCst)), (1, 3));

    // Open: the store is not called, so it adds nothing to the requests.
    for _ in 0..20 {
        assert_eq!(h.get("/users", "from the handler").await.body, "from the handler");
    }
    assert_eq!(store.calls.load(SeqCst), 3, "no store calls while open");
    assert_eq!(h.cache.stats().store_skipped, 20);

    // Still stalled when the first probe goes: it fails, and the breaker opens again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.get("/users", "from the handler").await;
    assert_eq!(store.calls.load(SeqCst), 4, "one probe");
    h.get("/users", "from the handler").await;
    assert_eq!(store.calls.load(SeqCst), 4, "open again after the failed probe");

    // Back: the next probe closes it, and the cache works again.
    store.stalled.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.get("/users", "stored").await.x_cache(), "MISS");
    let hit = h.get("/users", "unused").await;
    assert_eq!((hit.x_cache(), &hit.body[..]), ("HIT", &b"stored"[..]));
    assert_eq!(h.cache.stats().breaker_opened, 1);
}

#[tokio::test]
async fn commands_the_store_refuses_do_not_open_the_breaker() {
    let layer = users_rules(CacheLayer::builder(BrokenStore::Failing))
        .circuit_breaker(2, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    for _ in 0..5 {
        h.get("/users", "x").await;
    }
    let stats = h.cache.stats();
    assert_eq!((stats.breaker_opened, stats.store_skipped, stats.store_errors), (0, 0, 5));
}

#[tokio::test]
async fn while_an_eviction_is_pending_its_entries_are_bypassed() {
    let layer = users_rules(CacheLayer::builder(BrokenStore::Failing)).build().unwrap();
    let mut h = Harness::new(layer);
    h.send(request(Method::PUT, "/users/1"), |_| ok("")).await;
    // `users` and `user:1` could not be evicted: their entries must not be served.
    assert_eq!(h.get("/users/1", "fresh").await.x_cache(), "BYPASS");
    assert_eq!(h.get("/users", "fresh").await.x_cache(), "BYPASS");
    // Routes without those tags are still looked up.
    assert_eq!(
        h.send(get_as("/me", "authorization", "Bearer 1"), |_| ok("me")).await.x_cache(),
        "MISS"
    );
}

#[tokio::test]
async fn clones_share_entries_and_counters() {
    let layer = users_rules(builder_for(test_store().await)).build().unwrap();
    let handle = layer.handle();
    let mut a = Harness::new(layer.clone());
    let mut b = Harness::new(layer);
    a.get("/users", "from a").await;
    assert_eq!(b.get("/users", "unused").await.body, "from a");
    assert_eq!(handle.stats().hits, 1);
}

#[test]
fn cache_body_is_send() {
    fn send<T: Send>() {}
    send::<CacheBody<Body>>();
}

#[tokio::test]
async fn per_user_routes_can_share_one_entry_among_anonymous_requests() {
    // `Arc<dyn Store>` is a store too: applications can pick theirs at run time.
    let store: std::sync::Arc<dyn Store> = test_store().await;
    let layer = builder_for(store)
        .route("/page", Rule::get().per_user().share_anonymous())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.get("/page", "for everyone").await;
    let anonymous = h.get("/page", "unused").await;
    assert_eq!((anonymous.x_cache(), &anonymous.body[..]), ("HIT", &b"for everyone"[..]));

    let user = h.send(get_as("/page", "authorization", "Bearer 1"), |_| ok("for user 1")).await;
    assert_eq!((user.x_cache(), &user.body[..]), ("MISS", &b"for user 1"[..]));
    let user = h.send(get_as("/page", "authorization", "Bearer 1"), |_| ok("unused")).await;
    assert_eq!((user.x_cache(), &user.body[..]), ("HIT", &b"for user 1"[..]));
    // A cookie the identity does not read cannot be keyed: it must not reach the shared entry.
    let cookie = h.send(get_as("/page", "cookie", "session=9"), |_| ok("for session 9")).await;
    assert_eq!((cookie.x_cache(), &cookie.body[..]), ("BYPASS", &b"for session 9"[..]));
    assert_eq!(h.get("/page", "unused").await.body, "for everyone");
}

#[tokio::test]
async fn private_responses_to_anonymous_requests_are_not_shared() {
    let layer = builder_for(test_store().await)
        .route("/page", Rule::get().per_user().share_anonymous())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let private = || with_header(ok("x"), "cache-control", "private");
    h.send(get("/page"), |_| private()).await;
    assert!(h.send(get("/page"), |_| private()).await.reached_inner.is_some());
}

#[test]
fn bad_options_fail_the_build_naming_the_option() {
    let err = |builder: CacheLayerBuilder| builder.build().unwrap_err().to_string();
    let base = || CacheLayer::builder(MemoryStore::default()); // build errors need no store
    assert_eq!(
        err(base().cache_status_name("my cache")),
        "option `cache_status_name`: `my cache` is not a token (letters, digits and !#$%&'*+-.^_`|~:/)"
    );
    assert!(err(base().key_prefix("")).starts_with("option `key_prefix`"));
    assert!(err(base().key_prefix("a{b}")).starts_with("option `key_prefix`"));
    assert!(err(base().store_timeout(Duration::ZERO)).starts_with("option `store_timeout`"));
    assert!(err(base().max_body_bytes(0)).starts_with("option `max_body_bytes`"));
    assert!(err(base().default_ttl(Duration::ZERO)).starts_with("option `default_ttl`"));
    assert!(err(base().cache_statuses([])).starts_with("option `cache_statuses`"));
}

/// RFC 9111 section 4.4: the proxy example has read rules and no mutation rule at all.
async fn proxy_like() -> Harness {
    Harness::new(
        builder_for(test_store().await).route("/{*path}", Rule::get()).build().unwrap(),
    )
}

#[tokio::test]
async fn unsafe_requests_invalidate_their_target_uri_without_any_mutation_rule() {
    let mut h = proxy_like().await;
    h.get("/items/1", "one").await;
    h.get("/items/1?page=2", "one, page 2").await;
    h.get("/items/2", "two").await;
    for (method, status) in
        [(Method::POST, StatusCode::CREATED), (Method::DELETE, StatusCode::SEE_OTHER)]
    {
        h.send(request(method.clone(), "/items/1"), move |_| with_status(ok(""), status)).await;
        assert_eq!(h.get("/items/1", "one'").await.x_cache(), "MISS", "{method}");
        assert_eq!(
            h.get("/items/1?page=2", "page 2'").await.x_cache(),
            "MISS",
            "every query of the path"
        );
        assert_eq!(h.get("/items/2", "unused").await.x_cache(), "HIT", "other paths stay");
    }
}

#[tokio::test]
async fn an_unsafe_request_invalidates_every_spelling_of_its_path() {
    let mut h = proxy_like().await;
    h.get("/items/%31", "one").await; // the same resource to a router that decodes `%31`
    h.get("/items/1", "one").await;
    h.send(request(Method::DELETE, "/items/%31"), |_| ok("")).await;
    assert_eq!(h.get("/items/1", "gone").await.x_cache(), "MISS");
    h.send(request(Method::DELETE, "/items/1"), |_| ok("")).await;
    assert_eq!(h.get("/items/%31", "gone").await.x_cache(), "MISS");
}

#[tokio::test]
async fn error_responses_to_unsafe_requests_invalidate_nothing() {
    let mut h = proxy_like().await;
    h.get("/items/1", "one").await;
    for status in [StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND, StatusCode::BAD_GATEWAY] {
        h.send(request(Method::PUT, "/items/1"), move |_| with_status(ok(""), status)).await;
        assert_eq!(h.get("/items/1", "unused").await.x_cache(), "HIT", "{status}");
    }
}

#[tokio::test]
async fn location_and_content_location_on_the_same_host_are_invalidated() {
    let mut h = proxy_like().await;
    for path in ["/items/3", "/items/4", "/items/5"] {
        h.get(path, "old").await;
    }
    let created =
        |_: &Req| with_header(with_status(ok(""), StatusCode::CREATED), "location", "/items/3");
    h.send(request(Method::POST, "/items"), created).await;
    let moved = |_: &Req| with_header(ok(""), "content-location", "http://api.example/items/4");
    h.send(
        Request::put("/items/x").header("host", "api.example").body(String::new()).unwrap(),
        moved,
    )
    .await;
    let elsewhere =
        |_: &Req| with_header(ok(""), "content-location", "http://other.example/items/5");
    h.send(
        Request::put("/items/x").header("host", "api.example").body(String::new()).unwrap(),
        elsewhere,
    )
    .await;
    assert_eq!(h.get("/items/3", "new").await.x_cache(), "MISS");
    assert_eq!(h.get("/items/4", "new").await.x_cache(), "MISS");
    assert_eq!(
        h.get("/items/5", "unused").await.x_cache(),
        "HIT",
        "another host's URI is not ours to drop"
    );
}

#[tokio::test]
async fn uri_invalidation_can_be_turned_off() {
    let layer = builder_for(test_store().await)
        .route("/{*path}", Rule::get())
        .invalidate_on_unsafe_requests(false)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.get("/items/1", "one").await;
    let post = h.send(request(Method::POST, "/items/1"), |_| ok("")).await;
    assert_eq!(post.x_cache(), "BYPASS");
    assert_eq!(h.get("/items/1", "unused").await.x_cache(), "HIT");
    assert_eq!(h.cache.stats().evictions, 0);
}

#[test]
fn tags_starting_with_a_hash_are_reserved() {
    let err = CacheLayer::builder(MemoryStore::default())
        .route("/a", Rule::get().tag("#uri:x"))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "route `/a`: tag `#uri:x`: tags starting with `#` are the layer's own"
    );
}

#[tokio::test]
async fn hits_answer_if_none_match_with_304_using_a_computed_etag() {
    let mut h = Harness::users().await;
    let miss =
        h.send(get("/users"), |_| with_header(ok("[1]"), "content-type", "application/json")).await;
    assert!(miss.headers.get("etag").is_none(), "the miss goes out as the inner service sent it");
    let hit = h.get("/users", "unused").await;
    let etag = hit.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("\"trc-") && etag.len() == 38, "a strong ETag: {etag}");

    let revalidated = h.send(get_as("/users", "if-none-match", &etag), |_| ok("unused")).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.x_cache(), "HIT");
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.headers["etag"], etag.as_str());
    assert!(revalidated.headers.get("content-type").is_none());
    assert!(revalidated.headers.get("age").is_some());

    let weak = format!("W/{etag}");
    let head = h
        .send(
            Request::head("/users").header("if-none-match", weak).body(String::new()).unwrap(),
            |_| ok(""),
        )
        .await;
    assert_eq!(head.status, StatusCode::NOT_MODIFIED, "weak comparison, and HEAD too");

    let changed = h.send(get_as("/users", "if-none-match", "\"other\""), |_| ok("unused")).await;
    assert_eq!((changed.status, &changed.body[..]), (StatusCode::OK, &b"[1]"[..]));
}

#[tokio::test]
async fn hits_keep_the_upstream_etag_and_honour_if_modified_since() {
    let mut h = Harness::users().await;
    let respond = |_: &Req| {
        with_header(
            with_header(ok("x"), "etag", "W/\"upstream\""),
            "last-modified",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        )
    };
    h.send(get("/users"), respond).await;
    assert_eq!(h.get("/users", "unused").await.headers["etag"], "W/\"upstream\"");
    let since = h
        .send(get_as("/users", "if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT"), |_| ok(""))
        .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    let before = h
        .send(get_as("/users", "if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT"), |_| ok(""))
        .await;
    assert_eq!((before.status, &before.body[..]), (StatusCode::OK, &b"x"[..]));
}

#[tokio::test]
async fn conditional_misses_go_to_the_inner_service_untouched() {
    let mut h = Harness::users().await;
    let miss = h
        .send(get_as("/users", "if-none-match", "\"v1\""), |_| {
            with_status(ok(""), StatusCode::NOT_MODIFIED)
        })
        .await;
    assert_eq!(miss.status, StatusCode::NOT_MODIFIED);
    assert_eq!(miss.reached_inner.unwrap().headers()["if-none-match"], "\"v1\"");
    assert_eq!(h.cache.stats().stores, 0, "a 304 from the inner service is not an entry");
}

fn stored_ttl(outcome: &Outcome) -> Option<u64> {
    let status = outcome.headers["cache-status"].to_str().unwrap();
    status
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .map(|t| t.parse().unwrap())
        .filter(|_| status.contains("stored"))
}

fn respond_with(headers: Vec<(&'static str, String)>) -> impl FnOnce(&Req) -> Resp {
    move |_| {
        let mut response = ok("x");
        for (name, value) in headers {
            response.headers_mut().append(name, HeaderValue::try_from(value).unwrap());
        }
        response
    }
}

/// An HTTP date `offset_secs` after [`t0`].
fn http_date(offset_secs: u64) -> String {
    let at = t0() + Duration::from_secs(offset_secs);
    let mut headers = HeaderMap::new();
    headers::HeaderMapExt::typed_insert(&mut headers, headers::Date::from(at));
    headers["date"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_response_says_how_long_it_is_fresh_before_the_rule_does() {
    let cases = [
        ("nothing: the rule's ttl", vec![], Some(60)),
        ("max-age", vec![("cache-control", "max-age=10".to_owned())], Some(10)),
        (
            "s-maxage over max-age",
            vec![("cache-control", "max-age=10, s-maxage=30".to_owned())],
            Some(30),
        ),
        (
            "max-age over Expires",
            vec![("cache-control", "max-age=10".to_owned()), ("expires", http_date(3600))],
            Some(10),
        ),
        ("Expires minus Date", vec![("date", http_date(0)), ("expires", http_date(20))], Some(20)),
        (
            "Age counts",
            vec![("cache-control", "max-age=60".to_owned()), ("age", "25".to_owned())],
            Some(35),
        ),
        (
            "already stale",
            vec![("cache-control", "max-age=60".to_owned()), ("age", "60".to_owned())],
            None,
        ),
        ("max-age=0", vec![("cache-control", "max-age=0".to_owned())], None),
        ("an invalid Expires is in the past", vec![("expires", "0".to_owned())], None),
        ("an unreadable Cache-Control", vec![("cache-control", "max-age=soon".to_owned())], None),
    ];
    for (name, headers, expected) in cases {
        let mut h = Harness::users().await;
        let miss = h.send(get("/users"), respond_with(headers)).await;
        assert_eq!(stored_ttl(&miss), expected, "{name}");
        assert_eq!(
            h.get("/users", "unused").await.x_cache(),
            if expected.is_some() { "HIT" } else { "MISS" },
            "{name}"
        );
    }
}

#[tokio::test]
async fn age_on_a_hit_includes_the_age_the_response_came_with() {
    let (builder, clock) = clocked(users_rules(builder_for(test_store().await)));
    let mut h = Harness::new(builder.build().unwrap());
    h.send(
        get("/users"),
        respond_with(vec![("cache-control", "max-age=600".into()), ("age", "100".into())]),
    )
    .await;
    clock.advance(Duration::from_secs(30));
    let hit = h.get("/users", "unused").await;
    assert_eq!(hit.headers["age"], "130");
    assert_eq!(hit.headers["cache-status"], "tower-redis-cache; hit; ttl=470");
}

#[tokio::test]
async fn rules_can_cap_or_ignore_what_the_response_says() {
    let layer = builder_for(test_store().await)
        .route("/capped", Rule::get().max_ttl(Duration::from_secs(5)))
        .route("/ours", Rule::get().ttl(Duration::from_secs(30)).ignore_upstream_cache_control())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let capped =
        h.send(get("/capped"), respond_with(vec![("cache-control", "max-age=3600".into())])).await;
    assert_eq!(stored_ttl(&capped), Some(5));
    let ours = h
        .send(
            get("/ours"),
            respond_with(vec![("cache-control", "private, no-store, max-age=3600".into())]),
        )
        .await;
    assert_eq!(stored_ttl(&ours), Some(30));
    assert_eq!(h.get("/ours", "unused").await.x_cache(), "HIT");

    let err = CacheLayer::builder(MemoryStore::default())
        .route("/a", Rule::get().ttl(Duration::from_secs(60)).max_ttl(Duration::from_secs(5)))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "route `/a`: `ttl` (60s) is longer than `max_ttl` (5s)");
}

#[tokio::test]
async fn ttl_jitter_spreads_expiries_downwards_only() {
    let layer = builder_for(test_store().await)
        .route("/items/{id}", Rule::get().ttl(Duration::from_secs(100)))
        .ttl_jitter(50)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let mut ttls = std::collections::BTreeSet::new();
    for id in 0..30 {
        let miss = h.get(&format!("/items/{id}"), "x").await;
        let ttl = stored_ttl(&miss).unwrap();
        assert!((50..=100).contains(&ttl), "ttl {ttl}");
        ttls.insert(ttl);
    }
    assert!(ttls.len() > 5, "expiries should spread: {ttls:?}");
    let err = CacheLayer::builder(MemoryStore::default()).ttl_jitter(51).build().unwrap_err();
    assert_eq!(err.to_string(), "option `ttl_jitter`: must be a percentage from 0 to 50");
}

#[tokio::test]
async fn a_request_cannot_force_a_miss_unless_the_layer_allows_it() {
    let mut h = Harness::users().await;
    h.get("/users", "cached").await;
    for (name, value) in
        [("cache-control", "no-cache"), ("cache-control", "max-age=0"), ("pragma", "no-cache")]
    {
        let outcome = h.send(get_as("/users", name, value), |_| ok("unused")).await;
        assert_eq!(
            (outcome.x_cache(), &outcome.body[..]),
            ("HIT", &b"cached"[..]),
            "{name}: {value}"
        );
    }

    let layer = users_rules(builder_for(test_store().await))
        .honor_request_no_cache(true)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.get("/users", "old").await;
    for (name, value) in
        [("cache-control", "No-Cache"), ("cache-control", "max-age=0"), ("pragma", "no-cache")]
    {
        let outcome = h.send(get_as("/users", name, value), |_| ok("from the origin")).await;
        assert_eq!(outcome.body, "from the origin", "{name}: {value}");
        assert_eq!(
            outcome.headers["cache-status"],
            "tower-redis-cache; fwd=request; stored; ttl=60"
        );
    }
    let refreshed = h.get("/users", "unused").await;
    assert_eq!((refreshed.x_cache(), &refreshed.body[..]), ("HIT", &b"from the origin"[..]));
    assert_eq!(
        h.send(get_as("/users", "cache-control", "max-age=60"), |_| ok("")).await.x_cache(),
        "HIT"
    );
}

/// Sends `n` requests at once; returns their calls, still running.
/// Sends `n` requests at once, each read to its end by its own task, as separate clients
/// would: returns their `Cache-Status` and bodies to come. (Reading them one after another
/// would let a waiting request hold up the one it waits for, whose entry is stored once its
/// body is read.)
fn call_many(
    h: &mut Harness,
    n: usize,
    path: &str,
) -> Vec<tokio::task::JoinHandle<(String, Bytes)>> {
    (0..n)
        .map(|_| {
            assert_ready_ok!(h.svc.poll_ready());
            let call = h.svc.call(get(path));
            tokio::spawn(async move {
                let response = call.await.expect("no error");
                let status = response.headers()["cache-status"].to_str().unwrap().to_owned();
                (status, body_text(response).await)
            })
        })
        .collect()
}

async fn body_text(response: Response<CacheBody<Body>>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn concurrent_misses_on_one_key_make_one_inner_call() {
    let mut h = Harness::users().await;
    let calls = call_many(&mut h, 50, "/users");
    let (_, reply) = h.inner.next_request().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(h.inner.poll_request().is_pending(), "the other 49 wait for the first");
    reply.send_response(ok("[1,2,3]"));
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(body, "[1,2,3]");
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [
            ("tower-redis-cache; fwd=uri-miss; collapsed; ttl=60".to_owned(), 49),
            ("tower-redis-cache; fwd=uri-miss; stored; ttl=60".to_owned(), 1),
        ]
        .into(),
        "RFC 9211 says which requests were collapsed onto the one that called"
    );
    assert!(h.inner.poll_request().is_pending());
    let stats = h.cache.stats();
    assert_eq!((stats.misses, stats.hits), (1, 49));
}

#[tokio::test]
async fn waiting_misses_call_the_inner_service_themselves_after_the_lock_timeout() {
    let layer = users_rules(builder_for(test_store().await))
        .miss_lock_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let calls = call_many(&mut h, 3, "/users");
    let (_, slow) = h.inner.next_request().await.unwrap(); // the leader's call hangs
    for _ in 0..2 {
        // The others reach the inner service while the leader's call is still unanswered.
        let (_, reply) = h.inner.next_request().await.unwrap();
        reply.send_response(ok("after waiting"));
    }
    slow.send_response(ok("slow"));
    let mut bodies = Vec::new();
    for call in calls {
        bodies.push(call.await.unwrap().1);
    }
    bodies.sort();
    assert_eq!(bodies, ["after waiting", "after waiting", "slow"]);
}

#[tokio::test]
async fn a_leader_whose_response_is_not_stored_releases_the_waiting_misses_at_once() {
    let mut h = Harness::users().await; // lock timeout 5 s: the test would take that long if they waited it out
    let started = std::time::Instant::now();
    let calls = call_many(&mut h, 3, "/users");
    let (_, first) = h.inner.next_request().await.unwrap();
    first.send_response(with_status(ok("oops"), StatusCode::INTERNAL_SERVER_ERROR));
    for _ in 0..2 {
        let (_, reply) = h.inner.next_request().await.unwrap();
        reply.send_response(ok("retry"));
    }
    for call in calls {
        call.await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

// A leader whose body comes slowly: by default the others wait for all of it; let go once its
// head is known, they call the inner service while that body is still coming.
#[tokio::test]
async fn waiting_misses_can_be_let_go_once_the_leader_s_head_is_known() {
    for release in [false, true] {
        let layer = users_rules(builder_for(test_store().await))
            .release_miss_lock_on_head(release)
            .build()
            .unwrap();
        let mut h = Harness::new(layer);
        let calls = call_many(&mut h, 3, "/users");
        let (_, leader) = h.inner.next_request().await.unwrap();
        let (feed, body) = fed();
        leader.send_response(Response::new(body));
        feed.send("[1,").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if release {
            // Well within the 5 s lock: they were let go, not timed out.
            for _ in 0..2 {
                let next = tokio::time::timeout(Duration::from_secs(2), h.inner.next_request());
                let (_, reply) = next.await.expect("let go before the lock's timeout").unwrap();
                reply.send_response(ok("[1,2]"));
            }
        } else {
            assert!(h.inner.poll_request().is_pending(), "the others wait for the body");
        }
        feed.send("2]").await.unwrap();
        drop(feed);
        for call in calls {
            assert_eq!(call.await.unwrap().1, "[1,2]", "release: {release}");
        }
        assert!(h.inner.poll_request().is_pending(), "release: {release}");
    }
}

#[tokio::test]
async fn the_miss_lock_can_be_turned_off() {
    let layer = users_rules(builder_for(test_store().await))
        .without_miss_lock()
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let calls = call_many(&mut h, 3, "/users");
    for _ in 0..3 {
        let (_, reply) = h.inner.next_request().await.unwrap();
        reply.send_response(ok("x"));
    }
    for call in calls {
        call.await.unwrap();
    }
}

async fn stale_rules(rule: Rule) -> (Harness, ManualClock) {
    let (builder, clock) = clocked(builder_for(test_store().await));
    (Harness::new(builder.route("/news", rule).build().unwrap()), clock)
}

const TTL: Duration = Duration::from_secs(60);

/// Just past [`TTL`].
const STALE: Duration = Duration::from_secs(61);

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once_in_the_background() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL).stale_while_revalidate(Duration::from_secs(30))).await;
    h.get("/news", "v1").await;
    clock.advance(STALE);

    // Five requests find it stale: all get it at once, without waiting for the inner service
    // (which is not answering yet).
    for _ in 0..5 {
        let stale = h.call_unanswered(get("/news")).await;
        assert_eq!(stale.headers()["x-cache"], "STALE");
        assert_eq!(
            stale.headers()["cache-status"],
            "tower-redis-cache; hit; ttl=-1; detail=stale-while-revalidate"
        );
        assert_eq!(body_text(stale).await, "v1");
    }
    // One of them refreshes it.
    let (_, refresh) = h.inner.next_request().await.unwrap();
    refresh.send_response(ok("v2"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(h.inner.poll_request().is_pending(), "exactly one background refresh");
    let fresh = h.get("/news", "unused").await;
    assert_eq!((fresh.x_cache(), &fresh.body[..]), ("HIT", &b"v2"[..]));
    assert_eq!(h.cache.stats().stale, 5);
}

/// Stores `/news` as `text` from an inner service that takes `delay` to answer.
async fn miss_taking(h: &mut Harness, delay: Duration, text: &'static str) {
    assert_ready_ok!(h.svc.poll_ready());
    let call = tokio::spawn(h.svc.call(get("/news")));
    let (_, reply) = h.inner.next_request().await.unwrap();
    tokio::time::sleep(delay).await;
    reply.send_response(ok(text));
    body_text(call.await.unwrap().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test]
async fn hot_entries_are_refreshed_in_the_background_shortly_before_they_expire() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    miss_taking(&mut h, Duration::from_millis(20), "v1").await;
    // A millisecond before expiry, an entry that took 20 ms to make: each hit refreshes it
    // with odds of 95%, and one refresh at a time runs.
    clock.advance(TTL - Duration::from_millis(1));
    for _ in 0..10 {
        let hit = h.call_unanswered(get("/news")).await;
        assert_eq!(hit.headers()["x-cache"], "HIT");
        assert_eq!(body_text(hit).await, "v1");
    }
    let next = tokio::time::timeout(Duration::from_secs(5), h.inner.next_request());
    let (_, refresh) = next.await.expect("a hit refreshes the entry").unwrap();
    refresh.send_response(ok("v2"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(h.inner.poll_request().is_pending(), "exactly one refresh");
    // Past the old entry's expiry, the refreshed one answers.
    clock.advance(Duration::from_secs(1));
    let fresh = h.get("/news", "unused").await;
    assert_eq!((fresh.x_cache(), &fresh.body[..]), ("HIT", &b"v2"[..]));
    assert!(h.inner.poll_request().is_pending(), "a fresh entry is not refreshed again");
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses), (11, 1));
}

#[tokio::test]
async fn head_hits_do_not_refresh_ahead_since_their_responses_store_nothing() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    miss_taking(&mut h, Duration::from_millis(20), "v1").await;
    clock.advance(TTL - Duration::from_millis(1));
    for _ in 0..10 {
        let head = h.call_unanswered(request(Method::HEAD, "/news")).await;
        assert_eq!(head.headers()["x-cache"], "HIT");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(h.inner.poll_request().is_pending(), "no refresh");
}

#[tokio::test]
async fn without_refresh_ahead_entries_expire_into_a_miss() {
    let (builder, clock) = clocked(builder_for(test_store().await).without_refresh_ahead());
    let mut h = Harness::new(builder.route("/news", Rule::get().ttl(TTL)).build().unwrap());
    miss_taking(&mut h, Duration::from_millis(20), "v1").await;
    clock.advance(TTL - Duration::from_millis(1));
    for _ in 0..10 {
        let hit = h.call_unanswered(get("/news")).await;
        assert_eq!(hit.headers()["x-cache"], "HIT");
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(h.inner.poll_request().is_pending(), "no refresh");
    clock.advance(Duration::from_millis(1));
    assert_eq!(h.get("/news", "v2").await.x_cache(), "MISS");
}

#[test]
fn refresh_ahead_needs_a_positive_beta() {
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let built = CacheLayer::builder(MemoryStore::default()).refresh_ahead(beta).build();
        let error = built.expect_err("rejected").to_string();
        assert!(error.contains("refresh_ahead"), "{error}");
    }
}

#[tokio::test]
async fn a_stale_head_is_served_without_a_refresh_that_would_store_nothing() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL).stale_while_revalidate(Duration::from_secs(30))).await;
    h.get("/news", "v1").await;
    clock.advance(STALE);
    let head = h.call_unanswered(request(Method::HEAD, "/news")).await;
    assert_eq!(head.headers()["x-cache"], "STALE");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(h.inner.poll_request().is_pending(), "no refresh for a HEAD");
    // A GET refreshes it.
    let stale = h.call_unanswered(get("/news")).await;
    assert_eq!(stale.headers()["x-cache"], "STALE");
    let next = tokio::time::timeout(Duration::from_secs(5), h.inner.next_request());
    let (_, refresh) = next.await.expect("the GET refreshes the entry").unwrap();
    refresh.send_response(ok("v2"));
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_when_the_inner_service_fails() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL).stale_if_error(Duration::from_secs(30))).await;
    h.get("/news", "v1").await;
    clock.advance(STALE);

    let unavailable =
        h.send(get("/news"), |_| with_status(ok("down"), StatusCode::SERVICE_UNAVAILABLE)).await;
    assert_eq!((unavailable.x_cache(), &unavailable.body[..]), ("STALE", &b"v1"[..]));
    assert!(unavailable.headers["cache-status"]
        .to_str()
        .unwrap()
        .ends_with("detail=stale-if-error"));

    assert_ready_ok!(h.svc.poll_ready());
    let call = tokio::spawn(h.svc.call(get("/news")));
    let (_, reply) = h.inner.next_request().await.unwrap();
    reply.send_error("connection refused");
    let errored = call.await.unwrap().expect("the error is replaced by the stale entry");
    assert_eq!(body_text(errored).await, "v1");

    let recovered = h.get("/news", "v2").await;
    assert_eq!((recovered.x_cache(), &recovered.body[..]), ("MISS", &b"v2"[..]));
    assert!(recovered.headers["cache-status"].to_str().unwrap().contains("fwd=stale"));
    assert_eq!(h.get("/news", "unused").await.body, "v2");
}

#[tokio::test]
async fn stale_if_error_can_give_up_on_a_slow_inner_service() {
    let (builder, clock) = clocked(builder_for(test_store().await));
    let layer = builder
        .route("/news", Rule::get().ttl(TTL).stale_if_error(Duration::from_secs(30)))
        .stale_if_error_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    h.get("/news", "v1").await;
    clock.advance(STALE);
    assert_ready_ok!(h.svc.poll_ready());
    let call = tokio::spawn(h.svc.call(get("/news")));
    let (_, _never_answered) = h.inner.next_request().await.unwrap();
    assert_eq!(body_text(call.await.unwrap().unwrap()).await, "v1");
}

#[tokio::test]
async fn stale_entries_are_not_served_past_their_window_or_after_an_eviction() {
    let (mut h, clock) = stale_rules(
        Rule::get().ttl(TTL).tag("news").stale_while_revalidate(Duration::from_secs(30)),
    )
    .await;
    h.get("/news", "v1").await;
    clock.advance(TTL + Duration::from_secs(30));
    assert_eq!(h.get("/news", "v2").await.x_cache(), "MISS", "past the window");

    h.cache.evict_tags(["news"]).await.unwrap();
    clock.advance(STALE); // within the window again, for v2
    let after = h.get("/news", "v3").await;
    assert_eq!(
        (after.x_cache(), &after.body[..]),
        ("MISS", &b"v3"[..]),
        "evicted entries are never served, stale or not"
    );
}

#[tokio::test]
async fn must_revalidate_forbids_serving_stale() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL).stale_while_revalidate(Duration::from_secs(30))).await;
    h.send(get("/news"), |_| with_header(ok("v1"), "cache-control", "must-revalidate")).await;
    clock.advance(STALE);
    assert_eq!(h.get("/news", "v2").await.x_cache(), "MISS");
}

#[tokio::test]
async fn stale_entries_with_validators_are_revalidated_with_a_conditional_request() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    h.send(get("/news"), |_| with_header(ok("v1"), "etag", "\"v1\"")).await;
    clock.advance(STALE);

    let revalidated = h
        .send(get("/news"), |seen| {
            assert_eq!(seen.headers()["if-none-match"], "\"v1\"", "asked with the entry's ETag");
            with_status(Response::new(full("")), StatusCode::NOT_MODIFIED)
        })
        .await;
    assert_eq!((revalidated.status, &revalidated.body[..]), (StatusCode::OK, &b"v1"[..]));
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(
        revalidated.headers["cache-status"],
        "tower-redis-cache; fwd=stale; fwd-status=304; stored; ttl=60"
    );
    let hit = h.get("/news", "unused").await;
    assert_eq!((hit.x_cache(), &hit.body[..]), ("HIT", &b"v1"[..]), "fresh again");
}

#[tokio::test]
async fn a_304_that_says_vary_star_does_not_store_the_entry_again() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    h.send(get("/news"), |_| with_header(ok("v1"), "etag", "\"v1\"")).await;
    clock.advance(STALE);
    let revalidated = h
        .send(get("/news"), |_| {
            let mut response = with_status(Response::new(full("")), StatusCode::NOT_MODIFIED);
            response.headers_mut().append("vary", HeaderValue::from_static("*"));
            // Not visible ASCII: the `headers` crate would see no `*` in the field.
            response.headers_mut().append("vary", HeaderValue::from_bytes(b"\xe9").unwrap());
            response
        })
        .await;
    assert_eq!((revalidated.status, &revalidated.body[..]), (StatusCode::OK, &b"v1"[..]));
    let again = h.send(get("/news"), |_| ok("v2")).await;
    assert!(again.reached_inner.is_some(), "Vary: * never matches a later request");
}

#[tokio::test]
async fn revalidation_uses_last_modified_and_never_the_layers_own_etag() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    let modified = "Wed, 21 Oct 2015 07:28:00 GMT";
    h.send(get("/news"), move |_| with_header(ok("v1"), "last-modified", modified)).await;
    clock.advance(STALE);
    let changed = h
        .send(get("/news"), move |seen| {
            assert_eq!(seen.headers()["if-modified-since"], modified);
            assert!(
                seen.headers().get("if-none-match").is_none(),
                "the computed ETag means nothing upstream"
            );
            ok("v2")
        })
        .await;
    assert_eq!((changed.x_cache(), &changed.body[..]), ("MISS", &b"v2"[..]));
    assert_eq!(h.get("/news", "unused").await.body, "v2");
}

#[tokio::test]
async fn entries_without_validators_and_clients_with_their_own_are_not_revalidated() {
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    h.get("/news", "v1").await;
    clock.advance(STALE);
    let plain = h.get("/news", "v2").await;
    assert!(plain.reached_inner.unwrap().headers().get("if-none-match").is_none());

    h.send(get("/other-etag"), |_| ok("")).await; // no rule: unaffected
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    h.send(get("/news"), |_| with_header(ok("v1"), "etag", "\"v1\"")).await;
    clock.advance(STALE);
    let own = h.send(get_as("/news", "if-none-match", "\"mine\""), |_| ok("v2")).await;
    assert_eq!(own.reached_inner.unwrap().headers()["if-none-match"], "\"mine\"");
}

fn users_json(n: usize) -> String {
    let users: Vec<String> = (1..=n)
        .map(|id| {
            format!(
                r#"{{"id":{id},"name":"User {id}","email":"user{id}@example.com","age":{}}}"#,
                20 + id % 50
            )
        })
        .collect();
    format!("[{}]", users.join(","))
}

#[cfg(feature = "zstd")]
#[tokio::test]
async fn large_entries_are_stored_compressed_and_served_in_the_encoding_the_client_accepts() {
    let json: &'static str = Box::leak(users_json(100).into_boxed_str());
    let mut h = Harness::users().await;
    h.send(get("/users"), move |_| with_header(ok(json), "etag", "\"list-1\"")).await;

    let plain = h.get("/users", "unused").await;
    assert_eq!((plain.x_cache(), &plain.body[..]), ("HIT", json.as_bytes()));
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(plain.headers["vary"], "accept-encoding");
    assert_eq!(plain.headers["etag"], "\"list-1\"");

    let zstd_hit =
        h.send(get_as("/users", "accept-encoding", "gzip, zstd"), |_| ok("unused")).await;
    assert_eq!(zstd_hit.headers["content-encoding"], "zstd");
    assert_eq!(zstd_hit.headers["etag"], "\"list-1-zstd\"", "a strong ETag per representation");
    assert_eq!(zstd_hit.headers["content-length"], zstd_hit.body.len().to_string().as_str());
    assert!(
        zstd_hit.body.len() * 4 < json.len(),
        "{} bytes for {}",
        zstd_hit.body.len(),
        json.len()
    );
    assert_eq!(zstd::decode_all(&zstd_hit.body[..]).unwrap(), json.as_bytes());

    let refused =
        h.send(get_as("/users", "accept-encoding", "zstd;q=0, gzip"), |_| ok("unused")).await;
    assert_eq!(&refused.body[..], json.as_bytes());
}

// Without the `zstd` feature, large bodies are stored and served as the inner service sent
// them, to every client.
#[cfg(not(feature = "zstd"))]
#[tokio::test]
async fn without_the_zstd_feature_large_entries_are_stored_as_they_are() {
    let json: &'static str = Box::leak(users_json(100).into_boxed_str());
    let mut h = Harness::users().await;
    h.send(get("/users"), move |_| with_header(ok(json), "etag", "\"list-1\"")).await;
    let zstd_client =
        h.send(get_as("/users", "accept-encoding", "gzip, zstd"), |_| ok("unused")).await;
    assert_eq!((zstd_client.x_cache(), &zstd_client.body[..]), ("HIT", json.as_bytes()));
    assert!(zstd_client.headers.get("content-encoding").is_none());
    assert_eq!(zstd_client.headers["etag"], "\"list-1\"");
}

/// A revalidation answered `304` stores the entry again, and the client that revalidated may
/// have been served it compressed: what is stored must still be the stored form, so that the
/// next client without zstd gets the plain body, without `Content-Encoding`.
#[cfg(feature = "zstd")]
#[tokio::test]
async fn an_entry_revalidated_for_a_zstd_client_is_stored_as_it_was() {
    let json: &'static str = Box::leak(users_json(100).into_boxed_str());
    let (mut h, clock) = stale_rules(Rule::get().ttl(TTL)).await;
    h.send(get("/news"), move |_| with_header(ok(json), "etag", "\"list-1\"")).await;
    clock.advance(STALE);

    let zstd = get_as("/news", "accept-encoding", "zstd");
    let revalidated = h
        .send(zstd, |seen| {
            let asked = &seen.headers()["if-none-match"];
            assert_eq!(asked, "\"list-1\"", "the stored validator, not this client's copy's");
            with_status(Response::new(full("")), StatusCode::NOT_MODIFIED)
        })
        .await;
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(revalidated.headers["content-encoding"], "zstd");
    assert_eq!(revalidated.headers["etag"], "\"list-1-zstd\"");
    assert_eq!(zstd::decode_all(&revalidated.body[..]).unwrap(), json.as_bytes());

    let plain = h.get("/news", "unused").await;
    assert_eq!((plain.x_cache(), &plain.body[..]), ("HIT", json.as_bytes()));
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(plain.headers["etag"], "\"list-1\"");
    assert_eq!(plain.headers["content-length"], json.len().to_string().as_str());
    let again = h.send(get_as("/news", "accept-encoding", "zstd"), |_| ok("unused")).await;
    assert_eq!(again.headers["etag"], "\"list-1-zstd\"");
    assert_eq!(zstd::decode_all(&again.body[..]).unwrap(), json.as_bytes());
}

#[tokio::test]
async fn small_bodies_and_already_encoded_ones_are_stored_as_they_are() {
    let mut h = Harness::users().await;
    h.get("/users", "[]").await;
    let small = h.send(get_as("/users", "accept-encoding", "zstd"), |_| ok("unused")).await;
    assert!(small.headers.get("content-encoding").is_none());

    let gzipped: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
    h.send(get("/users/1"), move |_| with_header(ok(gzipped), "content-encoding", "gzip")).await;
    let encoded = h.send(get_as("/users/1", "accept-encoding", "zstd"), |_| ok("unused")).await;
    assert_eq!(encoded.headers["content-encoding"], "gzip");
    assert_eq!(&encoded.body[..], gzipped.as_bytes());

    let layer = users_rules(builder_for(test_store().await))
        .without_compression()
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let big: &'static str = Box::leak("y".repeat(4096).into_boxed_str());
    h.get("/users", big).await;
    let off = h.send(get_as("/users", "accept-encoding", "zstd"), |_| ok("unused")).await;
    assert!(off.headers.get("content-encoding").is_none());
    assert!(off.headers.get("vary").is_none());
}

#[tokio::test]
async fn no_cache_responses_are_stored_but_always_revalidated_before_use() {
    let mut h = Harness::users().await;
    let respond =
        |_: &Req| with_header(with_header(ok("v1"), "etag", "\"v1\""), "cache-control", "no-cache");
    let first = h.send(get("/users"), respond).await;
    assert!(first.headers["cache-status"].to_str().unwrap().contains("stored"));

    for _ in 0..2 {
        let again = h
            .send(get("/users"), |seen| {
                assert_eq!(seen.headers()["if-none-match"], "\"v1\"", "never used without asking");
                with_status(Response::new(full("")), StatusCode::NOT_MODIFIED)
            })
            .await;
        assert_eq!((again.x_cache(), &again.body[..]), ("REVALIDATED", &b"v1"[..]));
    }
    let changed = h.send(get("/users"), |_| ok("v2")).await;
    assert_eq!((changed.x_cache(), &changed.body[..]), ("MISS", &b"v2"[..]));
}

fn varying(text: &'static str) -> impl FnOnce(&Req) -> Resp {
    move |_| with_header(ok(text), "vary", "Accept-Language")
}

#[tokio::test]
async fn responses_varying_on_unnamed_headers_are_keyed_by_them() {
    let mut h = Harness::users().await;
    h.send(get_as("/users", "accept-language", "en"), varying("hello")).await;
    let fr = h.send(get_as("/users", "accept-language", "fr"), varying("bonjour")).await;
    assert_eq!(
        (fr.x_cache(), &fr.body[..]),
        ("MISS", &b"bonjour"[..]),
        "another language, another entry"
    );
    // RFC 9211: the URI has a response, but not for this request's `Accept-Language`.
    let status = fr.headers["cache-status"].to_str().unwrap();
    assert!(status.starts_with("tower-redis-cache; fwd=vary-miss"), "{status}");
    let en = h.send(get_as("/users", "accept-language", "EN"), varying("unused")).await;
    assert_eq!((en.x_cache(), &en.body[..]), ("HIT", &b"hello"[..]), "case-folded");
    let fr = h.send(get_as("/users", "accept-language", "fr"), varying("unused")).await;
    assert_eq!((fr.x_cache(), &fr.body[..]), ("HIT", &b"bonjour"[..]));
    let none = h.send(get("/users"), varying("default")).await;
    assert_eq!((none.x_cache(), &none.body[..]), ("MISS", &b"default"[..]));
}

#[tokio::test]
async fn other_instances_learn_what_a_response_varies_on_from_the_store() {
    let store = test_store().await;
    let layer = |store| users_rules(builder_for(store)).build().unwrap();
    let mut a = Harness::new(layer(store.clone()));
    let mut b = Harness::new(layer(store));
    a.send(get_as("/users", "accept-language", "en"), varying("hello")).await;
    a.send(get_as("/users", "accept-language", "fr"), varying("bonjour")).await;
    // `b` has never seen the response: the marker in the store sends it to the right entry.
    let fr = b.send(get_as("/users", "accept-language", "fr"), varying("unused")).await;
    assert_eq!((fr.x_cache(), &fr.body[..]), ("HIT", &b"bonjour"[..]));
    let en = b.send(get_as("/users", "accept-language", "en"), varying("unused")).await;
    assert_eq!((en.x_cache(), &en.body[..]), ("HIT", &b"hello"[..]));
}

#[tokio::test]
async fn accept_encoding_variants_share_an_entry_only_when_rfc_9110_makes_them_equal() {
    let mut h = Harness::users().await;
    let gzip_only = |_: &Req| with_header(ok("for gzip clients"), "vary", "accept-encoding");
    h.send(get_as("/users", "accept-encoding", "gzip, deflate"), gzip_only).await;
    let same = h.send(get_as("/users", "accept-encoding", "deflate,GZIP"), |_| ok("unused")).await;
    assert_eq!((same.x_cache(), &same.body[..]), ("HIT", &b"for gzip clients"[..]));
    // An origin may choose differently for any other list: an unknown coding, `*`, `identity`.
    for other in ["gzip, deflate, x-unknown", "br", "*", "identity"] {
        let reply = h
            .send(get_as("/users", "accept-encoding", other), |_| {
                with_header(ok("for another list"), "vary", "accept-encoding")
            })
            .await;
        assert_eq!(reply.x_cache(), "MISS", "{other}");
    }
}

fn grouped(text: &'static str) -> impl FnOnce(&Req) -> Resp {
    move |_| with_header(ok(text), "cache-groups", "\"team:7\", \"reports\"")
}

#[tokio::test]
async fn cache_groups_from_responses_are_tags_and_invalidation_headers_evict_them() {
    let mut h = Harness::users().await;
    let first = h.send(get("/users/1"), grouped("v1")).await;
    assert!(
        !first.headers["cache-status"].to_str().unwrap().contains("stored"),
        "new groups: learnt, not stored"
    );
    let second = h.send(get("/users/1"), grouped("v1")).await;
    assert!(second.headers["cache-status"].to_str().unwrap().contains("stored"));
    assert_eq!(h.get("/users/1", "unused").await.x_cache(), "HIT");

    // Any unsafe request, rule or not, may invalidate a group in its response.
    let invalidate = |_: &Req| with_header(ok(""), "cache-group-invalidation", "\"team:7\"");
    h.send(request(Method::POST, "/teams/7/members"), invalidate).await;
    assert_eq!(h.get("/users/1", "v2").await.x_cache(), "MISS");

    // Groups are tags: the handle evicts them as well.
    h.send(get("/users/1"), grouped("v3")).await;
    assert_eq!(h.get("/users/1", "unused").await.x_cache(), "HIT");
    h.cache.evict_tags(["reports"]).await.unwrap();
    assert_eq!(h.get("/users/1", "v4").await.x_cache(), "MISS");
}

#[tokio::test]
async fn other_instances_learn_cache_groups_from_the_store() {
    let store = test_store().await;
    let mut a = Harness::new(users_rules(builder_for(store.clone())).build().unwrap());
    let mut b = Harness::new(users_rules(builder_for(store)).build().unwrap());
    a.send(get("/users/1"), grouped("v1")).await; // learns, writes the marker
    let from_b = b.send(get("/users/1"), grouped("v1")).await;
    assert!(
        from_b.headers["cache-status"].to_str().unwrap().contains("stored"),
        "b read the groups' versions first"
    );
    assert_eq!(a.get("/users/1", "unused").await.x_cache(), "HIT");
    a.send(request(Method::DELETE, "/x"), |_| {
        with_header(ok(""), "cache-group-invalidation", "\"reports\"")
    })
    .await;
    assert_eq!(b.get("/users/1", "v2").await.x_cache(), "MISS");
}

#[tokio::test]
async fn surrogate_keys_and_stripping_are_options() {
    let layer = users_rules(builder_for(test_store().await))
        .surrogate_keys(true)
        .strip_cache_group_headers(true)
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let keyed = |_: &Req| {
        with_header(
            with_header(ok("v1"), "surrogate-key", "team:7 reports"),
            "cache-groups",
            "\"x\"",
        )
    };
    let first = h.send(get("/users/1"), keyed).await;
    assert!(
        first.headers.get("surrogate-key").is_none() && first.headers.get("cache-groups").is_none()
    );
    h.send(get("/users/1"), keyed).await;
    let hit = h.get("/users/1", "unused").await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.headers.get("surrogate-key").is_none());
    h.cache.evict_tags(["reports"]).await.unwrap();
    assert_eq!(h.get("/users/1", "v2").await.x_cache(), "MISS");
}

// ---------------------------------------------------------------------------------------------
// `Rule::http_cache`: RFC 9111's rules for a shared cache.

/// `t0` as an HTTP-date, and 1,000 s before it.
const T0_DATE: &str = "Fri, 15 Jan 2027 08:00:00 GMT";
const T0_LESS_1000_S: &str = "Fri, 15 Jan 2027 07:43:20 GMT";

#[tokio::test]
async fn http_cache_rules_store_any_final_status_with_explicit_freshness() {
    let layer = builder_for(test_store().await).route("/{*path}", Rule::http_cache()).build();
    let mut h = Harness::new(layer.unwrap());
    let fresh = |status| move |_: &Req| with_header(with_status(ok("x"), status), "cache-control", "max-age=60");
    for (path, status) in [("/missing", StatusCode::NOT_FOUND), ("/down", StatusCode::SERVICE_UNAVAILABLE), ("/moved", StatusCode::FOUND)] {
        let first = h.send(get(path), fresh(status)).await;
        assert_eq!((first.x_cache(), first.status), ("MISS", status));
        let second = h.send(get(path), fresh(status)).await;
        assert_eq!((second.x_cache(), second.status), ("HIT", status), "{path}");
        assert!(second.reached_inner.is_none(), "{path}");
    }
    // Without freshness, a status that is not heuristically cacheable is not stored; nor is a
    // part of a body, whatever it says.
    let plain = |_: &Req| with_status(ok("busy"), StatusCode::SERVICE_UNAVAILABLE);
    h.send(get("/busy"), plain).await;
    assert!(h.send(get("/busy"), plain).await.reached_inner.is_some());
    h.send(get("/part"), fresh(StatusCode::PARTIAL_CONTENT)).await;
    assert!(h.send(get("/part"), fresh(StatusCode::PARTIAL_CONTENT)).await.reached_inner.is_some());
    assert_eq!(h.cache.stats().stores, 3);
}

#[tokio::test]
async fn http_cache_rules_give_heuristic_freshness_from_last_modified() {
    let (builder, clock) = clocked(builder_for(test_store().await));
    let layer = builder.route("/{*path}", Rule::http_cache()).build().unwrap();
    let mut h = Harness::new(layer);
    // Unchanged for 1,000 s when it was sent: fresh for 10% of that.
    let moved = |_: &Req| {
        let response = with_status(ok(""), StatusCode::MOVED_PERMANENTLY);
        let response = with_header(response, "location", "/new");
        let response = with_header(response, "date", T0_DATE);
        with_header(response, "last-modified", T0_LESS_1000_S)
    };
    assert_eq!(h.send(get("/old"), moved).await.x_cache(), "MISS");
    clock.advance(Duration::from_secs(99));
    let hit = h.send(get("/old"), moved).await;
    assert_eq!((hit.x_cache(), hit.status), ("HIT", StatusCode::MOVED_PERMANENTLY));
    assert_eq!(hit.headers["location"], "/new");
    assert_eq!(hit.headers["age"], "99");
    clock.advance(Duration::from_secs(1));
    assert!(h.send(get("/old"), moved).await.reached_inner.is_some(), "past 100 s");
    // An app rule stores no `301`, and keeps its `200`s for its TTL, not a heuristic.
    let layer = builder_for(test_store().await).route("/{*path}", Rule::get()).build();
    let mut app = Harness::new(layer.unwrap());
    app.send(get("/old"), moved).await;
    assert!(app.send(get("/old"), moved).await.reached_inner.is_some());
}

#[tokio::test]
async fn stored_errors_ignore_conditions_and_a_204_hit_has_no_length() {
    let layer = builder_for(test_store().await).route("/{*path}", Rule::http_cache()).build();
    let mut h = Harness::new(layer.unwrap());
    let missing = |_: &Req| {
        let response = with_status(ok("nothing here"), StatusCode::NOT_FOUND);
        with_header(with_header(response, "etag", "\"e1\""), "cache-control", "max-age=60")
    };
    h.send(get("/missing"), missing).await;
    // RFC 9110 section 13.2.1: a 404 never answers a precondition with a 304.
    let conditional = h.send(get_as("/missing", "if-none-match", "\"e1\""), missing).await;
    assert_eq!((conditional.x_cache(), conditional.status), ("HIT", StatusCode::NOT_FOUND));
    assert_eq!(conditional.body, "nothing here");

    let empty = |_: &Req| {
        with_header(with_status(ok(""), StatusCode::NO_CONTENT), "cache-control", "max-age=60")
    };
    h.send(get("/empty"), empty).await;
    let hit = h.send(get("/empty"), empty).await;
    assert_eq!((hit.x_cache(), hit.status), ("HIT", StatusCode::NO_CONTENT));
    assert!(hit.headers.get("content-length").is_none(), "{:?}", hit.headers);
}

#[tokio::test]
async fn must_understand_stores_a_status_the_cache_implements_despite_no_store() {
    let layer = builder_for(test_store().await)
        .route("/shared/{*path}", Rule::http_cache())
        .route("/app/{*path}", Rule::get())
        .build();
    let mut h = Harness::new(layer.unwrap());
    let understood = |_: &Req| with_header(ok("x"), "cache-control", "max-age=60, must-understand, no-store");
    h.send(get("/shared/a"), understood).await;
    assert_eq!(h.send(get("/shared/a"), understood).await.x_cache(), "HIT");
    // App rules do not implement it, so `no-store` stands.
    h.send(get("/app/a"), understood).await;
    assert!(h.send(get("/app/a"), understood).await.reached_inner.is_some());
    // Nor is a status stored that RFC 9110 does not define.
    let unknown = |_: &Req| {
        let response = with_status(ok("x"), StatusCode::from_u16(299).unwrap());
        with_header(response, "cache-control", "max-age=60, must-understand")
    };
    h.send(get("/shared/b"), unknown).await;
    assert!(h.send(get("/shared/b"), unknown).await.reached_inner.is_some());
}

#[tokio::test]
async fn a_targeted_field_named_for_this_cache_beats_cdn_cache_control_and_cache_control() {
    let own = http::HeaderName::from_static("acme-cache-control");
    let (builder, clock) = clocked(builder_for(test_store().await));
    let layer = builder
        .targeted_cache_control(own.clone())
        .route("/{*path}", Rule::http_cache())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let respond = |_: &Req| {
        let response = with_header(ok("x"), "cache-control", "max-age=5");
        let response = with_header(response, "cdn-cache-control", "max-age=60");
        with_header(response, "acme-cache-control", "max-age=600")
    };
    h.send(get("/a"), respond).await;
    clock.advance(Duration::from_secs(599));
    let hit = h.send(get("/a"), respond).await;
    assert_eq!(hit.x_cache(), "HIT", "600 s from the field named for this cache");
    // By default the fields go on to the caches further down.
    assert_eq!(hit.headers["acme-cache-control"], "max-age=600");
    assert_eq!(hit.headers["cdn-cache-control"], "max-age=60");
    assert_eq!(hit.headers["cache-control"], "max-age=5");
    clock.advance(Duration::from_secs(1));
    assert!(h.send(get("/a"), respond).await.reached_inner.is_some());

    // `no-store` aimed at CDNs wins over a `Cache-Control` that would store.
    let no_store = |_: &Req| {
        with_header(with_header(ok("x"), "cache-control", "max-age=60"), "cdn-cache-control", "no-store")
    };
    h.send(get("/b"), no_store).await;
    assert!(h.send(get("/b"), no_store).await.reached_inner.is_some());
}

#[tokio::test]
async fn targeted_fields_can_be_kept_from_clients() {
    let layer = builder_for(test_store().await)
        .strip_targeted_cache_control(true)
        .route("/{*path}", Rule::http_cache())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let respond = |_: &Req| with_header(ok("x"), "cdn-cache-control", "max-age=60");
    let miss = h.send(get("/a"), respond).await;
    let hit = h.send(get("/a"), respond).await;
    assert_eq!((miss.x_cache(), hit.x_cache()), ("MISS", "HIT"), "read before it is stripped");
    assert!(miss.headers.get("cdn-cache-control").is_none());
    assert!(hit.headers.get("cdn-cache-control").is_none());

    let err = CacheLayer::builder(MemoryStore::default())
        .targeted_cache_control(http::header::CACHE_CONTROL)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "option `targeted_cache_control`: `cache-control` is not a targeted field: name one for \
         this cache"
    );
}

#[tokio::test]
async fn an_entry_that_varies_is_revalidated_and_a_304_updates_its_headers() {
    let (builder, clock) = clocked(builder_for(test_store().await));
    let layer = builder.route("/{*path}", Rule::http_cache()).build().unwrap();
    let mut h = Harness::new(layer);
    let english = || get_as("/greeting", "accept-language", "en");
    let hello = |_: &Req| {
        let response = with_header(ok("hello"), "vary", "Accept-Language");
        let response = with_header(response, "etag", "\"en-1\"");
        with_header(response, "cache-control", "max-age=10")
    };
    // The first response teaches the layer its `Vary`; the next one is stored under it.
    h.send(english(), hello).await;
    h.send(english(), hello).await;
    assert_eq!(h.send(english(), hello).await.x_cache(), "HIT");

    clock.advance(Duration::from_secs(11));
    let not_modified = |seen: &Req| {
        assert_eq!(seen.headers()["if-none-match"], "\"en-1\"", "a conditional revalidation");
        let response = with_status(ok(""), StatusCode::NOT_MODIFIED);
        let response = with_header(response, "etag", "\"en-1\"");
        with_header(response, "cache-control", "max-age=100, x-new")
    };
    let revalidated = h.send(english(), not_modified).await;
    assert_eq!((revalidated.x_cache(), revalidated.status), ("REVALIDATED", StatusCode::OK));
    assert_eq!(revalidated.body, "hello");
    assert_eq!(revalidated.headers["cache-control"], "max-age=100, x-new");

    // Fresh for the 304's 100 s now, with its headers.
    clock.advance(Duration::from_secs(99));
    let hit = h.send(english(), |_| ok("must not be called")).await;
    assert_eq!((hit.x_cache(), &hit.body[..]), ("HIT", &b"hello"[..]));
    assert_eq!(hit.headers["cache-control"], "max-age=100, x-new");
    assert_eq!(hit.headers["vary"], "Accept-Language");
    // A 304 that names an encoding does not relabel the stored body.
    clock.advance(Duration::from_secs(2));
    let gzip_304 = |_: &Req| {
        let response = with_status(ok(""), StatusCode::NOT_MODIFIED);
        let response = with_header(response, "content-encoding", "gzip");
        with_header(response, "cache-control", "max-age=100")
    };
    let again = h.send(english(), gzip_304).await;
    assert_eq!((again.x_cache(), &again.body[..]), ("REVALIDATED", &b"hello"[..]));
    assert!(again.headers.get("content-encoding").is_none(), "{:?}", again.headers);
    // Another language is another entry.
    let french = h.send(get_as("/greeting", "accept-language", "fr"), |_| ok("bonjour")).await;
    assert_eq!(french.x_cache(), "MISS");
}

// ---------------------------------------------------------------------------------------------
// Ranges (RFC 9110 section 14), served from stored bodies.

#[tokio::test]
async fn a_range_of_a_stored_body_is_served_from_it() {
    let mut h = Harness::new(builder_for(test_store().await).route("/{*path}", Rule::get()).build().unwrap());
    let file = |_: &Req| with_header(ok("0123456789"), "etag", "\"v1\"");
    h.send(get("/file"), file).await;
    let ranged = |range: &str| {
        Request::get("/file").header("range", range).body(String::new()).unwrap()
    };
    for (range, part, content_range) in [
        ("bytes=2-4", "234", "bytes 2-4/10"),
        ("bytes=-3", "789", "bytes 7-9/10"),
        ("bytes=7-", "789", "bytes 7-9/10"),
        ("bytes=8-100", "89", "bytes 8-9/10"),
    ] {
        let answer = h.send(ranged(range), |_| ok("must not be called")).await;
        assert_eq!((answer.x_cache(), answer.status), ("HIT", StatusCode::PARTIAL_CONTENT), "{range}");
        assert_eq!(answer.body, part, "{range}");
        assert_eq!(answer.headers["content-range"], content_range, "{range}");
        assert_eq!(answer.headers["content-length"], part.len().to_string().as_str(), "{range}");
        assert_eq!(answer.headers["etag"], "\"v1\"");
    }
    let past = h.send(ranged("bytes=10-"), |_| ok("must not be called")).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers["content-range"], "bytes */10");
    assert!(past.body.is_empty());
    // Several ranges, or an `If-Range` that is not the entry's: the whole body.
    let several = h.send(ranged("bytes=0-1,4-5"), |_| ok("must not be called")).await;
    assert_eq!((several.status, &several.body[..]), (StatusCode::OK, &b"0123456789"[..]));
    let mut stale_copy = ranged("bytes=0-1");
    stale_copy.headers_mut().insert("if-range", HeaderValue::from_static("\"v0\""));
    let whole = h.send(stale_copy, |_| ok("must not be called")).await;
    assert_eq!((whole.x_cache(), whole.status, &whole.body[..]), ("HIT", StatusCode::OK, &b"0123456789"[..]));
    let mut same_copy = ranged("bytes=0-1");
    same_copy.headers_mut().insert("if-range", HeaderValue::from_static("\"v1\""));
    let part = h.send(same_copy, |_| ok("must not be called")).await;
    assert_eq!((part.status, &part.body[..]), (StatusCode::PARTIAL_CONTENT, &b"01"[..]));
}

#[tokio::test]
async fn a_range_that_misses_goes_to_the_inner_service_and_stores_nothing() {
    let mut h = Harness::new(builder_for(test_store().await).route("/{*path}", Rule::http_cache()).build().unwrap());
    let ranged = Request::get("/video").header("range", "bytes=0-3").body(String::new()).unwrap();
    let part = |seen: &Req| {
        assert_eq!(seen.headers()["range"], "bytes=0-3", "the range goes through");
        let response = with_status(ok("0123"), StatusCode::PARTIAL_CONTENT);
        let response = with_header(response, "content-range", "bytes 0-3/100");
        with_header(response, "cache-control", "max-age=60")
    };
    let miss = h.send(ranged, part).await;
    assert_eq!((miss.x_cache(), miss.status, &miss.body[..]), ("MISS", StatusCode::PARTIAL_CONTENT, &b"0123"[..]));
    let whole = |_: &Req| with_header(ok("0123456789"), "cache-control", "max-age=60");
    assert!(h.send(get("/video"), whole).await.reached_inner.is_some(), "the part was not stored");
    assert_eq!(h.cache.stats().stores, 1, "only the whole response");
}

#[tokio::test]
async fn a_range_of_a_compressed_entry_counts_the_bytes_of_the_body_itself() {
    let mut h = Harness::new(builder_for(test_store().await).route("/{*path}", Rule::get()).build().unwrap());
    let body: String = (0..400).map(|i| format!("{:04}", i % 10_000)).collect();
    let body: &'static str = Box::leak(body.into_boxed_str());
    h.send(get("/big"), |_| ok(body)).await;
    let mut request = Request::get("/big").header("range", "bytes=1000-1007").body(String::new()).unwrap();
    request.headers_mut().insert("accept-encoding", HeaderValue::from_static("zstd"));
    let part = h.send(request, |_| ok("must not be called")).await;
    assert_eq!((part.x_cache(), part.status), ("HIT", StatusCode::PARTIAL_CONTENT));
    assert_eq!(part.body, body[1000..=1007]);
    assert!(part.headers.get("content-encoding").is_none());
    assert_eq!(part.headers["content-range"], format!("bytes 1000-1007/{}", body.len()).as_str());
}

// ---------------------------------------------------------------------------------------------
// RFC 9111 section 3.5: requests with credentials on a shared-cache rule.

#[tokio::test]
async fn credentialed_requests_meet_and_fill_only_entries_said_to_be_for_anyone() {
    let layer = builder_for(test_store().await)
        .route("/{*path}", Rule::http_cache())
        .route("/app/{*path}", Rule::get())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let alice = || get_as("/page", "authorization", "Bearer alice");
    let fresh = |text| move |_: &Req| with_header(ok(text), "cache-control", "max-age=60");
    // An anonymous answer is stored, but a credentialed request never gets it...
    h.send(get("/page"), fresh("for anyone")).await;
    let asked = h.send(alice(), fresh("alice's page")).await;
    assert_eq!((asked.x_cache(), &asked.body[..]), ("MISS", &b"alice's page"[..]));
    // ...and what it got, which did not say it was for anyone, is not stored for the others.
    let anonymous = h.send(get("/page"), |_| ok("must not be called")).await;
    assert_eq!((anonymous.x_cache(), &anonymous.body[..]), ("HIT", &b"for anyone"[..]));

    // `public`, `s-maxage` or `must-revalidate`: stored once, reused by every requester.
    for (path, directive) in [("/p", "public, max-age=60"), ("/s", "s-maxage=60"), ("/m", "max-age=60, must-revalidate")] {
        let public = move |_: &Req| with_header(ok("the same for all"), "cache-control", directive);
        let first = h.send(get_as(path, "authorization", "Bearer alice"), public).await;
        assert_eq!(first.x_cache(), "MISS", "{path}");
        for (name, value) in [("authorization", "Bearer bob"), ("cookie", "session=carol")] {
            let other = h.send(get_as(path, name, value), |_| ok("must not be called")).await;
            assert_eq!((other.x_cache(), &other.body[..]), ("HIT", &b"the same for all"[..]), "{path}");
        }
        assert_eq!(h.send(get(path), |_| ok("must not be called")).await.x_cache(), "HIT");
    }
    // App rules still keep credentialed requests out.
    let app = h.send(get_as("/app/x", "authorization", "Bearer alice"), fresh("x")).await;
    assert_eq!(app.x_cache(), "BYPASS");
}

#[tokio::test]
async fn dates_ages_and_language_lists_are_read_to_the_letter() {
    let layer = builder_for(test_store().await)
        .route("/{*path}", Rule::get().ttl(Duration::from_secs(600)))
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    // `t0` is 2027-01-15 08:00:00 GMT: these say a minute from then, in the two older forms.
    for (path, expires) in
        [("/asctime", "Fri Jan 15 08:01:00 2027"), ("/rfc850", "friday, 15-jan-27 08:01:00 gmt")]
    {
        let respond = move |_: &Req| {
            with_header(with_header(ok("x"), "date", T0_DATE), "expires", expires)
        };
        let miss = h.send(get(path), respond).await;
        assert_eq!(miss.headers["cache-status"], "tower-redis-cache; fwd=uri-miss; stored; ttl=60");
        assert_eq!(h.send(get(path), respond).await.x_cache(), "HIT", "{path}");
    }
    // The first `Age` counts; one that is not digits is stale, and not stored.
    let aged = |age: &'static str| move |_: &Req| with_header(with_header(ok("x"), "cache-control", "max-age=100"), "age", age);
    let listed = h.send(get("/aged"), aged("30, 0")).await;
    assert_eq!(listed.headers["cache-status"], "tower-redis-cache; fwd=uri-miss; stored; ttl=70");
    h.send(get("/old"), aged("old, 0")).await;
    assert!(h.send(get("/old"), aged("old, 0")).await.reached_inner.is_some());
    // A language list in another order is the same request.
    let greet = |_: &Req| with_header(ok("hi"), "vary", "accept-language");
    h.send(get_as("/hi", "accept-language", "fr, en;q=0.5"), greet).await;
    h.send(get_as("/hi", "accept-language", "fr, en;q=0.5"), greet).await;
    let reordered = h.send(get_as("/hi", "accept-language", "en;q=0.5,FR"), greet).await;
    assert_eq!(reordered.x_cache(), "HIT");
}

// ---------------------------------------------------------------------------------------------
// Which cookies are credentials.

#[tokio::test]
async fn only_the_named_cookies_are_credentials() {
    let layer = builder_for(test_store().await)
        .credential_cookies(["session"])
        .route("/news", Rule::get())
        .route("/home", Rule::get().per_user_by(tower_redis_cache::UserFromCookie::new("session")).share_anonymous())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let news = |text| move |_: &Req| ok(text);
    h.send(get("/news"), news("for anyone")).await;
    // Analytics and preference cookies: an anonymous request, served from the shared entry.
    let tracked = h.send(get_as("/news", "cookie", "_ga=GA1.2.3; theme=dark"), news("unused")).await;
    assert_eq!((tracked.x_cache(), &tracked.body[..]), ("HIT", &b"for anyone"[..]));
    // A session cookie is a credential: a default route keeps it out.
    let signed_in = h.send(get_as("/news", "cookie", "_ga=1; session=s1"), news("for s1")).await;
    assert_eq!((signed_in.x_cache(), &signed_in.body[..]), ("BYPASS", &b"for s1"[..]));

    // Per user by the session cookie: other cookies neither split nor share entries.
    let home = |text| move |_: &Req| ok(text);
    h.send(get_as("/home", "cookie", "session=s1; _ga=1"), home("s1's home")).await;
    let rotated = h.send(get_as("/home", "cookie", "_ga=2; theme=x; session=s1"), home("unused")).await;
    assert_eq!((rotated.x_cache(), &rotated.body[..]), ("HIT", &b"s1's home"[..]));
    let other = h.send(get_as("/home", "cookie", "session=s2; _ga=1"), home("s2's home")).await;
    assert_eq!((other.x_cache(), &other.body[..]), ("MISS", &b"s2's home"[..]));
    let anonymous = h.send(get_as("/home", "cookie", "_ga=1"), home("anyone's home")).await;
    assert_eq!((anonymous.x_cache(), &anonymous.body[..]), ("MISS", &b"anyone's home"[..]));

    let err = CacheLayer::builder(MemoryStore::default()).credential_cookies(["a b"]).build().unwrap_err();
    assert!(err.to_string().starts_with("option `credential_cookies`: `a b` is not a cookie name"), "{err}");
}

#[tokio::test]
async fn by_default_every_cookie_is_a_credential() {
    let layer = builder_for(test_store().await).route("/news", Rule::get()).build().unwrap();
    let mut h = Harness::new(layer);
    h.send(get("/news"), |_| ok("for anyone")).await;
    let tracked = h.send(get_as("/news", "cookie", "_ga=1"), |_| ok("fresh")).await;
    assert_eq!((tracked.x_cache(), &tracked.body[..]), ("BYPASS", &b"fresh"[..]));
}

#[tokio::test]
async fn responses_carry_their_outcome_when_asked_to() {
    use tower::{Service, ServiceExt};
    use tower_redis_cache::CacheOutcome;

    let build = |on: bool| async move {
        let layer = builder_for(test_store().await)
            .outcome_extension(on)
            .route("/users", Rule::get())
            .build()
            .unwrap();
        tower::ServiceBuilder::new().layer(layer).service_fn(|request: Req| async move {
            let response = match request.uri().path() {
                "/users" => ok("[]"),
                _ => ok("elsewhere"),
            };
            Ok::<_, Infallible>(response)
        })
    };
    let mut service = build(true).await;
    let mut outcome_of = async |request: Req| {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let outcome = response.extensions().get::<CacheOutcome>().copied();
        let _ = response.into_body().collect().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        outcome
    };
    assert_eq!(outcome_of(get("/users")).await, Some(CacheOutcome::Miss { stored: true }));
    assert_eq!(outcome_of(get("/users")).await, Some(CacheOutcome::Hit));
    assert_eq!(outcome_of(get("/other")).await, Some(CacheOutcome::Bypass));
    let hit = Some(CacheOutcome::Hit);
    assert_eq!(hit.map(|o| o.label()), Some("hit"));

    let mut off = build(false).await;
    let response = off.ready().await.unwrap().call(get("/users")).await.unwrap();
    assert!(response.extensions().get::<CacheOutcome>().is_none());
}

// Every variant of a path the store holds (queries, `Vary` values, users), with what each
// carries; an eviction shows, and other paths' entries do not.
#[tokio::test]
async fn the_handle_shows_what_is_stored_for_a_path() {
    let (builder, clock) = clocked(builder_for(test_store().await));
    let layer = builder
        .route("/items/{id}", Rule::get().vary(["accept-language"]).tags(["items", "item:{id}"]))
        .route("/me/{id}", Rule::get().per_user())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    assert!(h.cache.inspect("/items/1").await.unwrap().is_empty());
    for request in [
        get("/items/1"),
        get("/items/1?page=2"),
        get_as("/items/1", "accept-language", "fr"),
        get("/items/2"),
    ] {
        h.send(request, |_| ok("twelve bytes")).await;
    }
    h.send(get_as("/me/1", "authorization", "Bearer a"), |_| ok("a's")).await;
    h.send(get_as("/me/1", "authorization", "Bearer b"), |_| ok("b's")).await;
    clock.advance(Duration::from_secs(5));

    let stored = h.cache.inspect("/items/1").await.unwrap();
    assert_eq!(stored.len(), 3, "{stored:#?}");
    let keys: std::collections::HashSet<_> = stored.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys.len(), 3, "three variants, three keys");
    for entry in &stored {
        assert_eq!(entry.status, StatusCode::OK);
        assert_eq!((entry.age, entry.ttl), (Duration::from_secs(5), Duration::from_secs(60)));
        assert!(entry.tags.iter().any(|t| t == "item:1") && entry.tags.iter().any(|t| t == "items"));
        assert_eq!(entry.body_bytes, 12);
        assert!(entry.stored_bytes > 12, "the entry holds its head too");
        assert!(!entry.evicted && entry.is_fresh());
    }
    assert_eq!(h.cache.inspect("/me/1").await.unwrap().len(), 2, "one entry per user");

    h.cache.evict_tags(["item:1"]).await.unwrap();
    let stored = h.cache.inspect("/items/1").await.unwrap();
    assert!(stored.iter().all(|e| e.evicted && !e.is_fresh()), "{stored:#?}");
    let other = h.cache.inspect("/items/2").await.unwrap();
    assert!(other.len() == 1 && !other[0].evicted, "{other:#?}");
}

// Every route, every variant, every user; then the layer stores and serves again. A layer
// with another key prefix on the same store keeps its entries.
#[tokio::test]
async fn the_handle_purges_everything_under_its_prefix() {
    let store = test_store().await;
    let rules = |builder: CacheLayerBuilder| {
        builder
            .route("/items/{id}", Rule::get().vary(["accept-language"]))
            .route("/me", Rule::get().per_user())
            .build()
            .unwrap()
    };
    let mut h = Harness::new(rules(builder_for(Arc::clone(&store))));
    let mut other = Harness::new(rules(builder_for(Arc::clone(&store)).key_prefix("other")));
    let requests = || {
        vec![
            get("/items/1"),
            get("/items/2?page=2"),
            get_as("/items/1", "accept-language", "fr"),
            get_as("/me", "authorization", "Bearer a"),
            get_as("/me", "authorization", "Bearer b"),
        ]
    };
    for request in requests() {
        h.send(request, |_| ok("x")).await;
    }
    other.send(get("/items/1"), |_| ok("other")).await;
    for request in requests() {
        assert_eq!(h.send(request, |_| ok("x")).await.x_cache(), "HIT");
    }

    h.cache.purge_all().await.unwrap();
    for request in requests() {
        let uri = request.uri().clone();
        assert_eq!(h.send(request, |_| ok("new")).await.x_cache(), "MISS", "{uri}");
    }
    for request in requests() {
        let again = h.send(request, |_| ok("unused")).await;
        assert_eq!((again.x_cache(), &again.body[..]), ("HIT", &b"new"[..]));
    }
    assert_eq!(other.send(get("/items/1"), |_| ok("unused")).await.x_cache(), "HIT");
}

#[tokio::test]
async fn the_handle_purges_every_variant_of_a_path() {
    let layer = builder_for(test_store().await)
        .route("/items/{id}", Rule::get().vary(["accept-language"]))
        .route("/me/{id}", Rule::get().per_user())
        .build()
        .unwrap();
    let mut h = Harness::new(layer);
    let variants = || {
        // The `HEAD` first: it is answered from the `GET` entry, which a `GET` after the
        // purge stores again.
        vec![
            Request::head("/items/1").body(String::new()).unwrap(),
            get("/items/1"),
            get("/items/1?page=2"),
            get_as("/items/1", "accept-language", "fr"),
            get("/items/2"),
        ]
    };
    for request in variants().into_iter().filter(|r| r.method() == Method::GET) {
        h.send(request, |_| ok("x")).await;
    }
    h.send(get_as("/me/1", "authorization", "Bearer a"), |_| ok("a's")).await;
    h.send(get_as("/me/1", "authorization", "Bearer b"), |_| ok("b's")).await;
    for request in variants() {
        assert_eq!(h.send(request, |_| ok("x")).await.x_cache(), "HIT");
    }

    h.cache.purge_path("/items/1").await.unwrap();
    h.cache.purge_path("/me/1").await.unwrap();
    let outcomes: Vec<String> = {
        let mut outcomes = Vec::new();
        for request in variants() {
            outcomes.push(h.send(request, |_| ok("x")).await.x_cache().to_owned());
        }
        outcomes
    };
    assert_eq!(outcomes, ["MISS", "MISS", "MISS", "MISS", "HIT"], "only /items/2 is left");
    for user in ["Bearer a", "Bearer b"] {
        let again = h.send(get_as("/me/1", "authorization", user), |_| ok("new")).await;
        assert_eq!(again.x_cache(), "MISS", "{user}");
    }
}
