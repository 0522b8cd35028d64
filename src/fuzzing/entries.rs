//! Entries: decoding what the store returns, and encoding entries for seeds.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::{RawHeader, MAX_BODY};
use crate::entry::compression::{compress, for_client};
use crate::entry::Entry;

/// Decodes `data` as a stored entry, as a lookup does with whatever the store returns.
///
/// Checks that decoding never panics; that a decoded entry's body is the tail of `data` (served
/// without a copy); that it re-encodes to bytes that decode to the same entry; that the times a
/// hit computes from it never panic; that preparing it for a client (decompressing a `zstd`
/// body, or serving it compressed) keeps its promises; and that compressing it and storing it
/// again gives the same body back.
pub fn entry_decode(data: &[u8]) {
    let Some(entry) = Entry::decode(Bytes::copy_from_slice(data)) else { return };
    assert!(data.ends_with(&entry.body), "the body is not the tail of the stored bytes");
    let again = Entry::decode(entry.encode());
    assert_eq!(again.as_ref(), Some(&entry), "a decoded entry does not re-encode to itself");

    let expires = entry.stored_at_ms.saturating_add(entry.ttl.as_millis() as u64);
    for now in [0, entry.stored_at_ms, expires.saturating_sub(1), expires, u64::MAX] {
        let staleness = entry.staleness(now);
        let remaining = entry.remaining(now);
        assert!(
            staleness.is_none() || remaining.is_zero(),
            "an entry is stale and fresh at once at {now}"
        );
        let _ = entry.age_secs(now);
    }

    check_for_client(&entry);

    // What the background store does with a large body: compress it, then encode it.
    let mut plain = entry.clone();
    plain.identity_len = None;
    plain.headers.remove(header::CONTENT_ENCODING);
    let body = plain.body.clone();
    compress(&mut plain, 0);
    if let Some(identity_len) = plain.identity_len {
        assert_eq!(identity_len, body.len() as u64, "compress recorded the wrong length");
        let stored = Entry::decode(plain.encode()).expect("a compressed entry does not decode");
        let served = for_client(stored, false, body.len())
            .expect("a compressed entry cannot be served to a client without zstd");
        assert_eq!(served.body, body, "decompressing gives another body");
        assert_eq!(served.identity_len, None);
    } else {
        assert_eq!(plain.body, body, "an entry left uncompressed changed its body");
    }
}

/// Checks what [`for_client`] does with a decoded entry, for a client with and without `zstd`.
fn check_for_client(entry: &Entry) {
    let Some(identity_len) = entry.identity_len else {
        for accepts in [false, true] {
            let served = for_client(entry.clone(), accepts, MAX_BODY);
            assert_eq!(served.as_ref(), Some(entry), "an uncompressed entry was changed");
        }
        return;
    };
    let vary_lists_accept_encoding =
        |headers: &HeaderMap| {
            headers.get_all(header::VARY).iter().filter_map(|v| v.to_str().ok()).any(|v| {
                v.split(',').any(|name| name.trim().eq_ignore_ascii_case("accept-encoding"))
            })
        };
    let compressed = for_client(entry.clone(), true, MAX_BODY)
        .expect("a compressed entry is always served to a client that accepts zstd");
    assert_eq!(compressed.body, entry.body, "a zstd client gets another body");
    assert_eq!(
        compressed.headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()),
        Some(&b"zstd"[..])
    );
    assert!(vary_lists_accept_encoding(&compressed.headers), "no Vary: accept-encoding");
    if let Some(plain) = for_client(entry.clone(), false, MAX_BODY) {
        assert_eq!(plain.body.len() as u64, identity_len, "decompressed to another length");
        assert_eq!(plain.identity_len, None);
        assert!(vary_lists_accept_encoding(&plain.headers), "no Vary: accept-encoding");
    }
}

/// The fields of an entry, for [`encoded_entry`].
#[derive(Debug, Clone, Default)]
pub struct EntryFields {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: Vec<RawHeader>,
    /// The trailers, if the body had some.
    pub trailers: Option<Vec<RawHeader>>,
    /// When the entry was stored, in milliseconds since the Unix epoch.
    pub stored_at_ms: u64,
    /// How long it is fresh, in milliseconds.
    pub ttl_ms: u64,
    /// Its `stale-while-revalidate` window, in milliseconds.
    pub stale_while_revalidate_ms: u64,
    /// Its `stale-if-error` window, in milliseconds.
    pub stale_if_error_ms: u64,
    /// How long past its freshness it may be revalidated, in milliseconds.
    pub revalidate_for_ms: u64,
    /// Its tags, with their versions.
    pub tags: Vec<(String, u64)>,
    /// Whether to store the body zstd-compressed, as the layer does past `compress_above`.
    pub compress: bool,
    /// The body, uncompressed.
    pub body: Vec<u8>,
}

/// The stored bytes of the entry `fields` describe (`None` for an invalid status or header),
/// after checking that they decode to that entry. For seed inputs and round trips.
pub fn encoded_entry(fields: &EntryFields) -> Option<Vec<u8>> {
    let mut entry = Entry {
        status: StatusCode::from_u16(fields.status).ok()?,
        headers: header_map(&fields.headers)?,
        trailers: match &fields.trailers {
            Some(trailers) => Some(header_map(trailers)?),
            None => None,
        },
        stored_at_ms: fields.stored_at_ms,
        ttl: Duration::from_millis(fields.ttl_ms),
        stale_while_revalidate: Duration::from_millis(fields.stale_while_revalidate_ms),
        stale_if_error: Duration::from_millis(fields.stale_if_error_ms),
        revalidate_for: Duration::from_millis(fields.revalidate_for_ms),
        computed_in: Duration::ZERO,
        tags: fields.tags.clone(),
        identity_len: None,
        body: Bytes::copy_from_slice(&fields.body),
    };
    if fields.compress {
        compress(&mut entry, 0);
    }
    let encoded = entry.encode();
    assert_eq!(Entry::decode(encoded.clone()), Some(entry), "an entry does not round-trip");
    Some(encoded.to_vec())
}

/// A header map of the valid headers among `headers`, in order; `None` if any is invalid.
fn header_map(headers: &[RawHeader]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(HeaderName::from_bytes(name).ok()?, HeaderValue::from_bytes(value).ok()?);
    }
    Some(map)
}
