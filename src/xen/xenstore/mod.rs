//! A xenstore client in pure Rust, speaking the wire protocol ([`wire`],
//! Xen's `xs_wire.h`) directly.
//!
//! Design: one connection (the unix socket of `xenstored`, or
//! `/dev/xen/xenbus`) per [`XenStore`]. A reader thread owns the receiving
//! side, matches replies to requests by `req_id`, and hands watch events to
//! one bounded channel per watch. Requests may come from several threads at
//! once. Each request waits at most [`XenStore::set_timeout`] (30 s default)
//! for its reply.
//!
//! Where we differ from libxenstore: no automatic reconnect, no
//! `XS_RESET_WATCHES` on open, and watch events that find their channel full
//! (more than [`WATCH_QUEUE`] unread) are dropped with a warning; watchers
//! must re-read the state they watch (as xenstore clients must anyway,
//! since events are coalesced by nobody and only say "something changed").
//!
//! [`announce_running`] is the device model's start-up signal to libxl.
//! `fake.rs` is an in-memory `xenstored` for tests (feature `testing`).
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use xendm_devices::sync::lock;

use tokio::sync::mpsc as async_mpsc;
use xendm_devices::ratelimit::RateLimit;

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod wire;

use wire::{
    check_reply, expect_ok, nul_terminated, parse_perms, parse_transaction_id, parse_watch_event, path_and_token,
    single_string, split_strings, take_message,
};
pub use wire::{
    Access, Header, Op, Perm, WatchEvent, XsError, HEADER_LEN, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX,
};

/// Unread events kept per watch before new ones are dropped.
pub const WATCH_QUEUE: usize = 1024;
/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where [`XenStore::open`] looks, in order (after `$XENSTORED_PATH`).
pub const DEFAULT_PATHS: [&str; 3] = ["/run/xenstored/socket", "/var/run/xenstored/socket", "/dev/xen/xenbus"];

/// A reply as the reader thread hands it to a waiting request.
struct RawReply {
    ty: u32,
    payload: Vec<u8>,
}

struct State {
    next_req_id: u32,
    pending: HashMap<u32, mpsc::SyncSender<RawReply>>,
    watches: HashMap<String, async_mpsc::Sender<WatchEvent>>,
    /// Why the connection died, once it has.
    dead: Option<String>,
}

struct Inner {
    writer: Mutex<Box<dyn Write + Send>>,
    state: Mutex<State>,
    timeout: Mutex<Duration>,
}

/// What the reader thread reads from.
trait Source: Read + AsFd + Send {}
impl<T: Read + AsFd + Send> Source for T {}

/// A connection to xenstored.
pub struct XenStore {
    inner: Arc<Inner>,
    wake: OwnedFd,
    reader: Option<JoinHandle<()>>,
}

impl fmt::Debug for XenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenStore").finish_non_exhaustive()
    }
}

impl XenStore {
    /// Connects the way libxenstore does: `$XENSTORED_PATH` if set, then
    /// [`DEFAULT_PATHS`] in order (unix sockets are connected to, character
    /// devices opened read-write).
    pub fn open() -> Result<XenStore, XsError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("XENSTORED_PATH") {
            candidates.push(PathBuf::from(p));
        }
        candidates.extend(DEFAULT_PATHS.iter().map(PathBuf::from));
        let mut tried = Vec::new();
        for path in candidates {
            match Self::open_path(&path) {
                Ok(xs) => {
                    tracing::debug!(path = %path.display(), "connected to xenstore");
                    return Ok(xs);
                }
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
        Err(XsError::Open(format!("no xenstore connection ({})", tried.join("; "))))
    }

    /// Connects to `path`, a unix socket or a xenbus character device.
    pub fn open_path(path: &Path) -> io::Result<XenStore> {
        let meta = std::fs::metadata(path)?;
        if meta.file_type().is_socket() {
            Self::connect_unix(path)
        } else if meta.file_type().is_char_device() {
            Self::open_device(path)
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidInput, "neither a socket nor a character device"))
        }
    }

    /// Connects to xenstored's unix socket.
    pub fn connect_unix(path: &Path) -> io::Result<XenStore> {
        let stream = UnixStream::connect(path)?;
        let reader = stream.try_clone()?;
        Self::start(Box::new(stream), Box::new(reader))
    }

    /// Opens the xenbus device (`/dev/xen/xenbus`).
    pub fn open_device(path: &Path) -> io::Result<XenStore> {
        let file: File = OpenOptions::new().read(true).write(true).open(path)?;
        let reader = file.try_clone()?;
        Self::start(Box::new(file), Box::new(reader))
    }

    fn start(writer: Box<dyn Write + Send>, reader: Box<dyn Source>) -> io::Result<XenStore> {
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        let reader_wake = wake.try_clone()?;
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            state: Mutex::new(State { next_req_id: 1, pending: HashMap::new(), watches: HashMap::new(), dead: None }),
            timeout: Mutex::new(DEFAULT_TIMEOUT),
        });
        let thread_inner = Arc::clone(&inner);
        let reader = std::thread::Builder::new()
            .name("xenstore-reader".into())
            .spawn(move || reader_loop(reader, reader_wake, thread_inner))?;
        Ok(XenStore { inner, wake, reader: Some(reader) })
    }

    /// Sets how long each request waits for its reply.
    pub fn set_timeout(&self, timeout: Duration) {
        *lock(&self.inner.timeout) = timeout;
    }

    /// `XS_READ`: the value at `path`, which must be UTF-8.
    pub fn read(&self, path: &str) -> Result<String, XsError> {
        let bytes = self.read_bytes(path)?;
        String::from_utf8(bytes).map_err(|_| XsError::Protocol {
            op: Op::Read,
            path: path.into(),
            detail: "value is not UTF-8".into(),
        })
    }

    /// `XS_READ`: the raw value at `path`.
    pub fn read_bytes(&self, path: &str) -> Result<Vec<u8>, XsError> {
        self.read_tx(0, path)
    }

    /// `XS_WRITE`: sets `path` to `value`, creating missing parents.
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.write_tx(0, path, value.as_ref())
    }

    /// `XS_MKDIR`: creates `path` (and parents) if missing.
    pub fn mkdir(&self, path: &str) -> Result<(), XsError> {
        self.simple_tx(0, Op::Mkdir, path)
    }

    /// `XS_RM`: removes `path` and everything below it.
    pub fn rm(&self, path: &str) -> Result<(), XsError> {
        self.simple_tx(0, Op::Rm, path)
    }

    /// `XS_DIRECTORY`: the names of `path`'s children.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        self.directory_tx(0, path)
    }

    /// `XS_GET_PERMS`: `path`'s permission list (owner first).
    pub fn get_perms(&self, path: &str) -> Result<Vec<Perm>, XsError> {
        let payload = nul_terminated(Op::GetPerms, path)?;
        let reply = self.request(Op::GetPerms, 0, &payload, path)?;
        parse_perms(path, &reply)
    }

    /// `XS_SET_PERMS`: replaces `path`'s permission list; `perms[0]` is the
    /// owner entry.
    pub fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        if perms.is_empty() {
            return Err(XsError::Invalid { op: Op::SetPerms, path: path.into(), why: "empty permission list".into() });
        }
        let mut payload = nul_terminated(Op::SetPerms, path)?;
        for p in perms {
            payload.extend_from_slice(p.to_string().as_bytes());
            payload.push(0);
        }
        self.request_ok(Op::SetPerms, 0, &payload, path)
    }

    /// `XS_GET_DOMAIN_PATH`: the home directory of `domid`
    /// (`/local/domain/<domid>`).
    pub fn get_domain_path(&self, domid: u32) -> Result<String, XsError> {
        let arg = domid.to_string();
        let payload = nul_terminated(Op::GetDomainPath, &arg)?;
        let reply = self.request(Op::GetDomainPath, 0, &payload, &arg)?;
        single_string(Op::GetDomainPath, &arg, &reply)
    }

    /// `XS_WATCH`: watches `path` and everything below it. Events (starting
    /// with one for `path` itself, which xenstored always sends) arrive on
    /// the returned channel until [`unwatch`](Self::unwatch) or until the
    /// connection dies. Tokens must be unique on this connection.
    pub fn watch(&self, path: &str, token: &str) -> Result<async_mpsc::Receiver<WatchEvent>, XsError> {
        let payload = path_and_token(Op::Watch, path, token)?;
        let (tx, rx) = async_mpsc::channel(WATCH_QUEUE);
        {
            let mut st = lock(&self.inner.state);
            if st.watches.contains_key(token) {
                return Err(XsError::DuplicateToken { path: path.into(), token: token.into() });
            }
            // Registered before the request: the first event may come
            // before the reply.
            st.watches.insert(token.to_owned(), tx);
        }
        match self.request_ok(Op::Watch, 0, &payload, path) {
            Ok(()) => Ok(rx),
            Err(e) => {
                lock(&self.inner.state).watches.remove(token);
                Err(e)
            }
        }
    }

    /// `XS_UNWATCH`: stops the watch registered with `path` and `token`;
    /// its channel closes.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError> {
        let payload = path_and_token(Op::Unwatch, path, token)?;
        let result = self.request_ok(Op::Unwatch, 0, &payload, path);
        if result.is_ok() {
            lock(&self.inner.state).watches.remove(token);
        }
        result
    }

    /// `XS_TRANSACTION_START`: begins a transaction.
    pub fn transaction(&self) -> Result<Transaction<'_>, XsError> {
        let reply = self.request(Op::TransactionStart, 0, b"\0", "")?;
        let id = parse_transaction_id(&reply)?;
        Ok(Transaction { xs: self, id, done: false })
    }

    fn read_tx(&self, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        let payload = nul_terminated(Op::Read, path)?;
        self.request(Op::Read, tx, &payload, path)
    }

    fn write_tx(&self, tx: u32, path: &str, value: &[u8]) -> Result<(), XsError> {
        let mut payload = nul_terminated(Op::Write, path)?;
        payload.extend_from_slice(value);
        self.request_ok(Op::Write, tx, &payload, path)
    }

    fn simple_tx(&self, tx: u32, op: Op, path: &str) -> Result<(), XsError> {
        let payload = nul_terminated(op, path)?;
        self.request_ok(op, tx, &payload, path)
    }

    fn directory_tx(&self, tx: u32, path: &str) -> Result<Vec<String>, XsError> {
        let payload = nul_terminated(Op::Directory, path)?;
        let reply = self.request(Op::Directory, tx, &payload, path)?;
        split_strings(Op::Directory, path, &reply)
    }

    /// Sends a request whose reply must be `OK`.
    fn request_ok(&self, op: Op, tx: u32, payload: &[u8], path: &str) -> Result<(), XsError> {
        let reply = self.request(op, tx, payload, path)?;
        expect_ok(op, path, &reply)
    }

    /// Sends one request and waits for its reply's payload.
    fn request(&self, op: Op, tx: u32, payload: &[u8], path: &str) -> Result<Vec<u8>, XsError> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsError::TooLarge { op, path: path.into(), len: payload.len() });
        }
        let closed = |reason: &str| XsError::Closed { op, path: path.into(), reason: reason.into() };
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let req_id = {
            let mut st = lock(&self.inner.state);
            if let Some(reason) = &st.dead {
                return Err(closed(reason));
            }
            let mut id = st.next_req_id;
            while st.pending.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            st.next_req_id = id.wrapping_add(1);
            st.pending.insert(id, reply_tx);
            id
        };
        let forget = || {
            lock(&self.inner.state).pending.remove(&req_id);
        };
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut msg = Header { ty: op.code(), req_id, tx_id: tx, len }.to_bytes().to_vec();
        msg.extend_from_slice(payload);
        {
            // One write per message: the xenbus device wants whole messages.
            let mut w = lock(&self.inner.writer);
            if let Err(source) = w.write_all(&msg).and_then(|()| w.flush()) {
                drop(w);
                forget();
                return Err(XsError::Io { op, path: path.into(), source });
            }
        }
        let timeout = *lock(&self.inner.timeout);
        let reply = match reply_rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                forget();
                return Err(XsError::Timeout { op, path: path.into(), timeout });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let reason = lock(&self.inner.state).dead.clone().unwrap_or_else(|| "reader stopped".into());
                return Err(closed(&reason));
            }
        };
        check_reply(op, path, reply.ty, reply.payload)
    }
}

impl Drop for XenStore {
    fn drop(&mut self) {
        // Wake the reader thread and wait for it.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        if let Some(handle) = self.reader.take() {
            let _ = handle.join();
        }
    }
}

/// A xenstore transaction. Dropping it without [`commit`](Self::commit)
/// aborts it.
pub struct Transaction<'a> {
    xs: &'a XenStore,
    id: u32,
    done: bool,
}

impl Transaction<'_> {
    /// The transaction id xenstored assigned.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `XS_READ` inside the transaction.
    pub fn read(&self, path: &str) -> Result<String, XsError> {
        let bytes = self.xs.read_tx(self.id, path)?;
        String::from_utf8(bytes).map_err(|_| XsError::Protocol {
            op: Op::Read,
            path: path.into(),
            detail: "value is not UTF-8".into(),
        })
    }

    /// `XS_WRITE` inside the transaction.
    pub fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.xs.write_tx(self.id, path, value.as_ref())
    }

    /// `XS_MKDIR` inside the transaction.
    pub fn mkdir(&self, path: &str) -> Result<(), XsError> {
        self.xs.simple_tx(self.id, Op::Mkdir, path)
    }

    /// `XS_RM` inside the transaction.
    pub fn rm(&self, path: &str) -> Result<(), XsError> {
        self.xs.simple_tx(self.id, Op::Rm, path)
    }

    /// `XS_DIRECTORY` inside the transaction.
    pub fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        self.xs.directory_tx(self.id, path)
    }

    /// Commits. `Ok(false)` means xenstored refused with `EAGAIN` (something
    /// changed meanwhile): nothing was applied and the caller should retry.
    pub fn commit(mut self) -> Result<bool, XsError> {
        self.done = true;
        match self.end(true) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some("EAGAIN") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Aborts: nothing done in the transaction is applied.
    pub fn abort(mut self) -> Result<(), XsError> {
        self.done = true;
        self.end(false)
    }

    fn end(&self, commit: bool) -> Result<(), XsError> {
        let payload: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.xs.request_ok(Op::TransactionEnd, self.id, payload, "")
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.end(false) {
                tracing::debug!("abort of xenstore transaction {}: {e}", self.id);
            }
        }
    }
}

/// The reader thread: parses messages, routes replies and watch events.
fn reader_loop(mut source: Box<dyn Source>, wake: OwnedFd, inner: Arc<Inner>) {
    let reason = read_messages(&mut *source, &wake, &inner);
    tracing::debug!("xenstore reader stopping: {reason}");
    let mut st = lock(&inner.state);
    st.dead = Some(reason);
    // Dropping the senders wakes every waiting request and closes every
    // watch channel.
    st.pending.clear();
    st.watches.clear();
}

/// Reads until the connection ends, fails, or we are told to stop; returns
/// why it stopped.
fn read_messages(source: &mut dyn Source, wake: &OwnedFd, inner: &Inner) -> String {
    use rustix::event::{PollFd, PollFlags};
    let mut buf: Vec<u8> = Vec::with_capacity(HEADER_LEN + XENSTORE_PAYLOAD_MAX);
    let mut chunk = vec![0u8; HEADER_LEN + XENSTORE_PAYLOAD_MAX];
    let mut stray = RateLimit::per_second();
    loop {
        let (conn_ready, stop) = {
            let mut fds = [PollFd::from_borrowed_fd(source.as_fd(), PollFlags::IN), PollFd::new(wake, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return format!("poll: {e}"),
            }
            let [conn, wake] = &fds;
            (!conn.revents().is_empty(), !wake.revents().is_empty())
        };
        if stop {
            return "connection closed by us".into();
        }
        if !conn_ready {
            continue;
        }
        let n = match source.read(&mut chunk) {
            Ok(0) => return "xenstored closed the connection".into(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return format!("read: {e}"),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        loop {
            let (header, payload) = match take_message(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return e,
            };
            if header.ty == Op::WatchEvent.code() {
                deliver_event(inner, &payload, &mut stray);
                continue;
            }
            let waiter = lock(&inner.state).pending.remove(&header.req_id);
            match waiter {
                // A full or closed channel means the requester gave up.
                Some(w) => {
                    let _ = w.try_send(RawReply { ty: header.ty, payload });
                }
                None => {
                    if let Some(n) = stray.check() {
                        tracing::warn!(
                            suppressed = n,
                            "xenstore: reply type {} with unknown req_id {}",
                            header.ty,
                            header.req_id
                        );
                    }
                }
            }
        }
    }
}

fn deliver_event(inner: &Inner, payload: &[u8], warn: &mut RateLimit) {
    let Some(event) = parse_watch_event(payload) else {
        if let Some(n) = warn.check() {
            tracing::warn!(suppressed = n, "xenstore: malformed watch event");
        }
        return;
    };
    let sender = lock(&inner.state).watches.get(&event.token).cloned();
    let Some(sender) = sender else {
        tracing::debug!(path = %event.path, token = %event.token, "xenstore: event for unknown watch");
        return;
    };
    if let Err(async_mpsc::error::TrySendError::Full(ev)) = sender.try_send(event) {
        if let Some(n) = warn.check() {
            tracing::warn!(suppressed = n, path = %ev.path, token = %ev.token, "xenstore: watch queue full, event dropped");
        }
    }
}

/// Tells libxl the device model is up: writes `running` to
/// `device-model/<domid>/state` under the DM's own home directory.
///
/// Like QEMU, it first reads its own `domid` (a relative path, so
/// xenstored answers for the connection's domain: `0` in dom0, the stubdom's
/// id in a stubdom) and writes the absolute path
/// `/local/domain/<own>/device-model/<domid>/state`; if `domid` cannot be
/// read it writes the relative path, which xenstored resolves the same way.
/// Returns the path written. Call it only once the QMP socket listens:
/// libxl connects as soon as it sees `running`.
///
/// No `backends/` directories are created: libxl only reads
/// `device-model/<domid>/backends/qusb` (for USB) and falls back to a
/// default when it is missing.
pub fn announce_running(xs: &XenStore, domid: u32) -> Result<String, XsError> {
    let path = match xs.read("domid").map(|s| s.trim().parse::<u32>()) {
        Ok(Ok(own)) => format!("/local/domain/{own}/device-model/{domid}/state"),
        Ok(Err(e)) => {
            tracing::warn!("xenstore: own domid unreadable ({e}); using a relative path");
            format!("device-model/{domid}/state")
        }
        Err(e) => {
            tracing::debug!("{e}; using a relative path");
            format!("device-model/{domid}/state")
        }
    };
    xs.write(&path, "running")?;
    tracing::info!(path = %path, "announced running to the toolstack");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::fake::FakeXenstored;
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;
    use tokio::sync::mpsc::error::TryRecvError;

    fn fake() -> (tempfile::TempDir, FakeXenstored, XenStore) {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeXenstored::start(&dir.path().join("xenstored.sock")).unwrap();
        let xs = XenStore::connect_unix(fake.path()).unwrap();
        xs.set_timeout(Duration::from_secs(5));
        (dir, fake, xs)
    }

    /// Waits up to 2 s for the next event; `None` if none came.
    fn next_event(rx: &mut async_mpsc::Receiver<WatchEvent>) -> Option<WatchEvent> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match rx.try_recv() {
                Ok(ev) => return Some(ev),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) if Instant::now() > deadline => return None,
                Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn ev(path: &str, token: &str) -> WatchEvent {
        WatchEvent { path: path.into(), token: token.into() }
    }

    #[test]
    fn read_write_mkdir_directory_rm() {
        let (_d, fake, xs) = fake();
        assert_eq!(xs.read("domid").unwrap(), "0");
        xs.write("/local/domain/3/name", "hvm3").unwrap();
        assert_eq!(xs.read("/local/domain/3/name").unwrap(), "hvm3");
        // Relative paths live under our home, /local/domain/0.
        xs.write("device-model/3/state", "running").unwrap();
        assert_eq!(fake.read("/local/domain/0/device-model/3/state").unwrap(), b"running");
        assert_eq!(xs.read("/local/domain/0/device-model/3/state").unwrap(), "running");
        // Binary values pass through unchanged; an empty value is a value.
        xs.write("bin", [0u8, 255, 1]).unwrap();
        assert_eq!(xs.read_bytes("bin").unwrap(), vec![0u8, 255, 1]);
        assert!(matches!(xs.read("bin"), Err(XsError::Protocol { .. })));
        xs.mkdir("device-model/3/backends/console").unwrap();
        xs.mkdir("device-model/3/backends/vkbd").unwrap();
        xs.mkdir("device-model/3/backends/vkbd").unwrap(); // idempotent
        assert_eq!(xs.read("device-model/3/backends").unwrap(), "");
        let mut dir = xs.directory("device-model/3/backends").unwrap();
        dir.sort();
        assert_eq!(dir, vec!["console", "vkbd"]);
        assert_eq!(xs.directory("device-model/3/backends/vkbd").unwrap(), Vec::<String>::new());
        xs.rm("device-model/3").unwrap();
        assert!(xs.read("device-model/3/state").unwrap_err().is_not_found());
        assert_eq!(fake.read("/local/domain/0/device-model/3/backends/console"), None);
        assert_eq!(fake.read("/local/domain/0/device-model").unwrap(), b"");
        // Removing a missing node is fine while its parent exists.
        xs.rm("device-model/3").unwrap();
        assert_eq!(xs.rm("/no/such/parent").unwrap_err().errno(), Some("ENOENT"));
    }

    #[test]
    fn errors_name_operation_and_path() {
        let (_d, _fake, xs) = fake();
        let e = xs.read("/local/domain/2/console/state").unwrap_err();
        assert_eq!(e.to_string(), "xenstore READ /local/domain/2/console/state: ENOENT");
        assert!(e.is_not_found());
        let e = xs.directory("backend/9pfs/2").unwrap_err();
        assert_eq!(e.to_string(), "xenstore DIRECTORY backend/9pfs/2: ENOENT");
        let e = xs.write("bad path!", "x").unwrap_err();
        assert_eq!(e.to_string(), "xenstore WRITE bad path!: EINVAL");
        let e = xs.get_perms("/nope").unwrap_err();
        assert_eq!(e.to_string(), "xenstore GET_PERMS /nope: ENOENT");
    }

    #[test]
    fn arguments_are_checked_before_sending() {
        let (_d, fake, xs) = fake();
        let before = fake.log().len();
        assert!(matches!(xs.write("a\0b", "x"), Err(XsError::Invalid { .. })));
        assert!(matches!(xs.read(""), Err(XsError::Invalid { .. })));
        assert!(matches!(xs.watch("a", "t\0"), Err(XsError::Invalid { .. })));
        assert!(matches!(xs.set_perms("a", &[]), Err(XsError::Invalid { .. })));
        let e = xs.write("big", vec![b'x'; XENSTORE_PAYLOAD_MAX]).unwrap_err();
        assert_eq!(e.to_string(), format!("xenstore WRITE big: payload of 4100 bytes exceeds 4096"));
        assert!(matches!(xs.read(&"a".repeat(XENSTORE_ABS_PATH_MAX + 1)), Err(XsError::TooLarge { .. })));
        assert_eq!(fake.log().len(), before, "nothing may reach the server");
        // The largest payload that fits is accepted.
        xs.write("big", vec![b'x'; XENSTORE_PAYLOAD_MAX - 4]).unwrap();
        assert_eq!(xs.read("big").unwrap().len(), XENSTORE_PAYLOAD_MAX - 4);
    }

    #[test]
    fn permissions_round_trip() {
        let (_d, fake, xs) = fake();
        // What QEMU does for each PV backend it offers (lab capture).
        xs.mkdir("device-model/2/backends/console").unwrap();
        let perms = [Perm::new(Access::None, 0), Perm::new(Access::Read, 2)];
        xs.set_perms("device-model/2/backends/console", &perms).unwrap();
        assert_eq!(xs.get_perms("device-model/2/backends/console").unwrap(), perms);
        assert_eq!(fake.perms("/local/domain/0/device-model/2/backends/console").unwrap(), perms);
        assert!(fake.log().iter().any(|(op, _, p)| op == "SET_PERMS" && p == "device-model/2/backends/console|n0|r2|"));
        // Children inherit.
        xs.write("device-model/2/backends/console/x", "1").unwrap();
        assert_eq!(xs.get_perms("device-model/2/backends/console/x").unwrap(), perms);
        assert_eq!(xs.set_perms("/missing", &perms).unwrap_err().errno(), Some("ENOENT"));
    }

    #[test]
    fn domain_path() {
        let (_d, _fake, xs) = fake();
        assert_eq!(xs.get_domain_path(2).unwrap(), "/local/domain/2");
        assert_eq!(xs.get_domain_path(0).unwrap(), "/local/domain/0");
    }

    #[test]
    fn watch_events_initial_external_and_own_writes() {
        let (_d, fake, xs) = fake();
        let mut rx = xs.watch("backend/console/2", "be:console").unwrap();
        // xenstored fires once right away, with the path as registered.
        assert_eq!(next_event(&mut rx), Some(ev("backend/console/2", "be:console")));
        // Another party writes below the watched node.
        fake.write("/local/domain/0/backend/console/2/0/state", "1");
        assert_eq!(next_event(&mut rx), Some(ev("backend/console/2/0/state", "be:console")));
        // Our own write: the fake sends the event *before* the WRITE reply
        // (as xenstored does in the lab capture); the write must still
        // succeed and the event must already be queued when it returns.
        xs.write("backend/console/2/0/state", "2").unwrap();
        assert_eq!(rx.try_recv().unwrap(), ev("backend/console/2/0/state", "be:console"));
        // An absolute watch reports absolute paths.
        let mut abs = xs.watch("/local/domain/2/console", "fe:console").unwrap();
        assert_eq!(next_event(&mut abs), Some(ev("/local/domain/2/console", "fe:console")));
        fake.write("/local/domain/2/console/type", "xenconsoled");
        assert_eq!(next_event(&mut abs), Some(ev("/local/domain/2/console/type", "fe:console")));
        // Removal of an ancestor fires with the watched path.
        fake.rm("/local/domain/2");
        assert_eq!(next_event(&mut abs), Some(ev("/local/domain/2/console", "fe:console")));
        // Unrelated changes do not fire.
        fake.write("/local/domain/0/backend/vkbd/2/0/state", "1");
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        // Unwatch closes the channel.
        xs.unwatch("backend/console/2", "be:console").unwrap();
        fake.write("/local/domain/0/backend/console/2/0/state", "3");
        assert_eq!(next_event(&mut rx), None);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
        assert_eq!(xs.unwatch("backend/console/2", "be:console").unwrap_err().errno(), Some("ENOENT"));
        // The other watch is still alive.
        fake.write("/local/domain/2/console/tty", "/dev/pts/1");
        assert_eq!(next_event(&mut abs), Some(ev("/local/domain/2/console/tty", "fe:console")));
    }

    #[test]
    fn duplicate_token_is_refused_locally() {
        let (_d, _fake, xs) = fake();
        let _rx = xs.watch("a", "tok").unwrap();
        assert!(matches!(xs.watch("b", "tok"), Err(XsError::DuplicateToken { .. })));
    }

    #[test]
    fn watch_channel_closes_and_requests_fail_when_xenstored_goes_away() {
        let (_d, fake, xs) = fake();
        let mut rx = xs.watch("x", "t").unwrap();
        assert!(next_event(&mut rx).is_some());
        fake.disconnect_all();
        assert_eq!(next_event(&mut rx), None);
        let e = xs.read("domid").unwrap_err();
        assert!(matches!(e, XsError::Closed { .. }), "{e}");
        assert!(e.to_string().starts_with("xenstore READ domid: connection closed"), "{e}");
    }

    #[test]
    fn transactions_commit_abort_and_conflict() {
        let (_d, fake, xs) = fake();
        let tx = xs.transaction().unwrap();
        assert_ne!(tx.id(), 0);
        tx.write("t/a", "1").unwrap();
        assert_eq!(tx.read("t/a").unwrap(), "1");
        assert!(xs.read("t/a").unwrap_err().is_not_found(), "not visible before commit");
        assert!(tx.commit().unwrap());
        assert_eq!(xs.read("t/a").unwrap(), "1");

        let tx = xs.transaction().unwrap();
        tx.write("t/b", "1").unwrap();
        tx.abort().unwrap();
        assert!(xs.read("t/b").unwrap_err().is_not_found());

        {
            let tx = xs.transaction().unwrap();
            tx.write("t/c", "1").unwrap();
        } // dropped: aborted
        assert!(xs.read("t/c").unwrap_err().is_not_found());

        let tx = xs.transaction().unwrap();
        assert_eq!(tx.directory("t").unwrap(), vec!["a"]);
        fake.write("/local/domain/0/t/other", "x");
        tx.write("t/d", "1").unwrap();
        assert!(!tx.commit().unwrap(), "conflict must ask for a retry");
        assert!(xs.read("t/d").unwrap_err().is_not_found());
        let ends: Vec<_> = fake.log().into_iter().filter(|(op, _, _)| op == "TRANSACTION_END").collect();
        assert_eq!(ends.len(), 4);
    }

    #[test]
    fn concurrent_requests_from_several_threads() {
        let (_d, _fake, xs) = fake();
        let mut rx = xs.watch("conc", "w").unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let xs = &xs;
                s.spawn(move || {
                    for i in 0..50 {
                        let path = format!("conc/{t}/{i}");
                        xs.write(&path, format!("{t}-{i}")).unwrap();
                        assert_eq!(xs.read(&path).unwrap(), format!("{t}-{i}"));
                    }
                });
            }
        });
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        // The initial event plus one per write.
        assert_eq!(n, 1 + 4 * 50);
    }

    #[test]
    fn announce_running_writes_state_under_own_home() {
        let (_d, fake, xs) = fake();
        // libxl creates the directory and watches the state key.
        fake.write("/local/domain/0/device-model/5", "");
        let libxl = XenStore::connect_unix(fake.path()).unwrap();
        libxl.set_timeout(Duration::from_secs(5));
        let mut rx = libxl.watch("/local/domain/0/device-model/5/state", "3/0").unwrap();
        assert_eq!(next_event(&mut rx), Some(ev("/local/domain/0/device-model/5/state", "3/0")));
        let path = announce_running(&xs, 5).unwrap();
        assert_eq!(path, "/local/domain/0/device-model/5/state");
        assert_eq!(next_event(&mut rx), Some(ev("/local/domain/0/device-model/5/state", "3/0")));
        assert_eq!(libxl.read(&path).unwrap(), "running");
        let log = fake.log();
        let ours: Vec<_> = log.iter().filter(|(op, _, _)| op == "READ" || op == "WRITE").collect();
        assert!(ours.iter().any(|(op, _, p)| op == "READ" && p == "domid|"), "{log:?}");
        assert!(ours.iter().any(|(op, _, p)| op == "WRITE" && p == "/local/domain/0/device-model/5/state|running"));
        drop(libxl);
    }

    #[test]
    fn announce_running_falls_back_to_relative_path() {
        let (_d, fake, xs) = fake();
        fake.rm("/local/domain/0/domid");
        assert_eq!(announce_running(&xs, 7).unwrap(), "device-model/7/state");
        assert_eq!(fake.read("/local/domain/0/device-model/7/state").unwrap(), b"running");
    }

    #[test]
    fn open_path_accepts_sockets_only() {
        let (dir, fake, _xs) = fake();
        let xs = XenStore::open_path(fake.path()).unwrap();
        assert_eq!(xs.read("domid").unwrap(), "0");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(XenStore::open_path(&file).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    /// A one-connection server that answers each request with `respond`.
    fn raw_server(
        dir: &Path,
        respond: impl Fn(Header, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> (PathBuf, std::thread::JoinHandle<()>) {
        let path = dir.join("raw.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hdr = [0u8; HEADER_LEN];
            while s.read_exact(&mut hdr).is_ok() {
                let h = Header::parse(&hdr).unwrap();
                let mut payload = vec![0u8; h.len as usize];
                s.read_exact(&mut payload).unwrap();
                if let Some(out) = respond(h, &payload) {
                    if s.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
        (path, handle)
    }

    fn msg(ty: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Header { ty, req_id, tx_id: 0, len: payload.len() as u32 }.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn oversized_reply_kills_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _h) = raw_server(dir.path(), |h, _| {
            let mut out = Header { ty: h.ty, req_id: h.req_id, tx_id: 0, len: 5000 }.to_bytes().to_vec();
            out.extend_from_slice(&[b'a'; 5000]);
            Some(out)
        });
        let xs = XenStore::connect_unix(&path).unwrap();
        xs.set_timeout(Duration::from_secs(5));
        let e = xs.read("x").unwrap_err();
        assert!(matches!(e, XsError::Closed { .. }), "{e}");
        assert!(e.to_string().contains("5000 bytes exceeds 4096"), "{e}");
        assert!(matches!(xs.read("y"), Err(XsError::Closed { .. })));
    }

    #[test]
    fn event_before_reply_and_replies_are_matched_by_req_id() {
        let dir = tempfile::tempdir().unwrap();
        // Sends a watch event, a stray reply for an unknown req_id, then the
        // real reply split in two writes.
        let (path, _h) = raw_server(dir.path(), |h, payload| {
            let mut out = Vec::new();
            if h.ty == Op::Watch.code() {
                out.extend(msg(Op::Watch.code(), h.req_id, b"OK\0"));
                out.extend(msg(Op::WatchEvent.code(), 0, payload));
                return Some(out);
            }
            out.extend(msg(Op::WatchEvent.code(), 0, b"some/path\0tok\0"));
            out.extend(msg(Op::Read.code(), h.req_id.wrapping_add(1000), b"wrong"));
            out.extend(msg(h.ty, h.req_id, b"value"));
            Some(out)
        });
        let xs = XenStore::connect_unix(&path).unwrap();
        xs.set_timeout(Duration::from_secs(5));
        let mut rx = xs.watch("some", "tok").unwrap();
        assert_eq!(next_event(&mut rx), Some(ev("some", "tok")));
        assert_eq!(xs.read("some/path").unwrap(), "value");
        assert_eq!(rx.try_recv().unwrap(), ev("some/path", "tok"));
    }

    #[test]
    fn wrong_reply_type_is_a_protocol_error_and_error_replies_carry_errno() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _h) = raw_server(dir.path(), |h, _| {
            if h.ty == Op::Read.code() {
                Some(msg(Op::Directory.code(), h.req_id, b"x\0"))
            } else {
                Some(msg(Op::Error.code(), h.req_id, b"EACCES\0"))
            }
        });
        let xs = XenStore::connect_unix(&path).unwrap();
        xs.set_timeout(Duration::from_secs(5));
        assert!(matches!(xs.read("a"), Err(XsError::Protocol { .. })));
        let e = xs.write("/local/domain/1/x", "1").unwrap_err();
        assert_eq!(e.to_string(), "xenstore WRITE /local/domain/1/x: EACCES");
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _h) = raw_server(dir.path(), |_, _| None);
        let xs = XenStore::connect_unix(&path).unwrap();
        xs.set_timeout(Duration::from_millis(100));
        let e = xs.read("domid").unwrap_err();
        assert!(matches!(e, XsError::Timeout { .. }), "{e}");
        assert_eq!(e.to_string(), "xenstore READ domid: no reply within 100ms");
    }

    #[test]
    fn dropping_the_client_stops_its_reader_thread() {
        let (_d, _fake, xs) = fake();
        let start = Instant::now();
        drop(xs);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
