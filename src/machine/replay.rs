//! Rebuilding a recorded machine for replay.
//!
//! A trace header carries the DM's argv and the SHA-256 of every file the DM
//! read at start-up. [`MachineRebuilder`] parses the argv with the real CLI
//! parser, then keeps only what shapes the machine (a fresh [`Config`] with
//! the guest-visible options copied one by one, so an option added later is
//! left out until someone decides it belongs): the kernel, initrd and
//! multiboot modules become files found *by content* in the directories it
//! was given, every serial port becomes `null`, and everything else that
//! names a host object (QMP sockets and `fd=`, `-chroot`, `-runas`,
//! `-xendm-record`, `-incoming`, any path the trace names) is dropped. A
//! trace therefore cannot make a replay open a host path: paths in it are
//! only keys into its own `files` table. The guest's RAM size is bounded
//! ([`MAX_REPLAY_RAM_MIB`]). The machine is then planned
//! ([`MachineSpec::from_config`]) and built against the replay's memory and
//! hypervisor ([`crate::machine::build`]), serial output discarded.
//!
//! Where replay differs from the recording: a multiboot kernel sees the
//! local paths of its files in its command lines (the recording host's paths
//! are not opened), so multiboot traces replay only from identical paths.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use xendm_devices::{GuestMemory, Hypervisor};

use crate::cli::{self, Command, Config};
use crate::control::chardev::ChardevSpec;
use crate::ioreq::engine::{Engine, NoHooks};
use crate::machine::spec::MachineSpec;
use crate::machine::{self, MachineBackends};
use crate::trace::{is_sha256_hex, Header, ReplayMachine};

/// Rebuilds the machine a trace was recorded on, finding its boot files by
/// hash in `dirs`.
pub struct MachineRebuilder {
    /// Directories searched (not recursively) for the trace's files; the
    /// only places a replay reads files from.
    pub dirs: Vec<PathBuf>,
}

/// Largest file hashed while searching (bigger candidates are skipped).
const MAX_CANDIDATE: u64 = 512 << 20;

/// Largest guest RAM (`-m`) a replayed trace may ask for, in MiB. The loaders
/// bound what they allocate by the RAM layout, so this bounds them too.
pub const MAX_REPLAY_RAM_MIB: u64 = 4096;

/// SHA-256 of the regular file at `path` (at most [`MAX_CANDIDATE`] bytes),
/// streamed. Opened non-blocking, so a FIFO in a search directory is skipped
/// instead of hanging the replay.
fn sha256_of(path: &Path) -> Option<String> {
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_CANDIDATE {
        return None;
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut file.take(MAX_CANDIDATE), &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

impl MachineRebuilder {
    /// Finds a file with this SHA-256 in the search directories.
    pub fn find(&self, sha256: &str) -> Option<PathBuf> {
        if !is_sha256_hex(sha256) {
            return None;
        }
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

    /// The local copy of the file the trace's argv names `path`: the header
    /// must give its hash, and a file with that content must be in `dirs`.
    fn local(&self, option: &str, path: &str, files: &BTreeMap<String, String>) -> Result<PathBuf, String> {
        let sha = files
            .get(path)
            .ok_or_else(|| format!("the trace's {option} names {path}, but its header gives no SHA-256 for it"))?;
        self.find(sha).ok_or_else(|| {
            format!(
                "the trace needs {path} (sha256 {sha}); no file with that content in {}",
                self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// `-initrd` with every file replaced by its local copy: one path (Linux,
    /// PVH), or a multiboot module list (`path args,path args`, `,,` a comma).
    fn local_initrd(&self, spec: &str, files: &BTreeMap<String, String>) -> Result<String, String> {
        if files.contains_key(spec) {
            return utf8(self.local("-initrd", spec, files)?);
        }
        let mut parts = Vec::new();
        for module in xendm_fw_cfg::multiboot::split_modules(spec) {
            let (path, args) = module.split_once(' ').map_or((module.as_str(), None), |(p, a)| (p, Some(a)));
            let local = utf8(self.local("-initrd", path, files)?)?;
            if local.contains([',', ' ']) {
                return Err(format!("{local} cannot be named in a multiboot module list (it has a comma or a space)"));
            }
            let mut part = local;
            if let Some(a) = args {
                part.push(' ');
                part.push_str(a);
            }
            parts.push(part.replace(',', ",,"));
        }
        Ok(parts.join(","))
    }

    /// The configuration a replay builds: what shapes the machine, with
    /// files found by hash and nothing that names a host object.
    fn replay_config(&self, traced: &Config, files: &BTreeMap<String, String>) -> Result<Config, String> {
        let mem_mib = traced.mem_mib.unwrap_or(machine::spec::DEFAULT_MEM_MIB);
        if mem_mib > MAX_REPLAY_RAM_MIB {
            return Err(format!("the trace's -m {mem_mib} is more than replay accepts ({MAX_REPLAY_RAM_MIB} MiB)"));
        }
        let kernel = match &traced.kernel {
            Some(k) => Some(self.local("-kernel", &k.to_string_lossy(), files)?),
            None => None,
        };
        let initrd_spec = traced.initrd_spec.as_deref().map(|s| self.local_initrd(s, files)).transpose()?;
        let serial = traced
            .serial
            .iter()
            .map(|s| if *s == ChardevSpec::None { ChardevSpec::None } else { ChardevSpec::Null })
            .collect();
        Ok(Config {
            domid: traced.domid,
            no_shutdown: traced.no_shutdown,
            start_paused: traced.start_paused,
            name: traced.name.clone(),
            kernel,
            initrd_spec,
            append: traced.append.clone(),
            serial,
            boot_order: traced.boot_order.clone(),
            machine: traced.machine.clone(),
            mem_mib: traced.mem_mib,
            smp: traced.smp,
            no_acpi: traced.no_acpi,
            boot_protocol: traced.boot_protocol,
            ..Config::default()
        })
    }
}

fn utf8(p: PathBuf) -> Result<String, String> {
    p.into_os_string().into_string().map_err(|p| format!("{} is not a UTF-8 path", Path::new(&p).display()))
}

impl ReplayMachine for MachineRebuilder {
    fn build(&self, header: &Header, mem: Arc<dyn GuestMemory>, hv: Arc<dyn Hypervisor>) -> Result<Engine, String> {
        let argv = header.argv.iter().map(Into::into);
        let traced = match cli::parse(argv).map_err(|e| format!("trace argv: {e}"))? {
            Command::Run(c) => c,
            _ => return Err("trace argv does not run a device model".into()),
        };
        let cfg = self.replay_config(&traced, &header.files)?;
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
    use crate::trace::TRACE_VERSION;
    use std::io::Write;

    fn mini_kernel() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/boot/mini-bzImage")).unwrap()
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn header(argv: &[&str], files: &[(&str, &str)]) -> Header {
        Header {
            xendm_trace: TRACE_VERSION,
            argv: argv.iter().map(ToString::to_string).collect(),
            files: files.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect(),
            producer: "test".into(),
        }
    }

    /// A trace of `header` and no records.
    fn trace_file(dir: &Path, h: &Header) -> PathBuf {
        let p = dir.join("t.jsonl.gz");
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
        writeln!(gz, "{}", serde_json::to_string(h).unwrap()).unwrap();
        gz.finish().unwrap();
        p
    }

    fn build(r: &MachineRebuilder, h: &Header) -> Result<Engine, String> {
        let mem = Arc::new(crate::trace::ReplayMemory::default());
        r.build(h, mem, Arc::new(crate::trace::DiscardingHypervisor))
    }

    #[test]
    fn files_are_found_by_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"hello").unwrap();
        let r = MachineRebuilder { dirs: vec![d.path().to_path_buf()] };
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        assert_eq!(r.find(sha), Some(d.path().join("x")));
        assert_eq!(r.find(&sha.to_uppercase()), None, "only hashes as the recorder writes them");
        assert_eq!(r.find(""), None);
        let mut files = BTreeMap::new();
        files.insert("/guest/initrd".to_string(), "00".repeat(32));
        let e = r.local("-initrd", "/guest/initrd", &files).unwrap_err();
        assert!(e.contains("/guest/initrd") && e.contains("no file with that content"), "{e}");
    }

    #[test]
    fn fifos_in_the_search_directories_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        assert_eq!(sha256_of(&fifo), None);
        assert_eq!(MachineRebuilder { dirs: vec![d.path().to_path_buf()] }.find(&"0".repeat(64)), None);
    }

    /// Audit 2026-12 risk 5: a trace's argv named host paths that replay
    /// opened as they were (`-kernel /etc/shadow`). Fails on 848c90d: there,
    /// the first replay below builds the machine from the file outside the
    /// search directory.
    #[test]
    fn a_trace_cannot_make_replay_open_the_paths_it_names() {
        let outside = tempfile::tempdir().unwrap();
        let search = tempfile::tempdir().unwrap();
        let secret = outside.path().join("shadow");
        std::fs::write(&secret, mini_kernel()).unwrap();
        let secret_s = secret.display().to_string();
        let r = MachineRebuilder { dirs: vec![search.path().to_path_buf()] };

        // Named without a hash: refused, although the file is a valid kernel.
        let h = header(&["-xen-domid", "1", "-kernel", &secret_s], &[]);
        let e = crate::trace::replay(&trace_file(outside.path(), &h), &r).unwrap_err().to_string();
        assert!(e.contains("-kernel") && e.contains("gives no SHA-256"), "{e}");
        // Named with its hash: only the search directories are looked in.
        let h = header(&["-xen-domid", "1", "-kernel", &secret_s], &[(&secret_s, &sha(&mini_kernel()))]);
        let e = build(&r, &h).err().unwrap();
        assert!(e.contains("no file with that content"), "{e}");
        // The same for -initrd and for multiboot modules.
        std::fs::write(search.path().join("k"), mini_kernel()).unwrap();
        let k_sha = sha(&mini_kernel());
        let h = header(&["-xen-domid", "1", "-kernel", "/guest/k", "-initrd", &secret_s], &[("/guest/k", &k_sha)]);
        assert!(build(&r, &h).err().unwrap().contains("-initrd"));
        let modules = format!("/guest/k arg,{secret_s}");
        let h = header(&["-xen-domid", "1", "-kernel", "/guest/k", "-initrd", &modules], &[("/guest/k", &k_sha)]);
        assert!(build(&r, &h).err().unwrap().contains(&secret_s));
        // Found by hash, the local copy is used: the recorded path need not exist.
        let h = header(&["-xen-domid", "1", "-kernel", "/nonexistent/vmlinuz"], &[("/nonexistent/vmlinuz", &k_sha)]);
        build(&r, &h).unwrap();
    }

    #[test]
    fn options_naming_host_objects_are_dropped() {
        let outside = tempfile::tempdir().unwrap();
        let o = |name: &str| outside.path().join(name).display().to_string();
        let (serial, sock, rec) = (format!("file:{}", o("serial.log")), o("qmp.sock"), o("rec.jsonl.gz"));
        let qmp = format!("socket,id=libxl-cmd,path={sock},server=on,wait=off");
        let argv = [
            "-xen-domid",
            "1",
            "-serial",
            &serial,
            "-serial",
            "none",
            "-serial",
            "pty",
            "-chardev",
            &qmp,
            "-mon",
            "chardev=libxl-cmd,mode=control",
            "-chardev",
            "socket,id=other,fd=7,server=on,wait=off",
            "-mon",
            "chardev=other,mode=control",
            "-xendm-record",
            &rec,
            "-chroot",
            &o("root"),
            "-runas",
            "1:1",
        ];
        let Command::Run(traced) = cli::parse(argv.iter().map(Into::into)).unwrap() else { panic!() };
        let r = MachineRebuilder { dirs: vec![] };
        let c = r.replay_config(&traced, &BTreeMap::new()).unwrap();
        assert_eq!(c.serial, vec![ChardevSpec::Null, ChardevSpec::None, ChardevSpec::Null]);
        assert!(c.qmp.is_empty() && c.chroot.is_none() && c.runas.is_none() && c.record.is_none());
        build(&r, &header(&argv, &[])).unwrap();
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created outside");
    }

    #[test]
    fn initrd_paths_and_module_lists_are_rewritten_structurally() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"module a").unwrap();
        std::fs::write(d.path().join("b"), b"module b").unwrap();
        let (a, b) = (d.path().join("a").display().to_string(), d.path().join("b").display().to_string());
        let r = MachineRebuilder { dirs: vec![d.path().to_path_buf()] };
        let files: BTreeMap<String, String> =
            [("/g/a", sha(b"module a")), ("/g/b", sha(b"module b")), ("/g/x,y", sha(b"module a"))]
                .into_iter()
                .map(|(p, s)| (p.to_string(), s))
                .collect();
        assert_eq!(r.local_initrd("/g/a", &files).unwrap(), a);
        assert_eq!(r.local_initrd("/g/x,y", &files).unwrap(), a, "a whole -initrd path may hold a comma");
        assert_eq!(r.local_initrd("/g/a x=1,,2 y,/g/b", &files).unwrap(), format!("{a} x=1,,2 y,{b}"));
        // A path is a key, never a substring to replace (848c90d replaced
        // every key everywhere: "/g" inside "/g/../../etc/shadow").
        let e = r.local_initrd("/g/a/../../etc/shadow", &files).unwrap_err();
        assert!(e.contains("gives no SHA-256"), "{e}");
    }

    #[test]
    fn guest_ram_is_bounded() {
        let r = MachineRebuilder { dirs: vec![] };
        let e = build(&r, &header(&["-xen-domid", "1", "-m", "1048576"], &[])).err().unwrap();
        assert!(e.contains("-m 1048576") && e.contains("4096 MiB"), "{e}");
        build(&r, &header(&["-xen-domid", "1", "-m", "4096"], &[])).unwrap();
        let e = build(&r, &header(&["--dump-roms", "/tmp/x"], &[])).err().unwrap();
        assert!(e.contains("does not run a device model"), "{e}");
    }
}
