//! Recording: wrappers that report what the devices do, and the
//! [`Recorder`] that turns it into one [`Record`] per request.
//!
//! Recording costs nothing when off: the machine is then built without the
//! [`RecordingMemory`]/[`RecordingHypervisor`] wrappers and the engine has no
//! observer. When on, the wrappers append to a shared [`Tap`] that the
//! [`Recorder`] (the engine's [`IoreqObserver`]) empties around each request.
//!
//! Known limit: hypervisor calls made outside request handling (a UART raising
//! its IRQ because the backend delivered input) are not attributed to any
//! request and are not recorded.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use vm_memory::GuestAddress;
use xendm_devices::sync::lock;
use xendm_devices::{GuestMemory, HvCall, Hypervisor, MemError, ShutdownReason};

use super::format::{Header, MemChunk, Record, TraceError, INLINE_WRITE_MAX};
use crate::ioreq::observer::{FlushError, IoreqObserver, Served};

#[derive(Default)]
struct TapState {
    reads: Vec<MemChunk>,
    writes: Vec<MemChunk>,
    hv: Vec<HvCall>,
}

/// Where the recording wrappers put what they see.
pub struct Tap {
    state: Mutex<TapState>,
    /// Most memory accesses (reads plus writes) kept per request.
    max_chunks: usize,
    /// Most hypervisor calls kept per request.
    max_hv_calls: usize,
    /// Accesses and calls not kept because a cap was reached.
    dropped: AtomicU64,
}

impl Default for Tap {
    fn default() -> Self {
        Self { state: Mutex::default(), max_chunks: usize::MAX, max_hv_calls: usize::MAX, dropped: AtomicU64::new(0) }
    }
}

impl Tap {
    /// A fresh tap that keeps everything (recording).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A fresh tap that keeps at most `max_chunks` memory accesses and
    /// `max_hv_calls` hypervisor calls per request and counts the rest
    /// (replay: a replayed request cannot make the recording grow without
    /// bound, see [`super::TraceLimits`]).
    pub fn bounded(max_chunks: usize, max_hv_calls: usize) -> Arc<Self> {
        Arc::new(Self { max_chunks, max_hv_calls, ..Self::default() })
    }

    /// How many accesses and calls were not kept since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    fn drop_one(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    fn note_access(&self, write: bool, make: impl FnOnce() -> MemChunk) {
        let mut st = lock(&self.state);
        if st.reads.len().saturating_add(st.writes.len()) >= self.max_chunks {
            drop(st);
            self.drop_one();
            return;
        }
        let c = make();
        if write {
            st.writes.push(c);
        } else {
            st.reads.push(c);
        }
    }
}

fn chunk(gpa: u64, data: &[u8], inline: bool, fault: bool) -> MemChunk {
    let len = data.len() as u64;
    if fault {
        return MemChunk { gpa, len, hex: None, sha256: None, fault };
    }
    if inline || data.len() <= INLINE_WRITE_MAX {
        MemChunk { gpa, len, hex: Some(hex::encode(data)), sha256: None, fault }
    } else {
        MemChunk { gpa, len, hex: None, sha256: Some(hex::encode(Sha256::digest(data))), fault }
    }
}

/// Guest memory that reports every access to a [`Tap`].
pub struct RecordingMemory {
    inner: Arc<dyn GuestMemory>,
    tap: Arc<Tap>,
}

impl RecordingMemory {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn GuestMemory>, tap: Arc<Tap>) -> Self {
        Self { inner, tap }
    }
}

impl GuestMemory for RecordingMemory {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.inner.read(addr, buf);
        self.tap.note_access(false, || chunk(addr.0, buf, true, r.is_err()));
        r
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        let r = self.inner.write(addr, buf);
        self.tap.note_access(true, || chunk(addr.0, buf, false, r.is_err()));
        r
    }
    /// One recorded write, as [`Self::write`] would record the whole buffer:
    /// the bytes are hashed (or kept, when short) as they pass.
    fn write_from(
        &self,
        addr: GuestAddress,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> Result<u64, MemError> {
        let mut hash = Sha256::new();
        let mut short = Vec::new();
        let mut tee = |off: u64, buf: &mut [u8]| {
            if !fill(off, buf) {
                return false;
            }
            hash.update(&*buf);
            if short.len() + buf.len() <= INLINE_WRITE_MAX {
                short.extend_from_slice(buf);
            }
            true
        };
        let r = self.inner.write_from(addr, len, &mut tee);
        self.tap.note_access(true, || match r {
            Err(_) => MemChunk { gpa: addr.0, len, hex: None, sha256: None, fault: true },
            Ok(n) if n as usize <= INLINE_WRITE_MAX => chunk(addr.0, &short, false, false),
            Ok(n) => {
                MemChunk { gpa: addr.0, len: n, hex: None, sha256: Some(hex::encode(hash.finalize())), fault: false }
            }
        });
        r
    }
}

/// A hypervisor that reports every call to a [`Tap`] before passing it on.
pub struct RecordingHypervisor {
    inner: Arc<dyn Hypervisor>,
    tap: Arc<Tap>,
}

impl RecordingHypervisor {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Hypervisor>, tap: Arc<Tap>) -> Self {
        Self { inner, tap }
    }
    fn note(&self, c: HvCall) {
        let mut st = lock(&self.tap.state);
        if st.hv.len() >= self.tap.max_hv_calls {
            drop(st);
            self.tap.drop_one();
        } else {
            st.hv.push(c);
        }
    }
}

impl Hypervisor for RecordingHypervisor {
    fn set_isa_irq_level(&self, irq: u8, level: bool) {
        self.note(HvCall::IsaIrq { irq, level });
        self.inner.set_isa_irq_level(irq, level);
    }
    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) {
        self.note(HvCall::PciIntx { device, intx, level });
        self.inner.set_pci_intx_level(device, intx, level);
    }
    fn set_pci_link_route(&self, link: u8, irq: u8) {
        self.note(HvCall::LinkRoute { link, irq });
        self.inner.set_pci_link_route(link, irq);
    }
    fn inject_msi(&self, addr: u64, data: u32) {
        self.note(HvCall::Msi { addr, data });
        self.inner.inject_msi(addr, data);
    }
    fn shutdown(&self, reason: ShutdownReason) {
        self.note(HvCall::Shutdown { reason });
        self.inner.shutdown(reason);
    }
}

/// Where finished records go.
pub trait RecordSink: Send {
    /// Stores one record. Failures are the sink's to report (once).
    fn record(&mut self, r: &Record);
    /// Flushes buffered output.
    fn flush(&mut self) -> Result<(), TraceError>;
}

/// Collects records in memory (replay, tests).
#[derive(Default, Clone)]
pub struct VecSink(pub Arc<Mutex<Vec<Record>>>);

impl RecordSink for VecSink {
    fn record(&mut self, r: &Record) {
        lock(&self.0).push(r.clone());
    }
    fn flush(&mut self) -> Result<(), TraceError> {
        Ok(())
    }
}

/// Writes a gzip JSON Lines trace file.
pub struct FileSink {
    path: PathBuf,
    out: Option<flate2::write::GzEncoder<BufWriter<std::fs::File>>>,
    failed: bool,
}

impl FileSink {
    /// Creates `path` and writes the header.
    ///
    /// # Errors
    /// If the file cannot be created or written.
    pub fn create(path: &Path, header: &Header) -> Result<Self, TraceError> {
        let io = |source| TraceError::Io { path: path.to_path_buf(), source };
        let f = std::fs::File::create(path).map_err(io)?;
        let mut out = flate2::write::GzEncoder::new(BufWriter::new(f), flate2::Compression::default());
        let line = serde_json::to_string(header).map_err(|e| TraceError::Format {
            path: path.to_path_buf(),
            line: 1,
            reason: e.to_string(),
        })?;
        writeln!(out, "{line}").map_err(io)?;
        Ok(Self { path: path.to_path_buf(), out: Some(out), failed: false })
    }
}

impl RecordSink for FileSink {
    fn record(&mut self, r: &Record) {
        if self.failed {
            return;
        }
        let Some(out) = &mut self.out else { return };
        let res = serde_json::to_string(r).map_err(std::io::Error::other).and_then(|line| writeln!(out, "{line}"));
        if let Err(e) = res {
            tracing::error!(path = %self.path.display(), error = %e, "writing the ioreq trace failed; recording stopped");
            self.failed = true;
        }
    }
    fn flush(&mut self) -> Result<(), TraceError> {
        if let Some(out) = self.out.take() {
            let io = |source| TraceError::Io { path: self.path.clone(), source };
            let mut w = out.finish().map_err(io)?;
            w.flush().map_err(io)?;
        }
        Ok(())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "closing the ioreq trace failed");
        }
    }
}

/// Turns what the tap saw around each request into a [`Record`].
pub struct Recorder {
    tap: Arc<Tap>,
    sink: Box<dyn RecordSink>,
    next: u64,
}

impl Recorder {
    /// A recorder reading `tap` and writing to `sink`.
    pub fn new(tap: Arc<Tap>, sink: Box<dyn RecordSink>) -> Self {
        Self { tap, sink, next: 0 }
    }
}

impl IoreqObserver for Recorder {
    /// Forgets anything the tap saw outside a request.
    fn begin(&mut self) {
        *lock(&self.tap.state) = TapState::default();
    }

    /// Completes the record of the request just served.
    fn finish(&mut self, served: &Served<'_>) {
        let st = std::mem::take(&mut *lock(&self.tap.state));
        let r = Record {
            i: self.next,
            vcpu: served.vcpu,
            buffered: served.buffered,
            req: *served.req,
            resp: served.resp,
            mem_reads: st.reads,
            mem_writes: st.writes,
            hv: st.hv,
            ranges: served.ranges.to_vec(),
        };
        self.next += 1;
        self.sink.record(&r);
    }

    /// Flushes the sink.
    fn flush(&mut self) -> Result<(), FlushError> {
        Ok(self.sink.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_writes_are_hashed() {
        let c = chunk(0x1000, &[0u8; 100], false, false);
        assert!(c.hex.is_none());
        assert_eq!(c.sha256.as_deref(), Some("cd00e292c5970d3c5e2f0ffa5171e555bc46bfc4faddfb4a418b6840b86e79a3"));
        assert_eq!(chunk(0, &[1, 2], false, false).hex.as_deref(), Some("0102"));
    }

    /// A streamed write is recorded exactly as one `write` of its bytes
    /// (the committed traces hold fw_cfg's kernel copy as one write).
    #[test]
    fn a_streamed_write_is_recorded_as_one_write() {
        use xendm_devices::mem::TestMemory;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for len in [2usize, 64, 65, data.len()] {
            let (tap_a, tap_b) = (Tap::new(), Tap::new());
            let a = RecordingMemory::new(Arc::new(TestMemory::pc(1 << 20).unwrap()), tap_a.clone());
            let b = RecordingMemory::new(Arc::new(TestMemory::pc(1 << 20).unwrap()), tap_b.clone());
            a.write(GuestAddress(0x1000), &data[..len]).unwrap();
            let mut fill = |off: u64, buf: &mut [u8]| {
                buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
                true
            };
            assert_eq!(b.write_from(GuestAddress(0x1000), len as u64, &mut fill).unwrap(), len as u64);
            assert_eq!(lock(&tap_a.state).writes, lock(&tap_b.state).writes, "len {len}");
        }
        // A failing write is one fault of the whole length, as `write` records it.
        let (tap_a, tap_b) = (Tap::new(), Tap::new());
        let a = RecordingMemory::new(Arc::new(TestMemory::pc(1 << 20).unwrap()), tap_a.clone());
        let b = RecordingMemory::new(Arc::new(TestMemory::pc(1 << 20).unwrap()), tap_b.clone());
        assert!(a.write(GuestAddress(0x9_0000), &data).is_err());
        assert!(b.write_from(GuestAddress(0x9_0000), data.len() as u64, &mut |_, _| true).is_err());
        assert_eq!(lock(&tap_a.state).writes, lock(&tap_b.state).writes);
    }

    #[test]
    fn a_bounded_tap_counts_what_it_does_not_keep() {
        let tap = Tap::bounded(2, 1);
        let mem = RecordingMemory::new(Arc::new(xendm_devices::mem::TestMemory::pc(1 << 20).unwrap()), tap.clone());
        let hv = RecordingHypervisor::new(Arc::new(xendm_devices::hv::FakeHypervisor::new()), tap.clone());
        for _ in 0..3 {
            mem.write(GuestAddress(0x1000), &[0u8; 4096]).unwrap();
            hv.set_isa_irq_level(4, true);
        }
        let st = std::mem::take(&mut *lock(&tap.state));
        assert_eq!((st.writes.len(), st.hv.len()), (2, 1));
        assert_eq!(tap.take_dropped(), 3);
        assert_eq!(tap.take_dropped(), 0);
    }
}
