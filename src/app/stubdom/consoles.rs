//! The stub's consoles (`xen-toolstack.md` 1.4): libxl gives a Linux
//! stubdomain console 0 for the device model's log, console 1 for the
//! device state it saves, console 2 (when restoring) for the state it
//! restores, and consoles 3 and up for the guest's serial ports, all served
//! in dom0 by the process libxl starts for the stub (`-machine xenpv`). In
//! the stub they are `/dev/hvc0`, `/dev/hvc1`, ... (the kernel's Xen console
//! frontends).
//!
//! Consoles are ttys: each one xendm reads or writes is switched to raw mode
//! right after it is opened (no echo, no CR/LF translation, no line
//! editing), before a byte of state passes. The restore console never ends:
//! `-incoming fd:N` on it reads up to where the blob's own lengths say it
//! stops (`crate::app::incoming::read_stream`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Console 0: the device model's log (stderr).
pub const LOG: u32 = 0;
/// Console 1: the device state out (`/dev/fdset/1` in `xen-save-devices-state`).
pub const SAVE: u32 = 1;
/// Console 2: the device state in (`-incoming`).
pub const RESTORE: u32 = 2;
/// Console 3: the guest's first serial port (`-serial /dev/hvc3`).
pub const FIRST_SERIAL: u32 = 3;
/// The fd set libxl names for a stub's save (`/dev/fdset/1`).
pub const SAVE_FDSET: i64 = 1;

/// The device of console `n`.
pub fn path(n: u32) -> PathBuf {
    PathBuf::from(format!("/dev/hvc{n}"))
}

/// The console a `-serial` path names, if it is one of the guest's
/// (`/dev/hvc3` and up).
pub fn serial_console(path: &Path) -> Option<u32> {
    let n: u32 = path.to_str()?.strip_prefix("/dev/hvc")?.parse().ok()?;
    (n >= FIRST_SERIAL).then_some(n)
}

/// Opens a console tty read-write, blocking, in raw mode
/// ([`crate::control::chardev::open_raw_tty`]).
///
/// # Errors
/// If it cannot be opened or its modes set.
pub fn open_raw(path: &Path) -> Result<OwnedFd> {
    crate::control::chardev::open_raw_tty(path, false).with_context(|| format!("opening {} (raw)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_consoles_start_at_three() {
        assert_eq!(serial_console(Path::new("/dev/hvc3")), Some(3));
        assert_eq!(serial_console(Path::new("/dev/hvc10")), Some(10));
        for p in ["/dev/hvc0", "/dev/hvc1", "/dev/hvc2", "/dev/ttyS0", "/dev/hvc", "/dev/hvcx"] {
            assert_eq!(serial_console(Path::new(p)), None, "{p}");
        }
        assert_eq!(path(SAVE), Path::new("/dev/hvc1"));
        assert_eq!(path(RESTORE), Path::new("/dev/hvc2"));
    }
}
