//! Option ROMs built from source.
pub const LINUXBOOT_DMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/linuxboot_dma.bin"));
pub const MULTIBOOT_DMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/multiboot_dma.bin"));
pub const PVH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pvh.bin"));
