//! System control port A (port 0x92): "fast A20" and fast reset.
//!
//! References: the PS/2 system control port A as documented for the 82371
//! PIIX family and in QEMU's `hw/i386/pc.c` (`port92_write`/`port92_read`),
//! whose behaviour a guest sees:
//!
//! * the port is one read/write byte that reads back what was written;
//! * bit 1 drives the A20 gate; under Xen A20 is always enabled (HVM guests
//!   never see the 1 MiB wrap), so the bit is only stored and read back;
//! * a write that sets bit 0 while it was clear requests a system reset:
//!   [`Hypervisor::shutdown`] with [`ShutdownReason::Reboot`], before the
//!   write returns. QEMU then resets the machine, which clears bit 0 again
//!   (`port92_reset`), before telling Xen; so do we, so a later write of 1
//!   requests a reset again.
//!
//! Accesses are byte-wide; bytes of a wider access beyond the port read
//! 0xFF and are ignored.
//!
//! The machine places the register (offset 0) at port 0x92
//! ([`crate::pc::layout`]).
//!
//! Saved state ([`Port92State`]): the byte.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::hv::{Hypervisor, ShutdownReason};
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// Bit 0: fast reset (on a 0 -> 1 transition).
pub const FAST_RESET: u8 = 0x01;
/// Bit 1: A20 gate.
pub const A20: u8 = 0x02;

/// System control port A.
pub struct Port92 {
    st: Port92State,
    hv: Arc<dyn Hypervisor>,
    log: RateLimit,
}

impl Port92 {
    /// The port reading 0; reset requests go to `hv`.
    pub fn new(hv: Arc<dyn Hypervisor>) -> Self {
        Self { st: Port92State { outport: 0 }, hv, log: RateLimit::per_second() }
    }

    /// True if the guest last wrote A20 enabled.
    pub fn a20(&self) -> bool {
        self.st.outport & A20 != 0
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = self.st.outport;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (0, Some(&v)) = (offset, data.first()) else { return };
        let old = self.st.outport;
        self.st.outport = v;
        if v & FAST_RESET != 0 && old & FAST_RESET == 0 {
            if let Some(suppressed) = self.log.check() {
                tracing::info!(
                    value = format_args!("{v:#04x}"),
                    suppressed,
                    "guest requested a reset through port 0x92"
                );
            }
            self.hv.shutdown(ShutdownReason::Reboot);
            self.st.outport &= !FAST_RESET;
        }
    }
}

/// The saved state of [`Port92`]: the byte as last written (bit 0 clear
/// after a reset request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port92State {
    outport: u8,
}

impl DeviceState for Port92 {
    type State = Port92State;
    const KIND: &'static str = "port92";
    const VERSION: u32 = 1;

    fn save(&self) -> Port92State {
        self.st.clone()
    }

    /// Every byte is a state the guest can write; bit 0 set means a reset
    /// was already requested, so a later write of 1 does not request another.
    fn restore(&mut self, state: Port92State) -> Result<(), StateError> {
        self.st = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::hv::{FakeHypervisor, HvCall};
    use crate::pc::layout;
    use std::sync::Mutex;

    const PORT: u64 = layout::PORT_FAST_A20 as u64;

    /// The register at its layout port.
    fn setup() -> (Bus, Arc<FakeHypervisor>, Arc<Mutex<Port92>>) {
        let hv = Arc::new(FakeHypervisor::new());
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Port92::new(hv.clone())));
        bus.register_pio(PORT, layout::LEN_FAST_A20.into(), "port92", d.clone(), 0).unwrap();
        (bus, hv, d)
    }

    fn inb(bus: &mut Bus) -> u8 {
        let mut v = [0u8; 1];
        bus.pio_read(PORT, &mut v);
        v[0]
    }

    #[test]
    fn a20_reads_back() {
        let (mut bus, hv, d) = setup();
        assert_eq!(inb(&mut bus), 0);
        bus.pio_write(PORT, &[A20]);
        assert_eq!(inb(&mut bus), A20);
        assert!(d.lock().unwrap().a20());
        bus.pio_write(PORT, &[0xf0 | A20]);
        assert_eq!(inb(&mut bus), 0xf2, "the other bits are stored too");
        bus.pio_write(PORT, &[0]);
        assert!(!d.lock().unwrap().a20());
        assert!(hv.calls().is_empty());
    }

    #[test]
    fn setting_bit_0_reboots_before_the_write_returns() {
        let (mut bus, hv, _) = setup();
        bus.pio_write(PORT, &[A20 | FAST_RESET]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Reboot }]);
        assert_eq!(inb(&mut bus), A20, "the reset clears bit 0");
        bus.pio_write(PORT, &[A20 | FAST_RESET]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Reboot }]);
    }

    #[test]
    fn bit_0_already_set_does_not_reboot() {
        let (mut bus, hv, d) = setup();
        d.lock().unwrap().restore(Port92State { outport: 1 }).unwrap();
        bus.pio_write(PORT, &[FAST_RESET]);
        assert!(hv.take().is_empty(), "no 0 -> 1 transition");
        bus.pio_write(PORT, &[0]);
        bus.pio_write(PORT, &[FAST_RESET]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Reboot }]);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut bus, hv, d) = setup();
        for len in [1usize, 2, 4, 8] {
            for port in [0x91u64, 0x92, 0x93] {
                let mut v = vec![0u8; len];
                bus.pio_read(port, &mut v);
                bus.pio_write(port, &vec![0xfe; len]);
            }
        }
        assert!(hv.take().is_empty());
        let mut p = d.lock().unwrap();
        let mut v = [0u8; 8];
        p.read(0, &mut v);
        assert_eq!(v, [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        p.read(u64::MAX, &mut v);
        assert_eq!(v, [0xff; 8]);
        p.write(1, &[1]);
        p.write(0, &[]);
        assert!(hv.take().is_empty());
    }

    crate::state_conformance!(state_conformance, Port92::new(Arc::new(FakeHypervisor::new())), |d: &mut Port92| d
        .write(0, &[A20]));
}
