//! The default safety rules: which requests may be answered from the store, and which
//! responses may be stored.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::request;
use http::response;
use http::Method;

use crate::cache_control::CacheControl;
use crate::compression::accepts_zstd;
use crate::conditional::Conditions;
use crate::freshness::{freshness, Freshness};
use crate::grpc::{self, MessageDigest};
use crate::guard;
use crate::key::{authority, kept_params, tag_key, uri_tag, vary_union, KeyBase};
use crate::rules::{Matched, ReadRule, Scope};
use crate::state::Shared;

/// What the layer does with one request.
pub(crate) enum Decision {
    /// Stay out of the way, for `reason`; `route` is the pattern that matched, if any.
    Bypass { route: Option<Arc<str>>, reason: BypassReason },
    /// Call the inner service, then evict `evicts` if it succeeded (2xx), and invalidate the
    /// target URI's entries (`uri`, with `Location` and `Content-Location`) if it did not fail.
    Mutation {
        route: Option<Arc<str>>,
        evicts: Vec<String>,
        uri: Option<String>,
        authority: String,
    },
    /// Look the request up, and on a miss call the inner service and store its response.
    Lookup(Plan),
}

/// Why the cache stayed out of a request's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BypassReason {
    /// No rule covers the method on the path.
    NoRule,
    /// A `bypass` pattern covers the path.
    BypassRule,
    /// An unsafe request: the cache only invalidates what it writes.
    Mutation,
    /// A credentialed request to a route whose entries are not per user.
    Credentials,
    /// A request to a per-user route whose user could not be identified.
    UnidentifiedUser,
    /// A path other servers could read differently (`crate::guard`).
    AmbiguousPath,
    /// A header that changes the response without being in the key (`crate::guard`).
    BypassHeader,
    /// An eviction of one of the entry's tags has not reached the store yet.
    EvictionPending,
    /// A gRPC call whose request message the layer did not read: the plain layer in front of
    /// a gRPC server, or a request stream of several messages or over `max_body_bytes`.
    UnreadMessage,
    /// A read (`GET`, `HEAD`) that carries a body: the inner service may answer from it, and
    /// it is not in the key.
    RequestBody,
}

impl BypassReason {
    /// Every reason, in the order of [`as_str`](Self::as_str)'s labels.
    pub(crate) const ALL: [BypassReason; 10] = [
        BypassReason::NoRule,
        BypassReason::BypassRule,
        BypassReason::Mutation,
        BypassReason::Credentials,
        BypassReason::UnidentifiedUser,
        BypassReason::AmbiguousPath,
        BypassReason::BypassHeader,
        BypassReason::EvictionPending,
        BypassReason::UnreadMessage,
        BypassReason::RequestBody,
    ];

    /// The reason as a metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BypassReason::NoRule => "no_rule",
            BypassReason::BypassRule => "bypass_rule",
            BypassReason::Mutation => "mutation",
            BypassReason::Credentials => "credentials",
            BypassReason::UnidentifiedUser => "unidentified_user",
            BypassReason::AmbiguousPath => "ambiguous_path",
            BypassReason::BypassHeader => "bypass_header",
            BypassReason::EvictionPending => "eviction_pending",
            BypassReason::UnreadMessage => "unread_message",
            BypassReason::RequestBody => "request_body",
        }
    }
}

/// Everything the request path needs to look up and store one cacheable request.
pub(crate) struct Plan {
    /// The entry's key: `key_base` with the values of the `vary` request headers.
    pub(crate) key: String,
    pub(crate) key_base: KeyBase,
    /// The request headers the entry varies on: the rule's, and those learned from responses.
    pub(crate) vary: Vec<HeaderName>,
    /// The key with the rule's `vary` headers only, where learned ones are written down for
    /// other instances (see [`crate::vary`]).
    pub(crate) base_key: String,
    pub(crate) tags: Vec<String>,
    pub(crate) tag_keys: Vec<String>,
    pub(crate) rule: Arc<ReadRule>,
    /// Whether the entry belongs to one identified user (so `private` responses may go in it).
    pub(crate) per_user: bool,
    /// The request's `If-None-Match` / `If-Modified-Since`, for `304` answers on hits.
    pub(crate) conditions: Option<Conditions>,
    /// `HEAD`: answered from the `GET` entry, never stored from (its response has no body).
    pub(crate) head: bool,
    /// The request asked for a response from the origin (`Cache-Control: no-cache` or
    /// `max-age=0`, `Pragma: no-cache`) and the layer honours that.
    pub(crate) refresh: bool,
    /// The client accepts `zstd`: compressed entries are served as they are stored.
    pub(crate) accepts_zstd: bool,
    /// When the layer was called with the request, for its latency.
    pub(crate) started: Instant,
    /// Some of the tags had no version, and this miss made them provisional ones: storing its
    /// entry keeps them (see [`crate::store`]).
    pub(crate) provisional_versions: bool,
}

impl Plan {
    /// Adds tags the entry must also carry (cache groups), reading their versions from now on.
    pub(crate) fn add_tags(&mut self, shared: &Shared, tags: &[String]) {
        for tag in tags {
            if !self.tags.contains(tag) {
                self.tag_keys.push(tag_key(&shared.settings.key_prefix, tag));
                self.tags.push(tag.clone());
            }
        }
    }
}

/// What to do with `request`; `has_body` says whether a body comes with it.
pub(crate) fn decide(
    shared: &Shared,
    request: &request::Parts,
    has_body: bool,
    started: Instant,
) -> Decision {
    let path = request.uri.path();
    let invalidate_unsafe = shared.settings.invalidate_unsafe;
    // A `GET` that asks for a `DELETE` through a method-override header the application
    // honours invalidates like one (see `CacheLayerBuilder::method_override_headers`).
    let overrides = &shared.settings.method_override_headers;
    let overridden = guard::overridden_method(&request.method, &request.headers, overrides);
    let method = overridden.as_ref().unwrap_or(&request.method);
    let (rule, mut tags) = match shared.routes.classify(method, path) {
        // An unsafe request anywhere may still invalidate: by `Location` (RFC 9111 section
        // 4.4) or `Cache-Group-Invalidation` (RFC 9875) in its response.
        Matched::Unmatched { pattern } if invalidate_unsafe && !method.is_safe() => {
            return Decision::Mutation {
                route: pattern,
                evicts: Vec::new(),
                uri: None,
                authority: authority(request),
            };
        }
        Matched::Unmatched { pattern } => {
            let reason =
                if method.is_safe() { BypassReason::NoRule } else { BypassReason::Mutation };
            return Decision::Bypass { route: pattern, reason };
        }
        Matched::Bypass { pattern } => {
            return Decision::Bypass { route: Some(pattern), reason: BypassReason::BypassRule };
        }
        Matched::Write { pattern, evicts, reads_cached } => {
            let uri = (invalidate_unsafe && reads_cached).then(|| uri_tag(path));
            if evicts.is_empty() && uri.is_none() && !invalidate_unsafe {
                return Decision::Bypass { route: Some(pattern), reason: BypassReason::Mutation };
            }
            return Decision::Mutation {
                route: Some(pattern),
                evicts,
                uri,
                authority: authority(request),
            };
        }
        Matched::Read { rule, tags } => (rule, tags),
    };
    let bypass = |reason| Decision::Bypass { route: Some(Arc::clone(&rule.pattern)), reason };
    // Paths other servers could read differently (cache deception), and headers that change
    // the answer without being in the key (cache poisoning): see `crate::guard`.
    if guard::ambiguous_path(path) {
        return bypass(BypassReason::AmbiguousPath);
    }
    if rule.bypass_headers.iter().any(|h| request.headers.contains_key(h)) {
        return bypass(BypassReason::BypassHeader);
    }
    // A gRPC call's message is keyed (its digest, below); any other body is not.
    if has_body && !rule.grpc {
        return bypass(BypassReason::RequestBody);
    }
    if invalidate_unsafe {
        tags.push(uri_tag(path));
    }
    let user = match &rule.scope {
        Scope::PerUser { identify, share_anonymous } => match identify.identify(request) {
            Some(user) => Some(user),
            None if *share_anonymous && !has_credentials(request) => None,
            None => return bypass(BypassReason::UnidentifiedUser),
        },
        // A credentialed request may get a response made for that user: RFC 9111 section 3.5.
        Scope::Default if has_credentials(request) => return bypass(BypassReason::Credentials),
        Scope::Default | Scope::Shared => None,
    };

    let mut key_base = match &rule.query_params {
        None => KeyBase::new(request, user.as_ref()),
        Some(keep) => {
            let query = request.uri.query().unwrap_or("");
            KeyBase::with_query(request, &kept_params(query, keep), user.as_ref())
        }
    };
    if rule.grpc {
        // Only `GrpcCacheService` reads the message, and puts its digest here.
        match request.extensions.get::<MessageDigest>() {
            Some(message) => key_base = key_base.with_message(message),
            None => return bypass(BypassReason::UnreadMessage),
        }
    }
    let prefix = &shared.settings.key_prefix;
    let base_key = key_base.key(prefix, &request.headers, &rule.vary);
    let (key, vary) = match shared.learned_vary.get(&base_key) {
        Some(learned) => {
            let vary = vary_union(&rule.vary, &learned);
            (key_base.key(prefix, &request.headers, &vary), vary)
        }
        None => (base_key.clone(), rule.vary.clone()),
    };
    if let Some(groups) = shared.learned_groups.get(&key) {
        tags.extend(groups.iter().filter(|g| !tags.contains(g)).cloned().collect::<Vec<_>>());
    }
    if shared.eviction_pending(&tags) {
        return bypass(BypassReason::EvictionPending);
    }
    Decision::Lookup(Plan {
        key,
        key_base,
        vary,
        base_key,
        tag_keys: shared.tag_keys(&tags),
        tags,
        rule: Arc::clone(rule),
        per_user: user.is_some(),
        conditions: Conditions::from_request(&request.headers),
        refresh: shared.settings.honor_request_no_cache && asks_for_origin(&request.headers),
        accepts_zstd: accepts_zstd(&request.headers),
        head: request.method == Method::HEAD,
        started,
        provisional_versions: false,
    })
}

fn has_credentials(request: &request::Parts) -> bool {
    request.headers.contains_key(header::AUTHORIZATION)
        || request.headers.contains_key(header::COOKIE)
}

/// How long a response may be stored, or why it may not.
pub(crate) fn storable(
    response: &response::Parts,
    plan: &Plan,
    now: SystemTime,
) -> Result<Freshness, &'static str> {
    if plan.head {
        return Err("HEAD responses have no body to store");
    }
    if !plan.rule.statuses.contains(&response.status) {
        return Err("status not cacheable");
    }
    let headers = &response.headers;
    // The rest of a gRPC response is checked once it is complete (`Capture::finish`).
    if plan.rule.grpc && !grpc::status_ok_so_far(headers) {
        return Err("grpc-status is not 0");
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err("Set-Cookie");
    }
    let cache_control = match plan.rule.upstream_cache_control {
        // One we cannot read may say `no-store` or `private` in a form we do not see.
        true => CacheControl::parse(headers).map_err(|_| "unreadable Cache-Control")?,
        false => None,
    };
    if let Some(cc) = &cache_control {
        if cc.no_store() {
            return Err("Cache-Control: no-store");
        }
        if cc.private() && !plan.per_user {
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
    let mut fresh = freshness(headers, cache_control.as_ref(), &plan.rule, now);
    if cache_control.as_ref().is_some_and(CacheControl::no_cache) {
        // Stored, but never used without asking the inner service first (RFC 9111 section
        // 5.2.2.4), which takes a validator to ask with.
        if !headers.contains_key(header::ETAG) && !headers.contains_key(header::LAST_MODIFIED) {
            return Err("Cache-Control: no-cache without a validator");
        }
        fresh.revalidate_for = fresh.lifetime.max(plan.rule.ttl);
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

/// Whether a request asks not to be answered from a cache: `Cache-Control: no-cache` or
/// `max-age=0`, or (without `Cache-Control`) `Pragma: no-cache`. An unreadable
/// `Cache-Control` is ignored: a request can only ask for less caching, so misreading one
/// costs a hit at worst.
fn asks_for_origin(headers: &HeaderMap) -> bool {
    match CacheControl::parse(headers) {
        Ok(Some(cc)) => {
            cc.no_cache() || cc.no_cache_fields() || cc.max_age() == Some(Duration::ZERO)
        }
        Ok(None) => headers
            .get_all(header::PRAGMA)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache")),
        Err(_) => false,
    }
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
