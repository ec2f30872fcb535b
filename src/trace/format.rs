//! The trace format (`docs/traces.md`, version [`TRACE_VERSION`]): gzip JSON
//! Lines, a [`Header`] line, then one [`Record`] per request served.
//!
//! A record holds the request as received, the response, every guest-memory
//! access the DM made while serving it (reads with their bytes, so a replay
//! can serve them again; writes with their bytes, or a SHA-256 when longer
//! than [`INLINE_WRITE_MAX`]; failed accesses marked), every hypervisor call,
//! and the port/MMIO range changes the request caused. The request's `kind`
//! is stored as Xen's raw `type` number.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xendm_devices::bus::RangeChange;
use xendm_devices::HvCall;

use crate::ioreq::abi::Ioreq;

/// Current trace format version.
pub const TRACE_VERSION: u32 = 1;
/// Writes up to this many bytes are stored inline; longer ones as a hash.
pub const INLINE_WRITE_MAX: usize = 64;

/// First line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Format version ([`TRACE_VERSION`]).
    pub xendm_trace: u32,
    /// The DM's argv (without `argv[0]`) that built the recorded machine.
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
