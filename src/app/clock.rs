//! The process's own clock: when `main` started, so that log lines can say
//! how long start-up took (issue 14 item 6: exec to `device model running`).
//!
//! The instant is taken as the first thing `main` does; what happens before
//! it (the kernel's exec, the dynamic loader, Rust's runtime set-up) is not
//! counted, and is about a millisecond.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Records the start instant; later calls keep the first.
pub fn mark_start() {
    let _ = START.get_or_init(Instant::now);
}

/// Time since [`mark_start`] (zero if it was never called).
pub fn since_start() -> Duration {
    START.get().map_or(Duration::ZERO, Instant::elapsed)
}

/// [`since_start`] in whole milliseconds, for log fields.
pub fn since_start_ms() -> u64 {
    u64::try_from(since_start().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_kept_and_time_moves_on() {
        mark_start();
        let a = since_start();
        std::thread::sleep(Duration::from_millis(2));
        mark_start();
        assert!(since_start() >= a + Duration::from_millis(2), "a second mark_start must not reset the clock");
    }
}
