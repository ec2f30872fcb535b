//! Phase-1 checks of the options that act on the process itself, made
//! before any Xen handle is opened: `-runas` (or `-run-with user=`) names
//! an existing user that is not uid 0, and `-chroot` (or `-run-with
//! chroot=`) is a directory. The privilege drop itself still happens once
//! start-up is done ([`super::privileges`], QEMU's order); these checks only
//! make a bad value fail first, with no Xen state to undo (threat-model rule
//! 7).

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::privileges::{resolve_runas, RunAs};
use crate::cli::Config;

/// Checks `-runas` and `-chroot` (see the module docs) and returns the
/// `-runas` user as resolved, for the privilege drop at the end of
/// start-up.
///
/// # Errors
/// An unknown user, uid 0, a malformed `UID:GID`, a chroot that is missing
/// or not a directory; each names the option.
pub fn check_privilege_options(cfg: &Config) -> Result<Option<RunAs>> {
    let runas = cfg.runas.as_deref().map(resolve_runas).transpose()?;
    if let Some(dir) = &cfg.chroot {
        check_chroot_dir(dir)?;
    }
    Ok(runas)
}

fn check_chroot_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("-chroot {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("-chroot {}: not a directory", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::run_config as config;

    #[test]
    fn runas_and_chroot_values_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        check_privilege_options(&config(&["-xen-domid", "1", "-runas", "nobody", "-chroot", &d])).unwrap();
        let e = check_privilege_options(&config(&["-xen-domid", "1", "-runas", "no-such-user-xendm"])).unwrap_err();
        assert_eq!(e.to_string(), "-runas no-such-user-xendm: no such user");
        let e = check_privilege_options(&config(&["-xen-domid", "1", "-runas", "0:0"])).unwrap_err();
        assert_eq!(e.to_string(), "-runas 0:0: refusing to run as uid 0");
        let e = check_privilege_options(&config(&["-xen-domid", "1", "-chroot", "/nonexistent/xendm"])).unwrap_err();
        assert!(format!("{e:#}").starts_with("-chroot /nonexistent/xendm: "), "{e:#}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let f = file.display().to_string();
        let e =
            check_privilege_options(&config(&["-xen-domid", "1", "-run-with", &format!("chroot={f}")])).unwrap_err();
        assert_eq!(e.to_string(), format!("-chroot {f}: not a directory"));
    }
}
