//! `cargo bench --bench engine`: cost of the ioreq engine's hot paths.
//!
//! * `rep insb 4059 B`: the request QEMU's non-DMA linuxboot ROM makes 2,286
//!   times to load a 9 MB kernel (lab capture); one bulk guest write per
//!   4 KiB chunk here.
//! * `outb` / `inb`: one port access (the UART's THR write per character).
//! * `pci config read`: one PCI_CONFIG ioreq.
//!
//! Plain `std::time` harness (no dependency): each case runs for ~1 s after a
//! warm-up and prints the mean time per request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xendm::ioreq::abi::{Ioreq, IoreqKind};
use xendm::ioreq::engine::{Engine, NoHooks};
use xendm_devices::bus::{BusDevice, PciFunction, PciRegion, Sbdf};
use xendm_devices::mem::TestMemory;
use xendm_devices::Bus;

struct Data(u8);
impl BusDevice for Data {
    fn read(&mut self, _o: u64, d: &mut [u8]) {
        for b in d {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
    fn write(&mut self, _o: u64, d: &[u8]) {
        self.0 = d.first().copied().unwrap_or(0);
    }
}

struct Cfg;
impl PciFunction for Cfg {
    fn config_read(&mut self, _r: u16, d: &mut [u8]) {
        d.fill(0x86);
    }
    fn config_write(&mut self, _r: u16, _d: &[u8]) {}
    fn regions(&self) -> Vec<PciRegion> {
        Vec::new()
    }
    fn region_read(&mut self, _r: u8, _o: u64, d: &mut [u8]) {
        d.fill(0);
    }
    fn region_write(&mut self, _r: u8, _o: u64, _d: &[u8]) {}
}

fn bench(name: &str, bytes: u64, mut f: impl FnMut()) {
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    if bytes > 0 {
        let mbs = bytes as f64 / per * 1e9 / 1e6;
        println!("{name:<24} {per:>10.0} ns/request {mbs:>8.0} MB/s");
    } else {
        println!("{name:<24} {per:>10.0} ns/request");
    }
}

fn main() {
    let mem = Arc::new(TestMemory::pc(64 << 20).expect("test memory"));
    let mut bus = Bus::new();
    bus.register_pio(0x511, 1, "data", Arc::new(Mutex::new(Data(0))), 0).expect("register");
    bus.register_pci(Sbdf::new(0, 0), "cfg", Arc::new(Mutex::new(Cfg))).expect("register");
    let mut e = Engine::new(bus, mem, Box::new(NoHooks));
    let base = Ioreq {
        addr: 0x511,
        data: 0,
        count: 1,
        size: 1,
        data_is_ptr: false,
        is_read: true,
        df: false,
        kind: IoreqKind::Pio,
    };
    let rep = Ioreq { data: 0x100_0000, count: 4059, data_is_ptr: true, ..base };
    bench("rep insb 4059 B", 4059, || {
        black_box(e.handle(0, black_box(&rep)));
    });
    let out = Ioreq { is_read: false, data: 0x41, ..base };
    bench("outb", 0, || {
        black_box(e.handle(0, black_box(&out)));
    });
    bench("inb", 0, || {
        black_box(e.handle(0, black_box(&base)));
    });
    let pci = Ioreq { addr: 0, size: 4, kind: IoreqKind::PciConfig, ..base };
    bench("pci config read", 0, || {
        black_box(e.handle(0, black_box(&pci)));
    });
}
