//! libxenvchan's server side (Xen `tools/include/libxenvchan.h`), for QMP in
//! a stubdomain ([`crate::control::vchan`]); built with the `stubdom`
//! feature only, so the dom0 binary does not link libxenvchan.
//!
//! The library's calls are used only in ways that never wait: a read or
//! write asks for no more than `libxenvchan_data_ready` /
//! `libxenvchan_buffer_space` say is there (whatever the ring's blocking
//! flag, which `libxenvchan_server_init` leaves unset), and
//! `libxenvchan_wait` is called only once the event channel's descriptor
//! polled readable.

use std::ffi::CString;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::raw::{c_char, c_int, c_void};

#[repr(C)]
struct RawVchan {
    _private: [u8; 0],
}

#[link(name = "xenvchan")]
unsafe extern "C" {
    fn libxenvchan_server_init(
        logger: *mut c_void,
        domain: c_int,
        xs_path: *const c_char,
        read_min: usize,
        write_min: usize,
    ) -> *mut RawVchan;
    fn libxenvchan_close(ctrl: *mut RawVchan);
    fn libxenvchan_read(ctrl: *mut RawVchan, data: *mut c_void, size: usize) -> c_int;
    fn libxenvchan_write(ctrl: *mut RawVchan, data: *const c_void, size: usize) -> c_int;
    fn libxenvchan_wait(ctrl: *mut RawVchan) -> c_int;
    fn libxenvchan_fd_for_select(ctrl: *mut RawVchan) -> c_int;
    fn libxenvchan_is_open(ctrl: *mut RawVchan) -> c_int;
    fn libxenvchan_data_ready(ctrl: *mut RawVchan) -> c_int;
    fn libxenvchan_buffer_space(ctrl: *mut RawVchan) -> c_int;
}

/// A vchan server at a xenstore path, for one peer domain.
pub struct VchanServer {
    peer: u16,
    path: CString,
    ctrl: *mut RawVchan,
}

// SAFETY: the handle is used by one thread at a time (`&mut self` for every
// call that touches the ring); libxenvchan keeps no thread-local state.
unsafe impl Send for VchanServer {}

impl VchanServer {
    /// A server for `peer` at `path` (relative paths are under the stub's
    /// own xenstore home), not listening until [`VchanLink::listen`].
    ///
    /// # Errors
    /// A path with a NUL byte.
    pub fn new(peer: u16, path: &str) -> io::Result<Self> {
        let path = CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self { peer, path, ctrl: std::ptr::null_mut() })
    }

    fn live(&self) -> io::Result<*mut RawVchan> {
        if self.ctrl.is_null() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "vchan not listening"));
        }
        Ok(self.ctrl)
    }
}

impl VchanServer {
    /// (Re)creates the server ring and publishes it for the next client.
    ///
    /// # Errors
    /// What libxenvchan reported.
    pub fn listen(&mut self) -> io::Result<()> {
        self.close();
        // SAFETY: a null logger is allowed (libxentoollog stderr default);
        // `path` is a valid NUL-terminated string that outlives the call;
        // 0/0 asks for the smallest in-page rings.
        let ctrl =
            unsafe { libxenvchan_server_init(std::ptr::null_mut(), c_int::from(self.peer), self.path.as_ptr(), 0, 0) };
        if ctrl.is_null() {
            return Err(io::Error::other(format!(
                "libxenvchan_server_init at {} failed: {}",
                self.path.to_string_lossy(),
                io::Error::last_os_error()
            )));
        }
        self.ctrl = ctrl;
        Ok(())
    }

    /// See `crate::control::vchan::VchanLink::event_fd`.
    #[allow(clippy::missing_errors_doc)]
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        let fd = match self.live() {
            // SAFETY: the handle is live; the call only reads its evtchn fd.
            Ok(c) => unsafe { libxenvchan_fd_for_select(c) },
            Err(_) => -1,
        };
        // SAFETY: the descriptor belongs to the live handle, which outlives
        // the borrow (`&self`); -1 (no handle) makes poll report POLLNVAL.
        unsafe { BorrowedFd::borrow_raw(fd.max(-1)) }
    }

    /// See `crate::control::vchan::VchanLink::ack`.
    #[allow(clippy::missing_errors_doc)]
    pub fn ack(&mut self) -> io::Result<()> {
        let c = self.live()?;
        // SAFETY: live handle; called after its descriptor polled readable,
        // so the pending event is there and the call does not wait.
        if unsafe { libxenvchan_wait(c) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// See `crate::control::vchan::VchanLink::is_open`.
    #[allow(clippy::missing_errors_doc)]
    pub fn is_open(&self) -> bool {
        // SAFETY: live handle (checked); reads the ring's liveness flags.
        self.live().is_ok_and(|c| unsafe { libxenvchan_is_open(c) } != 0)
    }

    /// See `crate::control::vchan::VchanLink::connected`: libxenvchan's
    /// server side says 2 until a client has connected, 1 while it is, 0
    /// once it left.
    pub fn connected(&self) -> bool {
        // SAFETY: live handle (checked); reads the ring's liveness flags.
        self.live().is_ok_and(|c| unsafe { libxenvchan_is_open(c) } == 1)
    }

    /// See `crate::control::vchan::VchanLink::read`.
    #[allow(clippy::missing_errors_doc)]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let c = self.live()?;
        // SAFETY: live handle.
        let ready = unsafe { libxenvchan_data_ready(c) };
        let n = usize::try_from(ready).unwrap_or(0).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `buf` has at least `n` writable bytes; `n` bytes are in the
        // ring, so the call returns at once.
        let got = unsafe { libxenvchan_read(c, buf.as_mut_ptr().cast(), n) };
        usize::try_from(got).map_err(|_| io::Error::last_os_error())
    }

    /// See `crate::control::vchan::VchanLink::write`.
    #[allow(clippy::missing_errors_doc)]
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let c = self.live()?;
        // SAFETY: live handle.
        let space = unsafe { libxenvchan_buffer_space(c) };
        let n = usize::try_from(space).unwrap_or(0).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `buf` has `n` readable bytes; the ring has room for them.
        let put = unsafe { libxenvchan_write(c, buf.as_ptr().cast(), n) };
        usize::try_from(put).map_err(|_| io::Error::last_os_error())
    }

    /// See `crate::control::vchan::VchanLink::close`.
    #[allow(clippy::missing_errors_doc)]
    pub fn close(&mut self) {
        if !self.ctrl.is_null() {
            // SAFETY: a handle from libxenvchan_server_init, closed once:
            // the pointer is cleared right after.
            unsafe { libxenvchan_close(self.ctrl) };
            self.ctrl = std::ptr::null_mut();
        }
    }
}

impl Drop for VchanServer {
    fn drop(&mut self) {
        self.close();
    }
}
