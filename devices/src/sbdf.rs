//! PCI addresses as Xen packs them (`XEN_DMOP_PCI_SBDF`, the upper half of
//! a PCI_CONFIG ioreq address): segment, bus, device, function.

/// Segment, bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sbdf {
    pub seg: u16,
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

impl Sbdf {
    /// Segment 0, bus 0.
    pub const fn new(dev: u8, func: u8) -> Self {
        Self { seg: 0, bus: 0, dev: dev & 0x1f, func: func & 7 }
    }

    /// Decodes Xen's packed form, `seg << 16 | bus << 8 | dev << 3 | fn`
    /// (`XEN_DMOP_PCI_SBDF`, and the upper half of a PCI_CONFIG ioreq address).
    pub const fn from_u32(v: u32) -> Self {
        Self { seg: (v >> 16) as u16, bus: (v >> 8) as u8, dev: ((v >> 3) & 0x1f) as u8, func: (v & 7) as u8 }
    }

    /// Xen's packed form.
    pub const fn to_u32(self) -> u32 {
        (self.seg as u32) << 16 | (self.bus as u32) << 8 | ((self.dev as u32) & 0x1f) << 3 | (self.func as u32 & 7)
    }
}

impl std::fmt::Display for Sbdf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.seg, self.bus, self.dev, self.func)
    }
}
