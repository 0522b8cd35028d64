//! The headers that say what the cache did with a request: `X-Cache` (a de-facto standard,
//! `HIT`, `MISS` or `BYPASS`) and `Cache-Status` (RFC 9211).

use std::fmt::Write;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::groups;
use super::value::ValueText;
use crate::outcome::{Forwarded, Outcome};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The `Cache-Status` parameters that say why a request was forwarded.
fn fwd_param(fwd: Forwarded) -> &'static str {
    match fwd {
        Forwarded::UriMiss => "; fwd=uri-miss",
        Forwarded::VaryMiss => "; fwd=vary-miss",
        Forwarded::Miss => "; fwd=miss",
        Forwarded::Error => "; fwd=miss; detail=store-error",
        Forwarded::Request => "; fwd=request",
        Forwarded::Stale => "; fwd=stale",
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
    /// The targeted cache-control fields removed from responses on their way out.
    pub(crate) strip_targeted: Vec<HeaderName>,
}

impl StatusHeaders {
    /// Adds the headers for `outcome` to `headers`. `Cache-Status` is appended, after what
    /// caches nearer the origin wrote (RFC 9211 section 2).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, outcome: Outcome, key: Option<&str>) {
        if self.strip_groups {
            groups::strip(headers);
        }
        for name in &self.strip_targeted {
            headers.remove(name);
        }
        if let Some(name) = &self.x_cache {
            let value = match outcome {
                Outcome::Hit { .. } | Outcome::Collapsed { .. } => "HIT",
                Outcome::Miss { .. } => "MISS",
                Outcome::Stale { .. } => "STALE",
                Outcome::Revalidated { .. } => "REVALIDATED",
                Outcome::Bypass(_) => "BYPASS",
            };
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        let Some(cache) = &self.cache_status else {
            return;
        };
        // Written in place: `write!` to a `ValueText` cannot fail.
        let mut value = ValueText::default();
        let _ = value.write_str(cache);
        let _ = match outcome {
            Outcome::Hit { ttl } => write!(value, "; hit; ttl={}", ttl.as_secs()),
            Outcome::Collapsed { fwd, ttl } => {
                write!(value, "{}; collapsed; ttl={}", fwd_param(fwd), ttl.as_secs())
            }
            Outcome::Miss { fwd, stored } => {
                let _ = value.write_str(fwd_param(fwd));
                match stored {
                    Some(ttl) => write!(value, "; stored; ttl={}", ttl.as_secs()),
                    None => Ok(()),
                }
            }
            // A negative ttl says how stale a served response is (RFC 9211 section 2.6).
            Outcome::Stale { staleness, why } => {
                write!(value, "; hit; ttl=-{}; detail={why}", staleness.as_secs())
            }
            Outcome::Revalidated { ttl } => {
                let _ = value.write_str("; fwd=stale; fwd-status=304");
                match ttl {
                    Some(ttl) => write!(value, "; stored; ttl={}", ttl.as_secs()),
                    None => Ok(()),
                }
            }
            Outcome::Bypass(_) => value.write_str("; fwd=bypass"),
        };
        if let (true, Some(key)) = (self.cache_status_key, key) {
            let _ = write!(value, "; key=\"{key}\"");
        }
        if let Some(value) = value.finish() {
            headers.append(CACHE_STATUS, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outcome::BypassReason;

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
            strip_targeted: Vec::new(),
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
            (Outcome::Bypass(BypassReason::NoRule), "BYPASS", "trc; fwd=bypass"),
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
        let headers = headers(&debug, Outcome::Bypass(BypassReason::Mutation), Some("trc:v1:e:ab"));
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
