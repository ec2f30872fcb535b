//! QMP over a Xen vchan, for a device model in a stubdomain
//! (`xen-toolstack.md` 1.5): the stub is the vchan *server* at
//! `device-model/<guest>/qmp-vchan`; dom0's `vchan-socket-proxy` listens on
//! libxl's usual QMP socket and, for each libxl connection, connects to the
//! vchan as a new client and disconnects after. So the server takes one
//! client at a time, and each client is a new QMP session (greeting,
//! `qmp_capabilities`, ...).
//!
//! [`VchanLink`] is the vchan as this module needs it (the real one is
//! libxenvchan, `crate::xen::vchan`, built with the `stubdom` feature; tests
//! use a fake). [`pump`] copies bytes both ways between the connected vchan
//! and one end of a socket pair whose other end is served as an ordinary
//! QMP connection, until either side closes.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Bytes from QMP waiting for room in the vchan ring, at most.
pub const MAX_PENDING: usize = 1 << 20;

/// A vchan server endpoint.
pub trait VchanLink: Send {
    /// Makes the endpoint ready for a new client (the real one re-creates
    /// the server ring and republishes it in xenstore).
    ///
    /// # Errors
    /// If the ring cannot be set up.
    fn listen(&mut self) -> io::Result<()>;
    /// The descriptor that becomes readable when the peer notified us.
    fn event_fd(&self) -> BorrowedFd<'_>;
    /// Consumes the notification `event_fd` signalled (call only when it is
    /// readable: it may block otherwise).
    ///
    /// # Errors
    /// If the event channel broke.
    fn ack(&mut self) -> io::Result<()>;
    /// Whether a client is connected, or awaited (`false` once it left).
    fn is_open(&self) -> bool;
    /// Whether a client has connected (and not left yet).
    fn connected(&self) -> bool;
    /// Reads what the client sent, without waiting (`Ok(0)`: nothing now).
    ///
    /// # Errors
    /// If the ring broke.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits, without waiting (`Ok(0)`: the ring is full).
    ///
    /// # Errors
    /// If the ring broke.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Ends the current client's connection.
    fn close(&mut self);
}

/// One `poll(2)` of `fds` for at most `tick` (a second if `tick` does not
/// fit); an interrupted poll counts as a timeout.
fn poll_tick(fds: &mut [rustix::event::PollFd<'_>], tick: Duration) -> io::Result<()> {
    let ts = rustix::event::Timespec::try_from(tick).unwrap_or(rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 });
    match rustix::event::poll(fds, Some(&ts)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits, polling `link`'s event channel with `tick`, until a client has
/// connected (`Ok(true)`) or the endpoint closed (`Ok(false)`).
///
/// # Errors
/// A broken event channel.
pub fn wait_for_client(link: &mut dyn VchanLink, tick: Duration) -> io::Result<bool> {
    loop {
        if link.connected() {
            return Ok(true);
        }
        if !link.is_open() {
            return Ok(false);
        }
        let ready = {
            let ev = link.event_fd();
            let mut fds = [rustix::event::PollFd::new(&ev, rustix::event::PollFlags::IN)];
            poll_tick(&mut fds, tick)?;
            let [a] = &fds;
            !a.revents().is_empty()
        };
        if ready {
            link.ack()?;
        }
    }
}

/// Copies between `link`'s current client and `sock` until either closes
/// (then closes the other). Each poll waits at most `tick`, so a client
/// that left without a notification is seen within one tick.
///
/// # Errors
/// A broken ring or socket (the connection is over either way).
pub fn pump(link: &mut dyn VchanLink, mut sock: UnixStream, tick: Duration) -> io::Result<()> {
    sock.set_nonblocking(true)?;
    let mut to_vchan: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let result = loop {
        // Client -> QMP.
        loop {
            match link.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    sock.set_nonblocking(false)?;
                    let w = sock.write_all(buf.get(..n).unwrap_or_default());
                    sock.set_nonblocking(true)?;
                    w?;
                }
                Err(e) => return Err(e),
            }
        }
        // QMP -> client, as the ring has room.
        while !to_vchan.is_empty() {
            let n = link.write(&to_vchan)?;
            if n == 0 {
                break;
            }
            to_vchan.drain(..n.min(to_vchan.len()));
        }
        if !link.is_open() {
            break Ok(());
        }
        let want_sock = to_vchan.len() < MAX_PENDING;
        let (ev_ready, sock_ready) = {
            let ev = link.event_fd();
            let sfd = sock.as_fd();
            let mut fds = [
                rustix::event::PollFd::new(&ev, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(
                    &sfd,
                    if want_sock { rustix::event::PollFlags::IN } else { rustix::event::PollFlags::empty() },
                ),
            ];
            if let Err(e) = poll_tick(&mut fds, tick) {
                break Err(e);
            }
            let [a, b] = &fds;
            (!a.revents().is_empty(), !b.revents().is_empty())
        };
        if ev_ready {
            link.ack()?;
        }
        if sock_ready {
            match sock.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => to_vchan.extend_from_slice(buf.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        }
    };
    link.close();
    drop(sock);
    result
}

#[cfg(test)]
pub mod fake {
    //! A vchan double: the "ring" is a socket pair, the peer's end is the
    //! test's client.
    use super::*;

    /// The server side of a fake vchan.
    pub struct FakeLink {
        pub ring: UnixStream,
        open: bool,
    }

    impl FakeLink {
        /// A link and the client's end of it.
        pub fn pair() -> (Self, UnixStream) {
            let (a, b) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            (Self { ring: a, open: true }, b)
        }
    }

    impl VchanLink for FakeLink {
        fn listen(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn event_fd(&self) -> BorrowedFd<'_> {
            self.ring.as_fd()
        }
        fn ack(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn is_open(&self) -> bool {
            self.open
        }
        fn connected(&self) -> bool {
            self.open
        }
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.ring.read(buf) {
                Ok(0) => {
                    self.open = false;
                    Ok(0)
                }
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            }
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.ring.write(buf) {
                Ok(n) => Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                Err(e) => Err(e),
            }
        }
        fn close(&mut self) {
            self.open = false;
            let _ = self.ring.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeLink;
    use super::*;

    /// A link whose client connects after two notifications, or never.
    struct Later {
        ev: UnixStream,
        acks: u32,
        open: bool,
    }

    impl VchanLink for Later {
        fn listen(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn event_fd(&self) -> BorrowedFd<'_> {
            self.ev.as_fd()
        }
        fn ack(&mut self) -> io::Result<()> {
            let mut b = [0u8];
            self.ev.read_exact(&mut b)?;
            self.acks += 1;
            Ok(())
        }
        fn is_open(&self) -> bool {
            self.open
        }
        fn connected(&self) -> bool {
            self.acks >= 2
        }
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn close(&mut self) {
            self.open = false;
        }
    }

    /// The wait ends when the client has connected, not at the first event,
    /// and at once on a closed endpoint.
    #[test]
    fn the_wait_for_a_client_ends_when_it_has_connected() {
        let (ev, mut peer) = UnixStream::pair().unwrap();
        let mut link = Later { ev, acks: 0, open: true };
        let t = std::thread::spawn(move || {
            for _ in 0..2 {
                std::thread::sleep(Duration::from_millis(30));
                peer.write_all(b"!").unwrap();
            }
            peer
        });
        assert!(wait_for_client(&mut link, Duration::from_millis(10)).unwrap());
        assert_eq!(link.acks, 2);
        let _peer = t.join().unwrap();
        let (ev, _p) = UnixStream::pair().unwrap();
        let mut closed = Later { ev, acks: 0, open: false };
        assert!(!wait_for_client(&mut closed, Duration::from_millis(10)).unwrap());
    }

    /// Bytes go both ways; the client leaving ends the pump and closes the
    /// QMP side; QMP closing ends it and closes the client.
    #[test]
    fn bytes_flow_both_ways_until_one_side_closes() {
        let (mut link, mut client) = FakeLink::pair();
        let (qmp, mut qmp_peer) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || pump(&mut link, qmp, Duration::from_millis(20)));
        client.write_all(b"{\"execute\": \"qmp_capabilities\"}\r\n").unwrap();
        let mut got = [0u8; 33];
        qmp_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"{\"execute\": \"qmp_capabilities\"}\r\n");
        let reply = vec![b'r'; 100_000]; // more than one ring's worth at a time
        qmp_peer.write_all(&reply).unwrap();
        let mut back = vec![0u8; reply.len()];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, reply);
        drop(client);
        t.join().unwrap().unwrap();
        let mut rest = Vec::new();
        qmp_peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the QMP side is closed");

        let (mut link, mut client) = FakeLink::pair();
        let (qmp, qmp_peer) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || pump(&mut link, qmp, Duration::from_millis(20)));
        drop(qmp_peer);
        t.join().unwrap().unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the client is closed");
    }
}
