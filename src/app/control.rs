//! The run state QMP, the main loop and the ioreq server share, and how a
//! run ends.
//!
//! QMP's `cont`, `stop`, `query-status` and `quit` (QEMU `qapi/run-state.json`
//! and `qapi/misc.json`) act on [`Control`] through
//! [`crate::control::qmp::VmControl`]. `cont` enables the ioreq server and,
//! the first time a `-S` guest starts, writes `state = running` to xenstore
//! (libxl waits for it) through a hook that does not block (the write is
//! done on another thread); it is idempotent because libxl sends it on every
//! create. The vCPU commands go to the machine's
//! [`crate::control::qmp::VcpuControl`] once [`Control::set_vcpu_control`]
//! gave one (until then, and in probe mode, the boot count is fixed).
//!
//! Saving (`docs/save-restore.md`): `xen-save-devices-state` takes the
//! blob of every device [`Control::set_devices`] gave, plus the run state
//! as one more entry ([`RunStateEntry`]); `xen-set-global-dirty-log` turns
//! the machine's [`DirtyLog`] on and off.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use xendm_devices::{DeviceState, StateError};

use tokio::sync::Notify;
use tracing::{info, warn};
use xendm_devices::sync::lock;

use crate::control::qmp::{ChardevInfo, FixedVcpus, HotAddError, RunState, VcpuControl, VcpuSet, VmControl};
use crate::machine::dirty::DirtyLog;
use crate::machine::pc::StatefulDevice;
use crate::xen::ioreq_server::ServerControl;

const PRELAUNCH: u8 = 0;
const RUNNING: u8 = 1;
const PAUSED: u8 = 2;

/// Has `device-model/<domid>/state = running` written (logging any
/// failure). It runs on the QMP thread, so it must not block: the real one
/// hands the write to a thread of its own (`xenstore_work.rs`).
pub type Announce = Box<dyn Fn() + Send>;

/// Run state shared by QMP, the main loop and the ioreq server.
pub struct Control {
    state: AtomicU8,
    server: Option<ServerControl>,
    chardevs: Vec<ChardevInfo>,
    vcpus: Mutex<Arc<dyn VcpuControl>>,
    quit: Arc<Notify>,
    xenstore_announce: Mutex<Option<Announce>>,
    devices: Mutex<Vec<(String, StatefulDevice)>>,
    dirty: Mutex<Option<Arc<DirtyLog>>>,
}

/// The instance id of the run state's entry in the blob.
pub const RUN_STATE_ID: &str = "run-state";

/// The QMP run state at the moment of a save, saved as one more entry of
/// the device-state blob (kind `qmp-run-state`). On restore it is checked
/// and logged: the restored device model runs, or with `-S` waits paused
/// for `cont`, as libxl expects of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunStateEntry {
    /// The state's QEMU name.
    pub status: String,
}

/// [`RunStateEntry`]'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatePayload {
    status: String,
}

impl DeviceState for RunStateEntry {
    type State = RunStatePayload;
    const KIND: &'static str = "qmp-run-state";
    const VERSION: u32 = 1;
    fn save(&self) -> RunStatePayload {
        RunStatePayload { status: self.status.clone() }
    }
    fn restore(&mut self, s: RunStatePayload) -> Result<(), StateError> {
        if ![RunState::Prelaunch, RunState::Running, RunState::Paused].iter().any(|r| r.as_str() == s.status) {
            return Err(StateError::malformed(Self::KIND, format!("unknown run state {:?}", s.status)));
        }
        self.status = s.status;
        Ok(())
    }
}

impl Control {
    /// A run that starts running, or in `prelaunch` (`-S`), with the ioreq
    /// server to switch on `cont`/`stop` (none in probe mode). `quit` is
    /// notified on QMP `quit`.
    pub fn new(
        start_paused: bool,
        server: Option<ServerControl>,
        chardevs: Vec<ChardevInfo>,
        vcpus: u32,
        quit: Arc<Notify>,
    ) -> Self {
        Self {
            state: AtomicU8::new(if start_paused { PRELAUNCH } else { RUNNING }),
            server,
            chardevs,
            vcpus: Mutex::new(Arc::new(FixedVcpus(vcpus))),
            quit,
            xenstore_announce: Mutex::new(None),
            devices: Mutex::new(Vec::new()),
            dirty: Mutex::new(None),
        }
    }

    /// A run restored from `-incoming` with `-S`: `paused` (QEMU's state
    /// after an incoming migration that does not autostart; libxl checks
    /// it), until `cont`.
    pub fn set_restored_paused(&self) {
        self.state.store(PAUSED, Ordering::SeqCst);
    }

    /// The devices `xen-save-devices-state` saves (the machine's, in its
    /// order) and the dirty log `xen-set-global-dirty-log` switches.
    pub fn set_devices(&self, devices: Vec<(String, StatefulDevice)>, dirty: Arc<DirtyLog>) {
        *lock(&self.devices) = devices;
        *lock(&self.dirty) = Some(dirty);
    }

    /// What `cont` calls once the guest runs (xenstore, when available).
    pub fn set_xenstore_announce(&self, announce: Announce) {
        *lock(&self.xenstore_announce) = Some(announce);
    }

    /// Where the vCPU commands go (the machine's CPU hotplug).
    pub fn set_vcpu_control(&self, vcpus: Arc<dyn VcpuControl>) {
        *lock(&self.vcpus) = vcpus;
    }

    fn set_enabled(&self, on: bool) -> Result<(), String> {
        match &self.server {
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
    fn vcpus(&self) -> VcpuSet {
        let vcpus = lock(&self.vcpus).clone();
        vcpus.vcpus()
    }
    fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
        let vcpus = lock(&self.vcpus).clone();
        vcpus.hot_add_vcpu(index)
    }
    fn save_device_state(&self, live: bool) -> Result<Vec<u8>, String> {
        let mut entries = lock(&self.devices).clone();
        if entries.is_empty() {
            return Err("this device model has no devices to save (-machine none)".into());
        }
        let run: StatefulDevice = Arc::new(Mutex::new(RunStateEntry { status: self.status().as_str().to_string() }));
        entries.push((RUN_STATE_ID.to_string(), run));
        let blob = crate::machine::state::save_entries(&entries).map_err(|e| e.to_string())?;
        info!(bytes = blob.len(), live, status = self.status().as_str(), "device state saved");
        Ok(blob)
    }
    fn set_dirty_log(&self, enable: bool) -> Result<(), String> {
        let Some(dirty) = lock(&self.dirty).clone() else {
            return Err("this device model serves no guest (-machine none)".into());
        };
        let frames = dirty.set(enable);
        if enable {
            info!("global dirty log on: guest frames the device model writes are reported to Xen");
        } else {
            info!(frames, "global dirty log off");
        }
        Ok(())
    }
    fn quit(&self) {
        info!("QMP quit");
        self.quit.notify_one();
    }
}

/// Waits for SIGHUP, SIGTERM, SIGINT or QMP `quit`, and says which came.
pub async fn wait_for_end(quit: &Notify) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn control(start_paused: bool) -> (Control, Arc<AtomicUsize>) {
        let c = Control::new(start_paused, None, Vec::new(), 2, Arc::new(Notify::new()));
        let announced = Arc::new(AtomicUsize::new(0));
        let a = announced.clone();
        c.set_xenstore_announce(Box::new(move || {
            a.fetch_add(1, Ordering::SeqCst);
        }));
        (c, announced)
    }

    #[test]
    fn a_paused_start_runs_and_announces_on_the_first_cont_only() {
        let (c, announced) = control(true);
        assert_eq!(c.status(), RunState::Prelaunch);
        c.cont().unwrap();
        assert_eq!(c.status(), RunState::Running);
        c.cont().unwrap(); // libxl's cont on every create
        assert_eq!(announced.load(Ordering::SeqCst), 1);
        c.stop().unwrap();
        assert_eq!(c.status(), RunState::Paused);
        c.cont().unwrap();
        assert_eq!(announced.load(Ordering::SeqCst), 2);
        assert_eq!(c.vcpus(), VcpuSet::fixed(2));
        assert_eq!(c.hot_add_vcpu(2), Err(HotAddError::Unsupported));
        struct Grows;
        impl VcpuControl for Grows {
            fn vcpus(&self) -> VcpuSet {
                VcpuSet { boot: 2, max: 4, present: vec![0, 1, 3] }
            }
            fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
                Err(HotAddError::AlreadyPresent { index })
            }
        }
        c.set_vcpu_control(Arc::new(Grows));
        assert_eq!(c.vcpus().present, vec![0, 1, 3]);
        assert_eq!(c.hot_add_vcpu(3), Err(HotAddError::AlreadyPresent { index: 3 }));
    }

    #[test]
    fn a_running_start_does_not_announce_again_on_cont() {
        let (c, announced) = control(false);
        assert_eq!(c.status(), RunState::Running);
        c.cont().unwrap();
        assert_eq!(announced.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn quit_ends_the_wait() {
        let quit = Arc::new(Notify::new());
        let c = Control::new(false, None, Vec::new(), 1, quit.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        c.quit(); // a permit is stored: the wait returns at once
        rt.block_on(wait_for_end(&quit));
    }
}
