//! [`GrpcCacheLayer`], its service and its response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::message::read_message;
use super::RequestBody;
use crate::service::body::CacheBody;
use crate::service::shared::Shared;
use crate::service::CacheService;

/// A [`CacheLayer`](crate::CacheLayer) for gRPC servers: it reads the request message of calls
/// to methods with a [`Rule::grpc`](crate::Rule::grpc), so that they can be cached. Made by
/// [`CacheLayer::grpc`](crate::CacheLayer::grpc); see [the module](crate::grpc).
#[derive(Clone)]
pub struct GrpcCacheLayer {
    shared: Arc<Shared>,
}

impl GrpcCacheLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl std::fmt::Debug for GrpcCacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCacheLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for GrpcCacheLayer {
    type Service = GrpcCacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcCacheService { cache: CacheService::new(inner, Arc::clone(&self.shared)) }
    }
}

/// A [`CacheService`] that first reads the request message of the calls a
/// [`Rule::grpc`](crate::Rule::grpc) covers. Made by [`GrpcCacheLayer`].
///
/// The inner service receives every request with a [`RequestBody`], which replays what was
/// read; tonic's servers take any body. The request body must be `Unpin`, as hyper's, tonic's
/// and axum's are.
#[derive(Clone, Debug)]
pub struct GrpcCacheService<S> {
    cache: CacheService<S>,
}

impl<S> GrpcCacheService<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.cache.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.cache.get_mut()
    }

    /// Drops the cache and returns the inner service.
    pub fn into_inner(self) -> S {
        self.cache.into_inner()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcCacheService<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ReqBody::Error: Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future =
        ResponseFuture<<CacheService<S> as Service<Request<RequestBody<ReqBody>>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.cache.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let reads_message = request.method() == Method::POST
            && self.cache.shared().routes.reads_messages(request.uri().path());
        if !reads_message {
            let future = self.cache.call(request.map(RequestBody::unread));
            return ResponseFuture { kind: Kind::Called { future } };
        }
        // Keep the instance that was polled ready for the call, once the message is read.
        let clone = self.cache.clone();
        let mut cache = std::mem::replace(&mut self.cache, clone);
        let limit = cache.shared().settings.max_body_bytes;
        let (mut parts, body) = request.into_parts();
        let future = Box::pin(async move {
            let (body, digest) = read_message(body, limit).await;
            if let Some(digest) = digest {
                parts.extensions.insert(digest);
            }
            cache.call(Request::from_parts(parts, body)).await
        });
        ResponseFuture { kind: Kind::Reading { future } }
    }
}

pin_project! {
    /// The response future of [`GrpcCacheService`].
    pub struct ResponseFuture<F: Future> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F: Future> {
        // Handed on at once: no message to read.
        Called { #[pin] future: F },
        // Reading the message, then the cache's future.
        Reading { future: Pin<Box<dyn Future<Output = F::Output> + Send>> },
    }
}

impl<F: Future> Future for ResponseFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx),
            KindProj::Reading { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F: Future> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
