//! The `xendm(1)` manual page, rendered in roff (`man 7 man-pages`,
//! `groff_man(7)`) from the option documentation of `help.rs`, which covers
//! exactly the options of the parse table (`table.rs`). `xendm --print-man`
//! prints it (the table hands this module its option names); the Debian package build writes it to `xendm.1`
//! (`docs/packaging.md`), so the page and the parser cannot drift.

use super::help::{self, OptDoc, Section, DOCS, ENVIRONMENT};

const DESCRIPTION: &str = "\
xendm is a device model for Xen HVM guests, written in Rust, that libxl starts instead of QEMU \
(qemu-xen). It answers the guest's I/O requests, emulates the PC devices a directly booted guest \
needs (i440FX, PIIX3, PIIX4 ACPI, the Xen platform device, CMOS, 16550A UARTs, i8042, fw_cfg) and \
boots a Linux, multiboot or PVH kernel without a disk image. Disks and NICs are the guest's PV \
devices, served by dom0's usual backends.";

const XL_CONFIG: &str = "\
type = \"hvm\"
kernel = \"/srv/guest1/vmlinuz\"
ramdisk = \"/srv/guest1/initrd.img\"
cmdline = \"console=ttyS0 root=/dev/xvde1\"
serial = \"pty\"
vga = \"none\"
vnc = 0
disk = [ 'format=raw,vdev=xvde,access=rw,target=/dev/vg/guest1' ]
vif = [ 'bridge=xenbr0,type=vif' ]
device_model_version = \"qemu-xen\"
device_model_override = \"/usr/bin/xendm\"";

/// The manual page, or the options that one of the two tables lacks
/// (`parsed`: the names of the parse table).
///
/// # Errors
/// An option of the parse table has no documentation, or a documented
/// option is not parsed.
pub(super) fn man_page(parsed: &[&str]) -> Result<String, String> {
    let (undocumented, unparsed) = (help::undocumented(parsed), help::unparsed(parsed));
    if !undocumented.is_empty() || !unparsed.is_empty() {
        return Err(format!(
            "the option documentation (src/cli/help.rs DOCS) and the parse table disagree: \
             undocumented {undocumented:?}, not parsed or repeated {unparsed:?}"
        ));
    }
    let mut m = String::new();
    m.push_str(&format!(".TH XENDM 1 \"\" \"xendm {}\" \"Xen administration\"\n", roff(env!("CARGO_PKG_VERSION"))));
    m.push_str(".SH NAME\nxendm \\- a QEMU-compatible device model for Xen HVM guests\n");
    m.push_str(
        ".SH SYNOPSIS\n.B xendm\n\\fB\\-xen\\-domid\\fR \\fIDOMID\\fR [\\fIOPTION\\fR]...\n.br\n\
         .B xendm check\\-config\n\\fIGUEST.cfg\\fR\n.br\n.B xendm\n\\fB\\-\\-dump\\-roms\\fR \\fIDIR\\fR\n.br\n\
         .B xendm\n\\fB\\-\\-help\\fR | \\fB\\-\\-version\\fR | \\fB\\-\\-print\\-man\\fR\n",
    );
    m.push_str(&format!(".SH DESCRIPTION\n{}\n", roff(DESCRIPTION)));
    m.push_str(&format!(
        ".PP\n{}\n",
        roff(
            "xendm is not started by hand: set device_model_override to its path and device_model_version \
             to \"qemu-xen\" in the guest's xl config (see EXAMPLES), and libxl runs it with the qemu-xen \
             command line of Xen 4.17. Options take one dash or two (-name and --name are the same option); \
             values are QEMU-style lists KEY=VALUE,... where ',,' is a literal comma. An option xendm does \
             not implement is refused at start-up with an error naming it and the xl setting to change."
        )
    ));
    m.push_str(&commands());
    m.push_str(".SH OPTIONS\n");
    for section in Section::ALL {
        m.push_str(&format!(".SS {}\n", roff(section.title())));
        for d in DOCS.iter().filter(|d| d.section == section) {
            m.push_str(&entry(d));
        }
    }
    m.push_str(&tail());
    Ok(m)
}

fn commands() -> String {
    format!(
        ".SH COMMANDS\n.TP\n.BI \"check\\-config \" GUEST.cfg\n{}\n",
        roff(
            "Read an xl guest configuration (xl.cfg(5) syntax) and report, setting by setting, what xendm \
             will do with it: served by xendm, served through the guest's PV drivers only, ignored (and why \
             that is harmless), handled by libxl and Xen alone, a warning, or refused, with the line to \
             change. Nothing is started. The exit status is 1 if a setting is refused."
        )
    )
}

fn entry(d: &OptDoc) -> String {
    let names: Vec<String> =
        d.names.iter().map(|n| format!("\\fB{}\\fR", roff(&format!("{}{n}", help::dashes(n))))).collect();
    let arg = if d.arg.is_empty() { String::new() } else { format!(" \\fI{}\\fR", roff(d.arg)) };
    format!(".TP\n{}{arg}\n{}\n", names.join(", "), roff(d.help))
}

fn tail() -> String {
    let mut m = String::from(".SH ENVIRONMENT\n");
    for (name, meaning) in ENVIRONMENT {
        m.push_str(&format!(".TP\n.B {}\n{}\n", roff(name), roff(meaning)));
    }
    m.push_str(&format!(
        ".SH FILES\n.TP\n.I /var/log/xen/qemu\\-dm\\-NAME.log\n{}\n.TP\n.I /usr/share/doc/xendm/\n{}\n",
        roff(
            "xendm's log for guest NAME (libxl writes the device model's stdout and stderr there): the \
             command line, what was loaded where, the options ignored, and why start-up failed."
        ),
        roff("The user guide (usage.md), the packaging notes, and examples/xendm-hvm.cfg.")
    ));
    m.push_str(&format!(
        ".SH EXIT STATUS\n{}\n",
        roff(
            "0 when the device model was told to stop (SIGTERM, SIGHUP, QMP quit) or a command succeeded; \
             1 when start-up or the run failed, or check-config refused a setting; 2 for a command-line error."
        )
    ));
    m.push_str(&format!(
        ".SH EXAMPLES\n{}\n.PP\n.nf\n.RS\n{}\n.RE\n.fi\n.PP\n{}\n",
        roff("The xl config of an HVM guest that xendm serves:"),
        roff(XL_CONFIG),
        roff("Check it before xl create: xendm check-config /etc/xen/guest1.cfg")
    ));
    m.push_str(&format!(
        ".SH REPORTING BUGS\n{}\n.SH SEE ALSO\n.BR xl (1),\n.BR xl.cfg (5),\n.BR xl\\-disk\\-configuration (5)\n",
        roff(
            "Attach the guest's qemu-dm log, the xl config, the output of xendm --version, and an ioreq \
             trace recorded with device_model_args = [\"-xendm-record\", \"/var/lib/xen/NAME.trace.jsonl.gz\"] \
             (see the README)."
        )
    ));
    m
}

/// Text made safe for roff: backslashes and dashes escaped, no line
/// starting with a control character.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| if l.starts_with('.') || l.starts_with('\'') { format!("\\&{l}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::super::table::TABLE;
    use super::*;

    fn man_page() -> Result<String, String> {
        let parsed: Vec<&str> = TABLE.iter().map(|o| o.name).collect();
        super::man_page(&parsed)
    }

    #[test]
    fn no_page_when_the_tables_disagree() {
        let err = super::man_page(&["xen-domid", "brand-new"]).unwrap_err();
        assert!(err.contains("brand-new"), "{err}");
    }

    /// The option names of the page's `.TP` entries under OPTIONS.
    fn options_in(page: &str) -> Vec<String> {
        let options = page.split(".SH OPTIONS\n").nth(1).unwrap().split(".SH ").next().unwrap();
        let mut names = Vec::new();
        let mut lines = options.lines();
        while let Some(line) = lines.next() {
            if line == ".TP" {
                let head = lines.next().unwrap();
                for part in head.split(", ") {
                    let name = part.strip_prefix("\\fB").unwrap().split("\\fR").next().unwrap();
                    names.push(name.replace("\\-", "-").trim_start_matches('-').to_string());
                }
            }
        }
        names
    }

    #[test]
    fn the_page_lists_exactly_the_parsed_options() {
        let page = man_page().unwrap();
        let mut in_page = options_in(&page);
        let mut parsed: Vec<String> = TABLE.iter().map(|o| o.name.to_string()).collect();
        in_page.sort();
        parsed.sort();
        assert_eq!(in_page, parsed, "man page options != table.rs TABLE");
    }

    #[test]
    fn the_page_is_well_formed_roff() {
        let page = man_page().unwrap();
        assert!(page.starts_with(".TH XENDM 1 "));
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
            assert!(page.contains(&format!(".SH {section}\n")), "no {section}");
        }
        for line in page.lines() {
            if line.starts_with('.') {
                let request = line.split_whitespace().next().unwrap();
                let known =
                    [".TH", ".SH", ".SS", ".TP", ".B", ".BI", ".BR", ".I", ".PP", ".br", ".nf", ".fi", ".RS", ".RE"];
                assert!(known.contains(&request), "unknown request {line}");
            }
            // A bare '-' before a word would print a hyphen, not the minus of an option.
            let bare = line.replace("\\-", "");
            assert!(!bare.starts_with('-') && !bare.contains(" -"), "unescaped option dash: {line}");
        }
    }

    #[test]
    fn roff_escapes() {
        assert_eq!(roff("a-b\\c"), "a\\-b\\ec");
        assert_eq!(roff("x\n.y\n'z"), "x\n\\&.y\n\\&'z");
    }
}
