//! Dropping privileges after start-up: `-chroot DIR` and `-runas USER|UID:GID`
//! (or `-run-with chroot=DIR,user=USER`), as libxl passes them with
//! `dm_restrict=1` (`xen-abi.md` 1.2 items 9 and 16, 4.8).
//!
//! QEMU's order, which we keep: everything that needs privilege is done first
//! (files read, Xen handles opened and restricted to the guest, QMP sockets
//! bound); then `chroot` + `chdir("/")`; then supplementary groups, gid and
//! uid are set, in that order, so the uid change cannot be undone. glibc
//! applies `setuid`/`setgid` to every thread of the process.
//!
//! The calls go through `nix` (safe wrappers over libc; `getpwnam_r`
//! rather than `getpwnam`), so this file has no `unsafe` outside its tests.
//!
//! libxl refuses to run a restricted DM as uid 0; so do we: `-runas root` or
//! `0:0` is an error rather than a silent no-op.

use std::ffi::CString;
use std::path::Path;

use anyhow::Context;
use nix::unistd::{self, Gid, Uid, User};
use tracing::info;

use crate::cli::Config;

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("-runas {0}: no such user")]
    NoUser(String),
    #[error("-runas {0}: refusing to run as uid 0")]
    Root(String),
    #[error("-runas {0}: not a user name or UID:GID")]
    BadSpec(String),
    #[error("{call} failed: {source}")]
    Sys { call: String, source: std::io::Error },
}

/// A resolved `-runas` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Set for a user name: its supplementary groups are initialised.
    pub name: Option<String>,
}

/// `-xen-domid-restrict`, `-chroot`, `-runas`, in QEMU's order, once every
/// file is read, every Xen handle open and every socket bound. `runas` is
/// `-runas` as phase 1 resolved it (`preflight.rs`), while the user
/// database was still reachable.
///
/// # Errors
/// If a step fails.
pub fn drop_privileges(cfg: &Config, domid: u16, runas: Option<&RunAs>) -> anyhow::Result<()> {
    if cfg.domid_restrict {
        crate::xen::sys::restrict_all(domid).context("restricting the Xen handles to the guest")?;
        info!(domid, "Xen handles restricted to the guest");
    }
    if let Some(dir) = &cfg.chroot {
        chroot(dir)?;
        info!(dir = %dir.display(), "chroot done");
    }
    if let Some(r) = runas {
        become_user(r)?;
        info!(uid = r.uid, gid = r.gid, "running as an unprivileged user");
    }
    Ok(())
}

/// Resolves `-runas`: `UID:GID` numerically, otherwise a user name through
/// the system's user database.
///
/// # Errors
/// If the user does not exist, the spec is malformed, or the uid is 0.
pub fn resolve_runas(spec: &str) -> Result<RunAs, PrivError> {
    let r = if let Some((u, g)) = spec.split_once(':') {
        let uid = u.parse().map_err(|_| PrivError::BadSpec(spec.to_string()))?;
        let gid = g.parse().map_err(|_| PrivError::BadSpec(spec.to_string()))?;
        RunAs { uid, gid, name: None }
    } else {
        // getpwnam_r through nix: no shared static buffer.
        let user = User::from_name(spec)
            .map_err(|e| PrivError::Sys { call: format!("getpwnam({spec})"), source: e.into() })?
            .ok_or_else(|| PrivError::NoUser(spec.to_string()))?;
        RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw(), name: Some(spec.to_string()) }
    };
    if r.uid == 0 {
        return Err(PrivError::Root(spec.to_string()));
    }
    Ok(r)
}

fn sys(call: impl Into<String>) -> impl FnOnce(nix::Error) -> PrivError {
    move |e| PrivError::Sys { call: call.into(), source: e.into() }
}

/// `chroot(dir)` then `chdir("/")`.
///
/// # Errors
/// If either call fails (the message names the directory).
pub fn chroot(dir: &Path) -> Result<(), PrivError> {
    unistd::chroot(dir).map_err(sys(format!("chroot({})", dir.display())))?;
    unistd::chdir("/").map_err(sys("chdir(/)"))
}

/// Sets supplementary groups, gid and uid (in that order), then checks that
/// uid 0 cannot be regained.
///
/// # Errors
/// If any call fails.
pub fn become_user(r: &RunAs) -> Result<(), PrivError> {
    let gid = Gid::from_raw(r.gid);
    match &r.name {
        Some(name) => {
            let c = CString::new(name.as_str()).map_err(|_| PrivError::BadSpec(name.clone()))?;
            unistd::initgroups(&c, gid).map_err(sys(format!("initgroups({name})")))?;
        }
        None => unistd::setgroups(&[]).map_err(sys("setgroups([])"))?,
    }
    unistd::setgid(gid).map_err(sys(format!("setgid({})", r.gid)))?;
    unistd::setuid(Uid::from_raw(r.uid)).map_err(sys(format!("setuid({})", r.uid)))?;
    if unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivError::Sys {
            call: "setuid(0) after dropping".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runas_specs() {
        assert_eq!(resolve_runas("1000:100").unwrap(), RunAs { uid: 1000, gid: 100, name: None });
        assert!(matches!(resolve_runas("0:0"), Err(PrivError::Root(_))));
        assert!(matches!(resolve_runas("root"), Err(PrivError::Root(_))));
        assert!(matches!(resolve_runas("x:y"), Err(PrivError::BadSpec(_))));
        assert!(matches!(resolve_runas("no-such-user-xendm"), Err(PrivError::NoUser(_))));
        let n = resolve_runas("nobody").unwrap();
        assert_ne!(n.uid, 0);
        assert_eq!(n.name.as_deref(), Some("nobody"));
    }

    fn ids() -> (u32, u32) {
        // SAFETY: plain calls returning ids.
        unsafe { (libc::getuid(), libc::getgid()) }
    }

    /// Runs the real drop in a child process (it cannot be undone).
    #[test]
    fn chroot_and_become_user_in_a_child() {
        // SAFETY: plain call returning an id.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            eprintln!("not root: the privilege drop itself cannot be exercised here");
            assert!(matches!(chroot(Path::new("/")), Err(PrivError::Sys { .. })));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("marker"), b"in").unwrap();
        // SAFETY: fork in a test; the child only makes async-signal-safe-ish
        // calls below and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = chroot(dir.path()).is_ok()
                && std::path::Path::new("/marker").exists()
                && become_user(&RunAs { uid: 65534, gid: 65534, name: None }).is_ok()
                && ids() == (65534, 65534);
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    }
}
