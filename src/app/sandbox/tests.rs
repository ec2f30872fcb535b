//! The filters installed for real: each case runs in a child process (this
//! test binary run again with `XENDM_SANDBOX_CHILD=<case>`, only the test
//! [`child`]), because a seccomp filter cannot be removed. The parent checks
//! how the child ended and what it wrote.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Output;

use super::allowlist::{self, Role, IOCTL_PRIVCMD_DM_OP, IOCTL_PRIVCMD_HYPERCALL};
use super::*;

const CHILD_ENV: &str = "XENDM_SANDBOX_CHILD";

/// Runs [`child`] with `case` in a new process of this test binary.
fn run_child(case: &str) -> Output {
    crate::app::test_in_child("app::sandbox::tests::child", CHILD_ENV, case)
        .env_remove("XENDM_SECCOMP")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn assert_killed_by_sigsys(o: &Output, line: &str) {
    let (out, err) = text(o);
    assert_eq!(o.status.signal(), Some(libc::SIGSYS), "status {:?}\nstdout:\n{out}\nstderr:\n{err}", o.status);
    assert!(err.contains(line), "no '{line}' in stderr:\n{err}\nstdout:\n{out}");
}

#[test]
fn a_forbidden_call_on_the_main_thread_kills_with_sigsys_and_one_log_line() {
    let o = run_child("main-socket");
    let (out, _) = text(&o);
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("thread created after lock-down: ok"), "clone3 -> ENOSYS -> clone(CLONE_THREAD): {out}");
    assert!(out.contains("getpid: ok"), "{out}");
    assert_killed_by_sigsys(&o, "made system call 41 (socket), which its seccomp filter forbids");
}

#[test]
fn the_ioreq_thread_may_issue_dm_op_but_not_a_raw_hypercall() {
    let o = run_child("ioreq-ioctl");
    let (out, _) = text(&o);
    // /dev/null has no ioctls: ENOTTY from the kernel means the filter let it through.
    assert!(out.contains(&format!("dm_op: errno {}", libc::ENOTTY)), "{out}");
    assert!(out.contains("ioreq Seccomp:\t2"), "{out}");
    assert_killed_by_sigsys(&o, "xendm: sandbox: thread 'ioreq' (tid ");
    assert_killed_by_sigsys(&o, "made system call 16 (ioctl)");
}

#[test]
fn a_thread_started_before_lock_down_runs_under_the_process_filter() {
    let o = run_child("helper-execve");
    assert_killed_by_sigsys(&o, "thread 'serial-in' (tid ");
    assert_killed_by_sigsys(&o, "made system call 59 (execve)");
}

/// `xen-save-devices-state` after lock-down: the blob into a reused file
/// (fstat, ftruncate, pwrite64) and into a pipe (write).
#[test]
fn saving_the_device_state_is_allowed_on_the_main_thread() {
    let o = run_child("main-save");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{:?}\n{out}\n{err}", o.status);
    assert!(out.contains("saved to a file: 5 bytes") && out.contains("saved to a pipe: ok"), "{out}\n{err}");
}

#[test]
fn log_mode_and_off_do_not_kill() {
    let o = run_child("log-socket");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{:?}\n{out}\n{err}", o.status);
    assert!(out.contains("socket in log mode: ok") && out.contains("Seccomp:\t2"), "{out}");
    let o = run_child("off");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{:?}\n{out}\n{err}", o.status);
    assert!(out.contains("NoNewPrivs:\t0") && out.contains("Seccomp:\t0"), "{out}");
}

/// The child's side; does nothing in a normal test run.
#[test]
fn child() {
    let Ok(case) = std::env::var(CHILD_ENV) else { return };
    // No core file in the working directory when the child dies of SIGSYS.
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit for RLIMIT_CORE.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    match case.as_str() {
        "main-socket" => main_socket(),
        "ioreq-ioctl" => ioreq_ioctl(),
        "helper-execve" => helper_execve(),
        "log-socket" => log_socket(),
        "off" => off(),
        "main-save" => main_save(),
        other => panic!("unknown case {other}"),
    }
}

/// `/proc/thread-self/status`, opened now and read (generated) later,
/// when `open` is no longer allowed.
struct Status(std::fs::File);

impl Status {
    fn open() -> Self {
        Self(std::fs::File::open("/proc/thread-self/status").unwrap())
    }
    fn lines(mut self) -> String {
        let mut s = String::new();
        let mut buf = [0u8; 8192];
        let n = self.0.read(&mut buf).unwrap();
        s.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        s.lines().filter(|l| l.starts_with("NoNewPrivs") || l.starts_with("Seccomp")).collect::<Vec<_>>().join("\n")
    }
}

fn main_socket() {
    let status = Status::open();
    Sandbox::with_mode(Mode::Enforce).unwrap().lock_down().unwrap();
    println!("{}", status.lines());
    let t = std::thread::Builder::new().name("later".into()).spawn(|| 7).unwrap();
    assert_eq!(t.join().unwrap(), 7);
    println!("thread created after lock-down: ok");
    // SAFETY: plain call.
    assert!(unsafe { libc::getpid() } > 0);
    println!("getpid: ok");
    // SAFETY: plain call; the filter stops it.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    unreachable!("socket() was allowed");
}

fn main_save() {
    use std::io::{Seek, Write};
    use std::os::fd::AsFd;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[b'x'; 64]).unwrap();
    file.rewind().unwrap();
    let (mut r, w) = std::io::pipe().unwrap();
    Sandbox::with_mode(Mode::Enforce).unwrap().lock_down().unwrap();
    crate::control::qmp::write_blob(file.as_fd(), b"state").unwrap();
    println!("saved to a file: {} bytes", rustix::fs::fstat(&file).unwrap().st_size);
    crate::control::qmp::write_blob(w.as_fd(), b"state").unwrap();
    let mut buf = [0u8; 5];
    std::io::Read::read_exact(&mut r, &mut buf).unwrap();
    assert_eq!(&buf, b"state");
    println!("saved to a pipe: ok");
}

fn ioreq_ioctl() {
    let mut sandbox = Sandbox::with_mode(Mode::Enforce).unwrap();
    let gate = sandbox.ioreq_gate();
    let null = std::fs::File::open("/dev/null").unwrap();
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("ioreq".into())
        .spawn(move || {
            let status = Status::open();
            ready_tx.send(()).unwrap();
            gate.enter().unwrap();
            println!("ioreq {}", status.lines().replace('\n', "\nioreq "));
            // SAFETY: an ioctl on /dev/null, which has none: ENOTTY.
            let rc = unsafe { libc::ioctl(null.as_raw_fd(), IOCTL_PRIVCMD_DM_OP as _, 0) };
            println!(
                "dm_op: errno {}",
                if rc < 0 { std::io::Error::last_os_error().raw_os_error().unwrap() } else { 0 }
            );
            // SAFETY: as above; the filter stops it.
            unsafe { libc::ioctl(null.as_raw_fd(), IOCTL_PRIVCMD_HYPERCALL as _, 0) };
            unreachable!("the hypercall ioctl was allowed");
        })
        .unwrap();
    ready.recv().unwrap();
    sandbox.lock_down().unwrap();
    let _ = t.join();
    unreachable!("the ioreq thread returned");
}

fn helper_execve() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::Builder::new()
        .name("serial-in".into())
        .spawn(move || {
            rx.recv().unwrap();
            // SAFETY: valid NUL-terminated path and empty argv/envp; the filter stops it.
            unsafe { libc::execve(c"/bin/true".as_ptr(), [std::ptr::null()].as_ptr(), [std::ptr::null()].as_ptr()) };
            unreachable!("execve was allowed");
        })
        .unwrap();
    Sandbox::with_mode(Mode::Enforce).unwrap().lock_down().unwrap();
    tx.send(()).unwrap();
    let _ = t.join();
    unreachable!("the helper thread returned");
}

fn log_socket() {
    let status = Status::open();
    Sandbox::with_mode(Mode::Log).unwrap().lock_down().unwrap();
    println!("{}", status.lines());
    // SAFETY: plain call, allowed (and logged by the kernel) in log mode.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    println!("socket in log mode: ok");
}

fn off() {
    let status = Status::open();
    Sandbox::with_mode(Mode::Off).unwrap().lock_down().unwrap();
    println!("{}", status.lines());
}

#[test]
fn a_gate_whose_sandbox_is_dropped_refuses_to_let_its_thread_serve() {
    let mut s = Sandbox::with_mode(Mode::Enforce).unwrap();
    let gate = s.ioreq_gate();
    drop(s);
    assert_eq!(gate.enter().unwrap_err().to_string(), "start-up ended before the sandbox was entered");
}

#[test]
fn mode_from_the_command_line_and_the_environment() {
    let on = Config::default();
    let off = Config { sandbox: SandboxSetting::Off, ..Config::default() };
    assert_eq!(Mode::from_config(&on, None).unwrap(), Mode::Enforce);
    assert_eq!(Mode::from_config(&on, Some("on")).unwrap(), Mode::Enforce);
    assert_eq!(Mode::from_config(&on, Some("log")).unwrap(), Mode::Log);
    assert_eq!(Mode::from_config(&on, Some("off")).unwrap(), Mode::Off);
    assert_eq!(Mode::from_config(&off, None).unwrap(), Mode::Off);
    assert_eq!(Mode::from_config(&off, Some("on")).unwrap(), Mode::Off, "the environment only weakens");
    assert_eq!(
        Mode::from_config(&on, Some("strict")).unwrap_err().to_string(),
        "XENDM_SECCOMP=strict: expected on, log or off"
    );
}

#[test]
fn the_lists_allow_serving_and_refuse_what_only_start_up_or_an_attacker_needs() {
    let none = [0u64; 6];
    let ioctl = |req: u64| [3, req, 0, 0, 0, 0];
    for role in [Role::Process, Role::Main, Role::Ioreq] {
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_setuid,
            libc::SYS_chroot,
            libc::SYS_mount,
            libc::SYS_process_vm_writev,
            libc::SYS_bpf,
        ] {
            assert!(!allowlist::allows(role, nr, &none), "{role:?} allows {}", sigsys::syscall_name(nr));
        }
        assert!(!allowlist::allows(role, libc::SYS_ioctl, &ioctl(IOCTL_PRIVCMD_HYPERCALL)), "{role:?}");
        assert!(!allowlist::allows(role, libc::SYS_ioctl, &ioctl(libc::TIOCSTI)), "{role:?}: TIOCSTI");
        assert!(allowlist::allows(role, libc::SYS_ioctl, &ioctl(IOCTL_PRIVCMD_DM_OP)), "{role:?}");
        assert!(allowlist::allows(role, libc::SYS_futex, &none) && allowlist::allows(role, libc::SYS_write, &none));
        // A process (no CLONE_THREAD) is never allowed; a thread only where threads may start.
        assert!(!allowlist::allows(role, libc::SYS_clone, &[libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), "{role:?}");
        let thread = [(libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64, 0, 0, 0, 0, 0];
        assert_eq!(allowlist::allows(role, libc::SYS_clone, &thread), role != Role::Ioreq, "{role:?}");
    }
    let poll = [0u64; 6];
    assert!(allowlist::allows(Role::Ioreq, libc::SYS_ppoll, &poll));
    assert!(!allowlist::allows(Role::Ioreq, libc::SYS_accept4, &poll), "the ioreq thread accepts nothing");
    assert!(!allowlist::allows(Role::Ioreq, libc::SYS_rt_sigaction, &poll));
    assert!(!allowlist::allows(Role::Main, libc::SYS_seccomp, &poll), "main installs its filter last");
    assert!(allowlist::allows(Role::Ioreq, libc::SYS_ioctl, &ioctl(allowlist::IOCTL_PRIVCMD_MMAPBATCH_V2)));
    assert!(allowlist::allows(Role::Ioreq, libc::SYS_ioctl, &ioctl(allowlist::IOCTL_EVTCHN_NOTIFY)));
    // fw_cfg items are read from the boot files on the ioreq thread, and
    // the file checked unchanged (fw_cfg/src/source.rs), under both filters.
    for nr in [libc::SYS_pread64, libc::SYS_statx, libc::SYS_fstat] {
        assert!(allowlist::allows(Role::Ioreq, nr, &poll), "{}", sigsys::syscall_name(nr));
        assert!(allowlist::allows(Role::Process, nr, &poll), "{}", sigsys::syscall_name(nr));
    }
    // The kernel reads the request as 32 bits: so does the filter.
    assert!(allowlist::allows(Role::Ioreq, libc::SYS_ioctl, &ioctl(IOCTL_PRIVCMD_DM_OP | 1 << 40)));
}
