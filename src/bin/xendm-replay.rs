//! `xendm-replay [--dir DIR]... TRACE [DIR...]`: replays an ioreq trace
//! against a fresh device model (no Xen) and exits non-zero at the first
//! divergence.
//!
//! A trace is untrusted input. The boot files its header names (kernel,
//! initrd, multiboot modules) are found by SHA-256 in the given directories
//! only (`--dir DIR`, or directories after the trace); no path in the trace
//! is opened. Every line is held to the default [`xendm::trace::TraceLimits`].
//! The Xen lab runs this on every trace it records (`tests/lab/run`,
//! `LAB_RECORD=1`); see `docs/traces.md`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: xendm-replay [--dir DIR]... TRACE [DIR...]\n\
    Replays TRACE; its boot files are found by SHA-256 in the DIRs only.";

/// `(trace, dirs)`, or the exit code for `--help` or a usage error.
fn parse_args(args: impl Iterator<Item = OsString>) -> Result<(PathBuf, Vec<PathBuf>), ExitCode> {
    let mut trace = None;
    let mut dirs = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--help" | "-h") => {
                println!("{USAGE}");
                return Err(ExitCode::SUCCESS);
            }
            Some("--dir") => match args.next() {
                Some(d) => dirs.push(PathBuf::from(d)),
                None => {
                    eprintln!("--dir needs a directory\n{USAGE}");
                    return Err(ExitCode::from(2));
                }
            },
            _ if trace.is_none() => trace = Some(PathBuf::from(a)),
            _ => dirs.push(PathBuf::from(a)),
        }
    }
    match trace {
        Some(t) => Ok((t, dirs)),
        None => {
            eprintln!("{USAGE}");
            Err(ExitCode::from(2))
        }
    }
}

fn main() -> ExitCode {
    let (trace, dirs) = match parse_args(std::env::args_os().skip(1)) {
        Ok(v) => v,
        Err(code) => return code,
    };
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
