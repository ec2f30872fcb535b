//! Placement: puts every device of the `xenfv` PC on the bus at the address
//! [`xendm_devices::pc::layout`] gives it. The devices themselves know only
//! their register offsets; this file is the only one that pairs a device
//! with a port, an IRQ or a PCI slot (propolis' `initializer.rs` and
//! firecracker's `device_manager/legacy.rs` have the same role).
//!
//! What is placed, in this order (QEMU's `pc_init1` order; the order also is
//! the order of the saved device state, `state.rs`):
//!
//! 1. i440FX at 00:00.0, and the bus serves 0xCF8-0xCFF;
//! 2. PIIX3 at 00:01.0; its reset control gets 0xCF9 from the host bridge's
//!    port block (always there on this machine);
//! 3. PIIX4 PM at 00:01.3, APM 0xB2-0xB3, GPE0 0xAFE0-0xAFE3, its SCI on
//!    ISA IRQ 9, and the ACPI CPU hotplug bitmap at 0xAF00-0xAF1F raising
//!    its GPE there (none of them with `-no-acpi`, as in QEMU);
//! 4. the Xen platform device at 00:02.0 and ports 0x10-0x1F (`xenfv` only);
//! 5. CMOS 0x70-0x71, port 0x92, i8042 0x60/0x64 (IRQ 1/12);
//! 6. one 16550A per `-serial`, COM1..COM4;
//! 7. fw_cfg 0x510-0x511 and DMA 0x514-0x51B, with `-kernel` only
//!    ([`place_fw_cfg`], after the kernel is loaded into it).
//!
//! The range names given to the bus are those of earlier releases; they show
//! up in overlap errors only (the Xen claim list is built from merged ranges).

use std::sync::{Arc, Mutex};

use xendm_devices::hv::IsaIrq;
use xendm_devices::pc::cmos::{Cmos, CmosConfig};
use xendm_devices::pc::cpu_hotplug::CpuHotplug;
use xendm_devices::pc::i440fx::I440fx;
use xendm_devices::pc::i8042::{self, I8042};
use xendm_devices::pc::layout;
use xendm_devices::pc::piix3::{Piix3, Piix3Handles, ResetControl};
use xendm_devices::pc::piix4_pm::{Piix4Pm, Piix4PmConfig, Piix4PmHandles};
use xendm_devices::pc::port92::Port92;
use xendm_devices::pc::uart::{NullSink, SerialSink, Uart};
use xendm_devices::pc::xen_platform::{XenPlatform, XenPlatformHandles};
use xendm_devices::{AnyDeviceState, Bus, BusError, Hypervisor, IrqLine};
use xendm_fw_cfg::FwCfg;

use super::MachineError;

/// The machine facts placement needs (all from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcParams {
    /// What the CMOS NVRAM starts with (RAM sizes, boot order, vCPUs); the
    /// host bridge reports the same RAM size.
    pub cmos: CmosConfig,
    /// The PIIX4 PM function is there (not `-no-acpi`).
    pub acpi: bool,
    /// The Xen platform device is there (`-machine xenfv`).
    pub xen_platform: bool,
    /// Number of `-serial` ports, at most [`layout::COM_PORTS`]`.len()`.
    pub serial_ports: usize,
    /// vCPUs present at boot (`-smp CPUS`), 0 to `vcpus - 1`.
    pub vcpus: u32,
    /// Most vCPUs (`-smp maxcpus=`), at most 128.
    pub max_vcpus: u32,
}

/// The handles of every placed device (the bus holds the same ones).
/// Stateless faces that share a device (PIIX4's APM/GPE0 ports, the
/// platform device's unplug ports) are not listed: their state is the
/// device's.
pub struct PcDevices {
    pub host_bridge: Arc<Mutex<I440fx>>,
    pub isa_bridge: Arc<Mutex<Piix3>>,
    pub reset_control: Arc<Mutex<ResetControl>>,
    /// Absent with `-no-acpi`.
    pub pm: Option<Arc<Mutex<Piix4Pm>>>,
    /// The ACPI CPU hotplug bitmap; absent with `-no-acpi`.
    pub cpu_hotplug: Option<Arc<Mutex<CpuHotplug>>>,
    /// Absent on `pc,accel=xen`.
    pub xen_platform: Option<Arc<Mutex<XenPlatform>>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub port92: Arc<Mutex<Port92>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// One per `-serial`, COM1 first (`serial0`...).
    pub uarts: Vec<Arc<Mutex<Uart>>>,
    /// Only with `-kernel` (set by [`place_fw_cfg`]).
    pub fw_cfg: Option<Arc<Mutex<FwCfg>>>,
}

/// A device as the state walk sees it.
pub type StatefulDevice = Arc<Mutex<dyn AnyDeviceState>>;

impl PcDevices {
    /// Every device with state, with its instance id, in placement order:
    /// the fixed order of the saved device state.
    pub fn state_entries(&self) -> Vec<(String, StatefulDevice)> {
        let mut v: Vec<(String, StatefulDevice)> = vec![
            ("pci-host".into(), self.host_bridge.clone()),
            ("isa-bridge".into(), self.isa_bridge.clone()),
            ("reset-control".into(), self.reset_control.clone()),
        ];
        if let Some(pm) = &self.pm {
            v.push(("pm".into(), pm.clone()));
        }
        if let Some(cpus) = &self.cpu_hotplug {
            v.push(("cpu-hotplug".into(), cpus.clone()));
        }
        if let Some(p) = &self.xen_platform {
            v.push(("xen-platform".into(), p.clone()));
        }
        v.push(("cmos".into(), self.cmos.clone()));
        v.push(("port92".into(), self.port92.clone()));
        v.push(("i8042".into(), self.i8042.clone()));
        for (i, u) in self.uarts.iter().enumerate() {
            v.push((format!("serial{i}"), u.clone()));
        }
        if let Some(fw) = &self.fw_cfg {
            v.push(("fw_cfg".into(), fw.clone()));
        }
        v
    }
}

/// Puts every device but fw_cfg on `bus` (see the module docs), wiring
/// interrupts and reset requests to `hv` and UART output to `serial_sinks`
/// (one per port; a missing sink discards).
///
/// # Errors
/// Too many serial ports, a CMOS boot order that is not a PC's, vCPU counts
/// that are not possible, or (a bug) a range taken twice.
pub fn place_devices(
    bus: &mut Bus,
    hv: &Arc<dyn Hypervisor>,
    params: &PcParams,
    serial_sinks: Vec<Box<dyn SerialSink>>,
) -> Result<PcDevices, MachineError> {
    if params.serial_ports > layout::COM_PORTS.len() {
        return Err(MachineError::TooManySerials { given: params.serial_ports });
    }
    let ram = params.cmos.ram_bytes_below_4g.saturating_add(params.cmos.ram_bytes_above_4g);
    let host_bridge = Arc::new(Mutex::new(I440fx::new(ram)));
    bus.register_pci(layout::PCI_HOST_BRIDGE, "i440fx", host_bridge.clone())?;
    bus.enable_pci_host_ports()?;
    let piix3 = Piix3Handles::new(hv.clone());
    bus.register_pci(layout::PCI_ISA_BRIDGE, "piix3", piix3.bridge.clone())?;
    // 0xCF9 lies in the block the bus serves since enable_pci_host_ports.
    bus.set_reset_control(piix3.reset_control.clone());
    let (pm, cpu_hotplug) = if params.acpi {
        let (pm, cpus) = place_pm(bus, hv, params)?;
        (Some(pm), Some(cpus))
    } else {
        (None, None)
    };
    let xen_platform = if params.xen_platform { Some(place_xen_platform(bus)?) } else { None };

    let cmos = Arc::new(Mutex::new(Cmos::new(&params.cmos)?));
    pio(bus, layout::PORT_CMOS, layout::LEN_CMOS, "cmos", cmos.clone(), 0)?;
    let port92 = Arc::new(Mutex::new(Port92::new(hv.clone())));
    pio(bus, layout::PORT_FAST_A20, layout::LEN_FAST_A20, "port92", port92.clone(), 0)?;
    let i8042 = place_i8042(bus, hv)?;
    let uarts = place_uarts(bus, hv, params.serial_ports, serial_sinks)?;
    Ok(PcDevices {
        host_bridge,
        isa_bridge: piix3.bridge,
        reset_control: piix3.reset_control,
        pm,
        cpu_hotplug,
        xen_platform,
        cmos,
        port92,
        i8042,
        uarts,
        fw_cfg: None,
    })
}

/// Puts `fw` at 0x510 and, if it offers DMA, 0x514.
///
/// # Errors
/// If a port is taken (a bug).
pub fn place_fw_cfg(bus: &mut Bus, fw: FwCfg) -> Result<Arc<Mutex<FwCfg>>, BusError> {
    let dma = fw.dma_enabled();
    let fw = Arc::new(Mutex::new(fw));
    pio(bus, layout::PORT_FW_CFG, layout::LEN_FW_CFG, "fw_cfg", fw.clone(), xendm_fw_cfg::device::OFS_SELECTOR)?;
    if dma {
        let ofs = xendm_fw_cfg::device::OFS_DMA;
        pio(bus, layout::PORT_FW_CFG_DMA, layout::LEN_FW_CFG_DMA, "fw_cfg-dma", fw.clone(), ofs)?;
    }
    Ok(fw)
}

fn pio<D: xendm_devices::BusDevice + 'static>(
    bus: &mut Bus,
    port: u16,
    len: u16,
    name: &str,
    dev: Arc<Mutex<D>>,
    dev_base: u64,
) -> Result<(), BusError> {
    bus.register_pio(port.into(), len.into(), name, dev, dev_base)
}

/// The PM function and the CPU hotplug bitmap that raises its GPE there.
type PmAndCpus = (Arc<Mutex<Piix4Pm>>, Arc<Mutex<CpuHotplug>>);

/// Places the PM function with its fixed ports and SCI, and the CPU hotplug
/// bitmap.
fn place_pm(bus: &mut Bus, hv: &Arc<dyn Hypervisor>, params: &PcParams) -> Result<PmAndCpus, MachineError> {
    // QEMU reports the COM ports that exist in PIIX4 config 0x67.
    let cfg = Piix4PmConfig {
        smb_io_base: layout::PORT_SMBUS,
        com1: params.serial_ports > 0,
        com2: params.serial_ports > 1,
        lpt1: false,
    };
    let sci: Arc<dyn IrqLine> = Arc::new(IsaIrq::new(hv.clone(), layout::IRQ_SCI));
    let pm = Piix4PmHandles::new(hv.clone(), sci, &cfg);
    bus.register_pci(layout::PCI_PM, "piix4-pm", pm.pm.clone())?;
    pio(bus, layout::PORT_APM_CONTROL, layout::LEN_APM, "piix4 apm", pm.apm, 0)?;
    pio(bus, layout::PORT_GPE0, layout::LEN_GPE0, "piix4 gpe0", pm.gpe0, 0)?;
    let cpus = Arc::new(Mutex::new(CpuHotplug::new(params.vcpus, params.max_vcpus, pm.gpe_sink)?));
    pio(bus, layout::PORT_CPU_HOTPLUG, layout::LEN_CPU_HOTPLUG, "acpi cpu hotplug", cpus.clone(), 0)?;
    Ok((pm.pm, cpus))
}

fn place_xen_platform(bus: &mut Bus) -> Result<Arc<Mutex<XenPlatform>>, BusError> {
    let p = XenPlatformHandles::new();
    bus.register_pci(layout::PCI_XEN_PLATFORM, "xen-platform", p.device.clone())?;
    let (port, len) = (layout::PORT_XEN_PLATFORM_UNPLUG, layout::LEN_XEN_PLATFORM_UNPLUG);
    pio(bus, port, len, "xen-platform unplug", p.unplug_ports, 0)?;
    Ok(p.device)
}

fn place_i8042(bus: &mut Bus, hv: &Arc<dyn Hypervisor>) -> Result<Arc<Mutex<I8042>>, BusError> {
    let kbd_irq: Arc<dyn IrqLine> = Arc::new(IsaIrq::new(hv.clone(), layout::IRQ_KEYBOARD));
    let aux_irq: Arc<dyn IrqLine> = Arc::new(IsaIrq::new(hv.clone(), layout::IRQ_MOUSE));
    let dev = Arc::new(Mutex::new(I8042::new(hv.clone(), kbd_irq, aux_irq)));
    let len = layout::LEN_I8042_PORT;
    pio(bus, layout::PORT_I8042_DATA, len, "i8042 data", dev.clone(), i8042::DATA_OFFSET)?;
    pio(bus, layout::PORT_I8042_COMMAND, len, "i8042 command", dev.clone(), i8042::STATUS_COMMAND_OFFSET)?;
    Ok(dev)
}

fn place_uarts(
    bus: &mut Bus,
    hv: &Arc<dyn Hypervisor>,
    count: usize,
    sinks: Vec<Box<dyn SerialSink>>,
) -> Result<Vec<Arc<Mutex<Uart>>>, BusError> {
    let mut uarts = Vec::new();
    let mut sinks = sinks.into_iter();
    for (i, &(port, irq)) in layout::COM_PORTS.iter().take(count).enumerate() {
        let sink: Box<dyn SerialSink> = sinks.next().unwrap_or_else(|| Box::new(NullSink));
        let line: Arc<dyn IrqLine> = Arc::new(IsaIrq::new(hv.clone(), irq));
        let uart = Arc::new(Mutex::new(Uart::new(line, sink)));
        pio(bus, port, layout::LEN_COM, &format!("serial{i}"), uart.clone(), 0)?;
        uarts.push(uart);
    }
    Ok(uarts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xendm_devices::bus::{RangeChange, Space};
    use xendm_devices::hv::{FakeHypervisor, HvCall};
    use xendm_devices::mem::TestMemory;
    use xendm_devices::pc::piix4_pm::{ACPI_ENABLE, SCI_EN};
    use xendm_devices::Sbdf;
    use xendm_fw_cfg::{FwCfgItems, FwCfgOptions};

    fn params() -> PcParams {
        PcParams {
            cmos: CmosConfig {
                ram_bytes_below_4g: 1 << 30,
                ram_bytes_above_4g: 0,
                boot_order: "cad".into(),
                smp_cpus: 1,
                fd_bootchk: true,
            },
            acpi: true,
            xen_platform: true,
            serial_ports: 1,
            vcpus: 1,
            max_vcpus: 1,
        }
    }

    fn place(p: &PcParams) -> (Bus, Arc<FakeHypervisor>, PcDevices) {
        let hv = Arc::new(FakeHypervisor::new());
        let dyn_hv: Arc<dyn Hypervisor> = hv.clone();
        let mut bus = Bus::new();
        let d = place_devices(&mut bus, &dyn_hv, p, Vec::new()).unwrap();
        (bus, hv, d)
    }

    #[test]
    fn the_claim_list_of_the_whole_machine() {
        let (mut bus, _, mut d) = place(&PcParams { serial_ports: 4, ..params() });
        d.fw_cfg = Some(
            place_fw_cfg(
                &mut bus,
                FwCfg::new(
                    Arc::new(TestMemory::pc(1 << 20).unwrap()),
                    FwCfgItems::new(&FwCfgOptions::default()).unwrap(),
                ),
            )
            .unwrap(),
        );
        assert_eq!(
            bus.pio_ranges(),
            vec![
                (0x10, 0x1f),
                (0x60, 0x60),
                (0x64, 0x64),
                (0x70, 0x71),
                (0x92, 0x92),
                (0xb2, 0xb3),
                (0x2e8, 0x2ef),
                (0x2f8, 0x2ff),
                (0x3e8, 0x3ef),
                (0x3f8, 0x3ff),
                (0x510, 0x511),
                (0x514, 0x51b),
                (0xcf8, 0xcff),
                (0xaf00, 0xaf1f),
                (0xafe0, 0xafe3)
            ]
        );
        assert!(bus.mmio_ranges().is_empty());
        assert_eq!(bus.pci_functions(), vec![Sbdf::new(0, 0), Sbdf::new(1, 0), Sbdf::new(1, 3), Sbdf::new(2, 0)]);
        assert!(bus.take_changes().is_empty(), "nothing decodes at reset");
        let ids: Vec<String> = d.state_entries().into_iter().map(|(id, _)| id).collect();
        assert_eq!(
            ids,
            [
                "pci-host",
                "isa-bridge",
                "reset-control",
                "pm",
                "cpu-hotplug",
                "xen-platform",
                "cmos",
                "port92",
                "i8042",
                "serial0",
                "serial1",
                "serial2",
                "serial3",
                "fw_cfg"
            ]
        );
    }

    #[test]
    fn optional_devices_and_limits() {
        let (bus, _, d) = place(&PcParams { acpi: false, xen_platform: false, serial_ports: 0, ..params() });
        assert_eq!(bus.pio_ranges(), vec![(0x60, 0x60), (0x64, 0x64), (0x70, 0x71), (0x92, 0x92), (0xcf8, 0xcff)]);
        assert_eq!(bus.pci_functions(), vec![Sbdf::new(0, 0), Sbdf::new(1, 0)]);
        assert!(d.pm.is_none() && d.cpu_hotplug.is_none() && d.xen_platform.is_none());
        assert!(d.uarts.is_empty() && d.fw_cfg.is_none());
        let hv: Arc<dyn Hypervisor> = Arc::new(FakeHypervisor::new());
        let e = place_devices(&mut Bus::new(), &hv, &PcParams { serial_ports: 5, ..params() }, Vec::new()).err();
        assert!(matches!(e, Some(MachineError::TooManySerials { given: 5 })));
        let e = place_devices(&mut Bus::new(), &hv, &PcParams { vcpus: 2, max_vcpus: 129, ..params() }, Vec::new());
        assert!(matches!(e.err(), Some(MachineError::VcpuCounts(_))));
        let e = place_devices(
            &mut Bus::new(),
            &hv,
            &PcParams { cmos: CmosConfig { boot_order: "x".into(), ..params().cmos }, ..params() },
            Vec::new(),
        )
        .err();
        assert!(matches!(e, Some(MachineError::Cmos(_))));
    }

    #[test]
    fn irqs_and_reset_paths_reach_the_hypervisor() {
        let (mut bus, hv, _) = place(&PcParams { serial_ports: 2, ..params() });
        // COM2: THRE interrupt on IRQ 3.
        bus.pio_write(0x2f9, &[0x02]);
        bus.pio_write(0x2fc, &[0x08]);
        assert!(hv.take().contains(&HvCall::IsaIrq { irq: 3, level: true }));
        // i8042 self test: the reply raises IRQ 1.
        bus.pio_write(0x64, &[0xaa]);
        assert!(hv.take().contains(&HvCall::IsaIrq { irq: 1, level: true }));
        // 0xCF9, 0x92 and the i8042 pulse all reboot.
        for (port, v) in [(0xcf9u64, 0x06u8), (0x92, 0x01), (0x64, 0xfe)] {
            bus.pio_write(port, &[v]);
            assert!(hv.take().contains(&HvCall::Shutdown { reason: xendm_devices::ShutdownReason::Reboot }));
        }
    }

    /// `-smp 2,maxcpus=4`, then a hot-add the way QMP `device_add` makes it:
    /// the guest sees the bit at 0xAF00 and GPE0 bit 2 with the SCI on IRQ 9.
    #[test]
    fn a_hot_add_reaches_the_guest_through_the_bitmap_gpe0_and_the_sci() {
        let (mut bus, hv, d) = place(&PcParams { vcpus: 2, max_vcpus: 4, ..params() });
        let inb = |bus: &mut Bus, port: u64| {
            let mut b = [0u8; 1];
            bus.pio_read(port, &mut b);
            b[0]
        };
        assert_eq!(inb(&mut bus, 0xaf00), 0x03);
        assert_eq!(inb(&mut bus, 0xaf0f), 0x00);
        // Linux enables GPE 2 (the DSDT has \_GPE._E02).
        bus.pio_write(0xafe2, &[0x04]);
        assert!(hv.take().is_empty());
        let cpus = d.cpu_hotplug.as_ref().unwrap();
        cpus.lock().unwrap().plug(2).unwrap();
        assert_eq!(hv.take(), vec![HvCall::IsaIrq { irq: 9, level: true }]);
        assert_eq!(inb(&mut bus, 0xafe0), 0x04);
        assert_eq!(inb(&mut bus, 0xaf00), 0x07, "PRSC finds vCPU 2");
        bus.pio_write(0xafe0, &[0x04]);
        assert_eq!(hv.take(), vec![HvCall::IsaIrq { irq: 9, level: false }]);
        assert!(cpus.lock().unwrap().plug(4).is_err());
        assert!(hv.take().is_empty());
    }

    /// The whole chipset on one bus, driven through 0xCF8/0xCFC the way
    /// hvmloader's `pci_setup`, `acpi_enable_sci` and `cmos_write_memory_size`
    /// drive it (order and values from `tools/firmware/hvmloader/pci.c` and
    /// the lab capture).
    #[test]
    #[allow(clippy::too_many_lines)] // a golden sequence, read top to bottom
    fn golden_hvmloader_full_chipset() {
        let (mut bus, hv, devices) = place(&params());
        assert_eq!(
            bus.pio_ranges(),
            vec![
                (0x10, 0x1f),
                (0x60, 0x60),
                (0x64, 0x64),
                (0x70, 0x71),
                (0x92, 0x92),
                (0xb2, 0xb3),
                (0x3f8, 0x3ff),
                (0xcf8, 0xcff),
                (0xaf00, 0xaf1f),
                (0xafe0, 0xafe3)
            ]
        );
        let cfg_addr = |devfn: u32, reg: u32| (0x8000_0000 | devfn << 8 | (reg & 0xfc)).to_le_bytes();
        let cfg_read = |bus: &mut Bus, devfn: u32, reg: u32, len: usize| -> u32 {
            bus.pio_write(0xcf8, &cfg_addr(devfn, reg));
            let mut d = vec![0u8; len];
            bus.pio_read(0xcfc + u64::from(reg & 3), &mut d);
            xendm_devices::bus::le_value(&d) as u32
        };
        let cfg_write = |bus: &mut Bus, devfn: u32, reg: u32, v: u32, len: usize| {
            bus.pio_write(0xcf8, &cfg_addr(devfn, reg));
            bus.pio_write(0xcfc + u64::from(reg & 3), &v.to_le_bytes()[..len]);
        };

        // 1. PCI link routes from PCI_ISA_IRQ_MASK 0x0C20: 5, 10, 11, 5.
        for (link, irq) in [5u32, 10, 11, 5].into_iter().enumerate() {
            cfg_write(&mut bus, 0x08, 0x60 + link as u32, irq, 1);
        }
        assert_eq!(
            hv.take(),
            vec![
                HvCall::LinkRoute { link: 0, irq: 5 },
                HvCall::LinkRoute { link: 1, irq: 10 },
                HvCall::LinkRoute { link: 2, irq: 11 },
                HvCall::LinkRoute { link: 3, irq: 5 }
            ]
        );

        // 2. Scan: who is there.
        let mut found = Vec::new();
        for devfn in 0..256u32 {
            let vendor = cfg_read(&mut bus, devfn, 0, 2);
            if vendor != 0xffff {
                found.push((devfn, vendor, cfg_read(&mut bus, devfn, 2, 2), cfg_read(&mut bus, devfn, 0x0a, 2)));
            }
        }
        assert_eq!(
            found,
            vec![
                (0x00, 0x8086, 0x1237, 0x0600),
                (0x08, 0x8086, 0x7000, 0x0601),
                (0x0b, 0x8086, 0x7113, 0x0680),
                (0x10, 0x5853, 0x0001, 0xff80)
            ]
        );

        // 3. PM function special case.
        cfg_write(&mut bus, 0x0b, 0x20, 0, 2);
        cfg_write(&mut bus, 0x0b, 0xd2, 0, 2);
        cfg_write(&mut bus, 0x0b, 0x22, 0, 2);
        cfg_write(&mut bus, 0x0b, 0x3c, 9, 2);
        cfg_write(&mut bus, 0x0b, 0x3d, 1, 2);
        cfg_write(&mut bus, 0x0b, 0x40, 0xb001, 4);
        cfg_write(&mut bus, 0x0b, 0x80, 1, 1);
        assert_eq!(bus.take_changes(), vec![RangeChange::Map { space: Space::Pio, start: 0xb000, end: 0xb03f }]);

        // 4. BAR sizing of every function (decode off first), then placement.
        let mut sizes = Vec::new();
        for devfn in [0x00u32, 0x08, 0x0b, 0x10] {
            let cmd = cfg_read(&mut bus, devfn, 4, 2);
            cfg_write(&mut bus, devfn, 4, cmd & !3, 2);
            for bar in 0..6u32 {
                let reg = 0x10 + 4 * bar;
                cfg_write(&mut bus, devfn, reg, u32::MAX, 4);
                let probe = cfg_read(&mut bus, devfn, reg, 4);
                cfg_write(&mut bus, devfn, reg, 0, 4);
                if probe != 0 {
                    sizes.push((devfn, bar, probe));
                }
            }
        }
        assert_eq!(sizes, vec![(0x10, 0, 0xffff_ff01), (0x10, 1, 0xff00_0008)]);
        assert!(bus.take_changes().is_empty(), "nothing decoded while sizing");
        cfg_write(&mut bus, 0x10, 0x14, 0xf000_0008, 4);
        cfg_write(&mut bus, 0x10, 0x10, 0xc001, 4);
        // 5. Interrupt line from the link of (pin - 1 + dev) & 3 = 2.
        let pin = cfg_read(&mut bus, 0x10, 0x3d, 1);
        let link = (pin - 1 + 2) & 3;
        let line = cfg_read(&mut bus, 0x08, 0x60 + link, 1);
        assert_eq!(line, 11);
        cfg_write(&mut bus, 0x10, 0x3c, line, 1);
        cfg_write(&mut bus, 0x10, 4, 3, 2);
        assert_eq!(
            bus.take_changes(),
            vec![
                RangeChange::Map { space: Space::Pio, start: 0xc000, end: 0xc0ff },
                RangeChange::Map { space: Space::Mmio, start: 0xf000_0000, end: 0xf0ff_ffff }
            ]
        );
        assert_eq!(cfg_read(&mut bus, 0x10, 0x3c, 2), 0x010b);

        // 6. acpi_enable_sci.
        let mut b = [0u8; 1];
        bus.pio_read(0xb004, &mut b);
        assert_eq!(b[0] & 1, 0);
        bus.pio_write(0xb2, &[ACPI_ENABLE]);
        bus.pio_read(0xb004, &mut b);
        assert_eq!(b[0] & 1, 1, "hvmloader BUG()s otherwise");

        // 7. CMOS memory sizes for its own view of low memory (0x3f800000 here).
        let low: u64 = 0x3f80_0000;
        let ext = ((low - (1 << 20)) >> 10).min(0xffff);
        let above16 = (low - (16 << 20)) >> 16;
        for (idx, v) in [
            (0x15u8, 0x80u8),
            (0x16, 0x02),
            (0x17, ext as u8),
            (0x18, (ext >> 8) as u8),
            (0x30, ext as u8),
            (0x31, (ext >> 8) as u8),
            (0x34, above16 as u8),
            (0x35, (above16 >> 8) as u8),
        ] {
            bus.pio_write(0x70, &[idx]);
            bus.pio_write(0x71, &[v]);
        }
        assert_eq!(devices.cmos.lock().unwrap().get(0x35), 0x3e);
        assert_eq!(devices.cmos.lock().unwrap().get(0x5b), 0);

        // Nothing above shut anything down; the PM and platform state is as set.
        assert!(hv.take().is_empty());
        assert_eq!(devices.pm.as_ref().unwrap().lock().unwrap().pm1_cnt(), SCI_EN);
        assert_eq!(devices.xen_platform.as_ref().unwrap().lock().unwrap().unplugged(), 0);
    }
}
