//! The default safety rules: which requests may be answered from the store, and which
//! responses may be stored.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::request;
use http::response;
use http::Method;

use crate::conditional::Conditions;
use crate::key::{authority, entry_key, uri_tag};
use crate::rules::{Matched, ReadRule, Scope};
use crate::state::Shared;

/// What the layer does with one request.
pub(crate) enum Decision {
    /// Stay out of the way.
    Bypass,
    /// Call the inner service, then evict `evicts` if it succeeded (2xx), and invalidate the
    /// target URI's entries (`uri`, with `Location` and `Content-Location`) if it did not fail.
    Mutation { evicts: Vec<String>, uri: Option<String>, authority: String },
    /// Look the request up, and on a miss call the inner service and store its response.
    Lookup(Plan),
}

/// Everything the request path needs to look up and store one cacheable request.
pub(crate) struct Plan {
    pub(crate) key: String,
    pub(crate) tags: Vec<String>,
    pub(crate) tag_keys: Vec<String>,
    pub(crate) rule: Arc<ReadRule>,
    /// Whether the entry belongs to one identified user (so `private` responses may go in it).
    pub(crate) per_user: bool,
    /// The request's `If-None-Match` / `If-Modified-Since`, for `304` answers on hits.
    pub(crate) conditions: Option<Conditions>,
    /// `HEAD`: answered from the `GET` entry, never stored from (its response has no body).
    pub(crate) head: bool,
}

pub(crate) fn decide(shared: &Shared, request: &request::Parts) -> Decision {
    let path = request.uri.path();
    let invalidate_unsafe = shared.settings.invalidate_unsafe;
    let (rule, mut tags) = match shared.routes.classify(&request.method, path) {
        Matched::Bypass | Matched::Unmatched => return Decision::Bypass,
        Matched::Write { evicts, reads_cached } => {
            let uri = (invalidate_unsafe && reads_cached).then(|| uri_tag(path));
            if evicts.is_empty() && uri.is_none() && !invalidate_unsafe {
                return Decision::Bypass;
            }
            return Decision::Mutation { evicts, uri, authority: authority(request) };
        }
        Matched::Read { rule, tags } => (rule, tags),
    };
    if invalidate_unsafe {
        tags.push(uri_tag(path));
    }
    let user = match &rule.scope {
        Scope::PerUser { identify, share_anonymous } => match identify.identify(request) {
            Some(user) => Some(user),
            None if *share_anonymous && !has_credentials(request) => None,
            None => return Decision::Bypass,
        },
        // A credentialed request may get a response made for that user: RFC 9111 section 3.5.
        Scope::Default if has_credentials(request) => return Decision::Bypass,
        Scope::Default | Scope::Shared => None,
    };
    if shared.eviction_pending(&tags) {
        return Decision::Bypass;
    }
    Decision::Lookup(Plan {
        key: entry_key(&shared.settings.key_prefix, request, user.as_ref(), &rule.vary),
        tag_keys: shared.tag_keys(&tags),
        tags,
        rule: Arc::clone(rule),
        per_user: user.is_some(),
        conditions: Conditions::from_request(&request.headers),
        head: request.method == Method::HEAD,
    })
}

fn has_credentials(request: &request::Parts) -> bool {
    request.headers.contains_key(header::AUTHORIZATION)
        || request.headers.contains_key(header::COOKIE)
}

/// Why a response is not stored, or `None` when it may be.
pub(crate) fn not_storable(response: &response::Parts, plan: &Plan) -> Option<&'static str> {
    if plan.head {
        return Some("HEAD responses have no body to store");
    }
    if !plan.rule.statuses.contains(&response.status) {
        return Some("status not cacheable");
    }
    let headers = &response.headers;
    if headers.contains_key(header::SET_COOKIE) {
        return Some("Set-Cookie");
    }
    for directive in comma_list(headers, &header::CACHE_CONTROL) {
        let name = directive.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("no-store") {
            return Some("Cache-Control: no-store");
        }
        // Revalidation is not supported yet, so a response that demands it is not stored.
        if name.eq_ignore_ascii_case("no-cache") {
            return Some("Cache-Control: no-cache");
        }
        if name.eq_ignore_ascii_case("private") && !plan.per_user {
            return Some("Cache-Control: private on a shared route");
        }
    }
    for name in comma_list(headers, &header::VARY) {
        if name == "*" {
            return Some("Vary: *");
        }
        if !plan.rule.vary.iter().any(|v| v.as_str().eq_ignore_ascii_case(name)) {
            return Some("Vary names a header the rule does not key on");
        }
    }
    None
}

/// The items of a comma-separated header, trimmed, across all its lines.
fn comma_list<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
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
