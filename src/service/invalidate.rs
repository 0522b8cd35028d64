//! Writes: what a successful unsafe request evicts (its rule's tags, its target URI and the
//! URIs its `Location` headers name) before its response goes back.

use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, CONTENT_LOCATION, LOCATION};
use http::{Request, Response};
use tower_service::Service;

use super::body::CacheBody;
use super::shared::Shared;
use crate::entry::key::{mount_prefix, routed_path, served_path, uri_tag};
use crate::outcome::BypassReason;
use crate::protocol::groups;

/// What a write invalidates, as decided before the inner service runs.
pub(crate) struct Invalidation {
    /// The route's pattern, if one matched, and when the layer was called, for the metrics.
    pub(crate) route: Option<Arc<str>>,
    pub(crate) started: Instant,
    /// The mutation rule's tags, evicted when the write succeeds (2xx).
    pub(crate) evicts: Vec<String>,
    /// The target path's URI tag, when reads of it are cached.
    pub(crate) uri: Option<String>,
    /// The request's authority, to tell same-host `Location` headers.
    pub(crate) authority: String,
}

/// A write: call the inner service, then evict what it invalidated before the client hears
/// back, so that no read the client starts afterwards sees an entry from before its write.
pub(crate) async fn mutate<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<ReqBody>,
    invalidation: Invalidation,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    // Under axum's `nest`, `Location` names full paths, and the rules the nested router's.
    let served = served_path(request.uri(), request.extensions());
    let mount = mount_prefix(served, request.uri().path()).to_owned();
    let response = inner.call(request).await?;
    let status = response.status();
    let mut tags = Vec::new();
    if status.is_success() {
        tags.extend(invalidation.evicts);
    }
    // RFC 9111 section 4.4: a non-error response invalidates the target URI and the same-host
    // URIs in Location and Content-Location.
    if shared.settings.invalidate_unsafe && (status.is_success() || status.is_redirection()) {
        tags.extend(invalidation.uri);
        tags.extend(groups::invalidated_by(response.headers()));
        for name in [LOCATION, CONTENT_LOCATION] {
            let target = response
                .headers()
                .get(name)
                .and_then(|v| same_host_path(v, &invalidation.authority));
            let cached = |path: &String| {
                routed_path(path, &mount).is_some_and(|routed| shared.routes.caches_reads(routed))
            };
            if let Some(path) = target.filter(cached) {
                tags.push(uri_tag(&path));
            }
        }
    }
    // A failure is logged, counted and retried in the background; the write stands.
    let _ = shared.evict(&tags).await;
    let response = response.map(CacheBody::passthrough);
    let route = invalidation.route.as_deref();
    Ok(shared.mark_bypass(response, BypassReason::Mutation, route, invalidation.started))
}

/// The path of a `Location`-style header value, if it names a path on `authority` (a
/// path-absolute reference, or an absolute URI with that authority).
fn same_host_path(value: &HeaderValue, authority: &str) -> Option<String> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    match uri.authority() {
        Some(host) if !host.as_str().eq_ignore_ascii_case(authority) => None,
        _ => uri.path().starts_with('/').then(|| uri.path().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(value: &'static str) -> Option<String> {
        same_host_path(&HeaderValue::from_static(value), "api.example")
    }

    #[test]
    fn only_paths_on_the_request_s_host_are_invalidated() {
        assert_eq!(path("/users/1").as_deref(), Some("/users/1"));
        assert_eq!(path("https://API.example/users/1?x=1").as_deref(), Some("/users/1"));
        assert_eq!(path("https://other.example/users/1"), None);
        assert_eq!(path("users/1"), None, "a relative reference names no path of its own");
        assert_eq!(path("not a uri"), None);
    }
}
