//! What each option means, in one place: the `--help` text, the `--version`
//! text, and the "did you mean" suggestion. The manual page (`man.rs`) is
//! rendered from the same [`DOCS`].
//!
//! [`DOCS`] holds one entry per option of the parse table
//! (`table.rs` `TABLE`, whose names the checks below are given: this
//! module does not import the table, which imports it); aliases
//! (`-machine`/`-M`, `-h`/`-help`) share an entry. [`undocumented`] and [`unparsed`] name any option in one
//! table and not the other: the tests below fail on them, and `--print-man`
//! (which the Debian package build runs) refuses to render a page that would
//! miss an option.

/// Where an option is listed in `--help` and in the manual page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Xen,
    Process,
    Machine,
    Kernel,
    /// Disks and NICs: accepted for the PV path only.
    Devices,
    Serial,
    Own,
    /// Accepted and ignored, because ignoring it changes nothing the guest or the host sees.
    Ignored,
    /// Known and refused, with the reason.
    Refused,
}

impl Section {
    /// In the order `--help` and the manual page list them.
    pub(super) const ALL: [Section; 9] = [
        Section::Xen,
        Section::Process,
        Section::Machine,
        Section::Kernel,
        Section::Devices,
        Section::Serial,
        Section::Own,
        Section::Ignored,
        Section::Refused,
    ];

    pub(super) fn title(self) -> &'static str {
        match self {
            Section::Xen => "Xen",
            Section::Process => "Process, QMP and privileges",
            Section::Machine => "Machine",
            Section::Kernel => "Direct kernel boot",
            Section::Devices => "Disks and network interfaces (served by the guest's PV drivers)",
            Section::Serial => "Serial ports",
            Section::Own => "xendm's own",
            Section::Ignored => "Accepted and ignored",
            Section::Refused => "Refused",
        }
    }
}

/// The documentation of one option (and its aliases).
pub(super) struct OptDoc {
    /// The names as in the parse table, without the dash; the first is shown first.
    pub names: &'static [&'static str],
    /// The value's syntax (empty for a flag).
    pub arg: &'static str,
    /// What the option does: one or more sentences, wrapped when shown.
    pub help: &'static str,
    pub section: Section,
}

const fn doc(names: &'static [&'static str], arg: &'static str, section: Section, help: &'static str) -> OptDoc {
    OptDoc { names, arg, help, section }
}

const NO_DISK: &str = "Emulated disks and CD-ROMs are not implemented: give the guest PV disks (vdev=xvde or later).";
const NO_SOUND: &str = "Sound is not implemented: remove soundhw= from the xl config.";

use Section::{Devices, Ignored, Kernel, Machine, Own, Process, Refused, Serial, Xen};

/// Every option of the parse table, documented once.
pub(super) const DOCS: &[OptDoc] = &[
    doc(
        &["xen-domid"],
        "DOMID",
        Xen,
        "The HVM guest to serve (required, except for the '-machine none,accel=xen' probe run of libxl 4.20).",
    ),
    doc(
        &["xen-domid-restrict"],
        "",
        Xen,
        "Restrict the Xen handles to DOMID once start-up is done (libxl dm_restrict=1).",
    ),
    doc(&["xen-attach"], "", Xen, "Accepted and not acted on (libxl passes it for PV/PVH guests only)."),
    doc(&["no-shutdown"], "", Process, "Do not exit when the guest shuts down (a Xen device model never does)."),
    doc(&["S"], "", Process, "Start paused: QMP query-status reports prelaunch until the QMP 'cont' command."),
    doc(
        &["chardev"],
        "socket,id=ID,path=PATH|fd=N,server=on,wait=off",
        Process,
        "A Unix socket for a QMP monitor ('server,nowait' is the old spelling). pty, file, null and stdio \
         chardevs are accepted and left unused.",
    ),
    doc(&["mon"], "chardev=ID,mode=control", Process, "Serve QMP on chardev ID."),
    doc(&["qmp"], "unix:PATH,server=on,wait=off", Process, "Shorthand for -chardev and -mon together."),
    doc(&["name"], "NAME", Process, "The guest name, used in logs."),
    doc(&["incoming"], "URI", Process, "Load device state on start (fd:N from libxl)."),
    doc(&["chroot"], "DIR", Process, "chroot into DIR after start-up."),
    doc(&["runas"], "USER|UID:GID", Process, "Drop to this user after start-up (uid 0 is refused)."),
    doc(&["run-with"], "chroot=DIR,user=USER", Process, "The same two, newer spelling (libxl 4.20)."),
    doc(
        &["sandbox"],
        "on|off[,SUBOPTION=VALUE...]",
        Process,
        "The seccomp sandbox entered after start-up (default on, with or without dm_restrict); off is for \
         debugging only. QEMU's sub-options obsolete, spawn and resourcecontrol are honoured as deny, \
         elevateprivileges as deny or allow; other values are refused by name.",
    ),
    doc(
        &["machine", "M"],
        "TYPE[,accel=xen][,max-ram-below-4g=SIZE][,igd-passthru=on]",
        Machine,
        "TYPE is xenfv (the default), pc,accel=xen (no Xen platform device) or none,accel=xen (the libxl probe); \
         suppress-vmdesc=on and acpi=on|off|auto are accepted. Repeated options merge.",
    ),
    doc(&["accel"], "xen", Machine, "The accelerator (only xen)."),
    doc(&["m"], "[size=]SIZE", Machine, "Guest RAM, MiB unless suffixed (K, M, G, T); a whole number of MiB."),
    doc(&["smp"], "CPUS[,maxcpus=MAX]", Machine, "vCPUs online at boot and the maximum (at most 128)."),
    doc(&["no-acpi"], "", Machine, "No ACPI (PIIX4 power management) function (xl: acpi=0)."),
    doc(&["boot"], "order=DRIVES", Machine, "Boot order for the firmware (letters a-p, no repeats)."),
    doc(&["kernel"], "PATH", Kernel, "Linux bzImage, multiboot or PVH ELF kernel (xl: kernel=)."),
    doc(
        &["initrd"],
        "PATH",
        Kernel,
        "Initial ramdisk (xl: ramdisk=); for a multiboot kernel a comma-separated module list.",
    ),
    doc(&["append"], "CMDLINE", Kernel, "Kernel command line, verbatim (xl: cmdline=)."),
    doc(
        &["xendm-boot"],
        "linux|multiboot|pvh",
        Kernel,
        "Force the boot protocol of -kernel when its type is ambiguous.",
    ),
    doc(
        &["drive"],
        "file=T,if=ide|none|scsi,...",
        Devices,
        "libxl's emulated hard disk: if=ide,index=N,media=disk for xvda-xvdd; if=none,id=D with -device ide-hd \
         (AHCI) or scsi-hd naming it; if=scsi,unit=N (older libxl). It is the guest's PV disk too, so it is \
         not emulated but served through the guest's PV block driver (blkfront), and \
         -kernel and the Xen platform device are required. CD-ROMs (media=cdrom, ide-cd), read-only IDE/AHCI \
         disks, formats other than raw (libxl's qdisk disks) and other interfaces are refused.",
    ),
    doc(
        &["device"],
        "DRIVER,...",
        Devices,
        "Only the devices libxl emits for disks and NICs: ahci and lsi53c895a (controllers, not emulated), ide-hd \
         on an AHCI port and scsi-hd (each naming a -drive if=none), and a NIC model (rtl8139, e1000, e1000e, \
         ne2k_pci, pcnet, i82551, i82557b, i82559er, virtio-net-pci, vmxnet3) with netdev= naming its -netdev. \
         Every other driver (VGA, ide-cd, USB, sound, xen-pvdevice, ...) is refused.",
    ),
    doc(
        &["netdev"],
        "type=tap,id=ID,ifname=NAME[,br=BRIDGE,script=no,downscript=no]",
        Devices,
        "libxl's emulated NIC (vif type=ioemu, the HVM default), paired with its -device MODEL,netdev=ID: no NIC \
         is emulated (the guest uses netfront), but the tap NAME is created at start-up, as qemu-xen does, for \
         libxl's hotplug script, and closed when the guest unplugs emulated NICs. Needs -kernel, the Xen platform \
         device and CAP_NET_ADMIN at start-up.",
    ),
    doc(
        &["serial"],
        "pty|file:PATH|stdio|null|none|unix:PATH[,server=on,wait=off]",
        Serial,
        "One 16550A UART per occurrence, COM1 first, at most 4 (xl: serial=); none occupies no port. \
         Network backends (tcp:, telnet:, udp:) are refused.",
    ),
    doc(&["dump-roms"], "DIR", Own, "Write the option ROMs xendm builds into DIR and exit. Takes no other option."),
    doc(&["xendm-record"], "PATH", Own, "Record the ioreq stream to PATH, for replay (docs/traces.md)."),
    doc(&["print-man"], "", Own, "Print this manual page (roff) and exit; the Debian package build uses it."),
    doc(&["h", "help"], "", Own, "Print the help and exit."),
    doc(&["version"], "", Own, "Print the version and the Xen libraries xendm was built against, and exit."),
    doc(&["nodefaults"], "", Ignored, "xendm never creates QEMU's default devices."),
    doc(&["no-user-config"], "", Ignored, "xendm reads no configuration files."),
    doc(&["display"], "none", Ignored, "xendm has no local display; other values (sdl, ...) are refused."),
    doc(&["nographic"], "", Ignored, "No graphical output exists; serial ports are only those of -serial."),
    doc(&["vnc"], "VALUE", Ignored, "No VNC server is started; QMP query-vnc reports VNC disabled."),
    doc(&["k"], "LAYOUT", Ignored, "The keymap matters only to a VNC/SDL display, which xendm does not have."),
    doc(
        &["vga"],
        "none",
        Ignored,
        "No VGA card, which is what xendm has; any other card is refused (xl: vga=\"none\").",
    ),
    doc(
        &["net"],
        "none",
        Ignored,
        "No emulated NIC, which is what xendm has (xl: type=vif); the -net nic/-net tap forms are refused.",
    ),
    doc(&["usb"], "", Ignored, "Only an empty USB controller (xl: usb=1); every USB device is refused."),
    doc(&["parallel"], "none", Ignored, "No parallel port, which is what xendm has; anything else is refused."),
    doc(&["global"], "DRIVER.PROP=VALUE", Ignored, "Properties of QEMU's devices; xendm's built-in devices have none."),
    doc(&["d"], "ITEMS", Ignored, "QEMU's debug-log items; xendm logs through XENDM_LOG."),
    doc(&["D"], "FILE", Ignored, "QEMU's log file; xendm logs to stderr, which libxl writes to the qemu-dm log."),
    doc(&["trace"], "EVENTS", Ignored, "QEMU trace events; xendm's equivalent is -xendm-record."),
    doc(&["msg"], "timestamp=on", Ignored, "Formatting of QEMU's messages; xendm's log lines are timestamped."),
    doc(&["cdrom"], "FILE", Refused, "Emulated CD-ROMs are not implemented: remove the devtype=cdrom disk."),
    doc(&["hda"], "FILE", Refused, NO_DISK),
    doc(&["hdb"], "FILE", Refused, NO_DISK),
    doc(&["hdc"], "FILE", Refused, NO_DISK),
    doc(&["hdd"], "FILE", Refused, NO_DISK),
    doc(&["fda"], "FILE", Refused, "Floppy drives are not implemented."),
    doc(&["fdb"], "FILE", Refused, "Floppy drives are not implemented."),
    doc(&["usbdevice"], "DEVICE", Refused, "USB devices are not implemented: remove usbdevice= from the xl config."),
    doc(&["spice"], "SPEC", Refused, "SPICE is not implemented: set spice=0 in the xl config."),
    doc(&["soundhw"], "MODEL", Refused, NO_SOUND),
    doc(&["audiodev"], "SPEC", Refused, NO_SOUND),
    doc(&["object"], "SPEC", Refused, "Objects (COLO filters, iothreads, memory backends) are not implemented."),
    doc(&["monitor"], "SPEC", Refused, "The human monitor is not implemented; use -mon chardev=ID,mode=control."),
    doc(&["bios"], "FILE", Refused, "Under Xen, hvmloader loads the firmware."),
    doc(&["pidfile"], "FILE", Refused, "Not implemented; libxl records the pid itself."),
    doc(&["daemonize"], "", Refused, "libxl tracks the device model by its pid, so it must not daemonize."),
    doc(&["enable-kvm"], "", Refused, "xendm is a Xen device model."),
];

/// The environment variables xendm reads: name, meaning.
pub(super) const ENVIRONMENT: &[(&str, &str)] = &[
    ("XENDM_RECORD=PATH", "As -xendm-record PATH."),
    ("XENDM_SECCOMP=on|log|off", "The seccomp sandbox: enforce (the default), only log what it would refuse (kernel audit log), or none; it can only weaken -sandbox."),
    ("XENDM_LOG_BUDGET=BYTES", "Log bytes per window before lines are dropped and counted (default 16 KiB per minute; 0: no budget, for debugging)."),
    (
        "XENDM_LOG, RUST_LOG",
        "The log filter, in tracing-subscriber EnvFilter syntax, e.g. 'info' or 'xendm=debug' (XENDM_LOG wins).",
    ),
];

/// Why the option `-name` is accepted and ignored, as the help says (for
/// the start-up log); None for an option that is not of that kind.
pub(super) fn ignored_reason(name: &str) -> Option<&'static str> {
    DOCS.iter().find(|d| matches!(d.section, Section::Ignored) && d.names.contains(&name)).map(|d| d.help)
}

/// Options of the parse table (`parsed`: its names) that have no entry in [`DOCS`].
pub(super) fn undocumented<'a>(parsed: &[&'a str]) -> Vec<&'a str> {
    parsed.iter().copied().filter(|n| !DOCS.iter().any(|d| d.names.contains(n))).collect()
}

/// Names in [`DOCS`] that the parse table (`parsed`) does not know, or documented twice.
pub(super) fn unparsed(parsed: &[&str]) -> Vec<&'static str> {
    let mut bad = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for name in DOCS.iter().flat_map(|d| d.names.iter().copied()) {
        if !parsed.contains(&name) || seen.contains(&name) {
            bad.push(name);
        }
        seen.push(name);
    }
    bad
}

/// A space that [`wrap`] does not break at (not whitespace to it).
const KEEP: &str = "\u{1f}";

/// Options shown with two dashes, the way users type them (one works too).
const DOUBLE_DASH: &[&str] = &["help", "version", "dump-roms", "print-man"];

/// The dashes `name` is shown with.
pub(super) fn dashes(name: &str) -> &'static str {
    if DOUBLE_DASH.contains(&name) {
        "--"
    } else {
        "-"
    }
}

/// `-name, -alias ARG` as `--help` and the manual page show an entry.
pub(super) fn synopsis(d: &OptDoc) -> String {
    let names: Vec<String> = d.names.iter().map(|n| format!("{}{n}", dashes(n))).collect();
    let mut s = names.join(", ");
    if !d.arg.is_empty() {
        s.push(' ');
        s.push_str(d.arg);
    }
    s
}

/// The `--help` text.
pub(super) fn help_text() -> String {
    let mut out = format!(
        "\
xendm {version}: a QEMU-compatible device model for Xen HVM guests

Usage: xendm -xen-domid DOMID [OPTION]...
       xendm check-config GUEST.cfg
       xendm --dump-roms DIR
       xendm --help | --version | --print-man

xendm is normally started by libxl (xl's device_model_override= with
device_model_version=\"qemu-xen\"), which passes the qemu-xen command line.
'xendm check-config GUEST.cfg' reads an xl config and says, setting by
setting, what xendm will do with it (exit status 1 if something is refused).
Options take one dash or two (-name and --name are the same option); values
are QEMU-style lists KEY=VALUE,... where ',,' is a literal comma.
",
        version = env!("CARGO_PKG_VERSION")
    );
    for section in Section::ALL {
        let docs = DOCS.iter().filter(|d| d.section == section);
        out.push('\n');
        match section {
            Section::Ignored | Section::Refused => {
                // An entry is not broken across lines (its spaces are a placeholder until wrapped).
                let list: Vec<String> = docs.map(|d| synopsis(d).replace(' ', KEEP)).collect();
                let intro = if section == Section::Ignored {
                    "Accepted and ignored (see docs/usage.md for why each is harmless):"
                } else {
                    "Refused with an error naming the option and what to change in the xl config:"
                };
                out.push_str(&wrap(&format!("{intro} {}.", list.join(", ")), 0, 78).replace(KEEP, " "));
            }
            _ => {
                out.push_str(section.title());
                out.push_str(":\n");
                for d in docs {
                    push_entry(&mut out, &synopsis(d), d.help);
                }
            }
        }
    }
    out.push_str("\nEnvironment:\n");
    for (name, meaning) in ENVIRONMENT {
        push_entry(&mut out, name, meaning);
    }
    out
}

/// `  SYNOPSIS   help...` with the help in a column, wrapped.
fn push_entry(out: &mut String, synopsis: &str, help: &str) {
    const COLUMN: usize = 28;
    let head = format!("  {synopsis}");
    let body = wrap(help, COLUMN, 78);
    if head.chars().count() + 2 <= COLUMN {
        out.push_str(&format!("{head:<COLUMN$}"));
        out.push_str(body.trim_start());
    } else {
        out.push_str(&head);
        out.push('\n');
        out.push_str(&body);
    }
}

/// `text` wrapped at `width` columns, every line indented by `indent`, ending in a newline.
fn wrap(text: &str, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&format!("{:indent$}{line}\n", ""));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("{:indent$}{line}\n", ""));
    }
    out
}

/// The Xen development files this binary was built against (`build.rs`).
pub(super) const BUILT_AGAINST: &str = env!("XENDM_BUILT_AGAINST");

/// The `--version` text.
pub(super) fn version_text() -> String {
    format!(
        "xendm {}\n\
         Compatible with the qemu-xen device-model interface of Xen 4.17\n\
         (libxl device_model_version=\"qemu-xen\").\n\
         Built against: {BUILT_AGAINST}.\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The known option closest to `name` by edit distance, if it is close
/// enough to be a plausible misspelling, spelled with one dash.
pub(super) fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Option<String> {
    let budget = match name.chars().count() {
        0..=3 => return None,
        4..=6 => 1,
        _ => 2,
    };
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|&(d, _)| d <= budget)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| format!("-{k}"))
}

/// Levenshtein distance over chars (two rolling rows, no indexing).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev.get(j).copied().unwrap_or(usize::MAX).saturating_add(usize::from(ca != *cb));
            let delete = prev.get(j + 1).copied().unwrap_or(usize::MAX).saturating_add(1);
            let insert = cur.last().copied().unwrap_or(usize::MAX).saturating_add(1);
            cur.push(substitute.min(delete).min(insert));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("xen-domidd", "xen-domid"), 1);
        assert_eq!(edit_distance("chardve", "chardev"), 2);
    }

    #[test]
    fn suggestions() {
        let known = ["xen-domid", "xen-domid-restrict", "kernel", "m", "mon"];
        let s = |n| suggest(n, known.iter().copied());
        assert_eq!(s("xen-domidd").as_deref(), Some("-xen-domid"));
        assert_eq!(s("kernal").as_deref(), Some("-kernel"));
        assert_eq!(s("xen-domid-restric").as_deref(), Some("-xen-domid-restrict"));
        // Short names are too ambiguous to guess; far names get nothing.
        assert_eq!(s("mo"), None);
        assert_eq!(s("bogus-option"), None);
    }

    #[test]
    fn every_parsed_option_is_documented_once() {
        let parsed: Vec<&str> = super::super::table::TABLE.iter().map(|o| o.name).collect();
        assert_eq!(
            undocumented(&parsed),
            Vec::<&str>::new(),
            "options in table.rs TABLE without an entry in help.rs DOCS"
        );
        assert_eq!(unparsed(&parsed), Vec::<&str>::new(), "DOCS names that TABLE does not parse, or that repeat");
        // And the checks do catch a difference.
        assert_eq!(undocumented(&["xen-domid", "new-option"]), ["new-option"]);
        assert!(unparsed(&["xen-domid"]).contains(&"kernel"));
    }

    #[test]
    fn help_lists_every_option_with_its_description() {
        let help = help_text();
        for d in DOCS {
            assert!(help.contains(&synopsis(d)), "--help lacks {}", synopsis(d));
            if !matches!(d.section, Section::Ignored | Section::Refused) {
                let first_words: String = d.help.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                assert!(help.contains(&first_words), "--help lacks the description of {}", synopsis(d));
            }
        }
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "line too long: {line}");
        }
    }

    #[test]
    fn wrap_keeps_words_and_indent() {
        assert_eq!(wrap("a bb ccc", 2, 7), "  a bb\n  ccc\n");
        assert_eq!(wrap("", 2, 7), "");
    }

    #[test]
    fn version_names_the_xen_libraries() {
        let v = version_text();
        assert!(v.contains("Built against: "), "{v}");
        assert!(!BUILT_AGAINST.is_empty());
    }
}
