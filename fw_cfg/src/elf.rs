//! Just enough ELF (System V gABI, little-endian, 32- and 64-bit) to load a
//! multiboot or PVH kernel: the file header, program headers and notes.
//! Every offset and size from the file is checked before use, and only
//! headers are read (from the open file, by offset): the file header from
//! the first bytes, each program header, and at most [`MAX_NOTE_BYTES`] of
//! each note segment. Segment contents are never read here; the loaders
//! serve them from the file.

use crate::bytes::{le_u16, le_u32, le_u64};
use crate::source::LoadedFile;

/// How much of each PT_NOTE segment is searched for a note (Linux's
/// `.notes` is a few hundred bytes; QEMU reads the whole file).
pub(crate) const MAX_NOTE_BYTES: u64 = 64 << 10;

pub(crate) const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
pub(crate) const EM_386: u16 = 3;
pub(crate) const EM_X86_64: u16 = 62;
pub(crate) const PT_LOAD: u32 = 1;
pub(crate) const PT_NOTE: u32 = 4;

const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;

/// A program header, widened to 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Phdr {
    pub p_type: u32,
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// The parts of an ELF file a loader needs.
#[derive(Debug, Clone)]
pub(crate) struct Elf {
    pub class64: bool,
    pub machine: u16,
    pub flags: u32,
    pub entry: u64,
    pub phdrs: Vec<Phdr>,
}

/// What is wrong with an ELF file (the caller adds the file name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("unsupported ELF class or byte order (need little-endian ELF32 or ELF64)")]
    Unsupported,
    #[error("the ELF {0} lies beyond the end of the file")]
    Truncated(&'static str),
    #[error("bad ELF program header table entry size {0}")]
    BadPhentsize(u16),
    #[error("reading the ELF {0}: {1}")]
    Read(&'static str, String),
}

/// Fills `buf` from `file` at `off`; a read past the end is truncation.
fn read_at(file: &LoadedFile, off: u64, buf: &mut [u8], what: &'static str) -> Result<(), ElfError> {
    file.read_exact_at(off, buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ElfError::Truncated(what),
        _ => ElfError::Read(what, e.to_string()),
    })
}

pub(crate) fn is_elf(image: &[u8]) -> bool {
    image.get(..4) == Some(&ELF_MAGIC[..])
}

/// Parses the file header and program headers of `file`.
pub(crate) fn parse(file: &LoadedFile) -> Result<Elf, ElfError> {
    let image = file.head();
    if !is_elf(image) {
        return Err(ElfError::NotElf);
    }
    let class = image.get(4).copied();
    let data = image.get(5).copied();
    if data != Some(ELFDATA2LSB) {
        return Err(ElfError::Unsupported);
    }
    let hdr = ElfError::Truncated("file header");
    let class64 = match class {
        Some(ELFCLASS32) => false,
        Some(ELFCLASS64) => true,
        _ => return Err(ElfError::Unsupported),
    };
    let machine = le_u16(image, 18).ok_or(hdr.clone())?;
    let (entry, phoff, flags, phentsize, phnum, min_phent) = if class64 {
        (
            le_u64(image, 24).ok_or(hdr.clone())?,
            le_u64(image, 32).ok_or(hdr.clone())?,
            le_u32(image, 48).ok_or(hdr.clone())?,
            le_u16(image, 54).ok_or(hdr.clone())?,
            le_u16(image, 56).ok_or(hdr)?,
            56u16,
        )
    } else {
        (
            u64::from(le_u32(image, 24).ok_or(hdr.clone())?),
            u64::from(le_u32(image, 28).ok_or(hdr.clone())?),
            le_u32(image, 36).ok_or(hdr.clone())?,
            le_u16(image, 42).ok_or(hdr.clone())?,
            le_u16(image, 44).ok_or(hdr)?,
            32u16,
        )
    };
    if phnum > 0 && phentsize < min_phent {
        return Err(ElfError::BadPhentsize(phentsize));
    }
    // The whole table must lie in the file before any entry is read (or
    // any room is reserved for it): at most 65535 entries.
    let table = u64::from(phnum) * u64::from(phentsize);
    if phoff.checked_add(table).is_none_or(|end| end > file.len()) {
        return Err(ElfError::Truncated("program header table"));
    }
    let mut phdrs = Vec::with_capacity(usize::from(phnum));
    let mut raw = [0u8; 56];
    let entry_bytes = raw.get_mut(..usize::from(min_phent)).ok_or(ElfError::BadPhentsize(phentsize))?;
    for i in 0..u64::from(phnum) {
        read_at(file, phoff + i * u64::from(phentsize), entry_bytes, "program header table")?;
        let ph = if class64 { phdr64(entry_bytes, 0) } else { phdr32(entry_bytes, 0) };
        phdrs.push(ph.ok_or(ElfError::Truncated("program header table"))?);
    }
    Ok(Elf { class64, machine, flags, entry, phdrs })
}

fn phdr32(b: &[u8], off: usize) -> Option<Phdr> {
    let f = |o: usize| le_u32(b, off.checked_add(o)?).map(u64::from);
    Some(Phdr { p_type: le_u32(b, off)?, offset: f(4)?, paddr: f(12)?, filesz: f(16)?, memsz: f(20)?, align: f(28)? })
}

fn phdr64(b: &[u8], off: usize) -> Option<Phdr> {
    let f = |o: usize| le_u64(b, off.checked_add(o)?);
    Some(Phdr { p_type: le_u32(b, off)?, offset: f(8)?, paddr: f(24)?, filesz: f(32)?, memsz: f(40)?, align: f(48)? })
}

/// Checks that the `filesz` bytes a program header refers to lie in the
/// file.
pub(crate) fn check_segment(file: &LoadedFile, ph: &Phdr) -> Result<(), ElfError> {
    match ph.offset.checked_add(ph.filesz) {
        Some(end) if end <= file.len() => Ok(()),
        _ => Err(ElfError::Truncated("segment")),
    }
}

/// Finds the descriptor of the first note named `name` (without its NUL)
/// with type `ntype` in the PT_NOTE segments (the first
/// [`MAX_NOTE_BYTES`] of each). Name and descriptor are padded to the
/// segment's alignment when it is 8, else to 4 bytes.
pub(crate) fn find_note(file: &LoadedFile, elf: &Elf, name: &[u8], ntype: u32) -> Result<Option<Vec<u8>>, ElfError> {
    for ph in elf.phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        check_segment(file, ph)?;
        let len = usize::try_from(ph.filesz.min(MAX_NOTE_BYTES)).map_err(|_| ElfError::Truncated("segment"))?;
        let mut notes = vec![0u8; len];
        read_at(file, ph.offset, &mut notes, "segment")?;
        if let Some(desc) = note_in(&notes, ph.align, name, ntype) {
            return Ok(Some(desc.to_vec()));
        }
    }
    Ok(None)
}

/// The descriptor of note (`name`, `ntype`) in one note segment's bytes.
fn note_in<'a>(notes: &'a [u8], align: u64, name: &[u8], ntype: u32) -> Option<&'a [u8]> {
    let align: usize = if align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.checked_add(align - 1).map(|v| v & !(align - 1));
    let mut off = 0usize;
    while let (Some(namesz), Some(descsz), Some(t)) =
        (le_u32(notes, off), le_u32(notes, off.saturating_add(4)), le_u32(notes, off.saturating_add(8)))
    {
        let (Ok(namesz), Ok(descsz)) = (usize::try_from(namesz), usize::try_from(descsz)) else { break };
        let name_off = off.saturating_add(12);
        let desc_off = pad(namesz).and_then(|p| name_off.checked_add(p))?;
        let desc_end = desc_off.checked_add(descsz)?;
        let nname = name_off.checked_add(namesz).and_then(|e| notes.get(name_off..e))?;
        let desc = notes.get(desc_off..desc_end)?;
        // The name includes its NUL terminator.
        if t == ntype && nname.strip_suffix(&[0]).unwrap_or(nname) == name {
            return Some(desc);
        }
        off = pad(descsz).and_then(|p| desc_off.checked_add(p))?;
    }
    None
}

#[cfg(test)]
pub(crate) mod build {
    //! Builds small ELF images for tests.

    /// A segment to put in a test ELF: (p_type, paddr, file bytes, memsz, align).
    pub struct Seg {
        pub p_type: u32,
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
        pub align: u64,
    }

    /// A note as the toolchain lays it out (4-byte padding).
    pub fn note(name: &str, ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let n = name.len() as u32 + 1;
        v.extend_from_slice(&n.to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&ntype.to_le_bytes());
        v.extend_from_slice(name.as_bytes());
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    /// An ELF executable with the given segments; data follows the headers.
    pub fn elf(class64: bool, machine: u16, entry: u64, flags: u32, segs: &[Seg]) -> Vec<u8> {
        let (ehsize, phentsize) = if class64 { (64usize, 56usize) } else { (52, 32) };
        let mut data_off = ehsize + phentsize * segs.len();
        let mut img = vec![0u8; data_off];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = if class64 { 2 } else { 1 };
        img[5] = 1;
        img[6] = 1;
        img[16..18].copy_from_slice(&2u16.to_le_bytes());
        img[18..20].copy_from_slice(&machine.to_le_bytes());
        img[20..24].copy_from_slice(&1u32.to_le_bytes());
        if class64 {
            img[24..32].copy_from_slice(&entry.to_le_bytes());
            img[32..40].copy_from_slice(&(ehsize as u64).to_le_bytes());
            img[48..52].copy_from_slice(&flags.to_le_bytes());
            img[52..54].copy_from_slice(&(ehsize as u16).to_le_bytes());
            img[54..56].copy_from_slice(&(phentsize as u16).to_le_bytes());
            img[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        } else {
            img[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            img[28..32].copy_from_slice(&(ehsize as u32).to_le_bytes());
            img[36..40].copy_from_slice(&flags.to_le_bytes());
            img[40..42].copy_from_slice(&(ehsize as u16).to_le_bytes());
            img[42..44].copy_from_slice(&(phentsize as u16).to_le_bytes());
            img[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        }
        for (i, s) in segs.iter().enumerate() {
            let p = ehsize + i * phentsize;
            let fsz = s.data.len() as u64;
            if class64 {
                img[p..p + 4].copy_from_slice(&s.p_type.to_le_bytes());
                img[p + 8..p + 16].copy_from_slice(&(data_off as u64).to_le_bytes());
                img[p + 16..p + 24].copy_from_slice(&s.paddr.to_le_bytes());
                img[p + 24..p + 32].copy_from_slice(&s.paddr.to_le_bytes());
                img[p + 32..p + 40].copy_from_slice(&fsz.to_le_bytes());
                img[p + 40..p + 48].copy_from_slice(&s.memsz.to_le_bytes());
                img[p + 48..p + 56].copy_from_slice(&s.align.to_le_bytes());
            } else {
                img[p..p + 4].copy_from_slice(&s.p_type.to_le_bytes());
                img[p + 4..p + 8].copy_from_slice(&(data_off as u32).to_le_bytes());
                img[p + 8..p + 12].copy_from_slice(&(s.paddr as u32).to_le_bytes());
                img[p + 12..p + 16].copy_from_slice(&(s.paddr as u32).to_le_bytes());
                img[p + 16..p + 20].copy_from_slice(&(fsz as u32).to_le_bytes());
                img[p + 20..p + 24].copy_from_slice(&(s.memsz as u32).to_le_bytes());
                img[p + 28..p + 32].copy_from_slice(&(s.align as u32).to_le_bytes());
            }
            data_off += s.data.len();
        }
        for s in segs {
            img.extend_from_slice(&s.data);
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn file(img: &[u8]) -> LoadedFile {
        LoadedFile::from_bytes("t.elf", img.to_vec())
    }

    #[test]
    fn parses_both_classes_and_finds_notes() {
        for class64 in [false, true] {
            let notes =
                [note("GNU", 18, &[9; 4]), note("Xen", 6, b"linux\0"), note("Xen", 18, &0x1234_5678u32.to_le_bytes())]
                    .concat();
            let img = elf(
                class64,
                EM_X86_64,
                0x100_0000,
                0,
                &[
                    Seg { p_type: PT_LOAD, paddr: 0x100_0000, data: vec![1; 16], memsz: 32, align: 0x1000 },
                    Seg { p_type: PT_NOTE, paddr: 0, data: notes, memsz: 0, align: 4 },
                ],
            );
            let f = file(&img);
            let e = parse(&f).unwrap();
            assert_eq!(e.class64, class64);
            assert_eq!(e.machine, EM_X86_64);
            assert_eq!(e.entry, 0x100_0000);
            assert_eq!(e.phdrs.len(), 2);
            assert_eq!(e.phdrs[0].memsz, 32);
            check_segment(&f, &e.phdrs[0]).unwrap();
            let d = find_note(&f, &e, b"Xen", 18).unwrap().unwrap();
            assert_eq!(d, 0x1234_5678u32.to_le_bytes());
            assert_eq!(find_note(&f, &e, b"Xen", 99).unwrap(), None);
        }
    }

    #[test]
    fn truncated_and_garbage_files_are_errors() {
        assert_eq!(parse(&file(b"MZ")).unwrap_err(), ElfError::NotElf);
        assert_eq!(parse(&file(b"\x7fELF\x01\x01")).unwrap_err(), ElfError::Truncated("file header"));
        assert_eq!(parse(&file(b"\x7fELF\x03\x01")).unwrap_err(), ElfError::Unsupported);
        assert_eq!(parse(&file(b"\x7fELF\x01\x02")).unwrap_err(), ElfError::Unsupported);
        let img = elf(false, EM_386, 0, 0, &[Seg { p_type: PT_LOAD, paddr: 0, data: vec![1; 8], memsz: 8, align: 4 }]);
        assert_eq!(parse(&file(&img[..60])).unwrap_err(), ElfError::Truncated("program header table"));
        let cut = file(&img[..img.len() - 1]);
        let e = parse(&cut).unwrap();
        assert_eq!(check_segment(&cut, &e.phdrs[0]).unwrap_err(), ElfError::Truncated("segment"));
        // A note segment with absurd sizes is skipped, not trusted.
        let mut bad = note("Xen", 18, &[1, 0, 0, 0]);
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let img = elf(true, EM_X86_64, 0, 0, &[Seg { p_type: PT_NOTE, paddr: 0, data: bad, memsz: 0, align: 4 }]);
        let f = file(&img);
        let e = parse(&f).unwrap();
        assert_eq!(find_note(&f, &e, b"Xen", 18).unwrap(), None);
    }
}
