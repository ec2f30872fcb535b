//! What devices ask of the hypervisor, as a trait.
//!
//! The Xen implementation (in the binary crate) turns each call into a
//! `xendevicemodel_*` dm_op (Xen `public/hvm/dm_op.h`: `set_isa_irq_level`,
//! `set_pci_intx_level`, `set_pci_link_route`, `inject_msi`, `remote_shutdown`).
//! With the `testing` feature (tests only, never the release build),
//! `FakeHypervisor` records the calls and `FakeIrq` the levels of one line.

use std::sync::Arc;
#[cfg(any(test, feature = "testing"))]
use std::sync::Mutex;

#[cfg(any(test, feature = "testing"))]
use crate::sync::lock;

use serde::{Deserialize, Serialize};

/// Reasons for [`Hypervisor::shutdown`], numbered as Xen's `SHUTDOWN_*`
/// (`public/sched.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff` (0): ACPI S5.
    Poweroff,
    /// `SHUTDOWN_reboot` (1): 0xCF9, i8042 pulse, port 0x92.
    Reboot,
    /// `SHUTDOWN_suspend` (2).
    Suspend,
    /// `SHUTDOWN_crash` (3).
    Crash,
}

impl ShutdownReason {
    /// Xen's numeric code.
    pub const fn code(self) -> u32 {
        match self {
            Self::Poweroff => 0,
            Self::Reboot => 1,
            Self::Suspend => 2,
            Self::Crash => 3,
        }
    }
}

/// One call a device made to the hypervisor (also a trace record field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum HvCall {
    IsaIrq { irq: u8, level: bool },
    PciIntx { device: u8, intx: u8, level: bool },
    LinkRoute { link: u8, irq: u8 },
    Msi { addr: u64, data: u32 },
    Shutdown { reason: ShutdownReason },
}

/// Side effects a device model asks of the hypervisor.
///
/// Calls cannot fail from a device's point of view: there is nothing a device
/// could do about it. Implementations log failures with the call's name.
pub trait Hypervisor: Send + Sync {
    /// Drives ISA IRQ `irq` (0-15) to `level`.
    fn set_isa_irq_level(&self, irq: u8, level: bool);
    /// Drives INTx (`intx` 0 = A .. 3 = D) of PCI device `device` on bus 0.
    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool);
    /// Routes PCI link `link` (0-3) to ISA IRQ `irq` (0 = disabled).
    fn set_pci_link_route(&self, link: u8, irq: u8);
    /// Injects an MSI.
    fn inject_msi(&self, addr: u64, data: u32);
    /// Asks the hypervisor to shut the guest down. Devices call this *before*
    /// the ioreq that triggered it is answered.
    fn shutdown(&self, reason: ShutdownReason);
}

/// One interrupt line, as a device sees it.
pub trait IrqLine: Send + Sync {
    /// Sets the line's level.
    fn set_level(&self, level: bool);
}

/// An ISA IRQ line driven through the hypervisor.
pub struct IsaIrq {
    hv: Arc<dyn Hypervisor>,
    irq: u8,
}

impl IsaIrq {
    /// Line `irq` of the hypervisor's ISA interrupt controller.
    pub fn new(hv: Arc<dyn Hypervisor>, irq: u8) -> Self {
        Self { hv, irq }
    }
}

impl IrqLine for IsaIrq {
    fn set_level(&self, level: bool) {
        self.hv.set_isa_irq_level(self.irq, level);
    }
}

/// Records every call, for tests.
#[cfg(any(test, feature = "testing"))]
#[derive(Default)]
pub struct FakeHypervisor {
    calls: Mutex<Vec<HvCall>>,
}

#[cfg(any(test, feature = "testing"))]
impl FakeHypervisor {
    /// A fresh recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Removes and returns the calls recorded so far.
    pub fn take(&self) -> Vec<HvCall> {
        std::mem::take(&mut *self.lock())
    }

    /// A copy of the calls recorded so far.
    pub fn calls(&self) -> Vec<HvCall> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HvCall>> {
        lock(&self.calls)
    }

    fn push(&self, c: HvCall) {
        self.lock().push(c);
    }
}

#[cfg(any(test, feature = "testing"))]
impl Hypervisor for FakeHypervisor {
    fn set_isa_irq_level(&self, irq: u8, level: bool) {
        self.push(HvCall::IsaIrq { irq, level });
    }
    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) {
        self.push(HvCall::PciIntx { device, intx, level });
    }
    fn set_pci_link_route(&self, link: u8, irq: u8) {
        self.push(HvCall::LinkRoute { link, irq });
    }
    fn inject_msi(&self, addr: u64, data: u32) {
        self.push(HvCall::Msi { addr, data });
    }
    fn shutdown(&self, reason: ShutdownReason) {
        self.push(HvCall::Shutdown { reason });
    }
}

/// An IRQ line for unit tests that remembers every level it was driven to.
#[cfg(any(test, feature = "testing"))]
#[derive(Default)]
pub struct FakeIrq {
    levels: Mutex<Vec<bool>>,
}

#[cfg(any(test, feature = "testing"))]
impl FakeIrq {
    /// A fresh line, never driven.
    pub fn new() -> Self {
        Self::default()
    }
    /// The last level driven (false if never driven).
    pub fn level(&self) -> bool {
        lock(&self.levels).last().copied().unwrap_or(false)
    }
    /// Every level driven, in order.
    pub fn history(&self) -> Vec<bool> {
        lock(&self.levels).clone()
    }
}

#[cfg(any(test, feature = "testing"))]
impl IrqLine for FakeIrq {
    fn set_level(&self, level: bool) {
        lock(&self.levels).push(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_irq_goes_through_the_hypervisor() {
        let hv = Arc::new(FakeHypervisor::new());
        let line = IsaIrq::new(hv.clone(), 4);
        line.set_level(true);
        line.set_level(false);
        assert_eq!(hv.take(), vec![HvCall::IsaIrq { irq: 4, level: true }, HvCall::IsaIrq { irq: 4, level: false }]);
        assert!(hv.take().is_empty());
    }

    #[test]
    fn hv_calls_serialize_for_traces() {
        let s = serde_json::to_string(&HvCall::Shutdown { reason: ShutdownReason::Reboot }).unwrap();
        assert_eq!(s, r#"{"call":"shutdown","reason":"reboot"}"#);
    }
}
