//! The run's xenstore work, on threads of its own: QMP never waits for
//! xenstored.
//!
//! Every xenstore request may wait up to the xenstore timeout (30 s,
//! `crate::xen::xenstore::DEFAULT_TIMEOUT`) for a slow or hung xenstored.
//! QMP runs on one single-threaded runtime, so a request made there would
//! freeze every QMP client, libxl included (`audit-2026-12.md`, risk 3). So:
//!
//! * `cont`'s `state = running` write ([`announcer`]) is handed to the
//!   `xs-announce` thread; the `cont` reply does not wait for it (libxl,
//!   which started us with `-S`, learns the state from `query-status`, and
//!   QEMU's write is not tied to its reply either);
//! * the watches that close the PV backends xendm does not serve
//!   ([`start_backend_closers`]: vkbd and qdisk, `crate::xen::pvbackends`)
//!   run on the `xs-vkbd` and `xs-qdisk` threads. libxl writes the qdisk
//!   backends of the guest's disks before it starts the device model, so
//!   the first event of the watch closes them before the guest runs;
//!   later ones (`xl block-attach`) are closed as they appear.
//!
//! The threads start before privileges are dropped, so nothing is spawned
//! once the process is restricted.

use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::warn;

use super::control::Announce;
use crate::xen::pvbackends::{self, Unserved};
use crate::xen::xenstore::{self, XenStore};

/// Starts the `xs-vkbd` and `xs-qdisk` threads (see the module docs).
///
/// # Errors
/// If a thread cannot be started.
pub fn start_backend_closers(xs: &Arc<XenStore>, domid: u16) -> Result<()> {
    for what in [Unserved::Vkbd, Unserved::Qdisk] {
        pvbackends::spawn_closer(xs.clone(), what, u32::from(domid))
            .with_context(|| format!("starting the {} thread", what.kind()))?;
    }
    Ok(())
}

/// Starts the `xs-announce` thread and returns what `cont` calls: a
/// request to it to write `device-model/<domid>/state = running`, which
/// never blocks.
///
/// # Errors
/// If the thread cannot be started.
pub fn announcer(xs: Arc<XenStore>, domid: u16) -> Result<Announce> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("xs-announce".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                if let Err(e) = xenstore::announce_running(&xs, u32::from(domid)) {
                    warn!("writing device-model state: {e}");
                }
            }
        })
        .context("starting the xenstore announce thread")?;
    Ok(Box::new(move || {
        if tx.send(()).is_err() {
            warn!("the xenstore announce thread is gone; device-model state not written");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use tokio::sync::Notify;

    use crate::app::control::Control;
    use crate::control::qmp;
    use crate::xen::xenstore::fake::FakeXenstored;

    const STATE: &str = "/local/domain/0/device-model/5/state";

    /// One request, its reply line, and how long the reply took.
    async fn call(lines: &mut tokio::io::Lines<BufReader<UnixStream>>, req: &str) -> (String, Duration) {
        let t = Instant::now();
        lines.get_mut().get_mut().write_all(format!("{req}\r\n").as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.unwrap().unwrap().unwrap();
        (reply, t.elapsed())
    }

    #[test]
    fn a_hung_xenstored_does_not_stall_qmp() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeXenstored::start(&dir.path().join("xs")).unwrap();
        let xs = Arc::new(XenStore::open_path(fake.path()).unwrap());
        xs.set_timeout(Duration::from_secs(10));
        let ctl = Arc::new(Control::new(true, None, Vec::new(), 1, Arc::new(Notify::new())));
        ctl.set_xenstore_announce(announcer(xs.clone(), 5).unwrap());
        fake.set_hang(true);
        // The vkbd watch hangs in its first request, as serve() starts it.
        crate::xen::pvbackends::spawn_closer(xs, crate::xen::pvbackends::Unserved::Vkbd, 5).unwrap();

        let path = dir.path().join("qmp");
        let listener = qmp::bind(qmp::QmpListen::Path(path.clone())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            tokio::spawn(qmp::serve(listener, ctl));
            let mut lines = BufReader::new(UnixStream::connect(&path).await.unwrap()).lines();
            let greeting = tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await;
            assert!(greeting.is_ok(), "no greeting while xenstored hangs");
            let (_, took) = call(&mut lines, r#"{"execute":"qmp_capabilities"}"#).await;
            assert!(took < Duration::from_secs(1), "{took:?}");
            // cont's announce goes to xenstore, which hangs: the reply
            // must not wait for it.
            let (reply, took) = call(&mut lines, r#"{"execute":"cont","id":1}"#).await;
            assert_eq!(reply, r#"{"return": {}, "id": 1}"#);
            assert!(took < Duration::from_secs(1), "cont waited {took:?} for xenstore");
            let (reply, took) = call(&mut lines, r#"{"execute":"query-status","id":2}"#).await;
            assert!(reply.contains(r#""status": "running""#), "{reply}");
            assert!(took < Duration::from_secs(1), "{took:?}");
        });
        // Once xenstored answers again, the announce is written.
        fake.set_hang(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while fake.read(STATE).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(fake.read(STATE).as_deref(), Some(&b"running"[..]));
    }
}
