//! A de-duplicating work queue: an item queued twice before it is taken is worked once.
//! Watches push, the single writer pops. No I/O.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;

/// FIFO of distinct items.
pub struct WorkQueue<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
}

struct Inner<T> {
    order: VecDeque<T>,
    waiting: HashSet<T>,
    /// Items taken and not yet marked done.
    in_flight: usize,
}

impl<T: Clone + Eq + Hash> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue {
            inner: Mutex::new(Inner {
                order: VecDeque::new(),
                waiting: HashSet::new(),
                in_flight: 0,
            }),
            notify: Notify::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> WorkQueue<T> {
    /// Queues `item` unless it is already waiting.
    pub fn push(&self, item: T) {
        let mut q = self.lock();
        if q.waiting.insert(item.clone()) {
            q.order.push_back(item);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Takes the oldest item, if any; the caller calls [`WorkQueue::done`] when finished.
    pub fn try_pop(&self) -> Option<T> {
        let mut q = self.lock();
        let item = q.order.pop_front()?;
        q.waiting.remove(&item);
        q.in_flight += 1;
        Some(item)
    }

    /// Marks one taken item as finished.
    pub fn done(&self) {
        let mut q = self.lock();
        q.in_flight = q.in_flight.saturating_sub(1);
    }

    /// Nothing waits and nothing is being worked.
    pub fn is_idle(&self) -> bool {
        let q = self.lock();
        q.order.is_empty() && q.in_flight == 0
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
        self.lock().order.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
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
        assert!(!q.is_idle(), "three items taken, none done");
        q.done();
        q.done();
        q.done();
        assert!(q.is_idle());
    }
}
