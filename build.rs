//! Build script of the `xendm` crate: records which Xen development files
//! the binary is built against, for `xendm --version`.
//!
//! It asks pkg-config for the version of each Xen library xendm links
//! (`libxendevicemodel`, `libxenevtchn`, `libxenforeignmemory`,
//! `libxentoolcore`: the `.pc` files of Debian's `libxen-dev`), dpkg for the
//! `libxen-dev` package version, and reads `__XEN_LATEST_INTERFACE_VERSION__`
//! from `/usr/include/xen/xen-compat.h` (the public headers' interface
//! version). Whatever is missing is left out; nothing here fails the build.

use std::process::Command;

/// The libraries the binary links (libxen-sys features, plus libxentoolcore
/// which libxendevicemodel pulls in).
const LIBRARIES: &[&str] = &["xendevicemodel", "xenevtchn", "xenforeignmemory", "xentoolcore"];
const XEN_COMPAT_H: &str = "/usr/include/xen/xen-compat.h";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={XEN_COMPAT_H}");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let mut parts = Vec::new();
    if let Some(v) = run("dpkg-query", &["-W", "-f", "${Version}", "libxen-dev"]) {
        parts.push(format!("libxen-dev {v}"));
    }
    let libs: Vec<String> = LIBRARIES
        .iter()
        .filter_map(|lib| run("pkg-config", &["--modversion", lib]).map(|v| format!("lib{lib} {v}")))
        .collect();
    if !libs.is_empty() {
        parts.push(libs.join(", "));
    }
    if let Some(v) = interface_version() {
        parts.push(format!("Xen public interface {v}"));
    }
    if parts.is_empty() {
        parts.push("unknown Xen libraries (no pkg-config, dpkg or xen-compat.h at build time)".to_string());
    }
    println!("cargo:rustc-env=XENDM_BUILT_AGAINST={}", parts.join("; "));
}

/// The trimmed stdout of a successful command, if not empty.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// `__XEN_LATEST_INTERFACE_VERSION__` as `0x00040e00`.
fn interface_version() -> Option<String> {
    let header = std::fs::read_to_string(XEN_COMPAT_H).ok()?;
    header.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("#define")?.trim_start();
        let value = rest.strip_prefix("__XEN_LATEST_INTERFACE_VERSION__")?.trim();
        value.starts_with("0x").then(|| value.to_string())
    })
}
