//! Phase 1 of start-up: the machine as a plan, with no Xen and no guest
//! memory.
//!
//! [`MachineSpec::from_config`] turns the parsed command line into
//! everything the machine needs except the live objects: the RAM layout
//! (QEMU's `xen_ram_init`), the vCPU counts, which devices exist (`xenfv` or
//! `pc,accel=xen`, ACPI or not, which serial ports and their backends), the
//! CMOS parameters, and for `-kernel` the boot plan: the kernel, initrd and
//! modules opened and validated (regular files, sizes against the RAM
//! layout, headers; kept open, never read whole), every fw_cfg item the
//! loader produces (the large ones as ranges of the open files), the boot
//! ROM, and the PVH segments to write into guest RAM. Every error that can be
//! found without touching the guest is found here, so a bad option or
//! kernel ends the process before any Xen handle is opened.
//!
//! Phase 2, [`crate::machine::build`], places the devices of a spec against
//! real guest memory and a real hypervisor (or fakes, or a trace).
//!
//! The split follows propolis' spec builder (validate everything, then
//! instantiate) and linux-loader's separation of loading from configuring;
//! facts, not code.

use xendm_devices::pc::cmos::{Cmos, CmosConfig};
use xendm_fw_cfg::{BootFiles, BootPlan, FwCfgItems, FwCfgOptions, RamLayout};

use super::{MachineError, COM_PORTS};
use crate::cli::{Config, MachineKind};
use crate::control::chardev::ChardevSpec;

/// QEMU's default `-m`.
pub const DEFAULT_MEM_MIB: u64 = 128;

/// QEMU's default `-boot order` on a PC.
const DEFAULT_BOOT_ORDER: &str = "cda";

/// A machine fully planned and checked, not yet placed (see the module docs).
#[derive(Debug)]
pub struct MachineSpec {
    /// `xenfv` (with the Xen platform device) or `pc,accel=xen`.
    pub kind: MachineKind,
    /// Whether the PIIX4 ACPI function exists (no `-no-acpi`).
    pub acpi: bool,
    /// The guest RAM layout for `-m` and `max-ram-below-4g`.
    pub layout: RamLayout,
    /// vCPUs the guest starts with (`-smp`, else 1).
    pub vcpus: u32,
    /// Maximum vCPUs (`-smp maxcpus=`), the number of ioreq slots to serve.
    pub max_vcpus: u32,
    /// The backend of each serial port, COM1 first: at most four, each one
    /// xendm can open.
    pub serials: Vec<ChardevSpec>,
    /// What the CMOS NVRAM starts with (checked: a bad `-boot order` fails
    /// here).
    pub cmos: CmosConfig,
    /// Direct kernel boot (`-kernel`).
    pub boot: Option<BootSpec>,
    /// On `-incoming` with `-kernel`: the fw_cfg device the saved guest had,
    /// with only the items that need no file (the guest booted long ago;
    /// the kernel and initrd are neither read nor needed, `boot` is `None`).
    pub incoming_fw_cfg: Option<FwCfgItems>,
}

/// Direct kernel boot, planned: what the device will serve and what the
/// caller still writes into the guest.
#[derive(Debug)]
pub struct BootSpec {
    /// What the loader decided: the format, the option ROM, and (PVH) the
    /// segments to write into guest RAM before the guest runs.
    pub plan: BootPlan,
    /// Every fw_cfg item, the loader's keys and the boot ROM included.
    pub fw_cfg: FwCfgItems,
}

impl MachineSpec {
    /// Plans the machine `config` describes. Opens the kernel and initrd
    /// (their headers are read); touches neither Xen nor the guest.
    ///
    /// # Errors
    /// `-machine none`, too many or unsupported serial ports, a bad boot
    /// order, boot arguments without a kernel, a kernel or initrd that
    /// cannot be loaded.
    pub fn from_config(config: &Config) -> Result<Self, MachineError> {
        if config.machine.kind == MachineKind::None {
            return Err(MachineError::NoMachine);
        }
        let layout = ram_layout(config);
        let (vcpus, max_vcpus) = vcpu_counts(config);
        check_pv_path(config)?;
        let serials = serial_ports(config)?;
        let cmos = cmos_config(config, &layout, vcpus)?;
        let (boot, incoming_fw_cfg) = if config.incoming.is_some() {
            (None, incoming_fw_cfg(config, vcpus)?)
        } else {
            (plan_boot(config, &layout, vcpus)?, None)
        };
        Ok(Self {
            kind: config.machine.kind,
            acpi: !config.no_acpi,
            layout,
            vcpus,
            max_vcpus,
            serials,
            cmos,
            boot,
            incoming_fw_cfg,
        })
    }
}

/// The guest's RAM layout for `config`.
pub fn ram_layout(config: &Config) -> RamLayout {
    RamLayout::xen(config.mem_mib.unwrap_or(DEFAULT_MEM_MIB), config.machine.max_ram_below_4g)
}

/// `(vcpus, max_vcpus)`: at least one, and the maximum never below the
/// boot count.
fn vcpu_counts(config: &Config) -> (u32, u32) {
    match &config.smp {
        Some(s) => (s.cpus.max(1), s.maxcpus.max(s.cpus).max(1)),
        None => (1, 1),
    }
}

/// The serial ports in COM order, each checked to be one xendm can open.
fn serial_ports(config: &Config) -> Result<Vec<ChardevSpec>, MachineError> {
    let serials: Vec<ChardevSpec> = config.serial_ports().cloned().collect();
    if serials.len() > COM_PORTS.len() {
        return Err(MachineError::TooManySerials { given: serials.len() });
    }
    for s in &serials {
        s.check_supported()?;
    }
    Ok(serials)
}

/// libxl's emulated hard disks (IDE `xvda`-`xvdd`, AHCI, SCSI) are the
/// guest's PV disks too, and its emulated NICs are its vifs too; xendm
/// serves both through the PV path only (a guest with PV drivers unplugs
/// the emulated ones anyway, `xen-toolstack.md` 3.3-3.4). That needs the
/// kernel to be booted directly (SeaBIOS has no PV block driver, and a
/// guest booted by firmware cannot be assumed to have PV drivers) and the
/// Xen platform device (the guest's PV drivers bind to it). Otherwise the
/// first disk or NIC is refused, naming the xl.cfg setting to change.
fn check_pv_path(config: &Config) -> Result<(), MachineError> {
    let (disk_why, nic_why) = if config.kernel.is_none() {
        (
            "which firmware cannot boot from: set kernel= (and ramdisk=, cmdline=) in the xl config, \
             or boot the guest with qemu-xen",
            "which xendm relies on only with a direct kernel boot: add type=vif to this vif= entry in the xl \
             config (vif=['bridge=...,type=vif']), or set kernel=",
        )
    } else if config.machine.kind != MachineKind::Xenfv {
        (
            "which needs the Xen platform device: remove xen_platform_pci=0 from the xl config",
            "which needs the Xen platform device: remove xen_platform_pci=0 from the xl config, or add \
             type=vif to this vif= entry",
        )
    } else {
        return Ok(());
    };
    if let Some(d) = config.disks.first() {
        return Err(MachineError::UnreachableDisk { vdev: d.vdev(), form: d.form(), why: disk_why });
    }
    if let Some(n) = config.nics.first() {
        return Err(MachineError::UnreachableNic {
            model: n.model.clone(),
            netdev: n.netdev_id.clone(),
            ifname: n.ifname.clone(),
            why: nic_why,
        });
    }
    Ok(())
}

/// The CMOS parameters, checked by building the NVRAM contents once.
fn cmos_config(config: &Config, layout: &RamLayout, vcpus: u32) -> Result<CmosConfig, MachineError> {
    let cmos = CmosConfig {
        ram_bytes_below_4g: layout.below_4g,
        ram_bytes_above_4g: layout.above_4g,
        boot_order: config.boot_order.clone().unwrap_or_else(|| DEFAULT_BOOT_ORDER.to_string()),
        smp_cpus: vcpus,
        fd_bootchk: true,
    };
    Cmos::new(&cmos)?;
    Ok(cmos)
}

/// Direct kernel boot: fw_cfg items from the loader plus our ROM at boot
/// index 0 (fw_cfg exists only with `-kernel`, as QEMU on Xen).
fn plan_boot(config: &Config, layout: &RamLayout, vcpus: u32) -> Result<Option<BootSpec>, MachineError> {
    let Some(kernel) = &config.kernel else {
        if config.initrd_spec.is_some() || config.append.is_some() {
            return Err(MachineError::BootArgsWithoutKernel);
        }
        return Ok(None);
    };
    let mut fw_cfg = FwCfgItems::new(&fw_cfg_options(vcpus))?;
    let files = BootFiles {
        kernel: kernel.clone(),
        initrd: config.initrd_spec.clone(),
        cmdline: config.append.clone().unwrap_or_default(),
    };
    let plan = xendm_fw_cfg::load(&mut fw_cfg, &files, layout, config.boot_protocol)?;
    let rom = xendm_roms::by_name(plan.rom_name).ok_or(MachineError::MissingRom(plan.rom_name))?;
    fw_cfg.add_boot_rom(plan.rom_name, rom.to_vec())?;
    Ok(Some(BootSpec { plan, fw_cfg }))
}

fn fw_cfg_options(vcpus: u32) -> FwCfgOptions {
    FwCfgOptions { nb_cpus: u16::try_from(vcpus).unwrap_or(u16::MAX), ..FwCfgOptions::default() }
}

/// `-incoming` with `-kernel`: fw_cfg without the loader's items. The files
/// are not opened (they may be gone since the guest booted).
fn incoming_fw_cfg(config: &Config, vcpus: u32) -> Result<Option<FwCfgItems>, MachineError> {
    if config.kernel.is_none() {
        if config.initrd_spec.is_some() || config.append.is_some() {
            return Err(MachineError::BootArgsWithoutKernel);
        }
        return Ok(None);
    }
    Ok(Some(FwCfgItems::new(&fw_cfg_options(vcpus))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xendm_fw_cfg::{keys, BootProtocol};

    use crate::cli::run_config as config;

    fn mini_kernel() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage").to_string()
    }

    #[test]
    fn devices_vcpus_and_layout_come_from_the_command_line() {
        let s = MachineSpec::from_config(&config(&[
            "-xen-domid",
            "1",
            "-machine",
            "pc,accel=xen",
            "-no-acpi",
            "-m",
            "8192",
            "-smp",
            "2,maxcpus=4",
            "-serial",
            "none",
            "-serial",
            "pty",
        ]))
        .unwrap();
        assert_eq!(s.kind, MachineKind::PcAccelXen);
        assert!(!s.acpi);
        assert_eq!((s.vcpus, s.max_vcpus), (2, 4));
        assert_eq!(s.layout, RamLayout { below_4g: 0xF000_0000, above_4g: (8192 << 20) - 0xF000_0000 });
        assert_eq!(s.serials, [ChardevSpec::Pty]);
        assert_eq!(s.cmos.boot_order, "cda");
        assert_eq!(s.cmos.smp_cpus, 2);
        assert!(s.boot.is_none());
    }

    #[test]
    fn every_refusal_happens_while_planning() {
        let mut c = config(&["-xen-domid", "1"]);
        c.append = Some("x".into()); // the CLI refuses this already; the plan does too
        assert!(matches!(MachineSpec::from_config(&c), Err(MachineError::BootArgsWithoutKernel)));

        let c = config(&["-xen-domid", "1", "-serial", "pty", "-serial", "/dev/ttyS0"]);
        let e = MachineSpec::from_config(&c).unwrap_err();
        assert_eq!(e.to_string(), "-serial /dev/ttyS0: host character devices are not supported");

        let mut c = config(&["-xen-domid", "1"]);
        c.serial = vec![ChardevSpec::Null; 5];
        assert!(matches!(MachineSpec::from_config(&c), Err(MachineError::TooManySerials { given: 5 })));

        let e = MachineSpec::from_config(&config(&["-xen-domid", "1", "-boot", "order=e"])).unwrap_err();
        assert!(matches!(e, MachineError::Cmos(_)), "{e}");

        let e = MachineSpec::from_config(&config(&["-machine", "none,accel=xen"])).unwrap_err();
        assert!(matches!(e, MachineError::NoMachine));

        let e = MachineSpec::from_config(&config(&["-xen-domid", "1", "-kernel", "/nonexistent/vmlinuz"])).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinuz"), "{e}");
    }

    #[test]
    fn disks_and_nics_need_a_direct_kernel_boot_and_the_platform_device() {
        let boot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot/mini-bzImage");
        let k = boot.display().to_string();
        let ide = ["-drive", "file=/srv/d0.img,if=ide,index=0,media=disk,format=raw,cache=writeback"];
        let ahci = [
            "-device",
            "ahci,id=ahci0",
            "-drive",
            "file=/srv/d1.img,if=none,id=ahcidisk-1,format=raw,cache=writeback",
            "-device",
            "ide-hd,bus=ahci0.1,unit=0,drive=ahcidisk-1",
        ];
        let scsi = [
            "-device",
            "lsi53c895a",
            "-drive",
            "file=/srv/s0.img,id=scsi0-hd0,format=raw,if=none,readonly=off,cache=writeback",
            "-device",
            "scsi-hd,drive=scsi0-hd0,scsi-id=0",
        ];
        let nic = [
            "-device",
            "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:51:36:66",
            "-netdev",
            "type=tap,id=net0,ifname=vif1.0-emu,br=xenbr0,script=no,downscript=no",
        ];
        let plan = |base: &[&str], extra: &[&str]| {
            let mut all = vec!["-xen-domid", "1"];
            all.extend_from_slice(base);
            all.extend_from_slice(extra);
            MachineSpec::from_config(&config(&all)).map(|_| ()).map_err(|e| e.to_string())
        };
        let direct = ["-kernel", k.as_str()];
        let no_platform = ["-kernel", k.as_str(), "-machine", "pc,accel=xen"];
        for (devices, what) in [
            (&ide[..], "disk xvda (-drive if=ide,index=0): "),
            (&ahci[..], "disk xvdb (-device ide-hd,bus=ahci0.1): "),
            (&scsi[..], "disk sda (SCSI disk, scsi-id=0): "),
            (&nic[..], "NIC rtl8139 (-device rtl8139,netdev=net0, tap vif1.0-emu): "),
        ] {
            assert_eq!(plan(&direct, devices), Ok(()), "{what}");
            let e = plan(&[], devices).unwrap_err();
            assert!(e.starts_with(what), "{e}");
            let fix = if what.starts_with("NIC") { "add type=vif to this vif= entry" } else { "set kernel=" };
            assert!(e.contains(fix), "{e}");
            let e = plan(&no_platform, devices).unwrap_err();
            assert!(e.starts_with(what) && e.contains("remove xen_platform_pci=0"), "{e}");
        }
        // A controller with no disk (hdtype=ahci, disks at xvdg and later) needs neither.
        assert_eq!(plan(&[], &["-device", "ahci,id=ahci0"]), Ok(()));
        let e = plan(&[], &nic).unwrap_err();
        assert!(e.contains("PV network driver (netfront)"), "{e}");
    }

    /// Audit 2026-12 section 3: a FIFO as `-kernel` or `-initrd` hung
    /// planning forever, `/dev/zero` was read to 512 MiB. Both are refused
    /// now, at once (a guard thread turns a hang into a failure).
    #[test]
    fn fifos_and_devices_are_refused_while_planning_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let f = fifo.display().to_string();
        let k = mini_kernel();
        for (args, want) in [
            (vec!["-kernel", f.as_str()], "opening kernel"),
            (vec!["-kernel", k.as_str(), "-initrd", f.as_str()], "opening initrd"),
            (vec!["-kernel", "/dev/zero"], "opening kernel /dev/zero: it is a character device"),
        ] {
            let mut all = vec!["-xen-domid", "1"];
            all.extend(args);
            let c = config(&all);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(MachineSpec::from_config(&c).map(|_| ()).map_err(|e| e.to_string())));
            let r = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("planning blocked");
            let e = r.unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn a_kernel_is_planned_into_fw_cfg_items_with_its_rom() {
        let k = mini_kernel();
        let s = MachineSpec::from_config(&config(&["-xen-domid", "1", "-smp", "3", "-kernel", &k])).unwrap();
        let boot = s.boot.unwrap();
        assert_eq!(boot.plan.protocol, BootProtocol::Linux);
        assert!(boot.plan.guest_writes.is_empty());
        assert_eq!(boot.fw_cfg.item_data(keys::NB_CPUS), Some(&3u16.to_le_bytes()[..]));
        assert!(boot.fw_cfg.item(keys::KERNEL_DATA).is_some());
        assert!(boot.fw_cfg.item_data(keys::KERNEL_DATA).is_none(), "served from the open file");
        assert_eq!(boot.plan.files.len(), 1);
        assert_eq!(boot.fw_cfg.file_data("bootorder").unwrap(), b"/rom@genroms/linuxboot_dma.bin\0");
        let rom = xendm_roms::by_name("linuxboot_dma.bin").unwrap();
        assert_eq!(boot.fw_cfg.file_data("genroms/linuxboot_dma.bin").unwrap(), rom);
    }
}
