//! The process's signal dispositions, set in this one place at start-up.
//!
//! libxl gives a `dm_restrict` device model `RLIMIT_FSIZE` = 256 KiB
//! (`xen-abi.md` 1.1): its log on stderr and any `-serial file:` may not grow
//! past that. A write that would do so raises SIGXFSZ, whose default action
//! kills the process (exit status 153 in a shell), so a guest that prints or
//! provokes warnings long enough would kill its own device model. With
//! SIGXFSZ ignored the write fails with `EFBIG` instead (POSIX `write()`,
//! Linux `generic_write_check_limits`); the log writer
//! ([`super::logging`]) counts such failures and the serial `file:` backend
//! stops writing that file and counts the bytes it drops
//! (`crate::control::chardev`), so the device model keeps running.
//!
//! SIGHUP, SIGTERM and SIGINT are handled by the runtime
//! (`tokio::signal`, in [`super::control::wait_for_end`]); nothing else
//! changes a disposition.

use std::io;

/// Sets SIGXFSZ to be ignored (see the module docs). Call it first in
/// `main`, before anything writes.
///
/// # Errors
/// If the kernel refuses the change (it does not for SIGXFSZ).
pub fn ignore_file_size_signal() -> io::Result<()> {
    // SAFETY: `signal` with `SIG_IGN` installs no handler, so no code runs in
    // signal context and nothing about async-signal safety applies;
    // SIGXFSZ is a valid, catchable signal number. The call only changes
    // this process's disposition (inherited by threads started later, all
    // of which share it anyway).
    let previous = unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    if previous == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::app::logging::{BudgetConfig, LogBudget, SystemClock};
    use crate::control::chardev::{Chardev, ChardevSpec};
    use tracing_subscriber::fmt::MakeWriter;
    use xendm_devices::hv::FakeIrq;
    use xendm_devices::pc::uart::Uart;
    use xendm_devices::BusDevice;

    const LIMIT: u64 = 64 * 1024;
    const CHILD: &str = "app::signals::tests::writes_past_rlimit_fsize_fail_and_are_counted_the_process_lives";

    /// The child half: under a 64 KiB RLIMIT_FSIZE, a serial file and the
    /// log each get more than that. Prints `CHILD-OK` if it got that far.
    fn child() {
        ignore_file_size_signal().unwrap();
        let lim = rustix::process::Rlimit { current: Some(LIMIT), maximum: None };
        rustix::process::setrlimit(rustix::process::Resource::Fsize, lim).unwrap();
        let dir = tempfile::tempdir().unwrap();

        // The serial file: the guest writes 3 x LIMIT through the UART.
        let path = dir.path().join("serial.log");
        let dev = Chardev::open(&ChardevSpec::File(path.clone())).unwrap();
        let uart = Arc::new(Mutex::new(Uart::new(Arc::new(FakeIrq::new()), dev.sink())));
        let data: Vec<u8> = (0..3 * LIMIT).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(1024) {
            let mut u = uart.lock().unwrap();
            for &b in chunk {
                u.write(0, &[b]);
            }
            drop(u);
            assert!(dev.flush(Duration::from_secs(10)));
        }
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, LIMIT, "everything up to the limit is written");
        assert_eq!(written, data[..LIMIT as usize], "and it is the guest's first bytes");
        assert_eq!(dev.dropped_output(), 2 * LIMIT, "the rest is dropped and counted");

        // The log: lines past the limit fail with EFBIG and are counted.
        let log = std::fs::File::create(dir.path().join("dm.log")).unwrap();
        let budget = LogBudget::new(log, SystemClock::new(), BudgetConfig { bytes: 0, ..BudgetConfig::default() });
        let line = [b'w'; 99];
        for _ in 0..2 * LIMIT / 100 {
            budget.make_writer().write_all(&line).unwrap();
        }
        let stats = budget.stats();
        assert_eq!(stats.written_lines + stats.failed_writes, 2 * LIMIT / 100);
        assert!(stats.failed_writes > 600, "{stats:?}");
        println!("CHILD-OK");
    }

    #[test]
    fn writes_past_rlimit_fsize_fail_and_are_counted_the_process_lives() {
        if std::env::var("XENDM_TEST_CHILD").as_deref() == Ok(CHILD) {
            child();
            return;
        }
        let out = crate::app::test_in_child(CHILD, "XENDM_TEST_CHILD", CHILD).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), None, "the child was killed by a signal\n{stdout}\n{stderr}");
        assert!(out.status.success() && stdout.contains("CHILD-OK"), "{stdout}\n{stderr}");
    }
}
