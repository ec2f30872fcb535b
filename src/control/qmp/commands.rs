//! The QMP commands libxl uses, with their replies in QEMU's member order
//! (QEMU `qapi/*.json`: `query-status`, `query-cpus-fast`, `query-version`,
//! ...), and the greeting.

use serde::Serialize;
use serde_json::{Map, Value};

use super::encode::{empty_return, generic, to_return, Reply};
use super::{RunState, VmControl, QEMU_VERSION};

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
    if let Some(unexpected) = args.keys().find(|k| !command.params.contains(&k.as_str())) {
        return generic(format!("Parameter '{unexpected}' is unexpected"));
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
        "query-cpus-fast" => {
            let thread_id = std::process::id();
            let cpus: Vec<CpuInfoFast> = (0..ctl.vcpus())
                .map(|i| CpuInfoFast {
                    thread_id,
                    props: CpuProps { core_id: 0, thread_id: 0, socket_id: i },
                    qom_path: format!("/machine/unattached/device[{}]", u64::from(i) + 2),
                    cpu_index: i,
                    target: "i386",
                })
                .collect();
            to_return(&cpus)
        }
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
    params: &'static [&'static str],
}

const COMMANDS: &[Command] = &[
    Command { name: "qmp_capabilities", params: &["enable"] },
    Command { name: "query-status", params: &[] },
    Command { name: "cont", params: &[] },
    Command { name: "stop", params: &[] },
    Command { name: "query-chardev", params: &[] },
    Command { name: "query-vnc", params: &[] },
    Command { name: "query-cpus-fast", params: &[] },
    Command { name: "query-version", params: &[] },
    Command { name: "query-commands", params: &[] },
    Command { name: "query-command-line-options", params: &["option"] },
    Command { name: "quit", params: &[] },
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
struct CpuProps {
    #[serde(rename = "core-id")]
    core_id: u32,
    #[serde(rename = "thread-id")]
    thread_id: u32,
    #[serde(rename = "socket-id")]
    socket_id: u32,
}

#[derive(Serialize)]
struct CpuInfoFast {
    #[serde(rename = "thread-id")]
    thread_id: u32,
    props: CpuProps,
    #[serde(rename = "qom-path")]
    qom_path: String,
    #[serde(rename = "cpu-index")]
    cpu_index: u32,
    target: &'static str,
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
