//! `-machine none` (the libxl 4.20 probe run): QMP only, no guest, no Xen.
//! libxl starts the device model this way to ask it for its version and
//! capabilities, then quits it.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Notify;
use tracing::info;

use super::control::{wait_for_end, Control};
use super::inherited::InheritedFds;
use super::sandbox::Sandbox;
use super::{monitors, runtime};
use crate::cli::Config;

/// Serves QMP on every monitor until a signal or QMP `quit`, in the
/// sandbox from the moment the sockets are bound.
///
/// # Errors
/// If the runtime cannot start or a monitor socket cannot be bound.
pub fn run(cfg: &Config, mut inherited: InheritedFds) -> Result<()> {
    let rt = runtime()?;
    let quit = Arc::new(Notify::new());
    let ctl = Arc::new(Control::new(true, None, monitors::qmp_chardevs(cfg), 0, quit.clone()));
    let listeners = monitors::bind(cfg, &mut inherited)?;
    Sandbox::new(cfg)?.lock_down()?;
    rt.block_on(async {
        monitors::serve(listeners, &ctl)?;
        info!("probe mode (-machine none): serving QMP only");
        wait_for_end(&quit).await;
        Ok(())
    })
}
