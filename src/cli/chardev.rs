//! `-chardev`, `-mon`, `-qmp` and `-serial`.
//!
//! QEMU's chardev options (`qemu-options.hx`, "Character device options")
//! and the legacy `-serial` shorthand (`chardev/char.c`, `qemu_chr_parse_compat`),
//! read for facts only. xendm serves QMP only on a listening Unix socket
//! (created from `path=` or inherited as `fd=`) with `wait=off`; a chardev no
//! `-mon` uses (libxl's `channel=` chardevs) has no frontend in xendm and is
//! accepted and listed as ignored.

use std::path::PathBuf;

use super::opts::{parse_decimal, Opts};
use super::{CliError, QmpEndpoint};
use crate::control::chardev::ChardevSpec;
use crate::control::qmp::QmpSocketSpec;

/// The most serial ports a PC has in QEMU (COM1-COM4).
pub(super) const MAX_SERIAL_PORTS: usize = 4;

/// One `-chardev`, as given.
#[derive(Debug, Clone)]
pub(super) struct Chardev {
    pub id: String,
    pub backend: Backend,
    /// The argument verbatim, for messages and the ignored list.
    pub spec: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Backend {
    Socket {
        path: Option<PathBuf>,
        fd: Option<i32>,
        server: bool,
        /// QEMU's default is to wait for a client when `server` is on.
        wait: bool,
    },
    Pty,
    File,
    Null,
    Stdio,
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Socket { .. } => "socket",
            Backend::Pty => "pty",
            Backend::File => "file",
            Backend::Null => "null",
            Backend::Stdio => "stdio",
        }
    }
}

/// One monitor request, in command-line order.
#[derive(Debug, Clone)]
pub(super) enum Monitor {
    /// `-mon chardev=ID,mode=control`.
    Chardev(String),
    /// `-qmp unix:PATH,server=on,wait=off`, already resolved.
    Direct(QmpEndpoint),
}

fn opts(option: &str, value: &str, implied: Option<&str>) -> Result<Opts, CliError> {
    Opts::parse(value, implied).map_err(|source| CliError::Opts { option: option.to_string(), source })
}

fn opts_err(option: &str) -> impl Fn(super::OptsError) -> CliError + '_ {
    move |source| CliError::Opts { option: option.to_string(), source }
}

fn invalid(option: &str, message: String) -> CliError {
    CliError::InvalidValue { option: option.to_string(), message }
}

/// QEMU's rule for ids: a letter, then letters, digits, `-`, `.` or `_`.
pub(super) fn id_wellformed(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// A non-negative file descriptor that is not stdin, stdout or stderr.
fn parse_fd(option: &str, value: &str) -> Result<i32, CliError> {
    match parse_decimal::<i32>(value) {
        Some(fd) if fd > 2 => Ok(fd),
        Some(fd) => Err(invalid(option, format!("fd={fd} is a standard stream, not a listening socket"))),
        None => Err(invalid(option, format!("invalid file descriptor '{value}'"))),
    }
}

fn nonempty_path(option: &str, key: &str, value: &str) -> Result<PathBuf, CliError> {
    if value.is_empty() {
        return Err(invalid(option, format!("empty {key}")));
    }
    Ok(PathBuf::from(value))
}

/// Parses `-chardev BACKEND,id=ID,...`.
pub(super) fn parse_chardev(value: &str) -> Result<Chardev, CliError> {
    const OPT: &str = "-chardev";
    let o = opts(OPT, value, Some("backend"))?;
    let backend_name = o.require("backend").map_err(opts_err(OPT))?;
    let id = o.require("id").map_err(opts_err(OPT))?;
    if !id_wellformed(id) {
        return Err(invalid(OPT, format!("invalid id '{id}' (a letter, then letters, digits, '-', '.' or '_')")));
    }
    let backend = match backend_name {
        "socket" => {
            if o.get("host").is_some() || o.get("port").is_some() {
                return Err(CliError::Unsupported {
                    option: OPT.into(),
                    what: "socket",
                    value: value.into(),
                    reason: "only Unix sockets (path= or fd=) are supported, not TCP".into(),
                });
            }
            o.check_keys(&["backend", "id", "path", "fd", "server", "wait"]).map_err(opts_err(OPT))?;
            let path = o.get("path").map(|p| nonempty_path(OPT, "path", p)).transpose()?;
            let fd = o.get("fd").map(|f| parse_fd(OPT, f)).transpose()?;
            if path.is_some() == fd.is_some() {
                return Err(invalid(OPT, format!("socket '{id}' needs exactly one of path= and fd=")));
            }
            let server = o.get_bool("server").map_err(opts_err(OPT))?.unwrap_or(false);
            let wait = o.get_bool("wait").map_err(opts_err(OPT))?.unwrap_or(true);
            Backend::Socket { path, fd, server, wait }
        }
        "pty" => {
            o.check_keys(&["backend", "id"]).map_err(opts_err(OPT))?;
            Backend::Pty
        }
        "file" => {
            o.check_keys(&["backend", "id", "path", "append"]).map_err(opts_err(OPT))?;
            nonempty_path(OPT, "path", o.require("path").map_err(opts_err(OPT))?)?;
            o.get_bool("append").map_err(opts_err(OPT))?;
            Backend::File
        }
        "null" => {
            o.check_keys(&["backend", "id"]).map_err(opts_err(OPT))?;
            Backend::Null
        }
        "stdio" => {
            o.check_keys(&["backend", "id", "signal"]).map_err(opts_err(OPT))?;
            o.get_bool("signal").map_err(opts_err(OPT))?;
            Backend::Stdio
        }
        other => {
            return Err(CliError::Unsupported {
                option: OPT.into(),
                what: "backend",
                value: other.into(),
                reason: "xendm accepts socket, pty, file, null and stdio chardevs".into(),
            })
        }
    };
    Ok(Chardev { id: id.to_string(), backend, spec: value.to_string() })
}

/// Parses `-mon [chardev=]ID,mode=control[,pretty=on|off]`.
pub(super) fn parse_mon(value: &str) -> Result<Monitor, CliError> {
    const OPT: &str = "-mon";
    let o = opts(OPT, value, Some("chardev"))?;
    o.check_keys(&["chardev", "mode", "pretty", "id"]).map_err(opts_err(OPT))?;
    let chardev = o.require("chardev").map_err(opts_err(OPT))?;
    // QEMU's default mode is the human monitor.
    let mode = o.get("mode").unwrap_or("readline");
    if mode != "control" {
        return Err(CliError::Unsupported {
            option: OPT.into(),
            what: "mode",
            value: mode.into(),
            reason: "only QMP (mode=control) is implemented, not the human monitor".into(),
        });
    }
    // Pretty-printing changes only whitespace in the JSON; we never pretty-print.
    o.get_bool("pretty").map_err(opts_err(OPT))?;
    Ok(Monitor::Chardev(chardev.to_string()))
}

/// Parses `-qmp unix:PATH,server=on,wait=off` (a chardev and a `-mon` in one).
pub(super) fn parse_qmp(value: &str, index: usize) -> Result<Monitor, CliError> {
    const OPT: &str = "-qmp";
    let Some(rest) = value.strip_prefix("unix:") else {
        return Err(CliError::Unsupported {
            option: OPT.into(),
            what: "endpoint",
            value: value.into(),
            reason: "only unix:PATH,server=on,wait=off is supported".into(),
        });
    };
    let (path, server) = parse_unix(OPT, rest)?;
    if !server {
        return Err(invalid(OPT, format!("'{value}' must be a listening socket (server=on,wait=off)")));
    }
    Ok(Monitor::Direct(QmpEndpoint {
        // The id QEMU gives the chardev behind `-qmp`.
        id: format!("compat_monitor{index}"),
        socket: QmpSocketSpec::Path(path),
    }))
}

/// `PATH[,server=on|off][,wait=off]`; refuses the blocking `wait=on` of a server.
fn parse_unix(option: &str, rest: &str) -> Result<(PathBuf, bool), CliError> {
    let o = opts(option, rest, Some("path"))?;
    o.check_keys(&["path", "server", "wait"]).map_err(opts_err(option))?;
    let path = nonempty_path(option, "path", o.require("path").map_err(opts_err(option))?)?;
    let server = o.get_bool("server").map_err(opts_err(option))?.unwrap_or(false);
    let wait = o.get_bool("wait").map_err(opts_err(option))?;
    if server && wait != Some(false) {
        return Err(CliError::Unsupported {
            option: option.into(),
            what: "socket mode",
            value: "wait=on".into(),
            reason: "blocking start-up until a client connects is not implemented; add wait=off".into(),
        });
    }
    Ok((path, server))
}

/// Parses one `-serial` argument (QEMU's legacy chardev shorthand) into the
/// serial backend's own spec. This is the only `-serial` parser.
pub(super) fn parse_serial(value: &str) -> Result<ChardevSpec, CliError> {
    const OPT: &str = "-serial";
    let unsupported = |reason: &str| CliError::Unsupported {
        option: OPT.into(),
        what: "backend",
        value: value.into(),
        reason: reason.into(),
    };
    match value {
        "none" => return Ok(ChardevSpec::None),
        "null" => return Ok(ChardevSpec::Null),
        "pty" => return Ok(ChardevSpec::Pty),
        "stdio" => return Ok(ChardevSpec::Stdio),
        _ => {}
    }
    if let Some(path) = value.strip_prefix("file:") {
        return Ok(ChardevSpec::File(nonempty_path(OPT, "file path", path)?));
    }
    if let Some(rest) = value.strip_prefix("unix:") {
        let (path, server) = parse_unix(OPT, rest)?;
        return Ok(ChardevSpec::Unix { path, server });
    }
    if value.starts_with("/dev/parport") {
        return Err(unsupported("a parallel port device cannot back a serial port"));
    }
    if value.starts_with("/dev/") {
        return Ok(ChardevSpec::HostDevice(PathBuf::from(value)));
    }
    const NETWORK: [&str; 4] = ["tcp:", "telnet:", "udp:", "websocket:"];
    if NETWORK.iter().any(|p| value.starts_with(p)) {
        return Err(unsupported(
            "network serial consoles are not implemented; use pty, file:PATH or unix:PATH,server=on,wait=off",
        ));
    }
    Err(unsupported("xendm supports pty, file:PATH, stdio, null, none, unix:PATH[,server=on,wait=off] and /dev/..."))
}

/// Refuses two `-chardev` options naming one inherited descriptor: each
/// `fd=N` is taken over (and closed) by exactly one owner.
fn refuse_shared_fds(chardevs: &[Chardev]) -> Result<(), CliError> {
    let mut seen: Vec<(i32, &str)> = Vec::new();
    for c in chardevs {
        let Backend::Socket { fd: Some(fd), .. } = &c.backend else { continue };
        if let Some((_, first)) = seen.iter().find(|(f, _)| f == fd) {
            return Err(CliError::Inconsistent(format!(
                "-chardev id={}: fd={fd} is also used by -chardev id={first}",
                c.id
            )));
        }
        seen.push((*fd, c.id.as_str()));
    }
    Ok(())
}

/// Joins the monitors with their chardevs. Chardevs no monitor uses are
/// reported in `ignored`.
pub(super) fn resolve(
    chardevs: &[Chardev],
    monitors: &[Monitor],
    ignored: &mut Vec<String>,
) -> Result<Vec<QmpEndpoint>, CliError> {
    const OPT: &str = "-mon";
    refuse_shared_fds(chardevs)?;
    let mut used: Vec<&str> = Vec::new();
    let mut endpoints = Vec::new();
    for monitor in monitors {
        let id = match monitor {
            Monitor::Direct(endpoint) => {
                endpoints.push(endpoint.clone());
                continue;
            }
            Monitor::Chardev(id) => id.as_str(),
        };
        let Some(chardev) = chardevs.iter().find(|c| c.id == id) else {
            return Err(invalid(OPT, format!("chardev '{id}' is not defined by any -chardev")));
        };
        if used.contains(&id) {
            return Err(invalid(OPT, format!("chardev '{id}' is used by more than one -mon")));
        }
        used.push(id);
        let socket = match &chardev.backend {
            Backend::Socket { path, fd, server: true, wait: false } => match (path, fd) {
                (Some(path), None) => QmpSocketSpec::Path(path.clone()),
                (None, Some(fd)) => QmpSocketSpec::Fd(*fd),
                // parse_chardev guarantees exactly one of the two.
                _ => return Err(invalid(OPT, format!("chardev '{id}' has no socket address"))),
            },
            Backend::Socket { server: false, .. } => {
                return Err(CliError::Unsupported {
                    option: OPT.into(),
                    what: "chardev",
                    value: chardev.spec.clone(),
                    reason: "QMP needs a listening socket: add server=on,wait=off".into(),
                })
            }
            Backend::Socket { .. } => {
                return Err(CliError::Unsupported {
                    option: OPT.into(),
                    what: "chardev",
                    value: chardev.spec.clone(),
                    reason: "blocking start-up until a client connects is not implemented; add wait=off".into(),
                })
            }
            other => {
                return Err(CliError::Unsupported {
                    option: OPT.into(),
                    what: "chardev",
                    value: chardev.spec.clone(),
                    reason: format!("QMP is served only on a Unix socket, not on a {} chardev", other.name()),
                })
            }
        };
        endpoints.push(QmpEndpoint { id: id.to_string(), socket });
    }
    for chardev in chardevs {
        if !used.contains(&chardev.id.as_str()) {
            ignored.push(format!("-chardev {}", chardev.spec));
        }
    }
    Ok(endpoints)
}
