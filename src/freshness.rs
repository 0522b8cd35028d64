//! How long a stored response stays fresh (RFC 9111 section 4.2): the upstream's
//! `Cache-Control: s-maxage`, else `max-age`, else `Expires` minus `Date`, else the rule's TTL;
//! capped by the rule's `max_ttl`, less the `Age` the response already had, and spread by the
//! layer's jitter. Header parsing is the `headers` crate's.

use std::time::{Duration, SystemTime};

use headers::{Age, CacheControl, Date, Expires, HeaderMapExt};
use http::header::{HeaderMap, EXPIRES};

use crate::rules::ReadRule;

/// The freshness of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// How long the response is fresh, counted from when it was generated.
    pub(crate) lifetime: Duration,
    /// How old it already was when it reached the layer (its `Age` header).
    pub(crate) age: Duration,
}

impl Freshness {
    /// How long it stays fresh from now on.
    pub(crate) fn remaining(&self) -> Duration {
        self.lifetime.saturating_sub(self.age)
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
    Freshness { lifetime, age }
}

/// What the response itself says about its freshness, if anything.
fn upstream_lifetime(
    headers: &HeaderMap,
    cache_control: Option<&CacheControl>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(lifetime) = cache_control.and_then(|cc| cc.s_max_age().or_else(|| cc.max_age())) {
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
