//! The machine's vCPUs as QMP sees them: [`VcpuControl`] over the ACPI CPU
//! hotplug device (`xendm_devices::pc::cpu_hotplug`), so the control layer
//! never locks a device itself.
//!
//! A hot-add (`xen-toolstack.md` 2.6) sets the vCPU's bit in the presence
//! bitmap at 0xAF00, then raises GPE0 bit 2 on the PIIX4 PM function, which
//! drives the SCI; the guest's `\_GPE._E02` reads the bitmap and notifies its
//! ACPI processor driver. It runs on the QMP thread and takes the device
//! locks the ioreq thread takes (the bitmap, then the PM function), each
//! briefly and always in that order.
//!
//! Xen itself needs nothing from the device model for the new vCPU: libxl
//! created all `maxvcpus` vCPUs with the domain and the ioreq server serves
//! the slot of every one of them from the start (`src/xen/ioreq_server`);
//! the guest brings the vCPU up with INIT/SIPI through Xen's local APIC.
//!
//! Without ACPI (`-no-acpi`) there is no bitmap: the boot vCPUs are the
//! vCPUs, and a hot-add is refused (QEMU has no CPU hotplug there either).

use std::sync::{Arc, Mutex};

use tracing::info;
use xendm_devices::pc::cpu_hotplug::{CpuHotplug, PlugError};
use xendm_devices::sync::lock;

use crate::control::qmp::{HotAddError, VcpuControl, VcpuSet};

/// [`VcpuControl`] for a built machine.
pub struct MachineVcpus {
    hotplug: Option<Arc<Mutex<CpuHotplug>>>,
    boot: u32,
    max: u32,
}

impl MachineVcpus {
    /// Over `hotplug` (none without ACPI), for a guest started with `boot`
    /// of at most `max` vCPUs.
    pub const fn new(hotplug: Option<Arc<Mutex<CpuHotplug>>>, boot: u32, max: u32) -> Self {
        Self { hotplug, boot, max }
    }
}

impl VcpuControl for MachineVcpus {
    fn vcpus(&self) -> VcpuSet {
        match &self.hotplug {
            Some(h) => {
                let h = lock(&**h);
                VcpuSet { boot: h.boot_vcpus(), max: h.max_vcpus(), present: h.present() }
            }
            None => VcpuSet { boot: self.boot, max: self.max, present: (0..self.boot).collect() },
        }
    }

    fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
        let Some(h) = &self.hotplug else {
            return Err(if index >= self.max {
                HotAddError::OutOfRange { index, max: self.max }
            } else if index < self.boot {
                HotAddError::AlreadyPresent { index }
            } else {
                HotAddError::Unsupported
            });
        };
        let plugged = lock(&**h).plug(index);
        match plugged {
            Ok(()) => {
                info!(vcpu = index, "vCPU hot-added (ACPI GPE raised); the guest onlines it");
                Ok(())
            }
            Err(PlugError::OutOfRange { index, max }) => Err(HotAddError::OutOfRange { index, max }),
            Err(PlugError::AlreadyPresent { index }) => Err(HotAddError::AlreadyPresent { index }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use crate::ioreq::engine::NoHooks;
    use crate::machine::spec::MachineSpec;
    use crate::machine::{build, MachineBackends};
    use xendm_devices::hv::{FakeHypervisor, HvCall};
    use xendm_devices::mem::TestMemory;

    fn machine(args: &[&str]) -> (crate::machine::Machine, Arc<FakeHypervisor>) {
        let hv = Arc::new(FakeHypervisor::new());
        let spec = MachineSpec::from_config(&crate::cli::run_config(args)).unwrap();
        let b = MachineBackends {
            hv: hv.clone(),
            mem: Arc::new(TestMemory::pc(16 << 20).unwrap()),
            hooks: Box::new(NoHooks),
            serial_sinks: Vec::new(),
        };
        (build(spec, b).unwrap(), hv)
    }

    fn pio(m: &mut crate::machine::Machine, vcpu: u32, port: u64, write: Option<u8>) -> u64 {
        let req = Ioreq {
            addr: port,
            data: write.map_or(0, u64::from),
            count: 1,
            size: 1,
            data_is_ptr: false,
            is_read: write.is_none(),
            df: false,
            kind: IoreqKind::Pio,
        };
        m.engine.handle(vcpu, &req)
    }

    /// libxl's argv for `vcpus = 2`, `maxvcpus = 4`, then `xl vcpu-set 4`.
    #[test]
    fn hot_adds_through_the_machine_reach_the_guest_and_the_vcpu_set() {
        let (mut m, hv) = machine(&["-xen-domid", "1", "-smp", "2,maxcpus=4", "-m", "128"]);
        let ctl = m.vcpu_control();
        assert_eq!(ctl.vcpus(), VcpuSet { boot: 2, max: 4, present: vec![0, 1] });
        // Guest enables GPE 2 from vCPU 1's ioreq slot; the bitmap reads on vCPU 0's.
        pio(&mut m, 1, 0xafe2, Some(0x04));
        assert_eq!(pio(&mut m, 0, 0xaf00, None), 0x03);
        ctl.hot_add_vcpu(2).unwrap();
        ctl.hot_add_vcpu(3).unwrap();
        assert_eq!(hv.take(), vec![HvCall::IsaIrq { irq: 9, level: true }], "the second add finds the SCI high");
        assert_eq!(pio(&mut m, 1, 0xaf00, None), 0x0f);
        assert_eq!(ctl.vcpus().present, vec![0, 1, 2, 3]);
        assert_eq!(ctl.hot_add_vcpu(3), Err(HotAddError::AlreadyPresent { index: 3 }));
        assert_eq!(ctl.hot_add_vcpu(4), Err(HotAddError::OutOfRange { index: 4, max: 4 }));
        pio(&mut m, 0, 0xafe0, Some(0x04));
        assert_eq!(hv.take(), vec![HvCall::IsaIrq { irq: 9, level: false }]);
    }

    #[test]
    fn without_acpi_the_boot_vcpus_are_fixed() {
        let (mut m, hv) = machine(&["-xen-domid", "1", "-smp", "2,maxcpus=4", "-no-acpi"]);
        let ctl = m.vcpu_control();
        assert_eq!(ctl.vcpus(), VcpuSet { boot: 2, max: 4, present: vec![0, 1] });
        assert_eq!(ctl.hot_add_vcpu(2), Err(HotAddError::Unsupported));
        assert_eq!(ctl.hot_add_vcpu(1), Err(HotAddError::AlreadyPresent { index: 1 }));
        assert_eq!(ctl.hot_add_vcpu(9), Err(HotAddError::OutOfRange { index: 9, max: 4 }));
        assert_eq!(pio(&mut m, 0, 0xaf00, None), 0xff, "no bitmap: unclaimed");
        assert!(hv.calls().is_empty());
    }

    /// libxl's `-smp` forms: none (1 vCPU), `N,maxcpus=N`, `N,maxcpus=M`.
    #[test]
    fn libxl_smp_forms_give_the_boot_bitmap() {
        for (smp, want, max) in [(None, 0x01u64, 1u32), (Some("2,maxcpus=2"), 0x03, 2), (Some("4,maxcpus=8"), 0x0f, 8)]
        {
            let mut args = vec!["-xen-domid", "1"];
            if let Some(s) = smp {
                args.extend(["-smp", s]);
            }
            let (mut m, _) = machine(&args);
            assert_eq!(pio(&mut m, 0, 0xaf00, None), want, "{smp:?}");
            assert_eq!(pio(&mut m, 0, 0xaf01, None), 0);
            assert_eq!((m.vcpus, m.max_vcpus), (want.count_ones(), max));
        }
    }
}
