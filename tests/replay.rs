//! Replays the committed ioreq traces in `tests/traces/` against a fresh
//! device model, failing at the first divergence (see `docs/traces.md`).
//!
//! `synthetic-all-types.jsonl.gz` is generated here: a machine built from a
//! libxl-like argv (with a small bzImage this test writes, so the files are
//! reproducible byte for byte) is driven through every ioreq type and every
//! device on the bus, with recording on. Regenerate it after an intended
//! behaviour change with `XENDM_REGEN_TRACES=1 cargo test --test replay` and
//! say in the commit why the behaviour changed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vm_memory::GuestAddress;
use xendm::ioreq::abi::{Ioreq, IoreqKind};
use xendm::machine::replay::MachineRebuilder;
use xendm::trace::{
    self, FileSink, Header, Recorder, RecordingHypervisor, RecordingMemory, ReplayMachine, Tap, TraceReader,
};
use xendm_devices::hv::FakeHypervisor;
use xendm_devices::mem::TestMemory;
use xendm_devices::{GuestMemory, HvCall, Hypervisor, Sbdf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn boot_dir() -> PathBuf {
    root().join("tests/data/boot")
}

/// A minimal bzImage (boot protocol 2.15, one setup sector, a 4 KiB
/// "kernel") and an initrd, written by this test so they never change.
fn write_boot_files() -> (PathBuf, PathBuf) {
    let dir = boot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut k = vec![0u8; 1024 + 4096];
    k[0x1f1] = 1; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x211] = 0x01; // LOADED_HIGH
    k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    k[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
    for (i, b) in k[1024..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let initrd: Vec<u8> = (0..3000u32).map(|i| (i * 13 + 1) as u8).collect();
    let kp = dir.join("mini-bzImage");
    let ip = dir.join("mini-initrd");
    write_if_changed(&kp, &k);
    write_if_changed(&ip, &initrd);
    (kp, ip)
}

/// Tests run in parallel and hash these files: never leave one half-written.
fn write_if_changed(path: &Path, data: &[u8]) {
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn pio(addr: u64, size: u32, is_read: bool, data: u64) -> Ioreq {
    Ioreq { addr, data, count: 1, size, data_is_ptr: false, is_read, df: false, kind: IoreqKind::Pio }
}

fn cfg(sbdf: Sbdf, reg: u64, size: u32, is_read: bool, data: u64) -> Ioreq {
    Ioreq { addr: (u64::from(sbdf.to_u32()) << 32) | reg, kind: IoreqKind::PciConfig, ..pio(0, size, is_read, data) }
}

/// Guest memory to fill before a request: `(address, bytes)`.
type Prep = Vec<(u64, Vec<u8>)>;

/// The scripted session: what firmware and a guest would do, plus hostile
/// requests. `(buffered, request, memory to prepare before it)`.
#[allow(clippy::too_many_lines)] // one scripted session, read top to bottom
fn script() -> Vec<(bool, Ioreq, Prep)> {
    let mut s: Vec<(bool, Ioreq, Prep)> = Vec::new();
    let mut add = |r: Ioreq| s.push((false, r, vec![]));
    // PCI enumeration (PCI_CONFIG ioreqs), as hvmloader does it.
    for (d, f) in [(0, 0), (1, 0), (1, 3), (2, 0), (5, 0)] {
        add(cfg(Sbdf::new(d, f), 0, 4, true, 0));
        add(cfg(Sbdf::new(d, f), 8, 4, true, 0));
    }
    // PIRQ link routes 5/10/11/5.
    for (i, irq) in [5u64, 10, 11, 5].iter().enumerate() {
        add(cfg(Sbdf::new(1, 0), 0x60 + i as u64, 1, false, *irq));
    }
    // PIIX4 PM: PMBA 0xB000, enable; then the ACPI enable handshake.
    add(cfg(Sbdf::new(1, 3), 0x40, 4, false, 0xb001));
    add(cfg(Sbdf::new(1, 3), 0x80, 1, false, 1));
    add(pio(0xb004, 2, true, 0));
    add(pio(0xb2, 1, false, 0xf1));
    add(pio(0xb004, 2, true, 0));
    // Platform device BAR0 sizing and placement, then I/O decode on.
    add(cfg(Sbdf::new(2, 0), 0x10, 4, false, 0xffff_ffff));
    add(cfg(Sbdf::new(2, 0), 0x10, 4, true, 0));
    add(cfg(Sbdf::new(2, 0), 0x10, 4, false, 0xc001));
    add(cfg(Sbdf::new(2, 0), 0x04, 2, false, 0x0003));
    add(pio(0x10, 2, true, 0)); // unplug magic
                                // CF8/CFC through plain PIO.
    add(pio(0xcf8, 4, false, 0x8000_0000));
    add(pio(0xcf8, 4, true, 0));
    add(pio(0xcfc, 4, true, 0));
    add(pio(0xcfe, 2, true, 0));
    // CMOS NVRAM.
    for idx in [0x5bu64, 0x34, 0x35, 0x5f, 0x3d] {
        add(pio(0x70, 1, false, idx));
        add(pio(0x71, 1, true, 0));
    }
    add(pio(0x70, 1, false, 0x40));
    add(pio(0x71, 1, false, 0x5a));
    add(pio(0x71, 1, true, 0));
    // UART: IER THRE, OUT2, a few characters, IIR and LSR.
    add(pio(0x3f9, 1, false, 0x02));
    add(pio(0x3fc, 1, false, 0x08));
    for c in b"hi\n" {
        add(pio(0x3f8, 1, false, u64::from(*c)));
        add(pio(0x3fa, 1, true, 0));
    }
    add(pio(0x3fd, 1, true, 0));
    // i8042 self test and keyboard reset.
    add(pio(0x64, 1, false, 0xaa));
    add(pio(0x64, 1, true, 0));
    add(pio(0x60, 1, true, 0));
    add(pio(0x60, 1, false, 0xff));
    add(pio(0x60, 1, true, 0));
    add(pio(0x60, 1, true, 0));
    // Port 0x92: A20 on.
    add(pio(0x92, 1, false, 0x02));
    add(pio(0x92, 1, true, 0));
    // fw_cfg by ports: signature with rep insb, the file directory.
    add(pio(0x510, 2, false, 0x0000));
    add(Ioreq { count: 4, data_is_ptr: true, ..pio(0x511, 1, true, 0x1000) });
    add(pio(0x510, 2, false, 0x0019));
    add(Ioreq { count: 260, data_is_ptr: true, ..pio(0x511, 1, true, 0x1100) });
    add(pio(0x514, 4, true, 0));
    // fw_cfg DMA: read KERNEL_DATA (4 KiB, hashed in the trace) and SETUP_DATA.
    let desc = |key: u32, len: u32, addr: u64| {
        let mut d = Vec::new();
        d.extend_from_slice(&((key << 16) | 0x08 | 0x02).to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        d
    };
    s.push((
        false,
        pio(0x518, 4, false, u64::from(0x2000u32.swap_bytes())),
        vec![(0x2000, desc(0x11, 4096, 0x10_0000))],
    ));
    s.push((
        false,
        pio(0x518, 4, false, u64::from(0x2000u32.swap_bytes())),
        vec![(0x2000, desc(0x18, 1024, 0x1_0000))],
    ));
    // DMA with a descriptor in the VGA hole: error bit, no panic.
    s.push((false, pio(0x518, 4, false, u64::from(0xa0000u32.swap_bytes())), vec![]));
    let mut add = |r: Ioreq, mem: Prep| s.push((false, r, mem));
    // rep outsb to the UART, both directions.
    add(Ioreq { count: 4, data_is_ptr: true, ..pio(0x3f8, 1, false, 0x4000) }, vec![(0x4000, b"rep\n".to_vec())]);
    add(Ioreq { count: 4, data_is_ptr: true, df: true, ..pio(0x3f8, 1, false, 0x4003) }, vec![]);
    // MMIO (COPY): unclaimed reads, a rep movs MMIO -> RAM, an 8-byte write.
    let mmio = |addr, size, is_read, data| Ioreq { addr, kind: IoreqKind::Copy, ..pio(0, size, is_read, data) };
    add(mmio(0xfee0_0000, 4, true, 0), vec![]);
    add(Ioreq { count: 4, data_is_ptr: true, ..mmio(0xf100_0000, 4, true, 0x3000) }, vec![]);
    add(mmio(0xf100_0008, 8, false, 0x1122_3344_5566_7788), vec![]);
    // INVALIDATE (sync) and TIMEOFFSET + a PIO write (buffered).
    add(Ioreq { kind: IoreqKind::Invalidate, ..pio(0, 4, false, u64::from(u32::MAX)) }, vec![]);
    s.push((true, Ioreq { kind: IoreqKind::TimeOffset, ..pio(0, 8, false, (-3600i64) as u64) }, vec![]));
    s.push((true, pio(0x70, 1, false, 0x41), vec![]));
    let mut add = |r: Ioreq| s.push((false, r, vec![]));
    // Hostile: bad size, unknown type, huge count, PCI register beyond 64 KiB.
    add(pio(0x3f8, 3, true, 0));
    add(Ioreq { kind: IoreqKind::Unknown(3), ..pio(0x3f8, 1, true, 0) });
    add(Ioreq { count: u32::MAX, data_is_ptr: true, ..pio(0x511, 1, true, 0x1000) });
    add(cfg(Sbdf::new(0, 0), 0x1_0000, 4, true, 0));
    // Reset control, then ACPI S5.
    add(pio(0xcf9, 1, false, 0x06));
    add(pio(0xb004, 2, false, 0x2000));
    s
}

fn argv(kernel: &Path, initrd: &Path) -> Vec<String> {
    [
        "-xen-domid",
        "1",
        "-no-shutdown",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "synthetic",
        "-vnc",
        "none",
        "-display",
        "none",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([kernel.display().to_string(), "-initrd".into(), initrd.display().to_string()])
    .chain(
        [
            "-append",
            "console=ttyS0 quiet",
            "-serial",
            "null",
            "-boot",
            "order=cda",
            "-net",
            "none",
            "-machine",
            "xenfv,suppress-vmdesc=on",
            "-m",
            "128",
        ]
        .iter()
        .map(|s| s.to_string()),
    )
    .collect()
}

fn sha(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn generate(out: &Path) {
    let (k, i) = write_boot_files();
    // Paths as the recording host saw them: replay must find them by hash.
    let header = Header {
        xendm_trace: trace::TRACE_VERSION,
        argv: argv(Path::new("/guest/vmlinuz"), Path::new("/guest/initrd.img")),
        files: [("/guest/vmlinuz".to_string(), sha(&k)), ("/guest/initrd.img".to_string(), sha(&i))]
            .into_iter()
            .collect(),
        producer: format!("xendm {} (tests/replay.rs synthetic)", env!("CARGO_PKG_VERSION")),
    };
    let ram = Arc::new(TestMemory::pc(128 << 20).unwrap());
    let tap = Tap::new();
    let mem: Arc<dyn GuestMemory> = Arc::new(RecordingMemory::new(ram.clone(), tap.clone()));
    let hv: Arc<dyn Hypervisor> = Arc::new(RecordingHypervisor::new(Arc::new(FakeHypervisor::new()), tap.clone()));
    let machine = MachineRebuilder { dirs: vec![boot_dir()] };
    let mut engine = machine.build(&header, mem, hv).unwrap();
    engine.set_observer(Box::new(Recorder::new(tap, Box::new(FileSink::create(out, &header).unwrap()))));
    for (buffered, req, prep) in script() {
        for (gpa, bytes) in prep {
            ram.write(GuestAddress(gpa), &bytes).unwrap();
        }
        if buffered {
            engine.handle_buffered_request(&req);
        } else {
            engine.handle(0, &req);
        }
        engine.bus_mut().take_changes();
    }
    engine.take_observer().unwrap().flush().unwrap();
}

fn traces() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/traces"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".jsonl.gz"))
        .collect();
    v.sort();
    v
}

fn replay_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![boot_dir(), root().join("tests/traces/files")];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(&home).join(".cache/xendm/kernel"));
        dirs.push(PathBuf::from(&home).join(".cache/xendm-lab/guest"));
    }
    if let Some(extra) = std::env::var_os("XENDM_REPLAY_FILES") {
        dirs.extend(std::env::split_paths(&extra));
    }
    dirs
}

/// The committed synthetic trace, regenerated first when asked to (or when
/// missing); every test goes through here so none races the generation.
fn synthetic() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let path = root().join("tests/traces/synthetic-all-types.jsonl.gz");
    ONCE.call_once(|| {
        write_boot_files();
        if std::env::var_os("XENDM_REGEN_TRACES").is_some() || !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            generate(&path);
        }
    });
    path
}

#[test]
fn synthetic_trace_covers_every_ioreq_type_and_replays() {
    let path = synthetic();
    let recs: Vec<trace::Record> = TraceReader::open(&path).unwrap().map(Result::unwrap).collect();
    let kinds: std::collections::HashSet<IoreqKind> = recs.iter().map(|r| r.req.kind).collect();
    for k in [IoreqKind::Pio, IoreqKind::Copy, IoreqKind::PciConfig, IoreqKind::TimeOffset, IoreqKind::Invalidate] {
        assert!(kinds.contains(&k), "trace lacks ioreq type {k:?}");
    }
    let has = |f: &dyn Fn(&trace::Record) -> bool| recs.iter().any(f);
    assert!(has(&|r| r.buffered), "buffered requests");
    assert!(has(&|r| r.req.data_is_ptr && r.req.is_read && !r.mem_writes.is_empty()), "rep ins into memory");
    assert!(has(&|r| r.req.data_is_ptr && !r.req.is_read && !r.mem_reads.is_empty()), "rep outs from memory");
    assert!(has(&|r| r.req.df), "df=1");
    assert!(has(&|r| r.mem_writes.iter().any(|w| w.sha256.is_some())), "fw_cfg DMA of kernel data");
    assert!(has(&|r| r.hv.iter().any(|c| matches!(c, HvCall::LinkRoute { .. }))), "PIRQ link routes");
    assert!(has(&|r| r.hv.iter().any(|c| matches!(c, HvCall::IsaIrq { irq: 4, .. }))), "UART IRQ");
    assert!(has(&|r| r.hv.iter().any(|c| matches!(c, HvCall::Shutdown { .. }))), "shutdown requests");
    assert!(has(&|r| !r.ranges.is_empty()), "BAR/PMBASE range changes");
    // The replay itself.
    let s = trace::replay(&path, &MachineRebuilder { dirs: replay_dirs() }).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.records, recs.len() as u64);
}

/// The files a lab trace was recorded with: Debian's kernel (fetched into
/// the cache) and the lab's guest initrd, which `tests/guest/mkinitrd`
/// rebuilds byte for byte (256 KiB payload, as `tests/lab/run` uses).
fn lab_guest_files() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xendm-replay-guest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let ok = |c: &mut std::process::Command| c.status().map(|s| s.success()).unwrap_or(false);
    let kernel = std::process::Command::new(root().join("tests/guest/fetch-kernel")).output().ok()?;
    let kernel = PathBuf::from(String::from_utf8_lossy(&kernel.stdout).trim());
    std::fs::copy(&kernel, dir.join("vmlinuz")).ok()?;
    let mk = root().join("tests/guest/mkinitrd");
    if !ok(std::process::Command::new(&mk).arg(dir.join("initrd.img")).arg("256").stdout(std::process::Stdio::null())) {
        return None;
    }
    Some(dir)
}

#[test]
fn every_committed_trace_replays() {
    synthetic();
    let all = traces();
    assert!(!all.is_empty(), "no traces in tests/traces");
    let mut lab_files: Option<Option<PathBuf>> = None;
    for t in all {
        let mut dirs = replay_dirs();
        let is_lab = t.file_name().is_some_and(|n| n.to_string_lossy().starts_with("lab-"));
        if is_lab {
            if let Some(d) = lab_files.get_or_insert_with(lab_guest_files) {
                dirs.push(d.clone());
            }
        }
        match trace::replay(&t, &MachineRebuilder { dirs }) {
            Ok(s) => eprintln!("{}: {} records replayed", t.display(), s.records),
            // A lab trace names Debian's kernel of the day it was recorded;
            // once Debian ships a new one, that exact file cannot be had and
            // the trace is re-recorded (LAB_RECORD=1 tests/lab/run). The lab
            // itself replays every trace it records, on every run.
            Err(trace::TraceError::Machine(m)) if is_lab && m.contains("no file with that content") => {
                eprintln!("SKIPPED {}: its boot files are no longer available: {m}", t.display());
            }
            Err(e) => panic!("{}: {e}", t.display()),
        }
    }
}

#[test]
fn a_tampered_trace_fails_at_the_right_record() {
    synthetic();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl.gz");
    generate(&path);
    let text = {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut s).unwrap();
        s
    };
    // Record 0 reads the i440FX vendor/device; claim it answered otherwise.
    let tampered = text.replacen("\"resp\":305627270", "\"resp\":305627271", 1);
    assert!(text != tampered, "fixture changed: record 0 no longer reads 0x12378086");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, tampered.as_bytes()).unwrap();
    gz.finish().unwrap();
    let e = trace::replay(&path, &MachineRebuilder { dirs: replay_dirs() }).unwrap_err().to_string();
    assert!(e.contains("record 0") && e.contains("expected: 305627271") && e.contains("actual:   305627270"), "{e}");
}

/// The boot timeline (`xendm::ioreq::timeline`) finds every phase, in boot
/// order, in the requests of the committed lab boot under real Xen.
#[test]
fn lab_trace_shows_every_boot_phase_in_order() {
    use xendm::ioreq::timeline::{BootTimeline, Phase};
    let path = root().join("tests/traces/lab-boot-linux61-xendm.jsonl.gz");
    let mut t = BootTimeline::new();
    let mut seen = Vec::new();
    for rec in TraceReader::open(&path).unwrap() {
        let rec = rec.unwrap();
        if !rec.buffered {
            for p in t.see(&rec.req) {
                seen.push((p, rec.i));
            }
        }
    }
    let phases: Vec<Phase> = seen.iter().map(|&(p, _)| p).collect();
    assert_eq!(phases, Phase::ALL, "phases and the records that started them: {seen:?}");
    eprintln!("boot phases by record: {seen:?}");
}
