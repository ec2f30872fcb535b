//! The QMP commands libxl uses, with their replies in QEMU's member order
//! (QEMU `qapi/*.json`: `query-status`, `query-version`, ...), and the
//! greeting. The vCPU commands are in `vcpus.rs`, the descriptor ones
//! (`add-fd`, `remove-fd`, `query-fdsets`) in `fds.rs`; saving is here:
//! `xen-save-devices-state` writes the blob (`docs/save-restore.md`) through
//! a passed descriptor and `xen-set-global-dirty-log` switches the
//! reporting of the device model's own guest-memory writes.

use serde::Serialize;
use serde_json::{Map, Value};

use super::encode::{empty_return, generic, to_return, Reply};
use super::fds::Fds;
use super::{vcpus, RunState, VmControl, QEMU_VERSION};

/// A command's reply, and whether it asks the process to quit.
pub(super) struct Outcome {
    pub(super) reply: Reply,
    /// `quit` was executed: call [`VmControl::quit`] once the reply is out.
    pub(super) quit: bool,
}

/// Runs `name` for a session that has negotiated capabilities.
pub(super) fn dispatch(name: &str, args: &Map<String, Value>, ctl: &dyn VmControl, fds: &mut Fds) -> Outcome {
    let mut quit = false;
    let reply = reply_to(name, args, ctl, fds, &mut quit);
    Outcome { reply, quit }
}

/// The reply to `name`; sets `quit` for the `quit` command.
fn reply_to(name: &str, args: &Map<String, Value>, ctl: &dyn VmControl, fds: &mut Fds, quit: &mut bool) -> Reply {
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        return Reply::Error { class: "CommandNotFound", desc: format!("The command {name} has not been found") };
    };
    if let Params::Only(params) = command.params {
        if let Some(unexpected) = args.keys().find(|k| !params.contains(&k.as_str())) {
            return generic(format!("Parameter '{unexpected}' is unexpected"));
        }
    }
    let result = |r: Result<(), String>| match r {
        Ok(()) => empty_return(),
        Err(desc) => generic(desc),
    };
    match command.name {
        "qmp_capabilities" => Reply::Error {
            class: "CommandNotFound",
            desc: "Capabilities negotiation is already complete, command ignored".into(),
        },
        "query-status" => {
            let state = ctl.status();
            to_return(&StatusInfo { status: state.as_str(), singlestep: false, running: state == RunState::Running })
        }
        "cont" => result(ctl.cont()),
        "stop" => result(ctl.stop()),
        "query-chardev" => to_return(&ctl.chardevs()),
        "query-vnc" => to_return(&VncInfo { enabled: false }),
        "query-cpus-fast" => vcpus::query_cpus_fast(ctl),
        "query-hotpluggable-cpus" => vcpus::query_hotpluggable_cpus(ctl),
        "device_add" => vcpus::device_add(args, ctl),
        "cpu-add" => vcpus::cpu_add(args, ctl),
        "add-fd" => fds.add_fd(args),
        "remove-fd" => fds.remove_fd(args),
        "query-fdsets" => fds.query(),
        "xen-save-devices-state" => save_devices_state(args, ctl, fds),
        "xen-set-global-dirty-log" => match args.get("enable") {
            Some(Value::Bool(on)) => result(ctl.set_dirty_log(*on)),
            Some(_) => generic("Invalid parameter type for 'enable', expected: boolean"),
            None => generic("Parameter 'enable' is missing"),
        },
        "query-version" => to_return(&version_info()),
        "query-commands" => {
            let names: Vec<CommandName> = COMMANDS.iter().map(|c| CommandName { name: c.name }).collect();
            to_return(&names)
        }
        "query-command-line-options" => match args.get("option") {
            None => Reply::Return(b"[]".to_vec()),
            Some(Value::String(opt)) => generic(format!("Invalid option name: {opt}")),
            Some(_) => generic("Invalid parameter type for 'option', expected: string"),
        },
        "quit" => {
            *quit = true;
            empty_return()
        }
        other => Reply::Error { class: "CommandNotFound", desc: format!("The command {other} has not been found") },
    }
}

/// A command we implement, with the argument names it accepts.
struct Command {
    name: &'static str,
    params: Params,
}

/// The arguments a command accepts.
enum Params {
    /// Only these names; others are refused before the command runs.
    Only(&'static [&'static str]),
    /// Any names: the command checks them itself (`device_add`'s arguments
    /// are the device's properties).
    Own,
}

const fn only(name: &'static str, params: &'static [&'static str]) -> Command {
    Command { name, params: Params::Only(params) }
}

const COMMANDS: &[Command] = &[
    only("qmp_capabilities", &["enable"]),
    only("query-status", &[]),
    only("cont", &[]),
    only("stop", &[]),
    only("query-chardev", &[]),
    only("query-vnc", &[]),
    only("query-cpus-fast", &[]),
    only("query-hotpluggable-cpus", &[]),
    Command { name: "device_add", params: Params::Own },
    only("cpu-add", &["id"]),
    only("add-fd", &["fdset-id", "opaque"]),
    only("remove-fd", &["fdset-id", "fd"]),
    only("query-fdsets", &[]),
    only("xen-save-devices-state", &["filename", "live"]),
    only("xen-set-global-dirty-log", &["enable"]),
    only("query-version", &[]),
    only("query-commands", &[]),
    only("query-command-line-options", &["option"]),
    only("quit", &[]),
];

/// `xen-save-devices-state {"filename": "/dev/fdset/N", "live"?: bool}`:
/// the blob, written from offset 0 of the passed file, which is then cut to
/// the blob's length (libxl opens it without `O_TRUNC` and embeds the whole
/// file, `xen-toolstack.md` 2.2). A descriptor that is not a regular file
/// (a pipe, a console) is written in sequence.
fn save_devices_state(args: &Map<String, Value>, ctl: &dyn VmControl, fds: &Fds) -> Reply {
    let filename = match args.get("filename") {
        Some(Value::String(f)) => f.as_str(),
        Some(_) => return generic("Invalid parameter type for 'filename', expected: string"),
        None => return generic("Parameter 'filename' is missing"),
    };
    let live = match args.get("live") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return generic("Invalid parameter type for 'live', expected: boolean"),
    };
    let fd = match fds.lookup(filename) {
        Ok(fd) => fd,
        Err(e) => return generic(e),
    };
    let blob = match ctl.save_device_state(live) {
        Ok(b) => b,
        Err(e) => return generic(e),
    };
    match write_blob(fd, &blob) {
        Ok(()) => {
            tracing::info!(bytes = blob.len(), live, "device state saved to {filename} (QMP xen-save-devices-state)");
            empty_return()
        }
        Err(e) => {
            tracing::warn!("saving the device state to {filename}: {e}");
            generic(format!("Failed to write device state to '{filename}': {e}"))
        }
    }
}

/// Writes `blob` as the whole content of `fd` (see [`save_devices_state`]).
pub(crate) fn write_blob(fd: std::os::fd::BorrowedFd<'_>, blob: &[u8]) -> std::io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
    if regular {
        rustix::fs::ftruncate(fd, 0)?;
    }
    let mut done = 0usize;
    while let Some(rest) = blob.get(done..).filter(|r| !r.is_empty()) {
        let n = if regular {
            rustix::io::pwrite(fd, rest, done as u64)?
        } else {
            match rustix::io::write(fd, rest) {
                Err(rustix::io::Errno::INTR) => continue,
                r => r?,
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done = done.saturating_add(n);
    }
    if regular {
        rustix::fs::ftruncate(fd, blob.len() as u64)?;
    }
    Ok(())
}

// Reply payloads, with members in QEMU's output order.

#[derive(Serialize)]
struct StatusInfo {
    status: &'static str,
    singlestep: bool,
    running: bool,
}

#[derive(Serialize)]
struct VncInfo {
    enabled: bool,
}

#[derive(Serialize)]
struct CommandName {
    name: &'static str,
}

#[derive(Serialize)]
struct VersionTriple {
    micro: u32,
    minor: u32,
    major: u32,
}

#[derive(Serialize)]
struct VersionInfo {
    qemu: VersionTriple,
    package: String,
}

fn version_info() -> VersionInfo {
    let (major, minor, micro) = QEMU_VERSION;
    VersionInfo { qemu: VersionTriple { micro, minor, major }, package: format!("xendm {}", env!("CARGO_PKG_VERSION")) }
}

#[derive(Serialize)]
struct GreetingBody {
    version: VersionInfo,
    capabilities: [&'static str; 0],
}

#[derive(Serialize)]
pub(super) struct Greeting {
    #[serde(rename = "QMP")]
    qmp: GreetingBody,
}

/// The greeting sent to every client on connect.
pub(super) fn greeting() -> Greeting {
    Greeting { qmp: GreetingBody { version: version_info(), capabilities: [] } }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::qmp::encode::encode;

    #[test]
    fn greeting_bytes() {
        let g = String::from_utf8(encode(&greeting()).unwrap()).unwrap();
        assert_eq!(
            g,
            format!(
                "{{\"QMP\": {{\"version\": {{\"qemu\": {{\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"package\": \"xendm {}\"}}, \"capabilities\": []}}}}\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
    }
}
