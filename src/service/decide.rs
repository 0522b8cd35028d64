//! Decide: what the layer does with a request (stay out of the way, invalidate after a write,
//! or look it up), and for a lookup, its [`Plan`]: key, tags, and what the request allows.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName};
use http::request;
use http::Method;
use smallvec::SmallVec;

use super::shared::Shared;
use crate::entry::compression::accepts_zstd;
use crate::entry::key::{
    authority, kept_params, served_path, tag_key, uri_tag, vary_union, KeyParts, EVERY_ENTRY_TAG,
};
use crate::grpc::MessageDigest;
use crate::outcome::BypassReason;
use crate::protocol::cache_control::asks_for_origin;
use crate::protocol::conditional::Conditions;
use crate::protocol::guard;
use crate::protocol::range::RangeRequest;
use crate::protocol::storable::EntryFor;
use crate::rules::{Matched, ReadRule, Scope};
use crate::user::cookie_values;

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

/// Everything the request path needs to look up and store one cacheable request.
pub(crate) struct Plan {
    /// The entry's key: `key_parts` with the values of the `vary` request headers.
    pub(crate) key: String,
    /// Everything in the key but the values of the `vary` headers.
    pub(crate) key_parts: KeyParts,
    /// The request headers the entry varies on: the rule's, and those learned from responses.
    pub(crate) vary: Arc<[HeaderName]>,
    /// The key with the rule's `vary` headers only, where learned ones are written down for
    /// other instances (see [`super::learn`]); `None` while it is `key` (nothing learned).
    pub(crate) rule_vary_key: Option<String>,
    pub(crate) tags: Vec<String>,
    /// The store keys of `tags`' versions; on the stack for the usual one or two tags.
    pub(crate) tag_keys: SmallVec<[String; 2]>,
    pub(crate) rule: Arc<ReadRule>,
    /// Whether the entry belongs to one identified user (so `private` responses may go in it).
    pub(crate) per_user: bool,
    /// A request with credentials looked up in the shared entries, as an `http_cache` rule
    /// allows (RFC 9111 section 3.5): it is answered, and fills, only with responses that say
    /// `public`, `s-maxage` or `must-revalidate`.
    pub(crate) credentialed: bool,
    /// The request's `If-None-Match` / `If-Modified-Since`, for `304` answers on hits.
    pub(crate) conditions: Option<Conditions>,
    /// `HEAD`: answered from the `GET` entry, never stored from (its response has no body).
    pub(crate) head: bool,
    /// The request asked for a response from the origin (`Cache-Control: no-cache` or
    /// `max-age=0`, `Pragma: no-cache`) and the layer honours that.
    pub(crate) refresh: bool,
    /// The client accepts `zstd`: compressed entries are served as they are stored. Never
    /// with a range, which counts the bytes of the body as it is.
    pub(crate) accepts_zstd: bool,
    /// A `GET`'s `Range`: served from a fresh entry, else passed to the inner service, whose
    /// answer is not stored. Boxed: most requests have none, and the plan stays small.
    pub(crate) range: Option<Box<RangeRequest>>,
    /// When the layer was called with the request, for its latency.
    pub(crate) started: Instant,
    /// Some of the tags had no version, and this miss made them provisional ones: storing its
    /// entry keeps them (see [`crate::store`]).
    pub(crate) provisional_versions: bool,
}

impl Plan {
    /// Whose entry the response goes into, for [`storable`](crate::protocol::storable::storable).
    pub(crate) fn entry_for(&self) -> EntryFor {
        match (self.per_user, self.credentialed) {
            (true, _) => EntryFor::OneUser,
            (false, true) => EntryFor::AnyoneAskedWithCredentials,
            (false, false) => EntryFor::Anyone,
        }
    }

    /// The key with the rule's `vary` headers only: the field, or `key` while nothing was
    /// learned.
    pub(crate) fn rule_vary_key(&self) -> &str {
        self.rule_vary_key.as_deref().unwrap_or(&self.key)
    }

    /// Makes the key the one for `vary` (the rule's headers and learned ones), keeping the rule's
    /// key.
    pub(crate) fn vary_on(&mut self, shared: &Shared, request: &HeaderMap, vary: Vec<HeaderName>) {
        let key = self.key_parts.key(&shared.settings.key_prefix, request, &vary);
        let rule_vary_key = std::mem::replace(&mut self.key, key);
        self.rule_vary_key.get_or_insert(rule_vary_key);
        self.vary = vary.into();
    }

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
            let uri = (invalidate_unsafe && reads_cached)
                .then(|| uri_tag(served_path(&request.uri, &request.extensions)));
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
    // the answer without being in the key (cache poisoning): see `crate::protocol::guard`.
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
        tags.push(uri_tag(served_path(&request.uri, &request.extensions)));
    }
    // Whose entry: one user's, or the shared one, which a credentialed request may look up
    // only as `Plan::credentialed` says.
    let (user, credentialed) = match &rule.scope {
        Scope::PerUser { identify, share_anonymous } => match identify.identify(request) {
            Some(user) => (Some(user), false),
            None if *share_anonymous && !has_credentials(shared, request) => (None, false),
            None => return bypass(BypassReason::UnidentifiedUser),
        },
        // A credentialed request may get a response made for that user: RFC 9111 section 3.5.
        // A shared-cache rule looks it up, but it only meets (and fills) entries whose
        // responses say they are for anyone.
        Scope::Default if has_credentials(shared, request) => match rule.http_cache {
            Some(_) => (None, true),
            None => return bypass(BypassReason::Credentials),
        },
        Scope::Default | Scope::Shared => (None, false),
    };

    let mut key_parts = match &rule.query_params {
        None => KeyParts::new(request, user.as_ref()),
        Some(keep) => {
            let query = request.uri.query().unwrap_or("");
            KeyParts::with_query(request, &kept_params(query, keep), user.as_ref())
        }
    };
    if rule.grpc {
        // Only `GrpcCacheService` reads the message, and puts its digest here.
        match request.extensions.get::<MessageDigest>() {
            Some(message) => key_parts = key_parts.with_message(message),
            None => return bypass(BypassReason::UnreadMessage),
        }
    }
    tags.push(EVERY_ENTRY_TAG.to_owned());
    let prefix = &shared.settings.key_prefix;
    let key = key_parts.key(prefix, &request.headers, &rule.vary);
    let (key, vary, rule_vary_key) = match shared.learned.vary.get(&key) {
        Some(learned) => {
            let vary = vary_union(&rule.vary, &learned);
            (key_parts.key(prefix, &request.headers, &vary), vary.into(), Some(key))
        }
        None => (key, Arc::clone(&rule.vary), None),
    };
    if let Some(groups) = shared.learned.groups.get(&key) {
        tags.extend(groups.iter().filter(|g| !tags.contains(g)).cloned().collect::<Vec<_>>());
    }
    let tag_keys: SmallVec<_> = tags.iter().map(|tag| tag_key(prefix, tag)).collect();
    if shared.store.eviction_pending(&tag_keys) {
        return bypass(BypassReason::EvictionPending);
    }
    // Ranges are only defined for `GET` (RFC 9110 section 14.2).
    let range = match request.method == Method::GET {
        true => RangeRequest::from_request(&request.headers).map(Box::new),
        false => None,
    };
    Decision::Lookup(Plan {
        key,
        key_parts,
        vary,
        rule_vary_key,
        tag_keys,
        tags,
        rule: Arc::clone(rule),
        per_user: user.is_some(),
        credentialed,
        conditions: Conditions::from_request(&request.headers),
        refresh: shared.settings.honor_request_no_cache && asks_for_origin(&request.headers),
        accepts_zstd: range.is_none() && accepts_zstd(&request.headers),
        range,
        head: request.method == Method::HEAD,
        started,
        provisional_versions: false,
    })
}

/// Whether `request` says who is asking: `Authorization`, or a `Cookie` (one of the layer's
/// `credential_cookies`, when it names them).
fn has_credentials(shared: &Shared, request: &request::Parts) -> bool {
    let headers = &request.headers;
    headers.contains_key(header::AUTHORIZATION)
        || match &shared.settings.credential_cookies {
            None => headers.contains_key(header::COOKIE),
            Some(names) => names.iter().any(|name| !cookie_values(headers, name).is_empty()),
        }
}
