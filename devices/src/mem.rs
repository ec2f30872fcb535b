//! Guest-physical memory, as the device model reaches it.
//!
//! On Xen the implementation is a lazy mapcache of foreign mappings (in the
//! binary crate); here is the interface, plus (with the `testing` feature,
//! tests only) `TestMemory`, an in-memory implementation built on
//! `vm-memory`'s anonymous-mmap backend, with holes wherever no region was
//! given, as real HVM memory has (VGA hole, MMIO hole).
//!
//! Every access is checked: an address that is not backed gives a
//! [`MemError`], never a fault. Devices must treat such an error as the guest's
//! mistake (fw_cfg sets its DMA error bit, a rep read stops) and go on.

use std::sync::Arc;

use vm_memory::GuestAddress;
#[cfg(any(test, feature = "testing"))]
use vm_memory::{Bytes, GuestMemoryMmap};

/// Why a guest-memory access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// Part of the range is not guest RAM (a hole, or an unpopulated page).
    #[error("guest memory {addr:#x}+{len:#x} is not mapped")]
    Unmapped { addr: u64, len: usize },
    /// `addr + len` wraps around the 64-bit address space.
    #[error("guest memory range {addr:#x}+{len:#x} overflows the address space")]
    Overflow { addr: u64, len: usize },
    /// The hypervisor refused to map the range.
    #[error("mapping guest memory at {addr:#x} failed: {reason}")]
    MapFailed { addr: u64, reason: String },
}

/// Byte access to guest-physical memory.
///
/// Methods take `&self`: implementations that cache mappings use interior
/// mutability, so one handle can be shared by every device that does DMA.
pub trait GuestMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `addr`. On error, `buf` is unspecified.
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `buf` at `addr`. On error, a prefix may have been written.
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError>;
}

impl<T: GuestMemory + ?Sized> GuestMemory for Arc<T> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        (**self).write(addr, buf)
    }
}

/// Checks that `addr + len` does not wrap.
pub fn check_range(addr: GuestAddress, len: usize) -> Result<(), MemError> {
    let l = u64::try_from(len).map_err(|_| MemError::Overflow { addr: addr.0, len })?;
    match addr.0.checked_add(l) {
        Some(_) => Ok(()),
        None => Err(MemError::Overflow { addr: addr.0, len }),
    }
}

/// In-memory guest RAM for tests: `vm-memory` anonymous regions.
#[cfg(any(test, feature = "testing"))]
pub struct TestMemory {
    inner: GuestMemoryMmap<()>,
}

#[cfg(any(test, feature = "testing"))]
impl TestMemory {
    /// RAM at each `(start, len)`; everything else is a hole.
    ///
    /// # Errors
    /// If the regions overlap or cannot be allocated.
    pub fn new(regions: &[(u64, usize)]) -> Result<Self, MemError> {
        let ranges: Vec<(GuestAddress, usize)> = regions.iter().map(|&(s, l)| (GuestAddress(s), l)).collect();
        let inner = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| MemError::MapFailed { addr: regions.first().map_or(0, |r| r.0), reason: e.to_string() })?;
        Ok(Self { inner })
    }

    /// A PC-like layout: RAM below 0xA0000 and from 0xC0000 up to `size`.
    ///
    /// # Errors
    /// If `size` is below 1 MiB or the memory cannot be allocated.
    pub fn pc(size: usize) -> Result<Self, MemError> {
        let high = size.checked_sub(0xC0000).ok_or(MemError::Overflow { addr: 0, len: size })?;
        Self::new(&[(0, 0xA0000), (0xC0000, high)])
    }
}

#[cfg(any(test, feature = "testing"))]
impl GuestMemory for TestMemory {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        check_range(addr, buf.len())?;
        self.inner.read_slice(buf, addr).map_err(|_| MemError::Unmapped { addr: addr.0, len: buf.len() })
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        check_range(addr, buf.len())?;
        self.inner.write_slice(buf, addr).map_err(|_| MemError::Unmapped { addr: addr.0, len: buf.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_errors_not_faults() {
        let m = TestMemory::pc(2 << 20).unwrap();
        m.write(GuestAddress(0x1000), b"abc").unwrap();
        let mut b = [0u8; 3];
        m.read(GuestAddress(0x1000), &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert!(m.read(GuestAddress(0xA0000), &mut b).is_err());
        assert!(m.write(GuestAddress(0x9FFFF), b"xy").is_err(), "straddles the VGA hole");
        assert!(m.read(GuestAddress(2 << 20), &mut b).is_err());
        assert!(matches!(m.read(GuestAddress(u64::MAX), &mut b), Err(MemError::Overflow { .. })));
    }
}
