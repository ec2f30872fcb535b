//! ioreq record/replay: the trace format, the recorder, the reader, and the
//! replay runner (`docs/traces.md`).
//!
//! * `format.rs` - [`Header`], [`Record`], [`MemChunk`], [`TraceError`];
//! * `record.rs` - the recording wrappers, the [`Tap`] they fill, the sinks,
//!   and the [`Recorder`] (the engine's observer);
//! * `limits.rs` - [`TraceLimits`], the bounds every trace is held to;
//! * `reader.rs` - [`TraceReader`];
//! * `replay.rs` - [`replay`] against a machine a [`ReplayMachine`] builds.

mod format;
mod limits;
mod reader;
mod record;
mod replay;

pub use format::{Header, MemChunk, Record, TraceError, INLINE_WRITE_MAX, TRACE_VERSION};
pub use limits::{is_sha256_hex, TraceLimits, REPLAY_MAX_PAGES};
pub use reader::TraceReader;
pub use record::{FileSink, RecordSink, Recorder, RecordingHypervisor, RecordingMemory, Tap, VecSink};
pub use replay::{replay, replay_with_limits, DiscardingHypervisor, ReplayMachine, ReplayMemory, ReplaySummary};
