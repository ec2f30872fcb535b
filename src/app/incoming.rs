//! `-incoming fd:N`: a guest restored from `xl restore`, `xl migrate` or a
//! soft reset (`xen-toolstack.md` 2.3). The descriptor is the resume file
//! libxl extracted from its stream: exactly the blob an earlier xendm wrote
//! with `xen-save-devices-state` (`src/machine/state.rs`,
//! `docs/save-restore.md`).
//!
//! The blob is read whole (at most [`MAX_BLOB`] bytes) and checked before
//! any device changes; a blob that is not xendm's, is truncated, corrupt
//! or from a newer xendm ends the start-up with the reason, so libxl's
//! restore fails and the guest is never resumed with wrong devices. The
//! kernel and initrd of `-kernel`/`-initrd` are neither read nor needed, and
//! nothing is written into guest memory: Xen restored it.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use tracing::info;
use xendm_devices::sync::lock;

use super::control::{RunStateEntry, RUN_STATE_ID};
use crate::machine::pc::StatefulDevice;
use crate::machine::Machine;

/// The largest blob read (a real one is a few KiB).
pub const MAX_BLOB: u64 = 16 << 20;

/// Reads the whole device state from the `-incoming` descriptor.
///
/// # Errors
/// A read error, or more than [`MAX_BLOB`] bytes.
pub fn read(fd: OwnedFd) -> Result<Vec<u8>> {
    let mut blob = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_BLOB + 1)
        .read_to_end(&mut blob)
        .context("-incoming: reading the saved device state")?;
    if blob.len() as u64 > MAX_BLOB {
        bail!("-incoming: the saved device state is larger than {MAX_BLOB} bytes; it is not one xendm wrote");
    }
    Ok(blob)
}

/// Restores every device of `m` from `blob`, then lets the bus re-read the
/// PCI windows the guest had programmed. The range changes that re-reading
/// queues are dropped: the ioreq server, created next, claims every range
/// the bus decodes now. Returns the run state the guest was saved in.
///
/// # Errors
/// Why the blob is refused (no device is changed then).
pub fn restore(m: &mut Machine, blob: &[u8]) -> Result<String> {
    let run = Arc::new(Mutex::new(RunStateEntry::default()));
    let mut entries = m.devices.state_entries();
    let run_entry: StatefulDevice = run.clone();
    entries.push((RUN_STATE_ID.to_string(), run_entry));
    crate::machine::state::restore_entries(&entries, blob)
        .context("-incoming: the saved device state cannot be restored; the guest is not resumed")?;
    m.engine.bus_mut().refresh_pci_regions();
    m.engine.bus_mut().take_changes();
    let status = lock(&run).status.clone();
    info!(bytes = blob.len(), devices = entries.len() - 1, saved_status = %status, "device state restored (-incoming)");
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::control::Control;
    use crate::control::qmp::VmControl;
    use crate::ioreq::abi::{Ioreq, IoreqKind};
    use crate::ioreq::engine::NoHooks;
    use crate::machine::dirty::{DirtyLog, DirtySink};
    use crate::machine::spec::MachineSpec;
    use crate::machine::{build, MachineBackends};
    use std::io::Write;
    use std::os::fd::AsFd;
    use tokio::sync::Notify;
    use xendm_devices::hv::FakeHypervisor;
    use xendm_devices::mem::TestMemory;
    use xendm_devices::AnyDeviceState;

    struct NoSink;
    impl DirtySink for NoSink {
        fn modified(&self, _: u64, _: u32) -> Result<(), String> {
            Ok(())
        }
    }

    fn machine(args: &[&str]) -> Machine {
        let mut all = vec!["-xen-domid", "3", "-m", "32", "-serial", "null"];
        all.extend_from_slice(args);
        let config = crate::cli::run_config(&all);
        let backends = MachineBackends {
            hv: Arc::new(FakeHypervisor::new()),
            mem: Arc::new(TestMemory::pc(32 << 20).unwrap()),
            hooks: Box::new(NoHooks),
            serial_sinks: Vec::new(),
        };
        build(MachineSpec::from_config(&config).unwrap(), backends).unwrap()
    }

    fn io(m: &mut Machine, port: u64, write: Option<u64>) -> u64 {
        let req = Ioreq {
            addr: port,
            data: write.unwrap_or(0),
            count: 1,
            size: 1,
            data_is_ptr: false,
            is_read: write.is_none(),
            df: false,
            kind: IoreqKind::Pio,
        };
        m.engine.handle(0, &req)
    }

    fn kernel() -> String {
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage").to_string()
    }

    /// The whole path: QMP's save on a running machine, the blob through a
    /// file as libxl passes it, `-incoming` into a new machine whose
    /// `-kernel` no longer exists.
    #[test]
    fn a_saved_machine_comes_back_through_incoming_without_its_kernel() {
        let k = kernel();
        let mut a = machine(&["-kernel", &k]);
        io(&mut a, 0x3ff, Some(0x5a)); // COM1 scratch
        io(&mut a, 0x510, Some(0x19)); // fw_cfg: the file directory, mid-read
        io(&mut a, 0x511, None);
        let ctl = Control::new(false, None, Vec::new(), 1, Arc::new(Notify::new()));
        ctl.set_devices(a.devices.state_entries(), Arc::new(DirtyLog::new(Box::new(NoSink))));
        let blob = ctl.save_device_state(false).unwrap();

        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&blob).unwrap();
        let fd = file.as_fd().try_clone_to_owned().unwrap();
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).unwrap();
        let read_back = read(fd).unwrap();
        assert_eq!(read_back, blob);

        let mut b = machine(&["-kernel", "/gone/vmlinuz", "-initrd", "/gone/initrd.img", "-incoming", "fd:9"]);
        assert!(b.boot.is_none(), "the kernel is not planned");
        assert_eq!(restore(&mut b, &read_back).unwrap(), "running");
        assert_eq!(io(&mut b, 0x3ff, None), 0x5a);
        // fw_cfg's selection and offset came back (the file directory
        // exists without the kernel's items too).
        let fw = |m: &Machine| xendm_devices::sync::lock(&**m.devices.fw_cfg.as_ref().unwrap()).save_payload().unwrap();
        assert_eq!(fw(&b), fw(&a));
        assert!(String::from_utf8(fw(&b)).unwrap().contains("\"cur_offset\":1"), "mid-read");
    }

    #[test]
    fn bad_blobs_stop_the_start_with_the_reason() {
        let mut b = machine(&["-incoming", "fd:9"]);
        let e = format!("{:#}", restore(&mut b, b"QEVM\0\0\0\x03rest").unwrap_err());
        assert!(e.contains("cannot be restored; the guest is not resumed") && e.contains("QEVM"), "{e}");
        // A blob of the devices only (no run-state entry) is refused too.
        let devices_only = b.save_devices().unwrap();
        let e = format!("{:#}", restore(&mut b, &devices_only).unwrap_err());
        assert!(e.contains("lacks \"run-state\""), "{e}");
        let (r, mut w) = std::io::pipe().unwrap();
        std::thread::spawn(move || {
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..17 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let e = read(r.into()).unwrap_err().to_string();
        assert!(e.contains("larger than 16777216 bytes"), "{e}");
    }
}
