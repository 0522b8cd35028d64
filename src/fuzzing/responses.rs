//! Response headers: what a miss reads from a response, and the entry it stores.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::{assert_digest_key, lenient_header_map, rule_defaults, RawHeader, PREFIX, X_CACHE};
use crate::entry::compression::accepts_zstd;
use crate::entry::key::{tag_key, vary_union, KeyParts};
use crate::entry::Entry;
use crate::protocol::cache_control::{grammar, CacheControl};
use crate::protocol::conditional::{add_validators, not_modified_headers, strong_etag, Conditions};
use crate::protocol::groups::{decode_marker, invalidated_by, of_response};
use crate::protocol::storable::{storable, stored_headers};
use crate::protocol::vary::beyond;
use crate::rules::{Matched, RouteTable, Rule};
use crate::service::decide::Plan;
use crate::user::UserId;

/// A response to a cacheable `GET` of `/r`, with the request and the rule, for
/// [`response_headers`].
#[derive(Debug, Clone)]
pub struct ResponseCase {
    /// The response status.
    pub status: u16,
    /// The request headers.
    pub request: Vec<RawHeader>,
    /// The response headers.
    pub response: Vec<RawHeader>,
    /// The response body.
    pub body: Vec<u8>,
    /// The rule's `ttl`, in seconds; `None` for the layer's default (zero, or more than
    /// `max_ttl`, is a build error, so the case is skipped).
    pub ttl_secs: Option<u64>,
    /// The rule's `max_ttl`, in seconds.
    pub max_ttl_secs: Option<u64>,
    /// The rule's `stale_while_revalidate`, in seconds.
    pub stale_while_revalidate_secs: Option<u64>,
    /// The rule's `stale_if_error`, in seconds.
    pub stale_if_error_secs: Option<u64>,
    /// Whether the rule follows the response's `Cache-Control` and `Expires` (the default).
    pub upstream_cache_control: bool,
    /// Whether the entry belongs to one user.
    pub per_user: bool,
    /// Whether the request was a `HEAD`.
    pub head: bool,
    /// Whether the rule is [`Rule::http_cache`] rather than [`Rule::get`].
    pub http_cache: bool,
    /// The rule's `vary` headers.
    pub vary: Vec<String>,
    /// Whether `Surrogate-Key` counts as `Cache-Groups`.
    pub surrogate_keys: bool,
    /// The layer's `ttl_jitter` percentage (taken modulo 51: the builder allows 0 to 50).
    pub jitter_percent: u8,
    /// The time, in seconds since the Unix epoch.
    pub now_secs: u64,
    /// The seed of the jitter's random numbers.
    pub seed: u64,
}

impl Default for ResponseCase {
    fn default() -> Self {
        Self {
            status: 200,
            request: Vec::new(),
            response: Vec::new(),
            body: Vec::new(),
            ttl_secs: None,
            max_ttl_secs: None,
            stale_while_revalidate_secs: None,
            stale_if_error_secs: None,
            upstream_cache_control: true,
            per_user: false,
            head: false,
            http_cache: false,
            vary: Vec::new(),
            surrogate_keys: false,
            jitter_percent: 0,
            now_secs: 1_700_000_000,
            seed: 0,
        }
    }
}

/// Everything a miss reads from a response's headers: whether and for how long it may be
/// stored ([`storable`]: `Cache-Control`, `Expires`, `Date`, `Age`, `Vary`, `Set-Cookie`), the
/// headers it varies on beyond the rule's, its cache groups (RFC 9875) and the ones it
/// invalidates, the headers stored, the entry written; and what a hit reads from the request
/// (`If-None-Match`, `If-Modified-Since`, `Accept-Encoding`).
///
/// Checks that `no-store`, `Vary: *`, `Set-Cookie`, a `private` response on a shared entry
/// and a status the rule does not cache are never stored; that the lifetime stays within
/// `max_ttl`, and jitter never lengthens it; that the windows the store keeps an entry for
/// are computed without panicking and cover its freshness; that groups are tidy and survive
/// their marker; that hop-by-hop headers are not stored; that the entry round-trips; and that
/// a `304` is only answered when the validators allow it.
pub fn response_headers(case: &ResponseCase) {
    let _ = stored_entry(case);
}

/// What [`response_headers`] stores for `case`: the encoded entry, or `None` when the
/// response is not stored. For seed inputs.
pub fn stored_entry(case: &ResponseCase) -> Option<Vec<u8>> {
    let status = StatusCode::from_u16(case.status).ok()?;
    let method = if case.head { Method::HEAD } else { Method::GET };
    let (mut request, ()) = Request::builder().method(method).uri("/r").body(()).ok()?.into_parts();
    request.headers = lenient_header_map(&case.request);
    let (mut response, ()) = Response::builder().status(status).body(()).ok()?.into_parts();
    response.headers = lenient_header_map(&case.response);
    let headers = &response.headers;

    let mut rule = match case.http_cache {
        true => Rule::http_cache(),
        false => {
            Rule::get().cache_statuses([StatusCode::OK, StatusCode::NON_AUTHORITATIVE_INFORMATION])
        }
    };
    rule = rule.tag("r").vary(case.vary.iter().cloned());
    if let Some(ttl) = case.ttl_secs {
        rule = rule.ttl(Duration::from_secs(ttl));
    }
    if let Some(max) = case.max_ttl_secs {
        rule = rule.max_ttl(Duration::from_secs(max));
    }
    if let Some(window) = case.stale_while_revalidate_secs {
        rule = rule.stale_while_revalidate(Duration::from_secs(window));
    }
    if let Some(window) = case.stale_if_error_secs {
        rule = rule.stale_if_error(Duration::from_secs(window));
    }
    if !case.upstream_cache_control {
        rule = rule.ignore_upstream_cache_control();
    }
    if case.per_user {
        rule = rule.per_user();
    }
    let defaults = rule_defaults();
    let table = RouteTable::build(vec![("/r".to_owned(), rule)], Vec::new(), &defaults).ok()?;
    let Matched::Read { rule, tags } = table.classify(&request.method, "/r") else {
        panic!("a GET rule for /r does not cover {} /r", request.method);
    };

    let user = case.per_user.then(|| UserId::digest(b"fuzz"));
    let key_parts = KeyParts::new(&request, user.as_ref());
    let plan = Plan {
        key: key_parts.key(PREFIX, &request.headers, &rule.vary),
        key_parts,
        vary: Arc::clone(&rule.vary),
        rule_vary_key: None,
        tag_keys: tags.iter().map(|tag| tag_key(PREFIX, tag)).collect(),
        tags,
        rule: Arc::clone(rule),
        per_user: user.is_some(),
        credentialed: false,
        conditions: Conditions::from_request(&request.headers),
        head: case.head,
        refresh: false,
        accepts_zstd: accepts_zstd(&request.headers),
        range: None,
        started: std::time::Instant::now(),
        provisional_versions: false,
    };

    // Cache groups are read whether or not the response is stored (an unsafe request's
    // invalidations, a stored response's groups).
    let groups = of_response(headers, case.surrogate_keys);
    check_groups(&groups);
    check_groups(&invalidated_by(headers));

    let now = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(case.now_secs))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // As `capture_if_storable` does: a HEAD response has no body to store.
    let stored = match plan.head {
        true => Err("HEAD responses have no body to store"),
        false => storable(&response, &plan.rule, plan.entry_for(), now),
    };
    check_storable(case, status, &response.headers, &plan, stored.as_ref().ok());
    let fresh = stored.ok()?;

    // As `capture_if_storable` and `PendingEntry::finish` go on.
    fastrand::seed(case.seed);
    let jittered = fresh.jittered(case.jitter_percent % 51);
    assert!(jittered.lifetime <= fresh.lifetime, "jitter lengthened the lifetime");
    let fresh = jittered;
    let extra = beyond(headers, &plan.vary)?;
    for (i, name) in extra.iter().enumerate() {
        assert!(!plan.vary.contains(name) && !extra[..i].contains(name), "vary {name} repeated");
    }
    let keep_for = fresh.keep_for();
    let remaining = fresh.remaining();
    assert!(keep_for >= remaining, "the store drops an entry while it is fresh");
    let key = if extra.is_empty() {
        plan.key.clone()
    } else {
        let vary = vary_union(&plan.vary, &extra);
        assert!(
            extra.iter().chain(plan.vary.iter()).all(|n| vary.contains(n)),
            "vary lost a header"
        );
        plan.key_parts.key(PREFIX, &request.headers, &vary)
    };
    assert_digest_key(&key, &format!("{PREFIX}:v1:e:"), 64);

    let mut kept = stored_headers(headers, Some(&X_CACHE));
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::CONTENT_LENGTH,
        header::AGE,
        header::SET_COOKIE,
        X_CACHE,
        HeaderName::from_static("keep-alive"),
    ] {
        assert!(!kept.contains_key(&name), "{name} was stored");
    }
    let body = Bytes::copy_from_slice(&case.body);
    if !kept.contains_key(header::ETAG) {
        kept.insert(header::ETAG, strong_etag(&body));
    }
    let now_ms = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let entry = Entry {
        status,
        headers: kept,
        trailers: None,
        stored_at_ms: now_ms.saturating_sub(fresh.age.as_millis() as u64),
        ttl: fresh.lifetime,
        stale_while_revalidate: fresh.stale_while_revalidate,
        stale_if_error: fresh.stale_if_error,
        revalidate_for: fresh.revalidate_for,
        computed_in: Duration::ZERO,
        tags: plan.tags.iter().map(|tag| (tag.clone(), 1)).collect(),
        identity_len: None,
        body,
    };
    let encoded = entry.encode();
    assert_round_trip(&entry, encoded.clone());

    check_conditions(&request.headers, plan.conditions.as_ref(), &entry.headers);
    Some(encoded.to_vec())
}

/// Checks that `encoded`, the encoding of `entry`, decodes back to it, but for the durations,
/// which are stored in whole milliseconds: those may lose less than a millisecond, never more.
fn assert_round_trip(entry: &Entry, encoded: Bytes) {
    let mut decoded = Entry::decode(encoded).expect("an encoded entry does not decode");
    for (name, stored, decoded) in [
        ("ttl", entry.ttl, &mut decoded.ttl),
        (
            "stale_while_revalidate",
            entry.stale_while_revalidate,
            &mut decoded.stale_while_revalidate,
        ),
        ("stale_if_error", entry.stale_if_error, &mut decoded.stale_if_error),
        ("revalidate_for", entry.revalidate_for, &mut decoded.revalidate_for),
    ] {
        let lost = stored.checked_sub(*decoded);
        assert!(
            lost.is_some_and(|lost| lost < Duration::from_millis(1)),
            "{name} {stored:?} was stored as {decoded:?}"
        );
        *decoded = stored;
    }
    assert_eq!(&decoded, entry, "the entry does not round-trip");
}

/// Whether a header's values, split at commas, hold `token` (case-insensitive) as a member.
/// Bytes, not text: a value with other bytes than visible ASCII still says what it says.
/// Values with quotes are skipped, since a comma inside quotes does not split.
fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|value| !value.contains(&b'"'))
        .flat_map(|value| value.split(|b| *b == b','))
        .any(|member| member.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn check_storable(
    case: &ResponseCase,
    status: StatusCode,
    headers: &HeaderMap,
    plan: &Plan,
    fresh: Option<&crate::protocol::freshness::Freshness>,
) {
    let Some(fresh) = fresh else { return };
    assert!(!case.head, "a HEAD response was stored");
    assert!(plan.rule.statuses.contains(status), "a {status} response was stored");
    assert!(!headers.contains_key(header::SET_COOKIE), "a Set-Cookie response was stored");
    assert!(!lists(headers, &header::VARY, "*"), "a Vary: * response was stored");
    if case.upstream_cache_control {
        // Where a shared-cache rule read a targeted field (RFC 9213), it alone says whether to
        // store; `Cache-Control` is not read at all.
        let targets = plan.rule.http_cache.as_ref().map_or(&[][..], |h| &h.targets[..]);
        if let Some(targeted) = CacheControl::targeted(headers, targets) {
            let understood = targeted.must_understand();
            assert!(!targeted.no_store() || understood, "a targeted no-store was stored");
            assert!(!targeted.no_cache_fields(), "a targeted no-cache with fields was stored");
            assert!(plan.per_user || !targeted.private(), "a targeted private was shared");
        } else {
            let must_understand = plan.rule.http_cache.is_some()
                && lists(headers, &header::CACHE_CONTROL, "must-understand");
            assert!(
                !lists(headers, &header::CACHE_CONTROL, "no-store") || must_understand,
                "no-store was stored"
            );
            if !plan.per_user {
                assert!(
                    !lists(headers, &header::CACHE_CONTROL, "private"),
                    "a private response was stored in a shared entry"
                );
            }
            // Whatever the lenient reading above misses, the grammar sees: a field it does not
            // accept is never stored, and one it does is never stored with `no-store`, a
            // qualified `no-cache`, or (in a shared entry) any `private`.
            let lines: Option<Vec<Vec<grammar::Directive>>> = headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .map(|v| grammar::recognise(v.as_bytes()))
                .collect();
            let directives =
                lines.expect("a Cache-Control the grammar rejects was stored").concat();
            let says = |name: &str| directives.iter().any(|d| d.name == name);
            // Only a shared-cache rule implements `must-understand`, which lifts `no-store`.
            let understood = plan.rule.http_cache.is_some() && says("must-understand");
            assert!(!says("no-store") || understood, "no-store was stored");
            assert!(
                !directives.iter().any(|d| d.name == "no-cache" && d.argument.is_some()),
                "no-cache with field names was stored"
            );
            assert!(
                plan.per_user || !says("private"),
                "a private response was stored in a shared entry"
            );
        }
        if let Some(max) = plan.rule.max_ttl {
            assert!(fresh.lifetime <= max, "{:?} is over max_ttl {max:?}", fresh.lifetime);
        }
    } else {
        assert_eq!(fresh.lifetime, plan.rule.ttl, "an ignored Cache-Control still counted");
    }
}

/// Groups are tags: non-empty, outside the layer's `#` namespace, sorted and without repeats,
/// and written to other instances in a marker that gives them back.
fn check_groups(groups: &[String]) {
    assert!(groups.iter().all(|g| !g.is_empty() && !g.starts_with('#')), "{groups:?}");
    assert!(groups.windows(2).all(|w| w[0] < w[1]), "groups {groups:?} not sorted and unique");
    let marker = [&b"TRCG"[..], groups.join("\n").as_bytes()].concat();
    assert_eq!(decode_marker(&marker).as_deref(), Some(groups), "groups lost in their marker");
}

fn check_conditions(request: &HeaderMap, conditions: Option<&Conditions>, stored: &HeaderMap) {
    if let Some(conditions) = conditions {
        if conditions.not_modified(stored) {
            let etag =
                request.contains_key(header::IF_NONE_MATCH) && stored.contains_key(header::ETAG);
            let date = request.contains_key(header::IF_MODIFIED_SINCE)
                && stored.contains_key(header::LAST_MODIFIED);
            assert!(etag || date, "304 without validators to compare");
        }
    }
    // A client revalidating with the stored ETag itself is answered 304. Only for visible
    // ASCII: `headers` reads If-None-Match as text, so an ETag with obs-text bytes (which RFC
    // 9110 allows) never matches; that costs a 200 where a 304 would do, nothing worse. And
    // without spaces or tabs, which the layer ignores in entity-tags (the `headers` crate's
    // parser asserts against them in debug builds, so this check parses none either).
    if let Some(etag) = stored.get(header::ETAG) {
        let plain = etag.to_str().is_ok_and(|tag| !tag.contains([' ', '\t']));
        if plain && headers::HeaderMapExt::typed_get::<headers::ETag>(stored).is_some() {
            let mut asking = HeaderMap::new();
            asking.insert(header::IF_NONE_MATCH, etag.clone());
            let conditions = Conditions::from_request(&asking).expect("If-None-Match was sent");
            assert!(conditions.not_modified(stored), "If-None-Match: {etag:?} is not a match");
        }
    }
    let kept = not_modified_headers(stored);
    for (name, value) in &kept {
        assert!(stored.get_all(name).iter().any(|v| v == value), "304 made up {name}");
    }
    // Revalidation sends the inner service's validators, and nothing else.
    let mut forwarded = request.clone();
    if add_validators(&mut forwarded, stored) {
        let sent = |validator: HeaderName, condition: HeaderName| {
            stored.get(validator).is_some_and(|v| forwarded.get(condition) == Some(v))
        };
        assert!(
            sent(header::ETAG, header::IF_NONE_MATCH)
                || sent(header::LAST_MODIFIED, header::IF_MODIFIED_SINCE),
            "validators said to be added are not there"
        );
    } else {
        assert_eq!(forwarded, *request, "validators added but not said to be");
    }
}
