//! What the cache did with one request: its [`Outcome`], and why it was forwarded or bypassed.
//!
//! Every response's outcome is reported once, when its head is ready (see
//! `service::shared::Shared::report`); the status headers, [`Stats`](crate::Stats), the latency
//! histograms and the metrics are all derived from that one report. This module imports
//! nothing from the crate, so that everything that tells or counts outcomes can import it.

use std::time::Duration;

/// What the cache did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The cache stayed out of the way, for this reason.
    Bypass(BypassReason),
}

/// What the cache did with a request, put in its response's extensions when the layer is built
/// with [`outcome_extension(true)`](crate::CacheLayerBuilder::outcome_extension), for the
/// middleware around it to read instead of parsing `X-Cache`.
///
/// ```
/// use tower_redis_cache::CacheOutcome;
///
/// fn log(response: &http::Response<()>) {
///     match response.extensions().get::<CacheOutcome>() {
///         Some(CacheOutcome::Hit) => println!("served from the cache"),
///         Some(outcome) => println!("{}", outcome.label()),
///         None => println!("not seen by the cache layer"),
///     }
/// }
/// # log(&http::Response::new(()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOutcome {
    /// Served from the store with a fresh entry (`X-Cache: HIT`), including a miss that found
    /// the entry another request filled meanwhile.
    Hit,
    /// Answered by the inner service (`MISS`); `stored` says whether its response is being
    /// stored.
    Miss {
        /// The response is being stored, once its body completes within the limit.
        stored: bool,
    },
    /// Served a stale entry (`STALE`), as `stale-while-revalidate` or `stale-if-error` allow.
    Stale,
    /// A stale entry was revalidated with the inner service's `304` and served (`REVALIDATED`).
    Revalidated,
    /// The cache stayed out of the way (`BYPASS`).
    Bypass,
}

impl CacheOutcome {
    /// The outcome as the metrics label it counts under: `hit`, `miss`, `stale`,
    /// `revalidated` or `bypass`.
    pub fn label(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss { .. } => "miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

impl From<&Outcome> for CacheOutcome {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Hit { .. } | Outcome::Collapsed { .. } => CacheOutcome::Hit,
            Outcome::Miss { stored, .. } => CacheOutcome::Miss { stored: stored.is_some() },
            Outcome::Stale { .. } => CacheOutcome::Stale,
            Outcome::Revalidated { .. } => CacheOutcome::Revalidated,
            Outcome::Bypass(_) => CacheOutcome::Bypass,
        }
    }
}

/// Which of [`Stats`](crate::Stats)' request counts an outcome adds to: each request adds to
/// exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Answered from the store with a fresh entry: hits and collapsed misses.
    Hit,
    /// Answered by the inner service: misses and `304` revalidations.
    Miss,
    /// Answered with a stale entry.
    Stale,
    /// The cache stayed out of the way.
    Bypass,
}

impl Outcome {
    /// The outcomes' metrics labels, in the order of [`index`](Self::index).
    pub(crate) const LABELS: [&'static str; 6] =
        ["hit", "miss", "stale", "revalidated", "collapsed", "bypass"];

    /// The position of the outcome's label in [`LABELS`](Self::LABELS).
    pub(crate) fn index(&self) -> usize {
        match self {
            Outcome::Hit { .. } => 0,
            Outcome::Miss { .. } => 1,
            Outcome::Stale { .. } => 2,
            Outcome::Revalidated { .. } => 3,
            Outcome::Collapsed { .. } => 4,
            Outcome::Bypass(_) => 5,
        }
    }

    /// The outcome as a metrics label (`hit`, `miss`, ...).
    pub(crate) fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Which request count it adds to.
    pub(crate) fn counted(&self) -> Counted {
        match self {
            Outcome::Hit { .. } | Outcome::Collapsed { .. } => Counted::Hit,
            Outcome::Miss { .. } | Outcome::Revalidated { .. } => Counted::Miss,
            Outcome::Stale { .. } => Counted::Stale,
            Outcome::Bypass(_) => Counted::Bypass,
        }
    }
}

/// Why a cacheable request was forwarded, as RFC 9211's `fwd` parameter says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Why the cache stayed out of a request's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BypassReason {
    /// No rule covers the method on the path.
    NoRule,
    /// A `bypass` pattern covers the path.
    BypassRule,
    /// An unsafe request: the cache only invalidates what it writes.
    Mutation,
    /// A credentialed request to a route whose entries are not per user.
    Credentials,
    /// A request to a per-user route whose user could not be identified.
    UnidentifiedUser,
    /// A path other servers could read differently (`protocol::guard`).
    AmbiguousPath,
    /// A header that changes the response without being in the key (`protocol::guard`).
    BypassHeader,
    /// An eviction of one of the entry's tags has not reached the store yet.
    EvictionPending,
    /// A gRPC call whose request message the layer did not read: the plain layer in front of
    /// a gRPC server, or a request stream of several messages or over `max_body_bytes`.
    UnreadMessage,
    /// A read (`GET`, `HEAD`) that carries a body: the inner service may answer from it, and
    /// it is not in the key.
    RequestBody,
}

impl BypassReason {
    /// Every reason, in the order of [`index`](Self::index).
    pub(crate) const ALL: [BypassReason; 10] = [
        BypassReason::NoRule,
        BypassReason::BypassRule,
        BypassReason::Mutation,
        BypassReason::Credentials,
        BypassReason::UnidentifiedUser,
        BypassReason::AmbiguousPath,
        BypassReason::BypassHeader,
        BypassReason::EvictionPending,
        BypassReason::UnreadMessage,
        BypassReason::RequestBody,
    ];

    /// The position of the reason in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The reason as a metrics label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BypassReason::NoRule => "no_rule",
            BypassReason::BypassRule => "bypass_rule",
            BypassReason::Mutation => "mutation",
            BypassReason::Credentials => "credentials",
            BypassReason::UnidentifiedUser => "unidentified_user",
            BypassReason::AmbiguousPath => "ambiguous_path",
            BypassReason::BypassHeader => "bypass_header",
            BypassReason::EvictionPending => "eviction_pending",
            BypassReason::UnreadMessage => "unread_message",
            BypassReason::RequestBody => "request_body",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_the_label_tables() {
        for (i, reason) in BypassReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let ttl = Duration::ZERO;
        let outcomes = [
            Outcome::Hit { ttl },
            Outcome::Miss { fwd: Forwarded::UriMiss, stored: None },
            Outcome::Stale { staleness: ttl, why: "stale-if-error" },
            Outcome::Revalidated { ttl: None },
            Outcome::Collapsed { fwd: Forwarded::UriMiss, ttl },
            Outcome::Bypass(BypassReason::NoRule),
        ];
        for (i, outcome) in outcomes.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }
}
