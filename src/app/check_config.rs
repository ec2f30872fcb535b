//! `xendm check-config GUEST.cfg`: what xendm will do with each setting of
//! an xl guest configuration, before `xl create` finds out.
//!
//! For every setting that reaches the device model, this module builds the
//! arguments libxl 4.17 would pass for it (`libxl__build_device_model_args_new`,
//! facts in `xen-abi.md` §1.2 and `xen-toolstack.md` §3) and asks xendm's own
//! command-line parser ([`crate::cli::parse`]) what it does with them, so the
//! verdicts follow the parser rather than a second list of rules. What the
//! parser cannot know is added from the same fact sheets: which disks and NICs
//! libxl leaves to PV backends, which backends the device model itself would
//! have to serve (qdisk, emulated-NIC taps), the stubdomain and firmware
//! choices. Each setting gets one [`Verdict`]; a refused one says which line
//! to change. Settings that libxl and Xen handle without the device model are
//! listed as such; unknown ones are flagged as not checked.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::xlcfg::{self, Item, Value, XlConfig};
use crate::cli::{self, CliError, Command};

/// What xendm does with one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// xendm serves it.
    Served,
    /// The guest gets it through its PV drivers, from a backend outside xendm.
    PvOnly,
    /// libxl and Xen handle it; the device model is not involved.
    Xen,
    /// xendm accepts and ignores what libxl passes for it, harmlessly.
    Ignored,
    /// Works, but look at it.
    Warning,
    /// `xl create` fails, or the guest does not get what the setting asks for.
    Refused,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Served => "served",
            Verdict::PvOnly => "PV only",
            Verdict::Xen => "libxl/Xen",
            Verdict::Ignored => "ignored",
            Verdict::Warning => "WARNING",
            Verdict::Refused => "REFUSED",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The line of the setting, `None` for a default that is not in the file.
    pub line: Option<usize>,
    /// `key = value` as written, or `key (not set)`.
    pub setting: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What xendm does, and why.
    pub message: String,
    /// For a refusal or warning: what to write instead.
    pub fix: Option<String>,
}

/// Every finding, in file order (defaults last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether `xl create` fails, or a device the config asks for is missing.
    pub fn refused(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::Refused)
    }

    /// The verdict of the finding for `key`, if any (tests).
    pub fn verdict_of(&self, key: &str) -> Option<Verdict> {
        self.findings.iter().find(|f| f.setting.split([' ', '[']).next() == Some(key)).map(|f| f.verdict)
    }

    /// The report as `check-config` prints it.
    pub fn render(&self, file: &str) -> String {
        let mut out = format!("{file}: what xendm {} does with each setting\n", env!("CARGO_PKG_VERSION"));
        for f in &self.findings {
            let line = f.line.map_or_else(|| "-".to_string(), |l| l.to_string());
            out.push_str(&format!("{file}:{line}: {}: {}\n    {}\n", f.verdict.label(), f.setting, f.message));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("    change: {fix}\n"));
            }
        }
        let refused = self.findings.iter().filter(|f| f.verdict == Verdict::Refused).count();
        let warnings = self.findings.iter().filter(|f| f.verdict == Verdict::Warning).count();
        out.push_str(&if refused > 0 {
            format!("{file}: {refused} setting(s) refused, {warnings} warning(s): not usable with xendm as it is\n")
        } else {
            format!("{file}: usable with xendm ({warnings} warning(s))\n")
        });
        out
    }
}

/// Reads, checks and prints `path`; `Ok(true)` if nothing is refused.
///
/// # Errors
/// The file cannot be read or is not valid xl syntax (xl would refuse it too).
pub fn run(path: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = xlcfg::parse(&text).with_context(|| format!("{} is not a valid xl config", path.display()))?;
    let report = check(&cfg, &|p| Path::new(p).exists());
    print!("{}", report.render(&path.display().to_string()));
    Ok(!report.refused())
}

/// Checks a parsed config; `exists` says whether a dom0 path exists.
pub fn check(cfg: &XlConfig, exists: &dyn Fn(&str) -> bool) -> Report {
    let mut c = Checker { cfg, exists, report: Report::default(), handled: Vec::new() };
    c.guest_type();
    c.device_model();
    c.stubdomain();
    c.kernel_boot();
    c.firmware();
    c.display();
    c.usb();
    c.sound();
    c.serial();
    c.disks();
    c.vifs();
    c.restrict();
    c.machine();
    c.passthrough_and_extras();
    c.the_rest();
    let mut report = c.report;
    report.findings.sort_by_key(|f| f.line.unwrap_or(usize::MAX));
    report
}

/// What xendm's parser does with the arguments libxl emits for a setting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cli {
    Accepted,
    Ignored(Vec<String>),
    Refused(String),
}

/// Runs `args` through [`cli::parse`] after a minimal valid command line.
fn cli_verdict(args: &[String]) -> Cli {
    let mut argv: Vec<String> = vec!["-xen-domid".into(), "1".into()];
    let needs_kernel = ["-initrd", "-append", "-xendm-boot"].iter().any(|o| args.iter().any(|a| a == o));
    if needs_kernel && !args.iter().any(|a| a == "-kernel") {
        argv.extend(["-kernel".into(), "/boot/vmlinuz".into()]);
    }
    argv.extend(args.iter().cloned());
    match cli::parse(argv.into_iter().map(Into::into)) {
        Ok(Command::Run(cfg)) => {
            // libxl adds suppress-vmdesc=on to every -machine; it is no setting's doing.
            let ignored: Vec<String> = cfg.ignored.into_iter().filter(|i| !i.contains("suppress-vmdesc")).collect();
            if ignored.is_empty() {
                Cli::Accepted
            } else {
                Cli::Ignored(ignored)
            }
        }
        Ok(_) => Cli::Refused("xendm would print a text and exit, and xl create would fail".into()),
        Err(e) => Cli::Refused(cli_message(&e)),
    }
}

fn cli_message(e: &CliError) -> String {
    format!("xendm refuses it: {e}")
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_string()).collect()
}

/// xl settings that libxl and Xen handle without the device model.
const XEN_ONLY: &[&str] = &[
    "name",
    "uuid",
    "type",
    "builder",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "cpus",
    "cpus_soft",
    "cpu_weight",
    "cap",
    "pool",
    "on_poweroff",
    "on_reboot",
    "on_watchdog",
    "on_crash",
    "on_soft_reset",
    "seclabel",
    "init_seclabel",
    "hap",
    "nestedhvm",
    "viridian",
    "timer_mode",
    "hpet",
    "apic",
    "pae",
    "localtime",
    "rtc_timeoffset",
    "tsc_mode",
    "altp2m",
    "shadow_memory",
    "max_grant_frames",
    "max_maptrack_frames",
    "max_grant_version",
    "e820_host",
    "cpuid",
    "vpmu",
    "nomigrate",
    "driver_domain",
    "acpi_s4",
    "acpi_laptop_slate",
    "vcpu_hard_affinity",
    "vcpu_soft_affinity",
    "claim_mode",
    "vtpm",
    "vscsi",
    "iomem",
    "ioports",
    "irqs",
    "rdm",
    "rdm_mem_boundary",
    "mca_caps",
    "msr_relaxed",
    "vnuma",
    "passthrough",
    "smbios_firmware",
    "acpi_firmware",
    "bootloader",
    "bootloader_args",
    "pvshim",
    "gfx_passthru",
    "xenstore_domid",
    "trap_unmapped_accesses",
    "dm_restrict_user",
];

struct Checker<'a> {
    cfg: &'a XlConfig,
    exists: &'a dyn Fn(&str) -> bool,
    report: Report,
    handled: Vec<&'static str>,
}

impl Checker<'_> {
    /// The effective value of `key` (marks it handled).
    fn get(&mut self, key: &'static str) -> Option<(usize, Value)> {
        self.handled.push(key);
        self.cfg.get(key)
    }

    fn add(&mut self, line: Option<usize>, setting: String, verdict: Verdict, message: &str, fix: Option<&str>) {
        self.report.findings.push(Finding {
            line,
            setting,
            verdict,
            message: message.to_string(),
            fix: fix.map(str::to_string),
        });
    }

    /// A finding for `key = value` at `line`.
    fn set(&mut self, line: usize, key: &str, v: &Value, verdict: Verdict, message: &str, fix: Option<&str>) {
        self.add(Some(line), format!("{key} = {v}"), verdict, message, fix);
    }

    /// A finding for a list item of `key` (`key[i] = value`).
    fn item(&mut self, key: &str, i: usize, item: &Item, verdict: Verdict, message: &str, fix: Option<&str>) {
        self.add(Some(item.line), format!("{key}[{i}] = {}", item.value), verdict, message, fix);
    }

    /// A finding whose verdict comes from the parser on `argv`; `ok` says
    /// what xendm does when it accepts it, `why` why ignoring it is harmless.
    fn judge(&mut self, line: Option<usize>, setting: String, argv: &[String], ok: &str, why: &str, fix: &str) {
        let shown = argv.join(" ");
        match cli_verdict(argv) {
            Cli::Accepted => self.add(line, setting, Verdict::Served, &format!("{ok} (libxl passes {shown})"), None),
            Cli::Ignored(_) => self.add(line, setting, Verdict::Ignored, &format!("libxl passes {shown}: {why}"), None),
            Cli::Refused(e) => {
                self.add(line, setting, Verdict::Refused, &format!("libxl passes {shown}; {e}"), Some(fix));
            }
        }
    }

    fn guest_type(&mut self) {
        let ty = self.get("type").or_else(|| self.get("builder"));
        self.handled.push("builder");
        match ty {
            Some((line, v)) if matches!(v.text(), Some("hvm")) => {
                self.set(line, "type", &v, Verdict::Served, "an HVM guest, the kind xendm serves", None);
            }
            Some((line, v)) => self.set(
                line,
                "type",
                &v,
                Verdict::Refused,
                "xendm is a device model for HVM guests only: for PV and PVH guests libxl starts a device model \
                 only for QEMU backends (-machine xenpv), which xendm refuses",
                Some("type = \"hvm\" (or remove device_model_override for this guest)"),
            ),
            None => self.add(
                None,
                "type (not set)".into(),
                Verdict::Refused,
                "xl's default guest type is PV, which xendm does not serve",
                Some("type = \"hvm\""),
            ),
        }
    }

    fn device_model(&mut self) {
        match self.get("device_model_version") {
            Some((line, v)) if v.text() == Some("qemu-xen") => self.set(
                line,
                "device_model_version",
                &v,
                Verdict::Served,
                "libxl passes the qemu-xen command line, which xendm parses",
                None,
            ),
            Some((line, v)) => self.set(
                line,
                "device_model_version",
                &v,
                Verdict::Refused,
                "qemu-xen-traditional has another command line and protocol; xendm speaks qemu-xen's",
                Some("device_model_version = \"qemu-xen\""),
            ),
            None => self.add(
                None,
                "device_model_version (not set)".into(),
                Verdict::Warning,
                "libxl 4.17 then defaults to qemu-xen, but falls back to qemu-xen-traditional without a word \
                 if the override path does not exist, and xl warns on every create",
                Some("device_model_version = \"qemu-xen\""),
            ),
        }
        let stub = self.cfg.get("device_model_stubdomain_override").is_some_and(|(_, v)| v.truthy() == Some(true));
        match self.get("device_model_override") {
            Some((line, v)) if stub => self.set(
                line,
                "device_model_override",
                &v,
                Verdict::Refused,
                "with a stubdomain libxl starts this program in dom0 with -machine xenpv to serve the stub's \
                 consoles, which is QEMU's job (xendm refuses it); xendm runs inside the stub (docs/stubdom.md)",
                Some("remove device_model_override (libxl then runs Debian's qemu for the stub's consoles)"),
            ),
            None if stub => {}
            Some((line, v)) => {
                let path = v.text().unwrap_or_default().to_string();
                if (self.exists)(&path) {
                    self.set(line, "device_model_override", &v, Verdict::Served, "xl starts this program", None);
                } else {
                    self.set(
                        line,
                        "device_model_override",
                        &v,
                        Verdict::Warning,
                        "no such file on this machine: xl create fails where it is missing",
                        Some("device_model_override = \"/usr/bin/xendm\" (the Debian package's path)"),
                    );
                }
            }
            None => self.add(
                None,
                "device_model_override (not set)".into(),
                Verdict::Warning,
                "xl starts qemu-xen, not xendm; the other verdicts say what xendm would do",
                Some("device_model_override = \"/usr/bin/xendm\""),
            ),
        }
    }

    fn stubdomain(&mut self) {
        let stub = self.get("device_model_stubdomain_override");
        let on = stub.as_ref().is_some_and(|(_, v)| v.truthy() == Some(true));
        if let Some((line, v)) = &stub {
            if on {
                self.set(
                    *line,
                    "device_model_stubdomain_override",
                    v,
                    Verdict::Served,
                    "xendm runs in a Linux stubdomain built with tests/stubdom/build-image; libxl needs \
                     device_model_version = \"qemu-xen\", stubdomain_kernel and, for kernel=, a stubdomain_ramdisk \
                     made by tests/stubdom/guest-ramdisk (docs/stubdom.md)",
                    None,
                );
            } else {
                self.set(
                    *line,
                    "device_model_stubdomain_override",
                    v,
                    Verdict::Served,
                    "the device model runs in dom0",
                    None,
                );
            }
        }
        for key in [
            "stubdomain_kernel",
            "stubdomain_ramdisk",
            "stubdomain_memory",
            "stubdomain_cmdline",
            "device_model_stubdomain_seclabel",
        ] {
            if let Some((line, v)) = self.get(key) {
                let (verdict, msg) = if on {
                    (Verdict::Served, "the stubdomain's image and size (docs/stubdom.md; 112 MiB is the smallest that worked, 96 is too small)")
                } else {
                    (Verdict::Ignored, "used only with device_model_stubdomain_override = 1")
                };
                self.set(line, key, &v, verdict, msg, None);
            }
        }
    }
}

mod boot;
mod devices;
#[cfg(test)]
mod tests;
