//! QMP server: the control socket libxl talks to.
//!
//! Implements the subset of the QEMU Machine Protocol (QEMU
//! `docs/interop/qmp-spec.rst`) that Xen's libxl uses against qemu-xen
//! (`tools/libs/light/libxl_qmp.c`, `libxl_dm.c`, `libxl_domain.c`), as listed
//! in `docs/usage.md` ("QMP and xenstore"):
//!
//! * transport: a listening unix socket, either bound by us
//!   (`-chardev socket,path=...`) or inherited (`-chardev socket,fd=N`), see
//!   [`bind`]; any number of sequential clients, a few concurrent ones per
//!   socket, each bounded in time (`limits.rs`: idle, read and write
//!   timeouts; a full socket makes room for a new client by closing the
//!   one idle the longest);
//! * framing: every message we send ends in `"\r\n"` (libxl splits only on
//!   CRLF); requests are parsed as a stream of JSON values, so one read may
//!   hold part of a request or several requests;
//! * the greeting advertises QEMU 7.2.0 (what Debian's qemu-xen is) with no
//!   capabilities, then the client must send `qmp_capabilities`;
//! * replies echo the request's `id` (any JSON value) and use QEMU's
//!   separators (`", "`, `": "`), so they match QEMU's bytes.
//!
//! Where we differ from QEMU:
//! * no asynchronous events are ever sent (libxl ignores them);
//! * no out-of-band execution (`oob` is not offered);
//! * the vCPU commands (`query-cpus-fast`, `query-hotpluggable-cpus`,
//!   `device_add` of a CPU, `cpu-add`) differ as `vcpus.rs` says;
//! * input handling (the 1 MiB cap, recovery after malformed JSON, when input
//!   is parsed) is described in `session.rs`.
//!
//! * `limits.rs` - clients per socket, timeouts, eviction;
//! * `session.rs` - one connection's protocol state: framing, negotiation;
//! * `commands.rs` - the commands, their reply payloads, the greeting;
//! * `vcpus.rs` - the vCPU commands (`xl vcpu-set`);
//! * `encode.rs` - replies in QEMU's exact bytes.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use xendm_devices::ratelimit::RateLimit;

mod commands;
mod encode;
pub mod fds;
mod limits;
mod session;
mod vcpus;

pub use limits::QmpLimits;
pub use vcpus::{FixedVcpus, HotAddError, VcpuControl, VcpuSet, CPU_TYPE};

use commands::greeting;
#[cfg(test)]
pub(crate) use commands::write_blob;
use encode::encode;
use limits::{Client, Clients};
use session::Session;

/// The QEMU version we advertise, `(major, minor, micro)`. libxl needs at
/// least 2.12 to use the current command forms; 7.2.0 mirrors Debian's
/// qemu-xen.
pub const QEMU_VERSION: (u32, u32, u32) = (7, 2, 0);

/// Largest amount of unparsed input kept per connection (libxl's own receive
/// buffer has the same cap).
pub const MAX_INPUT: usize = 1 << 20;

/// Concurrent clients served per listener (see [`QmpLimits`]; libxl is
/// strictly sequential).
pub const MAX_CLIENTS: usize = 8;

/// Where the QMP socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpSocketSpec {
    /// `-chardev socket,path=P,server=on`: we create the socket.
    Path(PathBuf),
    /// `-chardev socket,fd=N,server=on`: libxl passed a bound, listening
    /// socket (dm_restrict).
    Fd(i32),
}

/// A QMP listening socket to create, or one already taken over from the
/// command line (`crate::app` adopts `fd=N` before anything else runs).
#[derive(Debug)]
pub enum QmpListen {
    /// Create the socket at this path.
    Path(PathBuf),
    /// A descriptor inherited from libxl, now owned by us.
    Inherited(OwnedFd),
}

/// Creates (path form) or adopts (inherited form) the listening QMP socket.
///
/// Path form: a stale socket file at the path is unlinked first (a file that
/// is not a socket is left alone and reported as `AlreadyExists`), then the
/// socket is bound and put into listening mode. Inherited form: the
/// descriptor must be a listening `AF_UNIX` socket; it is marked
/// close-on-exec and becomes the listener (on error it is closed). Either
/// way the listener is non-blocking, ready for
/// [`tokio::net::UnixListener::from_std`].
pub fn bind(endpoint: QmpListen) -> io::Result<StdUnixListener> {
    let listener = match endpoint {
        QmpListen::Path(path) => bind_path(&path)?,
        QmpListen::Inherited(fd) => adopt_fd(fd)?,
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn bind_path(path: &Path) -> io::Result<StdUnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::debug!(path = %path.display(), "removing stale QMP socket");
            std::fs::remove_file(path).map_err(|e| with_path(e, "unlink stale QMP socket", path))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("QMP socket path {} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e, "stat QMP socket", path)),
    }
    StdUnixListener::bind(path).map_err(|e| with_path(e, "bind QMP socket", path))
}

fn with_path(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

fn adopt_fd(fd: OwnedFd) -> io::Result<StdUnixListener> {
    let raw = fd.as_raw_fd();
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("QMP fd {raw}: {why}"));
    let stat = rustix::fs::fstat(&fd).map_err(|e| invalid(format!("fstat: {e}")))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::Socket {
        return Err(invalid("not a socket".into()));
    }
    let domain = rustix::net::sockopt::socket_domain(&fd).map_err(|e| invalid(format!("SO_DOMAIN: {e}")))?;
    if domain != rustix::net::AddressFamily::UNIX {
        return Err(invalid("not an AF_UNIX socket".into()));
    }
    let listening = rustix::net::sockopt::socket_acceptconn(&fd).map_err(|e| invalid(format!("SO_ACCEPTCONN: {e}")))?;
    if !listening {
        return Err(invalid("socket is not listening".into()));
    }
    let flags = rustix::io::fcntl_getfd(&fd).map_err(|e| invalid(format!("F_GETFD: {e}")))?;
    rustix::io::fcntl_setfd(&fd, flags | rustix::io::FdFlags::CLOEXEC).map_err(|e| invalid(format!("F_SETFD: {e}")))?;
    Ok(StdUnixListener::from(fd))
}

/// The VM's run state as QMP `query-status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, not yet continued.
    Prelaunch,
    /// Running.
    Running,
    /// Stopped by `stop` (or after `-incoming`).
    Paused,
}

impl RunState {
    /// QEMU's name for the state (`RunState` enum in `qapi/run-state.json`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Prelaunch => "prelaunch",
            Self::Running => "running",
            Self::Paused => "paused",
        }
    }
}

/// One character device as `query-chardev` lists it.
///
/// Serialised in QEMU's member order: `frontend-open`, `filename`, `label`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChardevInfo {
    /// Whether a front end (device or monitor) has it open.
    #[serde(rename = "frontend-open")]
    pub frontend_open: bool,
    /// QEMU-style description, e.g. `pty:/dev/pts/3`,
    /// `unix:/var/run/xen/qmp-libxl-2,server=on`.
    pub filename: String,
    /// The chardev id, e.g. `serial0`, `libxl-cmd`.
    pub label: String,
}

impl ChardevInfo {
    /// A serial port backed by a pty: `label` `serialN`, filename
    /// `pty:<path>` (libxl copies `<path>` to `serial/N/tty`).
    pub fn pty(label: impl Into<String>, pty_path: &Path) -> Self {
        Self { frontend_open: true, filename: format!("pty:{}", pty_path.display()), label: label.into() }
    }

    /// A QMP monitor socket, as QEMU lists its own monitors:
    /// `unix:<path>,server=on`, prefixed with `disconnected:` when no client
    /// is connected.
    pub fn qmp_socket(label: impl Into<String>, socket_path: &Path, connected: bool) -> Self {
        let prefix = if connected { "" } else { "disconnected:" };
        Self {
            frontend_open: true,
            filename: format!("{prefix}unix:{},server=on", socket_path.display()),
            label: label.into(),
        }
    }
}

/// What the QMP server needs from the rest of the device model.
pub trait VmControl: Send + Sync {
    /// The current run state.
    fn status(&self) -> RunState;
    /// Starts or resumes the VM. Must succeed when it is already running.
    fn cont(&self) -> Result<(), String>;
    /// Pauses the VM.
    fn stop(&self) -> Result<(), String>;
    /// Every character device, including the QMP monitors themselves.
    fn chardevs(&self) -> Vec<ChardevInfo>;
    /// The guest's vCPUs: present ones and the maximum.
    fn vcpus(&self) -> VcpuSet;
    /// Hot-adds vCPU `index` (QMP `device_add` of a CPU, `cpu-add`).
    ///
    /// # Errors
    /// See [`HotAddError`].
    fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError>;
    /// The device state blob (`src/machine/state.rs`) for QMP
    /// `xen-save-devices-state`; `live` is libxl's flag (a live migration).
    ///
    /// # Errors
    /// Why no blob could be made (QMP's error text).
    fn save_device_state(&self, live: bool) -> Result<Vec<u8>, String>;
    /// QMP `xen-set-global-dirty-log`: report the guest frames the device
    /// model writes (on) or stop (off). Accepted in any run state.
    ///
    /// # Errors
    /// Why it cannot (no guest memory: probe mode).
    fn set_dirty_log(&self, enable: bool) -> Result<(), String>;
    /// Asks the device model to exit (called after the reply is sent).
    fn quit(&self);
}

/// Errors of one QMP connection.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Reading a request failed.
    #[error("QMP read from client: {0}")]
    Read(#[source] io::Error),
    /// Sending a reply failed.
    #[error("QMP write to client: {0}")]
    Write(#[source] io::Error),
    /// Encoding a reply failed (not expected to happen).
    #[error("QMP encode reply: {0}")]
    Encode(#[source] serde_json::Error),
    /// The client was too slow ([`QmpLimits`]): `what` is `idle`, `read`
    /// or `write`.
    #[error("QMP client {what} timeout ({}s)", after.as_secs_f32())]
    Timeout { what: &'static str, after: Duration },
    /// A new client needed the slot of this idle one.
    #[error("QMP client closed to make room for a new one")]
    Evicted,
}

/// Accepts clients forever and serves each one on its own task, with the
/// default [`QmpLimits`].
pub async fn serve(listener: UnixListener, ctl: Arc<dyn VmControl>) {
    serve_with(listener, ctl, QmpLimits::default()).await;
}

/// Accepts clients forever and serves each one on its own task, within
/// `limits`; dropping the future closes every connection it spawned.
pub async fn serve_with(listener: UnixListener, ctl: Arc<dyn VmControl>, limits: QmpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_clients.max(1)));
    let clients = Arc::new(Clients::default());
    let mut conns = JoinSet::new();
    let mut accept_errors = RateLimit::per_second();
    let drop_log = Arc::new(std::sync::Mutex::new(RateLimit::per_second()));
    loop {
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                if let Some(n) = accept_errors.check() {
                    tracing::warn!(suppressed = n, "QMP accept: {e}");
                }
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = take_slot(&slots, &clients, &limits).await else {
            return; // the semaphore is never closed
        };
        let (ctl, clients, drop_log) = (Arc::clone(&ctl), Arc::clone(&clients), Arc::clone(&drop_log));
        conns.spawn(async move {
            let _permit = permit;
            let me = clients.register();
            let result = serve_client(fds::UnixFds::new(stream), ctl.as_ref(), &limits, &me).await;
            clients.remove(&me);
            match result {
                Ok(()) => tracing::debug!("QMP client disconnected"),
                Err(e @ (QmpError::Timeout { .. } | QmpError::Evicted)) => {
                    if let Some(suppressed) = xendm_devices::sync::lock(&drop_log).check() {
                        tracing::info!(suppressed, "{e}");
                    }
                }
                Err(e) => tracing::debug!("QMP client dropped: {e}"),
            }
        });
    }
}

/// A connection slot: at once if one is free, else after asking the
/// client idle the longest to leave (again every `evict_idle_after` while
/// every client is busy).
async fn take_slot(
    slots: &Arc<Semaphore>,
    clients: &Clients,
    limits: &QmpLimits,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(p) = Arc::clone(slots).try_acquire_owned() {
        return Some(p);
    }
    loop {
        clients.evict_longest_idle(limits.evict_idle_after);
        let retry = limits.evict_idle_after.max(Duration::from_millis(10));
        match tokio::time::timeout(retry, Arc::clone(slots).acquire_owned()).await {
            Ok(p) => return p.ok(),
            Err(_) => continue,
        }
    }
}

/// Serves one client on `stream` until it disconnects: greeting, then
/// request/response, within the default [`QmpLimits`] timeouts. Public so
/// other transports (e.g. a vchan proxy) can reuse it.
pub async fn serve_connection<S>(stream: S, ctl: &dyn VmControl) -> Result<(), QmpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_client(fds::NoFds(stream), ctl, &QmpLimits::default(), &Client::default()).await
}

/// [`serve_connection`] for a registered client `me`, within `limits`.
async fn serve_client<S>(mut stream: S, ctl: &dyn VmControl, limits: &QmpLimits, me: &Client) -> Result<(), QmpError>
where
    S: fds::Transport,
{
    let mut session = Session::new();
    let greeting = encode(&greeting())?;
    me.set_idle(false);
    send(&mut stream, std::slice::from_ref(&greeting), limits).await?;
    let mut chunk = vec![0u8; 16 * 1024];
    // When the request being received began (`None` between requests).
    let mut request_began: Option<tokio::time::Instant> = None;
    loop {
        me.set_idle(request_began.is_none());
        let (what, after, left) = match request_began {
            None => ("idle", limits.idle_timeout, limits.idle_timeout),
            Some(t) => ("read", limits.read_timeout, limits.read_timeout.saturating_sub(t.elapsed())),
        };
        let n = tokio::select! {
            r = tokio::time::timeout(left, stream.read(&mut chunk)) => match r {
                Ok(r) => r.map_err(QmpError::Read)?,
                Err(_) => return Err(QmpError::Timeout { what, after }),
            },
            () = me.evicted() => return Err(QmpError::Evicted),
        };
        me.set_idle(false);
        let Some(data) = chunk.get(..n) else {
            return Ok(());
        };
        if data.is_empty() {
            return Ok(());
        }
        let out = session.feed_with_fds(data, stream.take_fds(), ctl)?;
        send(&mut stream, &out.replies, limits).await?;
        if out.quit {
            ctl.quit();
        }
        if out.close {
            return Ok(());
        }
        request_began = match (session.has_partial_input(), request_began) {
            (false, _) => None,
            (true, None) => Some(tokio::time::Instant::now()),
            (true, began) => began,
        };
    }
}

/// Writes `msgs` and flushes, within the write timeout.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, msgs: &[Vec<u8>], limits: &QmpLimits) -> Result<(), QmpError> {
    let write = async {
        for msg in msgs {
            stream.write_all(msg).await?;
        }
        stream.flush().await
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(r) => r.map_err(QmpError::Write),
        Err(_) => Err(QmpError::Timeout { what: "write", after: limits.write_timeout }),
    }
}

/// Returns the listening socket's path, for [`ChardevInfo::qmp_socket`]
/// (useful in the fd form, where libxl chose the path).
pub fn listener_path(listener: &StdUnixListener) -> Option<PathBuf> {
    listener.local_addr().ok()?.as_pathname().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::Mutex;
    use tokio::net::UnixStream;

    /// A VM double that records what QMP asked of it.
    struct FakeVm {
        state: Mutex<RunState>,
        calls: Mutex<Vec<&'static str>>,
        vcpus: Mutex<VcpuSet>,
        chardevs: Vec<ChardevInfo>,
        fail_stop: bool,
    }

    impl FakeVm {
        fn new(vcpus: u32) -> Self {
            Self {
                state: Mutex::new(RunState::Prelaunch),
                calls: Mutex::new(Vec::new()),
                vcpus: Mutex::new(VcpuSet::fixed(vcpus)),
                chardevs: capture_chardevs(),
                fail_stop: false,
            }
        }

        fn calls(&self) -> Vec<&'static str> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl VmControl for FakeVm {
        fn status(&self) -> RunState {
            *self.state.lock().unwrap()
        }
        fn cont(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("cont");
            *self.state.lock().unwrap() = RunState::Running;
            Ok(())
        }
        fn stop(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("stop");
            if self.fail_stop {
                return Err("cannot pause: injected failure".into());
            }
            *self.state.lock().unwrap() = RunState::Paused;
            Ok(())
        }
        fn chardevs(&self) -> Vec<ChardevInfo> {
            self.chardevs.clone()
        }
        fn vcpus(&self) -> VcpuSet {
            self.vcpus.lock().unwrap().clone()
        }
        fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
            self.calls.lock().unwrap().push("hot-add");
            let mut set = self.vcpus.lock().unwrap();
            if index >= set.max {
                return Err(HotAddError::OutOfRange { index, max: set.max });
            }
            if set.present.contains(&index) {
                return Err(HotAddError::AlreadyPresent { index });
            }
            set.present.push(index);
            set.present.sort_unstable();
            Ok(())
        }
        fn save_device_state(&self, live: bool) -> Result<Vec<u8>, String> {
            self.calls.lock().unwrap().push(if live { "save-live" } else { "save" });
            Ok(b"XENDMDEV-test-blob".to_vec())
        }
        fn set_dirty_log(&self, enable: bool) -> Result<(), String> {
            self.calls.lock().unwrap().push(if enable { "dirty-on" } else { "dirty-off" });
            Ok(())
        }
        fn quit(&self) {
            self.calls.lock().unwrap().push("quit");
        }
    }

    /// The chardevs qemu-xen reported in the lab capture (domid 2).
    fn capture_chardevs() -> Vec<ChardevInfo> {
        vec![
            ChardevInfo::qmp_socket("libxl-cmd", Path::new("/var/run/xen/qmp-libxl-2"), true),
            ChardevInfo::qmp_socket("libxenstat-cmd", Path::new("/var/run/xen/qmp-libxenstat-2"), false),
            ChardevInfo { frontend_open: true, filename: "file".into(), label: "serial0".into() },
        ]
    }

    struct Server {
        _dir: tempfile::TempDir,
        path: PathBuf,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn start(vm: Arc<FakeVm>) -> Server {
        start_with(vm, QmpLimits::default())
    }

    fn start_with(vm: Arc<FakeVm>, limits: QmpLimits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp-libxl-2");
        let listener = bind(QmpListen::Path(path.clone())).unwrap();
        let listener = UnixListener::from_std(listener).unwrap();
        let task = tokio::spawn(serve_with(listener, vm, limits));
        Server { _dir: dir, path, task }
    }

    /// A test client that checks CRLF framing on every message it reads.
    struct Client {
        stream: UnixStream,
        pending: Vec<u8>,
    }

    impl Client {
        async fn connect(path: &Path) -> Self {
            Self { stream: UnixStream::connect(path).await.unwrap(), pending: Vec::new() }
        }

        /// Connects and checks the greeting.
        async fn greeted(path: &Path) -> Self {
            let mut c = Self::connect(path).await;
            let g = c.recv_value().await;
            assert_eq!(g["QMP"]["version"]["qemu"], serde_json::json!({"major": 7, "minor": 2, "micro": 0}));
            assert_eq!(g["QMP"]["capabilities"], serde_json::json!([]));
            c
        }

        async fn negotiated(path: &Path) -> Self {
            let mut c = Self::greeted(path).await;
            c.send(r#"{"execute":"qmp_capabilities","id":1}"#).await;
            assert_eq!(c.recv_line().await, r#"{"return": {}, "id": 1}"#);
            c
        }

        /// Sends `line` with descriptor `fd` attached (SCM_RIGHTS), as
        /// libxl sends `add-fd`.
        async fn send_with_fd(&mut self, line: &str, fd: std::os::fd::BorrowedFd<'_>) {
            use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
            let bytes = format!("{line}\r\n");
            let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            self.stream.writable().await.unwrap();
            let n = rustix::net::sendmsg(
                &self.stream,
                &[std::io::IoSlice::new(bytes.as_bytes())],
                &mut control,
                SendFlags::empty(),
            )
            .unwrap();
            assert_eq!(n, bytes.len());
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }

        async fn send(&mut self, line: &str) {
            self.send_raw(format!("{line}\r\n").as_bytes()).await;
        }

        /// One message without its CRLF; fails on a bare LF.
        async fn recv_line(&mut self) -> String {
            let fut = async {
                loop {
                    if let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.pending.drain(..=nl).collect();
                        assert!(line.ends_with(b"\r\n"), "message not CRLF-terminated: {line:?}");
                        let text = String::from_utf8(line[..line.len() - 2].to_vec()).unwrap();
                        assert!(!text.contains('\r'), "stray CR in {text:?}");
                        return text;
                    }
                    let mut buf = [0u8; 4096];
                    let n = self.stream.read(&mut buf).await.unwrap();
                    assert!(n > 0, "server closed the connection; pending {:?}", self.pending);
                    self.pending.extend_from_slice(&buf[..n]);
                }
            };
            tokio::time::timeout(Duration::from_secs(5), fut).await.expect("timed out waiting for a QMP message")
        }

        async fn recv_value(&mut self) -> Value {
            serde_json::from_str(&self.recv_line().await).unwrap()
        }

        async fn call(&mut self, line: &str) -> Value {
            self.send(line).await;
            self.recv_value().await
        }

        /// Asserts the server closes the connection with nothing more to say.
        async fn expect_eof(&mut self) {
            let mut buf = [0u8; 64];
            let n =
                tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf)).await.unwrap().unwrap_or(0);
            assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
        }
    }

    fn assert_error(reply: &Value, class: &str, desc: &str, id: Option<Value>) {
        assert_eq!(reply["error"]["class"], class, "{reply}");
        assert_eq!(reply["error"]["desc"], desc, "{reply}");
        assert_eq!(reply.get("id").cloned(), id, "{reply}");
        assert_eq!(reply.as_object().unwrap().len(), 1 + usize::from(id.is_some()), "{reply}");
    }

    /// Replays libxl's three connections from the Xen lab capture
    /// (`tests/data/qmp/libxl-conversation.txt`) and compares every reply with
    /// what qemu-xen sent, byte for byte (the greeting's version and the vCPU
    /// thread id differ by design and are compared by shape).
    #[tokio::test]
    async fn replays_libxl_conversation_from_lab_capture() {
        let capture = include_str!("../../../tests/data/qmp/libxl-conversation.txt");
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        let mut client: Option<Client> = None;
        let mut exchanges = 0;
        let mut pending_request = false;
        for line in capture.lines() {
            // `<time> <dir> fd<N> <text>`
            let mut fields = line.splitn(4, ' ');
            let (_time, dir, fd, text) =
                (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
            assert!(fd.starts_with("fd"), "{line}");
            let rest = format!("{dir} {text}");
            if rest.starts_with("== accept") {
                client = Some(Client::connect(&server.path).await);
                pending_request = false;
                continue;
            }
            let c = client.as_mut().unwrap();
            if let Some(sent) = rest.strip_prefix("<- ") {
                c.send(sent).await;
                pending_request = true;
            } else if let Some(expected) = rest.strip_prefix("-> ") {
                let got = c.recv_line().await;
                let exp: Value = serde_json::from_str(expected).unwrap();
                let ours: Value = serde_json::from_str(&got).unwrap();
                if !pending_request {
                    // Greeting: same shape, our version.
                    assert!(exp.get("QMP").is_some());
                    assert_eq!(ours["QMP"]["version"]["qemu"]["major"], 7);
                    assert_eq!(ours["QMP"]["version"]["qemu"]["minor"], 2);
                    assert!(ours["QMP"]["version"]["package"].as_str().unwrap().starts_with("xendm "));
                    assert_eq!(ours["QMP"]["capabilities"], serde_json::json!([]));
                    assert!(
                        got.starts_with(
                            r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "xendm "#
                        ),
                        "{got}"
                    );
                } else if expected.contains("thread-id") && expected.contains("cpu-index") {
                    let ours_tid = ours["return"][0]["thread-id"].as_u64().unwrap();
                    assert_eq!(ours_tid, u64::from(std::process::id()));
                    let exp_tid = exp["return"][0]["thread-id"].as_u64().unwrap();
                    let normalised =
                        expected.replace(&format!("\"thread-id\": {exp_tid},"), &format!("\"thread-id\": {ours_tid},"));
                    assert_eq!(got, normalised);
                } else {
                    assert_eq!(got, expected, "reply differs from qemu-xen's");
                }
                pending_request = false;
                exchanges += 1;
            }
        }
        assert_eq!(exchanges, 9);
        assert_eq!(vm.calls(), vec!["cont"]);
        assert_eq!(vm.status(), RunState::Running);
    }

    #[tokio::test]
    async fn request_split_across_writes() {
        let server = start(Arc::new(FakeVm::new(1)));
        let mut c = Client::negotiated(&server.path).await;
        let req = br#"{"execute": "query-status", "id": 2020372736}"#;
        for piece in [&req[..1], &req[1..17], &req[17..30], &req[30..], b"\r", b"\n"] {
            c.send_raw(piece).await;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        assert_eq!(
            c.recv_line().await,
            r#"{"return": {"status": "prelaunch", "singlestep": false, "running": false}, "id": 2020372736}"#
        );
    }

    #[tokio::test]
    async fn several_requests_in_one_write() {
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        let mut c = Client::greeted(&server.path).await;
        c.send_raw(
            b"{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n{\"execute\":\"cont\",\"id\":2}{\"execute\":\"query-status\",\"id\":3}\r\n",
        )
        .await;
        assert_eq!(c.recv_line().await, r#"{"return": {}, "id": 1}"#);
        assert_eq!(c.recv_line().await, r#"{"return": {}, "id": 2}"#);
        assert_eq!(
            c.recv_line().await,
            r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 3}"#
        );
        assert_eq!(vm.calls(), vec!["cont"]);
    }

    #[tokio::test]
    async fn malformed_json_gets_error_and_connection_survives() {
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        let mut c = Client::negotiated(&server.path).await;
        let r = c.call(r#"{"execute": oops, "id": 4}"#).await;
        assert_eq!(r["error"]["class"], "GenericError");
        assert!(r["error"]["desc"].as_str().unwrap().starts_with("JSON parse error"), "{r}");
        assert!(r.get("id").is_none());
        // The next request on the same connection works.
        let r = c.call(r#"{"execute":"cont","id":5}"#).await;
        assert_eq!(r, serde_json::json!({"return": {}, "id": 5}));
        // Garbage without a newline, finished in a later write, is skipped
        // up to the newline and what follows is served.
        c.send_raw(b"}}}").await;
        let r = c.recv_value().await;
        assert_eq!(r["error"]["class"], "GenericError");
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.send_raw(b"more garbage\r\n{\"execute\":\"stop\",\"id\":6}\r\n").await;
        assert_eq!(c.recv_value().await, serde_json::json!({"return": {}, "id": 6}));
        assert_eq!(vm.calls(), vec!["cont", "stop"]);
    }

    #[tokio::test]
    async fn non_object_and_bad_members() {
        let server = start(Arc::new(FakeVm::new(1)));
        let mut c = Client::negotiated(&server.path).await;
        assert_error(&c.call("[1, 2]").await, "GenericError", "QMP input must be a JSON object", None);
        assert_error(&c.call(r#"{"id": 7}"#).await, "GenericError", "QMP input lacks member 'execute'", Some(7.into()));
        assert_error(
            &c.call(r#"{"execute": 3, "id": 8}"#).await,
            "GenericError",
            "QMP input member 'execute' must be a string",
            Some(8.into()),
        );
        assert_error(
            &c.call(r#"{"execute": "cont", "arguments": [], "id": 9}"#).await,
            "GenericError",
            "QMP input member 'arguments' must be an object",
            Some(9.into()),
        );
        assert_error(
            &c.call(r#"{"execute": "cont", "bogus": 1, "id": 10}"#).await,
            "GenericError",
            "QMP input member 'bogus' is unexpected",
            Some(10.into()),
        );
        assert_error(
            &c.call(r#"{"execute": "cont", "arguments": {"force": true}, "id": 11}"#).await,
            "GenericError",
            "Parameter 'force' is unexpected",
            Some(11.into()),
        );
    }

    #[tokio::test]
    async fn unknown_command_and_commands_before_negotiation() {
        let server = start(Arc::new(FakeVm::new(1)));
        let mut c = Client::greeted(&server.path).await;
        for cmd in ["query-status", "no-such-command", "add-fd"] {
            assert_error(
                &c.call(&format!(r#"{{"execute": "{cmd}", "id": 1}}"#)).await,
                "CommandNotFound",
                "Expecting capabilities negotiation with 'qmp_capabilities'",
                Some(1.into()),
            );
        }
        assert_eq!(
            c.call(r#"{"execute": "qmp_capabilities", "id": 2}"#).await,
            serde_json::json!({"return": {}, "id": 2})
        );
        assert_error(
            &c.call(r#"{"execute": "qmp_capabilities", "id": 3}"#).await,
            "CommandNotFound",
            "Capabilities negotiation is already complete, command ignored",
            Some(3.into()),
        );
        for cmd in ["xen-load-devices-state", "frobnicate"] {
            assert_error(
                &c.call(&format!(r#"{{"execute": "{cmd}", "id": 4}}"#)).await,
                "CommandNotFound",
                &format!("The command {cmd} has not been found"),
                Some(4.into()),
            );
        }
    }

    /// libxl's save sequence (`xen-toolstack.md` 2.1) on one connection:
    /// the dirty log on, `stop`, `add-fd` with the save file passed over the
    /// socket, `xen-save-devices-state` into `/dev/fdset/0`, the dirty log
    /// off, `cont` (a checkpoint). The file, reused with old and longer
    /// content (libxl opens it without O_TRUNC), holds exactly the blob.
    #[tokio::test]
    async fn libxls_save_sequence_writes_the_blob_through_the_passed_descriptor() {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsFd;
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        let mut c = Client::negotiated(&server.path).await;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[b'x'; 100]).unwrap();
        file.rewind().unwrap();
        let ok = serde_json::json!({"return": {}});
        assert_eq!(c.call(r#"{"execute": "xen-set-global-dirty-log", "arguments": {"enable": true}}"#).await, ok);
        assert_eq!(c.call(r#"{"execute": "stop"}"#).await, ok);
        c.send_with_fd(r#"{"execute": "add-fd", "id": 7}"#, file.as_fd()).await;
        let added = c.recv_value().await;
        assert_eq!(added["return"]["fdset-id"], 0, "{added}");
        assert!(added["return"]["fd"].as_i64().unwrap() > 2, "{added}");
        assert_eq!(added["id"], 7);
        let sets = c.call(r#"{"execute": "query-fdsets"}"#).await;
        assert_eq!(sets["return"][0]["fdset-id"], 0, "{sets}");
        assert_eq!(
            c.call(
                r#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/dev/fdset/0", "live": false}}"#
            )
            .await,
            ok
        );
        assert_eq!(c.call(r#"{"execute": "xen-set-global-dirty-log", "arguments": {"enable": false}}"#).await, ok);
        assert_eq!(c.call(r#"{"execute": "cont"}"#).await, ok);
        let mut content = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content, b"XENDMDEV-test-blob", "the blob, and nothing of the old content");
        assert_eq!(vm.calls(), ["dirty-on", "stop", "save", "dirty-off", "cont"]);

        // A second add-fd takes the next free set; remove-fd closes it.
        c.send_with_fd(r#"{"execute": "add-fd"}"#, file.as_fd()).await;
        let second = c.recv_value().await;
        assert_eq!(second["return"]["fdset-id"], 1, "{second}");
        assert_eq!(c.call(r#"{"execute": "remove-fd", "arguments": {"fdset-id": 1}}"#).await, ok);
        assert_error(
            &c.call(r#"{"execute": "remove-fd", "arguments": {"fdset-id": 1}}"#).await,
            "GenericError",
            "File descriptor named 'fdset-id:1' not found",
            None,
        );
    }

    #[tokio::test]
    async fn save_commands_refuse_what_they_cannot_do_and_the_server_goes_on() {
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        let mut c = Client::negotiated(&server.path).await;
        let cases: &[(&str, &str)] = &[
            (r#"{"execute": "add-fd"}"#, "No file descriptor supplied via SCM_RIGHTS"),
            (r#"{"execute": "add-fd", "arguments": {"fdset-id": -1}}"#, "Parameter 'fdset-id' expects a non-negative value"),
            (r#"{"execute": "xen-save-devices-state", "arguments": {}}"#, "Parameter 'filename' is missing"),
            (
                r#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/dev/fdset/3"}}"#,
                "Could not open '/dev/fdset/3': No such file or directory",
            ),
            (
                r#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/dev/fdset/x"}}"#,
                "Could not open '/dev/fdset/x': not a valid fd set",
            ),
            (
                r#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/var/lib/xen/qemu-save.1"}}"#,
                "Could not open '/var/lib/xen/qemu-save.1': xendm writes device state only to a descriptor passed with add-fd (/dev/fdset/N), as libxl does",
            ),
            (
                r#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/dev/fdset/0", "live": 1}}"#,
                "Invalid parameter type for 'live', expected: boolean",
            ),
            (r#"{"execute": "xen-set-global-dirty-log"}"#, "Parameter 'enable' is missing"),
            (
                r#"{"execute": "xen-set-global-dirty-log", "arguments": {"enable": "yes"}}"#,
                "Invalid parameter type for 'enable', expected: boolean",
            ),
            (r#"{"execute": "xen-save-devices-state", "arguments": {"file": "x"}}"#, "Parameter 'file' is unexpected"),
        ];
        for (req, want) in cases {
            assert_error(&c.call(req).await, "GenericError", want, None);
        }
        assert!(vm.calls().is_empty(), "nothing reached the VM: {:?}", vm.calls());
        // A pipe is written in sequence (no truncation possible).
        use std::os::fd::AsFd;
        let (r, w) = std::io::pipe().unwrap();
        c.send_with_fd(r#"{"execute": "add-fd"}"#, w.as_fd()).await;
        assert_eq!(c.recv_value().await["return"]["fdset-id"], 0);
        drop(w);
        let ok = serde_json::json!({"return": {}});
        assert_eq!(
            c.call(r#"{"execute": "xen-save-devices-state", "arguments": {"filename": "/dev/fdset/0", "live": true}}"#)
                .await,
            ok
        );
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"XENDMDEV-test-blob");
        assert_eq!(vm.calls(), ["save-live"]);
    }

    #[tokio::test]
    async fn capabilities_arguments_are_checked() {
        let server = start(Arc::new(FakeVm::new(1)));
        let mut c = Client::greeted(&server.path).await;
        assert_error(
            &c.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1}"#).await,
            "GenericError",
            "Capability oob not available",
            Some(1.into()),
        );
        assert_error(
            &c.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}, "id": 2}"#).await,
            "GenericError",
            "Invalid parameter type for 'enable', expected: array",
            Some(2.into()),
        );
        // Still negotiating: a failed qmp_capabilities does not complete it.
        assert_eq!(c.call(r#"{"execute": "query-version", "id": 3}"#).await["error"]["class"], "CommandNotFound");
        let r = c.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": 4}"#).await;
        assert_eq!(r, serde_json::json!({"return": {}, "id": 4}));
    }

    #[tokio::test]
    async fn id_is_echoed_verbatim() {
        let server = start(Arc::new(FakeVm::new(1)));
        let mut c = Client::greeted(&server.path).await;
        let r = c.call(r#"{"execute": "qmp_capabilities", "id": "libvirt-1"}"#).await;
        assert_eq!(r, serde_json::json!({"return": {}, "id": "libvirt-1"}));
        for id in [r#"{"a": [1, "x", null]}"#, "18446744073709551615", "-3", "[]", "null", "1.5"] {
            let r = c.call(&format!(r#"{{"execute": "query-vnc", "id": {id}}}"#)).await;
            let expected: Value = serde_json::from_str(id).unwrap();
            assert_eq!(r["id"], expected);
            assert_eq!(r["return"], serde_json::json!({"enabled": false}));
        }
        // No id in, no id out.
        assert_eq!(c.call(r#"{"execute": "cont"}"#).await, serde_json::json!({"return": {}}));
    }

    #[tokio::test]
    async fn every_sequential_client_gets_a_greeting() {
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        for i in 0..5 {
            let mut c = Client::negotiated(&server.path).await;
            assert_eq!(c.call(&format!(r#"{{"execute":"cont","id":{i}}}"#)).await["id"], i);
        }
        assert_eq!(vm.calls().len(), 5);
    }

    #[tokio::test]
    async fn concurrent_clients_are_served() {
        let server = start(Arc::new(FakeVm::new(2)));
        let mut a = Client::negotiated(&server.path).await;
        let mut b = Client::negotiated(&server.path).await;
        assert_eq!(b.call(r#"{"execute":"query-vnc","id":1}"#).await["return"]["enabled"], false);
        assert_eq!(a.call(r#"{"execute":"query-cpus-fast","id":2}"#).await["return"].as_array().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn status_cont_stop_quit_reach_the_vm() {
        let vm = Arc::new(FakeVm::new(1));
        let server = start(vm.clone());
        let mut c = Client::negotiated(&server.path).await;
        let status = |v: &Value| (v["return"]["status"].clone(), v["return"]["running"].clone());
        assert_eq!(status(&c.call(r#"{"execute":"query-status","id":1}"#).await), ("prelaunch".into(), false.into()));
        assert_eq!(c.call(r#"{"execute":"cont","id":2}"#).await, serde_json::json!({"return": {}, "id": 2}));
        // cont is idempotent.
        assert_eq!(c.call(r#"{"execute":"cont","id":3}"#).await, serde_json::json!({"return": {}, "id": 3}));
        assert_eq!(status(&c.call(r#"{"execute":"query-status","id":4}"#).await), ("running".into(), true.into()));
        assert_eq!(c.call(r#"{"execute":"stop","id":5}"#).await, serde_json::json!({"return": {}, "id": 5}));
        assert_eq!(status(&c.call(r#"{"execute":"query-status","id":6}"#).await), ("paused".into(), false.into()));
        assert_eq!(c.call(r#"{"execute":"quit","id":7}"#).await, serde_json::json!({"return": {}, "id": 7}));
        assert_eq!(vm.calls(), vec!["cont", "cont", "stop", "quit"]);
    }

    #[tokio::test]
    async fn failing_stop_is_a_generic_error() {
        let mut vm = FakeVm::new(1);
        vm.fail_stop = true;
        let server = start(Arc::new(vm));
        let mut c = Client::negotiated(&server.path).await;
        assert_error(
            &c.call(r#"{"execute":"stop","id":1}"#).await,
            "GenericError",
            "cannot pause: injected failure",
            Some(1.into()),
        );
    }

    #[tokio::test]
    async fn query_commands_probe_cpus_and_version() {
        let server = start(Arc::new(FakeVm::new(3)));
        let mut c = Client::negotiated(&server.path).await;
        // The Xen 4.20 probe: an empty list makes libxl fall back to -chroot/-runas.
        assert_eq!(
            c.call(r#"{"execute":"query-command-line-options","id":1}"#).await,
            serde_json::json!({"return": [], "id": 1})
        );
        assert_error(
            &c.call(r#"{"execute":"query-command-line-options","arguments":{"option":"run-with"},"id":2}"#).await,
            "GenericError",
            "Invalid option name: run-with",
            Some(2.into()),
        );
        let cpus = c.call(r#"{"execute":"query-cpus-fast","id":3}"#).await;
        let cpus = cpus["return"].as_array().unwrap();
        assert_eq!(cpus.len(), 3);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu["cpu-index"], i);
            assert_eq!(cpu["target"], "i386");
            assert_eq!(cpu["qom-path"], format!("/machine/unattached/device[{}]", i + 2));
            assert_eq!(cpu["props"], serde_json::json!({"core-id": 0, "thread-id": 0, "socket-id": i}));
        }
        let v = c.call(r#"{"execute":"query-version","id":4}"#).await;
        assert_eq!(v["return"]["qemu"], serde_json::json!({"major": 7, "minor": 2, "micro": 0}));
        let cmds = c.call(r#"{"execute":"query-commands","id":5}"#).await;
        let names: Vec<&str> = cmds["return"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        for n in [
            "qmp_capabilities",
            "query-chardev",
            "cont",
            "query-vnc",
            "query-cpus-fast",
            "query-hotpluggable-cpus",
            "device_add",
            "cpu-add",
            "quit",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }

    /// `xl vcpu-set 3` on a `vcpus=1, maxvcpus=3` guest, as libxl sends it
    /// (one connection, `xen-toolstack.md` 2.6), in QEMU's bytes.
    #[tokio::test]
    async fn libxl_vcpu_set_over_the_socket() {
        let vm = Arc::new(FakeVm::new(1));
        *vm.vcpus.lock().unwrap() = VcpuSet { boot: 1, max: 3, present: vec![0] };
        let server = start(vm.clone());
        let mut c = Client::negotiated(&server.path).await;
        let cpus = c.call(r#"{"execute":"query-cpus-fast","id":1}"#).await;
        assert_eq!(cpus["return"].as_array().unwrap().len(), 1);
        c.send(r#"{"execute":"query-hotpluggable-cpus","id":2}"#).await;
        assert_eq!(
            c.recv_line().await,
            concat!(
                r#"{"return": [{"type": "qemu32-i386-cpu", "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 2}}, "#,
                r#"{"type": "qemu32-i386-cpu", "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 1}}, "#,
                r#"{"type": "qemu32-i386-cpu", "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[2]"}], "id": 2}"#
            )
        );
        for (id, n) in [(3, 1), (4, 2)] {
            c.send(&format!(
                r#"{{"execute":"device_add","arguments":{{"id":"cpu-{n}","driver":"qemu32-i386-cpu","socket-id":{n},"core-id":0,"thread-id":0}},"id":{id}}}"#
            ))
            .await;
            assert_eq!(c.recv_line().await, format!("{{\"return\": {{}}, \"id\": {id}}}"));
        }
        let cpus = c.call(r#"{"execute":"query-cpus-fast","id":5}"#).await;
        let idx: Vec<u64> =
            cpus["return"].as_array().unwrap().iter().map(|c| c["cpu-index"].as_u64().unwrap()).collect();
        assert_eq!(idx, vec![0, 1, 2]);
        assert_error(
            &c.call(r#"{"execute":"device_add","arguments":{"driver":"qemu32-i386-cpu","socket-id":2,"core-id":0,"thread-id":0},"id":6}"#).await,
            "GenericError",
            "CPU[2] with APIC ID 2 exists",
            Some(6.into()),
        );
        assert_eq!(vm.calls(), vec!["hot-add", "hot-add", "hot-add"]);
    }

    #[tokio::test]
    async fn oversized_request_is_refused_and_connection_closed() {
        let server = start(Arc::new(FakeVm::new(1)));
        let mut c = Client::negotiated(&server.path).await;
        // An unterminated string never completes; the server must give up.
        let mut big = b"{\"execute\": \"".to_vec();
        big.resize(MAX_INPUT + 64 * 1024, b'a');
        // The server may close while we are still writing.
        let _ = c.stream.write_all(&big).await;
        let r = c.recv_value().await;
        assert_error(&r, "GenericError", &format!("QMP input exceeds {MAX_INPUT} bytes"), None);
        c.expect_eof().await;
        // The server itself is still there.
        let mut c = Client::negotiated(&server.path).await;
        assert_eq!(c.call(r#"{"execute":"cont","id":1}"#).await["return"], serde_json::json!({}));
    }

    #[tokio::test]
    async fn stale_socket_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp");
        drop(StdUnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its socket file behind");
        let listener = bind(QmpListen::Path(path.clone())).unwrap();
        assert_eq!(listener_path(&listener).as_deref(), Some(path.as_path()));
        let listener = UnixListener::from_std(listener).unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(FakeVm::new(1))));
        Client::negotiated(&path).await;
        task.abort();
    }

    #[test]
    fn regular_file_at_socket_path_is_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind(QmpListen::Path(path.clone())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn inherited_listening_fd_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp-fd");
        let fd = OwnedFd::from(StdUnixListener::bind(&path).unwrap());
        // Inherited fds usually lack CLOEXEC; make sure we set it.
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty()).unwrap();
        let raw = fd.as_raw_fd();
        let listener = bind(QmpListen::Inherited(fd)).unwrap();
        assert_eq!(listener.as_raw_fd(), raw);
        assert!(rustix::io::fcntl_getfd(&listener).unwrap().contains(rustix::io::FdFlags::CLOEXEC));
        let listener = UnixListener::from_std(listener).unwrap();
        let task = tokio::spawn(serve(listener, Arc::new(FakeVm::new(1))));
        Client::negotiated(&path).await;
        task.abort();
    }

    #[test]
    fn descriptors_that_are_not_listening_unix_sockets_are_refused() {
        let file = OwnedFd::from(tempfile::tempfile().unwrap());
        let err = bind(QmpListen::Inherited(file)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("not a socket"), "{err}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = bind(QmpListen::Inherited(a.into())).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");
    }

    #[tokio::test]
    async fn query_chardev_reports_pty_serial_the_way_libxl_parses_it() {
        let mut vm = FakeVm::new(1);
        vm.chardevs = vec![
            ChardevInfo::qmp_socket("libxl-cmd", Path::new("/var/run/xen/qmp-libxl-9"), true),
            ChardevInfo::pty("serial0", Path::new("/dev/pts/3")),
        ];
        let server = start(Arc::new(vm));
        let mut c = Client::negotiated(&server.path).await;
        c.send(r#"{"execute":"query-chardev","id":1}"#).await;
        assert_eq!(
            c.recv_line().await,
            concat!(
                r#"{"return": [{"frontend-open": true, "filename": "unix:/var/run/xen/qmp-libxl-9,server=on", "label": "libxl-cmd"}, "#,
                r#"{"frontend-open": true, "filename": "pty:/dev/pts/3", "label": "serial0"}], "id": 1}"#
            )
        );
    }

    /// Limits small enough for a test to see them act.
    fn quick_limits() -> QmpLimits {
        QmpLimits {
            max_clients: 8,
            idle_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            evict_idle_after: Duration::from_millis(200),
        }
    }

    /// How long a client waits for its greeting.
    async fn greeting_delay(path: &Path) -> Duration {
        let t = std::time::Instant::now();
        Client::greeted(path).await;
        t.elapsed()
    }

    #[tokio::test]
    async fn idle_clients_of_another_monitor_never_delay_libxls_greeting() {
        let vm = Arc::new(FakeVm::new(1));
        let (libxl, stat) = (start(vm.clone()), start(vm));
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(UnixStream::connect(&stat.path).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(greeting_delay(&libxl.path).await < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn libxl_is_greeted_when_its_own_socket_is_full_of_idle_clients() {
        let server = start_with(Arc::new(FakeVm::new(1)), quick_limits());
        let mut idle = Vec::new();
        for _ in 0..8 {
            idle.push(Client::greeted(&server.path).await);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The audit waited 33 s for this greeting; now the client idle the
        // longest makes room.
        assert!(greeting_delay(&server.path).await < Duration::from_secs(2));
        idle[0].expect_eof().await;
        // Busy clients are never closed for a newcomer: one that keeps a
        // request open holds its slot.
        let mut c = Client::negotiated(&server.path).await;
        assert_eq!(c.call(r#"{"execute":"cont","id":1}"#).await["id"], 1);
    }

    #[tokio::test]
    async fn an_idle_client_is_dropped_after_the_idle_timeout_and_a_slow_request_after_the_read_timeout() {
        let limits = QmpLimits {
            idle_timeout: Duration::from_millis(300),
            read_timeout: Duration::from_millis(300),
            ..QmpLimits::default()
        };
        let server = start_with(Arc::new(FakeVm::new(1)), limits);
        let t = std::time::Instant::now();
        let mut c = Client::negotiated(&server.path).await;
        c.expect_eof().await;
        assert!(t.elapsed() >= Duration::from_millis(300));
        // A request that begins and never ends, trickled to stay under the
        // idle timeout.
        let mut c = Client::negotiated(&server.path).await;
        let t = std::time::Instant::now();
        for piece in [&b"{\"execute\""[..], b":", b" \"cont\""] {
            c.send_raw(piece).await;
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        c.expect_eof().await;
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_dropped_after_the_write_timeout() {
        let limits = QmpLimits {
            max_clients: 1,
            write_timeout: Duration::from_millis(300),
            evict_idle_after: Duration::from_secs(60),
            ..QmpLimits::default()
        };
        let server = start_with(Arc::new(FakeVm::new(128)), limits);
        let mut hog = Client::negotiated(&server.path).await;
        // About 2 MiB of replies, far more than the socket buffers hold.
        let flood = r#"{"execute":"query-cpus-fast"}"#.repeat(100);
        hog.send_raw(flood.as_bytes()).await;
        // The only slot is freed once the write times out.
        let t = std::time::Instant::now();
        Client::greeted(&server.path).await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
}
