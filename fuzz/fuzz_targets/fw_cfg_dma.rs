//! fw_cfg (QEMU `docs/specs/fw_cfg.rst`) on its own, with the items a
//! Linux direct boot plans, over 2 MiB of fake guest memory with a hole:
//! port accesses of any width at every offset (selector, data, DMA address
//! halves), DMA descriptors placed in guest memory, and resets. A DMA
//! transfer must clear its control word or set only the error bit.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use xendm_devices::bus::BusDevice;
use xendm_devices::mem::TestMemory;
use xendm_devices::GuestMemory;
use xendm_fw_cfg::{BootFiles, FwCfg, FwCfgItems, FwCfgOptions, RamLayout};

/// Operations per input.
const MAX_OPS: usize = 256;

/// The items a Linux direct boot plans (kernel, initrd, cmdline, e820...).
fn items() -> FwCfgItems {
    static PLANNED: Mutex<Option<FwCfgItems>> = Mutex::new(None);
    let mut planned = PLANNED.lock().unwrap();
    planned
        .get_or_insert_with(|| {
            let boot = xendm_fuzz::boot_dir();
            let mut fw = FwCfgItems::new(&FwCfgOptions::default()).unwrap();
            let files = BootFiles {
                kernel: boot.join("mini-bzImage"),
                initrd: Some(boot.join("mini-initrd").display().to_string()),
                cmdline: "console=ttyS0".into(),
            };
            let plan = xendm_fw_cfg::load(&mut fw, &files, &RamLayout::xen(16, None), None).unwrap();
            fw.add_boot_rom(plan.rom_name, xendm_roms::by_name(plan.rom_name).unwrap().to_vec()).unwrap();
            fw
        })
        .clone()
}

fn run(data: &[u8]) -> arbitrary::Result<()> {
    let mut u = Unstructured::new(data);
    // 0-1 MiB and 1.5-2 MiB: DMA into the hole fails.
    let mem = Arc::new(TestMemory::new(&[(0, 1 << 20), (0x18_0000, 1 << 19)]).unwrap());
    let mut dev = FwCfg::new(mem.clone(), items());
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let offset = u64::from(u.int_in_range(0..=12u8)?);
        let width = [1usize, 2, 4, 8][usize::from(u.int_in_range(0..=3u8)?)];
        match u.int_in_range(0..=9u8)? {
            0 => dev.reset(),
            1 | 2 => {
                let mut buf = [0u8; 8];
                dev.read(offset, &mut buf[..width]);
            }
            3 | 4 => {
                let bytes = u.bytes(width)?;
                dev.write(offset, bytes);
            }
            _ => {
                // A descriptor in guest memory, then the kick (address
                // big-endian at offset 4, as the guest writes it).
                let at = u64::from(u.int_in_range(0..=0x1f_ffffu32)?) & !0xf;
                let mut d = [0u8; 16];
                u.fill_buffer(&mut d)?;
                if u.arbitrary()? {
                    d[4..8].copy_from_slice(&u.int_in_range(0..=0x2000u32)?.to_be_bytes());
                }
                let _ = mem.write(GuestAddress(at), &d);
                dev.write(4, &at.to_be_bytes());
                let mut ctl = [0u8; 4];
                if mem.read(GuestAddress(at), &mut ctl).is_ok() {
                    let ctl = u32::from_be_bytes(ctl);
                    assert!(ctl == 0 || ctl == 1, "control word after DMA: {ctl:#x}");
                }
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
