//! The QMP commands libxl uses, with their replies in QEMU's member order
//! (QEMU `qapi/*.json`: `query-status`, `query-version`, ...), and the
//! greeting. The vCPU commands are in `vcpus.rs`.

use serde::Serialize;
use serde_json::{Map, Value};

use super::encode::{empty_return, generic, to_return, Reply};
use super::{vcpus, RunState, VmControl, QEMU_VERSION};

/// A command's reply, and whether it asks the process to quit.
pub(super) struct Outcome {
    pub(super) reply: Reply,
    /// `quit` was executed: call [`VmControl::quit`] once the reply is out.
    pub(super) quit: bool,
}

/// Runs `name` for a session that has negotiated capabilities.
pub(super) fn dispatch(name: &str, args: &Map<String, Value>, ctl: &dyn VmControl) -> Outcome {
    let mut quit = false;
    let reply = reply_to(name, args, ctl, &mut quit);
    Outcome { reply, quit }
}

/// The reply to `name`; sets `quit` for the `quit` command.
fn reply_to(name: &str, args: &Map<String, Value>, ctl: &dyn VmControl, quit: &mut bool) -> Reply {
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
    only("query-version", &[]),
    only("query-commands", &[]),
    only("query-command-line-options", &["option"]),
    only("quit", &[]),
];

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
