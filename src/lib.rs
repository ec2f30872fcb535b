//! xendm: a QEMU-compatible device model for Xen HVM guests.
