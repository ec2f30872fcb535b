//! Linux bzImage loader: the x86 16-bit boot protocol, as QEMU's
//! `x86_load_linux` applies it.
//!
//! Spec: Linux `Documentation/arch/x86/boot.rst`. The setup sectors
//! (`(setup_sects + 1) * 512` bytes, `setup_sects` 0 meaning 4) go into
//! `SETUP_DATA` with the header patched, the rest of the file into
//! `KERNEL_DATA`, the command line into `CMDLINE_DATA`, the initrd into
//! `INITRD_DATA`; the addresses and sizes into the matching u32 LE keys. The
//! option ROM (`linuxboot_dma.bin`) copies them into the guest and jumps to
//! the 16-bit entry.
//!
//! Layout, by protocol (the kernel must have LOADED_HIGH set):
//!
//! | protocol | setup | command line | kernel |
//! |---|---|---|---|
//! | 2.00, 2.01 | 0x90000 | 0x9A000 - (len + 16) & ~15 | 0x100000 |
//! | >= 2.02 | 0x10000 | 0x20000 | 0x100000 |
//!
//! Header patches, as QEMU: `type_of_loader` = 0xB0; `loadflags` |=
//! CAN_USE_HEAP and `heap_end_ptr` = cmdline - setup - 0x200 (>= 2.01);
//! `cmd_line_ptr` (>= 2.02, else the old 0xA33F magic at 0x20 and offset at
//! 0x22); `ramdisk_image`/`ramdisk_size`; `vid_mode` from the first `vga=`
//! in the command line (`normal`, `ext`, `ask` or a number in C syntax).
//!
//! The initrd goes at `(initrd_max - size) & ~0xFFF`, where `initrd_max` is
//! 0xFFFFFFFF (>= 2.12 with XLF_CAN_BE_LOADED_ABOVE_4G), `initrd_addr_max`
//! (>= 2.03) or 0x37FFFFFF, clamped to `below_4g - 0x28000 - 1`.
//!
//! Where we differ from QEMU:
//!
//! * Protocol < 2.00 and images without LOADED_HIGH (zImage) are refused
//!   (QEMU loads them low).
//! * The command line is checked against the kernel's `cmdline_size`
//!   (>= 2.06; 255 before), and must not contain NUL. QEMU passes any
//!   length and the kernel silently truncates.
//! * `vga=` numbers must be plain C integers (no sign or leading blanks).
//! * A truncated image (setup beyond the end of the file, or, for >= 2.04,
//!   fewer protected-mode bytes than `syssize * 16`) is an error.
//! * The kernel (at 1 MiB) and the initrd must fit in low RAM without
//!   overlapping; QEMU does not check.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use crate::blob::Blob;
use crate::bytes::{le_u16, le_u32};
use crate::items::{keys, FwCfgItems};
use crate::plan::{layout_text, LoadError, LoadedFile, RamLayout};

/// "HdrS" at 0x202.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
const HDRS_OFFSET: usize = 0x202;
const VERSION_OFFSET: usize = 0x206;
/// Where `setup_header` starts in the image.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// How much of the image QEMU reads as "the header" (and patches).
const HEADER_SIZE: usize = 8192;
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// QEMU's boot loader ID (type 0xB, version 0).
pub const TYPE_OF_LOADER_QEMU: u8 = 0xb0;

/// Where QEMU put things, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxInfo {
    pub protocol: u16,
    pub setup_addr: u32,
    pub setup_size: u32,
    pub cmdline_addr: u32,
    pub kernel_addr: u32,
    pub kernel_size: u32,
    /// `(address, size)` of the initrd.
    pub initrd: Option<(u32, u32)>,
}

/// Whether `image` has the Linux boot header magic.
pub fn has_hdrs(image: &[u8]) -> bool {
    le_u32(image, HDRS_OFFSET) == Some(HDRS_MAGIC)
}

/// QEMU's `vga=` handling: the mode for the first "vga=" in `cmdline`.
fn vga_mode(cmdline: &str) -> Result<Option<u16>, String> {
    let Some(pos) = cmdline.find("vga=") else { return Ok(None) };
    let v = cmdline.get(pos + 4..).unwrap_or("");
    if v.starts_with("normal") {
        return Ok(Some(0xffff));
    }
    if v.starts_with("ext") {
        return Ok(Some(0xfffe));
    }
    if v.starts_with("ask") {
        return Ok(Some(0xfffd));
    }
    let tok = v.split(' ').next().unwrap_or("");
    let parsed = if let Some(hex) = tok.strip_prefix("0x").or_else(|| tok.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16)
    } else if tok.len() > 1 && tok.starts_with('0') {
        u32::from_str_radix(tok.get(1..).unwrap_or(""), 8)
    } else {
        tok.parse::<u32>()
    };
    match parsed {
        // QEMU stores the value with a 16-bit store.
        Ok(n) if !tok.contains('+') => Ok(Some(n as u16)),
        _ => Err(tok.to_string()),
    }
}

/// A bzImage whose header passed the checks: its boot protocol, the first
/// 8 KiB (which QEMU patches), the setup header, the setup code (at most
/// 128 KiB, read) and where the protected-mode kernel lies in the file (not
/// read: fw_cfg serves it from the file).
struct Image {
    protocol: u16,
    header: [u8; HEADER_SIZE],
    hdr: setup_header,
    setup_part: Vec<u8>,
    kernel_offset: u64,
    kernel_len: u64,
}

/// Where things go in the guest (see the module docs' table).
struct Addresses {
    real_addr: u32,
    cmdline_addr: u32,
    prot_addr: u32,
    /// The end of the protected-mode kernel.
    kernel_end: u64,
    /// The highest address the initrd may use (exclusive).
    initrd_max: u64,
}

/// The initrd placed: its address, size and content (the whole file).
struct PlacedInitrd {
    addr: u32,
    size: u32,
    data: Blob,
}

/// Loads bzImage `kernel` (and `initrd`) into `fw`'s loader keys.
///
/// # Errors
/// Not a bzImage, too old, truncated, command line too long or with NUL,
/// bad `vga=`, kernel or initrd not fitting in RAM, keys already set.
pub fn load(
    fw: &mut FwCfgItems,
    kernel: &LoadedFile,
    initrd: Option<&LoadedFile>,
    cmdline: &str,
    layout: &RamLayout,
) -> Result<LinuxInfo, LoadError> {
    let path = &kernel.path;
    let mut image = read_image(kernel)?;
    check_cmdline(kernel, &image, cmdline)?;
    let at = plan_addresses(kernel, &image, cmdline, layout)?;
    patch_header(kernel, &mut image, &at, cmdline)?;
    let initrd = initrd.map(|rd| place_initrd(rd, &at, &mut image.hdr)).transpose()?;
    let setup = patched_setup(&image, &at);
    let info = LinuxInfo {
        protocol: image.protocol,
        setup_addr: at.real_addr,
        setup_size: setup.len() as u32,
        cmdline_addr: at.cmdline_addr,
        kernel_addr: at.prot_addr,
        kernel_size: image.kernel_len as u32,
        initrd: initrd.as_ref().map(|rd| (rd.addr, rd.size)),
    };
    let mut body = Blob::new();
    body.push_file(kernel, image.kernel_offset, image.kernel_len)
        .ok_or_else(|| LoadError::Truncated { path: path.clone(), detail: "the protected-mode kernel".into() })?;
    fill(fw, &info, cmdline, initrd, body, setup).map_err(LoadError::fw(path))?;
    Ok(info)
}

/// Checks the header: "HdrS", protocol >= 2.00, LOADED_HIGH, and that the
/// file holds the setup and (>= 2.04) `syssize * 16` protected-mode bytes.
/// Reads the first 8 KiB and the setup code only.
fn read_image(kernel: &LoadedFile) -> Result<Image, LoadError> {
    let path = &kernel.path;
    let img = kernel.head();
    let file_len = kernel.len();
    if !has_hdrs(img) {
        return Err(LoadError::WrongFormat {
            path: path.clone(),
            expected: crate::plan::BootProtocol::Linux,
            reason: "no \"HdrS\" signature at offset 0x202".into(),
        });
    }
    let protocol = le_u16(img, VERSION_OFFSET).unwrap_or(0);
    if protocol < 0x200 {
        return Err(LoadError::Unsupported {
            path: path.clone(),
            reason: format!("boot protocol {}.{:02} is older than 2.00", protocol >> 8, protocol & 0xff),
        });
    }

    // QEMU works on a copy of the first 8 KiB; shorter files leave zeros.
    let mut header = [0u8; HEADER_SIZE];
    let n = img.len().min(HEADER_SIZE);
    if let (Some(dst), Some(src)) = (header.get_mut(..n), img.get(..n)) {
        dst.copy_from_slice(src);
    }
    let hdr: setup_header =
        header.get(setup_header_range()).and_then(setup_header::from_slice).copied().unwrap_or_default();

    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(LoadError::Unsupported {
            path: path.clone(),
            reason: "a zImage (LOADED_HIGH clear) cannot be booted; use a bzImage".into(),
        });
    }
    let setup_sects = if hdr.setup_sects == 0 { 4 } else { usize::from(hdr.setup_sects) };
    let setup_size = (setup_sects + 1) * 512;
    if setup_size as u64 > file_len {
        return Err(LoadError::Truncated {
            path: path.clone(),
            detail: format!("the setup code is {setup_size} bytes but the file has {file_len}"),
        });
    }
    // At most 256 * 512 bytes.
    let setup_part = kernel.read_vec(0, setup_size, "kernel")?;
    let kernel_offset = setup_size as u64;
    let kernel_len = file_len - kernel_offset;
    let syssize = u64::from(hdr.syssize) * 16;
    if protocol >= 0x204 && syssize > kernel_len {
        return Err(LoadError::Truncated {
            path: path.clone(),
            detail: format!(
                "the header says {syssize} bytes of protected-mode code follow the setup, the file has {kernel_len}"
            ),
        });
    }
    Ok(Image { protocol, header, hdr, setup_part, kernel_offset, kernel_len })
}

fn setup_header_range() -> std::ops::Range<usize> {
    SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()
}

/// No NUL, and at most `cmdline_size` bytes (>= 2.06; 255 before).
fn check_cmdline(kernel: &LoadedFile, image: &Image, cmdline: &str) -> Result<(), LoadError> {
    let path = &kernel.path;
    if cmdline.contains('\0') {
        return Err(LoadError::CmdlineNul { path: path.clone() });
    }
    let max_cmdline = if image.protocol >= 0x206 { u64::from(image.hdr.cmdline_size) } else { 255 };
    if cmdline.len() as u64 > max_cmdline {
        return Err(LoadError::CmdlineTooLong { path: path.clone(), len: cmdline.len(), max: max_cmdline });
    }
    Ok(())
}

/// The addresses by protocol, the kernel checked to fit in low RAM, and
/// QEMU's `initrd_max`.
fn plan_addresses(
    kernel: &LoadedFile,
    image: &Image,
    cmdline: &str,
    layout: &RamLayout,
) -> Result<Addresses, LoadError> {
    let protocol = image.protocol;
    let kernel_len = image.kernel_len;
    // LOADED_HIGH is set (read_image checks).
    let aligned_cmdline = ((cmdline.len() as u32) + 16) & !15;
    let (real_addr, cmdline_addr, prot_addr): (u32, u32, u32) =
        if protocol < 0x202 { (0x90000, 0x9a000 - aligned_cmdline, 0x10_0000) } else { (0x10000, 0x20000, 0x10_0000) };
    let kernel_end = u64::from(prot_addr) + kernel_len;
    if kernel_end > layout.below_4g {
        return Err(LoadError::KernelTooLarge {
            path: kernel.path.clone(),
            what: "the protected-mode kernel",
            addr: u64::from(prot_addr),
            size: kernel_len,
            layout: layout_text(layout),
        });
    }

    let hdr = &image.hdr;
    let mut initrd_max: u64 = if protocol >= 0x20c && hdr.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0 {
        u64::from(u32::MAX)
    } else if protocol >= 0x203 {
        u64::from(hdr.initrd_addr_max)
    } else {
        0x37ff_ffff
    };
    let ceiling = layout.initrd_ceiling().unwrap_or(0);
    if initrd_max > ceiling {
        initrd_max = ceiling;
    }
    Ok(Addresses { real_addr, cmdline_addr, prot_addr, kernel_end, initrd_max })
}

/// QEMU's header patches: `cmd_line_ptr`, `vid_mode` from `vga=`,
/// `type_of_loader`, and the heap (see the module docs).
fn patch_header(kernel: &LoadedFile, image: &mut Image, at: &Addresses, cmdline: &str) -> Result<(), LoadError> {
    let protocol = image.protocol;
    let hdr = &mut image.hdr;
    if protocol >= 0x202 {
        hdr.cmd_line_ptr = at.cmdline_addr;
    }
    match vga_mode(cmdline) {
        Ok(Some(mode)) => hdr.vid_mode = mode,
        Ok(None) => {}
        Err(value) => return Err(LoadError::BadVgaMode { path: kernel.path.clone(), value }),
    }
    hdr.type_of_loader = TYPE_OF_LOADER_QEMU;
    if protocol >= 0x201 {
        hdr.loadflags |= CAN_USE_HEAP;
        hdr.heap_end_ptr = (at.cmdline_addr - at.real_addr - 0x200) as u16;
    }
    Ok(())
}

/// Puts the initrd as high as `initrd_max` allows, page-aligned, above the
/// kernel, and records it in the header.
fn place_initrd(rd: &LoadedFile, at: &Addresses, hdr: &mut setup_header) -> Result<PlacedInitrd, LoadError> {
    let initrd_max = at.initrd_max;
    let size = rd.len();
    let addr = initrd_max.checked_sub(size).filter(|_| size < initrd_max).map(|a| a & !0xfff);
    let available = initrd_max.saturating_sub(at.kernel_end);
    let Some(addr) = addr.filter(|&a| a >= at.kernel_end) else {
        return Err(LoadError::InitrdTooLarge {
            what: "initrd",
            path: rd.path.clone(),
            size,
            available,
            ceiling: initrd_max,
        });
    };
    // addr < initrd_max <= u32::MAX and size < initrd_max.
    let (addr, size) = (addr as u32, size as u32);
    hdr.ramdisk_image = addr;
    hdr.ramdisk_size = size;
    let mut data = Blob::new();
    data.push_file(rd, 0, rd.len())
        .ok_or_else(|| LoadError::Truncated { path: rd.path.clone(), detail: "initrd".into() })?;
    Ok(PlacedInitrd { addr, size, data })
}

/// The setup sectors with QEMU's patched header (and, before 2.02, the old
/// command-line magic at 0x20).
fn patched_setup(image: &Image, at: &Addresses) -> Vec<u8> {
    let mut header = image.header;
    if let Some(dst) = header.get_mut(setup_header_range()) {
        dst.copy_from_slice(image.hdr.as_slice());
    }
    if image.protocol < 0x202 {
        let off = (at.cmdline_addr - at.real_addr) as u16;
        if let Some(dst) = header.get_mut(0x20..0x24) {
            dst.copy_from_slice(&[0x3f, 0xa3, off as u8, (off >> 8) as u8]);
        }
    }
    let mut setup = image.setup_part.clone();
    let patched = setup.len().min(HEADER_SIZE);
    if let (Some(dst), Some(src)) = (setup.get_mut(..patched), header.get(..patched)) {
        dst.copy_from_slice(src);
    }
    setup
}

/// Writes the loader keys QEMU sets, in QEMU's order.
fn fill(
    fw: &mut FwCfgItems,
    info: &LinuxInfo,
    cmdline: &str,
    initrd: Option<PlacedInitrd>,
    kernel_body: Blob,
    setup: Vec<u8>,
) -> Result<(), crate::items::FwCfgError> {
    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    fw.add_u32(keys::CMDLINE_ADDR, info.cmdline_addr)?;
    fw.add_u32(keys::CMDLINE_SIZE, cmd.len() as u32)?;
    fw.add_bytes(keys::CMDLINE_DATA, cmd)?;
    if let Some(rd) = initrd {
        fw.add_u32(keys::INITRD_ADDR, rd.addr)?;
        fw.add_u32(keys::INITRD_SIZE, rd.size)?;
        fw.add_blob(keys::INITRD_DATA, rd.data)?;
    }
    fw.add_u32(keys::KERNEL_ADDR, info.kernel_addr)?;
    fw.add_u32(keys::KERNEL_SIZE, info.kernel_size)?;
    fw.add_blob(keys::KERNEL_DATA, kernel_body)?;
    fw.add_u32(keys::SETUP_ADDR, info.setup_addr)?;
    fw.add_u32(keys::SETUP_SIZE, info.setup_size)?;
    fw.add_bytes(keys::SETUP_DATA, setup)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::items::FwCfgOptions;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// Debian's bzImage, fetched (and cached) by `tests/guest/fetch-kernel`.
    pub(crate) fn kernel_path() -> PathBuf {
        static PATH: OnceLock<PathBuf> = OnceLock::new();
        PATH.get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/guest/fetch-kernel");
            let out = std::process::Command::new(script)
                .output()
                .unwrap_or_else(|e| panic!("running {script}: {e}; the loader tests need Debian's kernel"));
            assert!(
                out.status.success(),
                "{script} failed (the loader tests need Debian's kernel): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
    }

    fn debian() -> LoadedFile {
        LoadedFile::open(&kernel_path(), "kernel").unwrap()
    }

    fn fw() -> FwCfgItems {
        FwCfgItems::new(&FwCfgOptions::default()).unwrap()
    }

    fn rd(len: usize) -> LoadedFile {
        LoadedFile::from_bytes("initrd.img", vec![0x5a; len])
    }

    fn u32_key(fw: &FwCfgItems, key: u16) -> u32 {
        u32::from_le_bytes(fw.item_data(key).unwrap().try_into().unwrap())
    }

    #[test]
    fn debian_bzimage_keys_and_patched_header() {
        let k = debian();
        let data = k.test_bytes();
        let img = &data;
        let layout = RamLayout::xen(256, None);
        let mut f = fw();
        let cmdline = "console=ttyS0 vga=0x317 quiet";
        let info = load(&mut f, &k, Some(&rd(1_000_000)), cmdline, &layout).unwrap();
        let protocol = u16::from_le_bytes([img[0x206], img[0x207]]);
        assert!(protocol >= 0x20c, "a modern kernel");
        assert_eq!(info.protocol, protocol);
        let sects = if img[0x1f1] == 0 { 4 } else { img[0x1f1] as usize };
        let setup_size = (sects + 1) * 512;

        assert_eq!(u32_key(&f, keys::SETUP_ADDR), 0x10000);
        assert_eq!(u32_key(&f, keys::SETUP_SIZE) as usize, setup_size);
        assert_eq!(u32_key(&f, keys::KERNEL_ADDR), 0x100000);
        assert_eq!(u32_key(&f, keys::KERNEL_SIZE) as usize, img.len() - setup_size);
        assert_eq!(f.item_vec(keys::KERNEL_DATA).unwrap(), &img[setup_size..]);
        assert!(f.item_data(keys::KERNEL_DATA).is_none(), "served from the file, not held in memory");
        assert_eq!(u32_key(&f, keys::CMDLINE_ADDR), 0x20000);
        assert_eq!(u32_key(&f, keys::CMDLINE_SIZE) as usize, cmdline.len() + 1);
        assert_eq!(f.item_data(keys::CMDLINE_DATA).unwrap(), format!("{cmdline}\0").as_bytes());

        // initrd: below min(initrd_addr_max (or 4G), 256 MiB - 0x28000), page aligned.
        let xlf = u16::from_le_bytes([img[0x236], img[0x237]]);
        let addr_max = u32::from_le_bytes(img[0x22c..0x230].try_into().unwrap()) as u64;
        let max = if xlf & 2 != 0 { 0xffff_ffff } else { addr_max };
        let ceiling = max.min((256 << 20) - 0x28000 - 1);
        let want = ((ceiling - 1_000_000) & !0xfff) as u32;
        assert_eq!(want, 0x0fee_3000, "256 MiB - 0x28000 - 1 - 1e6 bytes, page aligned");
        assert_eq!(u32_key(&f, keys::INITRD_ADDR), want);
        assert_eq!(u32_key(&f, keys::INITRD_SIZE), 1_000_000);
        assert_eq!(f.item_vec(keys::INITRD_DATA).unwrap().len(), 1_000_000);
        assert_eq!(info.initrd, Some((want, 1_000_000)));

        // The setup blob: the file's setup sectors with exactly QEMU's patches.
        let setup = f.item_data(keys::SETUP_DATA).unwrap();
        assert_eq!(setup.len(), setup_size);
        let mut expect = img[..setup_size].to_vec();
        expect[0x1fa..0x1fc].copy_from_slice(&0x317u16.to_le_bytes());
        expect[0x210] = 0xb0;
        expect[0x211] |= 0x80;
        expect[0x218..0x21c].copy_from_slice(&want.to_le_bytes());
        expect[0x21c..0x220].copy_from_slice(&1_000_000u32.to_le_bytes());
        expect[0x224..0x226].copy_from_slice(&0xfe00u16.to_le_bytes());
        expect[0x228..0x22c].copy_from_slice(&0x20000u32.to_le_bytes());
        assert_eq!(setup, &expect[..], "only the documented fields differ from the file");
        assert_ne!(img[0x210], 0xb0, "the file itself is not QEMU-typed");
    }

    #[test]
    fn without_initrd_and_vga_the_fields_stay() {
        let k = debian();
        let data = k.test_bytes();
        let mut f = fw();
        let info = load(&mut f, &k, None, "", &RamLayout::xen(256, None)).unwrap();
        assert_eq!(info.initrd, None);
        assert!(f.item_data(keys::INITRD_ADDR).is_none());
        let setup = f.item_data(keys::SETUP_DATA).unwrap();
        assert_eq!(setup[0x1fa..0x1fc], data[0x1fa..0x1fc], "vid_mode untouched");
        assert_eq!(setup[0x218..0x220], data[0x218..0x220], "ramdisk fields untouched");
        assert_eq!(f.item_data(keys::CMDLINE_DATA).unwrap(), b"\0");
    }

    #[test]
    fn cmdline_longer_than_cmdline_size_is_refused() {
        let k = debian();
        let max = u32::from_le_bytes(k.head()[0x238..0x23c].try_into().unwrap()) as usize;
        assert!(max >= 255);
        let ok = "x".repeat(max);
        load(&mut fw(), &k, None, &ok, &RamLayout::xen(256, None)).unwrap();
        let long = "x".repeat(max + 1);
        let e = load(&mut fw(), &k, None, &long, &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::CmdlineTooLong { len, max: m, .. } if len == max + 1 && m == max as u64), "{e}");
        assert!(e.to_string().contains("vmlinuz"), "{e}");
        let e = load(&mut fw(), &k, None, "a\0b", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::CmdlineNul { .. }));
    }

    #[test]
    fn truncated_kernels_are_refused() {
        let k = debian();
        let data = k.test_bytes();
        let sects = if data[0x1f1] == 0 { 4 } else { data[0x1f1] as usize };
        let setup_size = (sects + 1) * 512;
        let cut = LoadedFile::from_bytes(k.path.clone(), data[..setup_size - 1].to_vec());
        let e = load(&mut fw(), &cut, None, "", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
        let cut = LoadedFile::from_bytes(k.path.clone(), data[..data.len() / 2].to_vec());
        let e = load(&mut fw(), &cut, None, "", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn too_large_initrd_and_too_small_ram() {
        let k = debian();
        let layout = RamLayout::xen(64, None);
        // Exactly what fits: up to the ceiling, above the kernel.
        let ceiling = (64u64 << 20) - 0x28000 - 1;
        let sects = if k.head()[0x1f1] == 0 { 4 } else { k.head()[0x1f1] as usize };
        let kernel_end = 0x100000 + (k.len() as usize - (sects + 1) * 512) as u64;
        let e = load(&mut fw(), &k, Some(&rd((ceiling - kernel_end + 0x2000) as usize)), "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("initrd.img"), "{e}");
        let e = load(&mut fw(), &k, Some(&rd(70 << 20)), "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { .. }), "{e}");
        load(&mut fw(), &k, Some(&rd(16 << 20)), "", &layout).unwrap();
        let e = load(&mut fw(), &k, None, "", &RamLayout::xen(4, None)).unwrap_err();
        assert!(matches!(e, LoadError::KernelTooLarge { .. }), "{e}");
    }

    #[test]
    fn old_protocols_and_zimages() {
        let k = debian();
        let mut data = k.test_bytes();
        data[0x206..0x208].copy_from_slice(&0x1ffu16.to_le_bytes());
        let old = LoadedFile::from_bytes(k.path.clone(), data);
        let e = load(&mut fw(), &old, None, "", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("1.ff") || e.to_string().contains("older than 2.00"), "{e}");
        let mut data = k.test_bytes();
        data[0x211] &= !1;
        let z = LoadedFile::from_bytes(k.path.clone(), data);
        let e = load(&mut fw(), &z, None, "", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn protocol_2_01_layout_and_old_cmdline_magic() {
        // A synthetic 2.01 image: LOADED_HIGH, 4 setup sectors, 4 KiB kernel.
        let mut img = vec![0u8; 5 * 512 + 4096];
        img[0x1f1] = 0;
        img[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x201u16.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        let k = LoadedFile::from_bytes("old.bz", img);
        let mut f = fw();
        let cmdline = "root=/dev/sda";
        let info = load(&mut f, &k, Some(&rd(4096)), cmdline, &RamLayout::xen(128, None)).unwrap();
        let aligned = (cmdline.len() as u32 + 16) & !15;
        assert_eq!(info.setup_addr, 0x90000);
        assert_eq!(info.cmdline_addr, 0x9a000 - aligned);
        assert_eq!(info.kernel_addr, 0x100000);
        let setup = f.item_data(keys::SETUP_DATA).unwrap();
        assert_eq!(&setup[0x20..0x22], &[0x3f, 0xa3]);
        assert_eq!(u16::from_le_bytes([setup[0x22], setup[0x23]]) as u32, 0xa000 - aligned);
        assert_eq!(&setup[0x228..0x22c], &[0, 0, 0, 0], "no cmd_line_ptr before 2.02");
        assert_eq!(u16::from_le_bytes([setup[0x224], setup[0x225]]) as u32, 0xa000 - aligned - 0x200);
        // initrd_max 0x37ffffff for < 2.03, clamped to RAM.
        let ceiling = (128u64 << 20) - 0x28000 - 1;
        assert_eq!(info.initrd, Some((((ceiling - 4096) & !0xfff) as u32, 4096)));
        // 255-byte command line limit before 2.06.
        let e = load(&mut fw(), &k, None, &"y".repeat(256), &RamLayout::xen(128, None)).unwrap_err();
        assert!(matches!(e, LoadError::CmdlineTooLong { max: 255, .. }));
    }

    #[test]
    fn vga_parameter() {
        assert_eq!(vga_mode("quiet"), Ok(None));
        assert_eq!(vga_mode("vga=normal"), Ok(Some(0xffff)));
        assert_eq!(vga_mode("a vga=ext b"), Ok(Some(0xfffe)));
        assert_eq!(vga_mode("vga=ask"), Ok(Some(0xfffd)));
        assert_eq!(vga_mode("vga=791 x"), Ok(Some(791)));
        assert_eq!(vga_mode("vga=0x31A"), Ok(Some(0x31a)));
        assert_eq!(vga_mode("vga=017"), Ok(Some(15)));
        assert_eq!(vga_mode("vga=0"), Ok(Some(0)));
        assert_eq!(vga_mode("vga=0x10000"), Ok(Some(0)), "16-bit store");
        assert!(vga_mode("vga=").is_err());
        assert!(vga_mode("vga=12,3").is_err());
        assert!(vga_mode("vga=+1").is_err());
        let k = debian();
        let e = load(&mut fw(), &k, None, "vga=bogus", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::BadVgaMode { .. }), "{e}");
    }

    #[test]
    fn keys_already_set_are_an_error() {
        let k = debian();
        let mut f = fw();
        load(&mut f, &k, None, "", &RamLayout::xen(256, None)).unwrap();
        let e = load(&mut f, &k, None, "", &RamLayout::xen(256, None)).unwrap_err();
        assert!(matches!(e, LoadError::FwCfg { .. }), "{e}");
    }
}
