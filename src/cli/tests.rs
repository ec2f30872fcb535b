//! Whole-argv tests: real libxl command lines and the refusals.

use std::ffi::OsString;
use std::path::PathBuf;

use super::*;

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Splits a fixture from `tests/data/argv/` (one argument per line).
fn fixture(text: &str) -> Vec<OsString> {
    text.strip_suffix('\n').unwrap_or(text).split('\n').map(OsString::from).collect()
}

fn run(args: Vec<OsString>) -> Config {
    match parse(args) {
        Ok(Command::Run(cfg)) => cfg,
        other => panic!("expected Run, got {other:?}"),
    }
}

fn run_str(args: &[&str]) -> Config {
    run(argv(args))
}

fn err(args: &[&str]) -> CliError {
    match parse(argv(args)) {
        Err(e) => e,
        Ok(c) => panic!("expected an error for {args:?}, got {c:?}"),
    }
}

fn qmp_path(id: &str, path: &str) -> QmpEndpoint {
    QmpEndpoint { id: id.into(), socket: QmpSocketSpec::Path(path.into()) }
}

/// The minimum a run needs, followed by `extra`.
fn with_domid(extra: &[&str]) -> Vec<OsString> {
    let mut args = argv(&["-xen-domid", "5"]);
    args.extend(argv(extra));
    args
}

const HVM1: &str = include_str!("../../tests/data/argv/libxl-4.17-hvm1.txt");
const HVM2: &str = include_str!("../../tests/data/argv/libxl-4.17-hvm2-with-trace.txt");

#[test]
fn captured_libxl_argv_hvm1() {
    let args = fixture(HVM1);
    assert_eq!(args.len(), 35, "ARGC in the capture");
    let cfg = run(args);
    let expected = Config {
        domid: Some(1),
        no_shutdown: true,
        name: Some("hvm1".into()),
        qmp: vec![
            qmp_path("libxl-cmd", "/var/run/xen/qmp-libxl-1"),
            qmp_path("libxenstat-cmd", "/var/run/xen/qmp-libxenstat-1"),
        ],
        kernel: Some("/guest/vmlinuz".into()),
        initrd_spec: Some("/guest/initrd.img".into()),
        append: Some("console=ttyS0 panic=-1 labhold=900  quiet".into()),
        serial: vec![ChardevSpec::File("/tmp/guest-serial-hvm1.log".into())],
        boot_order: Some("cda".into()),
        machine: Machine { kind: MachineKind::Xenfv, max_ram_below_4g: None, igd_passthru: false },
        mem_mib: Some(128),
        vnc: Some("none".into()),
        ignored: vec![
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-vnc none".into(),
            "-display none".into(),
            "-net none".into(),
            "-machine suppress-vmdesc=on".into(),
        ],
        ..Config::default()
    };
    assert_eq!(cfg, expected);
    // Fields the struct literal above leaves at their defaults, spelled out.
    assert!(!cfg.start_paused && !cfg.domid_restrict && !cfg.xen_attach && !cfg.no_acpi);
    assert_eq!((cfg.smp, cfg.incoming, cfg.chroot, cfg.runas), (None, None, None, None));
}

#[test]
fn captured_libxl_argv_hvm2_with_trace_options() {
    let mut args = fixture(HVM2);
    // The lab wrapper appended QEMU trace options; the capture elides the -d
    // value, so this one is a stand-in of the same shape.
    args.extend(argv(&[
        "-d",
        "trace:xen_*,trace:handle_ioreq*",
        "-D",
        "/var/log/xen/qemu-trace.732.txt",
        "-msg",
        "timestamp=on",
    ]));
    let cfg = run(args);
    assert_eq!(cfg.domid, Some(2));
    assert_eq!(cfg.name.as_deref(), Some("hvm2"));
    assert_eq!(
        cfg.qmp,
        [
            qmp_path("libxl-cmd", "/var/run/xen/qmp-libxl-2"),
            qmp_path("libxenstat-cmd", "/var/run/xen/qmp-libxenstat-2"),
        ]
    );
    assert_eq!(cfg.serial, [ChardevSpec::File("/tmp/guest-serial-hvm2.log".into())]);
    assert_eq!(cfg.mem_mib, Some(128));
    assert_eq!(cfg.machine.kind, MachineKind::Xenfv);
    assert_eq!(cfg.append.as_deref(), Some("console=ttyS0 panic=-1 labhold=900  quiet"));
    for item in [
        "-d trace:xen_*,trace:handle_ioreq*",
        "-D /var/log/xen/qemu-trace.732.txt",
        "-msg timestamp=on",
        "-machine suppress-vmdesc=on",
    ] {
        assert!(cfg.ignored.iter().any(|i| i == item), "{item} not in {:?}", cfg.ignored);
    }
}

#[test]
fn xen_abi_1_3_example() {
    let cfg = run_str(&[
        "-xen-domid",
        "7",
        "-no-shutdown",
        "-chardev",
        "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-7,server=on,wait=off",
        "-mon",
        "chardev=libxl-cmd,mode=control",
        "-chardev",
        "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-7,server=on,wait=off",
        "-mon",
        "chardev=libxenstat-cmd,mode=control",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "g1",
        "-vnc",
        "none",
        "-display",
        "none",
        "-kernel",
        "/srv/bzImage",
        "-initrd",
        "/srv/initrd",
        "-append",
        "console=ttyS0",
        "-serial",
        "pty",
        "-nographic",
        "-boot",
        "order=cda",
        "-smp",
        "2,maxcpus=2",
        "-net",
        "none",
        "-machine",
        "xenfv,suppress-vmdesc=on",
        "-m",
        "512",
    ]);
    assert_eq!(cfg.domid, Some(7));
    assert!(cfg.no_shutdown && !cfg.start_paused);
    assert_eq!(cfg.name.as_deref(), Some("g1"));
    assert_eq!(
        cfg.qmp,
        [
            qmp_path("libxl-cmd", "/var/run/xen/qmp-libxl-7"),
            qmp_path("libxenstat-cmd", "/var/run/xen/qmp-libxenstat-7"),
        ]
    );
    assert_eq!(cfg.kernel, Some(PathBuf::from("/srv/bzImage")));
    assert_eq!(cfg.initrd_spec.as_deref(), Some("/srv/initrd"));
    assert_eq!(cfg.append.as_deref(), Some("console=ttyS0"));
    assert_eq!(cfg.serial, [ChardevSpec::Pty]);
    assert_eq!(cfg.boot_order.as_deref(), Some("cda"));
    assert_eq!(cfg.smp, Some(Smp { cpus: 2, maxcpus: 2 }));
    assert_eq!(cfg.mem_mib, Some(512));
    assert_eq!(cfg.machine, Machine::default());
    assert!(cfg.ignored.contains(&"-nographic".to_string()));
}

#[test]
fn dm_restrict_form() {
    let cfg = run_str(&[
        "-xen-domid",
        "3",
        "-no-shutdown",
        "-chardev",
        "socket,id=libxl-cmd,fd=9,server=on,wait=off",
        "-S",
        "-mon",
        "chardev=libxl-cmd,mode=control",
        "-chardev",
        "socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-3,server=on,wait=off",
        "-mon",
        "chardev=libxenstat-cmd,mode=control",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "r",
        "-vnc",
        "127.0.0.1:0,to=99",
        "-display",
        "none",
        "-boot",
        "order=c",
        "-net",
        "none",
        "-xen-domid-restrict",
        "-chroot",
        "/var/run/xen/qemu-root-3",
        "-incoming",
        "fd:12",
        "-machine",
        "pc,accel=xen,suppress-vmdesc=on,max-ram-below-4g=3758096384",
        "-m",
        "1024",
        "-runas",
        "131075:131072",
    ]);
    assert_eq!(cfg.domid, Some(3));
    assert!(cfg.start_paused && cfg.domid_restrict && cfg.no_shutdown);
    assert_eq!(
        cfg.qmp,
        [
            QmpEndpoint { id: "libxl-cmd".into(), socket: QmpSocketSpec::Fd(9) },
            qmp_path("libxenstat-cmd", "/var/run/xen/qmp-libxenstat-3"),
        ]
    );
    assert_eq!(cfg.chroot, Some(PathBuf::from("/var/run/xen/qemu-root-3")));
    assert_eq!(cfg.runas.as_deref(), Some("131075:131072"));
    assert_eq!(cfg.run_with, None);
    assert_eq!(cfg.incoming.as_deref(), Some("fd:12"));
    assert_eq!(cfg.vnc.as_deref(), Some("127.0.0.1:0,to=99"));
    assert_eq!(
        cfg.machine,
        Machine { kind: MachineKind::PcAccelXen, max_ram_below_4g: Some(0xE000_0000), igd_passthru: false }
    );
    assert_eq!(cfg.mem_mib, Some(1024));
}

#[test]
fn run_with_sets_chroot_and_user() {
    let cfg = run(with_domid(&[
        "-run-with",
        "chroot=/var/run/xen/qemu-root-5,user=xen-qemuuser-range-base,async-teardown=on",
    ]));
    assert_eq!(cfg.chroot, Some(PathBuf::from("/var/run/xen/qemu-root-5")));
    assert_eq!(cfg.runas.as_deref(), Some("xen-qemuuser-range-base"));
    assert_eq!(
        cfg.run_with,
        Some(RunWith {
            chroot: Some("/var/run/xen/qemu-root-5".into()),
            user: Some("xen-qemuuser-range-base".into()),
            async_teardown: true,
        })
    );
    // The later spelling wins, as in QEMU.
    let cfg = run(with_domid(&["-run-with", "user=a", "-runas", "b"]));
    assert_eq!(cfg.runas.as_deref(), Some("b"));
    assert!(matches!(
        parse(with_domid(&["-runas", "1:x"])),
        Err(CliError::InvalidValue { option, .. }) if option == "-runas"
    ));
    assert!(matches!(
        parse(with_domid(&["-run-with", "chroot=/x,bogus=1"])),
        Err(CliError::Opts { option, source: OptsError::UnknownKey(k) }) if option == "-run-with" && k == "bogus"
    ));
}

#[test]
fn old_server_nowait_spelling() {
    let cfg = run(with_domid(&[
        "-chardev",
        "socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-5,server,nowait",
        "-mon",
        "chardev=libxl-cmd,mode=control",
    ]));
    assert_eq!(cfg.qmp, [qmp_path("libxl-cmd", "/var/run/xen/qmp-libxl-5")]);
}

#[test]
fn probe_run_of_libxl_4_20() {
    let cfg = run_str(&[
        "-S",
        "-no-user-config",
        "-nodefaults",
        "-nographic",
        "-machine",
        "none,accel=xen",
        "-chardev",
        "socket,id=libxl-cmd,fd=4,server=on,wait=off",
        "-mon",
        "chardev=libxl-cmd,mode=control",
    ]);
    assert_eq!(cfg.domid, None);
    assert!(cfg.start_paused);
    assert_eq!(cfg.machine.kind, MachineKind::None);
    assert_eq!(cfg.qmp, [QmpEndpoint { id: "libxl-cmd".into(), socket: QmpSocketSpec::Fd(4) }]);
    // Only the probe may omit the domid.
    let e = err(&["-machine", "xenfv"]);
    assert!(e.to_string().contains("-xen-domid is required"), "{e}");
}

#[test]
fn stubdom_variant() {
    // xen-abi.md 1.6: no QMP, no -vnc, serial on /dev/hvcN, the literal
    // restore placeholder, and dom0 kernel paths.
    let cfg = run_str(&[
        "-xen-domid",
        "12",
        "-no-shutdown",
        "-nodefaults",
        "-no-user-config",
        "-name",
        "g",
        "-display",
        "none",
        "-kernel",
        "/srv/bzImage",
        "-serial",
        "/dev/hvc3",
        "-boot",
        "order=cda",
        "-net",
        "none",
        "-incoming",
        "$STUBDOM_RESTORE_INCOMING_ARG",
        "-machine",
        "xenfv,suppress-vmdesc=on",
        "-m",
        "256",
    ]);
    assert!(cfg.qmp.is_empty());
    assert_eq!(cfg.serial, [ChardevSpec::HostDevice("/dev/hvc3".into())]);
    assert_eq!(cfg.incoming.as_deref(), Some("$STUBDOM_RESTORE_INCOMING_ARG"));
    assert_eq!(cfg.vnc, None);
    // A stubdom's IDE disk (/dev/xvdX inside the stub) is recorded like
    // any other: the guest reaches the same disk through its own PV vbd.
    let cfg = run_str(&["-xen-domid", "12", "-drive", "file=/dev/xvda,if=ide,index=0,media=disk,format=host_device"]);
    assert_eq!(cfg.disks, [EmulatedDisk { bus: DiskBus::Ide { index: 0 }, file: "/dev/xvda".into(), readonly: false }]);
}

#[test]
fn misspelled_option_is_refused_by_name() {
    let e = err(&["-xen-domidd", "1"]);
    assert_eq!(e, CliError::UnknownOption { option: "-xen-domidd".into(), suggestion: Some("-xen-domid".into()) });
    assert_eq!(e.to_string(), "unknown option '-xen-domidd' (did you mean '-xen-domid'?)");
    assert_eq!(err(&["--kernal", "x"]).to_string(), "unknown option '--kernal' (did you mean '-kernel'?)");
    assert_eq!(err(&["-frobnicate"]).to_string(), "unknown option '-frobnicate'");
    assert_eq!(err(&["disk.img"]), CliError::UnexpectedArgument("disk.img".into()));
    assert!(matches!(err(&["-"]), CliError::UnknownOption { .. }));
    assert!(matches!(err(&["--"]), CliError::UnknownOption { .. }));
}

#[test]
fn missing_value_is_refused() {
    assert_eq!(err(&["-xen-domid"]), CliError::MissingValue("-xen-domid".into()));
    assert_eq!(err(&["-xen-domid", "1", "-kernel"]).to_string(), "option '-kernel' requires a value");
    assert_eq!(err(&["--append"]), CliError::MissingValue("-append".into()));
}

#[test]
fn double_dash_is_the_same_option() {
    let cfg = run_str(&["--xen-domid", "9", "--m", "64", "--no-shutdown"]);
    assert_eq!((cfg.domid, cfg.mem_mib, cfg.no_shutdown), (Some(9), Some(64), true));
}

#[test]
fn repeated_single_valued_option_is_refused() {
    assert_eq!(parse(with_domid(&["-m", "1", "-m", "2"])), Err(CliError::Repeated("-m".into())));
    assert_eq!(err(&["-xen-domid", "1", "--xen-domid", "2"]), CliError::Repeated("-xen-domid".into()));
    // Flags may repeat harmlessly; -machine merges with the later value winning.
    let cfg = run(with_domid(&[
        "-nodefaults",
        "-nodefaults",
        "-machine",
        "pc,accel=xen",
        "-M",
        "xenfv",
        "-machine",
        "max-ram-below-4g=2G,igd-passthru=on",
    ]));
    assert_eq!(cfg.machine, Machine { kind: MachineKind::Xenfv, max_ram_below_4g: Some(2 << 30), igd_passthru: true });
}

#[test]
fn append_is_verbatim() {
    let cmdline = "  console=ttyS0 root=/dev/xvda1  init=/bin/sh -- a,,b 'q' ";
    let cfg = run(with_domid(&["-kernel", "/k", "-append", cmdline]));
    assert_eq!(cfg.append.as_deref(), Some(cmdline));
    let cfg = run(with_domid(&["-kernel", "/k", "-append", ""]));
    assert_eq!(cfg.append.as_deref(), Some(""));
    // A value that looks like an option is still the value.
    let cfg = run(with_domid(&["-kernel", "/k", "-append", "-S"]));
    assert_eq!(cfg.append.as_deref(), Some("-S"));
    assert!(!cfg.start_paused);
}

#[test]
fn initrd_spec_is_kept_raw_for_multiboot() {
    let cfg = run(with_domid(&[
        "-kernel",
        "/boot/xen.gz",
        "-xendm-boot",
        "multiboot",
        "-initrd",
        "/boot/vmlinuz console=hvc0,/boot/initrd.img",
    ]));
    assert_eq!(cfg.initrd_spec.as_deref(), Some("/boot/vmlinuz console=hvc0,/boot/initrd.img"));
    assert_eq!(cfg.boot_protocol, Some(BootProtocol::Multiboot));
    for (name, p) in [("linux", BootProtocol::Linux), ("pvh", BootProtocol::Pvh)] {
        let cfg = run(with_domid(&["-kernel", "/k", "-xendm-boot", name]));
        assert_eq!(cfg.boot_protocol, Some(p));
    }
    assert!(matches!(
        parse(with_domid(&["-kernel", "/k", "-xendm-boot", "elf"])),
        Err(CliError::InvalidValue { option, .. }) if option == "-xendm-boot"
    ));
}

#[test]
fn kernel_companions_need_a_kernel() {
    for args in [&["-initrd", "/i"][..], &["-append", "quiet"], &["-xendm-boot", "pvh"]] {
        let e = parse(with_domid(args)).unwrap_err();
        assert!(matches!(e, CliError::Inconsistent(ref m) if m.contains("needs -kernel")), "{e}");
    }
    assert!(matches!(
        parse(with_domid(&["-kernel", ""])),
        Err(CliError::InvalidValue { option, .. }) if option == "-kernel"
    ));
}

#[test]
fn non_utf8_argument_is_an_error() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![b'/', b'k', 0xff, 0xfe]);
    let e = parse(vec![OsString::from("-kernel"), bad.clone()]).unwrap_err();
    assert_eq!(e, CliError::NotUtf8 { index: 2, option: Some("-kernel".into()), lossy: "/k\u{fffd}\u{fffd}".into() });
    assert!(e.to_string().contains("argument 2 (the value of -kernel)"), "{e}");
    let e = parse(vec![bad]).unwrap_err();
    assert!(matches!(e, CliError::NotUtf8 { index: 1, option: None, .. }));
}

#[test]
fn memory_sizes() {
    for (v, mib) in [
        ("128", 128),
        ("128M", 128),
        ("128m", 128),
        ("2G", 2048),
        ("size=256M", 256),
        ("size=64", 64),
        ("1.5G", 1536),
        ("1048576K", 1024),
    ] {
        assert_eq!(run(with_domid(&["-m", v])).mem_mib, Some(mib), "{v}");
    }
    assert_eq!(parse(with_domid(&["-m", "abc"])).unwrap_err().to_string(), "-m: invalid size 'abc'");
    for bad in ["0", "1.5", "100K", "", "128,slots=2", "maxmem=1G"] {
        let e = parse(with_domid(&["-m", bad])).unwrap_err();
        assert!(e.to_string().starts_with("-m: "), "{bad}: {e}");
    }
}

#[test]
fn smp_forms() {
    let smp = |v| run(with_domid(&["-smp", v])).smp;
    assert_eq!(smp("2,maxcpus=4"), Some(Smp { cpus: 2, maxcpus: 4 }));
    assert_eq!(smp("3"), Some(Smp { cpus: 3, maxcpus: 3 }));
    assert_eq!(smp("cpus=1,maxcpus=128"), Some(Smp { cpus: 1, maxcpus: 128 }));
    assert_eq!(smp("maxcpus=2"), Some(Smp { cpus: 2, maxcpus: 2 }));
    for bad in ["0", "4,maxcpus=2", "1,maxcpus=129", "x", "2,sockets=2", "-1"] {
        let e = parse(with_domid(&["-smp", bad])).unwrap_err();
        assert!(e.to_string().starts_with("-smp: "), "{bad}: {e}");
    }
}

#[test]
fn domid_range() {
    assert_eq!(run_str(&["-xen-domid", "32751"]).domid, Some(0x7FEF));
    for bad in ["0", "32752", "-1", "0x5", "", "1 "] {
        let e = err(&["-xen-domid", bad]);
        assert!(matches!(e, CliError::InvalidValue { ref option, .. } if option == "-xen-domid"), "{bad}: {e}");
    }
}

#[test]
fn machine_variants() {
    let m = |v: &str| run(with_domid(&["-machine", v])).machine;
    assert_eq!(m("xenfv").kind, MachineKind::Xenfv);
    assert_eq!(m("type=xenfv,accel=xen").kind, MachineKind::Xenfv);
    assert_eq!(m("pc,accel=xen").kind, MachineKind::PcAccelXen);
    assert_eq!(m("xenfv,max-ram-below-4g=0").max_ram_below_4g, None);
    assert_eq!(m("xenfv,max-ram-below-4g=4G").max_ram_below_4g, Some(4 << 30));
    assert!(!m("xenfv,igd-passthru=off").igd_passthru);
    assert!(run(with_domid(&["-machine", "xenfv,acpi=off"])).no_acpi);
    assert!(run(with_domid(&["-no-acpi"])).no_acpi);
    assert_eq!(run(with_domid(&["-accel", "xen", "-machine", "pc"])).machine.kind, MachineKind::PcAccelXen);
    // No -machine at all: libxl's default.
    assert_eq!(run(with_domid(&[])).machine, Machine::default());
    for (bad, needle) in [
        ("pc", "needs accel=xen"),
        ("q35,accel=xen", "unsupported machine type 'q35'"),
        ("xenpv", "remove device_model_override from the guest's xl.cfg"),
        ("xenfv,accel=kvm", "unsupported accelerator 'kvm'"),
        ("xenfv,vmport=on", "unsupported parameter 'vmport'"),
        ("xenfv,max-ram-below-4g=5G", "above 4G"),
        ("xenfv,max-ram-below-4g=lots", "invalid size 'lots'"),
        ("xenfv,suppress-vmdesc=maybe", "suppress-vmdesc"),
        ("xenfv,igd-passthru=2", "igd-passthru"),
        ("accel=xen", "no machine type"),
    ] {
        let e = parse(with_domid(&["-machine", bad])).unwrap_err();
        assert!(e.to_string().starts_with("-machine: "), "{bad}: {e}");
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
}

#[test]
fn serial_backends() {
    let serial = |v| run(with_domid(&["-serial", v])).serial;
    assert_eq!(serial("pty"), [ChardevSpec::Pty]);
    assert_eq!(serial("null"), [ChardevSpec::Null]);
    assert_eq!(serial("stdio"), [ChardevSpec::Stdio]);
    assert_eq!(serial("none"), [ChardevSpec::None]);
    assert_eq!(serial("file:/tmp/a,b"), [ChardevSpec::File("/tmp/a,b".into())]);
    assert_eq!(serial("/dev/hvc3"), [ChardevSpec::HostDevice("/dev/hvc3".into())]);
    assert_eq!(
        serial("unix:/run/s,,1,server=on,wait=off"),
        [ChardevSpec::Unix { path: "/run/s,1".into(), server: true }]
    );
    assert_eq!(serial("unix:/run/s"), [ChardevSpec::Unix { path: "/run/s".into(), server: false }]);
    assert_eq!(
        parse(with_domid(&["-serial", "tcp:127.0.0.1:4555,server"])).unwrap_err().to_string(),
        "-serial: unsupported backend 'tcp:127.0.0.1:4555,server' (network serial consoles \
         are not implemented; use pty, file:PATH or unix:PATH,server=on,wait=off)"
    );
    for bad in ["vc", "mon:stdio", "file:", "unix:/s,server", "/dev/parport0", "chardev:x"] {
        let e = parse(with_domid(&["-serial", bad])).unwrap_err();
        assert!(e.to_string().starts_with("-serial: "), "{bad}: {e}");
    }
}

#[test]
fn serial_ports_skip_none_and_stop_at_four() {
    let cfg = run(with_domid(&[
        "-serial", "none", "-serial", "pty", "-serial", "null", "-serial", "none", "-serial", "stdio", "-serial",
        "file:/x",
    ]));
    let ports: Vec<_> = cfg.serial_ports().cloned().collect();
    assert_eq!(ports, [ChardevSpec::Pty, ChardevSpec::Null, ChardevSpec::Stdio, ChardevSpec::File("/x".into())]);
    let mut args = vec!["-serial"; 10];
    for (i, a) in args.iter_mut().enumerate() {
        if i % 2 == 1 {
            *a = "null";
        }
    }
    let e = parse(with_domid(&args)).unwrap_err();
    assert!(e.to_string().contains("at most 4 serial ports"), "{e}");
}

#[test]
fn qmp_chardev_errors() {
    let case = |extra: &[&str]| parse(with_domid(extra)).unwrap_err().to_string();
    assert_eq!(case(&["-mon", "chardev=nope,mode=control"]), "-mon: chardev 'nope' is not defined by any -chardev");
    let sock = "socket,id=q,path=/q,server=on,wait=off";
    assert!(case(&["-chardev", sock, "-chardev", sock]).contains("duplicate id 'q'"));
    assert!(case(&["-chardev", sock, "-mon", "q"]).contains("unsupported mode 'readline'"));
    assert!(
        case(&["-chardev", sock, "-mon", "q,mode=control", "-mon", "q,mode=control"]).contains("more than one -mon")
    );
    assert!(case(&["-chardev", "socket,id=q,path=/q,server=on", "-mon", "q,mode=control"]).contains("wait=off"));
    assert!(case(&["-chardev", "socket,id=q,path=/q", "-mon", "q,mode=control"]).contains("server=on"));
    assert!(case(&["-chardev", "pty,id=q", "-mon", "q,mode=control"]).contains("pty chardev"));
    for bad in [
        "socket,id=q,path=/q,fd=3,server=on,wait=off",
        "socket,id=q,server=on,wait=off",
        "socket,id=q,fd=1,server=on,wait=off",
        "socket,id=q,fd=x,server=on,wait=off",
        "socket,id=q,host=localhost,port=4444,server=on,wait=off",
        "socket,id=q,path=/q,telnet=on",
        "socket,path=/q",
        "socket,id=9q,path=/q",
        "ringbuf,id=q",
        "file,id=f",
    ] {
        let e = case(&["-chardev", bad]);
        assert!(e.starts_with("-chardev: "), "{bad}: {e}");
    }
}

/// Audit 2026-12 section 3: the same `fd=N` in two `-chardev` options gave
/// a bare "File exists" (and an I/O-safety abort in debug builds).
#[test]
fn one_fd_in_two_chardevs_is_refused_by_name() {
    let e = parse(with_domid(&[
        "-chardev",
        "socket,id=a,fd=5,server=on,wait=off",
        "-mon",
        "chardev=a,mode=control",
        "-chardev",
        "socket,id=b,fd=5,server=on,wait=off",
        "-mon",
        "chardev=b,mode=control",
    ]))
    .unwrap_err();
    assert_eq!(e.to_string(), "-chardev id=b: fd=5 is also used by -chardev id=a");
    // Also when the second chardev has no monitor (it would be ignored).
    let e = parse(with_domid(&[
        "-chardev",
        "socket,id=a,fd=5,server=on,wait=off",
        "-mon",
        "chardev=a,mode=control",
        "-chardev",
        "socket,id=c,fd=5,server=on,wait=off",
    ]))
    .unwrap_err();
    assert_eq!(e.to_string(), "-chardev id=c: fd=5 is also used by -chardev id=a");
    let ok = run(with_domid(&[
        "-chardev",
        "socket,id=a,fd=5,server=on,wait=off",
        "-mon",
        "chardev=a,mode=control",
        "-chardev",
        "socket,id=b,fd=6,server=on,wait=off",
        "-mon",
        "chardev=b,mode=control",
    ]));
    assert_eq!(ok.qmp.len(), 2);
}

#[test]
fn monitor_order_and_qmp_shorthand() {
    // -mon may come before its -chardev; endpoints follow -mon order.
    let cfg = run(with_domid(&[
        "-mon",
        "chardev=b,mode=control,pretty=on",
        "-qmp",
        "unix:/tmp/dev.qmp,server=on,wait=off",
        "-chardev",
        "socket,id=a,path=/a,server=on,wait=off",
        "-chardev",
        "socket,id=b,path=/b,server=on,wait=off",
        "-mon",
        "a,mode=control",
    ]));
    assert_eq!(cfg.qmp, [qmp_path("b", "/b"), qmp_path("compat_monitor1", "/tmp/dev.qmp"), qmp_path("a", "/a")]);
    assert!(parse(with_domid(&["-qmp", "tcp:localhost:4444,server,nowait"])).is_err());
    assert!(parse(with_domid(&["-qmp", "unix:/q"])).is_err());
}

#[test]
fn unused_chardevs_are_listed_as_ignored() {
    let cfg = run(with_domid(&[
        "-chardev",
        "pty,id=libxl-channel0",
        "-chardev",
        "socket,id=libxl-channel1,path=/run/ch1,server=on,wait=off",
    ]));
    assert!(cfg.qmp.is_empty());
    assert_eq!(
        cfg.ignored,
        ["-chardev pty,id=libxl-channel0", "-chardev socket,id=libxl-channel1,path=/run/ch1,server=on,wait=off"]
    );
}

#[test]
fn refused_devices_and_options_name_themselves() {
    let case = |extra: &[&str]| parse(with_domid(extra)).unwrap_err().to_string();
    assert_eq!(
        case(&["-device", "VGA,vgamem_mb=16"]),
        "-device: unsupported driver 'VGA' (emulated graphics are not implemented; \
         set vga=\"none\" in the xl config)"
    );
    assert!(case(&["-device", "cirrus-vga,vgamem_mb=8"]).contains("'cirrus-vga'"));
    assert!(case(&["-device", "piix3-usb-uhci,id=usb"]).contains("USB"));
    assert!(case(&["-device", "xen-pvdevice,device-id=0xc000"]).contains("xen-pvdevice"));
    assert!(case(&["-device", "virtio-blk-pci,drive=d0"]).contains("'virtio-blk-pci' (emulated disks"));
    assert!(case(&["-drive", "file=/d.img,if=virtio"]).starts_with("-drive: unsupported interface 'virtio'"));
    for option in ["-usbdevice", "-spice", "-object", "-cdrom", "-hda", "-soundhw", "-monitor", "-bios", "-pidfile"] {
        let e = case(&[option, "x"]);
        assert!(e.starts_with(&format!("option '{option}'")), "{e}");
    }
    assert!(case(&["-daemonize"]).starts_with("option '-daemonize'"));
    assert!(case(&["-net", "nic,model=e1000"]).starts_with("-net: unsupported network 'nic,model=e1000' (the -net nic"));
    assert!(case(&["-display", "sdl"]).starts_with("-display: unsupported display 'sdl'"));
    assert!(case(&["-vga", "std"]).starts_with("-vga: unsupported card 'std'"));
    assert!(case(&["-parallel", "/dev/parport0"]).starts_with("-parallel: unsupported"));
    assert!(case(&["-boot", "order=cda,menu=on"]).starts_with("-boot: unsupported parameter 'menu'"));
    assert!(case(&["-boot", "order=cc"]).contains("repeated"));
    assert!(case(&["-boot", "order=z"]).contains("invalid boot device 'z'"));
    assert!(case(&["-global", "nonsense"]).starts_with("-global: "));
}

#[test]
fn harmless_options_are_recorded_as_ignored() {
    let cfg = run(with_domid(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-nographic",
        "-k",
        "en-us",
        "-vnc",
        "127.0.0.1:0,to=99",
        "-vga",
        "none",
        "-net",
        "none",
        "-usb",
        "-parallel",
        "none",
        "-global",
        "PIIX4_PM.disable_s3=1",
        "-d",
        "guest_errors",
        "-D",
        "/tmp/q.log",
        "-trace",
        "events=/tmp/ev",
        "-msg",
        "timestamp=on",
        "-xen-attach",
    ]));
    assert_eq!(
        cfg.ignored,
        [
            "-nodefaults",
            "-no-user-config",
            "-display none",
            "-nographic",
            "-k en-us",
            "-vnc 127.0.0.1:0,to=99",
            "-vga none",
            "-net none",
            "-usb",
            "-parallel none",
            "-global PIIX4_PM.disable_s3=1",
            "-d guest_errors",
            "-D /tmp/q.log",
            "-trace events=/tmp/ev",
            "-msg timestamp=on",
        ]
    );
    assert!(cfg.xen_attach);
    assert_eq!(cfg.vnc.as_deref(), Some("127.0.0.1:0,to=99"));
}

#[test]
fn name_forms() {
    assert_eq!(run(with_domid(&["-name", "a,,b"])).name.as_deref(), Some("a,b"));
    assert_eq!(run(with_domid(&["-name", "guest=g,process=xendm-g,debug-threads=on"])).name.as_deref(), Some("g"));
    assert!(parse(with_domid(&["-name", "g,extra=1"])).is_err());
}

#[test]
fn record_option() {
    let cfg = run(with_domid(&["-xendm-record", "/tmp/rec.bin"]));
    assert_eq!(cfg.record, Some(PathBuf::from("/tmp/rec.bin")));
}

#[test]
fn help_version_and_dump_roms() {
    for flag in ["-h", "--help", "-help"] {
        let Ok(Command::Help(text)) = parse(argv(&["-xen-domid", "1", flag, "-bogus"])) else {
            panic!("{flag}");
        };
        assert!(text.starts_with("xendm "));
        assert!(text.contains("Usage: xendm -xen-domid DOMID"));
        assert!(text.contains("XENDM_RECORD") && text.contains("XENDM_LOG") && text.contains("RUST_LOG"));
    }
    for flag in ["-version", "--version"] {
        let Ok(Command::Version(text)) = parse(argv(&[flag])) else { panic!("{flag}") };
        assert!(text.starts_with(&format!("xendm {}\n", env!("CARGO_PKG_VERSION"))));
        assert!(text.contains("Xen 4.17"));
    }
    assert_eq!(parse(argv(&["--dump-roms", "/tmp/roms"])), Ok(Command::DumpRoms("/tmp/roms".into())));
    assert!(matches!(parse(argv(&["--dump-roms", "/tmp/roms", "-xen-domid", "1"])), Err(CliError::Inconsistent(_))));
    assert_eq!(parse(argv(&["--dump-roms"])), Err(CliError::MissingValue("-dump-roms".into())));
}

#[test]
fn help_mentions_every_accepted_option() {
    let help = help::help_text();
    let refused = [
        "cdrom",
        "hda",
        "hdb",
        "hdc",
        "hdd",
        "fda",
        "fdb",
        "usbdevice",
        "spice",
        "soundhw",
        "audiodev",
        "object",
        "monitor",
        "bios",
        "pidfile",
        "daemonize",
        "enable-kvm",
    ];
    for spec in table::TABLE {
        if refused.contains(&spec.name) || spec.name == "h" {
            continue;
        }
        assert!(
            help.contains(&format!("-{} ", spec.name))
                || help.contains(&format!("-{},", spec.name))
                || help.contains(&format!("-{}\n", spec.name))
                || help.contains(&format!("-{}:", spec.name)),
            "help does not mention -{}",
            spec.name
        );
    }
}

#[test]
fn usage_doc_lists_every_ignored_option() {
    let doc = include_str!("../../docs/usage.md");
    let section = doc.split("## Options accepted but ignored").nth(1).expect("section present");
    for option in [
        "-nodefaults",
        "-no-user-config",
        "-display none",
        "-nographic",
        "-vnc",
        "-k",
        "-vga none",
        "-net none",
        "-usb",
        "-parallel none",
        "-global",
        "-d",
        "-D",
        "-trace",
        "-msg",
        "-machine suppress-vmdesc",
        "-chardev",
        "-xen-attach",
        "-run-with ...,async-teardown",
        "-mon ...,pretty",
    ] {
        assert!(section.contains(&format!("`{option}")), "usage.md does not list {option}");
    }
}

#[test]
fn table_has_no_duplicates() {
    for (i, a) in table::TABLE.iter().enumerate() {
        assert!(table::TABLE.iter().skip(i + 1).all(|b| b.name != a.name), "-{} twice", a.name);
    }
}

#[test]
fn arbitrary_argv_never_panics() {
    // Deterministic pseudo-random argvs built from option names, QemuOpts
    // fragments and odd strings; parse must return, never panic.
    let pieces = [
        "-xen-domid",
        "1",
        "-machine",
        "none,accel=xen",
        "xenfv,",
        ",",
        ",,",
        "=",
        "a=",
        "=b",
        "-m",
        "0x",
        "1.",
        "18446744073709551615E",
        "-smp",
        "-chardev",
        "socket,id=a,fd=3,server",
        "-mon",
        "a,mode=control",
        "-serial",
        "unix:",
        "file:",
        "-boot",
        "order=",
        "no",
        "--",
        "-",
        "",
        "é,,ü",
        "-kernel",
        "-append",
        "-run-with",
        "-name",
        "-qmp",
        "nowait",
        "-S",
        "-accel",
        "-device",
        "-net",
        "none",
        "-display",
        "-sandbox",
        "off",
        "-m",
        "size=",
    ];
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(seed >> 33).unwrap()
    };
    for _ in 0..20_000 {
        let len = next() % 8;
        let args: Vec<OsString> = (0..len).map(|_| OsString::from(pieces[next() % pieces.len()])).collect();
        let _ = parse(args);
    }
}

#[test]
fn sandbox_is_on_by_default_and_sub_options_are_honoured_or_refused_by_name() {
    use super::SandboxSetting::{Off, On};
    let sandbox = |v: &[&str]| {
        let mut a = vec!["-xen-domid", "1"];
        a.extend_from_slice(v);
        match parse(a.into_iter().map(Into::into)) {
            Ok(Command::Run(c)) => Ok(c.sandbox),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    };
    assert_eq!(sandbox(&[]), Ok(On));
    assert_eq!(sandbox(&["-sandbox", "on"]), Ok(On));
    assert_eq!(sandbox(&["-sandbox", "off"]), Ok(Off));
    assert_eq!(sandbox(&["-sandbox", "enable=off"]), Ok(Off));
    // libxl's planned line (xen-abi.md 4.8).
    let planned = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";
    assert_eq!(sandbox(&["-sandbox", planned]), Ok(On));
    assert_eq!(sandbox(&["-sandbox", "on,elevateprivileges=deny"]), Ok(On));
    for refused in ["spawn=allow", "obsolete=allow", "resourcecontrol=allow", "elevateprivileges=children"] {
        let e = sandbox(&["-sandbox", &format!("on,{refused}")]).unwrap_err();
        assert!(e.starts_with(&format!("-sandbox: unsupported setting '{refused}'")), "{e}");
    }
    assert!(sandbox(&["-sandbox", "on,nonsense=1"]).unwrap_err().contains("nonsense"));
    assert!(sandbox(&["-sandbox", "maybe"]).unwrap_err().starts_with("-sandbox: "));
}

/// libxl 4.17's argv for `disk = ['format=raw,vdev=xvda,...', '...vdev=xvdb...']`
/// (xen-toolstack.md 3.1): each IDE disk is recorded, in order, with its vdev.
#[test]
fn libxls_ide_disks_are_recorded_for_the_pv_path() {
    let cfg = run_str(&[
        "-xen-domid",
        "3",
        "-kernel",
        "/k",
        "-drive",
        "file=/srv/d0.img,if=ide,index=0,media=disk,format=raw,cache=writeback",
        "-drive",
        "file=/dev/vg/d1,if=ide,index=1,media=disk,format=raw,cache=writeback",
    ]);
    assert_eq!(cfg.disks, [ide(0, "/srv/d0.img"), ide(1, "/dev/vg/d1")]);
    assert_eq!(cfg.disks[1].vdev(), "xvdb");
    assert_eq!(cfg.disks[1].form(), "-drive if=ide,index=1");
    // QEMU's bus/unit spelling of the same.
    let cfg = run_str(&["-xen-domid", "3", "-drive", "file=/d,if=ide,bus=1,unit=1,media=disk"]);
    assert_eq!(cfg.disks, [ide(3, "/d")]);
}

fn ide(index: u32, file: &str) -> EmulatedDisk {
    EmulatedDisk { bus: DiskBus::Ide { index }, file: file.into(), readonly: false }
}

/// `hdtype = "ahci"` in libxl 4.17 (libxl_dm.c): the controller once, then
/// an `if=none` drive and an `ide-hd` on port N per disk 0-5.
#[test]
fn libxls_ahci_disks_are_recorded_for_the_pv_path() {
    let cfg = run_str(&[
        "-xen-domid",
        "3",
        "-device",
        "ahci,id=ahci0",
        "-drive",
        "file=/srv/d0.img,if=none,id=ahcidisk-0,format=raw,cache=writeback",
        "-device",
        "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0",
        "-drive",
        "file=/srv/d5.img,if=none,id=ahcidisk-5,format=raw,cache=writeback",
        "-device",
        "ide-hd,bus=ahci0.5,unit=0,drive=ahcidisk-5",
    ]);
    assert_eq!(
        cfg.disks,
        [
            EmulatedDisk { bus: DiskBus::Ahci { port: 0 }, file: "/srv/d0.img".into(), readonly: false },
            EmulatedDisk { bus: DiskBus::Ahci { port: 5 }, file: "/srv/d5.img".into(), readonly: false },
        ]
    );
    assert_eq!(cfg.disks[1].vdev(), "xvdf");
    assert_eq!(cfg.disks[1].form(), "-device ide-hd,bus=ahci0.5");
    assert!(cfg.ignored.contains(&"-device ahci,id=ahci0".to_string()), "{:?}", cfg.ignored);
    // The controller alone (hdtype=ahci with no disk below xvdg): accepted.
    let cfg = run_str(&["-xen-domid", "3", "-device", "ahci,id=ahci0"]);
    assert!(cfg.disks.is_empty());
}

/// `sdX` disks in libxl 4.17: `-device lsi53c895a` early in argv, then a
/// drive and a `scsi-hd` per disk (read-only ones included); and the older
/// `-drive if=scsi,bus=0,unit=N`.
#[test]
fn libxls_scsi_disks_are_recorded_for_the_pv_path() {
    let cfg = run_str(&[
        "-xen-domid",
        "3",
        "-device",
        "lsi53c895a",
        "-drive",
        "file=/srv/s0.img,id=scsi0-hd0,format=raw,if=none,readonly=off,cache=writeback",
        "-device",
        "scsi-hd,drive=scsi0-hd0,scsi-id=0",
        "-drive",
        "file=/srv/s2.img,id=scsi0-hd2,format=raw,if=none,readonly=on,cache=writeback",
        "-device",
        "scsi-hd,drive=scsi0-hd2,scsi-id=2",
        "-drive",
        "file=/srv/s3.img,if=scsi,bus=0,unit=3,format=raw,cache=writeback",
    ]);
    assert_eq!(
        cfg.disks,
        [
            EmulatedDisk { bus: DiskBus::Scsi { id: 3 }, file: "/srv/s3.img".into(), readonly: false },
            EmulatedDisk { bus: DiskBus::Scsi { id: 0 }, file: "/srv/s0.img".into(), readonly: false },
            EmulatedDisk { bus: DiskBus::Scsi { id: 2 }, file: "/srv/s2.img".into(), readonly: true },
        ]
    );
    assert_eq!(cfg.disks[2].vdev(), "sdc");
    // sda and xvda are different disks.
    run_str(&["-xen-domid", "3", "-drive", "file=/a,if=ide,index=0,media=disk", "-drive", "file=/b,if=scsi,unit=0"]);
}

#[test]
fn disk_argv_that_libxl_would_not_emit_is_refused_with_the_reason() {
    let case = |extra: &[&str]| parse(with_domid(extra)).unwrap_err().to_string();
    // libxl's CD-ROM pair (xen-toolstack.md 3.1).
    assert_eq!(
        case(&[
            "-drive",
            "if=none,readonly=on,id=ide-5632,file=cd.iso,format=raw",
            "-device",
            "ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0"
        ]),
        "-device: unsupported driver 'ide-cd' (emulated CD-ROMs are not implemented; remove the devtype=cdrom disk \
         from the xl config (or give the image to the guest as a PV disk, vdev=xvde or later))"
    );
    assert!(case(&["-drive", "file=cd.iso,if=ide,index=2,media=cdrom"]).contains("devtype=cdrom"));
    assert!(case(&["-cdrom", "cd.iso"]).contains("devtype=cdrom"));
    assert!(case(&["-device", "scsi-cd,drive=c"]).contains("devtype=cdrom"));
    // A lone if=none drive (the CD-ROM's, without its ide-cd) has no device.
    assert_eq!(
        case(&["-drive", "if=none,readonly=on,id=ide-5632,file=cd.iso,format=raw"]),
        "-drive if=none,id=ide-5632: no -device ide-hd (AHCI) or scsi-hd names it (drive=ide-5632)"
    );
    // Read-only IDE and AHCI disks: libxl refuses them itself.
    for ro in [
        &["-drive", "file=/d.img,if=ide,index=0,media=disk,readonly=on"][..],
        &[
            "-device",
            "ahci,id=ahci0",
            "-drive",
            "file=/d,if=none,id=ahcidisk-0,readonly=on",
            "-device",
            "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0",
        ],
    ] {
        assert!(case(ro).contains("libxl emits no read-only IDE or AHCI disk"), "{ro:?}");
    }
    assert!(case(&["-drive", "file=/d.img,if=ide,index=4,media=disk"]).contains("IDE index 4"));
    assert!(case(&["-drive", "file=/a,index=1", "-drive", "file=/b,index=1"]).contains("disk xvdb given twice"));
    // A format other than raw: libxl's qdisk backend, which xendm does not have.
    assert_eq!(
        case(&["-drive", "file=/g.qcow2,if=ide,index=0,media=disk,format=qcow2,cache=writeback"]),
        "-drive: unsupported format 'qcow2' (libxl serves such a disk with QEMU's qdisk backend, which xendm does \
         not have; convert the image (qemu-img convert -O raw) and give the disk as format=raw, so libxl uses \
         blkback)"
    );
    let vhd_scsi = [
        "-device",
        "lsi53c895a",
        "-drive",
        "file=/s.vhd,id=scsi0-hd0,format=vpc,if=none,readonly=off,cache=writeback",
        "-device",
        "scsi-hd,drive=scsi0-hd0,scsi-id=0",
    ];
    assert!(case(&vhd_scsi).starts_with("-drive: unsupported format 'vpc'"));
    assert!(case(&["-drive", "file=/a,if=none"]).contains("missing parameter 'id'"));
    assert!(case(&["-drive", "file=/a,if=none,id=x", "-drive", "file=/b,if=none,id=x"]).contains("'x' given twice"));
    assert!(case(&["-drive", "file=/a,media=tape"]).contains("media 'tape'"));
    assert!(case(&["-drive", "file=/a,driver=quorum"]).contains("unsupported parameter 'driver'"));
    assert!(case(&["-drive", "file=/a,if=scsi,unit=16"]).contains("unit=16 is above 15"));
    assert!(case(&["-drive", "file=/a,if=scsi,bus=1,unit=0"]).contains("only SCSI bus 0"));
    // Devices without their partner, or on a bus xendm does not take.
    let ahci_disk =
        ["-drive", "file=/d,if=none,id=ahcidisk-0", "-device", "ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0"];
    assert_eq!(
        case(&ahci_disk),
        "-device ide-hd,bus=ahci0.0,unit=0,drive=ahcidisk-0: no -device ahci,id=ahci0 controller"
    );
    assert!(case(&["-device", "ahci,id=ahci0", "-device", "ide-hd,bus=ahci0.1,drive=nope"])
        .contains("no -drive if=none,id=nope for it"));
    assert!(case(&["-device", "ide-hd,bus=ide.0,drive=d"]).contains("only on an AHCI port"));
    assert!(case(&["-device", "ahci,id=ahci0", "-device", "ide-hd,bus=ahci0.6,drive=d"]).contains("port must be 0-5"));
    let scsi = ["-drive", "file=/s,if=none,id=scsi0-hd0", "-device", "scsi-hd,drive=scsi0-hd0,scsi-id=0"];
    assert!(case(&scsi).contains("no -device lsi53c895a controller"));
    assert!(case(&["-device", "lsi53c895a,bus=pci.0"]).contains("unsupported parameter 'bus'"));
}

/// `vif = ['bridge=xenbr0']` in libxl 4.17 (lab capture, xen-toolstack.md
/// 3.1): the `-device` comes before its `-netdev`.
#[test]
fn libxls_nic_pair_is_recorded_with_its_tap() {
    let cfg = run_str(&[
        "-xen-domid",
        "7",
        "-device",
        "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:51:36:66",
        "-netdev",
        "type=tap,id=net0,ifname=vif7.0-emu,br=xenbr0,script=no,downscript=no",
        "-device",
        "e1000,id=nic1,netdev=net1,mac=00:16:3e:51:36:67",
        "-netdev",
        "tap,id=net1,ifname=vif7.1-emu,script=no,downscript=no",
    ]);
    assert_eq!(
        cfg.nics,
        [
            TapNic {
                model: "rtl8139".into(),
                device_id: Some("nic0".into()),
                netdev_id: "net0".into(),
                mac: Some("00:16:3e:51:36:66".into()),
                ifname: "vif7.0-emu".into(),
                bridge: Some("xenbr0".into()),
            },
            TapNic {
                model: "e1000".into(),
                device_id: Some("nic1".into()),
                netdev_id: "net1".into(),
                mac: Some("00:16:3e:51:36:67".into()),
                ifname: "vif7.1-emu".into(),
                bridge: None,
            },
        ]
    );
    // Every model of the list is accepted; the -netdev may come first.
    for model in crate::cli::NIC_MODELS {
        let cfg = run_str(&[
            "-xen-domid",
            "7",
            "-netdev",
            "type=tap,id=net0,ifname=vif7.0-emu",
            "-device",
            &format!("{model},netdev=net0"),
        ]);
        assert_eq!(cfg.nics[0].model, *model);
    }
    // type=vif: no -netdev, -net none.
    assert!(run_str(&["-xen-domid", "7", "-net", "none"]).nics.is_empty());
}

#[test]
fn the_help_lists_every_accepted_nic_model() {
    let help = help::help_text().replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for model in crate::cli::NIC_MODELS {
        assert!(help.contains(&format!("{model},")) || help.contains(&format!("{model})")), "{model}");
    }
}

#[test]
fn nic_argv_that_does_not_pair_or_is_unknown_is_refused_naming_both() {
    let case = |extra: &[&str]| parse(with_domid(extra)).unwrap_err().to_string();
    let dev = "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:00:00:01";
    let net = "type=tap,id=net0,ifname=vif1.0-emu,br=xenbr0,script=no,downscript=no";
    assert_eq!(
        case(&["-device", dev]),
        format!("-device {dev}: no -netdev type=tap,id=net0 (libxl passes the two together)")
    );
    assert_eq!(
        case(&["-netdev", net]),
        "-netdev type=tap,id=net0,ifname=vif1.0-emu: no -device MODEL,netdev=net0 uses it (libxl passes the two \
         together)"
    );
    assert!(case(&["-device", dev, "-device", "e1000,netdev=net0", "-netdev", net]).contains("already used"));
    assert_eq!(
        case(&["-device", "ne2k_isa,id=nic0,netdev=net0", "-netdev", net]),
        format!(
            "-device: unsupported NIC model 'ne2k_isa' (xendm accepts the NIC models {}; set model= in the vif= \
             entry to one of them, or use type=vif)",
            crate::cli::NIC_MODELS.join(", ")
        )
    );
    assert!(case(&["-device", "e1000"]).contains("has no netdev="));
    assert!(case(&["-device", "e1000,netdev=n,mac=00:16:3e:00:00"]).contains("mac '00:16:3e:00:00'"));
    assert!(case(&["-device", "e1000,netdev=n,romfile="]).contains("unsupported parameter 'romfile'"));
    assert!(case(&["-netdev", "user,id=n"]).starts_with("-netdev: unsupported type 'user'"));
    assert!(case(&["-netdev", "type=tap,id=n"]).contains("no ifname="));
    assert!(case(&["-netdev", "type=tap,ifname=t"]).contains("missing parameter 'id'"));
    assert!(case(&["-netdev", "type=tap,id=n,ifname=t,script=/etc/qemu-ifup"]).contains("script=/etc/qemu-ifup"));
    assert!(case(&["-netdev", "type=tap,id=n,ifname=t,vhost=on"]).contains("unsupported parameter 'vhost'"));
    assert!(case(&["-netdev", "type=tap,id=n,ifname=t,fd=3"]).contains("unsupported parameter 'fd'"));
    for bad in ["a-very-long-name-x", "tap%d", "a/b", "a b", "..", "a:0"] {
        let e = case(&["-netdev", &format!("type=tap,id=n,ifname={bad}")]);
        assert!(e.starts_with("-netdev: "), "{bad}: {e}");
    }
    assert!(case(&["-netdev", "type=tap,id=n,ifname=t", "-netdev", "type=tap,id=n,ifname=u"])
        .contains("netdev id 'n' given twice"));
    assert!(case(&["-netdev", "type=tap,id=n,ifname=t", "-netdev", "type=tap,id=m,ifname=t"])
        .contains("ifname 't' given twice"));
}
