//! What happens on a seccomp violation: the filter returns
//! `SECCOMP_RET_TRAP`, the kernel sends SIGSYS to the thread with the
//! system call's number in `siginfo` (`si_code = SYS_SECCOMP`, seccomp(2)),
//! and this handler writes one line naming the thread and the call to
//! stderr (libxl's `/var/log/xen/qemu-dm-<name>.log`), then re-raises SIGSYS
//! with the default action so the process dies of it and libxl sees the
//! device model go.
//!
//! The handler is async-signal-safe: it formats into a stack buffer and
//! makes only `prctl(PR_GET_NAME)`, `gettid`, `getpid`, `write` and `tgkill`,
//! each allowed by every filter (`allowlist::COMMON`). `SA_RESETHAND` puts
//! the default action back on entry and `SA_NODEFER` lets the re-raised
//! signal through at once.

use super::allowlist::NAMES;

/// `SYS_SECCOMP`: `si_code` of a SIGSYS sent by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

/// The SIGSYS view of Linux's x86_64 `siginfo_t` (`_sigsys` in
/// `include/uapi/asm-generic/siginfo.h`).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Installs the handler for SIGSYS.
///
/// # Errors
/// If `sigaction` fails.
pub(super) fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is valid (empty mask, no flags); we then set
    // a handler of the SA_SIGINFO signature and flags.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    sa.sa_sigaction = handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
    // SAFETY: a valid sigaction for a valid signal; the old action is not asked for.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into `comm`.
    unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS it has the
    // `_sigsys` layout we read.
    let (code, nr) = unsafe {
        let s = &*info.cast::<SigsysInfo>();
        (s.code, i64::from(s.syscall))
    };
    // SAFETY: plain system calls without pointers.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    let mut line = Line::new();
    violation_message(&mut line, &comm, tid, nr, code == SYS_SECCOMP);
    // SAFETY: writes our own stack buffer to stderr.
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    // SAFETY: plain system calls; SA_RESETHAND restored the default action,
    // so the signal ends the process.
    unsafe {
        libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGSYS);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// The line written on a violation.
pub(super) fn violation_message(out: &mut Line, comm: &[u8], tid: i64, nr: i64, from_seccomp: bool) {
    out.push(b"xendm: sandbox: thread '");
    out.push(comm.split(|&b| b == 0).next().unwrap_or_default());
    out.push(b"' (tid ");
    out.push_number(tid);
    out.push(b") made system call ");
    out.push_number(nr);
    out.push(b" (");
    out.push(syscall_name(nr).as_bytes());
    out.push(b")");
    if !from_seccomp {
        out.push(b" [SIGSYS not from seccomp]");
    }
    out.push(
        b", which its seccomp filter forbids; exiting (docs/usage.md: -sandbox off or XENDM_SECCOMP=log to debug)\n",
    );
}

/// The name of syscall `nr` without the `SYS_` prefix, or `?`.
pub(super) fn syscall_name(nr: i64) -> &'static str {
    NAMES.iter().find(|(n, _)| *n == nr).and_then(|(_, name)| name.get(4..)).unwrap_or("?")
}

/// A line built without allocating (for the signal handler); what does
/// not fit is cut.
pub(super) struct Line {
    pub(super) buf: [u8; 256],
    pub(super) len: usize,
}

impl Line {
    pub(super) const fn new() -> Self {
        Self { buf: [0; 256], len: 0 }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (v % 10) as u8;
            }
            v /= 10;
            if v == 0 || i == 0 {
                break;
            }
        }
        self.push(digits.get(i..).unwrap_or_default());
    }

    #[cfg(test)]
    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_thread_and_the_call() {
        let mut l = Line::new();
        violation_message(&mut l, b"ioreq\0\0\0", 4242, libc::SYS_socket, true);
        assert!(
            l.as_str().starts_with("xendm: sandbox: thread 'ioreq' (tid 4242) made system call 41 (socket), which"),
            "{}",
            l.as_str()
        );
        assert!(l.as_str().ends_with("to debug)\n"));
        let mut l = Line::new();
        violation_message(&mut l, b"", -1, 9999, false);
        assert!(l.as_str().contains("(tid -1) made system call 9999 (?) [SIGSYS not from seccomp]"), "{}", l.as_str());
    }

    #[test]
    fn numbers_and_overflow() {
        let mut l = Line::new();
        l.push_number(0);
        l.push(b" ");
        l.push_number(i64::MIN);
        assert_eq!(l.as_str(), "0 -9223372036854775808");
        let mut l = Line::new();
        for _ in 0..100 {
            l.push(b"abcdef");
        }
        assert_eq!(l.len, 256, "cut, not overflowed");
    }

    #[test]
    fn names() {
        assert_eq!(syscall_name(libc::SYS_execve), "execve");
        assert_eq!(syscall_name(libc::SYS_ioctl), "ioctl");
        assert_eq!(syscall_name(-5), "?");
    }
}
