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
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `dir`: the device model supplies data.
pub const IOREQ_READ: u8 = 1;
/// `dir`: the guest supplies data.
pub const IOREQ_WRITE: u8 = 0;

pub const STATE_IOREQ_NONE: u8 = 0;
pub const STATE_IOREQ_READY: u8 = 1;
pub const STATE_IOREQ_INPROCESS: u8 = 2;
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

/// Bits of [`IoreqRaw::flags`].
pub const FLAG_STATE_MASK: u8 = 0x0f;
pub const FLAG_DATA_IS_PTR: u8 = 1 << 4;
pub const FLAG_DIR_READ: u8 = 1 << 5;
pub const FLAG_DF: u8 = 1 << 6;

/// `ioreq_t` exactly as in shared memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoreqRaw {
    pub addr: u64,
    pub data: u64,
    pub count: u32,
    pub size: u32,
    pub vp_eport: u32,
    pub pad: u16,
    /// Bits 0-3 state, 4 data_is_ptr, 5 dir, 6 df.
    pub flags: u8,
    pub kind: u8,
}

const _: () = assert!(std::mem::size_of::<IoreqRaw>() == 32);

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
    pub kind: u8,
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
            kind: r.kind,
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
            kind: self.kind,
        }
    }
}

/// One decoded slot of the buffered ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufSlot {
    pub kind: u8,
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
            kind: (w & 0xff) as u8,
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
        let w = (self.kind as u32) | ((self.is_read as u32) << 9) | (log2 << 10) | ((self.addr & 0xf_ffff) << 12);
        (w as u64) | ((self.data as u64) << 32)
    }
}

/// Offsets in `buffered_iopage`.
pub const BUF_READ_POINTER_OFFSET: usize = 0;
pub const BUF_WRITE_POINTER_OFFSET: usize = 4;
pub const BUF_SLOTS_OFFSET: usize = 8;
/// Size of `buffered_iopage`.
pub const BUF_PAGE_SIZE: usize = BUF_SLOTS_OFFSET + 8 * IOREQ_BUFFER_SLOT_NUM as usize;
const _: () = assert!(BUF_PAGE_SIZE == 4096);

/// Human-readable name of an ioreq type, for logs and traces.
pub const fn kind_name(kind: u8) -> &'static str {
    match kind {
        IOREQ_TYPE_PIO => "pio",
        IOREQ_TYPE_COPY => "mmio",
        IOREQ_TYPE_PCI_CONFIG => "pci_config",
        IOREQ_TYPE_TIMEOFFSET => "timeoffset",
        IOREQ_TYPE_INVALIDATE => "invalidate",
        _ => "unknown",
    }
}

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
                "#include <stdio.h>\n#include <stdint.h>\n#include <stddef.h>\n#include <string.h>\n#include <xen/xen.h>\n#include <xen/hvm/ioreq.h>\nint main(void) {{\n{body}\nreturn 0; }}\n"
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
            kind: IOREQ_TYPE_INVALIDATE,
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
        let slot = BufSlot { kind: IOREQ_TYPE_COPY, is_read: true, size: 8, addr: 0xabcde, data: 0xdeadbeef };
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
    fn buffered_size_codes() {
        for (code, size) in [(0u64, 1u32), (1, 2), (2, 4), (3, 8)] {
            assert_eq!(BufSlot::decode(code << 10).size, size);
        }
    }
}
