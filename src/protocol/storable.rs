//! Whether a response may be stored, for how long, and which of its headers are kept.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::response;

use super::cache_control::CacheControl;
use super::freshness::{freshness, Freshness};
use crate::grpc;
use crate::rules::ReadRule;

/// How long a response to a request for `rule` may be stored, or why it may not; `per_user`
/// says whether its entry belongs to one identified user.
pub(crate) fn storable(
    response: &response::Parts,
    rule: &ReadRule,
    per_user: bool,
    now: SystemTime,
) -> Result<Freshness, &'static str> {
    if !rule.statuses.contains(&response.status) {
        return Err("status not cacheable");
    }
    let headers = &response.headers;
    // The rest of a gRPC response is checked once it is complete (`Capture::finish`).
    if rule.grpc && !grpc::status_ok_so_far(headers) {
        return Err("grpc-status is not 0");
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err("Set-Cookie");
    }
    let cache_control = match rule.upstream_cache_control {
        // One we cannot read may say `no-store` or `private` in a form we do not see.
        true => CacheControl::parse(headers).map_err(|_| "unreadable Cache-Control")?,
        false => None,
    };
    if let Some(cc) = &cache_control {
        if cc.no_store() {
            return Err("Cache-Control: no-store");
        }
        if cc.private() && !per_user {
            return Err("Cache-Control: private on a shared entry");
        }
        // A shared cache may store it only without the named fields (RFC 9111 section
        // 5.2.2.4), and the layer does not take fields out of a response.
        if cc.no_cache_fields() {
            return Err("Cache-Control: no-cache with field names");
        }
        // RFC 9111 section 4.2.1 lets a cache consider such a response stale.
        if cc.invalid_freshness() {
            return Err("Cache-Control: invalid or repeated freshness directive");
        }
    }
    // Read byte by byte: the `headers` crate finds no `*` in a field that is not visible
    // ASCII, and such a field names no header the layer could key on anyway.
    for value in headers.get_all(header::VARY) {
        if value.to_str().is_err() {
            return Err("unreadable Vary");
        }
        if value.as_bytes().split(|&b| b == b',').any(|member| member.trim_ascii() == b"*") {
            return Err("Vary: *");
        }
    }
    let mut fresh = freshness(headers, cache_control.as_ref(), rule, now);
    if cache_control.as_ref().is_some_and(CacheControl::no_cache) {
        // Stored, but never used without asking the inner service first (RFC 9111 section
        // 5.2.2.4), which takes a validator to ask with.
        if !headers.contains_key(header::ETAG) && !headers.contains_key(header::LAST_MODIFIED) {
            return Err("Cache-Control: no-cache without a validator");
        }
        fresh.revalidate_for = fresh.lifetime.max(rule.ttl);
        fresh.lifetime = Duration::ZERO;
        fresh.stale_while_revalidate = Duration::ZERO;
        fresh.stale_if_error = Duration::ZERO;
        return Ok(fresh);
    }
    if fresh.remaining().is_zero() {
        return Err("already stale");
    }
    Ok(fresh)
}

/// The headers kept in an entry: everything but hop-by-hop headers, the length (recomputed on
/// every hit) and the headers the layer adds itself.
pub(crate) fn stored_headers(headers: &HeaderMap, x_cache: Option<&HeaderName>) -> HeaderMap {
    const DROPPED: [HeaderName; 9] = [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::CONTENT_LENGTH,
        header::AGE,
        header::SET_COOKIE,
    ];
    let mut kept = headers.clone();
    for name in DROPPED.iter().chain(x_cache) {
        kept.remove(name);
    }
    kept.remove("keep-alive");
    kept
}
