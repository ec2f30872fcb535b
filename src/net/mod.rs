//! The host side of the guest's emulated NICs: the tap interfaces libxl
//! expects the device model to create.
//!
//! For a vif of `type=ioemu` (xl's HVM default) libxl passes
//! `-netdev type=tap,id=netN,ifname=vifD.N-emu,...` and, once the device
//! model is up, runs `vif-bridge add type_if=tap` on that interface: the
//! script's first step (`ip link set dev vifD.N-emu down`) fails when the
//! tap does not exist, and libxl then destroys the domain
//! (`xen-toolstack.md` 3.2, measured). qemu-xen creates the tap at start-up
//! (QEMU `net/tap-linux.c`: `/dev/net/tun`, `TUNSETIFF` with
//! `IFF_TAP|IFF_NO_PI`), holds the descriptor (the interface lives as long
//! as it is open: no `TUNSETPERSIST`), and deletes the tap with the NIC when
//! the guest unplugs emulated NICs (QEMU `hw/i386/xen/xen_platform.c`,
//! `pci_unplug_nics`).
//!
//! xendm emulates no NIC, so it does the host half only: [`NicTaps::create`]
//! creates every tap before privileges are dropped, and [`NicTaps`] is the
//! platform device's [`UnplugHook`]: a NIC unplug closes them. A guest that
//! never unplugs (no PV drivers) keeps its taps, dark, until the device
//! model exits: that is the documented behaviour (`docs/usage.md`), and the
//! kernel bounds what queues on an unread tap (its `txqueuelen`).
//!
//! The interface creation is behind [`TapFactory`] so tests use a fake; the
//! Linux one is [`tap::LinuxTaps`].

pub mod tap;

use std::io;

use thiserror::Error;
use xendm_devices::pc::xen_platform::{UnplugHook, UNPLUG_ALL_NICS};

/// An open tap: the interface exists while this lives; dropping it closes
/// the descriptor, which deletes the interface.
pub trait Tap: Send {
    /// The interface name.
    fn name(&self) -> &str;
}

/// Creates taps by name.
pub trait TapFactory {
    /// Creates (or attaches to) the tap `name`.
    ///
    /// # Errors
    /// The error of the open or the ioctl, unmapped ([`TapError::new`] maps it).
    fn create(&self, name: &str) -> io::Result<Box<dyn Tap>>;
}

/// Why a tap could not be created, with what to do about it.
#[derive(Debug, Error)]
pub enum TapError {
    /// `/dev/net/tun` is missing or the tun driver is not loaded.
    #[error("creating tap {name}: /dev/net/tun is not available ({source}); load the tun driver: modprobe tun")]
    NoTunDevice {
        /// The interface.
        name: String,
        /// ENOENT, ENODEV or ENXIO.
        #[source]
        source: io::Error,
    },
    /// The process may not create network interfaces.
    #[error(
        "creating tap {name}: not permitted ({source}); the device model needs CAP_NET_ADMIN at start-up \
         (libxl starts it as root; -runas drops privileges only after the taps exist)"
    )]
    NotPermitted {
        /// The interface.
        name: String,
        /// EPERM or EACCES.
        #[source]
        source: io::Error,
    },
    /// An interface of that name exists and is not a tap xendm may use.
    #[error(
        "creating tap {name}: an interface named {name} already exists and is not a free tap ({source}); \
         remove it (ip link del {name}) or destroy the domain that holds it"
    )]
    NameInUse {
        /// The interface.
        name: String,
        /// EINVAL or EBUSY.
        #[source]
        source: io::Error,
    },
    /// Anything else.
    #[error("creating tap {name}: {source}")]
    Other {
        /// The interface.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl TapError {
    /// Maps the error of creating `name` to the message that says what to do.
    pub fn new(name: &str, source: io::Error) -> Self {
        let name = name.to_string();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => Self::NoTunDevice { name, source },
            Some(libc::EPERM | libc::EACCES) => Self::NotPermitted { name, source },
            Some(libc::EINVAL | libc::EBUSY | libc::EEXIST) => Self::NameInUse { name, source },
            _ => Self::Other { name, source },
        }
    }
}

/// The taps of the guest's emulated NICs, held until the guest unplugs
/// emulated NICs (or the device model exits).
pub struct NicTaps {
    taps: Vec<Box<dyn Tap>>,
}

impl NicTaps {
    /// Creates a tap for each name, in order. On an error the taps created
    /// so far are closed again (dropped).
    ///
    /// # Errors
    /// The first tap that cannot be created, mapped by [`TapError::new`].
    pub fn create<'a>(factory: &dyn TapFactory, names: impl IntoIterator<Item = &'a str>) -> Result<Self, TapError> {
        let mut taps = Vec::new();
        for name in names {
            let tap = factory.create(name).map_err(|e| TapError::new(name, e))?;
            taps.push(tap);
        }
        Ok(Self { taps })
    }

    /// The names of the taps still held.
    pub fn names(&self) -> Vec<&str> {
        self.taps.iter().map(|t| t.name()).collect()
    }

    /// Closes every tap still held (the interfaces go away) and logs it;
    /// returns how many were closed.
    pub fn release(&mut self) -> usize {
        let n = self.taps.len();
        for tap in self.taps.drain(..) {
            tracing::info!(
                tap = tap.name(),
                "guest unplugged emulated NICs: closed tap {} (the guest uses its PV network interface)",
                tap.name()
            );
        }
        n
    }
}

/// The platform device's unplug: a request with the NIC bit releases the
/// taps, as QEMU deletes them with the NICs; disk-only requests leave them.
impl UnplugHook for NicTaps {
    fn unplugged(&mut self, mask: u16) {
        if mask & UNPLUG_ALL_NICS != 0 {
            self.release();
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A [`TapFactory`] that records what is open, for tests.
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The names of the fake taps currently open, shared with the test.
    pub type OpenTaps = Arc<Mutex<Vec<String>>>;

    /// Creates fake taps; `fail` makes the creation of that name fail with that errno.
    #[derive(Default)]
    pub struct FakeTaps {
        pub open: OpenTaps,
        pub fail: Option<(String, i32)>,
    }

    struct FakeTap {
        name: String,
        open: OpenTaps,
    }

    impl Tap for FakeTap {
        fn name(&self) -> &str {
            &self.name
        }
    }

    impl Drop for FakeTap {
        fn drop(&mut self) {
            self.open.lock().unwrap().retain(|n| *n != self.name);
        }
    }

    impl TapFactory for FakeTaps {
        fn create(&self, name: &str) -> io::Result<Box<dyn Tap>> {
            if let Some((_, errno)) = self.fail.as_ref().filter(|(n, _)| n == name) {
                return Err(io::Error::from_raw_os_error(*errno));
            }
            self.open.lock().unwrap().push(name.to_string());
            Ok(Box::new(FakeTap { name: name.to_string(), open: self.open.clone() }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTaps;
    use super::*;
    use xendm_devices::pc::xen_platform::{UNPLUG_ALL_DISKS, UNPLUG_AUX_IDE_DISKS, UNPLUG_NVME_DISKS};

    #[test]
    fn taps_are_created_by_name_held_and_released_on_a_nic_unplug_only() {
        let f = FakeTaps::default();
        let mut taps = NicTaps::create(&f, ["vif3.0-emu", "vif3.1-emu"]).unwrap();
        assert_eq!(*f.open.lock().unwrap(), ["vif3.0-emu", "vif3.1-emu"]);
        assert_eq!(taps.names(), ["vif3.0-emu", "vif3.1-emu"]);
        for disks_only in [UNPLUG_ALL_DISKS, UNPLUG_AUX_IDE_DISKS, UNPLUG_NVME_DISKS, 0, 1 << 7] {
            taps.unplugged(disks_only);
            assert_eq!(f.open.lock().unwrap().len(), 2, "mask {disks_only:#x} released a tap");
        }
        taps.unplugged(UNPLUG_ALL_DISKS | UNPLUG_ALL_NICS);
        assert!(f.open.lock().unwrap().is_empty(), "the NIC unplug closes every tap");
        assert!(taps.names().is_empty());
        taps.unplugged(UNPLUG_ALL_NICS); // again: nothing left, no harm
        assert_eq!(taps.release(), 0);
    }

    #[test]
    fn creation_errors_say_what_to_do_and_close_what_was_created() {
        for (errno, want) in [
            (libc::ENOENT, "modprobe tun"),
            (libc::ENODEV, "modprobe tun"),
            (libc::EPERM, "needs CAP_NET_ADMIN at start-up"),
            (libc::EACCES, "needs CAP_NET_ADMIN at start-up"),
            (libc::EBUSY, "already exists and is not a free tap"),
            (libc::EINVAL, "ip link del vif3.1-emu"),
            (libc::ENOMEM, "creating tap vif3.1-emu: "),
        ] {
            let f = FakeTaps { fail: Some(("vif3.1-emu".into(), errno)), ..FakeTaps::default() };
            let e = NicTaps::create(&f, ["vif3.0-emu", "vif3.1-emu"]).err().unwrap().to_string();
            assert!(e.starts_with("creating tap vif3.1-emu: ") && e.contains(want), "{errno}: {e}");
            assert!(f.open.lock().unwrap().is_empty(), "vif3.0-emu was not closed again");
        }
    }
}
