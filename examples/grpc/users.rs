//! A small gRPC service, `demo.Users`, written by hand so that the example needs no
//! `protoc` and no `build.rs`. It is what `tonic-prost-build` would generate from the
//! `.proto` below (trimmed: no interceptor, compression or message-size options, and the
//! server calls [`UsersService`] directly instead of going through a generated trait),
//! plus an in-memory implementation standing in for a database.
//!
//! ```proto
//! syntax = "proto3";
//! package demo;
//!
//! service Users {
//!   rpc GetUser(GetUserRequest) returns (User);           // unary read
//!   rpc UpdateUser(User) returns (User);                   // unary write
//!   rpc ListUsers(ListUsersRequest) returns (stream User); // server streaming
//! }
//!
//! message GetUserRequest { uint64 id = 1; }
//! message ListUsersRequest {}
//! message User { uint64 id = 1; string name = 2; string email = 3; }
//! ```
//!
//! On the wire each call is an HTTP/2 `POST /demo.Users/<Method>` with
//! `content-type: application/grpc`; the answer's status travels in the `grpc-status`
//! trailer (or header, for an error before any message), never in the HTTP status.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::{BoxFuture, BoxStream, StdError};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetUserRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListUsersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub email: String,
}

// ---------------------------------------------------------------------------------------
// The implementation: an in-memory table
// ---------------------------------------------------------------------------------------

/// The handlers. Clones share the table, the call counter and the read delay.
#[derive(Clone, Default)]
pub struct UsersService {
    users: Arc<Mutex<BTreeMap<u64, User>>>,
    calls: Arc<AtomicUsize>,
    read_delay: Duration,
}

// The example and the tests each use a different part of this API.
#[allow(dead_code)]
impl UsersService {
    /// A table holding users 1 (Ada Lovelace) and 2 (Alan Turing).
    pub fn seeded() -> Self {
        let service = Self::default();
        for (id, name, email) in
            [(1, "Ada Lovelace", "ada@example.com"), (2, "Alan Turing", "alan@example.com")]
        {
            let user = User { id, name: name.into(), email: email.into() };
            service.users.lock().unwrap().insert(id, user);
        }
        service
    }

    /// Makes `GetUser` and `ListUsers` sleep this long first, like a slow database.
    pub fn with_read_delay(mut self, delay: Duration) -> Self {
        self.read_delay = delay;
        self
    }

    /// How many calls reached a handler (a cache hit in front of the server does not).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.read_delay).await;
        let id = request.into_inner().id;
        // The lock is taken and released without an `.await` in between, so a std
        // mutex is fine (and keeps the future `Send`).
        let user = self.users.lock().unwrap().get(&id).cloned();
        user.map(Response::new).ok_or_else(|| Status::not_found(format!("no user {id}")))
    }

    async fn update_user(&self, request: Request<User>) -> Result<Response<User>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let user = request.into_inner();
        if user.id == 0 {
            return Err(Status::invalid_argument("user id must not be 0"));
        }
        self.users.lock().unwrap().insert(user.id, user.clone());
        Ok(Response::new(user))
    }

    async fn list_users(
        &self,
        _request: Request<ListUsersRequest>,
    ) -> Result<Response<BoxStream<User>>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.read_delay).await;
        // A snapshot in id order (BTreeMap), sent as one message per user.
        let users: Vec<User> = self.users.lock().unwrap().values().cloned().collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(users.into_iter().map(Ok)))))
    }
}

// ---------------------------------------------------------------------------------------
// Server: routes `/demo.Users/<Method>` to the handlers
// ---------------------------------------------------------------------------------------

/// The `tower::Service` that `tonic::transport::Server::builder().add_service(..)` takes.
#[derive(Clone)]
pub struct UsersServer {
    service: UsersService,
}

impl UsersServer {
    pub fn new(service: UsersService) -> Self {
        Self { service }
    }
}

/// Used by tonic's router to mount this service under `/demo.Users/`.
impl tonic::server::NamedService for UsersServer {
    const NAME: &'static str = "demo.Users";
}

// Generic over the request body, as generated servers are: a layer in front of this
// service (a cache, say) may hand it a body type of its own instead of
// `tonic::body::Body`.
impl<B> tower::Service<http::Request<B>> for UsersServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    // gRPC errors are answers (a `grpc-status` other than 0), not service errors.
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        // `tonic::server::Grpc` decodes the request message, calls the handler and
        // encodes its answer. A `tower::service_fn` taking a `tonic::Request` and
        // answering a `tonic::Response` is a tonic `UnaryService` (or, when the answer
        // holds a stream, a `ServerStreamingService`).
        match req.uri().path() {
            "/demo.Users/GetUser" => Box::pin(async move {
                let handler = tower::service_fn(|r| service.get_user(r));
                Ok(tonic::server::Grpc::new(ProstCodec::default()).unary(handler, req).await)
            }),
            "/demo.Users/UpdateUser" => Box::pin(async move {
                let handler = tower::service_fn(|r| service.update_user(r));
                Ok(tonic::server::Grpc::new(ProstCodec::default()).unary(handler, req).await)
            }),
            "/demo.Users/ListUsers" => Box::pin(async move {
                let handler = tower::service_fn(|r| service.list_users(r));
                Ok(tonic::server::Grpc::new(ProstCodec::default())
                    .server_streaming(handler, req)
                    .await)
            }),
            // An unknown method: an empty `200 OK` whose headers carry
            // `grpc-status: 12` (UNIMPLEMENTED), as generated servers answer.
            _ => Box::pin(async move { Ok(Status::unimplemented("unknown method").into_http()) }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// A `demo.Users` client. Each method takes anything that converts into a
/// `tonic::Request` (the message itself, or a `tonic::Request` carrying metadata such as
/// an `authorization` header), and returns a `tonic::Response` whose metadata holds the
/// answer's headers (an `x-cache` header set by a cache in front of the server, say).
#[allow(dead_code)] // Not every includer of this module runs a client.
#[derive(Clone)]
pub struct UsersClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

#[allow(dead_code)]
impl UsersClient {
    /// Connects to `addr`, e.g. `"http://127.0.0.1:50051"`.
    pub async fn connect(addr: impl Into<String>) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(addr.into())?.connect().await?;
        Ok(Self::new(channel))
    }

    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self { inner: tonic::client::Grpc::new(channel) }
    }

    pub async fn get_user(
        &mut self,
        request: impl tonic::IntoRequest<GetUserRequest>,
    ) -> Result<Response<User>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/demo.Users/GetUser");
        self.inner.unary(request.into_request(), path, ProstCodec::default()).await
    }

    pub async fn update_user(
        &mut self,
        request: impl tonic::IntoRequest<User>,
    ) -> Result<Response<User>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/demo.Users/UpdateUser");
        self.inner.unary(request.into_request(), path, ProstCodec::default()).await
    }

    /// The users arrive one message at a time: read them with
    /// `response.into_inner().message().await`.
    pub async fn list_users(
        &mut self,
        request: impl tonic::IntoRequest<ListUsersRequest>,
    ) -> Result<Response<tonic::Streaming<User>>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/demo.Users/ListUsers");
        self.inner.server_streaming(request.into_request(), path, ProstCodec::default()).await
    }

    /// Waits until the channel can take another call, as generated clients do.
    async fn ready(&mut self) -> Result<(), Status> {
        self.inner.ready().await.map_err(|e| Status::unknown(format!("service was not ready: {e}")))
    }
}
