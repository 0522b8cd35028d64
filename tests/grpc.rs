//! gRPC calls from a real tonic client, over a loopback socket, to a tonic server with
//! [`CacheLayer::grpc`] in front of it: the `demo.Users` service of `examples/grpc.rs`, and
//! tonic-health's streaming `Watch`. Each scenario runs over the in-process store and over a
//! private `redis-server`.
//!
//! The framing details (errors in the headers or in the trailers, several messages, request
//! streams over the limit) are in `tests/suite/grpc.rs`, under tower-test.

mod support;
#[path = "../examples/grpc/users.rs"]
mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "redis")]
use support::redis::RedisServer;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;
#[cfg(feature = "redis")]
use tower_redis_cache::RedisStore;
use tower_redis_cache::{CacheHandle, CacheLayer, CacheLayerBuilder, MemoryStore, Rule, Store};
use users::{GetUserRequest, ListUsersRequest, User, UsersClient, UsersServer, UsersService};

/// How long a test waits for an entry's background write to land.
const STORE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis,
}

/// A tonic server on a free port, with the cache's gRPC layer in front of `demo.Users` and
/// `grpc.health.v1.Health`. Stopped on drop.
struct GrpcServer {
    addr: String,
    users: UsersService,
    health: tonic_health::server::HealthReporter,
    cache: CacheHandle,
    task: JoinHandle<()>,
    /// What the store needs running (the test's `redis-server`).
    _backing: Option<Box<dyn std::any::Any + Send>>,
}

impl GrpcServer {
    async fn start(
        backend: Backend,
        rules: impl FnOnce(CacheLayerBuilder) -> CacheLayerBuilder,
    ) -> Self {
        let (store, backing): (Arc<dyn Store>, Option<Box<dyn std::any::Any + Send>>) =
            match backend {
                Backend::Memory => (Arc::new(MemoryStore::default()), None),
                #[cfg(feature = "redis")]
                Backend::Redis => {
                    let server = RedisServer::start();
                    let store = RedisStore::from_url(server.url()).await.expect("connect to redis");
                    (Arc::new(store), Some(Box::new(server)))
                }
            };
        let builder = CacheLayer::builder(store).store_timeout(Duration::from_secs(2));
        let cache = rules(builder).build().expect("valid rules");
        let users = UsersService::seeded();
        let (health, health_service) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .layer(cache.grpc())
            .add_service(UsersServer::new(users.clone()))
            .add_service(health_service)
            .serve_with_incoming(TcpIncoming::from(listener));
        let task = tokio::spawn(async move { server.await.expect("the server runs") });
        Self { addr, users, health, cache: cache.handle(), task, _backing: backing }
    }

    /// The users example's rules.
    async fn users(backend: Backend) -> Self {
        Self::start(backend, |builder| {
            builder
                .route("/demo.Users/GetUser", Rule::grpc().tag("users"))
                .route("/demo.Users/UpdateUser", Rule::post().evicts(["users"]))
                // A streaming method under a unary method's rule: still never stored.
                .route("/grpc.health.v1.Health/Watch", Rule::grpc())
        })
        .await
    }

    async fn client(&self) -> UsersClient {
        UsersClient::connect(self.addr.clone()).await.expect("connect to the server")
    }

    /// Waits until `n` entries were written in all.
    async fn wait_stored(&self, n: u64) {
        let deadline = Instant::now() + STORE_WAIT;
        while self.cache.stats().stores < n {
            assert!(Instant::now() < deadline, "{n} entries not stored in {STORE_WAIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn x_cache(metadata: &MetadataMap) -> &str {
    metadata.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn get_user(client: &mut UsersClient, id: u64) -> (String, User) {
    let response = client.get_user(GetUserRequest { id }).await.expect("GetUser succeeds");
    (x_cache(response.metadata()).to_owned(), response.into_inner())
}

// ---------------------------------------------------------------------------------------------

async fn unary_calls_are_cached_per_message_until_a_write_evicts_them(backend: Backend) {
    let server = GrpcServer::users(backend).await;
    let mut client = server.client().await;
    let (cache, ada) = get_user(&mut client, 1).await;
    assert_eq!((cache.as_str(), ada.name.as_str()), ("MISS", "Ada Lovelace"));
    server.wait_stored(1).await;
    let (cache, again) = get_user(&mut client, 1).await;
    assert_eq!(cache, "HIT", "the same message again");
    assert_eq!(again, ada, "the hit decodes to the same message");
    assert_eq!(server.users.calls(), 1, "a hit never reaches the handler");

    let (cache, alan) = get_user(&mut client, 2).await;
    assert_eq!((cache.as_str(), alan.name.as_str()), ("MISS", "Alan Turing"), "another message");
    server.wait_stored(2).await;
    assert_eq!(get_user(&mut client, 2).await.0, "HIT");

    // A write evicts the tag: the next read sees it.
    let renamed = User { id: 1, name: "Ada King".into(), email: "ada@example.com".into() };
    client.update_user(renamed.clone()).await.expect("UpdateUser succeeds");
    let (cache, after) = get_user(&mut client, 1).await;
    assert_eq!(
        (cache.as_str(), &after),
        ("MISS", &renamed),
        "{backend:?}: no stale read after a write"
    );
    assert_eq!(get_user(&mut client, 2).await.0, "MISS", "the tag covered user 2 as well");
    assert_eq!(server.users.calls(), 5);
    let stats = server.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.evictions), (2, 4, 1), "{stats:?}");
}

async fn error_statuses_are_never_cached(backend: Backend) {
    let server = GrpcServer::users(backend).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        let status = client.get_user(GetUserRequest { id: 42 }).await.expect_err("no user 42");
        assert_eq!((status.code(), status.message()), (Code::NotFound, "no user 42"));
        // Whatever the layer would write is written by now.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.users.calls(), 3, "every call reached the handler");
    let stats = server.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (0, 3, 0), "{stats:?}");
}

async fn streams_pass_through_as_they_come(backend: Backend) {
    let server = GrpcServer::users(backend).await;
    let mut client = server.client().await;
    // A server stream without a rule.
    for _ in 0..2 {
        let response = client.list_users(ListUsersRequest {}).await.expect("ListUsers");
        assert_eq!(x_cache(response.metadata()), "BYPASS");
        let mut stream = response.into_inner();
        let mut names = Vec::new();
        while let Some(user) = stream.message().await.expect("the stream reads") {
            names.push(user.name);
        }
        assert_eq!(names, ["Ada Lovelace", "Alan Turing"]);
    }
    assert_eq!(server.users.calls(), 2);

    // A stream that stays open, under a rule: each message arrives while the stream is still
    // open (the layer's copy holds nothing back), and the stream is never stored.
    server.health.set_service_status("demo.Users", ServingStatus::NotServing).await;
    let channel = tonic::transport::Endpoint::from_shared(server.addr.clone()).unwrap();
    let mut health = HealthClient::new(channel.connect().await.unwrap());
    for _ in 0..2 {
        let request = HealthCheckRequest { service: "demo.Users".into() };
        let watch = health.watch(request).await.expect("Watch");
        assert_eq!(x_cache(watch.metadata()), "MISS");
        let mut stream = watch.into_inner();
        assert_eq!(next_status(&mut stream).await, Wire::NotServing);
        server.health.set_service_status("demo.Users", ServingStatus::Serving).await;
        assert_eq!(next_status(&mut stream).await, Wire::Serving);
        server.health.set_service_status("demo.Users", ServingStatus::NotServing).await;
        assert_eq!(next_status(&mut stream).await, Wire::NotServing);
    }
    assert_eq!(server.cache.stats().stores, 0);
}

/// The next message of a health watch, within 5 s.
async fn next_status(stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> Wire {
    let message = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a message within 5 s")
        .expect("the stream reads")
        .expect("the stream is open");
    message.status()
}

async fn per_user_methods_keep_each_users_answers_apart(backend: Backend) {
    let server = GrpcServer::start(backend, |builder| {
        builder.route("/demo.Users/GetUser", Rule::grpc().per_user())
    })
    .await;
    let mut client = server.client().await;
    let as_user = |token: &str| {
        let mut request = tonic::Request::new(GetUserRequest { id: 1 });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let first = client.get_user(as_user("ada")).await.unwrap();
    assert_eq!(x_cache(first.metadata()), "MISS");
    server.wait_stored(1).await;
    assert_eq!(x_cache(client.get_user(as_user("ada")).await.unwrap().metadata()), "HIT");
    assert_eq!(x_cache(client.get_user(as_user("alan")).await.unwrap().metadata()), "MISS");
    let anonymous = client.get_user(GetUserRequest { id: 1 }).await.unwrap();
    assert_eq!(x_cache(anonymous.metadata()), "BYPASS", "no user to key on");
    assert_eq!(server.users.calls(), 3);
}

// ---------------------------------------------------------------------------------------------

macro_rules! over_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Backend::Memory).await
            })*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $scenario() {
                super::$scenario(super::Backend::Redis).await
            })*
        }
    };
}

over_both_stores!(
    unary_calls_are_cached_per_message_until_a_write_evicts_them,
    error_statuses_are_never_cached,
    streams_pass_through_as_they_come,
    per_user_methods_keep_each_users_answers_apart,
);
