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

    /// Writes `len` bytes at `addr` that `fill` produces piece by piece, so
    /// a large write (a kernel served from its file) needs no buffer of its
    /// size. `fill(offset, buf)` puts the data's bytes at `offset` into
    /// `buf` and returns `false` if it cannot; the write stops there.
    /// Returns how many bytes were written: `len`, or fewer if `fill`
    /// stopped. On a memory error, a prefix may have been written.
    ///
    /// This is one write of `len` bytes: wrappers that observe writes (the
    /// trace recorder) see one. The default writes [`WRITE_FROM_CHUNK`]
    /// bytes at a time through [`GuestMemory::write`].
    ///
    /// # Errors
    /// As [`GuestMemory::write`], for the first piece that fails.
    fn write_from(
        &self,
        addr: GuestAddress,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> Result<u64, MemError> {
        let overflow = MemError::Overflow { addr: addr.0, len: usize::try_from(len).unwrap_or(usize::MAX) };
        if addr.0.checked_add(len).is_none() {
            return Err(overflow);
        }
        let mut buf = vec![0u8; usize::try_from(len.min(WRITE_FROM_CHUNK as u64)).unwrap_or(WRITE_FROM_CHUNK)];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from((len - done).min(WRITE_FROM_CHUNK as u64)).unwrap_or(WRITE_FROM_CHUNK);
            let Some(piece) = buf.get_mut(..n) else { return Err(overflow) };
            if !fill(done, piece) {
                return Ok(done);
            }
            self.write(GuestAddress(addr.0 + done), piece)?;
            done += n as u64;
        }
        Ok(done)
    }
}

/// The piece size of [`GuestMemory::write_from`]'s default implementation.
pub const WRITE_FROM_CHUNK: usize = 64 << 10;

impl<T: GuestMemory + ?Sized> GuestMemory for Arc<T> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read(addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        (**self).write(addr, buf)
    }
    fn write_from(
        &self,
        addr: GuestAddress,
        len: u64,
        fill: &mut dyn FnMut(u64, &mut [u8]) -> bool,
    ) -> Result<u64, MemError> {
        (**self).write_from(addr, len, fill)
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

    #[test]
    fn write_from_streams_in_pieces_and_stops_when_fill_does() {
        let m = TestMemory::pc(2 << 20).unwrap();
        let len = 3 * WRITE_FROM_CHUNK as u64 + 5;
        let mut calls = Vec::new();
        let mut fill = |off: u64, buf: &mut [u8]| {
            calls.push((off, buf.len()));
            buf.iter_mut().enumerate().for_each(|(i, b)| *b = (off as usize + i) as u8);
            true
        };
        assert_eq!(m.write_from(GuestAddress(0x10_0000), len, &mut fill).unwrap(), len);
        assert_eq!(calls.len(), 4);
        assert!(calls.iter().all(|&(_, n)| n <= WRITE_FROM_CHUNK));
        let mut b = vec![0u8; len as usize];
        m.read(GuestAddress(0x10_0000), &mut b).unwrap();
        assert!(b.iter().enumerate().all(|(i, &v)| v == i as u8));
        let mut stop = |off: u64, _: &mut [u8]| off == 0;
        assert_eq!(m.write_from(GuestAddress(0x10_0000), len, &mut stop).unwrap(), WRITE_FROM_CHUNK as u64);
        assert!(m.write_from(GuestAddress(0x9_0000), 0x20000, &mut |_, _| true).is_err(), "into the VGA hole");
        assert!(matches!(m.write_from(GuestAddress(u64::MAX), 2, &mut |_, _| true), Err(MemError::Overflow { .. })));
    }
}
