//! Where the fleet gets its time: the system clock in production, a clock the test moves by
//! hand in tests. The planners never read a clock; the service reads this one and passes the
//! time in.

use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time, ms since the epoch.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }
}

/// A clock that stands still until it is moved; it starts at the system's time.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self { now: AtomicI64::new(crate::store::now_ms()) }
    }
}

impl ManualClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        self.now.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}
