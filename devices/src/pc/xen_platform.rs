//! The Xen platform PCI device (00:02.0) and the emulated-device unplug
//! protocol on ports 0x10-0x1F.
//!
//! References: Xen `docs/misc/hvm-emulated-unplug.pandoc` (the port
//! protocol), `xen/include/public/hvm/pvdrivers.h` (product numbers), and
//! QEMU's `hw/i386/xen/xen_platform.c` for the register values:
//!
//! * 5853:0001, subsystem 5853:0001, revision 1, class 0xFF80, interrupt pin
//!   INTA, COMMAND starts as I/O + memory (0x0003) as in QEMU, but both BARs
//!   start at 0 and so decode nothing until firmware places them;
//! * BAR0: 256 bytes of I/O. Byte registers: offset 0 the platform flags
//!   (read/write), offset 8 the driver log (write; values 1 and 2 are the old
//!   VMDP "unplug disks"/"unplug NICs" commands), offset 4 value 1 the old
//!   SUSE "unplug everything"; other offsets read 0xFF;
//! * BAR1: 16 MiB prefetchable memory. Linux's `xen-platform-pci` driver only
//!   takes addresses from it, to map grant-table frames over with
//!   `XENMEM_add_to_physmap`; once mapped, Xen serves them without us. We do
//!   claim the window while it is decoded, as QEMU does (the lab capture shows
//!   `xen_map_mmio_range 0xf0000000-0xf0ffffff`), so the guest sees QEMU's
//!   answers in its unmapped parts: reads 0, writes ignored. Not claiming it
//!   would make those reads all-ones instead.
//!
//! The fixed ports (offsets from 0x10), by access size:
//!
//! | access | offset 0 (0x10) | offset 2 (0x12) |
//! |---|---|---|
//! | read 1 | platform flags | protocol version, 1 |
//! | read 2 | magic 0x49D2 | 0xFFFF |
//! | write 1 | platform flags | log byte |
//! | write 2 | unplug mask | product number |
//! | write 4 | build number | – |
//!
//! Every other access reads all-ones and ignores writes. Unplug mask bits: 0
//! IDE and SCSI disks, 1 NICs, 2 IDE disks but the primary master, 3 NVMe
//! disks. This device model emulates none of them, so an unplug is
//! logged and recorded ([`XenPlatform::unplugged`]), and handed to the
//! machine's [`UnplugHook`] if it set one: the host resources behind the
//! emulated devices (the taps of libxl's emulated NICs) are released there,
//! as QEMU deletes a NIC's tap with the NIC (`pci_unplug_nics`). The device
//! itself stays a plain state machine. Drivers are never
//! blocked (QEMU's xenstore `/mh/driver-blacklist` lookup is not done), so
//! the magic never turns into 0xD249.
//!
//! Where we differ from QEMU: platform flag bit 0 (ROM lock) asks QEMU to
//! make 0xC0000-0xFFFFF read-only with `set_mem_type`, which the
//! [`crate::hv::Hypervisor`] trait does not offer; we behave as QEMU does when
//! that call fails: the flags keep their value and the request is logged.
//! Log lines are cut at [`LOG_LINE_MAX`] bytes (QEMU: 4095), control
//! characters are replaced, and lines are rate-limited.
//!
//! The machine places the function and the fixed ports ([`UnplugPorts`])
//! from [`crate::pc::layout`] (`xenfv` creates the function before any VGA).
//!
//! Saved state ([`XenPlatformState`]): the configuration image (BARs) and
//! [`PlatformRegs`]; an unfinished log line is not saved.

use crate::sync::lock;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::bus::{le_value, put_le, BusDevice, PciFunction, PciRegion};
use crate::pci_config::{
    BarKind, PciConfig, PciConfigState, PciIdentity, COMMAND, COMMAND_IO, COMMAND_MEMORY, INTERRUPT_PIN,
};
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// XenSource's PCI vendor ID.
pub const VENDOR_XEN: u16 = 0x5853;
/// The platform device.
pub const DEVICE_XEN_PLATFORM: u16 = 0x0001;
/// Revision QEMU reports.
pub const REVISION: u8 = 1;

/// BAR0: the I/O window.
pub const BAR_IO: usize = 0;
/// BAR0 size.
pub const BAR_IO_SIZE: u64 = 0x100;
/// BAR1: the MMIO window for grant frames.
pub const BAR_MMIO: usize = 1;
/// BAR1 size.
pub const BAR_MMIO_SIZE: u64 = 0x100_0000;

/// BAR0 offset of the platform flags.
pub const IO_FLAGS: u64 = 0;
/// BAR0 offset of the old SUSE unplug command.
pub const IO_SUSE_UNPLUG: u64 = 4;
/// BAR0 offset of the driver log / old VMDP unplug commands.
pub const IO_LOG: u64 = 8;

/// Fixed-port offset of the magic, flags, unplug mask and build number.
pub const PORT_MAGIC: u64 = 0;
/// Fixed-port offset of the protocol version, product number and log.
pub const PORT_VERSION: u64 = 2;
/// The magic a driver expects at port 0x10.
pub const MAGIC: u16 = 0x49d2;
/// The magic telling a blocked driver not to load (never returned here).
pub const MAGIC_BLOCKED: u16 = 0xd249;
/// The protocol version at port 0x12.
pub const PROTOCOL_VERSION: u8 = 1;

/// Unplug bit 0: all IDE and SCSI disks.
pub const UNPLUG_ALL_DISKS: u16 = 1 << 0;
/// Unplug bit 1: all NICs.
pub const UNPLUG_ALL_NICS: u16 = 1 << 1;
/// Unplug bit 2: IDE disks except the primary master.
pub const UNPLUG_AUX_IDE_DISKS: u16 = 1 << 2;
/// Unplug bit 3: NVMe disks.
pub const UNPLUG_NVME_DISKS: u16 = 1 << 3;

/// Platform flag bit 0: lock the ROM area read-only.
pub const FLAG_ROM_LOCK: u8 = 1;

/// Longest log line kept; longer lines are emitted in pieces.
pub const LOG_LINE_MAX: usize = 512;

/// What the machine does on an unplug request besides the device recording
/// it: called with the request's mask (every request, repeated ones too),
/// under the device's lock, on the thread serving the guest; it must not
/// block.
pub trait UnplugHook: Send {
    /// The guest asked to unplug the emulated devices of `mask`
    /// ([`UNPLUG_ALL_DISKS`], [`UNPLUG_ALL_NICS`], ...).
    fn unplugged(&mut self, mask: u16);
}

/// The registers behind the fixed ports and BAR0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformRegs {
    /// Platform flags (only the ROM lock is defined; it never sets here).
    flags: u8,
    /// PV driver product number.
    product: u16,
    /// PV driver build number.
    build: u32,
    /// Every unplug bit asked for.
    unplugged: u16,
}

/// The saved state of [`XenPlatform`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XenPlatformState {
    config: PciConfigState,
    regs: PlatformRegs,
}

/// The platform device.
pub struct XenPlatform {
    cfg: PciConfig,
    regs: PlatformRegs,
    line: Vec<u8>,
    log_limit: RateLimit,
    warn_limit: RateLimit,
    hook: Option<Box<dyn UnplugHook>>,
}

impl Default for XenPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl XenPlatform {
    /// The device in its reset state.
    pub fn new() -> Self {
        let mut cfg = PciConfig::new(&PciIdentity {
            vendor: VENDOR_XEN,
            device: DEVICE_XEN_PLATFORM,
            revision: REVISION,
            base_class: 0xff,
            sub_class: 0x80,
            prog_if: 0,
            subsystem_vendor: VENDOR_XEN,
            subsystem: DEVICE_XEN_PLATFORM,
            multi_function: false,
        });
        cfg.set_u16(COMMAND, COMMAND_IO | COMMAND_MEMORY);
        cfg.set_u8(INTERRUPT_PIN, 1);
        // Constant, valid arguments: these cannot fail.
        let io = cfg.add_bar(BAR_IO, BarKind::Io, BAR_IO_SIZE);
        let mmio = cfg.add_bar(BAR_MMIO, BarKind::Mem32 { prefetchable: true }, BAR_MMIO_SIZE);
        debug_assert!(io.is_ok() && mmio.is_ok(), "platform BARs: {io:?} {mmio:?}");
        Self {
            cfg,
            regs: PlatformRegs { flags: 0, product: 0, build: 0, unplugged: 0 },
            line: Vec::new(),
            log_limit: RateLimit::per_second(),
            warn_limit: RateLimit::per_second(),
            hook: None,
        }
    }

    /// Sets what an unplug request also does (replacing any earlier hook).
    pub fn set_unplug_hook(&mut self, hook: Box<dyn UnplugHook>) {
        self.hook = Some(hook);
    }

    /// Every unplug bit the guest has asked for so far.
    pub fn unplugged(&self) -> u16 {
        self.regs.unplugged
    }

    /// The PV driver product number the guest announced (0 if none).
    pub fn product(&self) -> u16 {
        self.regs.product
    }

    /// The PV driver build number the guest announced (0 if none).
    pub fn build(&self) -> u32 {
        self.regs.build
    }

    fn set_flags(&mut self, v: u8) {
        let want = v & FLAG_ROM_LOCK;
        if want != self.regs.flags {
            if let Some(suppressed) = self.warn_limit.check() {
                tracing::warn!(
                    flags = format_args!("{v:#04x}"),
                    suppressed,
                    "guest asked to change the ROM lock, which this device model cannot do; flags unchanged"
                );
            }
        }
    }

    fn unplug(&mut self, mask: u16, how: &str) {
        self.regs.unplugged |= mask;
        let mut what = Vec::new();
        for (bit, name) in [
            (UNPLUG_ALL_DISKS, "IDE/SCSI disks"),
            (UNPLUG_ALL_NICS, "NICs"),
            (UNPLUG_AUX_IDE_DISKS, "secondary IDE disks"),
            (UNPLUG_NVME_DISKS, "NVMe disks"),
        ] {
            if mask & bit != 0 {
                what.push(name);
            }
        }
        if let Some(suppressed) = self.log_limit.check() {
            tracing::info!(
                mask = format_args!("{mask:#06x}"),
                protocol = how,
                suppressed,
                "guest unplugged emulated {}; none are emulated here",
                if what.is_empty() { "nothing".to_string() } else { what.join(", ") }
            );
        }
        if let Some(hook) = &mut self.hook {
            hook.unplugged(mask);
        }
    }

    fn flush_line(&mut self) {
        let text: String =
            String::from_utf8_lossy(&self.line).chars().map(|c| if c.is_control() { '.' } else { c }).collect();
        self.line.clear();
        if let Some(suppressed) = self.log_limit.check() {
            tracing::info!(suppressed, "guest PV driver: {text}");
        }
    }

    fn log_byte(&mut self, b: u8) {
        if b == b'\n' {
            self.flush_line();
            return;
        }
        self.line.push(b);
        if self.line.len() >= LOG_LINE_MAX {
            self.flush_line();
        }
    }

    /// A read of the fixed ports (offset 0 = port 0x10).
    pub fn fixed_read(&mut self, offset: u64, data: &mut [u8]) {
        let v: u64 = match (data.len(), offset) {
            (1, PORT_MAGIC) => u64::from(self.regs.flags),
            (1, PORT_VERSION) => u64::from(PROTOCOL_VERSION),
            (2, PORT_MAGIC) => u64::from(MAGIC),
            _ => u64::MAX,
        };
        put_le(data, v);
    }

    /// A write of the fixed ports (offset 0 = port 0x10).
    pub fn fixed_write(&mut self, offset: u64, data: &[u8]) {
        let v = le_value(data);
        match (data.len(), offset) {
            (1, PORT_MAGIC) => self.set_flags(v as u8),
            (1, PORT_VERSION) => self.log_byte(v as u8),
            (2, PORT_MAGIC) => self.unplug(v as u16, "unplug port"),
            (2, PORT_VERSION) => {
                self.regs.product = v as u16;
                if let Some(suppressed) = self.log_limit.check() {
                    tracing::info!(
                        product = self.regs.product,
                        suppressed,
                        "guest PV drivers announced their product number"
                    );
                }
            }
            (4, PORT_MAGIC) => {
                self.regs.build = v as u32;
                if let Some(suppressed) = self.log_limit.check() {
                    tracing::info!(
                        build = self.regs.build,
                        suppressed,
                        "guest PV drivers announced their build number"
                    );
                }
            }
            _ => {
                if let Some(suppressed) = self.warn_limit.check() {
                    tracing::debug!(offset, len = data.len(), suppressed, "write to the unplug ports ignored");
                }
            }
        }
    }

    fn bar_io_write_byte(&mut self, offset: u64, v: u8) {
        match offset {
            IO_FLAGS => self.set_flags(v),
            IO_SUSE_UNPLUG if v == 1 => self.unplug(UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS, "old SUSE"),
            IO_LOG => match v {
                1 => self.unplug(UNPLUG_ALL_DISKS, "old VMDP"),
                2 => self.unplug(UNPLUG_ALL_NICS, "old VMDP"),
                _ => self.log_byte(v),
            },
            _ => {}
        }
    }
}

impl PciFunction for XenPlatform {
    fn config_read(&mut self, reg: u16, data: &mut [u8]) {
        self.cfg.read(reg, data);
    }

    fn config_write(&mut self, reg: u16, data: &[u8]) {
        self.cfg.write(reg, data);
    }

    fn regions(&self) -> Vec<PciRegion> {
        self.cfg.bar_regions()
    }

    fn region_read(&mut self, region: u8, offset: u64, data: &mut [u8]) {
        match usize::from(region) {
            BAR_IO => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = if offset.checked_add(i as u64) == Some(IO_FLAGS) { self.regs.flags } else { 0xff };
                }
            }
            BAR_MMIO => data.fill(0),
            _ => data.fill(0xff),
        }
    }

    fn region_write(&mut self, region: u8, offset: u64, data: &[u8]) {
        if usize::from(region) == BAR_IO {
            for (i, &b) in data.iter().enumerate() {
                if let Some(o) = offset.checked_add(i as u64) {
                    self.bar_io_write_byte(o, b);
                }
            }
        }
        // BAR1: writes are ignored, as in QEMU.
    }
}

impl DeviceState for XenPlatform {
    type State = XenPlatformState;
    const KIND: &'static str = "xen-platform";
    const VERSION: u32 = 1;

    fn save(&self) -> XenPlatformState {
        XenPlatformState { config: self.cfg.save_state(), regs: self.regs.clone() }
    }

    fn restore(&mut self, state: XenPlatformState) -> Result<(), StateError> {
        if state.regs.flags != 0 {
            return Err(StateError::malformed(
                Self::KIND,
                format!("platform flags {:#04x}: this device model cannot lock the ROM", state.regs.flags),
            ));
        }
        self.cfg.restore_state(&state.config).map_err(|e| StateError::malformed(Self::KIND, e))?;
        self.regs = state.regs;
        self.line.clear();
        Ok(())
    }
}

/// The fixed unplug ports as a [`BusDevice`] (offset 0 is port 0x10 on a
/// PC), sharing the device's state.
pub struct UnplugPorts {
    dev: Arc<Mutex<XenPlatform>>,
}

impl BusDevice for UnplugPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).fixed_read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).fixed_write(offset, data);
    }
}

/// The platform function and its fixed-port face; save/restore goes
/// through `device`.
pub struct XenPlatformHandles {
    pub device: Arc<Mutex<XenPlatform>>,
    pub unplug_ports: Arc<Mutex<UnplugPorts>>,
}

impl XenPlatformHandles {
    /// The device in its reset state, with its face.
    pub fn new() -> Self {
        let device = Arc::new(Mutex::new(XenPlatform::new()));
        let unplug_ports = Arc::new(Mutex::new(UnplugPorts { dev: device.clone() }));
        Self { device, unplug_ports }
    }
}

impl Default for XenPlatformHandles {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, RangeChange, Space};
    use crate::pc::layout::{self, PCI_XEN_PLATFORM as SBDF};

    /// The device and its ports where the PC layout puts them.
    fn setup() -> (Bus, XenPlatformHandles) {
        let mut bus = Bus::new();
        let h = XenPlatformHandles::new();
        bus.register_pci(SBDF, "xen-platform", h.device.clone()).unwrap();
        let (port, len) = (layout::PORT_XEN_PLATFORM_UNPLUG.into(), layout::LEN_XEN_PLATFORM_UNPLUG.into());
        bus.register_pio(port, len, "xen-platform unplug", h.unplug_ports.clone(), 0).unwrap();
        (bus, h)
    }

    fn rd(bus: &mut Bus, reg: u16, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        bus.pci_config_read(SBDF, reg, &mut d);
        le_value(&d)
    }

    fn inp(bus: &mut Bus, port: u64, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        bus.pio_read(port, &mut d);
        le_value(&d)
    }

    #[test]
    fn reset_values() {
        let (mut bus, _) = setup();
        assert_eq!(rd(&mut bus, 0x00, 4), 0x0001_5853);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0000_0003);
        assert_eq!(rd(&mut bus, 0x08, 4), 0xff80_0001);
        assert_eq!(rd(&mut bus, 0x0c, 4), 0);
        assert_eq!(rd(&mut bus, 0x10, 4), 0x1, "I/O BAR");
        assert_eq!(rd(&mut bus, 0x14, 4), 0x8, "prefetchable 32-bit memory BAR");
        for bar in (0x18u16..=0x24).step_by(4) {
            assert_eq!(rd(&mut bus, bar, 4), 0);
        }
        assert_eq!(rd(&mut bus, 0x2c, 4), 0x0001_5853);
        assert_eq!(rd(&mut bus, 0x3c, 4), 0x0000_0100);
        let mut all = [0u8; 256];
        bus.pci_config_read(SBDF, 0, &mut all);
        assert!(all[0x40..].iter().all(|&b| b == 0));
        assert!(bus.take_changes().is_empty(), "BARs at 0 decode nothing");
        assert_eq!(bus.pio_ranges(), vec![(0x10, 0x1f)]);
    }

    /// hvmloader: decode off, size both BARs, place them, decode on.
    #[test]
    fn bar_sizing_and_placement() {
        let (mut bus, h) = setup();
        bus.pci_config_write(SBDF, 0x04, &0u16.to_le_bytes());
        bus.pci_config_write(SBDF, 0x10, &u32::MAX.to_le_bytes());
        assert_eq!(rd(&mut bus, 0x10, 4), 0xffff_ff01);
        bus.pci_config_write(SBDF, 0x14, &u32::MAX.to_le_bytes());
        assert_eq!(rd(&mut bus, 0x14, 4), 0xff00_0008);
        bus.pci_config_write(SBDF, 0x18, &u32::MAX.to_le_bytes());
        assert_eq!(rd(&mut bus, 0x18, 4), 0);
        bus.pci_config_write(SBDF, 0x10, &0xc001u32.to_le_bytes());
        bus.pci_config_write(SBDF, 0x14, &0xf000_0008u32.to_le_bytes());
        assert!(bus.take_changes().is_empty());
        bus.pci_config_write(SBDF, 0x04, &3u16.to_le_bytes());
        assert_eq!(
            bus.take_changes(),
            vec![
                RangeChange::Map { space: Space::Pio, start: 0xc000, end: 0xc0ff },
                RangeChange::Map { space: Space::Mmio, start: 0xf000_0000, end: 0xf0ff_ffff }
            ]
        );
        // BAR0: flags at 0, 0xff elsewhere; BAR1 reads 0 and ignores writes.
        assert_eq!(inp(&mut bus, 0xc000, 1), 0);
        assert_eq!(inp(&mut bus, 0xc001, 1), 0xff);
        assert_eq!(inp(&mut bus, 0xc000, 4), 0xffff_ff00);
        bus.mmio_write(0xf000_1000, &[0xaa; 8]);
        let mut m = [0xeeu8; 8];
        bus.mmio_read(0xf000_1000, &mut m);
        assert_eq!(m, [0; 8]);
        bus.mmio_read(0xf0ff_fffc, &mut m[..4]);
        assert_eq!(m[..4], [0; 4]);
        // Moving BAR1.
        bus.pci_config_write(SBDF, 0x14, &0xf100_0000u32.to_le_bytes());
        assert_eq!(
            bus.take_changes(),
            vec![
                RangeChange::Unmap { space: Space::Mmio, start: 0xf000_0000, end: 0xf0ff_ffff },
                RangeChange::Map { space: Space::Mmio, start: 0xf100_0000, end: 0xf1ff_ffff }
            ]
        );
        // Turning I/O decode off releases BAR0 only.
        bus.pci_config_write(SBDF, 0x04, &[2]);
        assert_eq!(bus.take_changes(), vec![RangeChange::Unmap { space: Space::Pio, start: 0xc000, end: 0xc0ff }]);
        assert_eq!(h.device.lock().unwrap().regions().len(), 1);
    }

    /// What Linux's `xen_unplug_emulated_devices` does (checked against the
    /// lab capture: read16 0x10, read8 0x12, write16 0x12, write32 0x10,
    /// read16 0x10, write16 0x10).
    #[test]
    fn golden_linux_unplug_handshake() {
        let (mut bus, h) = setup();
        assert_eq!(inp(&mut bus, 0x10, 2), u64::from(MAGIC));
        assert_eq!(inp(&mut bus, 0x12, 1), 1);
        bus.pio_write(0x12, &3u16.to_le_bytes()); // XEN_IOPORT_LINUX_PRODNUM
        bus.pio_write(0x10, &0x0006_0800u32.to_le_bytes());
        assert_eq!(inp(&mut bus, 0x10, 2), u64::from(MAGIC), "never blocked");
        bus.pio_write(0x10, &(UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS | UNPLUG_AUX_IDE_DISKS).to_le_bytes());
        let d = h.device.lock().unwrap();
        assert_eq!(d.product(), 3);
        assert_eq!(d.build(), 0x0006_0800);
        assert_eq!(d.unplugged(), 7);
    }

    #[test]
    fn fixed_port_access_sizes() {
        let (mut bus, h) = setup();
        assert_eq!(inp(&mut bus, 0x10, 1), 0, "flags");
        assert_eq!(inp(&mut bus, 0x11, 1), 0xff);
        assert_eq!(inp(&mut bus, 0x12, 2), 0xffff);
        assert_eq!(inp(&mut bus, 0x10, 4), 0xffff_ffff);
        assert_eq!(inp(&mut bus, 0x11, 2), 0xffff, "unaligned");
        assert_eq!(inp(&mut bus, 0x1f, 1), 0xff);
        let mut q = [0u8; 8];
        bus.pio_read(0x10, &mut q);
        assert_eq!(q, [0xff; 8], "8-byte PIO");
        // Writes that mean nothing change nothing.
        bus.pio_write(0x11, &[1, 2]);
        bus.pio_write(0x12, &[1, 2, 3, 4]);
        bus.pio_write(0x10, &[1; 8]);
        bus.pio_write(0x1e, &[1, 2]);
        let d = h.device.lock().unwrap();
        assert_eq!((d.product(), d.build(), d.unplugged()), (0, 0, 0));
    }

    #[test]
    fn rom_lock_cannot_be_set() {
        let (mut bus, _) = setup();
        bus.pio_write(0x10, &[FLAG_ROM_LOCK]);
        assert_eq!(inp(&mut bus, 0x10, 1), 0, "as QEMU when set_mem_type fails");
    }

    #[test]
    fn log_lines_are_collected_and_bounded() {
        let (mut bus, h) = setup();
        for &b in b"hello\x07 world" {
            bus.pio_write(0x12, &[b]);
        }
        assert_eq!(h.device.lock().unwrap().line, b"hello\x07 world");
        bus.pio_write(0x12, b"\n");
        assert!(h.device.lock().unwrap().line.is_empty());
        for _ in 0..10_000 {
            bus.pio_write(0x12, b"x");
            assert!(h.device.lock().unwrap().line.len() < LOG_LINE_MAX);
        }
    }

    #[test]
    fn old_unplug_protocols_through_bar0() {
        let (mut bus, h) = setup();
        bus.pci_config_write(SBDF, 0x10, &0xc001u32.to_le_bytes());
        bus.pio_write(0xc008, &[1]);
        assert_eq!(h.device.lock().unwrap().unplugged(), UNPLUG_ALL_DISKS);
        bus.pio_write(0xc008, &[2]);
        assert_eq!(h.device.lock().unwrap().unplugged(), UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS);
        bus.pio_write(0xc008, b"A");
        assert_eq!(h.device.lock().unwrap().line, b"A");
        let (mut bus, h) = setup();
        bus.pci_config_write(SBDF, 0x10, &0xc001u32.to_le_bytes());
        bus.pio_write(0xc004, &[2]);
        assert_eq!(h.device.lock().unwrap().unplugged(), 0);
        bus.pio_write(0xc004, &1u32.to_le_bytes());
        assert_eq!(h.device.lock().unwrap().unplugged(), UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS);
    }

    /// Records every mask the hook is given.
    struct Masks(Arc<Mutex<Vec<u16>>>);

    impl UnplugHook for Masks {
        fn unplugged(&mut self, mask: u16) {
            self.0.lock().unwrap().push(mask);
        }
    }

    #[test]
    fn every_unplug_request_reaches_the_hook_and_the_state_is_unchanged() {
        let (mut bus, h) = setup();
        let seen = Arc::new(Mutex::new(Vec::new()));
        h.device.lock().unwrap().set_unplug_hook(Box::new(Masks(seen.clone())));
        bus.pio_write(0x10, &UNPLUG_ALL_DISKS.to_le_bytes());
        bus.pio_write(0x10, &(UNPLUG_ALL_NICS | UNPLUG_AUX_IDE_DISKS).to_le_bytes());
        bus.pio_write(0x10, &UNPLUG_ALL_NICS.to_le_bytes());
        bus.pio_write(0x10, &[2]); // a 1-byte write is the flags, not an unplug
        bus.pci_config_write(SBDF, 0x10, &0xc001u32.to_le_bytes());
        bus.pio_write(0xc008, &[2]); // old VMDP: NICs
        bus.pio_write(0xc004, &[1]); // old SUSE: everything
        assert_eq!(
            *seen.lock().unwrap(),
            [1, 6, 2, UNPLUG_ALL_NICS, UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS],
            "the masks, in order"
        );
        let d = h.device.lock().unwrap();
        assert_eq!(d.unplugged(), UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS | UNPLUG_AUX_IDE_DISKS);
        let mut plain = XenPlatform::new();
        plain.fixed_write(PORT_MAGIC, &7u16.to_le_bytes());
        assert_eq!(plain.save().regs, d.save().regs, "the hook changes nothing the device saves");
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut bus, h) = setup();
        for len in [1usize, 2, 3, 4, 8] {
            for port in 0x0eu64..0x22 {
                let mut v = vec![0u8; len];
                bus.pio_read(port, &mut v);
                bus.pio_write(port, &vec![0x0a; len]);
            }
            for reg in [0u16, 0x10, 0x13, 0x14, 0xfe] {
                let mut v = vec![0u8; len];
                bus.pci_config_read(SBDF, reg, &mut v);
                bus.pci_config_write(SBDF, reg, &vec![0xff; len]);
            }
        }
        let mut d = h.device.lock().unwrap();
        let mut v = [0u8; 8];
        d.region_read(BAR_IO as u8, u64::MAX - 3, &mut v);
        assert_eq!(v, [0xff; 8]);
        d.region_write(BAR_IO as u8, u64::MAX - 3, &[8; 8]);
        d.region_read(9, 0, &mut v);
        assert_eq!(v, [0xff; 8]);
        d.region_write(9, 0, &v);
        d.fixed_read(u64::MAX, &mut v);
        d.fixed_write(u64::MAX, &v);
        d.fixed_read(0, &mut []);
        d.fixed_write(0, &[]);
    }

    crate::state_conformance!(state_conformance, XenPlatform::new(), |d: &mut XenPlatform| {
        d.fixed_write(PORT_VERSION, &1u16.to_le_bytes());
        d.fixed_write(PORT_MAGIC, &UNPLUG_ALL_NICS.to_le_bytes());
        d.config_write(0x10, &0xc001u32.to_le_bytes());
    });

    #[test]
    fn restore_refuses_a_rom_lock() {
        let mut d = XenPlatform::new();
        let mut s = d.save();
        s.regs.flags = FLAG_ROM_LOCK;
        let e = d.restore(s).unwrap_err();
        assert!(e.to_string().contains("xen-platform") && e.to_string().contains("lock the ROM"), "{e}");
    }
}
