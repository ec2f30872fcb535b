//! The ioreq engine: one request in, the bus and guest memory in between, one
//! response out. Pure: no Xen, no threads, no clocks.
//!
//! Semantics follow Xen's `public/hvm/ioreq.h` and what QEMU does with each
//! request (`hw/xen/xen-hvm-common.c`, `cpu_ioreq_pio`/`cpu_ioreq_move`/
//! `cpu_ioreq_config`):
//!
//! * **PIO** (`size` 1, 2 or 4). Without `data_is_ptr` one access at port
//!   `addr` (a write uses the low `size` bytes of `data`). With it, a `rep
//!   ins`/`rep outs`: `count` accesses to the *same* port, element `i` of the
//!   guest buffer at `data + i*size`, or `data - i*size` when `df` is set.
//! * **COPY** (MMIO, `size` 1..=8). Without `data_is_ptr`, `count` accesses at
//!   `addr ± i*size` using `data` as the register (a read returns the last
//!   value). With it, a `rep movs` between MMIO (`addr ± i*size`) and guest
//!   RAM (`data ± i*size`): a read copies MMIO to RAM, a write RAM to MMIO.
//! * **PCI_CONFIG** (`size` 1, 2 or 4): `addr >> 32` is the SBDF in Xen's
//!   packing, the low 32 bits the register.
//! * **TIMEOFFSET**: the guest moved its RTC; passed to [`EngineHooks`].
//! * **INVALIDATE**: drop cached guest mappings; passed to [`EngineHooks`]
//!   and finished before the response.
//! * Buffered requests (the ring) are single writes; see [`Engine::drain_buffered`].
//!
//! String I/O is done here, once, in chunks: for `rep ins` the device is read
//! element by element into a bounded buffer which is then copied to guest
//! memory in one access per chunk, so a 4 KiB `rep insb` from fw_cfg costs one
//! guest-memory write instead of 4096.
//!
//! ## Hostile input and bounds
//! A size that is not valid for the type, an unknown type, or a `count * size`
//! above [`MAX_REP_BYTES`] (1 MiB; Xen never sends more than a page) is
//! refused: a read answers all-ones, a write is dropped, and the event is
//! logged at a limited rate. The work per request is therefore at most
//! 1 Mi device accesses and 1 MiB of guest copies, and the buffer is at most
//! [`CHUNK_BYTES`]. A guest buffer that cannot be accessed stops the string
//! operation at that element: device reads already made are not undone
//! (as on hardware, where the fault comes after the port read), and no
//! device sees a write of data that could not be read.
use std::sync::Arc;

use vm_memory::GuestAddress;
use xendm_devices::bus::{le_value, put_le, RangeChange, Sbdf};
use xendm_devices::ratelimit::RateLimit;
use xendm_devices::{Bus, GuestMemory};

use crate::ioreq::abi::{BufSlot, Ioreq, IoreqKind, IOREQ_BUFFER_SLOT_NUM};
use crate::ioreq::handler::{BufferedRing, IoreqHandler};
use crate::ioreq::observer::{IoreqObserver, Served, BUFFERED_VCPU};

/// Largest `count * size` served for one request.
pub const MAX_REP_BYTES: u64 = 1 << 20;
/// Size of the bounce buffer for string I/O.
pub const CHUNK_BYTES: usize = 4096;
/// Most buffered requests handled per [`Engine::drain_buffered`] call, so a
/// ring that keeps refilling cannot starve the synchronous requests.
pub const MAX_BUFFERED_PER_DRAIN: usize = 4 * IOREQ_BUFFER_SLOT_NUM as usize;

/// Effects of requests that are not device accesses.
pub trait EngineHooks: Send {
    /// Drop every cached mapping of guest memory (an INVALIDATE request).
    fn invalidate_mapcache(&self);
    /// The guest's RTC offset changed to `seconds` (TIMEOFFSET).
    fn time_offset(&self, seconds: i64);
}

/// Hooks that do nothing, for machines without a mapcache (tests).
pub struct NoHooks;

impl EngineHooks for NoHooks {
    fn invalidate_mapcache(&self) {}
    fn time_offset(&self, _seconds: i64) {}
}

/// Serves ioreqs against a bus and guest memory.
pub struct Engine {
    bus: Bus,
    mem: Arc<dyn GuestMemory>,
    hooks: Box<dyn EngineHooks>,
    observer: Option<Box<dyn IoreqObserver>>,
    bad_request_log: RateLimit,
    mem_fault_log: RateLimit,
}

impl Engine {
    /// An engine over `bus`, reading and writing guest memory through `mem`.
    pub fn new(bus: Bus, mem: Arc<dyn GuestMemory>, hooks: Box<dyn EngineHooks>) -> Self {
        Self {
            bus,
            mem,
            hooks,
            observer: None,
            bad_request_log: RateLimit::per_second(),
            mem_fault_log: RateLimit::per_second(),
        }
    }

    /// The bus, for registration with the hypervisor and range changes.
    pub fn bus_mut(&mut self) -> &mut Bus {
        &mut self.bus
    }

    /// Reports every request served from now on to `observer` (the trace
    /// recorder, when recording).
    pub fn set_observer(&mut self, observer: Box<dyn IoreqObserver>) {
        self.observer = Some(observer);
    }

    /// Stops reporting and returns the observer (to flush it).
    pub fn take_observer(&mut self) -> Option<Box<dyn IoreqObserver>> {
        self.observer.take()
    }

    /// Emulates one synchronous request for vCPU `vcpu` and returns the value
    /// for the response's `data` field (for writes and pointer requests, the
    /// request's own `data`).
    pub fn handle(&mut self, vcpu: u32, req: &Ioreq) -> u64 {
        self.observed(vcpu, false, req)
    }

    /// Handles every buffered request now in the ring (at most
    /// [`MAX_BUFFERED_PER_DRAIN`]), following Xen's pointer rules: read
    /// `read_pointer`, then `write_pointer`, then re-read `read_pointer` and
    /// retry if Xen rebased the pair meanwhile; an 8-byte datum takes two slots
    /// and is consumed only once both are written. Returns how many requests
    /// were handled.
    pub fn drain_buffered(&mut self, ring: &dyn BufferedRing) -> usize {
        let mut handled = 0;
        let mut retries = 0u32;
        while handled < MAX_BUFFERED_PER_DRAIN {
            let rp = ring.read_pointer();
            let wp = ring.write_pointer();
            if ring.read_pointer() != rp {
                retries += 1;
                if retries > 64 {
                    break;
                }
                continue;
            }
            let pending = wp.wrapping_sub(rp);
            if pending == 0 {
                break;
            }
            if pending > IOREQ_BUFFER_SLOT_NUM {
                self.log_bad(&format!("buffered ring pointers inconsistent: read {rp} write {wp}"));
                break;
            }
            let slot = BufSlot::decode(ring.slot(rp % IOREQ_BUFFER_SLOT_NUM));
            let mut data = u64::from(slot.data);
            let used = if slot.size == 8 {
                if pending < 2 {
                    break; // the high half is not written yet: come back later
                }
                let high = BufSlot::decode(ring.slot(rp.wrapping_add(1) % IOREQ_BUFFER_SLOT_NUM)).data;
                data |= u64::from(high) << 32;
                2
            } else {
                1
            };
            let req = Ioreq {
                addr: u64::from(slot.addr),
                data,
                count: 1,
                size: slot.size,
                data_is_ptr: false,
                is_read: false,
                df: false,
                kind: slot.kind,
            };
            self.observed(BUFFERED_VCPU, true, &req);
            ring.advance_read_pointer(used);
            handled += 1;
        }
        handled
    }

    /// Emulates `req`, reporting it when an observer is set. `vcpu` is
    /// [`BUFFERED_VCPU`] for buffered requests.
    fn observed(&mut self, vcpu: u32, buffered: bool, req: &Ioreq) -> u64 {
        let Some(obs) = &mut self.observer else { return self.emulate(req) };
        obs.begin();
        let before = self.bus.pending_changes().len();
        let resp = self.emulate(req);
        let ranges = self.bus.pending_changes().get(before..).unwrap_or(&[]);
        if let Some(obs) = &mut self.observer {
            obs.finish(&Served { vcpu, buffered, req, resp, ranges });
        }
        resp
    }

    /// Emulates one buffered request (already decoded from the ring); for
    /// replay, which has no ring.
    pub fn handle_buffered_request(&mut self, req: &Ioreq) -> u64 {
        self.observed(BUFFERED_VCPU, true, req)
    }

    fn log_bad(&mut self, what: &str) {
        if let Some(suppressed) = self.bad_request_log.check() {
            tracing::warn!(suppressed, "refused ioreq: {what}");
        }
    }

    fn log_mem(&mut self, e: &xendm_devices::MemError, what: &str) {
        if let Some(suppressed) = self.mem_fault_log.check() {
            tracing::warn!(suppressed, error = %e, "{what}: guest buffer not accessible; string operation stopped");
        }
    }

    /// All-ones for a refused read; the request's data for anything else.
    fn refuse(&mut self, req: &Ioreq, why: &str) -> u64 {
        let msg = format!(
            "{why} (type {} addr {:#x} size {} count {} ptr {} read {})",
            req.kind.name(),
            req.addr,
            req.size,
            req.count,
            req.data_is_ptr,
            req.is_read
        );
        self.log_bad(&msg);
        if req.is_read && !req.data_is_ptr {
            ones(req.size)
        } else {
            req.data
        }
    }

    fn emulate(&mut self, req: &Ioreq) -> u64 {
        let kind = req.kind;
        let size_ok = match kind {
            IoreqKind::Pio | IoreqKind::PciConfig => matches!(req.size, 1 | 2 | 4),
            IoreqKind::Copy => (1..=8).contains(&req.size),
            IoreqKind::TimeOffset => {
                self.hooks.time_offset(req.data as i64);
                return req.data;
            }
            IoreqKind::Invalidate => {
                self.hooks.invalidate_mapcache();
                return req.data;
            }
            IoreqKind::Unknown(_) => return self.refuse(req, "unknown ioreq type"),
        };
        if !size_ok {
            return self.refuse(req, "invalid access size");
        }
        let size = req.size as usize; // 1..=8
        if !req.data_is_ptr {
            return self.single(kind, req, size);
        }
        let total = u64::from(req.count) * u64::from(req.size);
        if total > MAX_REP_BYTES {
            return self.refuse(req, "string operation too large");
        }
        self.string(kind, req, size);
        req.data
    }

    /// Device-side address of element `i`: ports and config registers stay
    /// put, MMIO steps with the direction flag.
    ///
    /// This and the device helpers below are reached only for the three
    /// access kinds ([`Self::emulate`] answers the others first); for those
    /// others they touch no device.
    fn device_addr(kind: IoreqKind, req: &Ioreq, i: u64) -> u64 {
        match kind {
            IoreqKind::Copy => step(req.addr, i * u64::from(req.size), req.df),
            IoreqKind::Pio | IoreqKind::PciConfig => req.addr,
            IoreqKind::TimeOffset | IoreqKind::Invalidate | IoreqKind::Unknown(_) => req.addr,
        }
    }

    fn device_read(&mut self, kind: IoreqKind, addr: u64, buf: &mut [u8]) {
        match kind {
            IoreqKind::Pio => self.bus.pio_read(addr, buf),
            IoreqKind::Copy => self.bus.mmio_read(addr, buf),
            IoreqKind::PciConfig => match pci_split(addr) {
                Some((sbdf, reg)) => self.bus.pci_config_read(sbdf, reg, buf),
                None => buf.fill(0xff),
            },
            IoreqKind::TimeOffset | IoreqKind::Invalidate | IoreqKind::Unknown(_) => buf.fill(0xff),
        }
    }

    fn device_write(&mut self, kind: IoreqKind, addr: u64, buf: &[u8]) {
        match kind {
            IoreqKind::Pio => self.bus.pio_write(addr, buf),
            IoreqKind::Copy => self.bus.mmio_write(addr, buf),
            IoreqKind::PciConfig => {
                if let Some((sbdf, reg)) = pci_split(addr) {
                    self.bus.pci_config_write(sbdf, reg, buf);
                }
            }
            IoreqKind::TimeOffset | IoreqKind::Invalidate | IoreqKind::Unknown(_) => {}
        }
    }

    fn single(&mut self, kind: IoreqKind, req: &Ioreq, size: usize) -> u64 {
        // PIO and PCI config ignore `count` without a pointer (QEMU does the
        // same); MMIO repeats the access (`rep stos` to MMIO).
        let reps = match kind {
            IoreqKind::Copy => u64::from(req.count.max(1)),
            _ => 1,
        };
        if reps * u64::from(req.size) > MAX_REP_BYTES {
            return self.refuse(req, "repeated access too large");
        }
        let mut buf = [0u8; 8];
        let Some(b) = buf.get_mut(..size) else { return req.data };
        if req.is_read {
            for i in 0..reps {
                let a = Self::device_addr(kind, req, i);
                self.device_read(kind, a, b);
            }
            le_value(b)
        } else {
            put_le(b, req.data);
            for i in 0..reps {
                let a = Self::device_addr(kind, req, i);
                self.device_write(kind, a, b);
            }
            req.data
        }
    }

    /// `rep ins/outs/movs`: elements of `size` bytes between the device and
    /// the guest buffer at `req.data`, in chunks of at most [`CHUNK_BYTES`].
    fn string(&mut self, kind: IoreqKind, req: &Ioreq, size: usize) {
        let count = u64::from(req.count);
        let per_chunk = (CHUNK_BYTES / size) as u64;
        let mut chunk = [0u8; CHUNK_BYTES];
        let mut done = 0u64;
        while done < count {
            let n = per_chunk.min(count - done);
            let bytes = (n as usize) * size;
            let Some(buf) = chunk.get_mut(..bytes) else { return };
            // Guest addresses of elements done..done+n: ascending from `lo`
            // in memory. With df the logical order is the reverse.
            let first = step(req.data, done * size as u64, req.df);
            let last = step(req.data, (done + n - 1) * size as u64, req.df);
            let lo = if req.df { last } else { first };
            let slot_of = |k: u64| -> std::ops::Range<usize> {
                // Memory position of logical element done+k within `buf`.
                let pos = if req.df { n - 1 - k } else { k } as usize * size;
                pos..pos + size
            };
            if req.is_read {
                self.device_read_elements(kind, req, done, n, size, buf);
                if let Err(e) = self.mem.write(GuestAddress(lo), buf) {
                    // Fall back to element by element, in logical order, so
                    // every element that can land does, up to the first fault.
                    self.log_mem(&e, "rep read");
                    for k in 0..n {
                        let ga = step(req.data, (done + k) * size as u64, req.df);
                        let Some(src) = buf.get(slot_of(k)) else { return };
                        if self.mem.write(GuestAddress(ga), src).is_err() {
                            return;
                        }
                    }
                }
            } else {
                let mut ok_elems = n;
                if let Err(e) = self.mem.read(GuestAddress(lo), buf) {
                    self.log_mem(&e, "rep write");
                    ok_elems = 0;
                    for k in 0..n {
                        let ga = step(req.data, (done + k) * size as u64, req.df);
                        let r = slot_of(k);
                        let Some(dst) = buf.get_mut(r) else { return };
                        if self.mem.read(GuestAddress(ga), dst).is_err() {
                            break;
                        }
                        ok_elems += 1;
                    }
                }
                self.device_write_elements(kind, req, done, ok_elems, size, buf);
                if ok_elems < n {
                    return;
                }
            }
            done += n;
        }
    }
}

impl Engine {
    /// Reads elements `done..done+n` from the device into `buf`, which holds
    /// them in memory order (reversed when `df`).
    fn device_read_elements(&mut self, kind: IoreqKind, req: &Ioreq, done: u64, n: u64, size: usize, buf: &mut [u8]) {
        if kind == IoreqKind::Pio {
            // One port for every element: one lookup, one lock.
            self.bus.read_repeated(xendm_devices::Space::Pio, req.addr, size, buf);
            if req.df {
                reverse_elements(buf, size);
            }
            return;
        }
        for k in 0..n {
            let a = Self::device_addr(kind, req, done + k);
            let pos = if req.df { n - 1 - k } else { k } as usize * size;
            if let Some(e) = buf.get_mut(pos..pos + size) {
                self.device_read(kind, a, e);
            }
        }
    }

    /// Writes the first `n` logical elements (from `done`) held in `buf` in
    /// memory order to the device.
    fn device_write_elements(&mut self, kind: IoreqKind, req: &Ioreq, done: u64, n: u64, size: usize, buf: &mut [u8]) {
        let total = n as usize * size;
        if kind == IoreqKind::Pio && !req.df {
            if let Some(b) = buf.get(..total) {
                self.bus.write_repeated(xendm_devices::Space::Pio, req.addr, size, b);
            }
            return;
        }
        let count = buf.len() / size;
        for k in 0..n {
            let a = Self::device_addr(kind, req, done + k);
            let pos = if req.df { count - 1 - k as usize } else { k as usize } * size;
            let mut v = [0u8; 8];
            let (Some(e), Some(src)) = (v.get_mut(..size), buf.get(pos..pos + size)) else { return };
            e.copy_from_slice(src);
            self.device_write(kind, a, e);
        }
    }
}

impl IoreqHandler for Engine {
    fn handle(&mut self, vcpu: u32, req: &Ioreq) -> u64 {
        Self::handle(self, vcpu, req)
    }
    fn drain_buffered(&mut self, ring: &dyn BufferedRing) -> usize {
        Self::drain_buffered(self, ring)
    }
    fn take_range_changes(&mut self) -> Vec<RangeChange> {
        self.bus.take_changes()
    }
}

/// Reverses the order of `size`-byte elements in `buf`.
fn reverse_elements(buf: &mut [u8], size: usize) {
    let n = buf.len() / size;
    for i in 0..n / 2 {
        let j = n - 1 - i;
        for b in 0..size {
            buf.swap(i * size + b, j * size + b);
        }
    }
}

/// `base + off` or `base - off`, wrapping as QEMU's `rw_phys_req_item` does.
fn step(base: u64, off: u64, down: bool) -> u64 {
    if down {
        base.wrapping_sub(off)
    } else {
        base.wrapping_add(off)
    }
}

/// Splits a PCI_CONFIG address into SBDF and register (registers above
/// 0xffff cannot exist and read as absent).
fn pci_split(addr: u64) -> Option<(Sbdf, u16)> {
    let reg = u16::try_from(addr & 0xffff_ffff).ok()?;
    Some((Sbdf::from_u32((addr >> 32) as u32), reg))
}

/// All-ones of `size` bytes (capped at 8).
fn ones(size: u32) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (size * 8)) - 1,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::IoreqRaw;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use xendm_devices::bus::BusDevice;
    use xendm_devices::mem::TestMemory;

    /// Returns 0x10, 0x11, 0x12... on each read; remembers writes.
    #[derive(Default)]
    struct Counter {
        next: u8,
        writes: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Counter {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            for b in data {
                *b = 0x10u8.wrapping_add(self.next);
                self.next = self.next.wrapping_add(1);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    struct Fixture {
        engine: Engine,
        mem: Arc<TestMemory>,
        dev: Arc<Mutex<Counter>>,
        invalidations: Arc<AtomicUsize>,
    }

    struct CountHooks(Arc<AtomicUsize>, Arc<Mutex<Vec<i64>>>);
    impl EngineHooks for CountHooks {
        fn invalidate_mapcache(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn time_offset(&self, seconds: i64) {
            self.1.lock().unwrap().push(seconds);
        }
    }

    fn fixture() -> Fixture {
        let mem = Arc::new(TestMemory::pc(4 << 20).unwrap());
        let dev = Arc::new(Mutex::new(Counter::default()));
        let mut bus = Bus::new();
        bus.register_pio(0x511, 1, "ctr", dev.clone(), 0).unwrap();
        bus.register_pio(0x520, 4, "ctr-wide", dev.clone(), 0).unwrap();
        bus.register_mmio(0xfed0_0000, 0x1000, "ctr-mmio", dev.clone(), 0).unwrap();
        let inv = Arc::new(AtomicUsize::new(0));
        let hooks = CountHooks(inv.clone(), Arc::new(Mutex::new(Vec::new())));
        Fixture { engine: Engine::new(bus, mem.clone(), Box::new(hooks)), mem, dev, invalidations: inv }
    }

    fn pio(addr: u64, size: u32, is_read: bool, data: u64) -> Ioreq {
        Ioreq { addr, data, count: 1, size, data_is_ptr: false, is_read, df: false, kind: IoreqKind::Pio }
    }

    fn rd(m: &TestMemory, a: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        m.read(GuestAddress(a), &mut v).unwrap();
        v
    }

    #[test]
    fn pio_read_and_masked_write() {
        let mut f = fixture();
        assert_eq!(f.engine.handle(0, &pio(0x511, 1, true, 0)), 0x10);
        f.engine.handle(0, &pio(0x511, 1, false, 0xabcd));
        assert_eq!(f.dev.lock().unwrap().writes, vec![(0, vec![0xcd])]);
        // Unclaimed port: all-ones of the size.
        assert_eq!(f.engine.handle(0, &pio(0x80, 2, true, 0)), 0xffff);
    }

    #[test]
    fn rep_insb_up_and_down() {
        let mut f = fixture();
        let mut r = pio(0x511, 1, true, 0x1000);
        r.data_is_ptr = true;
        r.count = 5;
        assert_eq!(f.engine.handle(0, &r), 0x1000, "pointer requests answer their own data");
        assert_eq!(rd(&f.mem, 0x1000, 5), vec![0x10, 0x11, 0x12, 0x13, 0x14]);
        // df: element i at 0x2004 - i.
        r.data = 0x2004;
        r.df = true;
        f.engine.handle(0, &r);
        assert_eq!(rd(&f.mem, 0x2000, 5), vec![0x19, 0x18, 0x17, 0x16, 0x15]);
    }

    #[test]
    fn rep_insw_crossing_chunks() {
        let mut f = fixture();
        let mut r = pio(0x520, 2, true, 0x3000);
        r.data_is_ptr = true;
        r.count = 3000; // 6000 bytes: two chunks
        f.engine.handle(0, &r);
        let got = rd(&f.mem, 0x3000, 6000);
        let bad: Vec<_> = got.iter().enumerate().filter(|(i, &b)| b != 0x10u8.wrapping_add(*i as u8)).take(4).collect();
        assert!(bad.is_empty(), "{bad:?}");
    }

    #[test]
    fn rep_outs_both_directions() {
        let mut f = fixture();
        f.mem.write(GuestAddress(0x4000), &[1, 2, 3, 4, 5, 6]).unwrap();
        let mut r = pio(0x511, 1, false, 0x4000);
        r.data_is_ptr = true;
        r.count = 3;
        f.engine.handle(0, &r);
        r.data = 0x4005;
        r.df = true;
        f.engine.handle(0, &r);
        let w: Vec<u8> = f.dev.lock().unwrap().writes.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(w, vec![1, 2, 3, 6, 5, 4]);
    }

    #[test]
    fn mmio_rep_movs_and_repeated_register() {
        let mut f = fixture();
        let mut r = Ioreq {
            addr: 0xfed0_0010,
            data: 0x5000,
            count: 2,
            size: 4,
            data_is_ptr: true,
            is_read: true,
            df: false,
            kind: IoreqKind::Copy,
        };
        f.engine.handle(0, &r);
        assert_eq!(rd(&f.mem, 0x5000, 8), (0x10..0x18).collect::<Vec<u8>>());
        // RAM -> MMIO, descending: MMIO offsets step down too.
        f.mem.write(GuestAddress(0x6000), &[0xa0, 0xa1, 0xa2, 0xa3, 0xb0, 0xb1, 0xb2, 0xb3]).unwrap();
        r.is_read = false;
        r.data = 0x6004;
        r.df = true;
        f.engine.handle(0, &r);
        let w = f.dev.lock().unwrap().writes.clone();
        assert_eq!(w, vec![(0x10, vec![0xb0, 0xb1, 0xb2, 0xb3]), (0xc, vec![0xa0, 0xa1, 0xa2, 0xa3])]);
        // Without a pointer: count writes of `data`, and 8-byte MMIO.
        let q = Ioreq {
            addr: 0xfed0_0020,
            data: 0x1122334455667788,
            count: 2,
            size: 8,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: IoreqKind::Copy,
        };
        f.engine.handle(0, &q);
        let w = f.dev.lock().unwrap().writes.clone();
        assert_eq!(w[2], (0x20, 0x1122334455667788u64.to_le_bytes().to_vec()));
        assert_eq!(w[3], (0x28, 0x1122334455667788u64.to_le_bytes().to_vec()));
    }

    #[test]
    fn pci_config_routes_by_sbdf() {
        struct Cfg;
        impl xendm_devices::PciFunction for Cfg {
            fn config_read(&mut self, reg: u16, data: &mut [u8]) {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = reg as u8 + i as u8;
                }
            }
            fn config_write(&mut self, _reg: u16, _data: &[u8]) {}
            fn regions(&self) -> Vec<xendm_devices::PciRegion> {
                vec![]
            }
            fn region_read(&mut self, _r: u8, _o: u64, d: &mut [u8]) {
                d.fill(0);
            }
            fn region_write(&mut self, _r: u8, _o: u64, _d: &[u8]) {}
        }
        let mut f = fixture();
        f.engine.bus_mut().register_pci(Sbdf::new(1, 3), "pm", Arc::new(Mutex::new(Cfg))).unwrap();
        let addr = (u64::from(Sbdf::new(1, 3).to_u32()) << 32) | 0x40;
        let r = Ioreq {
            addr,
            data: 0,
            count: 1,
            size: 4,
            data_is_ptr: false,
            is_read: true,
            df: false,
            kind: IoreqKind::PciConfig,
        };
        assert_eq!(f.engine.handle(0, &r), 0x4342_4140);
        let absent = Ioreq { addr: (u64::from(Sbdf::new(9, 0).to_u32()) << 32), ..r };
        assert_eq!(f.engine.handle(0, &absent), 0xffff_ffff);
        let huge_reg = Ioreq { addr: (u64::from(Sbdf::new(1, 3).to_u32()) << 32) | 0x1_0000, ..r };
        assert_eq!(f.engine.handle(0, &huge_reg), 0xffff_ffff);
    }

    #[test]
    fn invalidate_and_timeoffset_reach_the_hooks() {
        let mut f = fixture();
        let inv = Ioreq {
            addr: 0,
            data: !0,
            count: 1,
            size: 4,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: IoreqKind::Invalidate,
        };
        f.engine.handle(0, &inv);
        f.engine.handle(1, &inv);
        assert_eq!(f.invalidations.load(Ordering::SeqCst), 2);
        let t = Ioreq { kind: IoreqKind::TimeOffset, data: (-3600i64) as u64, size: 8, ..inv };
        assert_eq!(f.engine.handle(0, &t), (-3600i64) as u64);
    }

    #[test]
    fn hostile_requests_get_sane_answers() {
        let mut f = fixture();
        let base = pio(0x511, 1, true, 0);
        for (req, want) in [
            (Ioreq { size: 0, ..base }, 0),
            (Ioreq { size: 3, ..base }, 0xff_ffff),
            (Ioreq { size: 8, ..base }, u64::MAX),
            (Ioreq { size: 0xffff_ffff, ..base }, u64::MAX),
            (Ioreq { kind: IoreqKind::Unknown(3), ..base }, 0xff),
            (Ioreq { kind: IoreqKind::Unknown(0xff), size: 4, ..base }, 0xffff_ffff),
        ] {
            assert_eq!(f.engine.handle(0, &req), want, "{req:?}");
        }
        // A huge count is refused without touching the device or memory.
        let before = f.dev.lock().unwrap().next;
        let huge = Ioreq { data_is_ptr: true, count: u32::MAX, ..base };
        f.engine.handle(0, &huge);
        let huge_mmio = Ioreq { kind: IoreqKind::Copy, addr: 0xfed0_0000, count: u32::MAX, ..base };
        assert_eq!(f.engine.handle(0, &huge_mmio), 0xff);
        assert_eq!(f.dev.lock().unwrap().next, before);
        // A buffer in the VGA hole: no panic, nothing lands in the hole, and
        // the elements before the hole are written.
        let mut r = pio(0x511, 1, true, 0x9fffe);
        r.data_is_ptr = true;
        r.count = 4;
        f.engine.handle(0, &r);
        assert_eq!(rd(&f.mem, 0x9fffe, 2).len(), 2);
        // Wrapping buffer addresses with df.
        let mut w = pio(0x511, 4, false, 2);
        w.data_is_ptr = true;
        w.df = true;
        w.count = 4;
        f.engine.handle(0, &w);
    }

    #[test]
    fn rep_outs_stops_at_unreadable_element() {
        let mut f = fixture();
        f.mem.write(GuestAddress(0x9fffe), &[7, 8]).unwrap();
        let mut r = pio(0x511, 1, false, 0x9fffe);
        r.data_is_ptr = true;
        r.count = 4; // elements 2 and 3 are in the hole
        f.engine.handle(0, &r);
        let w: Vec<u8> = f.dev.lock().unwrap().writes.iter().map(|(_, d)| d[0]).collect();
        assert_eq!(w, vec![7, 8], "only readable data reaches the device");
    }

    /// A ring in ordinary memory, as Xen fills it.
    struct Ring {
        rp: AtomicU32,
        wp: AtomicU32,
        slots: Mutex<Vec<u64>>,
    }
    impl Ring {
        fn new() -> Self {
            Self { rp: AtomicU32::new(0), wp: AtomicU32::new(0), slots: Mutex::new(vec![0; 511]) }
        }
        fn push(&self, s: BufSlot, high: Option<u32>) {
            let wp = self.wp.load(Ordering::SeqCst);
            let mut slots = self.slots.lock().unwrap();
            slots[(wp % 511) as usize] = s.encode();
            let mut n = 1;
            if let Some(h) = high {
                slots[((wp + 1) % 511) as usize] = u64::from(h) << 32;
                n = 2;
            }
            self.wp.store(wp + n, Ordering::SeqCst);
        }
    }
    impl BufferedRing for Ring {
        fn read_pointer(&self) -> u32 {
            self.rp.load(Ordering::Acquire)
        }
        fn write_pointer(&self) -> u32 {
            self.wp.load(Ordering::Acquire)
        }
        fn slot(&self, index: u32) -> u64 {
            self.slots.lock().unwrap()[index as usize]
        }
        fn advance_read_pointer(&self, n: u32) {
            self.rp.fetch_add(n, Ordering::AcqRel);
        }
    }

    #[test]
    fn buffered_ring_single_and_quad_writes_and_wrap() {
        let mut f = fixture();
        let ring = Ring::new();
        ring.rp.store(510, Ordering::SeqCst);
        ring.wp.store(510, Ordering::SeqCst);
        ring.push(BufSlot { kind: IoreqKind::Pio, is_read: false, size: 1, addr: 0x511, data: 0x42 }, None);
        ring.push(
            BufSlot { kind: IoreqKind::Copy, is_read: false, size: 8, addr: 0xb8000, data: 0x4433_2211 },
            Some(0x8877_6655),
        );
        // Give the 8-byte write a kind.
        f.engine.bus_mut().register_mmio(0xb8000, 8, "vga", f.dev.clone(), 0).unwrap();
        assert_eq!(f.engine.drain_buffered(&ring), 2);
        assert_eq!(ring.rp.load(Ordering::SeqCst), 513);
        let w = f.dev.lock().unwrap().writes.clone();
        assert_eq!(w, vec![(0, vec![0x42]), (0, 0x8877_6655_4433_2211u64.to_le_bytes().to_vec())]);
        assert_eq!(f.engine.drain_buffered(&ring), 0);
    }

    #[test]
    fn buffered_quad_waits_for_its_second_slot() {
        let mut f = fixture();
        let ring = Ring::new();
        ring.slots.lock().unwrap()[0] =
            BufSlot { kind: IoreqKind::Pio, is_read: false, size: 8, addr: 0x511, data: 1 }.encode();
        ring.wp.store(1, Ordering::SeqCst);
        assert_eq!(f.engine.drain_buffered(&ring), 0);
        assert_eq!(ring.rp.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn corrupt_ring_pointers_are_not_followed() {
        let mut f = fixture();
        let ring = Ring::new();
        ring.wp.store(5000, Ordering::SeqCst);
        assert_eq!(f.engine.drain_buffered(&ring), 0);
    }

    #[test]
    fn raw_round_trip() {
        let r = Ioreq {
            addr: 1,
            data: 2,
            count: 3,
            size: 4,
            data_is_ptr: true,
            is_read: false,
            df: true,
            kind: IoreqKind::Copy,
        };
        let raw: IoreqRaw = r.to_raw(1, 9);
        assert_eq!(Ioreq::from_raw(&raw), r);
        assert_eq!(raw.state(), 1);
    }
}
