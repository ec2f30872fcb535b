//! Rebuilding a recorded machine for replay.
//!
//! A trace header carries the DM's argv and the SHA-256 of every file the DM
//! read at start-up. [`MachineRebuilder`] parses the argv with the real CLI
//! parser, finds each file *by content* in a list of directories (paths in
//! the trace are the recording host's, e.g. dom0's `/guest/vmlinuz`), plans
//! the machine ([`MachineSpec::from_config`]) and builds it against the
//! replay's memory and hypervisor ([`crate::machine::build`]), serial output
//! discarded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use xendm_devices::{GuestMemory, Hypervisor};

use crate::cli::{self, Command};
use crate::ioreq::engine::{Engine, NoHooks};
use crate::machine::spec::MachineSpec;
use crate::machine::{self, MachineBackends};
use crate::trace::{Header, ReplayMachine};

/// Rebuilds the machine a trace was recorded on, finding its boot files by
/// hash in `dirs`.
pub struct MachineRebuilder {
    /// Directories searched (not recursively) for the trace's files.
    pub dirs: Vec<PathBuf>,
}

/// Largest file hashed while searching (bigger candidates are skipped).
const MAX_CANDIDATE: u64 = 512 << 20;

fn sha256_of(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_CANDIDATE {
        return None;
    }
    let data = std::fs::read(path).ok()?;
    Some(hex::encode(Sha256::digest(&data)))
}

impl MachineRebuilder {
    /// Finds a file with this SHA-256 in the search directories.
    pub fn find(&self, sha256: &str) -> Option<PathBuf> {
        for d in &self.dirs {
            let Ok(entries) = std::fs::read_dir(d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if sha256_of(&p).as_deref() == Some(sha256) {
                    return Some(p);
                }
            }
        }
        None
    }

    fn resolve(&self, files: &BTreeMap<String, String>) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut out = BTreeMap::new();
        for (path, sha) in files {
            let local = self.find(sha).ok_or_else(|| {
                format!(
                    "the trace needs {path} (sha256 {sha}); no file with that content in {}",
                    self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            })?;
            out.insert(path.clone(), local);
        }
        Ok(out)
    }
}

/// Replaces every recorded path in `arg` (a whole argument, or a path at the
/// start of a comma-separated multiboot module spec) by its local copy.
fn rewrite(arg: &str, map: &BTreeMap<String, PathBuf>) -> String {
    if let Some(p) = map.get(arg) {
        return p.display().to_string();
    }
    let mut out = arg.to_string();
    for (from, to) in map {
        out = out.replace(from.as_str(), &to.display().to_string());
    }
    out
}

impl ReplayMachine for MachineRebuilder {
    fn build(&self, header: &Header, mem: Arc<dyn GuestMemory>, hv: Arc<dyn Hypervisor>) -> Result<Engine, String> {
        let map = self.resolve(&header.files)?;
        let argv: Vec<std::ffi::OsString> = header.argv.iter().map(|a| rewrite(a, &map).into()).collect();
        let cfg = match cli::parse(argv).map_err(|e| format!("trace argv: {e}"))? {
            Command::Run(c) => c,
            _ => return Err("trace argv does not run a device model".into()),
        };
        let spec = MachineSpec::from_config(&cfg).map_err(|e| e.to_string())?;
        let sinks = spec.serials.iter().map(|_| Box::new(xendm_devices::pc::uart::NullSink) as _).collect();
        let m = machine::build(spec, MachineBackends { hv, mem, hooks: Box::new(NoHooks), serial_sinks: sinks })
            .map_err(|e| e.to_string())?;
        Ok(m.engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_whole_paths_and_module_specs() {
        let mut m = BTreeMap::new();
        m.insert("/guest/vmlinuz".to_string(), PathBuf::from("/tmp/k"));
        m.insert("/guest/m1".to_string(), PathBuf::from("/tmp/a"));
        assert_eq!(rewrite("/guest/vmlinuz", &m), "/tmp/k");
        assert_eq!(rewrite("/guest/m1 args,/guest/m1", &m), "/tmp/a args,/tmp/a");
        assert_eq!(rewrite("-m", &m), "-m");
    }

    #[test]
    fn files_are_found_by_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"hello").unwrap();
        let r = MachineRebuilder { dirs: vec![d.path().to_path_buf()] };
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(r.find(sha), Some(d.path().join("x")));
        let mut files = BTreeMap::new();
        files.insert("/guest/initrd".to_string(), "00".repeat(32));
        let e = r.resolve(&files).unwrap_err();
        assert!(e.contains("/guest/initrd"), "{e}");
    }
}
