//! Direct kernel boot: read `-kernel`/`-initrd`/`-append`, pick the loader,
//! fill the fw_cfg items (before any guest memory or device exists).
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
//! [`crate::FwCfgItems::add_boot_rom`], hands the items to the device
//! ([`crate::FwCfg::new`]) and, for PVH, writes
//! [`BootPlan::guest_writes`] into guest RAM before the guest first runs
//! (and again on every guest reset, as QEMU re-copies its ROM blobs).
//!
//! Where we differ from QEMU:
//!
//! * Files are opened, never read whole ([`crate::source`]): each must be a
//!   regular file of at most [`crate::plan::MAX_FILE_SIZE`] (512 MiB), is
//!   checked against the RAM layout from its size and headers, and stays
//!   open: fw_cfg serves the kernel body, initrd and modules from it
//!   ([`crate::blob`]). A larger or non-regular file is an error naming it.
//!   QEMU reads the kernel whole and maps the initrd.
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

use std::path::Path;

use crate::items::FwCfgItems;
use crate::plan::{BootFiles, BootPlan, BootProtocol, LoadError, LoadedFile, RamLayout};

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

/// Opens the boot files, fills `fw` for the detected (or `force`d) format
/// and says which ROM to add. Only headers are read; the items refer to the
/// open files ([`BootPlan::files`]).
///
/// # Errors
/// See [`LoadError`]; every error names the file at fault.
pub fn load(
    fw: &mut FwCfgItems,
    files: &BootFiles,
    layout: &RamLayout,
    force: Option<BootProtocol>,
) -> Result<BootPlan, LoadError> {
    let kernel = LoadedFile::open(&files.kernel, "kernel")?;
    let protocol = match force.or_else(|| detect(kernel.head())) {
        Some(p) => p,
        None => return Err(LoadError::NotAKernel { path: kernel.path }),
    };
    let open_initrd = || files.initrd.as_deref().map(|p| LoadedFile::open(Path::new(p), "initrd")).transpose();
    let mut guest_writes = Vec::new();
    let mut opened = vec![kernel.clone()];
    match protocol {
        BootProtocol::Linux => {
            let initrd = open_initrd()?;
            let info = crate::linux::load(fw, &kernel, initrd.as_ref(), &files.cmdline, layout)?;
            tracing::debug!(?info, kernel = %kernel.path.display(), "loaded Linux bzImage");
            opened.extend(initrd);
        }
        BootProtocol::Multiboot => {
            let mut open = |p: &Path| {
                let m = LoadedFile::open(p, "multiboot module")?;
                opened.push(m.clone());
                Ok(m)
            };
            let info = crate::multiboot::load(fw, &kernel, files.initrd.as_deref(), &files.cmdline, layout, &mut open)?;
            tracing::debug!(?info, kernel = %kernel.path.display(), "loaded multiboot kernel");
        }
        BootProtocol::Pvh => {
            let initrd = open_initrd()?;
            let info = crate::pvh::load(fw, &kernel, initrd.as_ref(), &files.cmdline, layout)?;
            tracing::debug!(entry = info.entry, segments = info.segments.len(), kernel = %kernel.path.display(), "loaded PVH kernel");
            guest_writes = info.segments;
            opened.extend(initrd);
        }
    }
    Ok(BootPlan { protocol, rom_name: protocol.rom_name(), guest_writes, files: opened })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::{keys, FwCfgOptions};
    use crate::plan::FOUR_GIB;
    use std::path::PathBuf;

    fn fw() -> FwCfgItems {
        FwCfgItems::new(&FwCfgOptions::default()).unwrap()
    }

    #[test]
    fn xen_ram_layout() {
        assert_eq!(RamLayout::xen(256, None), RamLayout { below_4g: 256 << 20, above_4g: 0 });
        assert_eq!(
            RamLayout::xen(8192, None),
            RamLayout { below_4g: 0xF000_0000, above_4g: (8192 << 20) - 0xF000_0000 }
        );
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
        assert!(matches!(
            load(&mut fw(), &files, &RamLayout::xen(256, None), None),
            Err(LoadError::NotRegular { kind: "is a directory", .. })
        ));

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
        let out =
            std::process::Command::new(script).arg(dir).output().unwrap_or_else(|e| panic!("running {script}: {e}"));
        assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        (dir.join("multiboot.elf"), dir.join("pvh.elf"))
    }

    /// `readelf` as an independent oracle: (entry, [(offset, paddr, filesz, memsz)]).
    fn readelf(path: &Path) -> (u64, Vec<[u64; 4]>) {
        let out = std::process::Command::new("readelf").args(["-lhW"]).arg(path).output().expect("readelf (binutils)");
        let text = String::from_utf8(out.stdout).unwrap();
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        let entry =
            text.lines().find_map(|l| l.trim().strip_prefix("Entry point address:")).map(|v| hex(v.trim())).unwrap();
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

    fn key32(f: &FwCfgItems, key: u16) -> u32 {
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
        let files = BootFiles {
            kernel: pvh.clone(),
            initrd: Some(rd.to_string_lossy().into_owned()),
            cmdline: "xkt.marker=t".into(),
        };
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
        let got: Vec<_> = plan.guest_writes.iter().map(|(a, b)| (*a, b.to_vec().unwrap())).collect();
        assert_eq!(got, writes);
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
        let files =
            BootFiles { kernel: mb.clone(), initrd: Some(spec.clone()), cmdline: "xkt.marker=t xkt.mods=1".into() };
        let mut f = fw();
        let plan = load(&mut f, &files, &RamLayout::xen(128, None), None).unwrap();
        assert_eq!(plan.protocol, BootProtocol::Multiboot);
        assert_eq!(plan.rom_name, "multiboot_dma.bin");
        assert_eq!(u64::from(key32(&f, keys::KERNEL_ENTRY)), entry);
        let low = loads.iter().map(|l| l[1]).min().unwrap();
        let high = loads.iter().map(|l| l[1] + l[3]).max().unwrap();
        assert_eq!(u64::from(key32(&f, keys::KERNEL_ADDR)), low);
        let buf = f.item_vec(keys::KERNEL_DATA).unwrap();
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
        let mbi = f.item_vec(keys::INITRD_DATA).unwrap();
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
