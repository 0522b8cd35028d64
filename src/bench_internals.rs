//! Entry points for the criterion benchmarks in `benches/internals.rs`: thin wrappers over the
//! steps of the request path, so that the cost of a hit or a miss can be split into its parts.
//!
//! Only built with the `internals` feature. Not a public API: it follows the internals and may
//! change with any release. (The `fuzzing` module's wrappers check invariants around each call,
//! which would be measured with it; these call the step and nothing else.)
//!
//! A hit, in the layer, is [`Harness::decide`] (route, guards, key derivation, tag keys), then
//! [`Harness::lookup`] (one store round trip), then [`Harness::answer`] (entry decode, tag check,
//! decompression for a client without `zstd`, response headers), then the body, served as it is.
//! A miss adds the inner call and [`Harness::tee`] (the storable check and the copy of the body
//! as it streams), then, in the background, [`StoredEntry::compressed`] and
//! [`StoredEntry::encode`] before the store write.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, Response};
use http_body::Body;

use crate::entry::compression::{compress, for_client};
use crate::entry::key::KeyParts;
use crate::entry::Entry;
use crate::service::answer::{examine, serve_fresh, Usable};
use crate::service::body::CacheBody;
use crate::service::capture::capture_in_line;
use crate::service::decide::{decide, Decision, Plan};
use crate::service::shared::Shared;
use crate::store::{Lookup, MemoryStore, TagVersion};
use crate::{CacheLayer, Rule};

/// The shared state of `CacheLayer::builder(MemoryStore::default()).route(pattern, rule)`.
pub struct Harness {
    shared: Arc<Shared>,
}

/// The plan [`Harness::decide`] made for one cacheable request.
pub struct Planned(Plan);

impl Planned {
    /// The request headers the entry's key covers (the rule's `vary` and the layer's
    /// `key_headers`), for [`entry_key`].
    pub fn vary(&self) -> &[HeaderName] {
        &self.0.vary
    }

    /// The entry's key.
    pub fn key(&self) -> &str {
        &self.0.key
    }
}

impl Harness {
    /// The state for `rule` on `pattern`; panics if the builder would refuse them.
    pub fn new(pattern: &str, rule: Rule) -> Self {
        let layer = CacheLayer::builder(MemoryStore::default())
            .route(pattern, rule)
            .build()
            .expect("a rule the builder takes");
        Self { shared: Arc::clone(layer.shared()) }
    }

    /// What the layer decides for a request before any store call: route match, cache
    /// deception and poisoning guards, key derivation, tags and their keys, the request's
    /// conditions. `None` when the request would not be looked up (bypass, mutation).
    pub fn decide(&self, request: &Parts) -> Option<Planned> {
        match decide(&self.shared, request, false, std::time::Instant::now()) {
            Decision::Lookup(plan) => Some(Planned(plan)),
            Decision::Bypass { .. } | Decision::Mutation { .. } => None,
        }
    }

    /// The store round trip of a lookup: the entry and its tags' versions, under the store
    /// timeout and the circuit breaker. Needs a Tokio runtime with its time driver.
    pub async fn lookup(&self, planned: &Planned) -> Option<Lookup> {
        self.shared.store.lookup(&planned.0.key, &planned.0.tag_keys).await
    }

    /// The current versions of the plan's tags, given one if they had none, as a first miss
    /// does. Needs a Tokio runtime with its time driver.
    pub async fn versions(&self, planned: &Planned) -> Option<Vec<TagVersion>> {
        self.shared.store.ensure_tag_versions(&planned.0.tag_keys).await
    }

    /// The response a hit builds from what a lookup found: entry decode, tag version check,
    /// decompression for a client that does not accept `zstd`, status headers. `None` when the
    /// entry is missing, evicted, unreadable or not fresh.
    pub fn answer<B>(&self, planned: &Planned, found: Lookup) -> Option<Response<CacheBody<B>>> {
        let now = self.shared.now_ms();
        match examine(&self.shared, &planned.0, found, now) {
            Ok((Usable::Fresh(entry), _)) => {
                Some(serve_fresh(&self.shared, &planned.0, entry, now, None))
            }
            _ => None,
        }
    }

    /// A miss's capture, start to end: the storable check on the response's headers, the copy
    /// of the body frame by frame as it goes to the client, and the entry built from it (with
    /// its computed `ETag`). The body must be ready at once (`Full`, `Empty`): it is polled
    /// without a runtime. Returns the bytes the client got, `None` if the response was not
    /// captured. Inside a Tokio runtime the entry is then compressed, encoded and written in the
    /// background, as the layer does; outside one it is dropped, so only the copy is measured.
    pub fn tee<B: Body<Data = Bytes> + Unpin>(
        &self,
        planned: &Planned,
        versions: Vec<TagVersion>,
        response: Response<B>,
    ) -> Option<usize> {
        let request = http::HeaderMap::new();
        let (response, stored) =
            capture_in_line(&self.shared, &planned.0, &request, versions, response, None);
        stored?;
        let mut body = response.into_body();
        let mut cx = Context::from_waker(Waker::noop());
        let mut len = 0;
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => len += frame.data_ref().map_or(0, Bytes::len),
                Poll::Ready(None) => return Some(len),
                Poll::Ready(Some(Err(_))) | Poll::Pending => return None,
            }
        }
    }
}

/// An entry's key, as a lookup derives it: the request digest (`KeyParts::new`: method,
/// authority, path, sorted query, scope), then the values of the `vary` headers.
pub fn entry_key(request: &Parts, prefix: &str, vary: &[HeaderName]) -> String {
    KeyParts::new(request, None).key(prefix, &request.headers, vary)
}

/// A response as the store holds it.
#[derive(Clone)]
pub struct StoredEntry(Entry);

impl StoredEntry {
    /// Decodes stored bytes, as every lookup that finds something does; `None` for anything
    /// malformed. The body is a slice of `bytes`, not a copy.
    pub fn decode(bytes: Bytes) -> Option<Self> {
        Entry::decode(bytes).map(Self)
    }

    /// The bytes the store is given for this entry.
    pub fn encode(&self) -> Bytes {
        self.0.encode()
    }

    /// The entry as the background writer stores it: its body zstd-compressed when at least
    /// `threshold` bytes (the layer's `compress_above`, 1024 by default) and smaller for it.
    pub fn compressed(mut self, threshold: usize) -> Self {
        compress(&mut self.0, threshold);
        self
    }

    /// The entry as a client gets it: a compressed body decompressed for a client that does
    /// not accept `zstd`, kept as it is for one that does. `None` when it does not decompress.
    pub fn for_client(self, accepts_zstd: bool) -> Option<Self> {
        for_client(self.0, accepts_zstd, 1024 * 1024).map(Self)
    }

    /// The body's length as stored (compressed or not).
    pub fn body_len(&self) -> usize {
        self.0.body.len()
    }

    /// Whether the body is stored zstd-compressed.
    pub fn is_compressed(&self) -> bool {
        self.0.identity_len.is_some()
    }
}
