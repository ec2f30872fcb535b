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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tracing::info;
use xendm_devices::sync::lock;

use super::control::{RunStateEntry, RUN_STATE_ID};
use crate::machine::pc::StatefulDevice;
use crate::machine::state::blob_len;
use crate::machine::Machine;

/// The largest blob read (a real one is a few KiB).
pub const MAX_BLOB: u64 = 16 << 20;

/// Reads the whole device state from the `-incoming` descriptor: a file to
/// its end; anything else (a stubdomain's restore console, a pipe) up to
/// where the blob's own lengths say it ends ([`read_stream`]).
///
/// # Errors
/// A read error, or more than [`MAX_BLOB`] bytes.
pub fn read(fd: OwnedFd) -> Result<Vec<u8>> {
    let regular = rustix::fs::fstat(&fd)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile);
    if !regular {
        return read_stream(fd.as_fd(), STREAM_TIMEOUT).context("-incoming: reading the saved device state");
    }
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

/// Silence after a whole blob that ends a stream read.
pub const QUIET: Duration = Duration::from_millis(500);
/// Longest wait for the first whole blob on a stream (libxl gives a stub
/// 30 s to start).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads a blob from a channel that may never end (a stub's restore
/// console): bytes until they hold a whole blob ([`blob_len`]), then as long
/// as more arrive within [`QUIET`], a later whole blob replacing the earlier
/// (libxl appends each save of a stub's guest to one file). `timeout`
/// bounds the wait for the first.
///
/// # Errors
/// No whole blob within `timeout` or before the end, something that is not
/// a blob, or more than [`MAX_BLOB`] bytes.
pub fn read_stream(fd: BorrowedFd<'_>, timeout: Duration) -> Result<Vec<u8>> {
    let start = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    let mut latest: Option<Vec<u8>> = None;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        while let Some(len) = blob_len(&buf)? {
            latest = Some(buf.drain(..len).collect());
        }
        let wait = match &latest {
            Some(_) => QUIET,
            None => match timeout.checked_sub(start.elapsed()) {
                Some(left) => left,
                None => bail!("no whole device state within {}s", timeout.as_secs()),
            },
        };
        let mut fds = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        let ts = rustix::event::Timespec::try_from(wait).unwrap_or(rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 });
        let ready = match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e).context("poll"),
        };
        if ready == 0 {
            if let Some(blob) = latest {
                if !buf.is_empty() {
                    tracing::warn!(bytes = buf.len(), "an incomplete device state after the last whole one is ignored");
                }
                return Ok(blob);
            }
            continue;
        }
        let n = match rustix::io::read(fd, &mut chunk) {
            Ok(0) => match latest {
                Some(blob) => return Ok(blob),
                None => bail!("the channel ended before a whole device state ({} bytes)", buf.len()),
            },
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => return Err(e).context("read"),
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() as u64 > MAX_BLOB {
            bail!("more than {MAX_BLOB} bytes without a whole device state");
        }
    }
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
        // A file larger than any blob.
        let mut big = tempfile::tempfile().unwrap();
        big.write_all(&vec![0u8; (MAX_BLOB + 1) as usize]).unwrap();
        let fd = big.as_fd().try_clone_to_owned().unwrap();
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).unwrap();
        let e = read(fd).unwrap_err().to_string();
        assert!(e.contains("larger than 16777216 bytes"), "{e}");
        // A stream of something else.
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"QEVM\0\0\0\x03").unwrap();
        let e = format!("{:#}", read(r.into()).unwrap_err());
        assert!(e.contains("QEMU's device state"), "{e}");
    }

    /// A channel without EOF (the write end stays open): the blob arrives
    /// in pieces, the later of two blobs wins, silence ends the read.
    #[test]
    fn a_stream_gives_its_last_whole_blob() {
        let k = kernel();
        let m = machine(&["-kernel", &k]);
        let one = m.save_devices().unwrap();
        let mut n = machine(&["-kernel", &k]);
        io(&mut n, 0x3ff, Some(0x77));
        let two = n.save_devices().unwrap();
        let (r, mut w) = std::io::pipe().unwrap();
        let (a, b) = (one.clone(), two.clone());
        let writer = std::thread::spawn(move || {
            w.write_all(&a[..10]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(&a[10..]).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(&b).unwrap();
            std::thread::sleep(QUIET * 3);
            drop(w);
        });
        assert_eq!(read_stream(r.as_fd(), Duration::from_secs(5)).unwrap(), two);
        writer.join().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let e = read_stream(r.as_fd(), Duration::from_millis(100)).unwrap_err().to_string();
        assert!(e.contains("no whole device state within 0s"), "{e}");
        drop(w);
    }
}
