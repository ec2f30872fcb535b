//! `--help` and `--version` texts, and the "did you mean" suggestion.

/// The `--help` text.
pub(super) fn help_text() -> String {
    format!(
        "\
xendm {version}: a QEMU-compatible device model for Xen HVM guests

Usage: xendm -xen-domid DOMID [OPTION]...
       xendm --dump-roms DIR
       xendm --help | --version

xendm is normally started by libxl (xl's device_model_override= with
device_model_version=\"qemu-xen\"), which passes the qemu-xen command line.
Options take one dash or two (-name and --name are the same option); values
are QEMU-style lists KEY=VALUE,... where ',,' is a literal comma.

Xen:
  -xen-domid DOMID          the HVM guest to serve (required, except for the
                            '-machine none,accel=xen' probe run of libxl 4.20)
  -xen-domid-restrict       restrict Xen handles to DOMID after start-up
  -xen-attach               accepted (PV/PVH attach mode of libxl)

Process and QMP:
  -no-shutdown              do not exit when the guest shuts down
  -S                        start paused until the QMP 'cont' command
  -chardev socket,id=ID,path=PATH|fd=N,server=on,wait=off
                            a Unix socket for a QMP monitor ('server,nowait'
                            is the old spelling); pty, file, null and stdio
                            chardevs are accepted and left unused
  -mon chardev=ID,mode=control
                            serve QMP on chardev ID
  -qmp unix:PATH,server=on,wait=off
                            shorthand for the two options above
  -name NAME                guest name, used in logs
  -incoming URI             load device state on start (fd:N from libxl)
  -chroot DIR               chroot into DIR after start-up
  -runas USER|UID:GID       drop to this user after start-up
  -run-with chroot=DIR,user=USER
                            the same two, newer spelling
  -sandbox on|off           seccomp filter after start-up (default on; the
                            QEMU sub-options are accepted only as =deny)

Machine:
  -machine TYPE[,accel=xen][,max-ram-below-4g=SIZE][,igd-passthru=on]
                            TYPE is xenfv (default), pc,accel=xen or
                            none,accel=xen; suppress-vmdesc=on is accepted.
                            -M is the same option
  -accel xen                the accelerator (only xen)
  -m [size=]SIZE            guest RAM, MiB unless suffixed (K, M, G, T)
  -smp CPUS[,maxcpus=MAX]   vCPUs online at boot and the maximum
  -no-acpi                  no ACPI (PIIX4 power management) function
  -boot order=DRIVES        boot order for the firmware (letters a-p)

Direct kernel boot:
  -kernel PATH              Linux bzImage, multiboot or PVH ELF kernel
  -initrd PATH              initial ramdisk (multiboot: comma-separated modules)
  -append CMDLINE           kernel command line, verbatim
  -xendm-boot linux|multiboot|pvh
                            force the boot protocol of -kernel

Serial ports (up to 4, COM1 first):
  -serial pty|file:PATH|stdio|null|none|unix:PATH[,server=on,wait=off]

xendm:
  --dump-roms DIR           write the option ROMs xendm builds into DIR, exit
  -xendm-record PATH        record the ioreq stream to PATH
  -h, --help                print this help and exit
  --version                 print the version and exit

Accepted and ignored (see docs/usage.md): -nodefaults, -no-user-config,
-display none, -nographic, -vnc, -k, -vga none, -net none, -usb,
-parallel none, -global, -d, -D, -trace, -msg, unused chardevs.
Everything else, including -device, -drive and -netdev, is refused with an
error naming it.

Environment:
  XENDM_RECORD=PATH         as -xendm-record PATH
  XENDM_LOG, RUST_LOG       log filter in tracing-subscriber EnvFilter
                            syntax, e.g. 'info' or 'xendm=debug'
  XENDM_SECCOMP=on|log|off  the seccomp filter: enforce (default), only log
                            what it would refuse (kernel audit log), or none
",
        version = env!("CARGO_PKG_VERSION")
    )
}

/// The `--version` text.
pub(super) fn version_text() -> String {
    format!(
        "xendm {}\n\
         Compatible with the qemu-xen device-model interface of Xen 4.17\n\
         (libxl device_model_version=\"qemu-xen\").\n",
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
}
