//! The layer inside the stacks it is made for: axum 0.8 (`Router::layer` and
//! `Router::route_layer`), tower's own middleware (tower-http, `Buffer`, `ConcurrencyLimit`,
//! `tower-test`), a tonic 0.14 server and a bare hyper 1 server, the last two on real sockets.
//!
//! Every test uses the in-process [`MemoryStore`]; entries are written in a spawned task once
//! the body has been read, so each test reads the first body to its end and waits a little
//! before it expects a hit.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_redis_cache::{CacheLayer, MemoryStore, Rule};

/// Long enough for the background write of an entry to land in a [`MemoryStore`].
const SETTLE: Duration = Duration::from_millis(50);

fn x_cache<B>(response: &Response<B>) -> Option<&str> {
    response.headers().get("x-cache").map(|v| v.to_str().expect("x-cache is ASCII"))
}

async fn body_of<B>(response: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    response.into_body().collect().await.expect("the body reads to its end").to_bytes()
}

fn axum_get(path: &str) -> Request<axum::body::Body> {
    Request::get(path).body(axum::body::Body::empty()).expect("valid request")
}

fn full_get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).expect("valid request")
}

/// An axum handler that counts its calls and puts the count in its body, so that a second call
/// where a hit was expected shows in the body as well as in the counter.
fn counting_handler(name: &'static str, calls: &Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let calls = Arc::clone(calls);
    get(move || {
        let calls = Arc::clone(&calls);
        async move { format!("{name} #{}", calls.fetch_add(1, SeqCst) + 1) }
    })
}

// ---------------------------------------------------------------------------------------------
// 1. axum: Router::layer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn axum_router_layer_answers_the_second_get_from_the_cache_and_bypasses_routes_without_a_rule(
) -> anyhow::Result<()> {
    let report_calls = Arc::new(AtomicUsize::new(0));
    let plain_calls = Arc::new(AtomicUsize::new(0));
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/report", Rule::get()).build()?;
    let app = Router::new()
        .route("/report", counting_handler("report", &report_calls))
        .route("/plain", counting_handler("plain", &plain_calls))
        .layer(cache);

    let first = app.clone().oneshot(axum_get("/report")).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(x_cache(&first), Some("MISS"));
    let first_body = body_of(first).await;
    assert_eq!(first_body, "report #1");
    tokio::time::sleep(SETTLE).await;

    let second = app.clone().oneshot(axum_get("/report")).await?;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(x_cache(&second), Some("HIT"));
    assert_eq!(body_of(second).await, first_body);
    assert_eq!(report_calls.load(SeqCst), 1, "the hit must not run the handler");

    for n in 1..=2 {
        let plain = app.clone().oneshot(axum_get("/plain")).await?;
        assert_eq!(x_cache(&plain), Some("BYPASS"));
        assert_eq!(body_of(plain).await, format!("plain #{n}"));
    }
    assert_eq!(plain_calls.load(SeqCst), 2, "a bypassed route runs every time");

    // `Router::layer` also wraps axum's fallback, unlike `route_layer` (next test).
    let missing = app.oneshot(axum_get("/missing")).await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(x_cache(&missing), Some("BYPASS"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. axum: Router::route_layer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn axum_route_layer_caches_matched_routes_and_leaves_the_not_found_fallback_alone(
) -> anyhow::Result<()> {
    let report_calls = Arc::new(AtomicUsize::new(0));
    let plain_calls = Arc::new(AtomicUsize::new(0));
    let cache = CacheLayer::builder(MemoryStore::default())
        .route("/report", Rule::get())
        // A rule that would match the unmatched path, had the request reached the layer.
        .route("/missing", Rule::get())
        .build()?;
    let app = Router::new()
        .route("/report", counting_handler("report", &report_calls))
        .route("/plain", counting_handler("plain", &plain_calls))
        .route_layer(cache);

    let first = app.clone().oneshot(axum_get("/report")).await?;
    assert_eq!(x_cache(&first), Some("MISS"));
    let first_body = body_of(first).await;
    assert_eq!(first_body, "report #1");
    tokio::time::sleep(SETTLE).await;

    let second = app.clone().oneshot(axum_get("/report")).await?;
    assert_eq!(x_cache(&second), Some("HIT"));
    assert_eq!(body_of(second).await, first_body);
    assert_eq!(report_calls.load(SeqCst), 1);

    for n in 1..=2 {
        let plain = app.clone().oneshot(axum_get("/plain")).await?;
        assert_eq!(x_cache(&plain), Some("BYPASS"));
        assert_eq!(body_of(plain).await, format!("plain #{n}"));
    }
    assert_eq!(plain_calls.load(SeqCst), 2);

    let missing = app.oneshot(axum_get("/missing")).await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(x_cache(&missing), None, "route_layer must not run for axum's 404 fallback");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. tower and tower-http middleware around and under the layer
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn trace_above_and_timeout_below_the_cache_layer_over_a_service_fn_cache_a_full_body(
) -> anyhow::Result<()> {
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::TraceLayer;

    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CacheLayer::builder(MemoryStore::default())
        .route("/fast", Rule::get())
        .route("/slow", Rule::get())
        .build()?;
    let handler_calls = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(cache)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(100),
        ))
        .service_fn(move |request: Request<Full<Bytes>>| {
            let n = handler_calls.fetch_add(1, SeqCst) + 1;
            async move {
                if request.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Ok::<_, Infallible>(Response::new(Full::from(format!("call #{n}"))))
            }
        });

    let first = svc.clone().oneshot(full_get("/fast")).await?;
    assert_eq!(x_cache(&first), Some("MISS"));
    assert_eq!(body_of(first).await, "call #1");
    tokio::time::sleep(SETTLE).await;

    let second = svc.clone().oneshot(full_get("/fast")).await?;
    assert_eq!(x_cache(&second), Some("HIT"));
    assert_eq!(body_of(second).await, "call #1");
    assert_eq!(calls.load(SeqCst), 1);

    // The timeout's 408 passes up through the cache, which does not store it.
    for _ in 0..2 {
        let slow = svc.clone().oneshot(full_get("/slow")).await?;
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(x_cache(&slow), Some("MISS"));
        body_of(slow).await;
        tokio::time::sleep(SETTLE).await;
    }
    assert_eq!(calls.load(SeqCst), 3);
    Ok(())
}

#[tokio::test]
async fn a_buffer_above_the_cache_layer_shares_one_cache_service_between_clones(
) -> anyhow::Result<()> {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/items/{id}", Rule::get()).build()?;
    let handler_calls = Arc::clone(&calls);
    let svc = ServiceBuilder::new().buffer(4).layer(cache).service_fn(
        move |request: Request<Full<Bytes>>| {
            handler_calls.fetch_add(1, SeqCst);
            let body = format!("item at {}", request.uri().path());
            async move { Ok::<_, Infallible>(Response::new(Full::from(body))) }
        },
    );

    let first = svc.clone().oneshot(full_get("/items/7")).await;
    let first = first.map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(x_cache(&first), Some("MISS"));
    assert_eq!(body_of(first).await, "item at /items/7");
    tokio::time::sleep(SETTLE).await;

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let response = svc.oneshot(full_get("/items/7")).await.expect("buffered");
            let status = x_cache(&response).map(str::to_owned);
            (status, body_of(response).await)
        }));
    }
    for task in tasks {
        let (status, body) = task.await?;
        assert_eq!(status.as_deref(), Some("HIT"));
        assert_eq!(body, "item at /items/7");
    }
    assert_eq!(calls.load(SeqCst), 1);
    Ok(())
}

/// Tracks how many calls of an inner service are running at once, and the most ever seen.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
    calls: AtomicUsize,
}

impl InFlight {
    async fn run(&self, path: String) -> Response<Full<Bytes>> {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
        self.calls.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, SeqCst);
        Response::new(Full::from(format!("served {path}")))
    }
}

/// Drives `svc` as tower means it to be driven: one service, `ready` then `call`, request
/// after request, with each response future running on its own task. Middleware that hands out
/// a permit in `poll_ready` (ConcurrencyLimit, Buffer) panics or fails if the cache calls an
/// instance other than the one that was polled ready, and deadlocks if it keeps a permit.
async fn ready_call_spawn<S>(mut svc: S, paths: &[&str]) -> Vec<(StatusCode, String, Bytes)>
where
    S: Service<
        Request<Full<Bytes>>,
        Response = Response<tower_redis_cache::CacheBody<Full<Bytes>>>,
    >,
    S::Error: std::fmt::Debug + Send + 'static,
    S::Future: Send + 'static,
{
    let mut tasks = Vec::new();
    for path in paths {
        let ready = tokio::time::timeout(Duration::from_secs(5), svc.ready())
            .await
            .expect("the service became ready again (no permit kept)")
            .expect("ready");
        let future = ready.call(full_get(path));
        tasks.push(tokio::spawn(async move {
            let response = future.await.expect("the call succeeds");
            let status = response.status();
            let cache = x_cache(&response).unwrap_or("none").to_owned();
            (status, cache, body_of(response).await)
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        let done =
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("no response hangs");
        out.push(done.expect("the response task did not panic"));
    }
    out
}

#[tokio::test]
async fn a_concurrency_limit_below_the_cache_layer_gets_the_instance_that_was_polled_ready(
) -> anyhow::Result<()> {
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/cached/{id}", Rule::get()).build()?;
    let inflight = Arc::new(InFlight::default());
    let handler = Arc::clone(&inflight);
    let svc = ServiceBuilder::new().layer(cache).concurrency_limit(2).service_fn(
        move |request: Request<Full<Bytes>>| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(handler.run(request.uri().path().to_owned()).await) }
        },
    );

    let paths = [
        "/cached/1",
        "/plain/1",
        "/cached/2",
        "/plain/2",
        "/cached/3",
        "/plain/3",
        "/cached/4",
        "/plain/4",
    ];
    // One service instance, driven ready→call request after request.
    let results = ready_call_spawn(svc.clone(), &paths).await;
    for ((status, cache, body), path) in results.iter().zip(paths) {
        assert_eq!(*status, StatusCode::OK);
        let expected = if path.starts_with("/cached") { "MISS" } else { "BYPASS" };
        assert_eq!(cache, expected, "{path}");
        assert_eq!(body, &format!("served {path}"));
    }
    assert!(
        inflight.max.load(SeqCst) <= 2,
        "the limit held: {} at once",
        inflight.max.load(SeqCst)
    );

    // And through clones, concurrently, with hits among them.
    tokio::time::sleep(SETTLE).await;
    let calls_before = inflight.calls.load(SeqCst);
    let mut tasks = Vec::new();
    for &path in paths.iter().chain(paths.iter()) {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let response = svc.oneshot(full_get(path)).await.expect("infallible");
            let cache = x_cache(&response).unwrap_or("none").to_owned();
            (path, cache, body_of(response).await)
        }));
    }
    for task in tasks {
        let (path, cache, body) =
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("no deadlock")?;
        let expected = if path.starts_with("/cached") { "HIT" } else { "BYPASS" };
        assert_eq!(cache, expected, "{path}");
        assert_eq!(body, format!("served {path}"));
    }
    assert_eq!(inflight.calls.load(SeqCst) - calls_before, 8, "only the uncached requests ran");
    assert!(inflight.max.load(SeqCst) <= 2);
    Ok(())
}

#[tokio::test]
async fn a_buffer_below_the_cache_layer_gets_the_instance_that_was_polled_ready(
) -> anyhow::Result<()> {
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/cached/{id}", Rule::get()).build()?;
    let inflight = Arc::new(InFlight::default());
    let handler = Arc::clone(&inflight);
    // A bound of one slot: a second `call` without its own `poll_ready` has no slot.
    let svc = ServiceBuilder::new().layer(cache).buffer(1).service_fn(
        move |request: Request<Full<Bytes>>| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, Infallible>(handler.run(request.uri().path().to_owned()).await) }
        },
    );

    let paths = ["/cached/1", "/plain/1", "/cached/2", "/plain/2", "/cached/3"];
    let results = ready_call_spawn(svc, &paths).await;
    for ((status, cache, body), path) in results.iter().zip(paths) {
        assert_eq!(*status, StatusCode::OK);
        let expected = if path.starts_with("/cached") { "MISS" } else { "BYPASS" };
        assert_eq!(cache, expected, "{path}");
        assert_eq!(body, &format!("served {path}"));
    }
    assert_eq!(inflight.calls.load(SeqCst), paths.len());
    Ok(())
}

#[tokio::test]
async fn the_cache_service_passes_readiness_through_and_calls_the_readied_inner_instance(
) -> anyhow::Result<()> {
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/cached", Rule::get()).build()?;
    let (mock, mut handle) =
        tower_test::mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let mut svc = tower_test::mock::Spawn::new(cache.layer(mock));

    handle.allow(0);
    assert!(svc.poll_ready().is_pending(), "not ready while the inner is not");
    handle.allow(1);
    assert!(svc.is_woken(), "the inner's wake-up reaches the caller");
    assert!(svc.poll_ready().is_ready());

    // The mock panics if the instance called is not the one polled ready.
    let future = tokio::spawn(svc.call(full_get("/cached")));
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the request reaches the inner (a call on an unready clone panics)")
        .expect("the inner is alive");
    assert_eq!(request.uri().path(), "/cached");
    send.send_response(Response::new(Full::from("from the mock")));
    let response = future.await?.map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(x_cache(&response), Some("MISS"));
    assert_eq!(body_of(response).await, "from the mock");
    tokio::time::sleep(SETTLE).await;

    // A hit is served without the inner being called; it still needs readiness first.
    handle.allow(1);
    assert!(svc.poll_ready().is_ready());
    let response = svc.call(full_get("/cached")).await.map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(x_cache(&response), Some("HIT"));
    assert_eq!(body_of(response).await, "from the mock");
    assert!(handle.poll_request().is_pending(), "the hit did not reach the inner");
    Ok(())
}

#[tokio::test]
async fn compression_outside_the_cache_layer_gzips_both_the_miss_and_the_hit() -> anyhow::Result<()>
{
    use tower_http::compression::CompressionLayer;

    let text: String = (0..200).map(|i| format!("line {i} of a report\n")).collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/report", Rule::get()).build()?;
    let (handler_calls, handler_text) = (Arc::clone(&calls), text.clone());
    let svc = ServiceBuilder::new().layer(CompressionLayer::new()).layer(cache).service_fn(
        move |_request: Request<Full<Bytes>>| {
            handler_calls.fetch_add(1, SeqCst);
            let mut response = Response::new(Full::from(handler_text.clone()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            async move { Ok::<_, Infallible>(response) }
        },
    );
    let gzip_get = || {
        Request::get("/report")
            .header(header::ACCEPT_ENCODING, "gzip")
            .body(Full::<Bytes>::default())
            .expect("valid request")
    };

    let first = svc.clone().oneshot(gzip_get()).await?;
    assert_eq!(x_cache(&first), Some("MISS"));
    assert_eq!(first.headers()[header::CONTENT_ENCODING], "gzip");
    let first_gzip = body_of(first).await;
    assert_eq!(&first_gzip[..2], [0x1f, 0x8b], "a gzip stream");
    assert!(first_gzip.len() < text.len());
    tokio::time::sleep(SETTLE).await;

    let second = svc.clone().oneshot(gzip_get()).await?;
    assert_eq!(x_cache(&second), Some("HIT"));
    assert_eq!(second.headers()[header::CONTENT_ENCODING], "gzip");
    assert!(
        !second.headers().contains_key(header::CONTENT_LENGTH),
        "the cached length is the uncompressed one; compression must drop it"
    );
    let second_gzip = body_of(second).await;
    assert_eq!(second_gzip, first_gzip, "same text, same compressor");

    // The entry holds the identity body: a client without gzip gets the text from it.
    let plain = svc.oneshot(full_get("/report")).await?;
    assert_eq!(x_cache(&plain), Some("HIT"));
    assert!(!plain.headers().contains_key(header::CONTENT_ENCODING));
    assert_eq!(body_of(plain).await, text);
    assert_eq!(calls.load(SeqCst), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Trailers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn trailers_of_a_cached_response_are_served_again_on_a_hit() -> anyhow::Result<()> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));

    let calls = Arc::new(AtomicUsize::new(0));
    let cache =
        CacheLayer::builder(MemoryStore::default()).route("/with-trailers", Rule::get()).build()?;
    let (handler_calls, handler_trailers) = (Arc::clone(&calls), trailers.clone());
    let svc = cache.layer(tower::service_fn(move |_request: Request<Full<Bytes>>| {
        handler_calls.fetch_add(1, SeqCst);
        let trailers = handler_trailers.clone();
        async move {
            let body = Full::new(Bytes::from_static(b"payload"))
                .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
            Ok::<_, Infallible>(Response::new(body))
        }
    }));

    let first = svc.clone().oneshot(full_get("/with-trailers")).await?;
    assert_eq!(x_cache(&first), Some("MISS"));
    let first = first.into_body().collect().await?;
    assert_eq!(first.trailers(), Some(&trailers));
    assert_eq!(first.to_bytes(), "payload");
    tokio::time::sleep(SETTLE).await;

    let second = svc.oneshot(full_get("/with-trailers")).await?;
    assert_eq!(x_cache(&second), Some("HIT"));
    let second = second.into_body().collect().await?;
    assert_eq!(second.trailers(), Some(&trailers), "trailers survive the cache");
    assert_eq!(second.to_bytes(), "payload");
    assert_eq!(calls.load(SeqCst), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. tonic 0.14 server
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_tonic_server_with_the_cache_layer_answers_health_check_and_watch_unchanged(
) -> anyhow::Result<()> {
    use health_watch::next_status;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Endpoint, Server};
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::ServingStatus;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    reporter.set_service_status("demo.Orders", ServingStatus::NotServing).await;

    // Read rules, one of them on the gRPC service's own paths: gRPC calls are POSTs, so none
    // of them is looked up, stored or evicted.
    let cache = CacheLayer::builder(MemoryStore::default())
        .route("/reports", Rule::get())
        .route("/grpc.health.v1.Health/{method}", Rule::get())
        .build()?;
    let handle = cache.handle();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(cache)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let channel = Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = HealthClient::new(channel);

    for _ in 0..3 {
        let response = client.check(HealthCheckRequest { service: String::new() }).await?;
        assert_eq!(
            response.metadata().get("x-cache").and_then(|v| v.to_str().ok()),
            Some("BYPASS")
        );
        assert_eq!(response.into_inner().status(), Wire::Serving);
    }
    let orders = client.check(HealthCheckRequest { service: "demo.Orders".into() }).await?;
    assert_eq!(orders.into_inner().status(), Wire::NotServing);

    // A gRPC error (HTTP 200, status in the trailers-only headers) comes through as it was.
    let unknown = client
        .check(HealthCheckRequest { service: "demo.Unknown".into() })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // Streaming: the watch's messages arrive one by one through the layer.
    let watch = client.watch(HealthCheckRequest { service: "demo.Orders".into() }).await?;
    assert_eq!(watch.metadata().get("x-cache").and_then(|v| v.to_str().ok()), Some("BYPASS"));
    let mut stream = watch.into_inner();
    assert_eq!(next_status(&mut stream).await?, Wire::NotServing);
    reporter.set_service_status("demo.Orders", ServingStatus::Serving).await;
    assert_eq!(next_status(&mut stream).await?, Wire::Serving);
    drop(stream);

    let stats = handle.stats();
    assert_eq!(stats.bypasses, 6, "every call passed the layer: {stats:?}");
    assert_eq!((stats.hits, stats.misses, stats.stores), (0, 0, 0));
    server.abort();
    Ok(())
}

/// Reads one message of a health watch, with a time limit.
mod health_watch {
    use std::time::Duration;

    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::HealthCheckResponse;

    pub(super) async fn next_status(
        stream: &mut tonic::Streaming<HealthCheckResponse>,
    ) -> anyhow::Result<ServingStatus> {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        Ok(message.status())
    }
}

// ---------------------------------------------------------------------------------------------
// 5. hyper 1 server through hyper-util
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hyper_server_with_the_cache_layer_caches_gets_and_echoes_post_bodies_unchanged(
) -> anyhow::Result<()> {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CacheLayer::builder(MemoryStore::default())
        .route("/greeting", Rule::get().tag("greeting"))
        .route("/greeting", Rule::post().evicts(["greeting"]))
        .build()?;
    let handle = cache.handle();
    let handler_calls = Arc::clone(&calls);
    let svc = cache.layer(tower::service_fn(move |request: Request<Incoming>| {
        let calls = Arc::clone(&handler_calls);
        async move {
            let n = calls.fetch_add(1, SeqCst) + 1;
            let response = if request.method() == Method::GET {
                Response::new(Full::from(format!("hello #{n}")))
            } else {
                // Echo the body and its content type.
                let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
                let body = request.into_body().collect().await?.to_bytes();
                let mut response = Response::new(Full::new(body));
                if let Some(content_type) = content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, content_type);
                }
                response
            };
            Ok::<_, hyper::Error>(response)
        }
    }));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let cache_status = |response: &reqwest::Response| {
        response.headers().get("x-cache").and_then(|v| v.to_str().ok()).map(str::to_owned)
    };

    let first = client.get(url("/greeting")).send().await?;
    assert_eq!(first.status(), reqwest::StatusCode::OK);
    assert_eq!(cache_status(&first).as_deref(), Some("MISS"));
    assert_eq!(first.text().await?, "hello #1");
    tokio::time::sleep(SETTLE).await;

    let second = client.get(url("/greeting")).send().await?;
    assert_eq!(cache_status(&second).as_deref(), Some("HIT"));
    assert_eq!(second.content_length(), Some("hello #1".len() as u64));
    assert_eq!(second.text().await?, "hello #1");
    assert_eq!(calls.load(SeqCst), 1);

    // POSTs, with and without a mutation rule, carry their bodies through unchanged.
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    for path in ["/echo", "/greeting"] {
        let echoed = client
            .post(url(path))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(payload.clone())
            .send()
            .await?;
        assert_eq!(echoed.status(), reqwest::StatusCode::OK);
        assert_eq!(cache_status(&echoed).as_deref(), Some("BYPASS"));
        assert_eq!(echoed.headers()[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(echoed.bytes().await?, payload, "{path} echoes its body");
    }
    assert_eq!(
        handle.stats().evictions,
        2,
        "the POST to /greeting evicted its tag and its URI (RFC 9111 4.4)"
    );

    // The eviction makes the next GET a miss that runs the handler again.
    let third = client.get(url("/greeting")).send().await?;
    assert_eq!(cache_status(&third).as_deref(), Some("MISS"));
    assert_eq!(third.text().await?, "hello #4");
    server.abort();
    Ok(())
}
