//! The vCPU commands: `query-cpus-fast`, `query-hotpluggable-cpus`,
//! `device_add` of a CPU and `cpu-add`, over [`VmControl::vcpus`] and
//! [`VmControl::hot_add_vcpu`].
//!
//! What libxl 4.17 does with them (`xen-toolstack.md` 2.6, Xen
//! `tools/libs/light/libxl_domain.c` `libxl_set_vcpuonline`): `xl vcpu-set`
//! growing an HVM guest asks `query-cpus-fast` which vCPUs are there (the
//! `cpu-index` of each entry), `query-hotpluggable-cpus` for the CPU driver
//! (the `type` of entry 0; on CommandNotFound it falls back to `cpu-add
//! {"id": N}`), then sends `device_add {"id": "cpu-N", "driver": <type>,
//! "socket-id": N, "core-id": 0, "thread-id": 0}` for each vCPU to add that
//! `query-cpus-fast` did not list. So a repeated `xl vcpu-set` never adds a
//! present vCPU again, as long as `query-cpus-fast` reflects every hot-add;
//! one that is added twice anyway fails as QEMU's does. Shrinking sends no
//! QMP at all. `xl save`/`migrate` read `query-cpus-fast` too, to restart
//! the guest with `-smp` counting the present vCPUs.
//!
//! The replies follow QEMU 7.2's i386 target (`qapi/machine.json`,
//! `hw/i386/x86.c`, `hw/core/machine-qmp-cmds.c`): one socket per vCPU
//! (libxl starts QEMU with `-smp N,maxcpus=M`), so vCPU n is
//! `socket-id` n, `core-id` 0, `thread-id` 0, and QEMU's APIC ID n;
//! `query-hotpluggable-cpus` lists every possible vCPU, the highest first,
//! with `qom-path` for the present ones. The error messages are QEMU's
//! (`pc_cpu_pre_plug`, `qdev_device_add`, the old `pc_hot_add_cpu`).
//!
//! Where we differ from QEMU: `qom-path` of a hot-added vCPU is
//! `/machine/peripheral/cpu-N` whatever `id` the `device_add` gave (libxl's
//! ids are `cpu-N`; ids are not kept, and a reused id is not refused); the
//! CPU properties QEMU knows but a single-socket-per-vCPU machine never
//! needs (`node-id`, `die-id`, `cluster-id`, `apic-id`...) are refused as
//! unknown; `cpu-add`, which QEMU 7.2 no longer has, is kept for old
//! toolstacks.

use serde::Serialize;
use serde_json::{Map, Value};

use super::encode::{empty_return, generic, to_return, Reply};
use super::VmControl;

/// The QOM type of our vCPUs, as `qemu-system-i386` names its default
/// model (`qemu32`). libxl passes it back as `device_add`'s `driver`.
pub const CPU_TYPE: &str = "qemu32-i386-cpu";

/// The guest's vCPUs as QMP reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuSet {
    /// vCPUs `0..boot` were started with the guest (`-smp CPUS`).
    pub boot: u32,
    /// `-smp maxcpus`: vCPUs `0..max` may exist.
    pub max: u32,
    /// The present vCPUs (boot and hot-added), ascending.
    pub present: Vec<u32>,
}

impl VcpuSet {
    /// `count` vCPUs, all started at boot, none to add.
    pub fn fixed(count: u32) -> Self {
        Self { boot: count, max: count, present: (0..count).collect() }
    }
}

/// Why a vCPU could not be hot-added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HotAddError {
    #[error("vCPU {index} is not below maxcpus ({max})")]
    OutOfRange { index: u32, max: u32 },
    #[error("vCPU {index} is already present")]
    AlreadyPresent { index: u32 },
    #[error("this machine has no CPU hotplug (it needs ACPI)")]
    Unsupported,
}

/// The vCPU side of the VM, as the machine provides it (over its ACPI CPU
/// hotplug device); [`VmControl`]'s vCPU methods delegate to it.
pub trait VcpuControl: Send + Sync {
    /// The vCPUs now.
    fn vcpus(&self) -> VcpuSet;
    /// Hot-adds vCPU `index` and tells the guest (ACPI GPE).
    ///
    /// # Errors
    /// See [`HotAddError`]; nothing changes then.
    fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError>;
}

/// A fixed set of vCPUs with no hotplug (probe mode, `-no-acpi`).
pub struct FixedVcpus(pub u32);

impl VcpuControl for FixedVcpus {
    fn vcpus(&self) -> VcpuSet {
        VcpuSet::fixed(self.0)
    }
    fn hot_add_vcpu(&self, _index: u32) -> Result<(), HotAddError> {
        Err(HotAddError::Unsupported)
    }
}

/// The CPU properties `device_add` of a CPU accepts besides `driver` and `id`.
const CPU_PROPS: [&str; 3] = ["socket-id", "core-id", "thread-id"];

#[derive(Serialize)]
struct CpuProps {
    #[serde(rename = "core-id")]
    core_id: u32,
    #[serde(rename = "thread-id")]
    thread_id: u32,
    #[serde(rename = "socket-id")]
    socket_id: u32,
}

impl CpuProps {
    const fn of(index: u32) -> Self {
        Self { core_id: 0, thread_id: 0, socket_id: index }
    }
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
struct HotpluggableCpu {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "vcpus-count")]
    vcpus_count: u32,
    props: CpuProps,
    #[serde(rename = "qom-path", skip_serializing_if = "Option::is_none")]
    qom_path: Option<String>,
}

/// Where QOM puts vCPU `index`: boot vCPUs follow the two objects QEMU
/// creates first (`device[2]` is vCPU 0 in the lab capture); hot-added ones
/// are `device_add`'s `cpu-N`.
fn qom_path(set: &VcpuSet, index: u32) -> String {
    if index < set.boot {
        format!("/machine/unattached/device[{}]", u64::from(index) + 2)
    } else {
        format!("/machine/peripheral/cpu-{index}")
    }
}

/// `query-cpus-fast`: one entry per present vCPU. Every `thread-id` is the
/// DM's process id (we have no per-vCPU threads; libxl reads `cpu-index`).
pub(super) fn query_cpus_fast(ctl: &dyn VmControl) -> Reply {
    let set = ctl.vcpus();
    let thread_id = std::process::id();
    let cpus: Vec<CpuInfoFast> = set
        .present
        .iter()
        .map(|&i| CpuInfoFast {
            thread_id,
            props: CpuProps::of(i),
            qom_path: qom_path(&set, i),
            cpu_index: i,
            target: "i386",
        })
        .collect();
    to_return(&cpus)
}

/// `query-hotpluggable-cpus`: every possible vCPU, the highest first.
pub(super) fn query_hotpluggable_cpus(ctl: &dyn VmControl) -> Reply {
    let set = ctl.vcpus();
    let cpus: Vec<HotpluggableCpu> = (0..set.max)
        .rev()
        .map(|i| HotpluggableCpu {
            kind: CPU_TYPE,
            vcpus_count: 1,
            props: CpuProps::of(i),
            qom_path: set.present.binary_search(&i).is_ok().then(|| qom_path(&set, i)),
        })
        .collect();
    to_return(&cpus)
}

/// `device_add`: only a vCPU of [`CPU_TYPE`] can be added.
pub(super) fn device_add(args: &Map<String, Value>, ctl: &dyn VmControl) -> Reply {
    let driver = match args.get("driver") {
        None => return generic("Parameter 'driver' is missing"),
        Some(Value::String(d)) => d.as_str(),
        Some(_) => return generic("Invalid parameter type for 'driver', expected: string"),
    };
    if driver != CPU_TYPE {
        return generic(format!("'{}' is not a valid device model name", shorten(driver)));
    }
    match args.get("id") {
        None => {}
        Some(Value::String(id)) if is_qemu_id(id) => {}
        Some(Value::String(_)) => return generic("Parameter 'id' expects an identifier"),
        Some(_) => return generic("Invalid parameter type for 'id', expected: string"),
    }
    if let Some(unknown) =
        args.keys().find(|k| !matches!(k.as_str(), "driver" | "id") && !CPU_PROPS.contains(&k.as_str()))
    {
        return generic(format!("Property '{CPU_TYPE}.{}' not found", shorten(unknown)));
    }
    let set = ctl.vcpus();
    let [socket, core, thread] = match CPU_PROPS.map(|p| cpu_prop(args, p)) {
        [Ok(s), Ok(c), Ok(t)] => [s, c, t],
        [Err(e), _, _] | [_, Err(e), _] | [_, _, Err(e)] => return generic(e),
    };
    let Some(socket) = socket else { return generic("CPU socket-id is not set") };
    let Some(core) = core else { return generic("CPU core-id is not set") };
    let Some(thread) = thread else { return generic("CPU thread-id is not set") };
    let last = set.max.saturating_sub(1);
    if socket >= set.max {
        return generic(format!("Invalid CPU socket-id: {socket} must be in range 0:{last}"));
    }
    if core != 0 {
        return generic(format!("Invalid CPU core-id: {core} must be in range 0:0"));
    }
    if thread != 0 {
        return generic(format!("Invalid CPU thread-id: {thread} must be in range 0:0"));
    }
    match ctl.hot_add_vcpu(socket) {
        Ok(()) => empty_return(),
        Err(HotAddError::AlreadyPresent { index }) => generic(format!("CPU[{index}] with APIC ID {index} exists")),
        Err(HotAddError::OutOfRange { index, max }) => {
            generic(format!("Invalid CPU socket-id: {index} must be in range 0:{}", max.saturating_sub(1)))
        }
        Err(e @ HotAddError::Unsupported) => generic(format!("CPU hotplug is not available: {e}")),
    }
}

/// `cpu-add {"id": N}`, the pre-2.7 form libxl falls back to.
pub(super) fn cpu_add(args: &Map<String, Value>, ctl: &dyn VmControl) -> Reply {
    let id = match args.get("id") {
        None => return generic("Parameter 'id' is missing"),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i < 0 => return generic(format!("Invalid CPU id: {i}")),
            (_, Some(u)) => u,
            _ => return generic("Invalid parameter type for 'id', expected: integer"),
        },
        Some(_) => return generic("Invalid parameter type for 'id', expected: integer"),
    };
    let max = ctl.vcpus().max;
    let Ok(index) = u32::try_from(id) else {
        return generic(format!("Unable to add CPU: {id}, max allowed: {max}"));
    };
    match ctl.hot_add_vcpu(index) {
        Ok(()) => empty_return(),
        Err(HotAddError::OutOfRange { max, .. }) => generic(format!("Unable to add CPU: {id}, max allowed: {max}")),
        Err(HotAddError::AlreadyPresent { .. }) => generic(format!("Unable to add CPU: {id}, it already exists")),
        Err(e @ HotAddError::Unsupported) => generic(format!("CPU hotplug is not available: {e}")),
    }
}

/// A CPU property: `Ok(None)` when absent or negative (QEMU's "not set",
/// -1 being its default), `Err` with QEMU's message when not an int32.
fn cpu_prop(args: &Map<String, Value>, name: &str) -> Result<Option<u32>, String> {
    match args.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64().map(i32::try_from) {
            Some(Ok(v)) => Ok(u32::try_from(v).ok()),
            Some(Err(_)) => Err(format!("Parameter '{name}' expects int32")),
            None if n.is_u64() => Err(format!("Parameter '{name}' expects int32")),
            None => Err(format!("Invalid parameter type for '{name}', expected: integer")),
        },
        Some(_) => Err(format!("Invalid parameter type for '{name}', expected: integer")),
    }
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
fn is_qemu_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// At most 64 characters of a client's string, for an error message.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", s.get(..cut).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::qmp::commands::dispatch;
    use crate::control::qmp::{ChardevInfo, RunState};
    use std::sync::Mutex;

    /// A VM whose vCPU set changes on hot-add, recording every request.
    struct Vm {
        set: Mutex<VcpuSet>,
        hotplug: bool,
        adds: Mutex<Vec<u32>>,
    }

    impl Vm {
        fn new(boot: u32, max: u32) -> Self {
            Self {
                set: Mutex::new(VcpuSet { boot, max, present: (0..boot).collect() }),
                hotplug: true,
                adds: Mutex::new(Vec::new()),
            }
        }
        fn adds(&self) -> Vec<u32> {
            self.adds.lock().unwrap().clone()
        }
    }

    impl VmControl for Vm {
        fn status(&self) -> RunState {
            RunState::Running
        }
        fn cont(&self) -> Result<(), String> {
            Ok(())
        }
        fn stop(&self) -> Result<(), String> {
            Ok(())
        }
        fn chardevs(&self) -> Vec<ChardevInfo> {
            Vec::new()
        }
        fn vcpus(&self) -> VcpuSet {
            self.set.lock().unwrap().clone()
        }
        fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
            self.adds.lock().unwrap().push(index);
            if !self.hotplug {
                return Err(HotAddError::Unsupported);
            }
            let mut set = self.set.lock().unwrap();
            if index >= set.max {
                return Err(HotAddError::OutOfRange { index, max: set.max });
            }
            match set.present.binary_search(&index) {
                Ok(_) => Err(HotAddError::AlreadyPresent { index }),
                Err(at) => {
                    set.present.insert(at, index);
                    Ok(())
                }
            }
        }
        fn save_device_state(&self, _live: bool) -> Result<Vec<u8>, String> {
            Err("no devices".into())
        }
        fn set_dirty_log(&self, _enable: bool) -> Result<(), String> {
            Ok(())
        }
        fn quit(&self) {}
    }

    /// Runs `name` with `args` (a JSON object) and returns the reply as
    /// `Ok(return value)` or `Err((class, desc))`.
    fn run(vm: &Vm, name: &str, args: Value) -> Result<Value, (String, String)> {
        let Value::Object(args) = args else { panic!("args must be an object") };
        match dispatch(name, &args, vm, &mut crate::control::qmp::fds::Fds::default()).reply {
            Reply::Return(bytes) => Ok(serde_json::from_slice(&bytes).unwrap()),
            Reply::Error { class, desc } => Err((class.to_owned(), desc)),
        }
    }

    fn err(vm: &Vm, name: &str, args: Value) -> String {
        let (class, desc) = run(vm, name, args).unwrap_err();
        assert_eq!(class, "GenericError", "{desc}");
        desc
    }

    fn cpu_indices(vm: &Vm) -> Vec<u64> {
        let r = run(vm, "query-cpus-fast", serde_json::json!({})).unwrap();
        r.as_array().unwrap().iter().map(|c| c["cpu-index"].as_u64().unwrap()).collect()
    }

    fn libxl_add(n: u32) -> Value {
        serde_json::json!({"id": format!("cpu-{n}"), "driver": CPU_TYPE, "socket-id": n, "core-id": 0, "thread-id": 0})
    }

    #[test]
    fn hotpluggable_cpus_list_every_possible_vcpu_highest_first() {
        let vm = Vm::new(2, 4);
        let r = run(&vm, "query-hotpluggable-cpus", serde_json::json!({})).unwrap();
        let want = serde_json::json!([
            {"type": CPU_TYPE, "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 3}},
            {"type": CPU_TYPE, "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 2}},
            {"type": CPU_TYPE, "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 1},
             "qom-path": "/machine/unattached/device[3]"},
            {"type": CPU_TYPE, "vcpus-count": 1, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0},
             "qom-path": "/machine/unattached/device[2]"},
        ]);
        assert_eq!(r, want);
        // A 1-vCPU guest still gets a non-empty array (libxl reads [0].type).
        let one = run(&Vm::new(1, 1), "query-hotpluggable-cpus", serde_json::json!({})).unwrap();
        assert_eq!(one.as_array().unwrap().len(), 1);
        assert_eq!(one[0]["type"], CPU_TYPE);
    }

    /// `xl vcpu-set 4` on a `vcpus=2, maxvcpus=4` guest, then again.
    #[test]
    fn the_libxl_vcpu_set_sequence_grows_the_guest_and_a_repeat_adds_nothing() {
        let vm = Vm::new(2, 4);
        assert_eq!(cpu_indices(&vm), vec![0, 1]);
        let driver = run(&vm, "query-hotpluggable-cpus", serde_json::json!({})).unwrap()[0]["type"].clone();
        assert_eq!(driver, CPU_TYPE);
        for n in [2, 3] {
            assert_eq!(run(&vm, "device_add", libxl_add(n)).unwrap(), serde_json::json!({}));
        }
        assert_eq!(vm.adds(), vec![2, 3]);
        assert_eq!(cpu_indices(&vm), vec![0, 1, 2, 3], "query-cpus-fast sees the hot-added vCPUs");
        let r = run(&vm, "query-cpus-fast", serde_json::json!({})).unwrap();
        assert_eq!(r[2]["qom-path"], "/machine/peripheral/cpu-2");
        assert_eq!(r[2]["props"], serde_json::json!({"core-id": 0, "thread-id": 0, "socket-id": 2}));
        let hp = run(&vm, "query-hotpluggable-cpus", serde_json::json!({})).unwrap();
        assert_eq!(hp[0]["qom-path"], "/machine/peripheral/cpu-3");
        // libxl computes the vCPUs to add from query-cpus-fast: none left.
        // Adding one again anyway fails as in QEMU.
        assert_eq!(err(&vm, "device_add", libxl_add(3)), "CPU[3] with APIC ID 3 exists");
        assert_eq!(err(&vm, "device_add", libxl_add(0)), "CPU[0] with APIC ID 0 exists");
        assert_eq!(err(&vm, "device_add", libxl_add(4)), "Invalid CPU socket-id: 4 must be in range 0:3");
        assert_eq!(vm.adds(), vec![2, 3, 3, 0], "range is checked before the VM is asked");
    }

    #[test]
    fn device_add_refuses_other_drivers_and_bad_arguments() {
        let vm = Vm::new(1, 8);
        let add = |mut extra: Value| {
            let mut base = libxl_add(1);
            base.as_object_mut().unwrap().append(extra.as_object_mut().unwrap());
            base
        };
        let cases: Vec<(Value, &str)> = vec![
            (serde_json::json!({"id": "cpu-1", "socket-id": 1}), "Parameter 'driver' is missing"),
            (add(serde_json::json!({"driver": 7})), "Invalid parameter type for 'driver', expected: string"),
            (add(serde_json::json!({"driver": "rtl8139"})), "'rtl8139' is not a valid device model name"),
            (
                add(serde_json::json!({"driver": "qemu64-x86_64-cpu"})),
                "'qemu64-x86_64-cpu' is not a valid device model name",
            ),
            (add(serde_json::json!({"id": 5})), "Invalid parameter type for 'id', expected: string"),
            (add(serde_json::json!({"id": "1cpu"})), "Parameter 'id' expects an identifier"),
            (add(serde_json::json!({"id": ""})), "Parameter 'id' expects an identifier"),
            (add(serde_json::json!({"id": "cpu 1"})), "Parameter 'id' expects an identifier"),
            (add(serde_json::json!({"socket-id": "1"})), "Invalid parameter type for 'socket-id', expected: integer"),
            (add(serde_json::json!({"socket-id": 1.5})), "Invalid parameter type for 'socket-id', expected: integer"),
            (add(serde_json::json!({"socket-id": null})), "Invalid parameter type for 'socket-id', expected: integer"),
            (add(serde_json::json!({"socket-id": [1]})), "Invalid parameter type for 'socket-id', expected: integer"),
            (add(serde_json::json!({"socket-id": 1u64 << 31})), "Parameter 'socket-id' expects int32"),
            (add(serde_json::json!({"socket-id": u64::MAX})), "Parameter 'socket-id' expects int32"),
            (add(serde_json::json!({"socket-id": i64::MIN})), "Parameter 'socket-id' expects int32"),
            (add(serde_json::json!({"socket-id": -1})), "CPU socket-id is not set"),
            (add(serde_json::json!({"socket-id": 8})), "Invalid CPU socket-id: 8 must be in range 0:7"),
            (add(serde_json::json!({"socket-id": i32::MAX})), "Invalid CPU socket-id: 2147483647 must be in range 0:7"),
            (add(serde_json::json!({"core-id": 1})), "Invalid CPU core-id: 1 must be in range 0:0"),
            (add(serde_json::json!({"core-id": -1})), "CPU core-id is not set"),
            (add(serde_json::json!({"thread-id": 2})), "Invalid CPU thread-id: 2 must be in range 0:0"),
            (add(serde_json::json!({"thread-id": true})), "Invalid parameter type for 'thread-id', expected: integer"),
            (add(serde_json::json!({"node-id": 0})), "Property 'qemu32-i386-cpu.node-id' not found"),
            (serde_json::json!({"driver": CPU_TYPE}), "CPU socket-id is not set"),
            (serde_json::json!({"driver": CPU_TYPE, "socket-id": 1}), "CPU core-id is not set"),
            (serde_json::json!({"driver": CPU_TYPE, "socket-id": 1, "core-id": 0}), "CPU thread-id is not set"),
        ];
        for (args, want) in cases {
            assert_eq!(err(&vm, "device_add", args.clone()), want, "{args}");
        }
        assert!(vm.adds().is_empty(), "no bad request reached the VM");
        // A huge driver name is not echoed whole.
        let long = "x".repeat(100_000);
        let e = err(&vm, "device_add", serde_json::json!({"driver": long}));
        assert!(e.len() < 200, "{e}");
        // id is optional, as in QEMU.
        let ok = serde_json::json!({"driver": CPU_TYPE, "socket-id": 5, "core-id": 0, "thread-id": 0});
        assert_eq!(run(&vm, "device_add", ok).unwrap(), serde_json::json!({}));
        assert_eq!(cpu_indices(&vm), vec![0, 5]);
    }

    #[test]
    fn cpu_add_is_the_old_fallback() {
        let vm = Vm::new(1, 3);
        assert_eq!(run(&vm, "cpu-add", serde_json::json!({"id": 2})).unwrap(), serde_json::json!({}));
        assert_eq!(cpu_indices(&vm), vec![0, 2]);
        let cases: Vec<(Value, &str)> = vec![
            (serde_json::json!({}), "Parameter 'id' is missing"),
            (serde_json::json!({"id": "2"}), "Invalid parameter type for 'id', expected: integer"),
            (serde_json::json!({"id": 1.0}), "Invalid parameter type for 'id', expected: integer"),
            (serde_json::json!({"id": -1}), "Invalid CPU id: -1"),
            (serde_json::json!({"id": 2}), "Unable to add CPU: 2, it already exists"),
            (serde_json::json!({"id": 3}), "Unable to add CPU: 3, max allowed: 3"),
            (serde_json::json!({"id": u64::MAX}), "Unable to add CPU: 18446744073709551615, max allowed: 3"),
        ];
        for (args, want) in cases {
            assert_eq!(err(&vm, "cpu-add", args.clone()), want, "{args}");
        }
        let (class, desc) = run(&vm, "cpu-add", serde_json::json!({"id": 1, "x": 1})).unwrap_err();
        assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "Parameter 'x' is unexpected"));
        assert_eq!(vm.adds(), vec![2, 2, 3]);
    }

    #[test]
    fn without_cpu_hotplug_adds_fail_and_the_set_stays() {
        let vm = Vm { hotplug: false, ..Vm::new(1, 2) };
        assert_eq!(err(&vm, "device_add", libxl_add(2)), "Invalid CPU socket-id: 2 must be in range 0:1");
        assert_eq!(
            err(&vm, "device_add", libxl_add(1)),
            "CPU hotplug is not available: this machine has no CPU hotplug (it needs ACPI)"
        );
        assert!(err(&vm, "cpu-add", serde_json::json!({"id": 1})).starts_with("CPU hotplug is not available"));
        assert_eq!(cpu_indices(&vm), vec![0]);
        let fixed = FixedVcpus(3);
        assert_eq!(fixed.vcpus(), VcpuSet { boot: 3, max: 3, present: vec![0, 1, 2] });
        assert_eq!(fixed.hot_add_vcpu(3), Err(HotAddError::Unsupported));
    }

    #[test]
    fn shorten_keeps_short_strings_and_cuts_on_a_char_boundary() {
        assert_eq!(shorten("abc"), "abc");
        let s = "é".repeat(100);
        let cut = shorten(&s);
        assert!(cut.ends_with("...") && cut.chars().count() == 67, "{cut}");
        assert!(is_qemu_id("cpu-1") && is_qemu_id("a._-9") && !is_qemu_id("-a") && !is_qemu_id("é"));
    }
}
