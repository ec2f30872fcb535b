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
//! * No select/write callbacks: items are plain bytes. Writable files can be
//!   read back with [`FwCfg::file_data`].
//! * The file directory is sorted by name (QEMU's non-legacy order, which
//!   `xenfv` uses); the legacy fixed-order table of pc <= 2.5 is not offered.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;
use xendm_devices::ratelimit::RateLimit;
use xendm_devices::{BusDevice, DeviceState, GuestMemory, StateError};
use zerocopy::byteorder::big_endian::{U16 as Be16, U32 as Be32, U64 as Be64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Well-known selector keys (QEMU `include/standard-headers/linux/qemu_fw_cfg.h`).
pub mod keys {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MACHINE_ID: u16 = 0x06;
    pub const KERNEL_ADDR: u16 = 0x07;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const KERNEL_CMDLINE: u16 = 0x09;
    pub const INITRD_ADDR: u16 = 0x0a;
    pub const INITRD_SIZE: u16 = 0x0b;
    pub const BOOT_DEVICE: u16 = 0x0c;
    pub const NUMA: u16 = 0x0d;
    pub const BOOT_MENU: u16 = 0x0e;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const KERNEL_ENTRY: u16 = 0x10;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_ADDR: u16 = 0x13;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_ADDR: u16 = 0x16;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
    pub const FILE_DIR: u16 = 0x19;
    /// The first file selector; file `i` of the sorted directory is `FILE_FIRST + i`.
    pub const FILE_FIRST: u16 = 0x20;
    /// The obsolete write flag, ignored when looking an item up.
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// Selects the architecture-specific item table.
    pub const ARCH_LOCAL: u16 = 0x8000;
    /// What the current entry is set to after selecting an invalid key.
    pub const INVALID: u16 = 0xffff;
}

/// Device offset of the selector (16-bit write) and data (byte reads at 0
/// and 1); 0x510 on a PC (`xendm_devices::pc::layout::PORT_FW_CFG`).
pub const OFS_SELECTOR: u64 = 0;
/// Device offset at which the 8-byte DMA address register starts; the
/// machine registers the DMA window with this device base (0x514 on a PC).
pub const OFS_DMA: u64 = 4;
const DMA_BASE: u64 = OFS_DMA;
const ENTRY_MASK: u16 = !(keys::ARCH_LOCAL | keys::WRITE_CHANNEL);
/// Maximum file name length including the NUL (`FW_CFG_MAX_FILE_PATH`).
pub const MAX_FILE_PATH: usize = 56;
/// QEMU's default number of file slots.
pub const DEFAULT_FILE_SLOTS: u16 = 0x20;
const MIN_FILE_SLOTS: u16 = 0x10;
const MAX_FILE_SLOTS: u16 = 0x1000;
/// Largest item: lengths and offsets are 32-bit on the wire.
const MAX_ITEM: usize = u32::MAX as usize;

const ID_TRADITIONAL: u32 = 1 << 0;
const ID_DMA: u32 = 1 << 1;

const DMA_CTL_ERROR: u32 = 0x01;
const DMA_CTL_READ: u32 = 0x02;
const DMA_CTL_SKIP: u32 = 0x04;
const DMA_CTL_SELECT: u32 = 0x08;
const DMA_CTL_WRITE: u32 = 0x10;

/// What DMA register reads return, in port order.
const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
/// Zero-fill chunk size.
const ZERO_CHUNK: usize = 4096;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// `FWCfgDmaAccess`, all fields big-endian.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct DmaAccess {
    control: Be32,
    length: Be32,
    address: Be64,
}

/// One `FWCfgFile` directory entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct DirEntry {
    size: Be32,
    select: Be16,
    reserved: Be16,
    name: [u8; MAX_FILE_PATH],
}

/// Why an item could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    #[error("creating fw_cfg: {slots} file slots is outside {MIN_FILE_SLOTS}..={MAX_FILE_SLOTS}")]
    BadFileSlots { slots: u16 },
    #[error("adding fw_cfg item {key:#06x}: the key is a file, the directory, or outside the item table")]
    BadKey { key: u16 },
    #[error("adding fw_cfg item {key:#06x}: the key already holds data")]
    KeyInUse { key: u16 },
    #[error("adding fw_cfg file {name:?}: names must be 1 to {} bytes without NUL", MAX_FILE_PATH - 1)]
    BadFileName { name: String },
    #[error("adding fw_cfg file {name:?}: a file of that name exists")]
    DuplicateFile { name: String },
    #[error("adding fw_cfg file {name:?}: all {slots} file slots are in use")]
    NoFileSlots { name: String, slots: u16 },
    #[error("adding fw_cfg {what}: {len} bytes exceed the 4 GiB item limit")]
    TooLarge { what: String, len: usize },
    #[error("adding boot device {path:?}: boot index {index} is already used by {other:?}")]
    BootIndexInUse { path: String, index: u32, other: String },
    #[error("adding boot ROM {name:?}: the name must be a plain file name")]
    BadRomName { name: String },
}

/// The device's configuration (what QEMU takes from its command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwCfgOptions {
    /// Offer the DMA interface (ID bit 1, ports 0x514..0x51B).
    pub dma: bool,
    /// `NB_CPUS`: boot CPUs.
    pub nb_cpus: u16,
    /// `NOGRAPHIC`: 1 with `-nographic`.
    pub nographic: bool,
    /// `BOOT_MENU`: 1 with `-boot menu=on`.
    pub boot_menu: bool,
    /// `UUID`: the `-uuid` value, bytes in the order QEMU stores them.
    pub uuid: [u8; 16],
    /// `MAX_CPUS` (an APIC-ID limit). QEMU on Xen does not set it: `None`.
    pub max_cpus: Option<u16>,
    /// `etc/boot-fail-wait` (`-boot reboot-timeout`, ms); QEMU's default is
    /// -1 (never reboot), stored as u32 LE.
    pub boot_fail_wait: u32,
    /// Directory size (`x-file-slots`), 0x10..=0x1000.
    pub file_slots: u16,
}

impl Default for FwCfgOptions {
    fn default() -> Self {
        Self {
            dma: true,
            nb_cpus: 1,
            nographic: false,
            boot_menu: false,
            uuid: [0; 16],
            max_cpus: None,
            boot_fail_wait: u32::MAX,
            file_slots: DEFAULT_FILE_SLOTS,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Item {
    data: Vec<u8>,
    writable: bool,
}

#[derive(Debug, Clone)]
struct File {
    name: String,
    item: Item,
}

/// The fw_cfg device.
pub struct FwCfg {
    mem: Arc<dyn GuestMemory>,
    dma_enabled: bool,
    file_slots: u16,
    /// Non-file items, by `key & ENTRY_MASK | key & ARCH_LOCAL`.
    items: BTreeMap<u16, Item>,
    /// Files, sorted by name; file `i` is selector `FILE_FIRST + i`.
    files: Vec<File>,
    /// Boot devices (`bootorder`), by boot index.
    boot_devices: BTreeMap<u32, String>,
    cur_entry: u16,
    cur_offset: u32,
    dma_addr: u64,
    access_log: RateLimit,
    dma_log: RateLimit,
}

impl std::fmt::Debug for FwCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfg")
            .field("dma", &self.dma_enabled)
            .field("files", &self.files.iter().map(|f| &f.name).collect::<Vec<_>>())
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

fn check_len(what: impl Fn() -> String, len: usize) -> Result<(), FwCfgError> {
    if len > MAX_ITEM {
        return Err(FwCfgError::TooLarge { what: what(), len });
    }
    Ok(())
}

impl FwCfg {
    /// A device with the items QEMU creates for every machine: signature,
    /// ID, UUID, NOGRAPHIC, BOOT_MENU, NB_CPUS (and MAX_CPUS if given), and
    /// the files `etc/boot-fail-wait`, `bootorder` and `bios-geometry`
    /// (both empty until a boot device is added). No `etc/e820`: under Xen
    /// SeaBIOS takes the RAM map from hvmloader.
    ///
    /// # Errors
    /// If `opts.file_slots` is out of range.
    pub fn new(mem: Arc<dyn GuestMemory>, opts: FwCfgOptions) -> Result<Self, FwCfgError> {
        if !(MIN_FILE_SLOTS..=MAX_FILE_SLOTS).contains(&opts.file_slots) {
            return Err(FwCfgError::BadFileSlots { slots: opts.file_slots });
        }
        let mut fw = Self {
            mem,
            dma_enabled: opts.dma,
            file_slots: opts.file_slots,
            items: BTreeMap::new(),
            files: Vec::new(),
            boot_devices: BTreeMap::new(),
            cur_entry: keys::SIGNATURE,
            cur_offset: 0,
            dma_addr: 0,
            access_log: RateLimit::per_second(),
            dma_log: RateLimit::per_second(),
        };
        let id = ID_TRADITIONAL | if opts.dma { ID_DMA } else { 0 };
        fw.add_bytes(keys::SIGNATURE, b"QEMU".to_vec())?;
        fw.add_u32(keys::ID, id)?;
        fw.add_bytes(keys::UUID, opts.uuid.to_vec())?;
        fw.add_u16(keys::NOGRAPHIC, u16::from(opts.nographic))?;
        fw.add_u16(keys::BOOT_MENU, u16::from(opts.boot_menu))?;
        fw.add_u16(keys::NB_CPUS, opts.nb_cpus)?;
        if let Some(max) = opts.max_cpus {
            fw.add_u16(keys::MAX_CPUS, max)?;
        }
        fw.add_file("etc/boot-fail-wait", opts.boot_fail_wait.to_le_bytes().to_vec())?;
        fw.add_file("bootorder", Vec::new())?;
        fw.add_file("bios-geometry", Vec::new())?;
        Ok(fw)
    }

    /// Whether the DMA interface is on.
    pub fn dma_enabled(&self) -> bool {
        self.dma_enabled
    }

    /// Device reset: selects the signature, as QEMU's `fw_cfg_reset`.
    pub fn reset(&mut self) {
        self.select(keys::SIGNATURE);
    }

    fn max_entry(&self) -> u16 {
        keys::FILE_FIRST + self.file_slots
    }

    fn valid_key(&self, key: u16) -> bool {
        key != keys::INVALID && (key & ENTRY_MASK) < self.max_entry()
    }

    fn lookup(&self, key: u16) -> Option<&Item> {
        if !self.valid_key(key) {
            return None;
        }
        let idx = key & ENTRY_MASK;
        let arch = key & keys::ARCH_LOCAL;
        if arch == 0 && idx >= keys::FILE_FIRST {
            self.files.get(usize::from(idx - keys::FILE_FIRST)).map(|f| &f.item)
        } else {
            self.items.get(&(idx | arch))
        }
    }

    fn lookup_mut(&mut self, key: u16) -> Option<&mut Item> {
        if !self.valid_key(key) {
            return None;
        }
        let idx = key & ENTRY_MASK;
        let arch = key & keys::ARCH_LOCAL;
        if arch == 0 && idx >= keys::FILE_FIRST {
            self.files.get_mut(usize::from(idx - keys::FILE_FIRST)).map(|f| &mut f.item)
        } else {
            self.items.get_mut(&(idx | arch))
        }
    }

    /// Adds a fixed-key item. Keys in the file range, FILE_DIR, keys with the
    /// write-channel bit and keys that already hold data are refused.
    ///
    /// # Errors
    /// See [`FwCfgError`].
    pub fn add_bytes(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let idx = key & ENTRY_MASK;
        let arch = key & keys::ARCH_LOCAL;
        if key & keys::WRITE_CHANNEL != 0 || idx >= keys::FILE_FIRST || (arch == 0 && idx == keys::FILE_DIR) {
            return Err(FwCfgError::BadKey { key });
        }
        check_len(|| format!("item {key:#06x}"), data.len())?;
        let slot = idx | arch;
        if self.items.contains_key(&slot) {
            return Err(FwCfgError::KeyInUse { key });
        }
        self.items.insert(slot, Item { data, writable: false });
        Ok(())
    }

    /// Adds a u16 item, little-endian.
    ///
    /// # Errors
    /// As [`Self::add_bytes`].
    pub fn add_u16(&mut self, key: u16, v: u16) -> Result<(), FwCfgError> {
        self.add_bytes(key, v.to_le_bytes().to_vec())
    }

    /// Adds a u32 item, little-endian.
    ///
    /// # Errors
    /// As [`Self::add_bytes`].
    pub fn add_u32(&mut self, key: u16, v: u32) -> Result<(), FwCfgError> {
        self.add_bytes(key, v.to_le_bytes().to_vec())
    }

    /// Adds a u64 item, little-endian.
    ///
    /// # Errors
    /// As [`Self::add_bytes`].
    pub fn add_u64(&mut self, key: u16, v: u64) -> Result<(), FwCfgError> {
        self.add_bytes(key, v.to_le_bytes().to_vec())
    }

    /// The data of a fixed-key item, if set.
    pub fn item_data(&self, key: u16) -> Option<&[u8]> {
        if key & ENTRY_MASK >= keys::FILE_FIRST && key & keys::ARCH_LOCAL == 0 {
            return None;
        }
        self.lookup(key).map(|i| i.data.as_slice())
    }

    /// Adds a read-only file and returns its selector *now*: a file added
    /// later with a smaller name moves it up by one (guests must read the
    /// directory, as with QEMU).
    ///
    /// # Errors
    /// Bad or duplicate name, no free slot, or more than 4 GiB of data.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        self.insert_file(name, data, false)
    }

    /// Adds a file the guest may overwrite by DMA WRITE (exact-size writes).
    ///
    /// # Errors
    /// As [`Self::add_file`].
    pub fn add_file_writable(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        self.insert_file(name, data, true)
    }

    /// Replaces a file's data (and size), keeping its writability, or adds
    /// it read-only if it does not exist (QEMU `fw_cfg_modify_file`).
    ///
    /// # Errors
    /// As [`Self::add_file`].
    pub fn modify_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        match self.files.iter_mut().find(|f| f.name == name) {
            Some(f) => {
                check_len(|| format!("file {name:?}"), data.len())?;
                f.item.data = data;
                self.rebuild_dir();
                Ok(())
            }
            None => self.insert_file(name, data, false).map(|_| ()),
        }
    }

    /// The current selector of file `name`.
    pub fn file_selector(&self, name: &str) -> Option<u16> {
        let i = self.files.iter().position(|f| f.name == name)?;
        u16::try_from(i).ok().map(|i| keys::FILE_FIRST + i)
    }

    /// The current data of file `name`.
    pub fn file_data(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|f| f.name == name).map(|f| f.item.data.as_slice())
    }

    /// File names in directory order.
    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }

    fn insert_file(&mut self, name: &str, data: Vec<u8>, writable: bool) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= MAX_FILE_PATH || name.contains('\0') {
            return Err(FwCfgError::BadFileName { name: name.to_string() });
        }
        check_len(|| format!("file {name:?}"), data.len())?;
        if self.files.iter().any(|f| f.name == name) {
            return Err(FwCfgError::DuplicateFile { name: name.to_string() });
        }
        if self.files.len() >= usize::from(self.file_slots) {
            return Err(FwCfgError::NoFileSlots { name: name.to_string(), slots: self.file_slots });
        }
        // strcmp order: byte-wise comparison of the names.
        let pos = self.files.partition_point(|f| f.name.as_bytes() < name.as_bytes());
        let select = u16::try_from(pos)
            .ok()
            .and_then(|p| keys::FILE_FIRST.checked_add(p))
            .ok_or_else(|| FwCfgError::NoFileSlots { name: name.to_string(), slots: self.file_slots })?;
        self.files.insert(pos, File { name: name.to_string(), item: Item { data, writable } });
        self.rebuild_dir();
        Ok(select)
    }

    /// Regenerates FILE_DIR: a BE count, then `file_slots` 64-byte entries.
    fn rebuild_dir(&mut self) {
        let slots = usize::from(self.file_slots);
        let mut dir = Vec::with_capacity(4 + slots * std::mem::size_of::<DirEntry>());
        let count = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        dir.extend_from_slice(&count.to_be_bytes());
        for (i, f) in self.files.iter().enumerate() {
            let mut name = [0u8; MAX_FILE_PATH];
            for (d, s) in name.iter_mut().zip(f.name.bytes()) {
                *d = s;
            }
            let select = u16::try_from(i).map_or(keys::INVALID, |i| keys::FILE_FIRST.saturating_add(i));
            let e = DirEntry {
                size: Be32::new(u32::try_from(f.item.data.len()).unwrap_or(u32::MAX)),
                select: Be16::new(select),
                reserved: Be16::new(0),
                name,
            };
            dir.extend_from_slice(e.as_bytes());
        }
        dir.resize(4 + slots * std::mem::size_of::<DirEntry>(), 0);
        self.items.insert(keys::FILE_DIR, Item { data: dir, writable: false });
    }

    /// Adds a boot device path with a boot index and rewrites `bootorder`:
    /// the paths sorted by index, joined by `\n`, ended by one NUL (empty
    /// when there are none), as QEMU's `get_boot_devices_list`.
    ///
    /// # Errors
    /// If the index is taken (QEMU refuses duplicate boot indexes).
    pub fn add_boot_device(&mut self, index: u32, path: &str) -> Result<(), FwCfgError> {
        if let Some(other) = self.boot_devices.get(&index) {
            return Err(FwCfgError::BootIndexInUse { path: path.to_string(), index, other: other.clone() });
        }
        self.boot_devices.insert(index, path.to_string());
        let mut order: Vec<u8> = Vec::new();
        for p in self.boot_devices.values() {
            order.extend_from_slice(p.as_bytes());
            order.push(b'\n');
        }
        if let Some(last) = order.last_mut() {
            *last = 0;
        }
        self.modify_file("bootorder", order)
    }

    /// Adds option ROM `genroms/<name>` and makes `/rom@genroms/<name>` boot
    /// index 0, the first line of `bootorder` (QEMU `rom_add_option`).
    ///
    /// # Errors
    /// A name with `/` or NUL, a duplicate file, or boot index 0 taken.
    pub fn add_boot_rom(&mut self, name: &str, rom: Vec<u8>) -> Result<(), FwCfgError> {
        if name.is_empty() || name.contains('/') || name.contains('\0') {
            return Err(FwCfgError::BadRomName { name: name.to_string() });
        }
        let path = format!("/rom@genroms/{name}");
        if let Some(other) = self.boot_devices.get(&0) {
            return Err(FwCfgError::BootIndexInUse { path, index: 0, other: other.clone() });
        }
        self.add_file(&format!("genroms/{name}"), rom)?;
        self.add_boot_device(0, &path)
    }

    fn select(&mut self, key: u16) {
        self.cur_offset = 0;
        self.cur_entry = if self.valid_key(key) { key } else { keys::INVALID };
    }

    fn read_data_byte(&mut self) -> u8 {
        let off = self.cur_offset as usize;
        match self.lookup(self.cur_entry).and_then(|i| i.data.get(off).copied()) {
            Some(b) => {
                self.cur_offset = self.cur_offset.saturating_add(1);
                b
            }
            None => 0,
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
            let off = self.cur_offset as usize;
            let avail = self.lookup(self.cur_entry).map_or(0, |i| i.data.len().saturating_sub(off));
            if avail == 0 {
                // Invalid key, empty item, or at/past the end.
                match op {
                    DmaOp::Read => error = !self.zero_fill(addr, length),
                    DmaOp::Write => error = true,
                    DmaOp::Skip => {}
                }
                break;
            }
            let chunk = length.min(avail as u64);
            let n = chunk as usize; // chunk <= avail, a usize
            match op {
                DmaOp::Read => {
                    let ok = match self.lookup(self.cur_entry).and_then(|i| i.data.get(off..off + n)) {
                        Some(bytes) => self.mem.write(GuestAddress(addr), bytes).is_ok(),
                        None => false,
                    };
                    error = !ok;
                }
                DmaOp::Write => error = !self.dma_write_item(addr, off, n, chunk == length),
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

    /// A DMA WRITE of `n` guest bytes at `addr` into the current item at
    /// `off`. Only writable items, and only writes that fit entirely.
    fn dma_write_item(&mut self, addr: u64, off: usize, n: usize, whole: bool) -> bool {
        let writable = self.lookup(self.cur_entry).is_some_and(|i| i.writable);
        if !writable || !whole {
            return false;
        }
        // n is bounded by the item's (host-chosen) size.
        let mut buf = vec![0u8; n];
        if self.mem.read(GuestAddress(addr), &mut buf).is_err() {
            return false;
        }
        let entry = self.cur_entry;
        match self.lookup_mut(entry).and_then(|i| i.data.get_mut(off..off + n)) {
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
        if s.cur_entry != keys::INVALID && !self.valid_key(s.cur_entry) {
            return Err(StateError::malformed(Self::KIND, format!("invalid current key {:#06x}", s.cur_entry)));
        }
        // The guest can only move the offset to the end of the item.
        let len = self.lookup(s.cur_entry).map_or(0, |i| i.data.len());
        if usize::try_from(s.cur_offset).map_or(true, |o| o > len) {
            return Err(StateError::malformed(
                Self::KIND,
                format!("offset {} is past the end of item {:#06x} ({len} bytes)", s.cur_offset, s.cur_entry),
            ));
        }
        if !self.dma_enabled && s.dma_addr != 0 {
            return Err(StateError::malformed(Self::KIND, "a DMA address, but this fw_cfg has no DMA interface"));
        }
        self.cur_entry = s.cur_entry;
        self.cur_offset = s.cur_offset;
        self.dma_addr = s.dma_addr;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use xendm_devices::mem::TestMemory;
    use xendm_devices::pc::layout;
    use xendm_devices::{state_conformance, Bus};

    const RAM: usize = 2 << 20;

    fn mem() -> Arc<TestMemory> {
        Arc::new(TestMemory::pc(RAM).unwrap())
    }

    fn dev_with(mem: Arc<TestMemory>, opts: FwCfgOptions) -> (Arc<Mutex<FwCfg>>, Bus) {
        let fw = Arc::new(Mutex::new(FwCfg::new(mem, opts).unwrap()));
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
        let mut fw = FwCfg::new(m.clone(), FwCfgOptions::default()).unwrap();
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
        let sel = fw.lock().unwrap().add_file_writable("etc/test-w", vec![0; 8]).unwrap();
        let ro = fw.lock().unwrap().file_selector("etc/boot-fail-wait").unwrap();
        m.write(GuestAddress(0x2000), &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        let wr = |key: u16| (u32::from(key) << 16) | DMA_CTL_SELECT | DMA_CTL_WRITE;
        // Read-only item: error, unchanged.
        assert_eq!(dma(&mut bus, &m, 0x1000, wr(ro), 4, 0x2000), 1);
        assert_eq!(fw.lock().unwrap().file_data("etc/boot-fail-wait").unwrap(), [0xff; 4]);
        // Partial write (runs past the end): error.
        assert_eq!(dma(&mut bus, &m, 0x1000, wr(sel), 9, 0x2000), 1);
        assert_eq!(fw.lock().unwrap().file_data("etc/test-w").unwrap(), [0; 8]);
        // Exact-fit write at an offset: skip 2, write 6.
        assert_eq!(dma(&mut bus, &m, 0x1000, (u32::from(sel) << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP, 2, 0), 0);
        assert_eq!(dma(&mut bus, &m, 0x1000, DMA_CTL_WRITE, 6, 0x2000), 0);
        assert_eq!(fw.lock().unwrap().file_data("etc/test-w").unwrap(), [0, 0, 1, 2, 3, 4, 5, 6]);
        // Guest source unmapped: error, unchanged.
        assert_eq!(dma(&mut bus, &m, 0x1000, wr(sel), 8, 0x9fffc), 1);
        assert_eq!(fw.lock().unwrap().file_data("etc/test-w").unwrap(), [0, 0, 1, 2, 3, 4, 5, 6]);
        // Write past the end: error.
        assert_eq!(dma(&mut bus, &m, 0x1000, DMA_CTL_WRITE, 1, 0x2000), 1);
    }

    #[test]
    fn directory_sorted_with_renumbering_and_byte_exact() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        {
            let mut f = fw.lock().unwrap();
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
    fn file_slots_run_out_and_keys_are_checked() {
        let m = mem();
        let mut f = FwCfg::new(m.clone(), FwCfgOptions { file_slots: 0x10, ..Default::default() }).unwrap();
        for i in 0..13 {
            f.add_file(&format!("f{i:02}"), vec![]).unwrap();
        }
        assert!(matches!(f.add_file("g", vec![]), Err(FwCfgError::NoFileSlots { .. })));
        assert!(matches!(f.add_bytes(keys::SIGNATURE, vec![]), Err(FwCfgError::KeyInUse { .. })));
        assert!(matches!(f.add_bytes(keys::FILE_DIR, vec![]), Err(FwCfgError::BadKey { .. })));
        assert!(matches!(f.add_bytes(0x20, vec![]), Err(FwCfgError::BadKey { .. })));
        assert!(matches!(f.add_bytes(0x4007, vec![]), Err(FwCfgError::BadKey { .. })));
        f.add_u32(keys::ARCH_LOCAL | 2, 1).unwrap();
        assert_eq!(f.item_data(keys::ARCH_LOCAL | 2), Some(&[1u8, 0, 0, 0][..]));
        f.add_u64(keys::RAM_SIZE, 0x1122).unwrap();
        assert_eq!(f.item_data(keys::RAM_SIZE), Some(&[0x22u8, 0x11, 0, 0, 0, 0, 0, 0][..]));
        assert!(FwCfg::new(m, FwCfgOptions { file_slots: 0xf, ..Default::default() }).is_err());
    }

    #[test]
    fn bootorder_and_genroms_byte_exact() {
        let m = mem();
        let (fw, mut bus) = dev(m.clone());
        assert_eq!(fw.lock().unwrap().file_data("bootorder").unwrap(), b"");
        assert_eq!(fw.lock().unwrap().file_data("bios-geometry").unwrap(), b"");
        fw.lock().unwrap().add_boot_device(5, "/pci@i0cf8/ide@1,1/drive@0/disk@0").unwrap();
        fw.lock().unwrap().add_boot_rom("linuxboot_dma.bin", vec![0x55, 0xaa, 1]).unwrap();
        let f = fw.lock().unwrap();
        assert_eq!(
            f.file_data("bootorder").unwrap(),
            b"/rom@genroms/linuxboot_dma.bin\n/pci@i0cf8/ide@1,1/drive@0/disk@0\0"
        );
        assert_eq!(f.file_data("genroms/linuxboot_dma.bin").unwrap(), [0x55, 0xaa, 1]);
        let sel = f.file_selector("genroms/linuxboot_dma.bin").unwrap();
        drop(f);
        select(&mut bus, sel);
        assert_eq!(read_bytes(&mut bus, 3), [0x55, 0xaa, 1]);

        let (fw, _) = dev(mem());
        let mut f = fw.lock().unwrap();
        f.add_boot_rom("pvh.bin", vec![1]).unwrap();
        assert_eq!(f.file_data("bootorder").unwrap(), b"/rom@genroms/pvh.bin\0");
        assert_eq!(f.file_data("bootorder").unwrap().len(), 21);
        assert!(matches!(f.add_boot_rom("multiboot_dma.bin", vec![]), Err(FwCfgError::BootIndexInUse { .. })));
        assert!(f.file_data("genroms/multiboot_dma.bin").is_none(), "no half-added ROM");
        assert!(matches!(f.add_boot_rom("../x", vec![]), Err(FwCfgError::BadRomName { .. })));
    }

    #[test]
    fn modify_file_replaces_or_adds() {
        let (fw, _) = dev(mem());
        let mut f = fw.lock().unwrap();
        f.modify_file("etc/boot-fail-wait", vec![1, 0, 0, 0]).unwrap();
        assert_eq!(f.file_data("etc/boot-fail-wait").unwrap(), [1, 0, 0, 0]);
        f.modify_file("new", vec![9]).unwrap();
        assert_eq!(f.file_data("new").unwrap(), [9]);
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
        f.restore(before.clone()).unwrap();
        assert_eq!(f.save(), before);
        let (nodma, _) = dev_with(mem(), FwCfgOptions { dma: false, ..Default::default() });
        let e = nodma.lock().unwrap().restore(sig).unwrap_err();
        assert!(e.to_string().contains("no DMA"), "{e}");
    }

    fn make() -> FwCfg {
        FwCfg::new(Arc::new(TestMemory::pc(RAM).unwrap()), FwCfgOptions::default()).unwrap()
    }

    state_conformance!(state_conformance_fw_cfg, make(), |d: &mut FwCfg| {
        d.write(0, &keys::FILE_DIR.to_le_bytes());
        let mut b = [0u8];
        d.read(1, &mut b);
        d.write(4, &0x1234u32.to_be_bytes());
    });
}
