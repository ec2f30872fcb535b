//! xendm: a QEMU-compatible device model for Xen HVM guests.
//!
//! Layers (see `docs/architecture.md`): [`abi`] is Xen's ioreq ABI, [`engine`]
//! serves one request against the device bus and guest memory, [`trace`]
//! records and replays what the engine did.

pub mod abi;
pub mod chardev;
pub mod cli;
pub mod engine;
pub mod machine;
pub mod trace;
pub mod privileges;
pub mod pvbackends;
pub mod qmp;
pub mod replay;
pub mod xen;
pub mod xenstore;
