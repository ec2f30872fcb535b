//! The running device model: serial input, the QMP monitors, the ioreq
//! thread, xenstore, privilege drop, then the wait for the end and the stop.
//!
//! With `-xen-domid-restrict` QEMU loses xenstore (xentoolcore closes it)
//! and libxl learns of the start through QMP `query-status` instead (`-S`);
//! so do we.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::control::{wait_for_end, Control};
use super::inherited::InheritedFds;
use super::privileges::RunAs;
use super::sandbox::{Sandbox, ThreadGate};
use super::stubdom::qmp::StubQmp;
use super::timeline::TimedEngine;
use super::{monitors, privileges, runtime, xenstore_work};
use crate::cli::Config;
use crate::control::chardev::Chardev;
use crate::control::qmp::ChardevInfo;
use crate::ioreq::engine::Engine;
use crate::machine::dirty::DirtyLog;
use crate::machine::Machine;
use crate::xen::ioreq_server::{IoreqServer, StopHandle};
use crate::xen::pvbackends;
use crate::xen::xenstore::{self, XenStore};

/// How long the serial backends may take to write out what the guest left.
const SERIAL_FLUSH: Duration = Duration::from_millis(500);

/// What [`serve`] needs to know of the run beyond the command line.
pub struct Run {
    /// The guest's domain id.
    pub domid: u16,
    /// The devices were restored from `-incoming` (with `-S` the run then
    /// waits `paused`, not `prelaunch`, as libxl checks).
    pub restored: bool,
    /// The dirty log of the machine's guest-memory writes.
    pub dirty: Arc<DirtyLog>,
    /// In a stubdomain: QMP over the vchan, and no dom0 backend is ours
    /// to close.
    pub stub: Option<StubQmp>,
}

/// Serves the guest until a signal or QMP `quit`, then stops.
///
/// # Errors
/// If QMP cannot be bound, the server enabled, the ioreq thread started,
/// privileges dropped, or the start announced.
pub fn serve(
    cfg: &Config,
    run: Run,
    m: Machine,
    server: IoreqServer,
    serial: &[Chardev],
    mut inherited: InheritedFds,
    runas: Option<RunAs>,
) -> Result<()> {
    let quit = Arc::new(Notify::new());
    let ctl = Arc::new(Control::new(
        cfg.start_paused,
        Some(server.control()),
        chardev_infos(cfg, serial),
        m.vcpus,
        quit.clone(),
    ));
    let domid = run.domid;
    let stub = run.stub;
    if run.restored && cfg.start_paused {
        ctl.set_restored_paused();
    }
    ctl.set_vcpu_control(m.vcpu_control());
    ctl.set_devices(m.devices.state_entries(), run.dirty.clone());
    for (c, u) in serial.iter().zip(&m.uarts) {
        c.start_input(u.clone()).context("starting serial input")?;
    }
    let rt = runtime()?;
    let listeners = monitors::bind(cfg, &mut inherited)?;
    let mut sandbox = Sandbox::new(cfg)?;
    if !cfg.start_paused {
        server.set_enabled(true).context("enabling the ioreq server")?;
    }
    let vcpus = m.vcpus;
    let ioreq = IoreqThread::spawn(server, m.engine, sandbox.ioreq_gate())?;
    let xs = open_xenstore(cfg, domid);
    if let Some(xs) = &xs {
        // Off the QMP thread (xenstore_work.rs), started before the drop.
        ctl.set_xenstore_announce(xenstore_work::announcer(xs.clone(), domid)?);
        if stub.is_none() {
            xenstore_work::start_backend_closers(xs, domid)?;
        }
    }
    privileges::drop_privileges(cfg, domid, runas.as_ref())?;
    sandbox.lock_down()?;

    // The sockets listen already, so the announce may come before QMP
    // serves (and not on its thread).
    let result = announce_start(cfg, xs.as_deref(), domid).and_then(|()| {
        rt.block_on(async {
            monitors::serve(listeners, &ctl)?;
            if let Some(stub) = stub {
                super::stubdom::qmp::start(stub, &ctl)?;
            }
            info!(domid, vcpus, startup_ms = crate::app::clock::since_start_ms(), "device model running");
            wait_for_end(&quit).await;
            anyhow::Ok(())
        })
    });

    ioreq.stop();
    for c in serial {
        c.flush(SERIAL_FLUSH);
    }
    monitors::remove_sockets(cfg);
    info!("xendm exiting");
    result
}

/// `query-chardev`: the monitors, then `serial0`, `serial1`...
fn chardev_infos(cfg: &Config, serial: &[Chardev]) -> Vec<ChardevInfo> {
    let mut infos = monitors::qmp_chardevs(cfg);
    for (i, c) in serial.iter().enumerate() {
        infos.push(ChardevInfo { label: format!("serial{i}"), filename: c.filename(), frontend_open: true });
    }
    infos
}

/// xenstore, unless `-xen-domid-restrict` (see the module docs) or it is
/// unavailable (logged: libxl will then not see the start).
fn open_xenstore(cfg: &Config, domid: u16) -> Option<Arc<XenStore>> {
    if cfg.domid_restrict {
        close_unserved_before_restrict(XenStore::open().map_err(|e| e.to_string()), domid);
        return None;
    }
    match XenStore::open() {
        Ok(xs) => Some(Arc::new(xs)),
        Err(e) => {
            warn!("xenstore unavailable ({e}); libxl will not see the device model start");
            None
        }
    }
}

/// With `-xen-domid-restrict` no xenstore connection outlives start-up, so
/// the vkbd and qdisk backends libxl wrote before starting us are closed
/// now, once, on a connection opened and closed here (without it a guest
/// that loads `xen-kbdfront` waits 30 s for the keyboard, and one with a
/// qdisk disk minutes: `crate::xen::pvbackends`). `xs` is dropped (the
/// connection closed) on return.
fn close_unserved_before_restrict(xs: Result<XenStore, String>, domid: u16) {
    let xs = match xs {
        Ok(xs) => xs,
        Err(e) => {
            warn!("closing the vkbd and qdisk backends before restricting: {e}; the guest may wait for them");
            return;
        }
    };
    for what in [pvbackends::Unserved::Vkbd, pvbackends::Unserved::Qdisk] {
        match pvbackends::close(&xs, what, u32::from(domid)) {
            Ok(c) if c.is_empty() => info!(domid, "no unserved {} backend to close before restricting", what.kind()),
            Ok(_) => {}
            Err(e) => {
                warn!("closing the {} backends before restricting: {e}; the guest may wait for them", what.kind())
            }
        }
    }
}

/// Writes `state = running` now, unless started paused (then `cont` does).
fn announce_start(cfg: &Config, xs: Option<&XenStore>, domid: u16) -> Result<()> {
    match xs {
        Some(xs) if !cfg.start_paused => {
            xenstore::announce_running(xs, u32::from(domid)).context("announcing running in xenstore")?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The thread that owns the engine and serves ioreqs.
struct IoreqThread {
    stop: Arc<StopHandle>,
    thread: JoinHandle<Engine>,
}

impl IoreqThread {
    /// Moves `server` and `engine` to a new thread that serves until
    /// stopped, then destroys the server. It serves once `gate` opens
    /// (the sandbox is entered after the privilege drop).
    fn spawn(mut server: IoreqServer, engine: Engine, gate: ThreadGate) -> Result<Self> {
        let stop = Arc::new(StopHandle::new().context("creating the stop handle")?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ioreq".into())
            .spawn(move || {
                let mut engine = engine;
                match gate.enter() {
                    Ok(()) => {
                        if let Err(e) = server.run(&mut TimedEngine::new(&mut engine), &stop2) {
                            error!("ioreq server stopped: {e}");
                        }
                    }
                    Err(e) => error!("ioreq thread not serving: {e:#}"),
                }
                if let Err(e) = server.shutdown() {
                    warn!("destroying the ioreq server: {e}");
                }
                engine
            })
            .context("starting the ioreq thread")?;
        Ok(Self { stop, thread })
    }

    /// Stops the thread, waits for it, and flushes the trace if recording.
    fn stop(self) {
        self.stop.stop();
        match self.thread.join() {
            Ok(mut engine) => {
                if let Some(mut r) = engine.take_observer() {
                    if let Err(e) = r.flush() {
                        warn!("{e}");
                    }
                }
            }
            Err(_) => error!("the ioreq thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::xenstore::fake::FakeXenstored;

    /// The dm_restrict boot delay (issue 13): with `-xen-domid-restrict` the
    /// vkbd backend libxl wrote before starting us must still be closed.
    #[test]
    fn under_domid_restrict_the_vkbd_backend_is_closed_before_xenstore_goes() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let fake = FakeXenstored::start(&sock).unwrap();
        fake.write("/local/domain/0/backend/vkbd/9/0/state", "1");
        fake.write("/local/domain/0/backend/qdisk/9/51712/state", "1");
        close_unserved_before_restrict(XenStore::open_path(&sock).map_err(|e| e.to_string()), 9);
        assert_eq!(fake.read("/local/domain/0/backend/vkbd/9/0/state").as_deref(), Some(&b"6"[..]));
        assert_eq!(fake.read("/local/domain/0/backend/qdisk/9/51712/state").as_deref(), Some(&b"6"[..]));
        // No xenstore: logged, not fatal.
        close_unserved_before_restrict(Err("no xenstore".into()), 9);
    }
}
