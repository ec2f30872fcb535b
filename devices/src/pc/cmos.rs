//! CMOS NVRAM behind ports 0x70 (index) and 0x71 (data): the bytes from
//! index 0x0E up, which Xen leaves to the device model.
//!
//! References: the IBM PC/AT CMOS map as the Bochs/SeaBIOS BIOSes read it,
//! QEMU's `hw/rtc/mc146818rtc.c` (index latch `& 0x7F`, port 0x70 reads
//! 0xFF, byte-wide registers) and `pc_cmos_init` in `hw/i386/pc.c` plus
//! `x86_rtc_set_cpus_count` for the initial contents. Xen's `arch/x86/hvm/rtc.c`
//! emulates the clock registers 0x00-0x0D itself: it forwards to us a port
//! 0x70 write whose index is 0x0E or more, and the 0x71 accesses made while
//! such an index is latched (the NMI-mask bit 7 still set, hence the mask).
//!
//! Initial contents for a [`CmosConfig`] (as QEMU, for a machine with no
//! floppy or IDE disk, which is what a direct-kernel-boot guest has):
//!
//! | index | value |
//! |---|---|
//! | 0x0A-0x0D | 0x26, 0x02, 0x00, 0x80 (QEMU's RTC register reset values) |
//! | 0x10, 0x12, 0x39 | 0 (no floppy, no IDE disk, no translation) |
//! | 0x14 | 0x06: FPU present, PS/2 mouse |
//! | 0x15/0x16 | base memory in KiB, at most 640 |
//! | 0x17/0x18 and 0x30/0x31 | KiB above 1 MiB, at most 0xFFFF |
//! | 0x34/0x35 | 64 KiB units above 16 MiB (below 4 GiB), at most 0xFFFF |
//! | 0x5B/0x5C/0x5D | RAM above 4 GiB in 64 KiB units, 0 when none |
//! | 0x5F | vCPUs - 1 (0 if more than 255: SeaBIOS then uses fw_cfg) |
//! | 0x3D | boot devices 1 and 2 (low, high nibble) |
//! | 0x38 | boot device 3 (high nibble); bit 0 set disables the floppy boot-sector check |
//! | 0x32 | century, BCD 0x20 |
//! | 0x2E/0x2F | checksum of 0x10-0x2D, high byte first |
//!
//! Boot device nibbles: `a`/`b` floppy 1, `c` disk 2, `d` CD-ROM 3, `n`
//! network 4; at most three (QEMU's `set_boot_dev`).
//!
//! Where we differ from QEMU: QEMU leaves the checksum bytes 0x2E/0x2F at 0
//! (SeaBIOS does not check them); we store the standard checksum. The
//! century comes from the host clock in QEMU; it is 0x20 here until 2100.
//! RAM above 4 GiB too large for 24 bits saturates at 0xFFFFFF instead of
//! wrapping. Indexes below 0x0E never reach us under Xen; if they do
//! (another hypervisor, tests), they are plain stored bytes without clock
//! behaviour. hvmloader rewrites 0x15-0x18 and 0x30-0x35 with its own view of
//! memory; writes are stored as they come and the checksum is not updated, as
//! on real hardware.
//!
//! The machine places the two ports ([`OFS_INDEX`], [`OFS_DATA`]) at 0x70
//! and 0x71 ([`crate::pc::layout`]).
//!
//! Saved state ([`CmosState`]): the latched index and the 128 bytes.

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::state::{DeviceState, StateError};

/// Device offset of the index port (0x70 on a PC).
pub const OFS_INDEX: u64 = 0;
/// Device offset of the data port (0x71 on a PC).
pub const OFS_DATA: u64 = 1;
/// Bytes of CMOS.
pub const CMOS_SIZE: usize = 128;
/// Index bits (bit 7 of an index write is the NMI mask).
pub const INDEX_MASK: u8 = 0x7f;
/// First index Xen forwards to the device model.
pub const XEN_FIRST_INDEX: u8 = 0x0e;

/// RTC status register A..D (Xen's).
pub const REG_STATUS_A: u8 = 0x0a;
/// Floppy drive types.
pub const REG_FLOPPY_TYPES: u8 = 0x10;
/// Hard disk types.
pub const REG_DISK_TYPES: u8 = 0x12;
/// Equipment byte.
pub const REG_EQUIPMENT: u8 = 0x14;
/// Base memory in KiB (u16).
pub const REG_BASE_MEM: u8 = 0x15;
/// Extended memory in KiB (u16).
pub const REG_EXT_MEM: u8 = 0x17;
/// Checksum of 0x10-0x2D (u16, big-endian).
pub const REG_CHECKSUM: u8 = 0x2e;
/// Extended memory in KiB, second copy (u16).
pub const REG_EXT_MEM2: u8 = 0x30;
/// Century, BCD.
pub const REG_CENTURY: u8 = 0x32;
/// Memory above 16 MiB in 64 KiB units (u16).
pub const REG_MEM_ABOVE_16M: u8 = 0x34;
/// Boot device 3 and the floppy-check flag.
pub const REG_BOOT_FLAGS: u8 = 0x38;
/// IDE translation.
pub const REG_DISK_TRANSLATION: u8 = 0x39;
/// Boot devices 1 and 2.
pub const REG_BOOT_ORDER: u8 = 0x3d;
/// Memory above 4 GiB in 64 KiB units (24 bits).
pub const REG_MEM_ABOVE_4G: u8 = 0x5b;
/// Number of vCPUs minus one.
pub const REG_SMP_COUNT: u8 = 0x5f;

/// Equipment: maths coprocessor present.
pub const EQUIPMENT_FPU: u8 = 0x02;
/// Equipment: PS/2 mouse present.
pub const EQUIPMENT_PS2_MOUSE: u8 = 0x04;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Why the CMOS could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmosError {
    #[error("setting the CMOS boot order from -boot order={order}: at most 3 devices")]
    TooManyBootDevices { order: String },
    #[error(
        "setting the CMOS boot order from -boot order={order}: '{device}' is not a PC boot device (a, b, c, d or n)"
    )]
    InvalidBootDevice { order: String, device: char },
}

/// The machine facts the initial contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmosConfig {
    /// RAM below 4 GiB, in bytes.
    pub ram_bytes_below_4g: u64,
    /// RAM above 4 GiB, in bytes.
    pub ram_bytes_above_4g: u64,
    /// `-boot order=` letters, e.g. "cda".
    pub boot_order: String,
    /// Number of vCPUs.
    pub smp_cpus: u32,
    /// QEMU's `fd_bootchk` (true unless `-no-fd-bootchk`).
    pub fd_bootchk: bool,
}

impl CmosConfig {
    /// A configuration with QEMU's defaults: boot order "cad", floppy check on.
    pub fn new(ram_bytes_below_4g: u64, ram_bytes_above_4g: u64, smp_cpus: u32) -> Self {
        Self { ram_bytes_below_4g, ram_bytes_above_4g, boot_order: "cad".to_string(), smp_cpus, fd_bootchk: true }
    }
}

fn boot_nibble(c: char) -> Option<u8> {
    match c {
        'a' | 'b' => Some(1),
        'c' => Some(2),
        'd' => Some(3),
        'n' => Some(4),
        _ => None,
    }
}

/// The CMOS NVRAM.
pub struct Cmos {
    index: u8,
    data: [u8; CMOS_SIZE],
}

impl Cmos {
    /// The NVRAM with QEMU's initial contents for `cfg`.
    ///
    /// # Errors
    /// If the boot order is not valid for a PC.
    pub fn new(cfg: &CmosConfig) -> Result<Self, CmosError> {
        let mut c = Self { index: 0, data: [0; CMOS_SIZE] };
        for (i, v) in [0x26u8, 0x02, 0x00, 0x80].into_iter().enumerate() {
            c.set(REG_STATUS_A + i as u8, v);
        }

        let below = cfg.ram_bytes_below_4g;
        c.set_u16(REG_BASE_MEM, (below / KIB).min(640) as u16);
        let ext = if below > MIB { ((below - MIB) / KIB).min(0xffff) } else { 0 };
        c.set_u16(REG_EXT_MEM, ext as u16);
        c.set_u16(REG_EXT_MEM2, ext as u16);
        let above_16m = if below > 16 * MIB { ((below - 16 * MIB) / (64 * KIB)).min(0xffff) } else { 0 };
        c.set_u16(REG_MEM_ABOVE_16M, above_16m as u16);
        let high = (cfg.ram_bytes_above_4g / (64 * KIB)).min(0xff_ffff);
        for (i, b) in high.to_le_bytes().into_iter().take(3).enumerate() {
            c.set(REG_MEM_ABOVE_4G + i as u8, b);
        }

        let cpus = if cfg.smp_cpus > 0xff { 0 } else { cfg.smp_cpus.saturating_sub(1) as u8 };
        c.set(REG_SMP_COUNT, cpus);

        let order = &cfg.boot_order;
        if order.chars().count() > 3 {
            return Err(CmosError::TooManyBootDevices { order: order.clone() });
        }
        let mut bds = [0u8; 3];
        for (slot, ch) in bds.iter_mut().zip(order.chars()) {
            *slot = boot_nibble(ch).ok_or(CmosError::InvalidBootDevice { order: order.clone(), device: ch })?;
        }
        let [b0, b1, b2] = bds;
        c.set(REG_BOOT_ORDER, b1 << 4 | b0);
        c.set(REG_BOOT_FLAGS, b2 << 4 | u8::from(!cfg.fd_bootchk));

        c.set(REG_EQUIPMENT, EQUIPMENT_FPU | EQUIPMENT_PS2_MOUSE);
        c.set(REG_FLOPPY_TYPES, 0);
        c.set(REG_DISK_TYPES, 0);
        c.set(REG_DISK_TRANSLATION, 0);
        c.set(REG_CENTURY, 0x20);

        let sum: u16 = (0x10..=0x2d).map(|i| u16::from(c.get(i))).sum();
        let [hi, lo] = sum.to_be_bytes();
        c.set(REG_CHECKSUM, hi);
        c.set(REG_CHECKSUM + 1, lo);
        Ok(c)
    }

    /// The byte at `index` (masked to 0-127).
    pub fn get(&self, index: u8) -> u8 {
        self.data.get(usize::from(index & INDEX_MASK)).copied().unwrap_or(0xff)
    }

    fn set(&mut self, index: u8, v: u8) {
        if let Some(b) = self.data.get_mut(usize::from(index & INDEX_MASK)) {
            *b = v;
        }
    }

    fn set_u16(&mut self, index: u8, v: u16) {
        let [lo, hi] = v.to_le_bytes();
        self.set(index, lo);
        self.set(index.wrapping_add(1), hi);
    }

    /// The latched index.
    pub fn index(&self) -> u8 {
        self.index
    }
}

impl BusDevice for Cmos {
    /// [`OFS_INDEX`] reads 0xFF, as in QEMU; [`OFS_DATA`] reads the byte at
    /// the latched index. Wider accesses are handled byte by byte.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(OFS_DATA) => self.get(self.index),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(OFS_INDEX) => self.index = v & INDEX_MASK,
                Some(OFS_DATA) => self.set(self.index, v),
                _ => {}
            }
        }
    }
}

/// The saved state of [`Cmos`]. `data` is a `Vec` because serde has no
/// 128-element arrays; restore checks its length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmosState {
    index: u8,
    data: Vec<u8>,
}

impl DeviceState for Cmos {
    type State = CmosState;
    const KIND: &'static str = "cmos";
    const VERSION: u32 = 1;

    fn save(&self) -> CmosState {
        CmosState { index: self.index, data: self.data.to_vec() }
    }

    fn restore(&mut self, state: CmosState) -> Result<(), StateError> {
        let got = state.data.len();
        let data: [u8; CMOS_SIZE] = state.data.try_into().map_err(|_| {
            StateError::malformed(Self::KIND, format!("expected {CMOS_SIZE} bytes of NVRAM, got {got}"))
        })?;
        if state.index & !INDEX_MASK != 0 {
            return Err(StateError::malformed(
                Self::KIND,
                format!("index {:#04x} is above {INDEX_MASK:#04x} (bit 7 is the NMI mask, never latched)", state.index),
            ));
        }
        self.index = state.index;
        self.data = data;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::pc::layout;
    use std::sync::{Arc, Mutex};

    const GIB: u64 = 1024 * MIB;
    const INDEX_PORT: u64 = layout::PORT_CMOS as u64;
    const DATA_PORT: u64 = INDEX_PORT + OFS_DATA;

    /// The CMOS at its layout ports.
    fn register(bus: &mut Bus, cfg: &CmosConfig) -> Result<Arc<Mutex<Cmos>>, CmosError> {
        let dev = Arc::new(Mutex::new(Cmos::new(cfg)?));
        bus.register_pio(INDEX_PORT, layout::LEN_CMOS.into(), "cmos", dev.clone(), 0).unwrap();
        Ok(dev)
    }

    fn read_cmos(bus: &mut Bus, index: u8) -> u8 {
        bus.pio_write(INDEX_PORT, &[index]);
        let mut v = [0u8; 1];
        bus.pio_read(DATA_PORT, &mut v);
        v[0]
    }

    fn dump(cfg: &CmosConfig) -> [u8; CMOS_SIZE] {
        let mut bus = Bus::new();
        register(&mut bus, cfg).unwrap();
        let mut out = [0u8; CMOS_SIZE];
        for (i, b) in out.iter_mut().enumerate() {
            *b = read_cmos(&mut bus, i as u8);
        }
        out
    }

    #[test]
    fn initial_contents_for_256_mib_one_cpu() {
        let mut cfg = CmosConfig::new(256 * MIB, 0, 1);
        cfg.boot_order = "cda".into();
        let c = dump(&cfg);
        let mut expect = [0u8; CMOS_SIZE];
        expect[0x0a..0x0e].copy_from_slice(&[0x26, 0x02, 0x00, 0x80]);
        expect[0x14] = 0x06;
        expect[0x15] = 0x80; // 640 = 0x280
        expect[0x16] = 0x02;
        expect[0x17] = 0xff; // 255 MiB = 261120 KiB, capped at 0xffff
        expect[0x18] = 0xff;
        expect[0x30] = 0xff;
        expect[0x31] = 0xff;
        expect[0x34] = 0x00; // 240 MiB / 64 KiB = 3840 = 0x0f00
        expect[0x35] = 0x0f;
        expect[0x32] = 0x20;
        expect[0x3d] = 0x32; // c=2, d=3
        expect[0x38] = 0x10; // third device a = 1; floppy check on
        let sum: u16 = expect[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
        expect[0x2e] = (sum >> 8) as u8;
        expect[0x2f] = sum as u8;
        assert_eq!(sum, 0x06 + 0x80 + 0x02 + 0xff + 0xff);
        assert_eq!(c.to_vec(), expect.to_vec());
    }

    #[test]
    fn memory_sizes_and_high_ram() {
        let c = dump(&CmosConfig::new(0xf000_0000, 0, 4));
        assert_eq!(u16::from_le_bytes([c[0x34], c[0x35]]), ((0xf000_0000 - 16 * MIB) / (64 * KIB)) as u16);
        assert_eq!(c[0x5b..0x5e], [0, 0, 0], "no RAM above 4 GiB: must read 0 (SeaBIOS adds an e820 entry from it)");
        assert_eq!(c[0x5f], 3);
        let c = dump(&CmosConfig::new(3 * GIB, 5 * GIB, 2));
        let units = 5 * GIB / (64 * KIB); // 0x14000
        assert_eq!(c[0x5b..0x5e], [units as u8, (units >> 8) as u8, (units >> 16) as u8]);
        assert_eq!(c[0x5f], 1);
        // Small machines.
        let c = dump(&CmosConfig::new(512 * KIB, 0, 1));
        assert_eq!(u16::from_le_bytes([c[0x15], c[0x16]]), 512);
        assert_eq!(c[0x17..0x19], [0, 0]);
        assert_eq!(c[0x34..0x36], [0, 0]);
        let c = dump(&CmosConfig::new(8 * MIB, 0, 1));
        assert_eq!(u16::from_le_bytes([c[0x17], c[0x18]]), 7 * 1024);
        // Huge high RAM saturates.
        let c = dump(&CmosConfig::new(3 * GIB, 1 << 50, 1));
        assert_eq!(c[0x5b..0x5e], [0xff; 3]);
    }

    #[test]
    fn cpu_count_over_255_is_zero() {
        assert_eq!(dump(&CmosConfig::new(GIB, 0, 256))[0x5f], 0);
        assert_eq!(dump(&CmosConfig::new(GIB, 0, 255))[0x5f], 254);
        assert_eq!(dump(&CmosConfig::new(GIB, 0, 0))[0x5f], 0);
    }

    #[test]
    fn boot_order_nibbles_and_errors() {
        let mk = |order: &str, chk: bool| {
            let mut c = CmosConfig::new(GIB, 0, 1);
            c.boot_order = order.into();
            c.fd_bootchk = chk;
            Cmos::new(&c)
        };
        let c = mk("n", false).unwrap();
        assert_eq!((c.get(0x3d), c.get(0x38)), (0x04, 0x01));
        let c = mk("", true).unwrap();
        assert_eq!((c.get(0x3d), c.get(0x38)), (0, 0));
        let c = mk("bdn", true).unwrap();
        assert_eq!((c.get(0x3d), c.get(0x38)), (0x31, 0x40));
        let e = mk("cdan", true).err().unwrap();
        assert_eq!(e, CmosError::TooManyBootDevices { order: "cdan".into() });
        let e = mk("cx", true).err().unwrap();
        assert_eq!(e, CmosError::InvalidBootDevice { order: "cx".into(), device: 'x' });
        assert!(e.to_string().contains("-boot order=cx"), "{e}");
        assert!(mk("ééé", true).is_err());
    }

    #[test]
    fn index_is_masked_and_writes_are_stored() {
        let mut bus = Bus::new();
        let d = register(&mut bus, &CmosConfig::new(GIB, 0, 1)).unwrap();
        // Index with the NMI-mask bit set, as Xen forwards it.
        bus.pio_write(INDEX_PORT, &[0x80 | 0x5f]);
        assert_eq!(d.lock().unwrap().index(), 0x5f);
        let mut v = [0u8; 1];
        bus.pio_read(DATA_PORT, &mut v);
        assert_eq!(v, [0]);
        bus.pio_write(DATA_PORT, &[7]);
        assert_eq!(read_cmos(&mut bus, 0x5f), 7);
        // Port 0x70 reads 0xFF.
        bus.pio_read(INDEX_PORT, &mut v);
        assert_eq!(v, [0xff]);
        // Indexes below 0x0E are plain bytes here.
        bus.pio_write(INDEX_PORT, &[0x00]);
        bus.pio_write(DATA_PORT, &[0x59]);
        assert_eq!(read_cmos(&mut bus, 0x00), 0x59);
        assert_eq!(read_cmos(&mut bus, 0x0b), 0x02);
        // A word write to 0x70 is index then data.
        bus.pio_write(INDEX_PORT, &[0x40, 0xab]);
        assert_eq!(read_cmos(&mut bus, 0x40), 0xab);
        let mut w = [0u8; 2];
        bus.pio_write(INDEX_PORT, &[0x40]);
        bus.pio_read(INDEX_PORT, &mut w);
        assert_eq!(w, [0xff, 0xab]);
    }

    /// hvmloader's `cmos_write_memory_size` for 1 GiB below 4 GiB, via Xen.
    #[test]
    fn golden_hvmloader_memory_writes() {
        let mut bus = Bus::new();
        let d = register(&mut bus, &CmosConfig::new(2 * GIB, 0, 2)).unwrap();
        assert_eq!(d.lock().unwrap().get(0x35), 0x7f, "the DM's own view first");
        let before = d.lock().unwrap().get(REG_CHECKSUM);
        let base = 640u16;
        let ext = ((GIB - MIB) / KIB).min(0xffff) as u16;
        let above16 = ((GIB - 16 * MIB) / (64 * KIB)) as u16;
        for (idx, v) in [
            (0x15u8, base as u8),
            (0x16, (base >> 8) as u8),
            (0x17, ext as u8),
            (0x18, (ext >> 8) as u8),
            (0x30, ext as u8),
            (0x31, (ext >> 8) as u8),
            (0x34, above16 as u8),
            (0x35, (above16 >> 8) as u8),
        ] {
            bus.pio_write(INDEX_PORT, &[idx]);
            bus.pio_write(DATA_PORT, &[v]);
        }
        assert_eq!(read_cmos(&mut bus, 0x34), 0x00);
        assert_eq!(read_cmos(&mut bus, 0x35), 0x3f);
        assert_eq!(read_cmos(&mut bus, 0x17), 0xff);
        assert_eq!(d.lock().unwrap().get(REG_CHECKSUM), before, "checksum is not recomputed");
        // SeaBIOS then reads the boot order and CPU count.
        assert_eq!(read_cmos(&mut bus, 0x3d), 0x12, "c, a");
        assert_eq!(read_cmos(&mut bus, 0x38), 0x30, "d third, floppy check on");
        assert_eq!(read_cmos(&mut bus, 0x5f), 1);
        assert_eq!(read_cmos(&mut bus, 0x5b), 0);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let mut bus = Bus::new();
        let d = register(&mut bus, &CmosConfig::new(GIB, 0, 1)).unwrap();
        for len in [1usize, 2, 3, 4, 8] {
            for port in [0x6fu64, 0x70, 0x71, 0x72] {
                let mut v = vec![0u8; len];
                bus.pio_read(port, &mut v);
                bus.pio_write(port, &vec![0xff; len]);
            }
        }
        let mut c = d.lock().unwrap();
        let mut v = [0u8; 8];
        c.read(u64::MAX, &mut v);
        assert_eq!(v, [0xff; 8]);
        c.write(u64::MAX, &[1; 8]);
        c.write(0, &[0xff]);
        assert_eq!(c.index(), 0x7f);
        assert_eq!(c.get(0xff), c.get(0x7f));
    }

    crate::state_conformance!(state_conformance, Cmos::new(&CmosConfig::new(GIB, 0, 1)).unwrap(), |d: &mut Cmos| {
        d.write(0, &[0x50]);
        d.write(1, &[0x99]);
    });

    #[test]
    fn restore_checks_the_length_and_index() {
        let mut c = Cmos::new(&CmosConfig::new(GIB, 0, 1)).unwrap();
        let before = c.save();
        let e = c.restore(CmosState { index: 0, data: vec![1, 2, 3] }).unwrap_err();
        assert!(e.to_string().contains("cmos") && e.to_string().contains("expected 128 bytes"), "{e}");
        let e = c.restore(CmosState { index: 0x80, data: vec![0; CMOS_SIZE] }).unwrap_err();
        assert!(e.to_string().contains("index 0x80"), "{e}");
        assert_eq!(c.save(), before);
    }
}
