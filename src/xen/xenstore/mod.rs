//! A xenstore client in pure Rust, speaking the wire protocol directly.
//!
//! Implements the client side of Xen's `xen/include/public/io/xs_wire.h`
//! (message header, type numbers, error names) with the semantics of
//! `docs/misc/xenstore.txt`:
//!
//! * every message is a 16-byte header `{type, req_id, tx_id, len}` (four
//!   `u32` in the machine's byte order; Xen on x86 is little-endian, which
//!   is what we write) followed by `len <= 4096` bytes of payload;
//! * strings in requests are NUL-terminated; `WRITE`'s value is the raw
//!   rest of the payload; `READ` replies carry the raw value;
//! * `ERROR` replies carry an errno name such as `ENOENT`;
//! * `WATCH_EVENT` messages (`path\0token\0`) arrive at any time, including
//!   between a request and its reply.
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
//! [`testing::FakeXenstored`] is an in-memory `xenstored` for tests.
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use xendm_devices::sync::lock;

use tokio::sync::mpsc as async_mpsc;
use xendm_devices::ratelimit::RateLimit;

/// Largest payload of one message (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Size of the message header (`struct xsd_sockmsg`).
pub const HEADER_LEN: usize = 16;
/// Longest absolute path xenstored accepts (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Unread events kept per watch before new ones are dropped.
pub const WATCH_QUEUE: usize = 1024;
/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where [`XenStore::open`] looks, in order (after `$XENSTORED_PATH`).
pub const DEFAULT_PATHS: [&str; 3] = ["/run/xenstored/socket", "/var/run/xenstored/socket", "/dev/xen/xenbus"];

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Directory,
    Read,
    GetPerms,
    Watch,
    Unwatch,
    TransactionStart,
    TransactionEnd,
    GetDomainPath,
    Write,
    Mkdir,
    Rm,
    SetPerms,
    WatchEvent,
    Error,
}

impl Op {
    const ALL: [Op; 14] = [
        Op::Directory,
        Op::Read,
        Op::GetPerms,
        Op::Watch,
        Op::Unwatch,
        Op::TransactionStart,
        Op::TransactionEnd,
        Op::GetDomainPath,
        Op::Write,
        Op::Mkdir,
        Op::Rm,
        Op::SetPerms,
        Op::WatchEvent,
        Op::Error,
    ];

    /// The wire number.
    pub const fn code(self) -> u32 {
        match self {
            Op::Directory => 1,
            Op::Read => 2,
            Op::GetPerms => 3,
            Op::Watch => 4,
            Op::Unwatch => 5,
            Op::TransactionStart => 6,
            Op::TransactionEnd => 7,
            Op::GetDomainPath => 10,
            Op::Write => 11,
            Op::Mkdir => 12,
            Op::Rm => 13,
            Op::SetPerms => 14,
            Op::WatchEvent => 15,
            Op::Error => 16,
        }
    }

    /// The type for a wire number, if we know it.
    pub fn from_code(code: u32) -> Option<Op> {
        Self::ALL.into_iter().find(|op| op.code() == code)
    }

    /// The `XS_` name without its prefix, as used in error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Directory => "DIRECTORY",
            Op::Read => "READ",
            Op::GetPerms => "GET_PERMS",
            Op::Watch => "WATCH",
            Op::Unwatch => "UNWATCH",
            Op::TransactionStart => "TRANSACTION_START",
            Op::TransactionEnd => "TRANSACTION_END",
            Op::GetDomainPath => "GET_DOMAIN_PATH",
            Op::Write => "WRITE",
            Op::Mkdir => "MKDIR",
            Op::Rm => "RM",
            Op::SetPerms => "SET_PERMS",
            Op::WatchEvent => "WATCH_EVENT",
            Op::Error => "ERROR",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The message header (`struct xsd_sockmsg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        for (chunk, v) in out.chunks_exact_mut(4).zip([self.ty, self.req_id, self.tx_id, self.len]) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a header from the first 16 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let word = |i: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(b))
        };
        Some(Header { ty: word(0)?, req_id: word(1)?, tx_id: word(2)?, len: word(3)? })
    }
}

/// Access a domain has to a node (the letter of a permission string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b` (read and write)
    Both,
}

/// One entry of a node's permission list, written `n0`, `r5`, ... The first
/// entry names the owner (who always has full access) and, through its
/// letter, the access of every domain not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub access: Access,
    pub domid: u32,
}

impl Perm {
    /// A permission entry.
    pub const fn new(access: Access, domid: u32) -> Self {
        Self { access, domid }
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        };
        write!(f, "{c}{}", self.domid)
    }
}

impl FromStr for Perm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => Access::None,
            Some('r') => Access::Read,
            Some('w') => Access::Write,
            Some('b') => Access::Both,
            _ => return Err(format!("bad permission {s:?}")),
        };
        let digits = chars.as_str();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("bad permission {s:?}"));
        }
        let domid = digits.parse().map_err(|_| format!("bad permission {s:?}"))?;
        Ok(Perm { access, domid })
    }
}

/// A watch firing: `path` changed (or is the initial event right after
/// `WATCH`), reported for the watch registered with `token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// Errors of xenstore operations; each names the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// No xenstore connection could be made.
    #[error("xenstore open: {0}")]
    Open(String),
    /// xenstored answered with an error (e.g. `ENOENT`, `EACCES`).
    #[error("xenstore {op} {path}: {errno}")]
    Server { op: Op, path: String, errno: String },
    /// Sending or receiving failed.
    #[error("xenstore {op} {path}: {source}")]
    Io {
        op: Op,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The request would exceed [`XENSTORE_PAYLOAD_MAX`].
    #[error("xenstore {op} {path}: payload of {len} bytes exceeds {XENSTORE_PAYLOAD_MAX}")]
    TooLarge { op: Op, path: String, len: usize },
    /// The caller's argument cannot be sent (NUL byte, empty path, ...).
    #[error("xenstore {op} {path}: invalid argument: {why}")]
    Invalid { op: Op, path: String, why: String },
    /// The reply is not what the protocol allows.
    #[error("xenstore {op} {path}: protocol error: {detail}")]
    Protocol { op: Op, path: String, detail: String },
    /// No reply in time.
    #[error("xenstore {op} {path}: no reply within {timeout:?}")]
    Timeout { op: Op, path: String, timeout: Duration },
    /// The connection is gone.
    #[error("xenstore {op} {path}: connection closed: {reason}")]
    Closed { op: Op, path: String, reason: String },
    /// `watch` with a token this connection already uses.
    #[error("xenstore WATCH {path}: token {token:?} is already in use")]
    DuplicateToken { path: String, token: String },
}

impl XsError {
    /// The errno name when xenstored returned an error.
    pub fn errno(&self) -> Option<&str> {
        match self {
            XsError::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }

    /// Whether xenstored said `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some("ENOENT")
    }
}

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
        let words = split_strings(Op::GetPerms, path, &reply)?;
        words
            .iter()
            .map(|w| w.parse().map_err(|detail| XsError::Protocol { op: Op::GetPerms, path: path.into(), detail }))
            .collect()
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
        let id = single_string(Op::TransactionStart, "", &reply)?;
        let id: u32 = id.parse().map_err(|_| XsError::Protocol {
            op: Op::TransactionStart,
            path: String::new(),
            detail: format!("bad transaction id {id:?}"),
        })?;
        if id == 0 {
            return Err(XsError::Protocol {
                op: Op::TransactionStart,
                path: String::new(),
                detail: "transaction id 0".into(),
            });
        }
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
        if reply == b"OK\0" || reply == b"OK" {
            Ok(())
        } else {
            Err(XsError::Protocol {
                op,
                path: path.into(),
                detail: format!("expected OK, got {:?}", String::from_utf8_lossy(&reply)),
            })
        }
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
        if reply.ty == Op::Error.code() {
            let errno =
                String::from_utf8_lossy(reply.payload.strip_suffix(b"\0").unwrap_or(&reply.payload)).into_owned();
            return Err(XsError::Server { op, path: path.into(), errno });
        }
        if reply.ty != op.code() {
            return Err(XsError::Protocol {
                op,
                path: path.into(),
                detail: format!("reply has type {} for request type {}", reply.ty, op.code()),
            });
        }
        Ok(reply.payload)
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
        while let Some(header) = Header::parse(&buf) {
            let len = header.len as usize;
            if len > XENSTORE_PAYLOAD_MAX {
                return format!("message of {len} bytes exceeds {XENSTORE_PAYLOAD_MAX}");
            }
            let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
                break;
            };
            let payload = payload.to_vec();
            buf.drain(..HEADER_LEN + len);
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
    let mut parts = payload.split(|&b| b == 0);
    let (Some(path), Some(token)) = (parts.next(), parts.next()) else {
        if let Some(n) = warn.check() {
            tracing::warn!(suppressed = n, "xenstore: malformed watch event");
        }
        return;
    };
    let event = WatchEvent {
        path: String::from_utf8_lossy(path).into_owned(),
        token: String::from_utf8_lossy(token).into_owned(),
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

fn check_string(op: Op, what: &str, s: &str) -> Result<(), XsError> {
    if s.as_bytes().contains(&0) {
        return Err(XsError::Invalid { op, path: what.into(), why: "contains a NUL byte".into() });
    }
    Ok(())
}

fn nul_terminated(op: Op, path: &str) -> Result<Vec<u8>, XsError> {
    check_string(op, path, path)?;
    if path.is_empty() {
        return Err(XsError::Invalid { op, path: path.into(), why: "empty path".into() });
    }
    if path.len() > XENSTORE_ABS_PATH_MAX {
        return Err(XsError::TooLarge { op, path: path.into(), len: path.len() });
    }
    let mut v = Vec::with_capacity(path.len() + 1);
    v.extend_from_slice(path.as_bytes());
    v.push(0);
    Ok(v)
}

fn path_and_token(op: Op, path: &str, token: &str) -> Result<Vec<u8>, XsError> {
    check_string(op, path, token)?;
    let mut v = nul_terminated(op, path)?;
    v.extend_from_slice(token.as_bytes());
    v.push(0);
    Ok(v)
}

/// Splits a list of NUL-terminated strings (DIRECTORY, GET_PERMS replies).
fn split_strings(op: Op, path: &str, payload: &[u8]) -> Result<Vec<String>, XsError> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == 0)
        .map(|s| {
            String::from_utf8(s.to_vec()).map_err(|_| XsError::Protocol {
                op,
                path: path.into(),
                detail: "reply is not UTF-8".into(),
            })
        })
        .collect()
}

fn single_string(op: Op, path: &str, payload: &[u8]) -> Result<String, XsError> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    String::from_utf8(body.to_vec()).map_err(|_| XsError::Protocol {
        op,
        path: path.into(),
        detail: "reply is not UTF-8".into(),
    })
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

pub mod testing {
    //! An in-memory `xenstored` on a unix socket, for tests.
    //!
    //! It follows `docs/misc/xenstore.txt` for what clients see: relative
    //! paths live under `/local/domain/0` (every client is dom0); `WRITE` and
    //! `MKDIR` create missing parents; `RM` of a missing node succeeds when
    //! its parent exists; `WATCH` fires once right after its `OK`; changes
    //! fire the watches on the node and its ancestors, and are queued to the
    //! watchers before the writer gets its reply (so a client sees an event
    //! between its request and the reply, as the lab capture shows);
    //! transactions work on a private copy and fail with `EAGAIN` when the
    //! store changed meanwhile. Permissions are stored and inherited from the
    //! parent but not enforced. Not implemented: quotas, `@introduceDomain`
    //! events, `XS_SET_TARGET`/`XS_INTRODUCE` and friends (they get
    //! `EINVAL`).

    use super::{lock, Header, Op, Perm, HEADER_LEN, XENSTORE_PAYLOAD_MAX};
    use std::collections::{BTreeMap, HashMap};
    use std::io::{self, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    const HOME: &str = "/local/domain/0";

    #[derive(Clone)]
    struct Node {
        value: Vec<u8>,
        perms: Vec<Perm>,
    }

    struct WatchReg {
        conn: u64,
        /// As the client gave it (relative or absolute).
        path: String,
        abs: String,
        token: String,
    }

    struct Tx {
        conn: u64,
        base_generation: u64,
        nodes: BTreeMap<String, Node>,
        changed: Vec<String>,
    }

    struct Store {
        nodes: BTreeMap<String, Node>,
        generation: u64,
        watches: Vec<WatchReg>,
        conns: HashMap<u64, UnixStream>,
        txs: HashMap<u32, Tx>,
        next_tx: u32,
        /// Every request seen: (type name, tx id, payload as text).
        log: Vec<(String, u32, String)>,
    }

    type Reply = Result<Vec<u8>, &'static str>;

    /// A fake xenstored serving a unix socket.
    pub struct FakeXenstored {
        path: PathBuf,
        store: Arc<Mutex<Store>>,
        stop: Arc<AtomicBool>,
        acceptor: Option<JoinHandle<()>>,
    }

    impl FakeXenstored {
        /// Listens on `socket_path` (which must not exist). The tree starts
        /// with `/local/domain/0/domid` = `0`, like a real dom0.
        pub fn start(socket_path: &Path) -> io::Result<FakeXenstored> {
            let listener = UnixListener::bind(socket_path)?;
            let mut nodes = BTreeMap::new();
            let root_perms = vec![Perm::new(super::Access::None, 0)];
            nodes.insert("/".to_owned(), Node { value: Vec::new(), perms: root_perms });
            let store = Arc::new(Mutex::new(Store {
                nodes,
                generation: 0,
                watches: Vec::new(),
                conns: HashMap::new(),
                txs: HashMap::new(),
                next_tx: 1,
                log: Vec::new(),
            }));
            let stop = Arc::new(AtomicBool::new(false));
            let mut fake = FakeXenstored { path: socket_path.to_owned(), store, stop, acceptor: None };
            fake.write("/local/domain/0/domid", "0");
            let (store, stop) = (Arc::clone(&fake.store), Arc::clone(&fake.stop));
            let acceptor = std::thread::Builder::new()
                .name("fake-xenstored".into())
                .spawn(move || accept_loop(listener, store, stop))?;
            fake.acceptor = Some(acceptor);
            Ok(fake)
        }

        /// The socket path (for [`super::XenStore::connect_unix`]).
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// The value at an absolute path, if the node exists.
        pub fn read(&self, path: &str) -> Option<Vec<u8>> {
            lock(&self.store).nodes.get(path).map(|n| n.value.clone())
        }

        /// The permissions of an absolute path, if the node exists.
        pub fn perms(&self, path: &str) -> Option<Vec<Perm>> {
            lock(&self.store).nodes.get(path).map(|n| n.perms.clone())
        }

        /// Writes as another party would (fires watches).
        pub fn write(&self, path: &str, value: &str) {
            let mut st = lock(&self.store);
            st.generation += 1;
            let nodes = &mut st.nodes;
            write_node(nodes, path, value.as_bytes());
            fire(&mut st, path);
        }

        /// Removes a subtree as another party would (fires watches).
        pub fn rm(&self, path: &str) {
            let mut st = lock(&self.store);
            st.generation += 1;
            remove_subtree(&mut st.nodes, path);
            fire(&mut st, path);
        }

        /// Every request served so far: (type, tx id, payload with NULs
        /// shown as `|`).
        pub fn log(&self) -> Vec<(String, u32, String)> {
            lock(&self.store).log.clone()
        }

        /// Closes every client connection (clients see EOF).
        pub fn disconnect_all(&self) {
            let mut st = lock(&self.store);
            for (_, c) in st.conns.drain() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    impl Drop for FakeXenstored {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Unblock accept().
            let _ = UnixStream::connect(&self.path);
            self.disconnect_all();
            if let Some(h) = self.acceptor.take() {
                let _ = h.join();
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn accept_loop(listener: UnixListener, store: Arc<Mutex<Store>>, stop: Arc<AtomicBool>) {
        let mut next_conn = 0u64;
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { continue };
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            next_conn += 1;
            let conn = next_conn;
            lock(&store).conns.insert(conn, writer);
            let store = Arc::clone(&store);
            let _ = std::thread::Builder::new()
                .name(format!("fake-xenstored-{conn}"))
                .spawn(move || serve_conn(conn, stream, store));
        }
    }

    fn serve_conn(conn: u64, mut stream: UnixStream, store: Arc<Mutex<Store>>) {
        let mut header = [0u8; HEADER_LEN];
        loop {
            if stream.read_exact(&mut header).is_err() {
                break;
            }
            let Some(h) = Header::parse(&header) else {
                break;
            };
            if h.len as usize > XENSTORE_PAYLOAD_MAX {
                break; // xenstored drops such a connection
            }
            let mut payload = vec![0u8; h.len as usize];
            if stream.read_exact(&mut payload).is_err() {
                break;
            }
            let mut st = lock(&store);
            st.log.push((
                Op::from_code(h.ty).map_or_else(|| h.ty.to_string(), |op| op.name().to_owned()),
                h.tx_id,
                String::from_utf8_lossy(&payload).replace('\0', "|"),
            ));
            let reply = handle(&mut st, conn, h, &payload);
            let (ty, body) = match reply {
                Ok(body) => (h.ty, body),
                Err(errno) => (Op::Error.code(), format!("{errno}\0").into_bytes()),
            };
            let len = u32::try_from(body.len()).unwrap_or(0);
            send(&mut st, conn, Header { ty, req_id: h.req_id, tx_id: h.tx_id, len }, &body);
            // The initial event of a new watch follows its OK.
            if h.ty == Op::Watch.code() && ty == Op::Watch.code() {
                if let Some(w) = st.watches.iter().rev().find(|w| w.conn == conn) {
                    let ev = event_payload(&w.path, &w.token);
                    send_event(&mut st, conn, &ev);
                }
            }
        }
        let mut st = lock(&store);
        st.conns.remove(&conn);
        st.watches.retain(|w| w.conn != conn);
        st.txs.retain(|_, t| t.conn != conn);
    }

    fn send(st: &mut Store, conn: u64, h: Header, body: &[u8]) {
        if let Some(s) = st.conns.get_mut(&conn) {
            let mut msg = h.to_bytes().to_vec();
            msg.extend_from_slice(body);
            let _ = s.write_all(&msg);
        }
    }

    fn send_event(st: &mut Store, conn: u64, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap_or(0);
        send(st, conn, Header { ty: Op::WatchEvent.code(), req_id: 0, tx_id: 0, len }, payload);
    }

    fn event_payload(path: &str, token: &str) -> Vec<u8> {
        format!("{path}\0{token}\0").into_bytes()
    }

    /// Makes a client path absolute, or `EINVAL`.
    fn resolve(path: &str) -> Result<String, &'static str> {
        let ok_chars = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
        if path.is_empty() || !ok_chars || path.contains("//") || (path.len() > 1 && path.ends_with('/')) {
            return Err("EINVAL");
        }
        Ok(if path.starts_with('/') { path.to_owned() } else { format!("{HOME}/{path}") })
    }

    fn parent(path: &str) -> Option<&str> {
        if path == "/" {
            return None;
        }
        match path.rfind('/') {
            Some(0) => Some("/"),
            Some(i) => path.get(..i),
            None => None,
        }
    }

    fn is_under(path: &str, dir: &str) -> bool {
        path == dir || dir == "/" || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Creates `path` and missing ancestors; new nodes inherit the parent's
    /// permissions. Returns whether `path` was created.
    fn create(nodes: &mut BTreeMap<String, Node>, path: &str) -> bool {
        if nodes.contains_key(path) {
            return false;
        }
        if let Some(p) = parent(path) {
            create(nodes, p);
        }
        let perms = parent(path).and_then(|p| nodes.get(p)).map(|n| n.perms.clone()).unwrap_or_default();
        nodes.insert(path.to_owned(), Node { value: Vec::new(), perms });
        true
    }

    fn write_node(nodes: &mut BTreeMap<String, Node>, path: &str, value: &[u8]) {
        create(nodes, path);
        if let Some(n) = nodes.get_mut(path) {
            n.value = value.to_vec();
        }
    }

    fn remove_subtree(nodes: &mut BTreeMap<String, Node>, path: &str) {
        nodes.retain(|k, _| !is_under(k, path) || path == "/" && k == "/");
    }

    fn children(nodes: &BTreeMap<String, Node>, path: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for key in nodes.keys() {
            let rest = if path == "/" {
                key.strip_prefix('/')
            } else {
                key.strip_prefix(path).and_then(|r| r.strip_prefix('/'))
            };
            if let Some(name) = rest {
                if !name.is_empty() && !name.contains('/') {
                    out.extend_from_slice(name.as_bytes());
                    out.push(0);
                }
            }
        }
        out
    }

    /// Queues events for a change at `abs` to every interested watch: those
    /// on `abs` or an ancestor (event path `abs`) and, for removals, those
    /// below it (event path = the watch's own path).
    fn fire(st: &mut Store, abs: &str) {
        let mut events = Vec::new();
        for w in &st.watches {
            let path = if is_under(abs, &w.abs) {
                abs.to_owned()
            } else if is_under(&w.abs, abs) {
                w.abs.clone()
            } else {
                continue;
            };
            // Relative watches get relative event paths.
            let shown = if w.path.starts_with('/') {
                path
            } else {
                path.strip_prefix(HOME).and_then(|r| r.strip_prefix('/')).map_or(path.clone(), str::to_owned)
            };
            events.push((w.conn, event_payload(&shown, &w.token)));
        }
        for (conn, ev) in events {
            send_event(st, conn, &ev);
        }
    }

    fn strings(payload: &[u8]) -> Vec<String> {
        let body = payload.strip_suffix(b"\0").unwrap_or(payload);
        body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
    }

    fn first_string(payload: &[u8]) -> String {
        strings(payload).into_iter().next().unwrap_or_default()
    }

    fn handle(st: &mut Store, conn: u64, h: Header, payload: &[u8]) -> Reply {
        let ok = || Ok(b"OK\0".to_vec());
        let Some(op) = Op::from_code(h.ty) else {
            return Err("EINVAL");
        };
        match op {
            Op::TransactionStart => {
                let id = st.next_tx;
                st.next_tx += 1;
                let tx = Tx { conn, base_generation: st.generation, nodes: st.nodes.clone(), changed: Vec::new() };
                st.txs.insert(id, tx);
                return Ok(format!("{id}\0").into_bytes());
            }
            Op::TransactionEnd => {
                let Some(tx) = st.txs.remove(&h.tx_id) else {
                    return Err("ENOENT");
                };
                if tx.conn != conn {
                    return Err("ENOENT");
                }
                match first_string(payload).as_str() {
                    "F" => return ok(),
                    "T" => {}
                    _ => return Err("EINVAL"),
                }
                if tx.base_generation != st.generation {
                    return Err("EAGAIN");
                }
                st.nodes = tx.nodes;
                st.generation += 1;
                for p in tx.changed {
                    fire(st, &p);
                }
                return ok();
            }
            Op::Watch => {
                let args = strings(payload);
                let (Some(path), Some(token)) = (args.first(), args.get(1)) else {
                    return Err("EINVAL");
                };
                let abs = if path.starts_with('@') { path.clone() } else { resolve(path)? };
                if st.watches.iter().any(|w| w.conn == conn && w.path == *path && w.token == *token) {
                    return Err("EEXIST");
                }
                st.watches.push(WatchReg { conn, path: path.clone(), abs, token: token.clone() });
                return ok();
            }
            Op::Unwatch => {
                let args = strings(payload);
                let (Some(path), Some(token)) = (args.first(), args.get(1)) else {
                    return Err("EINVAL");
                };
                let before = st.watches.len();
                st.watches.retain(|w| !(w.conn == conn && w.path == *path && w.token == *token));
                return if st.watches.len() == before { Err("ENOENT") } else { ok() };
            }
            Op::GetDomainPath => {
                let arg = first_string(payload);
                let domid: u32 = arg.parse().map_err(|_| "EINVAL")?;
                return Ok(format!("/local/domain/{domid}\0").into_bytes());
            }
            _ => {}
        }
        // Node operations, inside a transaction or not.
        let in_tx = h.tx_id != 0;
        if in_tx && st.txs.get(&h.tx_id).is_none_or(|t| t.conn != conn) {
            return Err("ENOENT");
        }
        let (path_bytes, rest) = match payload.iter().position(|&b| b == 0) {
            Some(i) => (payload.get(..i).unwrap_or_default(), payload.get(i + 1..).unwrap_or_default()),
            None => (payload, &[][..]),
        };
        let abs = resolve(&String::from_utf8_lossy(path_bytes))?;
        let mut changed = None;
        let result = {
            let nodes = if in_tx {
                match st.txs.get_mut(&h.tx_id) {
                    Some(t) => &mut t.nodes,
                    None => return Err("ENOENT"),
                }
            } else {
                &mut st.nodes
            };
            match op {
                Op::Read => nodes.get(&abs).map(|n| n.value.clone()).ok_or("ENOENT"),
                Op::Directory => {
                    if nodes.contains_key(&abs) {
                        Ok(children(nodes, &abs))
                    } else {
                        Err("ENOENT")
                    }
                }
                Op::GetPerms => match nodes.get(&abs) {
                    Some(n) => Ok(n.perms.iter().flat_map(|p| format!("{p}\0").into_bytes()).collect()),
                    None => Err("ENOENT"),
                },
                Op::Write => {
                    write_node(nodes, &abs, rest);
                    changed = Some(abs.clone());
                    ok()
                }
                Op::Mkdir => {
                    if create(nodes, &abs) {
                        changed = Some(abs.clone());
                    }
                    ok()
                }
                Op::Rm => {
                    if nodes.contains_key(&abs) {
                        remove_subtree(nodes, &abs);
                        changed = Some(abs.clone());
                        ok()
                    } else if parent(&abs).is_some_and(|p| nodes.contains_key(p)) {
                        ok()
                    } else {
                        Err("ENOENT")
                    }
                }
                Op::SetPerms => {
                    let perms: Result<Vec<Perm>, _> = strings(rest).iter().map(|s| s.parse::<Perm>()).collect();
                    match (perms, nodes.get_mut(&abs)) {
                        (Ok(p), _) if p.is_empty() => Err("EINVAL"),
                        (Err(_), _) => Err("EINVAL"),
                        (Ok(_), None) => Err("ENOENT"),
                        (Ok(p), Some(n)) => {
                            n.perms = p;
                            changed = Some(abs.clone());
                            ok()
                        }
                    }
                }
                _ => Err("EINVAL"),
            }
        };
        if let Some(path) = changed {
            if in_tx {
                if let Some(t) = st.txs.get_mut(&h.tx_id) {
                    t.changed.push(path);
                }
            } else {
                st.generation += 1;
                fire(st, &path);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::testing::FakeXenstored;
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
    fn perm_strings() {
        assert_eq!("n0".parse::<Perm>().unwrap(), Perm::new(Access::None, 0));
        assert_eq!("b32752".parse::<Perm>().unwrap(), Perm::new(Access::Both, 32752));
        assert_eq!(Perm::new(Access::Write, 7).to_string(), "w7");
        for bad in ["", "n", "x1", "r-1", "r1a", "r99999999999", "r+1"] {
            assert!(bad.parse::<Perm>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domain_path() {
        let (_d, _fake, xs) = fake();
        assert_eq!(xs.get_domain_path(2).unwrap(), "/local/domain/2");
        assert_eq!(xs.get_domain_path(0).unwrap(), "/local/domain/0");
    }

    #[test]
    fn header_encoding() {
        let h = Header { ty: 11, req_id: 0x0102_0304, tx_id: 7, len: 4096 };
        let b = h.to_bytes();
        assert_eq!(b, [11, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 0, 16, 0, 0]);
        assert_eq!(Header::parse(&b), Some(h));
        assert_eq!(Header::parse(&b[..15]), None);
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(8), None);
        assert_eq!((Op::Read.code(), Op::Write.code(), Op::Error.code(), Op::WatchEvent.code()), (2, 11, 16, 15));
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
