//! Phase 2 of start-up: the Xen handles, the machine built on them, the PVH
//! guest writes and the ioreq server (Xen `public/hvm/dm_op.h`, the
//! `xendevicemodel_*` calls in [`crate::xen::sys`]).
//!
//! The order of the Xen calls is the one libxl and Xen expect (and the lab
//! checks): device-model handle, foreign memory for the mapcache, guest
//! writes, a second foreign-memory handle and the event channels for the
//! ioreq server, server creation, then every range claimed.

use std::sync::Arc;

use anyhow::{Context, Result};
use vm_memory::GuestAddress;
use xendm_devices::{GuestMemory, Hypervisor};

use super::record::TraceFile;
use crate::control::chardev::Chardev;
use crate::machine::dirty::{DirtyLog, DirtySink, DirtyTracking};
use crate::machine::hooks::MapCacheHooks;
use crate::machine::spec::MachineSpec;
use crate::machine::{self, Machine, MachineBackends};
use crate::xen::hypervisor::XenHypervisor;
use crate::xen::ioreq_server::IoreqServer;
use crate::xen::mapcache::MapCache;
use crate::xen::sys::{DeviceModel, EventChannels, ForeignMemory};

/// The guest's Xen handles the machine is built on.
pub struct XenHandles {
    domid: u16,
    dm: Arc<DeviceModel>,
    cache: Arc<MapCache<ForeignMemory>>,
    /// The global dirty log (QMP `xen-set-global-dirty-log`) the machine's
    /// guest-memory writes are reported to.
    pub dirty: Arc<DirtyLog>,
}

impl XenHandles {
    /// Opens the device-model interface and maps guest memory (the
    /// mapcache) for `domid`.
    ///
    /// # Errors
    /// If a handle cannot be opened.
    pub fn open(domid: u16) -> Result<Self> {
        let dm = Arc::new(DeviceModel::open(domid).context("opening the Xen device-model interface")?);
        let cache = Arc::new(MapCache::new(ForeignMemory::open(domid).context("opening foreign memory")?));
        let dirty = Arc::new(DirtyLog::new(Box::new(DmSink(dm.clone()))));
        Ok(Self { domid, dm, cache, dirty })
    }
}

/// The dirty-log reports of [`XenHandles::dirty`], through the shared handle.
struct DmSink(Arc<DeviceModel>);

impl DirtySink for DmSink {
    fn modified(&self, first_pfn: u64, nr: u32) -> Result<(), String> {
        self.0.modified(first_pfn, nr)
    }
}

/// Builds the planned machine on the real guest memory and hypervisor
/// (through the recorder when a trace is written), its UARTs writing to
/// `serial`.
///
/// # Errors
/// If the devices cannot be placed.
pub fn instantiate(
    spec: MachineSpec,
    xen: &XenHandles,
    serial: &[Chardev],
    trace: Option<TraceFile>,
) -> Result<Machine> {
    let cache: Arc<dyn GuestMemory> = xen.cache.clone();
    let mem: Arc<dyn GuestMemory> = Arc::new(DirtyTracking::new(cache, xen.dirty.clone()));
    let hv: Arc<dyn Hypervisor> = Arc::new(XenHypervisor::new(xen.dm.clone()));
    let (mem, hv) = match &trace {
        Some(t) => t.wrap(mem, hv),
        None => (mem, hv),
    };
    let backends = MachineBackends {
        mem,
        hv,
        hooks: Box::new(MapCacheHooks::new(xen.cache.clone())),
        serial_sinks: serial.iter().map(Chardev::sink).collect(),
    };
    let mut m = machine::build(spec, backends)?;
    if let Some(t) = trace {
        t.attach(&mut m.engine);
    }
    Ok(m)
}

/// Writes the PVH kernel's segments into guest RAM (other kernels have
/// none: the option ROM copies them from fw_cfg), streamed from the open
/// kernel file in bounded pieces.
///
/// # Errors
/// If guest memory cannot be written or the kernel file read.
pub fn write_boot_segments(xen: &XenHandles, m: &Machine) -> Result<()> {
    let Some(plan) = &m.boot else { return Ok(()) };
    for (gpa, content) in &plan.guest_writes {
        content
            .write_to(&*xen.cache, GuestAddress(*gpa), 0, content.len())
            .with_context(|| format!("writing {} kernel bytes at guest {gpa:#x}", content.len()))?;
    }
    Ok(())
}

/// Creates the ioreq server for the machine's vCPUs and claims every port
/// range, MMIO range and PCI function its bus lists.
///
/// # Errors
/// If a handle cannot be opened or Xen refuses the server or a range.
pub fn create_ioreq_server(xen: &XenHandles, m: &mut Machine) -> Result<IoreqServer> {
    let fmem = Arc::new(ForeignMemory::open(xen.domid).context("opening foreign memory")?);
    let evtchn = EventChannels::open(xen.domid).context("opening event channels")?;
    let server = IoreqServer::create(xen.dm.clone(), fmem, evtchn, m.max_vcpus).context("creating the ioreq server")?;
    server.register(m.engine.bus_mut()).context("claiming I/O ranges")?;
    tracing::info!(
        phase = "ioreq_server",
        t_ms = super::clock::since_start_ms(),
        "boot timeline: ioreq server up, ranges claimed"
    );
    Ok(server)
}
