//! The `xendm` process: what libxl starts as the guest's device model.
//!
//! This file sets up logging, parses argv, answers `--help`, `--version`,
//! `--print-man`, `--dump-roms` and `check-config`, and hands a run to [`xendm::app::run`], whose module docs
//! give the start-up order. Built with the `stubdom` feature and started as
//! PID 1, it is a stubdomain's init instead (`xendm::app::stubdom`).

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing::error;
use xendm::cli::{self, Command};

/// Process set-up before anything else runs: the start instant
/// (`xendm::app::clock`), SIGXFSZ ignored (so a full
/// log or serial file cannot kill us), the budgeted log, the panic hook
/// that ends the whole process (`xendm::app::signals`, `logging`,
/// `panics`).
fn init_process() {
    xendm::app::clock::mark_start();
    let signal = xendm::app::signals::ignore_file_size_signal();
    xendm::app::logging::init();
    xendm::app::panics::install();
    if let Err(e) = signal {
        error!("cannot ignore SIGXFSZ ({e}); a log past RLIMIT_FSIZE will kill the device model");
    }
}

/// Writes to stderr, ignoring failure (`eprintln!` panics when stderr
/// cannot be written, e.g. past RLIMIT_FSIZE).
fn print_error(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn main() -> ExitCode {
    init_process();
    // The stubdomain build as its stub's init (`xendm::app::stubdom`): the
    // argv is in xenstore, not on the command line (the kernel's is ignored).
    #[cfg(feature = "stubdom")]
    if std::process::id() == 1 {
        xendm::app::stubdom::main_as_init();
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let cmd = match cli::parse(args.clone()) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            print_error(format_args!("xendm: {e}\nTry 'xendm --help'."));
            return ExitCode::from(2);
        }
    };
    let res = match cmd {
        Command::Help(t) | Command::Version(t) => {
            println!("{t}");
            Ok(())
        }
        Command::Man(page) => {
            print!("{page}");
            Ok(())
        }
        Command::DumpRoms(dir) => dump_roms(&dir),
        Command::CheckConfig(file) => {
            return match xendm::app::check_config::run(&file) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("xendm: {}", report(&e));
                    ExitCode::from(2)
                }
            };
        }
        Command::Run(cfg) => xendm::app::run(cfg, &args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = report(&e);
            error!("{msg}");
            print_error(format_args!("xendm: {msg}"));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause only if the text so far does not
/// already say it (library errors often include their source's message).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

fn dump_roms(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for p in xendm_roms::dump(dir).with_context(|| format!("writing option ROMs to {}", dir.display()))? {
        println!("{}", p.display());
    }
    Ok(())
}
