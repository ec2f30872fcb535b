//! Creating an ioreq server: the calls and their order, which Xen dictates
//! (`public/hvm/dm_op.h`, `public/memory.h`, Xen 4.17):
//!
//! 1. `create_ioreq_server(BUFIOREQ_ATOMIC)`;
//! 2. `map_resource(XENMEM_resource_ioreq_server, id, frame 0, 2 frames)`:
//!    frame 0 is the buffered ring, frame 1 the synchronous page;
//! 3. `get_ioreq_server_info` with NULL gfn pointers, for the remote
//!    buffered port;
//! 4. `set_ioreq_server_state(enabled)`: Xen writes each vCPU's `vp_eport`
//!    into the synchronous page only for an enabled server
//!    (`ioreq_server_enable` in `xen/common/ioreq.c`), so it must be enabled
//!    before the ports can be bound; QEMU enables it here too. Nothing is
//!    claimed yet, and the toolstack keeps the domain paused;
//! 5. bind `vp_eport` of every vCPU (`nr_vcpus`, else the `-smp maxcpus` the
//!    caller gives; at most [`MAX_VCPUS`], one page of slots) and the buffered
//!    port;
//! 6. disable the server again, so the caller decides when forwarding starts
//!    (`-S`: only at QMP `cont`). Xen keeps the `vp_eport` values and writes
//!    the same ones on the next enable.
//!
//! A failure after step 1 destroys the server again.
//!
//! Where we differ from QEMU: only the `acquire_resource` path exists; on
//! kernels without `IOCTL_PRIVCMD_MMAP_RESOURCE` (Linux < 4.18) creation
//! fails with `EOPNOTSUPP` instead of falling back to gfn mapping.

use std::ptr::NonNull;
use std::sync::Arc;

use super::pages::{BufferedPage, SyncPage};
use super::serve::ServerCore;
use super::MAX_VCPUS;
use crate::xen::sys::{
    BufIoreq, DeviceModel, EventChannels, ForeignMemory, IoreqServerId, ResourceMapping, IOREQ_SERVER_FRAME_BUFIOREQ,
    IOREQ_SERVER_FRAME_IOREQ, XENMEM_RESOURCE_IOREQ_SERVER,
};
use crate::xen::XenError;

/// The calls [`super::IoreqServer::create`] makes, as a trait so that their order
/// (which Xen dictates) is tested without Xen.
///
/// # Safety
/// [`SetupOps::frames`] must return pointers to the buffered page and the
/// synchronous page of `pages` that satisfy [`SyncPage::new`]'s contract for
/// as long as `pages` is alive.
pub unsafe trait SetupOps {
    /// Keeps the two mapped pages alive.
    type Pages;
    /// `create_ioreq_server(BUFIOREQ_ATOMIC)`.
    ///
    /// # Errors
    /// The call's failure.
    fn create_server(&self) -> Result<IoreqServerId, XenError>;
    /// Maps frames 0 (buffered) and 1 (synchronous) of the server.
    ///
    /// # Errors
    /// The call's failure.
    fn map_pages(&self, id: IoreqServerId) -> Result<Self::Pages, XenError>;
    /// (buffered page, synchronous page) of a mapping.
    fn frames(pages: &Self::Pages) -> Option<(NonNull<u8>, NonNull<u8>)>;
    /// `get_ioreq_server_info`: the remote buffered port.
    ///
    /// # Errors
    /// The call's failure.
    fn bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError>;
    /// `set_ioreq_server_state`.
    ///
    /// # Errors
    /// The call's failure.
    fn set_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError>;
    /// `nr_vcpus`.
    ///
    /// # Errors
    /// The call's failure (older Xen).
    fn nr_vcpus(&self) -> Result<u32, XenError>;
    /// `bind_interdomain`: remote port to local port.
    ///
    /// # Errors
    /// The call's failure.
    fn bind(&self, remote: u32) -> Result<u32, XenError>;
    /// `destroy_ioreq_server`, after a failed set-up.
    ///
    /// # Errors
    /// The call's failure.
    fn destroy(&self, id: IoreqServerId) -> Result<(), XenError>;
}

/// A server that [`setup`] created, with its pages mapped and its ports
/// bound, still disabled.
pub struct BoundServer<P> {
    pub id: IoreqServerId,
    pub vcpus: u32,
    /// Local ports: one per vCPU, then the buffered port.
    pub bound: Vec<u32>,
    pub core: ServerCore,
    pub pages: P,
}

/// Runs the sequence of the module docs through `ops`; destroys the
/// server if a later step fails.
///
/// # Errors
/// The first failing call.
pub fn setup<X: SetupOps>(ops: &X, max_cpus: u32) -> Result<BoundServer<X::Pages>, XenError> {
    let id = ops.create_server()?;
    match setup_created(ops, id, max_cpus) {
        Ok(done) => Ok(done),
        Err(e) => {
            if let Err(d) = ops.destroy(id) {
                tracing::warn!(error = %d, "destroying the half-created ioreq server failed");
            }
            Err(e)
        }
    }
}

fn setup_created<X: SetupOps>(ops: &X, id: IoreqServerId, max_cpus: u32) -> Result<BoundServer<X::Pages>, XenError> {
    let pages = ops.map_pages(id)?;
    let Some((buf_base, sync_base)) = X::frames(&pages) else {
        return Err(XenError::Call { call: "xenforeignmemory_map_resource", errno: libc::EFAULT });
    };
    let remote_buf_port = ops.bufioreq_port(id)?;
    // Xen fills in vp_eport only for an enabled server.
    ops.set_state(id, true)?;
    let vcpus = match ops.nr_vcpus() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(error = %e, max_cpus, "vCPU count not available from Xen; using maxcpus");
            max_cpus
        }
    }
    .clamp(1, MAX_VCPUS);
    // SAFETY: the SetupOps contract: valid pages for as long as `pages`
    // lives, and the caller keeps `pages` alive longer than the core.
    let sync = unsafe { SyncPage::new(sync_base) };
    // SAFETY: as above, for the buffered page.
    let ring = unsafe { BufferedPage::new(buf_base) };
    let mut vcpu_ports = Vec::new();
    for v in 0..vcpus {
        let remote = sync.vp_eport(v).unwrap_or(0);
        vcpu_ports.push(ops.bind(remote)?);
    }
    let buf_port = ops.bind(remote_buf_port)?;
    ops.set_state(id, false)?;
    let core = ServerCore::new(sync, Some(ring), &vcpu_ports, Some(buf_port));
    let mut bound = vcpu_ports;
    bound.push(buf_port);
    Ok(BoundServer { id, vcpus, bound, core, pages })
}

/// [`SetupOps`] over the real handles.
pub(super) struct XenSetup<'a> {
    pub(super) dm: &'a DeviceModel,
    pub(super) fmem: &'a Arc<ForeignMemory>,
    pub(super) evtchn: &'a EventChannels,
}

// SAFETY: `frames` returns frames 0 and 1 of a live 2-frame resource mapping:
// page aligned, 4096 bytes each, valid until the ResourceMapping is dropped;
// Xen accesses them atomically.
unsafe impl SetupOps for XenSetup<'_> {
    type Pages = ResourceMapping;

    fn create_server(&self) -> Result<IoreqServerId, XenError> {
        self.dm.create_ioreq_server(BufIoreq::Atomic)
    }
    fn map_pages(&self, id: IoreqServerId) -> Result<ResourceMapping, XenError> {
        self.fmem.map_resource(XENMEM_RESOURCE_IOREQ_SERVER, u32::from(id.0), IOREQ_SERVER_FRAME_BUFIOREQ, 2)
    }
    fn frames(pages: &ResourceMapping) -> Option<(NonNull<u8>, NonNull<u8>)> {
        Some((pages.frame(0)?, pages.frame(usize::try_from(IOREQ_SERVER_FRAME_IOREQ).ok()?)?))
    }
    fn bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError> {
        self.dm.ioreq_server_bufioreq_port(id)
    }
    fn set_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError> {
        self.dm.set_ioreq_server_state(id, enabled)
    }
    fn nr_vcpus(&self) -> Result<u32, XenError> {
        self.dm.nr_vcpus()
    }
    fn bind(&self, remote: u32) -> Result<u32, XenError> {
        self.evtchn.bind_interdomain(remote)
    }
    fn destroy(&self, id: IoreqServerId) -> Result<(), XenError> {
        self.dm.destroy_ioreq_server(id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fakes::{pio, rig, FakeTransport, FakeXen};
    use super::*;
    use crate::ioreq::abi::{SLOT_EPORT_OFFSET, SLOT_SIZE};
    use std::sync::Mutex;

    /// Xen for `setup`: records the calls, writes vp_eport 50+i into the
    /// slots only when the server is enabled (as Xen does), can fail a call.
    struct FakeSetup {
        xen: Arc<FakeXen>,
        log: Mutex<Vec<String>>,
        vcpus: Option<u32>,
        fail: Option<&'static str>,
    }

    impl FakeSetup {
        fn new(vcpus: Option<u32>, fail: Option<&'static str>) -> Self {
            Self { xen: FakeXen::new(), log: Mutex::new(Vec::new()), vcpus, fail }
        }
        fn call(&self, entry: String, name: &'static str) -> Result<(), XenError> {
            self.log.lock().unwrap().push(entry);
            if self.fail == Some(name) {
                return Err(XenError::Call { call: name, errno: libc::EPERM });
            }
            Ok(())
        }
    }

    // SAFETY: the pages live in `xen` (an Arc the Pages value holds).
    unsafe impl SetupOps for FakeSetup {
        type Pages = Arc<FakeXen>;
        fn create_server(&self) -> Result<IoreqServerId, XenError> {
            self.call("create".into(), "create").map(|()| IoreqServerId(3))
        }
        fn map_pages(&self, id: IoreqServerId) -> Result<Arc<FakeXen>, XenError> {
            self.call(format!("map {}", id.0), "map").map(|()| self.xen.clone())
        }
        fn frames(pages: &Arc<FakeXen>) -> Option<(NonNull<u8>, NonNull<u8>)> {
            Some((pages.buf.ptr(), pages.sync.ptr()))
        }
        fn bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError> {
            self.call(format!("info {}", id.0), "info").map(|()| 77)
        }
        fn set_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError> {
            self.call(format!("state {} {enabled}", id.0), "state")?;
            if enabled {
                for v in 0..MAX_VCPUS {
                    let p = self.xen.sync.ptr().as_ptr();
                    // SAFETY: slot v's vp_eport field inside our page.
                    unsafe {
                        std::ptr::write_volatile(
                            p.add(v as usize * SLOT_SIZE + SLOT_EPORT_OFFSET).cast::<u32>(),
                            50 + v,
                        )
                    };
                }
            }
            Ok(())
        }
        fn nr_vcpus(&self) -> Result<u32, XenError> {
            self.log.lock().unwrap().push("nr_vcpus".into());
            self.vcpus.ok_or(XenError::Call { call: "xendevicemodel_nr_vcpus", errno: libc::ENOSYS })
        }
        fn bind(&self, remote: u32) -> Result<u32, XenError> {
            self.call(format!("bind {remote}"), "bind").map(|()| remote + 1000)
        }
        fn destroy(&self, id: IoreqServerId) -> Result<(), XenError> {
            self.call(format!("destroy {}", id.0), "destroy")
        }
    }

    #[test]
    fn setup_enables_before_binding_and_disables_after() {
        let ops = FakeSetup::new(Some(2), None);
        let mut done = setup(&ops, 8).unwrap();
        assert_eq!(
            *ops.log.lock().unwrap(),
            ["create", "map 3", "info 3", "state 3 true", "nr_vcpus", "bind 50", "bind 51", "bind 77", "state 3 false"]
        );
        assert_eq!(done.vcpus, 2);
        assert_eq!(done.bound, vec![1050, 1051, 1077]);
        // The core maps local ports to vCPUs and the buffered port to the ring.
        let mut engine = rig(1).engine;
        let mut t = FakeTransport::default();
        ops.xen.post(1, &pio(0x511, 1, true, 0), 51);
        done.core.handle_ports(&[1051], &mut engine, &mut t);
        assert_eq!(ops.xen.slot(1).data, 0x41);
        assert_eq!(t.notified, vec![1051]);
    }

    #[test]
    fn setup_falls_back_to_maxcpus() {
        let ops = FakeSetup::new(None, None);
        let done = setup(&ops, 3).unwrap();
        assert_eq!(done.bound, vec![1050, 1051, 1052, 1077]);
        let ops = FakeSetup::new(Some(500), None);
        assert_eq!(setup(&ops, 1).unwrap().vcpus, MAX_VCPUS, "one page holds 128 slots");
    }

    #[test]
    fn a_failed_setup_destroys_the_server() {
        let ops = FakeSetup::new(Some(1), Some("bind"));
        let e = setup(&ops, 1).err().unwrap();
        assert_eq!(e.call(), "bind");
        assert_eq!(ops.log.lock().unwrap().last().unwrap(), "destroy 3");
        let ops = FakeSetup::new(Some(1), Some("create"));
        assert!(setup(&ops, 1).is_err());
        assert_eq!(*ops.log.lock().unwrap(), ["create"], "nothing to destroy");
    }
}
