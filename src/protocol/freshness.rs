//! How long a stored response stays fresh (RFC 9111 section 4.2): the upstream's
//! `Cache-Control: s-maxage`, else `max-age`, else `Expires` minus `Date`, else the rule's TTL;
//! capped by the rule's `max_ttl`, less the `Age` the response already had, and spread by the
//! layer's jitter. `Cache-Control` is read by [`crate::protocol::cache_control`], the dates and `Age` by
//! the `headers` crate.

use std::time::{Duration, SystemTime};

use headers::{Age, Date, Expires, HeaderMapExt};
use http::header::{HeaderMap, ETAG, EXPIRES, LAST_MODIFIED};

use super::cache_control::{CacheControl, MAX_DELTA_SECS};
use crate::rules::ReadRule;

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

/// The freshness of a response with `headers` under `rule`, where `cache_control` is its
/// parsed `Cache-Control` (`None` when absent or ignored by the rule).
pub(crate) fn freshness(
    headers: &HeaderMap,
    cache_control: Option<&CacheControl>,
    rule: &ReadRule,
    now: SystemTime,
) -> Freshness {
    let lifetime = if rule.upstream_cache_control {
        match upstream_lifetime(headers, cache_control, now) {
            Some(lifetime) => rule.max_ttl.map_or(lifetime, |cap| lifetime.min(cap)),
            None => rule.ttl,
        }
    } else {
        rule.ttl
    };
    let age = headers.typed_get::<Age>().map_or(Duration::ZERO, Duration::from);
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
    Freshness {
        lifetime: delta(lifetime),
        age: delta(age),
        stale_while_revalidate: delta(stale_while_revalidate),
        stale_if_error: delta(stale_if_error),
        revalidate_for: delta(revalidate_for),
    }
}

/// The longest delta a cache need count (RFC 9111 section 1.2.2: 2^31 seconds, some 68
/// years), so that sums of them and their milliseconds never overflow.
const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECS);

fn delta(duration: Duration) -> Duration {
    duration.min(MAX_DELTA)
}

/// What the response itself says about its freshness, if anything.
fn upstream_lifetime(
    headers: &HeaderMap,
    cache_control: Option<&CacheControl>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(lifetime) = cache_control.and_then(|cc| cc.s_maxage().or_else(|| cc.max_age())) {
        return Some(lifetime);
    }
    if !headers.contains_key(EXPIRES) {
        return None;
    }
    // An invalid Expires ("0", say) means already expired (RFC 9111 section 5.3).
    let Some(expires) = headers.typed_get::<Expires>().map(SystemTime::from) else {
        return Some(Duration::ZERO);
    };
    let date = headers.typed_get::<Date>().map_or(now, SystemTime::from);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::header_map as map;

    #[test]
    fn huge_deltas_are_capped_and_never_overflow() {
        let headers = map(&[
            ("cache-control", "max-age=18446744073709551615, stale-if-error=18446744073709551615"),
            ("age", "18446744073709551615"),
            ("etag", "\"x\""),
        ]);
        let cc = CacheControl::parse(&headers).unwrap();
        let rule = crate::rules::ReadRule::for_tests(Duration::MAX);
        let fresh = freshness(&headers, cc.as_ref(), &rule, SystemTime::UNIX_EPOCH);
        assert_eq!(
            (fresh.lifetime, fresh.age, fresh.stale_if_error),
            (MAX_DELTA, MAX_DELTA, MAX_DELTA)
        );
        assert_eq!(fresh.remaining(), Duration::ZERO, "as old as it may live");
        assert_eq!(fresh.keep_for(), MAX_DELTA, "its stale-if-error window, no overflow");
        let fresh = freshness(&map(&[]), None, &rule, SystemTime::UNIX_EPOCH);
        assert_eq!((fresh.lifetime, fresh.keep_for()), (MAX_DELTA, MAX_DELTA));
    }

    #[test]
    fn rfc_5861_directives_and_proxy_revalidate_set_the_stale_windows() {
        let rule = crate::rules::ReadRule::for_tests(Duration::from_secs(10));
        let fresh = |headers: &HeaderMap| {
            let cc = CacheControl::parse(headers).unwrap();
            freshness(headers, cc.as_ref(), &rule, SystemTime::UNIX_EPOCH)
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
}
