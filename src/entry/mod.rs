//! The entry format: what is written to the store and how it is read back, and the keys it is
//! written under.
//!
//! - [`Entry`] (here): the stored form of a response.
//! - [`key`]: entry keys, tag keys and lease keys, from the request.
//! - [`compression`]: zstd bodies, and serving them to clients that do or do not accept it.
//! - [`decoded`]: decoded entries kept for hits on the very same stored bytes.
//!
//! Pure functions of bytes and requests. May import: `store` (its [`TagVersion`]), `protocol`
//! (header grammar), `grpc` and `user` (what a key holds); never `service`.
//!
//! # The stored form
//!
//! An entry is `TRC` plus a format version byte, the length of the metadata (`u32`, little
//! endian), the metadata (postcard: status, headers, trailers, timestamps, tag versions, the
//! body's length) and the body as it was sent. Keeping the body outside the metadata lets a hit serve it as a slice of
//! the bytes the store returned, without a copy. Anything that does not decode (another
//! program's value, a truncated write, an older format) is a miss, never an error.

pub(crate) mod compression;
pub(crate) mod decoded;
pub(crate) mod key;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::store::TagVersion;

const MAGIC: &[u8; 4] = b"TRC\x04";
const HEADER_LEN: usize = MAGIC.len() + 4;

/// A response as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) trailers: Option<HeaderMap>,
    /// When the entry was stored, in milliseconds since the Unix epoch.
    pub(crate) stored_at_ms: u64,
    pub(crate) ttl: Duration,
    /// How long past its freshness the entry may be served while it is refreshed in the
    /// background (RFC 5861 `stale-while-revalidate`).
    pub(crate) stale_while_revalidate: Duration,
    /// How long past its freshness the entry may be served when the inner service fails
    /// (RFC 5861 `stale-if-error`).
    pub(crate) stale_if_error: Duration,
    /// How long past its freshness the entry may be revalidated with the inner service, by its
    /// own validators (`ETag`, `Last-Modified`), instead of fetched again.
    pub(crate) revalidate_for: Duration,
    /// How long making the response took (from the layer's call to the end of its body): what
    /// refreshing it costs, which says how early to refresh it (see
    /// [`refreshes_early`](Self::refreshes_early)).
    pub(crate) computed_in: Duration,
    /// Each tag with the version it had before the response was computed.
    pub(crate) tags: Vec<(String, TagVersion)>,
    /// When the body is stored zstd-compressed, its length uncompressed.
    pub(crate) identity_len: Option<u64>,
    pub(crate) body: Bytes,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    stored_at_ms: u64,
    ttl_ms: u64,
    stale_while_revalidate_ms: u64,
    stale_if_error_ms: u64,
    revalidate_for_ms: u64,
    computed_in_us: u64,
    tags: Vec<(String, TagVersion)>,
    identity_len: Option<u64>,
    /// So that a body cut short (a truncated write, a damaged value) is a miss, not served.
    body_len: u64,
}

impl Entry {
    /// Writes the body's length in `Content-Length`, unless the status is `204`, whose
    /// responses never carry one (RFC 9110 section 8.6).
    pub(crate) fn set_content_length(&mut self) {
        if self.status != http::StatusCode::NO_CONTENT {
            let length = http::HeaderValue::from(self.body.len());
            self.headers.insert(http::header::CONTENT_LENGTH, length);
        }
    }

    /// How long past its freshness the entry is at `now_ms`; `None` while it is fresh.
    pub(crate) fn staleness(&self, now_ms: u64) -> Option<Duration> {
        let expires = self.stored_at_ms.saturating_add(millis(self.ttl));
        (now_ms >= expires).then(|| Duration::from_millis(now_ms - expires))
    }

    /// How long the entry stays fresh after `now_ms`.
    pub(crate) fn remaining(&self, now_ms: u64) -> Duration {
        let expires = self.stored_at_ms.saturating_add(millis(self.ttl));
        Duration::from_millis(expires.saturating_sub(now_ms))
    }

    /// Whether a hit at `now_ms` should refresh the fresh entry ahead of its expiry, by
    /// probabilistic early expiration (XFetch: Vattani, Chierichetti and Lowenstein, "Optimal
    /// Probabilistic Cache Stampede Prevention", VLDB 2015): it expires early when
    /// `computed_in × beta × −ln(draw)` reaches the time it has left, `draw` being uniform in
    /// `(0, 1]`. Under steady traffic some hit refreshes it shortly before it expires, about
    /// as long before as refreshing takes; a key seldom read is seldom refreshed early.
    pub(crate) fn refreshes_early(&self, now_ms: u64, beta: f64, draw: f64) -> bool {
        let reach = self.computed_in.as_secs_f64() * beta;
        let remaining = self.remaining(now_ms).as_secs_f64();
        // Drawn only this close to expiry: −ln(draw) > 40 has odds of 1 in 10^17.
        reach > 0.0 && remaining < reach * 40.0 && reach * -draw.ln() >= remaining
    }

    /// The entry's age in whole seconds, for the `Age` header.
    pub(crate) fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    pub(crate) fn encode(&self) -> Bytes {
        let meta = Meta {
            status: self.status.as_u16(),
            headers: header_pairs(&self.headers),
            trailers: self.trailers.as_ref().map(header_pairs),
            stored_at_ms: self.stored_at_ms,
            ttl_ms: millis(self.ttl),
            stale_while_revalidate_ms: millis(self.stale_while_revalidate),
            stale_if_error_ms: millis(self.stale_if_error),
            revalidate_for_ms: millis(self.revalidate_for),
            computed_in_us: u64::try_from(self.computed_in.as_micros()).unwrap_or(u64::MAX),
            tags: self.tags.clone(),
            identity_len: self.identity_len,
            body_len: self.body.len() as u64,
        };
        let meta =
            postcard::to_allocvec(&meta).expect("serializing owned data into a Vec cannot fail");
        let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len() + self.body.len());
        out.put_slice(MAGIC);
        out.put_u32_le(meta.len() as u32);
        out.put_slice(&meta);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Decodes stored bytes; `None` for anything malformed.
    pub(crate) fn decode(bytes: Bytes) -> Option<Self> {
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return None;
        }
        let meta_len = u32::from_le_bytes(bytes[MAGIC.len()..HEADER_LEN].try_into().ok()?) as usize;
        let body_start = HEADER_LEN.checked_add(meta_len)?;
        let meta: Meta = postcard::from_bytes(bytes.get(HEADER_LEN..body_start)?).ok()?;
        if (bytes.len() - body_start) as u64 != meta.body_len {
            return None;
        }
        Some(Self {
            status: StatusCode::from_u16(meta.status).ok()?,
            headers: header_map(meta.headers)?,
            trailers: match meta.trailers {
                Some(pairs) => Some(header_map(pairs)?),
                None => None,
            },
            stored_at_ms: meta.stored_at_ms,
            ttl: Duration::from_millis(meta.ttl_ms),
            stale_while_revalidate: Duration::from_millis(meta.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(meta.stale_if_error_ms),
            revalidate_for: Duration::from_millis(meta.revalidate_for_ms),
            computed_in: Duration::from_micros(meta.computed_in_us),
            tags: meta.tags,
            identity_len: meta.identity_len,
            body: bytes.slice(body_start..),
        })
    }
}

/// `duration` in whole milliseconds, saturating rather than wrapping past `u64::MAX`.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

fn header_map(pairs: Vec<(String, Vec<u8>)>) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_bytes(&value).ok()?,
        );
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-many", HeaderValue::from_static("1"));
        headers.append("x-many", HeaderValue::from_static("2"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Entry {
            status: StatusCode::OK,
            headers,
            trailers: Some(trailers),
            stored_at_ms: 1_700_000_000_000,
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            revalidate_for: Duration::from_secs(60),
            computed_in: Duration::ZERO,
            tags: vec![("users".into(), 7), ("user:1".into(), u64::MAX)],
            identity_len: None,
            body: Bytes::from_static(b"[{\"id\":1}]"),
        }
    }

    #[test]
    fn entries_round_trip() {
        let entry = sample();
        assert_eq!(Entry::decode(entry.encode()), Some(entry));
    }

    #[test]
    fn the_body_is_not_copied_on_decode() {
        let encoded = sample().encode();
        let decoded = Entry::decode(encoded.clone()).unwrap();
        let start = encoded.len() - decoded.body.len();
        assert_eq!(decoded.body.as_ptr(), encoded[start..].as_ptr());
    }

    #[test]
    fn malformed_bytes_are_rejected_without_panicking() {
        let encoded = sample().encode();
        // Cut anywhere, in the metadata or in the body.
        for len in 0..encoded.len() {
            assert_eq!(Entry::decode(encoded.slice(..len)), None, "truncated to {len}");
        }
        assert_eq!(Entry::decode(Bytes::from_static(b"{\"json\":\"from another program\"}")), None);
        let mut old_version = encoded.to_vec();
        old_version[3] = 0;
        assert_eq!(Entry::decode(old_version.into()), None);
        let mut huge_len = encoded.to_vec();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Entry::decode(huge_len.into()), None);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let mut bytes = encoded.to_vec();
            let at = rng.usize(..bytes.len());
            bytes[at] = rng.u8(..);
            let _ = Entry::decode(bytes.into());
        }
    }

    #[test]
    fn freshness_and_age() {
        let entry = sample();
        assert_eq!(entry.age_secs(entry.stored_at_ms + 2_500), 2);
        assert_eq!(entry.age_secs(entry.stored_at_ms - 10), 0);
        assert_eq!(entry.staleness(entry.stored_at_ms + 59_999), None);
        assert_eq!(entry.staleness(entry.stored_at_ms + 61_000), Some(Duration::from_secs(1)));
    }

    #[test]
    fn entries_refresh_early_only_near_expiry_and_by_what_making_them_cost() {
        let mut entry = sample();
        entry.stored_at_ms = 0;
        entry.ttl = Duration::from_secs(10);
        entry.computed_in = Duration::from_millis(20);
        let near = 10_000 - 1; // a millisecond left
        assert!(entry.refreshes_early(near, 1.0, 0.5), "−ln 0.5 × 20 ms > 1 ms");
        assert!(!entry.refreshes_early(near, 1.0, 0.999), "−ln 0.999 × 20 ms < 1 ms");
        assert!(!entry.refreshes_early(0, 1.0, 1e-300), "nine seconds left is never near");
        assert!(entry.refreshes_early(9_000, 100.0, 0.5), "a larger beta refreshes earlier");
        entry.computed_in = Duration::ZERO;
        assert!(!entry.refreshes_early(near, 1.0, 1e-300), "free to make: expires on time");
    }
}
