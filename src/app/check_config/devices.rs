//! check-config: disks, NICs, privilege restriction, the machine settings,
//! passthrough and extra arguments, and every other key. What libxl emits
//! for disks and NICs, and which backend serves them, is in
//! `xen-toolstack.md` §3.1 and §3.5.

use super::{args, Checker, Verdict, XEN_ONLY};
use crate::cli::xlcfg::{kv_list, Bus, DiskSpec, Item};

/// Disk formats only QEMU's qdisk backend reads (`xen-toolstack.md` §3.5).
const QDISK_FORMATS: &[&str] = &["qcow", "qcow2", "vhd", "qed"];
const PV_DISK_FIX: &str = "format=raw,vdev=xvde,access=rw,target=... (xvde or later: libxl emulates xvda-xvdd as IDE \
                           disks too)";

impl Checker<'_> {
    pub(super) fn disks(&mut self) {
        if let Some((line, v)) = self.get("hdtype") {
            if v.text() == Some("ahci") {
                self.judge(
                    Some(line),
                    format!("hdtype = {v}"),
                    &args(&["-device", "ahci,id=ahci0"]),
                    "",
                    "xendm emulates no disk controller; xvda-xvdf become AHCI disks, served through the PV \
                     path like IDE ones (qemu-xen keeps AHCI disks visible after the guest's unplug; xendm does not)",
                    "remove hdtype=",
                );
            } else {
                self.set(
                    line,
                    "hdtype",
                    &v,
                    Verdict::Ignored,
                    "IDE is the default; xendm emulates no disk controller",
                    None,
                );
            }
        }
        let Some((line, v)) = self.get("disk") else { return };
        for (i, item) in v.items(line).iter().enumerate() {
            let spec = DiskSpec::parse(item.value.text().unwrap_or_default());
            self.disk(i, item, &spec);
        }
    }

    fn disk(&mut self, i: usize, item: &Item, d: &DiskSpec) {
        let target = d.target.clone().unwrap_or_default();
        let format = d.format_or_raw().to_string();
        let index = d.index();
        let emulated = matches!(index, Some((Bus::Xvd | Bus::Hd, n)) if n < 4) || matches!(index, Some((Bus::Sd, _)));
        let setting = format!("disk[{i}] = {}", item.value);
        if d.cdrom {
            let argv = args(&["-drive", &format!("if=none,readonly=on,id=ide-0,file={target},format={format}")]);
            if emulated {
                let fix = "remove the CD-ROM, or give the image as a read-only PV disk: format=raw,vdev=xvdf,access=ro,target=...";
                self.judge(Some(item.line), format!("{setting} (emulated CD-ROM)"), &argv, "", "", fix);
            } else {
                let msg =
                    "an HVM CD-ROM always uses the qdisk backend, which the device model serves; xendm serves none";
                self.item("disk", i, item, Verdict::Refused, msg, Some("format=raw,vdev=xvdf,access=ro,target=..."));
            }
        } else if d.backend.is_some() {
            let msg = "served by the backend in the driver domain; libxl emulates nothing for it";
            self.item("disk", i, item, Verdict::PvOnly, msg, None);
        } else if format == "empty" {
            self.item("disk", i, item, Verdict::Ignored, "an empty non-CD-ROM disk: libxl creates no device", None);
        } else if QDISK_FORMATS.contains(&format.as_str()) || d.backendtype.as_deref() == Some("qdisk") {
            let msg = "this disk needs the qdisk backend (QEMU's, for image formats and backendtype=qdisk), which the \
                       device model of an HVM guest serves; xendm serves none (it marks the backend Closed, so the \
                       guest does not wait for it at boot) and the guest has no such disk";
            let fix = "convert the image to raw (qemu-img convert -O raw) and use format=raw,backendtype=phy";
            self.item("disk", i, item, Verdict::Refused, msg, Some(fix));
        } else if let Some((bus, n)) = index.filter(|_| emulated) {
            let what = if matches!(bus, Bus::Sd) { "SCSI" } else { "IDE" };
            self.emulated_disk(i, item, d, what, n);
        } else if index.is_none() {
            let msg = "no vdev xl understands (xvdX, hdX or sdX)";
            self.item("disk", i, item, Verdict::Refused, msg, Some(PV_DISK_FIX));
        } else {
            let msg = "blkback in dom0 serves it to the guest's blkfront (PV driver); libxl emulates nothing for it";
            self.item("disk", i, item, Verdict::PvOnly, msg, None);
        }
    }

    /// `xvda`-`xvdd` (and `hda`-`hdd`), and `sdX`: libxl passes an IDE (or
    /// SCSI) drive and exports the same disk as a PV vbd; xendm takes the
    /// drive and serves the disk through the PV path only, which needs a
    /// direct kernel boot and the Xen platform device (`machine::spec`).
    fn emulated_disk(&mut self, i: usize, item: &Item, d: &DiskSpec, bus: &str, n: u32) {
        let vdev = d.vdev.clone().unwrap_or_default();
        let no_platform = self.get("xen_platform_pci").is_some_and(|(_, v)| v.truthy() == Some(false));
        if self.get("kernel").is_none() {
            let msg = format!(
                "libxl also emulates {vdev} as {bus} disk {n}; xendm emulates none and serves it through the guest's \
                 PV block driver only, which the firmware cannot boot from"
            );
            let fix = format!("set kernel= (direct kernel boot), or use vdev=xvde or later; {PV_DISK_FIX}");
            self.item("disk", i, item, Verdict::Refused, &msg, Some(&fix));
        } else if no_platform {
            let msg = format!(
                "libxl also emulates {vdev} as {bus} disk {n}; xendm serves it through the guest's PV block driver, \
                 which needs the Xen platform device"
            );
            self.item("disk", i, item, Verdict::Refused, &msg, Some("remove xen_platform_pci=0"));
        } else {
            let msg = format!(
                "blkback in dom0 serves it to the guest's blkfront (PV driver); libxl also asks for {bus} disk {n}, \
                 which xendm accepts and does not emulate (the guest's PV drivers unplug emulated disks anyway)"
            );
            self.item("disk", i, item, Verdict::PvOnly, &msg, None);
        }
    }

    pub(super) fn vifs(&mut self) {
        let Some((line, v)) = self.get("vif") else { return };
        for (i, item) in v.items(line).iter().enumerate() {
            let kv = kv_list(item.value.text().unwrap_or_default());
            let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            match get("type").as_deref() {
                Some("vif" | "netfront") => {
                    let msg = "netback in dom0 serves it to the guest's netfront (PV driver); libxl passes -net none";
                    self.item("vif", i, item, Verdict::PvOnly, msg, None);
                }
                _ => self.emulated_vif(i, item, &get("model").unwrap_or_else(|| "rtl8139".into())),
            }
        }
    }

    /// `type=ioemu` (xl's HVM default): libxl passes a `-device MODEL` and a
    /// `-netdev type=tap`; xendm creates the tap and emulates no NIC, so the
    /// guest needs netfront: a direct kernel boot and the platform device
    /// (`machine::spec`), as for disks.
    fn emulated_vif(&mut self, i: usize, item: &Item, model: &str) {
        let argv = args(&[
            "-device",
            &format!("{model},id=nic{i},netdev=net{i},mac=00:16:3e:00:00:01"),
            "-netdev",
            &format!("type=tap,id=net{i},ifname=vif1.{i}-emu,br=xenbr0,script=no,downscript=no"),
        ]);
        let spec = item.value.text().unwrap_or_default();
        let fix = if spec.is_empty() { "'type=vif'".to_string() } else { format!("'{spec},type=vif'") };
        let no_platform = self.get("xen_platform_pci").is_some_and(|(_, v)| v.truthy() == Some(false));
        if !crate::cli::NIC_MODELS.contains(&model) || self.get("kernel").is_none() || no_platform {
            // The command line refuses an unknown model by name; the
            // machine refuses the rest, as the disks above.
            let why = if self.get("kernel").is_none() {
                "without a direct kernel boot (kernel=) xendm cannot rely on the guest's PV network driver"
            } else {
                "the guest's PV network driver needs the Xen platform device"
            };
            match super::cli_verdict(&argv) {
                super::Cli::Refused(e) => self.item("vif", i, item, Verdict::Refused, &e, Some(&fix)),
                _ => self.item("vif", i, item, Verdict::Refused, why, Some(&fix)),
            }
            return;
        }
        let msg = format!(
            "netback in dom0 serves it to the guest's netfront (PV driver); libxl also asks for an emulated \
             {model} NIC, which xendm does not emulate, and its tap vifD.{i}-emu, which xendm creates for the \
             hotplug script and closes when the guest unplugs emulated NICs"
        );
        self.item("vif", i, item, Verdict::PvOnly, &msg, None);
    }

    pub(super) fn restrict(&mut self) {
        if let Some((line, v)) = self.get("dm_restrict") {
            if v.truthy() == Some(true) {
                let argv = args(&[
                    "-chardev",
                    "socket,id=libxl-cmd,fd=3,server=on,wait=off",
                    "-S",
                    "-mon",
                    "chardev=libxl-cmd,mode=control",
                    "-xen-domid-restrict",
                    "-chroot",
                    "/var/run/xen/qemu-root-1",
                    "-runas",
                    "131073:131072",
                ]);
                let ok = "xendm restricts its Xen handles to the guest, chroots and drops to the user libxl picks \
                          (xen-qemuuser-range-base + domid, or xen-qemuuser-shared: one must exist in dom0)";
                self.judge(Some(line), format!("dm_restrict = {v}"), &argv, ok, "", "dm_restrict = 0");
            } else {
                self.set(
                    line,
                    "dm_restrict",
                    &v,
                    Verdict::Served,
                    "xendm runs as root in dom0, as qemu-xen would",
                    None,
                );
            }
        }
        if let Some((line, v)) = self.get("device_model_user") {
            let argv = args(&["-runas", v.text().unwrap_or_default()]);
            self.judge(
                Some(line),
                format!("device_model_user = {v}"),
                &argv,
                "xendm drops to this user after start-up",
                "",
                "",
            );
        }
    }

    pub(super) fn machine(&mut self) {
        if let Some((line, v)) = self.get("acpi") {
            if v.truthy() == Some(false) {
                let ok = "no ACPI power management: xl shutdown then needs the guest's PV drivers";
                self.judge(Some(line), format!("acpi = {v}"), &args(&["-no-acpi"]), ok, "", "");
            } else {
                self.set(line, "acpi", &v, Verdict::Served, "PIIX4 ACPI: power button, S5 power-off", None);
            }
        }
        if let Some((line, v)) = self.get("acpi_s3") {
            let (verdict, msg) = if v.truthy() == Some(false) {
                (Verdict::Served, "no S3 offered")
            } else {
                (Verdict::Warning, "xendm logs and ignores a suspend to RAM (S3)")
            };
            self.set(line, "acpi_s3", &v, verdict, msg, (verdict == Verdict::Warning).then_some("acpi_s3 = 0"));
        }
        if let Some((line, v)) = self.get("xen_platform_pci") {
            let machine =
                if v.truthy() == Some(false) { "pc,accel=xen,suppress-vmdesc=on" } else { "xenfv,suppress-vmdesc=on" };
            let ok = if v.truthy() == Some(false) {
                "no Xen platform device: the guest cannot use its PV drivers, so no disk and no network"
            } else {
                "the Xen platform device, which PV drivers need"
            };
            self.judge(Some(line), format!("xen_platform_pci = {v}"), &args(&["-machine", machine]), ok, "", "");
        }
        if let Some((line, v)) = self.get("mmio_hole") {
            let bytes = v.number().unwrap_or(0).saturating_mul(1 << 20);
            let below = (1u64 << 32).saturating_sub(bytes);
            let argv = args(&["-machine", &format!("xenfv,max-ram-below-4g={below}")]);
            self.judge(
                Some(line),
                format!("mmio_hole = {v}"),
                &argv,
                "RAM below 4 GiB ends where the hole starts",
                "",
                "",
            );
        }
        self.vcpus();
        if let Some((line, v)) = self.get("vendor_device") {
            if v.text() == Some("xenserver") {
                let argv = args(&["-device", "xen-pvdevice,device-id=0xc000"]);
                self.judge(Some(line), format!("vendor_device = {v}"), &argv, "", "", "remove vendor_device=");
            } else {
                self.set(
                    line,
                    "vendor_device",
                    &v,
                    Verdict::Ignored,
                    "no vendor device, which is what xendm has",
                    None,
                );
            }
        }
    }

    fn vcpus(&mut self) {
        let vcpus = self.cfg.get("vcpus");
        let max = self.cfg.get("maxvcpus").or_else(|| vcpus.clone());
        let (Some((line, v)), Some((_, m))) = (&vcpus, &max) else { return };
        let (online, maximum) = (v.number().unwrap_or(1), m.number().unwrap_or(1));
        if maximum > 1 {
            self.handled.extend(["vcpus", "maxvcpus"]);
            let argv = args(&["-smp", &format!("{online},maxcpus={maximum}")]);
            self.judge(
                Some(*line),
                format!("vcpus = {v}"),
                &argv,
                "one ioreq channel per vCPU",
                "",
                "vcpus = 128 at most",
            );
        }
    }

    pub(super) fn passthrough_and_extras(&mut self) {
        if let Some((line, v)) = self.get("pci") {
            if !v.items(line).is_empty() {
                let msg = "PCI passthrough goes through the device model (QMP device_add xen-pci-passthrough), which \
                           xendm does not implement";
                self.set(line, "pci", &v, Verdict::Refused, msg, Some("remove pci="));
            }
        }
        if let Some((line, v)) = self.get("channel") {
            for (i, item) in v.items(line).iter().enumerate() {
                let argv = args(&["-chardev", &format!("pty,id=libxl-channel{i}")]);
                let why = "xendm serves no PV channels: the guest's channel stays unconnected";
                self.judge(
                    Some(item.line),
                    format!("channel[{i}] = {}", item.value),
                    &argv,
                    "",
                    why,
                    "remove channel=",
                );
            }
        }
        for key in ["device_model_args", "device_model_args_hvm"] {
            if let Some((line, v)) = self.get(key) {
                let argv: Vec<String> =
                    v.items(line).iter().map(|i| i.value.text().unwrap_or_default().to_string()).collect();
                let why = "passed verbatim; xendm accepts them and ignores some (see docs/usage.md)";
                self.judge(
                    Some(line),
                    format!("{key} = {v}"),
                    &argv,
                    "passed verbatim, and accepted",
                    why,
                    "remove them",
                );
            }
        }
        for key in ["vkb", "vfb", "p9", "vdispl", "vsnd", "virtio"] {
            if let Some((line, v)) = self.get(key) {
                let msg = "check-config does not know whether this device needs the device model as its backend";
                self.set(line, key, &v, Verdict::Warning, msg, None);
            }
        }
    }

    /// Every key not looked at yet: libxl/Xen only, or unknown.
    pub(super) fn the_rest(&mut self) {
        let cfg = self.cfg;
        for key in cfg.keys() {
            if self.handled.contains(&key) || key.starts_with("spice") {
                continue;
            }
            let Some((line, v)) = cfg.get(key) else { continue };
            if XEN_ONLY.contains(&key) {
                self.set(line, key, &v, Verdict::Xen, "libxl and Xen handle it without the device model", None);
            } else {
                self.set(line, key, &v, Verdict::Warning, "not known to check-config: not checked", None);
            }
        }
    }
}
