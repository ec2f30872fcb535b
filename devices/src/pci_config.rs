//! A conventional PCI function's 256-byte configuration space, with the
//! write semantics every emulated function shares.
//!
//! Implements the type-0 header of the PCI Local Bus Specification 3.0
//! (chapter 6) the way QEMU's `hw/pci/pci.c` presents it to guests, because
//! firmware (hvmloader, SeaBIOS) and Linux were written against QEMU:
//!
//! * Each byte has a *writable mask*: a guest write changes only the bits set
//!   in it, all other bits keep their value. By default (QEMU's
//!   `pci_init_wmask`) the writable bits are COMMAND I/O, memory, bus master,
//!   SERR# and INTx-disable (0x0507), the cache line size (0x0C), the interrupt
//!   line (0x3C) and every byte of the device-specific area 0x40-0xFF. The
//!   latency timer, BIST, the IDs and the interrupt pin are read-only.
//! * Each byte has a *write-1-to-clear mask*: the STATUS error bits 0xF900.
//! * A BAR added with [`PciConfig::add_bar`] has the writable mask
//!   `!(size - 1)`, so writing all-ones reads back the size mask with the
//!   read-only type bits below it (the standard sizing probe).
//! * [`PciConfig::bar_address`] follows QEMU's `pci_bar_address`: a BAR is
//!   decoded only while its COMMAND decode bit is set, never at address 0,
//!   never when it wraps, a 32-bit memory BAR never when it touches
//!   0xFFFFFFFF (the value left by a sizing probe).
//!
//! Where we differ from QEMU: expansion-ROM BARs and capabilities are not
//! modelled (none of our functions has them, so 0x30 and 0x34 read zero and
//! ignore writes, as they do in QEMU for such functions); an I/O BAR is not
//! decoded when it reaches past port 0xFFFF, because ioreq port numbers are
//! 16-bit (QEMU maps it, but outside its 64 KiB port space nothing sees it).
//!
//! Saved state ([`PciConfigState`]) carries the 256 bytes as a hex string.
//! [`PciConfig::restore_hex`] refuses an image whose read-only bits differ
//! from the running function's, as QEMU's `get_pci_config_device` does with
//! its `cmask`.

use serde::{Deserialize, Serialize};

use crate::bus::{PciRegion, Space};

/// Vendor ID (u16).
pub const VENDOR_ID: u16 = 0x00;
/// Device ID (u16).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (u16).
pub const COMMAND: u16 = 0x04;
/// Status register (u16).
pub const STATUS: u16 = 0x06;
/// Revision ID (u8).
pub const REVISION_ID: u16 = 0x08;
/// Programming interface (u8).
pub const PROG_IF: u16 = 0x09;
/// Sub-class (u8).
pub const SUB_CLASS: u16 = 0x0a;
/// Base class (u8).
pub const BASE_CLASS: u16 = 0x0b;
/// Cache line size (u8).
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Latency timer (u8).
pub const LATENCY_TIMER: u16 = 0x0d;
/// Header type (u8); bit 7 is the multi-function flag.
pub const HEADER_TYPE: u16 = 0x0e;
/// First base address register (u32); BAR n is at `BAR0 + 4 * n`.
pub const BAR0: u16 = 0x10;
/// Subsystem vendor ID (u16).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID (u16).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Expansion ROM base address (u32).
pub const ROM_ADDRESS: u16 = 0x30;
/// Capabilities pointer (u8).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Interrupt line (u8), written by firmware.
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin (u8): 0 none, 1 INTA# .. 4 INTD#.
pub const INTERRUPT_PIN: u16 = 0x3d;
/// Start of the device-specific area.
pub const DEVICE_SPECIFIC: u16 = 0x40;
/// Size of the conventional configuration space.
pub const CONFIG_SIZE: usize = 256;
/// Number of BAR slots in a type-0 header.
pub const NUM_BARS: usize = 6;

/// COMMAND: I/O space decode.
pub const COMMAND_IO: u16 = 0x0001;
/// COMMAND: memory space decode.
pub const COMMAND_MEMORY: u16 = 0x0002;
/// COMMAND: bus master.
pub const COMMAND_MASTER: u16 = 0x0004;
/// COMMAND: SERR# enable.
pub const COMMAND_SERR: u16 = 0x0100;
/// COMMAND: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 0x0400;
/// The COMMAND bits a guest may change (QEMU's `pci_init_wmask`).
pub const COMMAND_WRITABLE: u16 = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE;

/// STATUS: DEVSEL timing "medium" (bits 9-10 = 01).
pub const STATUS_DEVSEL_MEDIUM: u16 = 0x0200;
/// STATUS: fast back-to-back capable.
pub const STATUS_FAST_BACK: u16 = 0x0080;
/// STATUS bits that are cleared by writing 1 (parity and abort errors).
pub const STATUS_W1C: u16 = 0xf900;

/// HEADER_TYPE: the multi-function flag.
pub const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;

/// BAR bit 0: I/O space indicator.
pub const BAR_IO: u32 = 0x1;
/// Memory BAR type bits 1-2 = 10b: 64-bit.
pub const BAR_MEM_TYPE_64: u32 = 0x4;
/// Memory BAR bit 3: prefetchable.
pub const BAR_MEM_PREFETCH: u32 = 0x8;

/// Why a configuration image could not be built or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciConfigError {
    #[error("adding BAR {index}: there are only {NUM_BARS} BAR slots (a 64-bit BAR takes two)")]
    BarIndex { index: usize },
    #[error("adding BAR {index}: size {size:#x} is not a power of two of at least {min:#x}")]
    BarSize { index: usize, size: u64, min: u64 },
    #[error("adding BAR {index}: the slot is already used")]
    BarTaken { index: usize },
    #[error("restoring PCI config: expected {expected} hex digits, got {got}")]
    StateLength { expected: usize, got: usize },
    #[error("restoring PCI config: invalid hex digit at position {pos}")]
    StateHex { pos: usize },
    #[error("restoring PCI config: read-only byte {reg:#04x} is {got:#04x}, this function has {want:#04x}")]
    ReadOnlyMismatch { reg: usize, got: u8, want: u8 },
}

/// The identity bytes of a function (QEMU's class fields plus subsystem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    pub base_class: u8,
    pub sub_class: u8,
    pub prog_if: u8,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// Sets bit 7 of HEADER_TYPE.
    pub multi_function: bool,
}

/// QEMU's default subsystem IDs (`pci_set_default_subsystem_id`):
/// Red Hat/Qumranet 0x1af4, "QEMU" 0x1100. SeaBIOS uses them to detect QEMU.
pub const QEMU_SUBSYSTEM_VENDOR: u16 = 0x1af4;
/// See [`QEMU_SUBSYSTEM_VENDOR`].
pub const QEMU_SUBSYSTEM: u16 = 0x1100;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space (bit 0 set), 32-bit register.
    Io,
    /// 32-bit memory space.
    Mem32 { prefetchable: bool },
    /// 64-bit memory space; uses this slot and the next.
    Mem64 { prefetchable: bool },
}

impl BarKind {
    fn type_bits(self) -> u32 {
        match self {
            Self::Io => BAR_IO,
            Self::Mem32 { prefetchable } => {
                if prefetchable {
                    BAR_MEM_PREFETCH
                } else {
                    0
                }
            }
            Self::Mem64 { prefetchable } => BAR_MEM_TYPE_64 | if prefetchable { BAR_MEM_PREFETCH } else { 0 },
        }
    }

    fn space(self) -> Space {
        match self {
            Self::Io => Space::Pio,
            Self::Mem32 { .. } | Self::Mem64 { .. } => Space::Mmio,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    kind: BarKind,
    size: u64,
}

/// The saved state of a configuration space: the image as 512 lowercase hex
/// digits (the masks are the function's own and are not saved). It is the
/// whole state of functions that have no other (i440FX, PIIX3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciConfigState {
    pub config: String,
}

/// A function's configuration space: the image and its masks.
#[derive(Debug, Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    w1cmask: [u8; CONFIG_SIZE],
    bars: [Option<Bar>; NUM_BARS],
}

/// True if `[reg, reg + len)` overlaps `[start, start + count)`.
pub fn overlaps(reg: u16, len: usize, start: u16, count: u16) -> bool {
    let a0 = u64::from(reg);
    let a1 = a0.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
    let b0 = u64::from(start);
    let b1 = b0 + u64::from(count);
    len > 0 && count > 0 && a0 < b1 && b0 < a1
}

/// The bytes of `[reg, reg + data.len())` that fall inside `[start, start + count)`,
/// as (offset from `start`, byte) pairs, for devices that act per register byte.
pub fn bytes_in(reg: u16, data: &[u8], start: u16, count: u16) -> impl Iterator<Item = (u16, u8)> + '_ {
    data.iter().enumerate().filter_map(move |(i, &b)| {
        let r = u32::from(reg).checked_add(u32::try_from(i).ok()?)?;
        let off = r.checked_sub(u32::from(start))?;
        if off < u32::from(count) {
            u16::try_from(off).ok().map(|o| (o, b))
        } else {
            None
        }
    })
}

impl PciConfig {
    /// A fresh image with QEMU's default masks and `id` filled in.
    pub fn new(id: &PciIdentity) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SIZE],
            wmask: [0; CONFIG_SIZE],
            w1cmask: [0; CONFIG_SIZE],
            bars: [None; NUM_BARS],
        };
        c.set_u16(VENDOR_ID, id.vendor);
        c.set_u16(DEVICE_ID, id.device);
        c.set_u8(REVISION_ID, id.revision);
        c.set_u8(PROG_IF, id.prog_if);
        c.set_u8(SUB_CLASS, id.sub_class);
        c.set_u8(BASE_CLASS, id.base_class);
        c.set_u8(HEADER_TYPE, if id.multi_function { HEADER_TYPE_MULTI_FUNCTION } else { 0 });
        c.set_u16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, id.subsystem);

        c.set_wmask_u16(COMMAND, COMMAND_WRITABLE);
        c.set_wmask_u8(CACHE_LINE_SIZE, 0xff);
        c.set_wmask_u8(INTERRUPT_LINE, 0xff);
        for r in DEVICE_SPECIFIC..CONFIG_SIZE as u16 {
            c.set_wmask_u8(r, 0xff);
        }
        c.set_w1cmask_u16(STATUS, STATUS_W1C);
        c
    }

    /// Declares BAR `index` of `kind` and `size` bytes (a power of two, at
    /// least 4 for I/O and 16 for memory). Its value starts at 0 (unassigned).
    ///
    /// # Errors
    /// If the index or size is invalid or the slot is taken.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Result<(), PciConfigError> {
        let slots = if matches!(kind, BarKind::Mem64 { .. }) { 2 } else { 1 };
        if index.checked_add(slots).is_none_or(|end| end > NUM_BARS) {
            return Err(PciConfigError::BarIndex { index });
        }
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let max = match kind {
            BarKind::Io => 1 << 16,
            BarKind::Mem32 { .. } => 1 << 31,
            BarKind::Mem64 { .. } => 1 << 63,
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciConfigError::BarSize { index, size, min });
        }
        for i in index..index + slots {
            if self.bar_slot_used(i) {
                return Err(PciConfigError::BarTaken { index: i });
            }
        }
        let reg = bar_reg(index);
        let mask = !(size - 1);
        match kind {
            BarKind::Mem64 { .. } => {
                self.set_u32(reg, kind.type_bits());
                self.set_u32(reg + 4, 0);
                self.set_wmask_u32(reg, mask as u32);
                self.set_wmask_u32(reg + 4, (mask >> 32) as u32);
            }
            _ => {
                self.set_u32(reg, kind.type_bits());
                self.set_wmask_u32(reg, mask as u32);
            }
        }
        if let Some(slot) = self.bars.get_mut(index) {
            *slot = Some(Bar { kind, size });
        }
        Ok(())
    }

    fn bar_slot_used(&self, i: usize) -> bool {
        if matches!(self.bars.get(i), Some(Some(_))) {
            return true;
        }
        // The upper half of a 64-bit BAR in the slot below.
        i > 0 && matches!(self.bars.get(i - 1), Some(Some(Bar { kind: BarKind::Mem64 { .. }, .. })))
    }

    /// Guest read of `data.len()` bytes at `reg`; bytes past 0xFF read 0xFF.
    pub fn read(&self, reg: u16, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.bytes.get(usize::from(reg) + i).copied().unwrap_or(0xff);
        }
    }

    /// Guest write of `data` at `reg`, applying the writable and W1C masks;
    /// bytes past 0xFF are dropped.
    pub fn write(&mut self, reg: u16, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let a = usize::from(reg) + i;
            let (Some(&w), Some(&c)) = (self.wmask.get(a), self.w1cmask.get(a)) else { break };
            if let Some(b) = self.bytes.get_mut(a) {
                *b = ((*b & !w) | (v & w)) & !(v & c);
            }
        }
    }

    /// The byte at `reg` (0 past the end).
    pub fn u8_at(&self, reg: u16) -> u8 {
        self.bytes.get(usize::from(reg)).copied().unwrap_or(0)
    }

    /// The little-endian word at `reg`.
    pub fn u16_at(&self, reg: u16) -> u16 {
        u16::from_le_bytes([self.u8_at(reg), self.u8_at(reg.saturating_add(1))])
    }

    /// The little-endian dword at `reg`.
    pub fn u32_at(&self, reg: u16) -> u32 {
        u32::from(self.u16_at(reg)) | u32::from(self.u16_at(reg.saturating_add(2))) << 16
    }

    /// Sets a byte regardless of masks (device initialisation and reset).
    pub fn set_u8(&mut self, reg: u16, v: u8) {
        if let Some(b) = self.bytes.get_mut(usize::from(reg)) {
            *b = v;
        }
    }

    /// Sets a word regardless of masks.
    pub fn set_u16(&mut self, reg: u16, v: u16) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(reg.saturating_add(i as u16), b);
        }
    }

    /// Sets a dword regardless of masks.
    pub fn set_u32(&mut self, reg: u16, v: u32) {
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            self.set_u8(reg.saturating_add(i as u16), b);
        }
    }

    /// Sets the writable mask of one byte.
    pub fn set_wmask_u8(&mut self, reg: u16, m: u8) {
        if let Some(b) = self.wmask.get_mut(usize::from(reg)) {
            *b = m;
        }
    }

    /// Sets the writable mask of a word.
    pub fn set_wmask_u16(&mut self, reg: u16, m: u16) {
        for (i, b) in m.to_le_bytes().into_iter().enumerate() {
            self.set_wmask_u8(reg.saturating_add(i as u16), b);
        }
    }

    /// Sets the writable mask of a dword.
    pub fn set_wmask_u32(&mut self, reg: u16, m: u32) {
        for (i, b) in m.to_le_bytes().into_iter().enumerate() {
            self.set_wmask_u8(reg.saturating_add(i as u16), b);
        }
    }

    /// Sets the write-1-to-clear mask of a word.
    pub fn set_w1cmask_u16(&mut self, reg: u16, m: u16) {
        for (i, b) in m.to_le_bytes().into_iter().enumerate() {
            if let Some(x) = self.w1cmask.get_mut(usize::from(reg) + i) {
                *x = b;
            }
        }
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// True if COMMAND enables I/O decode.
    pub fn io_enabled(&self) -> bool {
        self.command() & COMMAND_IO != 0
    }

    /// True if COMMAND enables memory decode.
    pub fn mem_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// The size of BAR `index`, if declared.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        self.bars.get(index).copied().flatten().map(|b| b.size)
    }

    /// The address BAR `index` decodes now, or `None` if it is not decoded
    /// (see the module docs for the rules).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let reg = bar_reg(index);
        let size = bar.size;
        let (raw, enabled, limit) = match bar.kind {
            BarKind::Io => (u64::from(self.u32_at(reg)), self.io_enabled(), 0xffff),
            BarKind::Mem32 { .. } => (u64::from(self.u32_at(reg)), self.mem_enabled(), u64::from(u32::MAX) - 1),
            BarKind::Mem64 { .. } => {
                (u64::from(self.u32_at(reg)) | u64::from(self.u32_at(reg + 4)) << 32, self.mem_enabled(), u64::MAX - 1)
            }
        };
        if !enabled {
            return None;
        }
        let base = raw & !(size - 1);
        let last = base.checked_add(size - 1)?;
        if base == 0 || last > limit {
            return None;
        }
        Some(base)
    }

    /// The windows the declared BARs decode now, with the BAR index as id.
    pub fn bar_regions(&self) -> Vec<PciRegion> {
        let mut out = Vec::new();
        for (i, bar) in self.bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            if let Some(base) = self.bar_address(i) {
                out.push(PciRegion { id: i as u8, space: bar.kind.space(), base, len: bar.size });
            }
        }
        out
    }

    /// The image as 512 lowercase hex digits, for snapshots.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(CONFIG_SIZE * 2);
        for b in self.bytes {
            for nibble in [b >> 4, b & 0xf] {
                s.push(char::from(DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0')));
            }
        }
        s
    }

    /// The image as saved state.
    pub fn save_state(&self) -> PciConfigState {
        PciConfigState { config: self.to_hex() }
    }

    /// Restores an image saved by [`Self::save_state`] (see [`Self::restore_hex`]).
    ///
    /// # Errors
    /// As [`Self::restore_hex`]; the image is then unchanged.
    pub fn restore_state(&mut self, state: &PciConfigState) -> Result<(), PciConfigError> {
        self.restore_hex(&state.config)
    }

    /// Replaces the image with one saved by [`Self::to_hex`].
    ///
    /// # Errors
    /// If the text is not 512 hex digits, or a read-only bit (neither
    /// writable nor write-1-to-clear) differs from this function's.
    pub fn restore_hex(&mut self, hex: &str) -> Result<(), PciConfigError> {
        let raw = hex.as_bytes();
        if raw.len() != CONFIG_SIZE * 2 {
            return Err(PciConfigError::StateLength { expected: CONFIG_SIZE * 2, got: raw.len() });
        }
        let mut new = [0u8; CONFIG_SIZE];
        for (i, (pair, out)) in raw.chunks_exact(2).zip(new.iter_mut()).enumerate() {
            let digit = |k: usize| -> Result<u8, PciConfigError> {
                let c = pair.get(k).copied().unwrap_or(b'?');
                char::from(c).to_digit(16).map(|d| d as u8).ok_or(PciConfigError::StateHex { pos: 2 * i + k })
            };
            *out = digit(0)? << 4 | digit(1)?;
        }
        for (reg, ((&n, &cur), (&w, &c))) in
            new.iter().zip(self.bytes.iter()).zip(self.wmask.iter().zip(self.w1cmask.iter())).enumerate()
        {
            if (n ^ cur) & !w & !c != 0 {
                return Err(PciConfigError::ReadOnlyMismatch { reg, got: n, want: cur });
            }
        }
        self.bytes = new;
        Ok(())
    }
}

/// The config register of BAR `index`.
pub const fn bar_reg(index: usize) -> u16 {
    BAR0 + 4 * index as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciIdentity {
        PciIdentity {
            vendor: 0x1234,
            device: 0x5678,
            revision: 3,
            base_class: 0xff,
            sub_class: 0x80,
            prog_if: 0,
            subsystem_vendor: QEMU_SUBSYSTEM_VENDOR,
            subsystem: QEMU_SUBSYSTEM,
            multi_function: true,
        }
    }

    fn rd32(c: &PciConfig, reg: u16) -> u32 {
        let mut d = [0u8; 4];
        c.read(reg, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn identity_and_default_masks() {
        let mut c = PciConfig::new(&id());
        assert_eq!(rd32(&c, 0), 0x5678_1234);
        assert_eq!(rd32(&c, 8), 0xff80_0003);
        assert_eq!(rd32(&c, 0x0c), 0x0080_0000);
        assert_eq!(rd32(&c, 0x2c), 0x1100_1af4);
        // Write all-ones everywhere, read back the writable bits.
        for reg in (0..256u16).step_by(4) {
            c.write(reg, &[0xff; 4]);
        }
        assert_eq!(rd32(&c, 0), 0x5678_1234, "IDs are read-only");
        assert_eq!(rd32(&c, 4), 0x0000_0507, "command bits; status W1C bits were 0");
        assert_eq!(rd32(&c, 0x0c), 0x0080_00ff, "cache line writable, latency/BIST not");
        assert_eq!(rd32(&c, 0x10), 0, "no BAR declared");
        assert_eq!(rd32(&c, 0x3c), 0x0000_00ff, "line writable, pin not");
        for reg in (0x40..256u16).step_by(4) {
            assert_eq!(rd32(&c, reg), 0xffff_ffff, "device-specific {reg:#x}");
        }
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = PciConfig::new(&id());
        c.set_u16(STATUS, 0xf900 | STATUS_DEVSEL_MEDIUM);
        c.write(STATUS, &0x2100u16.to_le_bytes());
        assert_eq!(c.u16_at(STATUS), 0xd800 | STATUS_DEVSEL_MEDIUM);
        c.write(STATUS, &[0, 0]);
        assert_eq!(c.u16_at(STATUS), 0xd800 | STATUS_DEVSEL_MEDIUM, "writing 0 keeps them");
    }

    #[test]
    fn bar_sizing_and_decode_rules() {
        let mut c = PciConfig::new(&id());
        c.add_bar(0, BarKind::Io, 0x100).unwrap();
        c.add_bar(1, BarKind::Mem32 { prefetchable: true }, 0x100_0000).unwrap();
        c.add_bar(2, BarKind::Mem64 { prefetchable: false }, 0x4000).unwrap();
        assert_eq!(rd32(&c, 0x10), 1);
        assert_eq!(rd32(&c, 0x14), 8);
        assert_eq!(rd32(&c, 0x18), 4);
        for reg in [0x10u16, 0x14, 0x18, 0x1c, 0x20] {
            c.write(reg, &[0xff; 4]);
        }
        assert_eq!(rd32(&c, 0x10), 0xffff_ff01);
        assert_eq!(rd32(&c, 0x14), 0xff00_0008);
        assert_eq!(rd32(&c, 0x18), 0xffff_c004);
        assert_eq!(rd32(&c, 0x1c), 0xffff_ffff);
        assert_eq!(rd32(&c, 0x20), 0, "BAR 4 undeclared");
        c.write(COMMAND, &[3, 0]);
        // All-ones probes are never decoded.
        assert!(c.bar_regions().is_empty(), "{:?}", c.bar_regions());
        c.write(0x10, &0xc001u32.to_le_bytes());
        c.write(0x14, &0xf000_0000u32.to_le_bytes());
        c.write(0x18, &0x0u32.to_le_bytes());
        c.write(0x1c, &0x1u32.to_le_bytes());
        assert_eq!(
            c.bar_regions(),
            vec![
                PciRegion { id: 0, space: Space::Pio, base: 0xc000, len: 0x100 },
                PciRegion { id: 1, space: Space::Mmio, base: 0xf000_0000, len: 0x100_0000 },
                PciRegion { id: 2, space: Space::Mmio, base: 0x1_0000_0000, len: 0x4000 },
            ]
        );
        c.write(COMMAND, &[2, 0]);
        assert_eq!(c.bar_regions().len(), 2, "I/O decode off");
        c.write(COMMAND, &[1, 0]);
        assert_eq!(c.bar_regions().len(), 1, "memory decode off");
        // An I/O BAR beyond port 0xFFFF is not decoded.
        c.write(0x10, &0x1_0001u32.to_le_bytes());
        assert!(c.bar_regions().is_empty());
        // Address 0 is never decoded.
        c.write(0x10, &0x1u32.to_le_bytes());
        assert_eq!(c.bar_address(0), None);
    }

    #[test]
    fn bad_bars_are_refused_by_name() {
        let mut c = PciConfig::new(&id());
        assert_eq!(c.add_bar(6, BarKind::Io, 16), Err(PciConfigError::BarIndex { index: 6 }));
        assert_eq!(c.add_bar(usize::MAX, BarKind::Io, 16), Err(PciConfigError::BarIndex { index: usize::MAX }));
        assert_eq!(
            c.add_bar(5, BarKind::Mem64 { prefetchable: false }, 16),
            Err(PciConfigError::BarIndex { index: 5 })
        );
        assert!(matches!(c.add_bar(0, BarKind::Io, 3), Err(PciConfigError::BarSize { .. })));
        assert!(matches!(
            c.add_bar(0, BarKind::Mem32 { prefetchable: false }, 0x30),
            Err(PciConfigError::BarSize { .. })
        ));
        c.add_bar(0, BarKind::Mem64 { prefetchable: false }, 16).unwrap();
        assert_eq!(c.add_bar(1, BarKind::Io, 16), Err(PciConfigError::BarTaken { index: 1 }));
        assert_eq!(c.add_bar(0, BarKind::Io, 16), Err(PciConfigError::BarTaken { index: 0 }));
        let e = c.add_bar(2, BarKind::Io, 5).unwrap_err();
        assert!(e.to_string().starts_with("adding BAR 2"), "{e}");
    }

    #[test]
    fn out_of_range_accesses_do_not_panic() {
        let mut c = PciConfig::new(&id());
        let mut d = [0u8; 8];
        c.read(0xfc, &mut d);
        assert_eq!(&d[4..], &[0xff; 4]);
        c.write(0xfe, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.u16_at(0xfe), 0x0201);
        c.read(u16::MAX, &mut d);
        assert_eq!(d, [0xff; 8]);
        c.write(u16::MAX, &[1; 8]);
        assert_eq!(c.u32_at(u16::MAX), 0);
    }

    #[test]
    fn hex_round_trip_and_read_only_check() {
        let mut c = PciConfig::new(&id());
        c.write(0x40, &[0xab, 0xcd]);
        let hex = c.to_hex();
        assert_eq!(hex.len(), 512);
        let mut d = PciConfig::new(&id());
        d.restore_hex(&hex).unwrap();
        assert_eq!(d.u16_at(0x40), 0xcdab);
        let mut bad = hex.clone().into_bytes();
        bad[0] = b'0'; // vendor low byte 0x34 -> 0x04
        let e = d.restore_hex(std::str::from_utf8(&bad).unwrap()).unwrap_err();
        assert_eq!(e, PciConfigError::ReadOnlyMismatch { reg: 0, got: 0x04, want: 0x34 });
        assert!(matches!(d.restore_hex("00"), Err(PciConfigError::StateLength { .. })));
        let mut bad = hex.into_bytes();
        bad[100] = b'g';
        assert_eq!(d.restore_hex(std::str::from_utf8(&bad).unwrap()), Err(PciConfigError::StateHex { pos: 100 }));
        // A multi-byte UTF-8 string of the right byte length is rejected, not sliced.
        let weird = "é".repeat(256);
        assert!(d.restore_hex(&weird).is_err());
    }

    #[test]
    fn overlap_helpers() {
        assert!(overlaps(0x60, 1, 0x60, 4));
        assert!(overlaps(0x5e, 4, 0x60, 4));
        assert!(!overlaps(0x5c, 4, 0x60, 4));
        assert!(!overlaps(0x64, 4, 0x60, 4));
        assert!(!overlaps(0x60, 0, 0x60, 4));
        assert!(overlaps(0x10, usize::MAX, 0x60, 4));
        let v: Vec<_> = bytes_in(0x5e, &[1, 2, 3, 4], 0x60, 4).collect();
        assert_eq!(v, vec![(0, 3), (1, 4)]);
        let v: Vec<_> = bytes_in(0x63, &[9, 8], 0x60, 4).collect();
        assert_eq!(v, vec![(3, 9)]);
    }
}
