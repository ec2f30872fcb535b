//! The fw_cfg device: selector/data ports and the DMA interface.
//!
//! Implements QEMU's firmware configuration interface as specified in QEMU
//! `docs/specs/fw_cfg.rst` and implemented in `hw/nvram/fw_cfg.c`, x86 I/O
//! port flavour:
//!
//! * Device offset 0..2 (port 0x510/0x511): a 16-bit write at offset 0
//!   selects an item (and resets the data offset); a byte read at offset 0 or
//!   1 returns the next data byte, or 0 past the end / for an invalid key.
//!   Byte writes are accepted and ignored (QEMU dropped data-port writes in
//!   2.4). Any other width is not a valid access in QEMU: reads return
//!   all-ones and writes are dropped, with a rate-limited log line.
//! * Device offset 4..12 (port 0x514..0x51B, only with DMA): the big-endian
//!   DMA address register. A 4-byte write at offset 4 sets the high half and
//!   clears the low half, a 4-byte write at offset 8 ORs in the low half and
//!   runs the transfer, an 8-byte write at offset 4 sets both and runs it.
//!   The ioreq data is the guest's register value, i.e. the byte-swapped
//!   address, so the device reads it big-endian. Reads of any width return
//!   the bytes of "QEMU CFG".
//! * The DMA transfer follows `fw_cfg_dma_transfer` step by step (descriptor
//!   read failure -> ERROR; SELECT; READ over WRITE over SKIP; zero fill past
//!   the end; writes only to writable items and only when they fit exactly),
//!   and writes the control word back big-endian before [`BusDevice::write`]
//!   returns, so before the ioreq is answered.
//!
//! Where we differ from QEMU:
//!
//! * A DMA write whose guest-memory read fails leaves the item unchanged
//!   (QEMU may have copied a prefix). The guest sees the same ERROR bit.
//! * Work per transfer is bounded: the descriptor length is a u32, so one
//!   transfer moves at most 4 GiB - 1 bytes. Item bytes are written to the
//!   guest straight from the item; zero fill past the end of an item is
//!   streamed in 4 KiB chunks from a static buffer, so no transfer allocates
//!   memory except a WRITE, which allocates at most the size of the writable
//!   item (host-chosen). A transfer stops at the first guest-memory error,
//!   so at most min(length, bytes of contiguous guest RAM) bytes are written.
//! * No select/write callbacks: items are content ([`crate::blob::Blob`]).
//!   Writable files can be read back with [`FwCfgItems::file_data`] through
//!   [`FwCfg::items`].
//! * File-backed items (the kernel body, initrd, multiboot modules) are read
//!   from their open file when the guest asks: a DMA READ streams them into
//!   guest memory in 64 KiB pieces (one guest-memory write, see
//!   [`GuestMemory::write_from`]), port reads go through a 4 KiB buffer. If
//!   the file was truncated or changed since start-up the read fails: a DMA
//!   transfer ends with the ERROR bit (what was copied before stays), a port
//!   read returns 0 (as past the end of an item) without moving the offset,
//!   and a rate-limited warning names the file. QEMU reads the files whole
//!   at start-up and never fails here.
//! * The file directory is sorted by name (QEMU's non-legacy order, which
//!   `xenfv` uses); the legacy fixed-order table of pc <= 2.5 is not offered.
//!
//! The items themselves ([`FwCfgItems`], [`crate::items`]) are built before
//! the device, with no guest memory: the loaders fill them while the machine
//! is planned, and [`FwCfg::new`] takes them once guest memory exists.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;
use xendm_devices::ratelimit::RateLimit;
use xendm_devices::{BusDevice, DeviceState, GuestMemory, StateError};
use zerocopy::byteorder::big_endian::{U32 as Be32, U64 as Be64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::blob::BlobWriteError;
use crate::items::{keys, FwCfgItems};

/// Device offset of the selector (16-bit write) and data (byte reads at 0
/// and 1); 0x510 on a PC (`xendm_devices::pc::layout::PORT_FW_CFG`).
pub const OFS_SELECTOR: u64 = 0;
/// Device offset at which the 8-byte DMA address register starts; the
/// machine registers the DMA window with this device base (0x514 on a PC).
pub const OFS_DMA: u64 = 4;
const DMA_BASE: u64 = OFS_DMA;

const DMA_CTL_ERROR: u32 = 0x01;
const DMA_CTL_READ: u32 = 0x02;
const DMA_CTL_SKIP: u32 = 0x04;
const DMA_CTL_SELECT: u32 = 0x08;
const DMA_CTL_WRITE: u32 = 0x10;

/// What DMA register reads return, in port order.
const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
/// Zero-fill chunk size.
const ZERO_CHUNK: usize = 4096;
/// What a port read of a file-backed item reads ahead.
const PORT_BUFFER: usize = 4096;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// `FWCfgDmaAccess`, all fields big-endian.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct DmaAccess {
    control: Be32,
    length: Be32,
    address: Be64,
}

/// The fw_cfg device.
pub struct FwCfg {
    mem: Arc<dyn GuestMemory>,
    dma_enabled: bool,
    /// What the guest reads (and, for writable files, writes).
    items: FwCfgItems,
    cur_entry: u16,
    cur_offset: u32,
    dma_addr: u64,
    /// Port reads of a file-backed item: `(key, offset of bytes[0], bytes)`.
    port_buffer: Option<(u16, u32, Vec<u8>)>,
    access_log: RateLimit,
    dma_log: RateLimit,
    source_log: RateLimit,
}

impl std::fmt::Debug for FwCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfg")
            .field("dma", &self.dma_enabled)
            .field("files", &self.items.file_names())
            .field("cur_entry", &self.cur_entry)
            .field("cur_offset", &self.cur_offset)
            .finish_non_exhaustive()
    }
}

/// The operation a DMA descriptor asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DmaOp {
    Read,
    Write,
    Skip,
}

impl FwCfg {
    /// The device serving `items`, with DMA if the items offer it; guest
    /// memory is what DMA transfers read and write. The selector starts at
    /// the signature.
    pub fn new(mem: Arc<dyn GuestMemory>, items: FwCfgItems) -> Self {
        Self {
            mem,
            dma_enabled: items.dma_enabled(),
            items,
            cur_entry: keys::SIGNATURE,
            cur_offset: 0,
            dma_addr: 0,
            port_buffer: None,
            access_log: RateLimit::per_second(),
            dma_log: RateLimit::per_second(),
            source_log: RateLimit::per_second(),
        }
    }

    /// What the device serves (writable files as the guest left them).
    pub fn items(&self) -> &FwCfgItems {
        &self.items
    }

    /// Changes items under a running device (tests: QEMU's host-side
    /// `fw_cfg_modify_file` and friends).
    #[cfg(test)]
    pub(crate) fn items_mut(&mut self) -> &mut FwCfgItems {
        &mut self.items
    }

    /// Whether the DMA interface is on.
    pub fn dma_enabled(&self) -> bool {
        self.dma_enabled
    }

    /// Device reset: selects the signature, as QEMU's `fw_cfg_reset`.
    pub fn reset(&mut self) {
        self.select(keys::SIGNATURE);
    }

    fn select(&mut self, key: u16) {
        self.cur_offset = 0;
        self.cur_entry = if self.items.valid_key(key) { key } else { keys::INVALID };
        self.port_buffer = None;
    }

    fn read_data_byte(&mut self) -> u8 {
        match self.item_byte(self.cur_entry, self.cur_offset) {
            Some(b) => {
                self.cur_offset = self.cur_offset.saturating_add(1);
                b
            }
            None => 0,
        }
    }

    /// Byte `off` of item `key`: in-memory items directly, file-backed ones
    /// through the port buffer. `None` past the end, for an invalid key, or
    /// if the backing file cannot be read (logged).
    fn item_byte(&mut self, key: u16, off: u32) -> Option<u8> {
        let item = self.items.lookup(key)?;
        if let Some(bytes) = item.data.as_bytes() {
            return bytes.get(off as usize).copied();
        }
        if u64::from(off) >= item.data.len() {
            return None;
        }
        if let Some((k, start, buf)) = &self.port_buffer {
            if *k == key && off >= *start {
                if let Some(b) = buf.get((off - start) as usize) {
                    return Some(*b);
                }
            }
        }
        let n = (item.data.len() - u64::from(off)).min(PORT_BUFFER as u64) as usize;
        let mut buf = vec![0u8; n];
        match item.data.read_at(u64::from(off), &mut buf) {
            Ok(()) => {
                let b = buf.first().copied();
                self.port_buffer = Some((key, off, buf));
                b
            }
            Err(e) => {
                self.source_error(key, &e);
                None
            }
        }
    }

    fn source_error(&mut self, key: u16, e: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.source_log.check() {
            tracing::warn!(key = format_args!("{key:#06x}"), suppressed, "fw_cfg: cannot serve item: {e}");
        }
    }

    fn bad_access(&mut self, offset: u64, len: usize, write: bool) {
        if let Some(suppressed) = self.access_log.check() {
            tracing::warn!(offset, len, write, suppressed, "fw_cfg: access of unsupported width or offset ignored");
        }
    }

    fn dma_error(&mut self, what: &str, addr: u64) {
        if let Some(suppressed) = self.dma_log.check() {
            tracing::warn!(addr = format_args!("{addr:#x}"), suppressed, "fw_cfg DMA: {what}");
        }
    }

    /// Writes `len` zero bytes at `addr`, 4 KiB at a time.
    fn zero_fill(&self, addr: u64, len: u64) -> bool {
        let mut a = addr;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZERO_CHUNK as u64);
            let chunk = ZEROS.get(..n as usize).unwrap_or(&ZEROS);
            if self.mem.write(GuestAddress(a), chunk).is_err() {
                return false;
            }
            let Some(next) = a.checked_add(n) else { return left == n };
            a = next;
            left -= n;
        }
        true
    }

    /// Runs one DMA transfer from the descriptor at `dma_addr`
    /// (QEMU `fw_cfg_dma_transfer`).
    fn dma_transfer(&mut self) {
        let desc_addr = std::mem::take(&mut self.dma_addr);
        let mut raw = [0u8; std::mem::size_of::<DmaAccess>()];
        if self.mem.read(GuestAddress(desc_addr), &mut raw).is_err() {
            self.dma_error("descriptor is not in guest memory", desc_addr);
            self.write_control(desc_addr, DMA_CTL_ERROR);
            return;
        }
        let Ok(desc) = DmaAccess::read_from_bytes(&raw) else {
            // Cannot happen: `raw` has exactly the descriptor's size.
            self.write_control(desc_addr, DMA_CTL_ERROR);
            return;
        };
        let control = desc.control.get();
        let mut length = u64::from(desc.length.get());
        let mut addr = desc.address.get();

        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let op = if control & DMA_CTL_READ != 0 {
            DmaOp::Read
        } else if control & DMA_CTL_WRITE != 0 {
            DmaOp::Write
        } else {
            if control & DMA_CTL_SKIP == 0 {
                length = 0;
            }
            DmaOp::Skip
        };

        let mut error = false;
        while length > 0 && !error {
            let off = u64::from(self.cur_offset);
            let avail = self.items.lookup(self.cur_entry).map_or(0, |i| i.data.len().saturating_sub(off));
            if avail == 0 {
                // Invalid key, empty item, or at/past the end.
                match op {
                    DmaOp::Read => error = !self.zero_fill(addr, length),
                    DmaOp::Write => error = true,
                    DmaOp::Skip => {}
                }
                break;
            }
            let chunk = length.min(avail);
            match op {
                DmaOp::Read => error = !self.dma_read_item(addr, off, chunk),
                DmaOp::Write => error = !self.dma_write_item(addr, off, chunk, chunk == length),
                DmaOp::Skip => {}
            }
            self.cur_offset = self.cur_offset.saturating_add(u32::try_from(chunk).unwrap_or(u32::MAX));
            addr = addr.wrapping_add(chunk);
            length -= chunk;
        }
        if error {
            self.dma_error("transfer failed (unmapped guest memory, or a write the item refuses)", addr);
        }
        self.write_control(desc_addr, if error { DMA_CTL_ERROR } else { 0 });
    }

    /// A DMA READ: `n` bytes of the current item from `off` to guest
    /// memory at `addr` (streamed from the file for file-backed items).
    fn dma_read_item(&mut self, addr: u64, off: u64, n: u64) -> bool {
        let key = self.cur_entry;
        let Some(item) = self.items.lookup(key) else { return false };
        match item.data.write_to(&*self.mem, GuestAddress(addr), off, n) {
            Ok(()) => true,
            Err(BlobWriteError::Memory(_)) => false,
            Err(e) => {
                self.source_error(key, &e);
                false
            }
        }
    }

    /// A DMA WRITE of `n` guest bytes at `addr` into the current item at
    /// `off`. Only writable items, and only writes that fit entirely.
    fn dma_write_item(&mut self, addr: u64, off: u64, n: u64, whole: bool) -> bool {
        let writable = self.items.lookup(self.cur_entry).is_some_and(|i| i.writable);
        if !writable || !whole {
            return false;
        }
        let (Ok(off), Ok(n)) = (usize::try_from(off), usize::try_from(n)) else { return false };
        // n is bounded by the item's (host-chosen) size.
        let mut buf = vec![0u8; n];
        if self.mem.read(GuestAddress(addr), &mut buf).is_err() {
            return false;
        }
        let entry = self.cur_entry;
        self.port_buffer = None;
        match self.items.lookup_mut(entry).and_then(|i| i.data.as_bytes_mut()).and_then(|d| d.get_mut(off..off + n)) {
            Some(dst) => {
                dst.copy_from_slice(&buf);
                true
            }
            None => false,
        }
    }

    fn write_control(&mut self, desc_addr: u64, control: u32) {
        if self.mem.write(GuestAddress(desc_addr), &control.to_be_bytes()).is_err() {
            self.dma_error("cannot write the control word back", desc_addr);
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data) {
            (0 | 1, [b]) => *b = self.read_data_byte(),
            (off @ DMA_BASE..=11, data) if self.dma_enabled => {
                let start = (off - DMA_BASE) as usize;
                match DMA_SIGNATURE.get(start..start + data.len()) {
                    Some(sig) => data.copy_from_slice(sig),
                    None => {
                        data.fill(0xff);
                        self.bad_access(offset, data.len(), false);
                    }
                }
            }
            (_, data) => {
                data.fill(0xff);
                self.bad_access(offset, data.len(), false);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            // Data-port writes: valid accesses that QEMU >= 2.4 ignores.
            (0 | 1, &[_]) => {}
            (DMA_BASE, &[a, b, c, d]) if self.dma_enabled => {
                self.dma_addr = u64::from(u32::from_be_bytes([a, b, c, d])) << 32;
            }
            (8, &[a, b, c, d]) if self.dma_enabled => {
                self.dma_addr |= u64::from(u32::from_be_bytes([a, b, c, d]));
                self.dma_transfer();
            }
            (DMA_BASE, &[a, b, c, d, e, f, g, h]) if self.dma_enabled => {
                self.dma_addr = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
                self.dma_transfer();
            }
            (_, data) => self.bad_access(offset, data.len(), true),
        }
    }
}

/// The saved state of [`FwCfg`]: what QEMU's `vmstate_fw_cfg` migrates
/// (the current key and offset, and the `fw_cfg/dma` subsection's address
/// register). The items themselves are rebuilt from the command line, as in
/// QEMU, so a guest's writes to writable files are not carried over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FwCfgState {
    cur_entry: u16,
    cur_offset: u32,
    dma_addr: u64,
}

impl DeviceState for FwCfg {
    type State = FwCfgState;
    const KIND: &'static str = "fw_cfg";
    const VERSION: u32 = 1;

    fn save(&self) -> FwCfgState {
        FwCfgState { cur_entry: self.cur_entry, cur_offset: self.cur_offset, dma_addr: self.dma_addr }
    }

    fn restore(&mut self, s: FwCfgState) -> Result<(), StateError> {
        if s.cur_entry != keys::INVALID && !self.items.valid_key(s.cur_entry) {
            return Err(StateError::malformed(Self::KIND, format!("invalid current key {:#06x}", s.cur_entry)));
        }
        // The guest can only move the offset to the end of the item. An
        // item this fw_cfg does not have (a restore without the kernel
        // files: `docs/save-restore.md`) reads as zeros at any offset, as
        // it would here had the guest selected it: the offset starts over.
        let offset = match self.items.lookup(s.cur_entry) {
            Some(item) if u64::from(s.cur_offset) > item.data.len() => {
                return Err(StateError::malformed(
                    Self::KIND,
                    format!(
                        "offset {} is past the end of item {:#06x} ({} bytes)",
                        s.cur_offset,
                        s.cur_entry,
                        item.data.len()
                    ),
                ));
            }
            Some(_) => s.cur_offset,
            None if s.cur_entry == keys::INVALID && s.cur_offset != 0 => {
                return Err(StateError::malformed(Self::KIND, "an offset into no item"));
            }
            None => 0,
        };
        if !self.dma_enabled && s.dma_addr != 0 {
            return Err(StateError::malformed(Self::KIND, "a DMA address, but this fw_cfg has no DMA interface"));
        }
        self.cur_entry = s.cur_entry;
        self.cur_offset = offset;
        self.dma_addr = s.dma_addr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{FwCfgError, FwCfgOptions};
    use std::sync::Mutex;
    use xendm_devices::mem::TestMemory;
    use xendm_devices::pc::layout;
    use xendm_devices::{state_conformance, Bus};

    const RAM: usize = 2 << 20;

    fn mem() -> Arc<TestMemory> {
        Arc::new(TestMemory::pc(RAM).unwrap())
    }

    fn dev_with(mem: Arc<TestMemory>, opts: FwCfgOptions) -> (Arc<Mutex<FwCfg>>, Bus) {
        let fw = Arc::new(Mutex::new(FwCfg::new(mem, FwCfgItems::new(&opts).unwrap())));
        let mut bus = Bus::new();
        // Where the PC machine places it (src/machine/pc.rs).
        let dma = fw.lock().unwrap().dma_enabled();
        bus.register_pio(layout::PORT_FW_CFG.into(), layout::LEN_FW_CFG.into(), "fw_cfg", fw.clone(), OFS_SELECTOR)
            .unwrap();
        if dma {
            let (port, len) = (layout::PORT_FW_CFG_DMA.into(), layout::LEN_FW_CFG_DMA.into());
            bus.register_pio(port, len, "fw_cfg-dma", fw.clone(), OFS_DMA).unwrap();
        }
        (fw, bus)
    }

    fn dev(mem: Arc<TestMemory>) -> (Arc<Mutex<FwCfg>>, Bus) {
        dev_with(mem, FwCfgOptions { nb_cpus: 2, uuid: [7; 16], ..Default::default() })
    }

    fn select(bus: &mut Bus, key: u16) {
        bus.pio_write(0x510, &key.to_le_bytes());
    }

    fn read_bytes(bus: &mut Bus, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                bus.pio_read(0x511, &mut b);
                b[0]
            })
            .collect()
    }

    /// Writes a descriptor at `at` and kicks it the way SeaBIOS does: outl of
    /// bswap32(addr) to 0x518 (so the ioreq data is the big-endian address).
    fn dma(bus: &mut Bus, mem: &TestMemory, at: u64, control: u32, len: u32, addr: u64) -> u32 {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        mem.write(GuestAddress(at), &d).unwrap();
        let eax = (at as u32).swap_bytes();
        bus.pio_write(0x518, &eax.to_le_bytes());
        let mut c = [0u8; 4];
        mem.read(GuestAddress(at), &mut c).unwrap();
        u32::from_be_bytes(c)
    }

    fn rd(mem: &TestMemory, addr: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        mem.read(GuestAddress(addr), &mut v).unwrap();
        v
    }

    fn ctl_read(key: u16) -> u32 {
        (u32::from(key) << 16) | DMA_CTL_SELECT | DMA_CTL_READ
    }

    #[test]
    fn signature_id_and_standard_keys_through_ports() {
        let (_, mut bus) = dev(mem());
        // Reset state selects the signature.
        assert_eq!(read_bytes(&mut bus, 4), b"QEMU");
        select(&mut bus, keys::ID);
        assert_eq!(read_bytes(&mut bus, 4), [3, 0, 0, 0]);
        select(&mut bus, keys::UUID);
        assert_eq!(read_bytes(&mut bus, 16), [7; 16]);
        select(&mut bus, keys::NB_CPUS);
        assert_eq!(read_bytes(&mut bus, 2), [2, 0]);
        select(&mut bus, keys::NOGRAPHIC);
        assert_eq!(read_bytes(&mut bus, 2), [0, 0]);
        select(&mut bus, keys::BOOT_MENU);
        assert_eq!(read_bytes(&mut bus, 2), [0, 0]);
        // MAX_CPUS is not set on Xen: reads zeros.
        select(&mut bus, keys::MAX_CPUS);
        assert_eq!(read_bytes(&mut bus, 2), [0, 0]);
        // A byte read at 0x510 also returns data.
        select(&mut bus, keys::SIGNATURE);
        let mut b = [0u8];
        bus.pio_read(0x510, &mut b);
        assert_eq!(b, *b"Q");
        assert_eq!(read_bytes(&mut bus, 3), b"EMU");
    }

    #[test]
    fn non_dma_device_has_id_1_and_no_dma_ports() {
        let (_, mut bus) = dev_with(
            mem(),
            FwCfgOptions { dma: false, nographic: true, boot_menu: true, max_cpus: Some(4), ..Default::default() },
        );
        select(&mut bus, keys::ID);
        assert_eq!(read_bytes(&mut bus, 4), [1, 0, 0, 0]);
        select(&mut bus, keys::NOGRAPHIC);
        assert_eq!(read_bytes(&mut bus, 2), [1, 0]);
        select(&mut bus, keys::BOOT_MENU);
        assert_eq!(read_bytes(&mut bus, 2), [1, 0]);
        select(&mut bus, keys::MAX_CPUS);
        assert_eq!(read_bytes(&mut bus, 2), [4, 0]);
        assert_eq!(bus.pio_ranges(), vec![(0x510, 0x511)]);
        let mut v = [0u8; 4];
        bus.pio_read(0x514, &mut v);
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn reads_past_end_return_zero_and_do_not_advance() {
        let (fw, mut bus) = dev(mem());
        select(&mut bus, keys::NB_CPUS);
        assert_eq!(read_bytes(&mut bus, 5), [2, 0, 0, 0, 0]);
        assert_eq!(fw.lock().unwrap().cur_offset, 2);
    }

    #[test]
    fn invalid_and_empty_keys_read_zero() {
        let (fw, mut bus) = dev(mem());
        select(&mut bus, 0x40); // 0x20 + 0x20 slots: first invalid key
        assert_eq!(fw.lock().unwrap().cur_entry, keys::INVALID);
        assert_eq!(read_bytes(&mut bus, 3), [0, 0, 0]);
        select(&mut bus, 0x3f); // valid but empty file slot
        assert_eq!(fw.lock().unwrap().cur_entry, 0x3f);
        assert_eq!(read_bytes(&mut bus, 2), [0, 0]);
        select(&mut bus, keys::ARCH_LOCAL | 3); // arch table, nothing there
        assert_eq!(read_bytes(&mut bus, 2), [0, 0]);
        // The write-channel bit is kept in the current entry but ignored for lookup.
        select(&mut bus, keys::WRITE_CHANNEL | keys::SIGNATURE);
        assert_eq!(fw.lock().unwrap().cur_entry, 0x4000);
        assert_eq!(read_bytes(&mut bus, 4), b"QEMU");
    }

    #[test]
    fn port_access_rules() {
        let (fw, mut bus) = dev(mem());
        select(&mut bus, keys::ID);
        // Byte writes to the data port are ignored and do not move the offset.
        bus.pio_write(0x511, &[0x55]);
        bus.pio_write(0x510, &[0x00]);
        assert_eq!(fw.lock().unwrap().cur_entry, keys::ID);
        // A 2-byte read is not valid: all-ones, offset unchanged.
        let mut w = [0u8; 2];
        bus.pio_read(0x510, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        assert_eq!(read_bytes(&mut bus, 1), [3]);
        // Straddling the 2-byte window is not ours at all.
        bus.pio_write(0x511, &[1, 0]);
        assert_eq!(fw.lock().unwrap().cur_entry, keys::ID);
        // reset() selects the signature.
        fw.lock().unwrap().reset();
        assert_eq!(read_bytes(&mut bus, 4), b"QEMU");
    }

    #[test]
    fn dma_register_reads_qemu_cfg_any_width() {
        let (_, mut bus) = dev(mem());
        let mut all = [0u8; 8];
        for (i, b) in all.iter_mut().enumerate() {
            let mut v = [0u8];
            bus.pio_read(0x514 + i as u64, &mut v);
            *b = v[0];
        }
        assert_eq!(&all, b"QEMU CFG");
        let mut v = [0u8; 4];
        bus.pio_read(0x518, &mut v);
        assert_eq!(&v, b" CFG");
        let mut v = [0u8; 2];
        bus.pio_read(0x516, &mut v);
        assert_eq!(&v, b"MU");
    }

    #[test]
    fn dma_read_with_select_and_control_written_back() {
        let m = mem();
        let (_, mut bus) = dev(m.clone());
        let ctl = dma(&mut bus, &m, 0x1000, ctl_read(keys::SIGNATURE), 4, 0x2000);
        assert_eq!(ctl, 0);
        assert_eq!(rd(&m, 0x2000, 4), b"QEMU");
        // Continue reading the same item without SELECT: offset carried over.
        let ctl = dma(&mut bus, &m, 0x1000, DMA_CTL_READ, 0, 0x2000);
        assert_eq!(ctl, 0, "length 0 is a no-op");
        select(&mut bus, keys::UUID);
        let ctl = dma(&mut bus, &m, 0x1000, DMA_CTL_READ, 8, 0x2100);
        assert_eq!(ctl, 0);
        let ctl = dma(&mut bus, &m, 0x1000, DMA_CTL_READ, 8, 0x2108);
        assert_eq!(ctl, 0);
        assert_eq!(rd(&m, 0x2100, 16), [7; 16]);
    }

    #[test]
    fn dma_high_then_low_register_sequence() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        // Put the descriptor above 4 GiB? TestMemory has only 2 MiB, so use
        // the high half to check composition: high=0 then low=0x3000.
        let mut d = Vec::new();
        d.extend_from_slice(&ctl_read(keys::ID).to_be_bytes());
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(&0x3100u64.to_be_bytes());
        m.write(GuestAddress(0x3000), &d).unwrap();
        // A stale high half from an earlier write must be overwritten by 0x514.
        bus.pio_write(0x514, &1u32.swap_bytes().to_le_bytes());
        assert_eq!(fw.lock().unwrap().dma_addr, 1 << 32);
        bus.pio_write(0x514, &0u32.to_le_bytes());
        bus.pio_write(0x518, &0x3000u32.swap_bytes().to_le_bytes());
        assert_eq!(rd(&m, 0x3100, 4), [3, 0, 0, 0]);
        assert_eq!(rd(&m, 0x3000, 4), [0, 0, 0, 0]);
        assert_eq!(fw.lock().unwrap().dma_addr, 0, "reset at the start of the transfer");
        // High half 1 -> descriptor at 4 GiB + 0x3000: not RAM, nothing happens.
        bus.pio_write(0x514, &1u32.swap_bytes().to_le_bytes());
        m.write(GuestAddress(0x3100), &[0xaa; 4]).unwrap();
        bus.pio_write(0x518, &0x3000u32.swap_bytes().to_le_bytes());
        assert_eq!(rd(&m, 0x3100, 4), [0xaa; 4]);
        // Odd widths on the DMA register are ignored.
        bus.pio_write(0x518, &[0x30]);
        bus.pio_write(0x516, &[0, 0]);
        assert_eq!(fw.lock().unwrap().dma_addr, 0);
    }

    #[test]
    fn dma_byte_swapped_address_is_required() {
        let m = mem();
        let (_, mut bus) = dev(m.clone());
        let mut d = Vec::new();
        d.extend_from_slice(&ctl_read(keys::SIGNATURE).to_be_bytes());
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(&0x5000u64.to_be_bytes());
        m.write(GuestAddress(0x4000), &d).unwrap();
        // Unswapped value 0x4000 means descriptor 0x00400000: beyond 2 MiB RAM.
        bus.pio_write(0x518, &0x4000u32.to_le_bytes());
        assert_eq!(rd(&m, 0x5000, 4), [0; 4]);
        bus.pio_write(0x518, &0x4000u32.swap_bytes().to_le_bytes());
        assert_eq!(rd(&m, 0x5000, 4), b"QEMU");
    }

    #[test]
    fn dma_eight_byte_write_sets_whole_address_and_runs() {
        let m = mem();
        let (_, mut bus) = dev(m.clone());
        let mut d = Vec::new();
        d.extend_from_slice(&ctl_read(keys::SIGNATURE).to_be_bytes());
        d.extend_from_slice(&4u32.to_be_bytes());
        d.extend_from_slice(&0x6100u64.to_be_bytes());
        m.write(GuestAddress(0x6000), &d).unwrap();
        bus.pio_write(0x514, &0x6000u64.swap_bytes().to_le_bytes());
        assert_eq!(rd(&m, 0x6100, 4), b"QEMU");
    }

    #[test]
    fn dma_unmapped_descriptor_sets_error_where_possible() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        // Descriptor straddles the VGA hole: read fails, control write at
        // 0x9fff8 succeeds (4 bytes below the hole).
        m.write(GuestAddress(0x9fff8), &[0x11; 8]).unwrap();
        bus.pio_write(0x518, &0x9fff8u32.swap_bytes().to_le_bytes());
        assert_eq!(rd(&m, 0x9fff8, 4), [0, 0, 0, 1]);
        // Entirely unmapped: nothing to write, no panic.
        bus.pio_write(0x518, &0xa0000u32.swap_bytes().to_le_bytes());
        assert_eq!(fw.lock().unwrap().cur_entry, keys::SIGNATURE);
    }

    #[test]
    fn dma_unmapped_destination_sets_error() {
        let m = mem();
        let (_, mut bus) = dev(m.clone());
        assert_eq!(dma(&mut bus, &m, 0x1000, ctl_read(keys::UUID), 16, 0x9fff8), 1);
        // The part before the hole is not written as a prefix by TestMemory; the error is what matters.
        assert_eq!(
            dma(&mut bus, &m, 0x1000, ctl_read(keys::UUID), 16, 0xffff_ffff_ffff_fff8),
            1,
            "wrapping destination"
        );
        // Zero fill into a hole also errors.
        assert_eq!(dma(&mut bus, &m, 0x1000, ctl_read(0x3f), 16, 0xa0000), 1);
    }

    #[test]
    fn dma_invalid_key_read_zero_fills_write_errors_skip_nothing() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        m.write(GuestAddress(0x2000), &[0xaa; 32]).unwrap();
        assert_eq!(dma(&mut bus, &m, 0x1000, ctl_read(0x1234), 32, 0x2000), 0);
        assert_eq!(fw.lock().unwrap().cur_entry, keys::INVALID);
        assert_eq!(rd(&m, 0x2000, 32), [0; 32]);
        m.write(GuestAddress(0x2000), &[0xaa; 32]).unwrap();
        assert_eq!(dma(&mut bus, &m, 0x1000, (0x1234 << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE, 4, 0x2000), 1);
        assert_eq!(dma(&mut bus, &m, 0x1000, (0x1234 << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP, 4, 0x2000), 0);
        assert_eq!(rd(&m, 0x2000, 4), [0xaa; 4]);
    }

    #[test]
    fn dma_zero_fill_past_end() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        m.write(GuestAddress(0x2000), &[0xaa; 16]).unwrap();
        assert_eq!(dma(&mut bus, &m, 0x1000, ctl_read(keys::SIGNATURE), 10, 0x2000), 0);
        assert_eq!(rd(&m, 0x2000, 12), [b'Q', b'E', b'M', b'U', 0, 0, 0, 0, 0, 0, 0xaa, 0xaa]);
        assert_eq!(fw.lock().unwrap().cur_offset, 4, "offset stops at the end");
    }

    #[test]
    fn dma_four_gib_zero_fill_is_bounded_and_streams() {
        let m = mem();
        let (_, mut bus) = dev(m.clone());
        let t = std::time::Instant::now();
        // Invalid key: zero fill of u32::MAX bytes from 1 MiB; RAM ends at 2 MiB.
        m.write(GuestAddress(0x1f_fff0), &[0xaa; 16]).unwrap();
        assert_eq!(dma(&mut bus, &m, 0x1000, ctl_read(0x7ff), u32::MAX, 0x10_0000), 1);
        assert_eq!(rd(&m, 0x1f_fff0, 16), [0; 16], "filled up to the end of RAM");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    /// Guest memory where every address is RAM: serves one descriptor at
    /// 0x1000 and counts what is written elsewhere, without storing it.
    struct EverythingMapped {
        desc: [u8; 16],
        control: Mutex<Option<u32>>,
        written: std::sync::atomic::AtomicU64,
        calls: std::sync::atomic::AtomicU64,
        max_chunk: std::sync::atomic::AtomicUsize,
    }

    impl GuestMemory for EverythingMapped {
        fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), xendm_devices::MemError> {
            if addr.0 == 0x1000 && buf.len() == 16 {
                buf.copy_from_slice(&self.desc);
            }
            Ok(())
        }
        fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), xendm_devices::MemError> {
            use std::sync::atomic::Ordering::Relaxed;
            if addr.0 == 0x1000 {
                *self.control.lock().unwrap() = Some(u32::from_be_bytes(buf.try_into().unwrap()));
            } else {
                assert!(buf.first() == Some(&0) && buf.last() == Some(&0));
                self.written.fetch_add(buf.len() as u64, Relaxed);
                self.calls.fetch_add(1, Relaxed);
                self.max_chunk.fetch_max(buf.len(), Relaxed);
            }
            Ok(())
        }
    }

    #[test]
    fn dma_full_four_gib_zero_fill_streams_in_4k_chunks() {
        use std::sync::atomic::Ordering::Relaxed;
        let mut desc = [0u8; 16];
        desc[0..4].copy_from_slice(&ctl_read(0x7ff).to_be_bytes());
        desc[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        desc[8..16].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        let m = Arc::new(EverythingMapped {
            desc,
            control: Mutex::new(None),
            written: 0.into(),
            calls: 0.into(),
            max_chunk: 0.into(),
        });
        let mut fw = FwCfg::new(m.clone(), FwCfgItems::new(&FwCfgOptions::default()).unwrap());
        fw.write(8, &0x1000u32.to_be_bytes());
        assert_eq!(*m.control.lock().unwrap(), Some(0));
        assert_eq!(m.written.load(Relaxed), u64::from(u32::MAX));
        assert_eq!(m.max_chunk.load(Relaxed), 4096);
        assert_eq!(m.calls.load(Relaxed), u64::from(u32::MAX).div_ceil(4096));
    }

    #[test]
    fn dma_skip_and_select_only() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        m.write(GuestAddress(0x2000), &[0xaa; 8]).unwrap();
        // Skip 2 bytes of the signature, then read the rest.
        assert_eq!(
            dma(&mut bus, &m, 0x1000, (u32::from(keys::SIGNATURE) << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP, 2, 0x2000),
            0
        );
        assert_eq!(rd(&m, 0x2000, 2), [0xaa, 0xaa], "skip writes nothing");
        assert_eq!(dma(&mut bus, &m, 0x1000, DMA_CTL_READ, 2, 0x2000), 0);
        assert_eq!(rd(&m, 0x2000, 2), b"MU");
        // Select only: length ignored, offset reset.
        assert_eq!(dma(&mut bus, &m, 0x1000, (u32::from(keys::ID) << 16) | DMA_CTL_SELECT, 100, 0x2000), 0);
        assert_eq!(fw.lock().unwrap().cur_entry, keys::ID);
        assert_eq!(fw.lock().unwrap().cur_offset, 0);
        assert_eq!(read_bytes(&mut bus, 1), [3]);
        // READ wins over WRITE and SKIP.
        assert_eq!(dma(&mut bus, &m, 0x1000, ctl_read(keys::SIGNATURE) | DMA_CTL_WRITE | DMA_CTL_SKIP, 4, 0x2000), 0);
        assert_eq!(rd(&m, 0x2000, 4), b"QEMU");
    }

    #[test]
    fn dma_write_rules() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        let sel = fw.lock().unwrap().items_mut().add_file_writable("etc/test-w", vec![0; 8]).unwrap();
        let ro = fw.lock().unwrap().items().file_selector("etc/boot-fail-wait").unwrap();
        m.write(GuestAddress(0x2000), &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        let wr = |key: u16| (u32::from(key) << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE;
        // Read-only item: error, unchanged.
        assert_eq!(dma(&mut bus, &m, 0x1000, wr(ro), 4, 0x2000), 1);
        assert_eq!(fw.lock().unwrap().items().file_data("etc/boot-fail-wait").unwrap(), [0xff; 4]);
        // Partial write (runs past the end): error.
        assert_eq!(dma(&mut bus, &m, 0x1000, wr(sel), 9, 0x2000), 1);
        assert_eq!(fw.lock().unwrap().items().file_data("etc/test-w").unwrap(), [0; 8]);
        // Exact-fit write at an offset: skip 2, write 6.
        assert_eq!(dma(&mut bus, &m, 0x1000, (u32::from(sel) << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP, 2, 0), 0);
        assert_eq!(dma(&mut bus, &m, 0x1000, DMA_CTL_WRITE, 6, 0x2000), 0);
        assert_eq!(fw.lock().unwrap().items().file_data("etc/test-w").unwrap(), [0, 0, 1, 2, 3, 4, 5, 6]);
        // Guest source unmapped: error, unchanged.
        assert_eq!(dma(&mut bus, &m, 0x1000, wr(sel), 8, 0x9fffc), 1);
        assert_eq!(fw.lock().unwrap().items().file_data("etc/test-w").unwrap(), [0, 0, 1, 2, 3, 4, 5, 6]);
        // Write past the end: error.
        assert_eq!(dma(&mut bus, &m, 0x1000, DMA_CTL_WRITE, 1, 0x2000), 1);
    }

    #[test]
    fn directory_sorted_with_renumbering_and_byte_exact() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        {
            let mut guard = fw.lock().unwrap();
            let f = guard.items_mut();
            assert_eq!(f.file_names(), ["bios-geometry", "bootorder", "etc/boot-fail-wait"]);
            assert_eq!(f.add_file("zz", vec![1]).unwrap(), 0x23);
            // "a" sorts first: every other file moves up one selector.
            assert_eq!(f.add_file("a", vec![1, 2, 3]).unwrap(), 0x20);
            assert_eq!(f.file_selector("zz"), Some(0x24));
            assert_eq!(f.file_selector("bootorder"), Some(0x22));
            // strcmp order: uppercase before lowercase, '/' (0x2f) before letters.
            f.add_file("B", vec![]).unwrap();
            f.add_file("etc/", vec![]).unwrap();
            assert_eq!(f.file_names(), ["B", "a", "bios-geometry", "bootorder", "etc/", "etc/boot-fail-wait", "zz"]);
            assert!(matches!(f.add_file("a", vec![]), Err(FwCfgError::DuplicateFile { .. })));
            assert!(matches!(f.add_file(&"x".repeat(56), vec![]), Err(FwCfgError::BadFileName { .. })));
            f.add_file(&"x".repeat(55), vec![]).unwrap();
            assert!(matches!(f.add_file("", vec![]), Err(FwCfgError::BadFileName { .. })));
        }
        select(&mut bus, keys::FILE_DIR);
        let dir = read_bytes(&mut bus, 4 + 64 * 0x20);
        assert_eq!(&dir[0..4], &8u32.to_be_bytes());
        // Entry 1: "a", 3 bytes, selector 0x21.
        let e = &dir[4 + 64..4 + 128];
        assert_eq!(&e[0..4], &3u32.to_be_bytes());
        assert_eq!(&e[4..6], &0x21u16.to_be_bytes());
        assert_eq!(&e[6..8], &[0, 0]);
        assert_eq!(&e[8..10], b"a\0");
        assert!(e[10..].iter().all(|&b| b == 0));
        // Entry 5: etc/boot-fail-wait, 4 bytes, selector 0x25.
        let e = &dir[4 + 5 * 64..4 + 6 * 64];
        assert_eq!(&e[0..8], &[0, 0, 0, 4, 0, 0x25, 0, 0]);
        assert_eq!(&e[8..8 + 19], b"etc/boot-fail-wait\0");
        // Unused slots are zero, and the item is exactly 4 + 64 * slots long.
        assert!(dir[4 + 8 * 64..].iter().all(|&b| b == 0));
        assert_eq!(read_bytes(&mut bus, 1), [0], "past the end");
        // Reading a file by its selector.
        select(&mut bus, 0x21);
        assert_eq!(read_bytes(&mut bus, 3), [1, 2, 3]);
    }

    #[test]
    fn bootorder_and_genroms_byte_exact() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        assert_eq!(fw.lock().unwrap().items().file_data("bootorder").unwrap(), b"");
        assert_eq!(fw.lock().unwrap().items().file_data("bios-geometry").unwrap(), b"");
        fw.lock().unwrap().items_mut().add_boot_device(5, "/pci@i0cf8/ide@1,1/drive@0/disk@0").unwrap();
        fw.lock().unwrap().items_mut().add_boot_rom("linuxboot_dma.bin", vec![0x55, 0xaa, 1]).unwrap();
        let guard = fw.lock().unwrap();
        let f = guard.items();
        assert_eq!(
            f.file_data("bootorder").unwrap(),
            b"/rom@genroms/linuxboot_dma.bin\n/pci@i0cf8/ide@1,1/drive@0/disk@0\0"
        );
        assert_eq!(f.file_data("genroms/linuxboot_dma.bin").unwrap(), [0x55, 0xaa, 1]);
        let sel = f.file_selector("genroms/linuxboot_dma.bin").unwrap();
        drop(guard);
        select(&mut bus, sel);
        assert_eq!(read_bytes(&mut bus, 3), [0x55, 0xaa, 1]);
    }

    #[test]
    fn restore_checks_key_offset_and_dma() {
        let (fw, _) = dev(mem());
        let mut f = fw.lock().unwrap();
        let before = f.save();
        let sig = FwCfgState { cur_entry: keys::SIGNATURE, cur_offset: 4, dma_addr: 0x1000 };
        f.restore(sig.clone()).unwrap();
        assert_eq!(f.save(), sig, "the offset may sit at the end of the item");
        f.restore(before.clone()).unwrap();
        let e = f.restore(FwCfgState { cur_offset: 5, ..sig.clone() }).unwrap_err();
        assert!(e.to_string().contains("fw_cfg") && e.to_string().contains("past the end"), "{e}");
        let e = f.restore(FwCfgState { cur_entry: 0x40, cur_offset: 0, dma_addr: 0 }).unwrap_err();
        assert!(e.to_string().contains("invalid current key 0x0040"), "{e}");
        assert!(f.restore(FwCfgState { cur_entry: keys::INVALID, cur_offset: 1, dma_addr: 0 }).is_err());
        f.restore(FwCfgState { cur_entry: keys::INVALID, cur_offset: 0, dma_addr: 0 }).unwrap();
        // A kernel item the saving xendm had and this one (restored without
        // the kernel files) lacks: selected, reading zeros from offset 0.
        assert!(f.items.lookup(keys::KERNEL_SIZE).is_none());
        f.restore(FwCfgState { cur_entry: keys::KERNEL_SIZE, cur_offset: 3, dma_addr: 0 }).unwrap();
        assert_eq!(f.save(), FwCfgState { cur_entry: keys::KERNEL_SIZE, cur_offset: 0, dma_addr: 0 });
        f.restore(before.clone()).unwrap();
        assert_eq!(f.save(), before);
        let (nodma, _) = dev_with(mem(), FwCfgOptions { dma: false, ..Default::default() });
        let e = nodma.lock().unwrap().restore(sig).unwrap_err();
        assert!(e.to_string().contains("no DMA"), "{e}");
    }

    fn make() -> FwCfg {
        FwCfg::new(Arc::new(TestMemory::pc(RAM).unwrap()), FwCfgItems::new(&FwCfgOptions::default()).unwrap())
    }

    state_conformance!(state_conformance_fw_cfg, make(), |d: &mut FwCfg| {
        d.write(0, &keys::FILE_DIR.to_le_bytes());
        let mut b = [0u8];
        d.read(1, &mut b);
        d.write(4, &0x1234u32.to_be_bytes());
    });
}
