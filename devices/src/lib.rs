//! PC platform devices for xendm and the bus that routes guest accesses to them.
//!
//! Everything here is reachable from guest input, so the crate denies the lints
//! that could turn a hostile access into a panic. Devices are plain state
//! machines: they never know their base address (the machine places them
//! from [`pc::layout`]), and every side effect (IRQ lines, guest memory,
//! shutdown requests) goes through the injected traits in [`hv`] and [`mem`],
//! so unit tests use the fakes found there. [`state`] is their typed,
//! versioned save/restore.
pub mod bus;
pub mod hv;
pub mod mem;
pub mod pc;
pub mod pci_config;
pub mod ratelimit;
pub mod sbdf;
pub mod state;
pub mod sync;

pub use bus::{Bus, BusDevice, BusError, PciFunction, PciRegion, Sbdf, Space};
pub use hv::{HvCall, Hypervisor, IrqLine, ShutdownReason};
pub use mem::{GuestMemory, MemError};
pub use state::{AnyDeviceState, DeviceState, StateError};
