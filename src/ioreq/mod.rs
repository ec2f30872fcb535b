//! Xen's ioreq protocol, decoded once ([`abi`]), and the engine that serves
//! one request against the device bus and guest memory ([`engine`]); an
//! [`observer`] sees each request served (the trace recorder is one).
//! [`handler`] is the seam the Xen ioreq server calls through; [`timeline`]
//! recognises the guest's boot phases from its requests.
//!
//! Nothing here talks to Xen: the ioreq server in [`crate::xen`] hands
//! requests in and writes the responses back.

pub mod abi;
pub mod engine;
pub mod handler;
pub mod observer;
pub mod timeline;
