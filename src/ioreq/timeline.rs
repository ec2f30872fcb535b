//! The boot phases an administrator can see from the requests a guest
//! makes, as a pure state machine (issue 14 item 3: a boot timeline).
//!
//! The device model sees only I/O, so each phase is recognised by the first
//! request of a kind that belongs to it, in boot order:
//!
//! 1. [`Phase::FirstIoreq`]: any request; the vCPU runs (hvmloader, the
//!    first code in an HVM guest, `xen-lab.md` 1).
//! 2. [`Phase::PciScan`]: the first PCI configuration access (a
//!    `PCI_CONFIG` ioreq, or a write of the 0xCF8 address port): firmware
//!    enumerates the bus (hvmloader assigns BARs, then SeaBIOS).
//! 3. [`Phase::FwCfg`]: the first fw_cfg selector write (port 0x510): SeaBIOS
//!    looks for its tables and option ROMs (hvmloader does not use fw_cfg).
//! 4. [`Phase::BootRom`]: the first selection of a boot item (kernel,
//!    initrd, command line, setup header, entry point: QEMU's fw_cfg keys
//!    0x07-0x0b and 0x10-0x18, `docs/fw-cfg.md`), which only a boot option
//!    ROM reads: SeaBIOS has started xendm's ROM (linuxboot, multiboot or
//!    PVH).
//! 5. [`Phase::KernelEntry`]: after that, the first request that is not a
//!    fw_cfg access: xendm's ROMs touch no other port (their debug output
//!    goes to port 0xE9, which Xen handles itself), so this is the kernel's
//!    first I/O after the ROM's hand-off.
//! 6. [`Phase::FirstSerialByte`]: the first write to COM1's transmit
//!    register (0x3F8 with the divisor latch off): the guest's first byte on
//!    its serial console.
//!
//! A phase is reported once, when first reached; a later phase can be
//! reached without an earlier one (a guest that never uses fw_cfg still
//! gets its first serial byte). Buffered requests are not looked at. The
//! clock is the caller's.

use crate::ioreq::abi::{Ioreq, IoreqKind};

/// fw_cfg's selector port.
const FW_CFG_SELECTOR: u64 = 0x510;
/// First and last port of the fw_cfg block (selector, data, DMA address).
const FW_CFG_PORTS: std::ops::RangeInclusive<u64> = 0x510..=0x51b;
/// PCI configuration address port.
const PCI_CONFIG_ADDRESS: u64 = 0xcf8;
/// COM1's transmit register (divisor latch low byte when DLAB is set).
const COM1_THR: u64 = 0x3f8;
/// COM1's line control register (bit 7: DLAB).
const COM1_LCR: u64 = 0x3fb;
const LCR_DLAB: u64 = 0x80;

/// A boot phase (see the module docs for how each is recognised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The first request of all.
    FirstIoreq,
    /// The first PCI configuration access.
    PciScan,
    /// The first fw_cfg selector write.
    FwCfg,
    /// The first selection of a boot item.
    BootRom,
    /// The first non-fw_cfg request after the boot ROM started.
    KernelEntry,
    /// The first byte written to COM1's transmit register.
    FirstSerialByte,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Self; 6] =
        [Self::FirstIoreq, Self::PciScan, Self::FwCfg, Self::BootRom, Self::KernelEntry, Self::FirstSerialByte];

    /// A short key, for log fields and the lab report.
    pub const fn key(self) -> &'static str {
        match self {
            Self::FirstIoreq => "first_ioreq",
            Self::PciScan => "pci_scan",
            Self::FwCfg => "fw_cfg",
            Self::BootRom => "boot_rom",
            Self::KernelEntry => "kernel_entry",
            Self::FirstSerialByte => "first_serial_byte",
        }
    }

    /// What the phase means, for the log line.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::FirstIoreq => "first ioreq: the guest's vCPU runs (hvmloader)",
            Self::PciScan => "firmware enumerates PCI (hvmloader, then SeaBIOS)",
            Self::FwCfg => "firmware reads fw_cfg (SeaBIOS)",
            Self::BootRom => "SeaBIOS started xendm's boot ROM (it reads the boot items)",
            Self::KernelEntry => "the boot ROM handed over: the kernel's first I/O",
            Self::FirstSerialByte => "first byte on the guest's serial port (COM1)",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Whether fw_cfg key `key` is a boot item that only a boot ROM reads.
const fn is_boot_item(key: u64) -> bool {
    matches!(key & 0xffff, 0x07..=0x0b | 0x10..=0x18)
}

/// The phases seen so far.
#[derive(Debug, Default, Clone)]
pub struct BootTimeline {
    seen: u8,
    dlab: bool,
}

impl BootTimeline {
    /// Nothing seen yet.
    pub const fn new() -> Self {
        Self { seen: 0, dlab: false }
    }

    /// Whether every phase has been reported (nothing more to look for).
    pub const fn done(&self) -> bool {
        self.seen == (1 << Phase::ALL.len()) - 1
    }

    /// Whether `phase` has been reported.
    pub const fn has(&self, phase: Phase) -> bool {
        self.seen & phase.bit() != 0
    }

    /// Whether the boot ROM is running: it has started and the kernel has
    /// not made its first I/O yet (every request in between is the ROM's
    /// fw_cfg traffic).
    pub const fn in_boot_rom(&self) -> bool {
        self.has(Phase::BootRom) && !self.has(Phase::KernelEntry)
    }

    /// Looks at one synchronous request; returns the phases it starts, in
    /// order (at most two: the very first request can also start another).
    pub fn see(&mut self, req: &Ioreq) -> Vec<Phase> {
        let mut new = Vec::new();
        if self.done() {
            return new;
        }
        self.reach(Phase::FirstIoreq, &mut new);
        let write = !req.is_read && !req.data_is_ptr;
        let pio = req.kind == IoreqKind::Pio;
        if req.kind == IoreqKind::PciConfig || (pio && write && req.addr == PCI_CONFIG_ADDRESS) {
            self.reach(Phase::PciScan, &mut new);
        }
        if pio && write && req.addr == FW_CFG_SELECTOR {
            self.reach(Phase::FwCfg, &mut new);
            if is_boot_item(req.data) {
                self.reach(Phase::BootRom, &mut new);
            }
        } else if self.has(Phase::BootRom) && !(pio && FW_CFG_PORTS.contains(&req.addr)) {
            self.reach(Phase::KernelEntry, &mut new);
        }
        if pio && write && req.addr == COM1_LCR {
            self.dlab = req.data & LCR_DLAB != 0;
        }
        if pio && write && req.addr == COM1_THR && !self.dlab {
            self.reach(Phase::FirstSerialByte, &mut new);
        }
        new
    }

    fn reach(&mut self, phase: Phase, new: &mut Vec<Phase>) {
        if !self.has(phase) {
            self.seen |= phase.bit();
            new.push(phase);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(addr: u64, size: u32, data: u64) -> Ioreq {
        Ioreq { addr, data, count: 1, size, data_is_ptr: false, is_read: false, df: false, kind: IoreqKind::Pio }
    }
    fn inp(addr: u64, size: u32) -> Ioreq {
        Ioreq { is_read: true, ..out(addr, size, 0) }
    }
    fn pci() -> Ioreq {
        Ioreq { kind: IoreqKind::PciConfig, addr: 0x10, ..inp(0, 4) }
    }

    #[test]
    fn a_linux_boot_goes_through_every_phase_in_order() {
        let mut t = BootTimeline::new();
        let mut got = Vec::new();
        let boot = [
            inp(0x92, 1), // hvmloader's first I/O
            pci(),        // PCI enumeration
            out(0xcf8, 4, 0x8000_0000),
            out(0x510, 2, 0x0000), // SeaBIOS: signature
            inp(0x511, 1),
            out(0x510, 2, 0x0019), // file directory
            out(0x3fb, 1, 0x80),   // SeaBIOS programs the UART divisor...
            out(0x3f8, 1, 0x01),   // ... which is not a serial byte
            out(0x3fb, 1, 0x03),
            out(0x510, 2, 0x0016), // the ROM: setup address
            inp(0x511, 1),
            out(0x514, 4, 0),
            out(0x518, 4, 0x1000), // DMA of the kernel
            out(0x510, 2, 0x0015), // command line data
            inp(0x61, 1),          // the kernel
            out(0x3f8, 1, b'L' as u64),
        ];
        for r in &boot {
            got.extend(t.see(r));
        }
        assert_eq!(got, Phase::ALL);
        assert!(t.done());
        assert!(t.see(&inp(0x60, 1)).is_empty());
    }

    #[test]
    fn fw_cfg_traffic_before_the_rom_is_not_the_kernel() {
        let mut t = BootTimeline::new();
        for r in [out(0x510, 2, 0x0000), inp(0x511, 1), out(0x510, 2, 0x000f), inp(0x70, 1)] {
            t.see(&r);
        }
        assert!(t.has(Phase::FwCfg));
        assert!(!t.has(Phase::BootRom) && !t.has(Phase::KernelEntry));
        // the ROM's own fw_cfg accesses do not end its phase
        t.see(&out(0x510, 2, 0x0008));
        t.see(&inp(0x511, 1));
        t.see(&out(0x518, 4, 0));
        assert!(t.has(Phase::BootRom) && !t.has(Phase::KernelEntry));
        assert!(t.in_boot_rom());
        assert_eq!(t.see(&out(0x80, 1, 0)), [Phase::KernelEntry]);
        assert!(!t.in_boot_rom());
    }

    #[test]
    fn phases_are_reported_once_and_can_be_skipped() {
        let mut t = BootTimeline::new();
        assert_eq!(t.see(&out(0x3f8, 1, 0x41)), [Phase::FirstIoreq, Phase::FirstSerialByte]);
        assert!(t.see(&out(0x3f8, 1, 0x42)).is_empty());
        assert!(!t.done());
        // reads of the selector port or the THR start nothing
        assert!(t.see(&inp(0x510, 2)).is_empty());
    }

    #[test]
    fn hostile_values_are_just_values() {
        let mut t = BootTimeline::new();
        let weird = Ioreq { count: u32::MAX, size: 0, data: u64::MAX, ..out(0x510, 2, 0) };
        let got = t.see(&weird);
        assert_eq!(got, [Phase::FirstIoreq, Phase::FwCfg]); // selector 0xffff is not a boot item
        let ptr = Ioreq { data_is_ptr: true, ..out(0x510, 2, 0x08) };
        assert!(t.see(&ptr).is_empty(), "a rep outs to the selector is not a selection we can read");
    }
}
