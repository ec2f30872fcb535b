//! The PV backends qemu-xen serves and xendm does not: making their absence
//! harmless.
//!
//! libxl adds a PV keyboard (`vkbd`) to every HVM guest and leaves its
//! backend to the device model (`backend/vkbd/<domid>/<dev>`, backend domain
//! 0; `xen-lab.md` 4.2). qemu-xen moves it to InitWait and then Connected.
//! xendm has no keyboard to offer. If nobody answers, a Linux guest that
//! loads `xen-kbdfront` (udev does, on the `xen:vkbd` modalias) waits for the
//! device to connect when the driver registers (`wait_for_devices` in Linux's
//! `drivers/xen/xenbus/xenbus_probe_frontend.c`; up to 30 s for such
//! "non-essential" devices in Linux 6.1). A device without a driver is never
//! waited for, which is why a guest without the module sees no difference.
//!
//! The same holds for disks whose backend libxl leaves to the device model:
//! `backend/qdisk/<domid>/<dev>` (QEMU's xen-block backend: image formats
//! qcow/qcow2/vhd/qed, `backendtype=qdisk`, every HVM CD-ROM;
//! `xen-toolstack.md` 3.5). libxl writes them, state Initialising, before it
//! starts the device model and does not wait for QEMU backends. blkfront is
//! an essential driver: a guest waits up to 300 s at boot for a disk whose
//! backend never answers (`boot_wait_for_devices`, HVM once the emulated
//! devices were unplugged).
//!
//! So xendm marks each such backend it finds still `Initialising` (1) as
//! `Closed` (6), with a log line (for a qdisk one naming the disk from its
//! `dev`, `params`, `type` and `device-type` nodes, and the xl.cfg fix).
//! That is all the frontend needs: its watch on the backend's state sees
//! Closed and the driver closes its own end (blkfront's `blkback_changed`
//! -> `blkfront_closing` -> `xenbus_frontend_closed`; xen-kbdfront and
//! netfront alike), and a frontend in Closed (6, above Connected) no longer
//! counts as connecting in `is_device_connecting`, so boot goes on at once.
//! The frontend's own nodes belong to the guest and are left alone. libxl
//! removes the backend nodes when the domain is destroyed, as with qemu-xen.
//!
//! Each pass reads one directory (at most one xenstore payload, 4096 bytes)
//! and looks at no more than [`MAX_DEVICES_PER_PASS`] of its entries; node
//! values are cut at [`MAX_SHOWN`] bytes in log lines; a burst of watch
//! events makes one pass.

use std::sync::Arc;

use crate::xen::xenstore::{XenStore, XsError};

/// `XenbusStateInitialising`.
pub const STATE_INITIALISING: &str = "1";
/// `XenbusStateClosed`.
pub const STATE_CLOSED: &str = "6";
/// The most entries of one backend directory looked at in one pass (libxl
/// gives a guest a few disks; the rest of a larger directory is left, with
/// a warning).
pub const MAX_DEVICES_PER_PASS: usize = 64;
/// The longest node value quoted in a log line.
pub const MAX_SHOWN: usize = 160;

/// A PV backend kind xendm does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// The PV keyboard.
    Vkbd,
    /// QEMU's disk backend.
    Qdisk,
}

impl Unserved {
    /// The backend directory name.
    pub fn kind(self) -> &'static str {
        match self {
            Unserved::Vkbd => "vkbd",
            Unserved::Qdisk => "qdisk",
        }
    }
}

/// The backend directory of `kind` devices of guest `domid` served by dom0.
pub fn backend_dir(kind: &str, domid: u32) -> String {
    format!("/local/domain/0/backend/{kind}/{domid}")
}

/// Closes every backend of `what` for `domid` still Initialising, with one
/// log line each (a qdisk one names the disk and the fix). Returns the
/// device ids it closed.
///
/// # Errors
/// A xenstore error other than the directory not existing.
pub fn close(xs: &XenStore, what: Unserved, domid: u32) -> Result<Vec<String>, XsError> {
    match what {
        Unserved::Vkbd => close_initialising(xs, "vkbd", domid, &mut |_, _| {
            "xendm serves no PV vkbd: marked its backend Closed so the guest does not wait for it".to_string()
        }),
        Unserved::Qdisk => close_initialising(xs, "qdisk", domid, &mut |xs, dir| qdisk_message(xs, dir)),
    }
}

/// The pass both kinds share: `message` says, for the device directory
/// given, what the log line is.
fn close_initialising(
    xs: &XenStore,
    kind: &str,
    domid: u32,
    message: &mut dyn FnMut(&XenStore, &str) -> String,
) -> Result<Vec<String>, XsError> {
    let dir = backend_dir(kind, domid);
    let devs = match xs.directory(&dir) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if devs.len() > MAX_DEVICES_PER_PASS {
        tracing::warn!("{dir} has {} entries; only the first {MAX_DEVICES_PER_PASS} are looked at", devs.len());
    }
    let mut closed = Vec::new();
    for dev in devs.into_iter().take(MAX_DEVICES_PER_PASS) {
        let state = format!("{dir}/{dev}/state");
        match xs.read(&state) {
            Ok(s) if s == STATE_INITIALISING => {
                xs.write(&state, STATE_CLOSED)?;
                let line = message(xs, &format!("{dir}/{dev}"));
                tracing::info!(path = %state, "{line}");
                closed.push(dev);
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(closed)
}

/// A node's value for a log line: cut at [`MAX_SHOWN`] bytes, control
/// characters escaped; `?` if it cannot be read.
fn shown(xs: &XenStore, path: &str) -> String {
    let value = xs.read_bytes(path).unwrap_or_else(|_| b"?".to_vec());
    let text = String::from_utf8_lossy(value.get(..MAX_SHOWN).unwrap_or(&value)).into_owned();
    let mut out: String = text.chars().flat_map(char::escape_debug).collect();
    if value.len() > MAX_SHOWN {
        out.push_str("...");
    }
    out
}

/// The log line of one closed qdisk backend at `dir`.
fn qdisk_message(xs: &XenStore, dir: &str) -> String {
    let vdev = shown(xs, &format!("{dir}/dev"));
    let params = shown(xs, &format!("{dir}/params"));
    let ty = shown(xs, &format!("{dir}/type"));
    let device_type = shown(xs, &format!("{dir}/device-type"));
    let fix = if device_type == "cdrom" {
        "CD-ROMs are not supported by xendm: remove the devtype=cdrom disk from the xl config, or give the image \
         as a read-only PV disk (format=raw,vdev=xvde or later,access=ro,target=...)"
    } else {
        "use format=raw with a raw image file or a block device, so libxl picks blkback, and no backendtype=qdisk \
         (convert an image: qemu-img convert -O raw)"
    };
    format!(
        "disk {vdev} (params {params}, type {ty}, device-type {device_type}) needs the qdisk backend (QEMU's), which \
         xendm does not serve: marked its backend Closed so the guest does not wait for it; the guest will not \
         have this disk. Fix: {fix}"
    )
}

/// Watches the guest's backend directory of `what` and closes every device
/// that appears there unserved (the watch fires once when set, so the
/// devices libxl wrote before starting us are closed first). Blocks until
/// the watch ends (xenstore gone): run it on a thread of its own
/// ([`spawn_closer`]), never on the QMP runtime, since every xenstore call
/// may wait up to the xenstore timeout.
pub fn close_forever(xs: &XenStore, what: Unserved, domid: u32) {
    let dir = backend_dir(what.kind(), domid);
    let token = format!("xendm-{}", what.kind());
    let mut rx = match xs.watch(&dir, &token) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {dir}; a guest with such a device may wait for it at boot");
            return;
        }
    };
    while rx.blocking_recv().is_some() {
        // One pass for a burst of events (our own writes fire the watch too).
        while rx.try_recv().is_ok() {}
        if let Err(e) = close(xs, what, domid) {
            tracing::warn!(error = %e, "closing unserved {} backends", what.kind());
        }
    }
}

/// Runs [`close_forever`] for `what` on a new thread (`xs-vkbd`, `xs-qdisk`).
///
/// # Errors
/// If the thread cannot be started.
pub fn spawn_closer(xs: Arc<XenStore>, what: Unserved, domid: u32) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("xs-{}", what.kind()))
        .spawn(move || close_forever(&xs, what, domid))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::xenstore::fake::FakeXenstored;

    #[test]
    fn only_initialising_backends_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let fake = FakeXenstored::start(&sock).unwrap();
        let xs = XenStore::open_path(&sock).unwrap();
        assert!(close(&xs, Unserved::Vkbd, 3).unwrap().is_empty(), "no directory yet");
        fake.write("/local/domain/0/backend/vkbd/3/0/state", "1");
        fake.write("/local/domain/0/backend/vkbd/3/1/state", "4");
        fake.write("/local/domain/0/backend/vkbd/4/0/state", "1");
        assert_eq!(close(&xs, Unserved::Vkbd, 3).unwrap(), vec!["0".to_string()]);
        assert_eq!(fake.read("/local/domain/0/backend/vkbd/3/0/state").as_deref(), Some(&b"6"[..]));
        assert_eq!(
            fake.read("/local/domain/0/backend/vkbd/3/1/state").as_deref(),
            Some(&b"4"[..]),
            "a served device is left alone"
        );
        assert_eq!(
            fake.read("/local/domain/0/backend/vkbd/4/0/state").as_deref(),
            Some(&b"1"[..]),
            "other guests are left alone"
        );
        assert!(close(&xs, Unserved::Vkbd, 3).unwrap().is_empty(), "idempotent");
    }

    /// What libxl 4.17 writes for a qdisk disk (`libxl_disk.c`
    /// `device_disk_add`): a qcow2 image at xvda and a CD-ROM at hdc.
    fn qdisk(fake: &FakeXenstored, domid: u32, devid: u32, vdev: &str, params: &str, device_type: &str) {
        let dir = format!("/local/domain/0/backend/qdisk/{domid}/{devid}");
        for (k, v) in [
            ("frontend", format!("/local/domain/{domid}/device/vbd/{devid}")),
            ("params", params.to_string()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("removable", "0".into()),
            ("bootable", "1".into()),
            ("dev", vdev.into()),
            ("type", "qdisk".into()),
            ("mode", "w".into()),
            ("device-type", device_type.into()),
            ("state", "1".into()),
        ] {
            fake.write(&format!("{dir}/{k}"), &v);
        }
        let front = format!("/local/domain/{domid}/device/vbd/{devid}");
        fake.write(&format!("{front}/state"), "1");
        fake.write(&format!("{front}/backend"), &dir);
    }

    #[test]
    fn qdisk_backends_present_at_start_and_added_later_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let fake = FakeXenstored::start(&sock).unwrap();
        qdisk(&fake, 5, 51712, "xvda", "qcow2:/srv/g.qcow2", "disk");
        qdisk(&fake, 5, 5632, "hdc", "raw:/srv/cd.iso", "cdrom");
        fake.write("/local/domain/0/backend/qdisk/5/51728/state", "4"); // served by someone: left alone
        let xs = XenStore::open_path(&sock).unwrap();
        let mut closed = close(&xs, Unserved::Qdisk, 5).unwrap();
        closed.sort();
        assert_eq!(closed, ["51712", "5632"]);
        let state = |dev: &str| fake.read(&format!("/local/domain/0/backend/qdisk/5/{dev}/state"));
        assert_eq!(state("51712").as_deref(), Some(&b"6"[..]));
        assert_eq!(state("5632").as_deref(), Some(&b"6"[..]));
        assert_eq!(state("51728").as_deref(), Some(&b"4"[..]));
        assert_eq!(
            fake.read("/local/domain/5/device/vbd/51712/state").as_deref(),
            Some(&b"1"[..]),
            "the frontend is the guest's"
        );
        // The log line names the disk and the fix.
        let m = qdisk_message(&xs, "/local/domain/0/backend/qdisk/5/51712");
        assert!(m.starts_with("disk xvda (params qcow2:/srv/g.qcow2, type qdisk, device-type disk) needs the qdisk"));
        assert!(m.contains("format=raw") && m.contains("blkback") && m.contains("no backendtype=qdisk"), "{m}");
        let m = qdisk_message(&xs, "/local/domain/0/backend/qdisk/5/5632");
        assert!(m.contains("CD-ROMs are not supported") && m.contains("devtype=cdrom"), "{m}");

        // Added later (xl block-attach): the watch closes it.
        let xs = Arc::new(xs);
        spawn_closer(xs, Unserved::Qdisk, 5).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        qdisk(&fake, 5, 51744, "xvdc", "vhd:/srv/c.vhd", "disk");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while state("51744").as_deref() != Some(&b"6"[..]) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(state("51744").as_deref(), Some(&b"6"[..]), "a qdisk added later was not closed");
    }

    #[test]
    fn a_hostile_directory_is_bounded_and_values_are_cut_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let fake = FakeXenstored::start(&sock).unwrap();
        // More entries than one pass looks at, all Initialising.
        for dev in 0..MAX_DEVICES_PER_PASS + 40 {
            fake.write(&format!("/local/domain/0/backend/qdisk/9/{dev}/state"), "1");
        }
        let xs = XenStore::open_path(&sock).unwrap();
        assert_eq!(close(&xs, Unserved::Qdisk, 9).unwrap().len(), MAX_DEVICES_PER_PASS);
        // Control characters first, then more than a log line keeps (a
        // value is at most one xenstore payload).
        let long = format!("raw:/\n\u{1b}[31m{}", "x".repeat(3_000));
        fake.write("/local/domain/0/backend/qdisk/9/0/params", &long);
        let m = qdisk_message(&xs, "/local/domain/0/backend/qdisk/9/0");
        assert!(m.len() < 1200, "{} bytes", m.len());
        assert!(!m.contains('\n') && !m.contains('\u{1b}'), "{m}");
        assert!(m.contains("params raw:/\\n\\u{1b}[31mxxx") && m.contains("...,"), "{m}");
        assert!(m.contains("disk ? (params"), "a missing node reads as ?: {m}");
    }

    #[test]
    fn the_watch_closes_devices_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let fake = FakeXenstored::start(&sock).unwrap();
        let xs = Arc::new(XenStore::open_path(&sock).unwrap());
        spawn_closer(xs, Unserved::Vkbd, 7).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        fake.write("/local/domain/0/backend/vkbd/7/0/state", "1");
        let mut closed = false;
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if fake.read("/local/domain/0/backend/vkbd/7/0/state").as_deref() == Some(&b"6"[..]) {
                closed = true;
                break;
            }
        }
        assert!(closed, "a vkbd added after start-up was not closed");
    }
}
