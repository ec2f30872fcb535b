//! PVH loader: an ELF kernel entered through the Xen PVH boot ABI, as
//! QEMU's `load_elfboot` and `pvh.bin` do it.
//!
//! Spec: Xen `include/public/arch-x86/hvm/start_info.h` and
//! `include/public/elfnote.h` (`XEN_ELFNOTE_PHYS32_ENTRY` = 18, owner
//! "Xen"). The 32-bit physical entry point comes from that note (QEMU reads
//! a word of the ELF class's size and stores it with a 32-bit store, so we
//! take the low 32 bits of the descriptor).
//!
//! QEMU writes the PT_LOAD segments straight into guest RAM (by
//! `p_paddr`). So do we, through the caller: [`PvhInfo::segments`] lists
//! `(guest physical address, bytes)`, each being the segment's file bytes
//! followed by zeros up to `p_memsz`; the caller writes them before the
//! guest runs (and on every guest reset). fw_cfg gets exactly QEMU's keys,
//! so QEMU's `pvh.bin` works unchanged:
//!
//! | key | value |
//! |---|---|
//! | KERNEL_ENTRY | the PVH entry |
//! | KERNEL_ADDR, KERNEL_SIZE | lowest segment address, highest end - lowest (no KERNEL_DATA) |
//! | CMDLINE_SIZE, CMDLINE_DATA | strlen + 1, the NUL-terminated command line |
//! | SETUP_SIZE, SETUP_DATA | 8192, the first 8 KiB of the file (zero padded) |
//! | INITRD_ADDR/SIZE/DATA | at (below_4g - 0x28000 - 1 - size) & ~0xFFF |
//!
//! The segments and the initrd are ranges of the open files, streamed into
//! guest memory (or served through fw_cfg) in bounded pieces; only the ELF
//! headers, notes and the first 8 KiB are read at start-up.
//!
//! Where we differ from QEMU: the note must be owned by "Xen" (QEMU matches
//! the type alone); an entry above 4 GiB is an error (QEMU truncates);
//! segments must lie in guest RAM and total at most
//! [`crate::plan::MAX_FILE_SIZE`]; the initrd must not overlap them; the
//! command line must be shorter than 4096 bytes, the buffer `pvh.bin` copies
//! it into.

use std::path::Path;

use crate::blob::Blob;
use crate::bytes::le_u32;
use crate::elf::{self, EM_386, EM_X86_64, PT_LOAD};
use crate::items::{keys, FwCfgItems};
use crate::plan::BootProtocol;
use crate::plan::{layout_text, LoadError, LoadedFile, RamLayout, MAX_FILE_SIZE};

/// `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The ELF `e_flags` bits QEMU refuses for PVH (multiboot-style load address flags).
const BAD_FLAGS: u32 = 0x0001_0004;
/// How much of the file QEMU serves as SETUP_DATA.
const SETUP_SIZE: usize = 8192;
/// The command-line buffer of `pvh.bin`.
pub const MAX_CMDLINE: usize = 4095;

/// What was loaded.
#[derive(Debug, Clone)]
pub struct PvhInfo {
    pub entry: u32,
    pub low: u32,
    pub high: u64,
    /// `(guest physical address, content)` to write before the guest runs.
    pub segments: Vec<(u64, Blob)>,
    pub initrd: Option<(u32, u32)>,
}

fn bad(path: &Path, detail: impl Into<String>) -> LoadError {
    LoadError::BadImage { path: path.to_path_buf(), detail: detail.into() }
}

/// The PT_LOAD segments planned: `[low, high)` and the bytes to write.
struct Segments {
    low32: u32,
    size32: u32,
    high: u64,
    writes: Vec<(u64, Blob)>,
}

/// Loads PVH ELF `kernel` (and `initrd`).
///
/// # Errors
/// Not an ELF, unsupported flags or machine, no PVH note, a zero entry,
/// truncated segments, segments outside RAM, initrd too large, command line
/// too long, keys already set.
pub fn load(
    fw: &mut FwCfgItems,
    kernel: &LoadedFile,
    initrd: Option<&LoadedFile>,
    cmdline: &str,
    layout: &RamLayout,
) -> Result<PvhInfo, LoadError> {
    let path = kernel.path.as_path();
    let img = kernel.head();
    let (e, entry) = parse_entry(kernel)?;
    if cmdline.contains('\0') {
        return Err(LoadError::CmdlineNul { path: path.to_path_buf() });
    }
    if cmdline.len() > MAX_CMDLINE {
        return Err(LoadError::CmdlineTooLong {
            path: path.to_path_buf(),
            len: cmdline.len(),
            max: MAX_CMDLINE as u64,
        });
    }
    let segs = plan_segments(kernel, &e, layout)?;
    let initrd = initrd.map(|rd| place_initrd(rd, &segs, layout)).transpose()?;
    let initrd_info = initrd.as_ref().map(|(addr, size, _)| (*addr, *size));

    let mut setup = vec![0u8; SETUP_SIZE];
    let n = img.len().min(SETUP_SIZE);
    if let (Some(d), Some(s)) = (setup.get_mut(..n), img.get(..n)) {
        d.copy_from_slice(s);
    }
    fill(fw, entry, &segs, cmdline, setup, initrd).map_err(LoadError::fw(path))?;
    Ok(PvhInfo { entry, low: segs.low32, high: segs.high, segments: segs.writes, initrd: initrd_info })
}

/// The ELF headers checked for PVH (flags, x86, the entry note) and the
/// 32-bit entry point.
fn parse_entry(kernel: &LoadedFile) -> Result<(elf::Elf, u32), LoadError> {
    let path = kernel.path.as_path();
    let e = elf::parse(kernel).map_err(|err| match err {
        elf::ElfError::NotElf => {
            LoadError::WrongFormat { path: path.to_path_buf(), expected: BootProtocol::Pvh, reason: err.to_string() }
        }
        elf::ElfError::Truncated(_) => LoadError::Truncated { path: path.to_path_buf(), detail: err.to_string() },
        _ => bad(path, err.to_string()),
    })?;
    if e.flags & BAD_FLAGS != 0 {
        return Err(LoadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("ELF flags {:#x} are not supported for PVH boot", e.flags),
        });
    }
    if e.machine != EM_386 && e.machine != EM_X86_64 {
        return Err(LoadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("ELF machine {} is not x86", e.machine),
        });
    }
    let desc = elf::find_note(kernel, &e, b"Xen", XEN_ELFNOTE_PHYS32_ENTRY)
        .map_err(|err| LoadError::Truncated { path: path.to_path_buf(), detail: err.to_string() })?
        .ok_or_else(|| bad(path, "an uncompressed (ELF) kernel needs a XEN_ELFNOTE_PHYS32_ENTRY note for PVH boot"))?;
    let entry = match (le_u32(&desc, 0), desc.get(4..8)) {
        (Some(lo), Some(hi)) if e.class64 && hi != [0, 0, 0, 0] => {
            return Err(bad(
                path,
                format!("PVH entry {:#x} is above 4 GiB", u64::from(lo) | u64::from(le_u32(hi, 0).unwrap_or(0)) << 32),
            ));
        }
        (Some(lo), _) => lo,
        (None, _) => return Err(bad(path, "the PVH entry note is shorter than 4 bytes")),
    };
    if entry == 0 {
        return Err(bad(path, "the PVH entry point is 0"));
    }
    Ok((e, entry))
}

/// Segments: `[low, high)` over all PT_LOAD headers, as QEMU's `load_elf`,
/// each checked to fit in RAM; the bytes are file bytes then zeros up to
/// `p_memsz`.
fn plan_segments(kernel: &LoadedFile, e: &elf::Elf, layout: &RamLayout) -> Result<Segments, LoadError> {
    let path = kernel.path.as_path();
    let loads: Vec<_> = e.phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
    let low = loads.iter().map(|p| p.paddr).min().ok_or_else(|| bad(path, "the ELF file has no PT_LOAD segment"))?;
    let mut high = low;
    let mut total: u64 = 0;
    for p in &loads {
        if p.filesz > p.memsz {
            return Err(bad(path, format!("segment at {:#x} has more file bytes than memory bytes", p.paddr)));
        }
        total = total.saturating_add(p.memsz);
        if total > MAX_FILE_SIZE {
            return Err(LoadError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("the segments need more than {MAX_FILE_SIZE} bytes"),
            });
        }
        if !layout.contains(p.paddr, p.memsz) {
            return Err(LoadError::KernelTooLarge {
                path: path.to_path_buf(),
                what: "an ELF segment",
                addr: p.paddr,
                size: p.memsz,
                layout: layout_text(layout),
            });
        }
        high = high.max(p.paddr + p.memsz);
    }
    let low32 = u32::try_from(low).map_err(|_| bad(path, format!("the lowest segment {low:#x} is above 4 GiB")))?;
    let size32 = u32::try_from(high - low).map_err(|_| bad(path, "the segments span more than 4 GiB"))?;
    let mut writes = Vec::new();
    for p in &loads {
        let truncated = |err: elf::ElfError| LoadError::Truncated { path: path.to_path_buf(), detail: err.to_string() };
        elf::check_segment(kernel, p).map_err(truncated)?;
        if p.memsz == 0 {
            continue;
        }
        // Served from the file when written (no copy of the segment).
        let mut content = Blob::new();
        content.push_file(kernel, p.offset, p.filesz).ok_or_else(|| truncated(elf::ElfError::Truncated("segment")))?;
        content.pad_to(p.memsz);
        writes.push((p.paddr, content));
    }
    Ok(Segments { low32, size32, high, writes })
}

/// The initrd at the top of low RAM (QEMU's ceiling), page-aligned, not
/// overlapping the segments: `(addr, size, bytes)`.
fn place_initrd(rd: &LoadedFile, segs: &Segments, layout: &RamLayout) -> Result<(u32, u32, Blob), LoadError> {
    let size = rd.len();
    let ceiling = layout.initrd_ceiling().unwrap_or(0);
    let addr = ceiling.checked_sub(size).filter(|_| size < ceiling).map(|a| a & !0xfff);
    let (low, high) = (u64::from(segs.low32), segs.high);
    // Must not overlap the segments.
    let addr = addr.filter(|&a| a >= high || a.saturating_add(size) <= low);
    let Some(addr) = addr else {
        return Err(LoadError::InitrdTooLarge {
            what: "initrd",
            path: rd.path.clone(),
            size,
            available: ceiling.saturating_sub(high),
            ceiling,
        });
    };
    let mut data = Blob::new();
    data.push_file(rd, 0, size)
        .ok_or_else(|| LoadError::Truncated { path: rd.path.clone(), detail: "initrd".into() })?;
    Ok((addr as u32, size as u32, data))
}

/// Writes the keys QEMU's `pvh.bin` reads, in QEMU's order.
fn fill(
    fw: &mut FwCfgItems,
    entry: u32,
    segs: &Segments,
    cmdline: &str,
    setup: Vec<u8>,
    initrd: Option<(u32, u32, Blob)>,
) -> Result<(), crate::items::FwCfgError> {
    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    fw.add_u32(keys::KERNEL_ENTRY, entry)?;
    fw.add_u32(keys::KERNEL_ADDR, segs.low32)?;
    fw.add_u32(keys::KERNEL_SIZE, segs.size32)?;
    fw.add_u32(keys::CMDLINE_SIZE, cmd.len() as u32)?;
    fw.add_bytes(keys::CMDLINE_DATA, cmd)?;
    fw.add_u32(keys::SETUP_SIZE, SETUP_SIZE as u32)?;
    fw.add_bytes(keys::SETUP_DATA, setup)?;
    if let Some((addr, size, data)) = initrd {
        fw.add_u32(keys::INITRD_ADDR, addr)?;
        fw.add_u32(keys::INITRD_SIZE, size)?;
        fw.add_blob(keys::INITRD_DATA, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::build::{elf, note, Seg};
    use crate::elf::PT_NOTE;
    use crate::items::FwCfgOptions;

    fn fw() -> FwCfgItems {
        FwCfgItems::new(&FwCfgOptions::default()).unwrap()
    }

    fn u32_key(fw: &FwCfgItems, key: u16) -> u32 {
        u32::from_le_bytes(fw.item_data(key).unwrap().try_into().unwrap())
    }

    /// A vmlinux-like PVH kernel: two PT_LOADs and a PT_NOTE whose PVH
    /// descriptor is 4 bytes (as Linux emits it) even in ELF64.
    fn kernel(class64: bool, entry_desc: &[u8], note_name: &str) -> LoadedFile {
        let notes = [note("Xen", 6, b"linux\0"), note(note_name, XEN_ELFNOTE_PHYS32_ENTRY, entry_desc)].concat();
        let img = elf(
            class64,
            if class64 { EM_X86_64 } else { EM_386 },
            0xffff_ffff_8100_0000,
            0,
            &[
                Seg { p_type: PT_LOAD, paddr: 0x100_0000, data: vec![0x11; 0x300], memsz: 0x1000, align: 0x20_0000 },
                Seg { p_type: PT_NOTE, paddr: 0, data: notes, memsz: 0, align: 4 },
                Seg { p_type: PT_LOAD, paddr: 0x100_2000, data: vec![0x22; 0x10], memsz: 0x10, align: 0x1000 },
            ],
        );
        LoadedFile::from_bytes("/boot/vmlinux", img)
    }

    #[test]
    fn elf64_and_elf32_pvh_keys_and_segments() {
        for class64 in [true, false] {
            let k = kernel(class64, &0x100_0040u32.to_le_bytes(), "Xen");
            let mut f = fw();
            let rd = LoadedFile::from_bytes("rd", vec![7; 5000]);
            let info = load(&mut f, &k, Some(&rd), "console=hvc0", &RamLayout::xen(128, None)).unwrap();
            assert_eq!(info.entry, 0x100_0040);
            assert_eq!(u32_key(&f, keys::KERNEL_ENTRY), 0x100_0040);
            assert_eq!(u32_key(&f, keys::KERNEL_ADDR), 0x100_0000);
            assert_eq!(u32_key(&f, keys::KERNEL_SIZE), 0x2010);
            assert!(f.item_data(keys::KERNEL_DATA).is_none(), "PVH has no KERNEL_DATA");
            assert!(f.item_data(keys::CMDLINE_ADDR).is_none(), "nor CMDLINE_ADDR");
            assert_eq!(u32_key(&f, keys::CMDLINE_SIZE), 13);
            assert_eq!(f.item_data(keys::CMDLINE_DATA).unwrap(), b"console=hvc0\0");
            assert_eq!(u32_key(&f, keys::SETUP_SIZE), 8192);
            let setup = f.item_data(keys::SETUP_DATA).unwrap();
            assert_eq!(setup.len(), 8192);
            let kd = k.test_bytes();
            assert_eq!(&setup[..kd.len()], &kd[..]);
            assert!(setup[kd.len()..].iter().all(|&b| b == 0));
            let ceiling = (128u64 << 20) - 0x28000 - 1;
            let addr = ((ceiling - 5000) & !0xfff) as u32;
            assert_eq!(u32_key(&f, keys::INITRD_ADDR), addr);
            assert_eq!(u32_key(&f, keys::INITRD_SIZE), 5000);
            assert_eq!(f.item_vec(keys::INITRD_DATA).unwrap(), &[7; 5000][..]);
            // Segments: file bytes then zeroed BSS, by p_paddr.
            assert_eq!(info.segments.len(), 2);
            assert_eq!(info.segments[0].0, 0x100_0000);
            let seg0 = info.segments[0].1.to_vec().unwrap();
            assert_eq!(seg0.len(), 0x1000);
            assert_eq!(&seg0[..0x300], &[0x11; 0x300][..]);
            assert!(seg0[0x300..].iter().all(|&b| b == 0));
            assert!(info.segments[0].1.as_bytes().is_none(), "served from the file");
            assert_eq!(info.segments[1].0, 0x100_2000);
            assert_eq!(info.segments[1].1.to_vec().unwrap(), vec![0x22; 0x10]);
        }
    }

    #[test]
    fn eight_byte_descriptor_low_half_is_the_entry() {
        let k = kernel(true, &0x100_0040u64.to_le_bytes(), "Xen");
        assert_eq!(load(&mut fw(), &k, None, "", &RamLayout::xen(128, None)).unwrap().entry, 0x100_0040);
        let k = kernel(true, &0x1_0000_0040u64.to_le_bytes(), "Xen");
        assert!(matches!(load(&mut fw(), &k, None, "", &RamLayout::xen(128, None)), Err(LoadError::BadImage { .. })));
    }

    #[test]
    fn pvh_errors() {
        let layout = RamLayout::xen(128, None);
        let e = load(&mut fw(), &kernel(true, &0u32.to_le_bytes(), "Xen"), None, "", &layout).unwrap_err();
        assert!(e.to_string().contains("entry point is 0"), "{e}");
        let e = load(&mut fw(), &kernel(true, &0x100_0040u32.to_le_bytes(), "GNU"), None, "", &layout).unwrap_err();
        assert!(e.to_string().contains("XEN_ELFNOTE_PHYS32_ENTRY"), "{e}");
        assert!(e.to_string().contains("/boot/vmlinux"), "{e}");
        let e = load(&mut fw(), &kernel(true, &[1, 2], "Xen"), None, "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::BadImage { .. }), "{e}");
        // Truncated: cut inside the first segment's data.
        let k = kernel(true, &0x100_0040u32.to_le_bytes(), "Xen");
        let mut kd = k.test_bytes();
        kd.truncate(kd.len() - 0x20);
        let k = LoadedFile::from_bytes(k.path.clone(), kd);
        let e = load(&mut fw(), &k, None, "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { .. }), "{e}");
        // Segments outside RAM.
        let k = kernel(true, &0x100_0040u32.to_le_bytes(), "Xen");
        let e = load(&mut fw(), &k, None, "", &RamLayout::xen(16, None)).unwrap_err();
        assert!(matches!(e, LoadError::KernelTooLarge { .. }), "{e}");
        // Bad flags.
        let img = elf(false, EM_386, 0, 0x10000, &[]);
        let e = load(&mut fw(), &LoadedFile::from_bytes("f", img), None, "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::Unsupported { .. }), "{e}");
        // Initrd too large for the space above the segments.
        let rd = LoadedFile::from_bytes("big.rd", vec![0; (128 << 20) - 0x28000 - 0x100_1000]);
        let e = load(&mut fw(), &k, Some(&rd), "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("big.rd"));
        // Command line over pvh.bin's buffer.
        let e = load(&mut fw(), &k, None, &"c".repeat(4096), &layout).unwrap_err();
        assert!(matches!(e, LoadError::CmdlineTooLong { max: 4095, .. }), "{e}");
        // Not ELF at all.
        let e = load(&mut fw(), &LoadedFile::from_bytes("x", vec![0; 64]), None, "", &layout).unwrap_err();
        assert!(matches!(e, LoadError::WrongFormat { .. }), "{e}");
    }

    #[test]
    fn boot_load_returns_guest_writes_for_pvh() {
        let dir = tempfile::tempdir().unwrap();
        let kpath = dir.path().join("vmlinux");
        std::fs::write(&kpath, kernel(true, &0x100_0040u32.to_le_bytes(), "Xen").test_bytes()).unwrap();
        let files = crate::plan::BootFiles { kernel: kpath, initrd: None, cmdline: "x".into() };
        let mut f = fw();
        let plan = crate::load(&mut f, &files, &RamLayout::xen(128, None), None).unwrap();
        assert_eq!(plan.protocol, BootProtocol::Pvh);
        assert_eq!(plan.rom_name, "pvh.bin");
        assert_eq!(plan.guest_writes.len(), 2);
        assert_eq!(plan.guest_writes[1].0, 0x100_2000);
        assert_eq!(plan.guest_writes[1].1.to_vec().unwrap(), vec![0x22; 0x10]);
        assert_eq!(plan.files.len(), 1);
    }
}
