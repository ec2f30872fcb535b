//! The QMP monitors of a run: their listening sockets and how
//! `query-chardev` lists them (QEMU `qapi/char.json`, `ChardevInfo`).

use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::inherited::InheritedFds;
use crate::cli::Config;
use crate::control::qmp::{self, ChardevInfo, QmpListen, QmpSocketSpec, VmControl};

/// The `query-chardev` entries of the QMP monitors themselves.
pub fn qmp_chardevs(cfg: &Config) -> Vec<ChardevInfo> {
    cfg.qmp
        .iter()
        .map(|q| ChardevInfo {
            label: q.id.clone(),
            filename: match &q.socket {
                QmpSocketSpec::Path(p) => format!("unix:{},server=on", p.display()),
                QmpSocketSpec::Fd(_) => "unix:,server=on".to_string(),
            },
            frontend_open: true,
        })
        .collect()
}

/// Binds every monitor's listening socket, in `-mon` order; the inherited
/// ones (`fd=N`) were taken over at start ([`super::inherited`]).
///
/// # Errors
/// The first socket that cannot be bound, named by its chardev id.
pub fn bind(cfg: &Config, inherited: &mut InheritedFds) -> Result<Vec<StdUnixListener>> {
    cfg.qmp
        .iter()
        .map(|q| match &q.socket {
            QmpSocketSpec::Path(p) => {
                qmp::bind(QmpListen::Path(p.clone())).with_context(|| format!("QMP socket {}", q.id))
            }
            QmpSocketSpec::Fd(fd) => inherited
                .take_qmp(&q.id)
                .with_context(|| format!("QMP socket {}: fd={fd} was not taken over at start-up", q.id)),
        })
        .collect()
}

/// Serves QMP on each listener from now on (tasks on the current runtime).
///
/// # Errors
/// If a listener cannot be handed to the runtime.
pub fn serve<C: VmControl + 'static>(listeners: Vec<StdUnixListener>, ctl: &Arc<C>) -> Result<()> {
    for l in listeners {
        l.set_nonblocking(true)?;
        let l = tokio::net::UnixListener::from_std(l)?;
        tokio::spawn(qmp::serve(l, ctl.clone()));
    }
    Ok(())
}

/// Removes the sockets we created (not the inherited ones) at exit.
pub fn remove_sockets(cfg: &Config) {
    for q in &cfg.qmp {
        if let QmpSocketSpec::Path(p) = &q.socket {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cli::run_config as config;

    #[test]
    fn monitors_are_listed_as_qemu_lists_them() {
        let c = config(&[
            "-machine",
            "none,accel=xen",
            "-chardev",
            "socket,id=libxl-cmd,path=/run/q,server=on,wait=off",
            "-mon",
            "chardev=libxl-cmd,mode=control",
            "-chardev",
            "socket,id=stat,fd=7,server=on,wait=off",
            "-mon",
            "chardev=stat,mode=control",
        ]);
        let names: Vec<(String, String)> = qmp_chardevs(&c).into_iter().map(|i| (i.label, i.filename)).collect();
        assert_eq!(
            names,
            [
                ("libxl-cmd".to_string(), "unix:/run/q,server=on".to_string()),
                ("stat".to_string(), "unix:,server=on".to_string())
            ]
        );
    }

    #[test]
    fn bound_sockets_are_removed_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let spec = format!("socket,id=m,path={},server=on,wait=off", path.display());
        let c = config(&["-machine", "none,accel=xen", "-chardev", &spec, "-mon", "chardev=m,mode=control"]);
        let listeners = bind(&c, &mut InheritedFds::default()).unwrap();
        assert_eq!(listeners.len(), 1);
        assert!(path.exists());
        remove_sockets(&c);
        assert!(!path.exists());
    }
}
