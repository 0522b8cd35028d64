//! Targeted cache-control fields (RFC 9213): `CDN-Cache-Control`, and fields named for one
//! cache, which carry `Cache-Control`'s directives for the caches they name.
//!
//! A targeted field is a Structured Field Dictionary (RFC 9651, read by `sfv`): `max-age=60`,
//! `no-store`, `private="x-token"`. A cache reads the first field on its target list whose
//! value is valid and not empty, and then ignores `Cache-Control` and `Expires` altogether
//! (section 2.2). A field that is empty or does not parse is as if absent.
//!
//! Directives mean what they mean in `Cache-Control`. Their values are Structured Field items,
//! so delta-seconds are non-negative Integers: `max-age=-1`, `max-age=1.5`, `max-age="60"` and
//! a bare `max-age` are invalid freshness, which the layer does not store. Any argument at all to
//! `no-cache` is a field list. A Dictionary keeps the last of two members with one name.

use http::header::{HeaderMap, HeaderName};

use super::{CacheControl, MAX_DELTA_SECS};

impl CacheControl {
    /// The directives of the first field of `targets` in `headers` that is valid and not
    /// empty; `None` when there is none, and `Cache-Control` applies.
    pub(crate) fn targeted(headers: &HeaderMap, targets: &[HeaderName]) -> Option<CacheControl> {
        targets.iter().find_map(|name| read_field(headers, name))
    }
}

fn read_field(headers: &HeaderMap, name: &HeaderName) -> Option<CacheControl> {
    // Several field lines are one field, joined with commas (RFC 9651 section 4.2).
    let mut joined = Vec::new();
    for line in headers.get_all(name) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    let dictionary: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    if dictionary.is_empty() {
        return None;
    }
    let mut directives = CacheControl { targeted: true, ..CacheControl::default() };
    for (key, member) in &dictionary {
        let argument = match member {
            sfv::ListEntry::Item(item) => match &item.bare_item {
                sfv::BareItem::Boolean(true) => None,
                sfv::BareItem::Integer(n) => {
                    let seconds = u64::try_from(i64::from(*n)).ok();
                    Some(seconds.map(|s| s.min(MAX_DELTA_SECS)))
                }
                _ => Some(None),
            },
            sfv::ListEntry::InnerList(_) => Some(None),
        };
        directives.apply(key.as_str().as_bytes(), argument);
    }
    Some(directives)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_util::header_map as map;

    const CDN: HeaderName = HeaderName::from_static("cdn-cache-control");
    const OWN: HeaderName = HeaderName::from_static("acme-cache-control");

    fn targeted(headers: &[(&'static str, &'static str)]) -> Option<CacheControl> {
        CacheControl::targeted(&map(headers), &[OWN, CDN])
    }

    #[test]
    fn the_first_valid_field_on_the_target_list_is_read() {
        let both = targeted(&[
            ("cdn-cache-control", "max-age=60"),
            ("acme-cache-control", "max-age=600, must-revalidate"),
        ])
        .unwrap();
        assert_eq!(both.max_age(), Some(Duration::from_secs(600)));
        assert!(both.must_revalidate() && both.is_targeted());
        // Invalid or empty: the next one on the list.
        for own in ["max-age=60;", "Max-Age=60", "max-age=(", ""] {
            let next = targeted(&[("acme-cache-control", own), ("cdn-cache-control", "no-store")]);
            assert!(next.is_some_and(|cc| cc.no_store()), "{own:?}");
        }
        assert_eq!(targeted(&[("cache-control", "max-age=60")]), None);
        assert_eq!(targeted(&[("cdn-cache-control", "   ")]), None);
    }

    #[test]
    fn directives_take_structured_values() {
        let cc =
            targeted(&[("cdn-cache-control", "max-age=60, private, stale-if-error=300")]).unwrap();
        assert_eq!(cc.max_age(), Some(Duration::from_secs(60)));
        assert_eq!(cc.stale_if_error(), Some(Duration::from_secs(300)));
        assert!(cc.private() && !cc.no_store());
        for invalid in ["max-age=-1", "max-age=1.5", "max-age=\"60\"", "max-age", "max-age=?0"] {
            let cc = targeted(&[("cdn-cache-control", invalid)]).unwrap();
            assert!(cc.invalid_freshness() && cc.max_age().is_none(), "{invalid:?}");
        }
        let fields = targeted(&[("cdn-cache-control", "no-cache=\"set-cookie\"")]).unwrap();
        assert!(fields.no_cache_fields() && !fields.no_cache());
        // Lines are one dictionary; of two members with one name, the last counts.
        let lines =
            targeted(&[("cdn-cache-control", "max-age=5"), ("cdn-cache-control", "max-age=9")]);
        assert_eq!(lines.unwrap().max_age(), Some(Duration::from_secs(9)));
        let huge = targeted(&[("cdn-cache-control", "max-age=999999999999999")]).unwrap();
        assert_eq!(huge.max_age(), Some(Duration::from_secs(MAX_DELTA_SECS)));
    }
}
