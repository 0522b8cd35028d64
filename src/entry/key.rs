//! Store keys for entries and tag versions.
//!
//! An entry key is `<prefix>:v1:e:<digest>`, where the digest (BLAKE3, 256 bits, hex) covers,
//! each length-prefixed so that no two different inputs run together:
//!
//! - the method (`HEAD` counts as `GET`: it is answered from the `GET` entry);
//! - the authority: the target's (HTTP/2 `:authority`, absolute form), else `Host`, lower-cased;
//!   a `Host` that is not readable text by its bytes;
//! - every `Host` line that disagrees with that authority, as it is: RFC 9112 section 3.2.2
//!   says the target's authority wins, but a handler or proxy behind the layer may read `Host`,
//!   so whatever it can see is keyed;
//! - the path, with percent-escapes upper-cased (`%zz` is no escape, and stays as it is);
//! - the query, with its parameters sorted by name (see [`sorted_query`] for what counts as one
//!   name, whose parameters keep their order);
//! - the request headers that `Connection` names (and the request carries): a proxy behind the
//!   layer drops them before its upstream sees them, so a request that names one is not the
//!   same request as one that does not;
//! - the scope: shared, or the [`UserId`] digest for per-user routes;
//! - the values of the headers the response varies on (the rule's `vary`, and those learned from
//!   responses' `Vary`), normalised only where RFC 9110 makes two values equal.
//!
//! All but the last are hashed once per request into a [`KeyParts`], from which the key for any
//! set of varying headers follows.
//!
//! Keys never hold raw tokens, cookies or paths, and their length is fixed by the prefix.
//! Tag keys are `<prefix>:v1:t:<tag>`, or `<prefix>:v1:t:#<digest>` for tags longer than
//! [`MAX_PLAIN_TAG`] bytes.

use std::borrow::Cow;
use std::sync::LazyLock;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{HeaderName, Method};

use crate::grpc::MessageDigest;
use crate::protocol::cache_control::is_tchar;
use crate::user::UserId;

/// The version of the key layout; bump it whenever what goes into a key changes.
const KEY_VERSION: &str = "v1";
/// Tags longer than this are digested in their key.
pub(crate) const MAX_PLAIN_TAG: usize = 128;

// BLAKE3 key-derivation hashers, one per context, made once: deriving a context's key costs as
// much as hashing a short request, so each use clones the prepared hasher instead.
static REQUEST_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("tower-redis-cache 2026 request"));
static ENTRY_KEY_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("tower-redis-cache 2026 entry key"));
static TAG_KEY_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("tower-redis-cache 2026 tag key"));
static URI_TAG_HASHER: LazyLock<blake3::Hasher> =
    LazyLock::new(|| blake3::Hasher::new_derive_key("tower-redis-cache 2026 uri tag"));

/// A request's entry key, all but the request headers it varies on: a digest of the rest, from
/// which the key for any set of varying headers follows without hashing the rest again.
#[derive(Clone, Copy)]
pub(crate) struct KeyParts {
    digest: [u8; 32],
}

impl KeyParts {
    pub(crate) fn new(request: &Parts, user: Option<&UserId>) -> Self {
        Self::with_query(request, request.uri.query().unwrap_or(""), user)
    }

    /// The same, for the request with `query` in place of its own.
    pub(crate) fn with_query(request: &Parts, query: &str, user: Option<&UserId>) -> Self {
        let method = if request.method == Method::HEAD { &Method::GET } else { &request.method };
        let mut fields = Fields::default();
        fields.push(method.as_str().as_bytes());
        fields.push(authority_of(request).as_bytes());
        let hosts = disagreeing_hosts(request);
        fields.push(&(hosts.len() as u64).to_le_bytes());
        for host in hosts {
            fields.push(host);
        }
        fields.push(normalize_path(served_path(&request.uri, &request.extensions)).as_bytes());
        fields.push(sorted_query(query).as_bytes());
        let options = connection_options(&request.headers);
        fields.push(&(options.len() as u64).to_le_bytes());
        for option in options {
            fields.push(option.as_str().as_bytes());
        }
        match user {
            None => fields.push(b"shared"),
            Some(user) => {
                fields.push(b"user");
                fields.push(user.as_bytes());
            }
        }
        Self { digest: *REQUEST_HASHER.clone().update(fields.as_bytes()).finalize().as_bytes() }
    }

    /// The same, for a gRPC call whose request message has the digest `message`.
    pub(crate) fn with_message(self, message: &MessageDigest) -> Self {
        // Two fields, where a request's own have seven or more: the inputs never coincide.
        let mut fields = Fields::default();
        fields.push(&self.digest);
        fields.push(&message.0);
        Self { digest: *REQUEST_HASHER.clone().update(fields.as_bytes()).finalize().as_bytes() }
    }

    /// The entry key when the response varies on the request headers `vary` (sorted), whose
    /// values are taken from `headers`, normalised as [`vary_value`] says.
    pub(crate) fn key(&self, prefix: &str, headers: &HeaderMap, vary: &[HeaderName]) -> String {
        let mut fields = Fields::default();
        fields.extend(&self.digest);
        for name in vary {
            fields.push(name.as_str().as_bytes());
            let values = headers.get_all(name);
            fields.push(&(values.iter().count() as u64).to_le_bytes());
            for value in values {
                fields.push(&vary_value(name, value.as_bytes()));
            }
        }
        let digest = ENTRY_KEY_HASHER.clone().update(fields.as_bytes()).finalize();
        [prefix, ":", KEY_VERSION, ":e:", &digest.to_hex()].concat()
    }
}

/// The inputs of a digest, each length-prefixed so that no two different inputs run together,
/// gathered before hashing: at these sizes BLAKE3 costs more per call than per byte. A typical
/// request's fields fit in a buffer on the stack; longer ones move to the heap.
///
/// A plain array, not a `SmallVec`: the many short copies (an 8-byte length, then a name) are
/// most of a key's cost, and a fixed buffer lets them compile to plain stores.
struct Fields {
    stack: [u8; FIELDS_ON_STACK],
    len: usize,
    /// Everything, once it outgrew `stack`.
    heap: Vec<u8>,
}

const FIELDS_ON_STACK: usize = 512;

impl Default for Fields {
    fn default() -> Self {
        Self { stack: [0; FIELDS_ON_STACK], len: 0, heap: Vec::new() }
    }
}

impl Fields {
    fn push(&mut self, bytes: &[u8]) {
        self.extend(&(bytes.len() as u64).to_le_bytes());
        self.extend(bytes);
    }

    fn extend(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        match self.stack.get_mut(self.len..end) {
            Some(free) if self.heap.is_empty() => {
                free.copy_from_slice(bytes);
                self.len = end;
            }
            _ => {
                if self.heap.is_empty() {
                    self.heap.extend_from_slice(&self.stack[..self.len]);
                }
                self.heap.extend_from_slice(bytes);
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self.heap.is_empty() {
            true => &self.stack[..self.len],
            false => &self.heap,
        }
    }
}

/// A request header value as it counts in a key: trimmed, and rewritten only into a spelling
/// that RFC 9110 makes equal to it, so that no two values an origin may answer differently
/// share an entry.
///
/// - `Accept-Encoding` (section 12.5.3): codings are case-insensitive, `x-gzip` is `gzip` and
///   `x-compress` is `compress` (section 8.4.1), a missing weight is `q=1`, and the order of the
///   members says nothing (preference is by weight alone). `*` and `identity` stay what they
///   are: an origin may answer `*` with gzip.
/// - `Accept`, `Accept-Charset`, `Accept-Language`: whitespace around the list's delimiters and
///   empty members say nothing; media ranges, charsets, language tags, parameter names and
///   weights are case-insensitive. Other parameter values, and quoted strings, keep their case.
///   `Accept-Language`'s members count in any order (its weights say which is preferred),
///   unless one language range comes twice.
///
/// A value that does not parse is keyed as it is, trimmed: it equals no other spelling.
fn vary_value<'a>(name: &HeaderName, value: &'a [u8]) -> Cow<'a, [u8]> {
    let value = value.trim_ascii();
    let Ok(text) = std::str::from_utf8(value) else { return Cow::Borrowed(value) };
    let canonical = if *name == header::ACCEPT_ENCODING {
        canonical_accept_encoding(text)
    } else if *name == header::ACCEPT {
        canonical_accept_list(text, false)
    } else if *name == header::ACCEPT_LANGUAGE {
        canonical_accept_language(text)
    } else if *name == header::ACCEPT_CHARSET {
        canonical_accept_list(text, true)
    } else {
        return Cow::Borrowed(value);
    };
    match canonical {
        Some(canonical) => Cow::Owned(canonical.into_bytes()),
        None => Cow::Borrowed(value),
    }
}

/// `Accept-Encoding` as its codings and weights, sorted by coding: `gzip;q=1000,br;q=500`
/// becomes `br;q=500,gzip;q=1000`. `None` when it does not parse, or names a coding twice.
fn canonical_accept_encoding(text: &str) -> Option<String> {
    let mut codings: Vec<(String, u16)> = Vec::new();
    for member in text.split(',').map(|m| m.trim_matches([' ', '\t'])) {
        if member.is_empty() {
            continue;
        }
        let mut pieces = member.split(';');
        let coding = pieces.next()?.trim_matches([' ', '\t']).to_ascii_lowercase();
        if coding.is_empty() || !coding.bytes().all(is_tchar) {
            return None;
        }
        let coding = match coding.as_str() {
            "x-gzip" => "gzip".to_owned(),
            "x-compress" => "compress".to_owned(),
            _ => coding,
        };
        // One weight at most, and nothing else (RFC 9110 section 12.5.3).
        let weight = match (pieces.next(), pieces.next()) {
            (None, _) => 1000,
            (Some(piece), None) => {
                let piece = piece.trim_matches([' ', '\t']);
                qvalue(piece.strip_prefix("q=").or_else(|| piece.strip_prefix("Q="))?)?
            }
            (Some(_), Some(_)) => return None,
        };
        if codings.iter().any(|(c, _)| *c == coding) {
            return None;
        }
        codings.push((coding, weight));
    }
    codings.sort();
    let members: Vec<String> = codings.iter().map(|(c, q)| format!("{c};q={q}")).collect();
    Some(members.join(","))
}

/// A weight (RFC 9110 section 12.4.2: `0`, `0.5`, `1.000`...) in thousandths.
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits_ok = fraction.len() <= 3 && fraction.bytes().all(|b| b.is_ascii_digit());
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" if digits_ok => Some(thousandths),
        "1" if digits_ok && thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// An `Accept`-style list without the whitespace around its delimiters or its empty members,
/// its case folded where RFC 9110 makes it insensitive: the member's first part and parameter
/// names always, the weight `q`, and other unquoted parameter values when `fold_values`.
/// `None` for an unterminated quoted string.
fn canonical_accept_list(text: &str, fold_values: bool) -> Option<String> {
    let mut members = Vec::new();
    for member in split_unquoted(text, ',')? {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let mut pieces = Vec::new();
        for (i, piece) in split_unquoted(member, ';')?.into_iter().enumerate() {
            let piece = piece.trim_matches([' ', '\t']);
            let folded = match piece.split_once('=') {
                _ if i == 0 => piece.to_ascii_lowercase(),
                Some((name, value)) => {
                    let name = name.to_ascii_lowercase();
                    let fold = !value.starts_with('"') && (fold_values || name == "q");
                    let value = if fold { value.to_ascii_lowercase() } else { value.to_owned() };
                    format!("{name}={value}")
                }
                None => piece.to_owned(),
            };
            pieces.push(folded);
        }
        members.push(pieces.join(";"));
    }
    Some(members.join(","))
}

/// `Accept-Language` as [`canonical_accept_list`] makes it, its members sorted: a language's
/// preference is its weight, never its place in the list (RFC 9110 section 12.5.4). A list
/// that names one range twice keeps its order, since which of the two counts is up to the
/// origin.
fn canonical_accept_language(text: &str) -> Option<String> {
    let canonical = canonical_accept_list(text, true)?;
    let mut members: Vec<&str> = canonical.split(',').filter(|m| !m.is_empty()).collect();
    let range = |member: &str| member.split(';').next().unwrap_or_default().to_owned();
    let mut ranges: Vec<String> = members.iter().map(|m| range(m)).collect();
    ranges.sort();
    if ranges.windows(2).any(|pair| pair[0] == pair[1]) {
        return Some(canonical);
    }
    members.sort();
    Some(members.join(","))
}

/// `text` split at each `delimiter` outside quoted strings; `None` when a quote is left open.
fn split_unquoted(text: &str, delimiter: char) -> Option<Vec<&str>> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == delimiter && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    (!quoted).then_some(parts)
}

/// The request headers a response varies on: the rule's, and those learned from responses,
/// sorted and without repeats.
pub(crate) fn vary_union(a: &[HeaderName], b: &[HeaderName]) -> Vec<HeaderName> {
    let mut all: Vec<HeaderName> = a.iter().chain(b).cloned().collect();
    all.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    all.dedup();
    all
}

/// The store key for the entry a request would be answered from.
#[cfg(test)]
fn entry_key(prefix: &str, request: &Parts, user: Option<&UserId>, vary: &[HeaderName]) -> String {
    KeyParts::new(request, user).key(prefix, &request.headers, vary)
}

/// The store key holding a tag's version.
pub(crate) fn tag_key(prefix: &str, tag: &str) -> String {
    if tag.len() <= MAX_PLAIN_TAG {
        [prefix, ":", KEY_VERSION, ":t:", tag].concat()
    } else {
        let digest = TAG_KEY_HASHER.clone().update(tag.as_bytes()).finalize();
        [prefix, ":", KEY_VERSION, ":t:#", &digest.to_hex()].concat()
    }
}

/// The tag every entry carries, whatever its route: evicting it (`CacheHandle::purge_all`)
/// makes every entry a miss at once, one write whatever the number of entries. Tags that
/// start with `#` are the layer's own; rules cannot name them.
///
/// One tag, read by every lookup, is the hottest key there is: an in-process store never
/// drops its version to make room (spread over 16 tags, a flood of one-off URLs made some of
/// them lose theirs, and with each a sixteenth of every entry), but on a Redis Cluster every
/// lookup reads it from the same node.
pub(crate) const EVERY_ENTRY_TAG: &str = "#all";

/// The store key of the index of a URL's entries (see `Store::add_to_index`), by its URI tag.
pub(crate) fn index_key(prefix: &str, uri_tag: &str) -> String {
    [prefix, ":", KEY_VERSION, ":i:", uri_tag].concat()
}

/// The store key of the miss lock's lease on the entry `key` (see `service::flight`).
pub(crate) fn lease_key(key: &str) -> String {
    format!("{key}:lease")
}

/// The tag every entry of a path carries, so that an unsafe request to that path (or naming it
/// in `Location` / `Content-Location`) invalidates it (RFC 9111 section 4.4). It covers every
/// query of the path: invalidating more than the exact URI is never stale.
///
/// Escapes of unreserved characters are decoded first (`/items/%31` is `/items/1`, RFC 3986
/// section 6.2.2.2), since a router may send both spellings to one handler: the tag may then
/// cover paths the handler tells apart, which costs a miss, never a stale read.
pub(crate) fn uri_tag(path: &str) -> String {
    let path = normalize_path(path);
    let digest = URI_TAG_HASHER.clone().update(&decode_unreserved(&path)).finalize();
    // Half the digest: a collision would only invalidate more than needed.
    [URI_TAG_PREFIX, &digest.to_hex()[..32]].concat()
}

const URI_TAG_PREFIX: &str = "#uri:";

/// Whether `tag` is a path's tag (see [`uri_tag`]).
pub(crate) fn is_uri_tag(tag: &str) -> bool {
    tag.starts_with(URI_TAG_PREFIX)
}

/// The path the client asked for: under axum's `Router::nest` (feature `axum`), the full path
/// it keeps in `OriginalUri`, not the one the nested router sees; else the request's own.
/// Keys and URI tags use it, so that two mounts of one router keep apart and a `Location`
/// with the full path reaches the entry.
pub(crate) fn served_path<'a>(uri: &'a http::Uri, extensions: &'a http::Extensions) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(original) = extensions.get::<axum::extract::OriginalUri>() {
        return original.path();
    }
    let _ = extensions;
    uri.path()
}

/// The part of a served path (see [`served_path`]) that the router behind the layer sees, given
/// the prefix it is mounted under: `None` for a path outside the mount.
pub(crate) fn routed_path<'a>(served: &'a str, mount: &str) -> Option<&'a str> {
    match served.strip_prefix(mount)? {
        "" => Some("/"),
        rest => rest.starts_with('/').then_some(rest),
    }
}

/// The prefix a request's router is mounted under (`/api` under axum's `Router::nest`), from
/// the path served and the path the router sees; empty when they are the same.
pub(crate) fn mount_prefix<'a>(served: &'a str, routed: &str) -> &'a str {
    match served.strip_suffix(routed) {
        Some(prefix) => prefix,
        // `nest("/api", ..)` routes `/api` itself as `/`.
        None if routed == "/" => served,
        None => "",
    }
}

/// The authority the request was sent to: the URI's (HTTP/2, absolute-form) or `Host`.
pub(crate) fn authority(request: &Parts) -> String {
    authority_of(request).into_owned()
}

fn authority_of(request: &Parts) -> Cow<'_, str> {
    fn lower(text: &str) -> Cow<'_, str> {
        match text.bytes().any(|b| b.is_ascii_uppercase()) {
            true => Cow::Owned(text.to_ascii_lowercase()),
            false => Cow::Borrowed(text),
        }
    }
    if let Some(authority) = request.uri.authority() {
        return lower(authority.as_str());
    }
    match request.headers.get(http::header::HOST) {
        None => Cow::Borrowed(""),
        Some(host) => match host.to_str() {
            Ok(host) => lower(host),
            // Not a host name, but still not any other request's: keep its bytes apart, in a
            // form no readable `Host` has.
            Err(_) => Cow::Owned(host.as_bytes().iter().map(|b| format!("%{b:02X}")).collect()),
        },
    }
}

/// Every `Host` line, unless the request has the usual one: a single `Host`, equal (case
/// aside) to the target's authority when it has one. A handler may read `Host`, so when the
/// lines say anything else (another host than the target's, several lines, none beside an
/// HTTP/2 `:authority`), the key holds all of them, and where the keyed authority came from:
/// `http://a/` with `Host: b` and `/` with `Host: a` and `Host: b` share an authority, but not
/// what a handler sees.
fn disagreeing_hosts(request: &Parts) -> Vec<&[u8]> {
    let hosts = request.headers.get_all(header::HOST);
    let mut lines = hosts.iter();
    let (first, more) = (lines.next(), lines.next().is_some());
    let usual = match (request.uri.authority(), first) {
        _ if more => false,
        (Some(authority), Some(host)) => {
            host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes())
        }
        (Some(_), None) => false,
        (None, _) => true,
    };
    if usual {
        return Vec::new();
    }
    let from_target: &[u8] = if request.uri.authority().is_some() { b"target" } else { b"host" };
    std::iter::once(from_target).chain(hosts.iter().map(|host| host.as_bytes())).collect()
}

/// The request headers that the request's `Connection` header names, and that it carries:
/// sorted, without repeats. RFC 9110 section 7.6.1 makes proxies remove them before
/// forwarding, so a handler behind a proxy does not see them, while the layer in front does.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) else { continue };
            if headers.contains_key(&name) && !named.contains(&name) {
                named.push(name);
            }
        }
    }
    named.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    named
}

/// `path` with the escapes of unreserved characters (letters, digits, `-._~`) decoded.
fn decode_unreserved(path: &str) -> Cow<'_, [u8]> {
    let bytes = path.as_bytes();
    let unreserved_at = |i: usize| {
        let hex = bytes.get(i + 1..i + 3)?;
        let byte = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        (byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)).then_some(byte)
    };
    if !bytes.iter().enumerate().any(|(i, &b)| b == b'%' && unreserved_at(i).is_some()) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], unreserved_at(i)) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Upper-cases percent-escapes (`%2f` and `%2F` are the same octet, RFC 3986 section 6.2.2.1),
/// which changes nothing that a router or handler sees. Nothing else is rewritten: decoding or
/// collapsing segments could make two paths that the inner service treats differently share a
/// key.
fn normalize_path(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    // Only escapes: `%zz` is not one, and `%zz` and `%ZZ` may mean different things.
    let is_escape = |w: &[u8]| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit();
    let needs_change = bytes
        .windows(3)
        .any(|w| is_escape(w) && (w[1].is_ascii_lowercase() || w[2].is_ascii_lowercase()));
    if !needs_change {
        return Cow::Borrowed(if path.is_empty() { "/" } else { path });
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + 2 < bytes.len() && is_escape(&bytes[i..i + 3]) {
            out.push(b'%');
            out.push(bytes[i + 1].to_ascii_uppercase());
            out.push(bytes[i + 2].to_ascii_uppercase());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Only ASCII letters changed case, so the bytes are still valid UTF-8.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| path.to_owned()))
}

/// The parameters of `query` whose names, percent-decoded, are in `keep`.
pub(crate) fn kept_params(query: &str, keep: &[String]) -> String {
    let kept = query.split('&').filter(|param| {
        let name = param.split('=').next().unwrap_or("");
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
        keep.iter().any(|k| *k == name)
    });
    kept.collect::<Vec<_>>().join("&")
}

/// The query's parameters sorted by name, stably, so `b=2&a=1` and `a=1&b=2` share a key.
///
/// Handlers read a query as a list of pairs by name, and every parser decodes names its own
/// way: `%61` is `a` to all of them, `+` is a space to form decoders, and some compare names
/// without case. So parameters are ordered by their name decoded every way at once (escapes
/// and `+` decoded, case folded), and parameters whose names are equal that way keep their
/// order: `a=1&%61=2` and `%61=2&a=1`, which a handler reads as `a=[1,2]` and `a=[2,1]`, keep
/// their own keys. Empty parameters (`&&`) are dropped, as every parser skips them.
fn sorted_query(query: &str) -> Cow<'_, str> {
    let mut params: Vec<(Cow<'_, str>, &str)> =
        query.split('&').filter(|p| !p.is_empty()).map(|p| (sort_name(p), p)).collect();
    let sorted = params.windows(2).all(|w| w[0].0 <= w[1].0);
    if sorted && !query.contains("&&") {
        return Cow::Borrowed(query.trim_matches('&'));
    }
    // Stable: parameters of one name keep their order.
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Cow::Owned(params.into_iter().map(|(_, param)| param).collect::<Vec<_>>().join("&"))
}

/// A parameter's name as any parser could read it: escapes and `+` decoded, case folded.
fn sort_name(param: &str) -> Cow<'_, str> {
    let name = param.split('=').next().unwrap_or("");
    let plain =
        name.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase() && b != b'%' && b != b'+');
    if plain {
        return Cow::Borrowed(name);
    }
    let spaced = name.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy();
    Cow::Owned(decoded.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn key(uri: &str) -> String {
        entry_key("c", &parts(uri, &[]), None, &[])
    }

    /// Keys are shared by every instance and outlive deploys: a change to how they are made
    /// misses every entry at once (and, for tag keys, would split evictions between versions).
    /// These are the keys the code in use makes; a change that alters them must bump
    /// `KEY_VERSION`.
    #[test]
    fn keys_stay_what_earlier_releases_made() {
        let user = UserId::digest(b"alice");
        let request = parts(
            "http://Example.com/users/%7ea?b=2&a=1",
            &[("accept-encoding", "gzip, br"), ("connection", "x-trace"), ("x-trace", "1")],
        );
        let vary = [header::ACCEPT_ENCODING, header::ACCEPT];
        assert_eq!(
            entry_key("trc", &request, Some(&user), &vary),
            "trc:v1:e:60c2605c3d39d6f833652864a4dff52da3330e5d9ac17cf28fdb63076faa6dcf"
        );
        // Fields longer than the stack buffer.
        let long = parts(&format!("/{}", "p".repeat(600)), &[]);
        assert_eq!(
            entry_key("trc", &long, None, &[]),
            "trc:v1:e:55cc00d8f8b4f274d20facb93acbebe866d4fc4f43a2a1f458a81620ce280652"
        );
        assert_eq!(uri_tag("/users/%7ea"), "#uri:c8db1693ae23b14b925eb2b9aed8d32a");
        assert_eq!(
            tag_key("trc", &"t".repeat(200)),
            "trc:v1:t:#d62dda89010de02054794ca3ee9361da2b9b6034f5a12e3d4cfa799cf328b8de"
        );
    }

    #[test]
    fn keys_are_namespaced_and_bounded() {
        let k = key(&format!("/{}", "a".repeat(10_000)));
        assert!(k.starts_with("c:v1:e:"));
        assert_eq!(k.len(), "c:v1:e:".len() + 64);
        assert!(!key("/secret-path").contains("secret"));
    }

    #[test]
    fn spellings_that_may_differ_keep_their_keys_apart() {
        assert_eq!(key("/a%2fb"), key("/a%2Fb"), "escape case is no difference");
        assert_ne!(key("/files/a%zz"), key("/files/a%ZZ"), "`%zz` is no escape");
        let with_host = |host: &[u8]| {
            let mut request = parts("/x", &[]);
            request.headers.insert("host", http::HeaderValue::from_bytes(host).unwrap());
            entry_key("c", &request, None, &[])
        };
        assert_ne!(with_host(b"a.example\xff"), with_host(b"b.example\xff"));
        assert_ne!(with_host(b"a.example\xff"), key("/x"));
        assert_eq!(with_host(b"A.example"), with_host(b"a.example"));
    }

    #[test]
    fn uri_tags_cover_every_spelling_of_a_path() {
        assert_eq!(uri_tag("/items/%31"), uri_tag("/items/1"));
        assert_eq!(uri_tag("/%7Euser/a%2db"), uri_tag("/~user/a-b"));
        assert_ne!(uri_tag("/a%2Fb"), uri_tag("/a/b"), "an encoded slash is another path");
        assert_ne!(uri_tag("/items/1"), uri_tag("/items/2"));
    }

    #[test]
    fn query_order_does_not_matter_but_values_do() {
        assert_eq!(key("/a?b=2&a=1"), key("/a?a=1&b=2"));
        assert_eq!(key("/a?a=1&&b=2&"), key("/a?a=1&b=2"));
        assert_ne!(key("/a?a=1&a=2"), key("/a?a=2&a=1"));
        assert_ne!(key("/a?a=1"), key("/a?a=2"));
        assert_ne!(key("/a?a=1"), key("/a"));
    }

    #[test]
    fn paths_are_compared_as_routers_see_them() {
        assert_eq!(key("/a%2fb"), key("/a%2Fb"));
        assert_ne!(key("/a%2Fb"), key("/a/b"));
        assert_ne!(key("/users/1"), key("/users/1/"));
        assert_ne!(key("/users//1"), key("/users/1"));
    }

    #[test]
    fn head_shares_the_get_key_and_other_methods_do_not() {
        let head = http::Request::head("/a").body(()).unwrap().into_parts().0;
        let post = http::Request::post("/a").body(()).unwrap().into_parts().0;
        assert_eq!(entry_key("c", &head, None, &[]), key("/a"));
        assert_ne!(entry_key("c", &post, None, &[]), key("/a"));
    }

    #[test]
    fn users_hosts_and_vary_headers_split_keys() {
        let request = parts("/me", &[]);
        let one = UserId::digest("1");
        let two = UserId::digest("2");
        assert_ne!(
            entry_key("c", &request, Some(&one), &[]),
            entry_key("c", &request, Some(&two), &[])
        );
        assert_ne!(entry_key("c", &request, Some(&one), &[]), entry_key("c", &request, None, &[]));
        assert_ne!(key("http://a.example/x"), key("http://b.example/x"));
        assert_eq!(
            entry_key("c", &parts("/x", &[("host", "A.example")]), None, &[]),
            entry_key("c", &parts("http://a.example/x", &[("host", "a.example")]), None, &[])
        );

        let lang = [HeaderName::from_static("accept-language")];
        let en = parts("/x", &[("accept-language", "en")]);
        let fr = parts("/x", &[("accept-language", "fr")]);
        let none = parts("/x", &[]);
        let empty = parts("/x", &[("accept-language", "")]);
        assert_ne!(entry_key("c", &en, None, &lang), entry_key("c", &fr, None, &lang));
        assert_ne!(entry_key("c", &none, None, &lang), entry_key("c", &empty, None, &lang));
        assert_eq!(entry_key("c", &en, None, &[]), entry_key("c", &fr, None, &[]));
    }

    #[test]
    fn a_mount_prefix_is_what_the_served_path_adds_to_the_routed_one() {
        assert_eq!(mount_prefix("/api/users/7", "/users/7"), "/api");
        assert_eq!(mount_prefix("/users/7", "/users/7"), "");
        assert_eq!(mount_prefix("/api", "/"), "/api");
        assert_eq!(mount_prefix("/odd", "/other"), "");
        assert_eq!(routed_path("/api/users/7", "/api"), Some("/users/7"));
        assert_eq!(routed_path("/api", "/api"), Some("/"));
        assert_eq!(routed_path("/apix/users", "/api"), None);
        assert_eq!(routed_path("/b/users/7", "/a"), None);
        assert_eq!(routed_path("/users/7", ""), Some("/users/7"));
    }

    #[test]
    fn vary_values_are_normalised_where_the_rfcs_allow() {
        let key = |name: &'static str, value: &'static str| {
            entry_key("c", &parts("/x", &[(name, value)]), None, &[HeaderName::from_static(name)])
        };
        assert_eq!(key("accept-encoding", "gzip, br"), key("accept-encoding", "br,GZIP"));
        assert_eq!(key("accept-encoding", "x-gzip;q=0.5"), key("accept-encoding", "gzip;Q=0.500"));
        assert_eq!(key("accept-encoding", "gzip;q=1"), key("accept-encoding", "gzip"));
        assert_eq!(key("accept-encoding", "gzip,,br"), key("accept-encoding", "br, gzip"));
        assert_ne!(key("accept-encoding", "gzip"), key("accept-encoding", "gzip;q=0"));
        assert_ne!(key("accept-encoding", "gzip, x-custom"), key("accept-encoding", "gzip;q=0.5"));
        assert_ne!(
            key("accept-encoding", "gzip;q=0.5, br"),
            key("accept-encoding", "gzip, br;q=0.5")
        );
        assert_ne!(key("accept-encoding", "*"), key("accept-encoding", "identity"));
        assert_ne!(key("accept-encoding", "*"), key("accept-encoding", ""));
        assert_ne!(key("accept-encoding", "gzip;q=2"), key("accept-encoding", "gzip"));
        assert_ne!(key("accept-encoding", "gzip, gzip;q=0"), key("accept-encoding", "gzip"));
        assert_eq!(key("accept-language", "EN-us, fr"), key("accept-language", "en-US,fr"));
        assert_eq!(key("accept-language", "en;Q=0.5"), key("accept-language", "EN ; q=0.5"));
        assert_ne!(key("accept-language", "en"), key("accept-language", "fr"));
        // Members in any order; a range named twice keeps its order.
        assert_eq!(key("accept-language", "fr, en;q=0.5"), key("accept-language", "en;Q=0.5 ,fr"));
        assert_eq!(key("accept-language", "de, en"), key("accept-language", "en,de"));
        assert_ne!(key("accept-language", "en;q=0.5"), key("accept-language", "en"));
        assert_ne!(key("accept-language", "en, en;q=0"), key("accept-language", "en;q=0, en"));
        assert_eq!(key("accept", "Text/HTML;Level=1"), key("accept", "text/html; level=1"));
        assert_ne!(key("accept", "text/html;p=\"A\""), key("accept", "text/html;p=\"a\""));
        assert_ne!(key("accept", "text/html;p=A"), key("accept", "text/html;p=a"));
        assert_eq!(key("x-tenant", " a "), key("x-tenant", "a"));
        assert_ne!(key("x-tenant", "A"), key("x-tenant", "a"), "unknown headers keep their case");
    }

    #[test]
    fn the_target_authority_wins_but_a_disagreeing_host_is_keyed_too() {
        let with = |uri: &str, hosts: &[&str]| {
            let mut request = parts(uri, &[]);
            for host in hosts {
                request.headers.append("host", http::HeaderValue::from_str(host).unwrap());
            }
            entry_key("c", &request, None, &[])
        };
        let plain = with("/a", &["127.0.0.1:1"]);
        assert_eq!(with("http://127.0.0.1:1/a", &["127.0.0.1:1"]), plain);
        // HTTP/2 `:authority` alone: the same host, but a handler reading `Host` sees none.
        assert_ne!(with("http://127.0.0.1:1/a", &[]), plain);
        assert_ne!(with("http://127.0.0.1:1/a", &["evil.example"]), plain);
        assert_ne!(with("/a", &["127.0.0.1:1", "evil.example"]), plain);
        assert_ne!(with("/a", &["127.0.0.1:1", "127.0.0.1:1"]), plain, "two lines, seen as two");
        assert_ne!(
            with("http://127.0.0.1:1/a", &["evil.example"]),
            with("/a", &["127.0.0.1:1", "evil.example"])
        );
    }

    #[test]
    fn headers_named_in_connection_split_keys_when_the_request_carries_them() {
        let key_of = |headers: &[(&str, &str)]| {
            let lang = [HeaderName::from_static("accept-language")];
            entry_key("c", &parts("/x", headers), None, &lang)
        };
        let fr = key_of(&[("accept-language", "fr")]);
        assert_ne!(key_of(&[("accept-language", "fr"), ("connection", "Accept-Language")]), fr);
        assert_eq!(key_of(&[("accept-language", "fr"), ("connection", "keep-alive")]), fr);
        assert_eq!(key_of(&[("accept-language", "fr"), ("connection", "close, x-absent")]), fr);
        assert_eq!(
            key_of(&[
                ("accept-language", "fr"),
                ("x-a", "1"),
                ("connection", "x-a, accept-language")
            ]),
            key_of(&[
                ("accept-language", "fr"),
                ("x-a", "1"),
                ("connection", "Accept-Language,X-A")
            ]),
        );
    }

    #[test]
    fn parameters_a_parser_could_read_as_one_name_keep_their_order() {
        assert_ne!(key("/a?a=1&%61=2"), key("/a?%61=2&a=1"));
        assert_ne!(key("/a?A=1&a=2"), key("/a?a=2&A=1"));
        assert_ne!(key("/a?a+b=1&a%20b=2"), key("/a?a%20b=2&a+b=1"));
        assert_eq!(key("/a?b=1&%61=2"), key("/a?%61=2&b=1"));
        assert_eq!(key("/a?B=1&a=2"), key("/a?a=2&B=1"));
    }

    #[test]
    fn tag_keys_are_bounded() {
        assert_eq!(tag_key("c", "user:1"), "c:v1:t:user:1");
        let long = tag_key("c", &"x".repeat(1000));
        assert!(long.starts_with("c:v1:t:#") && long.len() < 100);
        assert_ne!(tag_key("c", &"x".repeat(1000)), tag_key("c", &"x".repeat(1001)));
    }

    // Property: two requests share an entry key only when they are the same request up to the
    // normalisations this module makes on purpose. Requests are drawn from small alphabets so
    // that equivalent spellings meet often; a small normaliser, written apart from the code
    // above, says which requests are the same.

    use proptest::prelude::*;

    /// One request, as the key sees it.
    #[derive(Debug, Clone)]
    struct Case {
        method: Method,
        /// `Some(host)`: sent as the URI's authority (absolute form) when `absolute`, else as
        /// `Host`. An absolute-form request also carries the same `Host`, upper-cased, as
        /// clients do (one that disagrees is keyed too: see the unit tests).
        host: Option<String>,
        absolute: bool,
        path: String,
        query: Option<String>,
        user: Option<u8>,
        /// The headers the entry varies on: a sorted, deduplicated subset of [`VARY_NAMES`].
        vary: Vec<HeaderName>,
        /// Request headers: values of the [`VARY_NAMES`], in order.
        headers: Vec<(HeaderName, Vec<u8>)>,
    }

    const VARY_NAMES: [&str; 5] =
        ["accept", "accept-charset", "accept-encoding", "accept-language", "x-tenant"];

    impl Case {
        fn parts(&self) -> Parts {
            let query = self.query.as_ref().map_or(String::new(), |q| format!("?{q}"));
            let uri = match (&self.host, self.absolute) {
                (Some(host), true) => format!("http://{host}{}{query}", self.path),
                _ => format!("{}{query}", self.path),
            };
            let mut builder = http::Request::builder().method(self.method.clone()).uri(uri);
            match (&self.host, self.absolute) {
                (Some(host), true) => builder = builder.header("host", host.to_ascii_uppercase()),
                (Some(host), false) => builder = builder.header("host", host.as_str()),
                (None, _) => {}
            }
            for (name, value) in &self.headers {
                let value = http::HeaderValue::from_bytes(value).expect("a valid header value");
                builder = builder.header(name, value);
            }
            builder.body(()).expect("a valid request").into_parts().0
        }

        fn key(&self) -> String {
            let user = self.user.map(|n| UserId::digest(format!("user {n}")));
            KeyParts::new(&self.parts(), user.as_ref()).key("c", &self.parts().headers, &self.vary)
        }

        /// What the key is meant to distinguish, spelt one way.
        fn normalised(&self) -> Normalised {
            let method = match self.method.as_str() {
                "HEAD" => "GET".to_owned(),
                other => other.to_owned(),
            };
            let vary = self
                .vary
                .iter()
                .map(|name| {
                    let values = self.headers.iter().filter(|(n, _)| n == name);
                    (name.as_str().to_owned(), values.map(|(_, v)| norm_value(name, v)).collect())
                })
                .collect();
            Normalised {
                method,
                authority: self.host.as_deref().unwrap_or("").to_ascii_lowercase(),
                path: norm_path(&self.path),
                query: norm_query(self.query.as_deref().unwrap_or("")),
                user: self.user,
                vary,
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Normalised {
        method: String,
        authority: String,
        path: String,
        query: String,
        user: Option<u8>,
        vary: Vec<(String, Vec<Vec<u8>>)>,
    }

    /// Upper-cases the hex digits of well-formed escapes (`%2f` is `%2F`); nothing else.
    fn norm_path(path: &str) -> String {
        let mut out = String::new();
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c != '%' {
                continue;
            }
            let mut ahead = chars.clone();
            if let (Some(a), Some(b)) = (ahead.next(), ahead.next()) {
                if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() {
                    out.push(a.to_ascii_uppercase());
                    out.push(b.to_ascii_uppercase());
                    chars.next();
                    chars.next();
                }
            }
        }
        out
    }

    /// Parameters grouped by name (the part before the first `=`) as the loosest parser reads
    /// it (`+` a space, escapes decoded, case folded), names in order, each name's parameters
    /// in their order; empty parameters dropped.
    fn norm_query(query: &str) -> String {
        let mut by_name: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let name = param.split_once('=').map_or(param, |(name, _)| name).replace('+', " ");
            let name =
                percent_encoding::percent_decode_str(&name).decode_utf8_lossy().to_lowercase();
            by_name.entry(name).or_default().push(param);
        }
        by_name.into_values().flatten().collect::<Vec<_>>().join("&")
    }

    /// A varying header's value as it counts: trimmed; `Accept`, `Accept-Charset` and
    /// `Accept-Language` as their non-empty members, each trimmed around its `;`s and in lower
    /// case (the alphabet has no quoted strings or parameters but `q`), `Accept-Language`'s
    /// sorted unless a range comes twice; `Accept-Encoding` as
    /// its codings in lower case with their weights in thousandths, sorted, or as it is when a
    /// member does not parse or a coding comes twice.
    fn norm_value(name: &HeaderName, value: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(value.to_vec()).unwrap();
        let text = text.trim_matches([' ', '\t']);
        let members =
            || text.split(',').map(|m| m.trim_matches([' ', '\t'])).filter(|m| !m.is_empty());
        let lists = |m: &str| {
            let pieces: Vec<String> =
                m.split(';').map(|p| p.trim_matches([' ', '\t']).to_ascii_lowercase()).collect();
            pieces.join(";")
        };
        match name.as_str() {
            "accept" | "accept-charset" => {
                members().map(lists).collect::<Vec<_>>().join(",").into_bytes()
            }
            // A set of (range, weight) pairs, unless a range comes twice.
            "accept-language" => {
                let mut listed: Vec<String> = members().map(lists).collect();
                let mut ranges: Vec<&str> =
                    listed.iter().map(|m| m.split(';').next().unwrap()).collect();
                ranges.sort();
                ranges.dedup();
                if ranges.len() == listed.len() {
                    listed.sort();
                }
                listed.join(",").into_bytes()
            }
            "accept-encoding" => {
                let mut codings = std::collections::BTreeMap::new();
                for member in members() {
                    let mut pieces = member.split(';').map(|p| p.trim_matches([' ', '\t']));
                    let coding = pieces.next().unwrap().to_ascii_lowercase();
                    let weights: Vec<&str> = pieces.collect();
                    let weight = match weights.as_slice() {
                        [] => Some(1000),
                        [w] => match w.to_ascii_lowercase().as_str() {
                            "q=0" => Some(0),
                            "q=0.5" => Some(500),
                            "q=1" => Some(1000),
                            _ => None,
                        },
                        _ => None,
                    };
                    let token =
                        |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
                    let ok = weight.is_some() && !coding.is_empty() && coding.chars().all(token);
                    if !ok || codings.insert(coding, weight).is_some() {
                        return text.as_bytes().to_vec();
                    }
                }
                let members: Vec<String> =
                    codings.iter().map(|(c, q)| format!("{c};q={}", q.unwrap())).collect();
                members.join(",").into_bytes()
            }
            _ => text.as_bytes().to_vec(),
        }
    }

    fn joined(
        parts: impl Strategy<Value = &'static str>,
        len: std::ops::Range<usize>,
    ) -> impl Strategy<Value = String> {
        prop::collection::vec(parts, len).prop_map(|parts| parts.concat())
    }

    fn case() -> impl Strategy<Value = Case> {
        let method =
            prop::sample::select(vec![Method::GET, Method::HEAD, Method::POST, Method::DELETE]);
        let host = prop::option::of(prop::sample::select(vec![
            "a.example",
            "A.Example",
            "A.EXAMPLE",
            "b.example",
            "a.example:8080",
        ]));
        // Path segments: letters in both cases, well-formed escapes in both cases (`%41` is
        // `A` escaped, which stays distinct from `A`), a non-ASCII letter, and empty
        // segments (`//`). Only well-formed escapes: `normalize_path` also upper-cases the two
        // characters after a `%` that starts no escape (`/a%zz` and `/a%ZZ` share a key), which
        // this property would report. Hosts are readable ASCII: a `Host` that is not counts as
        // no authority at all.
        let segment = joined(
            prop::sample::select(vec![
                "a", "A", "b", "~", "%2f", "%2F", "%41", "%61", "%c3%a9", "%C3%A9", "é",
            ]),
            0..4,
        );
        let path = prop::collection::vec(segment, 1..4).prop_map(|s| format!("/{}", s.join("/")));
        let param = prop::sample::select(vec![
            "a=1", "a=2", "a", "a=", "b=1", "b=%2f", "b=%2F", "B=1", "a=1=2", "",
        ]);
        let query = prop::option::of(prop::collection::vec(param, 0..4).prop_map(|p| p.join("&")));
        let user = prop::option::of(0u8..3);
        let vary = prop::sample::subsequence(VARY_NAMES.to_vec(), 0..=VARY_NAMES.len())
            .prop_map(|names| names.into_iter().map(HeaderName::from_static).collect());
        let value = joined(
            prop::sample::select(vec![
                " ",
                "\t",
                "gzip",
                "GZIP",
                "br",
                "zstd",
                "x-custom",
                "*",
                ";q=0",
                ";q=0.5",
                ";q=1",
                ";q=abc",
                ", ",
                ",",
                "en",
                "EN",
                "-us",
                "fr",
                "text/html",
                "a",
                "A",
                "utf-8",
                "UTF-8",
            ]),
            0..5,
        );
        let header = (prop::sample::select(VARY_NAMES.to_vec()), value)
            .prop_map(|(name, value)| (HeaderName::from_static(name), value.into_bytes()));
        let headers = prop::collection::vec(header, 0..4);
        (method, host, any::<bool>(), path, query, user, vary, headers).prop_map(
            |(method, host, absolute, path, query, user, vary, headers)| Case {
                method,
                host: host.map(str::to_owned),
                absolute,
                path,
                query,
                user,
                vary,
                headers,
            },
        )
    }

    /// A small change to a request: some give the same request spelt another way, others a
    /// different request; the normaliser tells which.
    #[derive(Debug, Clone)]
    enum Edit {
        Method(Method),
        /// Flips the case of the host's letters chosen by the bits.
        HostCase(u32),
        Absolute(bool),
        /// Flips the case of the `n`-th ASCII letter of the path (in an escape or not).
        PathCase(prop::sample::Index),
        /// Swaps two neighbouring query parameters.
        SwapParams(prop::sample::Index),
        /// Adds an empty parameter (`&&`, or a leading or trailing `&`).
        EmptyParam(prop::sample::Index),
        /// `?` with nothing after it, or no `?`.
        EmptyQuery,
        User(Option<u8>),
        ToggleVary(prop::sample::Index),
        /// Spaces or a tab around a header value.
        Pad(prop::sample::Index, &'static str),
        /// Flips the case of a header value's letters.
        ValueCase(prop::sample::Index),
        /// Rotates the comma-separated items of a header value.
        RotateItems(prop::sample::Index),
        SwapHeaders(prop::sample::Index),
        AddHeader(&'static str, &'static str),
        RemoveHeader(prop::sample::Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        use prop::sample::{select, Index};
        prop_oneof![
            select(vec![Method::GET, Method::HEAD, Method::POST]).prop_map(Edit::Method),
            any::<u32>().prop_map(Edit::HostCase),
            any::<bool>().prop_map(Edit::Absolute),
            any::<Index>().prop_map(Edit::PathCase),
            any::<Index>().prop_map(Edit::SwapParams),
            any::<Index>().prop_map(Edit::EmptyParam),
            Just(Edit::EmptyQuery),
            prop::option::of(0u8..3).prop_map(Edit::User),
            any::<Index>().prop_map(Edit::ToggleVary),
            (any::<Index>(), select(vec![" ", "\t", "  "])).prop_map(|(i, p)| Edit::Pad(i, p)),
            any::<Index>().prop_map(Edit::ValueCase),
            any::<Index>().prop_map(Edit::RotateItems),
            any::<Index>().prop_map(Edit::SwapHeaders),
            (select(VARY_NAMES.to_vec()), select(vec!["gzip", "en", "a", ""]))
                .prop_map(|(n, v)| Edit::AddHeader(n, v)),
            any::<Index>().prop_map(Edit::RemoveHeader),
        ]
    }

    fn flip_case(c: u8) -> u8 {
        if c.is_ascii_lowercase() {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        }
    }

    impl Case {
        fn edited(&self, edits: &[Edit]) -> Case {
            let mut case = self.clone();
            for edit in edits {
                match edit {
                    Edit::Method(method) => case.method = method.clone(),
                    Edit::HostCase(bits) => {
                        if let Some(host) = &mut case.host {
                            let flipped =
                                host.bytes().enumerate().map(|(i, c)| match bits >> (i % 32) & 1 {
                                    1 => flip_case(c),
                                    _ => c,
                                });
                            *host = String::from_utf8(flipped.collect()).unwrap();
                        }
                    }
                    Edit::Absolute(absolute) => case.absolute = *absolute,
                    Edit::PathCase(i) => {
                        let letters: Vec<usize> = case
                            .path
                            .bytes()
                            .enumerate()
                            .filter(|(_, c)| c.is_ascii_alphabetic())
                            .map(|(i, _)| i)
                            .collect();
                        if !letters.is_empty() {
                            let at = letters[i.index(letters.len())];
                            let mut bytes = case.path.clone().into_bytes();
                            bytes[at] = flip_case(bytes[at]);
                            case.path = String::from_utf8(bytes).unwrap();
                        }
                    }
                    Edit::SwapParams(i) => {
                        if let Some(query) = &mut case.query {
                            let mut params: Vec<&str> = query.split('&').collect();
                            if params.len() > 1 {
                                let at = i.index(params.len() - 1);
                                params.swap(at, at + 1);
                                *query = params.join("&");
                            }
                        }
                    }
                    Edit::EmptyParam(i) => {
                        let query = case.query.get_or_insert_with(String::new);
                        let mut params: Vec<&str> = query.split('&').collect();
                        params.insert(i.index(params.len() + 1), "");
                        *query = params.join("&");
                    }
                    Edit::EmptyQuery => {
                        case.query = match case.query.as_deref() {
                            None => Some(String::new()),
                            Some("") => None,
                            Some(other) => Some(other.to_owned()),
                        }
                    }
                    Edit::User(user) => case.user = *user,
                    Edit::ToggleVary(i) => {
                        let name = HeaderName::from_static(VARY_NAMES[i.index(VARY_NAMES.len())]);
                        match case.vary.iter().position(|n| *n == name) {
                            Some(at) => {
                                case.vary.remove(at);
                            }
                            None => {
                                case.vary.push(name);
                                case.vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                            }
                        }
                    }
                    Edit::Pad(i, pad) if !case.headers.is_empty() => {
                        let at = i.index(case.headers.len());
                        let value = &mut case.headers[at].1;
                        *value = [pad.as_bytes(), value, pad.as_bytes()].concat();
                    }
                    Edit::ValueCase(i) if !case.headers.is_empty() => {
                        let at = i.index(case.headers.len());
                        let value = &mut case.headers[at].1;
                        value.iter_mut().for_each(|c| *c = flip_case(*c));
                    }
                    Edit::RotateItems(i) if !case.headers.is_empty() => {
                        let at = i.index(case.headers.len());
                        let value = String::from_utf8(case.headers[at].1.clone()).unwrap();
                        let mut items: Vec<&str> = value.split(',').collect();
                        items.rotate_left(1);
                        case.headers[at].1 = items.join(",").into_bytes();
                    }
                    Edit::SwapHeaders(i) if case.headers.len() > 1 => {
                        let at = i.index(case.headers.len() - 1);
                        case.headers.swap(at, at + 1);
                    }
                    Edit::AddHeader(name, value) => case
                        .headers
                        .push((HeaderName::from_static(name), value.as_bytes().to_vec())),
                    Edit::RemoveHeader(i) if !case.headers.is_empty() => {
                        case.headers.remove(i.index(case.headers.len()));
                    }
                    Edit::Pad(..)
                    | Edit::ValueCase(_)
                    | Edit::RotateItems(_)
                    | Edit::SwapHeaders(_)
                    | Edit::RemoveHeader(_) => {}
                }
            }
            case
        }
    }

    /// Checks every pair of `cases`: equal keys exactly when the normalised requests are equal.
    fn check_pairs(cases: &[Case]) -> Result<(), TestCaseError> {
        let keyed: Vec<(String, Normalised)> =
            cases.iter().map(|c| (c.key(), c.normalised())).collect();
        for (i, (key_a, norm_a)) in keyed.iter().enumerate() {
            prop_assert!(key_a.starts_with("c:v1:e:") && key_a.len() == "c:v1:e:".len() + 64);
            for (j, (key_b, norm_b)) in keyed.iter().enumerate().skip(i + 1) {
                if key_a == key_b {
                    prop_assert_eq!(
                        norm_a,
                        norm_b,
                        "two requests share a key: {:?} and {:?}",
                        &cases[i],
                        &cases[j]
                    );
                } else {
                    prop_assert_ne!(
                        norm_a,
                        norm_b,
                        "one request, spelt two ways, got two keys: {:?} and {:?}",
                        &cases[i],
                        &cases[j]
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Unrelated requests from small alphabets.
        #[test]
        fn keys_are_equal_exactly_when_normalised_requests_are(
            cases in prop::collection::vec(case(), 2..12),
        ) {
            check_pairs(&cases)?;
        }

        /// A request and variants of it a few edits away, most of them the same request spelt
        /// another way.
        #[test]
        fn respelt_requests_share_keys_and_others_do_not(
            base in case(),
            edits in prop::collection::vec(prop::collection::vec(edit(), 0..4), 1..8),
        ) {
            let mut cases = vec![base.clone()];
            cases.extend(edits.iter().map(|e| base.edited(e)));
            check_pairs(&cases)?;
        }
    }
}
