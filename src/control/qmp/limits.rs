//! How long a QMP client may hold a connection, and how many may.
//!
//! QEMU (`chardev/char-socket.c`, `monitor/qmp.c`) has no timeouts and
//! serves any number of clients. We serve at most
//! [`QmpLimits::max_clients`] per monitor socket (each `-mon` has its own
//! count, so clients of `libxenstat-cmd` never hold a slot of libxl's
//! `libxl-cmd`), and a connection is closed when its client:
//!
//! * sends nothing for [`QmpLimits::idle_timeout`] after its last reply (or
//!   the greeting);
//! * takes longer than [`QmpLimits::read_timeout`] to finish a request it
//!   began;
//! * does not take a reply (or the greeting) within
//!   [`QmpLimits::write_timeout`], e.g. because it never reads.
//!
//! When a socket's slots are all taken, a new client replaces the client
//! idle the longest, once that one has been idle for
//! [`QmpLimits::evict_idle_after`]; the newcomer waits (connected, without
//! its greeting) only while every slot is busy with a request. libxl opens
//! one connection per operation and talks at once, so it is never the one
//! idle the longest, and it always gets its greeting within about
//! `evict_idle_after` of connecting, whatever idle clients do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use xendm_devices::sync::lock;

/// The limits of one monitor socket and its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QmpLimits {
    /// Connections served at once on one socket.
    pub max_clients: usize,
    /// How long a connection may wait for a request to begin.
    pub idle_timeout: Duration,
    /// How long a request may take to arrive once it began.
    pub read_timeout: Duration,
    /// How long the client may take to read a reply.
    pub write_timeout: Duration,
    /// How long a client must have been idle to be replaced by a new one
    /// when the socket is full.
    pub evict_idle_after: Duration,
}

impl Default for QmpLimits {
    fn default() -> Self {
        Self {
            max_clients: super::MAX_CLIENTS,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            evict_idle_after: Duration::from_secs(1),
        }
    }
}

/// One connection as the socket's registry sees it.
#[derive(Default)]
pub(super) struct Client {
    /// When it became idle (no request begun, no reply being written);
    /// `None` while busy.
    idle_since: Mutex<Option<Instant>>,
    /// Asks the connection to close.
    evict: Notify,
}

impl Client {
    /// Marks the connection idle from now on, or busy.
    pub(super) fn set_idle(&self, idle: bool) {
        *lock(&self.idle_since) = idle.then(Instant::now);
    }

    /// Resolves once the socket's registry asks this connection to close.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// The connections of one socket.
#[derive(Default)]
pub(super) struct Clients {
    list: Mutex<Vec<Arc<Client>>>,
}

impl Clients {
    /// A new connection, idle until it is greeted.
    pub(super) fn register(&self) -> Arc<Client> {
        let c = Arc::new(Client::default());
        lock(&self.list).push(Arc::clone(&c));
        c
    }

    /// Forgets a closed connection.
    pub(super) fn remove(&self, c: &Arc<Client>) {
        lock(&self.list).retain(|x| !Arc::ptr_eq(x, c));
    }

    /// Asks the connection idle the longest to close, if it has been idle
    /// for at least `min_idle`; whether one was asked.
    pub(super) fn evict_longest_idle(&self, min_idle: Duration) -> bool {
        let list = lock(&self.list);
        let oldest = list
            .iter()
            .filter_map(|c| lock(&c.idle_since).map(|since| (since, c)))
            .filter(|(since, _)| since.elapsed() >= min_idle)
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, c)) => {
                // Idle no more: not chosen twice while it closes.
                *lock(&c.idle_since) = None;
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_idle_client_is_evicted_and_busy_ones_never() {
        let clients = Clients::default();
        let (a, b, busy) = (clients.register(), clients.register(), clients.register());
        a.set_idle(true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.set_idle(true);
        busy.set_idle(false);
        assert!(!clients.evict_longest_idle(Duration::from_secs(5)), "nobody idle that long");
        assert!(clients.evict_longest_idle(Duration::ZERO));
        tokio::time::timeout(Duration::from_secs(1), a.evicted()).await.unwrap();
        assert!(clients.evict_longest_idle(Duration::ZERO));
        tokio::time::timeout(Duration::from_secs(1), b.evicted()).await.unwrap();
        assert!(!clients.evict_longest_idle(Duration::ZERO), "only the busy one is left");
        clients.remove(&a);
        assert_eq!(lock(&clients.list).len(), 2);
    }
}
