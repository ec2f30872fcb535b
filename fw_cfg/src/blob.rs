//! The content of one fw_cfg item: a sequence of pieces, each in memory,
//! a range of an open boot file ([`LoadedFile`]), or zeros.
//!
//! Small items and the bytes the loaders patch (the Linux setup header, the
//! multiboot information) are in memory; the large unmodified parts (the
//! kernel body, the initrd, multiboot modules, a multiboot kernel's BSS)
//! are file ranges and zeros, read only when the guest asks, in bounded
//! pieces: [`Blob::write_to`] streams into guest memory through
//! [`GuestMemory::write_from`] (64 KiB at a time by default), and
//! [`Blob::read_at`] serves the port interface's small buffer. The process
//! therefore holds no copy of the boot files (issue 14 item 1).
//!
//! A file that became shorter or changed after start-up makes the read fail
//! ([`crate::source`]); the device turns that into its error, never into
//! other bytes.

use std::io;

use vm_memory::GuestAddress;
use xendm_devices::{GuestMemory, MemError};

use crate::source::LoadedFile;

#[derive(Clone)]
enum Piece {
    Bytes(Vec<u8>),
    File { file: LoadedFile, offset: u64, len: u64 },
    Zeros(u64),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } | Self::Zeros(len) => *len,
        }
    }

    /// Fills `buf` with the piece's bytes at `offset` (checked by the caller
    /// to lie within the piece).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Self::Bytes(b) => {
                let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                let src = start.checked_add(buf.len()).and_then(|end| b.get(start..end));
                buf.copy_from_slice(src.ok_or(io::ErrorKind::UnexpectedEof)?);
                Ok(())
            }
            Self::File { file, offset: base, .. } => file.read_exact_at(base.saturating_add(offset), buf),
            Self::Zeros(_) => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

/// Why [`Blob::write_to`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobWriteError {
    /// Guest memory refused the write.
    #[error("guest memory: {0}")]
    Memory(#[from] MemError),
    /// The backing file could not be read (truncated or changed since
    /// start-up, or an I/O error).
    #[error("{path}: {source}")]
    Source {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The range asked for is not inside the item (a caller bug).
    #[error("range {offset:#x}+{len:#x} is outside the item")]
    OutOfRange { offset: u64, len: u64 },
}

/// An item's content (see the module docs).
#[derive(Clone, Default)]
pub struct Blob {
    pieces: Vec<Piece>,
    len: u64,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pieces: Vec<String> = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Bytes(b) => format!("bytes({})", b.len()),
                Piece::File { file, offset, len } => format!("{}[{offset:#x}+{len:#x}]", file.path.display()),
                Piece::Zeros(n) => format!("zeros({n})"),
            })
            .collect();
        f.debug_struct("Blob").field("len", &self.len).field("pieces", &pieces).finish()
    }
}

impl From<Vec<u8>> for Blob {
    fn from(data: Vec<u8>) -> Self {
        Self::from_bytes(data)
    }
}

impl Blob {
    /// An empty blob.
    pub fn new() -> Self {
        Self::default()
    }

    /// In-memory bytes (one piece, so [`Self::as_bytes`] sees them).
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let len = data.len() as u64;
        Self { pieces: vec![Piece::Bytes(data)], len }
    }

    /// Appends in-memory bytes.
    pub fn push_bytes(&mut self, data: Vec<u8>) {
        if !data.is_empty() {
            self.len += data.len() as u64;
            self.pieces.push(Piece::Bytes(data));
        }
    }

    /// Appends `len` bytes of `file` from `offset`; `None` (nothing
    /// appended) if the range is not inside the file.
    pub fn push_file(&mut self, file: &LoadedFile, offset: u64, len: u64) -> Option<()> {
        if offset.checked_add(len)? > file.len() {
            return None;
        }
        if len > 0 {
            self.len += len;
            self.pieces.push(Piece::File { file: file.clone(), offset, len });
        }
        Some(())
    }

    /// Appends `n` zero bytes.
    pub fn push_zeros(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.len += n;
        if let Some(Piece::Zeros(z)) = self.pieces.last_mut() {
            *z += n;
        } else {
            self.pieces.push(Piece::Zeros(n));
        }
    }

    /// Appends `other`'s pieces.
    pub fn append(&mut self, other: Blob) {
        for p in other.pieces {
            match p {
                Piece::Zeros(n) => self.push_zeros(n),
                p => {
                    self.len += p.len();
                    self.pieces.push(p);
                }
            }
        }
    }

    /// Appends zeros up to `len` bytes in all (nothing if already longer).
    pub fn pad_to(&mut self, len: u64) {
        self.push_zeros(len.saturating_sub(self.len));
    }

    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, if the blob is held in memory (empty, or one in-memory
    /// piece); `None` for file-backed or zero-filled content.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self.pieces.as_slice() {
            [] => Some(&[]),
            [Piece::Bytes(b)] => Some(b),
            _ => None,
        }
    }

    /// As [`Self::as_bytes`], mutable (the guest's DMA writes to writable
    /// items, which are always in memory).
    pub(crate) fn as_bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self.pieces.as_mut_slice() {
            [] => Some(&mut []),
            [Piece::Bytes(b)] => Some(b),
            _ => None,
        }
    }

    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` past the end; a backing file's read error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut start = 0u64; // of the current piece
        let mut at = offset;
        let mut out = buf;
        for p in &self.pieces {
            if out.is_empty() {
                break;
            }
            let end = start + p.len();
            if at < end {
                let n = usize::try_from((end - at).min(out.len() as u64)).unwrap_or(out.len());
                let (now, rest) = out.split_at_mut(n);
                p.read_at(at - start, now)?;
                out = rest;
                at += n as u64;
            }
            start = end;
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        }
    }

    /// The whole content in a new buffer (tests, small items).
    ///
    /// # Errors
    /// As [`Self::read_at`].
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; usize::try_from(self.len).map_err(io::Error::other)?];
        self.read_at(0, &mut v)?;
        Ok(v)
    }

    /// Writes `len` bytes from `offset` to guest memory at `addr`: in-memory
    /// content with one [`GuestMemory::write`] (as before items could be
    /// file-backed), anything else streamed with
    /// [`GuestMemory::write_from`], one write in bounded pieces.
    ///
    /// # Errors
    /// Guest memory refused the write, or the backing file cannot be read.
    pub fn write_to(
        &self,
        mem: &dyn GuestMemory,
        addr: GuestAddress,
        offset: u64,
        len: u64,
    ) -> Result<(), BlobWriteError> {
        let out_of_range = || BlobWriteError::OutOfRange { offset, len };
        let end = offset.checked_add(len).filter(|&e| e <= self.len).ok_or_else(out_of_range)?;
        if let Some(bytes) = self.as_bytes() {
            let (s, e) = (usize::try_from(offset), usize::try_from(end));
            let src = match (s, e) {
                (Ok(s), Ok(e)) => bytes.get(s..e).ok_or_else(out_of_range)?,
                _ => return Err(out_of_range()),
            };
            return Ok(mem.write(addr, src)?);
        }
        let mut failure: Option<io::Error> = None;
        let mut fill = |at: u64, buf: &mut [u8]| match self.read_at(offset + at, buf) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        };
        let written = mem.write_from(addr, len, &mut fill)?;
        match failure {
            Some(source) => Err(BlobWriteError::Source { path: self.failing_path(offset + written), source }),
            None if written == len => Ok(()),
            None => Err(out_of_range()),
        }
    }

    /// The path of the file piece at `offset`, for messages.
    fn failing_path(&self, offset: u64) -> String {
        let mut start = 0u64;
        for p in &self.pieces {
            let end = start + p.len();
            if let (true, Piece::File { file, .. }) = (offset < end, p) {
                return file.path.display().to_string();
            }
            start = end;
        }
        "a boot file".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xendm_devices::mem::TestMemory;

    fn file(n: usize) -> LoadedFile {
        LoadedFile::from_bytes("f", (0..n).map(|i| (i % 253) as u8).collect())
    }

    #[test]
    fn pieces_read_as_one_sequence() {
        let f = file(100_000);
        let mut b = Blob::new();
        b.push_bytes(vec![7; 3]);
        assert!(b.push_file(&f, 10, 100_000).is_none(), "past the end of the file");
        b.push_file(&f, 10, 90_000).unwrap();
        b.push_zeros(5);
        b.push_zeros(5);
        b.pad_to(90_020);
        assert_eq!(b.len(), 90_020);
        assert!(b.as_bytes().is_none());
        let v = b.to_vec().unwrap();
        assert_eq!(&v[..3], [7; 3]);
        let want: Vec<u8> = (10..90_010).map(|i| (i % 253) as u8).collect();
        assert_eq!(&v[3..90_003], &want[..]);
        assert!(v[90_003..].iter().all(|&x| x == 0));
        let mut piece = [0u8; 6];
        b.read_at(0, &mut piece).unwrap();
        assert_eq!(piece, [7, 7, 7, 10, 11, 12]);
        assert!(b.read_at(90_015, &mut piece).is_err(), "past the end");
        assert_eq!(Blob::from_bytes(vec![1, 2]).as_bytes(), Some(&[1u8, 2][..]));
        assert_eq!(Blob::new().as_bytes(), Some(&[][..]));
    }

    #[test]
    fn write_to_streams_file_content_into_guest_memory() {
        let m = TestMemory::pc(2 << 20).unwrap();
        let f = file(300_000);
        let mut b = Blob::new();
        b.push_file(&f, 0, 300_000).unwrap();
        b.push_zeros(1000);
        b.write_to(&m, GuestAddress(0x10_0000), 1, 300_999).unwrap();
        let mut got = vec![0u8; 300_999];
        m.read(GuestAddress(0x10_0000), &mut got).unwrap();
        assert_eq!(got, b.to_vec().unwrap()[1..]);
        assert!(matches!(b.write_to(&m, GuestAddress(0), 1, 301_000), Err(BlobWriteError::OutOfRange { .. })));
        assert!(matches!(b.write_to(&m, GuestAddress(0x9_0000), 0, 300_000), Err(BlobWriteError::Memory(_))));
    }
}
