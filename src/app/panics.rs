//! What a panic does in the `xendm` process: one log line, then the whole
//! process ends.
//!
//! A device model that loses one thread is worse than one that dies: if the
//! ioreq thread stopped while QMP kept answering `running`, the guest's
//! vCPUs would wait forever for their answers and libxl, which watches the
//! device model's pid, would see nothing wrong. So [`install`] replaces the
//! standard hook (two lines and a backtrace hint) with one that writes one
//! line naming the thread, the place and the message, straight to stderr
//! (not through the log budget, which may be spent, nor through the log's
//! lock, which the panicking thread may hold), and then aborts. The release
//! profile also sets `panic = "abort"`; the hook aborts by itself so that
//! dev and test builds of the binary, which unwind, end the same way
//! (a panic in a tokio task, which the runtime would catch, included).
//! libxl then reports "device model ... unexpectedly exited" and the
//! domain is destroyed.

use std::io::Write;
use std::panic::{Location, PanicHookInfo};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// Installs the hook (see the module docs). `main` calls it once logging
/// is set up; library code and tests never do.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let mut line = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut line));
        line.push(' ');
        line.push_str(&fatal_line(std::thread::current().name(), info.location(), payload_text(info)));
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
        std::process::abort();
    }));
}

/// The panic message, when it is text (`panic!` with a format string or a
/// literal).
fn payload_text<'a>(info: &'a PanicHookInfo<'_>) -> &'a str {
    let payload = info.payload();
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// The one line a panic leaves in the log (after the timestamp).
pub fn fatal_line(thread: Option<&str>, location: Option<&Location<'_>>, message: &str) -> String {
    let place = location.map_or_else(|| "an unknown place".to_string(), ToString::to_string);
    let message = message.replace('\n', " | ");
    format!(
        "ERROR xendm: fatal: thread '{}' panicked at {place}: {message}; the device model exits",
        thread.unwrap_or("<unnamed>")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const CHILD: &str = "app::panics::tests::a_panic_in_any_thread_ends_the_process_with_one_line";

    #[test]
    fn the_line_names_thread_place_and_message_on_one_line() {
        let here = Location::caller();
        let line = fatal_line(Some("ioreq"), Some(here), "index out of bounds\nsecond line");
        assert_eq!(
            line,
            format!(
                "ERROR xendm: fatal: thread 'ioreq' panicked at {}:{}:{}: index out of bounds | second line; the device model exits",
                here.file(),
                here.line(),
                here.column()
            )
        );
        assert!(fatal_line(None, None, "x").contains("thread '<unnamed>' panicked at an unknown place: x"));
    }

    /// The child half: the hook installed, the "ioreq" thread panics while
    /// the main thread waits for it, as `serve` does. Without the hook the
    /// join returns and the child goes on.
    fn child() {
        install();
        let t = std::thread::Builder::new().name("ioreq".into()).spawn(|| panic!("injected failure")).unwrap();
        let _ = t.join();
        println!("STILL-ALIVE");
    }

    #[test]
    fn a_panic_in_any_thread_ends_the_process_with_one_line() {
        if std::env::var("XENDM_TEST_CHILD").as_deref() == Ok(CHILD) {
            child();
            return;
        }
        let out = crate::app::test_in_child(CHILD, "XENDM_TEST_CHILD", CHILD).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stdout.contains("STILL-ALIVE"), "the process went on after the panic:\n{stdout}\n{stderr}");
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stdout}\n{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains("ERROR xendm: fatal: thread 'ioreq' panicked at src/app/panics.rs:")
                && lines[0].ends_with(": injected failure; the device model exits"),
            "{stderr}"
        );
    }
}
