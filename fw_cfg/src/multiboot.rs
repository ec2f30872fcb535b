//! Multiboot v1 loader, as QEMU's `hw/i386/multiboot.c`.
//!
//! Spec: Multiboot Specification 0.6.96. The header is a u32 0x1BADB002 at
//! a 4-byte aligned offset below 8192 - 48 whose next two words make
//! magic + flags + checksum == 0. Flag bit 16 selects the "a.out kludge"
//! (load addresses in the header); otherwise the file must be a 32-bit x86
//! ELF whose PT_LOAD segments (by `p_paddr`) form the image.
//!
//! Everything goes into one buffer served as `KERNEL_DATA` at `KERNEL_ADDR`
//! (the lowest load address), laid out as QEMU does:
//!
//! 1. the kernel image (with its zeroed BSS), padded to 4 KiB;
//! 2. one 16-byte module record per module {start, end, cmdline, 0};
//! 3. command lines: each module's spec string, then `"<kernel path> <cmdline>"`;
//! 4. the boot loader name "qemu"; padding to 4 KiB;
//! 5. each module file, each padded to 4 KiB.
//!
//! The 88-byte multiboot information structure is `INITRD_DATA`, loaded at
//! 0x9500 (`INITRD_ADDR`), with flags MEM|BOOTDEV|CMDLINE|MODS|MMAP|LOADER,
//! boot_device 0x8000FFFF and mmap_addr 0x9000; the option ROM
//! (`multiboot_dma.bin`) fills in mem_lower, mem_upper and the memory map.
//! `KERNEL_ENTRY` is the entry point.
//!
//! Modules come from the `-initrd` value: comma-separated, `,,` standing for
//! a literal comma; within a module, text after the first space is its
//! command line (the whole spec string is passed as the module's string).
//!
//! Where we differ from QEMU: the buffer must fit in low RAM and must not
//! overlap the information area at 0x9000..0x9558, the image must be at most
//! [`crate::plan::MAX_FILE_SIZE`] bytes, and the kernel path in the command
//! line is shown lossily if it is not UTF-8. QEMU checks none of these.

use std::path::Path;

use crate::bytes::{le_u32, page_align, put_bytes, put_le_u32};
use crate::elf::{self, EM_386, EM_X86_64, PT_LOAD};
use crate::items::{keys, FwCfgItems};
use crate::plan::BootProtocol;
use crate::plan::{layout_text, LoadError, LoadedFile, RamLayout, MAX_FILE_SIZE};

/// The multiboot v1 header magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// The header must start below this offset (8192 - 48).
const SEARCH_LIMIT: usize = 8192 - 48;
const FLAG_VIDEO: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Where the ROM puts the E820 map (`mmap_addr`).
pub const ADDR_E820_MAP: u32 = 0x9000;
/// Where the multiboot information structure goes (`INITRD_ADDR`).
pub const ADDR_MBI: u32 = ADDR_E820_MAP + 0x500;
/// Size of the multiboot information structure QEMU builds.
pub const MBI_SIZE: usize = 88;
const MB_MOD_SIZE: u64 = 16;
const BOOTLOADER_NAME: &str = "qemu";

const MBI_FLAGS: usize = 0;
const MBI_BOOT_DEVICE: usize = 12;
const MBI_CMDLINE: usize = 16;
const MBI_MODS_COUNT: usize = 20;
const MBI_MODS_ADDR: usize = 24;
const MBI_MMAP_ADDR: usize = 48;
const MBI_BOOTLOADER: usize = 64;
/// MEM | BOOTDEV | CMDLINE | MODS | MMAP | LOADER.
const MBI_FLAGS_VALUE: u32 = 1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9;

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootHeader {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
}

/// What was loaded where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultibootInfo {
    pub entry: u32,
    pub load_addr: u32,
    /// Size of `KERNEL_DATA`.
    pub buffer_size: u32,
    /// `(start, end)` of each module.
    pub modules: Vec<(u32, u32)>,
}

/// Finds the first valid multiboot header in the first 8 KiB.
pub fn find_header(image: &[u8]) -> Option<MultibootHeader> {
    (0..SEARCH_LIMIT).step_by(4).find_map(|i| {
        let magic = le_u32(image, i)?;
        let flags = le_u32(image, i + 4)?;
        let sum = le_u32(image, i + 8)?;
        (magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0)
            .then_some(MultibootHeader { offset: i, flags })
    })
}

/// Splits a `-initrd` module list: `,` separates, `,,` is a literal comma
/// (QEMU `get_opt_value`).
pub fn split_modules(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn bad(path: &Path, detail: impl Into<String>) -> LoadError {
    LoadError::BadImage { path: path.to_path_buf(), detail: detail.into() }
}

fn truncated(path: &Path, detail: impl Into<String>) -> LoadError {
    LoadError::Truncated { path: path.to_path_buf(), detail: detail.into() }
}

fn too_big(path: &Path, size: u64) -> LoadError {
    LoadError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("the multiboot image is {size} bytes, more than {MAX_FILE_SIZE}"),
    }
}

/// The kernel image: (load address, entry, bytes including zeroed BSS).
/// The image is checked to fit in `layout`'s low RAM before it is
/// allocated (its size comes from the file).
fn kernel_image(
    kernel: &LoadedFile,
    hdr: MultibootHeader,
    layout: &RamLayout,
) -> Result<(u32, u32, Vec<u8>), LoadError> {
    if hdr.flags & FLAG_AOUT_KLUDGE == 0 {
        elf_image(kernel, layout)
    } else {
        aout_image(kernel, hdr, layout)
    }
}

/// Refuses an image of `size` bytes at `addr` that does not fit in low RAM
/// (the error [`MbBuffer::too_large`] gives once the image is built).
fn check_image_fits(path: &Path, layout: &RamLayout, addr: u64, size: u64) -> Result<(), LoadError> {
    if addr.checked_add(size).is_some_and(|end| end <= layout.below_4g) {
        return Ok(());
    }
    Err(LoadError::KernelTooLarge {
        path: path.to_path_buf(),
        what: "the multiboot kernel, modules and information",
        addr,
        size,
        layout: layout_text(layout),
    })
}

/// A 32-bit ELF kernel: its PT_LOAD segments laid out from the lowest.
fn elf_image(kernel: &LoadedFile, layout: &RamLayout) -> Result<(u32, u32, Vec<u8>), LoadError> {
    let path = kernel.path.as_path();
    let img = kernel.data.as_slice();
    let e = elf::parse(img).map_err(|e| bad(path, format!("multiboot header without load addresses, and {e}")))?;
    if e.machine == EM_X86_64 || e.class64 {
        return Err(LoadError::Unsupported {
            path: path.to_path_buf(),
            reason: "cannot load a 64-bit multiboot ELF; give a 32-bit one".into(),
        });
    }
    if e.machine != EM_386 {
        return Err(LoadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("ELF machine {} is not i386", e.machine),
        });
    }
    let loads: Vec<_> = e.phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
    let low = loads.iter().map(|p| p.paddr).min().ok_or_else(|| bad(path, "the ELF file has no PT_LOAD segment"))?;
    let mut high = low;
    for p in &loads {
        if p.filesz > p.memsz {
            return Err(bad(path, format!("segment at {:#x} has more file bytes than memory bytes", p.paddr)));
        }
        let end =
            p.paddr.checked_add(p.memsz).filter(|&e| e <= 1 << 32).ok_or_else(|| bad(path, "segment beyond 4 GiB"))?;
        high = high.max(end);
    }
    let size = high - low;
    if size > MAX_FILE_SIZE {
        return Err(too_big(path, size));
    }
    check_image_fits(path, layout, low, size)?;
    let mut buf = vec![0u8; size as usize];
    for p in &loads {
        let data = elf::segment_bytes(img, p).map_err(|e| truncated(path, e.to_string()))?;
        put_bytes(&mut buf, (p.paddr - low) as usize, data).ok_or_else(|| bad(path, "segment outside the image"))?;
    }
    let entry = u32::try_from(e.entry).map_err(|_| bad(path, "entry point beyond 4 GiB"))?;
    Ok((low as u32, entry, buf))
}

/// The a.out kludge: the header's header_addr, load_addr, load_end_addr,
/// bss_end_addr and entry_addr place the file's bytes.
fn aout_image(kernel: &LoadedFile, hdr: MultibootHeader, layout: &RamLayout) -> Result<(u32, u32, Vec<u8>), LoadError> {
    let path = kernel.path.as_path();
    let img = kernel.data.as_slice();
    let field = |n: usize| {
        le_u32(img, hdr.offset + 12 + 4 * n).ok_or_else(|| truncated(path, "multiboot header address fields"))
    };
    let (header_addr, load_addr, load_end, bss_end, entry) = (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if header_addr < load_addr {
        return Err(bad(path, format!("multiboot header_addr {header_addr:#x} is below load_addr {load_addr:#x}")));
    }
    let text_offset = (hdr.offset as u64)
        .checked_sub(u64::from(header_addr - load_addr))
        .ok_or_else(|| bad(path, "multiboot header_addr - load_addr is larger than the header's file offset"))?;
    let file_len = img.len() as u64;
    let load_size = if load_end != 0 {
        if load_end < load_addr {
            return Err(bad(path, format!("multiboot load_end_addr {load_end:#x} is below load_addr {load_addr:#x}")));
        }
        u64::from(load_end - load_addr)
    } else {
        file_len.saturating_sub(text_offset)
    };
    if text_offset + load_size > file_len {
        return Err(truncated(
            path,
            format!("{load_size} bytes to load from offset {text_offset}, the file has {file_len}"),
        ));
    }
    let mem_size = if bss_end != 0 {
        let end = u64::from(load_addr) + load_size;
        if u64::from(bss_end) < end {
            return Err(bad(
                path,
                format!("multiboot bss_end_addr {bss_end:#x} is below the end of the loaded image {end:#x}"),
            ));
        }
        u64::from(bss_end - load_addr)
    } else {
        load_size
    };
    if mem_size > MAX_FILE_SIZE {
        return Err(too_big(path, mem_size));
    }
    check_image_fits(path, layout, u64::from(load_addr), mem_size)?;
    let mut buf = vec![0u8; mem_size as usize];
    let src = img
        .get(text_offset as usize..(text_offset + load_size) as usize)
        .ok_or_else(|| truncated(path, "kernel text"))?;
    put_bytes(&mut buf, 0, src).ok_or_else(|| bad(path, "image larger than its memory size"))?;
    Ok((load_addr, entry, buf))
}

/// The buffer QEMU hands the ROM as `KERNEL_DATA`: the image, then the
/// module records, command lines and boot loader name, then each module,
/// every part page-aligned. Addresses are `phys` + offset.
struct MbBuffer<'a> {
    path: &'a Path,
    layout: &'a RamLayout,
    phys: u64,
    buf: Vec<u8>,
    size: u64,
}

impl MbBuffer<'_> {
    /// Whether `phys + size` is still low RAM.
    fn fits(&self, size: u64) -> bool {
        self.phys.checked_add(size).is_some_and(|end| end <= self.layout.below_4g)
    }

    fn too_large(&self, size: u64) -> LoadError {
        LoadError::KernelTooLarge {
            path: self.path.to_path_buf(),
            what: "the multiboot kernel, modules and information",
            addr: self.phys,
            size,
            layout: layout_text(self.layout),
        }
    }

    fn layout_err(&self) -> LoadError {
        bad(self.path, "internal layout error building the multiboot buffer")
    }

    /// Puts `s` and a NUL at `*off`, moves `*off` past them, returns the
    /// string's guest address.
    fn add_string(&mut self, off: &mut u64, s: &[u8]) -> Result<u32, LoadError> {
        let at = *off;
        put_bytes(&mut self.buf, at as usize, s).ok_or_else(|| self.layout_err())?;
        put_bytes(&mut self.buf, at as usize + s.len(), &[0]).ok_or_else(|| self.layout_err())?;
        *off += s.len() as u64 + 1;
        u32::try_from(self.phys + at).map_err(|_| self.layout_err())
    }

    /// Appends each module (page-aligned) with its record at `off_mbinfo`
    /// and its command line at `*off_cmdlines`: `(start, end)` of each.
    fn add_modules(
        &mut self,
        specs: &[String],
        off_mbinfo: u64,
        off_cmdlines: &mut u64,
        read: &mut dyn FnMut(&Path) -> Result<LoadedFile, LoadError>,
    ) -> Result<Vec<(u32, u32)>, LoadError> {
        let mut modules = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let file_name = spec.split(' ').next().unwrap_or("");
            let module = read(Path::new(file_name))?;
            let cmd_phys = self.add_string(off_cmdlines, spec.as_bytes())?;
            let offs = self.size;
            let len = module.data.len() as u64;
            self.size = page_align(offs + len).ok_or_else(|| too_big(self.path, u64::MAX))?;
            if !self.fits(self.size) {
                return Err(LoadError::InitrdTooLarge {
                    what: "multiboot module",
                    path: module.path,
                    size: len,
                    available: self.layout.below_4g.saturating_sub(self.phys + offs),
                    ceiling: self.layout.below_4g,
                });
            }
            self.buf.resize(self.size as usize, 0);
            put_bytes(&mut self.buf, offs as usize, &module.data).ok_or_else(|| self.layout_err())?;
            let (start, end) = ((self.phys + offs) as u32, (self.phys + offs + len) as u32);
            let rec = off_mbinfo as usize + i * MB_MOD_SIZE as usize;
            for (at, v) in [(rec, start), (rec + 4, end), (rec + 8, cmd_phys)] {
                put_le_u32(&mut self.buf, at, v).ok_or_else(|| self.layout_err())?;
            }
            modules.push((start, end));
        }
        Ok(modules)
    }
}

/// Loads multiboot `kernel` with modules from `initrd_spec`, reading each
/// module with `read`.
///
/// # Errors
/// No header, bad addresses, truncated image, unreadable module, a buffer
/// that does not fit in RAM, keys already set.
pub fn load(
    fw: &mut FwCfgItems,
    kernel: &LoadedFile,
    initrd_spec: Option<&str>,
    cmdline: &str,
    layout: &RamLayout,
    read: &mut dyn FnMut(&Path) -> Result<LoadedFile, LoadError>,
) -> Result<MultibootInfo, LoadError> {
    let path = kernel.path.as_path();
    let Some(hdr) = find_header(&kernel.data) else {
        return Err(LoadError::WrongFormat {
            path: path.to_path_buf(),
            expected: BootProtocol::Multiboot,
            reason: "no multiboot header in the first 8 KiB".into(),
        });
    };
    if hdr.flags & FLAG_VIDEO != 0 {
        tracing::warn!(kernel = %path.display(), "multiboot kernel asks for a video mode; ignored (as QEMU)");
    }
    if cmdline.contains('\0') {
        return Err(LoadError::CmdlineNul { path: path.to_path_buf() });
    }
    let (load_addr, entry, buf) = kernel_image(kernel, hdr, layout)?;
    let phys = u64::from(load_addr);
    let kernel_path = path.to_string_lossy();
    let specs = initrd_spec.map(split_modules).unwrap_or_default();

    // Sizes as QEMU computes them; addresses are u32 in the structures.
    let mut size = page_align(buf.len() as u64).ok_or_else(|| too_big(path, u64::MAX))?;
    let off_mbinfo = size;
    let cmdline_len =
        kernel_path.len() as u64 + 1 + cmdline.len() as u64 + 1 + initrd_spec.map_or(0, |s| s.len() as u64 + 1);
    let mods = specs.len() as u64;
    size += cmdline_len + MB_MOD_SIZE * mods + BOOTLOADER_NAME.len() as u64 + 1;
    size = page_align(size).ok_or_else(|| too_big(path, u64::MAX))?;
    let mut off_cmdlines = off_mbinfo + mods * MB_MOD_SIZE;
    let mut off_bootloader = off_cmdlines + cmdline_len;

    let mut b = MbBuffer { path, layout, phys, buf, size };
    if !b.fits(size) {
        return Err(b.too_large(size));
    }
    b.buf.resize(size as usize, 0);
    let modules = b.add_modules(&specs, off_mbinfo, &mut off_cmdlines, read)?;
    let kcmd = format!("{kernel_path} {cmdline}");
    let kcmd_phys = b.add_string(&mut off_cmdlines, kcmd.as_bytes())?;
    let bl_phys = b.add_string(&mut off_bootloader, BOOTLOADER_NAME.as_bytes())?;

    // The image must not cover the information area the ROM fills.
    let size = b.size;
    let info_end = u64::from(ADDR_MBI) + MBI_SIZE as u64;
    if phys < info_end && phys + size > u64::from(ADDR_E820_MAP) {
        return Err(bad(path, format!("the image at {phys:#x}+{size:#x} overlaps the multiboot information area {ADDR_E820_MAP:#x}..{info_end:#x}")));
    }

    let mut mbi = [0u8; MBI_SIZE];
    let mods_addr = (phys + off_mbinfo) as u32;
    for (off, v) in [
        (MBI_FLAGS, MBI_FLAGS_VALUE),
        (MBI_BOOT_DEVICE, 0x8000_ffff),
        (MBI_CMDLINE, kcmd_phys),
        (MBI_MODS_COUNT, modules.len() as u32),
        (MBI_MODS_ADDR, mods_addr),
        (MBI_MMAP_ADDR, ADDR_E820_MAP),
        (MBI_BOOTLOADER, bl_phys),
    ] {
        put_le_u32(&mut mbi, off, v).ok_or_else(|| b.layout_err())?;
    }
    let info = MultibootInfo { entry, load_addr, buffer_size: size as u32, modules };
    fill(fw, &info, b.buf, &mbi).map_err(LoadError::fw(path))?;
    Ok(info)
}

/// Writes the keys QEMU's `multiboot_dma.bin` reads, in QEMU's order.
fn fill(fw: &mut FwCfgItems, info: &MultibootInfo, buf: Vec<u8>, mbi: &[u8]) -> Result<(), crate::items::FwCfgError> {
    fw.add_u32(keys::KERNEL_ENTRY, info.entry)?;
    fw.add_u32(keys::KERNEL_ADDR, info.load_addr)?;
    fw.add_u32(keys::KERNEL_SIZE, info.buffer_size)?;
    fw.add_bytes(keys::KERNEL_DATA, buf)?;
    fw.add_u32(keys::INITRD_ADDR, ADDR_MBI)?;
    fw.add_u32(keys::INITRD_SIZE, MBI_SIZE as u32)?;
    fw.add_bytes(keys::INITRD_DATA, mbi.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::build::{elf, Seg};
    use crate::items::FwCfgOptions;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn fw() -> FwCfgItems {
        FwCfgItems::new(&FwCfgOptions::default()).unwrap()
    }

    fn header(flags: u32, extra: &[u32]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [HEADER_MAGIC, flags, 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)].iter().chain(extra) {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v
    }

    /// An a.out-kludge kernel: 0x40 bytes of padding, the header at 0x40,
    /// text to 0x1000 and `bss` extra bytes of BSS, loaded at 1 MiB.
    fn aout(bss: u32) -> LoadedFile {
        let load = 0x10_0000u32;
        let mut img = vec![0xccu8; 0x1000];
        let h = header(FLAG_AOUT_KLUDGE, &[load + 0x40, load, load + 0x1000, load + 0x1000 + bss, load + 0x80]);
        img[0x40..0x40 + h.len()].copy_from_slice(&h);
        LoadedFile { path: "/boot/mb.aout".into(), data: img }
    }

    fn u32_key(fw: &FwCfgItems, key: u16) -> u32 {
        u32::from_le_bytes(fw.item_data(key).unwrap().try_into().unwrap())
    }

    fn rd32(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn cstr(buf: &[u8], off: usize) -> &str {
        let end = buf[off..].iter().position(|&b| b == 0).unwrap();
        std::str::from_utf8(&buf[off..off + end]).unwrap()
    }

    fn no_files(p: &Path) -> Result<LoadedFile, LoadError> {
        panic!("unexpected module read {}", p.display())
    }

    #[test]
    fn header_search_rules() {
        let mut img = vec![0u8; 8192];
        assert_eq!(find_header(&img), None);
        // Bad checksum.
        img[8..12].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
        assert_eq!(find_header(&img), None);
        // Unaligned: ignored.
        let h = header(0, &[]);
        img[0x102..0x102 + 12].copy_from_slice(&h);
        assert_eq!(find_header(&img), None);
        // Last allowed offset is 8192 - 52; 8192 - 48 is out.
        img[8192 - 48..8192 - 36].copy_from_slice(&h);
        assert_eq!(find_header(&img), None);
        img[8192 - 52..8192 - 40].copy_from_slice(&h);
        assert_eq!(find_header(&img), Some(MultibootHeader { offset: 8192 - 52, flags: 0 }));
        // A header cut by the end of the file is not found.
        assert_eq!(find_header(&h[..11]), None);
    }

    #[test]
    fn module_list_escapes() {
        assert_eq!(split_modules("a"), ["a"]);
        assert_eq!(split_modules("a arg1,b"), ["a arg1", "b"]);
        assert_eq!(split_modules("x,,y z,,w,b"), ["x,y z,w", "b"]);
        assert_eq!(split_modules("a,"), ["a", ""]);
    }

    #[test]
    fn aout_kernel_with_modules_byte_exact_layout() {
        let k = aout(0x2000);
        let mut files: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        files.insert("/m/one".into(), vec![1; 100]);
        files.insert("/m/t,wo".into(), vec![2; 0x1001]);
        let mut read = |p: &Path| {
            files.get(p).map(|d| LoadedFile { path: p.into(), data: d.clone() }).ok_or_else(|| LoadError::Read {
                what: "multiboot module",
                path: p.into(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        };
        let spec = "/m/one a=1 b,/m/t,,wo";
        let mut f = fw();
        let info = load(&mut f, &k, Some(spec), "console=ttyS0", &RamLayout::xen(64, None), &mut read).unwrap();
        let load_addr = 0x10_0000u32;
        assert_eq!(info.entry, load_addr + 0x80);
        assert_eq!(info.load_addr, load_addr);
        assert_eq!(u32_key(&f, keys::KERNEL_ENTRY), load_addr + 0x80);
        assert_eq!(u32_key(&f, keys::KERNEL_ADDR), load_addr);

        // kernel 0x1000 text + 0x2000 bss -> 0x3000; mbinfo at 0x3000;
        // cmdlines after 2 records; buffer page-aligned; modules after.
        let buf = f.item_data(keys::KERNEL_DATA).unwrap();
        assert_eq!(buf.len() as u32, u32_key(&f, keys::KERNEL_SIZE));
        assert_eq!(&buf[..0x1000], &k.data[..]);
        assert!(buf[0x1000..0x3000].iter().all(|&b| b == 0), "BSS zeroed");
        let kpath = "/boot/mb.aout";
        let cmdline_len = kpath.len() + 1 + "console=ttyS0".len() + 1 + spec.len() + 1;
        let header_end = 0x3000 + 32 + cmdline_len + 5;
        let mods_start = (header_end + 0xfff) & !0xfff;
        assert_eq!(mods_start, 0x4000);
        let m1 = load_addr + 0x4000;
        let m2 = load_addr + 0x5000;
        assert_eq!(info.modules, vec![(m1, m1 + 100), (m2, m2 + 0x1001)]);
        assert_eq!(buf.len(), 0x7000, "second module padded to a page");
        assert_eq!(&buf[0x4000..0x4064], &[1; 100][..]);
        assert_eq!(&buf[0x5000..0x6001], &[2; 0x1001][..]);
        // Module records.
        assert_eq!(rd32(buf, 0x3000), m1);
        assert_eq!(rd32(buf, 0x3004), m1 + 100);
        assert_eq!(rd32(buf, 0x3008), load_addr + 0x3020);
        assert_eq!(rd32(buf, 0x300c), 0);
        assert_eq!(rd32(buf, 0x3010), m2);
        assert_eq!(rd32(buf, 0x3018), load_addr + 0x3020 + "/m/one a=1 b".len() as u32 + 1);
        assert_eq!(cstr(buf, 0x3020), "/m/one a=1 b");
        assert_eq!(cstr(buf, 0x3020 + 13), "/m/t,wo");
        let kcmd_off = 0x3020 + 13 + 8;
        assert_eq!(cstr(buf, kcmd_off), "/boot/mb.aout console=ttyS0");
        let bl_off = 0x3020 + cmdline_len;
        assert_eq!(cstr(buf, bl_off), "qemu");

        // MBI.
        assert_eq!(u32_key(&f, keys::INITRD_ADDR), 0x9500);
        assert_eq!(u32_key(&f, keys::INITRD_SIZE), 88);
        let mbi = f.item_data(keys::INITRD_DATA).unwrap();
        assert_eq!(mbi.len(), 88);
        assert_eq!(rd32(mbi, 0), 0x24f);
        assert_eq!(rd32(mbi, 4), 0);
        assert_eq!(rd32(mbi, 8), 0);
        assert_eq!(rd32(mbi, 12), 0x8000_ffff);
        assert_eq!(rd32(mbi, 16), load_addr + kcmd_off as u32);
        assert_eq!(rd32(mbi, 20), 2);
        assert_eq!(rd32(mbi, 24), load_addr + 0x3000);
        assert_eq!(rd32(mbi, 44), 0, "mmap_length is the ROM's");
        assert_eq!(rd32(mbi, 48), 0x9000);
        assert_eq!(rd32(mbi, 64), load_addr + bl_off as u32);
        assert!(mbi[68..].iter().all(|&b| b == 0));
    }

    #[test]
    fn elf32_kernel_without_modules() {
        let img = elf(
            false,
            EM_386,
            0x20_0010,
            0,
            &[
                Seg { p_type: PT_LOAD, paddr: 0x20_0000, data: vec![0xaa; 0x20], memsz: 0x40, align: 0x1000 },
                Seg { p_type: PT_LOAD, paddr: 0x20_1000, data: vec![0xbb; 0x10], memsz: 0x10, align: 0x1000 },
            ],
        );
        // Put a multiboot header (no address fields) inside the first segment's data.
        let mut img = img;
        let at = img.len() - 0x30;
        assert_eq!(at % 4, 0);
        img[at..at + 12].copy_from_slice(&header(0, &[]));
        let k = LoadedFile { path: "k.elf".into(), data: img };
        let mut f = fw();
        let info = load(&mut f, &k, None, "", &RamLayout::xen(64, None), &mut no_files).unwrap();
        assert_eq!(info.entry, 0x20_0010);
        assert_eq!(info.load_addr, 0x20_0000);
        let buf = f.item_data(keys::KERNEL_DATA).unwrap();
        assert_eq!(&buf[..0x10], &k.data[k.data.len() - 0x30..k.data.len() - 0x20]);
        assert!(buf[0x20..0x40].iter().all(|&b| b == 0));
        assert_eq!(&buf[0x1000..0x1010], &[0xbb; 0x10]);
        assert_eq!(buf.len(), 0x3000);
        let mbi = f.item_data(keys::INITRD_DATA).unwrap();
        assert_eq!(rd32(mbi, 20), 0);
        assert_eq!(cstr(buf, 0x2000), "k.elf ", "QEMU's \"%s %s\" keeps the space");
    }

    #[test]
    fn rejected_images() {
        let layout = RamLayout::xen(64, None);
        // 64-bit ELF.
        let mut img = elf(
            true,
            EM_X86_64,
            0,
            0,
            &[Seg { p_type: PT_LOAD, paddr: 0x10_0000, data: vec![0; 64], memsz: 64, align: 8 }],
        );
        let at = img.len() - 64;
        img[at..at + 12].copy_from_slice(&header(0, &[]));
        let e = load(&mut fw(), &LoadedFile { path: "k64".into(), data: img }, None, "", &layout, &mut no_files)
            .unwrap_err();
        assert!(matches!(e, LoadError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("k64"));
        // Not ELF and no address fields.
        let mut img = vec![0u8; 64];
        img[..12].copy_from_slice(&header(0, &[]));
        let e = load(&mut fw(), &LoadedFile { path: "raw".into(), data: img }, None, "", &layout, &mut no_files)
            .unwrap_err();
        assert!(matches!(e, LoadError::BadImage { .. }), "{e}");
        // a.out: header_addr below load_addr.
        let mut k = aout(0);
        let h = header(FLAG_AOUT_KLUDGE, &[0x1000, 0x2000, 0, 0, 0x2000]);
        k.data[0x40..0x40 + h.len()].copy_from_slice(&h);
        assert!(matches!(load(&mut fw(), &k, None, "", &layout, &mut no_files), Err(LoadError::BadImage { .. })));
        // a.out: load_end beyond the file -> truncated.
        let mut k = aout(0);
        let h = header(FLAG_AOUT_KLUDGE, &[0x10_0040, 0x10_0000, 0x10_2000, 0, 0x10_0000]);
        k.data[0x40..0x40 + h.len()].copy_from_slice(&h);
        let e = load(&mut fw(), &k, None, "", &layout, &mut no_files).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
        // a.out: bss_end below load end.
        let mut k = aout(0);
        let h = header(FLAG_AOUT_KLUDGE, &[0x10_0040, 0x10_0000, 0x10_1000, 0x10_0800, 0x10_0000]);
        k.data[0x40..0x40 + h.len()].copy_from_slice(&h);
        assert!(matches!(load(&mut fw(), &k, None, "", &layout, &mut no_files), Err(LoadError::BadImage { .. })));
        // a.out: huge BSS.
        let k = aout(0xf000_0000);
        assert!(matches!(load(&mut fw(), &k, None, "", &layout, &mut no_files), Err(LoadError::Unsupported { .. })));
        // Doesn't fit in 1 MiB of RAM... use a 2 MiB layout with 1 MiB load and 2 MiB bss.
        let k = aout(0x20_0000);
        let e =
            load(&mut fw(), &k, None, "", &RamLayout { below_4g: 2 << 20, above_4g: 0 }, &mut no_files).unwrap_err();
        assert!(matches!(e, LoadError::KernelTooLarge { .. }), "{e}");
        // Overlapping the MBI area.
        let mut k = aout(0);
        let h = header(FLAG_AOUT_KLUDGE, &[0x8040, 0x8000, 0x9000, 0, 0x8000]);
        k.data[0x40..0x40 + h.len()].copy_from_slice(&h);
        let e = load(&mut fw(), &k, None, "", &layout, &mut no_files).unwrap_err();
        assert!(e.to_string().contains("information area"), "{e}");
        // Missing module names the module.
        let mut read = |p: &Path| LoadedFile::read(p, "multiboot module");
        let e = load(&mut fw(), &aout(0), Some("/nonexistent/mod arg"), "", &layout, &mut read).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/mod"), "{e}");
        // Forced multiboot on a file without the header.
        let e = load(&mut fw(), &LoadedFile { path: "x".into(), data: vec![0; 100] }, None, "", &layout, &mut no_files)
            .unwrap_err();
        assert!(matches!(e, LoadError::WrongFormat { .. }));
    }

    #[test]
    fn module_too_large_for_ram() {
        let mut read = |p: &Path| Ok(LoadedFile { path: p.into(), data: vec![0; 0x10_0000] });
        let e = load(&mut fw(), &aout(0), Some("big"), "", &RamLayout { below_4g: 0x18_0000, above_4g: 0 }, &mut read)
            .unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { what: "multiboot module", .. }), "{e}");
    }
}
