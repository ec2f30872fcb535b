//! The real `xendm` binary in the sandbox: `-machine none` (libxl's probe
//! run, QMP only, no Xen) binds its monitor, enters the sandbox, and then
//! serves a QMP session and exits on `quit` under the main thread's filter
//! (`src/app/sandbox`). `/proc/<pid>/status` must say `Seccomp: 2` and
//! `NoNewPrivs: 1`, and `-sandbox off` / `XENDM_SECCOMP=off` must leave both 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(sock: &Path, extra: &[&str], env: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xendm"));
    cmd.args(["-machine", "none,accel=xen", "-nodefaults", "-chardev"])
        .arg(format!("socket,id=libxl-cmd,path={},server=on,wait=off", sock.display()))
        .args(["-mon", "chardev=libxl-cmd,mode=control"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match env {
        Some(v) => cmd.env("XENDM_SECCOMP", v),
        None => cmd.env_remove("XENDM_SECCOMP"),
    };
    cmd.spawn().unwrap()
}

fn connect(sock: &Path) -> UnixStream {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = UnixStream::connect(sock) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(key)).unwrap().trim().to_string()
}

/// A QMP session: greeting, capabilities, a few queries, quit. Returns the
/// status fields seen while it ran and the exit status and stderr.
fn session(extra: &[&str], env: Option<&str>) -> (String, String, std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp");
    let mut child = start(&sock, extra, env);
    let s = connect(&sock);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "{line}");
    for cmd in ["qmp_capabilities", "query-version", "query-status", "query-chardev"] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("\"return\""), "{cmd}: {line}");
    }
    let seccomp = status_field(child.id(), "Seccomp:");
    let nnp = status_field(child.id(), "NoNewPrivs:");
    writeln!(w, "{{\"execute\":\"quit\"}}").unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("xendm did not exit on quit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (seccomp, nnp, st, err)
}

#[test]
fn the_probe_serves_qmp_and_quits_inside_the_sandbox() {
    let (seccomp, nnp, st, err) = session(&[], None);
    assert_eq!((seccomp.as_str(), nnp.as_str()), ("2", "1"), "{err}");
    assert!(st.success(), "{st:?}: {err}");
    assert!(err.contains("seccomp sandbox on"), "{err}");
    assert!(!err.contains("xendm: sandbox:"), "a call was refused: {err}");
}

#[test]
fn sandbox_off_and_xendm_seccomp_off_install_nothing() {
    for (extra, env) in [(&["-sandbox", "off"][..], None), (&[][..], Some("off"))] {
        let (seccomp, nnp, st, err) = session(extra, env);
        assert_eq!((seccomp.as_str(), nnp.as_str()), ("0", "0"), "{extra:?} {env:?}: {err}");
        assert!(st.success(), "{st:?}: {err}");
        assert!(err.contains("seccomp sandbox off"), "{err}");
    }
}

#[test]
fn sigterm_ends_the_sandboxed_probe_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qmp");
    let mut child = start(&sock, &[], None);
    let s = connect(&sock);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_eq!(status_field(child.id(), "Seccomp:"), "2");
    // Wait until the SIGTERM handler is in place (installed under the filter).
    let t0 = Instant::now();
    while u64::from_str_radix(&status_field(child.id(), "SigCgt:"), 16).unwrap() & (1 << (libc::SIGTERM - 1)) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no SIGTERM handler");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) }, 0);
    let st = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(st.success(), "{st:?}: {err}");
    assert!(!err.contains("xendm: sandbox:"), "{err}");
}
