//! The boot timeline in the log: each phase of [`crate::ioreq::timeline`]
//! logged once at info level, with the time since xendm started
//! ([`super::clock`]), so an administrator can see where a slow boot spends
//! its time (`docs/usage.md`, "Logs").
//!
//! [`TimedEngine`] sits between the ioreq server and the engine: it looks
//! at each synchronous request until every phase has been seen, then only
//! checks one flag per request.
//!
//! One line is logged after the fact: `rom_done`, the time of the boot ROM's
//! last request, written when the kernel's first I/O shows that the ROM had
//! finished. Between the two the guest makes no I/O at all: that gap is the
//! kernel's decompressor and early start-up, and the ROM's part (copying the
//! kernel, initrd and command line by fw_cfg DMA) is `boot_rom` to
//! `rom_done`.

use xendm_devices::bus::RangeChange;

use super::clock;
use crate::ioreq::abi::Ioreq;
use crate::ioreq::engine::Engine;
use crate::ioreq::handler::{BufferedRing, IoreqHandler};
use crate::ioreq::timeline::{BootTimeline, Phase};

/// The engine, with the boot timeline logged on the way.
pub struct TimedEngine<'a> {
    engine: &'a mut Engine,
    timeline: BootTimeline,
    /// When the boot ROM last made a request (ms since start).
    rom_last_ms: u64,
}

impl<'a> TimedEngine<'a> {
    /// Wraps `engine`; nothing has been seen yet.
    pub fn new(engine: &'a mut Engine) -> Self {
        Self { engine, timeline: BootTimeline::new(), rom_last_ms: 0 }
    }
}

impl TimedEngine<'_> {
    fn observe(&mut self, req: &Ioreq) {
        let phases = self.timeline.see(req);
        // The clock is read only when there is something to note: a guest
        // that never reaches the last phase (no COM1 output) costs no clock
        // read per request for the rest of its life.
        if phases.is_empty() && !self.timeline.in_boot_rom() {
            return;
        }
        let now = clock::since_start_ms();
        for phase in phases {
            if phase == Phase::KernelEntry {
                tracing::info!(
                    phase = "rom_done",
                    t_ms = self.rom_last_ms,
                    "boot timeline: the boot ROM's last request (kernel, initrd and command line copied); \
                     until kernel_entry the kernel decompresses itself and starts"
                );
            }
            tracing::info!(phase = phase.key(), t_ms = now, "boot timeline: {}", phase.describe());
        }
        if self.timeline.in_boot_rom() {
            self.rom_last_ms = now;
        }
    }
}

impl IoreqHandler for TimedEngine<'_> {
    fn handle(&mut self, vcpu: u32, req: &Ioreq) -> u64 {
        if !self.timeline.done() {
            self.observe(req);
        }
        self.engine.handle(vcpu, req)
    }

    fn drain_buffered(&mut self, ring: &dyn BufferedRing) -> usize {
        self.engine.drain_buffered(ring)
    }

    fn take_range_changes(&mut self) -> Vec<RangeChange> {
        IoreqHandler::take_range_changes(self.engine)
    }
}
