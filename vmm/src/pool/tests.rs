//! The pool's bookkeeping with a fake factory (no VM): filling, bounded restore
//! concurrency, fresh items per checkout, replacement of dead and failed items, stop.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    max_running: AtomicUsize,
    alive: AtomicUsize,
    fail: AtomicBool,
}

struct Fake {
    c: Arc<Counters>,
    delay: Duration,
}

struct FakeItem {
    id: String,
    dead: Arc<AtomicBool>,
    c: Arc<Counters>,
}

impl Item for FakeItem {
    fn id(&self) -> &str {
        &self.id
    }
    fn pid(&self) -> u32 {
        1
    }
    fn alive(&mut self) -> bool {
        !self.dead.load(Ordering::SeqCst)
    }
    fn restore_time(&self) -> Duration {
        Duration::from_millis(30)
    }
}

impl Drop for FakeItem {
    fn drop(&mut self) {
        self.c.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Factory for Fake {
    type Item = FakeItem;
    fn restore(&self, id: &str) -> Result<FakeItem, PoolError> {
        let n = self.c.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.c.max_running.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.c.running.fetch_sub(1, Ordering::SeqCst);
        if self.c.fail.load(Ordering::SeqCst) {
            return Err(PoolError::Config(format!("restore {id} failed on purpose")));
        }
        self.c.alive.fetch_add(1, Ordering::SeqCst);
        Ok(FakeItem {
            id: id.to_string(),
            dead: Arc::new(AtomicBool::new(false)),
            c: self.c.clone(),
        })
    }
}

fn pool(size: usize, max_restores: usize, delay_ms: u64) -> (Pool<Fake>, Arc<Counters>) {
    let c = Arc::new(Counters::default());
    let p = Pool::start(
        Fake {
            c: c.clone(),
            delay: Duration::from_millis(delay_ms),
        },
        PoolOptions {
            size,
            max_restores,
            id_prefix: "t".into(),
            retry_backoff: Duration::from_millis(10),
        },
    )
    .unwrap();
    (p, c)
}

#[test]
fn fills_to_size_with_bounded_restore_concurrency() {
    let (p, c) = pool(5, 2, 30);
    assert_eq!(p.wait_ready(5, Duration::from_secs(5)), 5);
    let st = p.status();
    assert_eq!((st.ready, st.busy, st.restoring, st.restored), (5, 0, 0, 5));
    assert_eq!(st.restore_ms_mean, 30);
    assert_eq!(c.max_running.load(Ordering::SeqCst), 2);
    // It does not overfill.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.alive.load(Ordering::SeqCst), 5);
    p.stop();
    assert_eq!(
        c.alive.load(Ordering::SeqCst),
        0,
        "stop destroys ready items"
    );
}

#[test]
fn every_checkout_gets_a_fresh_item_destroyed_on_return() {
    let (p, c) = pool(2, 2, 5);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut l = p.checkout(Duration::from_secs(5)).unwrap();
        let id = l.item().id().to_string();
        assert!(seen.insert(id.clone()), "item {id} handed out twice");
        let st = p.status();
        assert_eq!(st.busy, 1);
        assert!(st.sandboxes.iter().any(|s| s.id == id && s.state == "busy"));
        drop(l);
    }
    assert_eq!(p.wait_ready(2, Duration::from_secs(5)), 2);
    let st = p.status();
    assert_eq!((st.served, st.busy), (20, 0));
    assert_eq!(
        c.alive.load(Ordering::SeqCst),
        2,
        "used items are destroyed"
    );
}

#[test]
fn dead_ready_items_are_replaced() {
    let (p, _c) = pool(2, 1, 5);
    assert_eq!(p.wait_ready(2, Duration::from_secs(5)), 2);
    // Kill one ready item: reap_dead drops it and the pool restores a new one.
    {
        let st = lock(&p.inner.state);
        st.ready[0].dead.store(true, Ordering::SeqCst);
    }
    assert_eq!(p.reap_dead(), 1);
    assert_eq!(p.wait_ready(2, Duration::from_secs(5)), 2);
    let st = p.status();
    assert_eq!((st.lost, st.restored), (1, 3));
    // A dead one at checkout is skipped, never handed out.
    {
        let st = lock(&p.inner.state);
        st.ready[0].dead.store(true, Ordering::SeqCst);
    }
    let mut l = p.checkout(Duration::from_secs(5)).unwrap();
    assert!(l.item().alive());
    assert_eq!(p.status().lost, 2);
}

#[test]
fn failed_restores_are_reported_and_checkout_times_out_clearly() {
    let (p, c) = pool(2, 1, 1);
    c.fail.store(true, Ordering::SeqCst);
    // (The first restore may have succeeded before the flag was set.)
    let mut leases = Vec::new();
    while let Ok(l) = p.checkout(Duration::from_millis(50)) {
        leases.push(l);
    }
    let e = p.checkout(Duration::from_millis(100)).err().unwrap();
    assert!(matches!(e, PoolError::NoSandbox { .. }), "{e}");
    assert!(e.to_string().contains("failed on purpose"), "{e}");
    assert!(p.status().failed_restores >= 1);
    // Recovery once restores work again (the back-off is short here).
    c.fail.store(false, Ordering::SeqCst);
    assert!(p.checkout(Duration::from_secs(10)).is_ok());
}

#[test]
fn drain_refuses_checkouts_but_keeps_leases_and_restorers() {
    let (p, c) = pool(2, 2, 1);
    assert_eq!(p.wait_ready(2, Duration::from_secs(5)), 2);
    let lease = p.checkout(Duration::from_secs(5)).unwrap();
    assert!(!p.status().draining);
    p.drain();
    let st = p.status();
    assert!(st.draining && !st.stopping, "{st:?}");
    assert!(matches!(
        p.checkout(Duration::from_millis(10)),
        Err(PoolError::Stopping)
    ));
    // A refill that started before drain() may finish; nothing starts after.
    std::thread::sleep(Duration::from_millis(50));
    let before = p.status().restored;
    std::thread::sleep(Duration::from_millis(100));
    let st = p.status();
    assert_eq!((st.restored, st.busy, st.restoring), (before, 1, 0));
    assert_eq!(lock(&p.threads).len(), 2, "restorer threads still there");
    drop(lease);
    p.stop();
    assert_eq!(c.alive.load(Ordering::SeqCst), 0);
}

#[test]
fn stop_refuses_checkouts_and_size_zero_is_refused() {
    let (p, _c) = pool(1, 1, 1);
    p.stop();
    assert!(matches!(
        p.checkout(Duration::from_millis(10)),
        Err(PoolError::Stopping)
    ));
    let c = Arc::new(Counters::default());
    let r = Pool::start(
        Fake {
            c,
            delay: Duration::ZERO,
        },
        PoolOptions {
            size: 0,
            max_restores: 1,
            id_prefix: "t".into(),
            retry_backoff: Duration::from_millis(1),
        },
    );
    assert!(matches!(r, Err(PoolError::Config(_))));
}
