//! The device model's command line in a stubdomain: libxl 4.17 does not
//! pass it on a command line but writes it into xenstore
//! (`libxl__write_stub_dmargs`, `xen-toolstack.md` 1.3): one argv element
//! per key `/vm/<guest-uuid>/image/dm-argv/NNN` (`NNN` = `001`, `002`, ...,
//! argv\[0\] not stored), readable by the stub. The stub finds its guest in
//! its own `target` key and the guest's `vm` path under
//! `/local/domain/<guest>/vm`.
//!
//! The argv is then fitted to the stub ([`rewrite`]):
//! * `-kernel`/`-initrd` name dom0 paths the stub cannot open; the guest's
//!   kernel and initrd travel in the stub's own ramdisk instead
//!   (`docs/stubdom.md`: `xendm-stubdom-ramdisk`), at [`GUEST_KERNEL`] and
//!   [`GUEST_INITRD`];
//! * `-incoming $STUBDOM_RESTORE_INCOMING_ARG` (the literal libxl writes)
//!   becomes `-incoming fd:N`, N the stub's restore console;
//! * `-serial /dev/hvcN` stays: the stub's consoles (`consoles.rs`);
//! * `-sandbox off` is added unless the argv names `-sandbox`: the stub
//!   domain is the device model's confinement (it can touch its guest and
//!   nothing else), and the vchan reconnects open devices after start-up.

use std::path::Path;

use crate::xen::xenstore::{XenStore, XsError};

/// Where the guest's kernel is in a per-guest stub ramdisk.
pub const GUEST_KERNEL: &str = "/boot/guest/kernel";
/// Where the guest's initrd is in a per-guest stub ramdisk.
pub const GUEST_INITRD: &str = "/boot/guest/initrd";
/// The literal libxl writes after `-incoming` in a stub's argv.
pub const RESTORE_PLACEHOLDER: &str = "$STUBDOM_RESTORE_INCOMING_ARG";
/// Most argv elements read (libxl writes a few dozen).
pub const MAX_ARGS: usize = 1024;

/// Why the stub's argv could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ArgvError {
    #[error("stubdomain: reading {path} from xenstore: {source}")]
    Xenstore { path: String, source: XsError },
    #[error("stubdomain: {path} = {value:?} is not a domain id")]
    BadTarget { path: String, value: String },
    #[error("stubdomain: {path} has {count} entries, more than {MAX_ARGS}")]
    TooMany { path: String, count: usize },
    #[error("stubdomain: {path} has an entry {name:?} that is not a number")]
    BadKey { path: String, name: String },
    #[error(
        "stubdomain: the guest boots from -kernel {dom0_path}, a dom0 path the stub cannot open, and this stub \
         ramdisk has no {stub_path}: make the guest's stubdomain_ramdisk with xendm-stubdom-ramdisk (docs/stubdom.md)"
    )]
    NoGuestFile { dom0_path: String, stub_path: &'static str },
}

/// The guest this stub serves and its device model's argv (without
/// argv\[0\]), in key order.
///
/// # Errors
/// A key that cannot be read or is not what libxl writes.
pub fn read(xs: &XenStore) -> Result<(u32, Vec<String>), ArgvError> {
    let get = |path: &str| xs.read(path).map_err(|source| ArgvError::Xenstore { path: path.into(), source });
    let target = get("target")?;
    let guest: u32 =
        target.trim().parse().map_err(|_| ArgvError::BadTarget { path: "target".into(), value: target.clone() })?;
    let vm = get(&format!("/local/domain/{guest}/vm"))?;
    let dir = format!("{}/image/dm-argv", vm.trim_end_matches('/'));
    let names = xs.directory(&dir).map_err(|source| ArgvError::Xenstore { path: dir.clone(), source })?;
    if names.len() > MAX_ARGS {
        return Err(ArgvError::TooMany { path: dir, count: names.len() });
    }
    let mut keyed = Vec::with_capacity(names.len());
    for name in names {
        let Ok(n) = name.parse::<u32>() else {
            return Err(ArgvError::BadKey { path: dir, name });
        };
        keyed.push((n, name));
    }
    keyed.sort_unstable();
    let mut argv = Vec::with_capacity(keyed.len());
    for (_, name) in keyed {
        argv.push(get(&format!("{dir}/{name}"))?);
    }
    Ok((guest, argv))
}

/// Fits `argv` to the stub (see the module docs): `restore_fd` is the
/// descriptor of the restore console, `exists` says whether a path is in the
/// stub's file system.
///
/// # Errors
/// `-kernel` or `-initrd` without the guest's file in the stub ramdisk.
pub fn rewrite(
    argv: &[String],
    restore_fd: Option<i32>,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<Vec<String>, ArgvError> {
    let mut out = Vec::with_capacity(argv.len() + 2);
    let mut args = argv.iter();
    let mut sandbox = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-kernel" | "-initrd" => {
                let stub_path = if a == "-kernel" { GUEST_KERNEL } else { GUEST_INITRD };
                let dom0_path = args.next().cloned().unwrap_or_default();
                if !exists(Path::new(stub_path)) {
                    return Err(ArgvError::NoGuestFile { dom0_path, stub_path });
                }
                tracing::info!("stubdomain: {a} {dom0_path} is read from the stub ramdisk, {stub_path}");
                out.push(a.clone());
                out.push(stub_path.to_string());
            }
            "-incoming" => {
                out.push(a.clone());
                match args.next() {
                    Some(p) if p == RESTORE_PLACEHOLDER => match restore_fd {
                        Some(fd) => out.push(format!("fd:{fd}")),
                        None => out.push(p.clone()),
                    },
                    Some(p) => out.push(p.clone()),
                    None => {}
                }
            }
            "-sandbox" => {
                sandbox = true;
                out.push(a.clone());
            }
            _ => out.push(a.clone()),
        }
    }
    if !sandbox {
        out.push("-sandbox".into());
        out.push("off".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::xenstore::fake::FakeXenstored;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| (*a).to_string()).collect()
    }

    /// What libxl 4.17 wrote for a stub of guest 5 (keys out of order in the
    /// directory listing: they are sorted by number, `010` after `009`).
    #[test]
    fn the_argv_is_read_from_the_guests_vm_path_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeXenstored::start(&dir.path().join("xs")).unwrap();
        fake.write("/local/domain/0/target", "5");
        fake.write("/local/domain/5/vm", "/vm/1234-abcd");
        let args =
            ["-xen-domid", "5", "-chardev", "x", "-no-shutdown", "-nodefaults", "-name", "g", "-serial", "/dev/hvc3"];
        for (i, a) in args.iter().enumerate().rev() {
            fake.write(&format!("/vm/1234-abcd/image/dm-argv/{:03}", i + 1), a);
        }
        let xs = XenStore::open_path(fake.path()).unwrap();
        let (guest, argv) = read(&xs).unwrap();
        assert_eq!(guest, 5);
        assert_eq!(argv, s(&args));

        fake.write("/vm/1234-abcd/image/dm-argv/x1", "oops");
        assert!(read(&xs).unwrap_err().to_string().contains("entry \"x1\" that is not a number"));
        fake.write("/local/domain/0/target", "five");
        assert!(read(&xs).unwrap_err().to_string().contains("target = \"five\" is not a domain id"));
        fake.rm("/local/domain/0/target");
        assert!(read(&xs).unwrap_err().to_string().starts_with("stubdomain: reading target from xenstore"));
    }

    #[test]
    fn kernel_incoming_and_sandbox_are_fitted_to_the_stub() {
        let argv = s(&[
            "-xen-domid",
            "5",
            "-kernel",
            "/srv/g/vmlinuz",
            "-initrd",
            "/srv/g/initrd",
            "-append",
            "console=ttyS0",
            "-serial",
            "/dev/hvc3",
            "-incoming",
            RESTORE_PLACEHOLDER,
        ]);
        let all = |_: &Path| true;
        let out = rewrite(&argv, Some(7), &all).unwrap();
        assert_eq!(
            out,
            s(&[
                "-xen-domid",
                "5",
                "-kernel",
                GUEST_KERNEL,
                "-initrd",
                GUEST_INITRD,
                "-append",
                "console=ttyS0",
                "-serial",
                "/dev/hvc3",
                "-incoming",
                "fd:7",
                "-sandbox",
                "off",
            ])
        );
        let with_sandbox = rewrite(&s(&["-sandbox", "on"]), None, &all).unwrap();
        assert_eq!(with_sandbox, s(&["-sandbox", "on"]));
        let no_initrd = |p: &Path| p == Path::new(GUEST_KERNEL);
        let e = rewrite(&argv, Some(7), &no_initrd).unwrap_err().to_string();
        assert!(e.contains("-kernel /srv/g/initrd") || e.contains("/srv/g/initrd"), "{e}");
        assert!(e.contains("no /boot/guest/initrd") && e.contains("xendm-stubdom-ramdisk"), "{e}");
    }
}
