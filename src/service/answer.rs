//! Answering from the store: whether a looked-up entry may be used, and the response built
//! from it.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CONTENT_LENGTH};
use http::{Response, StatusCode};

use super::body::CacheBody;
use super::decide::Plan;
use super::shared::Shared;
use crate::entry::Entry;
use crate::outcome::{Forwarded, Outcome};
use crate::protocol::conditional::not_modified_headers;
use crate::store::{Lookup, TagVersion};

/// Why a lookup is not a hit, and what a miss needs to store its response.
pub(crate) struct Miss {
    /// The tags' current versions, to record in the entry; `None` when some tag has none yet.
    pub(crate) versions: Option<Vec<TagVersion>>,
    pub(crate) fwd: Forwarded,
}

/// An entry this request may use.
pub(crate) enum Usable {
    Fresh(Entry),
    /// Past its freshness, but within its `stale-while-revalidate` or `stale-if-error` window.
    Stale {
        entry: Entry,
        staleness: Duration,
    },
}

/// Reads a lookup: an entry the request may use, with the tags' current versions, or a miss.
pub(crate) fn examine(
    shared: &Shared,
    plan: &Plan,
    found: Lookup,
    now: u64,
) -> Result<(Usable, Vec<TagVersion>), Miss> {
    // Headers learned from responses' `Vary` are in the key: the URI has entries, just not
    // for this request's values of them.
    let varies = plan.vary.len() > plan.rule.vary.len();
    let fwd = match (found.entry.is_some(), varies) {
        (true, _) => Forwarded::Miss,
        (false, true) => Forwarded::VaryMiss,
        (false, false) => Forwarded::UriMiss,
    };
    let versions: Option<Vec<TagVersion>> = found.versions.into_iter().collect();
    let Some(versions) = versions else {
        return Err(Miss { versions: None, fwd });
    };
    let max_len = shared.settings.max_body_bytes;
    let entry = found
        .entry
        .and_then(|raw| shared.decoded.decode(&plan.key, raw))
        .filter(|decoded| tags_match(&decoded.entry, &plan.tags, &versions))
        .and_then(|decoded| decoded.for_client(plan.accepts_zstd, max_len));
    let Some(entry) = entry else {
        return Err(Miss { versions: Some(versions), fwd });
    };
    if plan.refresh {
        return Err(Miss { versions: Some(versions), fwd: Forwarded::Request });
    }
    match entry.staleness(now) {
        None => Ok((Usable::Fresh(entry), versions)),
        Some(staleness)
            if staleness
                < entry
                    .stale_while_revalidate
                    .max(entry.stale_if_error)
                    .max(entry.revalidate_for) =>
        {
            Ok((Usable::Stale { entry, staleness }, versions))
        }
        Some(_) => Err(Miss { versions: Some(versions), fwd }),
    }
}

/// The response for a stored entry: the entry itself, or `304 Not Modified` when the request's
/// conditions allow.
pub(crate) fn respond_from_entry<B>(
    shared: &Shared,
    plan: &Plan,
    entry: Entry,
    now: u64,
    outcome: Outcome,
) -> Response<CacheBody<B>> {
    let age = HeaderValue::from(entry.age_secs(now));
    if plan.conditions.as_ref().is_some_and(|c| c.not_modified(&entry.headers)) {
        let mut response = Response::new(CacheBody::cached(Bytes::new(), None));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = not_modified_headers(&entry.headers);
        response.headers_mut().insert(AGE, age);
        return shared.mark(response, outcome, plan, None);
    }
    let length = HeaderValue::from(entry.body.len());
    let served = (!plan.head).then_some(entry.body.len());
    let body = if plan.head {
        CacheBody::cached(Bytes::new(), None)
    } else {
        CacheBody::cached(entry.body, entry.trailers)
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
    response.headers_mut().insert(CONTENT_LENGTH, length);
    response.headers_mut().insert(AGE, age);
    shared.mark(response, outcome, plan, served)
}

/// Serves a fresh entry (a hit); `collapsed` says why the request had missed when
/// it found the entry only after waiting for another request to fill it.
pub(crate) fn serve_fresh<B>(
    shared: &Shared,
    plan: &Plan,
    entry: Entry,
    now: u64,
    collapsed: Option<Forwarded>,
) -> Response<CacheBody<B>> {
    let ttl = entry.remaining(now);
    let outcome = match collapsed {
        None => Outcome::Hit { ttl },
        Some(fwd) => Outcome::Collapsed { fwd, ttl },
    };
    respond_from_entry(shared, plan, entry, now, outcome)
}

/// Serves a stale entry; `why` names the RFC 5861 directive that allows it.
pub(crate) fn serve_stale<B>(
    shared: &Shared,
    plan: &Plan,
    entry: Entry,
    staleness: Duration,
    why: &'static str,
) -> Response<CacheBody<B>> {
    respond_from_entry(shared, plan, entry, shared.now_ms(), Outcome::Stale { staleness, why })
}

/// An entry is valid only if it was computed under the tags' current versions: any eviction
/// since then changed a version.
fn tags_match(entry: &Entry, tags: &[String], versions: &[TagVersion]) -> bool {
    entry.tags.len() == tags.len()
        && entry
            .tags
            .iter()
            .zip(tags.iter().zip(versions))
            .all(|((t, v), (tag, version))| t == tag && v == version)
}
