//! xendm as PID 1 of its stubdomain: the system set-up a Linux init does,
//! and no more (`xen-toolstack.md` 1.8, 1.9).
//!
//! * `devtmpfs` on `/dev`, `proc` on `/proc`, `sysfs` on `/sys` (the
//!   Debian kernel has `DEVTMPFS` built in but not `DEVTMPFS_MOUNT`);
//! * console 0 (`/dev/hvc0`, the device model's log in dom0) as stdout and
//!   stderr, `/dev/null` as stdin;
//! * the kernel modules the stub image lists in [`MODULE_ORDER`], loaded in
//!   that order with `finit_module(2)`, with the parameters the line gives
//!   (the Debian kernel builds the Xen device drivers as modules:
//!   `xen-evtchn`, `xen-privcmd`, `xen-gntalloc`, `xen-gntdev`; an image
//!   whose kernel has them built in lists none). `xen-privcmd` needs
//!   `unrestricted=1`: Linux (6.1.y since late 2023) restricts privcmd in an
//!   unprivileged domU to the domain in its xenstore `target`, and Xen
//!   4.17's libxendevicemodel probes the dm_op ioctl with `DOMID_INVALID`,
//!   which that refuses; the library then falls back to raw hypercalls,
//!   which it refuses too, so every dm_op fails with `EPERM`. Xen itself
//!   still limits the stub to its target (docs/stubdom.md);
//! * then a wait, bounded, for the Xen devices the device model opens.
//!
//! When the device model ends, PID 1 must not exit (the kernel would
//! panic): [`power_off`] shuts the stub domain down instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

/// The list of modules to load: a line each, `name [key=value ...]`
/// (`#` comments; [`parse_order`]).
pub const MODULE_ORDER: &str = "/lib/modules/xendm/order";
/// Most modules listed.
pub const MAX_MODULES: usize = 64;
/// The devices the device model opens in the stub.
pub const XEN_DEVICES: [&str; 5] =
    ["/dev/xen/xenbus", "/dev/xen/evtchn", "/dev/xen/privcmd", "/dev/xen/gntalloc", "/dev/xen/gntdev"];
/// How long the devices may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Does the set-up above; the first step that fails ends it.
///
/// # Errors
/// A mount, a module or a device that failed, named.
pub fn prepare() -> Result<()> {
    for (fs, dir) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        mount(fs, dir)?;
    }
    console_stdio();
    let order = Path::new(MODULE_ORDER);
    if order.exists() {
        let text = std::fs::read_to_string(order).with_context(|| format!("reading {MODULE_ORDER}"))?;
        let dir = order.parent().unwrap_or(Path::new("/"));
        for m in parse_order(&text)? {
            load_module(&dir.join(format!("{}.ko", m.name)), &m)?;
        }
    }
    wait_for_devices(&XEN_DEVICES.map(PathBuf::from), DEVICE_WAIT)
}

/// Mounts a kernel file system; one already there is fine.
fn mount(fs: &str, dir: &str) -> Result<()> {
    let _ = std::fs::create_dir_all(dir);
    match rustix::mount::mount(fs, dir, fs, rustix::mount::MountFlags::NOSUID, None) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("mounting {fs} on {dir}")),
    }
}

/// stdout and stderr to console 0, stdin from `/dev/null` (what the kernel
/// gave PID 1 was `/dev/console`, if the image has it, else nothing).
fn console_stdio() {
    use rustix::fs::{Mode, OFlags};
    let open = |p: &str, f: OFlags| rustix::fs::open(p, f | OFlags::NOCTTY, Mode::empty());
    if let Ok(null) = open("/dev/null", OFlags::RDONLY) {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    match open("/dev/hvc0", OFlags::WRONLY) {
        Ok(log) => {
            let _ = rustix::stdio::dup2_stdout(&log);
            let _ = rustix::stdio::dup2_stderr(&log);
        }
        Err(e) => warn!("stubdomain: /dev/hvc0 (the log console): {e}; logging where the kernel said"),
    }
}

/// One line of [`MODULE_ORDER`]: a module and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    /// The module's name (its file is `<name>.ko` beside the order file).
    pub name: String,
    /// What `finit_module(2)` gets as parameters (`key=value ...`), or "".
    pub params: String,
}

/// Longest parameter string accepted.
const MAX_PARAMS: usize = 256;

/// The modules in `text`, in order: one a line, `name [key=value ...]`,
/// `#` comments (see [`MODULE_ORDER`]).
///
/// # Errors
/// A name that is not a plain module name, parameters that are not printable
/// ASCII or longer than 256 bytes, or more than [`MAX_MODULES`] lines.
pub fn parse_order(text: &str) -> Result<Vec<ModuleLine>> {
    let mut modules = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, params) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let params = params.trim();
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            bail!("{MODULE_ORDER}: {name:?} is not a module name");
        }
        if params.len() > MAX_PARAMS || !params.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            bail!("{MODULE_ORDER}: module {name}: parameters {params:?} are not printable ASCII of at most {MAX_PARAMS} bytes");
        }
        if modules.len() == MAX_MODULES {
            bail!("{MODULE_ORDER}: more than {MAX_MODULES} modules");
        }
        modules.push(ModuleLine { name: name.to_string(), params: params.to_string() });
    }
    Ok(modules)
}

/// Loads one module from its file; one already loaded (or built in) is fine.
fn load_module(path: &Path, m: &ModuleLine) -> Result<()> {
    let name = &m.name;
    let file = std::fs::File::open(path).with_context(|| format!("module {name}: opening {}", path.display()))?;
    let params = std::ffi::CString::new(m.params.as_str()).with_context(|| format!("module {name}: parameters"))?;
    match rustix::system::finit_module(&file, &params, 0) {
        Ok(()) => {
            let with = if m.params.is_empty() { String::new() } else { format!(" ({})", m.params) };
            info!("stubdomain: module {name} loaded{with}");
            Ok(())
        }
        Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(std::io::Error::from(e)).with_context(|| format!("loading module {name} ({})", path.display())),
    }
}

/// Waits until every path exists, at most `limit`.
///
/// # Errors
/// The paths still missing then.
pub fn wait_for_devices(paths: &[PathBuf], limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let missing: Vec<String> = paths.iter().filter(|p| !p.exists()).map(|p| p.display().to_string()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            bail!(
                "stubdomain: {} did not appear within {} s: the stub kernel needs the Xen evtchn, privcmd, \
                 gntalloc and gntdev drivers (built in, or as modules listed in {MODULE_ORDER}; docs/stubdom.md)",
                missing.join(", "),
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `MemTotal` and `MemAvailable` (KiB) in `/proc/meminfo`'s text.
pub fn meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Logs the stub's memory now and every `every` (the figure that sizes
/// `stubdomain_memory`, docs/stubdom.md), from a thread of its own.
pub fn report_memory(every: Duration) {
    let report = || {
        let Some((total, avail)) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(meminfo) else {
            return;
        };
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().to_string()))
            .unwrap_or_default();
        info!(
            total_kib = total,
            available_kib = avail,
            "stubdomain memory: {} KiB used of {total} KiB; xendm VmRSS {rss}",
            total.saturating_sub(avail)
        );
    };
    report();
    let _ = std::thread::Builder::new().name("stub-memory".into()).spawn(move || loop {
        std::thread::sleep(every);
        report();
    });
}

/// Ends the stub domain (the device model's end is the stub's end).
pub fn power_off() -> ! {
    rustix::fs::sync();
    loop {
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
            warn!("stubdomain: power off failed: {e}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_order_is_names_one_a_line() {
        let m = parse_order("# Xen drivers\nxen-evtchn\n\n  xen-privcmd  unrestricted=1 \nxen_gntalloc\n").unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["xen-evtchn", "xen-privcmd", "xen_gntalloc"]);
        assert_eq!((m[0].params.as_str(), m[1].params.as_str()), ("", "unrestricted=1"));
        assert!(parse_order("../etc/passwd\n").unwrap_err().to_string().contains("is not a module name"));
        assert!(parse_order("a b\x01\n").unwrap_err().to_string().contains("not printable ASCII"));
        assert!(parse_order(&format!("a {}\n", "x".repeat(300))).is_err());
        let many = "m\n".repeat(MAX_MODULES + 1);
        assert!(parse_order(&many).unwrap_err().to_string().contains("more than 64"));
    }

    #[test]
    fn meminfo_gives_total_and_available() {
        let text = "MemTotal:         118940 kB\nMemFree:           80000 kB\nMemAvailable:      90123 kB\n";
        assert_eq!(meminfo(text), Some((118_940, 90_123)));
        assert_eq!(meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn missing_devices_are_named_with_what_the_kernel_needs() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("there");
        std::fs::write(&there, b"").unwrap();
        wait_for_devices(std::slice::from_ref(&there), Duration::ZERO).unwrap();
        let gone = dir.path().join("privcmd");
        let e = wait_for_devices(&[there, gone.clone()], Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains(&gone.display().to_string()) && e.contains("docs/stubdom.md"), "{e}");
        assert!(!e.contains("/there"), "{e}");
    }
}
