//! The device model's own writes into guest memory, reported to Xen's
//! log-dirty tracking while a live migration (or any save) copies memory.
//!
//! Xen's log-dirty mode sees the guest's writes, not a dom0 process writing
//! through foreign mappings, so between QMP `xen-set-global-dirty-log
//! {"enable": true}` and `{"enable": false}` (`xen-toolstack.md` 2.1 and
//! 2.4; libxl sends both for every HVM save) a device model must report each
//! guest frame it writes with `xendevicemodel_modified_memory` (Xen
//! `public/hvm/dm_op.h`, `XEN_DMOP_modified_memory`), as QEMU's
//! `xen_hvm_modified_memory` does. For xendm those writes are fw_cfg DMA
//! (data and the control word), `rep ins` with `data_is_ptr` and MMIO copies
//! into RAM: all of them go through the machine's [`GuestMemory`], so
//! [`DirtyTracking`] wraps it and every write is reported, whatever the
//! device.
//!
//! A report that Xen refuses is logged (rate-limited) and the write stands:
//! the guest's data is in its memory either way; at worst the migration
//! sends a stale copy of that frame, which is what the log line says.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;
use xendm_devices::ratelimit::RateLimit;
use xendm_devices::sync::lock;
use xendm_devices::{GuestMemory, MemError};

/// Guest frames are 4 KiB.
const PAGE_SHIFT: u32 = 12;

/// Where reports of modified guest frames go (Xen's dm_op on a real host).
pub trait DirtySink: Send + Sync {
    /// `nr` frames from `first_pfn` were written.
    ///
    /// # Errors
    /// What the hypervisor said.
    fn modified(&self, first_pfn: u64, nr: u32) -> Result<(), String>;
}

impl DirtySink for crate::xen::sys::DeviceModel {
    fn modified(&self, first_pfn: u64, nr: u32) -> Result<(), String> {
        self.modified_memory(first_pfn, nr).map_err(|e| e.to_string())
    }
}

/// Whether the global dirty log is on, and where reports go.
pub struct DirtyLog {
    on: AtomicBool,
    sink: Box<dyn DirtySink>,
    reported: AtomicU64,
    failures: Mutex<RateLimit>,
}

impl DirtyLog {
    /// A log that starts off, reporting to `sink` once switched on.
    pub fn new(sink: Box<dyn DirtySink>) -> Self {
        Self {
            on: AtomicBool::new(false),
            sink,
            reported: AtomicU64::new(0),
            failures: Mutex::new(RateLimit::per_second()),
        }
    }

    /// Switches reporting on or off (QMP `xen-set-global-dirty-log`), in
    /// any run state. Returns the frames reported since the last switch-on.
    pub fn set(&self, on: bool) -> u64 {
        let was = self.on.swap(on, Ordering::SeqCst);
        if on && !was {
            self.reported.store(0, Ordering::SeqCst);
        }
        self.reported.load(Ordering::SeqCst)
    }

    /// Whether reporting is on.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// Reports the frames of `len` bytes written at `addr`, if the log is on.
    pub fn note(&self, addr: u64, len: u64) {
        if len == 0 || !self.is_on() {
            return;
        }
        let first = addr >> PAGE_SHIFT;
        let last = addr.saturating_add(len - 1) >> PAGE_SHIFT;
        let mut pfn = first;
        while pfn <= last {
            let nr = u32::try_from(last - pfn + 1).unwrap_or(u32::MAX);
            match self.sink.modified(pfn, nr) {
                Ok(()) => {
                    self.reported.fetch_add(u64::from(nr), Ordering::Relaxed);
                }
                Err(e) => {
                    if let Some(suppressed) = lock(&self.failures).check() {
                        tracing::warn!(
                            suppressed,
                            first_pfn = pfn,
                            nr,
                            "reporting guest frames the device model wrote to the dirty log failed: {e}; \
                             a live migration may send stale copies of them"
                        );
                    }
                }
            }
            match pfn.checked_add(u64::from(nr)) {
                Some(next) => pfn = next,
                None => break,
            }
        }
    }
}

/// [`GuestMemory`] that reports every write to a [`DirtyLog`].
pub struct DirtyTracking {
    inner: Arc<dyn GuestMemory>,
    log: Arc<DirtyLog>,
}

impl DirtyTracking {
    /// `inner`, with its writes reported to `log` while it is on.
    pub fn new(inner: Arc<dyn GuestMemory>, log: Arc<DirtyLog>) -> Self {
        Self { inner, log }
    }
}

impl GuestMemory for DirtyTracking {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        let r = self.inner.write(addr, buf);
        // On error a prefix may have been written: report the whole range.
        self.log.note(addr.0, buf.len() as u64);
        r
    }

    fn write_from(
        &self,
        addr: GuestAddress,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> Result<u64, MemError> {
        let r = self.inner.write_from(addr, len, fill);
        let written = match &r {
            Ok(n) => *n,
            Err(_) => len,
        };
        self.log.note(addr.0, written);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xendm_devices::mem::TestMemory;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u32)>>, AtomicBool);
    impl DirtySink for Arc<Recorder> {
        fn modified(&self, first_pfn: u64, nr: u32) -> Result<(), String> {
            lock(&self.0).push((first_pfn, nr));
            if self.1.load(Ordering::SeqCst) {
                return Err("EINVAL".into());
            }
            Ok(())
        }
    }

    fn tracked() -> (DirtyTracking, Arc<DirtyLog>, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let log = Arc::new(DirtyLog::new(Box::new(rec.clone())));
        let mem: Arc<dyn GuestMemory> = Arc::new(TestMemory::pc(1 << 20).unwrap());
        (DirtyTracking::new(mem, log.clone()), log, rec)
    }

    #[test]
    fn writes_are_reported_only_while_the_log_is_on_with_every_frame_they_touch() {
        let (m, log, rec) = tracked();
        m.write(GuestAddress(0x1000), &[1; 16]).unwrap();
        assert!(lock(&rec.0).is_empty(), "off: nothing reported");
        assert_eq!(log.set(true), 0);
        m.write(GuestAddress(0x1ffe), &[2; 4]).unwrap(); // straddles frames 1 and 2
        m.write(GuestAddress(0x5000), &[]).unwrap();
        let mut fill = |_: u64, b: &mut [u8]| {
            b.fill(3);
            true
        };
        assert_eq!(m.write_from(GuestAddress(0x8000), 0x3001, &mut fill).unwrap(), 0x3001);
        let mut buf = [0u8; 4];
        m.read(GuestAddress(0x1ffe), &mut buf).unwrap();
        assert_eq!(buf, [2; 4], "the write itself happened");
        assert_eq!(*lock(&rec.0), vec![(1, 2), (8, 4)]);
        assert_eq!(log.set(false), 6, "frames reported while on");
        m.write(GuestAddress(0x9000), &[4]).unwrap();
        assert_eq!(lock(&rec.0).len(), 2);
    }

    #[test]
    fn a_write_that_fails_midway_and_a_refused_report_are_absorbed() {
        let (m, log, rec) = tracked();
        log.set(true);
        // Past the end of RAM: an error, and its frames are reported anyway.
        assert!(m.write(GuestAddress((1 << 20) - 2), &[5; 8]).is_err());
        assert_eq!(*lock(&rec.0), vec![(0xff, 2)]);
        rec.1.store(true, Ordering::SeqCst);
        m.write(GuestAddress(0x2000), &[6]).unwrap();
        assert_eq!(lock(&rec.0).len(), 2, "tried, refused, logged; the write stands");
        // The highest frame of the address space does not wrap.
        log.note(u64::MAX - 1, 2);
        assert_eq!(lock(&rec.0).last(), Some(&(u64::MAX >> PAGE_SHIFT, 1)));
    }
}
