//! The inner service and the requests of the HTTP benchmarks (`paths`, `allocations`), so
//! that both measure the same thing.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response};
use http_body_util::{Empty, Full};
use tower::Service;

/// The inner service: a fixed JSON body, answered at once.
pub fn inner(
    body: Bytes,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_request: Request<Empty<Bytes>>| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok::<_, Infallible>(response)
        }
    })
}

pub fn request(uri: &str, accepts_zstd: bool) -> Request<Empty<Bytes>> {
    let mut request = Request::get(uri).header(HOST, "api.example.com");
    if accepts_zstd {
        request = request.header("accept-encoding", "zstd");
    }
    request.body(Empty::new()).expect("a valid request")
}
