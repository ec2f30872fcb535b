//! The process's log: `tracing`'s formatter writing to stderr through a
//! global byte budget.
//!
//! libxl sends the device model's stderr to
//! `/var/log/xen/qemu-dm-<name>.log`, and under `dm_restrict` the file may
//! not grow past `RLIMIT_FSIZE` (256 KiB; `xen-abi.md` 1.1). Every log site a
//! guest can reach has its own rate limit (`xendm_devices::ratelimit`, 10
//! lines per second), but a guest that makes several sites fire at once
//! still writes kilobytes per second. So every line also passes
//! [`LogBudget`]:
//!
//! * at most [`BudgetConfig::bytes`] bytes are written per window (the base
//!   window is [`BudgetConfig::window`]); lines beyond it are dropped whole
//!   and counted, and one line says the budget is spent;
//! * **back-off**: a window in which lines were dropped makes the next window
//!   twice as long (up to [`BudgetConfig::max_window`]) with the same budget,
//!   so a flood that goes on for hours adds a few kilobytes an hour; a window
//!   without drops puts the length back to the base;
//! * the first line of the window after one with drops is preceded by one
//!   line `N log lines (B bytes) suppressed by the log budget`;
//! * writes that fail (`EFBIG` past `RLIMIT_FSIZE` once SIGXFSZ is ignored,
//!   see [`super::signals`]; `ENOSPC`; a closed stderr) are counted and never
//!   reported back to `tracing`: its formatter would report them with
//!   `eprintln!`, which panics when stderr cannot be written.
//!
//! `XENDM_LOG_BUDGET=BYTES` sets the bytes per base window (a size as
//! `-m` takes it, e.g. `64K`), `0` turns the budget off (for debugging with
//! `XENDM_LOG=trace`, which logs every ioreq).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::MakeWriter;
use xendm_devices::sync::lock;

/// How much the log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Bytes written per window; `0` means no budget.
    pub bytes: u64,
    /// The base window.
    pub window: Duration,
    /// The longest a window grows to under back-off.
    pub max_window: Duration,
}

impl Default for BudgetConfig {
    /// 16 KiB a minute, backing off to one window a day: a flood that never
    /// stops writes about 180 KiB in its first 17 hours, then 16 KiB a day.
    fn default() -> Self {
        Self { bytes: 16 * 1024, window: Duration::from_secs(60), max_window: Duration::from_secs(24 * 3600) }
    }
}

impl BudgetConfig {
    /// The default with the bytes per window from `XENDM_LOG_BUDGET`, if
    /// set (a size such as `65536` or `64K`; `0` = no budget). A value that
    /// does not parse keeps the default and is reported by the caller.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, String> {
        let mut cfg = Self::default();
        if let Some(v) = value {
            cfg.bytes = crate::cli::opts::parse_size(v, 1).map_err(|e| format!("XENDM_LOG_BUDGET: {e}"))?;
        }
        Ok(cfg)
    }
}

/// Time as the budget sees it: a monotonic reading and a timestamp for the
/// lines it writes itself.
pub trait Clock: Send {
    /// Time since an arbitrary, fixed origin.
    fn elapsed(&self) -> Duration;
    /// Writes a timestamp the way the log's other lines start.
    fn timestamp(&self, out: &mut String);
}

/// The real clock: [`Instant`] and `tracing-subscriber`'s RFC 3339 time.
pub struct SystemClock(Instant);

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self(Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
    fn timestamp(&self, out: &mut String) {
        let _ = SystemTime.format_time(&mut Writer::new(out));
    }
}

/// Counters of a [`LogBudget`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    /// Lines handed to the output.
    pub written_lines: u64,
    /// Lines dropped because the budget was spent.
    pub dropped_lines: u64,
    /// Writes to the output that failed (EFBIG, ENOSPC, ...).
    pub failed_writes: u64,
}

struct State<W, C> {
    out: W,
    clock: C,
    cfg: BudgetConfig,
    window_start: Duration,
    window_len: Duration,
    used: u64,
    /// Dropped in the current window.
    window_dropped: u64,
    window_dropped_bytes: u64,
    stats: BudgetStats,
}

impl<W: Write, C: Clock> State<W, C> {
    /// One line from the formatter: written, or dropped and counted.
    fn offer(&mut self, line: &[u8]) {
        if self.cfg.bytes == 0 {
            self.emit(line);
            return;
        }
        self.roll_window();
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.used.saturating_add(len) <= self.cfg.bytes {
            self.used = self.used.saturating_add(len);
            self.emit(line);
            return;
        }
        if self.window_dropped == 0 {
            let secs = self.window_len.as_secs();
            let bytes = self.cfg.bytes;
            self.notice(&format!(
                "log budget of {bytes} bytes per {secs} s spent; dropping log lines for up to {secs} s"
            ));
        }
        self.window_dropped = self.window_dropped.saturating_add(1);
        self.window_dropped_bytes = self.window_dropped_bytes.saturating_add(len);
        self.stats.dropped_lines = self.stats.dropped_lines.saturating_add(1);
    }

    /// Starts a new window if the current one is over, backing off after
    /// one with drops.
    fn roll_window(&mut self) {
        let now = self.clock.elapsed();
        if now.saturating_sub(self.window_start) < self.window_len {
            return;
        }
        if self.window_dropped > 0 {
            let (n, b) = (self.window_dropped, self.window_dropped_bytes);
            self.notice(&format!("{n} log lines ({b} bytes) suppressed by the log budget"));
            self.window_len = self.window_len.saturating_mul(2).min(self.cfg.max_window.max(self.cfg.window));
        } else {
            self.window_len = self.cfg.window;
        }
        self.window_start = now;
        self.used = 0;
        self.window_dropped = 0;
        self.window_dropped_bytes = 0;
    }

    /// A line of the budget's own, outside the budget (at most two per
    /// window).
    fn notice(&mut self, msg: &str) {
        let mut line = String::new();
        self.clock.timestamp(&mut line);
        line.push_str("  WARN xendm::app::logging: ");
        line.push_str(msg);
        line.push('\n');
        self.emit(line.as_bytes());
    }

    fn emit(&mut self, line: &[u8]) {
        match self.out.write_all(line) {
            Ok(()) => self.stats.written_lines = self.stats.written_lines.saturating_add(1),
            Err(_) => self.stats.failed_writes = self.stats.failed_writes.saturating_add(1),
        }
    }
}

/// A [`MakeWriter`] that lets lines through within a byte budget (see the
/// module docs). Clones share one budget.
pub struct LogBudget<W, C> {
    state: Arc<Mutex<State<W, C>>>,
}

impl<W, C> Clone for LogBudget<W, C> {
    fn clone(&self) -> Self {
        Self { state: Arc::clone(&self.state) }
    }
}

impl<W: Write, C: Clock> LogBudget<W, C> {
    /// A budget `cfg` over `out`, timed by `clock`.
    pub fn new(out: W, clock: C, cfg: BudgetConfig) -> Self {
        let window_start = clock.elapsed();
        let state = State {
            out,
            clock,
            cfg,
            window_start,
            window_len: cfg.window,
            used: 0,
            window_dropped: 0,
            window_dropped_bytes: 0,
            stats: BudgetStats::default(),
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// The counters so far.
    pub fn stats(&self) -> BudgetStats {
        lock(&self.state).stats
    }
}

/// What the formatter writes one event into.
pub struct BudgetLine<'a, W, C> {
    state: &'a Mutex<State<W, C>>,
}

impl<W: Write, C: Clock> Write for BudgetLine<'_, W, C> {
    /// Takes the whole buffer (the formatter writes one event per call);
    /// never fails.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(self.state).offer(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = lock(self.state).out.flush();
        Ok(())
    }
}

impl<'a, W: Write + 'a, C: Clock + 'a> MakeWriter<'a> for LogBudget<W, C> {
    type Writer = BudgetLine<'a, W, C>;
    fn make_writer(&'a self) -> Self::Writer {
        BudgetLine { state: &self.state }
    }
}

/// Installs the process's subscriber: the filter from `XENDM_LOG` (or
/// `RUST_LOG`, default `info`), plain text on stderr through a
/// [`LogBudget`] configured from `XENDM_LOG_BUDGET`.
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("XENDM_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let budget_env = std::env::var("XENDM_LOG_BUDGET").ok();
    let (cfg, cfg_error) = match BudgetConfig::from_env_value(budget_env.as_deref()) {
        Ok(c) => (c, None),
        Err(e) => (BudgetConfig::default(), Some(e)),
    };
    let writer = LogBudget::new(io::stderr(), SystemClock::new(), cfg);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .log_internal_errors(false)
        .init();
    if let Some(e) = cfg_error {
        tracing::warn!("{e}; using the default log budget");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock the test moves by hand (milliseconds).
    #[derive(Clone, Default)]
    struct FakeClock(Arc<AtomicU64>);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(u64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
        fn timestamp(&self, out: &mut String) {
            out.push_str(&format!("T+{}s", self.elapsed().as_secs()));
        }
    }

    /// Output the test can read; optionally failing every write.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        fail: Option<i32>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(errno) = self.fail {
                return Err(io::Error::from_raw_os_error(errno));
            }
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap().lines().map(str::to_owned).collect()
        }
    }

    fn cfg(bytes: u64) -> BudgetConfig {
        BudgetConfig { bytes, window: Duration::from_secs(60), max_window: Duration::from_secs(480) }
    }

    fn line(i: usize) -> String {
        format!("{i:09} guest-triggered warning\n") // 34 bytes
    }

    fn send(b: &LogBudget<Sink, FakeClock>, n: usize) {
        for i in 0..n {
            b.make_writer().write_all(line(i).as_bytes()).unwrap();
        }
    }

    #[test]
    fn lines_within_the_budget_pass_then_one_notice_then_nothing() {
        let (sink, clock) = (Sink::default(), FakeClock::default());
        let b = LogBudget::new(sink.clone(), clock, cfg(34 * 10));
        send(&b, 1000);
        let lines = sink.lines();
        assert_eq!(lines.len(), 11, "{lines:#?}");
        assert_eq!(lines[9], line(9).trim_end());
        assert_eq!(
            lines[10],
            "T+0s  WARN xendm::app::logging: log budget of 340 bytes per 60 s spent; dropping log lines for up to 60 s"
        );
        assert_eq!(b.stats(), BudgetStats { written_lines: 11, dropped_lines: 990, failed_writes: 0 });
    }

    #[test]
    fn the_next_window_reports_what_was_suppressed_and_backs_off() {
        let (sink, clock) = (Sink::default(), FakeClock::default());
        let b = LogBudget::new(sink.clone(), clock.clone(), cfg(34));
        send(&b, 5); // 1 written, 4 dropped in window 0 (60 s)
        clock.advance(Duration::from_secs(60));
        send(&b, 3); // window 1 is 120 s: notice, 1 written, 2 dropped
        let lines = sink.lines();
        assert_eq!(lines[2], "T+60s  WARN xendm::app::logging: 4 log lines (136 bytes) suppressed by the log budget");
        assert_eq!(lines[3], line(0).trim_end());
        assert!(lines[4].contains("per 120 s spent"), "{lines:#?}");
        // Still inside window 1 at 170 s: nothing gets through.
        clock.advance(Duration::from_secs(110));
        send(&b, 1);
        assert_eq!(sink.lines().len(), 5);
        // Window 2 (240 s), window 3 (480 s, the maximum), window 4 (480 s).
        for expected in [240, 480, 480] {
            clock.advance(Duration::from_secs(expected * 10));
            send(&b, 2);
            assert!(sink.lines().last().unwrap().contains(&format!("per {expected} s spent")), "{:#?}", sink.lines());
        }
    }

    #[test]
    fn a_quiet_window_resets_the_back_off() {
        let (sink, clock) = (Sink::default(), FakeClock::default());
        let b = LogBudget::new(sink.clone(), clock.clone(), cfg(34));
        send(&b, 2);
        clock.advance(Duration::from_secs(60));
        send(&b, 1); // window of 120 s, no drops in it
        clock.advance(Duration::from_secs(120));
        send(&b, 2);
        assert!(sink.lines().last().unwrap().contains("per 60 s spent"), "{:#?}", sink.lines());
    }

    #[test]
    fn a_guest_flood_for_a_day_stays_far_below_the_dm_restrict_file_limit() {
        // The audit's flood: about 6 KB/s of rate-limited warnings.
        let (sink, clock) = (Sink::default(), FakeClock::default());
        let b = LogBudget::new(sink.clone(), clock.clone(), BudgetConfig::default());
        for _ in 0..24 * 3600 {
            send(&b, 180); // 180 lines of 34 bytes a second
            clock.advance(Duration::from_secs(1));
        }
        let written = sink.bytes.lock().unwrap().len();
        assert!(written < 200 * 1024, "{written} bytes in a day");
    }

    #[test]
    fn failed_writes_are_counted_and_never_reach_the_formatter() {
        let sink = Sink { fail: Some(libc::EFBIG), ..Sink::default() };
        let b = LogBudget::new(sink, FakeClock::default(), cfg(0));
        for i in 0..100 {
            // What tracing-subscriber's fmt layer does with each event.
            assert!(b.make_writer().write_all(line(i).as_bytes()).is_ok());
        }
        assert_eq!(b.stats(), BudgetStats { written_lines: 0, dropped_lines: 0, failed_writes: 100 });
    }

    #[test]
    fn a_tracing_subscriber_writes_through_the_budget() {
        let (sink, clock) = (Sink::default(), FakeClock::default());
        let b = LogBudget::new(sink.clone(), clock, cfg(200));
        let subscriber = tracing_subscriber::fmt().with_writer(b.clone()).with_ansi(false).without_time().finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..50 {
                tracing::warn!(i, "refused ioreq: unknown type");
            }
        });
        let lines = sink.lines();
        assert!(lines.len() > 1 && lines.len() < 10, "{lines:#?}");
        assert!(lines[0].contains("refused ioreq"), "{lines:#?}");
        assert!(lines.last().unwrap().contains("log budget of 200 bytes"), "{lines:#?}");
    }

    #[test]
    fn the_budget_comes_from_the_environment() {
        assert_eq!(BudgetConfig::from_env_value(None).unwrap(), BudgetConfig::default());
        assert_eq!(BudgetConfig::from_env_value(Some("64K")).unwrap().bytes, 65536);
        assert_eq!(BudgetConfig::from_env_value(Some("0")).unwrap().bytes, 0);
        assert!(BudgetConfig::from_env_value(Some("lots")).unwrap_err().starts_with("XENDM_LOG_BUDGET: "));
    }
}
