//! Helpers for the unit tests.

use http::{HeaderMap, HeaderValue};

/// A header map from name-value pairs, repeated names appended in order.
pub(crate) fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, HeaderValue::from_static(value));
    }
    headers
}
