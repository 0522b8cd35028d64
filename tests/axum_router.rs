//! `CacheRouter`: axum routes declared with their cache rules, each pattern once, working under
//! `Router::nest` (keys and `Location` invalidation by the full path).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::OriginalUri;
use axum::http::{Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_redis_cache::{CacheHandle, CacheLayer, MemoryStore, Rule};

/// Calls to the handlers, by name.
#[derive(Clone, Default)]
struct Calls(Arc<[AtomicUsize; 4]>);

impl Calls {
    fn bump(&self, i: usize) -> usize {
        self.0[i].fetch_add(1, Ordering::SeqCst) + 1
    }
    fn of(&self, i: usize) -> usize {
        self.0[i].load(Ordering::SeqCst)
    }
}

const LIST: usize = 0;
const SHOW: usize = 1;

/// The users API, declared once; every answer names the full path and the call count.
fn api(calls: &Calls) -> (Router, CacheHandle) {
    let (list, show) = (calls.clone(), calls.clone());
    CacheLayer::builder(MemoryStore::default())
        .router()
        .route(
            "/users",
            get(move |OriginalUri(uri): OriginalUri| async move {
                format!("list {} #{}", uri.path(), list.bump(LIST))
            })
            .post(|| async { StatusCode::CREATED }),
            [Rule::get().tag("users"), Rule::post().evicts(["users"])],
        )
        .route(
            "/users/{id}",
            get(move |OriginalUri(uri): OriginalUri| async move {
                format!("show {} #{}", uri.path(), show.bump(SHOW))
            }),
            [Rule::get().tag("user:{id}")],
        )
        // No rule: it says where it moved a user, which invalidates by URI alone.
        .uncached(
            "/moves",
            put(|OriginalUri(uri): OriginalUri| async move {
                let prefix = uri.path().trim_end_matches("/moves").to_owned();
                (StatusCode::NO_CONTENT, [("location", format!("{prefix}/users/7"))])
                    .into_response()
            }),
        )
        .bypass("/login", post(|| async { "welcome" }))
        .build()
        .expect("valid rules")
}

async fn send(app: &Router, method: Method, path: &str) -> (String, String) {
    let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    // Misses are stored in the background.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    (x_cache, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn declared_routes_are_cached_and_evicted_by_their_rules() {
    let calls = Calls::default();
    let (app, cache) = api(&calls);
    assert_eq!(send(&app, Method::GET, "/users").await, ("MISS".into(), "list /users #1".into()));
    assert_eq!(send(&app, Method::GET, "/users").await, ("HIT".into(), "list /users #1".into()));
    assert_eq!(send(&app, Method::POST, "/users").await.0, "BYPASS");
    assert_eq!(send(&app, Method::GET, "/users").await.1, "list /users #2", "evicted");
    assert_eq!(send(&app, Method::POST, "/login").await.0, "BYPASS");
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test]
async fn under_nest_entries_are_keyed_and_invalidated_by_the_full_path() {
    let calls = Calls::default();
    let (users, _cache) = api(&calls);
    let app = Router::new().nest("/a", users.clone()).nest("/b", users);
    // Two mounts of one router: two entries.
    assert_eq!(send(&app, Method::GET, "/a/users/7").await.1, "show /a/users/7 #1");
    assert_eq!(send(&app, Method::GET, "/b/users/7").await.1, "show /b/users/7 #2");
    assert_eq!(
        send(&app, Method::GET, "/a/users/7").await,
        ("HIT".into(), "show /a/users/7 #1".into())
    );
    assert_eq!(
        send(&app, Method::GET, "/b/users/7").await,
        ("HIT".into(), "show /b/users/7 #2".into())
    );
    // `Location: /a/users/7` (the full path) invalidates that entry, and only that one.
    send(&app, Method::PUT, "/a/moves").await;
    assert_eq!(
        send(&app, Method::GET, "/a/users/7").await,
        ("MISS".into(), "show /a/users/7 #3".into())
    );
    assert_eq!(send(&app, Method::GET, "/b/users/7").await.0, "HIT");
    assert_eq!(calls.of(SHOW), 3);
    assert_eq!(calls.of(LIST), 0);
}

#[test]
fn a_mistake_in_a_declared_rule_names_the_route() {
    let error = CacheLayer::builder(MemoryStore::default())
        .router::<()>()
        .route("/users/{id}", get(|| async { "x" }), [Rule::get().tag("user:{uid}")])
        .build()
        .unwrap_err();
    assert!(error.to_string().starts_with("route `/users/{id}`: "), "{error}");
}

#[tokio::test]
async fn a_handler_takes_the_cache_handle_to_evict() {
    let calls = Calls::default();
    let list = calls.clone();
    let (app, _cache) = CacheLayer::builder(MemoryStore::default())
        .router()
        .route(
            "/users",
            get(move || async move { format!("list #{}", list.bump(LIST)) }),
            [Rule::get().tag("users")],
        )
        // No mutation rule: the handler evicts itself.
        .uncached(
            "/import",
            post(|cache: CacheHandle| async move {
                cache.evict_tags(["users"]).await.unwrap();
                "imported"
            }),
        )
        .build()
        .unwrap();
    send(&app, Method::GET, "/users").await;
    assert_eq!(send(&app, Method::GET, "/users").await.0, "HIT");
    assert_eq!(send(&app, Method::POST, "/import").await.1, "imported");
    assert_eq!(send(&app, Method::GET, "/users").await, ("MISS".into(), "list #2".into()));

    // Without the layer in front there is no handle to take.
    let bare: Router = Router::new().route("/import", post(|_: CacheHandle| async { "no" }));
    let request = Request::post("/import").body(Body::empty()).unwrap();
    let response = bare.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// An application state that holds the handle, as axum's `FromRef` reads it.
#[derive(Clone)]
struct AppState {
    cache: CacheHandle,
}

impl axum::extract::FromRef<AppState> for CacheHandle {
    fn from_ref(state: &AppState) -> Self {
        state.cache.clone()
    }
}

// A handler behind no cache layer (a separate admin router) takes the handle from the
// application state, through `FromRef`, and evicts what the cached router stored.
#[tokio::test]
async fn the_handle_comes_from_the_application_state_through_from_ref() {
    let calls = Calls::default();
    let list = calls.clone();
    let (api, cache) = CacheLayer::builder(MemoryStore::default())
        .router()
        .route(
            "/users",
            get(move || async move { format!("list #{}", list.bump(LIST)) }),
            [Rule::get().tag("users")],
        )
        .build()
        .unwrap();
    let admin = Router::new()
        .route(
            "/admin/purge",
            post(|axum::extract::State(cache): axum::extract::State<CacheHandle>| async move {
                cache.purge_all().await.unwrap();
                "purged"
            }),
        )
        .with_state(AppState { cache });
    let app = api.merge(admin);
    send(&app, Method::GET, "/users").await;
    assert_eq!(send(&app, Method::GET, "/users").await.0, "HIT");
    let purge = Request::post("/admin/purge").body(Body::empty()).unwrap();
    let purged = app.clone().oneshot(purge).await.unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    assert!(purged.headers().get("x-cache").is_none(), "the admin route has no layer");
    assert_eq!(send(&app, Method::GET, "/users").await, ("MISS".into(), "list #2".into()));
}
