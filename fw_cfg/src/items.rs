//! What the fw_cfg device serves: the item table, the file directory and
//! the boot order, built before any guest memory exists.
//!
//! QEMU `docs/specs/fw_cfg.rst` ("Selector register", "File directory")
//! and `hw/nvram/fw_cfg.c` (`fw_cfg_add_bytes`, `fw_cfg_add_file`,
//! `fw_cfg_modify_file`, `fw_cfg_add_from_generator`'s boot order), read for
//! facts only. The loaders ([`crate::linux`], [`crate::multiboot`],
//! [`crate::pvh`]) fill an [`FwCfgItems`] while the machine is being planned;
//! the device ([`crate::FwCfg::new`]) takes it once guest memory exists and
//! serves it through the selector and DMA ports.
//!
//! Where we differ from QEMU: the file directory is always sorted by name
//! (QEMU's non-legacy order, which `xenfv` uses), and items are content
//! without select or write callbacks: in-memory bytes, or ([`Blob`]) pieces
//! of the open boot files and zeros, read when the guest asks.

use std::collections::BTreeMap;

use crate::blob::Blob;

use zerocopy::byteorder::big_endian::{U16 as Be16, U32 as Be32};
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

/// The key bits that select an item (the write-channel and arch bits masked).
pub(crate) const ENTRY_MASK: u16 = !(keys::ARCH_LOCAL | keys::WRITE_CHANNEL);
/// Maximum file name length including the NUL (`FW_CFG_MAX_FILE_PATH`).
pub const MAX_FILE_PATH: usize = 56;
/// QEMU's default number of file slots.
pub const DEFAULT_FILE_SLOTS: u16 = 0x20;
pub(crate) const MIN_FILE_SLOTS: u16 = 0x10;
pub(crate) const MAX_FILE_SLOTS: u16 = 0x1000;
/// Largest item: lengths and offsets are 32-bit on the wire.
const MAX_ITEM: u64 = u32::MAX as u64;

const ID_TRADITIONAL: u32 = 1 << 0;
const ID_DMA: u32 = 1 << 1;

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
    TooLarge { what: String, len: u64 },
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

/// One item's content, and whether the guest may overwrite it by DMA
/// (writable items are always in memory).
#[derive(Debug, Clone, Default)]
pub(crate) struct Item {
    pub(crate) data: Blob,
    pub(crate) writable: bool,
}

/// A named item of the file directory.
#[derive(Debug, Clone)]
pub(crate) struct File {
    pub(crate) name: String,
    pub(crate) item: Item,
}

fn check_len(what: impl Fn() -> String, len: u64) -> Result<(), FwCfgError> {
    if len > MAX_ITEM {
        return Err(FwCfgError::TooLarge { what: what(), len });
    }
    Ok(())
}

/// The items, files and boot devices of one fw_cfg device (see the module
/// docs). Nothing here touches guest memory.
#[derive(Clone)]
pub struct FwCfgItems {
    /// Offer the DMA interface (the ID item says so; the device follows it).
    dma: bool,
    file_slots: u16,
    /// Non-file items, by `key & ENTRY_MASK | key & ARCH_LOCAL`.
    items: BTreeMap<u16, Item>,
    /// Files, sorted by name; file `i` is selector `FILE_FIRST + i`.
    pub(crate) files: Vec<File>,
    /// Boot devices (`bootorder`), by boot index.
    boot_devices: BTreeMap<u32, String>,
}

/// Names and sizes only: items describe whole kernels.
impl std::fmt::Debug for FwCfgItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes = |it: &Item| it.data.len();
        f.debug_struct("FwCfgItems")
            .field("dma", &self.dma)
            .field("items", &self.items.iter().map(|(k, it)| (*k, sizes(it))).collect::<Vec<_>>())
            .field("files", &self.files.iter().map(|fl| (&fl.name, sizes(&fl.item))).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FwCfgItems {
    /// The items QEMU creates for every machine: signature, ID, UUID,
    /// NOGRAPHIC, BOOT_MENU, NB_CPUS (and MAX_CPUS if given), and the files
    /// `etc/boot-fail-wait`, `bootorder` and `bios-geometry` (both empty
    /// until a boot device is added). No `etc/e820`: under Xen SeaBIOS takes
    /// the RAM map from hvmloader.
    ///
    /// # Errors
    /// If `opts.file_slots` is out of range.
    pub fn new(opts: &FwCfgOptions) -> Result<Self, FwCfgError> {
        if !(MIN_FILE_SLOTS..=MAX_FILE_SLOTS).contains(&opts.file_slots) {
            return Err(FwCfgError::BadFileSlots { slots: opts.file_slots });
        }
        let mut fw = Self {
            dma: opts.dma,
            file_slots: opts.file_slots,
            items: BTreeMap::new(),
            files: Vec::new(),
            boot_devices: BTreeMap::new(),
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

    /// Whether the DMA interface is offered (ID bit 1).
    pub fn dma_enabled(&self) -> bool {
        self.dma
    }

    pub(crate) fn max_entry(&self) -> u16 {
        keys::FILE_FIRST + self.file_slots
    }

    pub(crate) fn valid_key(&self, key: u16) -> bool {
        key != keys::INVALID && (key & ENTRY_MASK) < self.max_entry()
    }

    pub(crate) fn lookup(&self, key: u16) -> Option<&Item> {
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

    pub(crate) fn lookup_mut(&mut self, key: u16) -> Option<&mut Item> {
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
        self.add_blob(key, Blob::from_bytes(data))
    }

    /// Adds a fixed-key item with content `data` (file-backed pieces
    /// included), with the checks of [`Self::add_bytes`].
    ///
    /// # Errors
    /// See [`FwCfgError`].
    pub fn add_blob(&mut self, key: u16, data: Blob) -> Result<(), FwCfgError> {
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

    /// The bytes of a fixed-key item, if set and held in memory (a
    /// file-backed item, the kernel or initrd, gives `None`: see
    /// [`Self::item`]).
    pub fn item_data(&self, key: u16) -> Option<&[u8]> {
        self.item(key).and_then(Blob::as_bytes)
    }

    /// The whole content of a fixed-key item, read (tests).
    #[cfg(test)]
    pub(crate) fn item_vec(&self, key: u16) -> Option<Vec<u8>> {
        self.item(key).map(|b| b.to_vec().unwrap())
    }

    /// The content of a fixed-key item, if set.
    pub fn item(&self, key: u16) -> Option<&Blob> {
        if key & ENTRY_MASK >= keys::FILE_FIRST && key & keys::ARCH_LOCAL == 0 {
            return None;
        }
        self.lookup(key).map(|i| &i.data)
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
                check_len(|| format!("file {name:?}"), data.len() as u64)?;
                f.item.data = Blob::from_bytes(data);
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

    /// The current data of file `name` (files are held in memory).
    pub fn file_data(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|f| f.name == name).and_then(|f| f.item.data.as_bytes())
    }

    /// File names in directory order.
    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }

    fn insert_file(&mut self, name: &str, data: Vec<u8>, writable: bool) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= MAX_FILE_PATH || name.contains('\0') {
            return Err(FwCfgError::BadFileName { name: name.to_string() });
        }
        check_len(|| format!("file {name:?}"), data.len() as u64)?;
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
        self.files.insert(pos, File { name: name.to_string(), item: Item { data: Blob::from_bytes(data), writable } });
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
        self.items.insert(keys::FILE_DIR, Item { data: Blob::from_bytes(dir), writable: false });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_slots_run_out_and_keys_are_checked() {
        let mut f = FwCfgItems::new(&FwCfgOptions { file_slots: 0x10, ..Default::default() }).unwrap();
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
        assert!(FwCfgItems::new(&FwCfgOptions { file_slots: 0xf, ..Default::default() }).is_err());
    }

    #[test]
    fn one_boot_rom_at_index_zero() {
        let mut f = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
        f.add_boot_rom("pvh.bin", vec![1]).unwrap();
        assert_eq!(f.file_data("bootorder").unwrap(), b"/rom@genroms/pvh.bin\0");
        assert_eq!(f.file_data("bootorder").unwrap().len(), 21);
        assert!(matches!(f.add_boot_rom("multiboot_dma.bin", vec![]), Err(FwCfgError::BootIndexInUse { .. })));
        assert!(f.file_data("genroms/multiboot_dma.bin").is_none(), "no half-added ROM");
        assert!(matches!(f.add_boot_rom("../x", vec![]), Err(FwCfgError::BadRomName { .. })));
    }

    #[test]
    fn modify_file_replaces_or_adds() {
        let mut f = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
        f.modify_file("etc/boot-fail-wait", vec![1, 0, 0, 0]).unwrap();
        assert_eq!(f.file_data("etc/boot-fail-wait").unwrap(), [1, 0, 0, 0]);
        f.modify_file("new", vec![9]).unwrap();
        assert_eq!(f.file_data("new").unwrap(), [9]);
    }
}
