//! What the fuzz targets share (`docs/fuzzing.md`): the test boot files, a
//! full xenfv machine on fake guest memory, and ioreq decoding from
//! fuzzer bytes.
//!
//! Requests follow Xen's `public/hvm/ioreq.h` fields; the machine is the one
//! `tests/fuzz_ioreq.rs` builds (`-kernel`/`-initrd`, so fw_cfg and its DMA
//! interface are on the bus, and `-serial null`, so COM1 is there).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use xendm::ioreq::abi::{BufSlot, Ioreq, IoreqKind, IOREQ_BUFFER_SLOT_NUM};
use xendm::ioreq::engine::{Engine, NoHooks};
use xendm::ioreq::handler::BufferedRing;
use xendm::machine::spec::MachineSpec;
use xendm::machine::{build, MachineBackends};
use xendm_devices::hv::FakeHypervisor;
use xendm_devices::mem::TestMemory;
use xendm_devices::Sbdf;

/// Guest RAM of the fuzzed machine, in MiB: small, so DMA that runs off the
/// end of RAM stops early.
pub const RAM_MIB: usize = 16;

/// Where fuzzers put fw_cfg DMA descriptors (16 slots of 16 bytes).
pub const DESC_ZONE: u64 = 0x8000;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `tests/data/boot`: the small bzImage and initrd tests boot.
pub fn boot_dir() -> PathBuf {
    repo().join("tests/data/boot")
}

/// A full xenfv machine with direct kernel boot on `mem` and `hv`.
///
/// # Panics
/// If the fixed command line or the test kernel no longer builds a machine.
pub fn machine(mem: Arc<TestMemory>, hv: Arc<FakeHypervisor>) -> Engine {
    let boot = boot_dir();
    let (kernel, initrd) = (boot.join("mini-bzImage"), boot.join("mini-initrd"));
    let ram = RAM_MIB.to_string();
    let argv = [
        "-xen-domid",
        "1",
        "-machine",
        "xenfv",
        "-m",
        &ram,
        "-serial",
        "null",
        "-boot",
        "order=cda",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initrd.display().to_string(),
        "-append",
        "console=ttyS0",
    ]
    .map(std::ffi::OsString::from);
    let xendm::cli::Command::Run(config) = xendm::cli::parse(argv).unwrap() else { panic!("not a run") };
    let backends = MachineBackends { hv, mem, hooks: Box::new(NoHooks), serial_sinks: Vec::new() };
    build(MachineSpec::from_config(&config).unwrap(), backends).unwrap().engine
}

/// Ports of every device on the machine, plus neighbours and strays.
pub const PORTS: &[u64] = &[
    0x10, 0x11, 0x12, 0x13, 0x14, 0x1f, 0x60, 0x64, 0x70, 0x71, 0x80, 0x92, 0xb2, 0xb3, 0x3f8, 0x3f9, 0x3fa, 0x3fb,
    0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x510, 0x511, 0x512, 0x514, 0x515, 0x518, 0x51b, 0xcf8, 0xcf9, 0xcfa, 0xcfc, 0xcfd,
    0xcfe, 0xcff, 0xafe0, 0xafe2, 0xb000, 0xb004, 0xb005, 0xb008, 0xb100, 0xc000, 0xc100, 0xffff,
];

/// MMIO addresses: BAR places, the VGA hole, LAPIC/IOAPIC, the very top.
pub const MMIO: &[u64] =
    &[0xa0000, 0xb8000, 0xf000_0000, 0xf100_0000, 0xfec0_0000, 0xfee0_0000, 0xffff_fff8, u64::MAX - 3, u64::MAX];

/// A guest-physical address: RAM, its edges, the descriptor zone, or any.
///
/// # Errors
/// Never in practice (`Unstructured` yields zeros once empty).
pub fn guest_addr(u: &mut Unstructured<'_>) -> Result<u64> {
    let ram_end = (RAM_MIB as u64) << 20;
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u.int_in_range(0..=ram_end - 1)?,
        1 => 0xa0000 - u64::from(u.int_in_range(0..=63u8)?),
        2 => ram_end - u64::from(u.int_in_range(0..=63u8)?),
        3 => u64::MAX - u64::from(u.int_in_range(0..=63u8)?),
        4 => DESC_ZONE + 16 * u64::from(u.int_in_range(0..=15u8)?),
        5 => u.arbitrary()?,
        _ => 0x10000 + u64::from(u.int_in_range(0..=0xffffu32)?),
    })
}

fn size(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0..=15u8)? {
        0 => u.arbitrary()?,
        1 => 0,
        2 => 3,
        n => [1, 2, 4, 8][usize::from(n % 4)],
    })
}

fn count(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => u.arbitrary()?,
        1 => u32::MAX,
        2 => u.int_in_range(0..=4096)?,
        _ => u.int_in_range(0..=16)?,
    })
}

/// One request: port, MMIO or PCI-config accesses (any size, count,
/// direction, pointer), the two control types, or an unknown type.
///
/// # Errors
/// Never in practice.
pub fn ioreq(u: &mut Unstructured<'_>) -> Result<Ioreq> {
    let kind = match u.int_in_range(0..=31u8)? {
        0..=17 => IoreqKind::Pio,
        18..=23 => IoreqKind::Copy,
        24..=28 => IoreqKind::PciConfig,
        29 => IoreqKind::TimeOffset,
        30 => IoreqKind::Invalidate,
        _ => IoreqKind::from(u.arbitrary::<u8>()?),
    };
    let flags: u8 = u.arbitrary()?;
    let mut req = Ioreq {
        addr: 0,
        data: u.arbitrary()?,
        count: 1,
        size: size(u)?,
        data_is_ptr: flags & 0x0f == 0,
        is_read: flags & 0x10 != 0,
        df: flags & 0x20 != 0,
        kind,
    };
    req.addr = match kind {
        IoreqKind::Pio if flags & 0xc0 != 0 => PORTS[usize::from(u.int_in_range(0..=PORTS.len() as u8 - 1)?)],
        IoreqKind::Copy if flags & 0xc0 != 0 => {
            MMIO[usize::from(u.int_in_range(0..=MMIO.len() as u8 - 1)?)].wrapping_add(u.int_in_range(0..=0x3f)?)
        }
        IoreqKind::PciConfig => {
            let sbdf = Sbdf::new(u.int_in_range(0..=31)?, u.int_in_range(0..=7)?).to_u32();
            (u64::from(sbdf) << 32) | u64::from(u.int_in_range(0..=0x10fu16)?)
        }
        _ => u.arbitrary()?,
    };
    if req.data_is_ptr || kind == IoreqKind::Copy {
        req.count = count(u)?;
    }
    if req.data_is_ptr {
        req.data = guest_addr(u)?;
    }
    Ok(req)
}

/// A buffered ring as a hostile guest could leave it: any pointers, slots
/// holding real buffered requests or garbage.
pub struct JunkRing {
    rp: AtomicU32,
    wp: u32,
    slots: Vec<u64>,
}

impl BufferedRing for JunkRing {
    fn read_pointer(&self) -> u32 {
        self.rp.load(Ordering::Relaxed)
    }
    fn write_pointer(&self) -> u32 {
        self.wp
    }
    fn slot(&self, index: u32) -> u64 {
        self.slots.get((index % IOREQ_BUFFER_SLOT_NUM) as usize).copied().unwrap_or(0)
    }
    fn advance_read_pointer(&self, n: u32) {
        self.rp.fetch_add(n, Ordering::Relaxed);
    }
}

/// A junk ring decoded from fuzzer bytes.
///
/// # Errors
/// Never in practice.
pub fn junk_ring(u: &mut Unstructured<'_>) -> Result<JunkRing> {
    let rp: u32 = u.arbitrary()?;
    let wp = if u.arbitrary()? { rp.wrapping_add(u.int_in_range(0..=600)?) } else { u.arbitrary()? };
    let mut slots = Vec::with_capacity(IOREQ_BUFFER_SLOT_NUM as usize);
    for _ in 0..IOREQ_BUFFER_SLOT_NUM {
        let slot = if u.arbitrary()? {
            let kind = if u.arbitrary()? { IoreqKind::Pio } else { IoreqKind::Copy };
            let addr = if kind == IoreqKind::Pio {
                PORTS[usize::from(u.int_in_range(0..=PORTS.len() as u8 - 1)?)] as u32
            } else {
                MMIO[usize::from(u.int_in_range(0..=MMIO.len() as u8 - 1)?)] as u32
            };
            let size = [1, 2, 4, 8][usize::from(u.int_in_range(0..=3u8)?)];
            BufSlot { kind, is_read: false, size, addr, data: u.arbitrary()? }.encode()
        } else {
            u.arbitrary()?
        };
        slots.push(slot);
    }
    Ok(JunkRing { rp: AtomicU32::new(rp), wp, slots })
}

/// Panics unless `resp` is what an architecturally sane device model
/// answers to `req` (as `tests/fuzz_ioreq.rs` checks): a read without a
/// pointer answers at most `size` bytes; every other request its own data.
pub fn check_response(req: &Ioreq, resp: u64) {
    let is_access = matches!(req.kind, IoreqKind::Pio | IoreqKind::Copy | IoreqKind::PciConfig);
    if is_access && req.is_read && !req.data_is_ptr {
        let bits = u64::from(req.size.min(8)) * 8;
        assert!(bits >= 64 || resp >> bits == 0, "read of size {} answered {resp:#x}: {req:?}", req.size);
    } else if is_access || matches!(req.kind, IoreqKind::TimeOffset | IoreqKind::Invalidate) {
        assert_eq!(resp, req.data, "a write or pointer request must answer its own data: {req:?}");
    }
}

/// Guest RAM the loader targets plan for, in MiB: anything a loader
/// allocates beyond this is sized by the file, not by the layout (the
/// campaign's `-malloc_limit_mb=64` catches it).
pub const LOADER_RAM_MIB: u64 = 32;

/// Runs one loader on `kernel` as the whole kernel file (in memory, no
/// file opened), with a fixed initrd, command line and a
/// [`LOADER_RAM_MIB`] layout; also runs format detection. The outcome is
/// not checked: a panic, a leak or an oversized allocation is the finding.
pub fn load_kernel(protocol: xendm_fw_cfg::BootProtocol, kernel: &[u8]) {
    use std::path::{Path, PathBuf};
    use xendm_fw_cfg::{BootProtocol, FwCfgItems, FwCfgOptions, LoadError, LoadedFile, RamLayout};
    let _ = xendm_fw_cfg::detect(kernel);
    let mut fw = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
    let layout = RamLayout::xen(LOADER_RAM_MIB, None);
    let file = |path: &str, data: Vec<u8>| LoadedFile::from_bytes(PathBuf::from(path), data);
    let kernel = file("/fuzz/kernel", kernel.to_vec());
    let initrd = file("/fuzz/initrd", vec![0x5a; 3000]);
    let cmdline = "console=ttyS0 quiet";
    match protocol {
        BootProtocol::Linux => drop(xendm_fw_cfg::linux::load(&mut fw, &kernel, Some(&initrd), cmdline, &layout)),
        BootProtocol::Pvh => drop(xendm_fw_cfg::pvh::load(&mut fw, &kernel, Some(&initrd), cmdline, &layout)),
        BootProtocol::Multiboot => {
            let mut read = |p: &Path| -> std::result::Result<LoadedFile, LoadError> {
                Ok(file(&p.display().to_string(), vec![0xa5; 1000]))
            };
            let modules = Some("/fuzz/mod1 arg=1,/fuzz/mod2");
            drop(xendm_fw_cfg::multiboot::load(&mut fw, &kernel, modules, cmdline, &layout, &mut read));
        }
    }
}
