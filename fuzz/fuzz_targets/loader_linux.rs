//! The linux loader on fuzzer bytes as the whole kernel file: a Linux bzImage
//! (boot protocol 2.x, `Documentation/arch/x86/boot.rst`),
//! in memory (no file opened), planned for a 32 MiB guest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    xendm_fuzz::load_kernel(xendm_fw_cfg::BootProtocol::Linux, data);
});
