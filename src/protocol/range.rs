//! Range requests answered from a stored body (RFC 9110 section 14): one byte range, an
//! open-ended one (`bytes=100-`) or a suffix (`bytes=-100`), and `If-Range`.
//!
//! The `Range` field is read by `http-range-header` (the parser tower-http's `ServeDir` uses).
//! What this module decides:
//!
//! - a `Range` that does not parse, names another unit, or asks for several ranges is ignored,
//!   and the whole stored response is served, as RFC 9110 section 14.2 allows any server to do
//!   (multipart answers are not built);
//! - one satisfiable range is a `206` with `Content-Range`; none satisfiable is a `416` with
//!   `Content-Range: bytes */<length>`;
//! - `If-Range` lets the range through only when it matches the stored response exactly: a
//!   strong entity-tag equal to its `ETag`, or a date equal to its `Last-Modified` (section
//!   13.1.5); otherwise the whole response is served;
//! - only a stored `200` is cut into ranges.

use std::ops::RangeInclusive;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderValue, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use http::StatusCode;
use http_range_header::RangeUnsatisfiableError;

use super::time_fields::http_date;

/// A request's `Range`, with its `If-Range`, as taken from a `GET`.
#[derive(Debug, Clone)]
pub(crate) struct RangeRequest {
    range: HeaderValue,
    if_range: Option<HeaderValue>,
}

/// What to serve of a stored response for a range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// All of it, as if no range was asked for.
    Whole,
    /// These bytes of it, in a `206`.
    Part(RangeInclusive<u64>),
    /// None of its bytes are in the range: a `416`.
    Unsatisfiable,
}

impl RangeRequest {
    /// The range `headers` ask for, if any.
    pub(crate) fn from_request(headers: &HeaderMap) -> Option<Self> {
        let range = headers.get(RANGE)?.clone();
        Some(Self { range, if_range: headers.get(IF_RANGE).cloned() })
    }

    /// What to serve of a stored response with `status`, `headers` and a body of `len` bytes.
    pub(crate) fn answer(&self, status: StatusCode, headers: &HeaderMap, len: u64) -> RangeAnswer {
        if status != StatusCode::OK || !self.if_range_matches(headers) {
            return RangeAnswer::Whole;
        }
        let Ok(text) = self.range.to_str() else { return RangeAnswer::Whole };
        let Ok(parsed) = http_range_header::parse_range_header(text) else {
            return RangeAnswer::Whole;
        };
        match parsed.validate(len).as_deref() {
            Ok([one]) => RangeAnswer::Part(one.clone()),
            Err(RangeUnsatisfiableError::Unsatisfiable) => RangeAnswer::Unsatisfiable,
            // Several ranges, a suffix of an empty body, or ranges the parser will not serve.
            Ok(_) | Err(_) => RangeAnswer::Whole,
        }
    }

    /// Whether `If-Range`, if any, names the stored response exactly.
    fn if_range_matches(&self, stored: &HeaderMap) -> bool {
        let Some(condition) = &self.if_range else { return true };
        let condition = condition.as_bytes().trim_ascii();
        if condition.starts_with(b"\"") || condition.starts_with(b"W/") {
            // A weak tag never matches (strong comparison).
            let etag = stored.get(ETAG).map(|etag| etag.as_bytes().trim_ascii());
            return !condition.starts_with(b"W/") && etag == Some(condition);
        }
        let date = |value: &HeaderValue| http_date(value, SystemTime::now());
        let wanted = HeaderValue::from_bytes(condition).ok().as_ref().and_then(date);
        let last_modified = stored.get(LAST_MODIFIED).and_then(date);
        wanted.is_some() && wanted == last_modified
    }
}

/// The `Content-Range` of `part` of a body of `len` bytes, or of an unsatisfiable range.
pub(crate) fn content_range(part: Option<&RangeInclusive<u64>>, len: u64) -> HeaderValue {
    let text = match part {
        Some(part) => format!("bytes {}-{}/{len}", part.start(), part.end()),
        None => format!("bytes */{len}"),
    };
    HeaderValue::try_from(text).expect("digits, a dash and a slash are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map as map;

    fn answer(
        request: &[(&'static str, &'static str)],
        stored: &[(&'static str, &'static str)],
    ) -> RangeAnswer {
        let request = RangeRequest::from_request(&map(request)).expect("a Range");
        request.answer(StatusCode::OK, &map(stored), 100)
    }

    #[test]
    fn one_range_of_any_form_is_a_part() {
        assert_eq!(answer(&[("range", "bytes=0-9")], &[]), RangeAnswer::Part(0..=9));
        assert_eq!(answer(&[("range", "bytes=90-")], &[]), RangeAnswer::Part(90..=99));
        assert_eq!(answer(&[("range", "bytes=-10")], &[]), RangeAnswer::Part(90..=99));
        assert_eq!(answer(&[("range", "bytes=-500")], &[]), RangeAnswer::Part(0..=99), "all of it");
        assert_eq!(answer(&[("range", "bytes=95-200")], &[]), RangeAnswer::Part(95..=99));
        assert_eq!(answer(&[("range", "Bytes=0-0")], &[]), RangeAnswer::Part(0..=0));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable_and_the_rest_is_served_whole() {
        assert_eq!(answer(&[("range", "bytes=100-")], &[]), RangeAnswer::Unsatisfiable);
        assert_eq!(answer(&[("range", "bytes=200-300")], &[]), RangeAnswer::Unsatisfiable);
        assert_eq!(answer(&[("range", "bytes=-0")], &[]), RangeAnswer::Unsatisfiable);
        // Several ranges, or what does not parse: the whole response.
        for whole in ["bytes=0-1,5-9", "bytes=9-0", "items=0-9", "bytes=x-y", "bytes=+1-2", ""] {
            assert_eq!(answer(&[("range", whole)], &[]), RangeAnswer::Whole, "{whole:?}");
        }
        let request = RangeRequest::from_request(&map(&[("range", "bytes=0-9")])).unwrap();
        let not_found = request.answer(StatusCode::NOT_FOUND, &HeaderMap::new(), 100);
        assert_eq!(not_found, RangeAnswer::Whole, "only a 200 is cut");
    }

    #[test]
    fn if_range_lets_the_range_through_only_for_an_exact_match() {
        let stored = [("etag", "\"v1\""), ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")];
        let with = |if_range: &'static str| {
            answer(&[("range", "bytes=0-9"), ("if-range", if_range)], &stored)
        };
        assert_eq!(with("\"v1\""), RangeAnswer::Part(0..=9));
        assert_eq!(with("\"v2\""), RangeAnswer::Whole);
        assert_eq!(with("W/\"v1\""), RangeAnswer::Whole, "weak tags never match");
        assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT"), RangeAnswer::Part(0..=9));
        assert_eq!(with("Sun, 06 Nov 1994 08:49:38 GMT"), RangeAnswer::Whole, "exactly");
        assert_eq!(with("yesterday"), RangeAnswer::Whole);
        let weak_stored = [("etag", "W/\"v1\"")];
        let got = answer(&[("range", "bytes=0-9"), ("if-range", "W/\"v1\"")], &weak_stored);
        assert_eq!(got, RangeAnswer::Whole);
    }

    #[test]
    fn content_range_says_the_part_and_the_length() {
        assert_eq!(content_range(Some(&(0..=9)), 100), "bytes 0-9/100");
        assert_eq!(content_range(None, 100), "bytes */100");
    }
}
