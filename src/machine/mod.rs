//! The machine: which devices sit where, built from the command line.
//!
//! This is QEMU's `xenfv` machine (`-machine xenfv`, an i440FX PC without the
//! devices Xen emulates itself, `qemu-dm-facts.md` 4.8) as far as a guest that
//! boots a kernel directly needs it:
//!
//! | where | device |
//! | --- | --- |
//! | 00:00.0, ports 0xCF8-0xCFF | i440FX host bridge (the bus serves CF8/CFC) |
//! | 00:01.0, port 0xCF9 | PIIX3 ISA bridge (PIRQ link routes), reset control |
//! | 00:01.3, PMBASE (0xB000 after hvmloader), 0xB2-0xB3, 0xAFE0-0xAFE3, SCI IRQ 9 | PIIX4 ACPI PM (absent with `-no-acpi`) |
//! | 0xAF00-0xAF1F | ACPI CPU hotplug bitmap (with the PM function; `vcpus.rs` is its QMP side) |
//! | 00:02.0, ports 0x10-0x1F | Xen platform device (only `xenfv`, not `pc,accel=xen`) |
//! | 0x70-0x71 | CMOS NVRAM (indexes >= 0x0E; Xen keeps the clock) |
//! | 0x3F8/0x2F8/0x3E8/0x2E8, IRQ 4/3/4/3 | 16550A UARTs, one per `-serial` |
//! | 0x60, 0x64, IRQ 1/12 | i8042 |
//! | 0x92 | port 92 (fast A20, reset) |
//! | 0x510-0x511, 0x514-0x51B | fw_cfg with DMA (only with `-kernel`, as QEMU on Xen) |
//!
//! Not present (we differ from QEMU, on purpose): the PIIX3 IDE function
//! 00:01.1 (no emulated disks; guests use PV disks), the floppy controller,
//! the i8257 DMA controller, parallel ports, and the stub ports 0x80/0xF0.
//! Unclaimed ports read all-ones through Xen's null handler, which is what
//! a guest probing absent hardware expects.
//!
//! The machine comes to life in two phases:
//!
//! 1. [`spec::MachineSpec::from_config`] plans it from the command line with
//!    no Xen and no guest memory (files read, every error found);
//! 2. [`build`] places the planned devices against the real objects: the
//!    Xen mapcache and hypervisor in the daemon, fakes in tests, the replay
//!    memory in replay. Nothing is bound late.

pub mod dirty;
pub mod hooks;
pub mod pc;
pub mod replay;
pub mod spec;
pub mod state;
pub mod vcpus;

use std::sync::{Arc, Mutex};

use xendm_devices::pc::uart::{SerialSink, Uart};
use xendm_devices::{Bus, GuestMemory, Hypervisor};
use xendm_fw_cfg::{BootPlan, FwCfg, RamLayout};

use crate::cli::MachineKind;
use crate::ioreq::engine::{Engine, EngineHooks};
use spec::{BootSpec, MachineSpec};

/// Base port and ISA IRQ of COM1..COM4.
pub use xendm_devices::pc::layout::COM_PORTS;

/// Why the machine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Bus(#[from] xendm_devices::BusError),
    #[error(transparent)]
    Cmos(#[from] xendm_devices::pc::cmos::CmosError),
    #[error("fw_cfg: {0}")]
    FwCfg(#[from] xendm_fw_cfg::FwCfgError),
    #[error(transparent)]
    Load(#[from] xendm_fw_cfg::LoadError),
    #[error(transparent)]
    VcpuCounts(#[from] xendm_devices::pc::cpu_hotplug::BadVcpuCounts),
    #[error("-serial: at most {max} serial ports are supported, {given} given", max = COM_PORTS.len())]
    TooManySerials { given: usize },
    #[error(transparent)]
    Serial(#[from] crate::control::chardev::ChardevError),
    #[error("-initrd/-append given without -kernel")]
    BootArgsWithoutKernel,
    #[error(
        "disk {vdev} ({form}): xendm emulates no disk, so the guest can reach it only through its PV block \
         driver (blkfront), {why}"
    )]
    UnreachableDisk { vdev: String, form: String, why: &'static str },
    #[error(
        "NIC {model} (-device {model},netdev={netdev}, tap {ifname}): xendm emulates no NIC, so the guest can \
         reach this network only through its PV network driver (netfront), {why}"
    )]
    UnreachableNic { model: String, netdev: String, ifname: String, why: &'static str },
    #[error("no option ROM named {0} is built into xendm")]
    MissingRom(&'static str),
    #[error("-machine none has no devices")]
    NoMachine,
}

/// A built machine.
pub struct Machine {
    /// The engine owning the bus and every device on it.
    pub engine: Engine,
    /// The UART of each `-serial` port, in order (`serial0`...).
    pub uarts: Vec<Arc<Mutex<Uart>>>,
    /// What the kernel loader decided (with `-kernel`).
    pub boot: Option<BootPlan>,
    /// vCPUs the guest was started with (`-smp`, else 1).
    pub vcpus: u32,
    /// Maximum vCPUs (`-smp maxcpus=`), the number of ioreq slots to serve.
    pub max_vcpus: u32,
    /// The RAM layout assumed for `-m`.
    pub layout: RamLayout,
    /// Every device, for the device-state walk ([`state`]).
    pub devices: pc::PcDevices,
}

impl Machine {
    /// The vCPU side of QMP over this machine (`vcpus.rs`): the CPU hotplug
    /// bitmap, or the fixed boot count without ACPI.
    pub fn vcpu_control(&self) -> Arc<dyn crate::control::qmp::VcpuControl> {
        Arc::new(vcpus::MachineVcpus::new(self.devices.cpu_hotplug.clone(), self.vcpus, self.max_vcpus))
    }
}

/// The host objects a machine is instantiated against (phase 2).
pub struct MachineBackends {
    /// Guest memory, as the engine (string copies) and DMA devices see it.
    pub mem: Arc<dyn GuestMemory>,
    /// Interrupt lines, PCI routing and shutdown.
    pub hv: Arc<dyn Hypervisor>,
    /// What the engine does on INVALIDATE and TIMEOFFSET requests.
    pub hooks: Box<dyn EngineHooks>,
    /// One sink per serial port, COM1 first (a
    /// [`xendm_devices::pc::uart::NullSink`] where there is no backend, e.g.
    /// in replay).
    pub serial_sinks: Vec<Box<dyn SerialSink>>,
}

/// Places the devices of `spec` against `backends` (phase 2). Touches
/// neither guest memory nor the hypervisor: devices act only on guest
/// accesses.
///
/// # Errors
/// If devices cannot be placed (two devices claiming one port).
pub fn build(spec: MachineSpec, backends: MachineBackends) -> Result<Machine, MachineError> {
    let MachineSpec { kind, acpi, layout, vcpus, max_vcpus, serials, cmos, boot, incoming_fw_cfg } = spec;
    let MachineBackends { hv, mem, hooks, serial_sinks } = backends;
    let mut bus = Bus::new();
    let params = pc::PcParams {
        cmos,
        acpi,
        xen_platform: kind == MachineKind::Xenfv,
        serial_ports: serials.len(),
        vcpus,
        max_vcpus,
    };
    let mut devices = pc::place_devices(&mut bus, &hv, &params, serial_sinks)?;

    // Direct kernel boot: fw_cfg serving the planned items.
    let boot = match boot {
        None => None,
        Some(BootSpec { plan, fw_cfg }) => {
            let fw = FwCfg::new(mem.clone(), fw_cfg);
            devices.fw_cfg = Some(pc::place_fw_cfg(&mut bus, fw)?);
            Some(plan)
        }
    };
    if let Some(items) = incoming_fw_cfg {
        devices.fw_cfg = Some(pc::place_fw_cfg(&mut bus, FwCfg::new(mem.clone(), items))?);
    }

    let uarts = devices.uarts.clone();
    Ok(Machine { engine: Engine::new(bus, mem, hooks), uarts, boot, vcpus, max_vcpus, layout, devices })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use crate::ioreq::engine::NoHooks;
    use xendm_devices::hv::FakeHypervisor;
    use xendm_devices::mem::TestMemory;
    use xendm_devices::Sbdf;

    use crate::cli::run_config as config;

    fn spec(args: &[&str]) -> MachineSpec {
        MachineSpec::from_config(&config(args)).unwrap()
    }

    fn backends(hv: Arc<FakeHypervisor>) -> MachineBackends {
        MachineBackends {
            hv,
            mem: Arc::new(TestMemory::pc(16 << 20).unwrap()),
            hooks: Box::new(NoHooks),
            serial_sinks: Vec::new(),
        }
    }

    fn cfg_read(e: &mut Engine, sbdf: Sbdf, reg: u64, size: u32) -> u64 {
        let req = Ioreq {
            addr: (u64::from(sbdf.to_u32()) << 32) | reg,
            data: 0,
            count: 1,
            size,
            data_is_ptr: false,
            is_read: true,
            df: false,
            kind: IoreqKind::PciConfig,
        };
        e.handle(0, &req)
    }

    #[test]
    fn xenfv_has_the_qemu_xen_pci_topology() {
        let hv = Arc::new(FakeHypervisor::new());
        let mut m = build(spec(&["-xen-domid", "1", "-serial", "null", "-m", "128"]), backends(hv)).unwrap();
        let e = &mut m.engine;
        assert_eq!(cfg_read(e, Sbdf::new(0, 0), 0, 4), 0x1237_8086);
        assert_eq!(cfg_read(e, Sbdf::new(1, 0), 0, 4), 0x7000_8086);
        assert_eq!(cfg_read(e, Sbdf::new(1, 3), 0, 4), 0x7113_8086);
        assert_eq!(cfg_read(e, Sbdf::new(2, 0), 0, 4), 0x0001_5853);
        assert_eq!(cfg_read(e, Sbdf::new(1, 1), 0, 4), 0xffff_ffff, "no IDE function");
        let fns = e.bus_mut().pci_functions();
        assert_eq!(fns, vec![Sbdf::new(0, 0), Sbdf::new(1, 0), Sbdf::new(1, 3), Sbdf::new(2, 0)]);
        let ports = e.bus_mut().pio_ranges();
        for p in [0x10u64, 0x60, 0x64, 0x70, 0x71, 0x92, 0xb2, 0x3f8, 0xcf8, 0xcf9, 0xcfc, 0xafe0] {
            assert!(ports.iter().any(|&(s, end)| s <= p && p <= end), "port {p:#x} not claimed: {ports:x?}");
        }
        assert!(!ports.iter().any(|&(s, end)| s <= 0x510 && 0x510 <= end), "no fw_cfg without -kernel");
        assert!(m.boot.is_none());
    }

    #[test]
    fn pc_accel_xen_has_no_platform_device_and_no_acpi_drops_pm() {
        let hv = Arc::new(FakeHypervisor::new());
        let mut m = build(spec(&["-xen-domid", "1", "-machine", "pc,accel=xen", "-no-acpi"]), backends(hv)).unwrap();
        assert_eq!(m.engine.bus_mut().pci_functions(), vec![Sbdf::new(0, 0), Sbdf::new(1, 0)]);
    }

    #[test]
    fn uart_output_and_irq_go_to_the_injected_sink_and_hypervisor() {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl SerialSink for Sink {
            fn write(&mut self, d: &[u8]) {
                self.0.lock().unwrap().extend_from_slice(d);
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let hv = Arc::new(FakeHypervisor::new());
        let mut b = backends(hv.clone());
        b.serial_sinks = vec![Box::new(Sink(out.clone()))];
        let mut m = build(spec(&["-xen-domid", "1", "-serial", "pty"]), b).unwrap();
        let w = |port, data| Ioreq {
            addr: port,
            data,
            count: 1,
            size: 1,
            data_is_ptr: false,
            is_read: false,
            df: false,
            kind: IoreqKind::Pio,
        };
        m.engine.handle(0, &w(0x3f9, 2)); // IER: THR empty interrupt
        m.engine.handle(0, &w(0x3fc, 8)); // MCR OUT2
        m.engine.handle(0, &w(0x3f8, u64::from(b'x')));
        assert_eq!(&*out.lock().unwrap(), b"x");
        assert!(hv.calls().iter().any(|c| matches!(c, xendm_devices::HvCall::IsaIrq { irq: 4, .. })));
    }

    /// Guest memory that counts every access.
    #[derive(Default)]
    struct Watched(std::sync::atomic::AtomicUsize);

    impl GuestMemory for Watched {
        fn read(&self, _: vm_memory::GuestAddress, _: &mut [u8]) -> Result<(), xendm_devices::MemError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn write(&self, _: vm_memory::GuestAddress, _: &[u8]) -> Result<(), xendm_devices::MemError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn building_touches_neither_guest_memory_nor_the_hypervisor() {
        // Start-up binds the real mapcache and hypervisor before building:
        // building must not act on them, only guest accesses may.
        let kernel = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage");
        let s = spec(&["-xen-domid", "1", "-serial", "null", "-serial", "null", "-kernel", kernel]);
        let hv = Arc::new(FakeHypervisor::new());
        let mem = Arc::new(Watched::default());
        let b =
            MachineBackends { hv: hv.clone(), mem: mem.clone(), hooks: Box::new(NoHooks), serial_sinks: Vec::new() };
        let mut m = build(s, b).unwrap();
        assert!(hv.calls().is_empty(), "{:?}", hv.calls());
        assert_eq!(mem.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(m.uarts.len(), 2);
        assert_eq!(m.boot.as_ref().map(|b| b.rom_name), Some("linuxboot_dma.bin"));
        // fw_cfg serves the planned items: the signature through port 0x511.
        let sig: Vec<u8> = (0..4)
            .map(|_| {
                let req = Ioreq {
                    addr: 0x511,
                    data: 0,
                    count: 1,
                    size: 1,
                    data_is_ptr: false,
                    is_read: true,
                    df: false,
                    kind: IoreqKind::Pio,
                };
                m.engine.handle(0, &req) as u8
            })
            .collect();
        assert_eq!(sig, b"QEMU");
    }
}
