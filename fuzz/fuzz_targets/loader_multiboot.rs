//! The multiboot loader on fuzzer bytes as the whole kernel file: a Multiboot 0.6.96
//! kernel (a.out kludge or ELF) with two modules,
//! in memory (no file opened), planned for a 32 MiB guest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xendm_fuzz::load_kernel(xendm_fw_cfg::BootProtocol::Multiboot, data);
});
