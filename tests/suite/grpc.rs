// gRPC calls through `CacheLayer::grpc`, under tower-test: the inner service is a mock that the
// test answers by hand, with gRPC framing and trailers written out. Included as a module by
// `tests/service_memory.rs` and `tests/service_redis.rs`, after the service suite, whose
// helpers it uses. The same calls through a real tonic server and client are in tests/grpc.rs.

use http::request::Parts;
use http_body::Frame;
use tower_redis_cache::grpc::{GrpcCacheService, RequestBody};

type GrpcReq = Request<RequestBody<Full<Bytes>>>;

const GET_USER: &str = "/demo.Users/GetUser";
const UPDATE_USER: &str = "/demo.Users/UpdateUser";
const LIST_USERS: &str = "/demo.Users/ListUsers";

/// `payload` as one length-prefixed gRPC message.
fn framed(payload: &[u8]) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(payload);
    framed.into()
}

/// A call to `method` whose request stream is `stream`.
fn call(method: &str, stream: Bytes) -> Request<Full<Bytes>> {
    Request::post(method)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(stream))
        .unwrap()
}

fn trailers(status: &'static str) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    trailers
}

/// A unary response: `messages`, then `grpc-status` in the trailers.
fn replied(messages: &[&[u8]], status: &'static str) -> Resp {
    let mut frames: Vec<_> = messages.iter().map(|m| Ok(Frame::data(framed(m)))).collect();
    frames.push(Ok(Frame::trailers(trailers(status))));
    with_header(Response::new(streamed(frames)), "content-type", "application/grpc")
}

/// A trailers-only response: the status in the headers, and no body.
fn trailers_only(status: &'static str) -> Resp {
    let response = with_header(Response::new(full("")), "content-type", "application/grpc");
    with_header(response, "grpc-status", status)
}

struct GrpcHarness {
    svc: mock::Spawn<GrpcCacheService<Mock<GrpcReq, Resp>>>,
    inner: Handle<GrpcReq, Resp>,
    cache: CacheHandle,
}

/// What a call through the harness gave.
struct Called {
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    /// The request as the inner service saw it, with its whole body, if it was reached.
    reached_inner: Option<(Parts, Bytes)>,
}

impl Called {
    fn x_cache(&self) -> &str {
        self.headers.get("x-cache").map_or("", |v| v.to_str().unwrap())
    }
}

impl GrpcHarness {
    async fn new(rules: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder) -> Self {
        let layer = rules(builder_for(test_store().await)).build().unwrap();
        let cache = layer.handle();
        let (svc, inner) = mock::spawn_layer(layer.grpc());
        Self { svc, inner, cache }
    }

    /// The users service's rules.
    async fn users() -> Self {
        Self::new(|builder| {
            builder
                .route(GET_USER, Rule::grpc().tag("users"))
                .route(UPDATE_USER, Rule::post().evicts(["users"]))
        })
        .await
    }

    /// Sends `request`; if it reaches the inner service, reads the body it was given and
    /// answers with `respond`. Reads the whole response, then lets the store write land.
    async fn send(&mut self, request: Request<Full<Bytes>>, respond: impl FnOnce() -> Resp) -> Called {
        assert_ready_ok!(self.svc.poll_ready());
        let mut call = tokio::spawn(self.svc.call(request));
        let mut reached_inner = None;
        let response = tokio::select! {
            response = &mut call => response,
            next = self.inner.next_request() => {
                let (seen, reply) = next.expect("the inner mock is alive");
                let (parts, body) = seen.into_parts();
                let body = body.collect().await.expect("the request body reads").to_bytes();
                reply.send_response(respond());
                reached_inner = Some((parts, body));
                call.await
            }
        };
        let (parts, body) = response.expect("no panic").expect("no error").into_parts();
        let collected = body.collect().await.expect("body reads");
        let trailers = collected.trailers().cloned();
        tokio::time::sleep(Duration::from_millis(5)).await;
        Called { headers: parts.headers, body: collected.to_bytes(), trailers, reached_inner }
    }

    async fn get_user(&mut self, id: &[u8], respond: impl FnOnce() -> Resp) -> Called {
        self.send(call(GET_USER, framed(id)), respond).await
    }
}

#[tokio::test]
async fn a_unary_call_is_keyed_on_its_message_and_replayed_with_its_trailers() {
    let mut h = GrpcHarness::users().await;
    let miss = h.get_user(b"id=1", || replied(&[b"Ada"], "0")).await;
    assert_eq!(miss.x_cache(), "MISS");
    let (parts, seen) = miss.reached_inner.expect("a miss reaches the server");
    assert_eq!(seen, framed(b"id=1"), "the server reads the message the cache read");
    assert_eq!(parts.headers["content-type"], "application/grpc");

    let hit = h.get_user(b"id=1", || panic!("a hit must not reach the server")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, framed(b"Ada"));
    assert_eq!(hit.headers["content-type"], "application/grpc");
    assert_eq!(hit.trailers.expect("trailers are replayed")["grpc-status"], "0");

    // Another message is another entry.
    let other = h.get_user(b"id=2", || replied(&[b"Alan"], "0")).await;
    assert_eq!(other.x_cache(), "MISS");
    assert_eq!(other.body, framed(b"Alan"));
    assert_eq!(h.get_user(b"id=2", || panic!("stored")).await.body, framed(b"Alan"));
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (2, 2, 2));
}

#[tokio::test]
async fn error_statuses_and_streams_are_never_stored() {
    let mut h = GrpcHarness::users().await;
    type Respond = fn() -> Resp;
    let responses: [(&str, Respond); 5] = [
        ("a trailers-only error", || trailers_only("5")),
        ("an error in the trailers", || replied(&[b"partial"], "13")),
        ("no grpc-status at all", || {
            let frames = vec![Ok(Frame::data(framed(b"Ada")))];
            with_header(Response::new(streamed(frames)), "content-type", "application/grpc")
        }),
        ("a stream of two messages", || replied(&[b"Ada", b"Alan"], "0")),
        ("a trailers-only success, with no message", || trailers_only("0")),
    ];
    for (what, respond) in responses {
        for attempt in ["first", "second"] {
            let called = h.get_user(what.as_bytes(), respond).await;
            assert_eq!(called.x_cache(), "MISS", "{what}, {attempt} call");
            assert!(called.reached_inner.is_some(), "{what} was stored");
        }
    }
    // What the server said came through as it was.
    let error = h.get_user(b"x", || trailers_only("5")).await;
    assert_eq!(error.headers["grpc-status"], "5");
    let streamed = h.get_user(b"y", || replied(&[b"Ada", b"Alan"], "0")).await;
    assert_eq!(streamed.body, [framed(b"Ada"), framed(b"Alan")].concat());
    assert_eq!(h.cache.stats().stores, 0);
}

#[tokio::test]
async fn request_streams_that_are_not_one_message_pass_through_intact() {
    let mut h = GrpcHarness::new(|builder| {
        builder.max_body_bytes(64).route(GET_USER, Rule::grpc().tag("users"))
    })
    .await;
    let two = Bytes::from([framed(b"id=1"), framed(b"id=2")].concat());
    let long = framed(&[b'x'; 60]);
    let cut_short = framed(b"id=1").slice(..6);
    for (what, stream) in
        [("two messages", two), ("over max_body_bytes", long), ("a message cut short", cut_short)]
    {
        for _ in 0..2 {
            let called = h.send(call(GET_USER, stream.clone()), || replied(&[b"Ada"], "0")).await;
            let (_, seen) = called.reached_inner.expect("every such call reaches the server");
            assert_eq!(seen, stream, "{what}: the server gets the stream unchanged");
            assert_eq!(called.body, framed(b"Ada"), "{what}");
        }
    }
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores, stats.bypasses), (0, 0, 0, 6), "{stats:?}");
}

#[tokio::test]
async fn without_the_grpc_layer_a_grpc_rule_bypasses() {
    let layer = builder_for(test_store().await).route(GET_USER, Rule::grpc()).build().unwrap();
    let mut h = Harness::new(layer);
    for _ in 0..2 {
        let called = h
            .send(request(Method::POST, GET_USER), |_| {
                with_header(ok("reply"), "content-type", "application/grpc")
            })
            .await;
        assert_eq!(called.x_cache(), "BYPASS");
        assert!(called.reached_inner.is_some());
    }
    assert_eq!(h.cache.stats().stores, 0);
}

#[tokio::test]
async fn a_write_evicts_its_tags_and_other_methods_pass_through() {
    let mut h = GrpcHarness::users().await;
    h.get_user(b"id=1", || replied(&[b"Ada"], "0")).await;
    assert_eq!(h.get_user(b"id=1", || panic!("stored")).await.x_cache(), "HIT");

    let update = h.send(call(UPDATE_USER, framed(b"id=1 Ada L.")), || replied(&[b"ok"], "0")).await;
    let (_, seen) = update.reached_inner.expect("a write reaches the server");
    assert_eq!(seen, framed(b"id=1 Ada L."), "a write's body is not read by the cache");
    let after = h.get_user(b"id=1", || replied(&[b"Ada L."], "0")).await;
    assert_eq!(after.x_cache(), "MISS", "the write evicted the entry");
    assert_eq!(after.body, framed(b"Ada L."));

    // A method without a rule, streaming or not, passes through, and so does a GET.
    for _ in 0..2 {
        let list = h.send(call(LIST_USERS, framed(b"")), || replied(&[b"Ada", b"Alan"], "0")).await;
        assert_eq!(list.body, [framed(b"Ada"), framed(b"Alan")].concat());
        assert!(list.reached_inner.is_some());
    }
    let get = Request::get(GET_USER).body(Full::new(framed(b"id=1"))).unwrap();
    let get = h.send(get, || trailers_only("12")).await;
    assert_eq!(get.x_cache(), "BYPASS");
    assert_eq!(get.reached_inner.expect("passed through").1, framed(b"id=1"));
}

#[tokio::test]
async fn users_metadata_and_framing_each_have_their_own_entries() {
    let mut h = GrpcHarness::new(|builder| {
        builder.route(GET_USER, Rule::grpc().per_user()).route("/demo.Users/Public", Rule::grpc())
    })
    .await;
    let as_user = |user: &'static str, method: &str| {
        let mut request = call(method, framed(b"id=1"));
        request.headers_mut().insert("authorization", HeaderValue::from_static(user));
        request
    };
    h.send(as_user("Bearer ada", GET_USER), || replied(&[b"Ada's view"], "0")).await;
    let alan = h.send(as_user("Bearer alan", GET_USER), || replied(&[b"Alan's view"], "0")).await;
    assert_eq!(alan.x_cache(), "MISS", "another user's entry is never served");
    let ada = h.send(as_user("Bearer ada", GET_USER), || panic!("stored")).await;
    assert_eq!((ada.x_cache(), &ada.body), ("HIT", &framed(b"Ada's view")));
    let anonymous = h.send(call(GET_USER, framed(b"id=1")), || replied(&[b"?"], "0")).await;
    assert_eq!(anonymous.x_cache(), "BYPASS", "no user to key on");

    // Credentials to a method that is not per user bypass, as over HTTP.
    let credentialed =
        h.send(as_user("Bearer ada", "/demo.Users/Public"), || replied(&[b"p"], "0")).await;
    assert_eq!(credentialed.x_cache(), "BYPASS");

    // gRPC-Web frames its trailers in the body: not the same response as gRPC's.
    let mut web = call("/demo.Users/Public", framed(b"id=1"));
    h.send(call("/demo.Users/Public", framed(b"id=1")), || replied(&[b"p"], "0")).await;
    web.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc-web"));
    let web = h.send(web, || replied(&[b"p"], "0")).await;
    assert_eq!(web.x_cache(), "MISS");
}
