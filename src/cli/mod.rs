//! The command line: the qemu-xen argv that libxl builds, plus xendm's own options.
//!
//! libxl (`libxl__build_device_model_args_new`, Xen 4.17) launches the device
//! model with a QEMU command line. QEMU's syntax is not getopt-shaped, so this
//! is a small table-driven parser (`table.rs`) plus a QemuOpts value parser
//! ([`opts`]):
//!
//! * options are single-dash long names (`-xen-domid 1`); `--name` is the same
//!   option as `-name`;
//! * an option takes either no value or exactly the next argument, which may
//!   be a QemuOpts list `key=val,...` with an implied first key;
//! * some options repeat (`-chardev`, `-mon`, `-serial`, ...), and their
//!   order is kept.
//!
//! Reference: QEMU `docs/system/invocation.rst` / `qemu-options.hx` and the
//! Xen fact sheet (`xen-abi.md` §1.2-1.6); user documentation is in
//! `docs/usage.md`.
//!
//! Where we differ from QEMU, deliberately:
//! * Options xendm does not implement are refused with an error naming them,
//!   unless they are harmless to ignore (listed in `docs/usage.md`, and
//!   collected in [`Config::ignored`] for a start-up log line). QEMU would
//!   create the device; silently dropping a disk or a NIC is not harmless.
//! * A single-valued option given twice is an error (QEMU lets the last one
//!   win); `-machine` is merged like QEMU does.
//! * Every argument must be UTF-8.
//! * `-xen-domid` is required unless `-machine none` (the libxl 4.20 probe).
mod chardev;
mod devices;
mod help;
mod man;
pub mod opts;
mod table;
#[cfg(test)]
mod tests;
pub mod xlcfg;

use std::ffi::OsString;
use std::path::PathBuf;

use thiserror::Error;
use xendm_fw_cfg::BootProtocol;

use crate::control::chardev::ChardevSpec;
use crate::control::qmp::QmpSocketSpec;

pub use devices::NIC_MODELS;
pub use opts::OptsError;

/// For tests across the crate: `args` parsed as a run configuration
/// (panics on anything else, with what came back).
#[cfg(test)]
pub(crate) fn run_config(args: &[&str]) -> Config {
    match parse(args.iter().map(Into::into)) {
        Ok(Command::Run(c)) => c,
        other => panic!("{args:?} is not a run: {other:?}"),
    }
}

/// Why an ignored item of [`Config::ignored`] (`-vnc none`, `-chardev ...`)
/// is harmless, in the words of `--help`; None if the help has no reason.
pub fn ignored_reason(item: &str) -> Option<&'static str> {
    let name = item.split_whitespace().next()?.trim_start_matches('-');
    help::ignored_reason(name)
}

/// What the process was asked to do.
// One value per process: boxing `Config` would only add noise for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a device model with this configuration.
    Run(Config),
    /// Print this text (`--help`, `-h`, `-help`) and exit successfully.
    Help(String),
    /// Print this text (`--version`, `-version`) and exit successfully.
    Version(String),
    /// Write the option ROMs xendm builds into this directory and exit
    /// (`--dump-roms DIR`, xendm's own).
    DumpRoms(PathBuf),
    /// Print this manual page (roff) and exit (`--print-man`, xendm's own).
    Man(String),
    /// Read this xl guest configuration and report what xendm would do with
    /// each setting (`xendm check-config GUEST.cfg`, xendm's own).
    CheckConfig(PathBuf),
}

/// The device-model configuration given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `-xen-domid N`: the guest to serve. `None` only with `-machine none`.
    pub domid: Option<u32>,
    /// `-xen-domid-restrict`: restrict our Xen handles to the guest once
    /// initialisation is done.
    pub domid_restrict: bool,
    /// `-xen-attach` (PV/PVH only in libxl; carried, not acted on).
    pub xen_attach: bool,
    /// `-no-shutdown`: do not exit when the guest shuts down.
    pub no_shutdown: bool,
    /// `-S`: start paused, QMP `query-status` says `prelaunch` until `cont`.
    pub start_paused: bool,
    /// `-name NAME` (the `guest=` key).
    pub name: Option<String>,
    /// QMP monitors: each `-mon chardev=ID,mode=control` joined with its
    /// `-chardev socket,...`, in `-mon` order.
    pub qmp: Vec<QmpEndpoint>,
    /// `-kernel PATH`.
    pub kernel: Option<PathBuf>,
    /// `-initrd` verbatim (a path for Linux and PVH). For a multiboot kernel it is a comma-separated
    /// module list (`,,` escapes a comma) which the multiboot loader splits.
    pub initrd_spec: Option<String>,
    /// `-append CMDLINE`, verbatim (inner and trailing spaces kept).
    pub append: Option<String>,
    /// `-serial SPEC` in order. A [`ChardevSpec::None`] entry occupies no COM
    /// port; use [`Config::serial_ports`] to get the ports. `file:PATH`
    /// output truncates the file first, as QEMU's `-serial file:` does. Host
    /// devices (`/dev/...`) are parsed but refused when the machine is
    /// planned.
    pub serial: Vec<ChardevSpec>,
    /// `-boot order=...` (validated: letters `a`-`p`, no repeats).
    pub boot_order: Option<String>,
    /// `-machine`/`-M` (merged over all occurrences); defaults to `xenfv`.
    pub machine: Machine,
    /// `-m`: guest RAM in MiB, excluding video RAM.
    pub mem_mib: Option<u64>,
    /// `-smp CPUS[,maxcpus=MAX]`.
    pub smp: Option<Smp>,
    /// `-vnc VALUE` verbatim. No VNC server exists; QMP reports it disabled.
    pub vnc: Option<String>,
    /// `-no-acpi` or `-machine acpi=off`: no PIIX4 ACPI function.
    pub no_acpi: bool,
    /// `-incoming URI` verbatim (`fd:N` from libxl on restore).
    pub incoming: Option<String>,
    /// Effective chroot directory: `-chroot DIR` or `-run-with chroot=DIR`
    /// (the later one wins, as in QEMU).
    pub chroot: Option<PathBuf>,
    /// Effective user: `-runas USER|UID:GID` or `-run-with user=...`
    /// (the later one wins). `UID:GID` is checked to be numeric.
    pub runas: Option<String>,
    /// `-run-with` as given (its chroot/user also land in the two fields above).
    pub run_with: Option<RunWith>,
    /// `-xendm-boot linux|multiboot|pvh` (xendm's own): force the kernel type.
    pub boot_protocol: Option<BootProtocol>,
    /// `-xendm-record PATH` (xendm's own): record the ioreq stream here.
    /// (`XENDM_RECORD` in the environment is read at start-up, not here.)
    pub record: Option<PathBuf>,
    /// `-sandbox`: whether the seccomp filter is installed after start-up
    /// (on unless `-sandbox off`; `XENDM_SECCOMP` in the environment, read at
    /// start-up, can turn it off or to log-only for debugging).
    pub sandbox: SandboxSetting,
    /// Options accepted and ignored, as given (`-display none`, ...), for a
    /// start-up log line.
    pub ignored: Vec<String>,
    /// The emulated hard disks libxl asks for (`-drive ...,if=ide` for
    /// `xvda`-`xvdd`, the AHCI and SCSI variants), which are the guest's PV
    /// disks too. xendm emulates none of them; the machine checks that the
    /// guest can reach them through its PV drivers (`machine::spec`).
    pub disks: Vec<EmulatedDisk>,
    /// The emulated NICs libxl asks for: each `-netdev type=tap` with the
    /// `-device MODEL` that names it. xendm emulates no NIC; it creates the
    /// tap (libxl's hotplug script needs it) and the guest uses netfront.
    pub nics: Vec<TapNic>,
}

/// Where libxl puts an emulated hard disk (`xen-toolstack.md` 3.1,
/// libxl 4.17 `libxl__build_device_model_args_new`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// `-drive file=T,if=ide,index=N,media=disk`: `xvda`-`xvdd` (or `hda`-`hdd`), index 0-3.
    Ide {
        /// IDE index 0-3 (`xvda` = 0).
        index: u32,
    },
    /// `hdtype=ahci`: `-drive file=T,if=none,id=D` + `-device ide-hd,bus=ahci0.N,drive=D`, port 0-5.
    Ahci {
        /// The AHCI port, which is the disk number (`xvdb` = 1).
        port: u32,
    },
    /// `sdX`: `-drive if=none,id=D,...` + `-device scsi-hd,drive=D,scsi-id=N`
    /// on the `lsi53c895a` controller (or the older `-drive if=scsi,unit=N`).
    Scsi {
        /// The SCSI id, which is the disk number (`sda` = 0), 0-15.
        id: u32,
    },
}

/// One emulated hard disk libxl asks for, served by the PV path only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedDisk {
    /// The bus and the disk number on it.
    pub bus: DiskBus,
    /// `file=`: the disk's target as libxl gives it (not opened by xendm).
    pub file: String,
    /// `readonly=on` (only libxl's SCSI disks can be; it refuses read-only IDE and AHCI disks).
    pub readonly: bool,
}

impl EmulatedDisk {
    /// The disk number libxl derived from the vdev (`xvda`, `hda`, `sda` = 0).
    pub fn number(&self) -> u32 {
        match self.bus {
            DiskBus::Ide { index } => index,
            DiskBus::Ahci { port } => port,
            DiskBus::Scsi { id } => id,
        }
    }

    /// The xl name of the disk: `xvda` for IDE/AHCI disk 0 (libxl maps
    /// `hda` there too), `sda` for SCSI disk 0.
    pub fn vdev(&self) -> String {
        let letter = char::from_u32(u32::from(b'a').saturating_add(self.number())).unwrap_or('?');
        match self.bus {
            DiskBus::Scsi { .. } => format!("sd{letter}"),
            DiskBus::Ide { .. } | DiskBus::Ahci { .. } => format!("xvd{letter}"),
        }
    }

    /// The argv form it came in, for messages (`-drive if=ide,index=0`).
    pub fn form(&self) -> String {
        match self.bus {
            DiskBus::Ide { index } => format!("-drive if=ide,index={index}"),
            DiskBus::Ahci { port } => format!("-device ide-hd,bus=ahci0.{port}"),
            DiskBus::Scsi { id } => format!("SCSI disk, scsi-id={id}"),
        }
    }
}

/// One emulated NIC libxl asks for: `-device MODEL,id=nicN,netdev=netN,mac=M`
/// with `-netdev type=tap,id=netN,ifname=NAME,br=B,script=no,downscript=no`
/// (`xen-toolstack.md` 3.1-3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    /// The NIC model (`rtl8139`, libxl's default, `e1000`, ...): recorded, not emulated.
    pub model: String,
    /// The `-device` id (`nic0`), if given.
    pub device_id: Option<String>,
    /// The `-netdev` id the device names (`net0`).
    pub netdev_id: String,
    /// `mac=` as given (checked to be six hex bytes), if given.
    pub mac: Option<String>,
    /// `ifname=`: the tap to create (`vif<domid>.<devid>-emu`), a valid Linux interface name.
    pub ifname: String,
    /// `br=`: the bridge libxl's hotplug script adds the tap to (recorded only).
    pub bridge: Option<String>,
}

/// `-sandbox on|off` (QEMU's option; in xendm the filter is on by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxSetting {
    /// The seccomp filter of `src/app/sandbox.rs` (the default).
    #[default]
    On,
    /// `-sandbox off`: no filter, for debugging.
    Off,
}

impl Config {
    /// The serial ports in COM order (COM1 first), skipping `none` entries.
    pub fn serial_ports(&self) -> impl Iterator<Item = &ChardevSpec> {
        self.serial.iter().filter(|s| **s != ChardevSpec::None)
    }
}

/// A QMP monitor endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpEndpoint {
    /// The chardev id (`libxl-cmd`, `libxenstat-cmd`, ...).
    pub id: String,
    /// Where the listening socket comes from. Always a server socket with
    /// `wait=off` (the parser refuses anything else).
    pub socket: QmpSocketSpec,
}

/// `-machine`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Machine {
    /// The machine type.
    pub kind: MachineKind,
    /// `max-ram-below-4g=BYTES` (libxl `mmio_hole`); at most 4 GiB.
    pub max_ram_below_4g: Option<u64>,
    /// `igd-passthru=on`.
    pub igd_passthru: bool,
}

/// The machine types xendm accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MachineKind {
    /// `xenfv`: i440FX + PIIX3 + the Xen platform PCI device (the default).
    #[default]
    Xenfv,
    /// `pc,accel=xen`: the same without the Xen platform device.
    PcAccelXen,
    /// `none,accel=xen`: no machine at all (the libxl 4.20 probe run).
    None,
}

/// `-smp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smp {
    /// vCPUs online at boot.
    pub cpus: u32,
    /// Maximum vCPUs (>= `cpus`).
    pub maxcpus: u32,
}

/// `-run-with` as given (QEMU 8.1+, used by libxl 4.20+ after its probe).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunWith {
    /// `chroot=DIR`.
    pub chroot: Option<PathBuf>,
    /// `user=USER|UID:GID`.
    pub user: Option<String>,
    /// `async-teardown=on|off` (accepted, not acted on: no teardown process).
    pub async_teardown: bool,
}

/// A command-line error. Every message names the option (or argument) at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    /// An argument is not valid UTF-8 (argument numbers count from 1).
    #[error("argument {index}{} is not valid UTF-8: {lossy:?}", value_of_text(.option))]
    NotUtf8 {
        /// 1-based position in argv (argv\[0\] excluded).
        index: usize,
        /// The option this argument is the value of, if any.
        option: Option<String>,
        /// The argument with invalid bytes replaced.
        lossy: String,
    },
    /// An option name that is not in the table.
    #[error("unknown option '{option}'{}", suggestion_text(.suggestion))]
    UnknownOption {
        /// The option as written.
        option: String,
        /// The closest known option, if one is close.
        suggestion: Option<String>,
    },
    /// An argument that is not an option (QEMU would take it as a disk image).
    #[error("unexpected argument '{0}' (xendm takes no disk image or positional arguments)")]
    UnexpectedArgument(String),
    /// An option that needs a value was the last argument.
    #[error("option '{0}' requires a value")]
    MissingValue(String),
    /// A single-valued option given twice.
    #[error("option '{0}' given more than once")]
    Repeated(String),
    /// A value that does not parse or is out of range.
    #[error("{option}: {message}")]
    InvalidValue {
        /// The option (canonical single-dash spelling).
        option: String,
        /// What is wrong, quoting the value.
        message: String,
    },
    /// A QemuOpts value error.
    #[error("{option}: {source}")]
    Opts {
        /// The option (canonical single-dash spelling).
        option: String,
        /// The underlying error.
        #[source]
        source: OptsError,
    },
    /// A value of an option that xendm does not implement.
    #[error("{option}: unsupported {what} '{value}' ({reason})")]
    Unsupported {
        /// The option (canonical single-dash spelling).
        option: String,
        /// What kind of value: "backend", "driver", "machine type", ...
        what: &'static str,
        /// The refused value.
        value: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A QEMU option that xendm knows but does not implement.
    #[error("option '{option}' is not supported by xendm: {reason}")]
    RefusedOption {
        /// The option (canonical single-dash spelling).
        option: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Options that contradict each other or lack a partner.
    #[error("{0}")]
    Inconsistent(String),
}

fn value_of_text(option: &Option<String>) -> String {
    match option {
        Some(o) => format!(" (the value of {o})"),
        None => String::new(),
    }
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean '{s}'?)"),
        None => String::new(),
    }
}

/// Parses the arguments after argv\[0\].
///
/// `check-config GUEST.cfg` as the first two arguments is xendm's own
/// subcommand (libxl never passes a positional argument); everything else is
/// the QEMU-style option walk of `table.rs`.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, CliError> {
    let args: Vec<OsString> = args.into_iter().collect();
    if args.first().is_some_and(|a| a == CHECK_CONFIG) {
        return match args.as_slice() {
            [_, file] if !file.is_empty() => Ok(Command::CheckConfig(PathBuf::from(file))),
            _ => Err(CliError::Inconsistent(format!("usage: xendm {CHECK_CONFIG} GUEST.cfg"))),
        };
    }
    table::parse_args(&args)
}

/// The subcommand that checks an xl config.
const CHECK_CONFIG: &str = "check-config";

#[cfg(test)]
mod subcommand_tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn check_config_takes_one_file() {
        assert_eq!(parse(argv(&["check-config", "g.cfg"])), Ok(Command::CheckConfig("g.cfg".into())));
        for bad in [&["check-config"][..], &["check-config", "a", "b"], &["check-config", ""]] {
            assert!(matches!(parse(argv(bad)), Err(CliError::Inconsistent(_))), "{bad:?}");
        }
        // Not first: still an unexpected positional argument to the option walk.
        assert!(matches!(parse(argv(&["-xen-domid", "1", "check-config"])), Err(CliError::UnexpectedArgument(_))));
    }

    #[test]
    fn print_man_prints_the_page() {
        let Ok(Command::Man(page)) = parse(argv(&["--print-man"])) else { panic!("--print-man") };
        assert!(page.starts_with(".TH XENDM 1"));
    }
}
