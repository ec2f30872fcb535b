//! The PIIX4 power-management function (82371AB function 3), 00:01.3, with
//! its ACPI PM I/O block, the APM control ports 0xB2/0xB3 and the GPE0 block
//! at 0xAFE0.
//!
//! References: Intel 82371AB PIIX4 datasheet (order 290562) section 3.3
//! (power-management configuration: PMBA 0x40, PMREGMISC 0x80) and 7.x (PM
//! I/O registers); ACPI 1.0b/3.0 section 4.7 (PM1_CNT: SCI_EN bit 0,
//! SLP_TYP bits 10-12, SLP_EN bit 13; the SMI_CMD handshake); QEMU's
//! `hw/acpi/piix4.c`, `hw/acpi/core.c` and `hw/isa/apm.c` for the values a
//! guest sees:
//!
//! * 8086:7113, revision 3, class 0x0680, header type 0, interrupt pin 1
//!   (INTA), STATUS 0x0280, subsystem 1af4:1100;
//! * PMBA (0x40) starts at 0x00000001; PMREGMISC (0x80) bit 0 (PMIOSE)
//!   enables the 64-byte PM I/O block at `PMBA & 0xFFC0`. It is reported by
//!   [`PciFunction::regions`] as region 0, so the bus claims it;
//! * 0x5B = 0x02 (QEMU marks SMM "already initialised"), 0x5F/0x63/0x67
//!   reflect the LPT and COM ports present (QEMU's `piix4_pm_machine_ready`),
//!   SMBus base 0x90 = `smb_io_base | 1`, SMBus host config 0xD2 = 0x09.
//!
//! **Inside the PM block, only PM1a_CNT (+4, 2 bytes) is ours under Xen**:
//! Xen's own handlers answer PM1a_STS/EN (+0) and PM_TMR (+8) before any
//! ioreq server is asked, once hvmloader has moved them to 0xB000
//! (`HVM_PARAM_ACPI_IOPORTS_LOCATION` = 1). If those offsets ever reach us
//! (PMBA elsewhere), they read 0 and ignore writes; the other offsets read
//! all-ones, as unassigned ports do in QEMU.
//!
//! PM1a_CNT: SLP_EN is never stored (reads 0). A write that sets SLP_EN acts
//! on SLP_TYP, with the values of Xen's DSDT/SSDTs (`_S3` = 1, `_S4` = `_S5`
//! = 0, `tools/libacpi/ssdt_s3.asl`, `ssdt_s4.asl`):
//! * 0 (S5 and Xen's S4): [`Hypervisor::shutdown`] with
//!   [`ShutdownReason::Poweroff`], before the write returns;
//! * 2 (QEMU's default `s4_val`, unused by Xen's tables): also power-off,
//!   as QEMU does (it adds a SUSPEND_DISK event);
//! * 1 (S3): QEMU on Xen sets `HVM_PARAM_ACPI_S_STATE` = 3, which the
//!   [`Hypervisor`] trait does not cover (and `SHUTDOWN_suspend` would be
//!   wrong: it means "suspended for save"). S3 goes to an optional
//!   [`SuspendControl`] given with [`Piix4Pm::set_suspend_control`]; without
//!   one it is logged and ignored, and the guest sees the write complete
//!   (Linux would then wait for WAK_STS; disable S3 with `acpi_s3=0`);
//! * other values: ignored, as in QEMU.
//!
//! Where we differ from QEMU: a byte write to +4 keeps the high byte of
//! PM1a_CNT (QEMU zero-extends it; hardware merges); PMBA bit 0 is
//! read-only 1 (QEMU lets a guest clear it, hardware does not); the SMBus
//! controller (0x90/0xD2) is not emulated, so its I/O window is never
//! decoded (hvmloader disables it with 0xD2 = 0 anyway); APM writes other
//! than 0xF0/0xF1 raise no SMI (there is no SMM under Xen).
//!
//! GPE0 and the SCI: a hotplug device raises status bits through
//! [`GpeSink`] (QEMU's `acpi_send_gpe_event`; today only the CPU hotplug
//! device, [`crate::pc::cpu_hotplug`], with bit 2 = value 4), and the SCI
//! (ISA IRQ 9, level, an injected [`IrqLine`]) is high while
//! `GPE0_STS[0] & GPE0_EN[0]` is non-zero (QEMU's `acpi_update_sci`: only
//! the first status and enable bytes count, and SCI_EN is not looked at).
//! The guest clears status by writing 1s, and the SCI drops. Where we differ
//! from QEMU: the line is driven only when that level changes (QEMU drives
//! it after every GPE0 write). Xen's own PM1a events (timer, power button)
//! drive the same ISA IRQ 9 from inside Xen, with one shared assertion bit;
//! driving it only on our own edges means a guest that never sees a GPE
//! (every guest without hotplug) gets no SCI call from here at all, exactly
//! as before GPEs were raised, and we never lower the line Xen raised
//! unless our own GPE was pending.
//!
//! APM (0xB2 control, 0xB3 status) and GPE0 (0xAFE0: 2 status bytes,
//! write-1-to-clear, then 2 enable bytes) are byte registers; wider accesses
//! are split into bytes, as QEMU's memory core does for them. Writing 0xF1
//! to 0xB2 sets SCI_EN, 0xF0 clears it; hvmloader BUG()s unless SCI_EN reads
//! 1 after writing 0xF1.
//!
//! The machine places the function, the APM ports ([`Apm`]) and the GPE0
//! block ([`Gpe0`]) from [`crate::pc::layout`]; the PM block goes wherever
//! the guest programs PMBA (0xB000 under hvmloader). QEMU leaves this
//! function out with `-no-acpi`; so does the machine.
//!
//! Saved state ([`Piix4PmState`]): the configuration image (with PMBA and
//! PMREGMISC, so the PM block comes back where the guest put it) and the I/O
//! registers ([`PmRegs`]). The SCI level is not saved: after a restore it is
//! recomputed from GPE0 and adopted without driving the line (Xen saved the
//! line with the domain).

use crate::sync::lock;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::bus::{BusDevice, PciFunction, PciRegion, Space};
use crate::hv::{Hypervisor, IrqLine, ShutdownReason};
use crate::pci_config::{
    PciConfig, PciConfigState, PciIdentity, INTERRUPT_PIN, QEMU_SUBSYSTEM, QEMU_SUBSYSTEM_VENDOR, STATUS,
    STATUS_DEVSEL_MEDIUM, STATUS_FAST_BACK,
};
use crate::ratelimit::RateLimit;
use crate::state::{DeviceState, StateError};

/// PIIX4 power management (82371AB function 3).
pub const DEVICE_ID_82371AB_3: u16 = 0x7113;
/// QEMU's revision of the function.
pub const REVISION: u8 = 0x03;

/// PM base address (u32): bits 15-6 the base, bit 0 reads 1 (I/O).
pub const REG_PMBA: u16 = 0x40;
/// Device activity B (u8): QEMU sets bit 1 ("SMM already initialised").
pub const REG_DEVACTB: u16 = 0x5b;
/// PM register miscellaneous: bit 0 (PMIOSE) enables the PM I/O block.
pub const REG_PMREGMISC: u16 = 0x80;
/// SMBus base address (u32).
pub const REG_SMBBA: u16 = 0x90;
/// SMBus host configuration (u8): bit 0 enables the SMBus I/O window.
pub const REG_SMBHSTCFG: u16 = 0xd2;

/// PMREGMISC bit 0.
pub const PMIOSE: u8 = 0x01;
/// PMBA bits that hold the base.
pub const PMBA_MASK: u32 = 0xffc0;
/// Length of the PM I/O block.
pub const PM_BLOCK_LEN: u64 = 64;
/// Region id of the PM I/O block in [`PciFunction::regions`].
pub const PM_REGION: u8 = 0;

/// PM block offset of PM1a_EVT (STS + EN), answered by Xen.
pub const PM1_EVT: u64 = 0;
/// PM block offset of PM1a_CNT.
pub const PM1_CNT: u64 = 4;
/// PM block offset of PM_TMR, answered by Xen.
pub const PM_TMR: u64 = 8;

/// PM1_CNT bit 0.
pub const SCI_EN: u16 = 1 << 0;
/// PM1_CNT bits 10-12 shift.
pub const SLP_TYP_SHIFT: u16 = 10;
/// PM1_CNT SLP_TYP mask after shifting.
pub const SLP_TYP_MASK: u16 = 0x7;
/// PM1_CNT bit 13, write-only.
pub const SLP_EN: u16 = 1 << 13;
/// SLP_TYP of S5 (and of S4) in Xen's ACPI tables.
pub const SLP_TYP_S5: u16 = 0;
/// SLP_TYP of S3 in Xen's ACPI tables.
pub const SLP_TYP_S3: u16 = 1;
/// QEMU's default `s4_val`, a power-off too.
pub const SLP_TYP_QEMU_S4: u16 = 2;

/// [`Apm`] offset of the APM control register (the FADT's SMI_CMD).
pub const OFS_APM_CONTROL: u64 = 0;
/// [`Apm`] offset of the APM status register.
pub const OFS_APM_STATUS: u64 = 1;
/// SMI_CMD value that sets SCI_EN.
pub const ACPI_ENABLE: u8 = 0xf1;
/// SMI_CMD value that clears SCI_EN.
pub const ACPI_DISABLE: u8 = 0xf0;

/// [`Gpe0`] offset of the first status byte (2 status bytes, then 2 enable bytes).
pub const OFS_GPE0_STATUS: u64 = 0;
/// [`Gpe0`] offset of the first enable byte.
pub const OFS_GPE0_ENABLE: u64 = 2;

/// Raising an ACPI general-purpose event: what a hotplug device asks of the
/// PM function (QEMU's `acpi_send_event`).
pub trait GpeSink: Send + Sync {
    /// Sets `bits` in the first GPE0 status byte and updates the SCI.
    fn raise_gpe(&self, bits: u8);
}

/// What the machine around the function looks like (QEMU fills registers
/// 0x90, 0x5F and 0x67 from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piix4PmConfig {
    /// SMBus I/O base reported at 0x90 (not decoded; see the module docs).
    pub smb_io_base: u16,
    /// A UART at COM1 (0x3F8) exists.
    pub com1: bool,
    /// A UART at COM2 (0x2F8) exists.
    pub com2: bool,
    /// A parallel port at LPT1 (0x378) exists.
    pub lpt1: bool,
}

/// Entering ACPI S3 (suspend to RAM), which [`Hypervisor`] does not cover.
/// Under Xen: set `HVM_PARAM_ACPI_S_STATE` to 3 (QEMU's
/// `xen_suspend_notifier`); QMP `system_wakeup` sets it back to 0.
pub trait SuspendControl: Send + Sync {
    /// Called, before the guest's write returns, when the guest enters S3.
    fn suspend_to_ram(&self);
}

/// The I/O registers of the function outside config space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmRegs {
    /// PM1a_CNT as the guest reads it (SLP_EN never stored).
    pm1_cnt: u16,
    /// APM control (0xB2 on a PC).
    apmc: u8,
    /// APM status (0xB3 on a PC).
    apms: u8,
    /// GPE0 status bytes.
    gpe_sts: [u8; 2],
    /// GPE0 enable bytes.
    gpe_en: [u8; 2],
}

/// The saved state of [`Piix4Pm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Piix4PmState {
    config: PciConfigState,
    io: PmRegs,
}

/// The PM function and the state of its I/O registers.
pub struct Piix4Pm {
    cfg: PciConfig,
    io: PmRegs,
    hv: Arc<dyn Hypervisor>,
    s3: Option<Arc<dyn SuspendControl>>,
    /// The SCI (ISA IRQ 9 on a PC).
    sci: Arc<dyn IrqLine>,
    /// The level last driven on `sci` (false until a GPE is raised).
    sci_level: bool,
    log: RateLimit,
}

impl Piix4Pm {
    /// The function in QEMU's post-reset state for `machine`, its SCI on
    /// `sci`.
    pub fn new(hv: Arc<dyn Hypervisor>, sci: Arc<dyn IrqLine>, machine: &Piix4PmConfig) -> Self {
        let mut cfg = PciConfig::new(&PciIdentity {
            vendor: crate::pc::i440fx::VENDOR_INTEL,
            device: DEVICE_ID_82371AB_3,
            revision: REVISION,
            base_class: 0x06,
            sub_class: 0x80,
            prog_if: 0,
            subsystem_vendor: QEMU_SUBSYSTEM_VENDOR,
            subsystem: QEMU_SUBSYSTEM,
            multi_function: false,
        });
        cfg.set_u16(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK);
        cfg.set_u8(INTERRUPT_PIN, 1);
        cfg.set_u32(REG_PMBA, 1);
        cfg.set_wmask_u8(REG_PMBA, 0xfe);
        cfg.set_u8(REG_DEVACTB, 0x02);
        cfg.set_u8(0x5f, 0x10 | if machine.lpt1 { 0x80 } else { 0 });
        cfg.set_u8(0x63, 0x60);
        cfg.set_u8(0x67, (if machine.com1 { 0x08 } else { 0 }) | (if machine.com2 { 0x90 } else { 0 }));
        cfg.set_u16(REG_SMBBA, machine.smb_io_base | 1);
        cfg.set_u8(REG_SMBHSTCFG, 0x09);
        Self {
            cfg,
            io: PmRegs { pm1_cnt: 0, apmc: 0, apms: 0, gpe_sts: [0; 2], gpe_en: [0; 2] },
            hv,
            s3: None,
            sci,
            sci_level: false,
            log: RateLimit::per_second(),
        }
    }

    /// Sets `bits` in the first GPE0 status byte (a hotplug event) and
    /// updates the SCI.
    pub fn raise_gpe(&mut self, bits: u8) {
        if let Some(sts) = self.io.gpe_sts.first_mut() {
            *sts |= bits;
        }
        self.update_sci();
    }

    /// The SCI level GPE0 asks for: a status bit of the first byte set
    /// whose enable bit is set (QEMU's `acpi_update_sci`).
    fn sci_wanted(&self) -> bool {
        let sts = self.io.gpe_sts.first().copied().unwrap_or(0);
        let en = self.io.gpe_en.first().copied().unwrap_or(0);
        sts & en != 0
    }

    /// Drives the SCI if its level changed (see the module docs).
    fn update_sci(&mut self) {
        let level = self.sci_wanted();
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    /// Where S3 requests go (see the module docs).
    pub fn set_suspend_control(&mut self, s3: Arc<dyn SuspendControl>) {
        self.s3 = Some(s3);
    }

    /// PM1a_CNT as the guest reads it.
    pub fn pm1_cnt(&self) -> u16 {
        self.io.pm1_cnt
    }

    /// The PM block base, if decoding is enabled.
    pub fn pm_base(&self) -> Option<u64> {
        if self.cfg.u8_at(REG_PMREGMISC) & PMIOSE == 0 {
            return None;
        }
        Some(u64::from(self.cfg.u32_at(REG_PMBA) & PMBA_MASK))
    }

    fn pm1_cnt_write(&mut self, val: u16) {
        self.io.pm1_cnt = val & !SLP_EN;
        if val & SLP_EN == 0 {
            return;
        }
        match (val >> SLP_TYP_SHIFT) & SLP_TYP_MASK {
            SLP_TYP_S5 | SLP_TYP_QEMU_S4 => {
                if let Some(suppressed) = self.log.check() {
                    tracing::info!(
                        pm1_cnt = format_args!("{val:#06x}"),
                        suppressed,
                        "guest entered ACPI soft-off: powering off"
                    );
                }
                self.hv.shutdown(ShutdownReason::Poweroff);
            }
            SLP_TYP_S3 => match &self.s3 {
                Some(s3) => {
                    if let Some(suppressed) = self.log.check() {
                        tracing::info!(suppressed, "guest entered ACPI S3");
                    }
                    s3.suspend_to_ram();
                }
                None => {
                    if let Some(suppressed) = self.log.check() {
                        tracing::warn!(
                            suppressed,
                            "guest asked for ACPI S3, which this device model cannot do; ignored"
                        );
                    }
                }
            },
            other => {
                if let Some(suppressed) = self.log.check() {
                    tracing::debug!(slp_typ = other, suppressed, "PM1a_CNT sleep type without meaning; ignored");
                }
            }
        }
    }

    fn pm_read_byte(&self, off: u64) -> u8 {
        let [lo, hi] = self.io.pm1_cnt.to_le_bytes();
        match off {
            4 => lo,
            5 => hi,
            0..=3 | 8..=11 => 0,
            _ => 0xff,
        }
    }

    /// A read inside the PM I/O block (offsets relative to PMBA).
    pub fn pm_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.checked_add(i as u64).map_or(0xff, |o| self.pm_read_byte(o));
        }
    }

    /// A write inside the PM I/O block. Bytes that hit PM1a_CNT are merged
    /// into it and applied as one write; others are dropped.
    pub fn pm_write(&mut self, offset: u64, data: &[u8]) {
        let mut cnt = self.io.pm1_cnt.to_le_bytes();
        let mut hit = false;
        let mut other = false;
        for (i, &v) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(4) => {
                    cnt[0] = v;
                    hit = true;
                }
                Some(5) => {
                    cnt[1] = v;
                    hit = true;
                }
                _ => other = true,
            }
        }
        if other {
            if let Some(suppressed) = self.log.check() {
                tracing::debug!(
                    offset,
                    len = data.len(),
                    suppressed,
                    "write to a PM register this device model does not own; dropped"
                );
            }
        }
        if hit {
            self.pm1_cnt_write(u16::from_le_bytes(cnt));
        }
    }

    /// A read of the APM ports (offset 0 = 0xB2, 1 = 0xB3).
    pub fn apm_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(OFS_APM_CONTROL) => self.io.apmc,
                Some(OFS_APM_STATUS) => self.io.apms,
                _ => 0xff,
            };
        }
    }

    /// A write of the APM ports, byte by byte.
    pub fn apm_write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(OFS_APM_CONTROL) => {
                    self.io.apmc = v;
                    match v {
                        ACPI_ENABLE => self.io.pm1_cnt |= SCI_EN,
                        ACPI_DISABLE => self.io.pm1_cnt &= !SCI_EN,
                        _ => {} // would be an SMI; there is no SMM under Xen
                    }
                }
                Some(OFS_APM_STATUS) => self.io.apms = v,
                _ => {}
            }
        }
    }

    /// A read of the GPE0 block (offsets 0-1 status, 2-3 enable).
    pub fn gpe_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset.checked_add(i as u64) {
                Some(o @ 0..=1) => self.io.gpe_sts.get(o as usize).copied().unwrap_or(0xff),
                Some(o @ 2..=3) => self.io.gpe_en.get(o as usize - 2).copied().unwrap_or(0xff),
                _ => 0xff,
            };
        }
    }

    /// A write of the GPE0 block: status bytes are write-1-to-clear, enable
    /// bytes are stored.
    pub fn gpe_write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(o @ 0..=1) => {
                    if let Some(s) = self.io.gpe_sts.get_mut(o as usize) {
                        *s &= !v;
                    }
                }
                Some(o @ 2..=3) => {
                    if let Some(e) = self.io.gpe_en.get_mut(o as usize - 2) {
                        *e = v;
                    }
                }
                _ => {}
            }
        }
        self.update_sci();
    }
}

impl PciFunction for Piix4Pm {
    fn config_read(&mut self, reg: u16, data: &mut [u8]) {
        self.cfg.read(reg, data);
    }

    fn config_write(&mut self, reg: u16, data: &[u8]) {
        self.cfg.write(reg, data);
    }

    fn regions(&self) -> Vec<PciRegion> {
        match self.pm_base() {
            Some(base) => vec![PciRegion { id: PM_REGION, space: Space::Pio, base, len: PM_BLOCK_LEN }],
            None => Vec::new(),
        }
    }

    fn region_read(&mut self, region: u8, offset: u64, data: &mut [u8]) {
        if region == PM_REGION {
            self.pm_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn region_write(&mut self, region: u8, offset: u64, data: &[u8]) {
        if region == PM_REGION {
            self.pm_write(offset, data);
        }
    }
}

impl DeviceState for Piix4Pm {
    type State = Piix4PmState;
    const KIND: &'static str = "piix4-pm";
    const VERSION: u32 = 1;

    fn save(&self) -> Piix4PmState {
        Piix4PmState { config: self.cfg.save_state(), io: self.io.clone() }
    }

    /// Restores the image and registers. The bus learns about the restored
    /// PM block when it next re-reads the windows
    /// ([`crate::Bus::refresh_pci_regions`]).
    fn restore(&mut self, state: Piix4PmState) -> Result<(), StateError> {
        if state.io.pm1_cnt & SLP_EN != 0 {
            return Err(StateError::malformed(Self::KIND, "PM1a_CNT has SLP_EN set, which is never stored"));
        }
        self.cfg.restore_state(&state.config).map_err(|e| StateError::malformed(Self::KIND, e))?;
        self.io = state.io;
        self.sci_level = self.sci_wanted();
        Ok(())
    }
}

/// The APM ports as a [`BusDevice`] ([`OFS_APM_CONTROL`], [`OFS_APM_STATUS`]),
/// sharing the PM state.
pub struct Apm {
    pm: Arc<Mutex<Piix4Pm>>,
}

impl BusDevice for Apm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.pm).apm_read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.pm).apm_write(offset, data);
    }
}

/// The GPE0 block as a [`BusDevice`] ([`OFS_GPE0_STATUS`], [`OFS_GPE0_ENABLE`]),
/// sharing the PM state.
pub struct Gpe0 {
    pm: Arc<Mutex<Piix4Pm>>,
}

impl BusDevice for Gpe0 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.pm).gpe_read(offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.pm).gpe_write(offset, data);
    }
}

/// Raises GPEs on the shared PM function ([`GpeSink`] for hotplug devices).
pub struct PmGpeSink {
    pm: Arc<Mutex<Piix4Pm>>,
}

impl GpeSink for PmGpeSink {
    fn raise_gpe(&self, bits: u8) {
        lock(&self.pm).raise_gpe(bits);
    }
}

/// The PM function, its two fixed-port faces and its GPE input. Save/restore
/// goes through `pm`; the other handles hold no state of their own.
pub struct Piix4PmHandles {
    pub pm: Arc<Mutex<Piix4Pm>>,
    pub apm: Arc<Mutex<Apm>>,
    pub gpe0: Arc<Mutex<Gpe0>>,
    /// Where hotplug devices raise their GPEs.
    pub gpe_sink: Arc<PmGpeSink>,
}

impl Piix4PmHandles {
    /// The function in QEMU's post-reset state for `machine`, its SCI on
    /// `sci`, with its faces.
    pub fn new(hv: Arc<dyn Hypervisor>, sci: Arc<dyn IrqLine>, machine: &Piix4PmConfig) -> Self {
        let pm = Arc::new(Mutex::new(Piix4Pm::new(hv, sci, machine)));
        let apm = Arc::new(Mutex::new(Apm { pm: pm.clone() }));
        let gpe0 = Arc::new(Mutex::new(Gpe0 { pm: pm.clone() }));
        let gpe_sink = Arc::new(PmGpeSink { pm: pm.clone() });
        Self { pm, apm, gpe0, gpe_sink }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, RangeChange};
    use crate::hv::{FakeHypervisor, FakeIrq, HvCall};
    use crate::pc::layout::{self, PCI_PM as SBDF};

    const GPE0_PORT: u64 = layout::PORT_GPE0 as u64;

    fn config(com1: bool) -> Piix4PmConfig {
        Piix4PmConfig { smb_io_base: layout::PORT_SMBUS, com1, com2: false, lpt1: false }
    }

    /// The function and its fixed ports where the PC layout puts them.
    fn setup() -> (Bus, Arc<FakeHypervisor>, Piix4PmHandles) {
        let (bus, hv, h, _) = setup_with_sci();
        (bus, hv, h)
    }

    /// [`setup`], with the SCI line the function drives.
    fn setup_with_sci() -> (Bus, Arc<FakeHypervisor>, Piix4PmHandles, Arc<FakeIrq>) {
        let hv = Arc::new(FakeHypervisor::new());
        let sci = Arc::new(FakeIrq::new());
        let mut bus = Bus::new();
        let h = Piix4PmHandles::new(hv.clone(), sci.clone(), &config(true));
        bus.register_pci(SBDF, "piix4-pm", h.pm.clone()).unwrap();
        bus.register_pio(layout::PORT_APM_CONTROL.into(), layout::LEN_APM.into(), "piix4 apm", h.apm.clone(), 0)
            .unwrap();
        bus.register_pio(GPE0_PORT, layout::LEN_GPE0.into(), "piix4 gpe0", h.gpe0.clone(), 0).unwrap();
        (bus, hv, h, sci)
    }

    fn no_sci() -> Arc<dyn IrqLine> {
        Arc::new(FakeIrq::new())
    }

    fn rd(bus: &mut Bus, reg: u16, len: usize) -> u64 {
        let mut d = vec![0u8; len];
        bus.pci_config_read(SBDF, reg, &mut d);
        crate::bus::le_value(&d)
    }

    fn inb(bus: &mut Bus, port: u64) -> u8 {
        let mut v = [0u8; 1];
        bus.pio_read(port, &mut v);
        v[0]
    }

    fn inw(bus: &mut Bus, port: u64) -> u16 {
        let mut v = [0u8; 2];
        bus.pio_read(port, &mut v);
        u16::from_le_bytes(v)
    }

    /// Enables the PM block at `base` the way hvmloader does.
    fn enable_at(bus: &mut Bus, base: u32) {
        bus.pci_config_write(SBDF, REG_PMBA, &(base | 1).to_le_bytes());
        bus.pci_config_write(SBDF, REG_PMREGMISC, &[1]);
    }

    #[test]
    fn reset_values() {
        let (mut bus, hv, _) = setup();
        assert_eq!(rd(&mut bus, 0x00, 4), 0x7113_8086);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0280_0000);
        assert_eq!(rd(&mut bus, 0x08, 4), 0x0680_0003);
        assert_eq!(rd(&mut bus, 0x0c, 4), 0);
        assert_eq!(rd(&mut bus, 0x2c, 4), 0x1100_1af4);
        assert_eq!(rd(&mut bus, 0x3c, 4), 0x0000_0100, "pin INTA, line 0");
        let mut all = [0u8; 256];
        bus.pci_config_read(SBDF, 0, &mut all);
        let got: Vec<(usize, u8)> = (0x40..256).filter(|&i| all[i] != 0).map(|i| (i, all[i])).collect();
        assert_eq!(
            got,
            vec![
                (0x40, 0x01),
                (0x5b, 0x02),
                (0x5f, 0x10),
                (0x63, 0x60),
                (0x67, 0x08),
                (0x90, 0x01),
                (0x91, 0xb1),
                (0xd2, 0x09)
            ]
        );
        assert!(bus.take_changes().is_empty(), "PM block not decoded at reset");
        assert_eq!(inb(&mut bus, 0xb2), 0);
        assert_eq!(inb(&mut bus, 0xb3), 0);
        let mut g = [0xaau8; 4];
        bus.pio_read(GPE0_PORT, &mut g);
        assert_eq!(g, [0; 4]);
        assert!(hv.calls().is_empty());
    }

    #[test]
    fn machine_dependent_registers() {
        let hv: Arc<dyn Hypervisor> = Arc::new(FakeHypervisor::new());
        let machine = Piix4PmConfig { smb_io_base: 0x1100, com1: true, com2: true, lpt1: true };
        let pm = Piix4Pm::new(hv.clone(), no_sci(), &machine);
        assert_eq!(pm.cfg.u8_at(0x5f), 0x90);
        assert_eq!(pm.cfg.u8_at(0x67), 0x98);
        assert_eq!(pm.cfg.u16_at(REG_SMBBA), 0x1101);
        let pm = Piix4Pm::new(hv, no_sci(), &config(false));
        assert_eq!(pm.cfg.u8_at(0x5f), 0x10);
        assert_eq!(pm.cfg.u8_at(0x67), 0x00);
    }

    #[test]
    fn writable_masks() {
        let (mut bus, _, _) = setup();
        for reg in (0u16..256).step_by(4) {
            if reg != REG_PMREGMISC {
                bus.pci_config_write(SBDF, reg, &[0xff; 4]);
            }
        }
        assert_eq!(rd(&mut bus, 0x00, 4), 0x7113_8086);
        assert_eq!(rd(&mut bus, 0x04, 4), 0x0280_0507);
        assert_eq!(rd(&mut bus, 0x08, 4), 0x0680_0003);
        assert_eq!(rd(&mut bus, 0x0c, 4), 0x0000_00ff);
        for bar in (0x10u16..=0x24).step_by(4) {
            assert_eq!(rd(&mut bus, bar, 4), 0);
        }
        assert_eq!(rd(&mut bus, 0x3c, 4), 0x0000_01ff);
        assert_eq!(rd(&mut bus, REG_PMBA, 4), 0xffff_ffff);
        // Bit 0 of PMBA stays 1.
        bus.pci_config_write(SBDF, REG_PMBA, &0xb000u32.to_le_bytes());
        assert_eq!(rd(&mut bus, REG_PMBA, 4), 0xb001);
        for reg in (0x44u16..256).step_by(4) {
            if reg != REG_PMREGMISC {
                assert_eq!(rd(&mut bus, reg, 4), 0xffff_ffff, "{reg:#x}");
            }
        }
        assert!(bus.take_changes().is_empty(), "PMIOSE still clear");
    }

    /// hvmloader's `pci_setup` for class 0x0680, then `acpi_enable_sci`, then
    /// Linux powering off.
    #[test]
    fn golden_hvmloader_then_linux_poweroff() {
        let (mut bus, hv, h) = setup();
        bus.pci_config_write(SBDF, 0x20, &0u16.to_le_bytes());
        bus.pci_config_write(SBDF, 0xd2, &0u16.to_le_bytes());
        bus.pci_config_write(SBDF, 0x22, &0u16.to_le_bytes());
        bus.pci_config_write(SBDF, 0x3c, &9u16.to_le_bytes());
        bus.pci_config_write(SBDF, 0x3d, &1u16.to_le_bytes());
        bus.pci_config_write(SBDF, 0x40, &0xb001u32.to_le_bytes());
        assert!(bus.take_changes().is_empty());
        bus.pci_config_write(SBDF, 0x80, &[1]);
        assert_eq!(bus.take_changes(), vec![RangeChange::Map { space: Space::Pio, start: 0xb000, end: 0xb03f }]);
        assert_eq!(rd(&mut bus, 0x3c, 2), 0x0109, "line 9, pin still 1");
        assert_eq!(rd(&mut bus, 0x20, 4), 0);
        assert_eq!(rd(&mut bus, 0xd2, 1), 0);
        assert_eq!(rd(&mut bus, 0x40, 4), 0xb001);

        // acpi_enable_sci: SCI_EN clear, so write 0xF1 to SMI_CMD and re-read.
        assert_eq!(inb(&mut bus, 0xb004) & 1, 0);
        bus.pio_write(0xb2, &[ACPI_ENABLE]);
        assert_eq!(inb(&mut bus, 0xb004), 1);
        assert_eq!(inb(&mut bus, 0xb2), ACPI_ENABLE);
        assert!(hv.calls().is_empty());

        // Linux: clear GPE status, disable GPEs, byte by byte.
        for p in 0..4 {
            bus.pio_write(GPE0_PORT + p, &[0xff * u8::from(p < 2)]);
        }
        let mut g = [0u8; 4];
        bus.pio_read(GPE0_PORT, &mut g);
        assert_eq!(g, [0; 4]);

        // Linux poweroff: SLP_TYP=0 | SLP_EN, keeping SCI_EN. The shutdown
        // happens inside write(), i.e. before the ioreq would be answered.
        bus.pio_write(0xb004, &(SLP_EN | SCI_EN).to_le_bytes());
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
        assert_eq!(inw(&mut bus, 0xb004), SCI_EN, "SLP_EN reads 0");
        assert_eq!(h.pm.lock().unwrap().pm1_cnt(), SCI_EN);
    }

    #[test]
    fn pm_block_moves_and_disables() {
        let (mut bus, _, _) = setup();
        enable_at(&mut bus, 0xb000);
        bus.take_changes();
        bus.pci_config_write(SBDF, REG_PMBA, &0x1f41u32.to_le_bytes());
        assert_eq!(
            bus.take_changes(),
            vec![
                RangeChange::Unmap { space: Space::Pio, start: 0xb000, end: 0xb03f },
                RangeChange::Map { space: Space::Pio, start: 0x1f40, end: 0x1f7f }
            ]
        );
        bus.pio_write(0xb2, &[ACPI_ENABLE]);
        assert_eq!(inw(&mut bus, 0x1f44), 1);
        assert_eq!(inw(&mut bus, 0xb004), 0xffff, "old block unclaimed");
        bus.pci_config_write(SBDF, REG_PMREGMISC, &[0]);
        assert_eq!(bus.take_changes(), vec![RangeChange::Unmap { space: Space::Pio, start: 0x1f40, end: 0x1f7f }]);
    }

    #[test]
    fn pm_block_offsets() {
        let (mut bus, _, _) = setup();
        enable_at(&mut bus, 0xb000);
        let mut v = [0u8; 4];
        bus.pio_read(0xb000, &mut v);
        assert_eq!(v, [0; 4], "PM1a_EVT is Xen's; reads 0 if it reaches us");
        bus.pio_read(0xb008, &mut v);
        assert_eq!(v, [0; 4], "PM_TMR is Xen's");
        bus.pio_read(0xb00c, &mut v);
        assert_eq!(v, [0xff; 4]);
        bus.pio_read(0xb03c, &mut v);
        assert_eq!(v, [0xff; 4]);
        // A dword read at +4 covers CNT and two unassigned bytes.
        bus.pio_write(0xb004, &0x0401u16.to_le_bytes());
        bus.pio_read(0xb004, &mut v);
        assert_eq!(v, [0x01, 0x04, 0xff, 0xff]);
        bus.pio_read(0xb003, &mut v);
        assert_eq!(v, [0x00, 0x01, 0x04, 0xff]);
    }

    #[test]
    fn sleep_types() {
        struct S3(Mutex<u32>);
        impl SuspendControl for S3 {
            fn suspend_to_ram(&self) {
                *self.0.lock().unwrap() += 1;
            }
        }
        let (mut bus, hv, h) = setup();
        enable_at(&mut bus, 0xb000);
        let cnt = |typ: u16| ((typ << SLP_TYP_SHIFT) | SLP_EN | SCI_EN).to_le_bytes();
        // S3 without a handler: ignored, stored without SLP_EN.
        bus.pio_write(0xb004, &cnt(1));
        assert!(hv.take().is_empty());
        assert_eq!(inw(&mut bus, 0xb004), 0x0401);
        let s3 = Arc::new(S3(Mutex::new(0)));
        h.pm.lock().unwrap().set_suspend_control(s3.clone());
        bus.pio_write(0xb004, &cnt(1));
        assert_eq!(*s3.0.lock().unwrap(), 1);
        assert!(hv.take().is_empty(), "S3 is not a shutdown");
        // QEMU's s4_val 2 powers off.
        bus.pio_write(0xb004, &cnt(2));
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
        for typ in 3..8 {
            bus.pio_write(0xb004, &cnt(typ));
        }
        assert!(hv.take().is_empty());
        assert_eq!(*s3.0.lock().unwrap(), 1);
        // Without SLP_EN nothing happens, and SLP_TYP reads back.
        bus.pio_write(0xb004, &(SCI_EN | 5 << SLP_TYP_SHIFT).to_le_bytes());
        assert!(hv.take().is_empty());
        assert_eq!(inw(&mut bus, 0xb004), 0x1401);
    }

    #[test]
    fn pm1_cnt_byte_writes_merge() {
        let (mut bus, hv, _) = setup();
        enable_at(&mut bus, 0xb000);
        bus.pio_write(0xb004, &[0x01]);
        bus.pio_write(0xb005, &[0x14]);
        assert_eq!(inw(&mut bus, 0xb004), 0x1401);
        bus.pio_write(0xb004, &[0x00]);
        assert_eq!(inw(&mut bus, 0xb004), 0x1400, "a byte write at +4 keeps the high byte");
        assert_eq!(inb(&mut bus, 0xb005), 0x14);
        assert!(hv.take().is_empty());
        // SLP_EN arriving in the high byte alone (as some firmware writes it).
        bus.pio_write(0xb005, &[(SLP_EN >> 8) as u8]);
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
        // A dword write at +4 applies its low word.
        bus.pio_write(0xb004, &(u32::from(SLP_EN) | 0xffff_0000).to_le_bytes());
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
        // A dword write at +2 covers CNT's two bytes in its upper half.
        bus.pio_write(0xb002, &0x0020_0000u32.to_le_bytes());
        assert!(hv.take().is_empty(), "0x20 lands in the low byte: not SLP_EN");
        assert_eq!(inw(&mut bus, 0xb004), 0x0020);
        bus.pio_write(0xb002, &0x2000_0000u32.to_le_bytes());
        assert_eq!(hv.take(), vec![HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
    }

    #[test]
    fn apm_ports() {
        let (mut bus, _, _) = setup();
        enable_at(&mut bus, 0xb000);
        bus.pio_write(0xb2, &[ACPI_ENABLE]);
        assert_eq!(inw(&mut bus, 0xb004), SCI_EN);
        bus.pio_write(0xb3, &[0x5a]);
        assert_eq!(inb(&mut bus, 0xb3), 0x5a, "status is a scratch byte");
        bus.pio_write(0xb2, &[0x42]);
        assert_eq!(inw(&mut bus, 0xb004), SCI_EN, "other commands leave SCI_EN");
        bus.pio_write(0xb2, &[ACPI_DISABLE]);
        assert_eq!(inw(&mut bus, 0xb004), 0);
        // A word write is split: 0xB2 then 0xB3.
        bus.pio_write(0xb2, &[ACPI_ENABLE, 0x77]);
        assert_eq!(inw(&mut bus, 0xb2), 0x77f1);
        assert_eq!(inw(&mut bus, 0xb004), SCI_EN);
    }

    #[test]
    fn gpe0_status_is_w1c_and_enable_stores() {
        let (mut bus, _, h) = setup();
        h.pm.lock().unwrap().io.gpe_sts = [0x0f, 0xf0];
        bus.pio_write(GPE0_PORT, &[0x03, 0x10]);
        bus.pio_write(GPE0_PORT + 2, &[0x04, 0x80]);
        let mut g = [0u8; 4];
        bus.pio_read(GPE0_PORT, &mut g);
        assert_eq!(g, [0x0c, 0xe0, 0x04, 0x80]);
        bus.pio_write(GPE0_PORT, &0xffff_0000u32.to_le_bytes());
        bus.pio_read(GPE0_PORT, &mut g);
        assert_eq!(g, [0x0c, 0xe0, 0xff, 0xff], "a dword write: 0 clears no status, enables all set");
        let mut b = [0u8; 1];
        bus.pio_read(GPE0_PORT + 1, &mut b);
        assert_eq!(b, [0xe0]);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut bus, hv, h) = setup();
        enable_at(&mut bus, 0xb000);
        for len in [1usize, 2, 3, 4, 8] {
            for port in [0xb000u64, 0xb003, 0xb005, 0xb03f, 0xb2, 0xb3, GPE0_PORT, GPE0_PORT + 3] {
                let mut v = vec![0u8; len];
                bus.pio_read(port, &mut v);
                bus.pio_write(port, &vec![0u8; len]);
            }
            for reg in [0u16, 0x40, 0x7f, 0x80, 0xfd, 0xff] {
                let mut v = vec![0u8; len];
                bus.pci_config_read(SBDF, reg, &mut v);
            }
        }
        assert!(hv.take().is_empty());
        let mut pm = h.pm.lock().unwrap();
        let mut v = [0u8; 8];
        pm.pm_read(u64::MAX - 2, &mut v);
        assert_eq!(v, [0xff; 8]);
        pm.pm_write(u64::MAX - 2, &[0xff; 8]);
        pm.apm_read(u64::MAX, &mut v);
        pm.apm_write(u64::MAX, &v);
        pm.gpe_read(u64::MAX - 1, &mut v);
        pm.gpe_write(u64::MAX - 1, &v);
        pm.region_read(9, 0, &mut v);
        assert_eq!(v, [0xff; 8]);
        pm.region_write(9, 4, &(SLP_EN).to_le_bytes());
        pm.config_write(0xffff, &[0xff; 8]);
        assert!(hv.take().is_empty());
    }

    crate::state_conformance!(
        state_conformance,
        Piix4Pm::new(Arc::new(FakeHypervisor::new()), no_sci(), &config(false)),
        |d: &mut Piix4Pm| {
            d.config_write(REG_PMBA, &0xb001u32.to_le_bytes());
            d.config_write(REG_PMREGMISC, &[1]);
            d.apm_write(0, &[ACPI_ENABLE, 0x12]);
            d.gpe_write(2, &[0x04, 0x00]);
        }
    );

    #[test]
    fn restore_brings_back_the_pm_window() {
        let (mut bus, _, h) = setup();
        enable_at(&mut bus, 0xb000);
        bus.pio_write(0xb2, &[ACPI_ENABLE]);
        let saved = h.pm.lock().unwrap().save();
        let (mut bus2, _, h2) = setup();
        h2.pm.lock().unwrap().restore(saved).unwrap();
        assert_eq!(
            h2.pm.lock().unwrap().regions(),
            vec![PciRegion { id: 0, space: Space::Pio, base: 0xb000, len: 64 }]
        );
        assert_eq!(inw(&mut bus2, 0xb004), 0xffff, "the bus does not know yet");
        bus2.refresh_pci_regions();
        assert_eq!(bus2.take_changes(), vec![RangeChange::Map { space: Space::Pio, start: 0xb000, end: 0xb03f }]);
        assert_eq!(inw(&mut bus2, 0xb004), SCI_EN);
    }

    #[test]
    fn restore_refuses_slp_en_and_a_foreign_image() {
        let (_, _, h) = setup();
        let mut pm = h.pm.lock().unwrap();
        let good = pm.save();
        let mut bad = good.clone();
        bad.io.pm1_cnt = SLP_EN;
        let e = pm.restore(bad).unwrap_err();
        assert!(e.to_string().contains("piix4-pm") && e.to_string().contains("SLP_EN"), "{e}");
        let mut bad = good.clone();
        bad.config.config = bad.config.config.replacen("8680", "8780", 1);
        assert!(pm.restore(bad).is_err(), "vendor ID is read-only");
        assert_eq!(pm.save(), good);
    }

    const CPU_HOTPLUG: u8 = 0x04;

    fn gpe(bus: &mut Bus) -> [u8; 4] {
        let mut g = [0u8; 4];
        bus.pio_read(GPE0_PORT, &mut g);
        g
    }

    #[test]
    fn a_gpe_raised_while_disabled_waits_for_the_enable() {
        let (mut bus, hv, h, sci) = setup_with_sci();
        h.gpe_sink.raise_gpe(CPU_HOTPLUG);
        assert_eq!(gpe(&mut bus), [0x04, 0, 0, 0], "status set, enable clear");
        assert!(sci.history().is_empty(), "no SCI while GPE0_EN bit 2 is clear");
        bus.pio_write(GPE0_PORT + 2, &[0x04]);
        assert_eq!(sci.history(), vec![true], "enabling a pending GPE raises the SCI");
        // The guest's handler clears the status bit by writing it as 1.
        bus.pio_write(GPE0_PORT, &[0x04]);
        assert_eq!(gpe(&mut bus), [0, 0, 0x04, 0]);
        assert_eq!(sci.history(), vec![true, false]);
        assert!(hv.calls().is_empty(), "the SCI goes through its own line");
    }

    #[test]
    fn the_sci_follows_status_and_enable_and_is_driven_on_changes_only() {
        let (mut bus, _, h, sci) = setup_with_sci();
        bus.pio_write(GPE0_PORT + 2, &[0x04]);
        assert!(sci.history().is_empty(), "enable alone raises nothing");
        h.gpe_sink.raise_gpe(CPU_HOTPLUG);
        assert_eq!(sci.history(), vec![true]);
        // A second hot-add before the guest cleared the first: still high,
        // not driven again.
        h.gpe_sink.raise_gpe(CPU_HOTPLUG);
        assert_eq!(sci.history(), vec![true]);
        // Writing 0s and other bits clears nothing of bit 2.
        bus.pio_write(GPE0_PORT, &[0x00]);
        bus.pio_write(GPE0_PORT, &[0xfb]);
        assert_eq!(sci.history(), vec![true]);
        // Disabling the GPE drops the line; re-enabling raises it again.
        bus.pio_write(GPE0_PORT + 2, &[0x00]);
        bus.pio_write(GPE0_PORT + 2, &[0x04]);
        assert_eq!(sci.history(), vec![true, false, true]);
        bus.pio_write(GPE0_PORT, &[0xff]);
        assert_eq!(sci.history(), vec![true, false, true, false]);
        // A later hot-add raises it anew.
        h.gpe_sink.raise_gpe(CPU_HOTPLUG);
        assert_eq!(sci.history(), vec![true, false, true, false, true]);
        assert!(sci.level());
        // One dword write that clears the status and keeps the enable.
        bus.pio_write(GPE0_PORT, &0x0004_00ffu32.to_le_bytes());
        assert_eq!(gpe(&mut bus), [0, 0, 0x04, 0]);
        assert!(!sci.level());
    }

    #[test]
    fn only_the_first_gpe_bytes_drive_the_sci_and_sci_en_is_not_consulted() {
        let (mut bus, _, h, sci) = setup_with_sci();
        enable_at(&mut bus, 0xb000);
        h.pm.lock().unwrap().io.gpe_sts[1] = 0xff;
        bus.pio_write(GPE0_PORT + 3, &[0xff]);
        assert!(sci.history().is_empty(), "QEMU's acpi_update_sci looks at byte 0 only");
        // SCI_EN is clear (no ACPI enable yet): QEMU raises the SCI anyway.
        assert_eq!(inw(&mut bus, 0xb004) & SCI_EN, 0);
        bus.pio_write(GPE0_PORT + 2, &[0x04]);
        h.gpe_sink.raise_gpe(CPU_HOTPLUG);
        assert_eq!(sci.history(), vec![true]);
    }

    /// Linux's GPE set-up at boot (clear all status, disable, then enable the
    /// GPEs that have `_Exx` methods), with no hotplug: the SCI is never
    /// driven, so a guest that never hot-plugs sees what it saw before.
    #[test]
    fn a_guest_that_never_hot_plugs_gets_no_sci_calls() {
        let (mut bus, hv, _, sci) = setup_with_sci();
        for p in 0..4 {
            bus.pio_write(GPE0_PORT + p, &[0xff * u8::from(p < 2)]);
        }
        bus.pio_write(GPE0_PORT + 2, &[0x04]);
        bus.pio_write(GPE0_PORT, &[0xff, 0xff]);
        assert_eq!(gpe(&mut bus), [0, 0, 0x04, 0]);
        assert!(sci.history().is_empty());
        assert!(hv.calls().is_empty());
    }

    #[test]
    fn restore_adopts_the_sci_level_without_driving_it() {
        let (mut bus, _, h, sci) = setup_with_sci();
        bus.pio_write(GPE0_PORT + 2, &[0x04]);
        h.gpe_sink.raise_gpe(CPU_HOTPLUG);
        let saved = h.pm.lock().unwrap().save();
        let (mut bus2, _, h2, sci2) = setup_with_sci();
        h2.pm.lock().unwrap().restore(saved).unwrap();
        assert!(sci2.history().is_empty(), "Xen restored the line itself");
        assert_eq!(gpe(&mut bus2), [0x04, 0, 0x04, 0]);
        bus2.pio_write(GPE0_PORT, &[0x04]);
        assert_eq!(sci2.history(), vec![false], "the adopted high level is lowered on the guest's clear");
        // A restore of a quiet state over a pending one: adopted low.
        let (_, _, h3, sci3) = setup_with_sci();
        let quiet = h3.pm.lock().unwrap().save();
        h.pm.lock().unwrap().restore(quiet).unwrap();
        bus.pio_write(GPE0_PORT, &[0xff]);
        assert_eq!(sci.history(), vec![true], "nothing to lower after the quiet restore");
        assert!(sci3.history().is_empty());
    }
}
