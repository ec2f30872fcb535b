//! File descriptors over QMP: the ones a client passes with `SCM_RIGHTS`
//! (unix(7)), and the fd sets `add-fd` files them in (QEMU
//! `qapi/misc.json`: `add-fd`, `remove-fd`, `query-fdsets`; a file name
//! `/dev/fdset/N` then means "a descriptor of set N"). libxl uses this for
//! one thing: `xl save` / `migrate` passes the open device-state file with
//! `add-fd` and names `/dev/fdset/N` in `xen-save-devices-state`
//! (`xen-toolstack.md` 2.1).
//!
//! Where we differ from QEMU:
//! * fd sets belong to the connection that made them and are closed with
//!   it (QEMU shares them between monitors and keeps them while a monitor
//!   is connected); libxl sends `add-fd` and the command that uses it on
//!   one connection;
//! * at most [`MAX_PENDING`] received descriptors wait for an `add-fd`, and
//!   at most [`MAX_FDS`] sit in sets; more are closed at once (logged);
//! * a received descriptor waits for the next `add-fd` of the connection
//!   (QEMU keeps the last one received).

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

use super::encode::{generic, to_return, Reply};

/// Received descriptors kept for `add-fd`.
pub const MAX_PENDING: usize = 4;
/// Descriptors kept in fd sets, per connection.
pub const MAX_FDS: usize = 16;
/// Largest fd-set id accepted from a client (QEMU takes any non-negative
/// `int`; libxl lets us choose).
pub const MAX_FDSET_ID: i64 = i32::MAX as i64;

/// A QMP transport: bytes both ways, and the descriptors that arrived with
/// the bytes read so far.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Takes the descriptors received since the last call.
    fn take_fds(&mut self) -> Vec<OwnedFd>;
}

/// A unix socket connection that keeps the descriptors sent with
/// `SCM_RIGHTS` (at most [`MAX_PENDING`] per read: the kernel closes the
/// rest, as the control buffer has no room for them).
pub struct UnixFds {
    stream: UnixStream,
    fds: Vec<OwnedFd>,
}

impl UnixFds {
    /// Wraps an accepted connection.
    pub const fn new(stream: UnixStream) -> Self {
        Self { stream, fds: Vec::new() }
    }
}

impl AsyncRead for UnixFds {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let this = &mut *self;
            let space = buf.initialize_unfilled();
            let (stream, fds) = (&this.stream, &mut this.fds);
            let r = stream.try_io(Interest::READABLE, || recv_with_fds(stream, space, fds));
            match r {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One `recvmsg`: the bytes into `buf`, the descriptors onto `fds`.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_PENDING))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg =
        rustix::net::recvmsg(stream.as_fd(), &mut [io::IoSliceMut::new(buf)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok(msg.bytes)
}

impl AsyncWrite for UnixFds {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Transport for UnixFds {
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// Any byte stream, carrying no descriptors (a vchan, a test pipe).
pub struct NoFds<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for NoFds<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoFds<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for NoFds<S> {
    fn take_fds(&mut self) -> Vec<OwnedFd> {
        Vec::new()
    }
}

/// One connection's received descriptors and fd sets.
#[derive(Debug, Default)]
pub(super) struct Fds {
    pending: Vec<OwnedFd>,
    sets: BTreeMap<i64, Vec<OwnedFd>>,
    dropped: u64,
}

impl Fds {
    /// Keeps descriptors that arrived with a read, up to [`MAX_PENDING`].
    pub(super) fn receive(&mut self, fds: Vec<OwnedFd>) {
        for fd in fds {
            if self.pending.len() < MAX_PENDING {
                self.pending.push(fd);
            } else {
                self.dropped = self.dropped.saturating_add(1);
                tracing::warn!(
                    total = self.dropped,
                    "QMP: a passed file descriptor was closed: {MAX_PENDING} wait for add-fd already"
                );
            }
        }
    }

    fn count(&self) -> usize {
        self.sets.values().map(Vec::len).sum()
    }

    /// `add-fd {"fdset-id"?: int, "opaque"?: str}`: files the oldest
    /// received descriptor in the set (the lowest free id if none is named).
    pub(super) fn add_fd(&mut self, args: &Map<String, Value>) -> Reply {
        let id = match args.get("fdset-id") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(id) if (0..=MAX_FDSET_ID).contains(&id) => Some(id),
                Some(_) => return generic("Parameter 'fdset-id' expects a non-negative value"),
                None => return generic("Invalid parameter type for 'fdset-id', expected: integer"),
            },
        };
        if let Some(v) = args.get("opaque") {
            if !v.is_string() {
                return generic("Invalid parameter type for 'opaque', expected: string");
            }
        }
        if self.pending.is_empty() {
            return generic("No file descriptor supplied via SCM_RIGHTS");
        }
        if self.count() >= MAX_FDS {
            return generic(format!("Too many file descriptors in fd sets (at most {MAX_FDS} per connection)"));
        }
        let id = id.unwrap_or_else(|| (0..).find(|i| !self.sets.contains_key(i)).unwrap_or(0));
        let fd = self.pending.remove(0);
        let raw = fd.as_raw_fd();
        self.sets.entry(id).or_default().push(fd);
        to_return(&AddFdInfo { fdset_id: id, fd: raw })
    }

    /// `remove-fd {"fdset-id": int, "fd"?: int}`: closes one descriptor of
    /// the set, or all of them.
    pub(super) fn remove_fd(&mut self, args: &Map<String, Value>) -> Reply {
        let Some(id) = args.get("fdset-id").and_then(Value::as_i64) else {
            return generic("Parameter 'fdset-id' is missing or not an integer");
        };
        let fd = match args.get("fd") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(fd) => Some(fd),
                None => return generic("Invalid parameter type for 'fd', expected: integer"),
            },
        };
        let not_found = || match fd {
            Some(fd) => generic(format!("File descriptor named 'fdset-id:{id}, fd:{fd}' not found")),
            None => generic(format!("File descriptor named 'fdset-id:{id}' not found")),
        };
        let Some(set) = self.sets.get_mut(&id) else { return not_found() };
        match fd {
            None => {
                self.sets.remove(&id);
            }
            Some(fd) => {
                let Some(at) = set.iter().position(|f| i64::from(f.as_raw_fd()) == fd) else { return not_found() };
                set.remove(at);
                if set.is_empty() {
                    self.sets.remove(&id);
                }
            }
        }
        Reply::Return(b"{}".to_vec())
    }

    /// `query-fdsets`.
    pub(super) fn query(&self) -> Reply {
        let sets: Vec<FdsetInfo> = self
            .sets
            .iter()
            .map(|(id, fds)| FdsetInfo {
                fdset_id: *id,
                fds: fds.iter().map(|f| FdsetFdInfo { fd: f.as_raw_fd() }).collect(),
            })
            .collect();
        to_return(&sets)
    }

    /// The descriptor a file name means: `/dev/fdset/N` names set N (its
    /// first descriptor). Other names are refused: xendm opens no file
    /// after start-up (its sandbox forbids it), so a save goes through a
    /// passed descriptor, as libxl passes it.
    ///
    /// # Errors
    /// QMP's error text for the name.
    pub(super) fn lookup(&self, filename: &str) -> Result<BorrowedFd<'_>, String> {
        let Some(n) = filename.strip_prefix("/dev/fdset/") else {
            return Err(format!(
                "Could not open '{filename}': xendm writes device state only to a descriptor passed with add-fd \
                 (/dev/fdset/N), as libxl does"
            ));
        };
        let id: i64 = n.parse().map_err(|_| format!("Could not open '{filename}': not a valid fd set"))?;
        match self.sets.get(&id).and_then(|s| s.first()) {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(format!("Could not open '{filename}': No such file or directory")),
        }
    }
}

#[derive(Serialize)]
struct AddFdInfo {
    #[serde(rename = "fdset-id")]
    fdset_id: i64,
    fd: i32,
}

#[derive(Serialize)]
struct FdsetFdInfo {
    fd: i32,
}

#[derive(Serialize)]
struct FdsetInfo {
    #[serde(rename = "fdset-id")]
    fdset_id: i64,
    fds: Vec<FdsetFdInfo>,
}
