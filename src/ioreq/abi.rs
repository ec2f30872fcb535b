//! The Xen ioreq ABI, as shared between Xen and a device model.
//!
//! Source of truth: Xen's `public/hvm/ioreq.h` (Xen 4.17, installed by
//! `libxen-dev` as `/usr/include/xen/hvm/ioreq.h`). The tests at the bottom
//! compile a C program against that header and compare its bytes with ours,
//! so these layouts are checked against the real header, not against our own
//! constants.
//!
//! * `ioreq_t` (32 bytes): `addr` u64 @0, `data` u64 @8, `count` u32 @16,
//!   `size` u32 @20, `vp_eport` u32 @24, pad u16 @28, then one byte of
//!   bitfields @30 (bits 0-3 `state`, 4 `data_is_ptr`, 5 `dir`, 6 `df`) and
//!   `type` u8 @31. One per vCPU in the synchronous page (`shared_iopage`).
//! * `buf_ioreq_t` (8 bytes): a little-endian u32 of bitfields (`type` bits
//!   0-7, pad bit 8, `dir` bit 9, `size` bits 10-11 as log2, `addr` bits
//!   12-31) then `data` u32. An 8-byte datum takes two consecutive slots,
//!   the second holding the high half.
//! * `buffered_iopage` (4096 bytes): `read_pointer` u32 @0, `write_pointer`
//!   u32 @4, 511 slots from @8.
//!
//! The `type` byte is decoded once, into [`IoreqKind`]; traces store it as
//! the raw number.
use core::mem::offset_of;

use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `dir`: the device model supplies data.
pub const IOREQ_READ: u8 = 1;
/// `dir`: the guest supplies data.
pub const IOREQ_WRITE: u8 = 0;

/// `state`: the slot is free (no request, or the response was consumed).
pub const STATE_IOREQ_NONE: u8 = 0;
/// `state`: Xen has posted a request and signalled the vCPU's port.
pub const STATE_IOREQ_READY: u8 = 1;
/// `state`: the device model has taken the request and is serving it.
pub const STATE_IOREQ_INPROCESS: u8 = 2;
/// `state`: the response (`data`) is written; Xen may resume the vCPU.
pub const STATE_IORESP_READY: u8 = 3;

/// Port I/O.
pub const IOREQ_TYPE_PIO: u8 = 0;
/// MMIO ("copy").
pub const IOREQ_TYPE_COPY: u8 = 1;
/// PCI config space; `addr` is `SBDF << 32 | register`.
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
/// The guest changed its RTC; `data` is the new offset in seconds.
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
/// Drop every cached mapping of guest memory.
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// Slots in the buffered ring.
pub const IOREQ_BUFFER_SLOT_NUM: u32 = 511;

/// Bits 0-3 of [`IoreqRaw::flags`]: `state` (`STATE_*`).
pub const FLAG_STATE_MASK: u8 = 0x0f;
/// Bit 4 of [`IoreqRaw::flags`]: `data_is_ptr`.
pub const FLAG_DATA_IS_PTR: u8 = 1 << 4;
/// Bit 5 of [`IoreqRaw::flags`]: `dir` is [`IOREQ_READ`].
pub const FLAG_DIR_READ: u8 = 1 << 5;
/// Bit 6 of [`IoreqRaw::flags`]: `df` (addresses step down).
pub const FLAG_DF: u8 = 1 << 6;

/// `ioreq_t` exactly as in shared memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoreqRaw {
    /// Port, physical address, or `SBDF << 32 | register`.
    pub addr: u64,
    /// The datum, or the guest-physical address of the buffer when
    /// `data_is_ptr`; the response is written here.
    pub data: u64,
    /// Repetitions (`rep` prefix).
    pub count: u32,
    /// Bytes per access.
    pub size: u32,
    /// Xen's event-channel port for this vCPU (written by Xen only).
    pub vp_eport: u32,
    /// Padding.
    pub pad: u16,
    /// Bits 0-3 state, 4 data_is_ptr, 5 dir, 6 df (`FLAG_*`).
    pub flags: u8,
    /// `type` (`IOREQ_TYPE_*`).
    pub kind: u8,
}

const _: () = assert!(size_of::<IoreqRaw>() == 32);

/// Size of one slot of the synchronous page.
pub const SLOT_SIZE: usize = size_of::<IoreqRaw>();
/// Offset of `data` in a slot (the response is written here).
pub const SLOT_DATA_OFFSET: usize = offset_of!(IoreqRaw, data);
/// Offset of `vp_eport` in a slot.
pub const SLOT_EPORT_OFFSET: usize = offset_of!(IoreqRaw, vp_eport);
/// Offset of the bitfield byte that holds `state` in a slot.
pub const SLOT_FLAGS_OFFSET: usize = offset_of!(IoreqRaw, flags);

/// What an ioreq asks for: its `type` byte, decoded.
///
/// Serialized as the raw number, so traces keep Xen's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum IoreqKind {
    /// [`IOREQ_TYPE_PIO`]: port I/O.
    Pio,
    /// [`IOREQ_TYPE_COPY`]: MMIO.
    Copy,
    /// [`IOREQ_TYPE_PCI_CONFIG`]: PCI config space.
    PciConfig,
    /// [`IOREQ_TYPE_TIMEOFFSET`]: the guest moved its RTC.
    TimeOffset,
    /// [`IOREQ_TYPE_INVALIDATE`]: drop cached guest mappings.
    Invalidate,
    /// Any other number (never one of the above: [`From<u8>`] decodes those).
    Unknown(u8),
}

impl IoreqKind {
    /// Human-readable name, for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pio => "pio",
            Self::Copy => "mmio",
            Self::PciConfig => "pci_config",
            Self::TimeOffset => "timeoffset",
            Self::Invalidate => "invalidate",
            Self::Unknown(_) => "unknown",
        }
    }

    /// Decodes a `type` byte.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            IOREQ_TYPE_PIO => Self::Pio,
            IOREQ_TYPE_COPY => Self::Copy,
            IOREQ_TYPE_PCI_CONFIG => Self::PciConfig,
            IOREQ_TYPE_TIMEOFFSET => Self::TimeOffset,
            IOREQ_TYPE_INVALIDATE => Self::Invalidate,
            n => Self::Unknown(n),
        }
    }

    /// The `type` byte.
    pub const fn to_raw(self) -> u8 {
        match self {
            Self::Pio => IOREQ_TYPE_PIO,
            Self::Copy => IOREQ_TYPE_COPY,
            Self::PciConfig => IOREQ_TYPE_PCI_CONFIG,
            Self::TimeOffset => IOREQ_TYPE_TIMEOFFSET,
            Self::Invalidate => IOREQ_TYPE_INVALIDATE,
            Self::Unknown(n) => n,
        }
    }
}

impl From<u8> for IoreqKind {
    fn from(raw: u8) -> Self {
        Self::from_raw(raw)
    }
}

impl From<IoreqKind> for u8 {
    fn from(kind: IoreqKind) -> Self {
        kind.to_raw()
    }
}

impl IoreqRaw {
    /// The `state` bitfield.
    pub const fn state(&self) -> u8 {
        self.flags & FLAG_STATE_MASK
    }
}

/// A decoded request: what the engine consumes and what traces record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ioreq {
    pub addr: u64,
    pub data: u64,
    pub count: u32,
    pub size: u32,
    pub data_is_ptr: bool,
    pub is_read: bool,
    pub df: bool,
    pub kind: IoreqKind,
}

impl Ioreq {
    /// Decodes a slot of the synchronous page.
    pub const fn from_raw(r: &IoreqRaw) -> Self {
        Self {
            addr: r.addr,
            data: r.data,
            count: r.count,
            size: r.size,
            data_is_ptr: r.flags & FLAG_DATA_IS_PTR != 0,
            is_read: r.flags & FLAG_DIR_READ != 0,
            df: r.flags & FLAG_DF != 0,
            kind: IoreqKind::from_raw(r.kind),
        }
    }

    /// Encodes into a raw slot with the given state (for tests and fakes).
    pub const fn to_raw(&self, state: u8, vp_eport: u32) -> IoreqRaw {
        let mut flags = state & FLAG_STATE_MASK;
        if self.data_is_ptr {
            flags |= FLAG_DATA_IS_PTR;
        }
        if self.is_read {
            flags |= FLAG_DIR_READ;
        }
        if self.df {
            flags |= FLAG_DF;
        }
        IoreqRaw {
            addr: self.addr,
            data: self.data,
            count: self.count,
            size: self.size,
            vp_eport,
            pad: 0,
            flags,
            kind: self.kind.to_raw(),
        }
    }
}

/// One decoded slot of the buffered ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufSlot {
    pub kind: IoreqKind,
    pub is_read: bool,
    /// Access size in bytes: 1, 2, 4 or 8 (8 takes two slots).
    pub size: u32,
    /// 20-bit address.
    pub addr: u32,
    /// Low 32 bits of the datum.
    pub data: u32,
}

impl BufSlot {
    /// Decodes a raw little-endian slot.
    pub const fn decode(raw: u64) -> Self {
        let w = raw as u32;
        Self {
            kind: IoreqKind::from_raw((w & 0xff) as u8),
            is_read: (w >> 9) & 1 != 0,
            size: 1 << ((w >> 10) & 3),
            addr: w >> 12,
            data: (raw >> 32) as u32,
        }
    }

    /// Encodes a slot (for tests and fakes).
    pub const fn encode(&self) -> u64 {
        let log2 = match self.size {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        let w =
            (self.kind.to_raw() as u32) | ((self.is_read as u32) << 9) | (log2 << 10) | ((self.addr & 0xf_ffff) << 12);
        (w as u64) | ((self.data as u64) << 32)
    }
}

/// `buffered_iopage_t` as in shared memory (its layout; the page itself is
/// only ever accessed field by field, atomically or volatilely).
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BufferedIopageRaw {
    /// Next slot the device model consumes (it advances this).
    pub read_pointer: u32,
    /// Next slot Xen fills (Xen advances this).
    pub write_pointer: u32,
    /// The ring, each slot a little-endian [`BufSlot`] encoding.
    pub buf_ioreq: [u64; IOREQ_BUFFER_SLOT_NUM as usize],
}

/// Offset of `read_pointer` in `buffered_iopage`.
pub const BUF_READ_POINTER_OFFSET: usize = offset_of!(BufferedIopageRaw, read_pointer);
/// Offset of `write_pointer` in `buffered_iopage`.
pub const BUF_WRITE_POINTER_OFFSET: usize = offset_of!(BufferedIopageRaw, write_pointer);
/// Offset of the first slot in `buffered_iopage`.
pub const BUF_SLOTS_OFFSET: usize = offset_of!(BufferedIopageRaw, buf_ioreq);
/// Size of one slot of the buffered ring.
pub const BUF_SLOT_SIZE: usize = size_of::<u64>();
/// Size of `buffered_iopage`.
pub const BUF_PAGE_SIZE: usize = size_of::<BufferedIopageRaw>();
const _: () = assert!(BUF_PAGE_SIZE == 4096);

/// `XENMEM_resource_ioreq_server` (`public/memory.h`): the resource type
/// under which Xen hands out an ioreq server's pages.
pub const XENMEM_RESOURCE_IOREQ_SERVER: u32 = 0;
/// Frame 0 of the ioreq server resource: the buffered ring page
/// (`XENMEM_resource_ioreq_server_frame_bufioreq`).
pub const IOREQ_SERVER_FRAME_BUFIOREQ: u64 = 0;
/// Frame 1 of the ioreq server resource: the synchronous page with one slot
/// per vCPU (`XENMEM_resource_ioreq_server_frame_ioreq(0)`).
pub const IOREQ_SERVER_FRAME_IOREQ: u64 = 1;
/// Size of a Xen page on x86 (`1 << XEN_PAGE_SHIFT`, `public/io/ring.h`).
pub const XEN_PAGE_SIZE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Compiles `body` against the installed Xen headers and returns stdout.
    fn run_c(body: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("probe.c");
        let exe = dir.path().join("probe");
        std::fs::write(
            &src,
            format!(
                "#include <stdio.h>\n#include <stdint.h>\n#include <stddef.h>\n#include <string.h>\n#include <xen/xen.h>\n#include <xen/hvm/ioreq.h>\n#include <xen/memory.h>\n#include <xen/io/ring.h>\nint main(void) {{\n{body}\nreturn 0; }}\n"
            ),
        )
        .unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = Command::new(&cc).arg("-o").arg(&exe).arg(&src).output().expect("run the C compiler");
        assert!(
            out.status.success(),
            "compiling against /usr/include/xen/hvm/ioreq.h failed (is libxen-dev installed?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run = Command::new(&exe).output().unwrap();
        assert!(run.status.success());
        String::from_utf8(run.stdout).unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn ioreq_server_resource_constants_match_the_installed_header() {
        let c = run_c(
            r#"
    printf("%d %d %d %lu\n", XENMEM_resource_ioreq_server, XENMEM_resource_ioreq_server_frame_bufioreq,
           XENMEM_resource_ioreq_server_frame_ioreq(0), 1UL << XEN_PAGE_SHIFT);
"#,
        );
        let want = format!(
            "{XENMEM_RESOURCE_IOREQ_SERVER} {IOREQ_SERVER_FRAME_BUFIOREQ} {IOREQ_SERVER_FRAME_IOREQ} {XEN_PAGE_SIZE}\n"
        );
        assert_eq!(c, want);
    }

    #[test]
    fn ioreq_layout_matches_the_installed_header() {
        let c = run_c(
            r#"
    ioreq_t r; memset(&r, 0, sizeof r);
    r.addr = 0x0102030405060708ULL; r.data = 0x1112131415161718ULL;
    r.count = 0x21222324; r.size = 0x31323334; r.vp_eport = 0x41424344;
    r.state = STATE_IORESP_READY; r.data_is_ptr = 1; r.dir = IOREQ_READ; r.df = 1; r.type = IOREQ_TYPE_INVALIDATE;
    printf("%zu ", sizeof(ioreq_t));
    for (size_t i = 0; i < sizeof r; i++) printf("%02x", ((unsigned char *)&r)[i]);
    printf(" %d %d %d %d %d %d %d %d %d %d %d %d\n", IOREQ_READ, IOREQ_WRITE, STATE_IOREQ_NONE, STATE_IOREQ_READY,
           STATE_IOREQ_INPROCESS, STATE_IORESP_READY, IOREQ_TYPE_PIO, IOREQ_TYPE_COPY, IOREQ_TYPE_PCI_CONFIG,
           IOREQ_TYPE_TIMEOFFSET, IOREQ_TYPE_INVALIDATE, IOREQ_BUFFER_SLOT_NUM);
"#,
        );
        let ours = Ioreq {
            addr: 0x0102030405060708,
            data: 0x1112131415161718,
            count: 0x21222324,
            size: 0x31323334,
            data_is_ptr: true,
            is_read: true,
            df: true,
            kind: IoreqKind::Invalidate,
        }
        .to_raw(STATE_IORESP_READY, 0x41424344);
        let consts = [
            IOREQ_READ as u32,
            IOREQ_WRITE as u32,
            STATE_IOREQ_NONE as u32,
            STATE_IOREQ_READY as u32,
            STATE_IOREQ_INPROCESS as u32,
            STATE_IORESP_READY as u32,
            IOREQ_TYPE_PIO as u32,
            IOREQ_TYPE_COPY as u32,
            IOREQ_TYPE_PCI_CONFIG as u32,
            IOREQ_TYPE_TIMEOFFSET as u32,
            IOREQ_TYPE_INVALIDATE as u32,
            IOREQ_BUFFER_SLOT_NUM,
        ];
        let consts: Vec<String> = consts.iter().map(u32::to_string).collect();
        let expect = format!("32 {} {}\n", hex(ours.as_bytes()), consts.join(" "));
        assert_eq!(c, expect);
        // And decoding the C bytes gives back the request.
        let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&c[3 + 2 * i..5 + 2 * i], 16).unwrap()).collect();
        let raw = IoreqRaw::read_from_bytes(&bytes).unwrap();
        assert_eq!(raw.state(), STATE_IORESP_READY);
        assert_eq!(raw.vp_eport, 0x41424344);
        assert!(Ioreq::from_raw(&raw).df);
    }

    #[test]
    fn each_ioreq_flag_bit_matches_the_header() {
        // One field at a time, so a swapped pair of bits cannot cancel out.
        let c = run_c(
            r#"
    ioreq_t r;
    memset(&r, 0, sizeof r); r.state = 0xf; printf("%02x ", ((unsigned char *)&r)[30]);
    memset(&r, 0, sizeof r); r.data_is_ptr = 1; printf("%02x ", ((unsigned char *)&r)[30]);
    memset(&r, 0, sizeof r); r.dir = 1; printf("%02x ", ((unsigned char *)&r)[30]);
    memset(&r, 0, sizeof r); r.df = 1; printf("%02x ", ((unsigned char *)&r)[30]);
    memset(&r, 0, sizeof r); r.type = 0xff; printf("%02x %zu %zu\n", ((unsigned char *)&r)[31], offsetof(ioreq_t, vp_eport), offsetof(ioreq_t, count));
"#,
        );
        let ours = format!(
            "{:02x} {:02x} {:02x} {:02x} ff 24 16\n",
            FLAG_STATE_MASK, FLAG_DATA_IS_PTR, FLAG_DIR_READ, FLAG_DF
        );
        assert_eq!(c, ours);
    }

    #[test]
    fn buffered_layout_matches_the_installed_header() {
        let c = run_c(
            r#"
    buf_ioreq_t b; memset(&b, 0, sizeof b);
    b.type = IOREQ_TYPE_COPY; b.dir = 1; b.size = 3; b.addr = 0xabcde; b.data = 0xdeadbeef;
    printf("%zu ", sizeof b);
    for (size_t i = 0; i < sizeof b; i++) printf("%02x", ((unsigned char *)&b)[i]);
    printf(" %zu %zu %zu %zu\n", sizeof(buffered_iopage_t), offsetof(buffered_iopage_t, read_pointer),
           offsetof(buffered_iopage_t, write_pointer), offsetof(buffered_iopage_t, buf_ioreq));
"#,
        );
        let slot = BufSlot { kind: IoreqKind::Copy, is_read: true, size: 8, addr: 0xabcde, data: 0xdeadbeef };
        let raw = slot.encode();
        let expect = format!(
            "8 {} {} {} {} {}\n",
            hex(&raw.to_le_bytes()),
            BUF_PAGE_SIZE,
            BUF_READ_POINTER_OFFSET,
            BUF_WRITE_POINTER_OFFSET,
            BUF_SLOTS_OFFSET
        );
        assert_eq!(c, expect);
        assert_eq!(BufSlot::decode(raw), slot);
    }

    #[test]
    fn slot_offsets_match_the_header() {
        let c = run_c(
            r#"
    printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(ioreq_t), offsetof(ioreq_t, addr), offsetof(ioreq_t, data),
           offsetof(ioreq_t, count), offsetof(ioreq_t, size), offsetof(ioreq_t, vp_eport), offsetof(ioreq_t, type));
"#,
        );
        let ours = [
            SLOT_SIZE,
            offset_of!(IoreqRaw, addr),
            SLOT_DATA_OFFSET,
            offset_of!(IoreqRaw, count),
            offset_of!(IoreqRaw, size),
            SLOT_EPORT_OFFSET,
            offset_of!(IoreqRaw, kind),
        ];
        let ours: Vec<String> = ours.iter().map(usize::to_string).collect();
        assert_eq!(c, format!("{}\n", ours.join(" ")));
        // The state bitfield shares the byte before `type` (C cannot take
        // the offset of a bitfield; `each_ioreq_flag_bit_matches_the_header`
        // checks that byte 30 holds it).
        assert_eq!(SLOT_FLAGS_OFFSET, offset_of!(IoreqRaw, kind) - 1);
        assert_eq!(SLOT_FLAGS_OFFSET, 30);
    }

    #[test]
    fn kinds_decode_and_serialize_as_the_raw_byte() {
        for raw in 0..=u8::MAX {
            let kind = IoreqKind::from(raw);
            assert_eq!(u8::from(kind), raw);
            assert_eq!(serde_json::to_string(&kind).unwrap(), raw.to_string());
            assert_eq!(serde_json::from_str::<IoreqKind>(&raw.to_string()).unwrap(), kind);
        }
        assert_eq!(IoreqKind::from(IOREQ_TYPE_PCI_CONFIG), IoreqKind::PciConfig);
        assert_eq!(IoreqKind::from(3), IoreqKind::Unknown(3));
        assert_eq!(IoreqKind::Copy.name(), "mmio");
        let req = Ioreq {
            addr: 1,
            data: 2,
            count: 3,
            size: 4,
            data_is_ptr: false,
            is_read: true,
            df: false,
            kind: IoreqKind::TimeOffset,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"addr":1,"data":2,"count":3,"size":4,"data_is_ptr":false,"is_read":true,"df":false,"kind":7}"#
        );
        assert!(serde_json::from_str::<IoreqKind>("256").is_err());
    }

    #[test]
    fn buffered_size_codes() {
        for (code, size) in [(0u64, 1u32), (1, 2), (2, 4), (3, 8)] {
            assert_eq!(BufSlot::decode(code << 10).size, size);
        }
    }
}
