//! A lock-free circuit breaker for one shadow.
//!
//! Closed: every mirror is admitted; `threshold` consecutive failures (refused connections,
//! resets, timeouts — not HTTP error statuses, which are the shadow's answer and worth
//! comparing) open it. Open: nothing is admitted until `cooldown` has passed. Then one probe
//! is admitted at a time (half-open): its success closes the breaker, its failure re-opens it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open; 0 = closed.
    open_until_ms: AtomicU64,
    probing: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send.
    Yes,
    /// Half-open: send this one as the probe.
    Probe,
    /// Open: do not send.
    No,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that "open until 0" can never be produced by a real deadline.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn admit(&self) -> Admit {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Admit::Yes;
        }
        if self.now_ms() < until {
            return Admit::No;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::No,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    pub fn on_success(&self, probe: bool) {
        self.consecutive_failures.store(0, Ordering::Release);
        if probe || self.is_open() {
            self.open_until_ms.store(0, Ordering::Release);
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    pub fn on_failure(&self, probe: bool) {
        if probe {
            self.trip();
            self.probing.store(false, Ordering::Release);
            return;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold && !self.is_open() {
            self.trip();
        }
    }

    /// A probe that was admitted but never sent (e.g. its body was too large).
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    fn trip(&self) {
        let until = self.now_ms() + self.cooldown.as_millis() as u64;
        self.open_until_ms.store(until, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::ZERO);
        assert_eq!(b.admit(), Admit::Yes);
        b.on_failure(false);
        b.on_failure(false);
        assert!(!b.is_open());
        b.on_failure(false);
        assert!(b.is_open());
        // cooldown 0: next admit is the single probe
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No, "one probe at a time");
        b.on_failure(true);
        assert!(b.is_open());
        assert_eq!(b.admit(), Admit::Probe);
        b.on_success(true);
        assert!(!b.is_open());
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn stays_open_during_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        b.on_failure(false);
        for _ in 0..10 {
            assert_eq!(b.admit(), Admit::No);
        }
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(3600));
        b.on_failure(false);
        b.on_success(false);
        b.on_failure(false);
        assert!(!b.is_open());
        b.on_failure(false);
        assert!(b.is_open());
    }

    #[test]
    fn unsent_probe_is_released() {
        let b = Breaker::new(1, Duration::ZERO);
        b.on_failure(false);
        assert_eq!(b.admit(), Admit::Probe);
        b.release_probe();
        assert_eq!(b.admit(), Admit::Probe);
    }
}
