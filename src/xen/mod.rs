//! The Xen backend: everything that talks to the hypervisor.
//!
//! * [`xenstore`] - a xenstore client (the `xs_wire.h` protocol) and the keys
//!   libxl waits for; [`pvbackends`] - PV backends xendm does not serve;
//! * [`sys`] - safe wrappers over `libxendevicemodel`, `libxenevtchn`,
//!   `libxenforeignmemory` and `xentoolcore_restrict_all` (the only FFI of
//!   the project);
//! * [`mapcache`] - guest memory ([`xendm_devices::GuestMemory`]) over lazily
//!   mapped 1 MiB buckets;
//! * [`hypervisor`] - [`xendm_devices::Hypervisor`] (IRQs, MSI, shutdown)
//!   over dm_ops;
//! * [`ioreq_server`] - the ioreq server and its serving loop (Xen's
//!   `public/hvm/ioreq.h` protocol), handing requests to a
//!   [`crate::ioreq::handler::IoreqHandler`].
//!
//! Facts come from Xen 4.17's public headers and libraries and from what
//! QEMU's Xen support does (see the fact sheets); nothing here is specific to
//! one device. Everything below the FFI is written against traits
//! ([`mapcache::ForeignMapper`], [`ioreq_server::Transport`],
//! [`crate::ioreq::handler::IoreqHandler`]) so that it is tested without Xen.
//! Of the rest of the crate, `xen` uses only [`crate::ioreq::abi`] and
//! [`crate::ioreq::handler`] (its tests also drive the real engine).
pub mod hypervisor;
pub mod ioreq_server;
pub mod mapcache;
pub mod pvbackends;
pub mod sys;
#[cfg(feature = "stubdom")]
pub mod vchan;
pub mod xenstore;

pub use hypervisor::XenHypervisor;
pub use ioreq_server::{IoreqServer, ServerControl, StopHandle};
pub use mapcache::{ForeignMapper, MapCache};
pub use sys::{restrict_all, DeviceModel, DomId, EventChannels, ForeignMemory};

/// A failed call into Xen's libraries (or the system calls around them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XenError {
    /// `call` failed with `errno`.
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    Call {
        /// The C function (or system call) that failed.
        call: &'static str,
        /// Its `errno`.
        errno: i32,
    },
}

impl XenError {
    /// The `errno` of the failed call.
    pub const fn errno(&self) -> Option<i32> {
        match self {
            Self::Call { errno, .. } => Some(*errno),
        }
    }

    /// The name of the failed call.
    pub const fn call(&self) -> &'static str {
        match self {
            Self::Call { call, .. } => call,
        }
    }
}
