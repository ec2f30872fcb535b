//! Direct kernel boot: read `-kernel`/`-initrd`/`-append`, pick the loader,
//! fill fw_cfg.
//!
//! Follows QEMU's `x86_load_linux` (`hw/i386/x86-common.c`) and
//! `xen_load_linux` (`hw/i386/pc_piix.c`):
//!
//! 1. A "HdrS" magic at 0x202 means a Linux bzImage ([`crate::linux`]).
//! 2. Otherwise a multiboot v1 header in the first 8 KiB means multiboot
//!    ([`crate::multiboot`]); QEMU checks this *before* PVH, because a
//!    multiboot kernel may also be an ELF file.
//! 3. Otherwise an ELF file is loaded as PVH ([`crate::pvh`]), and must
//!    carry the `XEN_ELFNOTE_PHYS32_ENTRY` note.
//! 4. Anything else is not a kernel.
//!
//! The caller adds the option ROM named in [`BootPlan::rom_name`] with
//! [`crate::FwCfg::add_boot_rom`] and, for PVH, writes
//! [`BootPlan::guest_writes`] into guest RAM before the guest first runs
//! (and again on every guest reset, as QEMU re-copies its ROM blobs).
//!
//! Where we differ from QEMU:
//!
//! * Files are read whole, and each is limited to [`MAX_FILE_SIZE`]
//!   (512 MiB); a larger file is an error naming it. QEMU maps the initrd.
//! * `xenfv` has PVH disabled in QEMU (machine 3.1), so QEMU would treat a
//!   PVH ELF as an old zImage and fail; we load it as PVH.
//! * Old (< 2.00) and non-bzImage Linux kernels are refused with a clear
//!   error instead of being loaded low.
//! * We check that what we place fits in guest RAM (kernel, initrd,
//!   multiboot buffer, PVH segments) and that the command line fits the
//!   kernel's `cmdline_size`; QEMU checks neither.
//! * Recent QEMU also adds file `etc/boot/kernel` (the unpatched kernel, for
//!   UEFI's measured boot); SeaBIOS and the boot ROMs do not read it, so we
//!   do not duplicate the kernel in memory for it.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::device::{FwCfg, FwCfgError};

/// The largest kernel, initrd or module file we read.
pub const MAX_FILE_SIZE: u64 = 512 << 20;
/// Xen's end of low RAM (`HVM_BELOW_4G_RAM_END`): the MMIO hole starts here.
pub const HVM_BELOW_4G_RAM_END: u64 = 0xF000_0000;
/// What QEMU's PC machines keep free at the top of low RAM for firmware
/// data (`acpi_data_size` = 0x20000 + 0x8000); the initrd goes below it.
pub const ACPI_DATA_SIZE: u64 = 0x28000;
const MIB: u64 = 1 << 20;
const FOUR_GIB: u64 = 1 << 32;

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

/// A file read from disk, with its name for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub data: Vec<u8>,
}

impl LoadedFile {
    /// Reads `path` (at most [`MAX_FILE_SIZE`] bytes); `what` names the role
    /// ("kernel", "initrd", "multiboot module") in errors.
    ///
    /// # Errors
    /// If the file cannot be read or is too large.
    pub fn read(path: &Path, what: &'static str) -> Result<Self, LoadError> {
        let io = |source| LoadError::Read { what, path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(LoadError::FileTooLarge { what, path: path.to_path_buf(), size: meta.len() });
        }
        let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // The size may change under us: never read more than the limit + 1.
        file.take(MAX_FILE_SIZE + 1).read_to_end(&mut data).map_err(io)?;
        let len = data.len() as u64;
        if len > MAX_FILE_SIZE {
            return Err(LoadError::FileTooLarge { what, path: path.to_path_buf(), size: len });
        }
        Ok(Self { path: path.to_path_buf(), data })
    }
}

/// What [`load`] did; the caller finishes the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub protocol: BootProtocol,
    /// The option ROM to add as `genroms/<rom_name>` with boot index 0.
    pub rom_name: &'static str,
    /// `(guest physical address, bytes)` to write into guest RAM before the
    /// guest runs. Only PVH has any: its ELF segments (file bytes followed
    /// by the zeroed rest of `p_memsz`).
    pub guest_writes: Vec<(u64, Vec<u8>)>,
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

impl LoadError {
    pub(crate) fn fw(path: &Path) -> impl Fn(FwCfgError) -> Self + '_ {
        move |source| Self::FwCfg { path: path.to_path_buf(), source }
    }
}

pub(crate) fn layout_text(l: &RamLayout) -> String {
    format!("RAM below 4 GiB ends at {:#x}, {:#x} bytes above 4 GiB", l.below_4g, l.above_4g)
}

/// The format QEMU would pick for `image` (see the module docs).
pub fn detect(image: &[u8]) -> Option<BootProtocol> {
    if crate::linux::has_hdrs(image) {
        Some(BootProtocol::Linux)
    } else if crate::multiboot::find_header(image).is_some() {
        Some(BootProtocol::Multiboot)
    } else if crate::elf::is_elf(image) {
        Some(BootProtocol::Pvh)
    } else {
        None
    }
}

/// Reads the boot files, fills `fw` for the detected (or `force`d) format
/// and says which ROM to add.
///
/// # Errors
/// See [`LoadError`]; every error names the file at fault.
pub fn load(fw: &mut FwCfg, files: &BootFiles, layout: &RamLayout, force: Option<BootProtocol>) -> Result<BootPlan, LoadError> {
    let kernel = LoadedFile::read(&files.kernel, "kernel")?;
    let protocol = match force.or_else(|| detect(&kernel.data)) {
        Some(p) => p,
        None => return Err(LoadError::NotAKernel { path: kernel.path }),
    };
    let read_initrd = || files.initrd.as_deref().map(|p| LoadedFile::read(Path::new(p), "initrd")).transpose();
    let mut guest_writes = Vec::new();
    match protocol {
        BootProtocol::Linux => {
            let initrd = read_initrd()?;
            let info = crate::linux::load(fw, &kernel, initrd, &files.cmdline, layout)?;
            tracing::info!(?info, kernel = %kernel.path.display(), "loaded Linux bzImage");
        }
        BootProtocol::Multiboot => {
            let mut read = |p: &Path| LoadedFile::read(p, "multiboot module");
            let info = crate::multiboot::load(fw, &kernel, files.initrd.as_deref(), &files.cmdline, layout, &mut read)?;
            tracing::info!(?info, kernel = %kernel.path.display(), "loaded multiboot kernel");
        }
        BootProtocol::Pvh => {
            let initrd = read_initrd()?;
            let info = crate::pvh::load(fw, &kernel, initrd, &files.cmdline, layout)?;
            tracing::info!(entry = info.entry, segments = info.segments.len(), kernel = %kernel.path.display(), "loaded PVH kernel");
            guest_writes = info.segments;
        }
    }
    Ok(BootPlan { protocol, rom_name: protocol.rom_name(), guest_writes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{keys, FwCfgOptions};
    use std::sync::Arc;
    use xendm_devices::mem::TestMemory;

    fn fw() -> FwCfg {
        FwCfg::new(Arc::new(TestMemory::new(&[(0, 0x1000)]).unwrap()), FwCfgOptions::default()).unwrap()
    }

    #[test]
    fn xen_ram_layout() {
        assert_eq!(RamLayout::xen(256, None), RamLayout { below_4g: 256 << 20, above_4g: 0 });
        assert_eq!(RamLayout::xen(8192, None), RamLayout { below_4g: 0xF000_0000, above_4g: (8192 << 20) - 0xF000_0000 });
        assert_eq!(RamLayout::xen(4096, Some(0x8000_0000)), RamLayout { below_4g: 0x8000_0000, above_4g: 0x8000_0000 });
        assert_eq!(RamLayout::xen(4096, Some(0xF800_0000)).below_4g, 0xF000_0000, "Xen's limit wins");
        assert_eq!(RamLayout::xen(u64::MAX, None).below_4g, 0xF000_0000);
        let l = RamLayout::xen(8192, None);
        assert!(l.contains(0x10_0000, 0x1000));
        assert!(!l.contains(0xEFFF_F000, 0x2000));
        assert!(l.contains(FOUR_GIB, 0x1000));
        assert!(!l.contains(u64::MAX, 2));
    }

    #[test]
    fn missing_unreadable_and_garbage_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let files = BootFiles { kernel: dir.path().join("nope"), initrd: None, cmdline: String::new() };
        let e = load(&mut fw(), &files, &RamLayout::xen(256, None), None).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }));
        assert!(e.to_string().contains("nope"), "{e}");

        let files = BootFiles { kernel: dir.path().to_path_buf(), initrd: None, cmdline: String::new() };
        assert!(matches!(load(&mut fw(), &files, &RamLayout::xen(256, None), None), Err(LoadError::Read { .. })));

        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0x90u8; 10000]).unwrap();
        let files = BootFiles { kernel: junk.clone(), initrd: None, cmdline: String::new() };
        let e = load(&mut fw(), &files, &RamLayout::xen(256, None), None).unwrap_err();
        assert!(matches!(e, LoadError::NotAKernel { .. }));
        assert!(e.to_string().contains("junk"), "{e}");
        let e = load(&mut fw(), &files, &RamLayout::xen(256, None), Some(BootProtocol::Linux)).unwrap_err();
        assert!(matches!(e, LoadError::WrongFormat { expected: BootProtocol::Linux, .. }), "{e}");
        let e = load(&mut fw(), &files, &RamLayout::xen(256, None), Some(BootProtocol::Multiboot)).unwrap_err();
        assert!(matches!(e, LoadError::WrongFormat { expected: BootProtocol::Multiboot, .. }), "{e}");
        let e = load(&mut fw(), &files, &RamLayout::xen(256, None), Some(BootProtocol::Pvh)).unwrap_err();
        assert!(matches!(e, LoadError::WrongFormat { expected: BootProtocol::Pvh, .. }), "{e}");

        std::fs::write(&junk, b"").unwrap();
        assert!(matches!(load(&mut fw(), &files, &RamLayout::xen(256, None), None), Err(LoadError::NotAKernel { .. })));
    }

    #[test]
    fn oversized_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_SIZE + 1).unwrap(); // sparse
        let e = LoadedFile::read(&big, "initrd").unwrap_err();
        assert!(matches!(e, LoadError::FileTooLarge { size, .. } if size == MAX_FILE_SIZE + 1));
        assert!(e.to_string().contains("big"));
    }

    #[test]
    fn missing_initrd_names_the_file() {
        let kernel = crate::linux::tests::kernel_path();
        let files = BootFiles { kernel, initrd: Some("/nonexistent/initrd.img".into()), cmdline: String::new() };
        let e = load(&mut fw(), &files, &RamLayout::xen(256, None), None).unwrap_err();
        assert!(matches!(e, LoadError::Read { what: "initrd", .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/initrd.img"));
    }

    /// Builds `tests/kernels` (the ROM tests' multiboot and PVH kernels).
    fn test_kernels(dir: &Path) -> (PathBuf, PathBuf) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/kernels/build");
        let out = std::process::Command::new(script).arg(dir).output().unwrap_or_else(|e| panic!("running {script}: {e}"));
        assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        (dir.join("multiboot.elf"), dir.join("pvh.elf"))
    }

    /// `readelf` as an independent oracle: (entry, [(offset, paddr, filesz, memsz)]).
    fn readelf(path: &Path) -> (u64, Vec<[u64; 4]>) {
        let out = std::process::Command::new("readelf").args(["-lhW"]).arg(path).output().expect("readelf (binutils)");
        let text = String::from_utf8(out.stdout).unwrap();
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        let entry = text.lines().find_map(|l| l.trim().strip_prefix("Entry point address:")).map(|v| hex(v.trim())).unwrap();
        let loads = text
            .lines()
            .filter(|l| l.trim_start().starts_with("LOAD"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                [hex(f[1]), hex(f[3]), hex(f[4]), hex(f[5])]
            })
            .collect();
        (entry, loads)
    }

    fn note_entry(path: &Path) -> u32 {
        let out = std::process::Command::new("readelf").args(["-nW"]).arg(path).output().expect("readelf (binutils)");
        let text = String::from_utf8(out.stdout).unwrap();
        let data = text.split("description data:").nth(1).unwrap();
        let b: Vec<u8> = data.split_whitespace().take(4).map(|h| u8::from_str_radix(h, 16).unwrap()).collect();
        u32::from_le_bytes(b.try_into().unwrap())
    }

    fn key32(f: &FwCfg, key: u16) -> u32 {
        u32::from_le_bytes(f.item_data(key).unwrap().try_into().unwrap())
    }

    #[test]
    fn tests_kernels_pvh_elf_matches_readelf() {
        let dir = tempfile::tempdir().unwrap();
        let (_, pvh) = test_kernels(dir.path());
        let file = std::fs::read(&pvh).unwrap();
        let (_, loads) = readelf(&pvh);
        let rd = dir.path().join("rd");
        std::fs::write(&rd, vec![3u8; 70000]).unwrap();
        let files = BootFiles { kernel: pvh.clone(), initrd: Some(rd.to_string_lossy().into_owned()), cmdline: "xkt.marker=t".into() };
        let mut f = fw();
        let plan = load(&mut f, &files, &RamLayout::xen(128, None), None).unwrap();
        assert_eq!(plan.protocol, BootProtocol::Pvh);
        assert_eq!(key32(&f, keys::KERNEL_ENTRY), note_entry(&pvh));
        let low = loads.iter().map(|l| l[1]).min().unwrap();
        let high = loads.iter().map(|l| l[1] + l[3]).max().unwrap();
        assert_eq!(u64::from(key32(&f, keys::KERNEL_ADDR)), low);
        assert_eq!(u64::from(key32(&f, keys::KERNEL_SIZE)), high - low);
        let writes: Vec<_> = loads
            .iter()
            .map(|&[off, paddr, filesz, memsz]| {
                let mut v = file[off as usize..(off + filesz) as usize].to_vec();
                v.resize(memsz as usize, 0);
                (paddr, v)
            })
            .collect();
        assert_eq!(plan.guest_writes, writes);
        assert_eq!(&f.item_data(keys::SETUP_DATA).unwrap()[..file.len().min(8192)], &file[..file.len().min(8192)]);
        assert_eq!(key32(&f, keys::INITRD_SIZE), 70000);
    }

    #[test]
    fn tests_kernels_multiboot_elf_matches_readelf() {
        let dir = tempfile::tempdir().unwrap();
        let (mb, _) = test_kernels(dir.path());
        let file = std::fs::read(&mb).unwrap();
        let (entry, loads) = readelf(&mb);
        let m0 = dir.path().join("m0");
        std::fs::write(&m0, b"module zero").unwrap();
        let spec = format!("{} mod1 args", m0.display());
        let files = BootFiles { kernel: mb.clone(), initrd: Some(spec.clone()), cmdline: "xkt.marker=t xkt.mods=1".into() };
        let mut f = fw();
        let plan = load(&mut f, &files, &RamLayout::xen(128, None), None).unwrap();
        assert_eq!(plan.protocol, BootProtocol::Multiboot);
        assert_eq!(plan.rom_name, "multiboot_dma.bin");
        assert_eq!(u64::from(key32(&f, keys::KERNEL_ENTRY)), entry);
        let low = loads.iter().map(|l| l[1]).min().unwrap();
        let high = loads.iter().map(|l| l[1] + l[3]).max().unwrap();
        assert_eq!(u64::from(key32(&f, keys::KERNEL_ADDR)), low);
        let buf = f.item_data(keys::KERNEL_DATA).unwrap();
        for &[off, paddr, filesz, memsz] in &loads {
            let at = (paddr - low) as usize;
            assert_eq!(&buf[at..at + filesz as usize], &file[off as usize..(off + filesz) as usize]);
            assert!(buf[at + filesz as usize..at + memsz as usize].iter().all(|&b| b == 0));
        }
        // One module record right after the page-aligned image, its data on the next page boundary.
        let mbinfo = ((high - low + 0xfff) & !0xfff) as usize;
        let start = u32::from_le_bytes(buf[mbinfo..mbinfo + 4].try_into().unwrap());
        let end = u32::from_le_bytes(buf[mbinfo + 4..mbinfo + 8].try_into().unwrap());
        assert_eq!(end - start, 11);
        let s = (start as u64 - low) as usize;
        assert_eq!(&buf[s..s + 11], b"module zero");
        let mbi = f.item_data(keys::INITRD_DATA).unwrap();
        assert_eq!(u32::from_le_bytes(mbi[20..24].try_into().unwrap()), 1);
        let cmd = u32::from_le_bytes(buf[mbinfo + 8..mbinfo + 12].try_into().unwrap()) as u64 - low;
        assert_eq!(&buf[cmd as usize..cmd as usize + spec.len() + 1], format!("{spec}\0").as_bytes());
    }

    #[test]
    fn debian_kernel_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, vec![0x42u8; 300_000]).unwrap();
        let files = BootFiles {
            kernel: crate::linux::tests::kernel_path(),
            initrd: Some(initrd.to_string_lossy().into_owned()),
            cmdline: "console=ttyS0".into(),
        };
        let mut f = fw();
        let plan = load(&mut f, &files, &RamLayout::xen(256, None), None).unwrap();
        assert_eq!(plan.protocol, BootProtocol::Linux);
        assert_eq!(plan.rom_name, "linuxboot_dma.bin");
        assert!(plan.guest_writes.is_empty());
        assert_eq!(f.item_data(keys::INITRD_SIZE), Some(&300_000u32.to_le_bytes()[..]));
        f.add_boot_rom(plan.rom_name, vec![0x55, 0xaa]).unwrap();
        assert_eq!(f.file_data("bootorder").unwrap(), b"/rom@genroms/linuxboot_dma.bin\0");
    }
}
