//! Requests the cache must not answer from, or store for, others, whatever the rules say.
//!
//! - **Ambiguous paths** (web cache deception). Servers disagree on what `/me;.css`,
//!   `/me%2f.css` or `/me/.%2e/x` mean: a framework may route them to `/me` while a cache sees a
//!   path of their own. A read whose path has matrix parameters, encoded slashes, backslashes
//!   or dots, dot segments or empty segments is never looked up or stored.
//! - **Unkeyed inputs** (web cache poisoning). Headers that change what a handler answers
//!   without being in the key would let one request store a response for everyone. Those that
//!   proxies set to a few stable values (`X-Forwarded-Host`, ...) are part of every key
//!   ([`KEYED`]); those that rewrite the request (`X-Original-URL`, method overrides) make the
//!   cache step aside ([`BYPASSED`]).
//! - **Method overrides**: a `GET` carrying `X-HTTP-Method-Override: DELETE` is a delete to
//!   frameworks that honour it. Reads that carry one bypass the cache ([`BYPASSED`]); it
//!   invalidates like a `DELETE` only through the headers the application says it honours,
//!   since otherwise any anonymous client could evict entries with a plain `GET`.

use http::{HeaderMap, HeaderName, Method};

/// Request headers that are part of every cached route's key by default: a proxy in front
/// sets them to a few values, so sharing is kept, and a client that sets its own gets entries
/// of its own instead of poisoning everyone's.
pub(crate) const KEYED: [&str; 9] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-host",
    "x-original-host",
];

/// Request headers whose presence keeps the cache out of a read by default: they make some
/// frameworks serve another URL or method than the one the key describes.
pub(crate) const BYPASSED: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether servers could disagree on which resource `path` names.
pub(crate) fn ambiguous_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    let encoded = |i: usize, what: &[&[u8; 2]]| {
        bytes
            .get(i + 1..i + 3)
            .is_some_and(|hex| what.iter().any(|w| hex.eq_ignore_ascii_case(w.as_slice())))
    };
    let odd_byte = bytes.iter().enumerate().any(|(i, &b)| match b {
        b';' | b'\\' => true,
        // Encoded `/`, `\`, `.`, NUL, and `%` itself (double encoding).
        b'%' => encoded(i, &[b"2f", b"5c", b"2e", b"00", b"25"]),
        _ => false,
    });
    if odd_byte {
        return true;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        // An empty last segment is a trailing slash, which routers tell apart.
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return true;
        }
    }
    false
}

/// The unsafe method a safe request asks for through one of the method-override headers
/// `honoured`, if any.
pub(crate) fn overridden_method(
    method: &Method,
    headers: &HeaderMap,
    honoured: &[HeaderName],
) -> Option<Method> {
    if !method.is_safe() {
        return None;
    }
    honoured.iter().filter_map(|name| headers.get(name)).find_map(|value| {
        // Frameworks that honour overrides upper-case them first.
        let method =
            Method::from_bytes(&value.as_bytes().trim_ascii().to_ascii_uppercase()).ok()?;
        (!method.is_safe()).then_some(method)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map;

    #[test]
    fn paths_servers_could_read_differently_are_ambiguous() {
        for path in [
            "/me;.css",
            "/me;jsessionid=1",
            "/me%2f.css",
            "/me%2F.css",
            "/me%5c.css",
            "/me\\.css",
            "/me/.%2e/x",
            "/me/%2E%2E/x",
            "/static/../me",
            "/static/./me",
            "/static/..",
            "//me",
            "/static//me",
            "/me%00.css",
            "/me%252f.css",
        ] {
            assert!(ambiguous_path(path), "{path}");
        }
        for path in
            ["/", "/me", "/me/", "/users/1", "/files/a.b.css", "/a%20b", "/caf%C3%A9", "/..."]
        {
            assert!(!ambiguous_path(path), "{path}");
        }
    }

    #[test]
    fn a_safe_request_may_ask_for_an_unsafe_method_through_a_header_the_app_honours() {
        let honoured = [
            HeaderName::from_static("x-http-method-override"),
            HeaderName::from_static("x-http-method"),
            HeaderName::from_static("x-method-override"),
        ];
        let overridden =
            |method: &Method, headers: &HeaderMap| overridden_method(method, headers, &honoured);
        let headers = header_map(&[("x-http-method-override", " delete ")]);
        assert_eq!(overridden(&Method::GET, &headers), Some(Method::DELETE));
        assert_eq!(overridden(&Method::POST, &headers), None, "already unsafe");
        let headers = header_map(&[("x-method-override", "HEAD"), ("x-http-method", "PUT")]);
        assert_eq!(overridden(&Method::GET, &headers), Some(Method::PUT));
        assert_eq!(overridden(&Method::GET, &header_map(&[])), None);
        assert_eq!(overridden_method(&Method::GET, &headers, &[]), None, "none honoured");
    }
}
