//! Answering from the store: whether a looked-up entry may be used, and the response built
//! from it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AGE, CONTENT_LENGTH, CONTENT_RANGE};
use http::{Response, StatusCode};

use super::body::CacheBody;
use super::decide::Plan;
use super::shared::Shared;
use crate::entry::decoded::Decoded;
use crate::entry::Entry;
use crate::outcome::{Forwarded, Outcome};
use crate::protocol::conditional::not_modified_headers;
use crate::protocol::range::{content_range, RangeAnswer};
use crate::protocol::storable::reusable_by_anyone;
use crate::protocol::value;
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
        /// The entry as stored: `entry` is this client's copy of it (decompressed, or marked
        /// as zstd), while a revalidation asks with the stored validators and stores the stored
        /// form again.
        stored: Arc<Decoded>,
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
    let usable = found
        .entry
        .and_then(|raw| shared.decoded.decode(&plan.key, raw))
        .filter(|decoded| tags_match(&decoded.entry, &plan.tags, &versions))
        // A request with credentials meets only what was stored for anyone (RFC 9111 3.5).
        .filter(|decoded| {
            !plan.credentialed || reusable_by_anyone(&decoded.entry.headers, &plan.rule)
        })
        .and_then(|decoded| Some((decoded.for_client(plan.accepts_zstd, max_len)?, decoded)));
    let Some((entry, stored)) = usable else {
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
            Ok((Usable::Stale { entry, staleness, stored }, versions))
        }
        Some(_) => Err(Miss { versions: Some(versions), fwd }),
    }
}

/// The response for a stored entry: the entry itself, or `304 Not Modified` when the request's
/// conditions allow.
pub(crate) fn respond_from_entry<B>(
    shared: &Shared,
    plan: &Plan,
    mut entry: Entry,
    now: u64,
    outcome: Outcome,
) -> Response<CacheBody<B>> {
    let age = value::number(entry.age_secs(now));
    // Only a response that would be a 2xx answers to conditions (RFC 9110 section 13.2.1).
    let conditions = plan.conditions.as_ref().filter(|_| entry.status.is_success());
    if conditions.is_some_and(|c| c.not_modified(&entry.headers)) {
        let mut response = Response::new(CacheBody::cached(Bytes::new(), None));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = not_modified_headers(&entry.headers);
        response.headers_mut().insert(AGE, age);
        return shared.mark(response, outcome, plan, None);
    }
    if let Some(range) = &plan.range {
        let length = entry.body.len() as u64;
        match range.answer(entry.status, &entry.headers, length) {
            RangeAnswer::Whole => {}
            RangeAnswer::Part(part) => {
                let bytes = entry.body.slice(*part.start() as usize..=*part.end() as usize);
                entry.headers.insert(CONTENT_RANGE, content_range(Some(&part), length));
                (entry.status, entry.body, entry.trailers) =
                    (StatusCode::PARTIAL_CONTENT, bytes, None);
                entry.set_content_length();
            }
            RangeAnswer::Unsatisfiable => {
                let mut response = Response::new(CacheBody::cached(Bytes::new(), None));
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                response.headers_mut().insert(CONTENT_RANGE, content_range(None, length));
                response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
                response.headers_mut().insert(AGE, age);
                return shared.mark(response, outcome, plan, Some(0));
            }
        }
    }
    // Copies from the decoded entries carry their length (see `Decoded::for_client`); a
    // revalidated entry's copy gets it here. A `HEAD` has the `GET`'s.
    if !entry.headers.contains_key(CONTENT_LENGTH) {
        entry.set_content_length();
    }
    let served = (!plan.head).then_some(entry.body.len());
    let body = if plan.head {
        CacheBody::cached(Bytes::new(), None)
    } else {
        CacheBody::cached(entry.body, entry.trailers)
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use http::{HeaderMap, Request};

    use super::*;
    use crate::service::decide::{decide, Decision};
    use crate::{CacheLayer, MemoryStore, Rule};

    const NOW: u64 = 1_000_000_000;

    fn plan_for(rule: Rule) -> (Arc<Shared>, Plan) {
        let layer = CacheLayer::builder(MemoryStore::default()).route("/users", rule).build();
        let shared = Arc::clone(layer.unwrap().shared());
        let (parts, ()) = Request::get("/users").body(()).unwrap().into_parts();
        let Decision::Lookup(plan) = decide(&shared, &parts, false, Instant::now()) else {
            panic!("a GET on a read rule is looked up");
        };
        (shared, plan)
    }

    /// An entry of `plan`, stored `age` ago, fresh for `ttl`, with its tags at `versions`.
    fn stored(plan: &Plan, age: Duration, ttl: Duration, versions: &[TagVersion]) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            trailers: None,
            stored_at_ms: NOW - age.as_millis() as u64,
            ttl,
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
            revalidate_for: Duration::ZERO,
            computed_in: Duration::ZERO,
            tags: plan.tags.iter().cloned().zip(versions.iter().copied()).collect(),
            identity_len: None,
            body: Bytes::from_static(b"[]"),
        }
    }

    fn lookup(entry: Option<&Entry>, versions: &[Option<TagVersion>]) -> Lookup {
        Lookup { entry: entry.map(Entry::encode), versions: versions.to_vec() }
    }

    fn miss(
        result: Result<(Usable, Vec<TagVersion>), Miss>,
    ) -> (Option<Vec<TagVersion>>, Forwarded) {
        match result {
            Ok(_) => panic!("expected a miss"),
            Err(Miss { versions, fwd }) => (versions, fwd),
        }
    }

    #[test]
    fn nothing_stored_is_a_uri_miss_that_carries_the_versions_it_read() {
        let (shared, plan) = plan_for(Rule::get().tag("users"));
        let versions = vec![Some(7); plan.tags.len()];
        let found = examine(&shared, &plan, lookup(None, &versions), NOW);
        assert_eq!(miss(found), (Some(vec![7; plan.tags.len()]), Forwarded::UriMiss));

        // A tag without a version: the miss must make one before it may store.
        let mut unversioned = versions.clone();
        unversioned[0] = None;
        let found = examine(&shared, &plan, lookup(None, &unversioned), NOW);
        assert_eq!(miss(found), (None, Forwarded::UriMiss));
    }

    #[test]
    fn a_fresh_entry_is_used_only_while_its_tag_versions_are_current() {
        let (shared, plan) = plan_for(Rule::get().tag("users"));
        let versions = vec![7; plan.tags.len()];
        let entry = stored(&plan, Duration::from_secs(1), Duration::from_secs(60), &versions);
        let current: Vec<_> = versions.iter().copied().map(Some).collect();
        match examine(&shared, &plan, lookup(Some(&entry), &current), NOW) {
            Ok((Usable::Fresh(served), read)) => {
                assert_eq!(served.body, entry.body);
                assert_eq!(read, versions);
            }
            _ => panic!("a fresh entry with current tag versions is a hit"),
        }

        // `users` was evicted since: its version moved on, and the entry is a plain miss.
        let evicted = vec![Some(8); plan.tags.len()];
        let found = examine(&shared, &plan, lookup(Some(&entry), &evicted), NOW);
        assert_eq!(miss(found), (Some(vec![8; plan.tags.len()]), Forwarded::Miss));
    }

    #[test]
    fn a_stale_entry_is_usable_within_its_window_only() {
        let (shared, plan) = plan_for(Rule::get().tag("users"));
        let versions = vec![7; plan.tags.len()];
        let current: Vec<_> = versions.iter().copied().map(Some).collect();
        let ttl = Duration::from_secs(60);

        let within = stored(&plan, Duration::from_secs(70), ttl, &versions);
        match examine(&shared, &plan, lookup(Some(&within), &current), NOW) {
            Ok((Usable::Stale { staleness, .. }, _)) => {
                assert_eq!(staleness, Duration::from_secs(10))
            }
            _ => panic!("10 s stale, within a 30 s stale-while-revalidate window"),
        }

        let beyond = stored(&plan, Duration::from_secs(100), ttl, &versions);
        let found = examine(&shared, &plan, lookup(Some(&beyond), &current), NOW);
        assert_eq!(miss(found).1, Forwarded::Miss);
    }

    #[test]
    fn bytes_that_are_not_an_entry_are_a_miss() {
        let (shared, plan) = plan_for(Rule::get());
        let found = Lookup {
            entry: Some(Bytes::from_static(b"not an entry")),
            versions: vec![Some(1); plan.tags.len()],
        };
        assert_eq!(miss(examine(&shared, &plan, found, NOW)).1, Forwarded::Miss);
    }
}
