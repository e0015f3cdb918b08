//! The tasks that make up one node, so they can all be stopped at once.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

/// A set of spawned tasks that can be aborted together (what "kill" means in tests, and the
/// last step of a graceful shutdown).
#[derive(Clone, Default)]
pub struct TaskGroup {
    handles: Arc<Mutex<Vec<AbortHandle>>>,
}

impl TaskGroup {
    /// Spawns `fut` on the current runtime as a member of the group.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let h = tokio::spawn(fut);
        let mut handles = self.handles.lock().expect("lock");
        handles.retain(|h| !h.is_finished());
        handles.push(h.abort_handle());
        h
    }

    /// Aborts every task in the group.
    pub fn abort_all(&self) {
        for h in self.handles.lock().expect("lock").drain(..) {
            h.abort();
        }
    }
}
