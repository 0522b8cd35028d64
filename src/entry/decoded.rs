//! Entries decoded once: a hit on bytes this process has decoded before skips decoding them,
//! and decompressing them, again.
//!
//! Decoding an entry (its metadata, its headers) and decompressing its body for a client that
//! does not accept zstd cost more than the rest of a hit from an in-process store put together.
//! Hot entries are read over and over, so the decoded form is kept, by store key, next to the
//! bytes it came from. It is used only when the store returns the very same bytes again, so it
//! can never answer with anything but what the store holds now: it is a memo of a pure
//! function, not a second cache with its own freshness.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::compression::for_client;
use super::Entry;

/// How many headers an answer adds to an entry's: `Age`, `X-Cache`, `Cache-Status`.
const ANSWER_HEADERS: usize = 3;

/// What every decoded entry costs besides its bodies, for the byte budget.
const OVERHEAD: u32 = 512;

/// Decoded entries by store key, bounded by bytes. With a budget of zero, nothing is kept.
///
/// A `quick_cache` rather than a `moka` cache: every hit reads it, and its reads only take a
/// shard's read lock, where moka's also record the access for its eviction policy.
pub(crate) struct DecodedEntries {
    cache: Option<quick_cache::sync::Cache<String, Arc<Decoded>, ByWeight>>,
}

/// Weighs a decoded entry by the bytes it holds (see [`Decoded::weight`]).
#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<String, Arc<Decoded>> for ByWeight {
    fn weight(&self, key: &String, decoded: &Arc<Decoded>) -> u64 {
        u64::from(decoded.weight(key))
    }
}

/// What a typical decoded entry weighs, to size the cache's table.
const TYPICAL_WEIGHT: u64 = 4096;

/// One entry, decoded from `raw`.
pub(crate) struct Decoded {
    raw: Bytes,
    /// The entry as stored: its body compressed when it was stored so.
    pub(crate) entry: Entry,
    /// The entry as each kind of client gets it, made on first use: for clients that do not
    /// accept zstd, then for those that do. `None` when the body does not decompress.
    for_clients: [OnceLock<Option<Entry>>; 2],
}

impl DecodedEntries {
    /// Keeps up to `max_bytes` of decoded entries (stored bytes plus decompressed bodies).
    pub(crate) fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            let items = usize::try_from(max_bytes / TYPICAL_WEIGHT).unwrap_or(usize::MAX).max(16);
            quick_cache::sync::Cache::with_weighter(items, max_bytes, ByWeight)
        });
        Self { cache }
    }

    /// The entry stored as `raw` under `key`: the one decoded before when the store returned
    /// these same bytes then, or decoded now. `None` for bytes that are no entry.
    pub(crate) fn decode(&self, key: &str, raw: Bytes) -> Option<Arc<Decoded>> {
        let Some(cache) = &self.cache else { return Decoded::new(raw).map(Arc::new) };
        if let Some(known) = cache.get(key) {
            // The same buffer (an in-process store's) needs no comparing.
            let same = known.raw.as_ptr() == raw.as_ptr() && known.raw.len() == raw.len();
            if same || known.raw == raw {
                return Some(known);
            }
        }
        let decoded = Arc::new(Decoded::new(raw)?);
        cache.insert(key.to_owned(), Arc::clone(&decoded));
        Some(decoded)
    }
}

impl Decoded {
    fn new(raw: Bytes) -> Option<Self> {
        let entry = Entry::decode(raw.clone())?;
        Some(Self { raw, entry, for_clients: Default::default() })
    }

    /// The entry as a client gets it (see [`for_client`]), made at most once for each kind of
    /// client: decompressed once, and its headers for zstd clients rewritten once, with its
    /// `Content-Length`.
    pub(crate) fn for_client(&self, accepts_zstd: bool, max_len: usize) -> Option<Entry> {
        self.for_clients[usize::from(accepts_zstd)]
            .get_or_init(|| {
                // Its tags were checked on the entry as stored; the served copy, cloned for
                // every hit, needs none, and its head is made here once: its length.
                let entry = Entry { tags: Vec::new(), ..self.entry.clone() };
                let mut entry = for_client(entry, accepts_zstd, max_len)?;
                entry.set_content_length();
                // Room in the header table for what every answer adds (`Age`, the status
                // headers): a clone keeps the table's size, so adding them does not rehash it.
                entry.headers.reserve(ANSWER_HEADERS);
                Some(entry)
            })
            .clone()
    }

    /// The bytes it holds, counting the decompressed body it may come to hold.
    fn weight(&self, key: &str) -> u32 {
        let bytes = self.raw.len() as u64
            + self.entry.identity_len.unwrap_or(0)
            + key.len() as u64
            + u64::from(OVERHEAD);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, StatusCode};

    use super::*;

    fn entry(body: &'static [u8]) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            trailers: None,
            stored_at_ms: 1_700_000_000_000,
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            revalidate_for: Duration::ZERO,
            computed_in: Duration::ZERO,
            tags: vec![("users".into(), 7)],
            identity_len: None,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn the_same_bytes_are_decoded_once_and_other_bytes_again() {
        let entries = DecodedEntries::new(1 << 20);
        let one = entry(b"one").encode();
        let first = entries.decode("k", one.clone()).unwrap();
        // Equal bytes in another buffer, as a Redis reply brings them.
        let again = entries.decode("k", Bytes::copy_from_slice(&one)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let two = entries.decode("k", entry(b"two").encode()).unwrap();
        assert_eq!(two.entry.body, "two");
        assert!(!Arc::ptr_eq(&first, &two));
        assert!(entries.decode("k", Bytes::from_static(b"not an entry")).is_none());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn a_compressed_body_is_decompressed_once_for_clients_without_zstd() {
        use crate::entry::compression::compress;

        let body = b"[{\"id\":1,\"name\":\"User Number 1\"}]".repeat(64).leak();
        let mut stored = entry(body);
        compress(&mut stored, 1024);
        assert!(stored.identity_len.is_some());
        let entries = DecodedEntries::new(1 << 20);
        let decoded = entries.decode("k", stored.encode()).unwrap();
        let plain = decoded.for_client(false, 1 << 20).unwrap();
        assert_eq!(plain.body, &body[..]);
        let again = decoded.for_client(false, 1 << 20).unwrap();
        assert_eq!(plain.body.as_ptr(), again.body.as_ptr(), "decompressed once");
        let zstd = decoded.for_client(true, 1 << 20).unwrap();
        assert_eq!(zstd.body, stored.body);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let entries = DecodedEntries::new(0);
        let raw = entry(b"one").encode();
        let first = entries.decode("k", raw.clone()).unwrap();
        let again = entries.decode("k", raw).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(again.entry.body, "one");
    }
}
