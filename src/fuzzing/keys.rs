//! Keys and tags: the entry keys, tags and tag keys a request makes.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Uri};

use super::{assert_digest_key, lenient_header_map, rule_defaults, RawHeader};
use crate::entry::key::{kept_params, tag_key, uri_tag, vary_union, KeyParts, MAX_PLAIN_TAG};
use crate::rules::{escape_tag_param, Matched, RouteTable, Rule};
use crate::user::UserId;

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
