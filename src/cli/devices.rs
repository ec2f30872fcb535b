//! `-drive`, `-device` and `-netdev`: the disks and NICs libxl asks the
//! device model to emulate, folded into [`EmulatedDisk`]s and [`TapNic`]s.
//!
//! The argv shapes are libxl 4.17's (`libxl__build_device_model_args_new`
//! in `tools/libs/light/libxl_dm.c`, `xen-toolstack.md` 3.1):
//!
//! * IDE (`xvda`-`xvdd`/`hda`-`hdd`, the default):
//!   `-drive file=T,if=ide,index=N,media=disk,format=F,cache=writeback`;
//! * AHCI (`hdtype=ahci`, disks 0-5): `-device ahci,id=ahci0` once, then per
//!   disk `-drive file=T,if=none,id=ahcidisk-N,format=F,cache=writeback` and
//!   `-device ide-hd,bus=ahci0.N,unit=0,drive=ahcidisk-N`;
//! * SCSI (`sdX`): `-device lsi53c895a` once, then per disk
//!   `-drive file=T,id=scsi0-hdN,format=F,if=none,readonly=off|on,cache=writeback`
//!   and `-device scsi-hd,drive=scsi0-hdN,scsi-id=N` (older libxl:
//!   `-drive file=T,if=scsi,bus=0,unit=N,...`);
//! * CD-ROM: `-drive if=none,readonly=on,id=ide-D[,file=T,format=F]` and
//!   `-device ide-cd,id=ide-D,drive=ide-D,bus=ide.B,unit=U` (refused);
//! * NIC (`type=ioemu`, xl's HVM default):
//!   `-device MODEL,id=nicN,netdev=netN,mac=M` *before*
//!   `-netdev type=tap,id=netN,ifname=vifD.N-emu,br=B,script=no,downscript=no`.
//!
//! A `-device` may come before or after what it names, so pairs are
//! resolved once every argument is in ([`DeviceArgs::finish`]). Nothing is
//! emulated: the disks are the guest's PV vbds too and the NICs its vifs;
//! `machine::spec` checks that the guest can reach them that way.

use super::opts::Opts;
use super::{CliError, DiskBus, EmulatedDisk, TapNic};

pub(super) const NO_DISK: &str =
    "emulated disks and CD-ROMs are not implemented; give the guest PV disks (vdev=xvdX) in the xl config";
pub(super) const NO_CDROM: &str = "emulated CD-ROMs are not implemented; remove the devtype=cdrom disk from the xl \
     config (or give the image to the guest as a PV disk, vdev=xvde or later)";
const NO_RO_DISK: &str = "libxl emits no read-only IDE or AHCI disk (qemu-xen does not support them); give the \
     disk as vdev=xvde or later with access=ro";

/// libxl passes a format other than raw (`host_device` in a stubdom) only
/// for a disk its qdisk backend serves (`xen-toolstack.md` 3.1, 3.5), and
/// xendm has no qdisk backend: the guest would have no disk at all.
fn check_format(format: Option<&str>) -> Result<(), CliError> {
    match format {
        None | Some("raw" | "host_device") => Ok(()),
        Some(f) => Err(unsupported(
            "-drive",
            "format",
            f,
            "libxl serves such a disk with QEMU's qdisk backend, which xendm does not have; convert the image \
             (qemu-img convert -O raw) and give the disk as format=raw, so libxl uses blkback",
        )),
    }
}

/// The NIC models accepted with `-netdev type=tap`: libxl's default
/// (`rtl8139`), the other one its manual names (`e1000`), and the PCI NICs
/// of QEMU's x86 build that QEMU's unplug removes (`pci_unplug_nics`
/// removes every PCI network-class device). None is emulated; the model
/// only has to be one a guest of qemu-xen could have had.
pub const NIC_MODELS: &[&str] =
    &["rtl8139", "e1000", "e1000e", "ne2k_pci", "pcnet", "i82551", "i82557b", "i82559er", "virtio-net-pci", "vmxnet3"];

/// Highest disk number per bus, as libxl emits them (IDE 0-3, AHCI 0-5,
/// SCSI `sda`-`sdp`).
const MAX_IDE: u32 = 3;
const MAX_AHCI: u32 = 5;
const MAX_SCSI: u32 = 15;
/// Longest Linux interface name (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// An `-drive if=none,id=ID` waiting for the `-device` that names it.
struct NoneDrive {
    id: String,
    file: String,
    format: Option<String>,
    readonly: bool,
    used: bool,
}

/// An `ide-hd` (on AHCI) or `scsi-hd` device, as given.
struct DiskDevice {
    text: String,
    drive: String,
    bus: DiskBus,
    /// The AHCI controller its `bus=` names.
    ahci: Option<String>,
}

/// A NIC `-device`, as given.
struct NicDevice {
    text: String,
    model: String,
    id: Option<String>,
    netdev: String,
    mac: Option<String>,
}

/// A `-netdev type=tap`, as given.
struct Netdev {
    id: String,
    ifname: String,
    bridge: Option<String>,
    used: bool,
}

/// The disks and NICs of the whole argv, paired.
pub(super) struct Resolved {
    pub disks: Vec<EmulatedDisk>,
    pub nics: Vec<TapNic>,
    /// Controllers accepted without emulation (`-device ahci,id=ahci0`), for the ignored list.
    pub controllers: Vec<String>,
}

/// The disk and NIC arguments seen so far.
#[derive(Default)]
pub(super) struct DeviceArgs {
    disks: Vec<EmulatedDisk>,
    none_drives: Vec<NoneDrive>,
    disk_devices: Vec<DiskDevice>,
    ahci_controllers: Vec<String>,
    scsi_controller: bool,
    nic_devices: Vec<NicDevice>,
    netdevs: Vec<Netdev>,
    /// Controllers accepted without emulation (`-device ahci,id=ahci0`), for the ignored list.
    controllers: Vec<String>,
}

fn invalid(option: &str, message: String) -> CliError {
    CliError::InvalidValue { option: option.to_string(), message }
}

fn unsupported(option: &str, what: &'static str, value: &str, reason: &str) -> CliError {
    CliError::Unsupported { option: option.to_string(), what, value: value.to_string(), reason: reason.to_string() }
}

fn refused(option: &str, reason: &str) -> CliError {
    CliError::RefusedOption { option: option.to_string(), reason: reason.to_string() }
}

fn opts_err(option: &str) -> impl Fn(super::OptsError) -> CliError + '_ {
    move |source| CliError::Opts { option: option.to_string(), source }
}

fn required<'a>(option: &str, o: &'a Opts, key: &str) -> Result<&'a str, CliError> {
    match o.get(key) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CliError::Opts { option: option.to_string(), source: super::OptsError::MissingKey(key.to_string()) }),
    }
}

/// A number key no larger than `max`; `None` when absent.
fn number(option: &str, o: &Opts, key: &str, max: u32) -> Result<Option<u32>, CliError> {
    match o.get_u32(key).map_err(opts_err(option))? {
        Some(n) if n > max => Err(invalid(option, format!("{key}={n} is above {max}"))),
        n => Ok(n),
    }
}

/// `XX:XX:XX:XX:XX:XX` in hex.
fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A name Linux takes as is for a new interface (`dev_valid_name`), and
/// with no `%` (which would make the kernel pick a number, so the tap would
/// not have the name libxl's hotplug script looks for).
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("interface name '{name}' must have 1 to {IFNAME_MAX} bytes"));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace()) {
        return Err(format!("'{name}' is not a valid interface name (no '/', ':', '%' or spaces; not . or ..)"));
    }
    if !name.is_ascii() || name.chars().any(|c| c.is_ascii_control()) {
        return Err(format!("interface name {name:?} must be printable ASCII"));
    }
    Ok(())
}

impl DeviceArgs {
    /// `-drive`.
    pub(super) fn drive(&mut self, v: &str) -> Result<(), CliError> {
        const OPT: &str = "-drive";
        let o = Opts::parse(v, None).map_err(opts_err(OPT))?;
        let readonly = o.get_bool("readonly").map_err(opts_err(OPT))? == Some(true);
        match o.get("media") {
            Some("cdrom") => return Err(refused(OPT, NO_CDROM)),
            None | Some("disk") => {}
            Some(m) => return Err(invalid(OPT, format!("media '{m}' (disk or cdrom)"))),
        }
        let interface = o.get("if").unwrap_or("ide");
        if !matches!(interface, "ide" | "scsi" | "none") {
            return Err(unsupported(OPT, "interface", interface, NO_DISK));
        }
        o.check_keys(&[
            "file", "if", "index", "bus", "unit", "media", "format", "cache", "readonly", "id", "aio", "discard",
        ])
        .map_err(opts_err(OPT))?;
        let file = o.get("file").unwrap_or_default().to_string();
        let bus = match interface {
            "none" => {
                let id = required(OPT, &o, "id")?.to_string();
                if self.none_drives.iter().any(|d| d.id == id) {
                    return Err(invalid(OPT, format!("drive id '{id}' given twice")));
                }
                let format = o.get("format").map(str::to_string);
                self.none_drives.push(NoneDrive { id, file, format, readonly, used: false });
                return Ok(());
            }
            "scsi" => DiskBus::Scsi { id: scsi_unit(&o)? },
            _ => {
                if readonly {
                    return Err(refused(OPT, NO_RO_DISK));
                }
                DiskBus::Ide { index: ide_index(&o)? }
            }
        };
        check_format(o.get("format"))?;
        self.disks.push(EmulatedDisk { bus, file, readonly });
        Ok(())
    }

    /// `-device DRIVER,...`: the disk devices and NICs libxl emits are
    /// recorded; every other driver is refused with what to do instead.
    pub(super) fn device(&mut self, v: &str) -> Result<(), CliError> {
        const OPT: &str = "-device";
        let o = Opts::parse(v, Some("driver")).map_err(opts_err(OPT))?;
        let driver = o.require("driver").map_err(opts_err(OPT))?;
        match driver {
            "ahci" => {
                o.check_keys(&["driver", "id"]).map_err(opts_err(OPT))?;
                self.ahci_controllers.push(required(OPT, &o, "id")?.to_string());
                self.controllers.push(format!("{OPT} {v}"));
                Ok(())
            }
            "lsi53c895a" => {
                o.check_keys(&["driver", "id"]).map_err(opts_err(OPT))?;
                self.scsi_controller = true;
                self.controllers.push(format!("{OPT} {v}"));
                Ok(())
            }
            "ide-hd" => self.ahci_disk(v, &o),
            "scsi-hd" => self.scsi_disk(v, &o),
            "ide-cd" | "scsi-cd" => Err(unsupported(OPT, "driver", driver, NO_CDROM)),
            d if NIC_MODELS.contains(&d) => self.nic(v, &o),
            d if o.get("netdev").is_some() => Err(unsupported(OPT, "NIC model", d, &unknown_nic_model())),
            d => Err(unsupported(OPT, "driver", d, refused_driver_reason(d))),
        }
    }

    fn ahci_disk(&mut self, v: &str, o: &Opts) -> Result<(), CliError> {
        const OPT: &str = "-device";
        o.check_keys(&["driver", "bus", "unit", "drive", "id"]).map_err(opts_err(OPT))?;
        let bus = required(OPT, o, "bus")?;
        let on_ahci = bus.rsplit_once('.').filter(|(c, _)| !c.is_empty() && *c != "ide");
        let Some((controller, port)) = on_ahci else {
            return Err(invalid(OPT, format!("ide-hd bus '{bus}': xendm takes ide-hd only on an AHCI port (ahci0.N)")));
        };
        let port: u32 = super::opts::parse_decimal(port)
            .filter(|p| *p <= MAX_AHCI)
            .ok_or_else(|| invalid(OPT, format!("ide-hd bus '{bus}': AHCI port must be 0-{MAX_AHCI}")))?;
        number(OPT, o, "unit", 0)?; // an AHCI port has one unit
        self.disk_devices.push(DiskDevice {
            text: format!("{OPT} {v}"),
            drive: required(OPT, o, "drive")?.to_string(),
            bus: DiskBus::Ahci { port },
            ahci: Some(controller.to_string()),
        });
        Ok(())
    }

    fn scsi_disk(&mut self, v: &str, o: &Opts) -> Result<(), CliError> {
        const OPT: &str = "-device";
        o.check_keys(&["driver", "drive", "scsi-id", "id"]).map_err(opts_err(OPT))?;
        let id = number(OPT, o, "scsi-id", MAX_SCSI)?.unwrap_or(0);
        self.disk_devices.push(DiskDevice {
            text: format!("{OPT} {v}"),
            drive: required(OPT, o, "drive")?.to_string(),
            bus: DiskBus::Scsi { id },
            ahci: None,
        });
        Ok(())
    }

    fn nic(&mut self, v: &str, o: &Opts) -> Result<(), CliError> {
        const OPT: &str = "-device";
        o.check_keys(&["driver", "id", "netdev", "mac"]).map_err(opts_err(OPT))?;
        let mac = o.get("mac").map(str::to_string);
        if let Some(m) = mac.as_deref().filter(|m| !valid_mac(m)) {
            return Err(invalid(OPT, format!("mac '{m}' is not six hex bytes (XX:XX:XX:XX:XX:XX)")));
        }
        let netdev = match o.get("netdev") {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(invalid(OPT, format!("'{v}' has no netdev=: each NIC needs the -netdev of its tap"))),
        };
        self.nic_devices.push(NicDevice {
            text: format!("{OPT} {v}"),
            model: o.require("driver").map_err(opts_err(OPT))?.to_string(),
            id: o.get("id").map(str::to_string),
            netdev,
            mac,
        });
        Ok(())
    }

    /// `-netdev type=tap,id=ID,ifname=NAME[,br=B,script=no,downscript=no]`.
    pub(super) fn netdev(&mut self, v: &str) -> Result<(), CliError> {
        const OPT: &str = "-netdev";
        let o = Opts::parse(v, Some("type")).map_err(opts_err(OPT))?;
        let ty = o.require("type").map_err(opts_err(OPT))?;
        if ty != "tap" {
            return Err(unsupported(OPT, "type", ty, "only type=tap, libxl's form for an emulated NIC; or use PV network interfaces (type=vif) in the xl config"));
        }
        o.check_keys(&["type", "id", "ifname", "br", "script", "downscript"]).map_err(opts_err(OPT))?;
        let id = required(OPT, &o, "id")?.to_string();
        let ifname = match o.get("ifname") {
            Some(n) => n.to_string(),
            None => {
                return Err(invalid(
                    OPT,
                    format!("'{v}' has no ifname=: xendm creates the tap libxl's hotplug script looks for by name"),
                ))
            }
        };
        check_ifname(&ifname).map_err(|e| invalid(OPT, e))?;
        for key in ["script", "downscript"] {
            if let Some(s) = o.get(key).filter(|s| *s != "no") {
                return Err(unsupported(
                    OPT,
                    "script",
                    &format!("{key}={s}"),
                    "xendm runs no scripts; libxl's vif-bridge hotplug script sets the tap up (script=no)",
                ));
            }
        }
        if self.netdevs.iter().any(|n| n.id == id) {
            return Err(invalid(OPT, format!("netdev id '{id}' given twice")));
        }
        if self.netdevs.iter().any(|n| n.ifname == ifname) {
            return Err(invalid(OPT, format!("ifname '{ifname}' given twice")));
        }
        self.netdevs.push(Netdev { id, ifname, bridge: o.get("br").map(str::to_string), used: false });
        Ok(())
    }

    /// Pairs every `-device` with the `-drive`/`-netdev` it names, once the
    /// whole argv is in.
    pub(super) fn finish(mut self) -> Result<Resolved, CliError> {
        for dev in std::mem::take(&mut self.disk_devices) {
            let disk = self.resolve_disk(&dev)?;
            self.disks.push(disk);
        }
        if let Some(d) = self.none_drives.iter().find(|d| !d.used) {
            return Err(CliError::Inconsistent(format!(
                "-drive if=none,id={}: no -device ide-hd (AHCI) or scsi-hd names it (drive={})",
                d.id, d.id
            )));
        }
        check_unique_disks(&self.disks)?;
        let nics = self.pair_nics()?;
        Ok(Resolved { disks: self.disks, nics, controllers: self.controllers })
    }

    fn resolve_disk(&mut self, dev: &DiskDevice) -> Result<EmulatedDisk, CliError> {
        match (&dev.ahci, dev.bus) {
            (Some(c), _) if !self.ahci_controllers.contains(c) => {
                return Err(CliError::Inconsistent(format!("{}: no -device ahci,id={c} controller", dev.text)));
            }
            (None, DiskBus::Scsi { .. }) if !self.scsi_controller => {
                return Err(CliError::Inconsistent(format!("{}: no -device lsi53c895a controller", dev.text)));
            }
            _ => {}
        }
        let Some(drive) = self.none_drives.iter_mut().find(|d| d.id == dev.drive && !d.used) else {
            return Err(CliError::Inconsistent(format!("{}: no -drive if=none,id={} for it", dev.text, dev.drive)));
        };
        drive.used = true;
        check_format(drive.format.as_deref())?;
        if drive.readonly && matches!(dev.bus, DiskBus::Ahci { .. }) {
            return Err(refused("-drive", NO_RO_DISK));
        }
        Ok(EmulatedDisk { bus: dev.bus, file: drive.file.clone(), readonly: drive.readonly })
    }

    fn pair_nics(&mut self) -> Result<Vec<TapNic>, CliError> {
        let mut nics = Vec::new();
        for dev in &self.nic_devices {
            let Some(net) = self.netdevs.iter_mut().find(|n| n.id == dev.netdev) else {
                return Err(CliError::Inconsistent(format!(
                    "{}: no -netdev type=tap,id={} (libxl passes the two together)",
                    dev.text, dev.netdev
                )));
            };
            if net.used {
                return Err(CliError::Inconsistent(format!(
                    "{}: -netdev id={} is already used by another -device",
                    dev.text, dev.netdev
                )));
            }
            net.used = true;
            nics.push(TapNic {
                model: dev.model.clone(),
                device_id: dev.id.clone(),
                netdev_id: net.id.clone(),
                mac: dev.mac.clone(),
                ifname: net.ifname.clone(),
                bridge: net.bridge.clone(),
            });
        }
        if let Some(n) = self.netdevs.iter().find(|n| !n.used) {
            return Err(CliError::Inconsistent(format!(
                "-netdev type=tap,id={},ifname={}: no -device MODEL,netdev={} uses it (libxl passes the two together)",
                n.id, n.ifname, n.id
            )));
        }
        Ok(nics)
    }
}

/// `if=ide`: `index=N`, or QEMU's `bus=B,unit=U` (index `2B + U`).
fn ide_index(o: &Opts) -> Result<u32, CliError> {
    const OPT: &str = "-drive";
    if let Some(index) = o.get_u32("index").map_err(opts_err(OPT))? {
        if index > MAX_IDE {
            return Err(invalid(OPT, format!("IDE index {index}: libxl emulates only xvda-xvdd (index 0-3)")));
        }
        return Ok(index);
    }
    let bus = number(OPT, o, "bus", 1)?.unwrap_or(0);
    let unit = number(OPT, o, "unit", 1)?.unwrap_or(0);
    Ok(bus.saturating_mul(2).saturating_add(unit))
}

/// `if=scsi` (older libxl): `bus=0,unit=N` or `index=N`.
fn scsi_unit(o: &Opts) -> Result<u32, CliError> {
    const OPT: &str = "-drive";
    if o.get_u32("bus").map_err(opts_err(OPT))?.is_some_and(|b| b != 0) {
        return Err(invalid(OPT, "if=scsi: only SCSI bus 0 exists".into()));
    }
    Ok(number(OPT, o, "unit", MAX_SCSI)?.or(number(OPT, o, "index", MAX_SCSI)?).unwrap_or(0))
}

fn check_unique_disks(disks: &[EmulatedDisk]) -> Result<(), CliError> {
    for (i, a) in disks.iter().enumerate() {
        let scsi = matches!(a.bus, DiskBus::Scsi { .. });
        if let Some(b) =
            disks.iter().skip(i + 1).find(|b| matches!(b.bus, DiskBus::Scsi { .. }) == scsi && b.number() == a.number())
        {
            return Err(CliError::Inconsistent(format!(
                "disk {} given twice ({} and {})",
                a.vdev(),
                a.form(),
                b.form()
            )));
        }
    }
    Ok(())
}

fn unknown_nic_model() -> String {
    format!(
        "xendm accepts the NIC models {}; set model= in the vif= entry to one of them, or use type=vif",
        NIC_MODELS.join(", ")
    )
}

pub(super) const NO_VGA: &str = "emulated graphics are not implemented; set vga=\"none\" in the xl config";
pub(super) const NO_USB: &str = "USB devices are not implemented; remove usbdevice=/usbdevice_list= from the xl config";
pub(super) const NO_SOUND: &str = "sound is not implemented; remove soundhw= from the xl config";

fn refused_driver_reason(driver: &str) -> &'static str {
    match driver {
        "VGA" | "cirrus-vga" | "qxl-vga" | "qxl" | "bochs-display" | "virtio-vga" => NO_VGA,
        "virtio-blk-pci" | "nvme" | "ide-drive" | "scsi-disk" | "scsi-block" | "scsi-generic" | "megasas" => NO_DISK,
        "intel-hda" | "hda-duplex" | "hda-micro" | "hda-output" | "ac97" | "es1370" | "sb16" => NO_SOUND,
        d if d.starts_with("usb-") || d.contains("-usb-") || d.ends_with("-usb") => NO_USB,
        "xen-pvdevice" => "the XenServer PV device is not implemented; remove vendor_device= from the xl config",
        "virtio-serial" | "virtio-serial-pci" | "virtserialport" | "virtconsole" => "virtio-serial is not implemented",
        _ => "xendm takes only the disk and NIC devices libxl emits; its PC devices are built in",
    }
}
