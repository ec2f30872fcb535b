//! The pvh loader on fuzzer bytes as the whole kernel file: a PVH ELF
//! (`XEN_ELFNOTE_PHYS32_ENTRY`, the `hvm_start_info` ABI),
//! in memory (no file opened), planned for a 32 MiB guest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xendm_fuzz::load_kernel(xendm_fw_cfg::BootProtocol::Pvh, data);
});
