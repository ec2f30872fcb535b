//! The ACPI CPU hotplug device of QEMU's PIIX4 ("legacy" CPU hotplug): the
//! vCPU presence bitmap the DSDT reads, and the GPE that tells the guest to
//! read it again.
//!
//! Facts (`xen-toolstack.md` 2.6; Xen `tools/libacpi/mk_dsdt.c` and
//! `xen/include/public/arch-x86/guest-acpi.h`; QEMU `hw/acpi/cpu_hotplug.c`
//! and `hw/acpi/piix4.c`):
//!
//! * hvmloader's DSDT for qemu-xen declares `OperationRegion PRST, SystemIO,
//!   0xAF00, 16` (`XEN_ACPI_CPU_MAP`, `XEN_ACPI_CPU_MAP_LEN` = (128 + 7) / 8)
//!   with a byte-access field `PRS`: bit n set = vCPU n present. Its
//!   `\_GPE._E02` (`XEN_ACPI_GPE0_CPUHP_BIT` = 2) calls `\_SB.PRSC`, which
//!   compares each bit with the processor's MADT flag and `Notify`s the
//!   processor (1 = device check for a new CPU, 3 = eject for a gone one);
//! * QEMU maps 32 bytes there (`ACPI_GPE_PROC_LEN`, at
//!   `PIIX4_CPU_HOTPLUG_IO_BASE`), byte accesses only, and sets the bits of
//!   the `-smp` boot CPUs at start;
//! * a hot-add sets the CPU's bit, then raises GPE0 status bit 2
//!   (`ACPI_CPU_HOTPLUG_STATUS` = 4) on the PM function, which drives the
//!   SCI ([`crate::pc::piix4_pm`]). Here the GPE goes through an injected
//!   [`GpeSink`], so this file stays a plain state machine;
//! * writes are ignored. A write of 0 at offset 0 is how newer QEMU lets
//!   firmware switch to its "modern" CPU hotplug interface; Xen's DSDT never
//!   does it, and we ignore it like every other write (logged, rate-limited).
//!
//! What the guest reads: the window is 32 bytes, as in QEMU (so the same
//! ports are claimed from Xen). A wider access is served byte by byte, the
//! way QEMU's memory core splits accesses to a region whose maximum access
//! size is 1, so a word read at 0xAF00 returns bytes 0 and 1. Bytes 16-31
//! (vCPUs 128-255, above Xen's `HVM_MAX_VCPUS`) always read 0; offsets past
//! the window (reachable only by calling the device directly) read 0xFF, as
//! unclaimed ports do. Bits at or above `maxcpus` are never set.
//!
//! Saved state ([`CpuHotplugState`]): the present vCPUs, ascending. A restore
//! refuses an index at or above this machine's `maxcpus`, duplicates, and a
//! list lacking a boot vCPU (libxl restarts the DM with `-smp` counting the
//! vCPUs online at save time, so the saved set always covers them).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::pc::piix4_pm::GpeSink;
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// Length of the window QEMU maps (`ACPI_GPE_PROC_LEN`).
pub const MAP_LEN: u64 = 32;
/// How much of it Xen's DSDT reads (`XEN_ACPI_CPU_MAP_LEN`).
pub const XEN_MAP_LEN: u64 = 16;
/// Most vCPUs an HVM guest may have (`HVM_MAX_VCPUS`).
pub const MAX_VCPUS: u32 = 128;
/// GPE0 status bit of a CPU hotplug event (bit 2, `ACPI_CPU_HOTPLUG_STATUS`).
pub const GPE_CPU_HOTPLUG: u8 = 1 << 2;

const MAP_BYTES: usize = MAP_LEN as usize;

/// The vCPU counts a machine was started with are not a possible pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CPU hotplug: {boot} boot vCPUs and at most {max} are not possible (1 <= boot <= max <= {MAX_VCPUS})")]
pub struct BadVcpuCounts {
    pub boot: u32,
    pub max: u32,
}

/// Why a vCPU cannot be hot-added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlugError {
    #[error("vCPU {index} is not below maxcpus ({max})")]
    OutOfRange { index: u32, max: u32 },
    #[error("vCPU {index} is already present")]
    AlreadyPresent { index: u32 },
}

/// The saved state of [`CpuHotplug`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuHotplugState {
    /// Indices of the present vCPUs, ascending.
    present: Vec<u32>,
}

/// The presence bitmap and where its GPE goes.
pub struct CpuHotplug {
    present: [u8; MAP_BYTES],
    boot: u32,
    max: u32,
    gpe: Arc<dyn GpeSink>,
    log: RateLimit,
}

impl CpuHotplug {
    /// The bitmap of a guest started with vCPUs `0..boot` of at most `max`
    /// (`-smp boot,maxcpus=max`), raising its GPE on `gpe`.
    ///
    /// # Errors
    /// Unless `1 <= boot <= max <= 128`.
    pub fn new(boot: u32, max: u32, gpe: Arc<dyn GpeSink>) -> Result<Self, BadVcpuCounts> {
        if boot == 0 || boot > max || max > MAX_VCPUS {
            return Err(BadVcpuCounts { boot, max });
        }
        let mut dev = Self { present: [0; MAP_BYTES], boot, max, gpe, log: RateLimit::per_second() };
        for i in 0..boot {
            dev.set_bit(i);
        }
        Ok(dev)
    }

    /// vCPUs started at boot.
    pub const fn boot_vcpus(&self) -> u32 {
        self.boot
    }

    /// The `maxcpus` limit.
    pub const fn max_vcpus(&self) -> u32 {
        self.max
    }

    /// Whether vCPU `index` is present.
    pub fn is_present(&self, index: u32) -> bool {
        let (byte, bit) = Self::position(index);
        self.present.get(byte).is_some_and(|b| b & bit != 0)
    }

    /// The present vCPUs, ascending.
    pub fn present(&self) -> Vec<u32> {
        (0..self.max).filter(|&i| self.is_present(i)).collect()
    }

    /// Hot-adds vCPU `index`: sets its bit, then raises the CPU hotplug GPE
    /// (in that order: the guest's `PRSC` must find the bit set).
    ///
    /// # Errors
    /// `index` not below `maxcpus`, or already present; nothing changes then.
    pub fn plug(&mut self, index: u32) -> Result<(), PlugError> {
        if index >= self.max {
            return Err(PlugError::OutOfRange { index, max: self.max });
        }
        if self.is_present(index) {
            return Err(PlugError::AlreadyPresent { index });
        }
        self.set_bit(index);
        self.gpe.raise_gpe(GPE_CPU_HOTPLUG);
        Ok(())
    }

    fn position(index: u32) -> (usize, u8) {
        let byte = usize::try_from(index / 8).unwrap_or(usize::MAX);
        (byte, 1u8 << (index % 8))
    }

    fn set_bit(&mut self, index: u32) {
        let (byte, bit) = Self::position(index);
        if let Some(b) = self.present.get_mut(byte) {
            *b |= bit;
        }
    }
}

impl BusDevice for CpuHotplug {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|o| usize::try_from(o).ok());
            *b = at.and_then(|o| self.present.get(o)).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(suppressed) = self.log.check() {
            let modern_switch = offset == 0 && data.first() == Some(&0);
            tracing::debug!(
                offset,
                len = data.len(),
                modern_switch,
                suppressed,
                "write to the CPU presence bitmap ignored (it is read-only; QEMU's modern-hotplug switch is not offered)"
            );
        }
    }
}

impl DeviceState for CpuHotplug {
    type State = CpuHotplugState;
    const KIND: &'static str = "acpi-cpu-hotplug";
    const VERSION: u32 = 1;

    fn save(&self) -> CpuHotplugState {
        CpuHotplugState { present: self.present() }
    }

    fn restore(&mut self, state: CpuHotplugState) -> Result<(), StateError> {
        let bad = |why: String| Err(StateError::malformed(Self::KIND, why));
        if state.present.windows(2).any(|w| matches!(w, [a, b] if a >= b)) {
            return bad("the present vCPUs are not listed once each, ascending".into());
        }
        if let Some(&i) = state.present.iter().find(|&&i| i >= self.max) {
            return bad(format!("vCPU {i} is present, but this machine has maxcpus {}", self.max));
        }
        if let Some(i) = (0..self.boot).find(|i| !state.present.contains(i)) {
            return bad(format!("boot vCPU {i} (-smp {}) is missing", self.boot));
        }
        let mut present = [0u8; MAP_BYTES];
        for &i in &state.present {
            let (byte, bit) = Self::position(i);
            if let Some(b) = present.get_mut(byte) {
                *b |= bit;
            }
        }
        self.present = present;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::pc::layout;
    use std::sync::Mutex;

    /// Records every GPE raised.
    #[derive(Default)]
    struct FakeGpe(Mutex<Vec<u8>>);

    impl GpeSink for FakeGpe {
        fn raise_gpe(&self, bits: u8) {
            self.0.lock().unwrap().push(bits);
        }
    }

    const BASE: u64 = layout::PORT_CPU_HOTPLUG as u64;

    fn setup(boot: u32, max: u32) -> (Bus, Arc<Mutex<CpuHotplug>>, Arc<FakeGpe>) {
        let gpe = Arc::new(FakeGpe::default());
        let dev = Arc::new(Mutex::new(CpuHotplug::new(boot, max, gpe.clone()).unwrap()));
        let mut bus = Bus::new();
        bus.register_pio(BASE, layout::LEN_CPU_HOTPLUG.into(), "cpu hotplug", dev.clone(), 0).unwrap();
        (bus, dev, gpe)
    }

    fn map(bus: &mut Bus) -> Vec<u8> {
        (0..MAP_LEN)
            .map(|o| {
                let mut b = [0u8; 1];
                bus.pio_read(BASE + o, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn the_boot_vcpus_are_present_at_start() {
        let (mut bus, dev, gpe) = setup(1, 1);
        let mut want = vec![0u8; 32];
        want[0] = 0x01;
        assert_eq!(map(&mut bus), want);
        let (mut bus, dev4, _) = setup(4, 8);
        want[0] = 0x0f;
        assert_eq!(map(&mut bus), want, "-smp 4,maxcpus=8");
        let (mut bus, _, _) = setup(10, 128);
        want[0] = 0xff;
        want[1] = 0x03;
        assert_eq!(map(&mut bus), want, "-smp 10,maxcpus=128");
        assert_eq!(dev4.lock().unwrap().present(), vec![0, 1, 2, 3]);
        assert_eq!(dev.lock().unwrap().boot_vcpus(), 1);
        assert!(gpe.0.lock().unwrap().is_empty(), "no GPE at start");
    }

    #[test]
    fn impossible_counts_are_refused() {
        let gpe: Arc<dyn GpeSink> = Arc::new(FakeGpe::default());
        for (boot, max) in [(0, 1), (2, 1), (1, 129), (129, 129), (0, 0)] {
            let e = CpuHotplug::new(boot, max, gpe.clone()).err();
            assert_eq!(e, Some(BadVcpuCounts { boot, max }));
        }
        assert!(CpuHotplug::new(128, 128, gpe).is_ok());
    }

    #[test]
    fn a_hot_add_sets_the_bit_then_raises_gpe_bit_2() {
        let (mut bus, dev, gpe) = setup(2, 4);
        dev.lock().unwrap().plug(2).unwrap();
        assert_eq!(map(&mut bus)[0], 0x07);
        assert_eq!(*gpe.0.lock().unwrap(), vec![0x04]);
        dev.lock().unwrap().plug(3).unwrap();
        assert_eq!(map(&mut bus)[0], 0x0f);
        assert_eq!(*gpe.0.lock().unwrap(), vec![0x04, 0x04]);
        assert_eq!(dev.lock().unwrap().present(), vec![0, 1, 2, 3]);
        // Above maxcpus, or already there: refused, nothing raised.
        let mut d = dev.lock().unwrap();
        assert_eq!(d.plug(4), Err(PlugError::OutOfRange { index: 4, max: 4 }));
        assert_eq!(d.plug(u32::MAX), Err(PlugError::OutOfRange { index: u32::MAX, max: 4 }));
        assert_eq!(d.plug(0), Err(PlugError::AlreadyPresent { index: 0 }));
        assert_eq!(d.plug(3), Err(PlugError::AlreadyPresent { index: 3 }));
        drop(d);
        assert_eq!(gpe.0.lock().unwrap().len(), 2);
        assert_eq!(map(&mut bus)[0], 0x0f);
    }

    #[test]
    fn hot_adds_land_in_the_right_byte_and_bit() {
        let (mut bus, dev, _) = setup(1, 128);
        for i in [7u32, 8, 63, 127] {
            dev.lock().unwrap().plug(i).unwrap();
        }
        let m = map(&mut bus);
        assert_eq!(&m[..16], &[0x81, 0x01, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(&m[16..], &[0u8; 16], "vCPUs 128-255 do not exist under Xen");
    }

    #[test]
    fn wide_reads_are_served_byte_by_byte_and_past_the_window_read_ff() {
        let (mut bus, dev, _) = setup(9, 16);
        let mut w = [0u8; 2];
        bus.pio_read(BASE, &mut w);
        assert_eq!(w, [0xff, 0x01]);
        let mut d = [0u8; 4];
        bus.pio_read(BASE, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0000_01ff);
        bus.pio_read(BASE + 30, &mut w);
        assert_eq!(w, [0, 0]);
        // Past the window: the bus does not route there, the device itself
        // answers 0xFF, even at the end of the address space.
        let mut dv = dev.lock().unwrap();
        let mut q = [0u8; 4];
        dv.read(30, &mut q);
        assert_eq!(q, [0, 0, 0xff, 0xff]);
        dv.read(u64::MAX - 1, &mut q);
        assert_eq!(q, [0xff; 4]);
        let mut big = vec![0u8; 64];
        dv.read(0, &mut big);
        assert_eq!(&big[..2], &[0xff, 0x01]);
        assert!(big[32..].iter().all(|&b| b == 0xff));
    }

    #[test]
    fn writes_change_nothing_including_the_modern_switch() {
        let (mut bus, dev, gpe) = setup(2, 8);
        let before = map(&mut bus);
        bus.pio_write(BASE, &[0]);
        for (off, data) in [(0u64, vec![0xffu8]), (1, vec![0xff, 0xff]), (4, vec![0; 4]), (31, vec![0xff])] {
            bus.pio_write(BASE + off, &data);
        }
        dev.lock().unwrap().write(u64::MAX, &[0xff; 8]);
        assert_eq!(map(&mut bus), before);
        assert!(gpe.0.lock().unwrap().is_empty());
    }

    #[test]
    fn restore_refuses_impossible_sets() {
        let (_, dev, gpe) = setup(2, 4);
        let mut d = dev.lock().unwrap();
        let good = d.save();
        assert_eq!(good, CpuHotplugState { present: vec![0, 1] });
        let refuse = |d: &mut CpuHotplug, present: Vec<u32>, what: &str| {
            let e = d.restore(CpuHotplugState { present }).unwrap_err().to_string();
            assert!(e.contains("acpi-cpu-hotplug") && e.contains(what), "{e}");
        };
        refuse(&mut d, vec![0, 1, 4], "maxcpus 4");
        refuse(&mut d, vec![0, 1, u32::MAX], "maxcpus 4");
        refuse(&mut d, vec![0, 1, 1], "once each");
        refuse(&mut d, vec![1, 0], "once each");
        refuse(&mut d, vec![0], "boot vCPU 1");
        refuse(&mut d, vec![], "boot vCPU 0");
        assert_eq!(d.save(), good, "refused restores change nothing");
        d.restore(CpuHotplugState { present: vec![0, 1, 3] }).unwrap();
        assert!(d.is_present(3) && !d.is_present(2));
        assert!(gpe.0.lock().unwrap().is_empty(), "a restore raises no GPE");
        // Payloads that do not decode are refused before the device is asked.
        use crate::state::AnyDeviceState;
        for bad in [&br#"{"present": [0, -1]}"#[..], br#"{"present": "0,1"}"#, br#"{"present": [0], "x": 1}"#] {
            assert!(d.restore_payload(1, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(d.present(), vec![0, 1, 3]);
    }

    crate::state_conformance!(
        state_conformance,
        CpuHotplug::new(1, 8, Arc::new(FakeGpe::default())).unwrap(),
        |d: &mut CpuHotplug| {
            d.plug(5).unwrap();
        }
    );
}
