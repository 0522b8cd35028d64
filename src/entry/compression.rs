//! Entries stored compressed with zstd: bodies over the layer's threshold take less room in
//! the store, clients that accept `zstd` get the compressed bytes as they are, and the others
//! get them decompressed.
//!
//! Without the `zstd` feature nothing is compressed, and a compressed entry that another
//! instance stored is served as it is to clients that accept `zstd` and is a miss for others.

use http::header::{self, HeaderMap, HeaderValue};

use super::Entry;
#[cfg(feature = "zstd")]
use zstd_contexts::{zstd_compress, zstd_decompress};

const ZSTD: HeaderValue = HeaderValue::from_static("zstd");

#[cfg(feature = "zstd")]
mod zstd_contexts {
    use std::cell::RefCell;

    use zstd::bulk::{Compressor, Decompressor};

    /// zstd's default level: a good ratio at hundreds of MB/s.
    const LEVEL: i32 = 3;

    thread_local! {
        // One context per thread, kept: making a zstd context costs more than (de)compressing
        // a few kilobytes with it (some 12 us against 2 us for a 2 KB JSON body).
        static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
    }

    pub(super) fn zstd_compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
        COMPRESSOR.with_borrow_mut(|context| match context {
            Some(compressor) => compressor.compress(data),
            None => context.insert(Compressor::new(LEVEL)?).compress(data),
        })
    }

    pub(super) fn zstd_decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
        DECOMPRESSOR.with_borrow_mut(|context| match context {
            Some(decompressor) => decompressor.decompress(data, capacity),
            None => context.insert(Decompressor::new()?).decompress(data, capacity),
        })
    }
}

#[cfg(not(feature = "zstd"))]
fn zstd_compress(_: &[u8]) -> std::io::Result<Vec<u8>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

#[cfg(not(feature = "zstd"))]
fn zstd_decompress(_: &[u8], _: usize) -> std::io::Result<Vec<u8>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Compresses the entry's body in place when it is at least `threshold` bytes, not already
/// encoded by the inner service, and smaller once compressed.
pub(crate) fn compress(entry: &mut Entry, threshold: usize) {
    if entry.identity_len.is_some()
        || entry.body.len() < threshold
        || entry.headers.contains_key(header::CONTENT_ENCODING)
    {
        return;
    }
    match zstd_compress(&entry.body) {
        Ok(compressed) if compressed.len() < entry.body.len() => {
            entry.identity_len = Some(entry.body.len() as u64);
            entry.body = compressed.into();
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "zstd could not compress an entry; stored as it is"),
    }
}

/// Whether a request's `Accept-Encoding` accepts `zstd` (present, with a `q` above zero).
pub(crate) fn accepts_zstd(headers: &HeaderMap) -> bool {
    // A list of `coding;q=value` items (RFC 9110 section 12.5.3); only zstd matters here.
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            coding.eq_ignore_ascii_case("zstd") && q.is_some_and(|q| q > 0.0)
        })
}

/// The entry as this client gets it: compressed entries stay compressed for clients that
/// accept zstd (with `Content-Encoding: zstd`, and a strong `ETag` of their own), and are
/// decompressed, up to `max_len` bytes, for the others. Either way the response varies on
/// `Accept-Encoding`. `None` when the stored bytes do not decompress.
pub(crate) fn for_client(mut entry: Entry, accepts_zstd: bool, max_len: usize) -> Option<Entry> {
    let Some(identity_len) = entry.identity_len else { return Some(entry) };
    if !vary_lists_accept_encoding(&entry.headers) {
        entry.headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if accepts_zstd {
        entry.headers.insert(header::CONTENT_ENCODING, ZSTD);
        // A strong validator names one representation (RFC 9110 section 8.8.1).
        if let Some(etag) = entry.headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
            if let Some(opaque) = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
                if let Ok(value) = HeaderValue::try_from(format!("\"{opaque}-zstd\"")) {
                    entry.headers.insert(header::ETAG, value);
                }
            }
        }
        return Some(entry);
    }
    let capacity = usize::try_from(identity_len).ok().filter(|len| *len <= max_len)?;
    let body = zstd_decompress(&entry.body, capacity).ok()?;
    if body.len() as u64 != identity_len {
        return None;
    }
    entry.body = body.into();
    entry.identity_len = None;
    Some(entry)
}

fn vary_lists_accept_encoding(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("accept-encoding"))
}
