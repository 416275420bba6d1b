//! Handing things from the appliance loop to observers (the status writer, a web console,
//! MQTT) without ever making the loop wait for them.
//!
//! - [`Bus`]: every published event goes to every subscriber's own bounded queue. Publishing
//!   never blocks on a subscriber's progress: when a queue is full its oldest event is
//!   dropped, and the subscriber is told how many it lost ([`Note::Lost`]) before its next
//!   event. A dropped [`Subscription`] is forgotten at the next publish.
//! - [`Latest`]: a newest-only slot (the latest frame, the latest status): writing replaces,
//!   readers take a cheap `Arc` and can wait for a newer version.
//!
//! Locks are held only to push or pop one item, never while a subscriber works, so the loop
//! waits at most for another thread's few instructions. Must not: know what the events mean.
//! Invariant: a subscription holds at most its capacity of events.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Lock a mutex, taking the data even if a thread panicked while holding it (the data here
/// is a queue or a slot, always left consistent between single operations).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Note<T> {
    /// The next event.
    Event(T),
    /// This many older events were dropped because the subscriber fell behind.
    Lost(u64),
}

struct QueueState<T> {
    items: VecDeque<T>,
    lost: u64,
    closed: bool,
}

struct Queue<T> {
    state: Mutex<QueueState<T>>,
    ready: Condvar,
    capacity: usize,
}

/// A publish/subscribe channel with one bounded queue per subscriber.
pub struct Bus<T> {
    subscribers: Mutex<Vec<Weak<Queue<T>>>>,
}

impl<T> Default for Bus<T> {
    fn default() -> Self {
        Bus {
            subscribers: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Clone> Bus<T> {
    /// A bus without subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new subscriber that keeps at most `capacity` (at least 1) unread events.
    pub fn subscribe(&self, capacity: usize) -> Subscription<T> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity.clamp(1, 1024)),
                lost: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        });
        lock(&self.subscribers).push(Arc::downgrade(&queue));
        Subscription { queue }
    }

    /// Give `event` to every subscriber; never waits for one to catch up.
    pub fn publish(&self, event: T) {
        let mut subs = lock(&self.subscribers);
        subs.retain(|w| w.strong_count() > 0);
        for q in subs.iter().filter_map(Weak::upgrade) {
            let mut st = lock(&q.state);
            if st.items.len() >= q.capacity {
                st.items.pop_front();
                st.lost += 1;
            }
            st.items.push_back(event.clone());
            drop(st);
            q.ready.notify_one();
        }
    }

    /// Tell every subscriber that nothing more will come (the loop is stopping); they read
    /// what is queued, then get `None`.
    pub fn close(&self) {
        for q in lock(&self.subscribers).iter().filter_map(Weak::upgrade) {
            lock(&q.state).closed = true;
            q.ready.notify_all();
        }
    }

    /// Subscribers still listening.
    pub fn subscribers(&self) -> usize {
        lock(&self.subscribers)
            .iter()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One subscriber's end of a [`Bus`].
pub struct Subscription<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Subscription<T> {
    fn take(st: &mut QueueState<T>) -> Option<Note<T>> {
        if st.lost > 0 {
            let n = st.lost;
            st.lost = 0;
            return Some(Note::Lost(n));
        }
        st.items.pop_front().map(Note::Event)
    }

    /// The next note if one is waiting.
    pub fn try_next(&self) -> Option<Note<T>> {
        Self::take(&mut lock(&self.queue.state))
    }

    /// The next note, waiting up to `timeout`; `None` on timeout or when the bus was closed
    /// and everything was read.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Note<T>> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.queue.state);
        loop {
            if let Some(n) = Self::take(&mut st) {
                return Some(n);
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = self
                .queue
                .ready
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Whether the bus was closed and everything queued was read.
    pub fn is_finished(&self) -> bool {
        let st = lock(&self.queue.state);
        st.closed && st.items.is_empty() && st.lost == 0
    }
}

/// A newest-only slot: the writer replaces, readers get the latest as a shared `Arc`.
pub struct Latest<T> {
    slot: Mutex<(u64, Option<Arc<T>>)>,
    changed: Condvar,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest {
            slot: Mutex::new((0, None)),
            changed: Condvar::new(),
        }
    }
}

impl<T> Latest<T> {
    /// An empty slot (version 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the content; returns its version (1, 2, …).
    pub fn put(&self, value: Arc<T>) -> u64 {
        let mut s = lock(&self.slot);
        s.0 += 1;
        s.1 = Some(value);
        let v = s.0;
        drop(s);
        self.changed.notify_all();
        v
    }

    /// The latest value and its version.
    pub fn get(&self) -> Option<(u64, Arc<T>)> {
        let s = lock(&self.slot);
        s.1.as_ref().map(|v| (s.0, Arc::clone(v)))
    }

    /// Wait up to `timeout` for a version newer than `seen`.
    pub fn wait_newer(&self, seen: u64, timeout: Duration) -> Option<(u64, Arc<T>)> {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.slot);
        loop {
            if s.0 > seen
                && let Some(v) = &s.1
            {
                return Some((s.0, Arc::clone(v)));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_every_event_in_order() {
        let bus = Bus::new();
        let a = bus.subscribe(8);
        let b = bus.subscribe(8);
        for i in 0..5 {
            bus.publish(i);
        }
        for s in [&a, &b] {
            let got: Vec<_> = std::iter::from_fn(|| s.try_next()).collect();
            assert_eq!(got, (0..5).map(Note::Event).collect::<Vec<_>>());
        }
        assert!(a.try_next().is_none());
    }

    #[test]
    fn a_slow_subscriber_loses_the_oldest_and_is_told_how_many() {
        let bus = Bus::new();
        let slow = bus.subscribe(3);
        let fast = bus.subscribe(100);
        for i in 0..10 {
            bus.publish(i);
        }
        assert_eq!(slow.try_next(), Some(Note::Lost(7)));
        assert_eq!(slow.try_next(), Some(Note::Event(7)));
        assert_eq!(slow.try_next(), Some(Note::Event(8)));
        assert_eq!(slow.try_next(), Some(Note::Event(9)));
        assert_eq!(slow.try_next(), None);
        // The fast one lost nothing because of the slow one.
        assert_eq!(std::iter::from_fn(|| fast.try_next()).count(), 10);
    }

    #[test]
    fn publishing_never_waits_for_a_subscriber_that_does_not_read() {
        let bus = Bus::new();
        let stuck = bus.subscribe(4);
        for i in 0..100_000 {
            bus.publish(i);
        }
        // Bounded memory, and done without waiting (no timing assertion: a blocked
        // publish would never return at all).
        assert_eq!(lock(&stuck.queue.state).items.len(), 4);
        assert_eq!(stuck.try_next(), Some(Note::Lost(99_996)));
    }

    #[test]
    fn dropped_subscribers_are_forgotten_and_close_wakes_readers() {
        let bus: Arc<Bus<u32>> = Arc::new(Bus::new());
        let a = bus.subscribe(2);
        drop(bus.subscribe(2));
        bus.publish(1);
        assert_eq!(bus.subscribers(), 1);
        let reader = {
            let b = Arc::clone(&bus);
            std::thread::spawn(move || {
                let s = b.subscribe(4);
                let mut got = Vec::new();
                while let Some(n) = s.next_timeout(Duration::from_secs(30)) {
                    got.push(n);
                }
                (got, s.is_finished())
            })
        };
        while bus.subscribers() < 2 {
            std::thread::yield_now();
        }
        bus.publish(2);
        bus.close();
        let (got, finished) = reader.join().unwrap();
        assert_eq!(got, vec![Note::Event(2)]);
        assert!(finished);
        assert_eq!(a.try_next(), Some(Note::Event(1)));
    }

    #[test]
    fn latest_keeps_only_the_newest_and_wakes_waiters() {
        let slot = Arc::new(Latest::new());
        assert!(slot.get().is_none());
        slot.put(Arc::new("a"));
        let v = slot.put(Arc::new("b"));
        assert_eq!(slot.get().map(|(n, s)| (n, *s)), Some((2, "b")));
        assert!(slot.wait_newer(v, Duration::from_millis(1)).is_none());
        let w = {
            let s = Arc::clone(&slot);
            std::thread::spawn(move || s.wait_newer(v, Duration::from_secs(30)))
        };
        slot.put(Arc::new("c"));
        assert_eq!(w.join().unwrap().map(|(n, s)| (n, *s)), Some((3, "c")));
    }
}
