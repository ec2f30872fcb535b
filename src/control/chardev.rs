//! Serial backends: where a UART's output goes and its input comes from.
//!
//! A [`ChardevSpec`] is what the command line's `-serial` parser
//! (`crate::cli`, QEMU's syntax from `qemu-options.hx`, "Character device
//! options") produces: `pty`, `file:PATH`, `stdio`, `null`, `none`,
//! `unix:PATH[,server=on,wait=off]` and `/dev/...`. libxl passes the
//! `serial=` value through verbatim (`xen-abi.md` 1.2); `pty` is the one
//! `xl console` needs: QMP `query-chardev` reports `pty:/dev/pts/N` and libxl
//! writes it to `/local/domain/<domid>/serial/0/tty`.
//!
//! Output never blocks the ioreq path. The UART's [`SerialSink`] appends to a
//! bounded queue ([`OUTPUT_BUFFER`] bytes) drained by a writer thread; when
//! the queue is full (a pty nobody reads, a stalled socket) the **oldest**
//! bytes are dropped and counted, so whoever attaches later sees the most
//! recent output. Input flows without loss: a reader thread holds at most one
//! read's worth of bytes ([`INPUT_CHUNK`]) and stops reading from the backend
//! until the UART has taken them; the UART wakes it through its rx notifier
//! whenever the guest reads RBR, with a 100 ms re-check as a safety net.
//! Backends that stop (EOF, a peer that went away) are logged and output is
//! dropped; nothing here panics on I/O errors. Failed writes (`EFBIG` at the
//! file size limit, `ENOSPC`) follow `serial_failures.rs`: never a log line
//! per write, nothing written before the limit lost, the DM keeps running.
//!
//! Differences from QEMU:
//!
//! * The pty slave is kept open by xendm (as xenconsoled does), so the master
//!   never sees a hang-up when `xl console` detaches; output written while
//!   nobody is attached waits in the kernel's and our bounded buffers instead
//!   of being discarded.
//! * `file:` truncates, like QEMU's default (`append=off`); there is no
//!   `append` option in the `-serial` form.
//! * `stdio` does not switch the terminal to raw mode.
//! * A unix socket server never waits for its first client (the command
//!   line refuses `wait=on`); it keeps buffering (bounded) while no client
//!   is connected, where QEMU discards. A client connection is not
//!   re-established after the peer closes it.
//! * Host character devices (`/dev/ttyS0`, a stubdom's `/dev/hvcN`) are
//!   parsed but refused ([`ChardevSpec::check_supported`]); `tcp:`, `udp:`,
//!   `vc`, `chardev:` and the other QEMU backends are refused by the
//!   command line.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use xendm_devices::sync::{lock, wait_timeout};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::OpenptFlags;
use rustix::termios::OptionalActions;
use xendm_devices::pc::uart::{NullSink, SerialSink, Uart};
use xendm_devices::ratelimit::RateLimit;

use super::serial_failures::WriteFailures;

/// Output bytes buffered per backend before the oldest are dropped.
pub const OUTPUT_BUFFER: usize = 64 * 1024;
/// Input bytes read from a backend at a time (and held until the UART takes them).
pub const INPUT_CHUNK: usize = 4096;
/// How often blocked threads re-check for shutdown and missed wake-ups.
const TICK: Duration = Duration::from_millis(100);
/// Bytes the writer thread takes off the queue per write.
const WRITE_CHUNK: usize = 4096;

/// A `-serial` backend, as the command line gives it (`crate::cli` parses
/// QEMU's syntax into this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevSpec {
    /// `none`: no serial port at all (the caller should not create a UART).
    None,
    /// `null`: output discarded, no input.
    Null,
    /// `pty`: a new pseudo-terminal pair.
    Pty,
    /// `stdio`: the DM's stdout and stdin.
    Stdio,
    /// `file:PATH`: output written to PATH (created or truncated), no input.
    File(PathBuf),
    /// `unix:PATH[,server=on,wait=off]`: a unix stream socket; `server`
    /// listens at PATH (without waiting for a client), else connects to it.
    Unix { path: PathBuf, server: bool },
    /// `/dev/...`: a host character device (a tty, or `/dev/hvcN` in a
    /// stubdom). Refused ([`ChardevSpec::check_supported`]): a dom0 device
    /// model has no business with the host's ttys. In a stubdomain the
    /// guest's consoles become [`ChardevSpec::Console`].
    HostDevice(PathBuf),
    /// One of a stubdomain's consoles (`/dev/hvc3` and up, `xen-toolstack.md`
    /// 1.4): a tty opened read-write in raw mode, guest output to it, its
    /// input to the UART, like a pty's master. Only the stub mode makes
    /// this from `-serial /dev/hvcN`.
    Console(PathBuf),
}

impl ChardevSpec {
    /// Refuses the backends xendm parses but cannot open, before anything
    /// is opened.
    ///
    /// # Errors
    /// For a host character device.
    pub fn check_supported(&self) -> Result<(), ChardevError> {
        match self {
            Self::HostDevice(path) => Err(ChardevError::HostDevice { path: path.clone() }),
            _ => Ok(()),
        }
    }
}

/// Errors from opening a serial backend.
#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    #[error("-serial {}: host character devices are not supported", path.display())]
    HostDevice { path: PathBuf },
    #[error("-serial {}: opening the console: {source}", path.display())]
    Console { path: PathBuf, source: std::io::Error },
    #[error("opening a pty: {op} failed: {source}")]
    Pty { op: &'static str, source: std::io::Error },
    #[error("opening serial output file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("listening on unix socket {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("connecting to unix socket {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("using stdio for serial: {source}")]
    Stdio { source: std::io::Error },
    #[error("starting the serial {role} thread: {source}")]
    Thread { role: &'static str, source: std::io::Error },
    #[error("serial input is already connected to a UART")]
    InputStarted,
}

fn tick() -> Timespec {
    Timespec { tv_sec: 0, tv_nsec: 100_000_000 }
}

// ---------------------------------------------------------------- output

#[derive(Default)]
struct OutState {
    buf: VecDeque<u8>,
    dropped: u64,
    /// The writer holds bytes it took off `buf` but has not written yet.
    in_flight: bool,
    /// Warnings the writer logged about failures and drops.
    warnings: u64,
    closed: bool,
}

/// The bounded queue between the UART's sink and the writer thread.
#[derive(Default)]
struct OutQueue {
    st: Mutex<OutState>,
    cond: Condvar,
}

impl OutQueue {
    fn push(&self, data: &[u8]) {
        let mut st = lock(&self.st);
        let was_idle = st.buf.is_empty();
        let total = data.len();
        let keep = total.min(OUTPUT_BUFFER);
        let data = data.get(total.saturating_sub(keep)..).unwrap_or_default();
        let excess = st.buf.len().saturating_add(keep).saturating_sub(OUTPUT_BUFFER);
        let lost = excess.saturating_add(total.saturating_sub(keep));
        let cut = excess.min(st.buf.len());
        st.buf.drain(..cut);
        st.buf.extend(data);
        st.dropped = st.dropped.saturating_add(u64::try_from(lost).unwrap_or(u64::MAX));
        drop(st);
        if was_idle {
            self.cond.notify_all();
        }
    }

    /// Waits for bytes; `None` once closed and empty.
    fn take(&self, out: &mut Vec<u8>) -> Option<()> {
        let mut st = lock(&self.st);
        while st.buf.is_empty() && !st.closed {
            st = wait_timeout(&self.cond, st, TICK);
        }
        if st.buf.is_empty() {
            return None;
        }
        let n = st.buf.len().min(WRITE_CHUNK);
        out.clear();
        out.extend(st.buf.drain(..n));
        st.in_flight = true;
        Some(())
    }

    fn done(&self) {
        lock(&self.st).in_flight = false;
        self.cond.notify_all();
    }

    fn close(&self) {
        lock(&self.st).closed = true;
        self.cond.notify_all();
    }
}

/// The UART's view of a backend's output.
struct QueueSink(Arc<OutQueue>);

impl SerialSink for QueueSink {
    fn write(&mut self, data: &[u8]) {
        self.0.push(data);
    }
}

/// Where the writer thread puts bytes.
enum OutTarget {
    /// A pty master (non-blocking), a file, or stdout.
    Fd(Arc<OwnedFd>),
    Unix(Arc<UnixConn>),
}

/// What happened to a chunk.
enum Sent {
    All,
    /// The backend went away; the rest of the chunk is dropped.
    Lost(usize),
    /// A write failed with `error`; the rest of the chunk is dropped.
    Failed {
        lost: usize,
        error: Errno,
    },
}

fn write_fd(fd: &OwnedFd, mut data: &[u8], stop: &AtomicBool) -> Sent {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Sent::Lost(data.len()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                if stop.load(Ordering::Relaxed) {
                    return Sent::Lost(data.len());
                }
                let mut fds = [PollFd::new(fd, PollFlags::OUT)];
                let _ = rustix::event::poll(&mut fds, Some(&tick()));
            }
            Err(error) => return Sent::Failed { lost: data.len(), error },
        }
    }
    Sent::All
}

fn write_unix(conn: &UnixConn, mut data: &[u8], stop: &AtomicBool) -> Sent {
    while !data.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return Sent::Lost(data.len());
        }
        let Some(stream) = conn.current_or_wait() else {
            if conn.server {
                continue; // keep the chunk for the next client
            }
            return Sent::Lost(data.len());
        };
        match (&*stream).write(data) {
            Ok(0) => {
                conn.disconnect(&stream);
                return Sent::Lost(data.len());
            }
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::info!(path = %conn.path.display(), error = %e, "serial socket peer went away");
                conn.disconnect(&stream);
                return Sent::Lost(data.len());
            }
        }
    }
    Sent::All
}

fn writer_loop(q: Arc<OutQueue>, target: OutTarget, stop: Arc<AtomicBool>, name: String) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    let mut failures = WriteFailures::new(name);
    while q.take(&mut chunk).is_some() {
        let sent = match &target {
            _ if failures.stopped() => Sent::Lost(chunk.len()),
            OutTarget::Fd(fd) => write_fd(fd, &chunk, &stop),
            OutTarget::Unix(c) => write_unix(c, &chunk, &stop),
        };
        let lost = match sent {
            Sent::All => 0,
            Sent::Lost(n) => n,
            Sent::Failed { lost, error } => {
                failures.failed(error);
                lost
            }
        };
        let mut st = lock(&q.st);
        st.dropped = st.dropped.saturating_add(u64::try_from(lost).unwrap_or(u64::MAX));
        failures.report_dropped(st.dropped);
        st.warnings = failures.warnings;
        drop(st);
        q.done();
    }
}

// ---------------------------------------------------------------- unix sockets

/// The current connection of a unix socket backend.
struct UnixConn {
    path: PathBuf,
    server: bool,
    slot: Mutex<Option<Arc<UnixStream>>>,
    cond: Condvar,
    stop: Arc<AtomicBool>,
}

impl UnixConn {
    fn current(&self) -> Option<Arc<UnixStream>> {
        lock(&self.slot).clone()
    }

    /// The current connection, or (for a server) waits a tick for one.
    fn current_or_wait(&self) -> Option<Arc<UnixStream>> {
        let g = lock(&self.slot);
        if g.is_some() || !self.server {
            return g.clone();
        }
        let g = wait_timeout(&self.cond, g, TICK);
        g.clone()
    }

    fn set(&self, s: UnixStream) {
        // Timeouts keep reader and writer responsive to shutdown.
        let _ = s.set_read_timeout(Some(TICK));
        let _ = s.set_write_timeout(Some(TICK));
        *lock(&self.slot) = Some(Arc::new(s));
        self.cond.notify_all();
    }

    fn disconnect(&self, s: &Arc<UnixStream>) {
        let mut g = lock(&self.slot);
        if g.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)) {
            *g = None;
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        drop(g);
        self.cond.notify_all();
    }

    fn connected(&self) -> bool {
        lock(&self.slot).is_some()
    }
}

/// Accepts one client at a time for a server socket.
fn acceptor_loop(conn: Arc<UnixConn>, listener: UnixListener) {
    let mut log = RateLimit::per_second();
    while !conn.stop.load(Ordering::Relaxed) {
        {
            let g = lock(&conn.slot);
            if g.is_some() {
                drop(wait_timeout(&conn.cond, g, TICK));
                continue;
            }
        }
        let mut fds = [PollFd::new(&listener, PollFlags::IN)];
        if !matches!(rustix::event::poll(&mut fds, Some(&tick())), Ok(n) if n > 0) {
            continue;
        }
        match listener.accept() {
            Ok((s, _)) => {
                tracing::info!(path = %conn.path.display(), "serial socket client connected");
                conn.set(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                if let Some(suppressed) = log.check() {
                    tracing::warn!(path = %conn.path.display(), error = %e, suppressed, "serial socket accept failed");
                }
                std::thread::sleep(TICK);
            }
        }
    }
}

// ---------------------------------------------------------------- input

/// Wakes the input thread when the guest drains the receiver.
#[derive(Default)]
struct RxSignal {
    flag: Mutex<bool>,
    cond: Condvar,
}

impl RxSignal {
    fn notify(&self) {
        *lock(&self.flag) = true;
        self.cond.notify_one();
    }

    fn wait(&self) {
        let mut g = lock(&self.flag);
        if !*g {
            g = wait_timeout(&self.cond, g, TICK);
        }
        *g = false;
    }
}

enum InSource {
    Fd(Arc<OwnedFd>),
    Unix(Arc<UnixConn>),
}

enum Got {
    Data(usize),
    Idle,
    Eof,
}

impl InSource {
    fn read(&self, buf: &mut [u8], log: &mut RateLimit) -> Got {
        match self {
            Self::Fd(fd) => {
                let mut fds = [PollFd::new(&**fd, PollFlags::IN)];
                match rustix::event::poll(&mut fds, Some(&tick())) {
                    Ok(0) | Err(Errno::INTR) => return Got::Idle,
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(suppressed) = log.check() {
                            tracing::warn!(error = %e, suppressed, "serial input: poll failed");
                        }
                        std::thread::sleep(TICK);
                        return Got::Idle;
                    }
                }
                match rustix::io::read(&**fd, &mut *buf) {
                    Ok(0) => Got::Eof,
                    Ok(n) => Got::Data(n),
                    Err(Errno::AGAIN | Errno::INTR) => Got::Idle,
                    Err(e) => {
                        // A pty master reports EIO while no slave is open;
                        // we hold one, but do not spin if it happens anyway.
                        if let Some(suppressed) = log.check() {
                            tracing::warn!(error = %e, suppressed, "serial input: read failed");
                        }
                        std::thread::sleep(TICK);
                        Got::Idle
                    }
                }
            }
            Self::Unix(conn) => {
                let Some(stream) = conn.current_or_wait() else {
                    return if conn.server { Got::Idle } else { Got::Eof };
                };
                match (&*stream).read(buf) {
                    Ok(0) => {
                        tracing::info!(path = %conn.path.display(), "serial socket peer closed the connection");
                        conn.disconnect(&stream);
                        if conn.server {
                            Got::Idle
                        } else {
                            Got::Eof
                        }
                    }
                    Ok(n) => Got::Data(n),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        Got::Idle
                    }
                    Err(e) => {
                        tracing::info!(path = %conn.path.display(), error = %e, "serial socket read failed");
                        conn.disconnect(&stream);
                        Got::Idle
                    }
                }
            }
        }
    }
}

fn reader_loop(src: InSource, uart: Arc<Mutex<Uart>>, rx: Arc<RxSignal>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; INPUT_CHUNK];
    let (mut pos, mut len) = (0usize, 0usize);
    let mut log = RateLimit::per_second();
    while !stop.load(Ordering::Relaxed) {
        if pos >= len {
            match src.read(&mut buf, &mut log) {
                Got::Data(n) => (pos, len) = (0, n.min(buf.len())),
                Got::Idle => continue,
                Got::Eof => {
                    tracing::info!("serial input ended");
                    return;
                }
            }
        }
        let pending = buf.get(pos..len).unwrap_or_default();
        let taken = lock(&uart).receive(pending);
        pos = pos.saturating_add(taken);
        if pos < len {
            // The receiver is full: wait for the guest to read RBR.
            rx.wait();
        }
    }
}

// ---------------------------------------------------------------- the backend

/// An open serial backend.
pub struct Chardev {
    spec: ChardevSpec,
    pty_path: Option<PathBuf>,
    out: Option<Arc<OutQueue>>,
    input: Mutex<Option<InSource>>,
    conn: Option<Arc<UnixConn>>,
    stop: Arc<AtomicBool>,
    /// Our own handle on the pty slave, so the master never hangs up.
    _pty_slave: Option<OwnedFd>,
}

fn pty_err(op: &'static str) -> impl FnOnce(Errno) -> ChardevError {
    move |e| ChardevError::Pty { op, source: e.into() }
}

/// Opens a pty pair in raw mode: (non-blocking master, slave, slave path).
fn open_pty() -> Result<(OwnedFd, OwnedFd, PathBuf), ChardevError> {
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(pty_err("posix_openpt"))?;
    rustix::pty::grantpt(&master).map_err(pty_err("grantpt"))?;
    rustix::pty::unlockpt(&master).map_err(pty_err("unlockpt"))?;
    let name = rustix::pty::ptsname(&master, Vec::new()).map_err(pty_err("ptsname"))?;
    let slave = rustix::fs::open(name.as_c_str(), OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC, Mode::empty())
        .map_err(pty_err("open slave"))?;
    let mut t = rustix::termios::tcgetattr(&slave).map_err(pty_err("tcgetattr"))?;
    t.make_raw();
    rustix::termios::tcsetattr(&slave, OptionalActions::Now, &t).map_err(pty_err("tcsetattr"))?;
    let fl = rustix::fs::fcntl_getfl(&master).map_err(pty_err("fcntl(F_GETFL)"))?;
    rustix::fs::fcntl_setfl(&master, fl | OFlags::NONBLOCK).map_err(pty_err("fcntl(F_SETFL)"))?;
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes()));
    Ok((master, slave, path))
}

/// Opens a tty read-write, never as the controlling terminal, and switches
/// it to raw mode before a byte passes (no echo, no CR/LF translation, no
/// line editing); `nonblocking` as a pty's master is. The stub's consoles
/// use it, as serial backends ([`ChardevSpec::Console`]) and for the saved
/// device state.
///
/// # Errors
/// If it cannot be opened or its modes set.
pub fn open_raw_tty(path: &Path, nonblocking: bool) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, if nonblocking { flags | OFlags::NONBLOCK } else { flags }, Mode::empty())?;
    let mut t = rustix::termios::tcgetattr(&fd)?;
    t.make_raw();
    rustix::termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(fd)
}

/// The backend as log lines name it.
fn backend_name(spec: &ChardevSpec) -> String {
    match spec {
        ChardevSpec::File(p) | ChardevSpec::HostDevice(p) => format!("file:{}", p.display()),
        ChardevSpec::Console(p) => format!("console:{}", p.display()),
        ChardevSpec::Unix { path, .. } => format!("unix:{}", path.display()),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn spawn(role: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), ChardevError> {
    std::thread::Builder::new()
        .name(format!("serial-{role}"))
        .spawn(f)
        .map(drop)
        .map_err(|source| ChardevError::Thread { role, source })
}

impl Chardev {
    /// Opens the backend and starts its output thread.
    ///
    /// # Errors
    /// If the pty, file or socket cannot be set up; the error names it.
    pub fn open(spec: &ChardevSpec) -> Result<Chardev, ChardevError> {
        spec.check_supported()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut dev = Chardev {
            spec: spec.clone(),
            pty_path: None,
            out: None,
            input: Mutex::new(None),
            conn: None,
            stop: stop.clone(),
            _pty_slave: None,
        };
        let target = match spec {
            ChardevSpec::None | ChardevSpec::Null | ChardevSpec::HostDevice(_) => None,
            ChardevSpec::Pty => {
                let (master, slave, path) = open_pty()?;
                tracing::info!(pty = %path.display(), "serial: pty opened");
                let master = Arc::new(master);
                dev.pty_path = Some(path);
                dev._pty_slave = Some(slave);
                *lock(&dev.input) = Some(InSource::Fd(master.clone()));
                Some(OutTarget::Fd(master))
            }
            ChardevSpec::Console(path) => {
                let fd = open_raw_tty(path, true)
                    .map_err(|e| ChardevError::Console { path: path.clone(), source: e.into() })?;
                let fd = Arc::new(fd);
                tracing::info!(console = %path.display(), "serial: console opened (raw)");
                *lock(&dev.input) = Some(InSource::Fd(fd.clone()));
                Some(OutTarget::Fd(fd))
            }
            ChardevSpec::Stdio => {
                let dup =
                    |fd| rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(|e| ChardevError::Stdio { source: e.into() });
                let out = dup(rustix::stdio::stdout())?;
                let inp = dup(rustix::stdio::stdin())?;
                *lock(&dev.input) = Some(InSource::Fd(Arc::new(inp)));
                Some(OutTarget::Fd(Arc::new(out)))
            }
            ChardevSpec::File(path) => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|source| ChardevError::File { path: path.clone(), source })?;
                Some(OutTarget::Fd(Arc::new(OwnedFd::from(f))))
            }
            ChardevSpec::Unix { path, server } => {
                let conn = Arc::new(UnixConn {
                    path: path.clone(),
                    server: *server,
                    slot: Mutex::new(None),
                    cond: Condvar::new(),
                    stop: stop.clone(),
                });
                if *server {
                    let listener = UnixListener::bind(path)
                        .map_err(|source| ChardevError::Listen { path: path.clone(), source })?;
                    listener
                        .set_nonblocking(true)
                        .map_err(|source| ChardevError::Listen { path: path.clone(), source })?;
                    let c = conn.clone();
                    spawn("accept", move || acceptor_loop(c, listener))?;
                } else {
                    let s = UnixStream::connect(path)
                        .map_err(|source| ChardevError::Connect { path: path.clone(), source })?;
                    conn.set(s);
                }
                *lock(&dev.input) = Some(InSource::Unix(conn.clone()));
                dev.conn = Some(conn.clone());
                Some(OutTarget::Unix(conn))
            }
        };
        if let Some(target) = target {
            let q = Arc::new(OutQueue::default());
            let (q2, stop2, name) = (q.clone(), stop.clone(), backend_name(spec));
            spawn("out", move || writer_loop(q2, target, stop2, name))?;
            dev.out = Some(q);
        }
        Ok(dev)
    }

    /// The sink to give the UART.
    pub fn sink(&self) -> Box<dyn SerialSink> {
        match &self.out {
            Some(q) => Box::new(QueueSink(q.clone())),
            None => Box::new(NullSink),
        }
    }

    /// Starts feeding the backend's input into `uart` (no-op for backends
    /// without input). Installs the UART's rx notifier.
    ///
    /// # Errors
    /// If called twice, or the thread cannot be started.
    pub fn start_input(&self, uart: Arc<Mutex<Uart>>) -> Result<(), ChardevError> {
        let Some(src) = lock(&self.input).take() else {
            return match self.spec {
                ChardevSpec::Pty | ChardevSpec::Stdio | ChardevSpec::Unix { .. } | ChardevSpec::Console(_) => {
                    Err(ChardevError::InputStarted)
                }
                _ => Ok(()),
            };
        };
        let rx = Arc::new(RxSignal::default());
        let rx2 = rx.clone();
        lock(&uart).set_rx_notify(Arc::new(move || rx2.notify()));
        let stop = self.stop.clone();
        spawn("in", move || reader_loop(src, uart, rx, stop))
    }

    /// QEMU's `query-chardev` `filename` for this backend.
    pub fn filename(&self) -> String {
        match &self.spec {
            ChardevSpec::Pty => format!("pty:{}", self.pty_path.as_deref().unwrap_or(Path::new("")).display()),
            ChardevSpec::File(_) => "file".to_string(),
            ChardevSpec::Console(p) => format!("serial:{}", p.display()),
            ChardevSpec::Stdio => "stdio".to_string(),
            ChardevSpec::None | ChardevSpec::Null | ChardevSpec::HostDevice(_) => "null".to_string(),
            ChardevSpec::Unix { path, server, .. } => {
                let connected = self.conn.as_ref().is_some_and(|c| c.connected());
                format!(
                    "{}unix:{}{}",
                    if connected { "" } else { "disconnected:" },
                    path.display(),
                    if *server { ",server=on" } else { "" }
                )
            }
        }
    }

    /// The pty slave's path (`/dev/pts/N`), for a `pty` backend.
    pub fn pty_path(&self) -> Option<&Path> {
        self.pty_path.as_deref()
    }

    /// Output bytes dropped so far because the backend did not keep up.
    pub fn dropped_output(&self) -> u64 {
        self.out.as_ref().map_or(0, |q| lock(&q.st).dropped)
    }

    /// Warnings logged so far about failed writes and dropped output.
    pub fn output_warnings(&self) -> u64 {
        self.out.as_ref().map_or(0, |q| lock(&q.st).warnings)
    }

    /// Output bytes waiting in our buffer.
    pub fn buffered_output(&self) -> usize {
        self.out.as_ref().map_or(0, |q| lock(&q.st).buf.len())
    }

    /// Waits up to `timeout` until all buffered output has been handed to
    /// the backend; returns whether it was.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(q) = &self.out else { return true };
        // A timeout too large for the clock means "wait as long as it takes".
        let deadline = Instant::now().checked_add(timeout);
        let mut st = lock(&q.st);
        while !st.buf.is_empty() || st.in_flight {
            let left = deadline.map_or(TICK, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return false;
            }
            st = wait_timeout(&q.cond, st, left.min(TICK));
        }
        true
    }
}

impl Drop for Chardev {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(q) = &self.out {
            q.close();
        }
        if let Some(c) = &self.conn {
            if let Some(s) = c.current() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            c.cond.notify_all();
            if c.server {
                if let ChardevSpec::Unix { path, .. } = &self.spec {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use xendm_devices::hv::FakeIrq;
    use xendm_devices::BusDevice;

    fn new_uart(dev: &Chardev) -> Arc<Mutex<Uart>> {
        Arc::new(Mutex::new(Uart::new(Arc::new(FakeIrq::new()), dev.sink())))
    }

    fn guest_write(uart: &Arc<Mutex<Uart>>, data: &[u8]) {
        let mut u = uart.lock().unwrap();
        for &b in data {
            u.write(0, &[b]);
        }
    }

    /// Reads RBR while LSR.DR, like a polling guest, until `n` bytes or timeout.
    fn guest_read(uart: &Arc<Mutex<Uart>>, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            let mut u = uart.lock().unwrap();
            let mut lsr = [0u8];
            u.read(5, &mut lsr);
            if lsr[0] & 1 != 0 {
                let mut b = [0u8];
                u.read(0, &mut b);
                got.push(b[0]);
            } else {
                drop(u);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        got
    }

    fn read_exact_timeout(fd: &impl AsFd, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < n && Instant::now() < deadline {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            if rustix::event::poll(&mut fds, Some(&tick())).unwrap_or(0) == 0 {
                continue;
            }
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        got
    }

    #[test]
    fn host_devices_are_refused_before_anything_opens() {
        let spec = ChardevSpec::HostDevice("/dev/ttyS0".into());
        let e = spec.check_supported().unwrap_err();
        assert_eq!(e.to_string(), "-serial /dev/ttyS0: host character devices are not supported");
        let e = Chardev::open(&spec).err().unwrap();
        assert!(matches!(e, ChardevError::HostDevice { .. }), "{e}");
        assert!(ChardevSpec::Pty.check_supported().is_ok());
    }

    /// A stubdomain console is a tty that something else (the console
    /// backend in dom0) holds the other end of: here a pty whose slave plays
    /// `/dev/hvc3` and whose master plays dom0. Bytes pass raw both ways
    /// (no CR/LF translation, no echo back to dom0).
    #[test]
    fn a_console_tty_carries_guest_output_and_input_raw() {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        rustix::pty::grantpt(&master).unwrap();
        rustix::pty::unlockpt(&master).unwrap();
        let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
        let path = PathBuf::from(name.to_str().unwrap());
        let dev = Chardev::open(&ChardevSpec::Console(path.clone())).unwrap();
        assert_eq!(dev.filename(), format!("serial:{}", path.display()));
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        let dom0 = std::fs::File::from(master);

        guest_write(&uart, b"login:\r\n");
        assert_eq!(read_exact_timeout(&dom0, 8, Duration::from_secs(5)), b"login:\r\n");
        (&dom0).write_all(b"root\r").unwrap();
        assert_eq!(guest_read(&uart, 5, Duration::from_secs(5)), b"root\r", "no ICRNL");
        // Nothing came back to dom0: no echo.
        let mut fds = [rustix::event::PollFd::new(&dom0, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        assert_eq!(rustix::event::poll(&mut fds, Some(&ts)).unwrap(), 0, "echo");

        let e = Chardev::open(&ChardevSpec::Console("/nonexistent/hvc3".into())).err().unwrap();
        assert!(e.to_string().starts_with("-serial /nonexistent/hvc3: opening the console"), "{e}");
    }

    #[test]
    fn pty_output_reaches_the_slave_and_input_reaches_rbr() {
        let dev = Chardev::open(&ChardevSpec::Pty).unwrap();
        let path = dev.pty_path().unwrap().to_path_buf();
        assert!(path.starts_with("/dev/pts/"), "{}", path.display());
        assert_eq!(dev.filename(), format!("pty:{}", path.display()));
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        assert!(matches!(dev.start_input(uart.clone()), Err(ChardevError::InputStarted)));
        let slave = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();

        // Guest -> slave, raw (no \n -> \r\n translation).
        guest_write(&uart, b"GUEST-RESULT: PASS\n");
        assert_eq!(read_exact_timeout(&slave, 19, Duration::from_secs(5)), b"GUEST-RESULT: PASS\n");

        // Slave -> guest, with FIFOs on: 1000 bytes through a 16-byte FIFO,
        // no loss, in order.
        {
            let mut u = uart.lock().unwrap();
            u.write(2, &[0x81]);
        }
        let msg: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        (&slave).write_all(&msg).unwrap();
        let got = guest_read(&uart, msg.len(), Duration::from_secs(10));
        assert_eq!(got.len(), msg.len());
        assert_eq!(got, msg);
        let mut lsr = [0u8];
        uart.lock().unwrap().read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x02, 0, "no overrun");
        assert_eq!(dev.dropped_output(), 0);
    }

    #[test]
    fn absent_reader_never_blocks_and_memory_is_bounded() {
        let dev = Chardev::open(&ChardevSpec::Pty).unwrap();
        let uart = new_uart(&dev);
        let start = Instant::now();
        let line = [b'x'; 1024];
        for _ in 0..1024 {
            guest_write(&uart, &line); // 1 MiB, one THR write per byte
        }
        assert!(start.elapsed() < Duration::from_secs(20), "writes must not block");
        assert!(dev.buffered_output() <= OUTPUT_BUFFER);
        // The kernel's pty buffer takes some; the rest beyond our 64 KiB is dropped.
        std::thread::sleep(Duration::from_millis(300));
        assert!(dev.dropped_output() > 0);
        assert!(dev.dropped_output() < 1024 * 1024);
        // A reader that attaches late gets the newest bytes.
        guest_write(&uart, b"THE-END");
        let slave = std::fs::OpenOptions::new().read(true).open(dev.pty_path().unwrap()).unwrap();
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all.ends_with(b"THE-END") && Instant::now() < deadline {
            all.extend(read_exact_timeout(&slave, 1, Duration::from_millis(200)));
        }
        assert!(all.ends_with(b"THE-END"), "got {} bytes", all.len());
    }

    #[test]
    fn file_backend_truncates_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, b"stale contents from an earlier run").unwrap();
        let dev = Chardev::open(&ChardevSpec::File(path.clone())).unwrap();
        assert_eq!(dev.filename(), "file");
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        guest_write(&uart, b"hello\r\n");
        assert!(dev.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\r\n");
        let bad = Chardev::open(&ChardevSpec::File(dir.path().join("no/such/dir/x"))).err().unwrap();
        assert!(bad.to_string().contains("no/such/dir/x"), "{bad}");
    }

    #[test]
    fn null_backend() {
        let dev = Chardev::open(&ChardevSpec::Null).unwrap();
        assert_eq!(dev.filename(), "null");
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        guest_write(&uart, b"discarded");
        assert!(dev.flush(Duration::from_millis(10)));
        assert_eq!(dev.dropped_output(), 0);
    }

    #[test]
    fn unix_server_talks_to_a_client_and_survives_reconnects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.sock");
        let spec = ChardevSpec::Unix { path: path.clone(), server: true };
        let dev = Chardev::open(&spec).unwrap();
        assert_eq!(dev.filename(), format!("disconnected:unix:{},server=on", path.display()));
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        // Output before anyone connects is kept (bounded) for the first client.
        guest_write(&uart, b"early ");
        let client = UnixStream::connect(&path).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        guest_write(&uart, b"late");
        let mut got = vec![0u8; 10];
        (&client).read_exact(&mut got).unwrap();
        assert_eq!(got, b"early late");
        assert!(dev.filename().starts_with("unix:"));
        (&client).write_all(b"input!").unwrap();
        assert_eq!(guest_read(&uart, 6, Duration::from_secs(5)), b"input!");
        // Peer goes away; a new one is accepted.
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(5);
        let client2 = loop {
            std::thread::sleep(Duration::from_millis(20));
            if !dev.filename().starts_with("disconnected:") && Instant::now() < deadline {
                continue;
            }
            break UnixStream::connect(&path).unwrap();
        };
        client2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&client2).write_all(b"again").unwrap();
        assert_eq!(guest_read(&uart, 5, Duration::from_secs(5)), b"again");
        guest_write(&uart, b"bye");
        let mut got = vec![0u8; 3];
        (&client2).read_exact(&mut got).unwrap();
        assert_eq!(got, b"bye");
        drop(dev);
        assert!(!path.exists(), "the server socket is removed");
    }

    #[test]
    fn unix_client_connects_to_a_test_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let dev = Chardev::open(&ChardevSpec::Unix { path: path.clone(), server: false }).unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(dev.filename(), format!("unix:{}", path.display()));
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        guest_write(&uart, b"to peer");
        let mut got = [0u8; 7];
        (&peer).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to peer");
        (&peer).write_all(b"from peer").unwrap();
        assert_eq!(guest_read(&uart, 9, Duration::from_secs(5)), b"from peer");
        // The peer leaves: output is dropped, nothing blocks or panics.
        drop(peer);
        drop(listener);
        guest_write(&uart, &[b'z'; 5000]);
        let e =
            Chardev::open(&ChardevSpec::Unix { path: dir.path().join("absent.sock"), server: false }).err().unwrap();
        assert!(e.to_string().contains("absent.sock"), "{e}");
    }

    #[test]
    fn output_queue_drops_oldest_and_counts() {
        let q = OutQueue::default();
        q.push(&[1; 60 * 1024]);
        q.push(&[2; 8 * 1024]);
        let st = lock(&q.st);
        assert_eq!(st.buf.len(), OUTPUT_BUFFER);
        assert_eq!(st.dropped, 4 * 1024);
        assert_eq!(st.buf.front(), Some(&1));
        assert_eq!(st.buf.back(), Some(&2));
        drop(st);
        q.push(&vec![3; 100 * 1024]);
        let st = lock(&q.st);
        assert_eq!(st.buf.len(), OUTPUT_BUFFER);
        assert!(st.buf.iter().all(|&b| b == 3));
        assert_eq!(st.dropped, 4 * 1024 + OUTPUT_BUFFER as u64 + 36 * 1024);
    }

    #[test]
    fn dropping_the_backend_stops_its_threads() {
        let dev = Chardev::open(&ChardevSpec::Pty).unwrap();
        let uart = new_uart(&dev);
        dev.start_input(uart.clone()).unwrap();
        let q = dev.out.clone().unwrap();
        // Held by: this test, the Chardev, the writer thread, the UART's sink.
        assert_eq!(Arc::strong_count(&q), 4);
        // Held by: this test and the input thread.
        assert_eq!(Arc::strong_count(&uart), 2);
        drop(dev);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (Arc::strong_count(&q) > 2 || Arc::strong_count(&uart) > 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(Arc::strong_count(&q), 2, "writer thread exited");
        assert_eq!(Arc::strong_count(&uart), 1, "input thread exited");
    }
}
