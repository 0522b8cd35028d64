//! Responses that `Vary` on request headers the rule did not name.
//!
//! The key of such a response includes those headers' values, but a lookup only knows which
//! headers they are once it has seen a response. So the layer learns them: in process, per
//! base key (the key with the rule's headers only), and for other instances through a small
//! marker stored under the base key. A lookup that finds a marker learns from it and looks up
//! the right key: two round trips, once per base key and process.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

use crate::key::vary_union;
use crate::policy::Plan;
use crate::state::Shared;
use crate::store::Lookup;

const MARKER: &[u8; 4] = b"TRCV";

/// The stored form of learned header names: `TRCV` and the names, comma-separated.
fn encode(names: &[HeaderName]) -> Bytes {
    let list: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
    [&MARKER[..], list.join(",").as_bytes()].concat().into()
}

/// The header names in a marker, or `None` when `bytes` are not one.
fn decode(bytes: &[u8]) -> Option<Vec<HeaderName>> {
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

/// Learns that entries under `plan`'s base key vary on `extra` too: for this process, and,
/// through a marker kept as long as the entry, for the others. Returns all the headers.
pub(crate) fn learn(
    shared: &Arc<Shared>,
    plan: &Plan,
    extra: &[HeaderName],
    keep_for: Duration,
) -> Vec<HeaderName> {
    let vary = vary_union(&plan.vary, extra);
    let learned: Vec<HeaderName> =
        vary.iter().filter(|n| !plan.rule.vary.contains(n)).cloned().collect();
    let marker = encode(&learned);
    shared.learned_vary.insert(plan.base_key.clone(), Arc::new(learned));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let (shared, base_key) = (Arc::clone(shared), plan.base_key.clone());
        runtime.spawn(async move { shared.put(&base_key, marker, keep_for).await });
    }
    vary
}

/// When a lookup found a marker instead of an entry, learns from it and looks up the key it
/// points to (the second round trip). Otherwise returns the lookup as it was.
pub(crate) async fn follow_marker(
    shared: &Shared,
    plan: &mut Plan,
    request: &HeaderMap,
    found: Lookup,
) -> Option<Lookup> {
    let Some(learned) = found.entry.as_deref().and_then(decode) else { return Some(found) };
    plan.vary = vary_union(&plan.rule.vary, &learned);
    plan.key = plan.key_base.key(&shared.settings.key_prefix, request, &plan.vary);
    shared.learned_vary.insert(plan.base_key.clone(), Arc::new(learned));
    shared.lookup(&plan.key, &plan.tag_keys).await
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
