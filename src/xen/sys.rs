//! Safe wrappers over Xen's stable toolstack libraries, through `libxen-sys`
//! (bindgen on the installed 4.17 headers).
//!
//! This is the only file of the project that calls into C. Each handle owns
//! its C handle and closes it on `Drop`; every failing call becomes a
//! [`XenError::Call`] naming the C function and carrying `errno`.
//!
//! * [`DeviceModel`] - `libxendevicemodel` (`/usr/include/xendevicemodel.h`;
//!   dm_op numbers in Xen `public/hvm/dm_op.h`): the ioreq server lifecycle,
//!   range claims, interrupt injection, remote shutdown, vCPU count and
//!   privilege restriction.
//! * [`EventChannels`] - `libxenevtchn` (`/usr/include/xenevtchn.h`): one
//!   handle, hence one file descriptor, for every port the device model binds.
//! * [`ForeignMemory`] - `libxenforeignmemory` (`/usr/include/xenforeignmemory.h`):
//!   `map_resource` for the ioreq server's two frames and `map2` for batches of
//!   guest frames with the per-page error array.
//! * [`restrict_all`] - `xentoolcore_restrict_all`, which `libxen-sys` does not
//!   bind; declared here with `#[link(name = "xentoolcore")]`.
//!
//! Differences from the C API: the domain id is fixed when a handle is opened
//! (a device model serves one domain), and `xenevtchn_pending` on a
//! non-blocking descriptor reports "nothing pending" as `Ok(None)` instead of
//! `-1`/`EAGAIN`.
//!
//! Thread safety: the libraries keep no per-call state in the handle beyond the
//! file descriptor (`libxendevicemodel` issues `IOCTL_PRIVCMD_DM_OP`, falling
//! back to `libxencall`, whose buffer cache is mutex-protected;
//! `libxenforeignmemory` issues `mmap` and privcmd ioctls), so [`DeviceModel`]
//! and [`ForeignMemory`] are `Sync`: the QMP thread may enable or disable the
//! ioreq server while the serving thread injects interrupts.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::raw::{c_int, c_uint, c_void};
use std::ptr::NonNull;
use std::sync::Arc;

use xen_sys as ffi;
use xendm_devices::{Sbdf, Space};

use super::XenError;

/// A domain id (`domid_t`).
pub type DomId = u16;

/// An ioreq server id (`ioservid_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoreqServerId(pub u16);

/// `HVM_IOREQSRV_BUFIOREQ_*` (`public/hvm/hvm_op.h`): whether and how the
/// server gets a buffered ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufIoreq {
    /// `HVM_IOREQSRV_BUFIOREQ_OFF` (0): no ring.
    Off,
    /// `HVM_IOREQSRV_BUFIOREQ_LEGACY` (1): ring with plain pointer updates.
    Legacy,
    /// `HVM_IOREQSRV_BUFIOREQ_ATOMIC` (2): Xen rebases the pointer pair with
    /// a 64-bit cmpxchg; the consumer must advance `read_pointer` atomically.
    Atomic,
}

impl BufIoreq {
    const fn code(self) -> c_int {
        match self {
            Self::Off => 0,
            Self::Legacy => 1,
            Self::Atomic => 2,
        }
    }
}

pub use crate::ioreq::abi::{
    IOREQ_SERVER_FRAME_BUFIOREQ, IOREQ_SERVER_FRAME_IOREQ, XENMEM_RESOURCE_IOREQ_SERVER, XEN_PAGE_SIZE,
};

/// The calling thread's `errno`, read right after a failed C call.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Turns a C `int` return (`-1` + errno on failure) into a result.
fn check(call: &'static str, rc: c_int) -> Result<c_int, XenError> {
    if rc < 0 {
        Err(XenError::Call { call, errno: errno() })
    } else {
        Ok(rc)
    }
}

/// An open `libxendevicemodel` handle, bound to one domain.
#[derive(Debug)]
pub struct DeviceModel {
    handle: NonNull<ffi::xendevicemodel_handle>,
    domid: DomId,
}

// SAFETY: the handle is an fd plus immutable library state; every call is an
// ioctl (or a libxencall hypercall whose buffer cache takes a mutex), so the
// handle may be used from any thread, and from several at once.
unsafe impl Send for DeviceModel {}
// SAFETY: see `Send` above: no call mutates shared handle state without locking.
unsafe impl Sync for DeviceModel {}

impl DeviceModel {
    /// `xendevicemodel_open` for `domid`.
    ///
    /// # Errors
    /// Without `/dev/xen/privcmd` (no Xen, or not dom0), a
    /// [`XenError::Call`] naming `xendevicemodel_open`.
    pub fn open(domid: DomId) -> Result<Self, XenError> {
        // SAFETY: NULL logger selects the library's default (stderr) logger;
        // the flags are 0. The returned pointer is checked before use.
        let h = unsafe { ffi::xendevicemodel_open(std::ptr::null_mut(), 0) };
        match NonNull::new(h) {
            Some(handle) => Ok(Self { handle, domid }),
            None => Err(XenError::Call { call: "xendevicemodel_open", errno: errno() }),
        }
    }

    /// The domain this handle serves.
    pub const fn domid(&self) -> DomId {
        self.domid
    }

    fn h(&self) -> *mut ffi::xendevicemodel_handle {
        self.handle.as_ptr()
    }

    /// `xendevicemodel_create_ioreq_server`.
    ///
    /// # Errors
    /// The C call's errno (`EPERM` when not privileged over the domain, ...).
    pub fn create_ioreq_server(&self, bufioreq: BufIoreq) -> Result<IoreqServerId, XenError> {
        let mut id: ffi::ioservid_t = 0;
        // SAFETY: the handle is open; `id` is a valid out-pointer for the call.
        let rc = unsafe { ffi::xendevicemodel_create_ioreq_server(self.h(), self.domid, bufioreq.code(), &mut id) };
        check("xendevicemodel_create_ioreq_server", rc)?;
        Ok(IoreqServerId(id))
    }

    /// `xendevicemodel_destroy_ioreq_server`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn destroy_ioreq_server(&self, id: IoreqServerId) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_destroy_ioreq_server(self.h(), self.domid, id.0) };
        check("xendevicemodel_destroy_ioreq_server", rc).map(drop)
    }

    /// `xendevicemodel_get_ioreq_server_info` with NULL gfn pointers (the
    /// pages are mapped with `map_resource`, so Xen need not put them in the
    /// guest physmap): returns the remote buffered-ioreq event channel port.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn ioreq_server_bufioreq_port(&self, id: IoreqServerId) -> Result<u32, XenError> {
        let mut port: ffi::evtchn_port_t = 0;
        // SAFETY: the handle is open; NULL gfn pointers are documented as
        // "not wanted" (the library then sets XEN_DMOP_no_gfns); `port` is a
        // valid out-pointer.
        let rc = unsafe {
            ffi::xendevicemodel_get_ioreq_server_info(
                self.h(),
                self.domid,
                id.0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut port,
            )
        };
        check("xendevicemodel_get_ioreq_server_info", rc)?;
        Ok(port)
    }

    /// `xendevicemodel_map_io_range_to_ioreq_server`, `[start, end]` inclusive.
    ///
    /// # Errors
    /// The C call's errno (`EEXIST` if another server holds the range, ...).
    pub fn map_io_range(&self, id: IoreqServerId, space: Space, start: u64, end: u64) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe {
            ffi::xendevicemodel_map_io_range_to_ioreq_server(self.h(), self.domid, id.0, is_mmio(space), start, end)
        };
        check("xendevicemodel_map_io_range_to_ioreq_server", rc).map(drop)
    }

    /// `xendevicemodel_unmap_io_range_from_ioreq_server`, `[start, end]` inclusive.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn unmap_io_range(&self, id: IoreqServerId, space: Space, start: u64, end: u64) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe {
            ffi::xendevicemodel_unmap_io_range_from_ioreq_server(self.h(), self.domid, id.0, is_mmio(space), start, end)
        };
        check("xendevicemodel_unmap_io_range_from_ioreq_server", rc).map(drop)
    }

    /// `xendevicemodel_map_pcidev_to_ioreq_server`: config-space accesses to
    /// `sbdf` (0xCFC with CF8 enabled) reach this server as PCI_CONFIG ioreqs.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn map_pcidev(&self, id: IoreqServerId, sbdf: Sbdf) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe {
            ffi::xendevicemodel_map_pcidev_to_ioreq_server(
                self.h(),
                self.domid,
                id.0,
                sbdf.seg,
                sbdf.bus,
                sbdf.dev,
                sbdf.func,
            )
        };
        check("xendevicemodel_map_pcidev_to_ioreq_server", rc).map(drop)
    }

    /// `xendevicemodel_unmap_pcidev_from_ioreq_server`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn unmap_pcidev(&self, id: IoreqServerId, sbdf: Sbdf) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe {
            ffi::xendevicemodel_unmap_pcidev_from_ioreq_server(
                self.h(),
                self.domid,
                id.0,
                sbdf.seg,
                sbdf.bus,
                sbdf.dev,
                sbdf.func,
            )
        };
        check("xendevicemodel_unmap_pcidev_from_ioreq_server", rc).map(drop)
    }

    /// `xendevicemodel_set_ioreq_server_state`: Xen forwards nothing to a
    /// disabled server.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_ioreq_server_state(&self, id: IoreqServerId, enabled: bool) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc =
            unsafe { ffi::xendevicemodel_set_ioreq_server_state(self.h(), self.domid, id.0, c_int::from(enabled)) };
        check("xendevicemodel_set_ioreq_server_state", rc).map(drop)
    }

    /// `xendevicemodel_set_isa_irq_level`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_set_isa_irq_level(self.h(), self.domid, irq, c_uint::from(level)) };
        check("xendevicemodel_set_isa_irq_level", rc).map(drop)
    }

    /// `xendevicemodel_set_pci_intx_level` (`intx` 0 = INTA .. 3 = INTD).
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_pci_intx_level(&self, seg: u16, bus: u8, dev: u8, intx: u8, level: bool) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe {
            ffi::xendevicemodel_set_pci_intx_level(self.h(), self.domid, seg, bus, dev, intx, c_uint::from(level))
        };
        check("xendevicemodel_set_pci_intx_level", rc).map(drop)
    }

    /// `xendevicemodel_set_pci_link_route` (`irq` 0 disables the link).
    ///
    /// # Errors
    /// The C call's errno.
    pub fn set_pci_link_route(&self, link: u8, irq: u8) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_set_pci_link_route(self.h(), self.domid, link, irq) };
        check("xendevicemodel_set_pci_link_route", rc).map(drop)
    }

    /// `xendevicemodel_inject_msi`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn inject_msi(&self, addr: u64, data: u32) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_inject_msi(self.h(), self.domid, addr, data) };
        check("xendevicemodel_inject_msi", rc).map(drop)
    }

    /// `xendevicemodel_shutdown` (dm_op `remote_shutdown`) with a
    /// `SHUTDOWN_*` code from `public/sched.h`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn shutdown(&self, reason: u32) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_shutdown(self.h(), self.domid, reason) };
        check("xendevicemodel_shutdown", rc).map(drop)
    }

    /// `xendevicemodel_modified_memory` (dm_op `modified_memory`): tells
    /// Xen's log-dirty tracking that `nr` guest frames from `first_pfn` were
    /// written through a foreign mapping, so live migration sends them again.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn modified_memory(&self, first_pfn: u64, nr: u32) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_modified_memory(self.h(), self.domid, first_pfn, nr) };
        check("xendevicemodel_modified_memory", rc).map(drop)
    }

    /// `xendevicemodel_nr_vcpus`: how many vCPUs the domain has.
    ///
    /// # Errors
    /// The C call's errno (`ENOSYS`/`EOPNOTSUPP` on hypervisors older than 4.14).
    pub fn nr_vcpus(&self) -> Result<u32, XenError> {
        let mut n: c_uint = 0;
        // SAFETY: the handle is open; `n` is a valid out-pointer.
        let rc = unsafe { ffi::xendevicemodel_nr_vcpus(self.h(), self.domid, &mut n) };
        check("xendevicemodel_nr_vcpus", rc)?;
        Ok(n)
    }

    /// `xendevicemodel_restrict`: from now on the handle can only issue
    /// dm_ops for this handle's domain.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn restrict(&self) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xendevicemodel_restrict(self.h(), self.domid) };
        check("xendevicemodel_restrict", rc).map(drop)
    }
}

impl Drop for DeviceModel {
    fn drop(&mut self) {
        // SAFETY: the handle was returned by xendevicemodel_open and is closed
        // exactly once, here; `&mut self` proves no call is in flight.
        let rc = unsafe { ffi::xendevicemodel_close(self.h()) };
        if rc < 0 {
            tracing::warn!(errno = errno(), "xendevicemodel_close failed");
        }
    }
}

const fn is_mmio(space: Space) -> c_int {
    match space {
        Space::Pio => 0,
        Space::Mmio => 1,
    }
}

/// An open `libxenevtchn` handle: one descriptor for every bound port.
#[derive(Debug)]
pub struct EventChannels {
    handle: NonNull<ffi::xenevtchn_handle>,
    domid: DomId,
}

// SAFETY: the handle is an fd and immutable library state; nothing in it is
// tied to the thread that opened it.
unsafe impl Send for EventChannels {}

impl EventChannels {
    /// `xenevtchn_open`, for ports of domain `domid`.
    ///
    /// # Errors
    /// Without `/dev/xen/evtchn`, a [`XenError::Call`] naming `xenevtchn_open`.
    pub fn open(domid: DomId) -> Result<Self, XenError> {
        // SAFETY: NULL logger = default logger; flags 0. Checked for NULL.
        let h = unsafe { ffi::xenevtchn_open(std::ptr::null_mut(), 0) };
        match NonNull::new(h) {
            Some(handle) => Ok(Self { handle, domid }),
            None => Err(XenError::Call { call: "xenevtchn_open", errno: errno() }),
        }
    }

    fn h(&self) -> *mut ffi::xenevtchn_handle {
        self.handle.as_ptr()
    }

    /// The descriptor to poll for readability (`xenevtchn_fd`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the handle is open; xenevtchn_fd only returns the stored fd.
        let fd = unsafe { ffi::xenevtchn_fd(self.h()) };
        // SAFETY: the fd belongs to the handle, which outlives the borrow
        // (tied to `&self`) and closes it only in `Drop`.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// Makes [`Self::pending`] non-blocking.
    ///
    /// # Errors
    /// `fcntl` failures, reported as the call `fcntl(O_NONBLOCK)`.
    pub fn set_nonblocking(&self) -> Result<(), XenError> {
        let fd = self.fd();
        let fl = rustix::fs::fcntl_getfl(fd)
            .map_err(|e| XenError::Call { call: "fcntl(F_GETFL)", errno: e.raw_os_error() })?;
        rustix::fs::fcntl_setfl(fd, fl | rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| XenError::Call { call: "fcntl(F_SETFL, O_NONBLOCK)", errno: e.raw_os_error() })
    }

    /// `xenevtchn_bind_interdomain`: binds the domain's unbound port
    /// `remote` and returns the local port.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn bind_interdomain(&self, remote: u32) -> Result<u32, XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xenevtchn_bind_interdomain(self.h(), u32::from(self.domid), remote) };
        let port = check("xenevtchn_bind_interdomain", rc)?;
        u32::try_from(port).map_err(|_| XenError::Call { call: "xenevtchn_bind_interdomain", errno: libc::ERANGE })
    }

    /// `xenevtchn_unbind`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn unbind(&self, port: u32) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xenevtchn_unbind(self.h(), port) };
        check("xenevtchn_unbind", rc).map(drop)
    }

    /// `xenevtchn_pending`: the next pending local port (the kernel has
    /// masked it), or `None` when the descriptor is non-blocking and nothing
    /// is pending (or a signal interrupted the read; poll again).
    ///
    /// # Errors
    /// The C call's errno, except `EAGAIN` and `EINTR`.
    pub fn pending(&self) -> Result<Option<u32>, XenError> {
        // SAFETY: the handle is open.
        let rc = unsafe { ffi::xenevtchn_pending(self.h()) };
        if rc < 0 {
            let e = errno();
            if e == libc::EAGAIN || e == libc::EWOULDBLOCK || e == libc::EINTR {
                return Ok(None);
            }
            return Err(XenError::Call { call: "xenevtchn_pending", errno: e });
        }
        Ok(u32::try_from(rc).ok())
    }

    /// `xenevtchn_unmask`: re-arms a port delivered by [`Self::pending`].
    ///
    /// # Errors
    /// The C call's errno.
    pub fn unmask(&self, port: u32) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xenevtchn_unmask(self.h(), port) };
        check("xenevtchn_unmask", rc).map(drop)
    }

    /// `xenevtchn_notify`.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn notify(&self, port: u32) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xenevtchn_notify(self.h(), port) };
        check("xenevtchn_notify", rc).map(drop)
    }

    /// `xenevtchn_restrict`: only interdomain binds to this handle's domain
    /// from now on; existing binds keep working.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn restrict(&self) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xenevtchn_restrict(self.h(), self.domid) };
        check("xenevtchn_restrict", rc).map(drop)
    }
}

impl AsFd for EventChannels {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl Drop for EventChannels {
    fn drop(&mut self) {
        // SAFETY: opened by xenevtchn_open, closed once; no borrow of the fd
        // can outlive `&mut self`.
        let rc = unsafe { ffi::xenevtchn_close(self.h()) };
        if rc < 0 {
            tracing::warn!(errno = errno(), "xenevtchn_close failed");
        }
    }
}

/// An open `libxenforeignmemory` handle, bound to one domain.
#[derive(Debug)]
pub struct ForeignMemory {
    handle: NonNull<ffi::xenforeignmemory_handle>,
    domid: DomId,
}

// SAFETY: the handle is the privcmd fd plus immutable library state; map and
// unmap are mmap/munmap plus ioctls, safe from any thread concurrently.
unsafe impl Send for ForeignMemory {}
// SAFETY: see `Send`.
unsafe impl Sync for ForeignMemory {}

/// A resource mapping (`xenforeignmemory_map_resource`), unmapped on drop.
#[derive(Debug)]
pub struct ResourceMapping {
    fmem: Arc<ForeignMemory>,
    res: NonNull<ffi::xenforeignmemory_resource_handle>,
    addr: NonNull<u8>,
    frames: usize,
}

// SAFETY: the mapping is process-wide memory and the resource handle is only
// passed back to the (thread-safe) library on drop.
unsafe impl Send for ResourceMapping {}
// SAFETY: `&ResourceMapping` only exposes the address, never references into it.
unsafe impl Sync for ResourceMapping {}

impl ResourceMapping {
    /// Start of the mapping (page aligned).
    pub const fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// Number of frames mapped.
    pub const fn frames(&self) -> usize {
        self.frames
    }

    /// Address of frame `i` of the mapping, if mapped.
    pub fn frame(&self, i: usize) -> Option<NonNull<u8>> {
        if i >= self.frames {
            return None;
        }
        // SAFETY: `i < frames`, so the offset stays inside the mapping of
        // `frames * XEN_PAGE_SIZE` bytes.
        Some(unsafe { self.addr.add(i * XEN_PAGE_SIZE) })
    }
}

impl Drop for ResourceMapping {
    fn drop(&mut self) {
        // SAFETY: `res` came from xenforeignmemory_map_resource on this
        // handle and is released once; users of the mapping hold it through
        // `self`, which is being dropped.
        let rc = unsafe { ffi::xenforeignmemory_unmap_resource(self.fmem.h(), self.res.as_ptr()) };
        if rc < 0 {
            tracing::warn!(errno = errno(), "xenforeignmemory_unmap_resource failed");
        }
    }
}

impl ForeignMemory {
    /// `xenforeignmemory_open`, for memory of domain `domid`.
    ///
    /// # Errors
    /// Without `/dev/xen/privcmd`, a [`XenError::Call`] naming `xenforeignmemory_open`.
    pub fn open(domid: DomId) -> Result<Self, XenError> {
        // SAFETY: NULL logger = default logger; flags 0. Checked for NULL.
        let h = unsafe { ffi::xenforeignmemory_open(std::ptr::null_mut(), 0) };
        match NonNull::new(h) {
            Some(handle) => Ok(Self { handle, domid }),
            None => Err(XenError::Call { call: "xenforeignmemory_open", errno: errno() }),
        }
    }

    fn h(&self) -> *mut ffi::xenforeignmemory_handle {
        self.handle.as_ptr()
    }

    /// The domain this handle maps.
    pub const fn domid(&self) -> DomId {
        self.domid
    }

    /// `xenforeignmemory_map_resource` of `nr_frames` frames from `frame`,
    /// read-write and shared.
    ///
    /// # Errors
    /// The C call's errno (`EOPNOTSUPP` on kernels without
    /// `IOCTL_PRIVCMD_MMAP_RESOURCE`).
    pub fn map_resource(
        self: &Arc<Self>,
        kind: c_uint,
        id: c_uint,
        frame: u64,
        nr_frames: usize,
    ) -> Result<ResourceMapping, XenError> {
        let call = "xenforeignmemory_map_resource";
        let frame = std::os::raw::c_ulong::try_from(frame).map_err(|_| XenError::Call { call, errno: libc::EINVAL })?;
        let nr =
            std::os::raw::c_ulong::try_from(nr_frames).map_err(|_| XenError::Call { call, errno: libc::EINVAL })?;
        let mut addr: *mut c_void = std::ptr::null_mut();
        // SAFETY: the handle is open; `addr` is NULL on entry (no placement
        // hint) and a valid out-pointer; prot/flags are plain integers.
        let res = unsafe {
            ffi::xenforeignmemory_map_resource(
                self.h(),
                self.domid,
                kind,
                id,
                frame,
                nr,
                &mut addr,
                libc::PROT_READ | libc::PROT_WRITE,
                0,
            )
        };
        let Some(res) = NonNull::new(res) else {
            return Err(XenError::Call { call, errno: errno() });
        };
        let Some(addr) = NonNull::new(addr.cast::<u8>()) else {
            // Success without an address would be a library bug; release it.
            // SAFETY: `res` was just returned by map_resource and is released once.
            unsafe { ffi::xenforeignmemory_unmap_resource(self.h(), res.as_ptr()) };
            return Err(XenError::Call { call, errno: libc::EFAULT });
        };
        Ok(ResourceMapping { fmem: Arc::clone(self), res, addr, frames: nr_frames })
    }

    /// `xenforeignmemory_map2`: maps `gfns` contiguously, read-write, and
    /// stores each page's status in `errs` (0, or a negative errno for a page
    /// that is not mapped and must not be touched).
    ///
    /// # Errors
    /// `EINVAL` if the slices differ in length or are empty; otherwise the C
    /// call's errno when the whole mapping failed.
    pub fn map_pages(&self, gfns: &[u64], errs: &mut [i32]) -> Result<NonNull<u8>, XenError> {
        let call = "xenforeignmemory_map2";
        if gfns.is_empty() || gfns.len() != errs.len() {
            return Err(XenError::Call { call, errno: libc::EINVAL });
        }
        let pfns: Vec<ffi::xen_pfn_t> = gfns
            .iter()
            .map(|&g| ffi::xen_pfn_t::try_from(g))
            .collect::<Result<_, _>>()
            .map_err(|_| XenError::Call { call, errno: libc::EINVAL })?;
        errs.fill(0);
        // SAFETY: the handle is open; `pfns` and `errs` are valid arrays of
        // `gfns.len()` elements for the duration of the call (checked equal
        // above); a NULL address asks the kernel to choose placement.
        let p = unsafe {
            ffi::xenforeignmemory_map2(
                self.h(),
                u32::from(self.domid),
                std::ptr::null_mut(),
                libc::PROT_READ | libc::PROT_WRITE,
                0,
                pfns.len(),
                pfns.as_ptr(),
                errs.as_mut_ptr(),
            )
        };
        NonNull::new(p.cast::<u8>()).ok_or_else(|| XenError::Call { call, errno: errno() })
    }

    /// `xenforeignmemory_unmap`.
    ///
    /// # Safety
    /// `addr` and `pages` must come from one successful [`Self::map_pages`]
    /// on this handle, not yet unmapped, and nothing may access the mapping
    /// afterwards.
    ///
    /// # Errors
    /// The C call's errno.
    pub unsafe fn unmap_pages(&self, addr: NonNull<u8>, pages: usize) -> Result<(), XenError> {
        // SAFETY: the caller guarantees `addr`/`pages` describe a live mapping
        // of this handle that is no longer used.
        let rc = unsafe { ffi::xenforeignmemory_unmap(self.h(), addr.as_ptr().cast::<c_void>(), pages) };
        check("xenforeignmemory_unmap", rc).map(drop)
    }

    /// `xenforeignmemory_restrict`: only this handle's domain from now on.
    ///
    /// # Errors
    /// The C call's errno.
    pub fn restrict(&self) -> Result<(), XenError> {
        // SAFETY: the handle is open; plain integer arguments.
        let rc = unsafe { ffi::xenforeignmemory_restrict(self.h(), self.domid) };
        check("xenforeignmemory_restrict", rc).map(drop)
    }
}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        // SAFETY: opened by xenforeignmemory_open and closed once. Mappings
        // made through it stay valid (the library documents that mappings
        // outlive the handle); resource mappings hold an `Arc` to it anyway.
        let rc = unsafe { ffi::xenforeignmemory_close(self.h()) };
        if rc < 0 {
            tracing::warn!(errno = errno(), "xenforeignmemory_close failed");
        }
    }
}

#[link(name = "xentoolcore")]
extern "C" {
    fn xentoolcore_restrict_all(domid: ffi::domid_t) -> c_int;
}

/// `xentoolcore_restrict_all`: restricts every open Xen library handle of the
/// process to `domid` (libxencall, libxengnttab and libxenstore handles
/// become dead). Call it once start-up is complete.
///
/// # Errors
/// The C call's errno.
pub fn restrict_all(domid: DomId) -> Result<(), XenError> {
    // SAFETY: plain integer argument; the library walks its own registry of
    // open handles under its own lock.
    let rc = unsafe { xentoolcore_restrict_all(domid) };
    check("xentoolcore_restrict_all", rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    // This machine has no Xen (`/dev/xen` is absent): opening must fail with
    // a typed error naming the C function, never panic or return a handle.
    fn no_xen() -> bool {
        !std::path::Path::new("/dev/xen/privcmd").exists()
    }

    #[test]
    fn open_without_xen_is_a_typed_error_naming_the_call() {
        if !no_xen() {
            return; // On a Xen host the opens may succeed; nothing to check here.
        }
        match DeviceModel::open(1) {
            Err(XenError::Call { call, .. }) => assert_eq!(call, "xendevicemodel_open"),
            other => panic!("unexpected {other:?}"),
        }
        match ForeignMemory::open(1) {
            Err(e @ XenError::Call { .. }) => assert!(e.to_string().contains("xenforeignmemory_open"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        let e = EventChannels::open(1).unwrap_err();
        assert!(matches!(e, XenError::Call { call: "xenevtchn_open", .. }), "{e}");
        assert!(e.errno().is_some_and(|n| n != 0), "errno captured: {e:?}");
    }

    #[test]
    fn restrict_all_links_and_succeeds_with_no_handles() {
        if !no_xen() {
            return; // On a Xen host this would restrict the test process.
        }
        // No handle could be opened, so libxentoolcore has nothing to
        // restrict and returns 0: this checks the hand-written binding
        // links and is called with the right ABI.
        restrict_all(0x7ff0).unwrap();
    }

    /// The constants this file defines by hand, checked against the
    /// installed Xen headers with the C compiler.
    #[test]
    fn hand_written_constants_match_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("c.c");
        let exe = dir.path().join("c");
        std::fs::write(
            &src,
            "#define __XEN_TOOLS__ 1\n#include <stdio.h>\n#include <stdint.h>\n#include <xen/xen.h>\n#include <xen/memory.h>\n\
             #include <xen/hvm/hvm_op.h>\n#include <xen/sched.h>\nint main(void) {\n\
             printf(\"%d %d %d %d %d %d %d %d %d %d\\n\", HVM_IOREQSRV_BUFIOREQ_OFF, HVM_IOREQSRV_BUFIOREQ_LEGACY,\n\
             HVM_IOREQSRV_BUFIOREQ_ATOMIC, XENMEM_resource_ioreq_server, XENMEM_resource_ioreq_server_frame_bufioreq,\n\
             XENMEM_resource_ioreq_server_frame_ioreq(0), SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend,\n\
             SHUTDOWN_crash);\nreturn 0; }\n",
        )
        .unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = std::process::Command::new(cc).arg("-o").arg(&exe).arg(&src).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let run = std::process::Command::new(&exe).output().unwrap();
        use xendm_devices::ShutdownReason as R;
        let ours = format!(
            "{} {} {} {} {} {} {} {} {} {}\n",
            BufIoreq::Off.code(),
            BufIoreq::Legacy.code(),
            BufIoreq::Atomic.code(),
            XENMEM_RESOURCE_IOREQ_SERVER,
            IOREQ_SERVER_FRAME_BUFIOREQ,
            IOREQ_SERVER_FRAME_IOREQ,
            R::Poweroff.code(),
            R::Reboot.code(),
            R::Suspend.code(),
            R::Crash.code()
        );
        assert_eq!(String::from_utf8_lossy(&run.stdout), ours);
    }

    #[test]
    fn range_type_flag() {
        assert_eq!(is_mmio(Space::Pio), 0);
        assert_eq!(is_mmio(Space::Mmio), 1);
    }
}
