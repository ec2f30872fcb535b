//! `cargo bench --bench serve_loop`: one ioreq round trip through the
//! server loop, with a fake event transport (issue 14 item 5).
//!
//! What one iteration does is what the DM does for every synchronous
//! request under Xen, minus the two system calls of the event channel:
//! the transport's `wait` returns the vCPU's port (the wakeup), the loop
//! unmasks it, checks the slot is READY, reads the `ioreq_t` out of the
//! shared page, runs the engine and the device, writes `data`, sets
//! IORESP_READY and notifies the port (`xen-abi.md` 1.3; `ioreq.h`).
//! The "Xen side" reposts the next request into the slot before each wakeup.
//!
//! Cases:
//! * `outb, trivial device`: the loop's own cost over a device that does
//!   nothing.
//! * `lab trace PIO mix, real machine`: every synchronous port request of
//!   the committed lab boot trace (`tests/traces/lab-boot-linux61-xendm`)
//!   replayed in order, round and round, against the real machine the trace
//!   was recorded on (rebuilt by `MachineRebuilder`: the kernel from
//!   `tests/guest/fetch-kernel`'s cache, the initrd rebuilt by
//!   `tests/guest/mkinitrd`). Skipped, with a line saying so, when those
//!   files are not there.
//!
//! `XENDM_BENCH_COUNT=N` runs each case exactly N times without timing, for
//! instruction counts under `valgrind --tool=callgrind` (`benches/callgrind-serve`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xendm::ioreq::abi::{Ioreq, IoreqKind, IoreqRaw, SLOT_SIZE, STATE_IOREQ_READY};
use xendm::ioreq::engine::{Engine, NoHooks};
use xendm::ioreq::handler::IoreqHandler;
use xendm::machine::replay::MachineRebuilder;
use xendm::trace::{ReplayMachine, TraceReader};
use xendm::xen::ioreq_server::{ServerCore, StopHandle, SyncPage, Transport, Wakeup};
use xendm::xen::XenError;
use xendm_devices::bus::{BusDevice, RangeChange};
use xendm_devices::hv::ShutdownReason;
use xendm_devices::mem::TestMemory;
use xendm_devices::{Bus, Hypervisor};

/// vCPU 0's local port.
const PORT: u32 = 100;

/// The synchronous page, 8-aligned like the real one is page-aligned.
struct Page(Box<[AtomicU64; 512]>);

impl Page {
    fn new() -> Self {
        Self(Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
    fn ptr(&self) -> NonNull<u8> {
        NonNull::new(self.0.as_ptr().cast_mut().cast::<u8>()).unwrap()
    }
    /// Posts `req` in vCPU 0's slot as Xen does: fields, then READY.
    fn post(&self, req: &Ioreq) {
        let raw: IoreqRaw = req.to_raw(STATE_IOREQ_READY, PORT);
        fence(Ordering::Release);
        // SAFETY: slot 0 of our own 4096-byte page (32 bytes, 8-aligned);
        // nothing else accesses the page while the loop is not running.
        unsafe { std::ptr::write_volatile(self.ptr().as_ptr().cast::<IoreqRaw>(), raw) };
        fence(Ordering::Release);
    }
}

/// Xen's side: each `wait` posts the next request and reports the port;
/// after `left` wakeups it reports Stop.
struct FakeXen<'a> {
    page: &'a Page,
    reqs: &'a [Ioreq],
    next: usize,
    left: u64,
    notified: u64,
}

impl Transport for FakeXen<'_> {
    fn wait(&mut self, _stop: &StopHandle, _timeout: Option<Duration>) -> Result<Wakeup, XenError> {
        if self.left == 0 {
            return Ok(Wakeup::Stop);
        }
        self.left -= 1;
        self.page.post(&self.reqs[self.next]);
        self.next = (self.next + 1) % self.reqs.len();
        Ok(Wakeup::Ports(vec![PORT]))
    }
    fn unmask(&mut self, _port: u32) -> Result<(), XenError> {
        Ok(())
    }
    fn notify(&mut self, _port: u32) -> Result<(), XenError> {
        self.notified += 1;
        Ok(())
    }
    fn apply(&mut self, _change: RangeChange) -> Result<(), XenError> {
        Ok(())
    }
}

/// Runs `n` round trips of `reqs` (cycled) through a fresh loop.
fn round_trips(page: &Page, engine: &mut dyn IoreqHandler, reqs: &[Ioreq], n: u64) {
    // SAFETY: the page outlives the core (both live in this function's caller
    // frame or longer); accesses are atomic or volatile.
    let sync = unsafe { SyncPage::new(page.ptr()) };
    let mut core = ServerCore::new(sync, None, &[PORT], None);
    let mut xen = FakeXen { page, reqs, next: 0, left: n, notified: 0 };
    let stop = StopHandle::new().unwrap();
    core.run(engine, &mut xen, &stop).unwrap();
    assert_eq!(xen.notified, n, "every request answered");
    assert_eq!(core.stats().answered, n);
}

fn bench(name: &str, page: &Page, engine: &mut dyn IoreqHandler, reqs: &[Ioreq]) {
    if let Some(n) = std::env::var("XENDM_BENCH_COUNT").ok().and_then(|v| v.parse::<u64>().ok()) {
        round_trips(page, engine, reqs, n);
        println!("{name:<40} {n} round trips (counting mode)");
        return;
    }
    round_trips(page, engine, reqs, 10_000);
    let batch = 10_000u64;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        round_trips(page, engine, reqs, batch);
        n += batch;
    }
    let per = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{name:<40} {per:>8.0} ns/round trip ({n} round trips)");
}

struct Nop;
impl BusDevice for Nop {
    fn read(&mut self, _o: u64, d: &mut [u8]) {
        d.fill(0);
    }
    fn write(&mut self, _o: u64, _d: &[u8]) {}
}

/// A hypervisor that drops every call (no growing log).
struct NullHv;
impl Hypervisor for NullHv {
    fn set_isa_irq_level(&self, _irq: u8, _level: bool) {}
    fn set_pci_intx_level(&self, _device: u8, _intx: u8, _level: bool) {}
    fn set_pci_link_route(&self, _link: u8, _irq: u8) {}
    fn inject_msi(&self, _addr: u64, _data: u32) {}
    fn shutdown(&self, _reason: ShutdownReason) {}
}

fn pio(addr: u64, read: bool) -> Ioreq {
    Ioreq { addr, data: 0x41, count: 1, size: 1, data_is_ptr: false, is_read: read, df: false, kind: IoreqKind::Pio }
}

fn trivial(page: &Page) {
    let mut bus = Bus::new();
    bus.register_pio(0x80, 1, "nop", Arc::new(Mutex::new(Nop)), 0).unwrap();
    let mut engine = Engine::new(bus, Arc::new(TestMemory::pc(2 << 20).unwrap()), Box::new(NoHooks));
    bench("outb, trivial device", page, &mut engine, &[pio(0x80, false)]);
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directories holding the lab trace's boot files, or why not.
fn lab_files(tmp: &Path) -> Result<Vec<PathBuf>, String> {
    let home = std::env::var_os("HOME").ok_or("no HOME")?;
    let kernel_dir = PathBuf::from(home).join(".cache/xendm/kernel");
    if !kernel_dir.join("vmlinuz").exists() {
        return Err(format!("no {} (run tests/guest/fetch-kernel)", kernel_dir.join("vmlinuz").display()));
    }
    let st = Command::new(repo().join("tests/guest/mkinitrd"))
        .arg(tmp.join("initrd.img"))
        .arg("256")
        .output()
        .map_err(|e| format!("tests/guest/mkinitrd: {e}"))?;
    if !st.status.success() {
        return Err(format!("tests/guest/mkinitrd failed: {}", String::from_utf8_lossy(&st.stderr)));
    }
    Ok(vec![kernel_dir, tmp.to_path_buf()])
}

fn lab_mix(page: &Page) {
    let trace = repo().join("tests/traces/lab-boot-linux61-xendm.jsonl.gz");
    let tmp = std::env::temp_dir().join(format!("xendm-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let dirs = match lab_files(&tmp) {
        Ok(d) => d,
        Err(why) => {
            println!("{:<40} SKIPPED: {why}", "lab trace PIO mix, real machine");
            return;
        }
    };
    let reader = TraceReader::open(&trace).unwrap();
    let header = reader.header.clone();
    let reqs: Vec<Ioreq> = reader
        .map(Result::unwrap)
        .filter(|r| !r.buffered && r.req.kind == IoreqKind::Pio && !r.req.data_is_ptr)
        .map(|r| r.req)
        .collect();
    let mem = Arc::new(TestMemory::pc(2 << 20).unwrap());
    let mut engine = match (MachineRebuilder { dirs }).build(&header, mem, Arc::new(NullHv)) {
        Ok(e) => e,
        Err(why) => {
            println!("{:<40} SKIPPED: {why}", "lab trace PIO mix, real machine");
            return;
        }
    };
    let _ = std::fs::remove_dir_all(&tmp);
    let name = format!("lab trace PIO mix ({} reqs), real machine", reqs.len());
    bench(&name, page, &mut engine, &reqs);
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let page = Page::new();
    assert_eq!(SLOT_SIZE, 32);
    if want("trivial") {
        trivial(&page);
    }
    if want("lab") {
        lab_mix(&page);
    }
}
