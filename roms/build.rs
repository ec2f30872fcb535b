//! Assembles xendm's option ROMs from `asm/*.s` on every build.
//!
//! For each ROM: `as --32` -> `ld -m elf_i386 -T asm/rom.ld` ->
//! `objcopy -O binary`, then (here, in Rust) pad the image to the size its
//! header declares (byte 2, in 512-byte blocks), fill in the PnP header
//! checksum and set the last byte so that all bytes sum to 0 mod 256.
//!
//! The tools can be overridden with `XENDM_AS`, `XENDM_LD` and
//! `XENDM_OBJCOPY` (e.g. `x86_64-linux-gnu-as` on a non-x86 host).
//! Any missing tool or oversized ROM fails the build with a message saying
//! what to do.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// The ROMs, by source name; the output is `$OUT_DIR/<name>.bin`.
const ROMS: &[&str] = &["linuxboot_dma", "multiboot_dma", "pvh"];

fn fail(msg: &str) -> ! {
    eprintln!("error: xendm-roms build: {msg}");
    exit(1);
}

fn tool(var: &str, default: &str) -> String {
    println!("cargo:rerun-if-env-changed={var}");
    env::var(var).unwrap_or_else(|_| default.to_string())
}

fn check_tool(name: &str, what: &str) {
    match Command::new(name).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(_) | Err(_) => fail(&format!(
            "`{name}` ({what}) not found or not working; install GNU binutils \
             (Debian: apt-get install binutils, see tests/setup) or point \
             the XENDM_AS/XENDM_LD/XENDM_OBJCOPY variables at an x86 binutils"
        )),
    }
}

fn run(cmd: &mut Command, what: &str) {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(out) if out.status.success() => {
            // Warnings (e.g. from `as`) go to the cargo log.
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                println!("cargo:warning={what}: {line}");
            }
        }
        Ok(out) => fail(&format!(
            "{what} failed ({shown}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => fail(&format!("cannot run {shown}: {e}")),
    }
}

fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// Pads `raw` to its declared size and fixes both checksums.
fn finish_rom(name: &str, mut raw: Vec<u8>) -> Vec<u8> {
    if raw.len() < 0x40 || raw.first() != Some(&0x55) || raw.get(1) != Some(&0xaa) {
        fail(&format!("{name}: the image does not start with 0x55 0xAA"));
    }
    let blocks = raw.get(2).copied().unwrap_or(0);
    if blocks == 0 {
        fail(&format!("{name}: the size byte is 0"));
    }
    let size = usize::from(blocks) * 512;
    // The last byte is reserved for the checksum.
    if raw.len() >= size {
        fail(&format!(
            "{name}: the code is {} bytes but the header declares {blocks} x 512 = {size} \
             bytes (one of which is the checksum); raise the block count in asm/{name}.s",
            raw.len()
        ));
    }
    raw.resize(size, 0);

    // PnP expansion header: offset at 0x1A, "$PnP", length in 16-byte units
    // at +5, checksum at +9 over the whole header.
    let pnp =
        raw.get(0x1a..0x1c).and_then(|b| <[u8; 2]>::try_from(b).ok()).map_or(0, |b| usize::from(u16::from_le_bytes(b)));
    if raw.get(pnp..pnp + 4) != Some(b"$PnP".as_slice()) {
        fail(&format!("{name}: no $PnP header at offset {pnp:#x}"));
    }
    let pnp_len = usize::from(raw.get(pnp + 5).copied().unwrap_or(0)) * 16;
    if pnp_len < 0x20 || pnp + pnp_len > size {
        fail(&format!("{name}: bad PnP header length {pnp_len}"));
    }
    if let Some(b) = raw.get_mut(pnp + 9) {
        *b = 0;
    }
    let pnp_sum = raw.get(pnp..pnp + pnp_len).map(byte_sum).unwrap_or(0);
    if let Some(b) = raw.get_mut(pnp + 9) {
        *b = 0u8.wrapping_sub(pnp_sum);
    }

    let sum = raw.get(..size.saturating_sub(1)).map(byte_sum).unwrap_or(0);
    if let Some(b) = raw.last_mut() {
        *b = 0u8.wrapping_sub(sum);
    }
    raw
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("OUT_DIR is not set")));
    let asm_dir = manifest.join("asm");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=asm");

    let as_ = tool("XENDM_AS", "as");
    let ld = tool("XENDM_LD", "ld");
    let objcopy = tool("XENDM_OBJCOPY", "objcopy");
    check_tool(&as_, "GNU assembler");
    check_tool(&ld, "GNU linker");
    check_tool(&objcopy, "GNU objcopy");

    let script = asm_dir.join("rom.ld");
    for name in ROMS {
        let src = asm_dir.join(format!("{name}.s"));
        if !Path::new(&src).exists() {
            fail(&format!("missing source {}", src.display()));
        }
        let obj = out_dir.join(format!("{name}.o"));
        let elf = out_dir.join(format!("{name}.elf"));
        let raw = out_dir.join(format!("{name}.raw"));
        run(
            Command::new(&as_)
                .arg("--32")
                .arg("--fatal-warnings")
                .arg("-I")
                .arg(&asm_dir)
                .arg("-o")
                .arg(&obj)
                .arg(&src),
            &format!("assembling {name}"),
        );
        run(
            Command::new(&ld).args(["-m", "elf_i386", "-nostdlib", "-T"]).arg(&script).arg("-o").arg(&elf).arg(&obj),
            &format!("linking {name}"),
        );
        run(
            Command::new(&objcopy).args(["-O", "binary", "-j", ".text"]).arg(&elf).arg(&raw),
            &format!("extracting {name}"),
        );
        let bytes = fs::read(&raw).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", raw.display())));
        let rom = finish_rom(name, bytes);
        let bin = out_dir.join(format!("{name}.bin"));
        fs::write(&bin, &rom).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", bin.display())));
    }
}
