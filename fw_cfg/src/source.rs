//! Boot files (`-kernel`, `-initrd`, multiboot modules): opened once at
//! start-up, checked, kept open, and read by offset from then on.
//!
//! Opening never blocks and never reads a device: the path is `stat`ed
//! first and must be a regular file (a FIFO would block `open`, `/dev/zero`
//! never ends); it is then opened `O_RDONLY | O_NONBLOCK | O_NOCTTY |
//! O_CLOEXEC` and `fstat`ed again, and must still be the same regular file
//! (same device and inode) of at most [`MAX_FILE_SIZE`] bytes. Nothing is
//! read but what the loaders ask for: the first 8 KiB (format detection),
//! headers, and what the guest reads through fw_cfg, on demand.
//!
//! The open descriptor pins the file's content against a replacement of
//! the path (a rename: the guest still reads what was validated). A change
//! of the file itself is detected: every read checks, after reading, that
//! the size and modification time are those seen at open (not the change
//! time: unlinking the old file by a rename changes it); a read past the end
//! (a truncation) or of a changed file fails, and the device answers with
//! its error (fw_cfg DMA error bit), never with the new bytes. A writer that
//! also restores the modification time (`touch -d`) is not detected.
//!
//! Tests and fuzzers build in-memory files with [`LoadedFile::from_bytes`].

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest kernel, initrd or module file we open.
pub const MAX_FILE_SIZE: u64 = 512 << 20;

/// Why a boot file could not be opened or read (the loaders turn it into a
/// [`crate::plan::LoadError`] of the same name).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening {what} {path}: it {kind}, not a regular file")]
    NotRegular { what: &'static str, path: PathBuf, kind: &'static str },
    #[error("reading {what} {path}: the file is {size} bytes, more than the {MAX_FILE_SIZE}-byte limit")]
    FileTooLarge { what: &'static str, path: PathBuf, size: u64 },
}

/// How much of the start of a file is kept in memory for format detection
/// (QEMU looks for the multiboot header in the first 8 KiB).
pub const HEAD_SIZE: usize = 8192;

/// What identifies a file's content as validated at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino(), size: meta.size(), mtime: (meta.mtime(), meta.mtime_nsec()) }
    }
}

enum Backing {
    /// An open regular file and what it was when opened.
    File { file: File, identity: Identity },
    /// In-memory content (tests, fuzzing).
    Bytes(Vec<u8>),
}

/// A boot file, open and checked (see the module docs). Cloning shares the
/// descriptor.
#[derive(Clone)]
pub struct LoadedFile {
    /// The path as given, for messages and trace headers.
    pub path: PathBuf,
    backing: Arc<Backing>,
    len: u64,
    /// The first [`HEAD_SIZE`] bytes (fewer if the file is shorter).
    head: Arc<[u8]>,
}

impl std::fmt::Debug for LoadedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedFile").field("path", &self.path).field("len", &self.len).finish_non_exhaustive()
    }
}

/// What a path names, for the refusal of anything but a regular file.
fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "is a directory"
    } else if ft.is_fifo() {
        "is a FIFO"
    } else if ft.is_char_device() {
        "is a character device"
    } else if ft.is_block_device() {
        "is a block device"
    } else if ft.is_socket() {
        "is a socket"
    } else {
        "is not a regular file"
    }
}

impl LoadedFile {
    /// Opens and checks `path` (see the module docs) and reads its first
    /// [`HEAD_SIZE`] bytes; `what` names the role ("kernel", "initrd",
    /// "multiboot module") in errors.
    ///
    /// # Errors
    /// A missing or unreadable path, anything but a regular file, a file
    /// larger than [`MAX_FILE_SIZE`].
    pub fn open(path: &Path, what: &'static str) -> Result<Self, OpenError> {
        let io = |source| OpenError::Read { what, path: path.to_path_buf(), source };
        let not_regular = |kind: &'static str| OpenError::NotRegular { what, path: path.to_path_buf(), kind };
        let before = std::fs::metadata(path).map_err(io)?;
        if !before.is_file() {
            return Err(not_regular(kind_of(before.file_type())));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
            return Err(io(io::Error::other("the path was replaced while it was being opened")));
        }
        if meta.len() > MAX_FILE_SIZE {
            return Err(OpenError::FileTooLarge { what, path: path.to_path_buf(), size: meta.len() });
        }
        let backing = Backing::File { file, identity: Identity::of(&meta) };
        Self::with_head(path.to_path_buf(), backing, meta.len()).map_err(io)
    }

    /// An in-memory file (tests and fuzzers; never changes).
    pub fn from_bytes(path: impl Into<PathBuf>, data: Vec<u8>) -> Self {
        let len = data.len() as u64;
        let head: Arc<[u8]> = data.get(..HEAD_SIZE.min(data.len())).unwrap_or_default().into();
        Self { path: path.into(), backing: Arc::new(Backing::Bytes(data)), len, head }
    }

    fn with_head(path: PathBuf, backing: Backing, len: u64) -> io::Result<Self> {
        let mut f = Self { path, backing: Arc::new(backing), len, head: Arc::from(Vec::new()) };
        let mut head = vec![0u8; usize::try_from(len).map_or(HEAD_SIZE, |l| l.min(HEAD_SIZE))];
        f.read_exact_at(0, &mut head)?;
        f.head = head.into();
        Ok(f)
    }

    /// The size when opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first [`HEAD_SIZE`] bytes (the whole file if shorter).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Fills `buf` with the bytes at `offset`.
    ///
    /// # Errors
    /// `UnexpectedEof` past the end (the file was truncated), `Other` if
    /// the file changed since it was opened, or the read's own error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match &*self.backing {
            Backing::Bytes(data) => {
                let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                let src = start.checked_add(buf.len()).and_then(|e| data.get(start..e));
                buf.copy_from_slice(src.ok_or(io::ErrorKind::UnexpectedEof)?);
                Ok(())
            }
            Backing::File { file, identity } => {
                file.read_exact_at(buf, offset)?;
                // Checked after the read: bytes of a file changed before or
                // during it are refused.
                if Identity::of(&file.metadata()?) != *identity {
                    return Err(io::Error::other("the file changed after start-up"));
                }
                Ok(())
            }
        }
    }

    /// `len` bytes at `offset`, read into a new buffer; callers bound `len`
    /// (headers, the Linux setup code), never by the file's size alone.
    ///
    /// # Errors
    /// As [`Self::read_exact_at`], as an [`OpenError::Read`].
    pub fn read_vec(&self, offset: u64, len: usize, what: &'static str) -> Result<Vec<u8>, OpenError> {
        let mut v = vec![0u8; len];
        self.read_exact_at(offset, &mut v).map_err(|source| OpenError::Read {
            what,
            path: self.path.clone(),
            source,
        })?;
        Ok(v)
    }

    /// The whole content (tests).
    #[cfg(test)]
    pub(crate) fn test_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.reader().read_to_end(&mut v).unwrap();
        v
    }

    /// A reader over the whole file, by offset (the descriptor's position is
    /// not used), for hashing.
    pub fn reader(&self) -> impl Read + '_ {
        FileReader { file: self, at: 0 }
    }
}

struct FileReader<'a> {
    file: &'a LoadedFile,
    at: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.file.len.saturating_sub(self.at);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let dst = buf.get_mut(..n).unwrap_or_default();
        self.file.read_exact_at(self.at, dst)?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn regular_files_are_opened_and_read_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = LoadedFile::open(&p, "kernel").unwrap();
        assert_eq!(f.len(), 20_000);
        assert_eq!(f.head(), &data[..HEAD_SIZE]);
        let mut b = [0u8; 10];
        f.read_exact_at(19_990, &mut b).unwrap();
        assert_eq!(b, data[19_990..]);
        assert_eq!(f.read_exact_at(19_991, &mut b).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut all = Vec::new();
        f.reader().read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        let m = LoadedFile::from_bytes("m", data.clone());
        m.read_exact_at(5, &mut b).unwrap();
        assert_eq!(b, data[5..15]);
    }

    /// Audit 2026-12 section 3: a FIFO as `-kernel` or `-initrd` hung
    /// forever in `open()`. The guard thread fails the test instead of
    /// hanging it.
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&p).status().unwrap().success());
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        std::thread::spawn(move || tx.send(LoadedFile::open(&p2, "initrd").map(|_| ())).unwrap());
        let r = rx.recv_timeout(Duration::from_secs(5)).expect("opening a FIFO blocked");
        let e = r.unwrap_err();
        assert!(matches!(e, OpenError::NotRegular { kind: "is a FIFO", .. }), "{e}");
        assert_eq!(e.to_string(), format!("opening initrd {}: it is a FIFO, not a regular file", p.display()));
        // Unblock the opener thread if it ever got stuck (it must not).
        drop(std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&p));
    }

    /// Audit 2026-12 section 3: `/dev/zero` as `-kernel` was read to
    /// 512 MiB + 1 (528 MB RSS) before being refused.
    #[test]
    fn devices_and_directories_are_refused_without_reading() {
        let t = Instant::now();
        let e = LoadedFile::open(Path::new("/dev/zero"), "kernel").unwrap_err();
        assert!(matches!(e, OpenError::NotRegular { kind: "is a character device", .. }), "{e}");
        assert!(t.elapsed() < Duration::from_millis(500));
        let dir = tempfile::tempdir().unwrap();
        let e = LoadedFile::open(dir.path(), "kernel").unwrap_err();
        assert!(matches!(e, OpenError::NotRegular { kind: "is a directory", .. }), "{e}");
    }

    #[test]
    fn oversized_files_are_refused_by_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::File::create(&p).unwrap().set_len(MAX_FILE_SIZE + 1).unwrap(); // sparse
        let e = LoadedFile::open(&p, "initrd").unwrap_err();
        assert!(matches!(e, OpenError::FileTooLarge { size, .. } if size == MAX_FILE_SIZE + 1), "{e}");
    }

    #[test]
    fn replacing_the_path_changes_nothing_and_changing_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![1u8; 10_000]).unwrap();
        let f = LoadedFile::open(&p, "initrd").unwrap();
        // Replaced by rename: the open file still reads as validated.
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, vec![2u8; 10_000]).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let mut b = vec![0u8; 10_000];
        f.read_exact_at(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 1));
        // Truncated in place: a short read is an error.
        let g = LoadedFile::open(&p, "initrd").unwrap();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(100).unwrap();
        assert!(g.read_exact_at(0, &mut b).is_err());
        // Rewritten in place with the same size: refused, not served.
        std::fs::write(&p, vec![3u8; 10_000]).unwrap();
        let h = LoadedFile::open(&p, "initrd").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, vec![4u8; 10_000]).unwrap();
        let e = h.read_exact_at(0, &mut b[..100]).unwrap_err();
        assert!(e.to_string().contains("changed"), "{e}");
    }
}
