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
//! the blob's own lengths say where it stops ([`read_restore`]); a second
//! blob following within [`QUIET`] replaces the first (libxl's save file
//! for a stub is appended to by each save of the same domain).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::machine::state::blob_len;

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
/// Silence after a whole blob that ends the restore read.
pub const QUIET: Duration = Duration::from_millis(500);
/// Longest wait for the first whole blob (libxl allows the stub 30 s).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest restore read.
pub const MAX_RESTORE: usize = 16 << 20;

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

/// Opens a tty read-write, not as the controlling terminal, in raw mode.
///
/// # Errors
/// If it cannot be opened or its modes set.
pub fn open_raw(path: &Path) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("opening {}", path.display()))?;
    make_raw(fd.as_fd()).with_context(|| format!("raw mode on {}", path.display()))?;
    Ok(fd)
}

/// Raw mode on a tty.
fn make_raw(fd: std::os::fd::BorrowedFd<'_>) -> rustix::io::Result<()> {
    let mut t = rustix::termios::tcgetattr(fd)?;
    t.make_raw();
    rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &t)
}

/// Reads the device state from the restore console: bytes until they hold
/// a whole blob, then as long as more arrive within [`QUIET`] (a later blob
/// replaces the earlier one). `timeout` bounds the wait for the first.
///
/// # Errors
/// No whole blob within `timeout`, something that is not a blob, or more
/// than [`MAX_RESTORE`] bytes.
pub fn read_restore(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> Result<Vec<u8>> {
    let start = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    let mut latest: Option<Vec<u8>> = None;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // A whole blob at the front of `buf` is taken off it.
        while let Some(len) = blob_len(&buf).context("the restore console")? {
            latest = Some(buf.drain(..len).collect());
        }
        let wait = match &latest {
            Some(_) => QUIET,
            None => match timeout.checked_sub(start.elapsed()) {
                Some(left) => left,
                None => bail!("no whole device state on the restore console within {}s", timeout.as_secs()),
            },
        };
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec::try_from(wait).unwrap_or(rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 });
        let ready = match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("poll on the restore console"),
        };
        if ready == 0 {
            if let Some(blob) = latest {
                if !buf.is_empty() {
                    tracing::warn!(
                        bytes = buf.len(),
                        "restore console: an incomplete blob after the last whole one is ignored"
                    );
                }
                return Ok(blob);
            }
            continue;
        }
        let n = match rustix::io::read(fd, &mut chunk) {
            Ok(0) => match latest {
                Some(blob) => return Ok(blob),
                None => bail!("the restore console closed before a whole device state ({} bytes)", buf.len()),
            },
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(e).context("reading the restore console"),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() > MAX_RESTORE {
            bail!("the restore console sent more than {MAX_RESTORE} bytes without a whole device state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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

    fn blob(tag: u8) -> Vec<u8> {
        let mut b = b"XENDMDEV".to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for name in ["port92", "port92"] {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        b.extend_from_slice(&1u32.to_le_bytes());
        let payload = format!("{{\"outport\":{tag}}}");
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload.as_bytes());
        b.extend_from_slice(b"XENDMEND");
        let crc = crate::machine::state::crc32(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// A channel without EOF (the write end stays open): the blob is read
    /// in pieces, the later of two blobs wins, and silence ends the read.
    #[test]
    fn the_restore_console_gives_its_last_whole_blob() {
        let (r, mut w) = std::io::pipe().unwrap();
        let (one, two) = (blob(1), blob(2));
        let writer = std::thread::spawn(move || {
            w.write_all(&one[..10]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(&one[10..]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(&two).unwrap();
            std::thread::sleep(QUIET * 3);
            drop(w);
        });
        let got = read_restore(r.as_fd(), Duration::from_secs(5)).unwrap();
        assert_eq!(got, blob(2));
        writer.join().unwrap();
    }

    #[test]
    fn no_blob_is_an_error_naming_why() {
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"QEVM\0\0\0\x03").unwrap();
        let e = format!("{:#}", read_restore(r.as_fd(), Duration::from_secs(5)).unwrap_err());
        assert!(e.contains("QEMU's device state"), "{e}");
        let (r, w) = std::io::pipe().unwrap();
        let e = read_restore(r.as_fd(), Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains("no whole device state on the restore console within 0s"), "{e}");
        drop(w);
    }
}
