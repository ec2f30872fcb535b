//! PC platform devices for xendm and the bus that routes guest accesses to them.
//!
//! Everything here is reachable from guest input, so the crate denies the lints
//! that could turn a hostile access into a panic. Devices are plain state
//! machines: they never know their base address, and every side effect (IRQ
//! lines, guest memory, shutdown requests) goes through the injected traits in
//! [`hv`] and [`mem`], so unit tests use the fakes found there.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod bus;
pub mod cmos;
pub mod hv;
pub mod i8042;
pub mod i440fx;
pub mod mem;
pub mod pci_config;
pub mod piix3;
pub mod piix4_pm;
pub mod port92;
pub mod ratelimit;
pub mod snapshot;
pub mod uart;
pub mod xen_platform;

pub use bus::{Bus, BusDevice, BusError, PciFunction, PciRegion, Sbdf, Space};
pub use hv::{HvCall, Hypervisor, IrqLine, ShutdownReason};
pub use mem::{GuestMemory, MemError};
pub use snapshot::{Snapshot, SnapshotError};
