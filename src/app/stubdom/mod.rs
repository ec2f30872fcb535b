//! xendm in a Linux stubdomain (`docs/stubdom.md`; the protocol is libxl
//! 4.17's, `xen-toolstack.md` section 1). With the `stubdom` feature, xendm
//! started as PID 1 ([`main_as_init`]) is the stub's whole user space:
//!
//! 1. the system set-up of an init (`init.rs`);
//! 2. the device model's argv from xenstore, fitted to the stub (`argv.rs`);
//! 3. the stub's consoles (`consoles.rs`): console 1 for the saved state,
//!    console 2 (when restoring) as `-incoming fd:N`, the guest's serial
//!    ports on consoles 3 and up;
//! 4. then the same run as in dom0 ([`super::run_in`]), with QMP served as
//!    the libxenvchan server at `device-model/<guest>/qmp-vchan`
//!    (`qmp.rs`) instead of unix sockets, and no dom0 backend to close;
//! 5. when it ends, however it ends, the stub powers off (libxl destroys
//!    the stub with its guest in any case).
//!
//! Everything but the libxenvchan handle is built and unit-tested without
//! the feature.

pub mod argv;
pub mod consoles;
pub mod init;
pub mod qmp;

use crate::cli::Config;
use crate::control::chardev::ChardevSpec;

/// The stub's view of `-serial`: `/dev/hvcN` (N ≥ 3, the guest's consoles)
/// becomes a [`ChardevSpec::Console`]; any other host device stays refused.
pub fn fit_serials(cfg: &mut Config) {
    for s in &mut cfg.serial {
        if let ChardevSpec::HostDevice(p) = s {
            if consoles::serial_console(p).is_some() {
                *s = ChardevSpec::Console(p.clone());
            }
        }
    }
}

/// The xenstore path (relative to the stub's home) of the QMP vchan.
pub fn qmp_vchan_path(guest: u32) -> String {
    format!("device-model/{guest}/qmp-vchan")
}

#[cfg(feature = "stubdom")]
mod real {
    use std::ffi::OsString;
    use std::os::fd::IntoRawFd;
    use std::path::Path;

    use anyhow::{bail, Context, Result};
    use tracing::{error, info};

    use super::{argv, consoles, init, qmp};
    use crate::cli::{self, Command};
    use crate::control::vchan::VchanLink;
    use crate::xen::vchan::VchanServer;
    use crate::xen::xenstore::XenStore;

    /// libxenvchan as the [`VchanLink`] the QMP thread drives.
    struct Link(VchanServer);

    impl VchanLink for Link {
        fn listen(&mut self) -> std::io::Result<()> {
            self.0.listen()
        }
        fn event_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            self.0.event_fd()
        }
        fn ack(&mut self) -> std::io::Result<()> {
            self.0.ack()
        }
        fn is_open(&self) -> bool {
            self.0.is_open()
        }
        fn connected(&self) -> bool {
            self.0.connected()
        }
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf)
        }
        fn close(&mut self) {
            self.0.close();
        }
    }

    /// Logs what Xen lets the stub do to its guest before the device model
    /// needs it: a dm_op that is harmless (`nr_vcpus`) and one on an ioreq
    /// server that does not exist (`ENOENT` means dm_op is allowed, `EPERM`
    /// that the stub lacks its target privilege).
    fn probe_privileges(guest: u16) {
        use crate::xen::sys::{DeviceModel, IoreqServerId};
        match DeviceModel::open(guest) {
            Ok(dm) => info!(
                guest,
                "stubdomain: privileges over the guest: nr_vcpus {:?}; get_ioreq_server_info(7) {:?} (ENOENT: dm_op \
                 allowed; EPERM: no target privilege)",
                dm.nr_vcpus(),
                dm.ioreq_server_bufioreq_port(IoreqServerId(7))
            ),
            Err(e) => error!("stubdomain: {e}"),
        }
    }

    /// Runs the stub (see the module docs) and powers it off at the end.
    pub fn main_as_init() -> ! {
        match run() {
            Ok(()) => info!("stubdomain: the device model ended; powering the stub off"),
            Err(e) => error!("stubdomain: {e:#}; powering the stub off"),
        }
        init::power_off()
    }

    fn run() -> Result<()> {
        init::prepare()?;
        let xs = XenStore::open_device(Path::new("/dev/xen/xenbus")).context("opening /dev/xen/xenbus")?;
        let (guest, stored) = argv::read(&xs)?;
        drop(xs);
        info!(guest, "stubdomain: device model argv from xenstore: {}", stored.join(" "));
        let save = consoles::open_raw(&consoles::path(consoles::SAVE)).context("the save console")?;
        let restore = if stored.iter().any(|a| a == argv::RESTORE_PLACEHOLDER) {
            let fd = consoles::open_raw(&consoles::path(consoles::RESTORE)).context("the restore console")?;
            Some(fd.into_raw_fd())
        } else {
            None
        };
        let fitted = argv::rewrite(&stored, restore, &|p| p.exists())?;
        init::report_memory(std::time::Duration::from_secs(20));
        let os: Vec<OsString> = fitted.iter().map(OsString::from).collect();
        let mut cfg = match cli::parse(os.clone())? {
            Command::Run(cfg) => cfg,
            _ => bail!("stubdomain: the stored argv is not a device model run"),
        };
        super::fit_serials(&mut cfg);
        if let Some(d) = cfg.domid.and_then(|d| u16::try_from(d).ok()) {
            probe_privileges(d);
        }
        let link = VchanServer::new(0, &super::qmp_vchan_path(guest))?;
        crate::app::run_in(cfg, &os, Some(qmp::StubQmp { link: Box::new(Link(link)), save }))
    }
}

#[cfg(feature = "stubdom")]
pub use real::main_as_init;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_consoles_become_console_backends_and_nothing_else_does() {
        let mut cfg = crate::cli::run_config(&[
            "-xen-domid",
            "5",
            "-serial",
            "/dev/hvc3",
            "-serial",
            "/dev/hvc4",
            "-serial",
            "/dev/hvc1",
            "-serial",
            "pty",
        ]);
        fit_serials(&mut cfg);
        assert_eq!(
            cfg.serial,
            [
                ChardevSpec::Console("/dev/hvc3".into()),
                ChardevSpec::Console("/dev/hvc4".into()),
                ChardevSpec::HostDevice("/dev/hvc1".into()),
                ChardevSpec::Pty
            ]
        );
        assert_eq!(qmp_vchan_path(5), "device-model/5/qmp-vchan");
    }
}
