//! The engine's hooks for a machine on Xen: what INVALIDATE and TIMEOFFSET
//! requests (Xen's `public/hvm/ioreq.h`) do to the rest of the process.
//!
//! INVALIDATE empties the mapcache before the request is answered, as Xen
//! requires. TIMEOFFSET is only logged, as QEMU does: the guest's RTC offset
//! lives in Xen's vRTC, and libxl keeps no record of it for us.

use std::sync::Arc;

use crate::ioreq::engine::EngineHooks;
use crate::xen::mapcache::{ForeignMapper, MapCache};

/// [`EngineHooks`] over a [`MapCache`].
pub struct MapCacheHooks<M: ForeignMapper> {
    cache: Arc<MapCache<M>>,
}

impl<M: ForeignMapper> MapCacheHooks<M> {
    /// Hooks that invalidate `cache`.
    pub const fn new(cache: Arc<MapCache<M>>) -> Self {
        Self { cache }
    }
}

impl<M: ForeignMapper + 'static> EngineHooks for MapCacheHooks<M> {
    fn invalidate_mapcache(&self) {
        self.cache.invalidate();
    }

    fn time_offset(&self, seconds: i64) {
        tracing::debug!(seconds, "guest RTC offset changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::mapcache::tests::FakeMapper;
    use vm_memory::GuestAddress;
    use xendm_devices::GuestMemory;

    #[test]
    fn the_invalidate_hook_empties_the_cache() {
        let m = Arc::new(FakeMapper::new(2 << 20, &[]));
        let c = Arc::new(MapCache::new(m.clone()));
        c.write(GuestAddress(0), b"x").unwrap();
        let hooks = MapCacheHooks::new(c.clone());
        hooks.invalidate_mapcache();
        assert_eq!(m.live(), 0);
        assert_eq!(c.stats().invalidations, 1);
    }
}
