//! `xendm-replay TRACE [DIR...]`: replays an ioreq trace against a fresh
//! device model (no Xen) and exits non-zero at the first divergence.
//!
//! The boot files the trace's header names (kernel, initrd) are found by
//! SHA-256 in the given directories. The Xen lab runs this on every trace it
//! records (`tests/lab/run`, `LAB_RECORD=1`); see `docs/traces.md`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(trace) = args.next().map(PathBuf::from) else {
        eprintln!("usage: xendm-replay TRACE [DIR...]");
        return ExitCode::from(2);
    };
    let dirs: Vec<PathBuf> = args.map(PathBuf::from).collect();
    match xendm::trace::replay(&trace, &xendm::machine::replay::MachineRebuilder { dirs }) {
        Ok(s) => {
            println!("{}: {} records replayed, no divergence", trace.display(), s.records);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", trace.display());
            ExitCode::FAILURE
        }
    }
}
