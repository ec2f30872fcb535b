//! The PC chips of QEMU's `xenfv` machine: the i440FX host bridge, the PIIX3
//! ISA bridge and PIIX4 power management functions (with the ACPI CPU hotplug
//! bitmap), the Xen platform device,
//! the CMOS NVRAM, the 16550A UART, the i8042 keyboard controller and port
//! 0x92. Each is a plain state machine behind [`crate::BusDevice`] or
//! [`crate::PciFunction`]; none knows where it sits: [`layout`] is the one
//! table of the PC's ports, IRQs and PCI slots, and the machine places every
//! device from it.

pub mod cmos;
pub mod cpu_hotplug;
pub mod i440fx;
pub mod i8042;
pub mod layout;
pub mod piix3;
pub mod piix4_pm;
pub mod port92;
pub mod uart;
pub mod xen_platform;
