//! The host-facing services of the device model: the QMP server libxl talks
//! to ([`qmp`]) and the serial backends behind the guest's UARTs
//! ([`chardev`]).

pub mod chardev;
pub mod qmp;
mod serial_failures;
pub mod vchan;
