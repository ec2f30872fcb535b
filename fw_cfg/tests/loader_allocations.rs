//! Reproducers from the `loader_*` fuzz targets (`docs/fuzzing.md`), run
//! under a counting allocator: a loader must not allocate more than the
//! guest's RAM layout allows for a file the size of the input, whatever
//! sizes the file claims. Each input is the fuzzer's, kept as it was found
//! (`-malloc_limit_mb=64`, a 32 MiB layout).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use xendm_fw_cfg::{FwCfgItems, FwCfgOptions, LoadError, LoadedFile, RamLayout};

/// The system allocator, remembering the largest single request.
struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; recording the size has no effect on the allocation.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

/// The layout the fuzz targets plan for.
const RAM_MIB: u64 = 32;

fn multiboot(image: Vec<u8>) -> (Result<(), LoadError>, usize) {
    let mut fw = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
    let kernel = LoadedFile::from_bytes("/fuzz/kernel", image);
    let mut read = |p: &std::path::Path| Ok(LoadedFile::from_bytes(p, vec![0; 1000]));
    LARGEST.store(0, Ordering::Relaxed);
    let r = xendm_fw_cfg::multiboot::load(&mut fw, &kernel, None, "", &RamLayout::xen(RAM_MIB, None), &mut read);
    (r.map(drop), LARGEST.load(Ordering::Relaxed))
}

/// A multiboot header with the a.out kludge: `bss_end` 256 MiB past the
/// load address, in a 4 KiB file.
fn aout_huge_bss() -> Vec<u8> {
    let (flags, load) = (1u32 << 16, 0x10_0000u32);
    let magic = xendm_fw_cfg::multiboot::HEADER_MAGIC;
    let words = [
        magic,
        flags,
        0u32.wrapping_sub(magic).wrapping_sub(flags),
        load,
        load,
        load + 0x1000,
        load + (256 << 20),
        load,
    ];
    let mut img: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    img.resize(0x1000, 0x90);
    img
}

/// One test, so that no other test's allocations are counted.
#[test]
fn multiboot_images_are_checked_against_the_layout_before_allocation() {
    let elf = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/multiboot-elf-oom")).unwrap();
    for (name, image) in [("ELF segment of 368 MiB (fuzzer)", elf), ("a.out bss_end 256 MiB", aout_huge_bss())] {
        let (r, largest) = multiboot(image);
        assert!(largest < (RAM_MIB << 20) as usize, "{name}: allocated {largest} bytes for a {RAM_MIB} MiB guest");
        // Refused, whichever check sees it first (the RAM fit, or a
        // segment claiming bytes the file does not have).
        assert!(matches!(r, Err(LoadError::KernelTooLarge { .. } | LoadError::Truncated { .. })), "{name}: {r:?}");
    }
}
