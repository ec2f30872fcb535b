//! Hostile traces through the real `xendm-replay` binary, run under a 1 GiB
//! address-space limit (`ulimit -v`): what a replay may allocate is bounded
//! by the trace limits, not by sizes the trace claims (audit 2026-12, risk
//! 5; `docs/traces.md`, "Limits").
//!
//! Both cases made 848c90d's `xendm-replay` abort on allocation failure
//! under this limit (without one it grew until the OOM killer acted).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)] // test code

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// Address-space limit for the replay process, in KiB.
const ULIMIT_V_KIB: u64 = 1 << 20;

fn write_trace(path: &Path, lines: &[String]) {
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::best());
    for l in lines {
        writeln!(gz, "{l}").unwrap();
    }
    gz.finish().unwrap();
}

/// Runs `xendm-replay TRACE DIR` under the limit; returns (exit code, stderr).
fn replay_limited(trace: &Path, dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ULIMIT_V_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_xendm-replay"))
        .arg(trace)
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("xendm-replay did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The audit's 268-byte trace, rebuilt: header `files` keys that are
/// substrings of the local file's path (the empty string, runs of one
/// letter), all with the hash of one file in the search directory. 848c90d
/// replaced every key in every argument, and each replacement multiplied the
/// argv's length.
#[test]
fn a_rewrite_bomb_header_is_refused_within_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("aaaaaaaaaaaaaaaaaaaaaaaa");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("aaaaaaaaaaaaaaaaaaaaaaaa"), b"x").unwrap();
    let sha = hex::encode(sha2::Sha256::digest(b"x"));
    let keys = ["", "a", "aa", "aaa", "aaaa", "aaaaa"];
    let files: Vec<String> = keys.iter().map(|k| format!("\"{k}\":\"{sha}\"")).collect();
    let header = format!(
        r#"{{"xendm_trace":1,"argv":["-xen-domid","1","-name","aaaaaaaaaaaaaaaaaaaaaaaaaaaa"],"files":{{{}}},"producer":"x"}}"#,
        files.join(",")
    );
    let trace = tmp.path().join("bomb.jsonl.gz");
    write_trace(&trace, &[header]);
    assert!(std::fs::metadata(&trace).unwrap().len() < 300, "the trace stays tiny");
    let (code, stderr) = replay_limited(&trace, &dir);
    assert_eq!(code, Some(1), "an error exit, not an abort: {stderr}");
    assert!(stderr.contains("line 1") && stderr.contains("files"), "{stderr}");
}

/// One record whose fw_cfg DMA descriptor asks for a 4 GiB zero fill: the
/// replayed device writes 4 GiB in 4 KiB chunks. 848c90d kept every page
/// written (up to 1 GiB) and recorded every chunk with its hash.
#[test]
fn a_record_claiming_a_huge_transfer_is_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let boot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot");
    let kernel = std::fs::read(boot.join("mini-bzImage")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&kernel));
    let header = format!(
        r#"{{"xendm_trace":1,"argv":["-xen-domid","1","-kernel","/guest/k"],"files":{{"/guest/k":"{sha}"}},"producer":"x"}}"#
    );
    // Descriptor at 0x1000: select key 0x7fff (no such item) and read; the
    // whole length is zero-filled at 0x10_0000.
    let mut desc = Vec::new();
    desc.extend_from_slice(&((0x7fffu32 << 16) | 0x08 | 0x02).to_be_bytes());
    desc.extend_from_slice(&u32::MAX.to_be_bytes());
    desc.extend_from_slice(&0x10_0000u64.to_be_bytes());
    let kick = (0x1000u32).swap_bytes();
    let record = format!(
        r#"{{"i":0,"vcpu":0,"req":{{"addr":1304,"data":{kick},"count":1,"size":4,"data_is_ptr":false,"is_read":false,"df":false,"kind":0}},"resp":{kick},"mem_reads":[{{"gpa":4096,"len":16,"hex":"{}"}}]}}"#,
        hex::encode(&desc)
    );
    let trace = tmp.path().join("dma.jsonl.gz");
    write_trace(&trace, &[header, record]);
    let start = Instant::now();
    let (code, stderr) = replay_limited(&trace, &boot);
    assert_eq!(code, Some(1), "an error exit, not an abort: {stderr}");
    assert!(stderr.contains("record 0") && stderr.contains("more than"), "{stderr}");
    eprintln!("refused in {:?}", start.elapsed());
}

/// A trace naming a host file (`/etc/shadow`-like: here a valid kernel
/// outside the search directory) without, or with, its hash: replay looks
/// only in the directories it is given, so it refuses. 848c90d opened the
/// named path and replayed the trace ("0 records replayed, no divergence").
#[test]
fn a_trace_cannot_name_a_host_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (outside, search) = (tmp.path().join("outside"), tmp.path().join("search"));
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(&search).unwrap();
    let kernel = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot/mini-bzImage")).unwrap();
    let shadow = outside.join("shadow");
    std::fs::write(&shadow, &kernel).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&kernel));
    let shadow = shadow.display();
    let argv = format!(r#""-xen-domid","1","-kernel","{shadow}""#);
    for files in [String::new(), format!(r#""{shadow}":"{sha}""#)] {
        let header = format!(r#"{{"xendm_trace":1,"argv":[{argv}],"files":{{{files}}},"producer":"x"}}"#);
        let trace = tmp.path().join("t.jsonl.gz");
        write_trace(&trace, &[header]);
        let (code, stderr) = replay_limited(&trace, &search);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(&shadow.to_string()), "{stderr}");
    }
}
