//! QMP in a stubdomain (`xen-toolstack.md` 1.5 and 1.6): one thread owns
//! the vchan server ([`crate::control::vchan::VchanLink`]); for each client
//! it makes a socket pair, hands one end to the runtime as a new QMP
//! session, and pumps the vchan to the other end until either side closes,
//! then listens for the next client. Every session has the save console in
//! fd set 1 ([`super::consoles::SAVE_FDSET`]): libxl names `/dev/fdset/1`
//! in `xen-save-devices-state` without an `add-fd`.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::consoles::SAVE_FDSET;
use crate::control::qmp::{self, VmControl};
use crate::control::vchan::{self, VchanLink};

/// How long the pump waits between checks of a client that may have left.
const TICK: Duration = Duration::from_millis(100);
/// How long after a failed `listen` the next try comes.
const RETRY: Duration = Duration::from_secs(1);
/// Failed `listen`s in a row before the thread gives up (logged).
const MAX_FAILURES: u32 = 30;

/// What the stub's QMP service needs: the vchan and the save console.
pub struct StubQmp {
    /// The vchan server at `device-model/<guest>/qmp-vchan`.
    pub link: Box<dyn VchanLink>,
    /// Console 1, raw (`consoles::open_raw`): each session gets a copy as
    /// fd set 1.
    pub save: OwnedFd,
}

/// Starts the vchan thread and, on the current runtime, the task that
/// serves each of its clients as a QMP session on `ctl`.
///
/// # Errors
/// If the thread cannot be started.
pub fn start<C: VmControl + 'static>(stub: StubQmp, ctl: &Arc<C>) -> Result<()> {
    let StubQmp { mut link, save } = stub;
    let (tx, mut rx) = mpsc::channel::<UnixStream>(1);
    std::thread::Builder::new()
        .name("qmp-vchan".into())
        .spawn(move || vchan_loop(link.as_mut(), &tx))
        .context("starting the QMP vchan thread")?;
    let ctl = ctl.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(end) = rx.recv().await {
            n = n.wrapping_add(1);
            let fd = match save.try_clone() {
                Ok(fd) => fd,
                Err(e) => {
                    warn!("QMP over vchan: session {n} without the save console ({e})");
                    continue;
                }
            };
            let stream = match end.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(end)) {
                Ok(s) => s,
                Err(e) => {
                    warn!("QMP over vchan: session {n}: {e}");
                    continue;
                }
            };
            let ctl = ctl.clone();
            tokio::spawn(async move {
                if let Err(e) = qmp::serve_connection_with_fdset(stream, &*ctl, SAVE_FDSET, fd).await {
                    info!("QMP over vchan: session {n} ended: {e}");
                }
            });
        }
    });
    Ok(())
}

/// One client after the other until the runtime is gone (the send fails)
/// or the vchan cannot be set up [`MAX_FAILURES`] times in a row.
fn vchan_loop(link: &mut dyn VchanLink, tx: &mpsc::Sender<UnixStream>) {
    let mut failures = 0u32;
    loop {
        if let Err(e) = link.listen() {
            failures = failures.saturating_add(1);
            warn!(failures, "QMP over vchan: cannot listen: {e}");
            if failures >= MAX_FAILURES {
                warn!("QMP over vchan: giving up; libxl cannot reach this device model");
                return;
            }
            std::thread::sleep(RETRY);
            continue;
        }
        failures = 0;
        // The session (and its idle timeout) starts with the client: the
        // proxy connects only when libxl opens its QMP socket.
        let client = vchan::wait_for_client(link, TICK).map_err(|e| format!("waiting for a client: {e}")).and_then(
            |connected| connected.then(UnixStream::pair).transpose().map_err(|e| format!("socket pair: {e}")),
        );
        let (ours, session) = match client {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                warn!("QMP over vchan: {e}");
                link.close();
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if tx.blocking_send(session).is_err() {
            link.close();
            return;
        }
        if let Err(e) = vchan::pump(link, ours, TICK) {
            info!("QMP over vchan: client connection ended: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::qmp::{ChardevInfo, HotAddError, RunState, VcpuSet};
    use crate::control::vchan::fake::FakeLink;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::Mutex;

    /// A VM whose saved state is a fixed blob.
    struct Vm(Mutex<Vec<&'static str>>);

    impl VmControl for Vm {
        fn status(&self) -> RunState {
            RunState::Running
        }
        fn cont(&self) -> Result<(), String> {
            self.0.lock().unwrap().push("cont");
            Ok(())
        }
        fn stop(&self) -> Result<(), String> {
            self.0.lock().unwrap().push("stop");
            Ok(())
        }
        fn chardevs(&self) -> Vec<ChardevInfo> {
            Vec::new()
        }
        fn vcpus(&self) -> VcpuSet {
            VcpuSet { boot: 1, max: 1, present: vec![0] }
        }
        fn hot_add_vcpu(&self, index: u32) -> Result<(), HotAddError> {
            Err(HotAddError::OutOfRange { index, max: 1 })
        }
        fn save_device_state(&self, _live: bool) -> Result<Vec<u8>, String> {
            Ok(b"XENDMDEV-stub-blob".to_vec())
        }
        fn set_dirty_log(&self, _enable: bool) -> Result<(), String> {
            Ok(())
        }
        fn quit(&self) {}
    }

    /// A link that hands out fake vchans, one per `listen`, whose client
    /// ends the test takes from a channel: dom0's proxy connecting anew for
    /// each libxl connection.
    struct Clients {
        current: Option<FakeLink>,
        new_client: std::sync::mpsc::Sender<UnixStream>,
    }

    impl VchanLink for Clients {
        fn listen(&mut self) -> std::io::Result<()> {
            let (link, client) = FakeLink::pair();
            self.current = Some(link);
            self.new_client.send(client).map_err(|_| std::io::Error::other("test over"))
        }
        fn event_fd(&self) -> std::os::fd::BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.current.as_ref().expect("listening").ring.as_fd()
        }
        fn ack(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn is_open(&self) -> bool {
            self.current.as_ref().is_some_and(VchanLink::is_open)
        }
        fn connected(&self) -> bool {
            self.current.as_ref().is_some_and(VchanLink::connected)
        }
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.current.as_mut().map_or(Ok(0), |l| l.read(buf))
        }
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.current.as_mut().map_or(Ok(0), |l| l.write(buf))
        }
        fn close(&mut self) {
            if let Some(l) = self.current.as_mut() {
                l.close();
            }
        }
    }

    fn line(r: &mut BufReader<UnixStream>) -> String {
        let mut s = String::new();
        r.read_line(&mut s).unwrap();
        s
    }

    /// libxl's save through the proxy: a session per connection, each
    /// with a greeting; `/dev/fdset/1` is the save console without an
    /// `add-fd`; the next client after one left gets a new session.
    #[test]
    fn each_client_is_a_new_session_and_fdset_1_is_the_save_console() {
        let (clients_tx, clients) = std::sync::mpsc::channel();
        let (save_console, mut dom0_save) = UnixStream::pair().unwrap();
        let vm = Arc::new(Vm(Mutex::new(Vec::new())));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let vm2 = vm.clone();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let serving = std::thread::spawn(move || {
            rt.block_on(async move {
                let link = Box::new(Clients { current: None, new_client: clients_tx });
                start(StubQmp { link, save: OwnedFd::from(save_console) }, &vm2).unwrap();
                let _ = finished.await;
            });
        });
        let timeout = Some(Duration::from_secs(10));
        for round in 0..2 {
            let client: UnixStream = clients.recv_timeout(Duration::from_secs(10)).unwrap();
            client.set_read_timeout(timeout).unwrap();
            let mut r = BufReader::new(client.try_clone().unwrap());
            assert!(line(&mut r).starts_with("{\"QMP\":"), "round {round}: greeting");
            let mut w = client;
            w.write_all(b"{\"execute\":\"qmp_capabilities\"}\r\n").unwrap();
            assert_eq!(line(&mut r), "{\"return\": {}}\r\n");
            if round == 0 {
                w.write_all(b"{\"execute\":\"stop\"}\r\n").unwrap();
                assert_eq!(line(&mut r), "{\"return\": {}}\r\n");
                w.write_all(b"{\"execute\":\"xen-save-devices-state\",\"arguments\":{\"filename\":\"/dev/fdset/1\",\"live\":false}}\r\n").unwrap();
                assert_eq!(line(&mut r), "{\"return\": {}}\r\n");
                let mut blob = [0u8; 18];
                dom0_save.set_read_timeout(timeout).unwrap();
                dom0_save.read_exact(&mut blob).unwrap();
                assert_eq!(&blob, b"XENDMDEV-stub-blob");
            } else {
                w.write_all(b"{\"execute\":\"cont\"}\r\n").unwrap();
                assert_eq!(line(&mut r), "{\"return\": {}}\r\n");
            }
            drop(w);
            drop(r);
        }
        assert_eq!(*vm.0.lock().unwrap(), ["stop", "cont"]);
        drop(clients);
        done.send(()).unwrap();
        serving.join().unwrap();
    }
}
