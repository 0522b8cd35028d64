//! Stampede protection: when many requests miss on one key at once, one of them (the leader)
//! calls the inner service and stores the response, and the others wait for the entry.
//!
//! In a process, followers wait on the leader's flight. Across processes sharing a store, the
//! leader takes a short lease in the store (`SET NX PX` on Redis); a leader that finds the
//! lease taken polls the store for the entry instead of calling the inner service. Every wait
//! is bounded by the lock timeout, after which a request calls the inner service itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::state::Shared;

/// The flights in progress in this process, by entry key.
#[derive(Default)]
pub(crate) struct Flights {
    in_progress: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// What one missing request does.
pub(crate) enum Role {
    /// Compute the entry; the guard ends the flight when dropped.
    Leader(FlightGuard),
    /// Wait until the leader's flight ends.
    Follower(watch::Receiver<()>),
}

impl Flights {
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
        if let (Some(lease), Ok(runtime)) =
            (self.lease.take(), tokio::runtime::Handle::try_current())
        {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move { shared.release_lease(&lease).await });
        }
    }
}

/// Waits until the flight ends (its guard is dropped) or `timeout` passes; `true` if it ended.
pub(crate) async fn wait(mut done: watch::Receiver<()>, timeout: std::time::Duration) -> bool {
    // `changed` fails once the sender is gone, which is exactly the end of the flight.
    tokio::time::timeout(timeout, async { while done.changed().await.is_ok() {} }).await.is_ok()
}
