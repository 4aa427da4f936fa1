//! A de-duplicating work queue for a pool of workers: an item queued twice before it is
//! taken is worked once, and an item is never worked by two workers at once (queued again
//! while it is worked, it waits until that worker is done). No I/O.

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
    /// Items queued (in `order`, or parked until their worker is done).
    waiting: HashSet<T>,
    /// Items taken and not yet done.
    working: HashSet<T>,
}

impl<T: Clone + Eq + Hash> Default for WorkQueue<T> {
    fn default() -> Self {
        WorkQueue {
            inner: Mutex::new(Inner {
                order: VecDeque::new(),
                waiting: HashSet::new(),
                working: HashSet::new(),
            }),
            notify: Notify::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> WorkQueue<T> {
    /// Queues `item` unless it is already waiting. An item being worked is parked and
    /// queued when its worker calls [`WorkQueue::done`].
    pub fn push(&self, item: T) {
        let mut q = self.lock();
        if !q.waiting.insert(item.clone()) {
            return;
        }
        if q.working.contains(&item) {
            return;
        }
        q.order.push_back(item);
        drop(q);
        self.notify.notify_one();
    }

    /// Takes the oldest item, if any; the caller calls [`WorkQueue::done`] with it when
    /// finished.
    pub fn try_pop(&self) -> Option<T> {
        let mut q = self.lock();
        let item = q.order.pop_front()?;
        q.waiting.remove(&item);
        q.working.insert(item.clone());
        // Another worker may be waiting and there may be more.
        if !q.order.is_empty() {
            self.notify.notify_one();
        }
        Some(item)
    }

    /// Marks a taken item as finished; if it was queued meanwhile, it is queued now.
    pub fn done(&self, item: &T) {
        let mut q = self.lock();
        q.working.remove(item);
        if q.waiting.contains(item) {
            q.order.push_back(item.clone());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Nothing waits and nothing is being worked.
    pub fn is_idle(&self) -> bool {
        let q = self.lock();
        q.waiting.is_empty() && q.working.is_empty()
    }

    /// Waits for the next item.
    pub async fn pop(&self) -> T {
        loop {
            let notified = self.notify.notified();
            if let Some(item) = self.try_pop() {
                return item;
            }
            notified.await;
        }
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.lock().waiting.len()
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
        q.push("c");
        assert_eq!(q.try_pop(), Some("b"));
        assert_eq!(q.try_pop(), Some("c"));
        assert_eq!(q.try_pop(), None);
        assert!(!q.is_idle(), "three items taken, none done");
        q.done(&"a");
        q.done(&"b");
        q.done(&"c");
        assert!(q.is_idle());
    }

    #[test]
    fn an_item_is_never_worked_twice_at_once() {
        let q = WorkQueue::default();
        q.push("a");
        assert_eq!(q.try_pop(), Some("a"));
        // Changed while being worked: it must wait for the first worker.
        q.push("a");
        q.push("a");
        assert_eq!(q.try_pop(), None, "a second worker must not take it");
        assert!(!q.is_idle());
        q.done(&"a");
        assert_eq!(q.try_pop(), Some("a"), "worked again once, after the first");
        assert_eq!(q.try_pop(), None);
        q.done(&"a");
        assert!(q.is_idle());
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_on_push() {
        let q = std::sync::Arc::new(WorkQueue::default());
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(7);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), worker)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(got, 7);
    }
}
