//! The `xendm` process: what libxl starts as the guest's device model.
//!
//! Start-up order (each step's failure ends the process with a message that
//! libxl leaves in `/var/log/xen/qemu-dm-<name>.log`):
//!
//! 1. parse the command line (libxl's qemu-xen argv);
//! 2. open the serial backends and build the machine, which reads the
//!    kernel and initrd: nothing has touched Xen or the guest yet;
//! 3. open the Xen handles, bind guest memory (the mapcache) and the
//!    hypervisor into the machine, write PVH segments if any;
//! 4. create the ioreq server, claim every range and PCI function the bus
//!    lists, bind the event channels;
//! 5. bind the QMP sockets, enable the server (unless `-S`), start the ioreq
//!    thread, write `device-model/<domid>/state = running`;
//! 6. serve QMP and wait for SIGHUP/SIGTERM/SIGINT or QMP `quit`; then stop
//!    the ioreq thread, destroy the server, flush the trace, exit 0.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use xendm_devices::sync::lock;

use anyhow::{bail, Context, Result};
use tokio::sync::Notify;
use tracing::{error, info, warn};
use xendm::cli::{self, Command, Config, MachineKind, QmpSocket, SerialSpec};
use xendm::control::chardev::{Chardev, ChardevSpec};
use xendm::control::qmp::{self, ChardevInfo, QmpSocketSpec, RunState, VmControl};
use xendm::machine::hooks::MapCacheHooks;
use xendm::machine::{self, Inputs, LateHypervisor, LateMemory};
use xendm::trace::{FileSink, Header, Recorder, RecordingHypervisor, RecordingMemory, Tap, TRACE_VERSION};
use xendm::xen::hypervisor::XenHypervisor;
use xendm::xen::ioreq_server::{IoreqServer, ServerControl, StopHandle};
use xendm::xen::mapcache::MapCache;
use xendm::xen::sys::{DeviceModel, EventChannels, ForeignMemory};
use xendm_devices::{GuestMemory, Hypervisor};

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("XENDM_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}

fn main() -> ExitCode {
    init_logging();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = match cli::parse(args.clone()) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            eprintln!("xendm: {e}\nTry 'xendm --help'.");
            return ExitCode::from(2);
        }
    };
    let res = match cmd {
        Command::Help(t) | Command::Version(t) => {
            println!("{t}");
            Ok(())
        }
        Command::DumpRoms(dir) => dump_roms(&dir),
        Command::Run(cfg) => run(cfg, &args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = report(&e);
            error!("{msg}");
            eprintln!("xendm: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only if the text so far does not
/// already say it (library errors often include their source's message).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

fn dump_roms(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for p in xendm_roms::dump(dir).with_context(|| format!("writing option ROMs to {}", dir.display()))? {
        println!("{}", p.display());
    }
    Ok(())
}

fn chardev_spec(s: &SerialSpec) -> Result<ChardevSpec> {
    Ok(match s {
        SerialSpec::None => ChardevSpec::None,
        SerialSpec::Null => ChardevSpec::Null,
        SerialSpec::Pty => ChardevSpec::Pty,
        SerialSpec::Stdio => ChardevSpec::Stdio,
        SerialSpec::File(p) => ChardevSpec::File(p.clone()),
        SerialSpec::Unix { path, server } => ChardevSpec::Unix { path: path.clone(), server: *server, wait: false },
        SerialSpec::HostDevice(p) => bail!("-serial {}: host character devices are not supported", p.display()),
    })
}

/// Run state shared by QMP, the main loop and the ioreq server.
struct Control {
    state: AtomicU8,
    server: Mutex<Option<ServerControl>>,
    chardevs: Vec<ChardevInfo>,
    vcpus: u32,
    quit: Arc<Notify>,
    xenstore_announce: Mutex<Option<Box<dyn Fn() + Send>>>,
}

const PRELAUNCH: u8 = 0;
const RUNNING: u8 = 1;
const PAUSED: u8 = 2;

impl Control {
    fn set_enabled(&self, on: bool) -> Result<(), String> {
        match &*lock(&self.server) {
            Some(s) => s.set_enabled(on).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl VmControl for Control {
    fn status(&self) -> RunState {
        match self.state.load(Ordering::SeqCst) {
            PRELAUNCH => RunState::Prelaunch,
            RUNNING => RunState::Running,
            _ => RunState::Paused,
        }
    }
    fn cont(&self) -> Result<(), String> {
        if self.state.load(Ordering::SeqCst) == RUNNING {
            return Ok(()); // libxl sends cont on every create: idempotent
        }
        self.set_enabled(true)?;
        self.state.store(RUNNING, Ordering::SeqCst);
        info!("guest continued (QMP cont)");
        if let Some(f) = &*lock(&self.xenstore_announce) {
            f();
        }
        Ok(())
    }
    fn stop(&self) -> Result<(), String> {
        self.set_enabled(false)?;
        self.state.store(PAUSED, Ordering::SeqCst);
        info!("guest stopped (QMP stop)");
        Ok(())
    }
    fn chardevs(&self) -> Vec<ChardevInfo> {
        self.chardevs.clone()
    }
    fn vcpus(&self) -> u32 {
        self.vcpus
    }
    fn quit(&self) {
        info!("QMP quit");
        self.quit.notify_one();
    }
}

fn qmp_spec(s: &QmpSocket) -> QmpSocketSpec {
    match s {
        QmpSocket::Path(p) => QmpSocketSpec::Path(p.clone()),
        QmpSocket::Fd(fd) => QmpSocketSpec::Fd(*fd),
    }
}

fn qmp_chardevs(cfg: &Config) -> Vec<ChardevInfo> {
    cfg.qmp
        .iter()
        .map(|q| ChardevInfo {
            label: q.id.clone(),
            filename: match &q.socket {
                QmpSocket::Path(p) => format!("unix:{},server=on", p.display()),
                QmpSocket::Fd(_) => "unix:,server=on".to_string(),
            },
            frontend_open: true,
        })
        .collect()
}

fn sha256_file(p: &std::path::Path) -> Result<String> {
    use sha2::Digest;
    let data = std::fs::read(p).with_context(|| format!("reading {} for the trace header", p.display()))?;
    Ok(hex::encode(sha2::Sha256::digest(&data)))
}

fn record_path(cfg: &Config) -> Option<PathBuf> {
    cfg.record.clone().or_else(|| std::env::var_os("XENDM_RECORD").filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// `-machine none` (the libxl 4.20 probe): QMP only, no guest.
fn run_probe(cfg: &Config) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let quit = Arc::new(Notify::new());
    let ctl = Arc::new(Control {
        state: AtomicU8::new(PRELAUNCH),
        server: Mutex::new(None),
        chardevs: qmp_chardevs(cfg),
        vcpus: 0,
        quit: quit.clone(),
        xenstore_announce: Mutex::new(None),
    });
    rt.block_on(async {
        for q in &cfg.qmp {
            let l = qmp::bind(&qmp_spec(&q.socket)).with_context(|| format!("QMP socket {}", q.id))?;
            l.set_nonblocking(true)?;
            let l = tokio::net::UnixListener::from_std(l)?;
            tokio::spawn(qmp::serve(l, ctl.clone()));
        }
        info!("probe mode (-machine none): serving QMP only");
        wait_for_end(&quit).await;
        Ok(())
    })
}

async fn wait_for_end(quit: &Notify) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut hup, mut term, mut int) =
        match (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(a), Ok(b), Ok(c)) => (a, b, c),
            _ => {
                warn!("cannot install signal handlers; waiting for QMP quit only");
                quit.notified().await;
                return;
            }
        };
    tokio::select! {
        _ = hup.recv() => info!("terminating on SIGHUP"),
        _ = term.recv() => info!("terminating on SIGTERM"),
        _ = int.recv() => info!("terminating on SIGINT"),
        () = quit.notified() => info!("terminating on QMP quit"),
    }
}

fn run(cfg: Config, argv: &[OsString]) -> Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "xendm starting: {}",
        argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    if !cfg.ignored.is_empty() {
        info!("options accepted and ignored: {}", cfg.ignored.join(" "));
    }
    if cfg.machine.kind == MachineKind::None {
        return run_probe(&cfg);
    }
    let Some(domid) = cfg.domid else { bail!("-xen-domid is required") };
    let domid16 = u16::try_from(domid).with_context(|| format!("-xen-domid {domid}: not a valid domain id"))?;
    if cfg.incoming.is_some() {
        bail!("-incoming: restoring device state is not supported yet");
    }

    // 2. Serial backends and the machine (reads kernel + initrd).
    let mut chardevs = Vec::new();
    for s in cfg.serial_ports() {
        let spec = chardev_spec(s)?;
        chardevs.push(Chardev::open(&spec).with_context(|| format!("-serial {s:?}"))?);
    }
    let late_mem = Arc::new(LateMemory::default());
    let late_hv = Arc::new(LateHypervisor::default());
    let record = record_path(&cfg);
    let tap = record.as_ref().map(|_| Tap::new());
    let (mem, hv): (Arc<dyn GuestMemory>, Arc<dyn Hypervisor>) = match &tap {
        Some(t) => (
            Arc::new(RecordingMemory::new(late_mem.clone(), t.clone())),
            Arc::new(RecordingHypervisor::new(late_hv.clone(), t.clone())),
        ),
        None => (late_mem.clone(), late_hv.clone()),
    };
    // Hooks need the mapcache, which needs Xen: bind them late too.
    let late_hooks = Arc::new(LateHooks::default());
    let mut m = machine::build(
        &cfg,
        Inputs {
            hv,
            mem,
            hooks: Box::new(SharedHooks(late_hooks.clone())),
            serial_sinks: chardevs.iter().map(Chardev::sink).collect(),
        },
    )?;
    if let Some(plan) = &m.boot {
        info!(protocol = ?plan.protocol, rom = plan.rom_name, "kernel loaded into fw_cfg");
    }
    if let (Some(path), Some(tap)) = (&record, &tap) {
        let mut files = std::collections::BTreeMap::new();
        for p in machine::boot_file_paths(&cfg) {
            files.insert(p.display().to_string(), sha256_file(&p)?);
        }
        let header = Header {
            xendm_trace: TRACE_VERSION,
            argv: argv.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
            files,
            producer: format!("xendm {}", env!("CARGO_PKG_VERSION")),
        };
        let sink =
            FileSink::create(path, &header).with_context(|| format!("creating the ioreq trace {}", path.display()))?;
        m.engine.set_observer(Box::new(Recorder::new(tap.clone(), Box::new(sink))));
        info!(path = %path.display(), "recording ioreqs");
    }

    // 3. Xen handles, memory and hypervisor.
    let dm = Arc::new(DeviceModel::open(domid16).context("opening the Xen device-model interface")?);
    let cache = Arc::new(MapCache::new(ForeignMemory::open(domid16).context("opening foreign memory")?));
    late_mem.bind(cache.clone());
    late_hooks.bind(Box::new(MapCacheHooks::new(cache.clone())));
    late_hv.bind(Arc::new(XenHypervisor::new(dm.clone())));
    if let Some(plan) = &m.boot {
        for (gpa, bytes) in &plan.guest_writes {
            cache
                .write(vm_memory::GuestAddress(*gpa), bytes)
                .with_context(|| format!("writing {} kernel bytes at guest {gpa:#x}", bytes.len()))?;
        }
    }

    // 4. ioreq server.
    let fmem = Arc::new(ForeignMemory::open(domid16).context("opening foreign memory")?);
    let evtchn = EventChannels::open(domid16).context("opening event channels")?;
    let mut server = IoreqServer::create(dm.clone(), fmem, evtchn, m.max_vcpus).context("creating the ioreq server")?;
    server.register(m.engine.bus_mut()).context("claiming I/O ranges")?;

    // 5. QMP, enable, ioreq thread, announce.
    let mut infos = qmp_chardevs(&cfg);
    for (i, c) in chardevs.iter().enumerate() {
        infos.push(ChardevInfo { label: format!("serial{i}"), filename: c.filename(), frontend_open: true });
    }
    for (c, u) in chardevs.iter().zip(&m.uarts) {
        c.start_input(u.clone()).context("starting serial input")?;
    }
    let quit = Arc::new(Notify::new());
    let ctl = Arc::new(Control {
        state: AtomicU8::new(if cfg.start_paused { PRELAUNCH } else { RUNNING }),
        server: Mutex::new(Some(server.control())),
        chardevs: infos,
        vcpus: m.vcpus,
        quit: quit.clone(),
        xenstore_announce: Mutex::new(None),
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let listeners = cfg
        .qmp
        .iter()
        .map(|q| qmp::bind(&qmp_spec(&q.socket)).with_context(|| format!("QMP socket {}", q.id)))
        .collect::<Result<Vec<_>>>()?;
    if !cfg.start_paused {
        server.set_enabled(true).context("enabling the ioreq server")?;
    }
    let stop = Arc::new(StopHandle::new().context("creating the stop handle")?);
    let engine = m.engine; // the ioreq thread owns it from here on
    let stop2 = stop.clone();
    let ioreq_thread = std::thread::Builder::new()
        .name("ioreq".into())
        .spawn(move || {
            let mut engine = engine;
            let r = server.run(&mut engine, &stop2);
            if let Err(e) = &r {
                error!("ioreq server stopped: {e}");
            }
            if let Err(e) = server.shutdown() {
                warn!("destroying the ioreq server: {e}");
            }
            (engine, r)
        })
        .context("starting the ioreq thread")?;

    // With -xen-domid-restrict QEMU loses xenstore (xentoolcore closes it) and
    // libxl learns of the start through QMP query-status instead (-S).
    let xs = if cfg.domid_restrict {
        None
    } else {
        match xendm::xen::xenstore::XenStore::open() {
            Ok(xs) => Some(Arc::new(xs)),
            Err(e) => {
                warn!("xenstore unavailable ({e}); libxl will not see the device model start");
                None
            }
        }
    };
    if let Some(xs) = &xs {
        let xs2 = xs.clone();
        *lock(&ctl.xenstore_announce) = Some(Box::new(move || {
            if let Err(e) = xendm::xen::xenstore::announce_running(&xs2, domid) {
                warn!("writing device-model state: {e}");
            }
        }));
    }

    drop_privileges(&cfg, domid16)?;

    let result = rt.block_on(async {
        for l in listeners {
            l.set_nonblocking(true)?;
            let l = tokio::net::UnixListener::from_std(l)?;
            tokio::spawn(qmp::serve(l, ctl.clone()));
        }
        if !cfg.start_paused {
            if let Some(xs) = &xs {
                xendm::xen::xenstore::announce_running(xs, domid).context("announcing running in xenstore")?;
            }
        }
        if let Some(xs) = &xs {
            tokio::spawn(xendm::xen::pvbackends::close_vkbd_forever(xs.clone(), domid));
        }
        info!(domid, vcpus = m.vcpus, "device model running");
        wait_for_end(&quit).await;
        anyhow::Ok(())
    });

    // 6. Stop.
    stop.stop();
    match ioreq_thread.join() {
        Ok((mut engine, _)) => {
            if let Some(mut r) = engine.take_observer() {
                if let Err(e) = r.flush() {
                    warn!("{e}");
                }
            }
        }
        Err(_) => error!("the ioreq thread panicked"),
    }
    for c in &chardevs {
        c.flush(std::time::Duration::from_millis(500));
    }
    for q in &cfg.qmp {
        if let QmpSocket::Path(p) = &q.socket {
            let _ = std::fs::remove_file(p);
        }
    }
    info!("xendm exiting");
    result
}

/// `-xen-domid-restrict`, `-chroot`, `-runas`, in QEMU's order, once every
/// file is read, every Xen handle open and every socket bound.
fn drop_privileges(cfg: &Config, domid: u16) -> Result<()> {
    let runas = cfg.runas.as_deref().map(xendm::app::privileges::resolve_runas).transpose()?;
    if cfg.domid_restrict {
        xendm::xen::sys::restrict_all(domid).context("restricting the Xen handles to the guest")?;
        info!(domid, "Xen handles restricted to the guest");
    }
    if let Some(dir) = &cfg.chroot {
        xendm::app::privileges::chroot(dir)?;
        info!(dir = %dir.display(), "chroot done");
    }
    if let Some(r) = &runas {
        xendm::app::privileges::become_user(r)?;
        info!(uid = r.uid, gid = r.gid, "running as an unprivileged user");
    }
    Ok(())
}

/// Engine hooks bound once the mapcache exists.
#[derive(Default)]
struct LateHooks(std::sync::OnceLock<Box<dyn xendm::ioreq::engine::EngineHooks + Sync>>);

impl LateHooks {
    fn bind(&self, h: Box<dyn xendm::ioreq::engine::EngineHooks + Sync>) {
        let _ = self.0.set(h);
    }
}

/// The engine's handle on [`LateHooks`].
struct SharedHooks(Arc<LateHooks>);

impl xendm::ioreq::engine::EngineHooks for SharedHooks {
    fn invalidate_mapcache(&self) {
        if let Some(h) = self.0 .0.get() {
            h.invalidate_mapcache();
        }
    }
    fn time_offset(&self, seconds: i64) {
        if let Some(h) = self.0 .0.get() {
            h.time_offset(seconds);
        }
    }
}
