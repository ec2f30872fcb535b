//! `xendm-replay` on a hostile trace: the reader (gzip, line bounds, the
//! `TraceLimits`), the header's argv through the CLI parser and the replay
//! rebuild (files found by hash in `tests/data/boot` only), then every
//! record against the rebuilt machine. Input starting with `{` is taken as
//! uncompressed JSON Lines and gzipped by the harness; anything else is
//! written as it is (a gzip stream, or garbage).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use xendm::machine::replay::MachineRebuilder;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl.gz");
    let file = std::fs::File::create(&path).unwrap();
    if data.first() == Some(&b'{') {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap();
    } else {
        let mut f = file;
        f.write_all(data).unwrap();
    }
    let rebuilder = MachineRebuilder { dirs: vec![xendm_fuzz::boot_dir()] };
    let _ = xendm::trace::replay(&path, &rebuilder);
});
