//! Xen's side of an ioreq server for the tests of this module: the two
//! shared pages in ordinary memory, a scripted event transport, and a rig
//! with a real engine over a small bus.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xendm_devices::bus::{BusDevice, PciFunction, PciRegion, RangeChange};
use xendm_devices::mem::TestMemory;
use xendm_devices::{Bus, Space};

use super::pages::{BufferedPage, SyncPage};
use super::serve::{ServerCore, StopHandle, Transport, Wakeup};
use crate::ioreq::abi::{Ioreq, IoreqKind, IoreqRaw, SLOT_SIZE, STATE_IOREQ_NONE, STATE_IOREQ_READY};
use crate::ioreq::engine::{Engine, EngineHooks};
use crate::ioreq::handler::BufferedRing;
use crate::xen::XenError;

/// A 4096-byte page in ordinary memory, 8-aligned, interior-mutable.
pub(super) struct Page(pub(super) Box<[AtomicU64; 512]>);

impl Page {
    pub(super) fn new() -> Self {
        Self(Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
    pub(super) fn ptr(&self) -> NonNull<u8> {
        NonNull::new(self.0.as_ptr().cast_mut().cast::<u8>()).unwrap()
    }
}

/// Xen's side of the two pages, for tests.
pub(super) struct FakeXen {
    pub(super) sync: Page,
    pub(super) buf: Page,
}

impl FakeXen {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self { sync: Page::new(), buf: Page::new() })
    }

    pub(super) fn sync_page(&self) -> SyncPage {
        // SAFETY: the page lives in `self`, which the test keeps alive
        // longer than the core; accesses are atomic or volatile.
        unsafe { SyncPage::new(self.sync.ptr()) }
    }

    pub(super) fn buf_page(&self) -> BufferedPage {
        // SAFETY: as for `sync_page`.
        unsafe { BufferedPage::new(self.buf.ptr()) }
    }

    /// Posts `req` in vCPU `v`'s slot as Xen does: fields first, then READY.
    pub(super) fn post(&self, v: u32, req: &Ioreq, eport: u32) {
        let raw = req.to_raw(STATE_IOREQ_NONE, eport);
        // SAFETY: slot `v` (< 128) of our page; volatile write of plain data.
        unsafe {
            std::ptr::write_volatile(self.sync.ptr().as_ptr().add(v as usize * SLOT_SIZE).cast::<IoreqRaw>(), raw)
        };
        fence(Ordering::Release);
        self.sync_page().set_state(v, STATE_IOREQ_READY, Ordering::Release);
    }

    pub(super) fn slot(&self, v: u32) -> IoreqRaw {
        self.sync_page().read(v).unwrap()
    }

    /// Queues buffered slots as Xen does: slots, then the write pointer.
    pub(super) fn push_buffered(&self, slots: &[u64]) {
        let wp = self.buf_page().write_pointer();
        for (i, s) in slots.iter().enumerate() {
            let idx = (wp as usize + i) % 511;
            self.buf.0[1 + idx].store(*s, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        // write_pointer is the high half of word 0.
        self.buf.0[0].fetch_add((slots.len() as u64) << 32, Ordering::AcqRel);
    }

    pub(super) fn pointers(&self) -> (u32, u32) {
        let w = self.buf.0[0].load(Ordering::Acquire);
        (w as u32, (w >> 32) as u32)
    }
}

/// Records what the loop does; `on_notify` lets a test act as Xen.
#[derive(Default)]
pub(super) struct FakeTransport {
    pub(super) script: VecDeque<Wakeup>,
    pub(super) unmasked: Vec<u32>,
    pub(super) notified: Vec<u32>,
    pub(super) applied: Vec<RangeChange>,
    pub(super) waits: Vec<Option<Duration>>,
    pub(super) xen: Option<Arc<FakeXen>>,
    /// (port, slot state) seen at each notify.
    pub(super) states_at_notify: Vec<u8>,
}

impl Transport for FakeTransport {
    fn wait(&mut self, stop: &StopHandle, timeout: Option<Duration>) -> Result<Wakeup, XenError> {
        self.waits.push(timeout);
        if stop.is_stopped() {
            return Ok(Wakeup::Stop);
        }
        Ok(self.script.pop_front().unwrap_or(Wakeup::Stop))
    }
    fn unmask(&mut self, port: u32) -> Result<(), XenError> {
        self.unmasked.push(port);
        Ok(())
    }
    fn notify(&mut self, port: u32) -> Result<(), XenError> {
        self.notified.push(port);
        if let Some(x) = &self.xen {
            // Ports are 100 + vcpu in these tests.
            self.states_at_notify.push(x.sync_page().state(port - 100).unwrap());
        }
        Ok(())
    }
    fn apply(&mut self, change: RangeChange) -> Result<(), XenError> {
        self.applied.push(change);
        Ok(())
    }
}

pub(super) type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// A port device: reads return `0x40 + offset`, writes are logged.
pub(super) struct Dev {
    pub(super) log: WriteLog,
}
impl BusDevice for Dev {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0x40 + offset as u8);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.log.lock().unwrap().push((offset, data.to_vec()));
    }
}

#[derive(Clone, Default)]
pub(super) struct Hooks {
    pub(super) time: Arc<Mutex<Vec<i64>>>,
}
impl EngineHooks for Hooks {
    fn invalidate_mapcache(&self) {}
    fn time_offset(&self, seconds: i64) {
        self.time.lock().unwrap().push(seconds);
    }
}

pub(super) struct Rig {
    pub(super) xen: Arc<FakeXen>,
    pub(super) core: ServerCore,
    pub(super) engine: Engine,
    pub(super) t: FakeTransport,
    pub(super) log: WriteLog,
    pub(super) hooks: Hooks,
}

pub(super) const BUF_PORT: u32 = 99;

/// vCPU i's local port is 100 + i; a device at ports 0x510-0x51f and at
/// MMIO 0xa0000-0xa0fff.
pub(super) fn rig(vcpus: u32) -> Rig {
    let xen = FakeXen::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let dev = Arc::new(Mutex::new(Dev { log: log.clone() }));
    let mut bus = Bus::new();
    bus.register_pio(0x510, 0x10, "dev", dev.clone(), 0).unwrap();
    bus.register_mmio(0xa0000, 0x1000, "vga-ish", dev, 0x1000).unwrap();
    let hooks = Hooks::default();
    let engine = Engine::new(bus, Arc::new(TestMemory::pc(2 << 20).unwrap()), Box::new(hooks.clone()));
    let ports: Vec<u32> = (0..vcpus).map(|v| 100 + v).collect();
    let core = ServerCore::new(xen.sync_page(), Some(xen.buf_page()), &ports, Some(BUF_PORT));
    let t = FakeTransport { xen: Some(xen.clone()), ..Default::default() };
    Rig { xen, core, engine, t, log, hooks }
}

pub(super) fn pio(addr: u64, size: u32, read: bool, data: u64) -> Ioreq {
    Ioreq { addr, data, count: 1, size, data_is_ptr: false, is_read: read, df: false, kind: IoreqKind::Pio }
}

impl Rig {
    pub(super) fn ports(&mut self, ports: &[u32]) {
        self.core.handle_ports(ports, &mut self.engine, &mut self.t);
    }
}

pub(super) struct BarFn {
    pub(super) bar: u32,
}
impl PciFunction for BarFn {
    fn config_read(&mut self, _reg: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn config_write(&mut self, reg: u16, data: &[u8]) {
        if reg == 0x10 && data.len() == 4 {
            self.bar = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) & !0xf;
        }
    }
    fn regions(&self) -> Vec<PciRegion> {
        if self.bar == 0 {
            vec![]
        } else {
            vec![PciRegion { id: 0, space: Space::Pio, base: self.bar.into(), len: 16 }]
        }
    }
    fn region_read(&mut self, _region: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn region_write(&mut self, _region: u8, _offset: u64, _data: &[u8]) {}
}
