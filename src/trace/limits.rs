//! The bounds a trace must keep before anything is built or allocated from
//! it (`docs/traces.md`, "Limits").
//!
//! A trace is untrusted input: `xendm-replay` is run on traces from other
//! hosts and from bug reports. [`TraceLimits`] says how large a header, a
//! record and a whole trace may be; [`super::TraceReader`] checks every line
//! against it, and the replay memory and the replay's own recording are
//! capped by the same numbers, so no allocation made while replaying is
//! sized by a number the trace chose. The defaults are far above what a real
//! DM writes (a Linux boot needs at most 2 memory accesses and 1 page per
//! record) and far below what would hurt the host.

use super::format::{Header, MemChunk, Record};

/// What a trace may contain. [`TraceLimits::default`] is what
/// `xendm-replay` and [`super::replay`] use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    /// Longest line (header or record), in bytes of uncompressed JSON.
    pub max_line: usize,
    /// Uncompressed bytes read from the whole trace (a gzip bomb of small
    /// records stops here).
    pub max_trace_bytes: u64,
    /// Records in one trace.
    pub max_records: u64,
    /// Arguments in the header's argv.
    pub max_argv: usize,
    /// Entries in the header's `files`.
    pub max_files: usize,
    /// Memory accesses (`mem_reads` plus `mem_writes`) in one record; the
    /// replayed machine's own recording is capped at the same number.
    pub max_chunks_per_record: usize,
    /// The `len` of one memory access (fw_cfg DMA lengths are 32-bit).
    pub max_chunk_len: u64,
    /// Guest pages the recorded reads of one record may fill (the replay
    /// memory holds one record's pages at a time).
    pub max_pages_per_record: usize,
    /// Hypervisor calls in one record, recorded or replayed.
    pub max_hv_calls_per_record: usize,
    /// Range changes in one record.
    pub max_ranges_per_record: usize,
}

/// Pages the replay memory holds for one record by default (16 MiB).
pub const REPLAY_MAX_PAGES: usize = 4096;

/// Length of a SHA-256 in hex.
const SHA256_HEX_LEN: usize = 64;
/// Longest path accepted as a key of the header's `files`.
const MAX_PATH_LEN: usize = 4096;
/// Bytes per guest page.
const PAGE_SIZE: u64 = 4096;

impl Default for TraceLimits {
    fn default() -> Self {
        Self {
            max_line: 1 << 20,
            max_trace_bytes: 4 << 30,
            max_records: 1 << 26,
            max_argv: 1024,
            max_files: 64,
            max_chunks_per_record: 16 * 1024,
            max_chunk_len: 1 << 32,
            max_pages_per_record: REPLAY_MAX_PAGES,
            max_hv_calls_per_record: 4096,
            max_ranges_per_record: 4096,
        }
    }
}

/// `Err(what)` if `count` is above `max`.
fn at_most(what: &str, count: usize, max: usize) -> Result<(), String> {
    if count > max {
        Err(format!("{count} {what}, at most {max} accepted"))
    } else {
        Ok(())
    }
}

/// Whether `s` is a SHA-256 as the recorder writes it (64 lowercase hex digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Guest pages `[gpa, gpa + len)` spans (`None` past the end of the address space).
fn pages_spanned(gpa: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return Some(0);
    }
    let last = gpa.checked_add(len - 1)?;
    Some((last / PAGE_SIZE) - (gpa / PAGE_SIZE) + 1)
}

impl TraceLimits {
    /// Checks a header's sizes and the shape of its `files` entries.
    ///
    /// # Errors
    /// A message naming the bound broken.
    pub fn check_header(&self, h: &Header) -> Result<(), String> {
        at_most("argv arguments", h.argv.len(), self.max_argv)?;
        at_most("entries in files", h.files.len(), self.max_files)?;
        for (path, sha) in &h.files {
            if path.is_empty() || path.len() > MAX_PATH_LEN {
                return Err(format!("files: a path of {} bytes (1 to {MAX_PATH_LEN} accepted)", path.len()));
            }
            if !is_sha256_hex(sha) {
                return Err(format!("files: {path}: {sha:?} is not a SHA-256 in lowercase hex"));
            }
        }
        Ok(())
    }

    /// Checks one record's counts and sizes.
    ///
    /// # Errors
    /// A message naming the bound broken.
    pub fn check_record(&self, r: &Record) -> Result<(), String> {
        let chunks = r.mem_reads.len().saturating_add(r.mem_writes.len());
        at_most("memory accesses", chunks, self.max_chunks_per_record)?;
        at_most("hypervisor calls", r.hv.len(), self.max_hv_calls_per_record)?;
        at_most("range changes", r.ranges.len(), self.max_ranges_per_record)?;
        let mut pages = 0u64;
        for c in r.mem_reads.iter().chain(&r.mem_writes) {
            self.check_chunk(c)?;
        }
        for c in r.mem_reads.iter().filter(|c| c.hex.is_some() && !c.fault) {
            pages = pages.saturating_add(pages_spanned(c.gpa, c.len).unwrap_or(u64::MAX));
        }
        at_most("guest pages read", usize::try_from(pages).unwrap_or(usize::MAX), self.max_pages_per_record)
    }

    fn check_chunk(&self, c: &MemChunk) -> Result<(), String> {
        if c.len > self.max_chunk_len {
            return Err(format!(
                "a memory access of {} bytes at {:#x}, at most {} accepted",
                c.len, c.gpa, self.max_chunk_len
            ));
        }
        if pages_spanned(c.gpa, c.len).is_none() {
            return Err(format!("a memory access of {} bytes at {:#x} wraps the address space", c.len, c.gpa));
        }
        if let Some(h) = &c.hex {
            if u64::try_from(h.len()).ok() != c.len.checked_mul(2) {
                return Err(format!(
                    "a memory access at {:#x} says {} bytes but holds {} hex digits",
                    c.gpa,
                    c.len,
                    h.len()
                ));
            }
        }
        if let Some(s) = &c.sha256 {
            if !is_sha256_hex(s) {
                return Err(format!("a memory access at {:#x} has a malformed sha256", c.gpa));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use std::collections::BTreeMap;

    fn record(reads: Vec<MemChunk>) -> Record {
        let req = Ioreq {
            addr: 0x80,
            data: 0,
            count: 1,
            size: 1,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: IoreqKind::Pio,
        };
        Record {
            i: 0,
            vcpu: 0,
            buffered: false,
            req,
            resp: 0,
            mem_reads: reads,
            mem_writes: vec![],
            hv: vec![],
            ranges: vec![],
        }
    }

    fn read(gpa: u64, bytes: &[u8]) -> MemChunk {
        MemChunk { gpa, len: bytes.len() as u64, hex: Some(hex::encode(bytes)), sha256: None, fault: false }
    }

    #[test]
    fn records_within_the_limits_pass() {
        let l = TraceLimits::default();
        l.check_record(&record(vec![read(0x1ffe, &[1, 2, 3, 4])])).unwrap();
        assert_eq!(pages_spanned(0x1ffe, 4), Some(2));
        assert_eq!(pages_spanned(0x1000, 0x1000), Some(1));
        assert_eq!(pages_spanned(u64::MAX, 1), Some(1));
        assert_eq!(pages_spanned(u64::MAX, 2), None);
    }

    #[test]
    fn claimed_sizes_must_match_and_stay_bounded() {
        let l = TraceLimits::default();
        let lying = MemChunk { len: 1 << 40, ..read(0, &[1]) };
        let e = l.check_record(&record(vec![lying])).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        let short = MemChunk { len: 3, ..read(0, &[1]) };
        assert!(l.check_record(&record(vec![short])).unwrap_err().contains("hex digits"));
        let wraps = MemChunk { gpa: u64::MAX, len: 2, hex: None, sha256: None, fault: true };
        assert!(l.check_record(&record(vec![wraps])).unwrap_err().contains("wraps"));
        let bad_sha = MemChunk { gpa: 0, len: 100, hex: None, sha256: Some("zz".into()), fault: false };
        assert!(l.check_record(&record(vec![bad_sha])).unwrap_err().contains("sha256"));
    }

    #[test]
    fn counts_and_pages_are_capped() {
        let l = TraceLimits { max_chunks_per_record: 2, max_pages_per_record: 2, ..TraceLimits::default() };
        let e = l.check_record(&record(vec![read(0, &[1]); 3])).unwrap_err();
        assert!(e.contains("3 memory accesses"), "{e}");
        let e = l.check_record(&record(vec![read(0, &[1]), read(0x10_0000, &[1, 2])])).map(|()| "ok");
        assert_eq!(e, Ok("ok"));
        let e = l.check_record(&record(vec![read(0xfff, &[1, 2]), read(0x10_0000, &[1])])).unwrap_err();
        assert!(e.contains("3 guest pages"), "{e}");
    }

    #[test]
    fn headers_are_checked() {
        let l = TraceLimits { max_argv: 2, ..TraceLimits::default() };
        let mut h = Header { xendm_trace: 1, argv: vec![], files: BTreeMap::new(), producer: "t".into() };
        l.check_header(&h).unwrap();
        h.files.insert(String::new(), "0".repeat(64));
        assert!(l.check_header(&h).unwrap_err().contains("a path of 0 bytes"));
        h.files.clear();
        h.files.insert("/k".into(), "0".repeat(63));
        assert!(l.check_header(&h).unwrap_err().contains("not a SHA-256"));
        h.files.clear();
        h.files.insert("/k".into(), "A".repeat(64));
        assert!(l.check_header(&h).is_err(), "uppercase is not what the recorder writes");
        h.files.clear();
        h.argv = vec!["-m".into(); 3];
        assert!(l.check_header(&h).unwrap_err().contains("3 argv arguments"));
    }
}
