//! The I/O bus: routes port, MMIO and PCI-config accesses to devices.
//!
//! Semantics follow what a guest sees on QEMU's PC machine under Xen:
//!
//! * An access is delivered only if it lies entirely inside one registered
//!   range (Xen selects an ioreq server the same way, `xen/arch/x86/hvm/ioreq.c`).
//!   Anything else is *unclaimed*: reads return all-ones of the access size,
//!   writes are dropped, and both are logged at a limited rate.
//! * Ranges may not overlap; registration says which range is in the way.
//! * PCI config space is routed by SBDF (`IOREQ_TYPE_PCI_CONFIG` carries it).
//!   An access to a function nobody registered reads all-ones. An access that
//!   runs past the 256-byte config space is cut at its end and the missing
//!   high bytes read as zero, as QEMU's `pci_host_config_read_common` does.
//! * The host bridge's legacy ports 0xCF8-0xCFF are served by the bus itself
//!   (when enabled): 0xCF8 is the 32-bit address latch (a 4-byte write sets it,
//!   any read returns it), 0xCFC-0xCFF the data window, used when the latch's
//!   enable bit 31 is set. Under Xen, 0xCFC accesses with the latch enabled
//!   arrive as PCI_CONFIG ioreqs; the PIO path serves other hypervisors and
//!   tests. Port 0xCF9 (PIIX reset control) lies inside that block and is
//!   delegated to the device given to [`Bus::set_reset_control`].
//! * A PCI function reports the I/O and memory windows it decodes
//!   ([`PciFunction::regions`], e.g. BARs with decode enabled, or PIIX4's
//!   PMBASE). After each config write the bus re-reads them, moves the routes,
//!   and queues a [`RangeChange`] for the hypervisor, which must claim or
//!   release the range with Xen (`map_io_range_to_ioreq_server`).

use crate::sync::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::pc::layout;
use crate::ratelimit::RateLimit;

/// A device on the port or MMIO bus.
///
/// `offset` is relative to the device's own window; `data` is the access,
/// little-endian, 1 to 8 bytes. Both methods are required: a device that
/// ignores writes says so in its own code.
pub trait BusDevice: Send {
    /// Fills `data` with the value read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Performs a write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A bus device shared between the bus and whoever else drives it (for
/// instance a serial backend pushing input into a UART).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A PCI function: its config space and the windows it decodes.
pub trait PciFunction: Send {
    /// Reads config space at `reg`; the bus guarantees `reg + data.len() <= 256`.
    fn config_read(&mut self, reg: u16, data: &mut [u8]);
    /// Writes config space at `reg`; the bus guarantees `reg + data.len() <= 256`.
    fn config_write(&mut self, reg: u16, data: &[u8]);
    /// The port and MMIO windows the function decodes now (BARs with the
    /// matching command bit set, fixed windows like PIIX4's PMBASE).
    fn regions(&self) -> Vec<PciRegion>;
    /// A read inside region `region` (the `id` of a [`PciRegion`]).
    fn region_read(&mut self, region: u8, offset: u64, data: &mut [u8]);
    /// A write inside region `region`.
    fn region_write(&mut self, region: u8, offset: u64, data: &[u8]);
}

/// A PCI function shared between the bus and its owner.
pub type SharedPci = Arc<Mutex<dyn PciFunction>>;

/// Port I/O or memory space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    Pio,
    Mmio,
}

/// A window a PCI function decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRegion {
    /// The function's own name for the window (a BAR number, say).
    pub id: u8,
    pub space: Space,
    pub base: u64,
    pub len: u64,
}

pub use crate::sbdf::Sbdf;

/// A change of the ranges the bus claims, for the hypervisor to mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum RangeChange {
    /// Start forwarding `[start, end]` (inclusive) to us.
    Map { space: Space, start: u64, end: u64 },
    /// Stop forwarding `[start, end]`.
    Unmap { space: Space, start: u64, end: u64 },
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("{space:?} range {start:#x}+{len:#x} for {name} is empty or wraps")]
    BadRange { space: Space, start: u64, len: u64, name: String },
    #[error("{space:?} range {start:#x}+{len:#x} for {name} overlaps {other} at {other_start:#x}+{other_len:#x}")]
    Overlap { space: Space, start: u64, len: u64, name: String, other: String, other_start: u64, other_len: u64 },
    #[error("PCI function {sbdf} is registered twice ({name})")]
    DuplicatePci { sbdf: Sbdf, name: String },
}

/// Config-space size of a conventional PCI function.
pub const PCI_CONFIG_SIZE: u16 = 256;
/// Offset of the PIIX reset control register (0xCF9) in the host bridge's
/// port block (the ports themselves are in [`crate::pc::layout`]).
const RESET_CONTROL_OFFSET: u64 = (layout::PORT_RESET_CONTROL - layout::PORT_PCI_CONFIG_ADDRESS) as u64;
/// Offset of CONFIG_DATA in the host bridge's port block.
const CONFIG_DATA_OFFSET: u64 = (layout::PORT_PCI_CONFIG_DATA - layout::PORT_PCI_CONFIG_ADDRESS) as u64;

#[derive(Clone)]
enum Target {
    Device { dev: SharedDevice, dev_base: u64 },
    PciRegion { sbdf: Sbdf, id: u8 },
    PciHost,
}

#[derive(Clone)]
struct Mapping {
    len: u64,
    name: String,
    target: Target,
}

struct PciSlot {
    name: String,
    dev: SharedPci,
    regions: Vec<PciRegion>,
}

/// The device model's port, MMIO and PCI buses.
#[derive(Default)]
pub struct Bus {
    pio: BTreeMap<u64, Mapping>,
    mmio: BTreeMap<u64, Mapping>,
    pci: BTreeMap<Sbdf, PciSlot>,
    cf8: u32,
    reset_control: Option<SharedDevice>,
    changes: Vec<RangeChange>,
    unclaimed_log: RateLimit,
    conflict_log: RateLimit,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&mut self, space: Space) -> &mut BTreeMap<u64, Mapping> {
        match space {
            Space::Pio => &mut self.pio,
            Space::Mmio => &mut self.mmio,
        }
    }

    fn map_ref(&self, space: Space) -> &BTreeMap<u64, Mapping> {
        match space {
            Space::Pio => &self.pio,
            Space::Mmio => &self.mmio,
        }
    }

    fn check_free(&self, space: Space, start: u64, len: u64, name: &str) -> Result<(), BusError> {
        let end = match len.checked_sub(1).and_then(|l| start.checked_add(l)) {
            Some(e) => e,
            None => return Err(BusError::BadRange { space, start, len, name: name.to_string() }),
        };
        let map = self.map_ref(space);
        // The last range starting at or below `end` is the only candidate that
        // can overlap, because registered ranges never overlap each other.
        if let Some((&s, m)) = map.range(..=end).next_back() {
            if s.saturating_add(m.len - 1) >= start {
                return Err(BusError::Overlap {
                    space,
                    start,
                    len,
                    name: name.to_string(),
                    other: m.name.clone(),
                    other_start: s,
                    other_len: m.len,
                });
            }
        }
        Ok(())
    }

    fn insert(&mut self, space: Space, start: u64, len: u64, name: &str, target: Target) -> Result<(), BusError> {
        self.check_free(space, start, len, name)?;
        self.map(space).insert(start, Mapping { len, name: name.to_string(), target });
        Ok(())
    }

    /// Claims ports `[start, start + len)` for `dev`, which sees offsets from
    /// `dev_base` upwards (so one device can serve several windows).
    ///
    /// # Errors
    /// If the range is empty, wraps, or overlaps a registered one.
    pub fn register_pio(
        &mut self,
        start: u64,
        len: u64,
        name: &str,
        dev: SharedDevice,
        dev_base: u64,
    ) -> Result<(), BusError> {
        self.insert(Space::Pio, start, len, name, Target::Device { dev, dev_base })
    }

    /// Claims guest-physical `[start, start + len)` for `dev` (see [`Self::register_pio`]).
    ///
    /// # Errors
    /// If the range is empty, wraps, or overlaps a registered one.
    pub fn register_mmio(
        &mut self,
        start: u64,
        len: u64,
        name: &str,
        dev: SharedDevice,
        dev_base: u64,
    ) -> Result<(), BusError> {
        self.insert(Space::Mmio, start, len, name, Target::Device { dev, dev_base })
    }

    /// Serves the host bridge's ports 0xCF8-0xCFF from the bus itself.
    ///
    /// # Errors
    /// If any of those ports is already claimed.
    pub fn enable_pci_host_ports(&mut self) -> Result<(), BusError> {
        let (start, len) = (u64::from(layout::PORT_PCI_CONFIG_ADDRESS), u64::from(layout::LEN_PCI_HOST));
        self.insert(Space::Pio, start, len, "pci-host", Target::PciHost)
    }

    /// Delegates byte accesses to port 0xCF9 (inside the host bridge block)
    /// to `dev`, which sees offset 0.
    pub fn set_reset_control(&mut self, dev: SharedDevice) {
        self.reset_control = Some(dev);
    }

    /// Adds a PCI function and claims the windows it decodes right away.
    ///
    /// # Errors
    /// If the SBDF is taken.
    pub fn register_pci(&mut self, sbdf: Sbdf, name: &str, dev: SharedPci) -> Result<(), BusError> {
        if self.pci.contains_key(&sbdf) {
            return Err(BusError::DuplicatePci { sbdf, name: name.to_string() });
        }
        self.pci.insert(sbdf, PciSlot { name: name.to_string(), dev, regions: Vec::new() });
        self.refresh_regions(sbdf);
        Ok(())
    }

    /// Re-reads the windows of every PCI function and moves the routes (with
    /// queued [`RangeChange`]s), as after a config write. Needed after device
    /// state was restored behind the bus's back.
    pub fn refresh_pci_regions(&mut self) {
        let all: Vec<Sbdf> = self.pci.keys().copied().collect();
        for sbdf in all {
            self.refresh_regions(sbdf);
        }
    }

    /// Every claimed port range, inclusive, merged where adjacent.
    pub fn pio_ranges(&self) -> Vec<(u64, u64)> {
        merged(&self.pio)
    }

    /// Every claimed MMIO range, inclusive, merged where adjacent.
    pub fn mmio_ranges(&self) -> Vec<(u64, u64)> {
        merged(&self.mmio)
    }

    /// Every registered PCI function.
    pub fn pci_functions(&self) -> Vec<Sbdf> {
        self.pci.keys().copied().collect()
    }

    /// Removes and returns the range changes queued since the last call.
    pub fn take_changes(&mut self) -> Vec<RangeChange> {
        std::mem::take(&mut self.changes)
    }

    /// The range changes queued and not yet taken (for ioreq recording).
    pub fn pending_changes(&self) -> &[RangeChange] {
        &self.changes
    }

    /// The latched 0xCF8 value.
    pub fn pci_address_latch(&self) -> u32 {
        self.cf8
    }

    fn lookup(&self, space: Space, addr: u64, size: usize) -> Option<(u64, Target)> {
        let size = u64::try_from(size).ok()?;
        let last = addr.checked_add(size.checked_sub(1)?)?;
        let (&start, m) = self.map_ref(space).range(..=addr).next_back()?;
        let end = start.checked_add(m.len - 1)?;
        if last <= end {
            Some((addr - start, m.target.clone()))
        } else {
            None
        }
    }

    fn unclaimed(&mut self, space: Space, addr: u64, size: usize, write: bool) {
        if let Some(suppressed) = self.unclaimed_log.check() {
            tracing::debug!(?space, addr = format_args!("{addr:#x}"), size, write, suppressed, "unclaimed access");
        }
    }

    /// A read of `data.len()` bytes at `addr` in `space`.
    pub fn read(&mut self, space: Space, addr: u64, data: &mut [u8]) {
        match self.lookup(space, addr, data.len()) {
            Some((off, t)) => self.dispatch_read(space, off, t, data),
            None => {
                data.fill(0xff);
                self.unclaimed(space, addr, data.len(), false);
            }
        }
    }

    /// A write of `data` at `addr` in `space`.
    pub fn write(&mut self, space: Space, addr: u64, data: &[u8]) {
        match self.lookup(space, addr, data.len()) {
            Some((off, t)) => self.dispatch_write(space, off, t, data),
            None => self.unclaimed(space, addr, data.len(), true),
        }
    }

    /// `data.len() / size` reads of `size` bytes at the same address (a `rep
    /// ins` from one port), element `i` into `data[i*size..]`. The device is
    /// looked up and locked once, which is what makes string I/O cheap.
    pub fn read_repeated(&mut self, space: Space, addr: u64, size: usize, data: &mut [u8]) {
        if size == 0 {
            return;
        }
        match self.lookup(space, addr, size) {
            Some((off, Target::Device { dev, dev_base })) => {
                let mut d = lock(&*dev);
                for e in data.chunks_mut(size) {
                    d.read(dev_base.wrapping_add(off), e);
                }
            }
            Some((off, target)) => {
                for e in data.chunks_mut(size) {
                    self.dispatch_read(space, off, target.clone(), e);
                }
            }
            None => {
                data.fill(0xff);
                self.unclaimed(space, addr, size, false);
            }
        }
    }

    /// `data.len() / size` writes of `size` bytes at the same address (a `rep
    /// outs` to one port), in order.
    pub fn write_repeated(&mut self, space: Space, addr: u64, size: usize, data: &[u8]) {
        if size == 0 {
            return;
        }
        match self.lookup(space, addr, size) {
            Some((off, Target::Device { dev, dev_base })) => {
                let mut d = lock(&*dev);
                for e in data.chunks(size) {
                    d.write(dev_base.wrapping_add(off), e);
                }
            }
            Some((off, target)) => {
                for e in data.chunks(size) {
                    self.dispatch_write(space, off, target.clone(), e);
                }
            }
            None => self.unclaimed(space, addr, size, true),
        }
    }

    /// Port read.
    pub fn pio_read(&mut self, port: u64, data: &mut [u8]) {
        self.read(Space::Pio, port, data);
    }
    /// Port write.
    pub fn pio_write(&mut self, port: u64, data: &[u8]) {
        self.write(Space::Pio, port, data);
    }
    /// MMIO read.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.read(Space::Mmio, addr, data);
    }
    /// MMIO write.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.write(Space::Mmio, addr, data);
    }

    fn dispatch_read(&mut self, space: Space, off: u64, target: Target, data: &mut [u8]) {
        match target {
            Target::Device { dev, dev_base } => lock(&*dev).read(dev_base.wrapping_add(off), data),
            Target::PciRegion { sbdf, id } => match self.pci.get(&sbdf) {
                Some(slot) => lock(&*slot.dev).region_read(id, off, data),
                None => data.fill(0xff),
            },
            Target::PciHost => {
                debug_assert_eq!(space, Space::Pio);
                self.host_port_read(off, data);
            }
        }
    }

    fn dispatch_write(&mut self, space: Space, off: u64, target: Target, data: &[u8]) {
        match target {
            Target::Device { dev, dev_base } => lock(&*dev).write(dev_base.wrapping_add(off), data),
            Target::PciRegion { sbdf, id } => {
                if let Some(slot) = self.pci.get(&sbdf) {
                    lock(&*slot.dev).region_write(id, off, data);
                }
            }
            Target::PciHost => {
                debug_assert_eq!(space, Space::Pio);
                self.host_port_write(off, data);
            }
        }
    }

    /// `off` is relative to 0xCF8.
    fn host_port_read(&mut self, off: u64, data: &mut [u8]) {
        if off == RESET_CONTROL_OFFSET && data.len() == 1 {
            if let Some(rc) = &self.reset_control {
                lock(&**rc).read(0, data);
                return;
            }
        }
        if off < CONFIG_DATA_OFFSET {
            // QEMU returns the latch for any read of its 4-byte index window.
            let latch = self.cf8.to_le_bytes();
            let start = usize::try_from(off).unwrap_or(0);
            for (i, b) in data.iter_mut().enumerate() {
                *b = latch.get(start + i).copied().unwrap_or(0xff);
            }
            return;
        }
        let lane = off - CONFIG_DATA_OFFSET;
        match self.latched_target(lane) {
            Some((sbdf, reg)) => self.pci_config_read(sbdf, reg, data),
            None => data.fill(0xff),
        }
    }

    fn host_port_write(&mut self, off: u64, data: &[u8]) {
        if off == RESET_CONTROL_OFFSET && data.len() == 1 {
            if let Some(rc) = &self.reset_control {
                lock(&**rc).write(0, data);
                return;
            }
        }
        if off == 0 && data.len() == 4 {
            self.cf8 = le_value(data) as u32;
            return;
        }
        if off < CONFIG_DATA_OFFSET {
            return; // QEMU ignores other writes to the index window.
        }
        if let Some((sbdf, reg)) = self.latched_target(off - CONFIG_DATA_OFFSET) {
            self.pci_config_write(sbdf, reg, data);
        }
    }

    fn latched_target(&self, lane: u64) -> Option<(Sbdf, u16)> {
        if self.cf8 & 0x8000_0000 == 0 {
            return None;
        }
        let sbdf = Sbdf::from_u32((self.cf8 >> 8) & 0xffff);
        let reg = (self.cf8 & 0xfc) as u16 | (lane & 3) as u16;
        Some((sbdf, reg))
    }

    /// A config-space read (an `IOREQ_TYPE_PCI_CONFIG` read, or 0xCFC).
    pub fn pci_config_read(&mut self, sbdf: Sbdf, reg: u16, data: &mut [u8]) {
        let Some(slot) = self.pci.get(&sbdf) else {
            data.fill(0xff);
            return;
        };
        if reg >= PCI_CONFIG_SIZE {
            data.fill(0xff);
            return;
        }
        let avail = usize::from(PCI_CONFIG_SIZE - reg).min(data.len());
        let (head, tail) = data.split_at_mut(avail);
        lock(&*slot.dev).config_read(reg, head);
        tail.fill(0);
    }

    /// A config-space write; the function's decoded windows are re-read after it.
    pub fn pci_config_write(&mut self, sbdf: Sbdf, reg: u16, data: &[u8]) {
        let Some(slot) = self.pci.get(&sbdf) else { return };
        if reg >= PCI_CONFIG_SIZE {
            return;
        }
        let avail = usize::from(PCI_CONFIG_SIZE - reg).min(data.len());
        let head = data.get(..avail).unwrap_or(&[]);
        lock(&*slot.dev).config_write(reg, head);
        self.refresh_regions(sbdf);
    }

    fn refresh_regions(&mut self, sbdf: Sbdf) {
        let Some(slot) = self.pci.get(&sbdf) else { return };
        let new = lock(&*slot.dev).regions();
        let old = slot.regions.clone();
        let name = slot.name.clone();
        if new == old {
            return;
        }
        for r in &old {
            if !new.contains(r) {
                let owned = matches!(self.map_ref(r.space).get(&r.base),
                    Some(Mapping { target: Target::PciRegion { sbdf: s, id }, .. }) if *s == sbdf && *id == r.id);
                if owned {
                    self.map(r.space).remove(&r.base);
                    self.changes.push(RangeChange::Unmap { space: r.space, start: r.base, end: r.base + (r.len - 1) });
                }
            }
        }
        let mut placed = Vec::new();
        for r in &new {
            if old.contains(r) {
                placed.push(*r);
                continue;
            }
            let label = format!("{name} region {}", r.id);
            match self.insert(r.space, r.base, r.len, &label, Target::PciRegion { sbdf, id: r.id }) {
                Ok(()) => {
                    self.changes.push(RangeChange::Map { space: r.space, start: r.base, end: r.base + (r.len - 1) });
                    placed.push(*r);
                }
                Err(e) => {
                    // The guest programmed a window onto something else: QEMU's
                    // memory API would let the higher priority win; we keep the
                    // existing owner and say so.
                    if let Some(suppressed) = self.conflict_log.check() {
                        tracing::warn!(%sbdf, error = %e, suppressed, "PCI window not decoded");
                    }
                }
            }
        }
        if let Some(slot) = self.pci.get_mut(&sbdf) {
            slot.regions = placed;
        }
    }
}

fn merged(map: &BTreeMap<u64, Mapping>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (&s, m) in map {
        let e = s + (m.len - 1);
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(s) => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

/// The little-endian value of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    for (d, s) in v.iter_mut().zip(data) {
        *d = *s;
    }
    u64::from_le_bytes(v)
}

/// Writes the low `data.len()` bytes of `v`, little-endian.
pub fn put_le(data: &mut [u8], v: u64) {
    for (d, s) in data.iter_mut().zip(v.to_le_bytes()) {
        *d = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-byte scratch device that remembers writes.
    struct Regs([u8; 16]);
    impl BusDevice for Regs {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.0.get(offset as usize + i).copied().unwrap_or(0xee);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(r) = self.0.get_mut(offset as usize + i) {
                    *r = *b;
                }
            }
        }
    }

    fn regs() -> Arc<Mutex<Regs>> {
        Arc::new(Mutex::new(Regs([0; 16])))
    }

    /// A function with a 4-port BAR at config 0x10, decoded when command bit 0 is set.
    struct Func {
        cfg: [u8; 256],
        io: [u8; 4],
    }
    impl PciFunction for Func {
        fn config_read(&mut self, reg: u16, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.cfg[reg as usize + i];
            }
        }
        fn config_write(&mut self, reg: u16, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                self.cfg[reg as usize + i] = *b;
            }
        }
        fn regions(&self) -> Vec<PciRegion> {
            let bar = u32::from_le_bytes(self.cfg[0x10..0x14].try_into().unwrap()) & !3;
            if self.cfg[4] & 1 != 0 && bar != 0 {
                vec![PciRegion { id: 0, space: Space::Pio, base: bar.into(), len: 4 }]
            } else {
                vec![]
            }
        }
        fn region_read(&mut self, _region: u8, offset: u64, data: &mut [u8]) {
            data.copy_from_slice(&self.io[offset as usize..offset as usize + data.len()]);
        }
        fn region_write(&mut self, _region: u8, offset: u64, data: &[u8]) {
            self.io[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn repeated_accesses_hit_the_same_offset() {
        let mut bus = Bus::new();
        let d = regs();
        bus.register_pio(0x510, 2, "a", d.clone(), 0).unwrap();
        bus.write_repeated(Space::Pio, 0x511, 1, &[1, 2, 3]);
        assert_eq!(d.lock().unwrap().0[1], 3, "last write wins at one port");
        let mut out = [0u8; 4];
        bus.read_repeated(Space::Pio, 0x510, 2, &mut out);
        assert_eq!(out, [0, 3, 0, 3]);
        bus.read_repeated(Space::Pio, 0x511, 2, &mut out); // straddles: unclaimed
        assert_eq!(out, [0xff; 4]);
        bus.read_repeated(Space::Pio, 0x511, 0, &mut out); // no-op, no panic
    }

    #[test]
    fn overlap_is_refused_by_name() {
        let mut bus = Bus::new();
        bus.register_pio(0x3f8, 8, "com1", regs(), 0).unwrap();
        let e = bus.register_pio(0x3fc, 8, "other", regs(), 0).unwrap_err();
        assert!(e.to_string().contains("overlaps com1"), "{e}");
        let e = bus.register_pio(0x3f0, 9, "below", regs(), 0).unwrap_err();
        assert!(matches!(e, BusError::Overlap { .. }));
        bus.register_pio(0x3f0, 8, "adjacent", regs(), 0).unwrap();
        assert!(matches!(bus.register_mmio(u64::MAX, 2, "wrap", regs(), 0), Err(BusError::BadRange { .. })));
        assert!(matches!(bus.register_mmio(0, 0, "empty", regs(), 0), Err(BusError::BadRange { .. })));
    }

    #[test]
    fn unclaimed_reads_are_all_ones_of_the_access_size() {
        let mut bus = Bus::new();
        for size in [1usize, 2, 4, 8] {
            let mut d = vec![0u8; size];
            bus.mmio_read(0x1234, &mut d);
            assert_eq!(d, vec![0xff; size]);
        }
        bus.pio_write(0x80, &[1]); // dropped, no panic
    }

    #[test]
    fn device_sees_offsets_from_its_base_and_straddling_is_unclaimed() {
        let mut bus = Bus::new();
        let d = regs();
        bus.register_pio(0x510, 2, "a", d.clone(), 0).unwrap();
        bus.register_pio(0x514, 8, "b", d.clone(), 4).unwrap();
        bus.pio_write(0x515, &[0xab, 0xcd]);
        assert_eq!(d.lock().unwrap().0[5..7], [0xab, 0xcd]);
        let mut v = [0u8; 1];
        bus.pio_read(0x519, &mut v);
        assert_eq!(v, [0], "offset 9 of the device, inside b");
        let mut v = [0u8; 2];
        bus.pio_read(0x511, &mut v); // runs past "a"
        assert_eq!(v, [0xff; 2]);
        assert_eq!(bus.pio_ranges(), vec![(0x510, 0x511), (0x514, 0x51b)]);
    }

    #[test]
    fn pci_config_by_sbdf_with_cut_at_256_and_absent_functions() {
        let mut bus = Bus::new();
        let f = Arc::new(Mutex::new(Func { cfg: [0x11; 256], io: [0; 4] }));
        bus.register_pci(Sbdf::new(2, 0), "f", f).unwrap();
        let mut d = [0u8; 4];
        bus.pci_config_read(Sbdf::new(2, 0), 0xfe, &mut d);
        assert_eq!(d, [0x11, 0x11, 0, 0]);
        bus.pci_config_read(Sbdf::new(3, 0), 0, &mut d);
        assert_eq!(d, [0xff; 4]);
        bus.pci_config_read(Sbdf::new(2, 0), 0x100, &mut d);
        assert_eq!(d, [0xff; 4]);
        assert!(bus
            .register_pci(Sbdf::new(2, 0), "again", Arc::new(Mutex::new(Func { cfg: [0; 256], io: [0; 4] })))
            .is_err());
    }

    #[test]
    fn cf8_latch_and_cfc_data_window() {
        let mut bus = Bus::new();
        bus.enable_pci_host_ports().unwrap();
        let mut cfg = [0u8; 256];
        cfg[0..4].copy_from_slice(&[0x86, 0x80, 0x37, 0x12]);
        bus.register_pci(Sbdf::new(0, 0), "host", Arc::new(Mutex::new(Func { cfg, io: [0; 4] }))).unwrap();
        bus.pio_write(0xcf8, &0x8000_0000u32.to_le_bytes());
        let mut v = [0u8; 4];
        bus.pio_read(0xcf8, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x8000_0000);
        bus.pio_read(0xcfc, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x1237_8086);
        let mut w = [0u8; 2];
        bus.pio_read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1237);
        // Latch disabled: data window reads ones.
        bus.pio_write(0xcf8, &0u32.to_le_bytes());
        bus.pio_read(0xcfc, &mut v);
        assert_eq!(v, [0xff; 4]);
        // A byte write to 0xCF8 does not change the latch.
        bus.pio_write(0xcf8, &[0x80]);
        assert_eq!(bus.pci_address_latch(), 0);
    }

    #[test]
    fn reset_control_byte_at_cf9_goes_to_its_device() {
        let mut bus = Bus::new();
        bus.enable_pci_host_ports().unwrap();
        let rc = regs();
        bus.set_reset_control(rc.clone());
        bus.pio_write(0xcf9, &[6]);
        assert_eq!(rc.lock().unwrap().0[0], 6);
        assert_eq!(bus.pci_address_latch(), 0);
    }

    #[test]
    fn bar_moves_are_routed_and_reported() {
        let mut bus = Bus::new();
        let sbdf = Sbdf::new(2, 0);
        bus.register_pci(sbdf, "f", Arc::new(Mutex::new(Func { cfg: [0; 256], io: [1, 2, 3, 4] }))).unwrap();
        assert!(bus.take_changes().is_empty());
        bus.pci_config_write(sbdf, 0x10, &0xc001u32.to_le_bytes());
        assert!(bus.take_changes().is_empty(), "decode still off");
        bus.pci_config_write(sbdf, 4, &[1]);
        assert_eq!(bus.take_changes(), vec![RangeChange::Map { space: Space::Pio, start: 0xc000, end: 0xc003 }]);
        let mut v = [0u8; 2];
        bus.pio_read(0xc002, &mut v);
        assert_eq!(v, [3, 4]);
        bus.pci_config_write(sbdf, 0x10, &0xd001u32.to_le_bytes());
        assert_eq!(
            bus.take_changes(),
            vec![
                RangeChange::Unmap { space: Space::Pio, start: 0xc000, end: 0xc003 },
                RangeChange::Map { space: Space::Pio, start: 0xd000, end: 0xd003 }
            ]
        );
        bus.pio_read(0xc002, &mut v);
        assert_eq!(v, [0xff, 0xff]);
    }

    #[test]
    fn refresh_picks_up_windows_changed_behind_the_bus() {
        let mut bus = Bus::new();
        let sbdf = Sbdf::new(2, 0);
        let f = Arc::new(Mutex::new(Func { cfg: [0; 256], io: [5, 6, 7, 8] }));
        bus.register_pci(sbdf, "f", f.clone()).unwrap();
        {
            let mut d = f.lock().unwrap();
            d.cfg[0x10..0x14].copy_from_slice(&0xc001u32.to_le_bytes());
            d.cfg[4] = 1;
        }
        assert!(bus.take_changes().is_empty());
        bus.refresh_pci_regions();
        assert_eq!(bus.take_changes(), vec![RangeChange::Map { space: Space::Pio, start: 0xc000, end: 0xc003 }]);
        let mut v = [0u8; 1];
        bus.pio_read(0xc001, &mut v);
        assert_eq!(v, [6]);
        bus.refresh_pci_regions();
        assert!(bus.take_changes().is_empty(), "nothing moved");
    }

    #[test]
    fn a_bar_onto_a_fixed_device_is_not_decoded() {
        let mut bus = Bus::new();
        let com = regs();
        bus.register_pio(0x3f8, 8, "com1", com.clone(), 0).unwrap();
        let sbdf = Sbdf::new(2, 0);
        bus.register_pci(sbdf, "f", Arc::new(Mutex::new(Func { cfg: [0; 256], io: [9; 4] }))).unwrap();
        bus.pci_config_write(sbdf, 0x10, &0x3f9u32.to_le_bytes());
        bus.pci_config_write(sbdf, 4, &[1]);
        assert!(bus.take_changes().is_empty());
        bus.pio_write(0x3f8, &[7]);
        assert_eq!(com.lock().unwrap().0[0], 7);
    }

    #[test]
    fn sbdf_packing_matches_xen() {
        let s = Sbdf { seg: 0, bus: 0, dev: 1, func: 3 };
        assert_eq!(s.to_u32(), 0x0b);
        assert_eq!(Sbdf::from_u32(0x0b), s);
        assert_eq!(s.to_string(), "0000:00:01.3");
    }
}
