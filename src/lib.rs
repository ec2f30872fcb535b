//! xendm: a QEMU-compatible device model for Xen HVM guests.
//!
//! The layers, top to bottom (see `docs/architecture.md` for the rules
//! between them):
//!
//! * [`app`] - the process: start-up steps, run state, privileges;
//! * [`cli`] - libxl's qemu-xen argv into a typed configuration;
//! * [`machine`] - which devices sit where (the `xenfv` PC), built from the
//!   configuration; replay of recorded traces against a rebuilt machine;
//! * [`control`] - the host-facing services: QMP for libxl, serial backends;
//! * [`trace`] - the ioreq trace format, its recorder, reader and replayer;
//! * [`ioreq`] - Xen's ioreq ABI and the pure engine that serves one request
//!   against the device bus and guest memory;
//! * [`xen`] - everything that talks to Xen: the only FFI, the hypervisor,
//!   the mapcache, the ioreq server, the xenstore client, PV backends;
//! * [`net`] - the host side of emulated NICs: the taps libxl expects.

pub mod app;
pub mod cli;
pub mod control;
pub mod ioreq;
pub mod machine;
pub mod net;
pub mod trace;
pub mod xen;
