//! ioreq record/replay: the trace format, the recorder, and the replay runner.
//!
//! The format is documented in `docs/traces.md`: gzip-compressed JSON Lines,
//! a [`Header`] line, then one [`Record`] per request served. A record holds
//! the request as received, the response, every guest-memory access the DM
//! made while serving it (reads with their bytes, so a replay can serve them
//! again; writes with their bytes, or a SHA-256 when longer than
//! [`INLINE_WRITE_MAX`]; failed accesses marked), every hypervisor call, and
//! the port/MMIO range changes the request caused.
//!
//! Recording costs nothing when off: the machine is then built without the
//! [`RecordingMemory`]/[`RecordingHypervisor`] wrappers and the engine has no
//! recorder. When on, the wrappers append to a shared [`Tap`] that the
//! engine's [`Recorder`] empties around each request.
//!
//! Replay ([`replay`]) builds a fresh machine from the header's argv with
//! [`ReplayMemory`] and a fake hypervisor, records it the same way, and
//! compares each produced record with the stored one, stopping at the first
//! divergence with the record index, the field, and both values.
//!
//! Known limit: hypervisor calls made outside request handling (a UART raising
//! its IRQ because the backend delivered input) are not attributed to any
//! request and are not recorded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xendm_devices::sync::lock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::GuestAddress;
use xendm_devices::bus::RangeChange;
use xendm_devices::{GuestMemory, HvCall, Hypervisor, MemError, ShutdownReason};

use crate::ioreq::abi::Ioreq;
use crate::ioreq::observer::{FlushError, IoreqObserver, Served};

/// Current trace format version.
pub const TRACE_VERSION: u32 = 1;
/// Writes up to this many bytes are stored inline; longer ones as a hash.
pub const INLINE_WRITE_MAX: usize = 64;
/// Replay refuses traces that would need more sparse memory than this.
pub const REPLAY_MAX_PAGES: usize = 1 << 18; // 1 GiB

/// First line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format version ([`TRACE_VERSION`]).
    pub xendm_trace: u32,
    /// The DM's argv (without argv[0]) that built the recorded machine.
    pub argv: Vec<String>,
    /// SHA-256 of each file the DM read at start-up (kernel, initrd), by path.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Who wrote it.
    pub producer: String,
}

/// One guest-memory access made while serving a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemChunk {
    pub gpa: u64,
    pub len: u64,
    /// The bytes, hex (reads always; writes up to [`INLINE_WRITE_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// SHA-256 of the bytes, hex (long writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The access failed (unmapped guest memory).
    #[serde(default, skip_serializing_if = "is_false")]
    pub fault: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One served request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the trace, from 0.
    pub i: u64,
    /// vCPU whose slot carried the request (`u32::MAX` for buffered ones).
    pub vcpu: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub buffered: bool,
    pub req: Ioreq,
    /// Value written back to the slot's `data`.
    pub resp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mem_reads: Vec<MemChunk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mem_writes: Vec<MemChunk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hv: Vec<HvCall>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<RangeChange>,
}

/// Errors reading, writing or replaying traces.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("trace {path} line {line}: {reason}")]
    Format { path: PathBuf, line: usize, reason: String },
    #[error("trace {path}: format version {found}, this xendm reads version {TRACE_VERSION}")]
    Version { path: PathBuf, found: u64 },
    #[error("replay cannot build the recorded machine: {0}")]
    Machine(String),
    #[error("replay diverged at record {index} ({field}):\n  expected: {expected}\n  actual:   {actual}")]
    Divergence { index: u64, field: &'static str, expected: String, actual: String },
    #[error("replay: {0}")]
    Replay(String),
}

#[derive(Default)]
struct TapState {
    reads: Vec<MemChunk>,
    writes: Vec<MemChunk>,
    hv: Vec<HvCall>,
}

/// Where the recording wrappers put what they see.
#[derive(Default)]
pub struct Tap {
    state: Mutex<TapState>,
}

impl Tap {
    /// A fresh tap.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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
        lock(&self.tap.state).reads.push(chunk(addr.0, buf, true, r.is_err()));
        r
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        let r = self.inner.write(addr, buf);
        lock(&self.tap.state).writes.push(chunk(addr.0, buf, false, r.is_err()));
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
        lock(&self.tap.state).hv.push(c);
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

/// Reads a trace file: the header, then records one by one.
pub struct TraceReader {
    path: PathBuf,
    reader: BufReader<flate2::read::GzDecoder<std::fs::File>>,
    line: usize,
    /// Set after an unreadable or overlong line: iteration ends.
    done: bool,
    /// The trace's header.
    pub header: Header,
}

/// Longest line accepted from a trace file (a record with a 4 KiB rep read
/// inlined is ~9 KiB).
const MAX_LINE: usize = 1 << 20;

/// Why [`next_line`] returned no line.
#[derive(Debug)]
enum LineError {
    Io(std::io::Error),
    /// More than the limit before a newline; the rest was not read.
    TooLong,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::TooLong => write!(f, "line longer than {MAX_LINE} bytes"),
        }
    }
}

/// The next line of `r` without its `\n` or `\r\n`, reading at most
/// `max + 2` bytes, so a file without newlines (or a gzip bomb) cannot make
/// us buffer more than `max` bytes. `None` at end of input.
fn next_line<R: BufRead>(r: &mut R, max: usize) -> Result<Option<String>, LineError> {
    let mut buf = Vec::new();
    // Room for the line and a CRLF.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(2);
    let n = std::io::Read::take(&mut *r, limit).read_until(b'\n', &mut buf).map_err(LineError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > max {
        return Err(LineError::TooLong);
    }
    String::from_utf8(buf).map(Some).map_err(|e| LineError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

impl TraceReader {
    /// Opens `path` and reads its header.
    ///
    /// # Errors
    /// If the file cannot be read, is not a trace, or has another version.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let f = std::fs::File::open(path).map_err(|source| TraceError::Io { path: path.to_path_buf(), source })?;
        let mut reader = BufReader::new(flate2::read::GzDecoder::new(f));
        let fmt = |line, reason: String| TraceError::Format { path: path.to_path_buf(), line, reason };
        let first = next_line(&mut reader, MAX_LINE)
            .map_err(|e| fmt(1, e.to_string()))?
            .ok_or_else(|| fmt(1, "empty file".into()))?;
        let v: serde_json::Value = serde_json::from_str(&first).map_err(|e| fmt(1, e.to_string()))?;
        let found = v
            .get("xendm_trace")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| fmt(1, "not an xendm trace header".into()))?;
        if found != u64::from(TRACE_VERSION) {
            return Err(TraceError::Version { path: path.to_path_buf(), found });
        }
        let header: Header = serde_json::from_value(v).map_err(|e| fmt(1, e.to_string()))?;
        Ok(Self { path: path.to_path_buf(), reader, line: 1, done: false, header })
    }
}

impl Iterator for TraceReader {
    type Item = Result<Record, TraceError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let line = next_line(&mut self.reader, MAX_LINE).transpose()?;
        self.line += 1;
        let fmt = |reason: String| TraceError::Format { path: self.path.clone(), line: self.line, reason };
        Some(match line {
            Err(e) => {
                self.done = true;
                Err(fmt(e.to_string()))
            }
            Ok(l) => serde_json::from_str(&l).map_err(|e| fmt(e.to_string())),
        })
    }
}

/// Sparse guest memory for replay: pages appear when a recorded read or
/// write touches them; ranges recorded as faulting keep faulting.
#[derive(Default)]
pub struct ReplayMemory {
    inner: Mutex<ReplayState>,
}

#[derive(Default)]
struct ReplayState {
    pages: BTreeMap<u64, Box<[u8; 4096]>>,
    faults: Vec<(u64, u64)>,
    overflow: bool,
}

impl ReplayState {
    fn faulting(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        self.faults.iter().any(|&(s, l)| gpa < s.saturating_add(l) && s < end)
    }
    fn page(&mut self, pfn: u64) -> Option<&mut [u8; 4096]> {
        if !self.pages.contains_key(&pfn) && self.pages.len() >= REPLAY_MAX_PAGES {
            self.overflow = true;
            return None;
        }
        Some(self.pages.entry(pfn).or_insert_with(|| Box::new([0u8; 4096])))
    }
    fn store(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        for (i, b) in data.iter().enumerate() {
            let a = gpa.checked_add(i as u64).ok_or(MemError::Overflow { addr: gpa, len: data.len() })?;
            let p = self.page(a >> 12).ok_or(MemError::Unmapped { addr: a, len: 1 })?;
            if let Some(slot) = p.get_mut((a & 0xfff) as usize) {
                *slot = *b;
            }
        }
        Ok(())
    }
}

impl ReplayMemory {
    /// Applies what record `r` says the guest memory held or refused.
    fn preload(&self, r: &Record) -> Result<(), TraceError> {
        let mut st = lock(&self.inner);
        st.faults.clear();
        for c in r.mem_reads.iter().chain(&r.mem_writes) {
            if c.fault {
                st.faults.push((c.gpa, c.len));
            }
        }
        for c in &r.mem_reads {
            if let (false, Some(h)) = (c.fault, &c.hex) {
                let bytes = hex::decode(h).map_err(|e| TraceError::Replay(format!("record {}: bad hex: {e}", r.i)))?;
                st.store(c.gpa, &bytes).map_err(|e| TraceError::Replay(format!("record {}: {e}", r.i)))?;
            }
        }
        if st.overflow {
            return Err(TraceError::Replay(format!("record {}: trace needs more than {REPLAY_MAX_PAGES} pages", r.i)));
        }
        Ok(())
    }
}

impl GuestMemory for ReplayMemory {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        let mut st = lock(&self.inner);
        if st.faulting(addr.0, buf.len() as u64) {
            return Err(MemError::Unmapped { addr: addr.0, len: buf.len() });
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let a = addr.0.checked_add(i as u64).ok_or(MemError::Overflow { addr: addr.0, len: 0 })?;
            *b = match st.pages.get(&(a >> 12)) {
                Some(p) => p.get((a & 0xfff) as usize).copied().unwrap_or(0),
                None => return Err(MemError::Unmapped { addr: a, len: 1 }),
            };
        }
        let _ = &mut st;
        Ok(())
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        let mut st = lock(&self.inner);
        if st.faulting(addr.0, buf.len() as u64) {
            return Err(MemError::Unmapped { addr: addr.0, len: buf.len() });
        }
        st.store(addr.0, buf)
    }
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub records: u64,
}

/// Builds the machine a trace describes, for replay.
pub trait ReplayMachine {
    /// Builds a machine from `argv` with the given memory and hypervisor,
    /// recording into `recorder`. Returns the engine.
    ///
    /// # Errors
    /// If the argv does not describe a machine this build can make.
    fn build(
        &self,
        header: &Header,
        mem: Arc<dyn GuestMemory>,
        hv: Arc<dyn Hypervisor>,
    ) -> Result<crate::ioreq::engine::Engine, String>;
}

fn first_diff<T: PartialEq + std::fmt::Debug>(
    index: u64,
    field: &'static str,
    expected: &T,
    actual: &T,
) -> Result<(), TraceError> {
    if expected == actual {
        Ok(())
    } else {
        Err(TraceError::Divergence { index, field, expected: format!("{expected:?}"), actual: format!("{actual:?}") })
    }
}

/// Replays the trace at `path` against a fresh machine built by `machine`;
/// stops at the first divergence.
///
/// # Errors
/// [`TraceError::Divergence`] naming the record, the field and both values;
/// other variants if the trace cannot be read or the machine built.
pub fn replay(path: &Path, machine: &dyn ReplayMachine) -> Result<ReplaySummary, TraceError> {
    let reader = TraceReader::open(path)?;
    let header = reader.header.clone();
    let mem = Arc::new(ReplayMemory::default());
    let tap = Tap::new();
    let hv: Arc<dyn Hypervisor> =
        Arc::new(RecordingHypervisor::new(Arc::new(xendm_devices::hv::FakeHypervisor::new()), tap.clone()));
    let rec_mem: Arc<dyn GuestMemory> = Arc::new(RecordingMemory::new(mem.clone(), tap.clone()));
    let mut engine = machine.build(&header, rec_mem, hv).map_err(TraceError::Machine)?;
    let sink = VecSink::default();
    engine.set_observer(Box::new(Recorder::new(tap, Box::new(sink.clone()))));
    let mut n = 0u64;
    for rec in reader {
        let expected = rec?;
        if expected.i != n {
            return Err(TraceError::Replay(format!("record numbering jumps from {} to {}", n, expected.i)));
        }
        mem.preload(&expected)?;
        if expected.buffered {
            engine.handle_buffered_request(&expected.req);
        } else {
            engine.handle(expected.vcpu, &expected.req);
        }
        engine.bus_mut().take_changes();
        let actual = lock(&sink.0).pop().ok_or_else(|| TraceError::Replay(format!("record {n}: nothing recorded")))?;
        let i = expected.i;
        first_diff(i, "response data", &expected.resp, &actual.resp)?;
        first_diff(i, "guest memory reads", &expected.mem_reads, &actual.mem_reads)?;
        first_diff(i, "guest memory writes", &expected.mem_writes, &actual.mem_writes)?;
        first_diff(i, "hypervisor calls", &expected.hv, &actual.hv)?;
        first_diff(i, "range changes", &expected.ranges, &actual.ranges)?;
        n += 1;
    }
    Ok(ReplaySummary { records: n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::IoreqKind;
    use crate::ioreq::engine::{Engine, NoHooks};
    use xendm_devices::bus::BusDevice;
    use xendm_devices::Bus;

    /// Echo device: reads return the last byte written; a write of 0xEE
    /// powers off; rep reads DMA the offset into memory at 0x100.
    struct Echo {
        last: u8,
        hv: Arc<dyn Hypervisor>,
        mem: Arc<dyn GuestMemory>,
    }
    impl BusDevice for Echo {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(self.last);
        }
        fn write(&mut self, o: u64, d: &[u8]) {
            self.last = d[0];
            if self.last == 0xee {
                self.hv.shutdown(ShutdownReason::Poweroff);
            }
            if o == 1 {
                let mut b = [0u8; 2];
                let _ = self.mem.read(GuestAddress(0x200), &mut b);
                let _ = self.mem.write(GuestAddress(0x100), &b);
            }
        }
    }

    struct EchoMachine;
    impl ReplayMachine for EchoMachine {
        fn build(&self, _h: &Header, mem: Arc<dyn GuestMemory>, hv: Arc<dyn Hypervisor>) -> Result<Engine, String> {
            let mut bus = Bus::new();
            let dev = Arc::new(Mutex::new(Echo { last: 0, hv, mem: mem.clone() }));
            bus.register_pio(0x80, 2, "echo", dev, 0).map_err(|e| e.to_string())?;
            Ok(Engine::new(bus, mem, Box::new(NoHooks)))
        }
    }

    fn record_echo(path: &Path, script: &[Ioreq], tweak_mem: bool) {
        let header =
            Header { xendm_trace: TRACE_VERSION, argv: vec![], files: BTreeMap::new(), producer: "test".into() };
        let tm = Arc::new(xendm_devices::mem::TestMemory::new(&[(0, 0x1000)]).unwrap());
        tm.write(GuestAddress(0x200), &[if tweak_mem { 9 } else { 5 }, 6]).unwrap();
        let tap = Tap::new();
        let mem: Arc<dyn GuestMemory> = Arc::new(RecordingMemory::new(tm, tap.clone()));
        let hv: Arc<dyn Hypervisor> =
            Arc::new(RecordingHypervisor::new(Arc::new(xendm_devices::hv::FakeHypervisor::new()), tap.clone()));
        let mut e = EchoMachine.build(&header, mem, hv).unwrap();
        e.set_observer(Box::new(Recorder::new(tap, Box::new(FileSink::create(path, &header).unwrap()))));
        for r in script {
            e.handle(0, r);
        }
        e.take_observer().unwrap().flush().unwrap();
    }

    fn script() -> Vec<Ioreq> {
        let w = |d| Ioreq {
            addr: 0x80,
            data: d,
            count: 1,
            size: 1,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: IoreqKind::Pio,
        };
        vec![w(7), Ioreq { is_read: true, ..w(0) }, Ioreq { addr: 0x81, ..w(1) }, w(0xee)]
    }

    #[test]
    fn record_then_replay_matches() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        record_echo(&p, &script(), false);
        let recs: Vec<Record> = TraceReader::open(&p).unwrap().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[1].resp, 7);
        assert_eq!(recs[2].mem_reads[0].hex.as_deref(), Some("0506"));
        assert_eq!(recs[2].mem_writes[0].gpa, 0x100);
        assert_eq!(recs[3].hv, vec![HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
        assert_eq!(replay(&p, &EchoMachine).unwrap().records, 4);
    }

    #[test]
    fn divergence_names_record_field_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        record_echo(&p, &script(), false);
        // Rewrite record 1's response: the replay must stop there.
        let mut lines: Vec<String> = {
            let f = std::fs::File::open(&p).unwrap();
            BufReader::new(flate2::read::GzDecoder::new(f)).lines().map(Result::unwrap).collect()
        };
        lines[2] = lines[2].replace("\"resp\":7", "\"resp\":8");
        let f = std::fs::File::create(&p).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        for l in &lines {
            writeln!(gz, "{l}").unwrap();
        }
        gz.finish().unwrap();
        let e = replay(&p, &EchoMachine).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("record 1")
                && s.contains("response data")
                && s.contains("expected: 8")
                && s.contains("actual:   7"),
            "{s}"
        );
    }

    #[test]
    fn version_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{{\"xendm_trace\":99,\"argv\":[],\"producer\":\"x\"}}").unwrap();
        gz.finish().unwrap();
        assert!(matches!(TraceReader::open(&p), Err(TraceError::Version { found: 99, .. })));
        // A version beyond u32 is reported as written, not truncated (to 1 here).
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{{\"xendm_trace\":4294967297,\"argv\":[],\"producer\":\"x\"}}").unwrap();
        gz.finish().unwrap();
        assert!(matches!(TraceReader::open(&p), Err(TraceError::Version { found: 4_294_967_297, .. })));
        std::fs::write(&p, b"not gzip").unwrap();
        assert!(TraceReader::open(&p).is_err());
    }

    #[test]
    fn overlong_lines_are_refused_without_reading_them_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl.gz");
        let header = format!("{{\"xendm_trace\":{TRACE_VERSION},\"argv\":[],\"producer\":\"x\"}}");
        // A header padded with whitespace past the limit is refused.
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        gz.write_all(header.as_bytes()).unwrap();
        gz.write_all(&vec![b' '; MAX_LINE]).unwrap();
        gz.write_all(b"\n").unwrap();
        gz.finish().unwrap();
        let e = TraceReader::open(&p).err().expect("an overlong header must be refused");
        assert!(e.to_string().contains("line 1") && e.to_string().contains("longer than"), "{e}");
        // A record line that never ends: an error, and iteration stops.
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{header}").unwrap();
        gz.write_all(&vec![b'x'; 3 * MAX_LINE]).unwrap();
        gz.finish().unwrap();
        let mut r = TraceReader::open(&p).unwrap();
        let e = r.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("longer than"), "{e}");
        assert!(r.next().is_none(), "nothing is read after an overlong line");
        // The line reader takes at most MAX_LINE + 2 bytes from an endless source.
        let mut endless = BufReader::new(std::io::repeat(b'y'));
        assert!(matches!(next_line(&mut endless, MAX_LINE), Err(LineError::TooLong)));
        // Lines of exactly the limit, CRLF endings and a last line without newline.
        let mut ok = std::io::Cursor::new(b"ab\r\ncd\nef".to_vec());
        assert_eq!(next_line(&mut ok, 2).unwrap().as_deref(), Some("ab"));
        assert_eq!(next_line(&mut ok, 2).unwrap().as_deref(), Some("cd"));
        assert_eq!(next_line(&mut ok, 2).unwrap().as_deref(), Some("ef"));
        assert_eq!(next_line(&mut ok, 2).unwrap(), None);
    }

    #[test]
    fn long_writes_are_hashed() {
        let c = chunk(0x1000, &[0u8; 100], false, false);
        assert!(c.hex.is_none());
        assert_eq!(c.sha256.as_deref(), Some("cd00e292c5970d3c5e2f0ffa5171e555bc46bfc4faddfb4a418b6840b86e79a3"));
        assert_eq!(chunk(0, &[1, 2], false, false).hex.as_deref(), Some("0102"));
    }
}
