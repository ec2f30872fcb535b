//! Replay: a fresh machine built from a trace's header, driven with the
//! recorded requests, recorded the same way and compared record by record.
//!
//! Guest memory is [`ReplayMemory`], which serves the recorded reads; the
//! hypervisor only records. The first divergence stops the replay with the
//! record index, the field, and both values.
//!
//! Everything a replay holds is bounded by its [`TraceLimits`]: the reader
//! refuses lines out of limits, the replay memory holds only the pages of
//! the record being replayed, and the replay's own recording keeps at most
//! as many accesses and calls per request as a record may have.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;
use xendm_devices::sync::lock;
use xendm_devices::{GuestMemory, Hypervisor, MemError, ShutdownReason};

use super::format::{Header, Record, TraceError};
use super::limits::{TraceLimits, REPLAY_MAX_PAGES};
use super::reader::TraceReader;
use super::record::{Recorder, RecordingHypervisor, RecordingMemory, Tap, VecSink};

/// Sparse guest memory for replay, holding one record at a time: before
/// each record, exactly the pages its recorded reads touched, filled with
/// the bytes read; ranges recorded as faulting fault. Writes land only in
/// those pages (a write elsewhere is accepted and forgotten: any later read
/// of it is recorded with its bytes and preloaded then), so what a replay
/// holds is bounded by one record's hex, never by a length the trace or the
/// replayed device chose.
pub struct ReplayMemory {
    inner: Mutex<ReplayState>,
    max_pages: usize,
}

impl Default for ReplayMemory {
    fn default() -> Self {
        Self::with_max_pages(REPLAY_MAX_PAGES)
    }
}

impl ReplayMemory {
    /// Replay memory that refuses records reading more than `max_pages` pages.
    pub fn with_max_pages(max_pages: usize) -> Self {
        Self { inner: Mutex::default(), max_pages }
    }
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
    fn page(&mut self, pfn: u64, max_pages: usize) -> Option<&mut [u8; 4096]> {
        if !self.pages.contains_key(&pfn) && self.pages.len() >= max_pages {
            self.overflow = true;
            return None;
        }
        Some(self.pages.entry(pfn).or_insert_with(|| Box::new([0u8; 4096])))
    }
    /// Stores recorded bytes, making their pages (at most `max_pages`).
    fn preload(&mut self, gpa: u64, data: &[u8], max_pages: usize) -> Result<(), MemError> {
        for (i, b) in data.iter().enumerate() {
            let a = gpa.checked_add(i as u64).ok_or(MemError::Overflow { addr: gpa, len: data.len() })?;
            let p = self.page(a >> 12, max_pages).ok_or(MemError::Unmapped { addr: a, len: 1 })?;
            if let Some(slot) = p.get_mut((a & 0xfff) as usize) {
                *slot = *b;
            }
        }
        Ok(())
    }
    /// A device's write: kept where a page exists, forgotten elsewhere (a
    /// page at a time, so a 4 GiB zero fill costs 2^20 map lookups).
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        gpa.checked_add(data.len() as u64).ok_or(MemError::Overflow { addr: gpa, len: data.len() })?;
        let mut addr = gpa;
        let mut rest = data;
        while !rest.is_empty() {
            let in_page = (addr & 0xfff) as usize;
            let n = rest.len().min(4096 - in_page);
            let (now, later) = rest.split_at(n);
            if let Some(dst) = self.pages.get_mut(&(addr >> 12)).and_then(|p| p.get_mut(in_page..in_page + n)) {
                dst.copy_from_slice(now);
            }
            addr = addr.wrapping_add(n as u64);
            rest = later;
        }
        Ok(())
    }
}

impl ReplayMemory {
    /// Applies what record `r` says the guest memory held or refused.
    fn preload(&self, r: &Record) -> Result<(), TraceError> {
        let mut st = lock(&self.inner);
        st.faults.clear();
        st.pages.clear();
        st.overflow = false;
        for c in r.mem_reads.iter().chain(&r.mem_writes) {
            if c.fault {
                st.faults.push((c.gpa, c.len));
            }
        }
        for c in &r.mem_reads {
            if let (false, Some(h)) = (c.fault, &c.hex) {
                let bytes = hex::decode(h).map_err(|e| TraceError::Replay(format!("record {}: bad hex: {e}", r.i)))?;
                st.preload(c.gpa, &bytes, self.max_pages)
                    .map_err(|e| TraceError::Replay(format!("record {}: {e}", r.i)))?;
            }
        }
        if st.overflow {
            return Err(TraceError::Replay(format!("record {}: trace needs more than {} pages", r.i, self.max_pages)));
        }
        Ok(())
    }
}

impl GuestMemory for ReplayMemory {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        let st = lock(&self.inner);
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
        Ok(())
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        let mut st = lock(&self.inner);
        if st.faulting(addr.0, buf.len() as u64) {
            return Err(MemError::Unmapped { addr: addr.0, len: buf.len() });
        }
        st.write(addr.0, buf)
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

/// The hypervisor under replay's [`RecordingHypervisor`]: the recording is
/// all a replay needs of a call, so the call itself goes nowhere.
pub struct DiscardingHypervisor;

impl Hypervisor for DiscardingHypervisor {
    fn set_isa_irq_level(&self, _irq: u8, _level: bool) {}
    fn set_pci_intx_level(&self, _device: u8, _intx: u8, _level: bool) {}
    fn set_pci_link_route(&self, _link: u8, _irq: u8) {}
    fn inject_msi(&self, _addr: u64, _data: u32) {}
    fn shutdown(&self, _reason: ShutdownReason) {}
}

/// Replays the trace at `path` against a fresh machine built by `machine`,
/// with the default [`TraceLimits`]; stops at the first divergence.
///
/// # Errors
/// See [`replay_with_limits`].
pub fn replay(path: &Path, machine: &dyn ReplayMachine) -> Result<ReplaySummary, TraceError> {
    replay_with_limits(path, machine, &TraceLimits::default())
}

/// Replays the trace at `path` against a fresh machine built by `machine`;
/// stops at the first divergence or the first line out of `limits`.
///
/// # Errors
/// [`TraceError::Divergence`] naming the record, the field and both values;
/// other variants if the trace cannot be read, breaks a limit, or the
/// machine cannot be built.
pub fn replay_with_limits(
    path: &Path,
    machine: &dyn ReplayMachine,
    limits: &TraceLimits,
) -> Result<ReplaySummary, TraceError> {
    let reader = TraceReader::open_with_limits(path, *limits)?;
    let header = reader.header.clone();
    let mem = Arc::new(ReplayMemory::with_max_pages(limits.max_pages_per_record));
    let tap = Tap::bounded(limits.max_chunks_per_record, limits.max_hv_calls_per_record);
    let hv: Arc<dyn Hypervisor> = Arc::new(RecordingHypervisor::new(Arc::new(DiscardingHypervisor), tap.clone()));
    let rec_mem: Arc<dyn GuestMemory> = Arc::new(RecordingMemory::new(mem.clone(), tap.clone()));
    let mut engine = machine.build(&header, rec_mem, hv).map_err(TraceError::Machine)?;
    let sink = VecSink::default();
    engine.set_observer(Box::new(Recorder::new(tap.clone(), Box::new(sink.clone()))));
    let mut n = 0u64;
    for rec in reader {
        let expected = rec?;
        if expected.i != n {
            return Err(TraceError::Replay(format!("record numbering jumps from {} to {}", n, expected.i)));
        }
        mem.preload(&expected)?;
        tap.take_dropped();
        if expected.buffered {
            engine.handle_buffered_request(&expected.req);
        } else {
            engine.handle(expected.vcpu, &expected.req);
        }
        engine.bus_mut().take_changes();
        let actual = lock(&sink.0).pop().ok_or_else(|| TraceError::Replay(format!("record {n}: nothing recorded")))?;
        if tap.take_dropped() > 0 {
            return Err(TraceError::Replay(format!(
                "record {n}: the replayed machine made more than {} memory accesses or {} hypervisor calls \
                 (the recording has {} and {})",
                limits.max_chunks_per_record,
                limits.max_hv_calls_per_record,
                expected.mem_reads.len() + expected.mem_writes.len(),
                expected.hv.len()
            )));
        }
        compare(&expected, &actual)?;
        n += 1;
    }
    Ok(ReplaySummary { records: n })
}

/// The first field where the replayed record differs from the recorded one.
fn compare(expected: &Record, actual: &Record) -> Result<(), TraceError> {
    let i = expected.i;
    first_diff(i, "response data", &expected.resp, &actual.resp)?;
    first_diff(i, "guest memory reads", &expected.mem_reads, &actual.mem_reads)?;
    first_diff(i, "guest memory writes", &expected.mem_writes, &actual.mem_writes)?;
    first_diff(i, "hypervisor calls", &expected.hv, &actual.hv)?;
    first_diff(i, "range changes", &expected.ranges, &actual.ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use crate::ioreq::engine::{Engine, NoHooks};
    use crate::trace::{FileSink, TRACE_VERSION};
    use std::io::{BufRead, BufReader, Write};
    use xendm_devices::bus::BusDevice;
    use xendm_devices::{Bus, HvCall};

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
}
