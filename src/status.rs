//! The headers that say what the cache did with a request: `X-Cache` (a de-facto standard,
//! `HIT`, `MISS` or `BYPASS`) and `Cache-Status` (RFC 9211).

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did with one request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// Served from the store; `ttl` is the entry's remaining freshness.
    Hit { ttl: Duration },
    /// Missed (`fwd`), then served the entry another request filled meanwhile, without
    /// calling the inner service: RFC 9211's `collapsed`.
    Collapsed { fwd: Forwarded, ttl: Duration },
    /// Forwarded to the inner service.
    Miss {
        fwd: Forwarded,
        /// The response is being stored (once its body completes within the limit) for `ttl`.
        stored: Option<Duration>,
    },
    /// Served a stale entry, `staleness` past its freshness, as the RFC 5861 directive `why`
    /// allows.
    Stale { staleness: Duration, why: &'static str },
    /// A stale entry was revalidated with the inner service (`304`), and served; stored again
    /// for `ttl` when it may be.
    Revalidated { ttl: Option<Duration> },
    /// The cache stayed out of the way.
    Bypass,
}

/// Why a cacheable request was forwarded, as RFC 9211's `fwd` parameter says it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Forwarded {
    /// Nothing was stored under the request's key.
    UriMiss,
    /// Responses for the URI vary on request headers, and nothing was stored for this
    /// request's values of them.
    VaryMiss,
    /// Something was stored, but could not be used: expired, evicted, unreadable.
    Miss,
    /// The store could not be asked.
    Error,
    /// A usable entry was there, but the request asked for the origin's response.
    Request,
    /// The entry was stale: the inner service was asked for a fresh one.
    Stale,
}

impl Forwarded {
    /// The `Cache-Status` parameters that say it.
    fn param(self) -> &'static str {
        match self {
            Forwarded::UriMiss => "; fwd=uri-miss",
            Forwarded::VaryMiss => "; fwd=vary-miss",
            Forwarded::Miss => "; fwd=miss",
            Forwarded::Error => "; fwd=miss; detail=store-error",
            Forwarded::Request => "; fwd=request",
            Forwarded::Stale => "; fwd=stale",
        }
    }
}

/// Which status headers the layer adds, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct StatusHeaders {
    pub(crate) x_cache: Option<HeaderName>,
    /// The cache's name in `Cache-Status`, or `None` to leave the header out.
    pub(crate) cache_status: Option<String>,
    /// Whether `Cache-Status` names the store key (`key=`), for debugging.
    pub(crate) cache_status_key: bool,
    /// Whether the cache group headers are removed from responses on their way out.
    pub(crate) strip_groups: bool,
}

impl StatusHeaders {
    /// Adds the headers for `outcome` to `headers`. `Cache-Status` is appended, after what
    /// caches nearer the origin wrote (RFC 9211 section 2).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, outcome: Outcome, key: Option<&str>) {
        if self.strip_groups {
            crate::groups::strip(headers);
        }
        if let Some(name) = &self.x_cache {
            let value = match outcome {
                Outcome::Hit { .. } | Outcome::Collapsed { .. } => "HIT",
                Outcome::Miss { .. } => "MISS",
                Outcome::Stale { .. } => "STALE",
                Outcome::Revalidated { .. } => "REVALIDATED",
                Outcome::Bypass => "BYPASS",
            };
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        let Some(cache) = &self.cache_status else {
            return;
        };
        let mut value = cache.clone();
        match outcome {
            Outcome::Hit { ttl } => value.push_str(&format!("; hit; ttl={}", ttl.as_secs())),
            Outcome::Collapsed { fwd, ttl } => {
                value.push_str(fwd.param());
                value.push_str(&format!("; collapsed; ttl={}", ttl.as_secs()));
            }
            Outcome::Miss { fwd, stored } => {
                value.push_str(fwd.param());
                if let Some(ttl) = stored {
                    value.push_str(&format!("; stored; ttl={}", ttl.as_secs()));
                }
            }
            // A negative ttl says how stale a served response is (RFC 9211 section 2.6).
            Outcome::Stale { staleness, why } => {
                value.push_str(&format!("; hit; ttl=-{}; detail={why}", staleness.as_secs()))
            }
            Outcome::Revalidated { ttl } => {
                value.push_str("; fwd=stale; fwd-status=304");
                if let Some(ttl) = ttl {
                    value.push_str(&format!("; stored; ttl={}", ttl.as_secs()));
                }
            }
            Outcome::Bypass => value.push_str("; fwd=bypass"),
        }
        if let (true, Some(key)) = (self.cache_status_key, key) {
            value.push_str(&format!("; key=\"{key}\""));
        }
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.append(CACHE_STATUS, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &StatusHeaders, outcome: Outcome, key: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.append(CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        status.apply(&mut headers, outcome, key);
        headers
    }

    fn both() -> StatusHeaders {
        StatusHeaders {
            x_cache: Some(HeaderName::from_static("x-cache")),
            cache_status: Some("trc".into()),
            cache_status_key: false,
            strip_groups: false,
        }
    }

    #[test]
    fn cache_status_follows_rfc_9211() {
        let cases = [
            (Outcome::Hit { ttl: Duration::from_millis(59_900) }, "HIT", "trc; hit; ttl=59"),
            (
                Outcome::Miss { fwd: Forwarded::UriMiss, stored: Some(Duration::from_secs(60)) },
                "MISS",
                "trc; fwd=uri-miss; stored; ttl=60",
            ),
            (Outcome::Miss { fwd: Forwarded::Miss, stored: None }, "MISS", "trc; fwd=miss"),
            (
                Outcome::Miss { fwd: Forwarded::Error, stored: None },
                "MISS",
                "trc; fwd=miss; detail=store-error",
            ),
            (Outcome::Bypass, "BYPASS", "trc; fwd=bypass"),
            (
                Outcome::Collapsed { fwd: Forwarded::UriMiss, ttl: Duration::from_secs(60) },
                "HIT",
                "trc; fwd=uri-miss; collapsed; ttl=60",
            ),
        ];
        for (outcome, x_cache, cache_status) in cases {
            let headers = headers(&both(), outcome, Some("k"));
            assert_eq!(headers["x-cache"], x_cache);
            let values: Vec<_> = headers.get_all("cache-status").iter().collect();
            assert_eq!(values, ["origin-cache; hit", cache_status], "{outcome:?}");
        }
    }

    #[test]
    fn the_key_is_shown_only_when_asked() {
        let debug = StatusHeaders { cache_status_key: true, ..both() };
        let headers = headers(&debug, Outcome::Bypass, Some("trc:v1:e:ab"));
        assert_eq!(
            headers.get_all("cache-status").iter().next_back().unwrap(),
            "trc; fwd=bypass; key=\"trc:v1:e:ab\""
        );
    }

    #[test]
    fn either_header_can_be_left_out() {
        let none = StatusHeaders { cache_status: None, x_cache: None, ..both() };
        let headers = headers(&none, Outcome::Hit { ttl: Duration::ZERO }, None);
        assert!(headers.get("x-cache").is_none());
        assert_eq!(headers.get_all("cache-status").iter().count(), 1);
    }
}
