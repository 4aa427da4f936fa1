//! A de-duplicating work queue: an item queued twice before it is taken is worked once.
//! Watches push, the single writer pops. No I/O.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;

/// FIFO of distinct items.
pub struct WorkQueue<T> {
    inner: Mutex<(VecDeque<T>, HashSet<T>)>,
    notify: Notify,
}

impl<T: Clone + Eq + Hash> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue {
            inner: Mutex::new((VecDeque::new(), HashSet::new())),
            notify: Notify::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> WorkQueue<T> {
    /// Queues `item` unless it is already waiting.
    pub fn push(&self, item: T) {
        let mut q = self.lock();
        if q.1.insert(item.clone()) {
            q.0.push_back(item);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Takes the oldest item, if any.
    pub fn try_pop(&self) -> Option<T> {
        let mut q = self.lock();
        let item = q.0.pop_front()?;
        q.1.remove(&item);
        Some(item)
    }

    /// Waits for the next item.
    pub async fn pop(&self) -> T {
        loop {
            if let Some(item) = self.try_pop() {
                return item;
            }
            self.notify.notified().await;
        }
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<T>, HashSet<T>)> {
        // A panic while holding this lock cannot leave the queue inconsistent: recover.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_worked_once_in_order() {
        let q = WorkQueue::default();
        q.push("a");
        q.push("b");
        q.push("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.try_pop(), Some("a"));
        q.push("a");
        assert_eq!(q.try_pop(), Some("b"));
        assert_eq!(q.try_pop(), Some("a"));
        assert_eq!(q.try_pop(), None);
    }
}
