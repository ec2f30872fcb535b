//! What the engine tells an observer about each request it serves.
//!
//! The engine calls [`IoreqObserver::begin`] before it emulates a request and
//! [`IoreqObserver::finish`] after, with the request, the response and the
//! range changes the request caused. The trace recorder
//! (`Recorder` in the trace module) is the observer of a recording run; the engine
//! knows nothing of traces, so `ioreq` does not depend on `trace`.
//!
//! Observing costs nothing when no observer is set: the engine then does not
//! even look at the bus's pending range changes.

use xendm_devices::bus::RangeChange;

use crate::ioreq::abi::Ioreq;

/// The vCPU number the engine reports for a buffered request (the ring
/// belongs to no vCPU).
pub const BUFFERED_VCPU: u32 = u32::MAX;

/// One request the engine has just served.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// vCPU whose slot carried the request ([`BUFFERED_VCPU`] for buffered ones).
    pub vcpu: u32,
    /// The request came from the buffered ring (and gets no response).
    pub buffered: bool,
    /// The request as received.
    pub req: &'a Ioreq,
    /// The value for the response's `data` field.
    pub resp: u64,
    /// Port/MMIO range changes the request caused, in order.
    pub ranges: &'a [RangeChange],
}

/// Why an observer could not flush what it collected.
pub type FlushError = Box<dyn std::error::Error + Send + Sync>;

/// Watches the requests an engine serves.
pub trait IoreqObserver: Send {
    /// A request is about to be emulated: forget anything seen since the
    /// last one (side effects outside request handling belong to none).
    fn begin(&mut self);
    /// The request announced by [`Self::begin`] was served.
    fn finish(&mut self, served: &Served<'_>);
    /// No more requests follow: write out whatever is buffered.
    ///
    /// # Errors
    /// If the observer's output cannot be written.
    fn flush(&mut self) -> Result<(), FlushError>;
}
