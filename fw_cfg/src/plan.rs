//! The boot types every loader shares: the kernel format, the guest RAM
//! layout, the files opened ([`LoadedFile`], in [`crate::source`]), what a
//! load decided and why it failed.
//!
//! The loaders ([`crate::linux`], [`crate::multiboot`], [`crate::pvh`]) import
//! this module and never [`crate::boot`], which dispatches to them: the
//! dependency runs one way.

use std::path::{Path, PathBuf};

use crate::blob::Blob;
use crate::items::FwCfgError;
use crate::source::OpenError;
pub use crate::source::{LoadedFile, MAX_FILE_SIZE};

/// Xen's end of low RAM (`HVM_BELOW_4G_RAM_END`): the MMIO hole starts here.
pub const HVM_BELOW_4G_RAM_END: u64 = 0xF000_0000;
/// What QEMU's PC machines keep free at the top of low RAM for firmware
/// data (`acpi_data_size` = 0x20000 + 0x8000); the initrd goes below it.
pub const ACPI_DATA_SIZE: u64 = 0x28000;
const MIB: u64 = 1 << 20;
pub(crate) const FOUR_GIB: u64 = 1 << 32;

/// The kernel format, i.e. which loader and option ROM boot it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// Linux bzImage, 16-bit boot protocol >= 2.00.
    Linux,
    /// Multiboot v1 (ELF32 or a.out kludge).
    Multiboot,
    /// ELF with the Xen PVH entry note.
    Pvh,
}

impl BootProtocol {
    /// The option ROM QEMU uses for this protocol (DMA flavours).
    pub const fn rom_name(self) -> &'static str {
        match self {
            Self::Linux => "linuxboot_dma.bin",
            Self::Multiboot => "multiboot_dma.bin",
            Self::Pvh => "pvh.bin",
        }
    }
}

impl std::fmt::Display for BootProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Linux => "Linux bzImage",
            Self::Multiboot => "multiboot",
            Self::Pvh => "PVH ELF",
        })
    }
}

/// Guest RAM as the DM lays it out: RAM from 0 to `below_4g` and from 4 GiB
/// to 4 GiB + `above_4g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamLayout {
    pub below_4g: u64,
    pub above_4g: u64,
}

impl RamLayout {
    /// The layout QEMU computes under Xen (`xen_ram_init`) for `-m mem_mib`:
    /// low RAM ends at min(`max-ram-below-4g`, 0xF0000000), the rest goes
    /// above 4 GiB.
    pub fn xen(mem_mib: u64, max_ram_below_4g: Option<u64>) -> Self {
        let ram = mem_mib.saturating_mul(MIB);
        let low_max = match max_ram_below_4g {
            Some(v) if v != 0 && v < HVM_BELOW_4G_RAM_END => v,
            _ => HVM_BELOW_4G_RAM_END,
        };
        if ram >= low_max {
            Self { below_4g: low_max, above_4g: ram - low_max }
        } else {
            Self { below_4g: ram, above_4g: 0 }
        }
    }

    /// Whether `[addr, addr + len)` is guest RAM in this layout.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        end <= self.below_4g || (addr >= FOUR_GIB && end <= FOUR_GIB.saturating_add(self.above_4g))
    }

    /// QEMU's `initrd_max` clamp: the highest byte an initrd may use.
    pub(crate) fn initrd_ceiling(&self) -> Option<u64> {
        self.below_4g.checked_sub(ACPI_DATA_SIZE)?.checked_sub(1)
    }
}

/// The `-kernel`, `-initrd` and `-append` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: PathBuf,
    /// The raw `-initrd` value: one path for Linux and PVH; for multiboot a
    /// comma-separated module list (`,,` escapes a comma, text after the
    /// first space of a module is its command line).
    pub initrd: Option<String>,
    pub cmdline: String,
}

/// What [`crate::boot::load`] did; the caller finishes the job.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub protocol: BootProtocol,
    /// The option ROM to add as `genroms/<rom_name>` with boot index 0.
    pub rom_name: &'static str,
    /// `(guest physical address, content)` to write into guest RAM before
    /// the guest runs ([`Blob::write_to`] streams it from the file). Only
    /// PVH has any: its ELF segments (file bytes followed by the zeroed rest
    /// of `p_memsz`).
    pub guest_writes: Vec<(u64, Blob)>,
    /// Every boot file opened (kernel first, then the initrd or each
    /// multiboot module in order), kept open: the items read from them.
    /// Recording hashes these same descriptors for the trace header.
    pub files: Vec<LoadedFile>,
}

/// Why direct kernel boot cannot start. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {what} {path}: it {kind}, not a regular file")]
    NotRegular { what: &'static str, path: PathBuf, kind: &'static str },
    #[error("reading {what} {path}: the file is {size} bytes, more than the {MAX_FILE_SIZE}-byte limit")]
    FileTooLarge { what: &'static str, path: PathBuf, size: u64 },
    #[error("loading kernel {path}: not a kernel (no Linux \"HdrS\" header, no multiboot header, not an ELF file)")]
    NotAKernel { path: PathBuf },
    #[error("loading kernel {path}: it is not a {expected} image: {reason}")]
    WrongFormat { path: PathBuf, expected: BootProtocol, reason: String },
    #[error("loading kernel {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("loading kernel {path}: the image is truncated: {detail}")]
    Truncated { path: PathBuf, detail: String },
    #[error("loading kernel {path}: {detail}")]
    BadImage { path: PathBuf, detail: String },
    #[error("loading kernel {path}: the command line is {len} bytes but the kernel accepts at most {max}")]
    CmdlineTooLong { path: PathBuf, len: usize, max: u64 },
    #[error("loading kernel {path}: the command line contains a NUL byte")]
    CmdlineNul { path: PathBuf },
    #[error("loading kernel {path}: invalid 'vga=' kernel parameter {value:?}")]
    BadVgaMode { path: PathBuf, value: String },
    #[error("loading kernel {path}: {what} of {size:#x} bytes at {addr:#x} does not fit in guest RAM ({layout})")]
    KernelTooLarge { path: PathBuf, what: &'static str, addr: u64, size: u64, layout: String },
    #[error("loading {what} {path}: {size} bytes do not fit in the {available} bytes available below {ceiling:#x}")]
    InitrdTooLarge { what: &'static str, path: PathBuf, size: u64, available: u64, ceiling: u64 },
    #[error("loading kernel {path}: filling fw_cfg: {source}")]
    FwCfg {
        path: PathBuf,
        #[source]
        source: FwCfgError,
    },
}

impl From<OpenError> for LoadError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Read { what, path, source } => Self::Read { what, path, source },
            OpenError::NotRegular { what, path, kind } => Self::NotRegular { what, path, kind },
            OpenError::FileTooLarge { what, path, size } => Self::FileTooLarge { what, path, size },
        }
    }
}

impl LoadError {
    pub(crate) fn fw(path: &Path) -> impl Fn(FwCfgError) -> Self + '_ {
        move |source| Self::FwCfg { path: path.to_path_buf(), source }
    }
}

pub(crate) fn layout_text(l: &RamLayout) -> String {
    format!("RAM below 4 GiB ends at {:#x}, {:#x} bytes above 4 GiB", l.below_4g, l.above_4g)
}
