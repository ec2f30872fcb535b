//! check-config: the boot settings (kernel, ramdisk, cmdline, firmware) and
//! the devices libxl asks the device model to emulate (display, USB, sound,
//! serial ports). Argument forms from `xen-abi.md` §1.2 items 7-8.

use super::{args, Checker, Verdict};
use crate::cli::xlcfg::Value;

/// What libxl passes for `vga=` (`xen-abi.md` §1.2: cirrus is the default).
fn vga_device(vga: &str) -> Option<&'static str> {
    match vga {
        "cirrus" => Some("cirrus-vga,vgamem_mb=8"),
        "stdvga" => Some("VGA,vgamem_mb=16"),
        "qxl" => Some("qxl-vga,vram_size_mb=64,ram_size_mb=64"),
        _ => None,
    }
}

const VGA_FIX: &str = "vga = \"none\" (the guest's console is its serial port: serial = \"pty\", xl console)";

impl Checker<'_> {
    pub(super) fn kernel_boot(&mut self) {
        match self.get("kernel") {
            Some((line, v)) => {
                let path = v.text().unwrap_or_default().to_string();
                self.file(
                    line,
                    "kernel",
                    &v,
                    &path,
                    "-kernel",
                    "direct kernel boot of a Linux bzImage, multiboot or PVH kernel",
                );
            }
            None => self.add(
                None,
                "kernel (not set)".into(),
                Verdict::Refused,
                "xendm boots guests only by direct kernel boot: without kernel= the firmware looks for a boot \
                 disk, and xendm emulates none (PV disks are invisible to SeaBIOS)",
                Some("kernel = \"/path/to/vmlinuz\" (with ramdisk = and cmdline =)"),
            ),
        }
        if let Some((line, v)) = self.get("ramdisk") {
            let path = v.text().unwrap_or_default().to_string();
            self.file(line, "ramdisk", &v, &path, "-initrd", "loaded as the initial ramdisk");
        }
        let cmdline = self.get("cmdline");
        if let Some((line, v)) = &cmdline {
            let argv = args(&["-append", v.text().unwrap_or_default()]);
            self.judge(Some(*line), format!("cmdline = {v}"), &argv, "the kernel command line, verbatim", "", "");
        }
        for key in ["root", "extra"] {
            if let Some((line, v)) = self.get(key) {
                let (verdict, msg) = if cmdline.is_some() {
                    (Verdict::Ignored, "libxl ignores it when cmdline= is set")
                } else {
                    (Verdict::Served, "libxl joins root= and extra= into the command line (-append)")
                };
                self.set(line, key, &v, verdict, msg, None);
            }
        }
    }

    /// `kernel`/`ramdisk`: judged by the parser, and looked for on this machine.
    fn file(&mut self, line: usize, key: &str, v: &Value, path: &str, option: &str, ok: &str) {
        if (self.exists)(path) {
            self.judge(Some(line), format!("{key} = {v}"), &args(&[option, path]), ok, "", "");
        } else {
            self.set(
                line,
                key,
                v,
                Verdict::Warning,
                &format!(
                    "{ok}, but {path} does not exist on this machine: xendm fails at start-up where it is missing"
                ),
                None,
            );
        }
    }

    pub(super) fn firmware(&mut self) {
        if let Some((line, v)) = self.get("bios") {
            match v.text() {
                Some("seabios") => self.set(
                    line,
                    "bios",
                    &v,
                    Verdict::Xen,
                    "hvmloader runs SeaBIOS, which runs xendm's boot ROM",
                    None,
                ),
                Some("rombios") => self.set(
                    line,
                    "bios",
                    &v,
                    Verdict::Refused,
                    "libxl allows rombios only with qemu-xen-traditional",
                    Some("remove bios= (SeaBIOS is the default)"),
                ),
                _ => self.set(
                    line,
                    "bios",
                    &v,
                    Verdict::Warning,
                    "xendm is tested with SeaBIOS only; OVMF boots a kernel from fw_cfg its own way",
                    Some("remove bios= (SeaBIOS is the default)"),
                ),
            }
        }
        if let Some((line, v)) = self.get("boot") {
            let argv = args(&["-boot", &format!("order={}", v.text().unwrap_or_default())]);
            self.judge(
                Some(line),
                format!("boot = {v}"),
                &argv,
                "handed to the firmware; kernel= boots first",
                "",
                "boot = \"c\"",
            );
        }
    }

    pub(super) fn display(&mut self) {
        self.vga();
        self.vnc();
        let sdl = self.get("sdl");
        match &sdl {
            Some((line, v)) if v.truthy() == Some(true) => {
                self.judge(Some(*line), format!("sdl = {v}"), &args(&["-display", "sdl"]), "", "", "sdl = 0");
            }
            Some((line, v)) => {
                self.set(*line, "sdl", v, Verdict::Ignored, "no SDL window, which is what xendm has", None)
            }
            None => {}
        }
        let spice = self.get("spice");
        let spice_on = spice.as_ref().is_some_and(|(_, v)| v.truthy() == Some(true));
        if let Some((line, v)) = &spice {
            if spice_on {
                let argv = args(&["-spice", "port=6000,tls-port=0,addr=127.0.0.1"]);
                self.judge(Some(*line), format!("spice = {v}"), &argv, "", "", "spice = 0");
            } else {
                self.set(*line, "spice", v, Verdict::Ignored, "no SPICE server, which is what xendm has", None);
            }
        }
        if let Some((line, v)) = self.get("nographic") {
            self.judge(
                Some(line),
                format!("nographic = {v}"),
                &args(&["-nographic"]),
                "",
                "no graphical output exists",
                "",
            );
        }
        self.display_leftovers(spice_on);
    }

    fn vga(&mut self) {
        let stdvga = self.get("stdvga");
        let vga = self.get("vga");
        let (line, setting, kind) = match (&vga, &stdvga) {
            (Some((line, v)), _) => (Some(*line), format!("vga = {v}"), v.text().unwrap_or_default().to_string()),
            (None, Some((line, v))) if v.truthy() == Some(true) => {
                (Some(*line), format!("stdvga = {v}"), "stdvga".into())
            }
            (None, _) => (None, "vga (not set)".to_string(), "cirrus".into()),
        };
        if kind == "none" {
            let msg = "no emulated graphics card: the guest's console is its serial port";
            self.add(line, setting, Verdict::Served, msg, None);
        } else if let Some(device) = vga_device(&kind) {
            let what = if line.is_none() { "libxl's default is a Cirrus VGA" } else { "an emulated VGA" };
            self.judge(line, format!("{setting} ({what})"), &args(&["-device", device]), "", "", VGA_FIX);
        } else {
            self.add(line, setting, Verdict::Refused, &format!("xl does not know vga = \"{kind}\""), Some(VGA_FIX));
        }
        if let (Some((line, v)), true) = (&stdvga, vga.is_some()) {
            self.set(*line, "stdvga", v, Verdict::Ignored, "vga= is set, and wins", None);
        } else if let (Some((line, v)), false) = (&stdvga, kind == "stdvga") {
            self.set(*line, "stdvga", v, Verdict::Ignored, "stdvga = 0 only keeps the default card", None);
        }
    }

    fn vnc(&mut self) {
        let vnc = self.get("vnc");
        let on = vnc.as_ref().is_none_or(|(_, v)| v.truthy() != Some(false));
        let value = if on { "127.0.0.1:0,to=99" } else { "none" };
        let (line, setting) = match &vnc {
            Some((line, v)) => (Some(*line), format!("vnc = {v}")),
            None => (None, "vnc (not set: xl's default for HVM is on)".to_string()),
        };
        let why = "xendm starts no VNC server (QMP query-vnc reports it disabled); with vga = \"none\" there is \
                   no screen to show";
        self.judge(line, setting, &args(&["-vnc", value]), "", why, "vnc = 0");
    }

    /// The display settings that only tune a display xendm does not have.
    fn display_leftovers(&mut self, spice_on: bool) {
        for key in ["vnclisten", "vncdisplay", "vncunused", "vncpasswd", "videoram", "opengl", "display", "xauthority"]
        {
            if let Some((line, v)) = self.get(key) {
                self.set(line, key, &v, Verdict::Ignored, "tunes a display xendm does not have", None);
            }
        }
        if let Some((line, v)) = self.get("keymap") {
            let why = "the keymap matters only to a VNC or SDL display";
            self.judge(Some(line), format!("keymap = {v}"), &args(&["-k", v.text().unwrap_or_default()]), "", why, "");
        }
        let spice_keys: Vec<String> = self
            .cfg
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("spice") && *k != "spice")
            .map(str::to_string)
            .collect();
        for key in spice_keys {
            if let Some((line, v)) = self.cfg.get(&key) {
                let (verdict, msg) = if spice_on {
                    (Verdict::Refused, "part of SPICE, which xendm does not implement")
                } else {
                    (Verdict::Ignored, "used only with spice = 1")
                };
                self.set(line, &key, &v, verdict, msg, None);
            }
        }
    }

    pub(super) fn usb(&mut self) {
        if let Some((line, v)) = self.get("usb") {
            let why = "an empty USB controller changes nothing for the guest; every USB device is refused";
            if v.truthy() == Some(true) {
                self.judge(Some(line), format!("usb = {v}"), &args(&["-usb"]), "", why, "usb = 0");
            } else {
                self.set(line, "usb", &v, Verdict::Ignored, "no USB, which is what xendm has", None);
            }
        }
        if let Some((line, v)) = self.get("usbdevice") {
            for (i, item) in v.items(line).iter().enumerate() {
                let argv = args(&["-usb", "-usbdevice", item.value.text().unwrap_or_default()]);
                self.judge(
                    Some(item.line),
                    format!("usbdevice[{i}] = {}", item.value),
                    &argv,
                    "",
                    "",
                    "remove usbdevice=",
                );
            }
        }
        if let Some((line, v)) = self.get("usbversion") {
            let device = match v.number() {
                Some(1) => "piix3-usb-uhci,id=usb",
                Some(2) => "ich9-usb-ehci1,id=usb,multifunction=on,addr=0x1d.0x7",
                _ => "nec-usb-xhci,id=usb",
            };
            self.judge(
                Some(line),
                format!("usbversion = {v}"),
                &args(&["-device", device]),
                "",
                "",
                "remove usbversion=",
            );
        }
        for key in ["usbctrl", "usbdev"] {
            if let Some((line, v)) = self.get(key) {
                for (i, item) in v.items(line).iter().enumerate() {
                    let pv = item.value.text().is_some_and(|s| s.contains("type=pv"));
                    if pv {
                        self.item(key, i, item, Verdict::PvOnly, "PVUSB served by dom0's usbback", None);
                    } else {
                        let msg = "USB passthrough through the device model (QMP device_add) is not implemented";
                        self.item(key, i, item, Verdict::Refused, msg, Some("remove it"));
                    }
                }
            }
        }
    }

    pub(super) fn sound(&mut self) {
        if let Some((line, v)) = self.get("soundhw") {
            let model = v.text().unwrap_or_default();
            let argv = if model == "hda" {
                args(&["-device", "intel-hda", "-device", "hda-duplex"])
            } else {
                args(&["-device", model])
            };
            self.judge(Some(line), format!("soundhw = {v}"), &argv, "", "", "remove soundhw=");
        }
    }

    pub(super) fn serial(&mut self) {
        let Some((line, v)) = self.get("serial") else { return };
        let mut port = 1;
        // Each port is judged after the ones before it: xendm has at most four.
        let mut argv = Vec::new();
        for (i, item) in v.items(line).iter().enumerate() {
            let spec = item.value.text().unwrap_or_default();
            argv.extend(args(&["-serial", spec]));
            let ok = if spec == "none" { "no port".to_string() } else { format!("COM{port}, a 16550A UART") };
            if spec != "none" {
                port += 1;
            }
            let setting = if matches!(v, Value::List(_)) {
                format!("serial[{i}] = {}", item.value)
            } else {
                format!("serial = {}", item.value)
            };
            let fix = "serial = \"pty\" (or \"file:/path\")";
            self.judge(Some(item.line), setting, &argv, &ok, "", fix);
            if self.report.findings.last().is_some_and(|f| f.verdict == Verdict::Refused) {
                argv.truncate(argv.len().saturating_sub(2));
            }
        }
    }
}
