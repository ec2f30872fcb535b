//! The i440FX PCI host bridge function (PMC, 82441FX), 00:00.0.
//!
//! Reference: Intel 82441FX PCI and Memory Controller (PMC) datasheet
//! (order 290549), section 3.2 (configuration registers), as QEMU's
//! `hw/pci-host/i440fx.c` presents it; that is what hvmloader and SeaBIOS
//! were written against:
//!
//! * 8086:1237, revision 2, class 0x0600 (host bridge), header type 0,
//!   subsystem 1af4:1100 (QEMU's default; SeaBIOS detects QEMU by it);
//! * everything from 0x40 up is writable and reads back (QEMU's default
//!   mask), so the PAM registers 0x59-0x5F and SMRAM 0x72 (reset value 0x02,
//!   `C_BASE_SEG` = 010b) keep what firmware writes;
//! * 0x57 holds the RAM size in 8 MiB units, capped at 255: a register QEMU
//!   invented for coreboot 4.0 and older.
//!
//! Where we differ from QEMU: PAM and SMRAM writes have no effect. Under Xen
//! the 0xC0000-0xFFFFF area is plain guest RAM populated by the toolstack
//! (hvmloader copies SeaBIOS there and never programs PAM), and SMM does not
//! exist, so there is nothing to remap. QEMU-on-Xen behaves the same, since
//! its memory regions there are not backed by the guest's real RAM.
//!
//! The configuration mechanism #1 ports 0xCF8-0xCFF belong to this chip but
//! are served by the bus itself ([`crate::Bus::enable_pci_host_ports`]); the
//! machine places the function and enables them ([`crate::pc::layout`]).
//!
//! Saved state: the configuration image ([`PciConfigState`]).

use crate::bus::{PciFunction, PciRegion};
use crate::pci_config::{PciConfig, PciConfigState, PciIdentity, QEMU_SUBSYSTEM, QEMU_SUBSYSTEM_VENDOR};
use crate::state::{DeviceState, StateError};

/// Intel's vendor ID.
pub const VENDOR_INTEL: u16 = 0x8086;
/// 82441FX PMC.
pub const DEVICE_ID_82441: u16 = 0x1237;
/// QEMU's revision of the function.
pub const REVISION: u8 = 0x02;
/// Coreboot RAM-size register (8 MiB units).
pub const REG_RAM_SIZE: u16 = 0x57;
/// First PAM register (PAM0 .. PAM6 = 0x59 .. 0x5F).
pub const REG_PAM0: u16 = 0x59;
/// Number of PAM registers.
pub const PAM_COUNT: u16 = 7;
/// System management RAM control.
pub const REG_SMRAM: u16 = 0x72;
/// SMRAM reset value: C_BASE_SEG = 010b (0xA0000).
pub const SMRAM_RESET: u8 = 0x02;

/// The host bridge function.
pub struct I440fx {
    cfg: PciConfig,
}

impl I440fx {
    /// A host bridge for a guest with `ram_bytes` of RAM in total (below and
    /// above 4 GiB; only register 0x57 depends on it).
    pub fn new(ram_bytes: u64) -> Self {
        let mut cfg = PciConfig::new(&PciIdentity {
            vendor: VENDOR_INTEL,
            device: DEVICE_ID_82441,
            revision: REVISION,
            base_class: 0x06,
            sub_class: 0x00,
            prog_if: 0,
            subsystem_vendor: QEMU_SUBSYSTEM_VENDOR,
            subsystem: QEMU_SUBSYSTEM,
            multi_function: false,
        });
        cfg.set_u8(REG_SMRAM, SMRAM_RESET);
        let units = (ram_bytes / (8 << 20)).min(255) as u8;
        cfg.set_u8(REG_RAM_SIZE, units);
        Self { cfg }
    }
}

impl PciFunction for I440fx {
    fn config_read(&mut self, reg: u16, data: &mut [u8]) {
        self.cfg.read(reg, data);
    }

    fn config_write(&mut self, reg: u16, data: &[u8]) {
        // PAM/SMRAM are stored only: see the module docs.
        self.cfg.write(reg, data);
    }

    fn regions(&self) -> Vec<PciRegion> {
        Vec::new()
    }

    fn region_read(&mut self, _region: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff); // no windows: unreachable through the bus
    }

    fn region_write(&mut self, _region: u8, _offset: u64, _data: &[u8]) {}
}

impl DeviceState for I440fx {
    type State = PciConfigState;
    const KIND: &'static str = "i440fx";
    const VERSION: u32 = 1;

    fn save(&self) -> PciConfigState {
        self.cfg.save_state()
    }

    fn restore(&mut self, state: PciConfigState) -> Result<(), StateError> {
        self.cfg.restore_state(&state).map_err(|e| StateError::malformed(Self::KIND, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::pc::layout::PCI_HOST_BRIDGE as SBDF;
    use std::sync::{Arc, Mutex};

    /// The host bridge at its layout slot, with the bus's CF8/CFC ports.
    fn bus() -> (Bus, Arc<Mutex<I440fx>>) {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(I440fx::new(256 << 20)));
        bus.register_pci(SBDF, "i440fx", d.clone()).unwrap();
        bus.enable_pci_host_ports().unwrap();
        (bus, d)
    }

    fn rd(bus: &mut Bus, reg: u16, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        bus.pci_config_read(SBDF, reg, &mut d);
        crate::bus::le_value(&d)
    }

    #[test]
    fn reset_values() {
        let (mut bus, _) = bus();
        assert_eq!(rd(&mut bus, 0x00, 4), 0x1237_8086);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0000_0000, "command and status");
        assert_eq!(rd(&mut bus, 0x08, 4), 0x0600_0002, "class 0600, rev 2");
        assert_eq!(rd(&mut bus, 0x0c, 4), 0, "header type 0");
        assert_eq!(rd(&mut bus, 0x2c, 4), 0x1100_1af4);
        assert_eq!(rd(&mut bus, 0x3c, 4), 0, "no interrupt pin");
        assert_eq!(rd(&mut bus, REG_RAM_SIZE, 1), 32, "256 MiB / 8 MiB");
        assert_eq!(rd(&mut bus, REG_SMRAM, 1), 0x02);
        for reg in REG_PAM0..REG_PAM0 + PAM_COUNT {
            assert_eq!(rd(&mut bus, reg, 1), 0);
        }
        // The rest of the device-specific area is zero.
        let mut all = [0u8; 256];
        bus.pci_config_read(SBDF, 0, &mut all[..]);
        let nonzero: Vec<usize> = (0x40..256).filter(|&i| all[i] != 0).collect();
        assert_eq!(nonzero, vec![REG_RAM_SIZE as usize, REG_SMRAM as usize]);
    }

    #[test]
    fn ram_size_register_caps_at_255() {
        assert_eq!(I440fx::new(64 << 30).cfg.u8_at(REG_RAM_SIZE), 255);
        assert_eq!(I440fx::new(4 << 20).cfg.u8_at(REG_RAM_SIZE), 0);
    }

    #[test]
    fn writable_masks_through_cf8_cfc() {
        let (mut bus, _) = bus();
        for reg in (0u16..256).step_by(4) {
            bus.pio_write(0xcf8, &(0x8000_0000u32 | u32::from(reg)).to_le_bytes());
            bus.pio_write(0xcfc, &[0xff; 4]);
        }
        assert_eq!(rd(&mut bus, 0x00, 4), 0x1237_8086);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0000_0507);
        assert_eq!(rd(&mut bus, 0x08, 4), 0x0600_0002);
        assert_eq!(rd(&mut bus, 0x0c, 4), 0x0000_00ff);
        for bar in (0x10u16..=0x24).step_by(4) {
            assert_eq!(rd(&mut bus, bar, 4), 0, "BAR {bar:#x} sizing reads 0: no BARs");
        }
        assert_eq!(rd(&mut bus, 0x30, 4), 0, "no ROM BAR");
        assert_eq!(rd(&mut bus, 0x3c, 4), 0xff);
        assert_eq!(rd(&mut bus, REG_PAM0, 1), 0xff);
        assert_eq!(rd(&mut bus, REG_SMRAM, 1), 0xff);
        assert!(bus.take_changes().is_empty());
    }

    #[test]
    fn pam_and_smram_read_back_at_any_width() {
        let (mut bus, _) = bus();
        bus.pci_config_write(SBDF, 0x59, &[0x30]);
        bus.pci_config_write(SBDF, 0x5a, &[0x33, 0x33]);
        bus.pci_config_write(SBDF, 0x5c, &0x3333_3333u32.to_le_bytes());
        assert_eq!(rd(&mut bus, 0x58, 8), 0x3333_3333_3333_3000);
        bus.pci_config_write(SBDF, 0x71, &[0x00, 0x0a, 0x00]);
        assert_eq!(rd(&mut bus, 0x72, 1), 0x0a);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut bus, d) = bus();
        for len in [1usize, 2, 3, 4, 8] {
            for reg in [0u16, 1, 0xfd, 0xff, 0x100, 0xffff] {
                let mut v = vec![0u8; len];
                bus.pci_config_read(SBDF, reg, &mut v);
                bus.pci_config_write(SBDF, reg, &vec![0xff; len]);
            }
        }
        let mut dev = d.lock().unwrap();
        let mut v = [0u8; 8];
        dev.config_read(0xffff, &mut v);
        dev.config_write(0xfffe, &[1; 8]);
        dev.region_read(7, u64::MAX, &mut v);
        assert_eq!(v, [0xff; 8]);
        dev.region_write(7, u64::MAX, &v);
    }

    crate::state_conformance!(state_conformance, I440fx::new(1 << 30), |d: &mut I440fx| {
        d.config_write(0x59, &[0x11, 0x22]);
        d.config_write(0x04, &[0x06, 0x00]);
    });

    #[test]
    fn restore_refuses_a_foreign_image() {
        let mut a = I440fx::new(1 << 30);
        let mut saved = a.save();
        saved.config = saved.config.replacen("8680", "8780", 1);
        let e = a.restore(saved).unwrap_err();
        assert!(e.to_string().contains("i440fx") && e.to_string().contains("read-only byte"), "{e}");
    }
}
