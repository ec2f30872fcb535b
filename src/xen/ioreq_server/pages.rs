//! The two shared pages of an ioreq server, as Xen's `public/hvm/ioreq.h`
//! lays them out: the synchronous page (`shared_iopage_t`, one `ioreq_t` per
//! vCPU) and the buffered ring (`buffered_iopage_t`).
//!
//! Both are written by Xen concurrently, so every access is volatile or
//! atomic, at the offsets [`crate::ioreq::abi`] takes from the structs. In a
//! slot the `flags` byte holds the state in bits 0-3 and
//! `data_is_ptr`/`dir`/`df` in bits 4-6; a state write keeps bits 4-7. We
//! only ever store INPROCESS and then IORESP_READY, and never write
//! `vp_eport`.
//!
//! Ordering: Xen publishes a request with a write barrier before setting
//! READY, and our acquire load of the state pairs with it, so the fields we
//! read afterwards are the ones Xen wrote. Our release store of IORESP_READY
//! pairs with Xen's read of the state before it reads `data`. On x86 both are
//! plain ordered accesses (TSO); the atomics keep the compiler from
//! reordering. The ring's `read_pointer` is advanced with an atomic add: Xen
//! rebases the pointer pair with a 64-bit cmpxchg under `BUFIOREQ_ATOMIC`, so
//! a plain store could undo a rebase.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use super::MAX_VCPUS;
use crate::ioreq::abi::{
    IoreqRaw, BUF_READ_POINTER_OFFSET, BUF_SLOTS_OFFSET, BUF_SLOT_SIZE, BUF_WRITE_POINTER_OFFSET, FLAG_STATE_MASK,
    IOREQ_BUFFER_SLOT_NUM, SLOT_DATA_OFFSET, SLOT_EPORT_OFFSET, SLOT_FLAGS_OFFSET, SLOT_SIZE,
};
use crate::ioreq::handler::BufferedRing;

/// The synchronous page (`shared_iopage_t`): one [`IoreqRaw`] per vCPU.
///
/// Only ever accessed through volatile or atomic operations, because Xen
/// writes it concurrently.
pub struct SyncPage {
    base: NonNull<u8>,
}

// SAFETY: the page is process-wide shared memory; all accesses are volatile
// or atomic, so using it from another thread is no different from Xen doing so.
unsafe impl Send for SyncPage {}

impl SyncPage {
    /// Wraps a mapped synchronous page.
    ///
    /// # Safety
    /// `base` must be 8-byte aligned and valid for reads and writes of 4096
    /// bytes for as long as the `SyncPage` exists, and every other user of
    /// that memory (Xen, a test) must use volatile or atomic accesses.
    pub const unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    /// Pointer to byte `off` of slot `vcpu`, if the slot exists.
    fn at(&self, vcpu: u32, off: usize) -> Option<*mut u8> {
        if vcpu >= MAX_VCPUS || off >= SLOT_SIZE {
            return None;
        }
        // SAFETY: vcpu < 128 and off < 32, so the offset is inside the 4096
        // bytes `new`'s contract makes valid.
        Some(unsafe { self.base.as_ptr().add(vcpu as usize * SLOT_SIZE + off) })
    }

    fn flags(&self, vcpu: u32) -> Option<&AtomicU8> {
        let p = self.at(vcpu, SLOT_FLAGS_OFFSET)?;
        // SAFETY: `p` is valid for the page's lifetime, which outlives
        // `&self`; u8 needs no alignment; everyone accesses it atomically or
        // volatilely (the contract of `new`).
        Some(unsafe { AtomicU8::from_ptr(p) })
    }

    /// The slot's `state`, with acquire ordering.
    pub fn state(&self, vcpu: u32) -> Option<u8> {
        self.flags(vcpu).map(|f| f.load(Ordering::Acquire) & FLAG_STATE_MASK)
    }

    /// Sets the slot's state, keeping the other bits of the flags byte.
    /// Only called while we own the slot (state READY or INPROCESS), when Xen
    /// does not write it, so the read-modify-write cannot lose an update.
    pub(super) fn set_state(&self, vcpu: u32, state: u8, order: Ordering) {
        if let Some(f) = self.flags(vcpu) {
            let keep = f.load(Ordering::Relaxed) & !FLAG_STATE_MASK;
            f.store(keep | (state & FLAG_STATE_MASK), order);
        }
    }

    /// A volatile copy of the whole slot.
    pub fn read(&self, vcpu: u32) -> Option<IoreqRaw> {
        let p = self.at(vcpu, 0)?;
        // SAFETY: the slot is 32 valid bytes at an 8-aligned address (page
        // base aligned, slot size 32); IoreqRaw is plain data valid for any
        // bit pattern.
        Some(unsafe { std::ptr::read_volatile(p.cast::<IoreqRaw>()) })
    }

    /// The slot's `vp_eport` (Xen's port for this vCPU).
    pub fn vp_eport(&self, vcpu: u32) -> Option<u32> {
        let p = self.at(vcpu, SLOT_EPORT_OFFSET)?;
        // SAFETY: `vp_eport`'s offset (24) in an 8-aligned slot is 4-aligned and in bounds.
        Some(u32::from_le(unsafe { std::ptr::read_volatile(p.cast::<u32>()) }))
    }

    pub(super) fn write_data(&self, vcpu: u32, data: u64) {
        if let Some(p) = self.at(vcpu, SLOT_DATA_OFFSET) {
            // SAFETY: `data`'s offset (8) in an 8-aligned slot is 8-aligned and in bounds.
            unsafe { std::ptr::write_volatile(p.cast::<u64>(), data.to_le()) };
        }
    }
}

/// The buffered ring page (`buffered_iopage_t`), as the engine consumes it.
pub struct BufferedPage {
    base: NonNull<u8>,
}

// SAFETY: as for `SyncPage`: shared memory accessed only atomically or volatilely.
unsafe impl Send for BufferedPage {}

impl BufferedPage {
    /// Wraps a mapped buffered page.
    ///
    /// # Safety
    /// As [`SyncPage::new`]: 8-aligned, 4096 valid bytes for the wrapper's
    /// lifetime, all other accesses volatile or atomic.
    pub const unsafe fn new(base: NonNull<u8>) -> Self {
        Self { base }
    }

    fn pointer(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is 0 or 4: in bounds and 4-aligned; the memory lives
        // as long as `self`; other users access it atomically (Xen's cmpxchg
        // of the 64-bit pair covers the same bytes, which x86 keeps coherent).
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
    }
}

impl BufferedRing for BufferedPage {
    fn read_pointer(&self) -> u32 {
        self.pointer(BUF_READ_POINTER_OFFSET).load(Ordering::Acquire)
    }

    fn write_pointer(&self) -> u32 {
        self.pointer(BUF_WRITE_POINTER_OFFSET).load(Ordering::Acquire)
    }

    fn slot(&self, index: u32) -> u64 {
        let i = (index % IOREQ_BUFFER_SLOT_NUM) as usize;
        let off = BUF_SLOTS_OFFSET + BUF_SLOT_SIZE * i;
        // SAFETY: i < 511, so 8 + 8*i + 8 <= 4096; 8-aligned; volatile
        // because Xen writes the slots.
        u64::from_le(unsafe { std::ptr::read_volatile(self.base.as_ptr().add(off).cast::<u64>()) })
    }

    fn advance_read_pointer(&self, n: u32) {
        self.pointer(BUF_READ_POINTER_OFFSET).fetch_add(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fakes::FakeXen;
    use super::*;

    #[test]
    fn slots_beyond_the_page_are_refused() {
        let xen = FakeXen::new();
        let p = xen.sync_page();
        assert!(p.state(MAX_VCPUS).is_none());
        assert!(p.read(u32::MAX).is_none());
        assert!(p.vp_eport(128).is_none());
        assert_eq!(xen.buf_page().slot(511 + 3), xen.buf_page().slot(3));
    }
}
