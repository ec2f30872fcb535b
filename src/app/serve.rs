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
use super::{monitors, privileges, runtime};
use crate::cli::Config;
use crate::control::chardev::Chardev;
use crate::control::qmp::ChardevInfo;
use crate::ioreq::engine::Engine;
use crate::machine::Machine;
use crate::xen::ioreq_server::{IoreqServer, StopHandle};
use crate::xen::xenstore::{self, XenStore};

/// How long the serial backends may take to write out what the guest left.
const SERIAL_FLUSH: Duration = Duration::from_millis(500);

/// Serves the guest until a signal or QMP `quit`, then stops.
///
/// # Errors
/// If QMP cannot be bound, the server enabled, the ioreq thread started,
/// privileges dropped, or the start announced.
pub fn serve(
    cfg: &Config,
    domid: u16,
    m: Machine,
    server: IoreqServer,
    serial: &[Chardev],
    mut inherited: InheritedFds,
) -> Result<()> {
    let quit = Arc::new(Notify::new());
    let ctl = Arc::new(Control::new(
        cfg.start_paused,
        Some(server.control()),
        chardev_infos(cfg, serial),
        m.vcpus,
        quit.clone(),
    ));
    for (c, u) in serial.iter().zip(&m.uarts) {
        c.start_input(u.clone()).context("starting serial input")?;
    }
    let rt = runtime()?;
    let listeners = monitors::bind(cfg, &mut inherited)?;
    if !cfg.start_paused {
        server.set_enabled(true).context("enabling the ioreq server")?;
    }
    let vcpus = m.vcpus;
    let ioreq = IoreqThread::spawn(server, m.engine)?;
    let xs = open_xenstore(cfg);
    if let Some(xs) = &xs {
        ctl.set_xenstore_announce(announcer(xs.clone(), domid));
    }
    privileges::drop_privileges(cfg, domid)?;

    let result = rt.block_on(async {
        monitors::serve(listeners, &ctl)?;
        if let Some(xs) = &xs {
            if !cfg.start_paused {
                xenstore::announce_running(xs, u32::from(domid)).context("announcing running in xenstore")?;
            }
            tokio::spawn(crate::xen::pvbackends::close_vkbd_forever(xs.clone(), u32::from(domid)));
        }
        info!(domid, vcpus, "device model running");
        wait_for_end(&quit).await;
        anyhow::Ok(())
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
fn open_xenstore(cfg: &Config) -> Option<Arc<XenStore>> {
    if cfg.domid_restrict {
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

/// What `cont` runs to tell libxl the guest runs.
fn announcer(xs: Arc<XenStore>, domid: u16) -> super::control::Announce {
    Box::new(move || {
        if let Err(e) = xenstore::announce_running(&xs, u32::from(domid)) {
            warn!("writing device-model state: {e}");
        }
    })
}

/// The thread that owns the engine and serves ioreqs.
struct IoreqThread {
    stop: Arc<StopHandle>,
    thread: JoinHandle<Engine>,
}

impl IoreqThread {
    /// Moves `server` and `engine` to a new thread that serves until
    /// stopped, then destroys the server.
    fn spawn(mut server: IoreqServer, engine: Engine) -> Result<Self> {
        let stop = Arc::new(StopHandle::new().context("creating the stop handle")?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ioreq".into())
            .spawn(move || {
                let mut engine = engine;
                if let Err(e) = server.run(&mut engine, &stop2) {
                    error!("ioreq server stopped: {e}");
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
