//! Whether a response may be stored, for how long, and which of its headers are kept.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{response, StatusCode};

use super::cache_control::{CacheControl, Unreadable};
use super::freshness::{freshness, Freshness};
use crate::grpc;
use crate::rules::{ReadRule, NEVER_STORED};

/// Whose entry a response goes into, as far as storing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryFor {
    /// A shared entry, for a request without credentials.
    Anyone,
    /// A shared entry, for a request with credentials: only what RFC 9111 section 3.5 lets
    /// a shared cache reuse for others goes in (see [`reusable_by_anyone`]).
    AnyoneAskedWithCredentials,
    /// One identified user's entry.
    OneUser,
}

/// How long a response to a request for `rule` may be stored in an entry `for_whom`, or why
/// it may not.
pub(crate) fn storable(
    response: &response::Parts,
    rule: &ReadRule,
    for_whom: EntryFor,
    now: SystemTime,
) -> Result<Freshness, &'static str> {
    if !rule.statuses.contains(response.status) {
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
    // One we cannot read may say `no-store` or `private` in a form we do not see.
    let cache_control = directives(headers, rule).map_err(|_| "unreadable Cache-Control")?;
    if for_whom == EntryFor::AnyoneAskedWithCredentials
        && !cache_control.as_ref().is_some_and(CacheControl::reusable_by_anyone)
    {
        return Err("asked with credentials, and not public, s-maxage or must-revalidate");
    }
    if let Some(cc) = &cache_control {
        // RFC 9111 section 5.2.2.3, which shared-cache rules implement: such a response is
        // stored despite `no-store` when the cache implements its status's caching, and never
        // otherwise.
        let must_understand = rule.http_cache.is_some() && cc.must_understand();
        if must_understand && !understands(response.status) {
            return Err(
                "Cache-Control: must-understand, with a status this cache does not implement",
            );
        }
        if cc.no_store() && !must_understand {
            return Err("Cache-Control: no-store");
        }
        if cc.private() && for_whom != EntryFor::OneUser {
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
    let mut fresh = freshness(response.status, headers, cache_control.as_ref(), rule, now)?;
    if cache_control.as_ref().is_some_and(CacheControl::no_cache) {
        // Stored, but never used without asking the inner service first (RFC 9111 section
        // 5.2.2.4), which takes a validator to ask with.
        if !headers.contains_key(header::ETAG) && !headers.contains_key(header::LAST_MODIFIED) {
            return Err("Cache-Control: no-cache without a validator");
        }
        fresh.revalidate_for = fresh.lifetime.max(rule.ttl);
        if fresh.revalidate_for.is_zero() {
            return Err("Cache-Control: no-cache, with no lifetime to keep it for");
        }
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

/// The directives a response gives `rule`: a targeted field's (RFC 9213) where a shared-cache
/// rule reads one, else its `Cache-Control`'s; `None` without either, or when the rule ignores
/// them.
fn directives(headers: &HeaderMap, rule: &ReadRule) -> Result<Option<CacheControl>, Unreadable> {
    let targeted =
        rule.http_cache.as_ref().and_then(|h| CacheControl::targeted(headers, &h.targets));
    match rule.upstream_cache_control {
        _ if targeted.is_some() => Ok(targeted),
        true => CacheControl::parse(headers),
        false => Ok(None),
    }
}

/// Whether a stored response with `headers` may answer a request with credentials under
/// `rule`: RFC 9111 section 3.5 lets a shared cache reuse a response to such a request for
/// others only when it says `public`, `s-maxage` or `must-revalidate`, and the layer serves
/// such requests nothing else from a shared entry either.
pub(crate) fn reusable_by_anyone(headers: &HeaderMap, rule: &ReadRule) -> bool {
    directives(headers, rule).ok().flatten().is_some_and(|cc| cc.reusable_by_anyone())
}

/// Whether RFC 9110 defines `status` and an [`http_cache`](crate::Rule::http_cache) rule
/// implements what caching it takes (`must-understand`): every final status of RFC 9110 but
/// those such a rule never stores, and `305`, which is deprecated.
fn understands(status: StatusCode) -> bool {
    const DEFINED: [u16; 42] = [
        200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 304, 305, 307, 308, 400, 401, 402,
        403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 426,
        500, 501, 502, 503, 504, 505,
    ];
    DEFINED.contains(&status.as_u16())
        && status != StatusCode::USE_PROXY
        && !NEVER_STORED.contains(&status)
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::test_util::header_map as map;

    fn stored(rule: &ReadRule, status: u16, headers: &[(&'static str, &'static str)]) -> bool {
        stored_for(rule, status, headers).is_some()
    }

    /// How long the response is fresh for, when stored.
    fn stored_for(
        rule: &ReadRule,
        status: u16,
        headers: &[(&'static str, &'static str)],
    ) -> Option<u64> {
        let mut response = http::Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        *response.headers_mut() = map(headers);
        let (parts, ()) = response.into_parts();
        let fresh = storable(&parts, rule, EntryFor::Anyone, UNIX_EPOCH).ok()?;
        Some(fresh.remaining().as_secs())
    }

    fn app_rule() -> ReadRule {
        ReadRule::for_tests(Duration::from_secs(60))
    }

    fn http_cache_rule() -> ReadRule {
        ReadRule::http_cache_for_tests(Duration::ZERO)
    }

    #[test]
    fn an_http_cache_rule_stores_any_final_status_with_explicit_freshness() {
        let ten = [("cache-control", "max-age=10")];
        for status in [200, 203, 301, 404, 410, 418, 429, 500, 503, 599] {
            assert!(stored(&http_cache_rule(), status, &ten), "{status}");
        }
        for status in [206, 304, 412, 416] {
            assert!(!stored(&http_cache_rule(), status, &ten), "{status}");
        }
        // App rules keep their listed statuses.
        assert!(stored(&app_rule(), 200, &ten));
        assert!(!stored(&app_rule(), 404, &ten));
    }

    #[test]
    fn must_understand_lifts_no_store_for_statuses_the_cache_implements_only() {
        let understood = [("cache-control", "max-age=10, must-understand, no-store")];
        assert!(stored(&http_cache_rule(), 200, &understood));
        assert!(stored(&http_cache_rule(), 404, &understood));
        // A status RFC 9110 does not define, or one this cache never stores whole.
        assert!(!stored(&http_cache_rule(), 299, &understood));
        assert!(!stored(
            &http_cache_rule(),
            299,
            &[("cache-control", "max-age=10, must-understand")]
        ));
        // App rules do not implement it: `no-store` stands.
        assert!(!stored(&app_rule(), 200, &understood));
    }

    #[test]
    fn no_cache_needs_a_lifetime_to_revalidate_within() {
        let no_cache = [("cache-control", "no-cache"), ("etag", "\"v1\"")];
        assert!(stored(&app_rule(), 200, &no_cache), "the rule's TTL");
        assert!(!stored(&http_cache_rule(), 200, &no_cache), "neither explicit nor heuristic");
        let with_max_age = [("cache-control", "no-cache, max-age=60"), ("etag", "\"v1\"")];
        assert!(stored(&http_cache_rule(), 200, &with_max_age));
    }

    #[test]
    fn cdn_cache_control_stands_in_for_cache_control_and_expires() {
        let rule = http_cache_rule();
        let cdn = |cdn: &'static str, others: &[(&'static str, &'static str)]| {
            let mut headers = vec![("cdn-cache-control", cdn)];
            headers.extend_from_slice(others);
            stored_for(&rule, 200, &headers)
        };
        assert_eq!(cdn("no-store", &[("cache-control", "max-age=60")]), None);
        assert_eq!(cdn("max-age=0", &[("cache-control", "max-age=60")]), None);
        assert_eq!(cdn("max-age=600", &[("cache-control", "max-age=5")]), Some(600));
        assert_eq!(cdn("max-age=600", &[("cache-control", "no-store, private")]), Some(600));
        assert_eq!(cdn("max-age=60", &[("expires", "0")]), Some(60), "Expires is ignored");
        assert_eq!(cdn("private", &[("cache-control", "max-age=60")]), None);
        // An invalid one is as if absent: `Cache-Control` applies.
        assert_eq!(cdn("max-age=60;;", &[("cache-control", "max-age=5")]), Some(5));
        assert_eq!(cdn("max-age=60;;", &[("cache-control", "no-store")]), None);
        // App rules do not read targeted fields.
        let app = [("cdn-cache-control", "max-age=600"), ("cache-control", "max-age=5")];
        assert_eq!(stored_for(&app_rule(), 200, &app), Some(5));
    }

    #[test]
    fn a_response_to_credentials_goes_in_a_shared_entry_only_when_it_says_it_is_for_anyone() {
        let rule = http_cache_rule();
        let for_credentials = |cache_control: &'static str| {
            let mut response = http::Response::new(());
            response.headers_mut().insert("cache-control", cache_control.parse().unwrap());
            let (parts, ()) = response.into_parts();
            let whom = EntryFor::AnyoneAskedWithCredentials;
            storable(&parts, &rule, whom, UNIX_EPOCH).is_ok()
        };
        assert!(!for_credentials("max-age=60"));
        assert!(for_credentials("public, max-age=60"));
        assert!(for_credentials("s-maxage=60"));
        assert!(for_credentials("max-age=60, must-revalidate"));
        assert!(!for_credentials("public, private, max-age=60"), "private still wins");
        // What a stored response says decides whether such a request may be answered with it.
        let public = map(&[("cache-control", "public, max-age=60")]);
        assert!(reusable_by_anyone(&public, &rule));
        assert!(!reusable_by_anyone(&map(&[("cache-control", "max-age=60")]), &rule));
        assert!(!reusable_by_anyone(&map(&[]), &rule));
        let targeted = map(&[("cache-control", "public"), ("cdn-cache-control", "max-age=60")]);
        assert!(!reusable_by_anyone(&targeted, &rule), "the targeted field is what counts");
    }
}
