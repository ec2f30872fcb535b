//! Regression tests for the start-up input findings of the December 2026
//! audit (`audit-2026-12.md` section 3 and the allocation table of section
//! 1): every allocation the loaders make is bounded by the RAM layout or by
//! a small constant, never by a size a file claims. A counting allocator
//! records the largest single allocation made on the test's own thread
//! while loading.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xendm_fw_cfg::{keys, BootFiles, FwCfgItems, FwCfgOptions, LoadError, RamLayout};

/// Counts the largest allocation of the threads that ask for it.
struct Largest;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to `System` unchanged; the bookkeeping
// only touches const-initialised thread-locals of `Copy` types, which
// neither allocate nor run destructors.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Largest = Largest;

/// Runs `f`, returning its result and the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, LARGEST.with(Cell::get))
}

/// What the loaders may allocate at once: the Linux setup code (128 KiB),
/// a few pages of headers; nothing near a file's size.
const SMALL: usize = 256 << 10;

fn load(kernel: &Path, initrd: Option<&Path>, mem_mib: u64) -> Result<FwCfgItems, LoadError> {
    let mut fw = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
    let files = BootFiles {
        kernel: kernel.to_path_buf(),
        initrd: initrd.map(|p| p.display().to_string()),
        cmdline: String::new(),
    };
    xendm_fw_cfg::load(&mut fw, &files, &RamLayout::xen(mem_mib, None), None).map(|_| fw)
}

fn mini_bzimage() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/boot/mini-bzImage")).unwrap()
}

fn sparse(dir: &Path, name: &str, head: &[u8], len: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, head).unwrap();
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len).unwrap();
    p
}

/// A 292-byte a.out-kludge multiboot kernel whose header claims a
/// 267 MB BSS (audit: the loader allocated a 267 MB zeroed buffer before
/// the RAM check).
fn bss_bomb(dir: &Path) -> PathBuf {
    const MAGIC: u32 = 0x1bad_b002;
    const AOUT_KLUDGE: u32 = 1 << 16;
    let load = 0x10_0000u32;
    let mut img = Vec::new();
    for w in [
        MAGIC,
        AOUT_KLUDGE,
        0u32.wrapping_sub(MAGIC).wrapping_sub(AOUT_KLUDGE),
        load,               // header_addr
        load,               // load_addr
        0,                  // load_end_addr: the whole file
        load + 267_000_000, // bss_end_addr
        load + 32,          // entry_addr
    ] {
        img.extend_from_slice(&w.to_le_bytes());
    }
    img.resize(292, 0x90);
    let p = dir.join("mb-bss-bomb");
    std::fs::write(&p, img).unwrap();
    p
}

#[test]
fn a_multiboot_header_claiming_a_huge_bss_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let k = bss_bomb(dir.path());
    let (r, largest) = largest_allocation(|| load(&k, None, 128));
    let e = r.unwrap_err();
    assert!(matches!(e, LoadError::KernelTooLarge { .. }), "{e}");
    assert!(largest < SMALL, "the loader allocated {largest} bytes for a 292-byte file");
    // Where it fits, it is served as zeros, still without a buffer.
    let (r, largest) = largest_allocation(|| load(&k, None, 512));
    let fw = r.unwrap();
    assert!(largest < SMALL, "{largest}");
    let image = 267_000_000u64.div_ceil(4096) * 4096;
    assert_eq!(fw.item(keys::KERNEL_DATA).unwrap().len(), image + 4096, "image, then one page of information");
}

/// Audit: a 500 MB kernel was read whole (515 MB RSS, 3.2 s) before the
/// check that it cannot fit in `-m 128`.
#[test]
fn a_500_mb_kernel_is_refused_for_128_mib_from_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let k = sparse(dir.path(), "big-bzImage", &mini_bzimage(), 500_000_000);
    let t = Instant::now();
    let (r, largest) = largest_allocation(|| load(&k, None, 128));
    let e = r.unwrap_err();
    assert!(matches!(e, LoadError::KernelTooLarge { .. }), "{e}");
    assert!(largest < SMALL, "{largest}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// Audit: a 100 MB initrd with `-m 16` cost 106 MB before being refused;
/// a fitting one was read whole.
#[test]
fn initrds_are_checked_from_their_size_and_never_read_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k");
    std::fs::write(&k, mini_bzimage()).unwrap();
    let rd = sparse(dir.path(), "rd", b"initrd", 100_000_000);
    let (r, largest) = largest_allocation(|| load(&k, Some(&rd), 16));
    assert!(matches!(r.unwrap_err(), LoadError::InitrdTooLarge { .. }));
    assert!(largest < SMALL, "{largest}");
    let (r, largest) = largest_allocation(|| load(&k, Some(&rd), 256));
    let fw = r.unwrap();
    assert!(largest < SMALL, "{largest}");
    assert_eq!(fw.item(keys::INITRD_DATA).unwrap().len(), 100_000_000);
}
