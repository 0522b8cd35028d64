//! Entry points for the fuzz targets in `fuzz/`: thin wrappers over the crate's internal
//! parsers and encoders, each checking the invariants that the rest of the crate relies on.
//!
//! Only built with the `fuzzing` feature. Not a public API: it follows the internals and may
//! change with any release.
//!
//! A wrapper never panics on its own account, whatever its input: input the crate could never
//! be given (an invalid header name, an unknown status) is skipped. It panics only when an
//! invariant fails (an `assert!`), or when the crate itself panics.
//!
//! One file per fuzz target's subject: `entries.rs` (the stored form), `keys.rs` (keys and
//! tags), `cache_control.rs` (the parser against the grammar), `responses.rs` (whether and how a
//! response is stored). They may import any folder; nothing imports them.

mod cache_control;
mod entries;
mod keys;
mod responses;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::protocol::guard;
use crate::rules::RuleDefaults;
use crate::user::UserFromHeader;

pub use cache_control::cache_control;
pub use entries::{encoded_entry, entry_decode, EntryFields};
pub use keys::{keys_and_tags, KeyCase};
pub use responses::{response_headers, stored_entry, ResponseCase};

/// A header as raw bytes, name then value; the wrappers skip the ones `http` would reject.
pub type RawHeader = (Vec<u8>, Vec<u8>);

/// The key prefix the wrappers use where the input does not choose one.
const PREFIX: &str = "trc";
/// The largest body a stored entry may decompress to (the layer's default `max_body_bytes`).
const MAX_BODY: usize = 1024 * 1024;
/// The layer's own response header, which entries never keep.
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// A header map of the valid headers among `headers`, in order, the others skipped.
fn lenient_header_map(headers: &[RawHeader]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// The layer's defaults, as the builder sets them.
fn rule_defaults() -> RuleDefaults {
    RuleDefaults {
        ttl: Duration::from_secs(60),
        statuses: vec![StatusCode::OK],
        identify: Arc::new(UserFromHeader::authorization()),
        key_headers: guard::KEYED.map(HeaderName::from_static).to_vec(),
        bypass_headers: guard::BYPASSED.map(HeaderName::from_static).to_vec(),
        cache_control_targets: Arc::new([HeaderName::from_static("cdn-cache-control")]),
    }
}

fn assert_digest_key(key: &str, head: &str, hex_len: usize) {
    let hex = key.strip_prefix(head).unwrap_or_else(|| panic!("key {key:?} lacks {head:?}"));
    assert_eq!(hex.len(), hex_len, "key {key:?} has a digest of another length");
    assert!(
        hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "key {key:?} is not a hex digest"
    );
}
