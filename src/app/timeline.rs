//! The boot timeline in the log: each phase of [`crate::ioreq::timeline`]
//! logged once at info level, with the time since xendm started
//! ([`super::clock`]), so an administrator can see where a slow boot spends
//! its time (`docs/usage.md`, "Logs").
//!
//! [`TimedEngine`] sits between the ioreq server and the engine: it looks
//! at each synchronous request until every phase has been seen, then only
//! checks one flag per request.

use xendm_devices::bus::RangeChange;

use super::clock;
use crate::ioreq::abi::Ioreq;
use crate::ioreq::engine::Engine;
use crate::ioreq::handler::{BufferedRing, IoreqHandler};
use crate::ioreq::timeline::BootTimeline;

/// The engine, with the boot timeline logged on the way.
pub struct TimedEngine<'a> {
    engine: &'a mut Engine,
    timeline: BootTimeline,
}

impl<'a> TimedEngine<'a> {
    /// Wraps `engine`; nothing has been seen yet.
    pub fn new(engine: &'a mut Engine) -> Self {
        Self { engine, timeline: BootTimeline::new() }
    }
}

impl IoreqHandler for TimedEngine<'_> {
    fn handle(&mut self, vcpu: u32, req: &Ioreq) -> u64 {
        if !self.timeline.done() {
            for phase in self.timeline.see(req) {
                tracing::info!(
                    phase = phase.key(),
                    t_ms = clock::since_start_ms(),
                    "boot timeline: {}",
                    phase.describe()
                );
            }
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
