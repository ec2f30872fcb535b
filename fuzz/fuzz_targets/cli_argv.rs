//! The command line (`xendm::cli::parse`, QEMU's option syntax as libxl
//! writes it): fuzzer bytes split at NUL into arguments (invalid UTF-8
//! kept), parsed, and on success every derived value looked at (serial
//! ports, the RAM layout, the reason given for each ignored option).
//! Parsing touches no file.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use xendm::cli::{self, Command};

fuzz_target!(|data: &[u8]| {
    let argv: Vec<OsString> = data.split(|&b| b == 0).map(|a| OsString::from_vec(a.to_vec())).collect();
    if let Ok(Command::Run(cfg)) = cli::parse(argv) {
        let _ = cfg.serial_ports().count();
        let _ = xendm::machine::spec::ram_layout(&cfg);
        for item in &cfg.ignored {
            let _ = cli::ignored_reason(item);
        }
        let _ = format!("{cfg:?}");
    }
});
