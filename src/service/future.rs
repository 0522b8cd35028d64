//! The response future of [`CacheService`](crate::CacheService).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::Response;
use pin_project_lite::pin_project;

use super::body::CacheBody;
use super::shared::Shared;
use crate::outcome::BypassReason;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a bypassed request's response reports when it is ready.
struct BypassReport {
    shared: Arc<Shared>,
    reason: BypassReason,
    route: Option<Arc<str>>,
    started: Instant,
}

pin_project! {
    /// The response future of [`CacheService`](crate::CacheService).
    ///
    /// Requests the cache stays out of run the inner future as it is, with no allocation; hits
    /// answered from this process's memory are ready at once; other cacheable requests and
    /// mutations, which await the store around the inner call, run as one boxed future.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Bypass {
            #[pin]
            future: F,
            // Taken when the response is ready.
            report: Option<BypassReport>,
        },
        Cache { future: BoxFuture<Result<Response<CacheBody<B>>, E>> },
        // A hit served in `call` (taken when polled).
        Ready { response: Option<Response<CacheBody<B>>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn bypass(
        future: F,
        shared: Arc<Shared>,
        reason: BypassReason,
        route: Option<Arc<str>>,
        started: Instant,
    ) -> Self {
        let report = Some(BypassReport { shared, reason, route, started });
        Self { kind: Kind::Bypass { future, report } }
    }

    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self { kind: Kind::Ready { response: Some(response) } }
    }

    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self { kind: Kind::Cache { future: Box::pin(future) } }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass { future, report } => {
                let response = ready!(future.poll(cx))?;
                let response = match report.take() {
                    Some(BypassReport { shared, reason, route, started }) => {
                        shared.mark_bypass(response, reason, route.as_deref(), started)
                    }
                    None => response,
                };
                Poll::Ready(Ok(response.map(CacheBody::passthrough)))
            }
            KindProj::Cache { future } => future.as_mut().poll(cx),
            KindProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("ResponseFuture polled after completion")))
            }
        }
    }
}
