//! What a serial backend's writer does when writing fails, and how much it
//! logs about it.
//!
//! The guest decides how much it prints, so nothing here may log per write:
//!
//! * **`EFBIG`** (the file reached `RLIMIT_FSIZE`, which libxl sets to
//!   256 KiB for a `dm_restrict` device model; SIGXFSZ is ignored by
//!   `crate::app::signals`, so the write fails instead of killing us): the
//!   limit does not change while we run, so the backend **stops writing for
//!   good**. Everything the guest wrote before the limit is in the file (a
//!   write that crosses it is partial, up to the limit); every later byte is
//!   dropped and counted without a system call. One warning says so.
//! * **`ENOSPC`** (a full disk) and any other error: the chunk is dropped and
//!   counted, and the next chunk is tried again (space may come back). A
//!   warning names the error at most once a minute, with the number of
//!   failures in between.
//! * Dropped output (these failures, or the drop-oldest queue in front of a
//!   pty nobody reads) is reported at most once a minute with its total.
//!
//! The device model keeps running in every case. Before this policy the
//! writer logged one unthrottled warning per 4 KiB chunk: 2 MiB of guest
//! output on a full disk made a 4.27 MB log (`audit-2026-12.md`, risk 1).

use std::time::Duration;

use rustix::io::Errno;
use xendm_devices::ratelimit::RateLimit;

/// How often a failing backend may log.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The write failures of one backend.
pub(super) struct WriteFailures {
    /// The backend's name in log lines (`file:/var/log/...`, `pty`...).
    name: String,
    /// Set once writing stopped for good (`EFBIG`).
    stopped: bool,
    error_log: RateLimit,
    drop_log: RateLimit,
    reported_dropped: u64,
    /// Warnings logged so far (for tests and stats).
    pub(super) warnings: u64,
}

impl WriteFailures {
    pub(super) fn new(name: String) -> Self {
        Self {
            name,
            stopped: false,
            error_log: RateLimit::new(1, LOG_EVERY),
            drop_log: RateLimit::new(1, LOG_EVERY),
            reported_dropped: 0,
            warnings: 0,
        }
    }

    /// Whether writing stopped for good: drop every chunk unwritten.
    pub(super) const fn stopped(&self) -> bool {
        self.stopped
    }

    /// A write failed with `error`.
    pub(super) fn failed(&mut self, error: Errno) {
        if error == Errno::FBIG {
            if !self.stopped {
                self.stopped = true;
                self.warnings += 1;
                tracing::warn!(
                    backend = %self.name,
                    "serial output reached the file size limit (RLIMIT_FSIZE); what the guest writes from now on is dropped"
                );
            }
            return;
        }
        if let Some(suppressed) = self.error_log.check() {
            self.warnings += 1;
            tracing::warn!(backend = %self.name, error = %error, suppressed, "serial output: write failed; dropping output");
        }
    }

    /// Reports the total of dropped output if it grew (rate-limited).
    pub(super) fn report_dropped(&mut self, dropped: u64) {
        if dropped == self.reported_dropped {
            return;
        }
        if let Some(suppressed) = self.drop_log.check() {
            self.warnings += 1;
            self.reported_dropped = dropped;
            tracing::warn!(
                backend = %self.name,
                dropped_total = dropped,
                suppressed,
                "serial output dropped (no reader, or the backend failed)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::chardev::{Chardev, ChardevSpec};

    #[test]
    fn efbig_stops_writing_for_good_with_one_warning() {
        let mut f = WriteFailures::new("file:x".into());
        assert!(!f.stopped());
        for _ in 0..1000 {
            f.failed(Errno::FBIG);
        }
        assert!(f.stopped());
        assert_eq!(f.warnings, 1);
    }

    #[test]
    fn other_errors_log_once_a_minute_and_keep_trying() {
        let mut f = WriteFailures::new("file:x".into());
        for i in 0..30_000u64 {
            f.failed(Errno::NOSPC);
            f.report_dropped((i + 1) * 4096);
        }
        assert!(!f.stopped(), "a full disk may get space back");
        assert_eq!(f.warnings, 2, "one failure warning and one drop report");
    }

    /// The audit's case: 2 MiB of guest output to a file on a full disk
    /// (`/dev/full` fails every write with ENOSPC).
    #[test]
    fn a_full_disk_drops_and_counts_output_with_bounded_logging() {
        let dev = Chardev::open(&ChardevSpec::File("/dev/full".into())).unwrap();
        let mut sink = dev.sink();
        for _ in 0..512 {
            sink.write(&[b'x'; 4096]);
            assert!(dev.flush(Duration::from_secs(5)));
        }
        assert_eq!(dev.dropped_output(), 2 * 1024 * 1024);
        assert!(dev.output_warnings() <= 2, "{} warnings for 512 failed chunks", dev.output_warnings());
        // The backend still takes output.
        sink.write(b"still running");
        assert!(dev.flush(Duration::from_secs(5)));
        assert_eq!(dev.dropped_output(), 2 * 1024 * 1024 + 13);
    }
}
