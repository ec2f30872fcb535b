//! [`xendm_devices::Hypervisor`] over `libxendevicemodel`.
//!
//! Each call is one dm_op (Xen `public/hvm/dm_op.h`): `set_isa_irq_level`
//! (9), `set_pci_intx_level` (8, bus 0 segment 0), `set_pci_link_route` (10),
//! `inject_msi` (14) and `remote_shutdown` (16, with the `SHUTDOWN_*` code of
//! `public/sched.h`). Devices cannot act on a failure, so failures are logged
//! with the C function's name, at a limited rate because the guest drives how
//! often these calls happen.

use std::sync::{Arc, Mutex};
use xendm_devices::sync::lock;

use xendm_devices::ratelimit::RateLimit;
use xendm_devices::{Hypervisor, ShutdownReason};

use super::sys::DeviceModel;
use super::XenError;

/// The dm_ops [`XenHypervisor`] needs; implemented by [`DeviceModel`], and
/// by a recorder in tests.
pub trait InterruptOps: Send + Sync {
    /// `xendevicemodel_set_isa_irq_level`.
    ///
    /// # Errors
    /// The C call's failure.
    fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), XenError>;
    /// `xendevicemodel_set_pci_intx_level`.
    ///
    /// # Errors
    /// The C call's failure.
    fn set_pci_intx_level(&self, seg: u16, bus: u8, dev: u8, intx: u8, level: bool) -> Result<(), XenError>;
    /// `xendevicemodel_set_pci_link_route`.
    ///
    /// # Errors
    /// The C call's failure.
    fn set_pci_link_route(&self, link: u8, irq: u8) -> Result<(), XenError>;
    /// `xendevicemodel_inject_msi`.
    ///
    /// # Errors
    /// The C call's failure.
    fn inject_msi(&self, addr: u64, data: u32) -> Result<(), XenError>;
    /// `xendevicemodel_shutdown` with a `SHUTDOWN_*` code.
    ///
    /// # Errors
    /// The C call's failure.
    fn shutdown(&self, reason: u32) -> Result<(), XenError>;
}

impl InterruptOps for DeviceModel {
    fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), XenError> {
        DeviceModel::set_isa_irq_level(self, irq, level)
    }
    fn set_pci_intx_level(&self, seg: u16, bus: u8, dev: u8, intx: u8, level: bool) -> Result<(), XenError> {
        DeviceModel::set_pci_intx_level(self, seg, bus, dev, intx, level)
    }
    fn set_pci_link_route(&self, link: u8, irq: u8) -> Result<(), XenError> {
        DeviceModel::set_pci_link_route(self, link, irq)
    }
    fn inject_msi(&self, addr: u64, data: u32) -> Result<(), XenError> {
        DeviceModel::inject_msi(self, addr, data)
    }
    fn shutdown(&self, reason: u32) -> Result<(), XenError> {
        DeviceModel::shutdown(self, reason)
    }
}

/// Interrupts and shutdown through Xen.
pub struct XenHypervisor<D: InterruptOps = DeviceModel> {
    dm: Arc<D>,
    log: Mutex<RateLimit>,
}

impl<D: InterruptOps> XenHypervisor<D> {
    /// Uses `dm` (shared with the ioreq server).
    pub fn new(dm: Arc<D>) -> Self {
        Self { dm, log: Mutex::new(RateLimit::per_second()) }
    }

    /// Whether a failure may be logged now (and how many were suppressed).
    fn log_allowed(&self) -> Option<u64> {
        lock(&self.log).check()
    }

    fn report(&self, what: std::fmt::Arguments<'_>, r: Result<(), XenError>) {
        if let Err(e) = r {
            if let Some(suppressed) = self.log_allowed() {
                tracing::warn!(error = %e, suppressed, "{what}");
            }
        }
    }
}

impl<D: InterruptOps> Hypervisor for XenHypervisor<D> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each dm_op with its C arguments; fails when told to.
    #[derive(Default)]
    struct Rec {
        calls: Mutex<Vec<String>>,
        fail: bool,
    }

    impl Rec {
        fn push(&self, s: String) -> Result<(), XenError> {
            self.calls.lock().unwrap().push(s);
            if self.fail {
                Err(XenError::Call { call: "xendevicemodel_fake", errno: libc::EPERM })
            } else {
                Ok(())
            }
        }
    }

    impl InterruptOps for Rec {
        fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), XenError> {
            self.push(format!("isa {irq} {level}"))
        }
        fn set_pci_intx_level(&self, seg: u16, bus: u8, dev: u8, intx: u8, level: bool) -> Result<(), XenError> {
            self.push(format!("intx {seg}:{bus}:{dev} {intx} {level}"))
        }
        fn set_pci_link_route(&self, link: u8, irq: u8) -> Result<(), XenError> {
            self.push(format!("link {link} {irq}"))
        }
        fn inject_msi(&self, addr: u64, data: u32) -> Result<(), XenError> {
            self.push(format!("msi {addr:#x} {data:#x}"))
        }
        fn shutdown(&self, reason: u32) -> Result<(), XenError> {
            self.push(format!("shutdown {reason}"))
        }
    }

    fn drive(hv: &dyn Hypervisor) {
        hv.set_isa_irq_level(4, true);
        hv.set_pci_intx_level(3, 1, false);
        hv.set_pci_link_route(2, 11);
        hv.inject_msi(0xfee0_0000, 0x4041);
        hv.shutdown(ShutdownReason::Reboot);
        hv.shutdown(ShutdownReason::Poweroff);
    }

    #[test]
    fn device_calls_become_dm_ops_on_bus_zero_with_xen_shutdown_codes() {
        let rec = Arc::new(Rec::default());
        drive(&XenHypervisor::new(rec.clone()));
        assert_eq!(
            *rec.calls.lock().unwrap(),
            ["isa 4 true", "intx 0:0:3 1 false", "link 2 11", "msi 0xfee00000 0x4041", "shutdown 1", "shutdown 0"]
        );
    }

    #[test]
    fn failures_are_absorbed_even_past_the_log_limit() {
        let rec = Arc::new(Rec { fail: true, ..Rec::default() });
        let hv = XenHypervisor::new(rec.clone());
        for _ in 0..50 {
            drive(&hv);
        }
        assert_eq!(rec.calls.lock().unwrap().len(), 300, "every call still reaches Xen");
        assert!(hv.log_allowed().is_none(), "the log budget for this second is spent");
    }
}
