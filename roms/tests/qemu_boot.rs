//! Boot tests of xendm's option ROMs on real firmware and a real fw_cfg:
//! QEMU (`qemu-system-x86_64 -accel tcg`) with Debian's SeaBIOS.
//!
//! QEMU looks up option ROM files in the `-L` directories before its own
//! data directory, so each test writes ONLY our ROMs (under QEMU's file
//! names) into a temporary directory and passes it with `-L`; SeaBIOS itself
//! (`bios-256k.bin`) still comes from QEMU's default directories. That our
//! ROM ran is proven twice: its progress lines on port 0xE9 (`-debugcon`)
//! are asserted, and the negative tests show that a corrupted ROM in that
//! directory stops the boot.
//!
//! Kernels: Debian's bzImage (`tests/guest/fetch-kernel`, cached) with the
//! test initrd (`tests/guest/mkinitrd`), and the multiboot/PVH test kernels
//! of `tests/kernels` (built from source by `tests/kernels/build`).
//!
//! Needs qemu-system-x86, seabios, binutils, busybox-static, cpio (see
//! `tests/setup`). `XENDM_QEMU` overrides the QEMU binary.
//! `XENDM_SKIP_QEMU_TESTS=1` skips these tests (and says so).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn qemu_bin() -> String {
    std::env::var("XENDM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// false: the user asked to skip. Panics with a clear message if QEMU is
/// missing (a missing QEMU must not make these tests pass silently).
fn qemu_available() -> bool {
    if std::env::var_os("XENDM_SKIP_QEMU_TESTS").is_some() {
        eprintln!("XENDM_SKIP_QEMU_TESTS is set: skipping the QEMU boot test");
        return false;
    }
    let ok =
        Command::new(qemu_bin()).arg("--version").stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
    assert!(
        ok,
        "`{}` not found: install qemu-system-x86 and seabios (tests/setup), \
         or set XENDM_SKIP_QEMU_TESTS=1",
        qemu_bin()
    );
    true
}

fn nonce() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{:x}{:x}", t.as_nanos() & 0xffff_ffff, std::process::id())
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Writes our ROMs into `dir/roms`; `extra` adds more (alias, bytes) files,
/// e.g. our linuxboot_dma ROM under the non-DMA name `linuxboot.bin`.
fn rom_dir(dir: &Path, extra: &[(&str, &[u8])]) -> PathBuf {
    let roms = dir.join("roms");
    xendm_roms::dump(&roms).unwrap();
    for (name, bytes) in extra {
        fs::write(roms.join(name), bytes).unwrap();
    }
    roms
}

/// A copy of `rom` changed by `f`, with the checksum fixed again.
fn patched(rom: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut r = rom.to_vec();
    f(&mut r);
    let n = r.len();
    let sum = r[..n - 1].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    r[n - 1] = 0u8.wrapping_sub(sum);
    r
}

fn bev_offset(rom: &[u8]) -> usize {
    let pnp = usize::from(u16::from_le_bytes([rom[0x1a], rom[0x1b]]));
    usize::from(u16::from_le_bytes([rom[pnp + 0x1a], rom[pnp + 0x1b]]))
}

fn build_kernels(dir: &Path) -> PathBuf {
    let out = dir.join("kernels");
    let st = Command::new(repo_root().join("tests/kernels/build")).arg(&out).status().expect("run tests/kernels/build");
    assert!(st.success(), "tests/kernels/build failed");
    out
}

struct Run {
    serial: String,
    debugcon: String,
    exited: bool,
    elapsed: Duration,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "--- QEMU {} after {:.1}s\n--- serial (COM1):\n{}\n--- debugcon (port 0xE9):\n{}\n---",
            if self.exited { "exited" } else { "killed (timeout)" },
            self.elapsed.as_secs_f64(),
            self.serial,
            self.debugcon
        )
    }
}

/// Runs QEMU (TCG, SeaBIOS, only our ROMs in `-L roms`) until it exits or
/// `timeout`; a line starting with `done` on the serial port ends the run
/// after a short grace period even if the guest does not power off.
fn run_qemu(dir: &Path, roms: &Path, mem_mib: u32, args: &[String], done: &str, timeout: Duration) -> Run {
    let serial = dir.join("serial.log");
    let debugcon = dir.join("debugcon.log");
    let mut child = Command::new(qemu_bin())
        .args(["-accel", "tcg", "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot"])
        .args(["-m", &mem_mib.to_string()])
        .args(["-boot", "reboot-timeout=0"])
        .arg("-L")
        .arg(roms)
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-debugcon")
        .arg(format!("file:{}", debugcon.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu_bin()));
    let start = Instant::now();
    let mut seen_done: Option<Instant> = None;
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if start.elapsed() > timeout {
            break false;
        }
        if seen_done.is_none() {
            let s = fs::read(&serial).unwrap_or_default();
            if String::from_utf8_lossy(&s).lines().any(|l| l.starts_with(done)) {
                seen_done = Some(Instant::now());
            }
        } else if seen_done.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break false;
        }
        sleep(Duration::from_millis(100));
    };
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Run { serial: read(&serial), debugcon: read(&debugcon), exited, elapsed: start.elapsed() }
}

fn result_line<'a>(run: &'a Run, prefix: &str) -> Option<&'a str> {
    run.serial.lines().map(|l| l.trim_end_matches('\r')).find(|l| l.starts_with(prefix))
}

// ---- Linux bzImage through linuxboot_dma ---------------------------------

fn linux_boot(extra_roms: &[(&str, &[u8])], extra_args: &[&str], expect_pio: bool) {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let guest = repo_root().join("tests/guest");
    let out = Command::new(guest.join("fetch-kernel")).output().expect("run tests/guest/fetch-kernel");
    assert!(out.status.success(), "fetch-kernel failed: {}", String::from_utf8_lossy(&out.stderr));
    let kernel = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let initrd = dir.path().join("initrd.cpio.gz");
    let out = Command::new(guest.join("mkinitrd")).arg(&initrd).arg("256").output().expect("run mkinitrd");
    assert!(out.status.success(), "mkinitrd failed: {}", String::from_utf8_lossy(&out.stderr));
    let sum_arg = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(sum_arg.starts_with("guest.sum="), "{sum_arg}");

    let marker = format!("xendm.marker={}", nonce());
    let roms = rom_dir(dir.path(), extra_roms);
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        kernel,
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        format!("console=ttyS0 panic=-1 quiet {marker} {sum_arg}"),
    ];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let run = run_qemu(dir.path(), &roms, 256, &args, "GUEST-RESULT:", TIMEOUT);
    let report = run.report();
    assert!(run.debugcon.contains("xendm-rom linuxboot_dma: starting the kernel"), "our ROM did not run\n{report}");
    assert_eq!(
        run.debugcon.contains("fw_cfg without DMA, using port I/O"),
        expect_pio,
        "wrong fw_cfg access mode\n{report}"
    );
    let line = result_line(&run, "GUEST-RESULT:").unwrap_or_else(|| panic!("no GUEST-RESULT line\n{report}"));
    assert!(line.starts_with("GUEST-RESULT: PASS"), "{line}\n{report}");
    assert!(line.contains(&marker), "command line lost the marker: {line}\n{report}");
    eprintln!("linux boot: {line} ({:.1}s)", run.elapsed.as_secs_f64());
}

#[test]
fn linux_bzimage_boots_with_initrd_and_cmdline() {
    linux_boot(&[], &[], false);
}

/// fw_cfg without DMA: QEMU then asks for `linuxboot.bin`; we serve our
/// linuxboot_dma ROM under that name and it must fall back to port I/O.
#[test]
fn linux_bzimage_boots_through_port_io_fallback() {
    linux_boot(&[("linuxboot.bin", xendm_roms::LINUXBOOT_DMA)], &["-global", "fw_cfg_io.dma_enabled=off"], true);
}

// ---- multiboot and PVH test kernels ----------------------------------------

struct Module {
    path: PathBuf,
    args: &'static str,
    hash: u32,
}

fn modules(dir: &Path, sizes: &[(usize, &'static str)]) -> Vec<Module> {
    let seed = nonce();
    sizes
        .iter()
        .enumerate()
        .map(|(i, (size, args))| {
            // deterministic-per-run pseudo-random content (xorshift)
            let mut x: u32 = 0x9e37_79b9 ^ (i as u32 + 1).wrapping_mul(0x85eb_ca6b) ^ fnv1a(seed.as_bytes());
            let bytes: Vec<u8> = (0..*size)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let path = dir.join(format!("module{i}.bin"));
            fs::write(&path, &bytes).unwrap();
            Module { path, args, hash: fnv1a(&bytes) }
        })
        .collect()
}

fn kernel_cmdline(marker: &str, mods: &[Module]) -> String {
    let mut s = format!("xkt.marker={marker} xkt.mods={:x}", mods.len());
    for (i, m) in mods.iter().enumerate() {
        s.push_str(&format!(" xkt.fnv{i:x}={:08x}", m.hash));
    }
    s
}

/// `-initrd` value for multiboot: comma-separated, "path args" per module.
fn initrd_list(mods: &[Module]) -> String {
    mods.iter()
        .map(
            |m| {
                if m.args.is_empty() {
                    m.path.display().to_string()
                } else {
                    format!("{} {}", m.path.display(), m.args)
                }
            },
        )
        .collect::<Vec<_>>()
        .join(",")
}

fn expect_kernel_pass(run: &Run, rom: &str, marker: &str, nmods: usize) {
    let report = run.report();
    assert!(run.debugcon.contains(&format!("xendm-rom {rom}: entry at")), "our {rom} ROM did not run\n{report}");
    let line = result_line(run, "KERNEL-RESULT:").unwrap_or_else(|| panic!("no KERNEL-RESULT line\n{report}"));
    assert_eq!(line, format!("KERNEL-RESULT: PASS marker={marker} mods={nmods:08x}"), "\n{report}");
    eprintln!("{rom}: {line} ({:.1}s)", run.elapsed.as_secs_f64());
}

fn multiboot_boot(extra_roms: &[(&str, &[u8])], extra_args: &[&str]) {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernels = build_kernels(dir.path());
    let mods = modules(dir.path(), &[(5000, "mod1 args"), (12345, "")]);
    let marker = nonce();
    let roms = rom_dir(dir.path(), extra_roms);
    let mut args: Vec<String> = vec![
        "-kernel".into(),
        kernels.join("multiboot.elf").display().to_string(),
        "-initrd".into(),
        initrd_list(&mods),
        "-append".into(),
        kernel_cmdline(&marker, &mods),
    ];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let run = run_qemu(dir.path(), &roms, 128, &args, "KERNEL-RESULT:", TIMEOUT);
    expect_kernel_pass(&run, "multiboot_dma", &marker, 2);
    // the module command lines came through as the loader built them
    let report = run.report();
    assert!(run.serial.contains(&format!("cmdline={} mod1 args", mods[0].path.display())), "{report}");
    assert!(run.serial.contains(&format!("cmdline={} fnv=", mods[1].path.display())), "{report}");
}

#[test]
fn multiboot_kernel_gets_cmdline_memory_map_and_two_modules() {
    multiboot_boot(&[], &[]);
}

#[test]
fn multiboot_kernel_boots_through_port_io_fallback() {
    multiboot_boot(&[("multiboot.bin", xendm_roms::MULTIBOOT_DMA)], &["-global", "fw_cfg_io.dma_enabled=off"]);
}

#[test]
fn pvh_kernel_gets_start_info_cmdline_and_initrd() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernels = build_kernels(dir.path());
    let mods = modules(dir.path(), &[(70000, "")]);
    let marker = nonce();
    let roms = rom_dir(dir.path(), &[]);
    let args: Vec<String> = vec![
        "-kernel".into(),
        kernels.join("pvh.elf").display().to_string(),
        "-initrd".into(),
        mods[0].path.display().to_string(),
        "-append".into(),
        kernel_cmdline(&marker, &mods),
    ];
    let run = run_qemu(dir.path(), &roms, 128, &args, "KERNEL-RESULT:", TIMEOUT);
    expect_kernel_pass(&run, "pvh", &marker, 1);
    assert!(run.debugcon.contains("xendm-rom pvh: RSDP at"), "{}", run.report());
}

// ---- negative tests: the harness notices a broken ROM ----------------------

fn broken_multiboot_rom_fails(rom: Vec<u8>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let kernels = build_kernels(dir.path());
    let mods = modules(dir.path(), &[(4096, "")]);
    let marker = nonce();
    let roms = rom_dir(dir.path(), &[("multiboot_dma.bin", &rom)]);
    let args: Vec<String> = vec![
        "-kernel".into(),
        kernels.join("multiboot.elf").display().to_string(),
        "-initrd".into(),
        initrd_list(&mods),
        "-append".into(),
        kernel_cmdline(&marker, &mods),
    ];
    let run = run_qemu(dir.path(), &roms, 128, &args, "KERNEL-RESULT:", Duration::from_secs(30));
    assert!(result_line(&run, "KERNEL-RESULT: PASS").is_none(), "a broken ROM booted\n{}", run.report());
    run
}

/// A bad checksum makes SeaBIOS reject the ROM: proves QEMU used the file
/// from our `-L` directory and not its own multiboot_dma.bin.
#[test]
fn rom_with_bad_checksum_is_rejected() {
    if !qemu_available() {
        return;
    }
    let mut rom = xendm_roms::MULTIBOOT_DMA.to_vec();
    let n = rom.len();
    rom[n - 1] ^= 0x01;
    let run = broken_multiboot_rom_fails(rom);
    assert!(!run.debugcon.contains("xendm-rom"), "{}", run.report());
}

/// A ROM whose BEV returns at once (checksum fixed) must fail the boot.
#[test]
fn rom_whose_bev_returns_fails_the_boot() {
    if !qemu_available() {
        return;
    }
    let rom = patched(xendm_roms::MULTIBOOT_DMA, |r| {
        let bev = bev_offset(r);
        r[bev] = 0xcb; // retf
    });
    broken_multiboot_rom_fails(rom);
}
