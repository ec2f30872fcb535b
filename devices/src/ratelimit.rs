//! A small per-instance rate limiter for log lines the guest can provoke.
//!
//! A hostile guest can trigger a warning on every access; without a limit the
//! DM log (which libxl writes to `/var/log/xen/qemu-dm-<name>.log`, and which
//! `dm_restrict` caps at 256 KiB) would fill up. Each site owns a limiter.

use std::time::{Duration, Instant};

/// Allows `burst` events per `window`, then counts the suppressed ones.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter allowing `burst` events per `window`.
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self { window, burst, start: None, used: 0, suppressed: 0 }
    }

    /// The default for guest-triggered warnings: 10 per second.
    pub const fn per_second() -> Self {
        Self::new(10, Duration::from_secs(1))
    }

    /// Returns `Some(n)` when the caller may log now, `n` being the number of
    /// events suppressed since the last allowed one; `None` when it must not.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        let expired = match self.start {
            Some(s) => now.duration_since(s) >= self.window,
            None => true,
        };
        if expired {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            let n = self.suppressed;
            self.suppressed = 0;
            Some(n)
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::per_second()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_suppress_then_report() {
        let mut r = RateLimit::new(2, Duration::from_millis(50));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.check(), Some(2));
    }
}
