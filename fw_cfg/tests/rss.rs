//! The process's memory does not grow with the boot files (issue 14 item
//! 1): a 64 MiB initrd and the test kernel are planned into fw_cfg items
//! and then read by the guest through the real DMA interface, and the
//! resident set (`VmRSS`) and its peak (`VmHWM`, reset through
//! `/proc/self/clear_refs`) are compared before and after. When the items
//! held copies of the files, the initrd alone added 64 MiB.
//!
//! One test in its own binary, so no other test's allocations run in
//! parallel. `cargo test -p xendm-fw-cfg --test rss -- --nocapture`
//! prints the figures (`docs/benchmarks.md`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::GuestAddress;
use xendm_devices::{BusDevice, GuestMemory, MemError};
use xendm_fw_cfg::{keys, BootFiles, FwCfg, FwCfgItems, FwCfgOptions, RamLayout};

/// Guest memory that holds one DMA descriptor at 0x1000 and discards (but
/// counts and checksums) everything else written: the guest's RAM is not
/// the DM's memory.
struct Sink {
    desc: std::sync::Mutex<[u8; 16]>,
    control: AtomicU64,
    written: AtomicU64,
    sum: AtomicU64,
}

impl GuestMemory for Sink {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        if addr.0 == 0x1000 && buf.len() == 16 {
            buf.copy_from_slice(&*self.desc.lock().unwrap());
        }
        Ok(())
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        if addr.0 == 0x1000 {
            self.control.store(u64::from(u32::from_be_bytes(buf.try_into().unwrap())), Ordering::Relaxed);
        } else {
            self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
            let s: u64 = buf.iter().map(|&b| u64::from(b)).sum();
            self.sum.fetch_add(s, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `(VmRSS, VmHWM)` in KiB.
fn rss_hwm() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak (`VmHWM`) to the current resident set, if the kernel
/// lets us (it does for our own process).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Reads `len` bytes of item `key` by DMA into `mem`.
fn dma_read(fw: &mut FwCfg, mem: &Sink, key: u16, len: u32) {
    let control = (u32::from(key) << 16) | 0x08 | 0x02; // SELECT | READ
    let mut d = [0u8; 16];
    d[0..4].copy_from_slice(&control.to_be_bytes());
    d[4..8].copy_from_slice(&len.to_be_bytes());
    d[8..16].copy_from_slice(&0x10_0000u64.to_be_bytes());
    *mem.desc.lock().unwrap() = d;
    fw.write(8, &0x1000u32.to_be_bytes());
    assert_eq!(mem.control.load(Ordering::Relaxed), 0, "DMA error reading key {key:#x}");
}

fn write_sparse_initrd(path: &Path, len: u64) {
    // A few non-zero pages so the checksum sees real bytes, the rest a hole.
    let f = std::fs::File::create(path).unwrap();
    use std::os::unix::fs::FileExt;
    for page in [0u64, 1 << 20, len - 4096] {
        f.write_all_at(&[0x5a; 4096], page).unwrap();
    }
    f.set_len(len).unwrap();
}

#[test]
fn resident_memory_does_not_grow_with_the_boot_files() {
    const INITRD: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("bzImage");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/boot/mini-bzImage"), &kernel).unwrap();
    let initrd = dir.path().join("initrd");
    write_sparse_initrd(&initrd, INITRD);
    let mem = Arc::new(Sink {
        desc: std::sync::Mutex::new([0; 16]),
        control: AtomicU64::new(u64::MAX),
        written: AtomicU64::new(0),
        sum: AtomicU64::new(0),
    });

    let peak_reset = reset_peak();
    let (rss0, hwm0) = rss_hwm();
    let mut items = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
    let files = BootFiles { kernel, initrd: Some(initrd.display().to_string()), cmdline: "console=ttyS0".into() };
    let plan = xendm_fw_cfg::load(&mut items, &files, &RamLayout::xen(256, None), None).unwrap();
    let (rss_planned, _) = rss_hwm();
    let mut fw = FwCfg::new(mem.clone(), items);
    dma_read(&mut fw, &mem, keys::INITRD_DATA, INITRD as u32);
    dma_read(&mut fw, &mem, keys::KERNEL_DATA, 4096);
    let (rss1, hwm1) = rss_hwm();

    assert_eq!(mem.written.load(Ordering::Relaxed), INITRD + 4096, "the guest got every byte");
    assert_eq!(mem.sum.load(Ordering::Relaxed) % 1_000_000_007, {
        let kernel_sum: u64 = std::fs::read(&plan.files[0].path).unwrap()[1024..].iter().map(|&b| u64::from(b)).sum();
        (3 * 4096 * 0x5a + kernel_sum) % 1_000_000_007
    });
    let grew = rss1.saturating_sub(rss0);
    let peak = hwm1.saturating_sub(if peak_reset { rss0 } else { hwm0 });
    eprintln!(
        "64 MiB initrd: VmRSS {rss0} kB -> {rss_planned} kB planned -> {rss1} kB after the guest read it \
         (+{grew} kB); VmHWM +{peak} kB over the start{}",
        if peak_reset { "" } else { " (peak not reset: clear_refs refused)" }
    );
    assert!(grew < 4096, "VmRSS grew by {grew} kB for a 64 MiB initrd");
    if peak_reset {
        assert!(peak < 4096, "VmHWM rose by {peak} kB for a 64 MiB initrd");
    }
}
