//! The `xendm` process around the machine: start-up as a list of steps, the
//! run state, privilege dropping.
//!
//! Start-up order (each step's failure ends the process with a message that
//! libxl leaves in `/var/log/xen/qemu-dm-<name>.log`):
//!
//! 0. take over the descriptors libxl passed (`-chardev ...,fd=N`,
//!    `inherited.rs`), before the process opens any of its own;
//! 1. check `-runas` and `-chroot` (`preflight.rs`); plan the machine
//!    ([`crate::machine::spec`]): every option checked, the kernel, initrd
//!    and modules opened and validated (kept open: fw_cfg serves them from
//!    the file), the fw_cfg items and PVH writes computed; create the taps
//!    of libxl's emulated NICs (`nics.rs`, as root: the privilege drop is
//!    in step 4); open the serial backends and the trace file. Nothing has
//!    touched Xen or the guest yet;
//! 2. open the Xen handles, the mapcache and the hypervisor, build the
//!    machine on them ([`crate::machine::build`]), hand the taps to its Xen
//!    platform device (closed on the guest's NIC unplug), write PVH
//!    segments if any (`setup.rs`);
//! 3. create the ioreq server, claim every range and PCI function the bus
//!    lists, bind the event channels;
//! 4. start serial input, bind the QMP sockets, enable the server (unless
//!    `-S`), start the ioreq thread, open xenstore, drop privileges
//!    (`serve.rs`), enter the seccomp sandbox (`sandbox/`; the ioreq thread
//!    serves once its own filter is in place);
//! 5. serve QMP, write `device-model/<domid>/state = running`, and wait for
//!    SIGHUP/SIGTERM/SIGINT or QMP `quit`; then stop the ioreq thread,
//!    destroy the server, flush the trace, exit 0.
//!
//! `-machine none` (the libxl 4.20 probe) only serves QMP (`probe.rs`).

pub mod check_config;
pub mod clock;
mod control;
mod incoming;
pub mod inherited;
pub mod logging;
mod monitors;
mod nics;
pub mod panics;
mod preflight;
pub mod privileges;
mod probe;
mod record;
pub mod sandbox;
mod serve;
mod setup;
pub mod signals;
pub mod stubdom;
mod timeline;
mod xenstore_work;

use std::ffi::OsString;

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::cli::{Config, MachineKind};
use crate::control::chardev::Chardev;
use crate::machine::spec::MachineSpec;
use record::TraceFile;
use setup::XenHandles;

/// Runs the device model `cfg` describes until it is told to stop.
///
/// # Errors
/// The first step that fails, with its context.
pub fn run(cfg: Config, argv: &[OsString]) -> Result<()> {
    run_in(cfg, argv, None)
}

/// [`run`], in a stubdomain when `stub` is given: QMP over its vchan, no
/// dom0 backend to close ([`stubdom`]).
///
/// # Errors
/// The first step that fails, with its context.
pub(crate) fn run_in(cfg: Config, argv: &[OsString], stub: Option<stubdom::qmp::StubQmp>) -> Result<()> {
    log_start(&cfg, argv);
    // 0. Descriptors inherited from libxl, before the process opens any.
    let mut inherited = inherited::adopt(&cfg)?;
    if cfg.machine.kind == MachineKind::None {
        return probe::run(&cfg, inherited);
    }
    let domid = guest_domid(&cfg)?;

    // 1. The plan, serial backends and the trace: no Xen, no guest.
    let runas = preflight::check_privilege_options(&cfg)?;
    let spec = plan_machine(&cfg)?;
    let taps = nics::create_taps(&cfg, &crate::net::tap::LinuxTaps)?;
    let serial = open_serial_backends(&spec)?;
    let trace = TraceFile::create(&cfg, argv, &spec)?;
    let saved = inherited.take_incoming().map(incoming::read).transpose()?;

    // 2. Xen handles, memory and hypervisor; the machine on them; on
    // `-incoming` its saved device state instead of the boot writes.
    let xen = XenHandles::open(domid)?;
    let mut machine = setup::instantiate(spec, &xen, &serial, trace)?;
    nics::attach_taps(&machine, taps)?;
    let restored = match &saved {
        Some(blob) => Some(incoming::restore(&mut machine, blob)?),
        None => {
            setup::write_boot_segments(&xen, &machine)?;
            None
        }
    };

    // 3. ioreq server.
    let server = setup::create_ioreq_server(&xen, &mut machine)?;

    // 4-5. QMP, enable, ioreq thread, announce, serve, stop.
    let run = serve::Run { domid, restored: restored.is_some(), dirty: xen.dirty.clone(), stub };
    serve::serve(&cfg, run, machine, server, &serial, inherited, runas)
}

/// The start-up log line (argv as given) and the ignored options.
fn log_start(cfg: &Config, argv: &[OsString]) {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "xendm starting: {}",
        argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    for item in &cfg.ignored {
        match crate::cli::ignored_reason(item) {
            Some(why) => info!("option {item} accepted and ignored: {why}"),
            None => info!("option {item} accepted and ignored"),
        }
    }
}

/// The guest to serve, as Xen's 16-bit domain id.
fn guest_domid(cfg: &Config) -> Result<u16> {
    let Some(domid) = cfg.domid else { bail!("-xen-domid is required") };
    u16::try_from(domid).with_context(|| format!("-xen-domid {domid}: not a valid domain id"))
}

/// Phase 1 ([`MachineSpec::from_config`]), with its log line.
fn plan_machine(cfg: &Config) -> Result<MachineSpec> {
    let spec = MachineSpec::from_config(cfg)?;
    info!("{}", boot_summary(cfg, &spec));
    for d in &cfg.disks {
        info!("{}", disk_line(d));
    }
    Ok(spec)
}

/// The start-up line of one emulated disk libxl asked for.
fn disk_line(d: &crate::cli::EmulatedDisk) -> String {
    let after = match d.bus {
        crate::cli::DiskBus::Ahci { .. } => {
            " (qemu-xen would keep an AHCI disk visible after the unplug; here only the PV disk exists)"
        }
        _ => ", as after QEMU's unplug of emulated disks",
    };
    format!(
        "disk {} ({}, {}{}): not emulated; the guest reaches it through its PV block driver (blkfront){after}",
        d.vdev(),
        d.file,
        d.form(),
        if d.readonly { ", read-only" } else { "" },
    )
}

/// What was loaded where, in plain words, for the first lines of
/// `qemu-dm-<name>.log`.
fn boot_summary(cfg: &Config, spec: &MachineSpec) -> String {
    let l = &spec.layout;
    let ram = format!(
        "guest RAM {} MiB ({:#x} bytes below 4 GiB, {:#x} above)",
        l.below_4g.saturating_add(l.above_4g) >> 20,
        l.below_4g,
        l.above_4g
    );
    if let Some(uri) = &cfg.incoming {
        let kernel = if cfg.kernel.is_some() { " (-kernel and -initrd are not read)" } else { "" };
        return format!(
            "restoring a saved guest from -incoming {uri}{kernel}; {ram}; {} vCPU(s) at boot, at most {}",
            spec.vcpus, spec.max_vcpus
        );
    }
    let Some(boot) = &spec.boot else {
        return format!("no -kernel (xl: kernel=): the firmware boots from its own boot order; {ram}");
    };
    let kind = match boot.plan.protocol {
        xendm_fw_cfg::BootProtocol::Linux => "Linux bzImage",
        xendm_fw_cfg::BootProtocol::Multiboot => "multiboot kernel",
        xendm_fw_cfg::BootProtocol::Pvh => "PVH ELF kernel",
    };
    let mut files = boot.plan.files.iter();
    let mut s = match files.next() {
        Some(k) => format!("direct kernel boot: {kind} {} ({} bytes)", k.path.display(), k.len()),
        None => format!("direct kernel boot: {kind}"),
    };
    let extra = if boot.plan.protocol == xendm_fw_cfg::BootProtocol::Multiboot { "module" } else { "initrd" };
    for f in files {
        s.push_str(&format!(", {extra} {} ({} bytes)", f.path.display(), f.len()));
    }
    let cmdline = cfg.append.as_deref().map_or(0, str::len);
    s.push_str(&format!(
        "; command line {cmdline} bytes; option ROM {} at boot index 0; {ram}; {} vCPU(s), at most {}",
        boot.plan.rom_name, spec.vcpus, spec.max_vcpus
    ));
    if !boot.plan.guest_writes.is_empty() {
        s.push_str(&format!("; {} segment(s) written into guest RAM before it runs", boot.plan.guest_writes.len()));
    }
    s
}

/// Opens the backend of every planned serial port, COM1 first.
fn open_serial_backends(spec: &MachineSpec) -> Result<Vec<Chardev>> {
    spec.serials.iter().map(|s| Chardev::open(s).with_context(|| format!("-serial {s:?}"))).collect()
}

/// For tests that need a process of their own (a signal disposition, an
/// abort, a seccomp filter): the test binary runs one of its tests again,
/// alone, in a child process, with `key=value` in its environment for the
/// test to recognise itself by.
#[cfg(test)]
pub(crate) fn test_in_child(test: &str, key: &str, value: &str) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap_or_default());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"]).env(key, value);
    c
}

/// The single-threaded runtime QMP and the signal wait run on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::run_config as config;

    #[test]
    fn the_boot_summary_says_what_was_loaded_where_in_plain_words() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot");
        let (k, i) = (dir.join("mini-bzImage"), dir.join("mini-initrd"));
        let (ks, is) = (std::fs::metadata(&k).unwrap().len(), std::fs::metadata(&i).unwrap().len());
        let (k, i) = (k.display().to_string(), i.display().to_string());
        let c = config(&["-xen-domid", "7", "-m", "64", "-kernel", &k, "-initrd", &i, "-append", "console=ttyS0"]);
        let s = boot_summary(&c, &MachineSpec::from_config(&c).unwrap());
        assert_eq!(
            s,
            format!(
                "direct kernel boot: Linux bzImage {k} ({ks} bytes), initrd {i} ({is} bytes); command line 13 \
                 bytes; option ROM linuxboot_dma.bin at boot index 0; guest RAM 64 MiB (0x4000000 bytes below \
                 4 GiB, 0x0 above); 1 vCPU(s), at most 1"
            )
        );
        let c = config(&["-xen-domid", "7"]);
        let s = boot_summary(&c, &MachineSpec::from_config(&c).unwrap());
        assert!(s.starts_with("no -kernel (xl: kernel=)"), "{s}");
    }

    #[test]
    fn ignored_options_are_logged_with_the_reason_the_help_gives() {
        assert_eq!(
            crate::cli::ignored_reason("-vnc none"),
            Some("No VNC server is started; QMP query-vnc reports VNC disabled.")
        );
        assert!(crate::cli::ignored_reason("-nodefaults").is_some());
        assert_eq!(crate::cli::ignored_reason("-kernel /k"), None, "not an ignored option");
    }

    #[test]
    fn the_guest_must_be_a_16_bit_domain() {
        assert_eq!(guest_domid(&config(&["-xen-domid", "7"])).unwrap(), 7);
        let mut c = config(&["-xen-domid", "7"]);
        c.domid = Some(70000);
        assert_eq!(format!("{:#}", guest_domid(&c).unwrap_err()).split(':').next(), Some("-xen-domid 70000"));
        c.domid = None;
        assert_eq!(guest_domid(&c).unwrap_err().to_string(), "-xen-domid is required");
    }

    #[test]
    fn a_bad_plan_fails_before_any_serial_backend_or_xen_handle_opens() {
        // The pty of serial0 is never opened: the host device of serial1
        // is refused while planning.
        let c = config(&["-xen-domid", "7", "-serial", "pty", "-serial", "/dev/ttyS0"]);
        let e = run(c, &[]).unwrap_err();
        assert_eq!(e.to_string(), "-serial /dev/ttyS0: host character devices are not supported");
    }

    /// Audit 2026-12 section 3: `-runas`/`-chroot` were checked only after
    /// the Xen handles were open and the ioreq server enabled. They fail now
    /// before any Xen handle (this machine has none: reaching Xen would fail
    /// with "opening the Xen device-model interface").
    #[test]
    fn runas_and_chroot_are_refused_before_any_xen_handle() {
        for (args, want) in [
            (&["-runas", "no-such-user-xendm"][..], "-runas no-such-user-xendm: no such user"),
            (&["-runas", "0:0"][..], "-runas 0:0: refusing to run as uid 0"),
            (&["-chroot", "/nonexistent/xendm-chroot"][..], "-chroot /nonexistent/xendm-chroot"),
        ] {
            let mut all = vec!["-xen-domid", "7", "-serial", "null"];
            all.extend_from_slice(args);
            let e = format!("{:#}", run(config(&all), &[]).unwrap_err());
            assert!(e.starts_with(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn serial_backends_open_in_com_order() {
        let s = MachineSpec::from_config(&config(&["-xen-domid", "7", "-serial", "null", "-serial", "null"])).unwrap();
        let open = open_serial_backends(&s).unwrap();
        assert_eq!(open.iter().map(Chardev::filename).collect::<Vec<_>>(), ["null", "null"]);
    }
}
