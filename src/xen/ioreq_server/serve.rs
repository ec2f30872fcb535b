//! The serving loop: events in, requests to an [`IoreqHandler`], responses
//! out (Xen's `public/hvm/ioreq.h` protocol; producer side as in Xen's
//! `xen/common/ioreq.c`, consumer order as QEMU's `hw/xen/xen-hvm-common.c`
//! `cpu_get_ioreq`/`handle_buffered_iopage`, read for facts only).
//!
//! ## Per vCPU slot
//! Xen fills the slot, sets `state = READY` and signals the vCPU's port; the
//! vCPU stays blocked until it sees `IORESP_READY`. On an event for that port
//! we unmask it, then:
//! 1. load `state` (acquire); anything but READY is a spurious event and is
//!    ignored (we never write a slot we do not own);
//! 2. set `state = INPROCESS`;
//! 3. drain the buffered ring (it holds older writes, which must be seen
//!    first);
//! 4. copy the request and let the handler serve it; apply its range changes
//!    to Xen (a BAR move must reach Xen before the guest's next access);
//! 5. re-load `state`: if it is no longer INPROCESS something else wrote the
//!    slot; we log an error and write nothing (moving the state backwards
//!    makes Xen crash the guest);
//! 6. write `data`, store `state = IORESP_READY` (release), notify the port.
//!
//! ## The buffered ring
//! Drained on its own event (the port is unmasked *before* draining, so a
//! request queued during the drain raises a new event), before every
//! synchronous request, and, QEMU's policy, again every [`BUFFERED_POLL`]
//! (100 ms) while the previous drain found work.
//!
//! ## Bound on work per wakeup
//! At most [`MAX_PORTS_PER_WAKEUP`] pending ports per wakeup; one request per
//! vCPU port (a slot holds one); the handler bounds each drain and each
//! request. Unknown ports are logged at a limited rate and ignored.
//!
//! ## Where we differ from QEMU
//! * An event on an unknown port is logged and ignored; QEMU treats it as
//!   fatal.
//! * A slot that leaves INPROCESS while we handle it is logged and left
//!   unanswered; QEMU destroys the domain.
//! * The buffered port is unmasked on every event instead of being kept
//!   masked while the 100 ms timer runs (QEMU's way of rate-limiting VGA
//!   write storms); the timer is kept as a safety net.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use xendm_devices::bus::RangeChange;
use xendm_devices::ratelimit::RateLimit;

use super::pages::{BufferedPage, SyncPage};
use super::{BUFFERED_POLL, MAX_PORTS_PER_WAKEUP};
use crate::ioreq::abi::{Ioreq, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY, STATE_IORESP_READY};
use crate::ioreq::handler::IoreqHandler;
use crate::xen::sys::{DeviceModel, EventChannels, IoreqServerId};
use crate::xen::XenError;

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
    /// `(local port, vCPU)`, sorted by port: a binary search per request
    /// costs a few instructions where hashing the port cost ~100
    /// (`benches/serve_loop.rs`, docs/benchmarks.md).
    vcpu_by_port: Vec<(u32, u32)>,
    buffered_port: Option<u32>,
    ring_busy: bool,
    stats: LoopStats,
    unknown_log: RateLimit,
    xen_log: RateLimit,
}

impl ServerCore {
    /// A core over the two pages; `vcpu_ports[i]` is vCPU `i`'s local port.
    pub fn new(sync: SyncPage, ring: Option<BufferedPage>, vcpu_ports: &[u32], buffered_port: Option<u32>) -> Self {
        let mut vcpu_by_port: Vec<(u32, u32)> = vcpu_ports.iter().zip(0u32..).map(|(&p, v)| (p, v)).collect();
        vcpu_by_port.sort_unstable();
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

    /// The vCPU whose port `port` is.
    fn vcpu_of(&self, port: u32) -> Option<u32> {
        let i = self.vcpu_by_port.binary_search_by_key(&port, |&(p, _)| p).ok()?;
        self.vcpu_by_port.get(i).map(|&(_, v)| v)
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
            } else if let Some(vcpu) = self.vcpu_of(port) {
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
    pub(super) evtchn: EventChannels,
    pub(super) dm: Arc<DeviceModel>,
    pub(super) id: IoreqServerId,
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

#[cfg(test)]
mod tests {
    use super::super::fakes::{pio, rig, BarFn, FakeXen, BUF_PORT};
    use super::*;
    use crate::ioreq::abi::{BufSlot, IoreqKind, IoreqRaw, FLAG_STATE_MASK, STATE_IOREQ_NONE};
    use std::sync::Mutex;
    use xendm_devices::bus::BusDevice;
    use xendm_devices::{Sbdf, Space};

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
}
