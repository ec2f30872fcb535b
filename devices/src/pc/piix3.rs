//! The PIIX3 PCI-to-ISA bridge function (82371SB function 0), 00:01.0, and
//! its Reset Control Register at port 0xCF9.
//!
//! Reference: Intel 82371FB/82371SB PIIX/PIIX3 datasheet (order 290550),
//! sections 2.2 (PCI-to-ISA bridge configuration registers: PIRQRC\[A:D\] at
//! 0x60-0x63) and 2.4.1 (RC, I/O 0xCF9), with QEMU's `hw/isa/piix.c` reset
//! values and behaviour:
//!
//! * 8086:7000, revision 0, class 0x0601, header type 0x80 (multi-function:
//!   IDE, USB and PM live at functions 1-3), subsystem 1af4:1100;
//! * reset: COMMAND 0x0007, STATUS 0x0200 (DEVSEL medium), PIRQRC\[A:D\] 0x80
//!   (routing disabled) and the other values of QEMU's `piix_reset`;
//! * 0x40-0xFF are writable (QEMU's default mask).
//!
//! **PCI link routing under Xen.** Xen routes PCI INTx itself; the DM only
//! tells it where each link goes. Every byte a guest write puts into
//! 0x60-0x63 (any width, any alignment) becomes
//! `set_pci_link_route(link, irq)`, `irq` being 0 (disabled) if bit 7 is set
//! and the low 4 bits otherwise. This is what QEMU's `PIIX3-xen` variant
//! (`xen_piix_pci_write_config_client`, QEMU <= 8.0, the one the lab ran)
//! does: it forwards each written byte, changed or not.
//!
//! **Reset control (0xCF9).** A byte write with bit 2 (RCPU) set requests a
//! reset: [`Hypervisor::shutdown`] with [`ShutdownReason::Reboot`] before the
//! write returns. QEMU does a hard or soft reset depending on bit 1 (SRST);
//! under Xen both mean "reboot the domain", which gets a new domain and a new
//! device model. Otherwise bit 1 is latched and reads back; the other bits
//! read 0 (QEMU keeps only bit 1; bit 3, FULL_RST, exists on later ICHs, not
//! on PIIX3). QEMU serves only byte accesses; wider ones reach the host
//! bridge's data window instead (the bus delegates only byte accesses).
//!
//! The machine places the function and the register ([`crate::pc::layout`]):
//! on a PC the register lies inside the host bridge's 0xCF8-0xCFF block, so
//! the machine hands it to [`crate::Bus::set_reset_control`].
//!
//! Saved state: the configuration image ([`PciConfigState`]) and, for the
//! reset control, the latched SRST bit ([`ResetControlState`]).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::bus::{BusDevice, PciFunction, PciRegion};
use crate::hv::{Hypervisor, ShutdownReason};
use crate::pci_config::{self, PciConfig, PciConfigState, PciIdentity, QEMU_SUBSYSTEM, QEMU_SUBSYSTEM_VENDOR};
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// PIIX3 PCI-to-ISA bridge (82371SB function 0).
pub const DEVICE_ID_82371SB_0: u16 = 0x7000;
/// First PIRQ route control register (PIRQRCA); B, C, D follow.
pub const REG_PIRQRC: u16 = 0x60;
/// Number of PCI interrupt links.
pub const NUM_LINKS: u16 = 4;
/// PIRQRC bit 7: routing disabled.
pub const PIRQ_DISABLE: u8 = 0x80;
/// PIRQRC bits 3-0: the ISA IRQ.
pub const PIRQ_IRQ_MASK: u8 = 0x0f;

/// RC bit 1: system reset type (1 = hard).
pub const RC_SRST: u8 = 0x02;
/// RC bit 2: reset CPU, the trigger.
pub const RC_RCPU: u8 = 0x04;

/// QEMU's `piix_reset` values (register, value) beyond the identity.
const RESET_VALUES: &[(u16, u8)] = &[
    (0x04, 0x07),
    (0x05, 0x00),
    (0x06, 0x00),
    (0x07, 0x02),
    (0x4c, 0x4d),
    (0x4e, 0x03),
    (0x4f, 0x00),
    (0x60, 0x80),
    (0x61, 0x80),
    (0x62, 0x80),
    (0x63, 0x80),
    (0x69, 0x02),
    (0x70, 0x80),
    (0x76, 0x0c),
    (0x77, 0x0c),
    (0x78, 0x02),
    (0x79, 0x00),
    (0x80, 0x00),
    (0x82, 0x00),
    (0xa0, 0x08),
    (0xa2, 0x00),
    (0xa3, 0x00),
    (0xa4, 0x00),
    (0xa5, 0x00),
    (0xa6, 0x00),
    (0xa7, 0x00),
    (0xa8, 0x0f),
    (0xaa, 0x00),
    (0xab, 0x00),
    (0xac, 0x00),
    (0xae, 0x00),
];

/// The ISA bridge function.
pub struct Piix3 {
    cfg: PciConfig,
    hv: Arc<dyn Hypervisor>,
}

/// The ISA IRQ a PIRQRC value routes to, 0 meaning disabled (Xen's encoding).
pub const fn link_irq(pirqrc: u8) -> u8 {
    if pirqrc & PIRQ_DISABLE != 0 {
        0
    } else {
        pirqrc & PIRQ_IRQ_MASK
    }
}

impl Piix3 {
    /// A bridge in its reset state; link routes go to `hv`.
    pub fn new(hv: Arc<dyn Hypervisor>) -> Self {
        let mut cfg = PciConfig::new(&PciIdentity {
            vendor: crate::pc::i440fx::VENDOR_INTEL,
            device: DEVICE_ID_82371SB_0,
            revision: 0,
            base_class: 0x06,
            sub_class: 0x01,
            prog_if: 0,
            subsystem_vendor: QEMU_SUBSYSTEM_VENDOR,
            subsystem: QEMU_SUBSYSTEM,
            multi_function: true,
        });
        for &(reg, v) in RESET_VALUES {
            cfg.set_u8(reg, v);
        }
        Self { cfg, hv }
    }

    /// The current PIRQRC value of `link` (0-3).
    pub fn pirqrc(&self, link: u8) -> u8 {
        self.cfg.u8_at(REG_PIRQRC + u16::from(link & 3))
    }
}

impl PciFunction for Piix3 {
    fn config_read(&mut self, reg: u16, data: &mut [u8]) {
        self.cfg.read(reg, data);
    }

    fn config_write(&mut self, reg: u16, data: &[u8]) {
        self.cfg.write(reg, data);
        for (link, v) in pci_config::bytes_in(reg, data, REG_PIRQRC, NUM_LINKS) {
            self.hv.set_pci_link_route(link as u8, link_irq(v));
        }
    }

    fn regions(&self) -> Vec<PciRegion> {
        Vec::new()
    }

    fn region_read(&mut self, _region: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff); // no windows: unreachable through the bus
    }

    fn region_write(&mut self, _region: u8, _offset: u64, _data: &[u8]) {}
}

impl DeviceState for Piix3 {
    type State = PciConfigState;
    const KIND: &'static str = "piix3";
    const VERSION: u32 = 1;

    fn save(&self) -> PciConfigState {
        self.cfg.save_state()
    }

    /// Restores the image. Link routes live in Xen and travel with the
    /// domain's own state, so they are not re-sent.
    fn restore(&mut self, state: PciConfigState) -> Result<(), StateError> {
        self.cfg.restore_state(&state).map_err(|e| StateError::malformed(Self::KIND, e))
    }
}

/// The Reset Control Register, a one-byte [`BusDevice`] (offset 0).
pub struct ResetControl {
    st: ResetControlState,
    hv: Arc<dyn Hypervisor>,
    log: RateLimit,
}

/// The saved state of [`ResetControl`]: the register, of which only SRST
/// (bit 1) is ever kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetControlState {
    rcr: u8,
}

impl ResetControl {
    /// A register reading 0; reset requests go to `hv`.
    pub fn new(hv: Arc<dyn Hypervisor>) -> Self {
        Self { st: ResetControlState { rcr: 0 }, hv, log: RateLimit::per_second() }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.st.rcr;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&v)) = (offset, data.first()) else { return };
        if v & RC_RCPU != 0 {
            if let Some(suppressed) = self.log.check() {
                tracing::info!(
                    value = format_args!("{v:#04x}"),
                    suppressed,
                    "guest requested a reset through port 0xcf9"
                );
            }
            self.hv.shutdown(ShutdownReason::Reboot);
            // QEMU resets the machine (rcr = 0) before telling Xen.
            self.st.rcr = 0;
            return;
        }
        self.st.rcr = v & RC_SRST;
    }
}

impl DeviceState for ResetControl {
    type State = ResetControlState;
    const KIND: &'static str = "piix3-reset-control";
    const VERSION: u32 = 1;

    fn save(&self) -> ResetControlState {
        self.st.clone()
    }

    fn restore(&mut self, state: ResetControlState) -> Result<(), StateError> {
        if state.rcr & !RC_SRST != 0 {
            return Err(StateError::malformed(
                Self::KIND,
                format!("register {:#04x} has bits other than SRST, which never latch", state.rcr),
            ));
        }
        self.st = state;
        Ok(())
    }
}

/// The ISA bridge function and its reset control register, both reset
/// requests and link routes going to the same hypervisor.
pub struct Piix3Handles {
    pub bridge: Arc<Mutex<Piix3>>,
    pub reset_control: Arc<Mutex<ResetControl>>,
}

impl Piix3Handles {
    /// Both in their reset state.
    pub fn new(hv: Arc<dyn Hypervisor>) -> Self {
        Self {
            bridge: Arc::new(Mutex::new(Piix3::new(hv.clone()))),
            reset_control: Arc::new(Mutex::new(ResetControl::new(hv))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::hv::{FakeHypervisor, HvCall};
    use crate::pc::i440fx::I440fx;
    use crate::pc::layout::{PCI_HOST_BRIDGE, PCI_ISA_BRIDGE as SBDF, PORT_RESET_CONTROL};

    /// Host bridge and ISA bridge at their layout slots, reset control
    /// delegated by the host bridge's port block, as the machine does.
    fn setup() -> (Bus, Arc<FakeHypervisor>, Piix3Handles) {
        let hv = Arc::new(FakeHypervisor::new());
        let mut bus = Bus::new();
        bus.register_pci(PCI_HOST_BRIDGE, "i440fx", Arc::new(Mutex::new(I440fx::new(1 << 30)))).unwrap();
        bus.enable_pci_host_ports().unwrap();
        let h = Piix3Handles::new(hv.clone());
        bus.register_pci(SBDF, "piix3", h.bridge.clone()).unwrap();
        bus.set_reset_control(h.reset_control.clone());
        (bus, hv, h)
    }

    fn rd(bus: &mut Bus, reg: u16, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        bus.pci_config_read(SBDF, reg, &mut d);
        crate::bus::le_value(&d)
    }

    #[test]
    fn reset_values() {
        let (mut bus, hv, _) = setup();
        assert_eq!(rd(&mut bus, 0x00, 4), 0x7000_8086);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0200_0007);
        assert_eq!(rd(&mut bus, 0x08, 4), 0x0601_0000);
        assert_eq!(rd(&mut bus, 0x0c, 4), 0x0080_0000, "multi-function header");
        assert_eq!(rd(&mut bus, 0x2c, 4), 0x1100_1af4);
        assert_eq!(rd(&mut bus, 0x3c, 4), 0);
        assert_eq!(rd(&mut bus, 0x60, 4), 0x8080_8080);
        let mut all = [0u8; 256];
        bus.pci_config_read(SBDF, 0, &mut all);
        let expect: Vec<(usize, u8)> =
            RESET_VALUES.iter().filter(|&&(r, v)| r >= 0x40 && v != 0).map(|&(r, v)| (usize::from(r), v)).collect();
        let got: Vec<(usize, u8)> = (0x40..256).filter(|&i| all[i] != 0).map(|i| (i, all[i])).collect();
        assert_eq!(got, expect);
        assert_eq!(
            got,
            vec![
                (0x4c, 0x4d),
                (0x4e, 0x03),
                (0x60, 0x80),
                (0x61, 0x80),
                (0x62, 0x80),
                (0x63, 0x80),
                (0x69, 0x02),
                (0x70, 0x80),
                (0x76, 0x0c),
                (0x77, 0x0c),
                (0x78, 0x02),
                (0xa0, 0x08),
                (0xa8, 0x0f)
            ]
        );
        assert!(hv.calls().is_empty(), "reading has no side effects");
    }

    #[test]
    fn writable_masks() {
        let (mut bus, _, _) = setup();
        for reg in (0u16..256).step_by(4) {
            bus.pci_config_write(SBDF, reg, &[0xff; 4]);
        }
        assert_eq!(rd(&mut bus, 0x00, 4), 0x7000_8086);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0200_0507, "status: no W1C bit was set");
        assert_eq!(rd(&mut bus, 0x08, 4), 0x0601_0000);
        assert_eq!(rd(&mut bus, 0x0c, 4), 0x0080_00ff);
        for bar in (0x10u16..=0x24).step_by(4) {
            assert_eq!(rd(&mut bus, bar, 4), 0);
        }
        assert_eq!(rd(&mut bus, 0x3c, 4), 0xff);
        for reg in (0x40u16..256).step_by(4) {
            assert_eq!(rd(&mut bus, reg, 4), 0xffff_ffff);
        }
    }

    #[test]
    fn hvmloader_link_routes() {
        let (mut bus, hv, h) = setup();
        // hvmloader: byte writes 5, 10, 11, 5 through cf8/cfc.
        for (i, irq) in [5u8, 10, 11, 5].into_iter().enumerate() {
            bus.pio_write(0xcf8, &0x8000_0860u32.to_le_bytes());
            bus.pio_write(0xcfc + i as u64, &[irq]);
        }
        assert_eq!(
            hv.take(),
            vec![
                HvCall::LinkRoute { link: 0, irq: 5 },
                HvCall::LinkRoute { link: 1, irq: 10 },
                HvCall::LinkRoute { link: 2, irq: 11 },
                HvCall::LinkRoute { link: 3, irq: 5 },
            ]
        );
        assert_eq!(rd(&mut bus, 0x60, 4), 0x050b_0a05);
        assert_eq!(h.bridge.lock().unwrap().pirqrc(2), 11);
    }

    #[test]
    fn link_routes_at_any_width_and_alignment() {
        let (mut bus, hv, _) = setup();
        bus.pci_config_write(SBDF, 0x60, &0x8b0a_0509u32.to_le_bytes());
        assert_eq!(
            hv.take(),
            vec![
                HvCall::LinkRoute { link: 0, irq: 9 },
                HvCall::LinkRoute { link: 1, irq: 5 },
                HvCall::LinkRoute { link: 2, irq: 10 },
                HvCall::LinkRoute { link: 3, irq: 0 },
            ]
        );
        // Straddling 0x5e..0x61: only the two PIRQ bytes are forwarded.
        bus.pci_config_write(SBDF, 0x5e, &[1, 2, 0x83, 0x7f]);
        assert_eq!(hv.take(), vec![HvCall::LinkRoute { link: 0, irq: 0 }, HvCall::LinkRoute { link: 1, irq: 15 }]);
        // Straddling 0x63..0x64.
        bus.pci_config_write(SBDF, 0x63, &[0x0e, 0x44]);
        assert_eq!(hv.take(), vec![HvCall::LinkRoute { link: 3, irq: 14 }]);
        // Writes elsewhere do not route.
        bus.pci_config_write(SBDF, 0x64, &[1, 2, 3, 4]);
        bus.pci_config_write(SBDF, 0x5c, &[1, 2, 3, 4]);
        assert!(hv.take().is_empty());
        // An unchanged value is forwarded again, as QEMU's PIIX3-xen does.
        bus.pci_config_write(SBDF, 0x61, &[0x02]);
        bus.pci_config_write(SBDF, 0x61, &[0x02]);
        assert_eq!(hv.take(), vec![HvCall::LinkRoute { link: 1, irq: 2 }; 2]);
        // Through the data window with the latch pointing at 0x60, a 2-byte access at 0xcfe.
        bus.pio_write(0xcf8, &0x8000_0860u32.to_le_bytes());
        bus.pio_write(0xcfe, &[0x80, 0x07]);
        assert_eq!(hv.take(), vec![HvCall::LinkRoute { link: 2, irq: 0 }, HvCall::LinkRoute { link: 3, irq: 7 }]);
    }

    #[test]
    fn reset_control_latches_srst_and_reboots_on_rcpu() {
        let (mut bus, hv, h) = setup();
        let mut v = [0u8; 1];
        bus.pio_read(0xcf9, &mut v);
        assert_eq!(v, [0]);
        bus.pio_write(0xcf9, &[!RC_RCPU]);
        bus.pio_read(0xcf9, &mut v);
        assert_eq!(v, [RC_SRST], "only SRST latches");
        assert!(hv.calls().is_empty());
        // The FADT reset value 6: hard reset. The call happens inside write().
        bus.pio_write(0xcf9, &[0x06]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Reboot }]);
        bus.pio_read(0xcf9, &mut v);
        assert_eq!(v, [0]);
        // Soft reset too.
        h.reset_control.lock().unwrap().write(0, &[0x04]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Reboot }]);
        // A word write at 0xcf8 is not a reset-control access.
        bus.pio_write(0xcf8, &[0x06, 0x06]);
        assert!(hv.take().is_empty());
    }

    #[test]
    fn reset_control_as_a_port_of_its_own() {
        let hv = Arc::new(FakeHypervisor::new());
        let mut bus = Bus::new();
        let h = Piix3Handles::new(hv.clone());
        bus.register_pio(PORT_RESET_CONTROL.into(), 1, "piix3 reset control", h.reset_control.clone(), 0).unwrap();
        assert_eq!(bus.pio_ranges(), vec![(0xcf9, 0xcf9)]);
        bus.pio_write(0xcf9, &[0x02]);
        let mut v = [0u8; 1];
        bus.pio_read(0xcf9, &mut v);
        assert_eq!(v, [0x02]);
        bus.pio_write(0xcf9, &[0x0e]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Reboot }]);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut bus, hv, h) = setup();
        for len in [1usize, 2, 3, 4, 8] {
            for reg in [0u16, 0x5f, 0x62, 0xfd, 0xff, 0x100] {
                let mut v = vec![0u8; len];
                bus.pci_config_read(SBDF, reg, &mut v);
                bus.pci_config_write(SBDF, reg, &vec![0x11; len]);
            }
        }
        hv.take();
        let mut rc = h.reset_control.lock().unwrap();
        let mut v = [0u8; 8];
        rc.read(3, &mut v);
        assert_eq!(v, [0xff; 8]);
        rc.read(0, &mut v);
        assert_eq!(v, [0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        rc.write(5, &[0x06]);
        rc.write(0, &[]);
        assert!(hv.take().is_empty());
        let mut b = h.bridge.lock().unwrap();
        b.config_write(0xffff, &[0x11; 8]);
        b.config_read(0xffff, &mut v);
        b.region_read(0, 0, &mut v);
        b.region_write(0, 0, &v);
        assert!(hv.take().is_empty());
    }

    crate::state_conformance!(state_conformance, Piix3::new(Arc::new(FakeHypervisor::new())), |d: &mut Piix3| d
        .config_write(0x60, &[0x05, 0x0a, 0x0b, 0x05]));

    #[test]
    fn reset_control_restore_refuses_bits_that_never_latch() {
        let mut rc = ResetControl::new(Arc::new(FakeHypervisor::new()));
        let e = rc.restore(ResetControlState { rcr: RC_RCPU }).unwrap_err();
        assert!(e.to_string().contains("piix3-reset-control"), "{e}");
        rc.restore(ResetControlState { rcr: RC_SRST }).unwrap();
        let mut v = [0u8; 1];
        rc.read(0, &mut v);
        assert_eq!(v, [RC_SRST]);
    }

    crate::state_conformance!(
        reset_control_state_conformance,
        ResetControl::new(Arc::new(FakeHypervisor::new())),
        |d: &mut ResetControl| d.write(0, &[0x02])
    );
}
