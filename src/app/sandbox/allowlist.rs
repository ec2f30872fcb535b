//! The system calls each xendm thread may make once start-up is over: the
//! one place that lists them (x86_64 numbers; xendm is an x86 HVM device
//! model). Each group says who needs it. The measured list is
//! `audit-2026-12.md` section 5 (strace of the serving loops, the chardev,
//! QMP and xenstore code); the ioctl request numbers are Linux's
//! `include/uapi/xen/privcmd.h` and `evtchn.h` (`xen-abi.md` 4.9).
//!
//! Nothing here opens a file, creates a socket, executes a program, forks a
//! process, changes ids or mounts: all of that is start-up work, done before
//! the filter is installed (`src/app/mod.rs` gives the order).

use std::collections::BTreeMap;

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// What one entry lets through.
#[derive(Debug, Clone, Copy)]
pub(super) enum Allow {
    /// The call, whatever its arguments.
    Call(i64),
    /// The call when the 32-bit argument `arg` is one of `values` (the
    /// kernel reads an ioctl request, a `prctl` option and a `fcntl` command
    /// as 32-bit values, so the high half cannot smuggle anything past).
    ArgIn { nr: i64, arg: u8, values: &'static [u64] },
    /// The call when the bits `mask` of argument `arg` equal `value`.
    ArgMasked { nr: i64, arg: u8, mask: u64, value: u64 },
}

use Allow::{ArgIn, ArgMasked, Call};

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every thread, installed on all of them at once (TSYNC): the union of
    /// the other roles, plus what installing a thread's own filter takes.
    /// The chardev threads and the xenstore reader run under this one only.
    Process,
    /// The main thread: tokio's current-thread runtime (QMP, signals, the
    /// xenstore client), and the stop at the end.
    Main,
    /// The ioreq thread: the event channel, the ioreq pages, the mapcache.
    Ioreq,
}

// ------------------------------------------------------------ ioctl numbers

/// `_IOC(_IOC_NONE, 'P', 5, 16)`: `IOCTL_PRIVCMD_DM_OP`, every dm_op
/// (IRQ levels, MSIs, the ioreq server's state, shutdown).
pub const IOCTL_PRIVCMD_DM_OP: u64 = 0x10_5005;
/// `_IOC(_IOC_NONE, 'P', 4, 32)`: `IOCTL_PRIVCMD_MMAPBATCH_V2`, the
/// mapcache mapping guest frames (libxenforeignmemory).
pub const IOCTL_PRIVCMD_MMAPBATCH_V2: u64 = 0x20_5004;
/// `_IOC(_IOC_NONE, 'P', 3, 24)`: `IOCTL_PRIVCMD_MMAPBATCH`, the older
/// form libxenforeignmemory falls back to.
pub const IOCTL_PRIVCMD_MMAPBATCH: u64 = 0x18_5003;
/// `_IOC(_IOC_NONE, 'P', 7, 32)`: `IOCTL_PRIVCMD_MMAP_RESOURCE` (the ioreq
/// pages are mapped at start-up; allowed for a re-map).
pub const IOCTL_PRIVCMD_MMAP_RESOURCE: u64 = 0x20_5007;
/// `_IOC(_IOC_NONE, 'P', 0, 48)`: `IOCTL_PRIVCMD_HYPERCALL`, a raw
/// hypercall. Never allowed: it is the whole of dom0's power over Xen.
#[cfg(test)]
pub const IOCTL_PRIVCMD_HYPERCALL: u64 = 0x30_5000;
/// `_IOC(_IOC_NONE, 'E', 4, 4)`: `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: u64 = 0x4_4504;
/// `_IOC(_IOC_NONE, 'E', 1, 8)`: `IOCTL_EVTCHN_BIND_INTERDOMAIN` (binds
/// are made at start-up; after `-xen-domid-restrict` only to the guest).
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u64 = 0x8_4501;
/// `_IOC(_IOC_NONE, 'E', 3, 4)`: `IOCTL_EVTCHN_UNBIND`, when the ioreq
/// server is destroyed at the end.
pub const IOCTL_EVTCHN_UNBIND: u64 = 0x4_4503;

/// What the ioreq thread asks of privcmd and evtchn.
const XEN_IOCTLS: &[u64] = &[
    IOCTL_PRIVCMD_DM_OP,
    IOCTL_PRIVCMD_MMAPBATCH_V2,
    IOCTL_PRIVCMD_MMAPBATCH,
    IOCTL_PRIVCMD_MMAP_RESOURCE,
    IOCTL_EVTCHN_NOTIFY,
    IOCTL_EVTCHN_BIND_INTERDOMAIN,
    IOCTL_EVTCHN_UNBIND,
];
/// The main thread: QMP `cont` enables the ioreq server and `system_reset`,
/// `quit` and the like are dm_ops; `set_nonblocking` on a socket is
/// `FIONBIO`, close-on-exec `FIOCLEX`.
const MAIN_IOCTLS: &[u64] = &[IOCTL_PRIVCMD_DM_OP, libc::FIONBIO, libc::FIOCLEX];

// ------------------------------------------------------------ groups

/// Every thread of a Rust program: memory (the allocator, thread stacks,
/// the mapcache's mappings), locks and condition variables, clocks and
/// sleeps (the vDSO falls back to the syscall under some Xen clocksources),
/// signal return and masks, writing log lines to stderr, closing what is
/// dropped, leaving. `getrandom`: the first `HashMap` of a thread seeds it.
/// `getpid`/`gettid`/`tgkill` and `prctl(PR_GET_NAME)`: `abort()` and the
/// SIGSYS handler, which names the thread and re-raises the signal.
/// `sched_getaffinity`: glibc's malloc sizes its arenas by the CPUs it may
/// use when a thread first allocates. `fcntl(F_GETFD)`: Rust's standard
/// library checks, in debug builds, that a file it closes was open.
const COMMON: &[Allow] = &[
    Call(libc::SYS_brk),
    Call(libc::SYS_mmap),
    Call(libc::SYS_munmap),
    Call(libc::SYS_mremap),
    Call(libc::SYS_mprotect),
    Call(libc::SYS_madvise),
    Call(libc::SYS_futex),
    Call(libc::SYS_sched_yield),
    Call(libc::SYS_clock_gettime),
    Call(libc::SYS_gettimeofday),
    Call(libc::SYS_clock_nanosleep),
    Call(libc::SYS_nanosleep),
    Call(libc::SYS_rt_sigreturn),
    Call(libc::SYS_rt_sigprocmask),
    Call(libc::SYS_sigaltstack),
    Call(libc::SYS_restart_syscall),
    Call(libc::SYS_write),
    Call(libc::SYS_writev),
    Call(libc::SYS_close),
    Call(libc::SYS_getrandom),
    Call(libc::SYS_sched_getaffinity),
    ArgIn { nr: libc::SYS_fcntl, arg: 1, values: &[libc::F_GETFD as u64] },
    Call(libc::SYS_getpid),
    Call(libc::SYS_gettid),
    Call(libc::SYS_tgkill),
    ArgIn { nr: libc::SYS_prctl, arg: 0, values: &[libc::PR_GET_NAME as u64] },
    Call(libc::SYS_exit),
    Call(libc::SYS_exit_group),
];

/// The ioreq thread (`xen::ioreq_server` serve loop): wait on the event
/// channel and the stop eventfd (`ppoll`/`poll`), read pending ports and
/// unmask them (`read`/`write` on the evtchn fd), the privcmd and evtchn
/// ioctls by request number. The trace file (`XENDM_RECORD`) and the
/// serial file backend are written with `write`.
const IOREQ: &[Allow] = &[
    Call(libc::SYS_poll),
    Call(libc::SYS_ppoll),
    Call(libc::SYS_read),
    ArgIn { nr: libc::SYS_ioctl, arg: 1, values: XEN_IOCTLS },
];

/// fw_cfg items served from the boot files opened at start-up
/// (`fw_cfg/src/source.rs`): the guest's reads are `pread64`s at an offset
/// on the ioreq thread, and after each the file is checked unchanged
/// (`statx`, with `fstat`/`newfstatat` as glibc's fallbacks). No file is
/// opened: the descriptors were opened before the filter.
const BOOT_FILES: &[Allow] =
    &[Call(libc::SYS_pread64), Call(libc::SYS_statx), Call(libc::SYS_fstat), Call(libc::SYS_newfstatat)];

/// The main thread: tokio's event loop (`epoll_*`), the QMP sockets
/// (`accept4`, reads and writes, `shutdown`), tokio's signal handlers for
/// SIGHUP/SIGTERM/SIGINT (`rt_sigaction`, installed when the wait starts),
/// `fcntl` on accepted sockets, the xenstore client's requests (writes on
/// its socket), removing the QMP socket files at exit (`unlink`),
/// QMP's dm_ops, and `xen-save-devices-state` writing the blob through the
/// descriptor `add-fd` received (`recvmsg` with `SCM_RIGHTS`): `fstat`,
/// `ftruncate`, `pwrite64` (`write` for a pipe). Threads it starts (tokio's blocking pool, a helper
/// thread): `clone` with `CLONE_THREAD` only (never a process; `clone3`,
/// whose flags a filter cannot read, fails with ENOSYS so glibc falls back
/// to `clone`), `set_robust_list`, `rseq`, `prctl(PR_SET_NAME)`.
const MAIN: &[Allow] = &[
    Call(libc::SYS_epoll_wait),
    Call(libc::SYS_epoll_pwait),
    Call(libc::SYS_epoll_ctl),
    Call(libc::SYS_poll),
    Call(libc::SYS_ppoll),
    Call(libc::SYS_accept4),
    Call(libc::SYS_read),
    Call(libc::SYS_recvfrom),
    Call(libc::SYS_recvmsg),
    Call(libc::SYS_sendto),
    Call(libc::SYS_sendmsg),
    Call(libc::SYS_shutdown),
    Call(libc::SYS_rt_sigaction),
    ArgIn {
        nr: libc::SYS_fcntl,
        arg: 1,
        values: &[
            libc::F_GETFD as u64,
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    },
    ArgIn { nr: libc::SYS_ioctl, arg: 1, values: MAIN_IOCTLS },
    Call(libc::SYS_unlink),
    Call(libc::SYS_unlinkat),
    Call(libc::SYS_fstat),
    Call(libc::SYS_ftruncate),
    Call(libc::SYS_pwrite64),
    ArgMasked { nr: libc::SYS_clone, arg: 0, mask: libc::CLONE_THREAD as u64, value: libc::CLONE_THREAD as u64 },
    Call(libc::SYS_clone3),
    Call(libc::SYS_set_robust_list),
    Call(libc::SYS_rseq),
    ArgIn { nr: libc::SYS_prctl, arg: 0, values: &[libc::PR_SET_NAME as u64] },
];

/// The serial threads (`control::chardev`: input, output, accept for
/// `unix:...,server`): `poll` with a tick, `read`/`write` on the pty,
/// file or socket, `accept4` of one client, reads and writes on it. No tty
/// ioctl: the pty's termios are set when it is opened, at start-up.
const CHARDEV: &[Allow] = &[
    Call(libc::SYS_poll),
    Call(libc::SYS_ppoll),
    Call(libc::SYS_read),
    Call(libc::SYS_accept4),
    Call(libc::SYS_recvfrom),
    Call(libc::SYS_sendto),
    Call(libc::SYS_shutdown),
];

/// The xenstore reader thread (`xen::xenstore`): `poll` on the socket and
/// its wake eventfd, reads of replies and watch events.
const XENSTORE: &[Allow] =
    &[Call(libc::SYS_poll), Call(libc::SYS_ppoll), Call(libc::SYS_read), Call(libc::SYS_recvfrom)];

/// What installing a thread's own filter after the process-wide one takes:
/// `prctl(PR_SET_NO_NEW_PRIVS)` and `seccomp(SET_MODE_FILTER)`. Harmless to
/// leave to the threads without a filter of their own: both only ever add
/// restrictions.
const INSTALL: &[Allow] =
    &[ArgIn { nr: libc::SYS_prctl, arg: 0, values: &[libc::PR_SET_NO_NEW_PRIVS as u64] }, Call(libc::SYS_seccomp)];

/// The groups making up the filter of `role`.
pub(super) fn groups(role: Role) -> &'static [&'static [Allow]] {
    match role {
        Role::Process => &[COMMON, IOREQ, BOOT_FILES, MAIN, CHARDEV, XENSTORE, INSTALL],
        Role::Main => &[COMMON, MAIN],
        Role::Ioreq => &[COMMON, IOREQ, BOOT_FILES],
    }
}

/// The syscalls a filter fails with ENOSYS instead of trapping, so that
/// the C library falls back to a form the allowlist can check.
pub(super) const ENOSYS: &[i64] = &[libc::SYS_clone3];

/// The rules of `role` in seccompiler's form: one entry per syscall; an
/// empty rule list allows the call whatever its arguments, and an
/// unconditional entry wins over argument rules for the same call.
///
/// # Errors
/// If seccompiler refuses a condition (a bad argument index).
pub(super) fn rules(role: Role) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut any = std::collections::BTreeSet::new();
    let mut conditional: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for allow in groups(role).iter().flat_map(|g| g.iter()) {
        match *allow {
            Call(nr) => {
                any.insert(nr);
            }
            ArgIn { nr, arg, values } => {
                for &v in values {
                    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)?;
                    conditional.entry(nr).or_default().push(SeccompRule::new(vec![c])?);
                }
            }
            ArgMasked { nr, arg, mask, value } => {
                let c = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), value)?;
                conditional.entry(nr).or_default().push(SeccompRule::new(vec![c])?);
            }
        }
    }
    let mut out = conditional;
    for nr in any {
        out.insert(nr, Vec::new());
    }
    Ok(out)
}

/// Whether `role`'s filter lets `nr` through with these arguments
/// (for tests and the docs: the same reading as the BPF program).
#[cfg(test)]
pub(super) fn allows(role: Role, nr: i64, args: &[u64; 6]) -> bool {
    groups(role).iter().flat_map(|g| g.iter()).any(|a| match *a {
        Call(n) => n == nr,
        ArgIn { nr: n, arg, values } => n == nr && values.contains(&(args[usize::from(arg)] & 0xffff_ffff)),
        ArgMasked { nr: n, arg, mask, value } => n == nr && args[usize::from(arg)] & mask == value,
    })
}

/// `[(libc::SYS_x, "SYS_x"), ...]`.
macro_rules! names {
    ($($n:ident),* $(,)?) => { [$((libc::$n, stringify!($n))),*] };
}

/// Names of the system calls a violation message may show (the allowed
/// ones and those a compromised device model would try first), as
/// `(0, "SYS_read")`: the message leaves out the `SYS_` prefix.
pub(super) const NAMES: &[(i64, &str)] = &names![
    SYS_read,
    SYS_write,
    SYS_open,
    SYS_close,
    SYS_stat,
    SYS_fstat,
    SYS_lstat,
    SYS_poll,
    SYS_lseek,
    SYS_mmap,
    SYS_mprotect,
    SYS_munmap,
    SYS_brk,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_ioctl,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_access,
    SYS_pipe,
    SYS_select,
    SYS_sched_yield,
    SYS_mremap,
    SYS_madvise,
    SYS_dup,
    SYS_dup2,
    SYS_nanosleep,
    SYS_getpid,
    SYS_socket,
    SYS_connect,
    SYS_accept,
    SYS_sendto,
    SYS_recvfrom,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_shutdown,
    SYS_bind,
    SYS_listen,
    SYS_socketpair,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_clone,
    SYS_fork,
    SYS_vfork,
    SYS_execve,
    SYS_exit,
    SYS_wait4,
    SYS_kill,
    SYS_uname,
    SYS_fcntl,
    SYS_flock,
    SYS_fsync,
    SYS_truncate,
    SYS_ftruncate,
    SYS_getdents64,
    SYS_getcwd,
    SYS_chdir,
    SYS_rename,
    SYS_mkdir,
    SYS_rmdir,
    SYS_creat,
    SYS_link,
    SYS_unlink,
    SYS_symlink,
    SYS_readlink,
    SYS_chmod,
    SYS_chown,
    SYS_umask,
    SYS_gettimeofday,
    SYS_getrlimit,
    SYS_sysinfo,
    SYS_ptrace,
    SYS_getuid,
    SYS_setuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setresuid,
    SYS_setresgid,
    SYS_capset,
    SYS_sigaltstack,
    SYS_personality,
    SYS_prctl,
    SYS_arch_prctl,
    SYS_setrlimit,
    SYS_chroot,
    SYS_mount,
    SYS_umount2,
    SYS_reboot,
    SYS_init_module,
    SYS_delete_module,
    SYS_gettid,
    SYS_futex,
    SYS_sched_setaffinity,
    SYS_sched_getaffinity,
    SYS_io_uring_setup,
    SYS_epoll_wait,
    SYS_epoll_ctl,
    SYS_tgkill,
    SYS_openat,
    SYS_mkdirat,
    SYS_unlinkat,
    SYS_ppoll,
    SYS_set_robust_list,
    SYS_epoll_pwait,
    SYS_accept4,
    SYS_eventfd2,
    SYS_epoll_create1,
    SYS_pipe2,
    SYS_prlimit64,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_memfd_create,
    SYS_bpf,
    SYS_execveat,
    SYS_userfaultfd,
    SYS_pidfd_open,
    SYS_clone3,
    SYS_seccomp,
    SYS_getrandom,
    SYS_rseq,
    SYS_restart_syscall,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_exit_group,
    SYS_unshare,
    SYS_setns,
    SYS_keyctl,
    SYS_add_key,
    SYS_perf_event_open,
    SYS_statx,
    SYS_newfstatat,
    SYS_pidfd_getfd,
    SYS_landlock_create_ruleset
];
