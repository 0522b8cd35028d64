//! How long a stored response stays fresh (RFC 9111 section 4.2): the upstream's
//! `Cache-Control: s-maxage`, else `max-age`, else `Expires` minus `Date`, else the rule's TTL
//! (for an [`http_cache`](crate::Rule::http_cache) rule, a heuristic); capped by the rule's
//! `max_ttl`, less the `Age` the response already had, and spread by the layer's jitter.
//! `Cache-Control` is read by [`crate::protocol::cache_control`], the dates and `Age` by
//! [`crate::protocol::time_fields`].

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, DATE, ETAG, EXPIRES, LAST_MODIFIED};
use http::StatusCode;

use super::cache_control::{CacheControl, MAX_DELTA_SECS};
use super::time_fields;
use crate::rules::{HttpCache, ReadRule};

/// The freshness of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// How long the response is fresh, counted from when it was generated.
    pub(crate) lifetime: Duration,
    /// How old it already was when it reached the layer (its `Age` header).
    pub(crate) age: Duration,
    /// How long past its freshness it may be served while it is refreshed in the background.
    pub(crate) stale_while_revalidate: Duration,
    /// How long past its freshness it may be served when the inner service fails.
    pub(crate) stale_if_error: Duration,
    /// How long past its freshness it may be revalidated: as long again as it was fresh, when
    /// the inner service gave it a validator (`ETag`, `Last-Modified`) to revalidate with.
    pub(crate) revalidate_for: Duration,
}

impl Freshness {
    /// How long it stays fresh from now on.
    pub(crate) fn remaining(&self) -> Duration {
        self.lifetime.saturating_sub(self.age)
    }

    /// How long the store must keep it: while fresh, then while it may still be served stale.
    pub(crate) fn keep_for(&self) -> Duration {
        let stale = self.stale_while_revalidate.max(self.stale_if_error).max(self.revalidate_for);
        self.lifetime.saturating_add(stale).saturating_sub(self.age)
    }

    /// Shortens the lifetime by up to `percent`, at random, so that entries stored together do
    /// not all expire together. Never lengthens it: a response is never served past what it
    /// allowed.
    pub(crate) fn jittered(mut self, percent: u8) -> Self {
        if percent > 0 {
            let cut = fastrand::f64() * f64::from(percent) / 100.0;
            self.lifetime = self.lifetime.mul_f64(1.0 - cut);
        }
        self
    }
}

/// The freshness of a response with `status` and `headers` under `rule`, where
/// `cache_control` is its parsed `Cache-Control` (`None` when absent or ignored by the rule);
/// an error says why it has none worth storing.
pub(crate) fn freshness(
    status: StatusCode,
    headers: &HeaderMap,
    cache_control: Option<&CacheControl>,
    rule: &ReadRule,
    now: SystemTime,
) -> Result<Freshness, &'static str> {
    let cap = |lifetime: Duration| rule.max_ttl.map_or(lifetime, |cap| lifetime.min(cap));
    let lifetime = match (rule.upstream_cache_control, &rule.http_cache) {
        (false, _) => rule.ttl,
        (true, http_cache) => match (explicit_lifetime(headers, cache_control, now), http_cache) {
            (Some(lifetime), _) => cap(lifetime),
            (None, None) => rule.ttl,
            (None, Some(http_cache)) => {
                let public = cache_control.is_some_and(CacheControl::public);
                if !HEURISTICALLY_CACHEABLE.contains(&status) && !public {
                    return Err("no explicit freshness, and the status is not heuristically \
                                cacheable");
                }
                match heuristic_lifetime(headers, http_cache, now) {
                    Some(lifetime) => cap(lifetime),
                    None if !rule.ttl.is_zero() => rule.ttl,
                    None => return Err("no explicit freshness, no Last-Modified and no ttl"),
                }
            }
        },
    };
    let age = time_fields::age(headers).map_err(|_| "Age is not delta-seconds: stale")?;
    let (mut stale_while_revalidate, mut stale_if_error) =
        (rule.stale_while_revalidate, rule.stale_if_error);
    if let Some(cc) = cache_control {
        stale_while_revalidate = cc.stale_while_revalidate().unwrap_or(stale_while_revalidate);
        stale_if_error = cc.stale_if_error().unwrap_or(stale_if_error);
        if cc.must_revalidate() || cc.proxy_revalidate() {
            // RFC 9111 section 5.2.2.2: never served stale.
            (stale_while_revalidate, stale_if_error) = (Duration::ZERO, Duration::ZERO);
        }
    }
    let has_validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let revalidate_for = if has_validator { lifetime } else { Duration::ZERO };
    Ok(Freshness {
        lifetime: delta(lifetime),
        age: delta(age),
        stale_while_revalidate: delta(stale_while_revalidate),
        stale_if_error: delta(stale_if_error),
        revalidate_for: delta(revalidate_for),
    })
}

/// The statuses RFC 9110 section 15.1 makes heuristically cacheable, but `206`, which no rule
/// stores (a part is never stored as the whole).
const HEURISTICALLY_CACHEABLE: [StatusCode; 11] = [
    StatusCode::OK,
    StatusCode::NON_AUTHORITATIVE_INFORMATION,
    StatusCode::NO_CONTENT,
    StatusCode::MULTIPLE_CHOICES,
    StatusCode::MOVED_PERMANENTLY,
    StatusCode::PERMANENT_REDIRECT,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::GONE,
    StatusCode::URI_TOO_LONG,
    StatusCode::NOT_IMPLEMENTED,
];

/// The longest delta a cache need count (RFC 9111 section 1.2.2: 2^31 seconds, some 68
/// years), so that sums of them and their milliseconds never overflow.
const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECS);

fn delta(duration: Duration) -> Duration {
    duration.min(MAX_DELTA)
}

/// What the response itself says about its freshness, if anything: `s-maxage`, else `max-age`,
/// else `Expires` less `Date` (RFC 9111 section 4.2.1), but for a targeted field's directives.
fn explicit_lifetime(
    headers: &HeaderMap,
    cache_control: Option<&CacheControl>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(lifetime) = cache_control.and_then(|cc| cc.s_maxage().or_else(|| cc.max_age())) {
        return Some(lifetime);
    }
    // A targeted field stands in for `Expires` too (RFC 9213 section 2.2).
    if cache_control.is_some_and(CacheControl::is_targeted) {
        return None;
    }
    // An invalid Expires ("0", say) means already expired (RFC 9111 section 5.3).
    let Ok(expires) = time_fields::date_field(headers, &EXPIRES, now)? else {
        return Some(Duration::ZERO);
    };
    let date = date_or(headers, now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The response's `Date`, or `now` when it has none that is valid.
fn date_or(headers: &HeaderMap, now: SystemTime) -> SystemTime {
    time_fields::date_field(headers, &DATE, now).and_then(Result::ok).unwrap_or(now)
}

/// RFC 9111 section 4.2.2: a share of the time since `Last-Modified`, when it has one before
/// its `Date`.
fn heuristic_lifetime(
    headers: &HeaderMap,
    http_cache: &HttpCache,
    now: SystemTime,
) -> Option<Duration> {
    let last_modified = time_fields::date_field(headers, &LAST_MODIFIED, now)?.ok()?;
    let unchanged_for = date_or(headers, now).duration_since(last_modified).ok()?;
    let lifetime = unchanged_for.mul_f64(f64::from(http_cache.heuristic_percent) / 100.0);
    Some(lifetime.min(http_cache.max_heuristic_ttl))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::test_util::header_map as map;

    const OK: StatusCode = StatusCode::OK;

    #[test]
    fn huge_deltas_are_capped_and_never_overflow() {
        let headers = map(&[
            ("cache-control", "max-age=18446744073709551615, stale-if-error=18446744073709551615"),
            ("age", "18446744073709551615"),
            ("etag", "\"x\""),
        ]);
        let cc = CacheControl::parse(&headers).unwrap();
        let rule = crate::rules::ReadRule::for_tests(Duration::MAX);
        let fresh = freshness(OK, &headers, cc.as_ref(), &rule, UNIX_EPOCH).unwrap();
        assert_eq!(
            (fresh.lifetime, fresh.age, fresh.stale_if_error),
            (MAX_DELTA, MAX_DELTA, MAX_DELTA)
        );
        assert_eq!(fresh.remaining(), Duration::ZERO, "as old as it may live");
        assert_eq!(fresh.keep_for(), MAX_DELTA, "its stale-if-error window, no overflow");
        let fresh = freshness(OK, &map(&[]), None, &rule, UNIX_EPOCH).unwrap();
        assert_eq!((fresh.lifetime, fresh.keep_for()), (MAX_DELTA, MAX_DELTA));
    }

    #[test]
    fn rfc_5861_directives_and_proxy_revalidate_set_the_stale_windows() {
        let rule = crate::rules::ReadRule::for_tests(Duration::from_secs(10));
        let fresh = |headers: &HeaderMap| {
            let cc = CacheControl::parse(headers).unwrap();
            freshness(OK, headers, cc.as_ref(), &rule, UNIX_EPOCH).unwrap()
        };
        let windows = fresh(&map(&[
            ("cache-control", "max-age=60, Stale-While-Revalidate=30"),
            ("cache-control", "stale-if-error=\"600\""),
        ]));
        assert_eq!(windows.lifetime, Duration::from_secs(60));
        assert_eq!(windows.stale_while_revalidate, Duration::from_secs(30));
        assert_eq!(windows.stale_if_error, Duration::from_secs(600));
        let revalidated =
            fresh(&map(&[("cache-control", "max-age=60, stale-if-error=600, proxy-revalidate")]));
        assert_eq!(revalidated.stale_if_error, Duration::ZERO, "never served stale");
    }

    #[test]
    fn the_store_keeps_entries_through_their_stale_windows() {
        let fresh = Freshness {
            lifetime: Duration::from_secs(60),
            age: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
            revalidate_for: Duration::from_secs(60),
        };
        assert_eq!(fresh.remaining(), Duration::from_secs(50));
        assert_eq!(fresh.keep_for(), Duration::from_secs(350));
        let jittered = fresh.jittered(50);
        assert!(
            jittered.lifetime >= Duration::from_secs(30)
                && jittered.lifetime <= Duration::from_secs(60)
        );
    }

    /// What an `http_cache` rule with no TTL of its own makes of `headers` on a `status`, at
    /// `DATE`.
    fn shared_cache(status: u16, headers: &[(&'static str, &'static str)]) -> Result<u64, String> {
        let rule = ReadRule::http_cache_for_tests(Duration::ZERO);
        fresh_for(&rule, status, headers)
    }

    fn fresh_for(
        rule: &ReadRule,
        status: u16,
        headers: &[(&'static str, &'static str)],
    ) -> Result<u64, String> {
        let headers = map(headers);
        let cc = CacheControl::parse(&headers).unwrap();
        let status = StatusCode::from_u16(status).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(DATE_SECS);
        let fresh = freshness(status, &headers, cc.as_ref(), rule, now).map_err(str::to_owned)?;
        Ok(fresh.remaining().as_secs())
    }

    /// `Tue, 01 Dec 2026 00:00:00 GMT`.
    const DATE: &str = "Tue, 01 Dec 2026 00:00:00 GMT";
    const DATE_SECS: u64 = 1_796_083_200;

    #[test]
    fn explicit_freshness_is_used_for_any_status_and_beats_heuristics() {
        let modified = ("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT");
        assert_eq!(shared_cache(404, &[("cache-control", "max-age=10")]), Ok(10));
        assert_eq!(shared_cache(503, &[("cache-control", "s-maxage=7, max-age=60")]), Ok(7));
        assert_eq!(shared_cache(200, &[("cache-control", "max-age=0"), modified]), Ok(0));
        let expires = [("date", DATE), ("expires", "Tue, 01 Dec 2026 00:01:00 GMT")];
        assert_eq!(shared_cache(302, &expires), Ok(60));
    }

    #[test]
    fn heuristic_freshness_is_a_share_of_the_time_since_last_modified() {
        // Modified 30 days before its `Date`: 10% is 3 days, capped at 1.
        let month = [("date", DATE), ("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT")];
        assert_eq!(shared_cache(200, &month), Ok(24 * 3600));
        // Modified 5 days before: 12 hours.
        let days = [("date", DATE), ("last-modified", "Thu, 26 Nov 2026 00:00:00 GMT")];
        assert_eq!(shared_cache(404, &days), Ok(12 * 3600));
        let mut rule = ReadRule::http_cache_for_tests(Duration::ZERO);
        rule.http_cache = Some(HttpCache {
            heuristic_percent: 50,
            max_heuristic_ttl: Duration::from_secs(7 * 24 * 3600),
            ..rule.http_cache.clone().unwrap()
        });
        assert_eq!(fresh_for(&rule, 410, &days), Ok(60 * 3600));
        // Less the `Age` it already had.
        let aged = [days[0], days[1], ("age", "3600")];
        assert_eq!(shared_cache(200, &aged), Ok(11 * 3600));
        // A `Last-Modified` after the `Date` says nothing.
        let future = [("date", DATE), ("last-modified", "Wed, 02 Dec 2026 00:00:00 GMT")];
        assert!(shared_cache(200, &future).is_err());
    }

    #[test]
    fn only_heuristically_cacheable_statuses_or_public_ones_get_heuristics() {
        let days = ("last-modified", "Thu, 26 Nov 2026 00:00:00 GMT");
        for status in [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
            assert_eq!(shared_cache(status, &[("date", DATE), days]), Ok(12 * 3600), "{status}");
        }
        for status in [302, 303, 307, 400, 403, 500, 503] {
            assert!(shared_cache(status, &[("date", DATE), days]).is_err(), "{status}");
        }
        let public = [("date", DATE), days, ("cache-control", "public")];
        assert_eq!(shared_cache(302, &public), Ok(12 * 3600));
    }

    #[test]
    fn without_last_modified_the_heuristic_is_the_rules_ttl_if_it_has_one() {
        assert!(shared_cache(200, &[]).is_err(), "no TTL, nothing to go on");
        let rule = ReadRule::http_cache_for_tests(Duration::from_secs(30));
        assert_eq!(fresh_for(&rule, 404, &[]), Ok(30));
        assert!(fresh_for(&rule, 500, &[]).is_err(), "not heuristically cacheable");
    }

    #[test]
    fn expires_in_every_date_form_and_case_counts_and_an_invalid_one_is_expired() {
        let rule = ReadRule::for_tests(Duration::from_secs(600));
        let at =
            |expires: &'static str| fresh_for(&rule, 200, &[("date", DATE), ("expires", expires)]);
        assert_eq!(at("Tue, 01 Dec 2026 00:01:00 GMT"), Ok(60));
        assert_eq!(at("tue, 01 dec 2026 00:01:00 gmt"), Ok(60));
        assert_eq!(at("Tuesday, 01-Dec-26 00:01:00 GMT"), Ok(60));
        assert_eq!(at("Tue Dec  1 00:01:00 2026"), Ok(60));
        assert_eq!(at("0"), Ok(0), "invalid: already expired, not the rule's TTL");
        let two = [
            ("date", DATE),
            ("expires", "Tue, 01 Dec 2026 00:01:00 GMT"),
            ("expires", "Tue, 01 Dec 2026 01:00:00 GMT"),
        ];
        assert_eq!(fresh_for(&rule, 200, &two), Ok(0), "two values: stale");
    }

    #[test]
    fn an_age_that_is_not_delta_seconds_is_stale_and_a_list_counts_by_its_first() {
        let rule = ReadRule::for_tests(Duration::from_secs(600));
        let with_age = |age: &'static [(&'static str, &'static str)]| {
            let mut headers = vec![("cache-control", "max-age=100")];
            headers.extend_from_slice(age);
            fresh_for(&rule, 200, &headers)
        };
        assert_eq!(with_age(&[("age", "10, 50")]), Ok(90));
        assert_eq!(with_age(&[("age", "10"), ("age", "50")]), Ok(90));
        assert!(with_age(&[("age", "old, 0")]).is_err());
        assert!(with_age(&[("age", "-1")]).is_err());
    }
}
