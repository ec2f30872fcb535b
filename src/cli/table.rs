//! The option table and the argv walk.
//!
//! Each entry names an option (without its leading dash), whether it takes
//! the next argument as its value, whether it may repeat, and the handler
//! that folds it into the [`State`]. Option semantics follow QEMU's
//! `qemu-options.hx` and libxl's use of them (`xen-abi.md` §1.2-1.5).

use std::ffi::OsString;
use std::path::PathBuf;

use super::chardev::{self, Chardev, Monitor, MAX_SERIAL_PORTS};
use super::devices::{DeviceArgs, NO_CDROM, NO_DISK, NO_SOUND, NO_USB, NO_VGA};
use super::help;
use super::man;
use super::opts::{parse_decimal, parse_size, Opts};
use super::{CliError, Command, Config, Machine, MachineKind, RunWith, SandboxSetting, Smp};
use crate::control::chardev::ChardevSpec;
use xendm_fw_cfg::BootProtocol;

/// The first domid Xen reserves (`DOMID_FIRST_RESERVED`); guest domids are below it.
const DOMID_FIRST_RESERVED: u32 = 0x7FF0;
/// Xen's limit on HVM vCPUs (`HVM_MAX_VCPUS`), also QEMU's `xenfv` max_cpus.
const HVM_MAX_VCPUS: u32 = 128;
const MIB: u64 = 1 << 20;
const FOUR_GIB: u64 = 4 << 30;

/// Parse state: the configuration being built plus what needs the whole argv.
#[derive(Default)]
pub(super) struct State {
    cfg: Config,
    seen: Vec<&'static str>,
    chardevs: Vec<Chardev>,
    monitors: Vec<Monitor>,
    machine: Option<Opts>,
    accel: Option<String>,
    dump_roms: Option<PathBuf>,
    devices: DeviceArgs,
    run_options: usize,
    exit: Option<Command>,
}

type Handler = fn(&mut State, &str) -> Result<(), CliError>;

pub(super) struct OptSpec {
    /// The name without its leading dash.
    pub name: &'static str,
    /// Takes the next argument as its value.
    pub takes_value: bool,
    /// May be given more than once.
    pub repeatable: bool,
    handler: Handler,
}

const fn flag(name: &'static str, repeatable: bool, handler: Handler) -> OptSpec {
    OptSpec { name, takes_value: false, repeatable, handler }
}

const fn value(name: &'static str, repeatable: bool, handler: Handler) -> OptSpec {
    OptSpec { name, takes_value: true, repeatable, handler }
}

/// Every option xendm accepts (or knows, to refuse with a reason).
pub(super) const TABLE: &[OptSpec] = &[
    // xendm's own.
    flag("h", true, |s, _| s.exit(Command::Help(help::help_text()))),
    flag("help", true, |s, _| s.exit(Command::Help(help::help_text()))),
    flag("version", true, |s, _| s.exit(Command::Version(help::version_text()))),
    flag("print-man", true, |s, _| s.exit(Command::Man(man::man_page(&names()).map_err(CliError::Inconsistent)?))),
    value("dump-roms", false, |s, v| {
        s.dump_roms = Some(path("-dump-roms", v)?);
        Ok(())
    }),
    value("xendm-boot", false, |s, v| {
        s.cfg.boot_protocol = Some(match v {
            "linux" => BootProtocol::Linux,
            "multiboot" => BootProtocol::Multiboot,
            "pvh" => BootProtocol::Pvh,
            _ => return Err(invalid("-xendm-boot", format!("unknown boot protocol '{v}' (linux, multiboot or pvh)"))),
        });
        Ok(())
    }),
    value("xendm-record", false, |s, v| {
        s.cfg.record = Some(path("-xendm-record", v)?);
        Ok(())
    }),
    // Xen.
    value("xen-domid", false, |s, v| {
        s.cfg.domid = Some(match parse_decimal::<u32>(v) {
            Some(0) => return Err(invalid("-xen-domid", "domain 0 cannot be served by a device model".into())),
            Some(d) if d < DOMID_FIRST_RESERVED => d,
            _ => return Err(invalid("-xen-domid", format!("invalid domain id '{v}'"))),
        });
        Ok(())
    }),
    flag("xen-domid-restrict", true, |s, _| {
        s.cfg.domid_restrict = true;
        Ok(())
    }),
    flag("xen-attach", true, |s, _| {
        s.cfg.xen_attach = true;
        Ok(())
    }),
    // Process and QMP.
    flag("no-shutdown", true, |s, _| {
        s.cfg.no_shutdown = true;
        Ok(())
    }),
    flag("S", true, |s, _| {
        s.cfg.start_paused = true;
        Ok(())
    }),
    value("chardev", true, |s, v| {
        let c = chardev::parse_chardev(v)?;
        if s.chardevs.iter().any(|old| old.id == c.id) {
            return Err(invalid("-chardev", format!("duplicate id '{}'", c.id)));
        }
        s.chardevs.push(c);
        Ok(())
    }),
    value("mon", true, |s, v| {
        s.monitors.push(chardev::parse_mon(v)?);
        Ok(())
    }),
    value("qmp", true, |s, v| {
        let index = s.monitors.len();
        s.monitors.push(chardev::parse_qmp(v, index)?);
        Ok(())
    }),
    value("name", false, |s, v| {
        let o = opts("-name", v, Some("guest"))?;
        check_keys("-name", &o, &["guest", "process", "debug-threads"])?;
        o.get_bool("debug-threads").map_err(opts_err("-name"))?;
        s.cfg.name = o.get("guest").map(str::to_string);
        Ok(())
    }),
    value("incoming", false, |s, v| {
        if v.is_empty() {
            return Err(invalid("-incoming", "empty URI".into()));
        }
        s.cfg.incoming = Some(v.to_string());
        Ok(())
    }),
    // Privileges.
    value("chroot", false, |s, v| {
        s.cfg.chroot = Some(path("-chroot", v)?);
        Ok(())
    }),
    value("runas", false, |s, v| {
        s.cfg.runas = Some(runas("-runas", v)?);
        Ok(())
    }),
    value("run-with", false, |s, v| {
        const OPT: &str = "-run-with";
        let o = opts(OPT, v, None)?;
        check_keys(OPT, &o, &["chroot", "user", "async-teardown"])?;
        let rw = RunWith {
            chroot: o.get("chroot").map(|p| path(OPT, p)).transpose()?,
            user: o.get("user").map(|u| runas(OPT, u)).transpose()?,
            async_teardown: o.get_bool("async-teardown").map_err(opts_err(OPT))?.unwrap_or(false),
        };
        if rw.chroot.is_some() {
            s.cfg.chroot.clone_from(&rw.chroot);
        }
        if rw.user.is_some() {
            s.cfg.runas.clone_from(&rw.user);
        }
        s.cfg.run_with = Some(rw);
        Ok(())
    }),
    // Machine.
    value("machine", true, machine),
    value("M", true, machine),
    value("accel", false, |s, v| {
        let o = opts("-accel", v, Some("accel"))?;
        check_keys("-accel", &o, &["accel"])?;
        s.accel = Some(o.require("accel").map_err(opts_err("-accel"))?.to_string());
        Ok(())
    }),
    value("m", false, |s, v| {
        const OPT: &str = "-m";
        let o = opts(OPT, v, Some("size"))?;
        check_keys(OPT, &o, &["size"])?;
        let size = o.require("size").map_err(opts_err(OPT))?;
        // QEMU reads a suffix-less -m in MiB.
        let bytes = parse_size(size, MIB).map_err(|_| invalid(OPT, format!("invalid size '{size}'")))?;
        if bytes == 0 || bytes % MIB != 0 {
            return Err(invalid(OPT, format!("size '{size}' is not a positive whole number of MiB")));
        }
        s.cfg.mem_mib = Some(bytes / MIB);
        Ok(())
    }),
    value("smp", false, |s, v| {
        const OPT: &str = "-smp";
        let o = opts(OPT, v, Some("cpus"))?;
        check_keys(OPT, &o, &["cpus", "maxcpus"])?;
        let cpus = o.get_u32("cpus").map_err(opts_err(OPT))?;
        let maxcpus = o.get_u32("maxcpus").map_err(opts_err(OPT))?;
        let (cpus, maxcpus) = match (cpus, maxcpus) {
            (Some(c), Some(m)) => (c, m),
            (Some(c), None) => (c, c),
            (None, Some(m)) => (m, m),
            (None, None) => return Err(invalid(OPT, "no vCPU count".into())),
        };
        if cpus == 0 || maxcpus > HVM_MAX_VCPUS || cpus > maxcpus {
            return Err(invalid(OPT, format!("need 1 <= cpus ({cpus}) <= maxcpus ({maxcpus}) <= {HVM_MAX_VCPUS}")));
        }
        s.cfg.smp = Some(Smp { cpus, maxcpus });
        Ok(())
    }),
    flag("no-acpi", true, |s, _| {
        s.cfg.no_acpi = true;
        Ok(())
    }),
    value("boot", false, |s, v| {
        const OPT: &str = "-boot";
        let o = opts(OPT, v, Some("order"))?;
        check_keys(OPT, &o, &["order"])?;
        let order = o.require("order").map_err(opts_err(OPT))?;
        let mut seen = [false; 16];
        for c in order.chars() {
            let slot = u32::from(c).checked_sub(u32::from('a')).and_then(|i| seen.get_mut(usize::try_from(i).ok()?));
            match slot {
                Some(slot) if !*slot => *slot = true,
                Some(_) => return Err(invalid(OPT, format!("boot device '{c}' repeated in '{order}'"))),
                None => return Err(invalid(OPT, format!("invalid boot device '{c}' in '{order}' (a-p)"))),
            }
        }
        s.cfg.boot_order = Some(order.to_string());
        Ok(())
    }),
    // Direct kernel boot.
    value("kernel", false, |s, v| {
        s.cfg.kernel = Some(path("-kernel", v)?);
        Ok(())
    }),
    value("initrd", false, |s, v| {
        path("-initrd", v)?;
        s.cfg.initrd_spec = Some(v.to_string());
        Ok(())
    }),
    value("append", false, |s, v| {
        s.cfg.append = Some(v.to_string());
        Ok(())
    }),
    // Serial ports.
    value("serial", true, |s, v| {
        let spec = chardev::parse_serial(v)?;
        if spec != ChardevSpec::None && s.cfg.serial_ports().count() >= MAX_SERIAL_PORTS {
            return Err(invalid("-serial", format!("at most {MAX_SERIAL_PORTS} serial ports, '{v}' is one too many")));
        }
        s.cfg.serial.push(spec);
        Ok(())
    }),
    // Display.
    value("vnc", false, |s, v| {
        if v.is_empty() {
            return Err(invalid("-vnc", "empty display".into()));
        }
        s.cfg.vnc = Some(v.to_string());
        s.ignore("-vnc", Some(v))
    }),
    value("display", true, |s, v| {
        let o = opts("-display", v, Some("type"))?;
        match o.get("type") {
            Some("none") if o.pairs().count() == 1 => s.ignore("-display", Some(v)),
            _ => Err(unsupported("-display", "display", v, "xendm has no local display; set sdl=0 in the xl config")),
        }
    }),
    flag("nographic", true, |s, _| s.ignore("-nographic", None)),
    value("k", false, |s, v| s.ignore("-k", Some(v))),
    value("vga", false, |s, v| {
        if v == "none" {
            return s.ignore("-vga", Some(v));
        }
        Err(unsupported("-vga", "card", v, NO_VGA))
    }),
    // Defaults and configuration files: xendm always behaves as with both.
    flag("nodefaults", true, |s, _| s.ignore("-nodefaults", None)),
    flag("no-user-config", true, |s, _| s.ignore("-no-user-config", None)),
    // Devices.
    value("device", true, |s, v| s.devices.device(v)),
    value("netdev", true, |s, v| s.devices.netdev(v)),
    value("net", true, |s, v| {
        let o = opts("-net", v, Some("type"))?;
        if o.get("type") == Some("none") && o.pairs().count() == 1 {
            return s.ignore("-net", Some(v));
        }
        Err(unsupported("-net", "network", v, NO_LEGACY_NET))
    }),
    flag("usb", true, |s, _| s.ignore("-usb", None)),
    value("parallel", true, |s, v| {
        if v == "none" {
            return s.ignore("-parallel", Some(v));
        }
        Err(unsupported("-parallel", "backend", v, "parallel ports are not implemented"))
    }),
    // Debugging and tuning knobs of QEMU itself.
    value("global", true, |s, v| {
        if !v.contains('=') {
            return Err(invalid("-global", format!("'{v}' is not DRIVER.PROPERTY=VALUE")));
        }
        s.ignore("-global", Some(v))
    }),
    value("sandbox", false, |s, v| {
        s.cfg.sandbox = sandbox(v)?;
        Ok(())
    }),
    value("d", true, |s, v| s.ignore("-d", Some(v))),
    value("D", false, |s, v| s.ignore("-D", Some(v))),
    value("trace", true, |s, v| s.ignore("-trace", Some(v))),
    value("msg", true, |s, v| s.ignore("-msg", Some(v))),
    // Known QEMU options that xendm refuses, with the reason.
    value("drive", true, |s, v| s.devices.drive(v)),
    value("cdrom", true, |_, _| refuse("-cdrom", NO_CDROM)),
    value("hda", true, |_, _| refuse("-hda", NO_DISK)),
    value("hdb", true, |_, _| refuse("-hdb", NO_DISK)),
    value("hdc", true, |_, _| refuse("-hdc", NO_DISK)),
    value("hdd", true, |_, _| refuse("-hdd", NO_DISK)),
    value("fda", true, |_, _| refuse("-fda", "floppy drives are not implemented")),
    value("fdb", true, |_, _| refuse("-fdb", "floppy drives are not implemented")),
    value("usbdevice", true, |_, _| refuse("-usbdevice", NO_USB)),
    value("spice", true, |_, _| refuse("-spice", "SPICE is not implemented; set spice=0 in the xl config")),
    value("soundhw", true, |_, _| refuse("-soundhw", NO_SOUND)),
    value("audiodev", true, |_, _| refuse("-audiodev", NO_SOUND)),
    value("object", true, |_, _| {
        refuse("-object", "objects (COLO filters, iothreads, memory backends) are not implemented")
    }),
    value("monitor", true, |_, _| {
        refuse("-monitor", "the human monitor is not implemented; use -mon chardev=ID,mode=control")
    }),
    value("bios", false, |_, _| refuse("-bios", "under Xen, hvmloader loads the firmware")),
    value("pidfile", false, |_, _| refuse("-pidfile", "not implemented; libxl records the pid itself")),
    flag("daemonize", false, |_, _| {
        refuse("-daemonize", "libxl tracks the device model by its pid, so it must not daemonize")
    }),
    flag("enable-kvm", false, |_, _| refuse("-enable-kvm", "xendm is a Xen device model")),
];

const NO_LEGACY_NET: &str = "the -net nic/-net tap form is not implemented; libxl passes -netdev type=tap with a \
     -device MODEL for an emulated NIC, or -net none; PV network interfaces (type=vif) need neither";

impl State {
    fn exit(&mut self, command: Command) -> Result<(), CliError> {
        self.exit = Some(command);
        Ok(())
    }

    /// Records an accepted-and-ignored option; returns `Ok` so handlers can end with it.
    fn ignore(&mut self, option: &str, value: Option<&str>) -> Result<(), CliError> {
        self.cfg.ignored.push(match value {
            Some(v) => format!("{option} {v}"),
            None => option.to_string(),
        });
        Ok(())
    }
}

fn invalid(option: &str, message: String) -> CliError {
    CliError::InvalidValue { option: option.to_string(), message }
}

fn unsupported(option: &str, what: &'static str, value: &str, reason: &str) -> CliError {
    CliError::Unsupported { option: option.to_string(), what, value: value.to_string(), reason: reason.to_string() }
}

fn refuse(option: &str, reason: &str) -> Result<(), CliError> {
    Err(CliError::RefusedOption { option: option.to_string(), reason: reason.to_string() })
}

fn opts(option: &str, value: &str, implied: Option<&str>) -> Result<Opts, CliError> {
    Opts::parse(value, implied).map_err(opts_err(option))
}

fn opts_err(option: &str) -> impl Fn(super::OptsError) -> CliError + '_ {
    move |source| CliError::Opts { option: option.to_string(), source }
}

fn check_keys(option: &str, o: &Opts, allowed: &[&str]) -> Result<(), CliError> {
    o.check_keys(allowed).map_err(opts_err(option))
}

fn path(option: &str, value: &str) -> Result<PathBuf, CliError> {
    if value.is_empty() {
        return Err(invalid(option, "empty path".into()));
    }
    Ok(PathBuf::from(value))
}

/// `-sandbox on|off[,KEY=deny...]` (QEMU's seccomp option). xendm's filter
/// (`src/app/sandbox.rs`) is installed after the privilege drop and denies
/// every group QEMU's sub-options name, so `=deny` (and, for
/// `elevateprivileges`, `=allow`: nothing sets ids after the drop) is what it
/// does anyway; anything it cannot honour is refused by name.
fn sandbox(value: &str) -> Result<SandboxSetting, CliError> {
    const OPT: &str = "-sandbox";
    let o = opts(OPT, value, Some("enable"))?;
    check_keys(OPT, &o, &["enable", "obsolete", "elevateprivileges", "spawn", "resourcecontrol"])?;
    let enable = o.get_bool("enable").map_err(opts_err(OPT))?.unwrap_or(true);
    for (key, val) in o.pairs() {
        let honoured = match key {
            "enable" => true,
            "elevateprivileges" => matches!(val, "deny" | "allow"),
            _ => val == "deny",
        };
        if !honoured {
            return Err(unsupported(OPT, "setting", &format!("{key}={val}"), SANDBOX_ONLY_DENY));
        }
    }
    Ok(if enable { SandboxSetting::On } else { SandboxSetting::Off })
}

const SANDBOX_ONLY_DENY: &str = "xendm's seccomp filter always denies obsolete calls, spawning, resource control and \
     privilege changes after start-up (docs/usage.md, Sandbox)";

/// `USER` or numeric `UID:GID` (QEMU `-runas`).
fn runas(option: &str, value: &str) -> Result<String, CliError> {
    let ok = match value.split_once(':') {
        Some((uid, gid)) => parse_decimal::<u32>(uid).is_some() && parse_decimal::<u32>(gid).is_some(),
        None => !value.is_empty(),
    };
    if !ok {
        return Err(invalid(option, format!("invalid user '{value}' (USER or UID:GID)")));
    }
    Ok(value.to_string())
}

fn machine(s: &mut State, v: &str) -> Result<(), CliError> {
    let o = opts("-machine", v, Some("type"))?;
    match &mut s.machine {
        Some(old) => old.merge(o),
        None => s.machine = Some(o),
    }
    Ok(())
}

/// Turns the merged `-machine` options (and `-accel`) into a [`Machine`].
fn finish_machine(s: &mut State) -> Result<Machine, CliError> {
    const OPT: &str = "-machine";
    let Some(o) = s.machine.take() else {
        if let Some(accel) = &s.accel {
            check_accel(accel)?;
        }
        return Ok(Machine::default());
    };
    check_keys(OPT, &o, &["type", "accel", "suppress-vmdesc", "max-ram-below-4g", "igd-passthru", "acpi"])?;
    let accel = o.get("accel").map(str::to_string).or_else(|| s.accel.clone());
    if let Some(accel) = &accel {
        check_accel(accel)?;
    }
    let xen = accel.is_some();
    let kind = match o.get("type") {
        Some("xenfv") => MachineKind::Xenfv,
        Some("pc") if xen => MachineKind::PcAccelXen,
        Some("none") if xen => MachineKind::None,
        Some(t @ ("pc" | "none")) => return Err(invalid(OPT, format!("machine type '{t}' needs accel=xen"))),
        Some("xenpv") => {
            return Err(unsupported(
                OPT,
                "machine type",
                "xenpv",
                "libxl starts -machine xenpv for a PV guest's or a stubdomain's consoles, which is QEMU's job: \
                 remove device_model_override from the guest's xl.cfg so that libxl runs Debian's qemu for it; \
                 xendm itself goes into the stubdomain image (docs/stubdom.md)",
            ))
        }
        Some(other) => {
            return Err(unsupported(
                OPT,
                "machine type",
                other,
                "xendm provides xenfv, pc (with accel=xen) and none (with accel=xen)",
            ))
        }
        None => return Err(invalid(OPT, "no machine type (xenfv, pc or none)".into())),
    };
    if let Some(v) = o.get("suppress-vmdesc") {
        o.get_bool("suppress-vmdesc").map_err(opts_err(OPT))?;
        // Our saved state never carries QEMU's vmdesc section anyway.
        s.ignore(OPT, Some(&format!("suppress-vmdesc={v}")))?;
    }
    let max_ram_below_4g = match o.get_size("max-ram-below-4g").map_err(opts_err(OPT))? {
        // QEMU reads 0 as "not set".
        Some(0) | None => None,
        Some(n) if n <= FOUR_GIB => Some(n),
        Some(n) => return Err(invalid(OPT, format!("max-ram-below-4g={n} is above 4G"))),
    };
    let igd_passthru = o.get_bool("igd-passthru").map_err(opts_err(OPT))?.unwrap_or(false);
    match o.get("acpi") {
        None | Some("on" | "auto") => {}
        Some("off") => s.cfg.no_acpi = true,
        Some(v) => return Err(invalid(OPT, format!("acpi expects on, off or auto, not '{v}'"))),
    }
    Ok(Machine { kind, max_ram_below_4g, igd_passthru })
}

fn check_accel(accel: &str) -> Result<(), CliError> {
    if accel == "xen" {
        return Ok(());
    }
    Err(unsupported("-machine", "accelerator", accel, "xendm is a Xen device model: accel=xen only"))
}

/// Cross-option checks once every argument is in.
fn finish(mut s: State) -> Result<Command, CliError> {
    if let Some(dir) = s.dump_roms.take() {
        if s.run_options > 0 {
            return Err(CliError::Inconsistent("--dump-roms takes no other options".into()));
        }
        return Ok(Command::DumpRoms(dir));
    }
    s.cfg.machine = finish_machine(&mut s)?;
    let devices = std::mem::take(&mut s.devices).finish()?;
    let mut cfg = s.cfg;
    cfg.disks = devices.disks;
    cfg.nics = devices.nics;
    cfg.ignored.extend(devices.controllers);
    cfg.qmp = chardev::resolve(&s.chardevs, &s.monitors, &mut cfg.ignored)?;
    if cfg.kernel.is_none() {
        for (set, option) in [
            (cfg.initrd_spec.is_some(), "-initrd"),
            (cfg.append.is_some(), "-append"),
            (cfg.boot_protocol.is_some(), "-xendm-boot"),
        ] {
            if set {
                return Err(CliError::Inconsistent(format!("{option} needs -kernel")));
            }
        }
    }
    if cfg.domid.is_none() && cfg.machine.kind != MachineKind::None {
        return Err(CliError::Inconsistent(
            "-xen-domid is required (only the '-machine none,accel=xen' probe runs without it)".into(),
        ));
    }
    Ok(Command::Run(cfg))
}

/// The option names of [`TABLE`], for the manual page's check against its documentation.
fn names() -> Vec<&'static str> {
    TABLE.iter().map(|o| o.name).collect()
}

fn lookup(name: &str) -> Option<&'static OptSpec> {
    TABLE.iter().find(|o| o.name == name)
}

fn utf8(args: &[OsString], index: usize, option: Option<&str>) -> Result<Option<String>, CliError> {
    let Some(arg) = args.get(index) else {
        return Ok(None);
    };
    match arg.to_str() {
        Some(s) => Ok(Some(s.to_string())),
        None => Err(CliError::NotUtf8 {
            index: index + 1,
            option: option.map(str::to_string),
            lossy: arg.to_string_lossy().into_owned(),
        }),
    }
}

/// Walks argv (without argv\[0\]) through [`TABLE`].
pub(super) fn parse_args(args: &[OsString]) -> Result<Command, CliError> {
    let mut s = State::default();
    let mut i = 0;
    while let Some(arg) = utf8(args, i, None)? {
        i += 1;
        // QEMU accepts `--name` for every `-name`.
        let name = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(name) => name,
            _ => return Err(CliError::UnexpectedArgument(arg)),
        };
        let Some(spec) = lookup(name) else {
            return Err(CliError::UnknownOption {
                option: arg.clone(),
                suggestion: help::suggest(name, TABLE.iter().map(|o| o.name)),
            });
        };
        let option = format!("-{}", spec.name);
        if !spec.repeatable {
            if s.seen.contains(&spec.name) {
                return Err(CliError::Repeated(option));
            }
            s.seen.push(spec.name);
        }
        let value = if spec.takes_value {
            let v = utf8(args, i, Some(&option))?.ok_or_else(|| CliError::MissingValue(option.clone()))?;
            i += 1;
            v
        } else {
            String::new()
        };
        if spec.name != "dump-roms" {
            s.run_options += 1;
        }
        (spec.handler)(&mut s, &value)?;
        if let Some(command) = s.exit.take() {
            return Ok(command);
        }
    }
    finish(s)
}
