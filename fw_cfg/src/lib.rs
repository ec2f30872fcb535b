//! QEMU's fw_cfg device and the direct kernel boot loaders that fill it.
//!
//! * [`items`]: what the device serves (the item table, the file directory,
//!   the boot order), built before guest memory exists;
//! * [`device`]: the fw_cfg device itself (selector/data ports 0x510/0x511
//!   and the DMA interface at 0x514), following QEMU's
//!   `docs/specs/fw_cfg.rst` and `hw/nvram/fw_cfg.c`; it serves an
//!   [`FwCfgItems`] against guest memory.
//! * [`plan`]: the types the loaders share (format, RAM layout, files,
//!   errors); the loaders import it, never [`boot`].
//! * [`source`]: the boot files, opened without blocking, checked to be
//!   regular files, kept open and read by offset; [`blob`]: an item's
//!   content as in-memory bytes, file ranges and zeros, streamed to the
//!   guest in bounded pieces;
//! * [`boot`]: opens the `-kernel`/`-initrd`/`-append` files, detects the
//!   image type as QEMU's `x86_load_linux` does and runs one of the loaders:
//!   [`linux`] (bzImage, Linux `Documentation/arch/x86/boot.rst`),
//!   [`multiboot`] (Multiboot 0.6.96, QEMU `hw/i386/multiboot.c`) or
//!   [`pvh`] (the Xen PVH entry ELF note, QEMU `load_elfboot`).
//!
//! The loaders never write guest memory themselves, and never read a boot
//! file whole: everything goes into an [`FwCfgItems`] (headers and patched
//! bytes in memory, the rest as ranges of the open files), filled before any
//! device or guest memory exists, which
//! QEMU's option ROMs (`linuxboot_dma.bin`, `multiboot_dma.bin`, `pvh.bin`)
//! or ours copy into the guest at boot. The only exception is PVH, whose ELF
//! segments QEMU places in RAM directly; [`plan::BootPlan::guest_writes`]
//! hands them to the caller.
//!
//! The DMA engine is reachable from the guest, so the crate denies the lints
//! that could turn hostile input into a panic.
mod bytes;
mod elf;

pub mod blob;
pub mod boot;
pub mod device;
pub mod items;
pub mod linux;
pub mod multiboot;
pub mod plan;
pub mod pvh;
pub mod source;

pub use blob::Blob;
pub use boot::{detect, load};
pub use device::{FwCfg, FwCfgState};
pub use items::{keys, FwCfgError, FwCfgItems, FwCfgOptions};
pub use plan::{BootFiles, BootPlan, BootProtocol, LoadError, LoadedFile, RamLayout};
