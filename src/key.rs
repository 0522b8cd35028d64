//! Store keys for entries and tag versions.
//!
//! An entry key is `<prefix>:v1:e:<digest>`, where the digest (BLAKE3, 256 bits, hex) covers,
//! each length-prefixed so that no two different inputs run together:
//!
//! - the method (`HEAD` counts as `GET`: it is answered from the `GET` entry);
//! - the authority (`Host`), lower-cased;
//! - the path, with percent-escapes upper-cased;
//! - the query, with its parameters sorted by name (the order of repeated names is kept);
//! - the scope: shared, or the [`UserId`] digest for per-user routes;
//! - the values of the headers the response varies on (the rule's `vary`, and those learned from
//!   responses' `Vary`), normalised where the RFCs allow.
//!
//! All but the last are hashed once per request into a [`KeyBase`], from which the key for any
//! set of varying headers follows.
//!
//! Keys never hold raw tokens, cookies or paths, and their length is fixed by the prefix.
//! Tag keys are `<prefix>:v1:t:<tag>`, or `<prefix>:v1:t:#<digest>` for tags longer than
//! [`MAX_PLAIN_TAG`] bytes.

use std::borrow::Cow;

use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{HeaderName, Method};

use crate::user::UserId;

/// The version of the key layout; bump it whenever what goes into a key changes.
const KEY_VERSION: &str = "v1";
/// Tags longer than this are digested in their key.
pub(crate) const MAX_PLAIN_TAG: usize = 128;

/// A request's entry key, all but the request headers it varies on: a digest of the rest, from
/// which the key for any set of varying headers follows without hashing the rest again.
#[derive(Clone, Copy)]
pub(crate) struct KeyBase {
    digest: [u8; 32],
}

impl KeyBase {
    pub(crate) fn new(request: &Parts, user: Option<&UserId>) -> Self {
        Self::with_query(request, request.uri.query().unwrap_or(""), user)
    }

    /// The same, for the request with `query` in place of its own.
    pub(crate) fn with_query(request: &Parts, query: &str, user: Option<&UserId>) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key("tower-redis-cache 2026 request");
        let method = if request.method == Method::HEAD { &Method::GET } else { &request.method };
        field(&mut hasher, method.as_str().as_bytes());
        field(&mut hasher, authority(request).as_bytes());
        field(&mut hasher, normalize_path(request.uri.path()).as_bytes());
        field(&mut hasher, sorted_query(query).as_bytes());
        match user {
            None => field(&mut hasher, b"shared"),
            Some(user) => {
                field(&mut hasher, b"user");
                field(&mut hasher, user.as_bytes());
            }
        }
        Self { digest: *hasher.finalize().as_bytes() }
    }

    /// The entry key when the response varies on the request headers `vary` (sorted), whose
    /// values are taken from `headers`, normalised as [`vary_value`] says.
    pub(crate) fn key(&self, prefix: &str, headers: &HeaderMap, vary: &[HeaderName]) -> String {
        let mut hasher = blake3::Hasher::new_derive_key("tower-redis-cache 2026 entry key");
        hasher.update(&self.digest);
        for name in vary {
            field(&mut hasher, name.as_str().as_bytes());
            let values = headers.get_all(name);
            field(&mut hasher, &(values.iter().count() as u64).to_le_bytes());
            for value in values {
                field(&mut hasher, &vary_value(name, value.as_bytes()));
            }
        }
        format!("{prefix}:{KEY_VERSION}:e:{}", hasher.finalize().to_hex())
    }
}

/// Length-prefixed, so that no two different inputs run together.
fn field(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// A request header value as it counts in a key: trimmed; for the content negotiation
/// headers, whose tokens are case-insensitive, lower-cased without spaces; and for
/// `Accept-Encoding`, reduced to the sorted codings a stack produces, since clients spell the
/// same choice in many ways.
fn vary_value<'a>(name: &HeaderName, value: &'a [u8]) -> Cow<'a, [u8]> {
    const CODINGS: [&str; 4] = ["br", "deflate", "gzip", "zstd"];
    let value = value.trim_ascii();
    if *name == header::ACCEPT_ENCODING {
        let text = String::from_utf8_lossy(value).to_ascii_lowercase();
        let accepted: Vec<&str> = CODINGS
            .into_iter()
            .filter(|coding| {
                text.split(',').any(|item| {
                    let mut parts = item.split(';').map(str::trim);
                    parts.next() == Some(coding)
                        && parts.all(|p| {
                            p.strip_prefix("q=")
                                .is_none_or(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0))
                        })
                })
            })
            .collect();
        return Cow::Owned(accepted.join(",").into_bytes());
    }
    let negotiation = [header::ACCEPT, header::ACCEPT_LANGUAGE, header::ACCEPT_CHARSET];
    if negotiation.contains(name) {
        let folded: Vec<u8> =
            value.iter().filter(|b| !b.is_ascii_whitespace()).map(u8::to_ascii_lowercase).collect();
        return Cow::Owned(folded);
    }
    Cow::Borrowed(value)
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
    KeyBase::new(request, user).key(prefix, &request.headers, vary)
}

/// The store key holding a tag's version.
pub(crate) fn tag_key(prefix: &str, tag: &str) -> String {
    if tag.len() <= MAX_PLAIN_TAG {
        format!("{prefix}:{KEY_VERSION}:t:{tag}")
    } else {
        let digest = blake3::derive_key("tower-redis-cache 2026 tag key", tag.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{prefix}:{KEY_VERSION}:t:#{hex}")
    }
}

/// The tag every entry of a path carries, so that an unsafe request to that path (or naming it
/// in `Location` / `Content-Location`) invalidates it (RFC 9111 section 4.4). It covers every
/// query of the path: invalidating more than the exact URI is never stale.
pub(crate) fn uri_tag(path: &str) -> String {
    let digest =
        blake3::derive_key("tower-redis-cache 2026 uri tag", normalize_path(path).as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("#uri:{hex}")
}

/// The authority the request was sent to: the URI's (HTTP/2, absolute-form) or `Host`.
pub(crate) fn authority(request: &Parts) -> String {
    let raw = match request.uri.authority() {
        Some(authority) => authority.as_str(),
        None => request.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
    };
    raw.to_ascii_lowercase()
}

/// Upper-cases percent-escapes (`%2f` and `%2F` are the same octet, RFC 3986 section 6.2.2.1),
/// which changes nothing that a router or handler sees. Nothing else is rewritten: decoding or
/// collapsing segments could make two paths that the inner service treats differently share a
/// key.
fn normalize_path(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let needs_change = bytes
        .windows(3)
        .any(|w| w[0] == b'%' && (w[1].is_ascii_lowercase() || w[2].is_ascii_lowercase()));
    if !needs_change {
        return Cow::Borrowed(if path.is_empty() { "/" } else { path });
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
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

/// The query's parameters sorted by name, stably, so `b=2&a=1` and `a=1&b=2` share a key while
/// `a=1&a=2` and `a=2&a=1` (which a handler may read differently) do not.
fn sorted_query(query: &str) -> Cow<'_, str> {
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    fn name(param: &str) -> &str {
        param.split('=').next().unwrap_or("")
    }
    if params.windows(2).all(|w| name(w[0]) <= name(w[1])) && !query.contains("&&") {
        return Cow::Borrowed(query.trim_matches('&'));
    }
    params.sort_by(|a, b| name(a).cmp(name(b)));
    Cow::Owned(params.join("&"))
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

    #[test]
    fn keys_are_namespaced_and_bounded() {
        let k = key(&format!("/{}", "a".repeat(10_000)));
        assert!(k.starts_with("c:v1:e:"));
        assert_eq!(k.len(), "c:v1:e:".len() + 64);
        assert!(!key("/secret-path").contains("secret"));
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
            key("http://a.example/x")
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
    fn vary_values_are_normalised_where_the_rfcs_allow() {
        let key = |name: &'static str, value: &'static str| {
            entry_key("c", &parts("/x", &[(name, value)]), None, &[HeaderName::from_static(name)])
        };
        assert_eq!(key("accept-encoding", "gzip, br"), key("accept-encoding", "br,GZIP"));
        assert_eq!(key("accept-encoding", "gzip, x-custom"), key("accept-encoding", "gzip;q=0.5"));
        assert_ne!(key("accept-encoding", "gzip"), key("accept-encoding", "gzip;q=0"));
        assert_eq!(key("accept-language", "EN-us, fr"), key("accept-language", "en-US,fr"));
        assert_ne!(key("accept-language", "en"), key("accept-language", "fr"));
        assert_eq!(key("x-tenant", " a "), key("x-tenant", "a"));
        assert_ne!(key("x-tenant", "A"), key("x-tenant", "a"), "unknown headers keep their case");
    }

    #[test]
    fn tag_keys_are_bounded() {
        assert_eq!(tag_key("c", "user:1"), "c:v1:t:user:1");
        let long = tag_key("c", &"x".repeat(1000));
        assert!(long.starts_with("c:v1:t:#") && long.len() < 100);
        assert_ne!(tag_key("c", &"x".repeat(1000)), tag_key("c", &"x".repeat(1001)));
    }
}
