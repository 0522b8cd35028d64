//! Conditional requests on hits (RFC 9110 section 13): `If-None-Match` against the entry's
//! `ETag`, else `If-Modified-Since` against its `Last-Modified`, answered `304 Not Modified`
//! without a body. Parsing and comparison are the `headers` crate's.

use headers::{ETag, HeaderMapExt, IfModifiedSince, IfNoneMatch, LastModified};
use http::header::{self, HeaderMap, HeaderValue};
use std::time::SystemTime;

/// The validators a request carried, kept from the request head for the hit path.
#[derive(Debug, Clone)]
pub(crate) struct Conditions {
    if_none_match: Option<IfNoneMatch>,
    if_modified_since: Option<IfModifiedSince>,
}

impl Conditions {
    /// The request's conditions, if it has any worth checking.
    pub(crate) fn from_request(headers: &HeaderMap) -> Option<Self> {
        let if_none_match = tags_readable(headers, header::IF_NONE_MATCH)
            .then(|| headers.typed_get::<IfNoneMatch>())
            .flatten();
        let if_modified_since = headers.typed_get::<IfModifiedSince>();
        (if_none_match.is_some() || if_modified_since.is_some())
            .then_some(Self { if_none_match, if_modified_since })
    }

    /// Whether a response with `headers` is "not modified" for this request. `If-None-Match`,
    /// when present, decides alone (RFC 9110 section 13.2.2).
    pub(crate) fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(if_none_match) = &self.if_none_match {
            return tags_readable(headers, header::ETAG)
                && headers
                    .typed_get::<ETag>()
                    .is_some_and(|etag| !if_none_match.precondition_passes(&etag));
        }
        match (&self.if_modified_since, headers.typed_get::<LastModified>()) {
            (Some(since), Some(last_modified)) => {
                !since.is_modified(SystemTime::from(last_modified))
            }
            _ => false,
        }
    }
}

/// Whether the entity-tags in `name` hold only the characters RFC 9110 section 8.8.3 allows
/// between their quotes. `HeaderValue` also allows spaces and tabs there, which the `headers`
/// crate's entity-tag parser asserts against in debug builds (a panic any client could cause);
/// such a header is treated as absent, as an invalid one is.
///
/// The lines of the header are read as the `headers` crate reads them, joined by `", "`: a
/// quote left open at the end of a line would take that space into a tag.
fn tags_readable(headers: &HeaderMap, name: header::HeaderName) -> bool {
    let mut quoted = false;
    headers.get_all(name).iter().all(|value| {
        let line_ok = value.as_bytes().iter().all(|&b| {
            if b == b'"' {
                quoted = !quoted;
            }
            !quoted || b == b'"' || (b >= 0x21 && b != 0x7f)
        });
        line_ok && !quoted
    })
}

/// How the layer's own `ETag`s start, so that they are never sent to the inner service, which
/// does not know them.
const OWN_ETAG_PREFIX: &str = "\"trc-";

/// A strong `ETag` for a body the inner service sent without one: 128 bits of its BLAKE3 digest.
pub(crate) fn strong_etag(body: &[u8]) -> HeaderValue {
    let digest = blake3::hash(body);
    let hex: String = digest.as_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::try_from(format!("{OWN_ETAG_PREFIX}{hex}\""))
        .expect("hex digits in quotes are a valid header value")
}

/// Turns a request for a stale entry into a conditional one with the entry's validators from
/// the inner service (`If-None-Match` from its `ETag`, `If-Modified-Since` from its
/// `Last-Modified`), so that it can answer `304` instead of the whole body. `false` when the
/// entry has none.
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    let mut added = false;
    if let Some(etag) = stored.get(header::ETAG) {
        if !etag.as_bytes().starts_with(OWN_ETAG_PREFIX.as_bytes()) {
            request.insert(header::IF_NONE_MATCH, etag.clone());
            added = true;
        }
    }
    if let Some(last_modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
        added = true;
    }
    added
}

/// The headers of a `304` answer: those a `200` would have had that RFC 9110 section 15.4.5 asks
/// for (the validators and the caching headers), nothing about a body.
pub(crate) fn not_modified_headers(headers: &HeaderMap) -> HeaderMap {
    const KEPT: [header::HeaderName; 7] = [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::LAST_MODIFIED,
        header::VARY,
    ];
    let mut kept = HeaderMap::new();
    for name in KEPT {
        for value in headers.get_all(&name) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_with_spaces_or_controls_are_ignored_not_a_panic() {
        let request = crate::test_util::header_map(&[("if-none-match", "\"a b\", W/\"v0*, \"v\"")]);
        let conditions = Conditions::from_request(&request);
        assert!(conditions.is_none(), "an unreadable If-None-Match is no condition");
        let split = [("if-none-match", "\"a"), ("if-none-match", "b\"")];
        assert!(Conditions::from_request(&crate::test_util::header_map(&split)).is_none());
        let request = crate::test_util::header_map(&[("if-none-match", "\"a\", \"b\"")]);
        let conditions = Conditions::from_request(&request).unwrap();
        let stored = crate::test_util::header_map(&[("etag", "\"a\tb\"")]);
        assert!(!conditions.not_modified(&stored));
        let stored = crate::test_util::header_map(&[("etag", "\"b\"")]);
        assert!(conditions.not_modified(&stored));
    }
    use crate::test_util::header_map as map;

    fn not_modified(
        request: &[(&'static str, &'static str)],
        stored: &[(&'static str, &'static str)],
    ) -> bool {
        Conditions::from_request(&map(request)).is_some_and(|c| c.not_modified(&map(stored)))
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let stored = [("etag", "\"v1\"")];
        assert!(not_modified(&[("if-none-match", "\"v1\"")], &stored));
        assert!(not_modified(&[("if-none-match", "W/\"v1\"")], &stored));
        assert!(not_modified(&[("if-none-match", "\"v0\", \"v1\"")], &stored));
        assert!(not_modified(&[("if-none-match", "*")], &stored));
        assert!(!not_modified(&[("if-none-match", "\"v2\"")], &stored));
        assert!(!not_modified(&[("if-none-match", "\"v1\"")], &[]));
    }

    #[test]
    fn if_modified_since_compares_with_last_modified() {
        let stored = [("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")];
        assert!(not_modified(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")], &stored));
        assert!(not_modified(&[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")], &stored));
        assert!(!not_modified(&[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")], &stored));
        assert!(!not_modified(&[("if-modified-since", "not a date")], &stored));
        assert!(!not_modified(&[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")], &[]));
    }

    #[test]
    fn if_none_match_decides_alone() {
        let stored = [("etag", "\"v1\""), ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")];
        let request =
            [("if-none-match", "\"v2\""), ("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")];
        assert!(!not_modified(&request, &stored));
    }

    #[test]
    fn computed_etags_are_strong_and_follow_the_body() {
        let a = strong_etag(b"a");
        assert!(a.to_str().unwrap().starts_with("\"trc-"));
        assert_eq!(a, strong_etag(b"a"));
        assert_ne!(a, strong_etag(b"b"));
        assert!(map(&[]).typed_get::<ETag>().is_none());
    }

    #[test]
    fn only_the_inner_services_validators_are_sent_back_to_it() {
        let mut request = HeaderMap::new();
        assert!(!add_validators(&mut request, &map(&[("etag", "\"trc-00\"")])));
        assert!(request.is_empty());
        let stored = map(&[("etag", "\"v1\""), ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert!(add_validators(&mut request, &stored));
        assert_eq!(request["if-none-match"], "\"v1\"");
        assert_eq!(request["if-modified-since"], "Wed, 21 Oct 2015 07:28:00 GMT");
    }

    #[test]
    fn not_modified_answers_keep_validators_and_caching_headers_only() {
        let full = map(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("vary", "a"),
            ("vary", "b"),
        ]);
        let kept = not_modified_headers(&full);
        assert_eq!(kept.len(), 4);
        assert!(kept.get("content-type").is_none());
    }
}
