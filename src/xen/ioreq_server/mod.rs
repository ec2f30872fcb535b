//! The ioreq server: Xen's ioreq request/response protocol
//! (`public/hvm/ioreq.h`, `public/hvm/dm_op.h`, Xen 4.17) between the
//! hypervisor and an [`IoreqHandler`].
//!
//! * `pages.rs` - the shared synchronous page and buffered ring;
//! * `serve.rs` - the serving loop and its event transport;
//! * `setup.rs` - creating the server, mapping its pages, binding its ports.
//!
//! [`IoreqServer::create`] returns a disabled server; [`IoreqServer::register`]
//! claims the bus's ranges, [`IoreqServer::set_enabled`] starts forwarding and
//! [`IoreqServer::run`] serves until stopped.

use std::sync::Arc;
use std::time::Duration;

use xendm_devices::{Bus, Sbdf, Space};

use super::sys::{DeviceModel, EventChannels, ForeignMemory, IoreqServerId, ResourceMapping, XEN_PAGE_SIZE};
use super::XenError;
use crate::ioreq::abi::SLOT_SIZE;
use crate::ioreq::handler::IoreqHandler;

#[cfg(test)]
mod fakes;
mod pages;
mod serve;
mod setup;

pub use pages::{BufferedPage, SyncPage};
pub use serve::{LoopStats, ServerCore, StopHandle, Transport, Wakeup, XenTransport};
use setup::XenSetup;
pub use setup::{setup, BoundServer, SetupOps};

/// vCPU slots in the synchronous page (`HVM_MAX_VCPUS`: 4096 / 32).
pub const MAX_VCPUS: u32 = (XEN_PAGE_SIZE / SLOT_SIZE) as u32;
/// Most pending ports read per wakeup: every vCPU plus the buffered port.
pub const MAX_PORTS_PER_WAKEUP: usize = MAX_VCPUS as usize + 1;
/// Re-drain period for the buffered ring while it has work (QEMU's `BUFFER_IO_MAX_DELAY`).
pub const BUFFERED_POLL: Duration = Duration::from_millis(100);

/// Enables or disables the server from another thread (QMP `stop`/`cont`).
#[derive(Clone, Debug)]
pub struct ServerControl {
    dm: Arc<DeviceModel>,
    id: IoreqServerId,
}

impl ServerControl {
    /// `xendevicemodel_set_ioreq_server_state`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), XenError> {
        self.dm.set_ioreq_server_state(self.id, enabled)
    }
}

/// One thing the server claims from Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `map_io_range_to_ioreq_server`, `[start, end]` inclusive.
    Range { space: Space, start: u64, end: u64 },
    /// `map_pcidev_to_ioreq_server`.
    Pci(Sbdf),
}

/// What [`IoreqServer::register`] claims for `bus`: its port ranges, then its
/// MMIO ranges (both inclusive, adjacent ones merged by the bus, which keeps
/// us below Xen's 256 ranges per type), then every PCI function, which Xen
/// needs to route config-space accesses (0xCFC with CF8 enabled) to us at all.
pub fn claims(bus: &Bus) -> Vec<Claim> {
    let pio = bus.pio_ranges().into_iter().map(|(start, end)| Claim::Range { space: Space::Pio, start, end });
    let mmio = bus.mmio_ranges().into_iter().map(|(start, end)| Claim::Range { space: Space::Mmio, start, end });
    pio.chain(mmio).chain(bus.pci_functions().into_iter().map(Claim::Pci)).collect()
}

/// A live ioreq server for one domain: created, pages mapped, ports bound.
///
/// Dropping it (or [`IoreqServer::shutdown`]) destroys the server in Xen,
/// unbinds the ports and unmaps the pages.
pub struct IoreqServer {
    core: ServerCore,
    transport: XenTransport,
    control: ServerControl,
    bound: Vec<u32>,
    destroyed: bool,
    // Last: the pages must outlive `core`, which points into them.
    _pages: ResourceMapping,
}

impl IoreqServer {
    /// Creates the server and binds its ports, in the order `setup.rs`
    /// documents. `max_cpus` is used when Xen cannot report the vCPU count.
    /// The server is returned **disabled**: call [`Self::set_enabled`] once
    /// the ranges are claimed. On failure the server is destroyed again (and
    /// dropping `evtchn` unbinds whatever was bound).
    ///
    /// # Errors
    /// The first failing call.
    pub fn create(
        dm: Arc<DeviceModel>,
        fmem: Arc<ForeignMemory>,
        evtchn: EventChannels,
        max_cpus: u32,
    ) -> Result<Self, XenError> {
        evtchn.set_nonblocking()?;
        let ops = XenSetup { dm: &dm, fmem: &fmem, evtchn: &evtchn };
        let done = setup(&ops, max_cpus)?;
        tracing::info!(server = done.id.0, vcpus = done.vcpus, ports = ?done.bound, "ioreq server created");
        Ok(Self {
            core: done.core,
            transport: XenTransport { evtchn, dm: dm.clone(), id: done.id },
            control: ServerControl { dm, id: done.id },
            bound: done.bound,
            destroyed: false,
            _pages: done.pages,
        })
    }

    /// The server's id.
    pub const fn id(&self) -> IoreqServerId {
        self.control.id
    }

    /// Claims every port range, MMIO range and PCI function of `bus`
    /// (see [`claims`]).
    ///
    /// # Errors
    /// The first refused claim (e.g. `EEXIST`: another server holds it).
    pub fn register(&self, bus: &Bus) -> Result<(), XenError> {
        let dm = &self.control.dm;
        let id = self.control.id;
        for claim in claims(bus) {
            match claim {
                Claim::Range { space, start, end } => dm.map_io_range(id, space, start, end)?,
                Claim::Pci(sbdf) => dm.map_pcidev(id, sbdf)?,
            }
        }
        Ok(())
    }

    /// Enables or disables forwarding (see [`ServerControl`] for other threads).
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), XenError> {
        self.control.set_enabled(enabled)
    }

    /// A handle for [`Self::set_enabled`] usable while [`Self::run`] holds
    /// the server on another thread.
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// Serves requests with `handler` (the machine's engine) until `stop`
    /// is signalled.
    ///
    /// # Errors
    /// If waiting for events fails (the event-channel descriptor broke).
    pub fn run(&mut self, handler: &mut dyn IoreqHandler, stop: &StopHandle) -> Result<(), XenError> {
        // Claims made between `register` and now (none normally).
        for change in handler.take_range_changes() {
            if let Err(e) = self.transport.apply(change) {
                tracing::warn!(error = %e, ?change, "range change failed");
            }
        }
        self.core.run(handler, &mut self.transport, stop)
    }

    /// Counters of the serving loop.
    pub const fn stats(&self) -> LoopStats {
        self.core.stats()
    }

    /// Destroys the server in Xen and unbinds its ports (also done on drop).
    ///
    /// # Errors
    /// The destroy call's failure (ports are unbound regardless).
    pub fn shutdown(&mut self) -> Result<(), XenError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        let r = self.control.dm.destroy_ioreq_server(self.control.id);
        for port in self.bound.drain(..) {
            if let Err(e) = self.transport.evtchn.unbind(port) {
                tracing::warn!(port, error = %e, "unbinding an ioreq port failed");
            }
        }
        r
    }
}

impl Drop for IoreqServer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "destroying the ioreq server failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fakes::{rig, BarFn};
    use super::*;
    use crate::ioreq::engine::Engine;
    use std::sync::Mutex;

    #[test]
    fn claims_cover_ports_mmio_and_every_pci_function() {
        let mut r = rig(1);
        let bus = r.engine.bus_mut();
        bus.enable_pci_host_ports().unwrap();
        bus.register_pci(Sbdf::new(0, 0), "host", Arc::new(Mutex::new(BarFn { bar: 0 }))).unwrap();
        bus.register_pci(Sbdf::new(1, 3), "pm", Arc::new(Mutex::new(BarFn { bar: 0xb000 }))).unwrap();
        assert_eq!(
            claims(bus),
            vec![
                Claim::Range { space: Space::Pio, start: 0x510, end: 0x51f },
                Claim::Range { space: Space::Pio, start: 0xcf8, end: 0xcff },
                Claim::Range { space: Space::Pio, start: 0xb000, end: 0xb00f },
                Claim::Range { space: Space::Mmio, start: 0xa0000, end: 0xa0fff },
                Claim::Pci(Sbdf::new(0, 0)),
                Claim::Pci(Sbdf::new(1, 3)),
            ]
        );
    }
    #[test]
    fn the_server_can_move_to_its_thread() {
        fn send<T: Send>() {}
        send::<IoreqServer>();
        send::<Engine>();
        fn sync<T: Send + Sync>() {}
        sync::<ServerControl>();
        sync::<crate::xen::MapCache<crate::xen::ForeignMemory>>();
    }
}
