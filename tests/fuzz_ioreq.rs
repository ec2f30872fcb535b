//! Hostile-guest fuzzing of a whole machine through the ioreq engine.
//!
//! A full xenfv machine (with `-kernel`/`-initrd`, so fw_cfg and its DMA
//! interface are on the bus, and `-serial null`, so COM1 is there) is fed a
//! few hundred thousand pseudo-random requests from a fixed-seed xorshift
//! generator: port, MMIO and PCI-config accesses of valid and invalid sizes,
//! string operations with hostile pointers, counts and direction flags,
//! fw_cfg DMA descriptors with random control words, lengths and addresses,
//! buffered-ring requests and rings with nonsense pointers, and unknown
//! request types. Guest memory is scribbled on between requests.
//!
//! What is checked: nothing panics (a panic is reported with the iteration
//! and the request), every response is architecturally sane (a read without
//! a pointer answers at most `size` bytes, every other request answers its
//! own `data`), the range changes a request queues stay bounded, and after
//! the storm the machine still answers correctly (fw_cfg signature, PCI
//! vendor IDs, UART registers). The amount of work is bounded by the
//! iteration count and the engine's per-request limits; there is no
//! wall-clock assertion.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::GuestAddress;
use xendm::ioreq::abi::{BufSlot, Ioreq, IoreqKind, IOREQ_BUFFER_SLOT_NUM};
use xendm::ioreq::engine::{Engine, NoHooks};
use xendm::ioreq::handler::BufferedRing;
use xendm::machine::spec::MachineSpec;
use xendm::machine::{build, MachineBackends};
use xendm_devices::hv::FakeHypervisor;
use xendm_devices::mem::TestMemory;
use xendm_devices::{GuestMemory, Sbdf};

/// Requests per run; a debug build does them in a few seconds.
const ITERATIONS: u32 = 300_000;
/// Guest RAM (and `-m`): small, so DMA that runs off the end stops early.
const RAM_MIB: usize = 32;

/// Marsaglia's xorshift64*, fixed seed: the same requests every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Ports of every device on the machine, plus neighbours and strays.
const PORTS: &[u64] = &[
    0x10, 0x11, 0x12, 0x13, 0x14, 0x1f, 0x60, 0x64, 0x70, 0x71, 0x80, 0x92, 0xb2, 0xb3, 0x3f8, 0x3f9, 0x3fa, 0x3fb,
    0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x510, 0x511, 0x512, 0x514, 0x515, 0x518, 0x51b, 0xcf8, 0xcf9, 0xcfa, 0xcfc, 0xcfd,
    0xcfe, 0xcff, 0xafe0, 0xafe2, 0xb000, 0xb004, 0xb005, 0xb008, 0xb100, 0xc000, 0xc100, 0xffff,
];

/// MMIO addresses: where the platform device's BAR may be programmed, the
/// VGA hole, the LAPIC/IOAPIC, and the top of the address space.
const MMIO: &[u64] =
    &[0xa0000, 0xb8000, 0xf000_0000, 0xf100_0000, 0xfec0_0000, 0xfee0_0000, 0xffff_fff8, u64::MAX - 3, u64::MAX];

/// Guest-memory addresses for string buffers and DMA: ordinary RAM, the
/// edges of the VGA hole, the end of RAM, address 0 and the very top.
fn guest_addr(r: &mut Rng) -> u64 {
    let ram_end = (RAM_MIB as u64) << 20;
    match r.below(8) {
        0 => r.below(ram_end),
        1 => 0xa0000 - r.below(64),
        2 => 0xc0000 - r.below(64),
        3 => ram_end - r.below(64),
        4 => r.below(64),
        5 => u64::MAX - r.below(64),
        6 => r.next(),
        _ => 0x10000 + r.below(0x10000),
    }
}

/// Where the fuzzer keeps fw_cfg DMA descriptors.
const DESC_ZONE: u64 = 0x8000;

fn count(r: &mut Rng) -> u32 {
    match r.below(1000) {
        0 => u32::MAX,
        1 => r.next() as u32,
        2 => 1 + r.below(65536) as u32,
        3..=99 => r.below(600) as u32,
        _ => r.below(17) as u32,
    }
}

fn size(r: &mut Rng, mmio: bool) -> u32 {
    if r.chance(92) {
        if mmio {
            r.pick(&[1, 2, 4, 8])
        } else {
            r.pick(&[1, 2, 4])
        }
    } else {
        let wild = r.next() as u32;
        r.pick(&[0, 3, 5, 7, 8, 9, 16, u32::MAX, wild])
    }
}

/// Config-space SBDFs: the machine's functions, an absent one, garbage.
fn sbdf(r: &mut Rng) -> u64 {
    let s = match r.below(6) {
        0 => Sbdf::new(0, 0).to_u32(),
        1 => Sbdf::new(1, 0).to_u32(),
        2 => Sbdf::new(1, 3).to_u32(),
        3 => Sbdf::new(2, 0).to_u32(),
        4 => Sbdf::new(r.below(32) as u8, r.below(8) as u8).to_u32(),
        _ => r.next() as u32,
    };
    u64::from(s)
}

fn request(r: &mut Rng) -> Ioreq {
    let kind = match r.below(100) {
        0..=64 => IoreqKind::Pio,
        65..=79 => IoreqKind::Copy,
        80..=95 => IoreqKind::PciConfig,
        96 => IoreqKind::TimeOffset,
        97 => IoreqKind::Invalidate,
        _ => IoreqKind::from(r.next() as u8),
    };
    let mut req = Ioreq {
        addr: 0,
        data: r.next(),
        count: 1,
        size: 1,
        data_is_ptr: false,
        is_read: r.chance(50),
        df: r.chance(15),
        kind,
    };
    match kind {
        IoreqKind::Pio => {
            req.addr = match r.below(20) {
                0 => r.below(0x1_0000),
                1 => r.next(),
                _ => r.pick(PORTS),
            };
            req.size = size(r, false);
        }
        IoreqKind::Copy => {
            req.addr = if r.chance(10) { r.next() } else { r.pick(MMIO).wrapping_add(r.below(0x40)) };
            req.size = size(r, true);
            req.count = count(r);
        }
        IoreqKind::PciConfig => {
            let reg = if r.chance(95) { r.below(0x108) } else { u64::from(r.next() as u32) };
            req.addr = sbdf(r) << 32 | reg;
            req.size = size(r, false);
        }
        _ => {
            req.size = size(r, true);
        }
    }
    if r.chance(12) {
        req.data_is_ptr = true;
        req.count = count(r);
        req.data = guest_addr(r);
    }
    // Make the fw_cfg ports do something: select real items, point DMA at
    // the descriptor zone (the register holds the address big-endian).
    if kind == IoreqKind::Pio && !req.data_is_ptr && !req.is_read {
        match req.addr {
            0x510 if r.chance(80) => {
                req.size = 2;
                let wild = r.next();
                req.data = r.pick(&[
                    0x00, 0x01, 0x05, 0x08, 0x0b, 0x11, 0x12, 0x15, 0x18, 0x19, 0x20, 0x21, 0x22, 0x23, 0x24, 0x2f,
                    0x8000, 0x4019, 0xffff, wild,
                ]);
            }
            0x514 if r.chance(70) => {
                req.size = 4;
                req.data = if r.chance(90) { 0 } else { r.next() };
            }
            0x518 if r.chance(80) => {
                req.size = 4;
                let desc = DESC_ZONE + 16 * r.below(16);
                req.data = u64::from((desc as u32).swap_bytes());
            }
            _ => {}
        }
    }
    req
}

/// Writes a random `FWCfgDmaAccess` (big-endian control, length, address)
/// into one of the descriptor slots.
fn scribble_descriptor(r: &mut Rng, mem: &TestMemory) {
    let (wild_key, wild_ops) = (r.next() as u16, r.next() as u32 & 0xffff);
    let key =
        u32::from(r.pick(&[
            0x00u16, 0x01, 0x08, 0x11, 0x12, 0x18, 0x19, 0x20, 0x21, 0x22, 0x23, 0x2f, 0x8000, 0xffff, wild_key,
        ]));
    let ops = r.pick(&[0x02u32, 0x04, 0x08, 0x0a, 0x0c, 0x10, 0x18, 0x01, 0x1f, 0x00, wild_ops]);
    let control = key << 16 | ops;
    let length: u32 = match r.below(20) {
        0 => u32::MAX,
        1 => r.next() as u32,
        2..=4 => r.below(1 << 20) as u32,
        _ => r.below(4097) as u32,
    };
    let address = guest_addr(r);
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&control.to_be_bytes());
    d[4..8].copy_from_slice(&length.to_be_bytes());
    d[8..].copy_from_slice(&address.to_be_bytes());
    let slot = DESC_ZONE + 16 * r.below(16);
    mem.write(GuestAddress(slot), &d).unwrap();
}

/// A buffered ring with arbitrary pointers and slots, as a confused or
/// hostile writer could leave it.
struct JunkRing {
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
        self.slots[(index % IOREQ_BUFFER_SLOT_NUM) as usize]
    }
    fn advance_read_pointer(&self, n: u32) {
        self.rp.fetch_add(n, Ordering::Relaxed);
    }
}

fn junk_ring(r: &mut Rng) -> JunkRing {
    let rp = r.next() as u32;
    let wp = if r.chance(70) { rp.wrapping_add(r.below(40) as u32) } else { r.next() as u32 };
    let slots = (0..IOREQ_BUFFER_SLOT_NUM)
        .map(|_| {
            if r.chance(50) {
                let kind = r.pick(&[IoreqKind::Pio, IoreqKind::Copy]);
                let addr = if kind == IoreqKind::Pio { r.pick(PORTS) as u32 } else { r.pick(MMIO) as u32 };
                BufSlot { kind, is_read: false, size: r.pick(&[1, 2, 4, 8]), addr, data: r.next() as u32 }.encode()
            } else {
                r.next()
            }
        })
        .collect();
    JunkRing { rp: AtomicU32::new(rp), wp, slots }
}

fn machine(mem: Arc<TestMemory>, hv: Arc<FakeHypervisor>) -> Engine {
    let boot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot");
    let argv: Vec<String> = [
        "-xen-domid",
        "1",
        "-machine",
        "xenfv",
        "-m",
        &RAM_MIB.to_string(),
        "-serial",
        "null",
        "-boot",
        "order=cda",
        "-kernel",
        &boot.join("mini-bzImage").display().to_string(),
        "-initrd",
        &boot.join("mini-initrd").display().to_string(),
        "-append",
        "console=ttyS0",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let config = match xendm::cli::parse(argv.iter().map(Into::into)).unwrap() {
        xendm::cli::Command::Run(c) => c,
        other => panic!("{other:?}"),
    };
    let backends = MachineBackends { hv, mem, hooks: Box::new(NoHooks), serial_sinks: Vec::new() };
    let m = build(MachineSpec::from_config(&config).unwrap(), backends).unwrap();
    assert!(m.boot.is_some(), "fw_cfg must be on the bus");
    m.engine
}

fn pio(addr: u64, size: u32, is_read: bool, data: u64) -> Ioreq {
    Ioreq { addr, data, count: 1, size, data_is_ptr: false, is_read, df: false, kind: IoreqKind::Pio }
}

/// The response must be what the guest may architecturally see.
fn check_response(i: u32, req: &Ioreq, resp: u64) {
    let is_access = matches!(req.kind, IoreqKind::Pio | IoreqKind::Copy | IoreqKind::PciConfig);
    if is_access && req.is_read && !req.data_is_ptr {
        let bits = u64::from(req.size.min(8)) * 8;
        let fits = bits >= 64 || resp >> bits == 0;
        assert!(fits, "iteration {i}: read of size {} answered {resp:#x}: {req:?}", req.size);
    } else if is_access || matches!(req.kind, IoreqKind::TimeOffset | IoreqKind::Invalidate) {
        assert_eq!(resp, req.data, "iteration {i}: a write or pointer request must answer its own data: {req:?}");
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one loop of request kinds, read top to bottom
fn random_ioreqs_never_break_the_machine() {
    let mem = Arc::new(TestMemory::pc(RAM_MIB << 20).unwrap());
    let hv = Arc::new(FakeHypervisor::new());
    let mut engine = machine(mem.clone(), hv.clone());
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut max_changes = 0usize;
    let mut total_changes = 0usize;
    let mut hv_calls = 0usize;
    // fw_cfg DMA transfers started, by the control word they left: 0 (done) or ERROR.
    let (mut dma_ok, mut dma_err) = (0u32, 0u32);
    for i in 0..ITERATIONS {
        if r.chance(3) {
            scribble_descriptor(&mut r, &mem);
        }
        if r.chance(1) {
            // Random bytes where string operations read from.
            let mut junk = [0u8; 64];
            junk.iter_mut().for_each(|b| *b = r.next() as u8);
            let _ = mem.write(GuestAddress(0x10000 + r.below(0x10000)), &junk);
        }
        let buffered = r.below(1000);
        let outcome = if buffered < 3 {
            let ring = junk_ring(&mut r);
            catch_unwind(AssertUnwindSafe(|| {
                let n = engine.drain_buffered(&ring);
                assert!(n <= xendm::ioreq::engine::MAX_BUFFERED_PER_DRAIN, "drained {n}");
            }))
            .map_err(|_| format!("drain_buffered at iteration {i}"))
        } else if buffered < 30 {
            let mut req = request(&mut r);
            req.is_read = false;
            req.data_is_ptr = false;
            req.count = 1;
            catch_unwind(AssertUnwindSafe(|| {
                let resp = engine.handle_buffered_request(&req);
                check_response(i, &req, resp);
            }))
            .map_err(|_| format!("buffered request at iteration {i}: {req:?}"))
        } else {
            let req = request(&mut r);
            let vcpu = r.below(4) as u32;
            let result = catch_unwind(AssertUnwindSafe(|| {
                let resp = engine.handle(vcpu, &req);
                check_response(i, &req, resp);
            }))
            .map_err(|_| format!("request at iteration {i}: {req:?}"));
            let dma_kick =
                req.kind == IoreqKind::Pio && req.addr == 0x518 && req.size == 4 && !req.is_read && !req.data_is_ptr;
            if dma_kick && result.is_ok() {
                let desc = u64::from((req.data as u32).swap_bytes());
                let mut ctl = [0u8; 4];
                if (DESC_ZONE..DESC_ZONE + 256).contains(&desc) && mem.read(GuestAddress(desc), &mut ctl).is_ok() {
                    match u32::from_be_bytes(ctl) {
                        0 => dma_ok += 1,
                        1 => dma_err += 1,
                        _ => {}
                    }
                }
            }
            result
        };
        if let Err(what) = outcome {
            panic!("the machine panicked on a hostile {what}");
        }
        // The ioreq server takes the range changes after every request.
        let changes = engine.bus_mut().take_changes();
        max_changes = max_changes.max(changes.len());
        total_changes += changes.len();
        hv_calls += hv.take().len();
    }
    eprintln!("fuzz: {total_changes} range changes, {hv_calls} hypervisor calls, DMA {dma_ok} done / {dma_err} failed");
    assert!(max_changes <= 16, "one request queued {max_changes} range changes");
    // The storm reached the devices, not just the refusal paths.
    assert!(total_changes > 0, "no BAR or PMBASE was ever decoded");
    assert!(hv_calls > 0, "no device ever raised an interrupt or asked for a reset");
    assert!(dma_ok > 50 && dma_err > 50, "fw_cfg DMA: {dma_ok} transfers done, {dma_err} failed");

    // Still alive and still correct.
    engine.handle(0, &pio(0x510, 2, false, 0));
    let sig: Vec<u8> = (0..4).map(|_| engine.handle(0, &pio(0x511, 1, true, 0)) as u8).collect();
    assert_eq!(sig, b"QEMU", "fw_cfg signature after the storm");
    let cfg =
        |sbdf: Sbdf| Ioreq { addr: u64::from(sbdf.to_u32()) << 32, kind: IoreqKind::PciConfig, ..pio(0, 4, true, 0) };
    assert_eq!(engine.handle(0, &cfg(Sbdf::new(0, 0))), 0x1237_8086);
    assert_eq!(engine.handle(0, &cfg(Sbdf::new(1, 0))), 0x7000_8086);
    assert_eq!(engine.handle(0, &cfg(Sbdf::new(2, 0))), 0x0001_5853);
    // COM1 scratch register round trip.
    engine.handle(0, &pio(0x3ff, 1, false, 0x5a));
    assert_eq!(engine.handle(0, &pio(0x3ff, 1, true, 0)), 0x5a);
    // A DMA read of the signature into RAM.
    let desc = 0x7000u64;
    let mut d = [0u8; 16];
    d[..4].copy_from_slice(&(0x0000_0008u32 | 0x02).to_be_bytes()); // select key 0, read
    d[4..8].copy_from_slice(&4u32.to_be_bytes());
    d[8..].copy_from_slice(&0x7100u64.to_be_bytes());
    mem.write(GuestAddress(desc), &d).unwrap();
    engine.handle(0, &pio(0x514, 4, false, 0));
    engine.handle(0, &pio(0x518, 4, false, u64::from((desc as u32).swap_bytes())));
    let mut got = [0u8; 8];
    mem.read(GuestAddress(0x7100), &mut got[..4]).unwrap();
    mem.read(GuestAddress(desc), &mut got[4..]).unwrap();
    assert_eq!(&got[..4], b"QEMU");
    assert_eq!(got[4..], [0, 0, 0, 0], "DMA control word cleared on success");
}
