//! Cache-Control: the parser against the RFC 9111 grammar.

use http::header::{self, HeaderMap, HeaderValue};

use crate::protocol::cache_control::grammar;

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
