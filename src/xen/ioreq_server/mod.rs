//! The ioreq server: Xen's request/response protocol around the [`Engine`].
//!
//! Implements the device-model side of Xen's `public/hvm/ioreq.h` and
//! `public/hvm/dm_op.h` (Xen 4.17), with the producer side as in Xen's
//! `xen/common/ioreq.c` (`ioreq_send`, `ioreq_send_buffered`) and the
//! consumer order QEMU uses (`hw/xen/xen-hvm-common.c`, `cpu_get_ioreq`,
//! `handle_buffered_iopage`), read for facts only.
//!
//! ## Start-up ([`IoreqServer::create`])
//! 1. `create_ioreq_server(BUFIOREQ_ATOMIC)`;
//! 2. `map_resource(XENMEM_resource_ioreq_server, id, frame 0, 2 frames)`:
//!    frame 0 is the buffered ring, frame 1 the synchronous page;
//! 3. `get_ioreq_server_info` with NULL gfn pointers, for the remote
//!    buffered port;
//! 4. `set_ioreq_server_state(enabled)`. Xen writes each vCPU's `vp_eport`
//!    into the synchronous page only when the server is enabled
//!    (`ioreq_server_enable` in `xen/common/ioreq.c`), so the server must be
//!    enabled before the ports can be bound; QEMU enables it here too.
//!    Nothing is claimed yet, so nothing but broadcasts could be forwarded,
//!    and the toolstack keeps the domain paused while the device model starts.
//! 5. bind `vp_eport` of every vCPU (`xendevicemodel_nr_vcpus`, else the
//!    `-smp maxcpus` the caller gives; at most 128, one page of slots) and the
//!    buffered port on one event-channel descriptor;
//! 6. disable the server again, so that the caller decides when forwarding
//!    starts (`-S`: only at QMP `cont`). Xen leaves the `vp_eport` values in
//!    place and rewrites the same ones on the next enable.
//!
//! Then [`IoreqServer::register`] claims the bus's port ranges, MMIO ranges
//! and PCI functions, [`IoreqServer::set_enabled`] starts forwarding, and
//! [`IoreqServer::run`] serves until stopped.
//!
//! ## The synchronous protocol, per vCPU slot
//! Xen fills the slot, then (after a barrier) sets `state = READY` and
//! signals the vCPU's port; the vCPU stays blocked until it sees
//! `IORESP_READY`. On an event for that port we unmask it, then:
//! 1. load `state` with **acquire** ordering; anything but READY is a
//!    spurious event and is ignored (we never write a slot we do not own);
//! 2. set `state = INPROCESS`;
//! 3. drain the buffered ring (it holds older writes, which must be seen
//!    first);
//! 4. copy the request (volatile reads: it is shared memory) and let the
//!    engine emulate it; apply the bus's range changes to Xen (a BAR move
//!    must reach Xen before the guest's next access);
//! 5. re-load `state`: if it is no longer INPROCESS something else wrote
//!    the slot; we log an error and write nothing (writing could move the
//!    state backwards, which makes Xen crash the guest);
//! 6. write `data`, then store `state = IORESP_READY` with **release**
//!    ordering (after a release fence, QEMU's `wmb`), so Xen sees the data
//!    before the state; then notify the port.
//!
//! The `flags` byte holds the state in bits 0-3 and `data_is_ptr`/`dir`/`df`
//! in bits 4-6; a state write keeps bits 4-7. The only values we ever store
//! are INPROCESS and then IORESP_READY, as Xen requires; `vp_eport` is never
//! written.
//!
//! Ordering argument: Xen publishes the request with a write barrier before
//! setting READY, our acquire load of the state pairs with it, so the request
//! fields we read afterwards are the ones Xen wrote. Our release store of
//! IORESP_READY pairs with Xen's read of the state before it reads `data`.
//! On x86 both are plain ordered accesses (TSO); the atomics keep the
//! compiler from reordering.
//!
//! ## The buffered ring
//! Consumed by [`Engine::drain_buffered`] through [`BufferedPage`]: pointers
//! read with acquire loads, slots with volatile reads, `read_pointer`
//! advanced with an atomic add (Xen rebases the pointer pair with a 64-bit
//! cmpxchg under `BUFIOREQ_ATOMIC`, so a plain store could undo a rebase).
//! The ring is drained on its own event (the port is unmasked *before*
//! draining, so a request queued during the drain raises a new event), before
//! every synchronous request, and — QEMU's policy — again every
//! [`BUFFERED_POLL`] (100 ms) while the previous drain found work.
//!
//! ## Bound on work per wakeup
//! One wakeup reads at most [`MAX_PORTS_PER_WAKEUP`] pending ports. Each
//! vCPU port answers at most one request (a slot holds one), each drain
//! handles at most `engine::MAX_BUFFERED_PER_DRAIN` buffered requests, and
//! the engine bounds each request (see `engine`). Unknown ports are logged at
//! a limited rate and ignored.
//!
//! ## Where we differ from QEMU
//! * An event on an unknown port is logged and ignored; QEMU treats it as
//!   fatal.
//! * A slot that leaves INPROCESS while we handle it is logged and left
//!   unanswered; QEMU destroys the domain.
//! * The buffered port is unmasked on every event instead of being kept
//!   masked while the 100 ms timer runs (QEMU's way of rate-limiting VGA
//!   write storms); the timer is kept as a safety net.
//! * Only the `acquire_resource` path is implemented: on kernels without
//!   `IOCTL_PRIVCMD_MMAP_RESOURCE` (Linux < 4.18) creation fails with
//!   `EOPNOTSUPP` instead of falling back to gfn mapping.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use xendm_devices::bus::RangeChange;
use xendm_devices::ratelimit::RateLimit;
use xendm_devices::{Bus, Sbdf, Space};

use super::sys::{
    BufIoreq, DeviceModel, EventChannels, ForeignMemory, IoreqServerId, ResourceMapping, IOREQ_SERVER_FRAME_BUFIOREQ,
    IOREQ_SERVER_FRAME_IOREQ, XENMEM_RESOURCE_IOREQ_SERVER, XEN_PAGE_SIZE,
};
use super::XenError;
use crate::ioreq::abi::{
    Ioreq, IoreqRaw, BUF_READ_POINTER_OFFSET, BUF_SLOTS_OFFSET, BUF_SLOT_SIZE, BUF_WRITE_POINTER_OFFSET,
    FLAG_STATE_MASK, IOREQ_BUFFER_SLOT_NUM, SLOT_DATA_OFFSET, SLOT_EPORT_OFFSET, SLOT_FLAGS_OFFSET, SLOT_SIZE,
    STATE_IOREQ_INPROCESS, STATE_IOREQ_READY, STATE_IORESP_READY,
};
use crate::ioreq::handler::{BufferedRing, IoreqHandler};

/// vCPU slots in the synchronous page (`HVM_MAX_VCPUS`: 4096 / 32).
pub const MAX_VCPUS: u32 = (XEN_PAGE_SIZE / SLOT_SIZE) as u32;
/// Most pending ports read per wakeup: every vCPU plus the buffered port.
pub const MAX_PORTS_PER_WAKEUP: usize = MAX_VCPUS as usize + 1;
/// Re-drain period for the buffered ring while it has work (QEMU's `BUFFER_IO_MAX_DELAY`).
pub const BUFFERED_POLL: Duration = Duration::from_millis(100);

/// The synchronous page (`shared_iopage_t`): one [`IoreqRaw`] per vCPU.
///
/// Only ever accessed through volatile or atomic operations, because Xen
/// writes it concurrently.
pub struct SyncPage {
    base: NonNull<u8>,
}

// SAFETY: the page is process-wide shared memory; all accesses are volatile
// or atomic, so using it from another thread is no different from Xen doing so.
unsafe impl Send for SyncPage {}

impl SyncPage {
    /// Wraps a mapped synchronous page.
    ///
    /// # Safety
    /// `base` must be 8-byte aligned and valid for reads and writes of 4096
    /// bytes for as long as the `SyncPage` exists, and every other user of
    /// that memory (Xen, a test) must use volatile or atomic accesses.
    pub const unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    /// Pointer to byte `off` of slot `vcpu`, if the slot exists.
    fn at(&self, vcpu: u32, off: usize) -> Option<*mut u8> {
        if vcpu >= MAX_VCPUS || off >= SLOT_SIZE {
            return None;
        }
        // SAFETY: vcpu < 128 and off < 32, so the offset is inside the 4096
        // bytes `new`'s contract makes valid.
        Some(unsafe { self.base.as_ptr().add(vcpu as usize * SLOT_SIZE + off) })
    }

    fn flags(&self, vcpu: u32) -> Option<&AtomicU8> {
        let p = self.at(vcpu, SLOT_FLAGS_OFFSET)?;
        // SAFETY: `p` is valid for the page's lifetime, which outlives
        // `&self`; u8 needs no alignment; everyone accesses it atomically or
        // volatilely (the contract of `new`).
        Some(unsafe { AtomicU8::from_ptr(p) })
    }

    /// The slot's `state`, with acquire ordering.
    pub fn state(&self, vcpu: u32) -> Option<u8> {
        self.flags(vcpu).map(|f| f.load(Ordering::Acquire) & FLAG_STATE_MASK)
    }

    /// Sets the slot's state, keeping the other bits of the flags byte.
    /// Only called while we own the slot (state READY or INPROCESS), when Xen
    /// does not write it, so the read-modify-write cannot lose an update.
    fn set_state(&self, vcpu: u32, state: u8, order: Ordering) {
        if let Some(f) = self.flags(vcpu) {
            let keep = f.load(Ordering::Relaxed) & !FLAG_STATE_MASK;
            f.store(keep | (state & FLAG_STATE_MASK), order);
        }
    }

    /// A volatile copy of the whole slot.
    pub fn read(&self, vcpu: u32) -> Option<IoreqRaw> {
        let p = self.at(vcpu, 0)?;
        // SAFETY: the slot is 32 valid bytes at an 8-aligned address (page
        // base aligned, slot size 32); IoreqRaw is plain data valid for any
        // bit pattern.
        Some(unsafe { std::ptr::read_volatile(p.cast::<IoreqRaw>()) })
    }

    /// The slot's `vp_eport` (Xen's port for this vCPU).
    pub fn vp_eport(&self, vcpu: u32) -> Option<u32> {
        let p = self.at(vcpu, SLOT_EPORT_OFFSET)?;
        // SAFETY: `vp_eport`'s offset (24) in an 8-aligned slot is 4-aligned and in bounds.
        Some(u32::from_le(unsafe { std::ptr::read_volatile(p.cast::<u32>()) }))
    }

    fn write_data(&self, vcpu: u32, data: u64) {
        if let Some(p) = self.at(vcpu, SLOT_DATA_OFFSET) {
            // SAFETY: `data`'s offset (8) in an 8-aligned slot is 8-aligned and in bounds.
            unsafe { std::ptr::write_volatile(p.cast::<u64>(), data.to_le()) };
        }
    }
}

/// The buffered ring page (`buffered_iopage_t`), as the engine consumes it.
pub struct BufferedPage {
    base: NonNull<u8>,
}

// SAFETY: as for `SyncPage`: shared memory accessed only atomically or volatilely.
unsafe impl Send for BufferedPage {}

impl BufferedPage {
    /// Wraps a mapped buffered page.
    ///
    /// # Safety
    /// As [`SyncPage::new`]: 8-aligned, 4096 valid bytes for the wrapper's
    /// lifetime, all other accesses volatile or atomic.
    pub const unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    fn pointer(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is 0 or 4: in bounds and 4-aligned; the memory lives
        // as long as `self`; other users access it atomically (Xen's cmpxchg
        // of the 64-bit pair covers the same bytes, which x86 keeps coherent).
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
    }
}

impl BufferedRing for BufferedPage {
    fn read_pointer(&self) -> u32 {
        self.pointer(BUF_READ_POINTER_OFFSET).load(Ordering::Acquire)
    }

    fn write_pointer(&self) -> u32 {
        self.pointer(BUF_WRITE_POINTER_OFFSET).load(Ordering::Acquire)
    }

    fn slot(&self, index: u32) -> u64 {
        let i = (index % IOREQ_BUFFER_SLOT_NUM) as usize;
        let off = BUF_SLOTS_OFFSET + BUF_SLOT_SIZE * i;
        // SAFETY: i < 511, so 8 + 8*i + 8 <= 4096; 8-aligned; volatile
        // because Xen writes the slots.
        u64::from_le(unsafe { std::ptr::read_volatile(self.base.as_ptr().add(off).cast::<u64>()) })
    }

    fn advance_read_pointer(&self, n: u32) {
        self.pointer(BUF_READ_POINTER_OFFSET).fetch_add(n, Ordering::AcqRel);
    }
}

/// Why the loop woke up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// These local ports were pending (each is now masked until unmasked).
    Ports(Vec<u32>),
    /// The timeout passed.
    Timeout,
    /// [`StopHandle::stop`] was called.
    Stop,
}

/// The event side of the protocol plus range claims: Xen's event channels
/// and dm_ops in production, a fake in tests.
pub trait Transport {
    /// Blocks until ports are pending (at most [`MAX_PORTS_PER_WAKEUP`]),
    /// `stop` is signalled, or `timeout` passes (`None`: no timeout).
    ///
    /// # Errors
    /// A failure of the underlying wait; the loop stops with it.
    fn wait(&mut self, stop: &StopHandle, timeout: Option<Duration>) -> Result<Wakeup, XenError>;
    /// Re-arms a delivered port.
    ///
    /// # Errors
    /// The underlying call's failure (logged by the loop).
    fn unmask(&mut self, port: u32) -> Result<(), XenError>;
    /// Signals a port.
    ///
    /// # Errors
    /// The underlying call's failure (logged by the loop).
    fn notify(&mut self, port: u32) -> Result<(), XenError>;
    /// Mirrors a bus range change in the hypervisor.
    ///
    /// # Errors
    /// The underlying call's failure (logged by the loop).
    fn apply(&mut self, change: RangeChange) -> Result<(), XenError>;
}

/// Asks a running loop to return. Cloneable and usable from any thread
/// (signal handler threads, QMP `quit`).
#[derive(Clone, Debug)]
pub struct StopHandle {
    fd: Arc<OwnedFd>,
    stopped: Arc<AtomicBool>,
}

impl StopHandle {
    /// A fresh, unsignalled handle (an eventfd).
    ///
    /// # Errors
    /// If no eventfd can be created.
    pub fn new() -> Result<Self, XenError> {
        let fd =
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
                .map_err(|e| XenError::Call { call: "eventfd", errno: e.raw_os_error() })?;
        Ok(Self { fd: Arc::new(fd), stopped: Arc::new(AtomicBool::new(false)) })
    }

    /// Signals the loop; it returns at its next wakeup (immediately if it
    /// is waiting). Stays signalled.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Err(e) = rustix::io::write(&*self.fd, &1u64.to_ne_bytes()) {
            tracing::warn!(error = %e, "signalling the ioreq loop's eventfd failed");
        }
    }

    /// Whether [`Self::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The descriptor that becomes readable on stop.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Synchronous requests answered.
    pub answered: u64,
    /// Events on a vCPU port whose slot was not READY.
    pub spurious: u64,
    /// Requests whose slot changed state while we handled them (unanswered).
    pub lost: u64,
    /// Buffered requests handled.
    pub buffered: u64,
    /// Events on ports we do not know.
    pub unknown_ports: u64,
}

/// The serving loop's state, independent of how events arrive.
pub struct ServerCore {
    sync: SyncPage,
    ring: Option<BufferedPage>,
    vcpu_by_port: HashMap<u32, u32>,
    buffered_port: Option<u32>,
    ring_busy: bool,
    stats: LoopStats,
    unknown_log: RateLimit,
    xen_log: RateLimit,
}

impl ServerCore {
    /// A core over the two pages; `vcpu_ports[i]` is vCPU `i`'s local port.
    pub fn new(sync: SyncPage, ring: Option<BufferedPage>, vcpu_ports: &[u32], buffered_port: Option<u32>) -> Self {
        let vcpu_by_port = vcpu_ports.iter().zip(0u32..).map(|(&p, v)| (p, v)).collect();
        Self {
            sync,
            ring,
            vcpu_by_port,
            buffered_port,
            ring_busy: false,
            stats: LoopStats::default(),
            unknown_log: RateLimit::per_second(),
            xen_log: RateLimit::per_second(),
        }
    }

    /// The counters so far.
    pub const fn stats(&self) -> LoopStats {
        self.stats
    }

    /// Serves until `stop` is signalled or the transport fails.
    ///
    /// # Errors
    /// The transport's wait failure.
    pub fn run(&mut self, h: &mut dyn IoreqHandler, t: &mut dyn Transport, stop: &StopHandle) -> Result<(), XenError> {
        loop {
            if stop.is_stopped() {
                return Ok(());
            }
            let timeout = self.ring_busy.then_some(BUFFERED_POLL);
            match t.wait(stop, timeout)? {
                Wakeup::Stop => return Ok(()),
                Wakeup::Timeout => self.drain(h, t),
                Wakeup::Ports(ports) => self.handle_ports(&ports, h, t),
            }
        }
    }

    /// Handles one batch of pending ports.
    pub fn handle_ports(&mut self, ports: &[u32], h: &mut dyn IoreqHandler, t: &mut dyn Transport) {
        for &port in ports.iter().take(MAX_PORTS_PER_WAKEUP) {
            if Some(port) == self.buffered_port {
                self.xen_call("xenevtchn_unmask", t.unmask(port));
                self.drain(h, t);
            } else if let Some(&vcpu) = self.vcpu_by_port.get(&port) {
                self.xen_call("xenevtchn_unmask", t.unmask(port));
                self.serve_vcpu(vcpu, port, h, t);
            } else {
                self.stats.unknown_ports += 1;
                if let Some(suppressed) = self.unknown_log.check() {
                    tracing::warn!(port, suppressed, "event on an unknown port ignored");
                }
            }
        }
    }

    fn drain(&mut self, h: &mut dyn IoreqHandler, t: &mut dyn Transport) {
        let Some(ring) = &self.ring else { return };
        let n = h.drain_buffered(ring);
        self.ring_busy = n > 0;
        self.stats.buffered += n as u64;
        if n > 0 {
            self.apply_changes(h, t);
        }
    }

    fn apply_changes(&mut self, h: &mut dyn IoreqHandler, t: &mut dyn Transport) {
        for change in h.take_range_changes() {
            tracing::debug!(?change, "range change");
            let r = t.apply(change);
            self.xen_call("map/unmap io range", r);
        }
    }

    fn serve_vcpu(&mut self, vcpu: u32, port: u32, h: &mut dyn IoreqHandler, t: &mut dyn Transport) {
        if self.sync.state(vcpu) != Some(STATE_IOREQ_READY) {
            self.stats.spurious += 1;
            return;
        }
        // The acquire load above orders the reads below after Xen's writes.
        self.sync.set_state(vcpu, STATE_IOREQ_INPROCESS, Ordering::Relaxed);
        self.drain(h, t);
        let Some(raw) = self.sync.read(vcpu) else { return };
        let req = Ioreq::from_raw(&raw);
        let data = h.handle(vcpu, &req);
        tracing::trace!(vcpu, ?req, resp = format_args!("{data:#x}"), "ioreq");
        self.apply_changes(h, t);
        let now = self.sync.state(vcpu);
        if now != Some(STATE_IOREQ_INPROCESS) {
            self.stats.lost += 1;
            tracing::error!(vcpu, port, state = ?now, ?req, "ioreq slot changed state while being handled; not answering it");
            return;
        }
        self.sync.write_data(vcpu, data);
        fence(Ordering::Release);
        self.sync.set_state(vcpu, STATE_IORESP_READY, Ordering::Release);
        let r = t.notify(port);
        self.xen_call("xenevtchn_notify", r);
        self.stats.answered += 1;
    }

    fn xen_call(&mut self, what: &str, r: Result<(), XenError>) {
        if let Err(e) = r {
            if let Some(suppressed) = self.xen_log.check() {
                tracing::warn!(error = %e, suppressed, "{what} failed");
            }
        }
    }
}

/// [`Transport`] over a real event-channel handle and dm_ops.
pub struct XenTransport {
    evtchn: EventChannels,
    dm: Arc<DeviceModel>,
    id: IoreqServerId,
}

impl Transport for XenTransport {
    fn wait(&mut self, stop: &StopHandle, timeout: Option<Duration>) -> Result<Wakeup, XenError> {
        let ts = timeout.map(|d| rustix::event::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        loop {
            let (ev, st) = {
                let mut fds = [
                    PollFd::from_borrowed_fd(self.evtchn.fd(), PollFlags::IN),
                    PollFd::from_borrowed_fd(stop.fd(), PollFlags::IN),
                ];
                match rustix::event::poll(&mut fds, ts.as_ref()) {
                    Ok(0) => return Ok(Wakeup::Timeout),
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(XenError::Call { call: "poll", errno: e.raw_os_error() }),
                }
                let [ev, st] = &fds;
                (ev.revents(), st.revents())
            };
            if !st.is_empty() {
                return Ok(Wakeup::Stop);
            }
            if ev.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                return Err(XenError::Call { call: "poll(event channel fd)", errno: libc::EIO });
            }
            let mut ports = Vec::new();
            while ports.len() < MAX_PORTS_PER_WAKEUP {
                match self.evtchn.pending()? {
                    Some(p) => ports.push(p),
                    None => break,
                }
            }
            if !ports.is_empty() {
                return Ok(Wakeup::Ports(ports));
            }
        }
    }

    fn unmask(&mut self, port: u32) -> Result<(), XenError> {
        self.evtchn.unmask(port)
    }

    fn notify(&mut self, port: u32) -> Result<(), XenError> {
        self.evtchn.notify(port)
    }

    fn apply(&mut self, change: RangeChange) -> Result<(), XenError> {
        match change {
            RangeChange::Map { space, start, end } => self.dm.map_io_range(self.id, space, start, end),
            RangeChange::Unmap { space, start, end } => self.dm.unmap_io_range(self.id, space, start, end),
        }
    }
}

/// Enables or disables the server from another thread (QMP `stop`/`cont`).
#[derive(Clone, Debug)]
pub struct ServerControl {
    dm: Arc<DeviceModel>,
    id: IoreqServerId,
}

impl ServerControl {
    /// `xendevicemodel_set_ioreq_server_state`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), XenError> {
        self.dm.set_ioreq_server_state(self.id, enabled)
    }
}

/// One thing the server claims from Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `map_io_range_to_ioreq_server`, `[start, end]` inclusive.
    Range { space: Space, start: u64, end: u64 },
    /// `map_pcidev_to_ioreq_server`.
    Pci(Sbdf),
}

/// What [`IoreqServer::register`] claims for `bus`: its port ranges, then its
/// MMIO ranges (both inclusive, adjacent ones merged by the bus, which keeps
/// us below Xen's 256 ranges per type), then every PCI function, which Xen
/// needs to route config-space accesses (0xCFC with CF8 enabled) to us at all.
pub fn claims(bus: &Bus) -> Vec<Claim> {
    let pio = bus.pio_ranges().into_iter().map(|(start, end)| Claim::Range { space: Space::Pio, start, end });
    let mmio = bus.mmio_ranges().into_iter().map(|(start, end)| Claim::Range { space: Space::Mmio, start, end });
    pio.chain(mmio).chain(bus.pci_functions().into_iter().map(Claim::Pci)).collect()
}

/// The calls [`IoreqServer::create`] makes, as a trait so that their order
/// (which Xen dictates) is tested without Xen.
///
/// # Safety
/// [`SetupOps::frames`] must return pointers to the buffered page and the
/// synchronous page of `pages` that satisfy [`SyncPage::new`]'s contract for
/// as long as `pages` is alive.
pub unsafe trait SetupOps {
    /// Keeps the two mapped pages alive.
    type Pages;
    /// `create_ioreq_server(BUFIOREQ_ATOMIC)`.
    ///
    /// # Errors
    /// The call's failure.
    fn create_server(&self) -> Result<IoreqServerId, XenError>;
    /// Maps frames 0 (buffered) and 1 (synchronous) of the server.
    ///
    /// # Errors
    /// The call's failure.
    fn map_pages(&self, id: IoreqServerId) -> Result<Self::Pages, XenError>;
    /// (buffered page, synchronous page) of a mapping.
    fn frames(pages: &Self::Pages) -> Option<(NonNull<u8>, NonNull<u8>)>;
    /// `get_ioreq_server_info`: the remote buffered port.
    ///
    /// # Errors
    /// The call's failure.
    fn bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError>;
    /// `set_ioreq_server_state`.
    ///
    /// # Errors
    /// The call's failure.
    fn set_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError>;
    /// `nr_vcpus`.
    ///
    /// # Errors
    /// The call's failure (older Xen).
    fn nr_vcpus(&self) -> Result<u32, XenError>;
    /// `bind_interdomain`: remote port to local port.
    ///
    /// # Errors
    /// The call's failure.
    fn bind(&self, remote: u32) -> Result<u32, XenError>;
    /// `destroy_ioreq_server`, after a failed set-up.
    ///
    /// # Errors
    /// The call's failure.
    fn destroy(&self, id: IoreqServerId) -> Result<(), XenError>;
}

/// A server set up by [`setup`].
pub struct SetupDone<P> {
    pub id: IoreqServerId,
    pub vcpus: u32,
    /// Local ports: one per vCPU, then the buffered port.
    pub bound: Vec<u32>,
    pub core: ServerCore,
    pub pages: P,
}

/// Runs the start-up sequence of the module docs through `ops`; destroys the
/// server if a later step fails.
///
/// # Errors
/// The first failing call.
pub fn setup<X: SetupOps>(ops: &X, max_cpus: u32) -> Result<SetupDone<X::Pages>, XenError> {
    let id = ops.create_server()?;
    match setup_created(ops, id, max_cpus) {
        Ok(done) => Ok(done),
        Err(e) => {
            if let Err(d) = ops.destroy(id) {
                tracing::warn!(error = %d, "destroying the half-created ioreq server failed");
            }
            Err(e)
        }
    }
}

fn setup_created<X: SetupOps>(ops: &X, id: IoreqServerId, max_cpus: u32) -> Result<SetupDone<X::Pages>, XenError> {
    let pages = ops.map_pages(id)?;
    let Some((buf_base, sync_base)) = X::frames(&pages) else {
        return Err(XenError::Call { call: "xenforeignmemory_map_resource", errno: libc::EFAULT });
    };
    let remote_buf_port = ops.bufioreq_port(id)?;
    // Xen fills in vp_eport only for an enabled server.
    ops.set_state(id, true)?;
    let vcpus = match ops.nr_vcpus() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(error = %e, max_cpus, "vCPU count not available from Xen; using maxcpus");
            max_cpus
        }
    }
    .clamp(1, MAX_VCPUS);
    // SAFETY: the SetupOps contract: valid pages for as long as `pages`
    // lives, and the caller keeps `pages` alive longer than the core.
    let sync = unsafe { SyncPage::new(sync_base) };
    // SAFETY: as above, for the buffered page.
    let ring = unsafe { BufferedPage::new(buf_base) };
    let mut vcpu_ports = Vec::new();
    for v in 0..vcpus {
        let remote = sync.vp_eport(v).unwrap_or(0);
        vcpu_ports.push(ops.bind(remote)?);
    }
    let buf_port = ops.bind(remote_buf_port)?;
    ops.set_state(id, false)?;
    let core = ServerCore::new(sync, Some(ring), &vcpu_ports, Some(buf_port));
    let mut bound = vcpu_ports;
    bound.push(buf_port);
    Ok(SetupDone { id, vcpus, bound, core, pages })
}

/// [`SetupOps`] over the real handles.
struct XenSetup<'a> {
    dm: &'a DeviceModel,
    fmem: &'a Arc<ForeignMemory>,
    evtchn: &'a EventChannels,
}

// SAFETY: `frames` returns frames 0 and 1 of a live 2-frame resource mapping:
// page aligned, 4096 bytes each, valid until the ResourceMapping is dropped;
// Xen accesses them atomically.
unsafe impl SetupOps for XenSetup<'_> {
    type Pages = ResourceMapping;

    fn create_server(&self) -> Result<IoreqServerId, XenError> {
        self.dm.create_ioreq_server(BufIoreq::Atomic)
    }
    fn map_pages(&self, id: IoreqServerId) -> Result<ResourceMapping, XenError> {
        self.fmem.map_resource(XENMEM_RESOURCE_IOREQ_SERVER, u32::from(id.0), IOREQ_SERVER_FRAME_BUFIOREQ, 2)
    }
    fn frames(pages: &ResourceMapping) -> Option<(NonNull<u8>, NonNull<u8>)> {
        Some((pages.frame(0)?, pages.frame(usize::try_from(IOREQ_SERVER_FRAME_IOREQ).ok()?)?))
    }
    fn bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError> {
        self.dm.ioreq_server_bufioreq_port(id)
    }
    fn set_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError> {
        self.dm.set_ioreq_server_state(id, enabled)
    }
    fn nr_vcpus(&self) -> Result<u32, XenError> {
        self.dm.nr_vcpus()
    }
    fn bind(&self, remote: u32) -> Result<u32, XenError> {
        self.evtchn.bind_interdomain(remote)
    }
    fn destroy(&self, id: IoreqServerId) -> Result<(), XenError> {
        self.dm.destroy_ioreq_server(id)
    }
}

/// A live ioreq server for one domain: created, pages mapped, ports bound.
///
/// Dropping it (or [`IoreqServer::shutdown`]) destroys the server in Xen,
/// unbinds the ports and unmaps the pages.
///
/// Start-up order, as the binary wires it (not compiled: needs Xen):
///
/// ```ignore
/// use std::sync::Arc;
/// use xendm::xen::{DeviceModel, EventChannels, ForeignMemory, IoreqServer, MapCache, MapCacheHooks, StopHandle, XenHypervisor};
///
/// // 1. Open the handles (before any privilege drop).
/// let dm = Arc::new(DeviceModel::open(domid)?);
/// let fmem = Arc::new(ForeignMemory::open(domid)?);
/// let evtchn = EventChannels::open(domid)?;
/// // 2. Guest memory and interrupts for the devices.
/// let mem = Arc::new(MapCache::new(fmem.clone()));
/// let hv = Arc::new(XenHypervisor::new(dm.clone()));
/// // 3. The machine: devices on a bus, then the engine (the lead's code).
/// let bus = build_machine(hv.clone(), mem.clone())?;
/// let mut engine = Engine::new(bus, mem.clone(), Box::new(MapCacheHooks::new(mem.clone())));
/// // 4. The server, then the claims, then enable.
/// let mut server = IoreqServer::create(dm.clone(), fmem.clone(), evtchn, maxcpus)?;
/// server.register(engine.bus_mut())?;
/// server.set_enabled(true)?;
/// let control = server.control(); // for QMP stop/cont
/// // 5. Optionally drop privileges: xendm::xen::restrict_all(domid)?;
/// // 6. Serve on a dedicated thread.
/// let stop = StopHandle::new()?;
/// let s2 = stop.clone();
/// let t = std::thread::spawn(move || server.run(&mut engine, &s2));
/// // ... on SIGTERM: stop.stop(); t.join();
/// ```
pub struct IoreqServer {
    core: ServerCore,
    transport: XenTransport,
    control: ServerControl,
    bound: Vec<u32>,
    destroyed: bool,
    // Last: the pages must outlive `core`, which points into them.
    _pages: ResourceMapping,
}

impl IoreqServer {
    /// Creates the server and binds its ports; see the module docs for the
    /// exact order. `max_cpus` is used when Xen cannot report the vCPU count.
    /// The server is returned **disabled**: call [`Self::set_enabled`] once
    /// the ranges are claimed. On failure the server is destroyed again (and
    /// dropping `evtchn` unbinds whatever was bound).
    ///
    /// # Errors
    /// The first failing call.
    pub fn create(
        dm: Arc<DeviceModel>,
        fmem: Arc<ForeignMemory>,
        evtchn: EventChannels,
        max_cpus: u32,
    ) -> Result<Self, XenError> {
        evtchn.set_nonblocking()?;
        let ops = XenSetup { dm: &dm, fmem: &fmem, evtchn: &evtchn };
        let done = setup(&ops, max_cpus)?;
        tracing::info!(server = done.id.0, vcpus = done.vcpus, ports = ?done.bound, "ioreq server created");
        Ok(Self {
            core: done.core,
            transport: XenTransport { evtchn, dm: dm.clone(), id: done.id },
            control: ServerControl { dm, id: done.id },
            bound: done.bound,
            destroyed: false,
            _pages: done.pages,
        })
    }

    /// The server's id.
    pub const fn id(&self) -> IoreqServerId {
        self.control.id
    }

    /// Claims every port range, MMIO range and PCI function of `bus`
    /// (see [`claims`]).
    ///
    /// # Errors
    /// The first refused claim (e.g. `EEXIST`: another server holds it).
    pub fn register(&self, bus: &Bus) -> Result<(), XenError> {
        let dm = &self.control.dm;
        let id = self.control.id;
        for claim in claims(bus) {
            match claim {
                Claim::Range { space, start, end } => dm.map_io_range(id, space, start, end)?,
                Claim::Pci(sbdf) => dm.map_pcidev(id, sbdf)?,
            }
        }
        Ok(())
    }

    /// Enables or disables forwarding (see [`ServerControl`] for other threads).
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_enabled(&self, enabled: bool) -> Result<(), XenError> {
        self.control.set_enabled(enabled)
    }

    /// A handle for [`Self::set_enabled`] usable while [`Self::run`] holds
    /// the server on another thread.
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// Serves requests with `handler` (the machine's engine) until `stop`
    /// is signalled.
    ///
    /// # Errors
    /// If waiting for events fails (the event-channel descriptor broke).
    pub fn run(&mut self, handler: &mut dyn IoreqHandler, stop: &StopHandle) -> Result<(), XenError> {
        // Claims made between `register` and now (none normally).
        for change in handler.take_range_changes() {
            if let Err(e) = self.transport.apply(change) {
                tracing::warn!(error = %e, ?change, "range change failed");
            }
        }
        self.core.run(handler, &mut self.transport, stop)
    }

    /// Counters of the serving loop.
    pub const fn stats(&self) -> LoopStats {
        self.core.stats()
    }

    /// Destroys the server in Xen and unbinds its ports (also done on drop).
    ///
    /// # Errors
    /// The destroy call's failure (ports are unbound regardless).
    pub fn shutdown(&mut self) -> Result<(), XenError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        let r = self.control.dm.destroy_ioreq_server(self.control.id);
        for port in self.bound.drain(..) {
            if let Err(e) = self.transport.evtchn.unbind(port) {
                tracing::warn!(port, error = %e, "unbinding an ioreq port failed");
            }
        }
        r
    }
}

impl Drop for IoreqServer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "destroying the ioreq server failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{BufSlot, IoreqKind, STATE_IOREQ_NONE};
    use crate::ioreq::engine::{Engine, EngineHooks};
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;
    use xendm_devices::bus::{BusDevice, PciFunction, PciRegion};
    use xendm_devices::mem::TestMemory;

    /// A 4096-byte page in ordinary memory, 8-aligned, interior-mutable.
    struct Page(Box<[AtomicU64; 512]>);

    impl Page {
        fn new() -> Self {
            Self(Box::new(std::array::from_fn(|_| AtomicU64::new(0))))
        }
        fn ptr(&self) -> NonNull<u8> {
            NonNull::new(self.0.as_ptr().cast_mut().cast::<u8>()).unwrap()
        }
    }

    /// Xen's side of the two pages, for tests.
    struct FakeXen {
        sync: Page,
        buf: Page,
    }

    impl FakeXen {
        fn new() -> Arc<Self> {
            Arc::new(Self { sync: Page::new(), buf: Page::new() })
        }

        fn sync_page(&self) -> SyncPage {
            // SAFETY: the page lives in `self`, which the test keeps alive
            // longer than the core; accesses are atomic or volatile.
            unsafe { SyncPage::new(self.sync.ptr()) }
        }

        fn buf_page(&self) -> BufferedPage {
            // SAFETY: as for `sync_page`.
            unsafe { BufferedPage::new(self.buf.ptr()) }
        }

        /// Posts `req` in vCPU `v`'s slot as Xen does: fields first, then READY.
        fn post(&self, v: u32, req: &Ioreq, eport: u32) {
            let raw = req.to_raw(STATE_IOREQ_NONE, eport);
            // SAFETY: slot `v` (< 128) of our page; volatile write of plain data.
            unsafe {
                std::ptr::write_volatile(self.sync.ptr().as_ptr().add(v as usize * SLOT_SIZE).cast::<IoreqRaw>(), raw)
            };
            fence(Ordering::Release);
            self.sync_page().set_state(v, STATE_IOREQ_READY, Ordering::Release);
        }

        fn slot(&self, v: u32) -> IoreqRaw {
            self.sync_page().read(v).unwrap()
        }

        /// Queues buffered slots as Xen does: slots, then the write pointer.
        fn push_buffered(&self, slots: &[u64]) {
            let wp = self.buf_page().write_pointer();
            for (i, s) in slots.iter().enumerate() {
                let idx = (wp as usize + i) % 511;
                self.buf.0[1 + idx].store(*s, Ordering::Relaxed);
            }
            fence(Ordering::Release);
            // write_pointer is the high half of word 0.
            self.buf.0[0].fetch_add((slots.len() as u64) << 32, Ordering::AcqRel);
        }

        fn pointers(&self) -> (u32, u32) {
            let w = self.buf.0[0].load(Ordering::Acquire);
            (w as u32, (w >> 32) as u32)
        }
    }

    /// Records what the loop does; `on_notify` lets a test act as Xen.
    #[derive(Default)]
    struct FakeTransport {
        script: VecDeque<Wakeup>,
        unmasked: Vec<u32>,
        notified: Vec<u32>,
        applied: Vec<RangeChange>,
        waits: Vec<Option<Duration>>,
        xen: Option<Arc<FakeXen>>,
        /// (port, slot state) seen at each notify.
        states_at_notify: Vec<u8>,
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

    type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    /// A port device: reads return `0x40 + offset`, writes are logged.
    struct Dev {
        log: WriteLog,
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
    struct Hooks {
        time: Arc<Mutex<Vec<i64>>>,
    }
    impl EngineHooks for Hooks {
        fn invalidate_mapcache(&self) {}
        fn time_offset(&self, seconds: i64) {
            self.time.lock().unwrap().push(seconds);
        }
    }

    struct Rig {
        xen: Arc<FakeXen>,
        core: ServerCore,
        engine: Engine,
        t: FakeTransport,
        log: WriteLog,
        hooks: Hooks,
    }

    const BUF_PORT: u32 = 99;

    /// vCPU i's local port is 100 + i; a device at ports 0x510-0x51f and at
    /// MMIO 0xa0000-0xa0fff.
    fn rig(vcpus: u32) -> Rig {
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

    fn pio(addr: u64, size: u32, read: bool, data: u64) -> Ioreq {
        Ioreq { addr, data, count: 1, size, data_is_ptr: false, is_read: read, df: false, kind: IoreqKind::Pio }
    }

    impl Rig {
        fn ports(&mut self, ports: &[u32]) {
            self.core.handle_ports(ports, &mut self.engine, &mut self.t);
        }
    }

    #[test]
    fn a_ready_request_is_answered_with_data_and_state_then_notify() {
        let mut r = rig(1);
        r.xen.post(0, &pio(0x512, 2, true, 0), 7);
        r.ports(&[100]);
        let s = r.xen.slot(0);
        assert_eq!(s.state(), STATE_IORESP_READY);
        assert_eq!(s.data, 0x4242, "device read at offset 2, two bytes");
        assert_eq!(s.vp_eport, 7, "vp_eport untouched");
        assert_eq!(s.flags & !FLAG_STATE_MASK, crate::ioreq::abi::FLAG_DIR_READ, "dir bit preserved");
        assert_eq!(r.t.unmasked, vec![100]);
        assert_eq!(r.t.notified, vec![100]);
        assert_eq!(r.t.states_at_notify, vec![STATE_IORESP_READY], "state published before notify");
        assert_eq!(r.core.stats().answered, 1);
    }

    #[test]
    fn a_write_reaches_the_device_and_echoes_its_data() {
        let mut r = rig(1);
        r.xen.post(0, &pio(0x518, 4, false, 0xdead_beef), 7);
        r.ports(&[100]);
        assert_eq!(*r.log.lock().unwrap(), vec![(8, vec![0xef, 0xbe, 0xad, 0xde])]);
        let s = r.xen.slot(0);
        assert_eq!(s.state(), STATE_IORESP_READY);
        assert_eq!(s.data, 0xdead_beef);
    }

    #[test]
    fn spurious_events_are_ignored_without_touching_the_slot() {
        let mut r = rig(1);
        // Slot NONE.
        r.ports(&[100]);
        assert_eq!(r.xen.slot(0), IoreqRaw::default());
        // Slot already answered (IORESP_READY): must not be answered again.
        r.xen.post(0, &pio(0x510, 1, true, 0), 7);
        r.ports(&[100]);
        let answered = r.xen.slot(0);
        r.ports(&[100]);
        assert_eq!(r.xen.slot(0), answered);
        assert_eq!(r.t.notified, vec![100], "one response only");
        assert_eq!(r.core.stats().spurious, 2);
        assert_eq!(r.t.unmasked, vec![100, 100, 100], "every delivered port is re-armed");
    }

    /// A device whose read moves the slot's state underneath (as a buggy
    /// or hostile agent could).
    struct Saboteur {
        xen: Arc<FakeXen>,
    }
    impl BusDevice for Saboteur {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            self.xen.sync_page().set_state(0, STATE_IOREQ_READY, Ordering::Release);
            data.fill(0x11);
        }
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
    }

    #[test]
    fn a_slot_whose_state_changed_underneath_is_not_answered() {
        let mut r = rig(1);
        let sab = Arc::new(Mutex::new(Saboteur { xen: r.xen.clone() }));
        r.engine.bus_mut().register_pio(0x600, 1, "sab", sab, 0).unwrap();
        r.xen.post(0, &pio(0x600, 1, true, 0x55), 7);
        r.ports(&[100]);
        let s = r.xen.slot(0);
        assert_eq!(s.state(), STATE_IOREQ_READY, "left as found, not moved to IORESP_READY");
        assert_eq!(s.data, 0x55, "data not written");
        assert!(r.t.notified.is_empty());
        assert_eq!(r.core.stats().lost, 1);
    }

    #[test]
    fn several_vcpus_are_answered_on_their_own_ports() {
        let mut r = rig(4);
        r.xen.post(1, &pio(0x511, 1, true, 0), 11);
        r.xen.post(3, &pio(0x513, 1, true, 0), 13);
        r.ports(&[103, 101, 102]);
        assert_eq!(r.xen.slot(1).data, 0x41);
        assert_eq!(r.xen.slot(3).data, 0x43);
        assert_eq!(r.xen.slot(1).state(), STATE_IORESP_READY);
        assert_eq!(r.xen.slot(3).state(), STATE_IORESP_READY);
        assert_eq!(r.xen.slot(2).state(), STATE_IOREQ_NONE);
        assert_eq!(r.t.notified, vec![103, 101]);
        assert_eq!(r.core.stats().spurious, 1);
    }

    #[test]
    fn unknown_ports_are_ignored() {
        let mut r = rig(1);
        r.xen.post(0, &pio(0x510, 1, true, 0), 7);
        r.ports(&[5, 100, 6]);
        assert_eq!(r.core.stats().unknown_ports, 2);
        assert_eq!(r.t.unmasked, vec![100]);
        assert_eq!(r.t.notified, vec![100]);
    }

    fn buf_write(addr: u32, size: u32, data: u32) -> u64 {
        BufSlot { kind: IoreqKind::Copy, is_read: false, size, addr, data }.encode()
    }

    #[test]
    fn the_ring_is_drained_before_a_synchronous_request() {
        let mut r = rig(1);
        r.xen.push_buffered(&[buf_write(0xa0004, 1, 0x77), buf_write(0xa0008, 2, 0x1234)]);
        r.xen.post(0, &pio(0x519, 1, false, 0x99), 7);
        r.ports(&[100]);
        assert_eq!(
            *r.log.lock().unwrap(),
            vec![(0x1004, vec![0x77]), (0x1008, vec![0x34, 0x12]), (9, vec![0x99])],
            "buffered writes first, in order"
        );
        assert_eq!(r.xen.pointers(), (2, 2));
        assert_eq!(r.core.stats().buffered, 2);
    }

    #[test]
    fn an_eight_byte_buffered_write_takes_two_slots() {
        let mut r = rig(1);
        // TIMEOFFSET of -2 seconds: low half then high half.
        let off = (-2i64) as u64;
        let lo = BufSlot { kind: IoreqKind::TimeOffset, is_read: false, size: 8, addr: 0, data: off as u32 }.encode();
        let hi = BufSlot { kind: IoreqKind::TimeOffset, is_read: false, size: 8, addr: 0, data: (off >> 32) as u32 }
            .encode();
        // An 8-byte MMIO write too.
        let m_lo = buf_write(0xa0010, 8, 0x4433_2211);
        let m_hi = buf_write(0xa0010, 8, 0x8877_6655);
        r.xen.push_buffered(&[lo, hi, m_lo, m_hi]);
        r.ports(&[BUF_PORT]);
        assert_eq!(*r.hooks.time.lock().unwrap(), vec![-2]);
        assert_eq!(*r.log.lock().unwrap(), vec![(0x1010, 0x8877_6655_4433_2211u64.to_le_bytes().to_vec())]);
        assert_eq!(r.xen.pointers(), (4, 4));
        assert_eq!(r.t.unmasked, vec![BUF_PORT]);
        assert!(r.t.notified.is_empty(), "buffered requests get no response");
    }

    #[test]
    fn ring_slots_wrap_at_511() {
        let mut r = rig(1);
        // Start both pointers at 510 (Xen leaves them below 511 after rebasing).
        r.xen.buf.0[0].store((510u64 << 32) | 510, Ordering::SeqCst);
        r.xen.push_buffered(&[buf_write(0xa0000, 1, 1), buf_write(0xa0001, 1, 2)]);
        assert_eq!(r.xen.buf.0[1 + 510].load(Ordering::SeqCst) >> 32, 1, "slot 510");
        assert_eq!(r.xen.buf.0[1].load(Ordering::SeqCst) >> 32, 2, "slot 0");
        r.ports(&[BUF_PORT]);
        assert_eq!(*r.log.lock().unwrap(), vec![(0x1000, vec![1]), (0x1001, vec![2])]);
        assert_eq!(r.xen.pointers(), (512, 512));
    }

    // The producer's 64-bit cmpxchg and the consumer's 32-bit add touch the
    // same bytes, as Xen and the device model do; that mix is coherent on
    // x86 (outside Rust's memory model, like the real page).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn read_pointer_is_advanced_atomically_against_xen_rebasing() {
        // Xen (another thread) produces 3000 one-byte writes and, like
        // BUFIOREQ_ATOMIC, rebases the pointer pair with a 64-bit cmpxchg
        // whenever read_pointer >= 511. A plain store of read_pointer by the
        // consumer would undo rebases and lose or repeat requests.
        let mut r = rig(1);
        let xen = r.xen.clone();
        const N: u32 = 3000;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let producer = std::thread::spawn(move || {
            let mut rebases = 0usize;
            let mut sent = 0u32;
            while sent < N && std::time::Instant::now() < deadline {
                let (rp, wp) = xen.pointers();
                if wp.wrapping_sub(rp) >= 500 {
                    std::thread::yield_now();
                    continue;
                }
                xen.push_buffered(&[buf_write(0xa0000 + (sent % 0x100), 1, sent & 0xff)]);
                sent += 1;
                loop {
                    let w = xen.buf.0[0].load(Ordering::Acquire);
                    let (rp, wp) = (w as u32, (w >> 32) as u32);
                    if rp < 511 {
                        break;
                    }
                    let new = (u64::from(wp - 511) << 32) | u64::from(rp - 511);
                    if xen.buf.0[0].compare_exchange(w, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        rebases += 1;
                        break;
                    }
                }
            }
            rebases
        });
        let mut got = 0u64;
        while got < u64::from(N) && std::time::Instant::now() < deadline {
            r.ports(&[BUF_PORT]);
            got = r.core.stats().buffered;
        }
        let rebases = producer.join().unwrap();
        let log = r.log.lock().unwrap();
        assert_eq!(log.len(), N as usize);
        for (i, (off, data)) in log.iter().enumerate() {
            assert_eq!((*off, data.as_slice()), (0x1000 + (i as u64 % 0x100), &[(i & 0xff) as u8][..]), "request {i}");
        }
        let (rp, wp) = r.xen.pointers();
        assert_eq!(rp, wp);
        assert!(rebases >= (N / 511) as usize - 1, "Xen rebased {rebases} times");
    }

    /// A PCI function whose BAR (I/O, 16 ports) is decoded once a 4-byte
    /// write to config 0x10 gives it an address.
    struct BarFn {
        bar: u32,
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

    #[test]
    fn a_bar_move_reaches_xen_before_the_response() {
        let mut r = rig(1);
        let sbdf = Sbdf::new(3, 0);
        r.engine.bus_mut().register_pci(sbdf, "f", Arc::new(Mutex::new(BarFn { bar: 0 }))).unwrap();
        let cfg = Ioreq {
            addr: (u64::from(sbdf.to_u32()) << 32) | 0x10,
            data: 0xc000,
            count: 1,
            size: 4,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: crate::ioreq::abi::IoreqKind::PciConfig,
        };
        r.xen.post(0, &cfg, 7);
        r.ports(&[100]);
        assert_eq!(r.t.applied, vec![RangeChange::Map { space: Space::Pio, start: 0xc000, end: 0xc00f }]);
        assert_eq!(r.t.notified, vec![100]);
    }

    #[test]
    fn claims_cover_ports_mmio_and_every_pci_function() {
        let mut r = rig(1);
        let bus = r.engine.bus_mut();
        bus.enable_pci_host_ports().unwrap();
        bus.register_pci(Sbdf::new(0, 0), "host", Arc::new(Mutex::new(BarFn { bar: 0 }))).unwrap();
        bus.register_pci(Sbdf::new(1, 3), "pm", Arc::new(Mutex::new(BarFn { bar: 0xb000 }))).unwrap();
        assert_eq!(
            claims(bus),
            vec![
                Claim::Range { space: Space::Pio, start: 0x510, end: 0x51f },
                Claim::Range { space: Space::Pio, start: 0xcf8, end: 0xcff },
                Claim::Range { space: Space::Pio, start: 0xb000, end: 0xb00f },
                Claim::Range { space: Space::Mmio, start: 0xa0000, end: 0xa0fff },
                Claim::Pci(Sbdf::new(0, 0)),
                Claim::Pci(Sbdf::new(1, 3)),
            ]
        );
    }

    /// Xen for `setup`: records the calls, writes vp_eport 50+i into the
    /// slots only when the server is enabled (as Xen does), can fail a call.
    struct FakeSetup {
        xen: Arc<FakeXen>,
        log: Mutex<Vec<String>>,
        vcpus: Option<u32>,
        fail: Option<&'static str>,
    }

    impl FakeSetup {
        fn new(vcpus: Option<u32>, fail: Option<&'static str>) -> Self {
            Self { xen: FakeXen::new(), log: Mutex::new(Vec::new()), vcpus, fail }
        }
        fn call(&self, entry: String, name: &'static str) -> Result<(), XenError> {
            self.log.lock().unwrap().push(entry);
            if self.fail == Some(name) {
                return Err(XenError::Call { call: name, errno: libc::EPERM });
            }
            Ok(())
        }
    }

    // SAFETY: the pages live in `xen` (an Arc the Pages value holds).
    unsafe impl SetupOps for FakeSetup {
        type Pages = Arc<FakeXen>;
        fn create_server(&self) -> Result<IoreqServerId, XenError> {
            self.call("create".into(), "create").map(|()| IoreqServerId(3))
        }
        fn map_pages(&self, id: IoreqServerId) -> Result<Arc<FakeXen>, XenError> {
            self.call(format!("map {}", id.0), "map").map(|()| self.xen.clone())
        }
        fn frames(pages: &Arc<FakeXen>) -> Option<(NonNull<u8>, NonNull<u8>)> {
            Some((pages.buf.ptr(), pages.sync.ptr()))
        }
        fn bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError> {
            self.call(format!("info {}", id.0), "info").map(|()| 77)
        }
        fn set_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError> {
            self.call(format!("state {} {enabled}", id.0), "state")?;
            if enabled {
                for v in 0..MAX_VCPUS {
                    let p = self.xen.sync.ptr().as_ptr();
                    // SAFETY: slot v's vp_eport field inside our page.
                    unsafe {
                        std::ptr::write_volatile(
                            p.add(v as usize * SLOT_SIZE + SLOT_EPORT_OFFSET).cast::<u32>(),
                            50 + v,
                        )
                    };
                }
            }
            Ok(())
        }
        fn nr_vcpus(&self) -> Result<u32, XenError> {
            self.log.lock().unwrap().push("nr_vcpus".into());
            self.vcpus.ok_or(XenError::Call { call: "xendevicemodel_nr_vcpus", errno: libc::ENOSYS })
        }
        fn bind(&self, remote: u32) -> Result<u32, XenError> {
            self.call(format!("bind {remote}"), "bind").map(|()| remote + 1000)
        }
        fn destroy(&self, id: IoreqServerId) -> Result<(), XenError> {
            self.call(format!("destroy {}", id.0), "destroy")
        }
    }

    #[test]
    fn setup_enables_before_binding_and_disables_after() {
        let ops = FakeSetup::new(Some(2), None);
        let mut done = setup(&ops, 8).unwrap();
        assert_eq!(
            *ops.log.lock().unwrap(),
            ["create", "map 3", "info 3", "state 3 true", "nr_vcpus", "bind 50", "bind 51", "bind 77", "state 3 false"]
        );
        assert_eq!(done.vcpus, 2);
        assert_eq!(done.bound, vec![1050, 1051, 1077]);
        // The core maps local ports to vCPUs and the buffered port to the ring.
        let mut engine = rig(1).engine;
        let mut t = FakeTransport::default();
        ops.xen.post(1, &pio(0x511, 1, true, 0), 51);
        done.core.handle_ports(&[1051], &mut engine, &mut t);
        assert_eq!(ops.xen.slot(1).data, 0x41);
        assert_eq!(t.notified, vec![1051]);
    }

    #[test]
    fn setup_falls_back_to_maxcpus() {
        let ops = FakeSetup::new(None, None);
        let done = setup(&ops, 3).unwrap();
        assert_eq!(done.bound, vec![1050, 1051, 1052, 1077]);
        let ops = FakeSetup::new(Some(500), None);
        assert_eq!(setup(&ops, 1).unwrap().vcpus, MAX_VCPUS, "one page holds 128 slots");
    }

    #[test]
    fn a_failed_setup_destroys_the_server() {
        let ops = FakeSetup::new(Some(1), Some("bind"));
        let e = setup(&ops, 1).err().unwrap();
        assert_eq!(e.call(), "bind");
        assert_eq!(ops.log.lock().unwrap().last().unwrap(), "destroy 3");
        let ops = FakeSetup::new(Some(1), Some("create"));
        assert!(setup(&ops, 1).is_err());
        assert_eq!(*ops.log.lock().unwrap(), ["create"], "nothing to destroy");
    }

    #[test]
    fn the_server_can_move_to_its_thread() {
        fn send<T: Send>() {}
        send::<IoreqServer>();
        send::<Engine>();
        fn sync<T: Send + Sync>() {}
        sync::<ServerControl>();
        sync::<crate::xen::MapCache<crate::xen::ForeignMemory>>();
    }

    #[test]
    fn run_serves_until_stopped_and_polls_a_busy_ring() {
        let mut r = rig(2);
        r.xen.push_buffered(&[buf_write(0xa0000, 1, 5)]);
        r.t.script.extend([Wakeup::Ports(vec![BUF_PORT]), Wakeup::Timeout, Wakeup::Ports(vec![101])]);
        r.xen.post(1, &pio(0x510, 1, true, 0), 7);
        let stop = StopHandle::new().unwrap();
        r.core.run(&mut r.engine, &mut r.t, &stop).unwrap();
        // First wait: idle ring, no timeout. After a drain with work: 100 ms.
        // After the timeout's empty drain: no timeout again.
        assert_eq!(r.t.waits, vec![None, Some(BUFFERED_POLL), None, None]);
        assert_eq!(r.xen.slot(1).state(), STATE_IORESP_READY);
        assert_eq!(*r.log.lock().unwrap(), vec![(0x1000, vec![5])]);
    }

    #[test]
    fn stop_handle_wakes_a_poll_and_is_sticky() {
        let stop = StopHandle::new().unwrap();
        assert!(!stop.is_stopped());
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            let mut fds = [PollFd::from_borrowed_fd(s2.fd(), PollFlags::IN)];
            rustix::event::poll(&mut fds, None).unwrap();
            fds[0].revents()
        });
        std::thread::sleep(Duration::from_millis(20));
        stop.stop();
        assert!(t.join().unwrap().contains(PollFlags::IN));
        assert!(stop.is_stopped());
        let mut fds = [PollFd::from_borrowed_fd(stop.fd(), PollFlags::IN)];
        assert_eq!(rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })).unwrap(), 1);
    }

    #[test]
    fn slots_beyond_the_page_are_refused() {
        let xen = FakeXen::new();
        let p = xen.sync_page();
        assert!(p.state(MAX_VCPUS).is_none());
        assert!(p.read(u32::MAX).is_none());
        assert!(p.vp_eport(128).is_none());
        assert_eq!(xen.buf_page().slot(511 + 3), xen.buf_page().slot(3));
    }
}
