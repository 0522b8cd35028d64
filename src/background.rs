//! Background work: the one place the layer spawns tasks (entry writes, markers, lease
//! releases, stale refreshes, eviction retries, fills).
//!
//! The layer never starts a runtime of its own. Outside one (a service driven by hand, as in
//! some tests), background work is skipped and what depends on it does without: an entry is
//! not written, a lease expires by itself, a fill is done in line.

use std::future::Future;

/// Runs `task` on the current Tokio runtime; `false`, and the task dropped, without one.
pub(crate) fn spawn<F>(task: F) -> bool
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(task);
            true
        }
        Err(_) => false,
    }
}

/// Whether [`spawn`] would run a task.
pub(crate) fn available() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}
