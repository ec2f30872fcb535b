//! xendm's option ROMs, assembled from source (`roms/asm/*.s`) by
//! `build.rs` on every build with GNU binutils. No binary is committed.
//!
//! Three ROMs, under the file names QEMU uses for the same job, so that a
//! QEMU-compatible fw_cfg can serve either QEMU's ROMs or these, and these
//! ROMs boot on QEMU's own fw_cfg:
//!
//! | Constant | File name | Boots |
//! |---|---|---|
//! | [`LINUXBOOT_DMA`] | `linuxboot_dma.bin` | a Linux bzImage through the 16-bit boot protocol |
//! | [`MULTIBOOT_DMA`] | `multiboot_dma.bin` | a Multiboot v1 kernel with modules |
//! | [`PVH`] | `pvh.bin` | an ELF kernel through its Xen PVH entry |
//!
//! Each is a PCI-less legacy option ROM as SeaBIOS expects it (PnP BIOS
//! specification 1.0A, "Option ROM header" and "Expansion header"): 0x55 0xAA,
//! size byte in 512-byte blocks, an init entry at offset 3 that just returns,
//! a `$PnP` header whose bootstrap entry vector (BEV) does the boot, product
//! strings naming xendm, a PnP header checksum and a whole-image checksum of
//! 0. The fw_cfg items each ROM reads are exactly those QEMU's x86 loaders
//! fill (QEMU `docs/specs/fw_cfg.rst`, `hw/i386/x86.c`, `hw/i386/multiboot.c`);
//! `docs/boot.md` ("Option ROMs") describes every step.
//!
//! Where these ROMs differ from QEMU's: all three check the fw_cfg signature,
//! fall back to port I/O (`rep insb` in unreal mode) when fw_cfg has no DMA,
//! check the addresses they are given and return to the BIOS (which then
//! tries the next boot device) instead of writing over low memory, and log
//! progress on I/O port 0xE9 (QEMU `-debugcon`, Xen's debug port).

use std::io;
use std::path::{Path, PathBuf};

/// Linux boot protocol loader (QEMU file name `linuxboot_dma.bin`).
pub const LINUXBOOT_DMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/linuxboot_dma.bin"));

/// Multiboot v1 loader (QEMU file name `multiboot_dma.bin`).
pub const MULTIBOOT_DMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/multiboot_dma.bin"));

/// PVH loader (QEMU file name `pvh.bin`).
pub const PVH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pvh.bin"));

/// Every ROM under the file name QEMU uses for it.
pub const ALL: &[(&str, &[u8])] =
    &[("linuxboot_dma.bin", LINUXBOOT_DMA), ("multiboot_dma.bin", MULTIBOOT_DMA), ("pvh.bin", PVH)];

/// The ROM QEMU would load under `name` (e.g. `"pvh.bin"`), if we have one.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, rom)| *rom)
}

/// Writes every ROM into `dir` (created if missing) under its QEMU file
/// name and returns the paths written, in the order of [`ALL`].
pub fn dump(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating option ROM directory {}: {e}", dir.display())))?;
    let mut written = Vec::with_capacity(ALL.len());
    for (name, rom) in ALL {
        let path = dir.join(name);
        std::fs::write(&path, rom)
            .map_err(|e| io::Error::new(e.kind(), format!("writing option ROM {}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind};
    use std::collections::{BTreeMap, HashSet};

    fn u16_at(rom: &[u8], off: usize) -> usize {
        usize::from(u16::from_le_bytes([rom[off], rom[off + 1]]))
    }

    fn cstr_at(rom: &[u8], off: usize) -> &str {
        let end = rom[off..].iter().position(|&b| b == 0).unwrap() + off;
        std::str::from_utf8(&rom[off..end]).unwrap()
    }

    fn pnp(rom: &[u8]) -> usize {
        u16_at(rom, 0x1a)
    }

    fn bev(rom: &[u8]) -> usize {
        u16_at(rom, pnp(rom) + 0x1a)
    }

    #[test]
    fn names_and_lookup() {
        let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["linuxboot_dma.bin", "multiboot_dma.bin", "pvh.bin"]);
        assert_eq!(by_name("pvh.bin"), Some(PVH));
        assert_eq!(by_name("linuxboot_dma.bin"), Some(LINUXBOOT_DMA));
        assert_eq!(by_name("multiboot_dma.bin"), Some(MULTIBOOT_DMA));
        assert_eq!(by_name("linuxboot.bin"), None);
    }

    #[test]
    fn option_rom_header() {
        for (name, rom) in ALL {
            assert_eq!(rom[..2], [0x55, 0xaa], "{name}: signature");
            assert!(rom[2] > 0, "{name}: size byte");
            assert_eq!(rom.len(), usize::from(rom[2]) * 512, "{name}: size byte vs length");
            assert_eq!(rom.len() % 512, 0, "{name}: length not a multiple of 512");
            assert_eq!(rom[3], 0xcb, "{name}: init entry must be a far return");
            assert_eq!(u16_at(rom, 0x18), 0, "{name}: no PCI data structure expected");
            let sum = rom.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            assert_eq!(sum, 0, "{name}: checksum");
        }
    }

    #[test]
    fn pnp_header_fields() {
        for (name, rom) in ALL {
            let p = pnp(rom);
            assert!(p >= 0x1c && p + 0x20 <= rom.len(), "{name}: PnP offset {p:#x}");
            assert_eq!(&rom[p..p + 4], b"$PnP", "{name}");
            assert_eq!(rom[p + 4], 1, "{name}: PnP revision");
            let len = usize::from(rom[p + 5]) * 16;
            assert_eq!(len, 0x20, "{name}: PnP length");
            let sum = rom[p..p + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            assert_eq!(sum, 0, "{name}: PnP header checksum");
            assert_eq!(u16_at(rom, p + 6), 0, "{name}: next header");
            assert_eq!(cstr_at(rom, u16_at(rom, p + 0x0e)), "xendm", "{name}: manufacturer");
            let product = cstr_at(rom, u16_at(rom, p + 0x10));
            assert!(product.starts_with("xendm "), "{name}: product {product:?}");
            assert_eq!(u16_at(rom, p + 0x16), 0, "{name}: BCV must be 0 (boot via BEV)");
            let b = bev(rom);
            assert!(b > p + len && b < rom.len() - 1, "{name}: BEV {b:#x} outside the image");
        }
    }

    #[test]
    fn product_strings_identify_the_loader() {
        let product = |rom: &[u8]| cstr_at(rom, u16_at(rom, pnp(rom) + 0x10)).to_string();
        assert!(product(LINUXBOOT_DMA).contains("Linux"));
        assert!(product(MULTIBOOT_DMA).contains("multiboot"));
        assert!(product(PVH).contains("PVH"));
    }

    /// The PVH ROM searches low memory for "RSD PTR "; the ROM itself lives
    /// in that range, so no ROM may contain the string.
    #[test]
    fn no_rom_contains_the_rsdp_signature() {
        for (name, rom) in ALL {
            assert!(!rom.windows(8).any(|w| w == b"RSD PTR "), "{name}");
        }
    }

    /// Recursive-descent disassembly of the 16-bit code reachable from the
    /// BEV: follows near jumps, conditional branches and calls; stops at
    /// returns (near and far). Fails on an invalid opcode, an indirect
    /// branch, a branch target outside the image or code running off the end.
    fn reachable_16bit(rom: &[u8], start: usize) -> Result<BTreeMap<usize, Instruction>, String> {
        let mut todo = vec![start];
        let mut seen: BTreeMap<usize, Instruction> = BTreeMap::new();
        let mut starts = HashSet::new();
        while let Some(entry) = todo.pop() {
            if !starts.insert(entry) {
                continue;
            }
            let mut ip = entry;
            loop {
                if seen.contains_key(&ip) {
                    break;
                }
                if ip >= rom.len() {
                    return Err(format!("code runs off the end of the image at {ip:#x}"));
                }
                let mut dec = Decoder::with_ip(16, &rom[ip..], ip as u64, DecoderOptions::NONE);
                let ins = dec.decode();
                if ins.is_invalid() {
                    return Err(format!("invalid opcode at {ip:#x}"));
                }
                seen.insert(ip, ins);
                let next = ip + ins.len();
                let target = || -> Result<usize, String> {
                    let t = ins.near_branch_target() as usize;
                    if t >= rom.len() {
                        return Err(format!("branch at {ip:#x} to {t:#x} leaves the image"));
                    }
                    Ok(t)
                };
                match ins.flow_control() {
                    FlowControl::Next | FlowControl::Interrupt => ip = next,
                    FlowControl::ConditionalBranch | FlowControl::Call => {
                        todo.push(target()?);
                        ip = next;
                    }
                    FlowControl::UnconditionalBranch => {
                        if ins.op0_kind() != OpKind::NearBranch16 {
                            return Err(format!("far jump at {ip:#x}"));
                        }
                        todo.push(target()?);
                        break;
                    }
                    FlowControl::Return => break,
                    other => return Err(format!("unexpected {other:?} at {ip:#x}: {ins}")),
                }
            }
        }
        Ok(seen)
    }

    #[test]
    fn bev_code_disassembles_as_16bit() {
        for (name, rom) in ALL {
            let code = reachable_16bit(rom, bev(rom)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(code.len() > 100, "{name}: only {} instructions reachable", code.len());
            let has = |pred: &dyn Fn(&Instruction) -> bool| code.values().any(pred);
            // the BEV starts by saving state and disabling interrupts
            let first: Vec<Mnemonic> = code.range(bev(rom)..).take(2).map(|(_, i)| i.mnemonic()).collect();
            assert_eq!(first, [Mnemonic::Pushf, Mnemonic::Cli], "{name}: BEV prologue");
            // fw_cfg selector/DMA writes, BIOS calls, the way back to the BIOS
            assert!(has(&|i| i.code() == Code::Out_DX_AX), "{name}: no fw_cfg select");
            assert!(has(&|i| i.code() == Code::Out_DX_EAX), "{name}: no fw_cfg DMA kick");
            assert!(has(&|i| i.code() == Code::Int_imm8 && i.immediate8() == 0x15), "{name}: no INT 15h");
            assert!(has(&|i| i.code() == Code::Retfw), "{name}: no 16-bit far return");
            assert!(has(&|i| i.mnemonic() == Mnemonic::Lgdt), "{name}: no lgdt (unreal mode)");
        }
        // multiboot and PVH leave through a 32-bit far return into protected mode
        for rom in [MULTIBOOT_DMA, PVH] {
            let code = reachable_16bit(rom, bev(rom)).unwrap();
            assert!(code.values().any(|i| i.code() == Code::Retfd));
        }
    }

    /// The disassembly check must reject garbage: a BEV pointing into the
    /// strings of the header area decodes to something that is not code.
    #[test]
    fn disassembly_check_rejects_non_code() {
        let mut rom = LINUXBOOT_DMA.to_vec();
        let end = rom.len();
        rom[end - 64..].fill(0xff); // 0xFF 0xFF is an invalid encoding
        assert!(reachable_16bit(&rom, end - 64).is_err());
    }

    #[test]
    fn dump_writes_every_rom() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("roms");
        let paths = dump(&sub).unwrap();
        assert_eq!(paths.len(), ALL.len());
        for ((name, rom), path) in ALL.iter().zip(&paths) {
            assert_eq!(path, &sub.join(name));
            assert_eq!(std::fs::read(path).unwrap(), *rom);
        }
    }

    #[test]
    fn dump_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = dump(&file).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
