//! Stampede protection: when many requests miss on one key at once, one of them (the leader)
//! calls the inner service and stores the response, and the others wait for the entry.
//!
//! In a process, followers wait on the leader's flight. Across processes sharing a store, the
//! leader takes a short lease in the store (`SET NX PX` on Redis); a leader that finds the
//! lease taken polls the store for the entry instead of calling the inner service. Every wait
//! is bounded by the lock timeout, after which a request calls the inner service itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use http::Response;
use tokio::sync::watch;

use super::answer::{examine, serve_fresh, Usable};
use super::body::CacheBody;
use super::decide::Plan;
use super::shared::Shared;
use crate::background;
use crate::entry::key::lease_key;
use crate::outcome::Forwarded;
use crate::store::Lookup;

/// The flights in progress in this process, by entry key.
#[derive(Default)]
pub(crate) struct Flights {
    in_progress: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// Leases this process gave back and whose release has not reached the store yet. The next
    /// leader of the key in this process takes them over rather than wait for the store to
    /// see them released (that wait is a poll interval: 20 ms on every miss of a key whose
    /// responses are not stored).
    releasing: Mutex<HashSet<String>>,
}

/// What one missing request does.
pub(crate) enum Role {
    /// Compute the entry; the guard ends the flight when dropped.
    Leader(FlightGuard),
    /// Wait until the leader's flight ends.
    Follower(watch::Receiver<()>),
}

impl Flights {
    fn releasing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.releasing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this process let go of `lease` and the store may not have seen it yet.
    fn took_back(&self, lease: &str) -> bool {
        self.releasing().remove(lease)
    }

    /// Joins the flight for `key`, or starts it.
    pub(crate) fn join(shared: &Arc<Shared>, key: &str) -> Role {
        let mut in_progress = shared.flights.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(done) = in_progress.get(key) {
            return Role::Follower(done.clone());
        }
        let (ended, done) = watch::channel(());
        in_progress.insert(key.to_owned(), done);
        Role::Leader(FlightGuard {
            shared: Arc::clone(shared),
            key: key.to_owned(),
            _ended: ended,
            lease: None,
        })
    }
}

/// Held by a flight's leader until its entry is in the store or will not be: dropping it wakes
/// the followers and gives back the store lease, if it holds one.
pub(crate) struct FlightGuard {
    shared: Arc<Shared>,
    key: String,
    /// Dropped with the guard, which closes the channel every follower waits on.
    _ended: watch::Sender<()>,
    lease: Option<String>,
}

impl FlightGuard {
    /// Records that this leader holds the store lease `lease_key`.
    pub(crate) fn hold_lease(&mut self, lease_key: String) {
        self.lease = Some(lease_key);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut in_progress =
            self.shared.flights.in_progress.lock().unwrap_or_else(|e| e.into_inner());
        in_progress.remove(&self.key);
        drop(in_progress);
        let Some(lease) = self.lease.take() else { return };
        let shared = Arc::clone(&self.shared);
        self.shared.flights.releasing().insert(lease.clone());
        let released = lease.clone();
        let spawned = background::spawn(async move {
            shared.store.release_lease(&released).await;
            shared.flights.releasing().remove(&released);
        });
        // Without a runtime the lease expires by itself; nothing is on its way back.
        if !spawned {
            self.shared.flights.releasing().remove(&lease);
        }
    }
}

/// Waits until the flight ends (its guard is dropped) or `timeout` passes; `true` if it ended.
pub(crate) async fn wait(mut done: watch::Receiver<()>, timeout: std::time::Duration) -> bool {
    // `changed` fails once the sender is gone, which is exactly the end of the flight.
    tokio::time::timeout(timeout, async { while done.changed().await.is_ok() {} }).await.is_ok()
}

/// What a missing request does once it has waited its turn.
#[allow(clippy::large_enum_variant)] // returned once and matched at once, never stored
pub(crate) enum Turn<B> {
    /// Another request filled the entry meanwhile.
    Hit(Response<CacheBody<B>>),
    /// Call the inner service; as the leader of the key's flight when there is a guard.
    Call(Option<FlightGuard>),
}

/// Joins the key's flight in this process; its leader also takes the store lease, or waits for
/// the instance that holds it. Every wait ends within `timeout`. `fwd` is why the request
/// missed, for the `Cache-Status` of a request that finds the entry after all.
pub(crate) async fn take_turn<B>(
    shared: &Arc<Shared>,
    plan: &Plan,
    timeout: Duration,
    fwd: Forwarded,
) -> Turn<B> {
    match Flights::join(shared, &plan.key) {
        Role::Follower(done) => {
            if wait(done, timeout).await {
                if let Some(hit) = lookup_hit(shared, plan, fwd).await {
                    return Turn::Hit(hit);
                }
            }
            Turn::Call(None)
        }
        Role::Leader(mut leader) => {
            // Take the store lease, and look once more when it is taken, in one round trip: a
            // flight that ended between this request's lookup and its turn (or an instance
            // that let go of its lease) may have stored the entry already.
            let lease = lease_key(&plan.key);
            let Some((leased, found)) = shared
                .store
                .acquire_lease_then_lookup(&lease, timeout, &plan.key, &plan.tag_keys)
                .await
            else {
                // The store failed: go on without a lease.
                return Turn::Call(Some(leader));
            };
            // Ours, or ours on its way back to the store: keep it instead.
            let ours = leased || shared.flights.took_back(&lease);
            if ours {
                leader.hold_lease(lease.clone());
            }
            // Dropping the guard gives the lease back.
            if let Some(hit) = fresh_hit(shared, plan, found, fwd) {
                return Turn::Hit(hit);
            }
            if ours {
                return Turn::Call(Some(leader));
            }
            match wait_for_other_instance(shared, plan, &lease, timeout, fwd).await {
                Waited::Hit(hit) => return Turn::Hit(hit),
                Waited::Lease => leader.hold_lease(lease),
                Waited::TimedOut => {}
            }
            if let Some(hit) = lookup_hit(shared, plan, fwd).await {
                return Turn::Hit(hit);
            }
            Turn::Call(Some(leader))
        }
    }
}

/// Looks the request up again, serving only a fresh entry: one that another request filled
/// while this one waited.
async fn lookup_hit<B>(
    shared: &Shared,
    plan: &Plan,
    fwd: Forwarded,
) -> Option<Response<CacheBody<B>>> {
    let found = shared.store.lookup(&plan.key, &plan.tag_keys).await?;
    fresh_hit(shared, plan, found, fwd)
}

/// The response for what a lookup found, if it is a fresh entry.
fn fresh_hit<B>(
    shared: &Shared,
    plan: &Plan,
    found: Lookup,
    fwd: Forwarded,
) -> Option<Response<CacheBody<B>>> {
    let now = shared.now_ms();
    match examine(shared, plan, found, now) {
        Ok((Usable::Fresh(entry), _)) => Some(serve_fresh(shared, plan, entry, now, Some(fwd))),
        _ => None,
    }
}

/// How waiting for another instance's entry ended.
#[allow(clippy::large_enum_variant)] // returned once and matched at once, never stored
enum Waited<B> {
    Hit(Response<CacheBody<B>>),
    /// The lease came free with no entry (its holder stored nothing, or died): ours now.
    Lease,
    TimedOut,
}

/// Polls the store until another instance's entry appears, its lease comes free, or `timeout`
/// passes.
async fn wait_for_other_instance<B>(
    shared: &Shared,
    plan: &Plan,
    lease: &str,
    timeout: Duration,
    fwd: Forwarded,
) -> Waited<B> {
    const POLL_EVERY: Duration = Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL_EVERY).await;
        if let Some(hit) = lookup_hit(shared, plan, fwd).await {
            return Waited::Hit(hit);
        }
        if shared.store.acquire_lease(lease, timeout).await == Some(true) {
            return Waited::Lease;
        }
    }
    Waited::TimedOut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheLayer, MemoryStore, Rule};

    fn shared() -> Arc<Shared> {
        let layer = CacheLayer::builder(MemoryStore::default()).route("/users", Rule::get());
        Arc::clone(layer.build().unwrap().shared())
    }

    #[tokio::test(start_paused = true)]
    async fn one_leader_per_key_and_its_followers_wake_when_it_ends() {
        let shared = shared();
        let Role::Leader(leader) = Flights::join(&shared, "k") else { panic!("first is leader") };
        let Role::Follower(done) = Flights::join(&shared, "k") else { panic!("then followers") };
        assert!(matches!(Flights::join(&shared, "other"), Role::Leader(_)), "keys are apart");

        let waiting = tokio::spawn(wait(done, Duration::from_secs(5)));
        tokio::task::yield_now().await;
        drop(leader);
        assert!(waiting.await.unwrap(), "the flight ended before the timeout");
        assert!(matches!(Flights::join(&shared, "k"), Role::Leader(_)), "a new flight may start");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_waits_no_longer_than_the_timeout() {
        let shared = shared();
        let Role::Leader(_leader) = Flights::join(&shared, "k") else { panic!() };
        let Role::Follower(done) = Flights::join(&shared, "k") else { panic!() };
        let started = tokio::time::Instant::now();
        assert!(!wait(done, Duration::from_millis(300)).await);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_lease_given_back_is_taken_over_by_this_process_s_next_leader() {
        let shared = shared();
        let Role::Leader(mut leader) = Flights::join(&shared, "k") else { panic!() };
        leader.hold_lease(lease_key("k"));
        drop(leader);
        // On this current-thread runtime the release has not run yet: the lease is on its way
        // back, and the next leader here takes it over, once.
        assert!(shared.flights.took_back(&lease_key("k")));
        assert!(!shared.flights.took_back(&lease_key("k")), "taken over at most once");
    }

    #[test]
    fn without_a_runtime_a_lease_is_left_to_expire() {
        let shared = shared();
        let Role::Leader(mut leader) = Flights::join(&shared, "k") else { panic!() };
        leader.hold_lease(lease_key("k"));
        drop(leader);
        assert!(!shared.flights.took_back(&lease_key("k")), "nothing is on its way back");
    }
}
