//! check-config over the lab's configs (`tests/data/xlcfg/`), the example
//! configs Xen ships in Debian's `xen-utils-common` (extracted from the
//! package by `tests/setup`, not committed: they are Xen's GPL-2 text), and
//! one setting at a time.

use std::path::PathBuf;

use super::*;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/xlcfg").join(name)
}

/// Checks `text` as if every path named in it existed.
fn check_text(text: &str) -> Report {
    check(&xlcfg::parse(text).unwrap(), &|_| true)
}

fn check_file(name: &str) -> Report {
    check_text(&std::fs::read_to_string(data(name)).unwrap())
}

/// Where `tests/setup` extracts `/etc/xen/xlexample.*` from Debian's
/// `xen-utils-common` (`XENDM_XEN_EXAMPLES` overrides), or the installed
/// `/etc/xen`. None outside CI when neither has them (the test says so);
/// in CI (`CI` set) their absence fails the test.
fn xen_example(name: &str) -> Option<Report> {
    let dirs: Vec<PathBuf> = std::env::var_os("XENDM_XEN_EXAMPLES")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/xendm/xen-examples")))
        .chain([PathBuf::from("/etc/xen")])
        .collect();
    match dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        Some(p) => Some(check_text(&std::fs::read_to_string(p).unwrap())),
        None => {
            assert!(std::env::var_os("CI").is_none(), "{name} not found in {dirs:?}: tests/setup extracts it");
            eprintln!("SKIPPED: {name} not found in {dirs:?} (run tests/setup)");
            None
        }
    }
}

/// A config xendm serves, plus `extra` lines (later lines win in xl).
fn base(extra: &str) -> String {
    format!(
        "type = \"hvm\"\nkernel = \"/k\"\nvga = \"none\"\nvnc = 0\ndevice_model_version = \"qemu-xen\"\n\
         device_model_override = \"/usr/bin/xendm\"\n{extra}\n"
    )
}

fn verdicts(r: &Report) -> Vec<(String, Verdict)> {
    r.findings.iter().map(|f| (f.setting.clone(), f.verdict)).collect()
}

fn refused_settings(r: &Report) -> Vec<String> {
    r.findings.iter().filter(|f| f.verdict == Verdict::Refused).map(|f| f.setting.clone()).collect()
}

#[test]
fn the_lab_configs_are_usable() {
    for name in ["lab-xendm.cfg", "lab-xendm-lifecycle.cfg", "lab-xendm-restrict.cfg"] {
        let r = check_file(name);
        assert!(!r.refused(), "{name}: {}", r.render(name));
        assert!(!r.findings.iter().any(|f| f.verdict == Verdict::Warning), "{name}: {}", r.render(name));
        assert_eq!(r.verdict_of("kernel"), Some(Verdict::Served));
        assert_eq!(r.verdict_of("serial"), Some(Verdict::Served));
        assert_eq!(r.verdict_of("vga"), Some(Verdict::Served));
        assert_eq!(r.verdict_of("vnc"), Some(Verdict::Ignored));
    }
    assert_eq!(check_file("lab-xendm-restrict.cfg").verdict_of("dm_restrict"), Some(Verdict::Served));
}

/// The config `tests/lab/dom0-init` writes (its `write_cfg` here-document),
/// rendered with the lab's defaults: what every lab run gives `xl create`.
#[test]
fn the_config_dom0_init_writes_is_usable() {
    let init = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/dom0-init")).unwrap();
    assert!(
        init.contains("device_model_override = \"/usr/bin/xendm\""),
        "the lab must start xendm from the Debian package's path"
    );
    let func = &init[init.find("write_cfg() {").expect("write_cfg in dom0-init")..];
    let start = func.find("<<EOF\n").unwrap() + "<<EOF\n".len();
    let template = &func[start..start + func[start..].find("\nEOF\n").unwrap()];
    for (serial, on_reboot) in [("file:/results/xendm/guest-serial.log", "destroy"), ("pty", "restart")] {
        let text = template
            .replace("$1", "xendm")
            .replace("$GUEST_MEM", "128")
            .replace("$GUEST_ARGS", "pci=noearly guest.sum=0123")
            .replace("$3", serial)
            .replace("$4", on_reboot)
            .replace("$_ovr", "device_model_override = \"/usr/bin/xendm\"");
        // Lines with variables this test does not know (added by other scenarios) are left out.
        let text: String = text.lines().filter(|l| !l.contains('$')).map(|l| format!("{l}\n")).collect();
        let r = check_text(&text);
        assert!(!r.refused(), "{}", r.render("dom0-init write_cfg"));
    }
}

#[test]
fn the_packaged_example_is_usable() {
    let text = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/examples/xendm-hvm.cfg"));
    let r = check_text(&text.unwrap());
    assert!(!r.refused(), "{}", r.render("xendm-hvm.cfg"));
    assert!(!r.findings.iter().any(|f| f.verdict == Verdict::Warning), "{}", r.render("xendm-hvm.cfg"));
    assert_eq!(r.verdict_of("disk"), Some(Verdict::PvOnly));
    assert_eq!(r.verdict_of("vif"), Some(Verdict::PvOnly));
}

#[test]
fn debians_hvm_example_is_refused_setting_by_setting() {
    let Some(r) = xen_example("xlexample.hvm") else { return };
    assert!(r.refused());
    let refused = refused_settings(&r);
    for want in [
        "vif[0] = \"\"",
        "disk[0] = \"/dev/vg/guest-volume,raw,xvda,rw\"",
        "sdl = 1",
        "kernel (not set)",
        "vga (not set)",
    ] {
        assert!(refused.iter().any(|s| s.starts_with(want)), "{want} not refused: {refused:?}");
    }
    assert_eq!(refused.len(), 5, "{}", r.render("xlexample.hvm"));
    // Each refusal says what to write instead.
    assert!(r.findings.iter().filter(|f| f.verdict == Verdict::Refused).all(|f| f.fix.is_some()));
    assert_eq!(r.verdict_of("name"), Some(Verdict::Xen));
    assert_eq!(r.verdict_of("device_model_override"), Some(Verdict::Warning));
    // The disk line is the one to change.
    let disk = r.findings.iter().find(|f| f.setting.starts_with("disk[0]")).unwrap();
    assert_eq!(disk.line, Some(43));
    assert!(disk.fix.as_deref().unwrap().contains("xvde"));
}

#[test]
fn debians_pv_and_pvh_examples_are_not_hvm() {
    for name in ["xlexample.pvlinux", "xlexample.pvhlinux"] {
        let Some(r) = xen_example(name) else { return };
        assert_eq!(r.verdict_of("type"), Some(Verdict::Refused), "{name}");
        assert!(r.refused());
    }
}

#[test]
fn graphics() {
    for (line, verdict) in [
        ("vga = \"none\"", Verdict::Served),
        ("vga = \"stdvga\"", Verdict::Refused),
        ("vga = \"cirrus\"", Verdict::Refused),
        ("vga = \"qxl\"", Verdict::Refused),
        ("vga = \"bogus\"", Verdict::Refused),
        ("sdl = 1", Verdict::Refused),
        ("sdl = 0", Verdict::Ignored),
        ("spice = 1", Verdict::Refused),
        ("spice = 0", Verdict::Ignored),
        ("vnc = 1", Verdict::Ignored),
        ("nographic = 1", Verdict::Ignored),
        ("keymap = \"de\"", Verdict::Ignored),
        ("vnclisten = \"0.0.0.0\"", Verdict::Ignored),
    ] {
        let r = check_text(&base(line));
        let key = line.split(' ').next().unwrap();
        assert_eq!(r.verdict_of(key), Some(verdict), "{line}: {}", r.render("t"));
    }
    let r = check_text("type = \"hvm\"\nkernel = \"/k\"\nstdvga = 1\n");
    assert_eq!(r.verdict_of("stdvga"), Some(Verdict::Refused));
    let r = check_text("type = \"hvm\"\nkernel = \"/k\"\n");
    let vga = r.findings.iter().find(|f| f.setting.starts_with("vga (not set)")).unwrap();
    assert!(vga.message.contains("cirrus-vga"), "{}", vga.message);
    assert!(vga.fix.as_deref().unwrap().contains("vga = \"none\""));
}

#[test]
fn usb_and_sound() {
    for (line, verdict) in [
        ("usb = 1", Verdict::Ignored),
        ("usbdevice = \"tablet\"", Verdict::Refused),
        ("usbdevice = [\"tablet\", \"mouse\"]", Verdict::Refused),
        ("usbversion = 3", Verdict::Refused),
        ("usbctrl = [\"version=2,ports=4\"]", Verdict::Refused),
        ("usbctrl = [\"type=pv,version=2\"]", Verdict::PvOnly),
        ("soundhw = \"hda\"", Verdict::Refused),
        ("soundhw = \"ac97\"", Verdict::Refused),
    ] {
        let r = check_text(&base(line));
        let key = line.split(' ').next().unwrap();
        assert_eq!(r.verdict_of(key), Some(verdict), "{line}: {}", r.render("t"));
    }
}

#[test]
fn disks_by_vdev_format_and_type() {
    for (spec, verdict) in [
        ("format=raw,vdev=xvde,access=rw,target=/dev/vg/g", Verdict::PvOnly),
        ("/dev/vg/g,raw,xvdf,rw", Verdict::PvOnly),
        ("phy:/dev/vg/g,xvdz,w", Verdict::PvOnly),
        ("format=raw,vdev=xvda,target=/dev/vg/g", Verdict::PvOnly),
        ("format=raw,vdev=xvdd,target=/dev/vg/g", Verdict::PvOnly),
        ("format=raw,vdev=hdb,target=/dev/vg/g", Verdict::PvOnly),
        ("format=raw,vdev=sdc,target=/dev/vg/g", Verdict::PvOnly),
        ("format=qcow2,vdev=xvde,target=/srv/g.qcow2", Verdict::Refused),
        ("format=vhd,vdev=xvde,target=/srv/g.vhd", Verdict::Refused),
        ("format=qed,vdev=xvde,target=/srv/g.qed", Verdict::Refused),
        ("format=qcow2,vdev=xvda,target=/srv/g.qcow2", Verdict::Refused),
        ("format=raw,vdev=xvda,backendtype=qdisk,target=/srv/g.img", Verdict::Refused),
        ("format=qcow,vdev=xvde,target=/srv/g.qcow", Verdict::Refused),
        ("format=raw,vdev=xvde,backendtype=qdisk,target=/srv/g.img", Verdict::Refused),
        ("/srv/cd.iso,,hdc,cdrom", Verdict::Refused),
        ("format=raw,vdev=xvdf,devtype=cdrom,target=/srv/cd.iso", Verdict::Refused),
        ("vdev=xvda,backend=storage,target=/dev/vg/g", Verdict::PvOnly),
        ("format=empty,vdev=xvde", Verdict::Ignored),
        ("format=raw,vdev=bogus,target=/x", Verdict::Refused),
    ] {
        let r = check_text(&base(&format!("disk = [ '{spec}' ]")));
        assert_eq!(r.verdict_of("disk"), Some(verdict), "{spec}: {}", r.render("t"));
    }
    // xvda-xvdd are PV-only disks for xendm: with a direct kernel boot and
    // the platform device, not otherwise.
    let r = check_text(&base("disk = [ 'format=raw,vdev=xvda,target=/x' ]"));
    let f = r.findings.iter().find(|f| f.setting.starts_with("disk[0]")).unwrap();
    assert!(f.message.contains("also asks for IDE disk 0"), "{}", f.message);
    let r = check_text(&base("disk = [ 'format=raw,vdev=xvda,target=/x' ]\nxen_platform_pci = 0"));
    assert_eq!(r.verdict_of("disk"), Some(Verdict::Refused));
    let f = r.findings.iter().find(|f| f.setting.starts_with("disk[0]")).unwrap();
    assert_eq!(f.fix.as_deref(), Some("remove xen_platform_pci=0"));
    let no_kernel = "type = \"hvm\"\nvga = \"none\"\ndisk = [ 'format=raw,vdev=xvda,target=/x' ]\n";
    let r = check_text(no_kernel);
    let f = r.findings.iter().find(|f| f.setting.starts_with("disk[0]")).unwrap();
    assert_eq!(f.verdict, Verdict::Refused);
    assert!(f.fix.as_deref().unwrap().starts_with("set kernel="), "{:?}", f.fix);
}

#[test]
fn nics_by_type() {
    for (spec, verdict) in [
        ("bridge=xenbr0,type=vif", Verdict::PvOnly),
        ("type=vif", Verdict::PvOnly),
        ("bridge=xenbr0", Verdict::PvOnly),
        ("", Verdict::PvOnly),
        ("type=ioemu,model=e1000", Verdict::PvOnly),
        ("type=ioemu,model=ne2k_isa", Verdict::Refused),
    ] {
        let r = check_text(&base(&format!("vif = [ '{spec}' ]")));
        assert_eq!(r.verdict_of("vif"), Some(verdict), "{spec}: {}", r.render("t"));
    }
    let r = check_text(&base("vif = [ 'type=ioemu,model=ne2k_isa' ]"));
    let f = r.findings.iter().find(|f| f.setting.starts_with("vif[0]")).unwrap();
    assert!(f.message.contains("unsupported NIC model 'ne2k_isa'"), "{}", f.message);
    // Without a direct kernel boot or the platform device: type=vif.
    for cfg in [
        "type = \"hvm\"\nvga = \"none\"\nvif = [ 'bridge=xenbr0' ]\n",
        &base("vif = [ 'bridge=xenbr0' ]\nxen_platform_pci = 0"),
    ] {
        let r = check_text(cfg);
        let f = r.findings.iter().find(|f| f.setting.starts_with("vif[0]")).unwrap();
        assert_eq!(f.verdict, Verdict::Refused, "{cfg}");
        assert_eq!(f.fix.as_deref(), Some("'bridge=xenbr0,type=vif'"));
    }
}

#[test]
fn serial_specs() {
    for (line, verdict) in [
        ("serial = \"pty\"", Verdict::Served),
        ("serial = \"file:/var/log/g.log\"", Verdict::Served),
        ("serial = [\"pty\", \"null\"]", Verdict::Served),
        ("serial = \"tcp:127.0.0.1:4555\"", Verdict::Refused),
        ("serial = \"vc\"", Verdict::Refused),
    ] {
        let r = check_text(&base(line));
        assert_eq!(r.verdict_of("serial"), Some(verdict), "{line}: {}", r.render("t"));
    }
    let r = check_text(&base("serial = [\"pty\", \"pty\", \"pty\", \"pty\", \"pty\"]"));
    assert_eq!(refused_settings(&r), ["serial[4] = \"pty\""], "a fifth port is one too many");
}

#[test]
fn kernel_boot() {
    let r = check_text(&base("ramdisk = \"/i\"\ncmdline = \"console=ttyS0\"\nroot = \"/dev/xvde1\""));
    assert_eq!(r.verdict_of("ramdisk"), Some(Verdict::Served));
    assert_eq!(r.verdict_of("cmdline"), Some(Verdict::Served));
    assert_eq!(r.verdict_of("root"), Some(Verdict::Ignored));
    let r = check_text("type = \"hvm\"\nvga = \"none\"\nramdisk = \"/i\"\n");
    assert_eq!(r.verdict_of("kernel"), Some(Verdict::Refused));
    assert_eq!(r.verdict_of("ramdisk"), Some(Verdict::Served), "-initrd is fine once kernel= is added");
    let missing = check(&xlcfg::parse(&base("")).unwrap(), &|p| p == "/usr/bin/xendm");
    assert_eq!(missing.verdict_of("kernel"), Some(Verdict::Warning));
    assert!(!missing.refused());
}

#[test]
fn device_model_choice_and_stubdomain() {
    let r = check_text(&base("device_model_version = \"qemu-xen-traditional\""));
    assert_eq!(r.verdict_of("device_model_version"), Some(Verdict::Refused));
    let r = check_text("type = \"hvm\"\nkernel = \"/k\"\nvga = \"none\"\n");
    assert_eq!(r.verdict_of("device_model_version"), Some(Verdict::Warning));
    assert_eq!(r.verdict_of("device_model_override"), Some(Verdict::Warning));
    assert!(!r.refused());
    let r = check_text(&base("device_model_stubdomain_override = 1\nstubdomain_memory = 128"));
    assert_eq!(r.verdict_of("device_model_stubdomain_override"), Some(Verdict::Served));
    assert_eq!(r.verdict_of("stubdomain_memory"), Some(Verdict::Served));
    // base() names device_model_override: with a stub that starts xendm as the console process.
    assert_eq!(r.verdict_of("device_model_override"), Some(Verdict::Refused));
    assert!(r.refused());
    let stub = "type = \"hvm\"\nkernel = \"/k\"\nvga = \"none\"\nvnc = 0\ndevice_model_version = \"qemu-xen\"\n\
                device_model_stubdomain_override = 1\nstubdomain_kernel = \"/s/k\"\nstubdomain_ramdisk = \"/s/r\"\n";
    let r = check_text(stub);
    assert!(!r.refused(), "the docs/stubdom.md config");
    assert_eq!(r.verdict_of("stubdomain_ramdisk"), Some(Verdict::Served));
    let r = check_text(&base("stubdomain_memory = 128"));
    assert_eq!(r.verdict_of("stubdomain_memory"), Some(Verdict::Ignored));
}

#[test]
fn restriction_machine_and_extras() {
    for (line, verdict) in [
        ("dm_restrict = 1", Verdict::Served),
        ("dm_restrict = 0", Verdict::Served),
        ("device_model_user = \"xendm\"", Verdict::Served),
        ("acpi = 0", Verdict::Served),
        ("acpi_s3 = 1", Verdict::Warning),
        ("xen_platform_pci = 0", Verdict::Served),
        ("mmio_hole = 1024", Verdict::Served),
        ("vcpus = 4", Verdict::Served),
        ("vcpus = 200", Verdict::Refused),
        ("vendor_device = \"xenserver\"", Verdict::Refused),
        ("pci = [ '01:00.0' ]", Verdict::Refused),
        ("channel = [ 'name=org.qemu.guest_agent.0' ]", Verdict::Ignored),
        ("device_model_args = [ '-xendm-record', '/var/lib/xen/g.trace' ]", Verdict::Served),
        ("device_model_args = [ '-global', 'a.b=c' ]", Verdict::Ignored),
        ("device_model_args_hvm = [ '-device', 'e1000' ]", Verdict::Refused),
        ("bios = \"rombios\"", Verdict::Refused),
        ("bios = \"ovmf\"", Verdict::Warning),
        ("hdtype = \"ahci\"", Verdict::Ignored),
        ("on_crash = \"preserve\"", Verdict::Xen),
        ("frobnicate = 1", Verdict::Warning),
    ] {
        let r = check_text(&base(line));
        let key = line.split(' ').next().unwrap();
        assert_eq!(r.verdict_of(key), Some(verdict), "{line}: {}", r.render("t"));
    }
}

#[test]
fn the_report_names_file_line_and_fix() {
    let r = check_text(&base("vga = \"stdvga\""));
    let text = r.render("g.cfg");
    assert!(text.contains("g.cfg:7: REFUSED: vga = \"stdvga\""), "{text}");
    assert!(text.contains("    change: vga = \"none\""), "{text}");
    assert!(text.ends_with("not usable with xendm as it is\n"), "{text}");
    assert!(verdicts(&r).iter().any(|(s, v)| s == "kernel = \"/k\"" && *v == Verdict::Served));
    let ok = check_text(&base("")).render("g.cfg");
    assert!(ok.ends_with("g.cfg: usable with xendm (0 warning(s))\n"), "{ok}");
}
