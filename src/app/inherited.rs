//! Descriptors inherited from libxl and named on the command line
//! (`-chardev socket,id=ID,fd=N,server=on,wait=off`, `xen-abi.md` 1.2 item
//! 16 for `dm_restrict`): checked and taken over in this one place.
//!
//! [`adopt`] runs first in [`crate::app::run`], before this process opens a
//! file, a socket or a Xen handle of its own, so a descriptor number that is
//! open at that point was inherited across `exec`. Each number is checked
//! (not 0-2, given once, open per `fcntl(F_GETFD)`, a socket), then owned
//! (`OwnedFd`) and turned into a listening QMP socket
//! ([`crate::control::qmp::bind`] checks `AF_UNIX`, listening, and sets
//! close-on-exec). Every refusal names the chardev, and happens before any
//! Xen handle is opened.
//!
//! `-incoming fd:N` (libxl's only form on restore, `xen-toolstack.md` 2.3:
//! the resume file, opened read-only) is taken over the same way; it may be
//! any readable descriptor (a file, a pipe).

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;

use crate::cli::Config;
use crate::control::qmp::{self, QmpListen, QmpSocketSpec};

/// Why an inherited descriptor was refused.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("-chardev id={id}: fd={fd} is a standard stream or negative")]
    Reserved { id: String, fd: RawFd },
    #[error("-chardev id={id}: fd={fd} is also used by -chardev id={other}")]
    Shared { id: String, fd: RawFd, other: String },
    #[error("-chardev id={id}: fd={fd} is not an open descriptor: {source}")]
    NotOpen { id: String, fd: RawFd, source: std::io::Error },
    #[error("-chardev id={id}: fd={fd} is not a socket")]
    NotASocket { id: String, fd: RawFd },
    #[error("-chardev id={id}: fd={fd}: {source}")]
    Listener { id: String, fd: RawFd, source: std::io::Error },
    #[error(
        "-incoming {uri}: xendm restores device state only from a descriptor libxl passes (-incoming fd:N, \
         what xl restore and xl migrate use)"
    )]
    IncomingForm { uri: String },
    #[error("-incoming fd:{fd}: {why}")]
    Incoming { fd: RawFd, why: String },
}

/// The listening QMP sockets taken over from the command line, by chardev
/// id.
#[derive(Debug, Default)]
pub struct InheritedFds {
    qmp: BTreeMap<String, StdUnixListener>,
    incoming: Option<OwnedFd>,
}

impl InheritedFds {
    /// The `-incoming fd:N` descriptor, once.
    pub fn take_incoming(&mut self) -> Option<OwnedFd> {
        self.incoming.take()
    }

    /// The inherited listener of QMP monitor `id`, once.
    pub fn take_qmp(&mut self, id: &str) -> Option<StdUnixListener> {
        self.qmp.remove(id)
    }
}

/// Checks and takes over every `fd=N` of `cfg`'s QMP monitors (see the
/// module docs). Must run before the process opens any descriptor itself.
///
/// # Errors
/// The first descriptor refused, named by its chardev id.
pub fn adopt(cfg: &Config) -> Result<InheritedFds, InheritError> {
    // Every number checked unique before any is owned.
    let mut named: Vec<(RawFd, &str)> = Vec::new();
    for q in &cfg.qmp {
        let QmpSocketSpec::Fd(fd) = q.socket else { continue };
        if let Some((_, other)) = named.iter().find(|(f, _)| *f == fd) {
            return Err(InheritError::Shared { id: q.id.clone(), fd, other: (*other).into() });
        }
        named.push((fd, q.id.as_str()));
    }
    let mut fds = InheritedFds::default();
    for &(fd, id) in &named {
        let owned = take_over(id, fd)?;
        let listener = qmp::bind(QmpListen::Inherited(owned)).map_err(|source| InheritError::Listener {
            id: id.into(),
            fd,
            source,
        })?;
        fds.qmp.insert(id.to_string(), listener);
    }
    if let Some(uri) = &cfg.incoming {
        let fd = incoming_fd(uri)?;
        if named.iter().any(|(f, _)| *f == fd) {
            return Err(InheritError::Incoming { fd, why: "the descriptor is also a QMP socket".into() });
        }
        fds.incoming = Some(take_over_any(fd).map_err(|why| InheritError::Incoming { fd, why })?);
    }
    Ok(fds)
}

/// The number in `fd:N`.
fn incoming_fd(uri: &str) -> Result<RawFd, InheritError> {
    let form = || InheritError::IncomingForm { uri: uri.into() };
    let n = uri.strip_prefix("fd:").ok_or_else(form)?;
    let fd: RawFd = n.parse().map_err(|_| form())?;
    if fd <= 2 {
        return Err(InheritError::Incoming { fd, why: "a standard stream or negative".into() });
    }
    Ok(fd)
}

/// Owns descriptor `fd` if it is open (any type).
fn take_over_any(fd: RawFd) -> Result<OwnedFd, String> {
    {
        // SAFETY: only borrowed to ask the kernel whether it is open (EBADF
        // if not); nothing closes it meanwhile (start-up is single-threaded).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_getfd(borrowed).map_err(|e| format!("not an open descriptor: {e}"))?;
    }
    // SAFETY: open (just checked); not owned by anything else in this
    // process, for the reasons given in `take_over` (inherited across exec,
    // above 2, and checked against the QMP numbers by the caller).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks descriptor `fd` through a borrow and, if it is an open socket,
/// owns it. `adopt` has checked that no other chardev names it.
fn take_over(id: &str, fd: RawFd) -> Result<OwnedFd, InheritError> {
    if fd <= 2 {
        return Err(InheritError::Reserved { id: id.into(), fd });
    }
    {
        // SAFETY: `fd` is only borrowed for this block, to ask the kernel
        // about it: if it is not open, `fcntl` fails with EBADF and nothing
        // else is done with it; nothing in this process closes it meanwhile
        // (start-up is single-threaded here).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_getfd(borrowed).map_err(|e| InheritError::NotOpen { id: id.into(), fd, source: e.into() })?;
        let stat =
            rustix::fs::fstat(borrowed).map_err(|e| InheritError::NotOpen { id: id.into(), fd, source: e.into() })?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
            return Err(InheritError::NotASocket { id: id.into(), fd });
        }
    }
    // SAFETY: `fd` is open (F_GETFD succeeded just above). Nothing else in
    // this process owns it: `adopt` runs before the process opens any
    // descriptor of its own (so an open number above 2 was inherited at
    // exec), the CLI and `adopt` refuse a number named twice, and std owns
    // only 0-2, which are refused above. From here the `OwnedFd` is its one
    // owner and closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, IntoRawFd};

    use crate::cli::run_config as config;

    fn qmp_fd_config(ids_fds: &[(&str, RawFd)]) -> Config {
        let mut args = vec!["-xen-domid".to_string(), "1".to_string()];
        for (id, fd) in ids_fds {
            args.push("-chardev".into());
            args.push(format!("socket,id={id},fd={fd},server=on,wait=off"));
            args.push("-mon".into());
            args.push(format!("chardev={id},mode=control"));
        }
        config(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn a_listening_socket_is_taken_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let fd = StdUnixListener::bind(dir.path().join("q")).unwrap().into_raw_fd();
        let mut fds = adopt(&qmp_fd_config(&[("libxl-cmd", fd)])).unwrap();
        let l = fds.take_qmp("libxl-cmd").unwrap();
        assert_eq!(l.as_raw_fd(), fd);
        assert!(fds.take_qmp("libxl-cmd").is_none());
    }

    #[test]
    fn bad_descriptors_are_refused_by_chardev_name() {
        // A number nothing has open (far above any the tests open).
        let closed = 1_000_000;
        let e = adopt(&qmp_fd_config(&[("m", closed)])).unwrap_err();
        assert!(matches!(e, InheritError::NotOpen { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!("-chardev id=m: fd={closed} is not an open descriptor")), "{e}");

        // A regular file: refused and left open (only borrowed).
        let file = tempfile::tempfile().unwrap();
        let e = adopt(&qmp_fd_config(&[("m", file.as_raw_fd())])).unwrap_err();
        assert_eq!(e.to_string(), format!("-chardev id=m: fd={} is not a socket", file.as_raw_fd()));
        assert!(rustix::io::fcntl_getfd(&file).is_ok());

        // A connected (not listening) socket.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = adopt(&qmp_fd_config(&[("m", a.into_raw_fd())])).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
    }

    #[test]
    fn the_incoming_descriptor_is_taken_over_in_libxls_form_only() {
        let file = tempfile::tempfile().unwrap().into_raw_fd();
        let uri = format!("fd:{file}");
        let mut fds = adopt(&config(&["-xen-domid", "1", "-incoming", &uri])).unwrap();
        assert_eq!(fds.take_incoming().unwrap().as_raw_fd(), file);
        assert!(fds.take_incoming().is_none());
        for (uri, want) in [
            ("tcp:0:4444", "-incoming tcp:0:4444: xendm restores device state only from a descriptor"),
            ("fd:x", "-incoming fd:x: xendm restores"),
            ("fd:1", "-incoming fd:1: a standard stream or negative"),
            ("fd:1000000", "-incoming fd:1000000: not an open descriptor"),
        ] {
            let e = adopt(&config(&["-xen-domid", "1", "-incoming", uri])).unwrap_err().to_string();
            assert!(e.starts_with(want), "{uri}: {e}");
        }
    }

    #[test]
    fn one_number_for_two_monitors_is_refused_before_either_is_owned() {
        // The CLI refuses this already; adopt does not rely on it.
        let dir = tempfile::tempdir().unwrap();
        let l = StdUnixListener::bind(dir.path().join("q")).unwrap();
        let fd = l.as_raw_fd();
        let mut c = qmp_fd_config(&[("a", fd)]);
        let mut second = c.qmp[0].clone();
        second.id = "b".into();
        c.qmp.push(second);
        let e = adopt(&c).unwrap_err();
        assert_eq!(e.to_string(), format!("-chardev id=b: fd={fd} is also used by -chardev id=a"));
        drop(l); // still ours: no double close
    }
}
