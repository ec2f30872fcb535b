//! The sandbox xendm enters once start-up is over (privileges dropped):
//! `PR_SET_NO_NEW_PRIVS` and seccomp-BPF allowlists (seccomp(2),
//! `Documentation/userspace-api/seccomp_filter.rst`), on whether or not
//! libxl asked for `dm_restrict`. `docs/threat-model.md` ("Sandbox") says
//! what remains allowed and why; `allowlist.rs` is the list.
//!
//! Filters, installed in this order by [`Sandbox::lock_down`]:
//!
//! 1. **process-wide** (`Role::Process`), on every thread at once
//!    (`SECCOMP_FILTER_FLAG_TSYNC`): the union of what the threads need.
//!    The serial threads and the xenstore reader start before the privilege
//!    drop in modules below `app` (they cannot call up here, see
//!    `tests/layering.rs`), so they run under this filter only;
//! 2. **the ioreq thread's own** (`Role::Ioreq`): the thread waits at a
//!    [`ThreadGate`] before serving and installs it itself (a filter
//!    applies to the thread that installs it);
//! 3. **the main thread's own** (`Role::Main`), last.
//!
//! Filters stack: a thread's calls pass every filter it has. Besides the
//! allowlists, one filter makes `clone3` fail with ENOSYS (its flags are
//! behind a pointer a filter cannot read), so glibc falls back to `clone`,
//! whose flags the allowlist checks (`CLONE_THREAD` only).
//!
//! A call outside the list: `SECCOMP_RET_TRAP`, one log line naming the
//! thread and the call, and the process dies of SIGSYS (`sigsys.rs`).
//! `-sandbox off` or `XENDM_SECCOMP=off` install nothing; `XENDM_SECCOMP=log`
//! installs the same filters with `SECCOMP_RET_LOG` (the kernel's audit log
//! names each call that would have been refused) for debugging.
//!
//! The filter compiler is `seccompiler` (rust-vmm; Firecracker's and
//! cloud-hypervisor's): pure Rust, no libseccomp to link, argument
//! conditions for the ioctl request numbers, TSYNC.

mod allowlist;
mod sigsys;

use std::sync::mpsc;

use anyhow::{bail, Context, Result};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use tracing::{info, warn};

pub use allowlist::Role;

use crate::cli::{Config, SandboxSetting};

/// How violations are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Trap: log the call, die of SIGSYS (the default).
    Enforce,
    /// `XENDM_SECCOMP=log`: allow, the kernel logs the call.
    Log,
    /// `-sandbox off` or `XENDM_SECCOMP=off`: no filter.
    Off,
}

impl Mode {
    /// `-sandbox` and then `XENDM_SECCOMP` (`on`, `log`, `off`), which can
    /// only weaken what the command line says when it is set.
    ///
    /// # Errors
    /// An unknown `XENDM_SECCOMP` value.
    pub fn from_config(cfg: &Config, env: Option<&str>) -> Result<Self> {
        let env = match env {
            None | Some("" | "on" | "1") => Mode::Enforce,
            Some("log") => Mode::Log,
            Some("off" | "0") => Mode::Off,
            Some(other) => bail!("XENDM_SECCOMP={other}: expected on, log or off"),
        };
        Ok(match cfg.sandbox {
            SandboxSetting::Off => Mode::Off,
            SandboxSetting::On => env,
        })
    }

    fn mismatch_action(self) -> SeccompAction {
        match self {
            Mode::Log => SeccompAction::Log,
            Mode::Enforce | Mode::Off => SeccompAction::Trap,
        }
    }
}

/// The compiled filters and the gates of the threads that install their own.
pub struct Sandbox {
    mode: Mode,
    enosys: BpfProgram,
    process: BpfProgram,
    main: BpfProgram,
    ioreq: BpfProgram,
    gates: Vec<mpsc::Sender<Option<BpfProgram>>>,
}

/// Held by a thread that installs its own filter: [`ThreadGate::enter`]
/// waits until the process-wide filter is in place.
pub struct ThreadGate {
    rx: mpsc::Receiver<Option<BpfProgram>>,
}

impl Sandbox {
    /// Compiles every filter (before the privilege drop, so that a failure
    /// is a start-up error like any other).
    ///
    /// # Errors
    /// A bad `XENDM_SECCOMP`, or seccompiler refusing a rule.
    pub fn new(cfg: &Config) -> Result<Self> {
        let mode = Mode::from_config(cfg, std::env::var("XENDM_SECCOMP").ok().as_deref())?;
        Self::with_mode(mode)
    }

    /// [`Sandbox::new`] with the mode given.
    ///
    /// # Errors
    /// If seccompiler refuses a rule.
    pub fn with_mode(mode: Mode) -> Result<Self> {
        let enosys = allowlist::ENOSYS.iter().map(|&nr| (nr, Vec::new())).collect();
        let enosys = compile(SeccompFilter::new(
            enosys,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
            arch(),
        ))?;
        Ok(Self {
            mode,
            enosys,
            process: allowlist_program(Role::Process, mode)?,
            main: allowlist_program(Role::Main, mode)?,
            ioreq: allowlist_program(Role::Ioreq, mode)?,
            gates: Vec::new(),
        })
    }

    /// A gate for the ioreq thread: it calls [`ThreadGate::enter`] before
    /// it serves.
    pub fn ioreq_gate(&mut self) -> ThreadGate {
        let (tx, rx) = mpsc::channel();
        self.gates.push(tx);
        ThreadGate { rx }
    }

    /// Enters the sandbox: the SIGSYS handler, `PR_SET_NO_NEW_PRIVS`, the
    /// process-wide filters on every thread, the gated threads' own, then
    /// the calling (main) thread's own. Call it after the privilege drop,
    /// from the main thread.
    ///
    /// # Errors
    /// If a filter cannot be installed.
    pub fn lock_down(self) -> Result<()> {
        if self.mode == Mode::Off {
            warn!("seccomp sandbox off (-sandbox off or XENDM_SECCOMP=off)");
            for g in &self.gates {
                let _ = g.send(None);
            }
            return Ok(());
        }
        sigsys::install_handler().context("installing the SIGSYS handler")?;
        seccompiler::apply_filter_all_threads(&self.enosys).map_err(sandbox_err)?;
        seccompiler::apply_filter_all_threads(&self.process).map_err(sandbox_err)?;
        for g in &self.gates {
            // A thread that is gone has nothing left to filter.
            let _ = g.send(Some(self.ioreq.clone()));
        }
        seccompiler::apply_filter(&self.main).map_err(sandbox_err)?;
        info!(mode = ?self.mode, "seccomp sandbox on: no new privileges; per-thread allowlists (docs/threat-model.md)");
        Ok(())
    }
}

impl ThreadGate {
    /// Waits for [`Sandbox::lock_down`] and installs this thread's filter.
    ///
    /// # Errors
    /// If start-up ended before the sandbox was entered (the sender is
    /// gone: the caller must not serve), or the filter cannot be installed.
    pub fn enter(self) -> Result<()> {
        match self.rx.recv() {
            Ok(Some(program)) => seccompiler::apply_filter(&program).map_err(sandbox_err),
            Ok(None) => Ok(()),
            Err(mpsc::RecvError) => bail!("start-up ended before the sandbox was entered"),
        }
    }
}

fn arch() -> TargetArch {
    TargetArch::x86_64
}

fn allowlist_program(role: Role, mode: Mode) -> Result<BpfProgram> {
    let rules = allowlist::rules(role).map_err(|e| anyhow::anyhow!("seccomp rules of {role:?}: {e}"))?;
    compile(SeccompFilter::new(rules, mode.mismatch_action(), SeccompAction::Allow, arch()))
}

fn compile(filter: Result<SeccompFilter, seccompiler::BackendError>) -> Result<BpfProgram> {
    let filter = filter.map_err(|e| anyhow::anyhow!("seccomp filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| anyhow::anyhow!("compiling the seccomp filter: {e}"))
}

fn sandbox_err(e: seccompiler::Error) -> anyhow::Error {
    anyhow::anyhow!("installing the seccomp filter: {e}")
}

#[cfg(test)]
mod tests;
