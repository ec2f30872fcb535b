//! Linux tap interfaces: `/dev/net/tun` and the `TUNSETIFF` ioctl.
//!
//! Facts from Linux `Documentation/networking/tuntap.rst` and
//! `include/uapi/linux/if_tun.h`: opening `/dev/net/tun` gives a descriptor
//! with no interface; `TUNSETIFF` (`_IOW('T', 202, int)`) with a
//! `struct ifreq` whose `ifr_name` is the wanted name and whose
//! `ifr_flags` are `IFF_TAP | IFF_NO_PI` creates the tap (or attaches to an
//! existing persistent one of that name), which needs `CAP_NET_ADMIN`. The
//! interface lives as long as the descriptor stays open (no
//! `TUNSETPERSIST`), as with QEMU's `-netdev tap`. Nothing is ever read or
//! written: xendm emulates no NIC.
//!
//! The descriptor is opened close-on-exec (std's default).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

use super::{Tap, TapFactory};

/// The clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `TUNSETIFF`: `_IOW('T', 202, int)` (`linux/if_tun.h`).
const TUNSETIFF: u32 = (1 << 30) | (4 << 16) | ((b'T' as u32) << 8) | 202;
/// `IFNAMSIZ`.
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as `TUNSETIFF` uses it: the name, the flags (`short`), and
/// the rest of the union (40 bytes in all on Linux).
#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    rest: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReqFlags>() == std::mem::size_of::<libc::ifreq>());

/// Creates Linux taps.
pub struct LinuxTaps;

/// One open tap.
struct LinuxTap {
    name: String,
    _file: File,
}

impl Tap for LinuxTap {
    fn name(&self) -> &str {
        &self.name
    }
}

impl TapFactory for LinuxTaps {
    fn create(&self, name: &str) -> io::Result<Box<dyn Tap>> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let file = OpenOptions::new().read(true).write(true).open(TUN_PATH)?;
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
            rest: [0; 22],
        };
        if let Some(dst) = req.name.get_mut(..bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        // SAFETY: `file` is an open /dev/net/tun descriptor; TUNSETIFF
        // reads and writes one `struct ifreq` at the pointer, and `req` is a
        // live, exclusively borrowed value of exactly that size and layout
        // (checked above against libc's `ifreq`), NUL-terminated name.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReqFlags) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Box::new(LinuxTap { name: name.to_string(), _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{NicTaps, TapError};
    use std::path::Path;

    #[test]
    fn the_request_number_is_linuxs() {
        assert_eq!(TUNSETIFF, 0x4004_54ca);
    }

    #[test]
    fn names_linux_would_not_take_as_is_are_refused_before_any_open() {
        for bad in ["", "sixteen-bytes-xx", "a\0b"] {
            let e = LinuxTaps.create(bad).err().unwrap();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    /// A real tap on this host, where that is possible: it exists while
    /// held and is gone once released. Without /dev/net/tun or the
    /// capability, the error must be the mapped one.
    #[test]
    fn a_real_tap_lives_as_long_as_it_is_held() {
        let name = format!("xdmt{}", std::process::id() % 1_000_000);
        let sys = Path::new("/sys/class/net").join(&name);
        match NicTaps::create(&LinuxTaps, [name.as_str()]) {
            Ok(mut taps) => {
                assert!(sys.exists(), "{} missing while held", sys.display());
                let flags = std::fs::read_to_string(sys.join("tun_flags")).unwrap();
                let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
                assert_eq!(flags & 0x1003, 0x1002, "IFF_TAP|IFF_NO_PI, not IFF_TUN");
                assert_eq!(taps.release(), 1);
                assert!(!sys.exists(), "{} still there after release", sys.display());
            }
            Err(TapError::NoTunDevice { .. } | TapError::NotPermitted { .. }) => {
                assert!(!Path::new(TUN_PATH).exists() || !sys.exists());
            }
            Err(e) => panic!("{e}"),
        }
    }
}
