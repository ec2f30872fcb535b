//! Bounds-checked little-endian field access for parsing untrusted images.

/// `N` bytes at `off`, or `None` if they run past the end.
pub(crate) fn array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    b.get(off..end)?.try_into().ok()
}

pub(crate) fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    array(b, off).map(u16::from_le_bytes)
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    array(b, off).map(u32::from_le_bytes)
}

pub(crate) fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    array(b, off).map(u64::from_le_bytes)
}

/// Writes `v` little-endian at `off`; `None` if it does not fit.
pub(crate) fn put_le_u32(b: &mut [u8], off: usize, v: u32) -> Option<()> {
    let end = off.checked_add(4)?;
    b.get_mut(off..end)?.copy_from_slice(&v.to_le_bytes());
    Some(())
}

/// Copies `src` into `dst` at `off`; `None` if it does not fit.
pub(crate) fn put_bytes(dst: &mut [u8], off: usize, src: &[u8]) -> Option<()> {
    let end = off.checked_add(src.len())?;
    dst.get_mut(off..end)?.copy_from_slice(src);
    Some(())
}

/// Rounds `v` up to a multiple of 4 KiB.
pub(crate) fn page_align(v: u64) -> Option<u64> {
    Some(v.checked_add(0xfff)? & !0xfff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_reads_and_writes_are_none() {
        let mut b = [1u8, 2, 3, 4, 5];
        assert_eq!(le_u32(&b, 1), Some(0x0504_0302));
        assert_eq!(le_u32(&b, 2), None);
        assert_eq!(le_u16(&b, usize::MAX), None);
        assert_eq!(put_le_u32(&mut b, 2, 0), None);
        assert_eq!(put_bytes(&mut b, 4, &[9]), Some(()));
        assert_eq!(b[4], 9);
        assert_eq!(page_align(1), Some(0x1000));
        assert_eq!(page_align(0x1000), Some(0x1000));
        assert_eq!(page_align(u64::MAX), None);
    }
}
