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
//! So xendm marks each vkbd backend it finds still `Initialising` (1) as
//! `Closed` (6): the frontend's backend watch then closes the frontend, which
//! counts as settled, and boot goes on. libxl removes the nodes when the
//! domain is destroyed, as it does with qemu-xen.

use std::sync::Arc;

use crate::xen::xenstore::{XenStore, XsError};

/// `XenbusStateInitialising`.
pub const STATE_INITIALISING: &str = "1";
/// `XenbusStateClosed`.
pub const STATE_CLOSED: &str = "6";

/// The backend directory of `kind` devices of guest `domid` served by dom0.
pub fn backend_dir(kind: &str, domid: u32) -> String {
    format!("/local/domain/0/backend/{kind}/{domid}")
}

/// Closes every `kind` backend of `domid` still Initialising. Returns the
/// device ids it closed.
///
/// # Errors
/// A xenstore error other than the directory not existing.
pub fn close_unserved(xs: &XenStore, kind: &str, domid: u32) -> Result<Vec<String>, XsError> {
    let dir = backend_dir(kind, domid);
    let devs = match xs.directory(&dir) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut closed = Vec::new();
    for dev in devs {
        let state = format!("{dir}/{dev}/state");
        match xs.read(&state) {
            Ok(s) if s == STATE_INITIALISING => {
                xs.write(&state, STATE_CLOSED)?;
                tracing::info!(
                    path = %state,
                    "xendm serves no PV {kind}: marked its backend Closed so the guest does not wait for it"
                );
                closed.push(dev);
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(closed)
}

/// Watches the guest's vkbd backend directory and closes every device that
/// appears there unserved. Blocks until the watch ends (xenstore gone): run
/// it on a thread of its own ([`spawn_vkbd_closer`]), never on the QMP
/// runtime, since every xenstore call may wait up to the xenstore timeout.
pub fn close_vkbd_forever(xs: &XenStore, domid: u32) {
    let dir = backend_dir("vkbd", domid);
    let mut rx = match xs.watch(&dir, "xendm-vkbd") {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {dir}; a guest loading xen-kbdfront may wait for it");
            return;
        }
    };
    // xenstore fires a watch once when it is set, then on every change.
    while rx.blocking_recv().is_some() {
        if let Err(e) = close_unserved(xs, "vkbd", domid) {
            tracing::warn!(error = %e, "closing unserved vkbd backends");
        }
    }
}

/// Runs [`close_vkbd_forever`] on a new thread (`xs-vkbd`).
///
/// # Errors
/// If the thread cannot be started.
pub fn spawn_vkbd_closer(xs: Arc<XenStore>, domid: u32) -> std::io::Result<()> {
    std::thread::Builder::new().name("xs-vkbd".into()).spawn(move || close_vkbd_forever(&xs, domid)).map(drop)
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
        assert!(close_unserved(&xs, "vkbd", 3).unwrap().is_empty(), "no directory yet");
        fake.write("/local/domain/0/backend/vkbd/3/0/state", "1");
        fake.write("/local/domain/0/backend/vkbd/3/1/state", "4");
        fake.write("/local/domain/0/backend/vkbd/4/0/state", "1");
        assert_eq!(close_unserved(&xs, "vkbd", 3).unwrap(), vec!["0".to_string()]);
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
        assert!(close_unserved(&xs, "vkbd", 3).unwrap().is_empty(), "idempotent");
    }

    #[test]
    fn the_watch_closes_devices_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xs");
        let fake = FakeXenstored::start(&sock).unwrap();
        let xs = Arc::new(XenStore::open_path(&sock).unwrap());
        spawn_vkbd_closer(xs, 7).unwrap();
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
