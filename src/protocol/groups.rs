//! Cache groups (RFC 9875): a response names the groups it belongs to in `Cache-Groups`, and a
//! response to an unsafe request names the groups it invalidates in `Cache-Group-Invalidation`
//! (both Structured Field lists of strings, parsed by `sfv`). Fastly-style `Surrogate-Key`
//! (space-separated) can count as `Cache-Groups` too. Groups are tags: `Cache-Groups: "user:42"`
//! is evicted by a rule's `user:{id}` as by `Cache-Group-Invalidation: "user:42"`.
//!
//! This is the parsing half; `service::learn` is the learning half: a group is only as good as
//! its version read *before* the response was computed (guarantee 2), and the lookup cannot
//! know a response's groups before it has seen one. So a response with new groups teaches them
//! (in process, and to other instances through a marker under its key) and is not stored; the
//! next request reads their versions with the entry and stores.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};

pub(crate) const CACHE_GROUPS: HeaderName = HeaderName::from_static("cache-groups");
pub(crate) const CACHE_GROUP_INVALIDATION: HeaderName =
    HeaderName::from_static("cache-group-invalidation");
pub(crate) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

const MARKER: &[u8; 4] = b"TRCG";

/// The groups a response belongs to.
pub(crate) fn of_response(headers: &HeaderMap, surrogate_keys: bool) -> Vec<String> {
    let mut groups = sf_strings(headers, &CACHE_GROUPS);
    if surrogate_keys {
        let keys = headers.get_all(SURROGATE_KEY).iter().filter_map(|v| v.to_str().ok());
        groups.extend(keys.flat_map(str::split_ascii_whitespace).map(str::to_owned));
    }
    tidy(groups)
}

/// The groups a response to an unsafe request invalidates.
pub(crate) fn invalidated_by(headers: &HeaderMap) -> Vec<String> {
    tidy(sf_strings(headers, &CACHE_GROUP_INVALIDATION))
}

/// The string members of a Structured Field list; a field that does not parse is ignored
/// (RFC 9651 section 4.2), and so are members that are not strings.
fn sf_strings(headers: &HeaderMap, name: &HeaderName) -> Vec<String> {
    let mut strings = Vec::new();
    for value in headers.get_all(name) {
        let Ok(list) = sfv::Parser::new(value.as_bytes()).parse::<sfv::List>() else { continue };
        for member in list {
            if let sfv::ListEntry::Item(item) = member {
                if let Some(string) = item.bare_item.as_string() {
                    strings.push(string.as_str().to_owned());
                }
            }
        }
    }
    strings
}

/// Without repeats, empties, and names in the layer's own `#` namespace.
pub(crate) fn tidy(mut groups: Vec<String>) -> Vec<String> {
    groups.retain(|g| !g.is_empty() && !g.starts_with('#'));
    groups.sort();
    groups.dedup();
    groups
}

/// Removes the group headers from a response on its way out.
pub(crate) fn strip(headers: &mut HeaderMap) {
    for name in [CACHE_GROUPS, CACHE_GROUP_INVALIDATION, SURROGATE_KEY] {
        headers.remove(name);
    }
}

/// The stored form of an entry's groups: `TRCG` and the groups, one per line.
pub(crate) fn encode_marker(groups: &[String]) -> Bytes {
    [&MARKER[..], groups.join("\n").as_bytes()].concat().into()
}

/// The groups in a marker, or `None` when `bytes` are not one.
pub(crate) fn decode_marker(bytes: &[u8]) -> Option<Vec<String>> {
    let list = std::str::from_utf8(bytes.strip_prefix(&MARKER[..])?).ok()?;
    Some(list.split('\n').filter(|g| !g.is_empty()).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map as map;

    #[test]
    fn groups_are_structured_field_strings() {
        let headers =
            map(&[("cache-groups", r#""users", "user:42""#), ("cache-groups", r#""users""#)]);
        assert_eq!(of_response(&headers, false), ["user:42", "users"]);
        let odd = map(&[
            ("cache-groups", r##"token, 42, "ok", "#own""##),
            ("cache-groups", "\"unterminated"),
        ]);
        assert_eq!(of_response(&odd, false), ["ok"]);
        let invalidation = map(&[("cache-group-invalidation", r#""users""#)]);
        assert_eq!(invalidated_by(&invalidation), ["users"]);
    }

    #[test]
    fn surrogate_keys_count_when_asked() {
        let headers = map(&[("surrogate-key", "users  user:42")]);
        assert!(of_response(&headers, false).is_empty());
        assert_eq!(of_response(&headers, true), ["user:42", "users"]);
    }

    #[test]
    fn markers_round_trip() {
        let marker = [&MARKER[..], b"a\nb:1"].concat();
        assert_eq!(decode_marker(&marker).unwrap(), ["a", "b:1"]);
        assert_eq!(decode_marker(b"TRCVaccept"), None);
    }
}
