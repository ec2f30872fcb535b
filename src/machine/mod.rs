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
//! | 00:01.3, PMBASE (0xB000 after hvmloader), 0xB2-0xB3, 0xAFE0-0xAFE3 | PIIX4 ACPI PM (absent with `-no-acpi`) |
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
//! The machine is built before any Xen handle is opened: [`LateMemory`] and
//! [`LateHypervisor`] are handed to the devices and bound to the mapcache and
//! the Xen hypervisor afterwards, so a bad kernel path or option is reported
//! without touching the guest.

pub mod hooks;
pub mod pc;
pub mod replay;
pub mod state;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::GuestAddress;
use xendm_devices::pc::uart::{SerialSink, Uart};
use xendm_devices::{Bus, GuestMemory, Hypervisor, MemError, ShutdownReason};
use xendm_fw_cfg::{BootFiles, BootPlan, FwCfg, FwCfgOptions, RamLayout};

use crate::cli::{Config, MachineKind};
use crate::ioreq::engine::{Engine, EngineHooks};

/// QEMU's default `-m`.
pub const DEFAULT_MEM_MIB: u64 = 128;

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
    #[error("-serial: at most {max} serial ports are supported, {given} given", max = COM_PORTS.len())]
    TooManySerials { given: usize },
    #[error("-initrd/-append given without -kernel")]
    BootArgsWithoutKernel,
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

/// Everything [`build`] needs besides the config.
pub struct Inputs {
    pub hv: Arc<dyn Hypervisor>,
    pub mem: Arc<dyn GuestMemory>,
    pub hooks: Box<dyn EngineHooks>,
    /// One sink per `-serial` port (a [`xendm_devices::pc::uart::NullSink`] where
    /// there is no backend, e.g. in replay).
    pub serial_sinks: Vec<Box<dyn SerialSink>>,
}

/// The guest's RAM layout for `config`.
pub fn ram_layout(config: &Config) -> RamLayout {
    RamLayout::xen(config.mem_mib.unwrap_or(DEFAULT_MEM_MIB), config.machine.max_ram_below_4g)
}

/// Builds the machine `config` describes. Reads the kernel and initrd.
///
/// # Errors
/// If the kernel or initrd cannot be loaded, or devices cannot be placed.
pub fn build(config: &Config, inputs: Inputs) -> Result<Machine, MachineError> {
    if config.machine.kind == MachineKind::None {
        return Err(MachineError::NoMachine);
    }
    let Inputs { hv, mem, hooks, serial_sinks } = inputs;
    let layout = ram_layout(config);
    let (vcpus, max_vcpus) = match &config.smp {
        Some(s) => (s.cpus.max(1), s.maxcpus.max(s.cpus).max(1)),
        None => (1, 1),
    };
    let serials: Vec<&crate::cli::SerialSpec> = config.serial_ports().collect();
    if serials.len() > COM_PORTS.len() {
        return Err(MachineError::TooManySerials { given: serials.len() });
    }
    let mut bus = Bus::new();
    let params = pc::PcParams {
        ram_below_4g: layout.below_4g,
        ram_above_4g: layout.above_4g,
        vcpus,
        boot_order: config.boot_order.clone().unwrap_or_else(|| "cda".to_string()),
        acpi: !config.no_acpi,
        xen_platform: config.machine.kind == MachineKind::Xenfv,
        serial_ports: serials.len(),
    };
    let mut devices = pc::place_devices(&mut bus, &hv, &params, serial_sinks)?;

    // Direct kernel boot: fw_cfg + loader + our ROM at boot index 0.
    let boot = match &config.kernel {
        None => {
            if config.initrd_spec.is_some() || config.append.is_some() {
                return Err(MachineError::BootArgsWithoutKernel);
            }
            None
        }
        Some(kernel) => {
            let opts = FwCfgOptions { nb_cpus: u16::try_from(vcpus).unwrap_or(u16::MAX), ..FwCfgOptions::default() };
            let mut fw = FwCfg::new(mem.clone(), opts)?;
            let files = BootFiles {
                kernel: kernel.clone(),
                initrd: config.initrd_spec.clone(),
                cmdline: config.append.clone().unwrap_or_default(),
            };
            let force = config.boot_protocol.map(|p| match p {
                crate::cli::BootProtocol::Linux => xendm_fw_cfg::BootProtocol::Linux,
                crate::cli::BootProtocol::Multiboot => xendm_fw_cfg::BootProtocol::Multiboot,
                crate::cli::BootProtocol::Pvh => xendm_fw_cfg::BootProtocol::Pvh,
            });
            let plan = xendm_fw_cfg::load(&mut fw, &files, &layout, force)?;
            let rom = xendm_roms::by_name(plan.rom_name).ok_or(MachineError::MissingRom(plan.rom_name))?;
            fw.add_boot_rom(plan.rom_name, rom.to_vec())?;
            devices.fw_cfg = Some(pc::place_fw_cfg(&mut bus, fw)?);
            Some(plan)
        }
    };

    let uarts = devices.uarts.clone();
    Ok(Machine { engine: Engine::new(bus, mem, hooks), uarts, boot, vcpus, max_vcpus, layout, devices })
}

/// Guest memory bound after the machine is built (see the module docs).
/// Until bound, every access fails as unmapped.
#[derive(Default)]
pub struct LateMemory(OnceLock<Arc<dyn GuestMemory>>);

impl LateMemory {
    /// Binds the real memory; a second call is ignored (returns false).
    pub fn bind(&self, mem: Arc<dyn GuestMemory>) -> bool {
        self.0.set(mem).is_ok()
    }
}

impl GuestMemory for LateMemory {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        match self.0.get() {
            Some(m) => m.read(addr, buf),
            None => Err(MemError::Unmapped { addr: addr.0, len: buf.len() }),
        }
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        match self.0.get() {
            Some(m) => m.write(addr, buf),
            None => Err(MemError::Unmapped { addr: addr.0, len: buf.len() }),
        }
    }
}

/// A hypervisor bound after the machine is built. Calls before binding are
/// logged and dropped (none happen: devices act only on guest accesses).
#[derive(Default)]
pub struct LateHypervisor(OnceLock<Arc<dyn Hypervisor>>);

impl LateHypervisor {
    /// Binds the real hypervisor; a second call is ignored (returns false).
    pub fn bind(&self, hv: Arc<dyn Hypervisor>) -> bool {
        self.0.set(hv).is_ok()
    }
    fn get(&self, what: &str) -> Option<&Arc<dyn Hypervisor>> {
        let h = self.0.get();
        if h.is_none() {
            tracing::warn!("{what} before the hypervisor was bound; dropped");
        }
        h
    }
}

impl Hypervisor for LateHypervisor {
    fn set_isa_irq_level(&self, irq: u8, level: bool) {
        if let Some(h) = self.get("set_isa_irq_level") {
            h.set_isa_irq_level(irq, level);
        }
    }
    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) {
        if let Some(h) = self.get("set_pci_intx_level") {
            h.set_pci_intx_level(device, intx, level);
        }
    }
    fn set_pci_link_route(&self, link: u8, irq: u8) {
        if let Some(h) = self.get("set_pci_link_route") {
            h.set_pci_link_route(link, irq);
        }
    }
    fn inject_msi(&self, addr: u64, data: u32) {
        if let Some(h) = self.get("inject_msi") {
            h.inject_msi(addr, data);
        }
    }
    fn shutdown(&self, reason: ShutdownReason) {
        if let Some(h) = self.get("shutdown") {
            h.shutdown(reason);
        }
    }
}

/// Paths of the files the loader read, for trace headers.
pub fn boot_file_paths(config: &Config) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(k) = &config.kernel {
        v.push(k.clone());
    }
    if let Some(spec) = &config.initrd_spec {
        // A multiboot module list names several files; each is "path args".
        for part in xendm_fw_cfg::multiboot::split_modules(spec) {
            if let Some(p) = part.split(' ').next().filter(|p| !p.is_empty()) {
                v.push(PathBuf::from(p));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use crate::ioreq::engine::NoHooks;
    use xendm_devices::hv::FakeHypervisor;
    use xendm_devices::mem::TestMemory;
    use xendm_devices::Sbdf;

    fn config(args: &[&str]) -> Config {
        match crate::cli::parse(args.iter().map(Into::into)).unwrap() {
            crate::cli::Command::Run(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn inputs(hv: Arc<FakeHypervisor>) -> Inputs {
        Inputs {
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
        let mut m = build(&config(&["-xen-domid", "1", "-serial", "null", "-m", "128"]), inputs(hv)).unwrap();
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
        let mut m = build(&config(&["-xen-domid", "1", "-machine", "pc,accel=xen", "-no-acpi"]), inputs(hv)).unwrap();
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
        let mut inp = inputs(hv.clone());
        inp.serial_sinks = vec![Box::new(Sink(out.clone()))];
        let mut m = build(&config(&["-xen-domid", "1", "-serial", "pty"]), inp).unwrap();
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

    #[test]
    fn boot_args_without_kernel_and_missing_kernel_are_errors() {
        let hv = Arc::new(FakeHypervisor::new());
        let mut c = config(&["-xen-domid", "1"]);
        c.append = Some("x".into()); // the CLI refuses this already; the machine does too
        let e = build(&c, inputs(hv.clone())).err().unwrap();
        assert!(matches!(e, MachineError::BootArgsWithoutKernel));
        let e = build(&config(&["-xen-domid", "1", "-kernel", "/nonexistent/vmlinuz"]), inputs(hv)).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/vmlinuz"), "{e}");
    }

    #[test]
    fn late_handles_fail_until_bound() {
        let late = LateMemory::default();
        let mut b = [0u8; 2];
        assert!(late.read(GuestAddress(0), &mut b).is_err());
        assert!(late.bind(Arc::new(TestMemory::pc(2 << 20).unwrap())));
        assert!(late.read(GuestAddress(0), &mut b).is_ok());
        let hv = Arc::new(FakeHypervisor::new());
        let lh = LateHypervisor::default();
        lh.shutdown(ShutdownReason::Reboot);
        lh.bind(hv.clone());
        lh.shutdown(ShutdownReason::Poweroff);
        assert_eq!(hv.calls(), vec![xendm_devices::HvCall::Shutdown { reason: ShutdownReason::Poweroff }]);
    }

    #[test]
    fn boot_file_paths_follow_the_module_list() {
        let c = config(&["-xen-domid", "1", "-kernel", "/k", "-initrd", "/m1 x y,/m2"]);
        assert_eq!(boot_file_paths(&c), vec![PathBuf::from("/k"), PathBuf::from("/m1"), PathBuf::from("/m2")]);
    }
}
