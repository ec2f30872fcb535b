//! [`xendm_devices::Hypervisor`] over `libxendevicemodel`.
//!
//! Each call is one dm_op (Xen `public/hvm/dm_op.h`): `set_isa_irq_level`
//! (9), `set_pci_intx_level` (8, bus 0 segment 0), `set_pci_link_route` (10),
//! `inject_msi` (14) and `remote_shutdown` (16, with the `SHUTDOWN_*` code of
//! `public/sched.h`). Devices cannot act on a failure, so failures are logged
//! with the C function's name, at a limited rate because the guest drives how
//! often these calls happen.

use std::sync::{Arc, Mutex, PoisonError};

use xendm_devices::ratelimit::RateLimit;
use xendm_devices::{Hypervisor, ShutdownReason};

use super::sys::DeviceModel;
use super::XenError;

/// Interrupts and shutdown through Xen.
pub struct XenHypervisor {
    dm: Arc<DeviceModel>,
    log: Mutex<RateLimit>,
}

impl XenHypervisor {
    /// Uses `dm` (shared with the ioreq server).
    pub fn new(dm: Arc<DeviceModel>) -> Self {
        Self { dm, log: Mutex::new(RateLimit::per_second()) }
    }

    fn report(&self, what: std::fmt::Arguments<'_>, r: Result<(), XenError>) {
        if let Err(e) = r {
            let allowed = self.log.lock().unwrap_or_else(PoisonError::into_inner).check();
            if let Some(suppressed) = allowed {
                tracing::warn!(error = %e, suppressed, "{what}");
            }
        }
    }
}

impl Hypervisor for XenHypervisor {
    fn set_isa_irq_level(&self, irq: u8, level: bool) {
        self.report(format_args!("ISA IRQ {irq} level {level}"), self.dm.set_isa_irq_level(irq, level));
    }

    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) {
        self.report(
            format_args!("PCI 00:{device:02x} INT{} level {level}", char::from(b'A'.wrapping_add(intx & 3))),
            self.dm.set_pci_intx_level(0, 0, device, intx, level),
        );
    }

    fn set_pci_link_route(&self, link: u8, irq: u8) {
        self.report(format_args!("PCI link {link} -> IRQ {irq}"), self.dm.set_pci_link_route(link, irq));
    }

    fn inject_msi(&self, addr: u64, data: u32) {
        self.report(format_args!("MSI {addr:#x}/{data:#x}"), self.dm.inject_msi(addr, data));
    }

    fn shutdown(&self, reason: ShutdownReason) {
        tracing::info!(?reason, "asking Xen to shut the guest down");
        let r = self.dm.shutdown(reason.code());
        if let Err(e) = r {
            // Not rate-limited: a failed poweroff/reboot must always be visible.
            tracing::error!(error = %e, ?reason, "guest shutdown request failed");
        }
    }
}
