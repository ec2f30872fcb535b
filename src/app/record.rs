//! Recording the ioreq stream (`-xendm-record PATH` or `XENDM_RECORD`): the
//! trace file is created once the machine is planned, and its recorder
//! wraps the real guest memory and hypervisor when the machine is built.
//! The format is `docs/traces.md` ([`crate::trace`]). The header's file
//! hashes are computed from the boot files the plan holds open (the bytes
//! fw_cfg serves), streamed, and only when recording.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tracing::info;
use xendm_devices::{GuestMemory, Hypervisor};

use xendm_fw_cfg::LoadedFile;

use crate::cli::Config;
use crate::ioreq::engine::Engine;
use crate::machine::spec::MachineSpec;
use crate::trace::{FileSink, Header, Recorder, RecordingHypervisor, RecordingMemory, Tap, TRACE_VERSION};

/// Where to record: `-xendm-record`, else a non-empty `XENDM_RECORD`.
pub fn record_path(cfg: &Config) -> Option<PathBuf> {
    cfg.record.clone().or_else(|| std::env::var_os("XENDM_RECORD").filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// The SHA-256 of an open boot file, hex, for the trace header; read in
/// pieces by offset.
///
/// # Errors
/// If the file cannot be read (or changed since it was opened).
pub fn sha256_file(f: &LoadedFile) -> Result<String> {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    std::io::copy(&mut f.reader(), &mut hash)
        .with_context(|| format!("reading {} for the trace header", f.path.display()))?;
    Ok(hex::encode(hash.finalize()))
}

/// A trace being written: its file (header written) and the tap the
/// recording memory and hypervisor report to.
pub struct TraceFile {
    path: PathBuf,
    tap: Arc<Tap>,
    sink: FileSink,
}

impl TraceFile {
    /// Creates the trace file if recording is asked for: the header holds
    /// the argv and the SHA-256 of every boot file `spec` opened.
    ///
    /// # Errors
    /// If a boot file cannot be hashed or the file cannot be created.
    pub fn create(cfg: &Config, argv: &[OsString], spec: &MachineSpec) -> Result<Option<Self>> {
        let Some(path) = record_path(cfg) else { return Ok(None) };
        let mut files = BTreeMap::new();
        for f in spec.boot.iter().flat_map(|b| &b.plan.files) {
            files.insert(f.path.display().to_string(), sha256_file(f)?);
        }
        let header = Header {
            xendm_trace: TRACE_VERSION,
            argv: argv.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
            files,
            producer: format!("xendm {}", env!("CARGO_PKG_VERSION")),
        };
        let sink =
            FileSink::create(&path, &header).with_context(|| format!("creating the ioreq trace {}", path.display()))?;
        Ok(Some(Self { path, tap: Tap::new(), sink }))
    }

    /// `mem` and `hv` as the recorded machine must see them.
    pub fn wrap(
        &self,
        mem: Arc<dyn GuestMemory>,
        hv: Arc<dyn Hypervisor>,
    ) -> (Arc<dyn GuestMemory>, Arc<dyn Hypervisor>) {
        (
            Arc::new(RecordingMemory::new(mem, self.tap.clone())),
            Arc::new(RecordingHypervisor::new(hv, self.tap.clone())),
        )
    }

    /// Starts recording every request `engine` serves.
    pub fn attach(self, engine: &mut Engine) {
        engine.set_observer(Box::new(Recorder::new(self.tap, Box::new(self.sink))));
        info!(path = %self.path.display(), "recording ioreqs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xendm_devices::hv::FakeHypervisor;
    use xendm_devices::mem::TestMemory;

    use crate::cli::run_config as config;

    fn spec(c: &Config) -> MachineSpec {
        MachineSpec::from_config(c).unwrap()
    }

    fn mini_kernel_copy(dir: &std::path::Path) -> PathBuf {
        let k = dir.join("k");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage"), &k).unwrap();
        k
    }

    #[test]
    fn the_header_names_every_boot_file_by_hash() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let (k, rd, out) = (mini_kernel_copy(dir.path()), dir.path().join("rd"), dir.path().join("t.jsonl"));
        std::fs::write(&rd, b"hello").unwrap();
        let (ks, rds, outs) = (k.display().to_string(), rd.display().to_string(), out.display().to_string());
        let args = ["-xen-domid", "1", "-kernel", &ks, "-initrd", &rds, "-xendm-record", &outs];
        let argv: Vec<OsString> = args.iter().map(Into::into).collect();
        let c = config(&args);
        let trace = TraceFile::create(&c, &argv, &spec(&c)).unwrap().unwrap();
        let (mem, hv) = trace.wrap(Arc::new(TestMemory::pc(1 << 20).unwrap()), Arc::new(FakeHypervisor::new()));
        let mut engine = Engine::new(xendm_devices::Bus::new(), mem, Box::new(crate::ioreq::engine::NoHooks));
        drop(hv);
        trace.attach(&mut engine);
        drop(engine); // flushes the trace
        let header: Header = crate::trace::TraceReader::open(&out).unwrap().header;
        assert_eq!(header.argv, args);
        assert_eq!(header.files[&rds], "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(header.files[&ks], hex::encode(sha2::Sha256::digest(std::fs::read(&k).unwrap())));
        assert_eq!(header.files.len(), 2);
    }

    #[test]
    fn no_trace_without_a_path_and_a_file_changed_since_planning_is_an_error() {
        if std::env::var_os("XENDM_RECORD").is_some_and(|v| !v.is_empty()) {
            return; // the environment asks for a trace
        }
        let c = config(&["-xen-domid", "1"]);
        assert!(TraceFile::create(&c, &[], &spec(&c)).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let k = mini_kernel_copy(dir.path());
        let out = dir.path().join("t.jsonl");
        let c = config(&[
            "-xen-domid",
            "1",
            "-kernel",
            &k.display().to_string(),
            "-xendm-record",
            &out.display().to_string(),
        ]);
        let s = spec(&c);
        std::fs::OpenOptions::new().write(true).open(&k).unwrap().set_len(100).unwrap();
        let e = TraceFile::create(&c, &[], &s).err().unwrap();
        assert!(format!("{e:#}").contains(&k.display().to_string()), "{e:#}");
    }
}
