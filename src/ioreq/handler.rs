//! The seam between Xen's ioreq transport and whatever serves the requests.
//!
//! The ioreq server in `crate::xen` reads requests out of the shared pages
//! (Xen's `public/hvm/ioreq.h`) and hands them to an [`IoreqHandler`]; the
//! [`crate::ioreq::engine::Engine`] is the handler of a real machine. The
//! buffered ring is handed over as a [`BufferedRing`], so the handler follows
//! Xen's pointer rules without knowing how the page is mapped.

use xendm_devices::bus::RangeChange;

use crate::ioreq::abi::Ioreq;

/// The buffered ring (`buffered_iopage`) as a handler reads it.
pub trait BufferedRing {
    /// `read_pointer`, acquire load.
    fn read_pointer(&self) -> u32;
    /// `write_pointer`, acquire load.
    fn write_pointer(&self) -> u32;
    /// Raw little-endian slot `index` (0..511).
    fn slot(&self, index: u32) -> u64;
    /// Atomically adds `n` to `read_pointer` (Xen updates the pointer pair
    /// with a 64-bit cmpxchg, so a plain store could undo its rebase).
    fn advance_read_pointer(&self, n: u32);
}

/// What the ioreq server's loop asks of the side that serves requests.
pub trait IoreqHandler {
    /// Serves a synchronous request from vCPU `vcpu`; returns the value for
    /// the response's `data` field.
    fn handle(&mut self, vcpu: u32, req: &Ioreq) -> u64;
    /// Consumes the buffered ring; returns how many requests were handled.
    fn drain_buffered(&mut self, ring: &dyn BufferedRing) -> usize;
    /// Port/MMIO range changes queued since the last call, for the server to
    /// mirror in Xen before it answers.
    fn take_range_changes(&mut self) -> Vec<RangeChange>;
}
