//! Guest-physical memory through a cache of foreign mappings.
//!
//! Follows the scheme of QEMU's `hw/xen/xen-mapcache.c` (facts only) and
//! Xen's `xenforeignmemory_map2` contract (`/usr/include/xenforeignmemory.h`):
//!
//! * Guest memory is mapped lazily, in 1 MiB **buckets** (256 pages,
//!   [`BUCKET_SIZE`]) aligned on 1 MiB, the first time an access touches one.
//!   Buckets are kept and reused by later accesses.
//! * The mapping call reports a status per page. A page that failed (a hole,
//!   an unpopulated or ballooned-out frame) is recorded as invalid and is
//!   **never touched**: on Linux such a page of a privcmd mapping raises
//!   SIGBUS. An access that covers an invalid page fails with
//!   [`MemError::Unmapped`] instead.
//! * Before failing, an access that hits an invalid page of a cached bucket
//!   maps that bucket again once, as QEMU does, because the guest may have
//!   populated the frame since (ballooning up sends no INVALIDATE). This costs
//!   one mapping call per such access, and every access comes from a guest
//!   exit, so the guest cannot make it cost more than the exits themselves.
//! * At most `max_buckets` buckets are mapped (default
//!   [`DEFAULT_MAX_BUCKETS`] = 64, i.e. 64 MiB of mappings); mapping one more
//!   unmaps the least recently used. QEMU caps its cache at 32 GiB and uses a
//!   hash table with chains; a small LRU is enough here because accesses are
//!   short device copies, and keeps host address space bounded.
//! * [`MapCache::invalidate`] unmaps every bucket; it is what an
//!   `IOREQ_TYPE_INVALIDATE` request triggers, and it finishes before the
//!   request is answered. QEMU's "locked" long-lived entries do not exist
//!   here: nothing outside this module ever holds a pointer into a mapping.
//!
//! Accesses that span buckets are split at bucket boundaries. Each piece is
//! copied under the cache's lock, so [`MapCache::invalidate`] and eviction
//! never unmap memory that is being copied. The copies use volatile
//! semantics (`vm_memory::VolatileSlice`) because the guest may write the
//! same memory concurrently from another vCPU.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use xendm_devices::sync::{get_mut, lock};

use vm_memory::{GuestAddress, VolatileSlice};
use xendm_devices::mem::check_range;
use xendm_devices::{GuestMemory, MemError};

use super::sys::{ForeignMemory, XEN_PAGE_SIZE};
use super::XenError;

/// log2 of [`BUCKET_SIZE`].
pub const BUCKET_SHIFT: u32 = 20;
/// Size of one mapped bucket: 1 MiB, as QEMU's `MCACHE_BUCKET_SHIFT` on 64-bit hosts.
pub const BUCKET_SIZE: usize = 1 << BUCKET_SHIFT;
/// Pages per bucket.
pub const PAGES_PER_BUCKET: usize = BUCKET_SIZE / XEN_PAGE_SIZE;
/// Default bound on mapped buckets (64 MiB of mappings).
pub const DEFAULT_MAX_BUCKETS: usize = 64;

const PAGE_SHIFT: u32 = 12;
const BUCKET_MASK: u64 = (BUCKET_SIZE as u64) - 1;
const VALID_WORDS: usize = PAGES_PER_BUCKET / 64;

/// Something that maps batches of guest frames into our address space:
/// `xenforeignmemory_map2` on Xen, a fake in tests.
///
/// # Safety
/// When [`ForeignMapper::map`] returns `Ok(p)`, `p` must be the start of
/// `gfns.len() * 4096` bytes of address space in which every page whose
/// `errs` entry is 0 is readable and writable, stays so until
/// [`ForeignMapper::unmap`] is called with `p`, and is shared memory of the
/// guest frame at the same index (so the caller must access it with volatile
/// semantics). Pages with a non-zero entry must not be touched.
pub unsafe trait ForeignMapper: Send + Sync {
    /// Maps `gfns` contiguously; fills `errs` (same length) with 0 or a
    /// negative errno per page.
    ///
    /// # Errors
    /// When nothing could be mapped at all.
    fn map(&self, gfns: &[u64], errs: &mut [i32]) -> Result<NonNull<u8>, XenError>;

    /// Unmaps a mapping made by [`ForeignMapper::map`].
    ///
    /// # Safety
    /// `addr`/`pages` must describe one live mapping returned by `map` on this
    /// mapper, and nothing may access it afterwards.
    ///
    /// # Errors
    /// When the system refuses; the mapping is then leaked.
    unsafe fn unmap(&self, addr: NonNull<u8>, pages: usize) -> Result<(), XenError>;
}

// SAFETY: xenforeignmemory_map2 returns a shared, read-write mapping of the
// frames; pages whose err[] entry is non-zero are the only ones left unmapped,
// and the mapping lives until xenforeignmemory_unmap.
unsafe impl ForeignMapper for ForeignMemory {
    fn map(&self, gfns: &[u64], errs: &mut [i32]) -> Result<NonNull<u8>, XenError> {
        self.map_pages(gfns, errs)
    }

    unsafe fn unmap(&self, addr: NonNull<u8>, pages: usize) -> Result<(), XenError> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.unmap_pages(addr, pages) }
    }
}

// SAFETY: forwards to `M`, which upholds the contract.
unsafe impl<M: ForeignMapper + ?Sized> ForeignMapper for Arc<M> {
    fn map(&self, gfns: &[u64], errs: &mut [i32]) -> Result<NonNull<u8>, XenError> {
        (**self).map(gfns, errs)
    }

    unsafe fn unmap(&self, addr: NonNull<u8>, pages: usize) -> Result<(), XenError> {
        // SAFETY: forwarded from the caller's contract.
        unsafe { (**self).unmap(addr, pages) }
    }
}

/// One mapped bucket.
struct Bucket {
    base: NonNull<u8>,
    /// Bit `i` set: page `i` of the bucket is mapped.
    valid: [u64; VALID_WORDS],
    last_use: u64,
}

// SAFETY: the bucket's pointer designates a process-wide mapping that is not
// tied to a thread; it is only dereferenced under the cache's lock.
unsafe impl Send for Bucket {}

impl Bucket {
    fn page_valid(&self, page: usize) -> bool {
        self.valid.get(page / 64).is_some_and(|w| w & (1u64 << (page % 64)) != 0)
    }

    fn pages_valid(&self, first: usize, last: usize) -> bool {
        (first..=last).all(|p| self.page_valid(p))
    }
}

struct State {
    buckets: HashMap<u64, Bucket>,
    clock: u64,
}

/// Counters, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapCacheStats {
    /// Buckets mapped now.
    pub mapped: usize,
    /// Mapping calls made so far.
    pub maps: u64,
    /// Buckets unmapped by eviction so far.
    pub evictions: u64,
    /// Times the cache was invalidated.
    pub invalidations: u64,
}

/// Guest memory over lazily mapped 1 MiB buckets; see the module docs.
pub struct MapCache<M: ForeignMapper> {
    mapper: M,
    max_buckets: usize,
    state: Mutex<State>,
    stats: Mutex<MapCacheStats>,
}

impl<M: ForeignMapper> MapCache<M> {
    /// A cache of at most [`DEFAULT_MAX_BUCKETS`] buckets.
    pub fn new(mapper: M) -> Self {
        Self::with_max_buckets(mapper, DEFAULT_MAX_BUCKETS)
    }

    /// A cache of at most `max_buckets` buckets (at least 1).
    pub fn with_max_buckets(mapper: M, max_buckets: usize) -> Self {
        Self {
            mapper,
            max_buckets: max_buckets.max(1),
            state: Mutex::new(State { buckets: HashMap::new(), clock: 0 }),
            stats: Mutex::new(MapCacheStats::default()),
        }
    }

    /// The bound on mapped buckets.
    pub const fn max_buckets(&self) -> usize {
        self.max_buckets
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MapCacheStats {
        let mut s = *lock(&self.stats);
        s.mapped = lock(&self.state).buckets.len();
        s
    }

    /// Unmaps every bucket (an INVALIDATE ioreq). Returns how many were mapped.
    pub fn invalidate(&self) -> usize {
        let mut st = lock(&self.state);
        let n = st.buckets.len();
        for (index, b) in st.buckets.drain() {
            self.unmap_bucket(index, b);
        }
        drop(st);
        lock(&self.stats).invalidations += 1;
        tracing::debug!(buckets = n, "mapcache invalidated");
        n
    }

    fn unmap_bucket(&self, index: u64, b: Bucket) {
        // SAFETY: `b.base` came from `self.mapper.map` for PAGES_PER_BUCKET
        // pages and is unmapped once: the bucket was removed from the table
        // (by value), and accesses only happen under the lock our caller holds.
        if let Err(e) = unsafe { self.mapper.unmap(b.base, PAGES_PER_BUCKET) } {
            tracing::warn!(bucket = format_args!("{:#x}", index << BUCKET_SHIFT), error = %e, "unmapping a mapcache bucket failed; leaked");
        }
    }

    fn map_bucket(&self, index: u64) -> Result<Bucket, MemError> {
        let addr = index << BUCKET_SHIFT;
        let first_gfn = addr >> PAGE_SHIFT;
        let gfns: [u64; PAGES_PER_BUCKET] = std::array::from_fn(|i| first_gfn + i as u64);
        let mut errs = [0i32; PAGES_PER_BUCKET];
        let base =
            self.mapper.map(&gfns, &mut errs).map_err(|e| MemError::MapFailed { addr, reason: e.to_string() })?;
        lock(&self.stats).maps += 1;
        let mut valid = [0u64; VALID_WORDS];
        for (i, _) in errs.iter().enumerate().filter(|(_, &e)| e == 0) {
            if let Some(w) = valid.get_mut(i / 64) {
                *w |= 1u64 << (i % 64);
            }
        }
        Ok(Bucket { base, valid, last_use: 0 })
    }

    /// The base of bucket `index` with pages `first..=last` mapped.
    fn bucket_for(
        &self,
        st: &mut State,
        index: u64,
        first: usize,
        last: usize,
        addr: u64,
        len: usize,
    ) -> Result<NonNull<u8>, MemError> {
        st.clock = st.clock.wrapping_add(1);
        let now = st.clock;
        if let Some(b) = st.buckets.get_mut(&index) {
            b.last_use = now;
            if b.pages_valid(first, last) {
                return Ok(b.base);
            }
            // A page was a hole when mapped; it may be populated now.
            if let Some(old) = st.buckets.remove(&index) {
                self.unmap_bucket(index, old);
            }
        } else if st.buckets.len() >= self.max_buckets {
            let lru = st.buckets.iter().min_by_key(|(_, b)| b.last_use).map(|(&i, _)| i);
            if let Some(old) = lru.and_then(|i| st.buckets.remove(&i).map(|b| (i, b))) {
                self.unmap_bucket(old.0, old.1);
                lock(&self.stats).evictions += 1;
            }
        }
        let mut b = self.map_bucket(index)?;
        b.last_use = now;
        let ok = b.pages_valid(first, last);
        let base = b.base;
        st.buckets.insert(index, b);
        if ok {
            Ok(base)
        } else {
            Err(MemError::Unmapped { addr, len })
        }
    }

    /// Runs `f` on each bucket-sized piece of `[addr, addr + len)` in order,
    /// with the offset of the piece in the access.
    fn for_each_piece(
        &self,
        addr: GuestAddress,
        len: usize,
        mut f: impl FnMut(VolatileSlice<'_>, usize),
    ) -> Result<(), MemError> {
        check_range(addr, len)?;
        let mut done = 0usize;
        while done < len {
            // No overflow: check_range proved addr + len fits in u64.
            let cur = addr.0 + done as u64;
            let index = cur >> BUCKET_SHIFT;
            let off = (cur & BUCKET_MASK) as usize;
            let piece = (len - done).min(BUCKET_SIZE - off);
            let first = off / XEN_PAGE_SIZE;
            let last = (off + piece - 1) / XEN_PAGE_SIZE;
            let mut st = lock(&self.state);
            let base = self.bucket_for(&mut st, index, first, last, addr.0, len)?;
            // SAFETY: `base` is a live mapping of BUCKET_SIZE bytes (the
            // mapper's contract) and `off + piece <= BUCKET_SIZE`; every page
            // of `[off, off + piece)` is valid (checked by bucket_for). The
            // slice is only used inside `f`, while `st` keeps the lock so no
            // invalidation or eviction can unmap it; all our accesses to guest
            // memory are volatile.
            let slice = unsafe { VolatileSlice::new(base.as_ptr().add(off), piece) };
            f(slice, done);
            drop(st);
            done += piece;
        }
        Ok(())
    }
}

impl<M: ForeignMapper> GuestMemory for MapCache<M> {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        self.for_each_piece(addr, len, |slice, at| {
            if let Some(dst) = buf.get_mut(at..at + slice.len()) {
                slice.copy_to(dst);
            }
        })
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemError> {
        self.for_each_piece(addr, buf.len(), |slice, at| {
            if let Some(src) = buf.get(at..at + slice.len()) {
                slice.copy_from(src);
            }
        })
    }
}

impl<M: ForeignMapper> Drop for MapCache<M> {
    fn drop(&mut self) {
        let st = get_mut(&mut self.state);
        let all: Vec<(u64, Bucket)> = st.buckets.drain().collect();
        for (index, b) in all {
            self.unmap_bucket(index, b);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::fd::OwnedFd;
    use std::os::raw::c_void;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustix::mm::{MapFlags, ProtFlags};

    /// Guest RAM in a memfd; each `map` builds a real mapping in which the
    /// valid pages are shared mappings of the memfd and the holes are
    /// PROT_NONE, so touching a hole or a stale (unmapped) bucket crashes the
    /// test instead of passing silently.
    pub(crate) struct FakeMapper {
        fd: OwnedFd,
        pages: u64,
        holes: Mutex<HashSet<u64>>,
        pub maps: AtomicUsize,
        pub unmaps: AtomicUsize,
    }

    impl FakeMapper {
        pub(crate) fn new(bytes: u64, holes: &[u64]) -> Self {
            let fd = rustix::fs::memfd_create("fake-guest", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
            rustix::fs::ftruncate(&fd, bytes).unwrap();
            Self {
                fd,
                pages: bytes / XEN_PAGE_SIZE as u64,
                holes: Mutex::new(holes.iter().copied().collect()),
                maps: AtomicUsize::new(0),
                unmaps: AtomicUsize::new(0),
            }
        }

        /// Guest bytes, read behind the cache's back.
        pub(crate) fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            rustix::io::pread(&self.fd, &mut v, addr).unwrap();
            v
        }

        pub(crate) fn poke(&self, addr: u64, data: &[u8]) {
            rustix::io::pwrite(&self.fd, data, addr).unwrap();
        }

        fn fill_hole(&self, gfn: u64) {
            self.holes.lock().unwrap().remove(&gfn);
        }

        pub(crate) fn live(&self) -> usize {
            self.maps.load(Ordering::SeqCst) - self.unmaps.load(Ordering::SeqCst)
        }
    }

    // SAFETY: valid pages are MAP_SHARED mappings of the memfd page of the
    // same gfn, read-write, until `unmap` munmaps the whole range; the others
    // are PROT_NONE and reported with -EINVAL.
    unsafe impl ForeignMapper for FakeMapper {
        fn map(&self, gfns: &[u64], errs: &mut [i32]) -> Result<NonNull<u8>, XenError> {
            let len = gfns.len() * XEN_PAGE_SIZE;
            // SAFETY: a fresh anonymous reservation; nothing else uses it.
            let base =
                unsafe { rustix::mm::mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::empty(), MapFlags::PRIVATE) }
                    .unwrap();
            let holes = self.holes.lock().unwrap();
            for (i, (&gfn, err)) in gfns.iter().zip(errs.iter_mut()).enumerate() {
                if gfn >= self.pages || holes.contains(&gfn) {
                    *err = -libc::EINVAL;
                    continue;
                }
                // SAFETY: MAP_FIXED over our own reservation, page i of it.
                unsafe {
                    rustix::mm::mmap(
                        base.cast::<u8>().add(i * XEN_PAGE_SIZE).cast::<c_void>(),
                        XEN_PAGE_SIZE,
                        ProtFlags::READ | ProtFlags::WRITE,
                        MapFlags::SHARED | MapFlags::FIXED,
                        &self.fd,
                        gfn * XEN_PAGE_SIZE as u64,
                    )
                }
                .unwrap();
                *err = 0;
            }
            self.maps.fetch_add(1, Ordering::SeqCst);
            Ok(NonNull::new(base.cast::<u8>()).unwrap())
        }

        unsafe fn unmap(&self, addr: NonNull<u8>, pages: usize) -> Result<(), XenError> {
            // SAFETY: the caller guarantees this is one live mapping of ours.
            unsafe { rustix::mm::munmap(addr.as_ptr().cast::<c_void>(), pages * XEN_PAGE_SIZE) }.unwrap();
            self.unmaps.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn ga(a: u64) -> GuestAddress {
        GuestAddress(a)
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn reads_and_writes_reach_guest_memory() {
        let m = Arc::new(FakeMapper::new(4 * MIB, &[]));
        let c = MapCache::new(m.clone());
        m.poke(0x1234, b"hello");
        let mut b = [0u8; 5];
        c.read(ga(0x1234), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        c.write(ga(0x2_0000), b"world").unwrap();
        assert_eq!(m.peek(0x2_0000, 5), b"world");
    }

    #[test]
    fn a_bucket_is_mapped_once_and_reused() {
        let m = Arc::new(FakeMapper::new(4 * MIB, &[]));
        let c = MapCache::new(m.clone());
        let mut b = [0u8; 8];
        for a in [0u64, 0x1000, 0xff000, 0x8_0000] {
            c.read(ga(a), &mut b).unwrap();
        }
        c.write(ga(0x10), &b).unwrap();
        assert_eq!(m.maps.load(Ordering::SeqCst), 1);
        c.read(ga(MIB + 4), &mut b).unwrap();
        assert_eq!(m.maps.load(Ordering::SeqCst), 2);
        assert_eq!(c.stats().mapped, 2);
    }

    #[test]
    fn holes_and_memory_end_are_errors_not_faults() {
        // Pages 0xA0..0xBF: the VGA hole.
        let holes: Vec<u64> = (0xa0..0xc0).collect();
        let m = Arc::new(FakeMapper::new(2 * MIB, &holes));
        let c = MapCache::new(m.clone());
        let mut b = [0u8; 4];
        assert_eq!(c.read(ga(0xa_0000), &mut b), Err(MemError::Unmapped { addr: 0xa_0000, len: 4 }));
        assert!(c.write(ga(0xb_fffe), &[1, 2, 3, 4]).is_err());
        assert!(
            matches!(c.write(ga(0x9_fffe), &[1, 2, 3, 4]), Err(MemError::Unmapped { .. })),
            "straddles into the hole"
        );
        assert_eq!(m.peek(0x9_fffe, 2), [0, 0], "nothing written before the hole was found");
        // Page just below the hole still works.
        c.write(ga(0x9_fffc), &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.peek(0x9_fffc, 4), [1, 2, 3, 4]);
        // Past the end of guest memory.
        assert!(c.read(ga(2 * MIB), &mut b).is_err());
        assert!(c.read(ga(64 << 40), &mut b).is_err());
        assert!(matches!(c.read(ga(u64::MAX - 1), &mut b), Err(MemError::Overflow { .. })));
        // Empty accesses succeed without mapping anything.
        let before = m.maps.load(Ordering::SeqCst);
        c.read(ga(0xa_0000), &mut []).unwrap();
        assert_eq!(m.maps.load(Ordering::SeqCst), before);
    }

    #[test]
    fn a_hole_populated_later_becomes_accessible() {
        let m = Arc::new(FakeMapper::new(2 * MIB, &[5]));
        let c = MapCache::new(m.clone());
        let mut b = [0u8; 2];
        c.read(ga(0), &mut b).unwrap();
        assert!(c.read(ga(0x5000), &mut b).is_err());
        m.fill_hole(5);
        m.poke(0x5000, &[7, 8]);
        c.read(ga(0x5000), &mut b).unwrap();
        assert_eq!(b, [7, 8]);
        assert_eq!(c.stats().mapped, 1, "the stale bucket was replaced, not added");
        assert_eq!(m.live(), 1);
    }

    #[test]
    fn accesses_spanning_buckets_are_split() {
        let m = Arc::new(FakeMapper::new(8 * MIB, &[]));
        let c = MapCache::new(m.clone());
        let data: Vec<u8> = (0..(2 * MIB as usize + 100)).map(|i| (i % 251) as u8).collect();
        let at = MIB - 50;
        c.write(ga(at), &data).unwrap();
        assert_eq!(m.peek(at, data.len()), data);
        let mut back = vec![0u8; data.len()];
        c.read(ga(at), &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(c.stats().mapped, 4, "buckets 0..=3 touched");
        // An 8-byte access straddling a bucket boundary.
        c.write(ga(3 * MIB - 3), &0x1122_3344_5566_7788u64.to_le_bytes()).unwrap();
        assert_eq!(m.peek(3 * MIB - 3, 8), 0x1122_3344_5566_7788u64.to_le_bytes());
    }

    #[test]
    fn an_access_into_a_hole_in_the_next_bucket_fails() {
        let m = Arc::new(FakeMapper::new(4 * MIB, &[(MIB >> 12) + 1]));
        let c = MapCache::new(m.clone());
        assert!(c.write(ga(MIB - 4), &[0xaa; 0x2000]).is_err());
        // The first bucket's part was written (a prefix may be written on error).
        assert_eq!(m.peek(MIB - 4, 4), [0xaa; 4]);
    }

    #[test]
    fn the_number_of_mapped_buckets_is_bounded_lru() {
        let m = Arc::new(FakeMapper::new(16 * MIB, &[]));
        let c = MapCache::with_max_buckets(m.clone(), 2);
        let mut b = [0u8; 1];
        c.read(ga(0), &mut b).unwrap(); // A
        c.read(ga(MIB), &mut b).unwrap(); // B
        c.read(ga(10), &mut b).unwrap(); // A again: B is now the LRU
        c.read(ga(2 * MIB), &mut b).unwrap(); // C evicts B
        assert_eq!(m.live(), 2);
        assert_eq!(c.stats().evictions, 1);
        let maps = m.maps.load(Ordering::SeqCst);
        c.read(ga(20), &mut b).unwrap(); // A still mapped
        assert_eq!(m.maps.load(Ordering::SeqCst), maps);
        c.read(ga(MIB), &mut b).unwrap(); // B needs a new map
        assert_eq!(m.maps.load(Ordering::SeqCst), maps + 1);
        for i in 0..16 {
            c.read(ga(i * MIB), &mut b).unwrap();
            assert!(m.live() <= 2);
        }
    }

    #[test]
    fn invalidate_drops_every_mapping_and_data_survives() {
        let m = Arc::new(FakeMapper::new(4 * MIB, &[]));
        let c = MapCache::new(m.clone());
        c.write(ga(0x100), b"abc").unwrap();
        c.write(ga(3 * MIB), b"def").unwrap();
        assert_eq!(c.invalidate(), 2);
        assert_eq!(m.live(), 0);
        assert_eq!(c.stats().mapped, 0);
        let mut b = [0u8; 3];
        c.read(ga(0x100), &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(m.live(), 1);
        drop(c);
        assert_eq!(m.live(), 0, "drop unmaps");
    }

    #[test]
    fn concurrent_accesses_and_invalidations_are_safe() {
        let m = Arc::new(FakeMapper::new(8 * MIB, &[]));
        let c = Arc::new(MapCache::with_max_buckets(m.clone(), 3));
        let threads: Vec<_> = (0..3u64)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let a = ((t * 3 + i) % 8) * MIB + t * 16;
                        c.write(ga(a), &i.to_le_bytes()).unwrap();
                        let mut b = [0u8; 8];
                        c.read(ga(a), &mut b).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..100 {
            c.invalidate();
        }
        for t in threads {
            t.join().unwrap();
        }
        assert!(c.stats().mapped <= 3);
    }
}
