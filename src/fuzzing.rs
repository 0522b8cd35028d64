//! Entry points for the fuzz targets in `fuzz/`: thin wrappers over the crate's internal
//! parsers and encoders, each checking the invariants that the rest of the crate relies on.
//!
//! Only built with the `fuzzing` feature. Not a public API: it follows the internals and may
//! change with any release.
//!
//! A wrapper never panics on its own account, whatever its input: input the crate could never
//! be given (an invalid header name, an unknown status) is skipped. It panics only when an
//! invariant fails (an `assert!`), or when the crate itself panics.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};

use crate::entry::compression::{accepts_zstd, compress, for_client};
use crate::entry::key::{kept_params, tag_key, uri_tag, vary_union, KeyParts, MAX_PLAIN_TAG};
use crate::entry::Entry;
use crate::protocol::cache_control::grammar;
use crate::protocol::conditional::{add_validators, not_modified_headers, strong_etag, Conditions};
use crate::protocol::groups::{decode_marker, invalidated_by, of_response};
use crate::protocol::guard;
use crate::protocol::vary::beyond;
use crate::rules::{escape_tag_param, Matched, RouteTable, Rule, RuleDefaults};
use crate::service::decide::{storable, stored_headers, Plan};
use crate::user::{UserFromHeader, UserId};

/// A header as raw bytes, name then value; the wrappers skip the ones `http` would reject.
pub type RawHeader = (Vec<u8>, Vec<u8>);

/// The key prefix the wrappers use where the input does not choose one.
const PREFIX: &str = "trc";
/// The largest body a stored entry may decompress to (the layer's default `max_body_bytes`).
const MAX_BODY: usize = 1024 * 1024;
/// The layer's own response header, which entries never keep.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

// ---------------------------------------------------------------------------------------------
// Entries
// ---------------------------------------------------------------------------------------------

/// Decodes `data` as a stored entry, as a lookup does with whatever the store returns.
///
/// Checks that decoding never panics; that a decoded entry's body is the tail of `data` (served
/// without a copy); that it re-encodes to bytes that decode to the same entry; that the times a
/// hit computes from it never panic; that preparing it for a client (decompressing a `zstd`
/// body, or serving it compressed) keeps its promises; and that compressing it and storing it
/// again gives the same body back.
pub fn entry_decode(data: &[u8]) {
    let Some(entry) = Entry::decode(Bytes::copy_from_slice(data)) else { return };
    assert!(data.ends_with(&entry.body), "the body is not the tail of the stored bytes");
    let again = Entry::decode(entry.encode());
    assert_eq!(again.as_ref(), Some(&entry), "a decoded entry does not re-encode to itself");

    let expires = entry.stored_at_ms.saturating_add(entry.ttl.as_millis() as u64);
    for now in [0, entry.stored_at_ms, expires.saturating_sub(1), expires, u64::MAX] {
        let staleness = entry.staleness(now);
        let remaining = entry.remaining(now);
        assert!(
            staleness.is_none() || remaining.is_zero(),
            "an entry is stale and fresh at once at {now}"
        );
        let _ = entry.age_secs(now);
    }

    check_for_client(&entry);

    // What the background store does with a large body: compress it, then encode it.
    let mut plain = entry.clone();
    plain.identity_len = None;
    plain.headers.remove(header::CONTENT_ENCODING);
    let body = plain.body.clone();
    compress(&mut plain, 0);
    if let Some(identity_len) = plain.identity_len {
        assert_eq!(identity_len, body.len() as u64, "compress recorded the wrong length");
        let stored = Entry::decode(plain.encode()).expect("a compressed entry does not decode");
        let served = for_client(stored, false, body.len())
            .expect("a compressed entry cannot be served to a client without zstd");
        assert_eq!(served.body, body, "decompressing gives another body");
        assert_eq!(served.identity_len, None);
    } else {
        assert_eq!(plain.body, body, "an entry left uncompressed changed its body");
    }
}

/// Checks what [`for_client`] does with a decoded entry, for a client with and without `zstd`.
fn check_for_client(entry: &Entry) {
    let Some(identity_len) = entry.identity_len else {
        for accepts in [false, true] {
            let served = for_client(entry.clone(), accepts, MAX_BODY);
            assert_eq!(served.as_ref(), Some(entry), "an uncompressed entry was changed");
        }
        return;
    };
    let vary_lists_accept_encoding =
        |headers: &HeaderMap| {
            headers.get_all(header::VARY).iter().filter_map(|v| v.to_str().ok()).any(|v| {
                v.split(',').any(|name| name.trim().eq_ignore_ascii_case("accept-encoding"))
            })
        };
    let compressed = for_client(entry.clone(), true, MAX_BODY)
        .expect("a compressed entry is always served to a client that accepts zstd");
    assert_eq!(compressed.body, entry.body, "a zstd client gets another body");
    assert_eq!(
        compressed.headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"zstd"[..])
    );
    assert!(vary_lists_accept_encoding(&compressed.headers), "no Vary: accept-encoding");
    if let Some(plain) = for_client(entry.clone(), false, MAX_BODY) {
        assert_eq!(plain.body.len() as u64, identity_len, "decompressed to another length");
        assert_eq!(plain.identity_len, None);
        assert!(vary_lists_accept_encoding(&plain.headers), "no Vary: accept-encoding");
    }
}

/// The fields of an entry, for [`encoded_entry`].
#[derive(Debug, Clone, Default)]
pub struct EntryFields {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: Vec<RawHeader>,
    /// The trailers, if the body had some.
    pub trailers: Option<Vec<RawHeader>>,
    /// When the entry was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// How long it is fresh, in milliseconds.
    pub ttl_ms: u64,
    /// Its `stale-while-revalidate` window, in milliseconds.
    pub stale_while_revalidate_ms: u64,
    /// Its `stale-if-error` window, in milliseconds.
    pub stale_if_error_ms: u64,
    /// How long past its freshness it may be revalidated, in milliseconds.
    pub revalidate_for_ms: u64,
    /// Its tags, with their versions.
    pub tags: Vec<(String, u64)>,
    /// Whether to store the body zstd-compressed, as the layer does past `compress_above`.
    pub compress: bool,
    /// The body, uncompressed.
    pub body: Vec<u8>,
}

/// The stored bytes of the entry `fields` describe (`None` for an invalid status or header),
/// after checking that they decode to that entry. For seed inputs and round trips.
pub fn encoded_entry(fields: &EntryFields) -> Option<Vec<u8>> {
    let mut entry = Entry {
        status: StatusCode::from_u16(fields.status).ok()?,
        headers: header_map(&fields.headers)?,
        trailers: match &fields.trailers {
            Some(trailers) => Some(header_map(trailers)?),
            None => None,
        },
        stored_at_ms: fields.stored_at_ms,
        ttl: Duration::from_millis(fields.ttl_ms),
        stale_while_revalidate: Duration::from_millis(fields.stale_while_revalidate_ms),
        stale_if_error: Duration::from_millis(fields.stale_if_error_ms),
        revalidate_for: Duration::from_millis(fields.revalidate_for_ms),
        tags: fields.tags.clone(),
        identity_len: None,
        body: Bytes::copy_from_slice(&fields.body),
    };
    if fields.compress {
        compress(&mut entry, 0);
    }
    let encoded = entry.encode();
    assert_eq!(Entry::decode(encoded.clone()), Some(entry), "an entry does not round-trip");
    Some(encoded.to_vec())
}

/// A header map of the valid headers among `headers`, in order; `None` if any is invalid.
fn header_map(headers: &[RawHeader]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(HeaderName::from_bytes(name).ok()?, HeaderValue::from_bytes(value).ok()?);
    }
    Some(map)
}

/// A header map of the valid headers among `headers`, in order, the others skipped.
fn lenient_header_map(headers: &[RawHeader]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// The layer's defaults, as the builder sets them.
fn rule_defaults() -> RuleDefaults {
    RuleDefaults {
        ttl: Duration::from_secs(60),
        statuses: vec![StatusCode::OK],
        identify: Arc::new(UserFromHeader::authorization()),
        key_headers: guard::KEYED.map(HeaderName::from_static).to_vec(),
        bypass_headers: guard::BYPASSED.map(HeaderName::from_static).to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and tags
// ---------------------------------------------------------------------------------------------

/// A request, with what its keys and tags are made from, for [`keys_and_tags`].
#[derive(Debug, Clone, Default)]
pub struct KeyCase {
    /// The request method.
    pub method: Vec<u8>,
    /// The request target (origin form `/a?b`, or absolute form `http://host/a?b`).
    pub uri: Vec<u8>,
    /// The request headers.
    pub headers: Vec<RawHeader>,
    /// The layer's key prefix.
    pub prefix: String,
    /// The user of a per-user entry (digested into a [`UserId`]); `None` for a shared entry.
    pub user: Option<Vec<u8>>,
    /// The request headers the entry varies on.
    pub vary: Vec<Vec<u8>>,
    /// The query parameters the key is made of (a rule's `key_query_params`); `None` for all.
    pub key_query_params: Option<Vec<String>>,
    /// A route pattern (`/users/{id}`).
    pub pattern: String,
    /// Tag templates for that route (`user:{id}`), as a read rule's tags and a write's evictions.
    pub templates: Vec<String>,
    /// More paths to match against the pattern, besides the request's.
    pub paths: Vec<String>,
    /// Tags to make store keys of, and values to escape as tag parameters.
    pub tags: Vec<String>,
}

/// Builds a request's entry keys, its tags and their store keys.
///
/// Checks that keys have the prefix and a fixed length and never hold the input; that they are
/// the same where the key is documented to normalise (`HEAD` and `GET`, query parameter order,
/// percent-escape case, host case, varying header values' surrounding space, the case of
/// content negotiation values) and differ where requests may get different responses (another
/// method, user, trailing slash, order of repeated query parameters, extra varying header);
/// that rendered tags are the templates with every parameter percent-decoded then escaped to
/// `A-Za-z0-9-._~` and `%XX`, so that no parameter can forge another tag or the layer's own
/// `#` tags; and that tag keys are the tag itself or, past [`MAX_PLAIN_TAG`] bytes, a digest.
pub fn keys_and_tags(case: &KeyCase) {
    let prefix = case.prefix.as_str();
    for tag in &case.tags {
        check_tag_key(prefix, tag);
        check_escape(tag);
    }
    if let [a, b, ..] = case.tags.as_slice() {
        if a != b && !a.starts_with('#') && !b.starts_with('#') {
            assert_ne!(tag_key(prefix, a), tag_key(prefix, b), "two tags share a key");
        }
    }

    let request = request_parts(&case.method, &case.uri, &case.headers);
    if let Some(request) = &request {
        check_request_keys(case, request);
        check_uri_tag(request.uri.path());
    }

    let mut paths: Vec<&str> = case.paths.iter().map(String::as_str).collect();
    if let Some(request) = &request {
        paths.push(request.uri.path());
    }
    check_templates(&case.pattern, &case.templates, &paths);
}

/// A request head from raw parts; `None` when the method or target is not valid HTTP.
fn request_parts(method: &[u8], uri: &[u8], headers: &[RawHeader]) -> Option<Parts> {
    let method = Method::from_bytes(method).ok()?;
    let uri = Uri::try_from(uri).ok()?;
    let (mut parts, ()) = Request::builder().method(method).uri(uri).body(()).ok()?.into_parts();
    parts.headers = lenient_header_map(headers);
    Some(parts)
}

/// How a rule makes entry keys: with the layer's prefix, from all the query or some of it.
struct Keying<'a> {
    prefix: &'a str,
    /// The rule's `key_query_params`: `None` keys on the whole query.
    keep: Option<&'a [String]>,
}

impl Keying<'_> {
    fn key(&self, request: &Parts, user: Option<&UserId>, vary: &[HeaderName]) -> String {
        let base = match self.keep {
            None => KeyParts::new(request, user),
            Some(keep) => {
                let query = request.uri.query().unwrap_or("");
                KeyParts::with_query(request, &kept_params(query, keep), user)
            }
        };
        base.key(self.prefix, &request.headers, vary)
    }

    /// Whether a query parameter named `name` (still percent-encoded) is part of the key.
    fn keeps(&self, name: &str) -> bool {
        let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        self.keep.is_none_or(|keep| keep.iter().any(|k| *k == decoded))
    }
}

fn assert_digest_key(key: &str, head: &str, hex_len: usize) {
    let hex = key.strip_prefix(head).unwrap_or_else(|| panic!("key {key:?} lacks {head:?}"));
    assert_eq!(hex.len(), hex_len, "key {key:?} has a digest of another length");
    assert!(
        hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "key {key:?} is not a hex digest"
    );
}

fn check_request_keys(case: &KeyCase, request: &Parts) {
    let keying = Keying { prefix: &case.prefix, keep: case.key_query_params.as_deref() };
    let mut names: Vec<HeaderName> =
        case.vary.iter().filter_map(|name| HeaderName::from_bytes(name).ok()).collect();
    let vary = vary_union(&names, &[]);
    assert!(vary.windows(2).all(|w| w[0].as_str() < w[1].as_str()), "vary is not sorted");
    names.dedup();
    assert!(names.iter().all(|n| vary.contains(n)), "vary lost a header");

    let user = case.user.as_ref().map(UserId::digest);
    let user = user.as_ref();
    let key = keying.key(request, user, &vary);
    assert_digest_key(&key, &format!("{}:v1:e:", case.prefix), 64);

    let with_method = |method: Method| {
        let mut other = request.clone();
        other.method = method;
        keying.key(&other, user, &vary)
    };
    let get = with_method(Method::GET);
    assert_eq!(with_method(Method::HEAD), get, "HEAD and GET have different keys");
    assert_ne!(with_method(Method::POST), get, "POST and GET share a key");

    // Users never share entries, with each other or with everyone.
    let other_user = UserId::digest([case.user.as_deref().unwrap_or_default(), b"'"].concat());
    let keyed_for = |user: Option<&UserId>| keying.key(request, user, &vary);
    assert_ne!(keyed_for(Some(&other_user)), keyed_for(user), "two users share a key");
    if user.is_some() {
        assert_ne!(keyed_for(None), key, "a user shares the shared key");
    }

    // One more varying header splits the key, even when the request does not carry it.
    let extra = HeaderName::from_static("x-fuzz-extra");
    if !vary.contains(&extra) {
        let more = vary_union(&vary, std::slice::from_ref(&extra));
        assert_ne!(keying.key(request, user, &more), key, "vary was ignored");
    }

    // Surrounding space in a varying header's values does not count...
    let mut spaced = request.clone();
    for name in &vary {
        rewrite_values(&mut spaced.headers, name, |v| [b" ", v, b"\t"].concat());
    }
    assert_eq!(keying.key(&spaced, user, &vary), key, "space counted");
    // ... nor the case of content negotiation tokens.
    let negotiation =
        [header::ACCEPT, header::ACCEPT_CHARSET, header::ACCEPT_ENCODING, header::ACCEPT_LANGUAGE];
    // (An `Accept-Encoding` that is not UTF-8 is keyed as it is, case and all.)
    let mut shouted = request.clone();
    for name in vary.iter().filter(|n| negotiation.contains(n)) {
        let utf8 =
            request.headers.get_all(name).iter().all(|v| std::str::from_utf8(v.as_bytes()).is_ok());
        if *name != header::ACCEPT_ENCODING || utf8 {
            rewrite_values(&mut shouted.headers, name, <[u8]>::to_ascii_uppercase);
        }
    }
    assert_eq!(keying.key(&shouted, user, &vary), key, "negotiation case counted");

    // The host's case does not count (when the key does not also vary on it, raw); a `Host`
    // that is not visible ASCII is keyed by its bytes, case and all.
    if request.uri.authority().is_none()
        && request.headers.get_all(header::HOST).iter().count() == 1
        && request.headers.get(header::HOST).is_some_and(|host| host.to_str().is_ok())
        && !vary.contains(&header::HOST)
    {
        let mut upper = request.clone();
        rewrite_values(&mut upper.headers, &header::HOST, <[u8]>::to_ascii_uppercase);
        assert_eq!(keying.key(&upper, user, &vary), key, "host case counted");
    }

    check_path_and_query(&keying, request, user, &vary, &key);
}

/// Replaces every value of `name` by `f` of it, where the result is still a valid value.
fn rewrite_values(headers: &mut HeaderMap, name: &HeaderName, f: impl Fn(&[u8]) -> Vec<u8>) {
    let values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    let rewritten: Option<Vec<HeaderValue>> =
        values.iter().map(|v| HeaderValue::from_bytes(&f(v.as_bytes())).ok()).collect();
    if let Some(rewritten) = rewritten {
        headers.remove(name);
        for value in rewritten {
            headers.append(name.clone(), value);
        }
    }
}

/// The request with another path and query, if that is a valid target.
fn with_path_and_query(request: &Parts, path_and_query: &str) -> Option<Parts> {
    let mut parts = request.uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    let mut other = request.clone();
    other.uri = Uri::from_parts(parts).ok()?;
    Some(other)
}

/// Whether every `%` in `path` starts an escape `%XX` of two hex digits.
fn escapes_well_formed(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().filter(|(_, b)| **b == b'%').all(|(i, _)| {
        bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    })
}

/// `path` with the hex digits of its escapes in the other case (`upper` or lower).
fn recase_escapes(path: &str, upper: bool) -> String {
    let mut out = String::with_capacity(path.len());
    let mut escape = 0;
    for c in path.chars() {
        if c == '%' {
            escape = 2;
            out.push(c);
        } else if escape > 0 {
            escape -= 1;
            out.push(if upper { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        } else {
            out.push(c);
        }
    }
    out
}

fn check_path_and_query(
    keying: &Keying<'_>,
    request: &Parts,
    user: Option<&UserId>,
    vary: &[HeaderName],
    key: &str,
) {
    let path = request.uri.path();
    let query = request.uri.query();
    let target = |path: &str, query: Option<&str>| match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let key_of = |other: &Parts| keying.key(other, user, vary);

    if path.starts_with('/') {
        // A trailing slash is another resource.
        if let Some(other) = with_path_and_query(request, &target(&format!("{path}/"), query)) {
            assert_ne!(key_of(&other), key, "a trailing slash shares the key");
        }
        // `%2f` and `%2F` are the same octet.
        if path.contains('%') && escapes_well_formed(path) {
            for upper in [false, true] {
                let recased = recase_escapes(path, upper);
                if let Some(other) = with_path_and_query(request, &target(&recased, query)) {
                    assert_eq!(key_of(&other), key, "escape case counted in {path:?}");
                    assert_eq!(uri_tag(&recased), uri_tag(path), "escape case counted in uri tag");
                }
            }
        }
        // One more query parameter is another resource, unless the rule keys on others only.
        let extra = "x-fuzz-extra";
        let more = match query {
            Some(query) => format!("{query}&{extra}"),
            None => extra.to_owned(),
        };
        if let Some(other) = with_path_and_query(request, &target(path, Some(&more))) {
            if keying.keeps(extra) {
                assert_ne!(key_of(&other), key, "an extra query parameter shares the key");
            } else {
                assert_eq!(key_of(&other), key, "a query parameter not kept counted");
            }
        }
    }

    let Some(query) = query else { return };
    let params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let name = |param: &str| param.split('=').next().unwrap_or("").to_owned();
    // Moving parameters with other names around does not count: those named after the first
    // one's name go first, keeping the order within each name.
    if let Some(first) = params.first() {
        let pivot = name(first);
        let (after, rest): (Vec<&str>, Vec<&str>) = params.iter().partition(|p| name(p) > pivot);
        let moved = [after, rest].concat().join("&");
        if let Some(other) = with_path_and_query(request, &target(path, Some(&moved))) {
            assert_eq!(key_of(&other), key, "query order counted: {query:?} and {moved:?}");
        }
    }
    // The order of repeated names does count (a handler may read `a=1&a=2` as a list), for
    // the parameters that are part of the key.
    for (i, a) in params.iter().enumerate() {
        let Some(j) = params.iter().skip(i + 1).position(|b| name(b) == name(a) && b != a) else {
            continue;
        };
        let mut swapped = params.clone();
        swapped.swap(i, i + 1 + j);
        if let Some(other) = with_path_and_query(request, &target(path, Some(&swapped.join("&")))) {
            if keying.keeps(&name(a)) {
                assert_ne!(key_of(&other), key, "repeated parameters swapped share the key");
            } else {
                assert_eq!(key_of(&other), key, "parameters not kept counted");
            }
        }
        break;
    }
}

fn check_uri_tag(path: &str) {
    let tag = uri_tag(path);
    assert_digest_key(&tag, "#uri:", 32);
}

fn check_tag_key(prefix: &str, tag: &str) {
    let key = tag_key(prefix, tag);
    if tag.len() <= MAX_PLAIN_TAG {
        assert_eq!(key, format!("{prefix}:v1:t:{tag}"), "a short tag is not kept as it is");
    } else {
        assert_digest_key(&key, &format!("{prefix}:v1:t:#"), 64);
    }
}

/// Checks that `value` escaped as a tag parameter is safe, and decodes back to `value`.
fn check_escape(value: &str) {
    let escaped = escape_tag_param(value);
    assert_eq!(escaped, escape_independently(value.as_bytes()), "escaping {value:?}");
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&escaped).collect();
    assert_eq!(decoded, value.as_bytes(), "an escaped parameter does not decode back");
}

/// The documented escaping of tag parameters, written out again: every byte but ASCII letters,
/// digits and `-._~` as `%XX`.
fn escape_independently(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The tag `template` renders for `params`, as documented: the placeholders replaced by the
/// percent-decoded, then escaped, parameters. `None` for a template with an unclosed `{`.
fn expected_tag(template: &str, params: &matchit::Params<'_, '_>) -> Option<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}')?;
        let raw = params.get(&rest[open + 1..close]).unwrap_or_default();
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
        out.push_str(&escape_independently(&decoded));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn check_templates(pattern: &str, templates: &[String], paths: &[&str]) {
    let defaults = rule_defaults();
    let mut rules = vec![(pattern.to_owned(), Rule::get().tags(templates.iter().cloned()))];
    if !templates.is_empty() {
        rules.push((pattern.to_owned(), Rule::mutations().evicts(templates.iter().cloned())));
    }
    let Ok(table) = RouteTable::build(rules, Vec::new(), &defaults) else { return };
    let mut router = matchit::Router::new();
    router.insert(pattern, ()).expect("a pattern the table took is a valid route");

    for path in paths {
        let found = router.at(path).ok();
        let read = match table.classify(&Method::GET, path) {
            Matched::Read { tags, .. } => Some(tags),
            Matched::Unmatched { .. } => None,
            _ => panic!("GET {path:?} is neither a read nor unmatched"),
        };
        let write = match table.classify(&Method::DELETE, path) {
            Matched::Write { evicts, reads_cached, .. } => {
                assert!(reads_cached, "the route has a read rule");
                Some(evicts)
            }
            Matched::Unmatched { .. } => None,
            _ => panic!("DELETE {path:?} is neither a write nor unmatched"),
        };
        let Some(found) = found else {
            assert!(read.is_none() && write.is_none(), "{path:?} matched the table only");
            continue;
        };
        let read = read.expect("a path the pattern matches is read from the rule");
        let write = write.expect("a path the pattern matches is written by the rule");
        assert_eq!(read.len(), templates.len());
        if !templates.is_empty() {
            assert_eq!(read, write, "GET and DELETE render the tags differently");
        }
        for (template, tag) in templates.iter().zip(&read) {
            let expected = expected_tag(template, &found.params)
                .expect("a template the table took has its braces closed");
            assert_eq!(*tag, expected, "template {template:?} on {path:?}");
            assert!(!tag.starts_with('#'), "tag {tag:?} is in the layer's own namespace");
        }
        for (_, value) in found.params.iter() {
            if let Ok(decoded) = percent_encoding::percent_decode_str(value).decode_utf8() {
                check_escape(&decoded);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cache-Control
// ---------------------------------------------------------------------------------------------

/// Reads `data` as the field lines of a `Cache-Control` (one per `\n`-separated line; a line
/// `http` would reject as a header value is left out) and parses them as the layer does.
///
/// Checks the parser against an independent recogniser of the RFC 9111 grammar: it reads the
/// field exactly when the grammar accepts every line, and then finds `no-store`, `private`,
/// `no-cache` with and without field names, `must-revalidate`, `proxy-revalidate` and the
/// delta-seconds directives (saturated at 2^31, invalid when not `1*DIGIT` or repeated with
/// another value) exactly where the grammar does.
pub fn cache_control(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(header::CACHE_CONTROL, value);
        }
    }
    grammar::check_parser(&headers);
}

// ---------------------------------------------------------------------------------------------
// Response headers
// ---------------------------------------------------------------------------------------------

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

    let mut rule = Rule::get()
        .tag("r")
        .vary(case.vary.iter().cloned())
        .cache_statuses([StatusCode::OK, StatusCode::NON_AUTHORITATIVE_INFORMATION]);
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
    let rule_vary_key = key_parts.key(PREFIX, &request.headers, &rule.vary);
    let plan = Plan {
        key: rule_vary_key.clone(),
        key_parts,
        vary: rule.vary.clone(),
        rule_vary_key,
        tag_keys: tags.iter().map(|tag| tag_key(PREFIX, tag)).collect(),
        tags,
        rule: Arc::clone(rule),
        per_user: user.is_some(),
        conditions: Conditions::from_request(&request.headers),
        head: case.head,
        refresh: false,
        accepts_zstd: accepts_zstd(&request.headers),
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
    let stored = storable(&response, &plan, now);
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
        assert!(extra.iter().chain(&plan.vary).all(|n| vary.contains(n)), "vary lost a header");
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
    assert!(plan.rule.statuses.contains(&status), "a {status} response was stored");
    assert!(!headers.contains_key(header::SET_COOKIE), "a Set-Cookie response was stored");
    assert!(!lists(headers, &header::VARY, "*"), "a Vary: * response was stored");
    if case.upstream_cache_control {
        assert!(!lists(headers, &header::CACHE_CONTROL, "no-store"), "no-store was stored");
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
        let directives = lines.expect("a Cache-Control the grammar rejects was stored").concat();
        let says = |name: &str| directives.iter().any(|d| d.name == name);
        assert!(!says("no-store"), "no-store was stored");
        assert!(
            !directives.iter().any(|d| d.name == "no-cache" && d.argument.is_some()),
            "no-cache with field names was stored"
        );
        assert!(
            plan.per_user || !says("private"),
            "a private response was stored in a shared entry"
        );
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
