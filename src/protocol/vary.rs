//! The parsing half of responses that `Vary` on request headers the rule did not name: the
//! headers a response adds, and the marker that writes them down for other instances (the
//! learning half is `service::learn`).

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

const MARKER: &[u8; 4] = b"TRCV";

/// The stored form of learned header names: `TRCV` and the names, comma-separated.
pub(crate) fn encode(names: &[HeaderName]) -> Bytes {
    let list: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
    [&MARKER[..], list.join(",").as_bytes()].concat().into()
}

/// The header names in a marker, or `None` when `bytes` are not one.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<HeaderName>> {
    let list = bytes.strip_prefix(&MARKER[..])?;
    list.split(|b| *b == b',').map(|name| HeaderName::from_bytes(name).ok()).collect()
}

/// The headers a response varies on beyond `known`; `None` for an unreadable `Vary`.
pub(crate) fn beyond(response: &HeaderMap, known: &[HeaderName]) -> Option<Vec<HeaderName>> {
    let mut extra = Vec::new();
    for value in response.get_all(http::header::VARY) {
        for name in value.to_str().ok()?.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            if !known.contains(&name) && !extra.contains(&name) {
                extra.push(name);
            }
        }
    }
    Some(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_entries_are_not_markers() {
        let names =
            [HeaderName::from_static("accept-language"), HeaderName::from_static("x-tenant")];
        assert_eq!(decode(&encode(&names)).unwrap(), names);
        assert_eq!(decode(b"TRC\\x02...."), None);
        assert_eq!(decode(b"TRCVbad name"), None);
    }

    #[test]
    fn only_unknown_headers_count_as_beyond() {
        let mut response = HeaderMap::new();
        response.append("vary", "Accept-Encoding, accept-language".parse().unwrap());
        response.append("vary", "X-Tenant".parse().unwrap());
        let known = [HeaderName::from_static("accept-language")];
        let extra = beyond(&response, &known).unwrap();
        assert_eq!(extra, ["accept-encoding", "x-tenant"]);
        response.append("vary", "not a header".parse().unwrap());
        assert_eq!(beyond(&response, &known), None);
    }
}
