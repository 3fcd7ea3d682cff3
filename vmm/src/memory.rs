//! Guest RAM: anonymous mappings laid out by [`GuestLayout`], registered as KVM memory slots.

use std::ops::Range;
use std::sync::atomic::AtomicBool;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::hugepages::{self, HugePageSize};
use minivmm_firmware::layout::GuestLayout;
use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionBuilder;
#[cfg(test)]
use vm_memory::Bytes;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestMemoryRegionBytes,
    GuestRegionCollection, GuestRegionMmap, GuestUsize, MemoryRegionAddress, VolatileSlice,
};

/// Guest RAM as minivmm maps it: regions that each own their host mapping, so that any
/// clone of the collection (vm-memory's collections are `Clone`) keeps the memory it points
/// into mapped; the last one dropped unmaps it.
pub type GuestMemory = GuestRegionCollection<RamRegion>;

/// The owner of guest RAM (a name kept for what holds it for the VM's life).
pub type GuestRam = GuestMemory;

/// Errors creating guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host cannot back the guest.
    #[error("--memory {0} MiB is more than this host's {1} MiB of RAM; ask for less")]
    MoreThanHost(u64, u64),
    /// mmap failed.
    #[error("cannot map {0} MiB of guest RAM: {1}")]
    Map(u64, String),
    /// KVM refused a memory slot.
    #[error("KVM refused guest RAM slot {0}: {1}")]
    Slot(u32, kvm_ioctls::Error),
    /// The layout has no room for the size.
    #[error("--memory {0} MiB cannot be laid out: {1}")]
    Layout(u64, minivmm_firmware::layout::LayoutError),
    /// Huge pages asked for and not there.
    #[error("{0}")]
    HugePages(String),
}

/// Total host RAM in bytes, from sysinfo(2).
fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo only writes into the struct we pass; zeroed is a valid initial value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    let rc = unsafe { libc::sysinfo(&mut info) };
    (rc == 0).then(|| info.totalram * u64::from(info.mem_unit))
}

/// Huge-page size of x86-64: the alignment guest RAM's host mappings get.
const HUGE_PAGE: usize = 2 << 20;

/// One region of guest RAM: vm-memory's view of it and the host mapping behind that view.
///
/// vm-memory maps regions wherever mmap puts them, which on Linux before 6.7 is only 4 KiB
/// aligned. KVM maps guest memory with 2 MiB stage-2 pages only where guest-physical and host
/// addresses agree modulo 2 MiB, so a misaligned mapping costs the guest a nested page fault
/// per 4 KiB page it touches. minivmm therefore maps each region itself, 2 MiB aligned, and
/// hands vm-memory the address (a view that does not unmap); this type owns both, and the
/// collection holds it behind an `Arc`, so the mapping goes with the last view of it.
pub struct RamRegion {
    // Field order is drop order: the view goes before the mapping it points into.
    view: GuestRegionMmap,
    mapping: AlignedMapping,
}

impl std::fmt::Debug for RamRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamRegion")
            .field("start", &self.view.start_addr())
            .field("len", &self.view.len())
            .finish_non_exhaustive()
    }
}

impl GuestMemoryRegion for RamRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.view.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.view.start_addr()
    }

    fn bitmap(&self) -> BS<'_, ()> {
        self.view.bitmap()
    }

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        self.view.get_host_address(addr)
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, BS<'_, ()>>> {
        self.view.get_slice(offset, count)
    }
}

impl GuestMemoryRegionBytes for RamRegion {}

impl RamRegion {
    /// `len` bytes of fresh, zeroed RAM at guest address `start`, from huge pages of
    /// `huge` when given.
    fn new(start: u64, len: u64, huge: Option<HugePageSize>) -> Result<RamRegion, String> {
        let len = usize::try_from(len).map_err(|e| e.to_string())?;
        let mapping = match huge {
            None => AlignedMapping::new(len),
            Some(size) => AlignedMapping::huge(len, size),
        }
        .map_err(|e| e.to_string())?;
        // SAFETY: `mapping` is a live mapping of exactly `len` bytes; the region built on it
        // is stored beside it in the RamRegion and dropped first.
        let region =
            unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(mapping.addr as *mut u8) }
                .build()
                .map_err(|e| e.to_string())?;
        let view = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or("the region wraps the address space")?;
        Ok(RamRegion { view, mapping })
    }

    /// Give the region's pages back to the host, so that it reads as zeros again: dropped
    /// from an anonymous mapping (`MADV_DONTNEED`), punched out of a hugetlb memfd (its
    /// mapping is shared, where `MADV_DONTNEED` would keep the contents). False when that
    /// failed and the caller must write zeros.
    pub fn discard(&self) -> bool {
        let len = self.mapping.len;
        let done = match &self.mapping.memfd {
            // SAFETY: fallocate on the memfd this region owns; punching a hole (keeping the
            // size) frees its pages, and the shared mapping then reads zeros.
            Some(fd) => unsafe {
                libc::fallocate(
                    fd.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    len as libc::off_t,
                )
            },
            // SAFETY: the usable part of this region's private anonymous mapping; dropping
            // its pages only makes them read as zeros again.
            None => unsafe {
                libc::madvise(
                    self.mapping.addr as *mut libc::c_void,
                    len,
                    libc::MADV_DONTNEED,
                )
            },
        };
        done == 0
    }

    /// Backed by huge pages from the host's pool.
    pub fn is_hugetlb(&self) -> bool {
        self.mapping.memfd.is_some()
    }

    /// The page size its host mapping is made of (what work on it is split by).
    pub fn page_size(&self) -> usize {
        self.mapping.page_size
    }
}

/// An anonymous, private, read-write mapping whose start is 2 MiB aligned, inside a
/// reservation 2 MiB larger whose inaccessible ends stay mapped: had they been unmapped, the
/// aligned 2 MiB hole left behind would be just right for the next thread stack to land in
/// and be backed by a whole huge page. The reservation is unmapped on drop.
struct AlignedMapping {
    /// Start of the reservation (integers, so that guest RAM can move between threads).
    reserved: usize,
    reserved_len: usize,
    /// Start of the usable, aligned part, and its length.
    addr: usize,
    len: usize,
    /// The hugetlb memfd behind a huge-page mapping (`None`: anonymous memory).
    memfd: Option<OwnedFd>,
    /// Its page size: a huge page's, or 2 MiB for anonymous memory (THP's).
    page_size: usize,
}

impl AlignedMapping {
    fn new(len: usize) -> std::io::Result<AlignedMapping> {
        let reserved_len = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; nothing else
        // refers to it yet.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mapping = AlignedMapping {
            reserved: raw as usize,
            reserved_len,
            addr: (raw as usize).next_multiple_of(HUGE_PAGE),
            len,
            memfd: None,
            page_size: HUGE_PAGE,
        };
        // SAFETY: the aligned range lies inside the reservation made above, which only this
        // value refers to; on failure `mapping`'s drop unmaps the reservation.
        let rc = unsafe {
            libc::mprotect(
                mapping.addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        mapping.request_huge_pages(len);
        Ok(mapping)
    }

    /// `len` bytes of huge pages of `size`: a hugetlb memfd of that length, mapped shared
    /// (the kernel aligns it to the page size). The pages are reserved from the pool when
    /// mapped, so a pool that is too small fails here, not with SIGBUS in the guest.
    fn huge(len: usize, size: HugePageSize) -> std::io::Result<AlignedMapping> {
        let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | size.memfd_flag();
        // SAFETY: memfd_create with a static name; the descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"minivmm-guest-ram".as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let file_len = libc::off_t::try_from(len)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        // SAFETY: ftruncate on the memfd owned here.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), file_len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole memfd at an address the kernel picks;
        // nothing else refers to it yet.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                memfd.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(AlignedMapping {
            reserved: raw as usize,
            reserved_len: len,
            addr: raw as usize,
            len,
            memfd: Some(memfd),
            page_size: size.bytes() as usize,
        })
    }

    /// Ask for transparent huge pages on the usable part: fewer host page faults while
    /// loading, and 2 MiB stage-2 mappings, so the guest takes far fewer nested page faults
    /// (the costliest exits under nested virtualization). Only advice: without THP the
    /// guest runs as before.
    fn request_huge_pages(&self, len: usize) {
        // SAFETY: madvise on the usable part of the reservation this value owns;
        // MADV_HUGEPAGE changes no contents.
        let rc = unsafe { libc::madvise(self.addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            log::debug!(
                "no huge pages for guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the reservation was made by `new` and is owned by this value alone; the
        // vm-memory view into it is dropped first (see `RamRegion`), and every clone of the
        // collection shares that RamRegion, so no view outlives it.
        unsafe { libc::munmap(self.reserved as *mut libc::c_void, self.reserved_len) };
    }
}

/// Lay out and map `size` bytes of guest RAM, from the host's pool of `huge` pages when
/// given.
pub fn create(
    size: u64,
    address_bits: u8,
    huge: Option<HugePageSize>,
) -> Result<(GuestLayout, GuestRam), Error> {
    if let Some(host) = host_ram() {
        if size > host {
            return Err(Error::MoreThanHost(size >> 20, host >> 20));
        }
    }
    let layout = GuestLayout::new(size, address_bits).map_err(|e| Error::Layout(size >> 20, e))?;
    if let Some(page) = huge {
        hugepages::check_pool(std::path::Path::new("/sys"), size, page)
            .map_err(Error::HugePages)?;
        // Every region must be whole pages too (the low one ends at the 32-bit hole).
        if let Some(odd) = layout
            .ram
            .iter()
            .find(|r| !r.size.is_multiple_of(page.bytes()))
        {
            return Err(Error::HugePages(format!(
                "guest RAM's region at {:#x} ({} MiB) is not a whole number of {page} huge \
                 pages; use a --memory that is",
                odd.start,
                odd.size >> 20
            )));
        }
    }
    let ranges: Vec<(u64, u64)> = layout.ram.iter().map(|r| (r.start, r.size)).collect();
    let ram = regions(&ranges, huge).map_err(|e| match huge {
        Some(page) => Error::HugePages(format!(
            "cannot map {} MiB of {page} huge pages ({e}): another process took them meanwhile, \
             or this host's pool is per NUMA node; reserve more",
            size >> 20
        )),
        None => Error::Map(size >> 20, e),
    })?;
    Ok((layout, ram))
}

/// Guest RAM of `(start, len)` ranges, each in its own 2 MiB-aligned host mapping.
pub fn from_ranges(ranges: &[(u64, u64)]) -> Result<GuestMemory, String> {
    regions(ranges, None)
}

fn regions(ranges: &[(u64, u64)], huge: Option<HugePageSize>) -> Result<GuestMemory, String> {
    let regions = ranges
        .iter()
        .map(|&(start, len)| RamRegion::new(start, len, huge))
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemory::from_regions(regions).map_err(|e| e.to_string())
}

/// Guest RAM at least this large is prefaulted on more than one thread.
const PREFAULT_CHUNK: u64 = 256 << 20;
/// Most prefaulting threads.
const PREFAULT_THREADS: usize = 8;
/// Most bytes one `MADV_POPULATE_WRITE` call faults in (or one page, when pages are larger).
/// The call holds the process's mmap lock for reading throughout, and a thread that maps
/// anything meanwhile (the next prefault thread's stack, the kernel loader's buffers) waits
/// for it: one call over a whole share would run the prefault threads one after another and
/// stall the loader until all are done.
const PREFAULT_STEP: usize = 8 << 20;

/// Fault every page of guest RAM in, writable, split across threads (one per
/// [`PREFAULT_CHUNK`], at most `cpus` and [`PREFAULT_THREADS`]), before VFIO pins
/// it: pinning pages that are there is only bookkeeping, while pinning absent ones
/// allocates and zeroes each on the one thread that holds the container's lock. Contents
/// are kept (`MADV_POPULATE_WRITE` only faults), so it may run while the kernel is being
/// written into guest RAM. Returns the threads used; `Err` when the kernel cannot populate
/// (before Linux 5.14), in which case VFIO faults the pages itself as before, and
/// `Interrupted` once `abandon` is set (checked between calls).
pub fn prefault(memory: &GuestMemory, cpus: usize, abandon: &AtomicBool) -> std::io::Result<usize> {
    let total: u64 = memory.iter().map(|r| r.len()).sum();
    let threads = (total / PREFAULT_CHUNK).clamp(1, cpus.min(PREFAULT_THREADS) as u64) as usize;
    let regions: Vec<_> = memory
        .iter()
        .filter_map(|region| {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .ok()?;
            Some((host as usize, region.len() as usize, region.page_size()))
        })
        .collect();
    let plan = prefault_plan(&regions, threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = plan
            .into_iter()
            .map(|calls| {
                scope.spawn(move || -> std::io::Result<()> {
                    for (addr, len) in calls {
                        if abandon.load(std::sync::atomic::Ordering::Relaxed) {
                            return Err(std::io::ErrorKind::Interrupted.into());
                        }
                        // SAFETY: `addr..addr + len` lies inside a mapping of guest RAM that
                        // `memory` keeps alive for this scope; populating changes no contents.
                        let rc = unsafe {
                            libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE)
                        };
                        if rc != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
    })?;
    Ok(threads)
}

/// The `madvise` calls of each prefault thread for `regions` (host address, length, page
/// size): each thread takes an equal share of every region in whole pages, cut into calls
/// of at most [`PREFAULT_STEP`] bytes (one page when pages are larger).
fn prefault_plan(regions: &[(usize, usize, usize)], threads: usize) -> Vec<Vec<(usize, usize)>> {
    let mut plan: Vec<Vec<(usize, usize)>> = vec![Vec::new(); threads];
    for &(host, len, page) in regions {
        let share = len.div_ceil(threads).next_multiple_of(page);
        let step = PREFAULT_STEP.next_multiple_of(page);
        for (i, calls) in plan.iter_mut().enumerate() {
            let end = ((i + 1) * share).min(len);
            let mut start = (i * share).min(len);
            while start < end {
                let this = step.min(end - start);
                calls.push((host + start, this));
                start += this;
            }
        }
    }
    plan
}

/// Register every RAM region as KVM memory slots, slots 0.. in order, leaving out the guest
/// ranges in `holes` (a passed-through VGA's legacy window, which must trap): a region a
/// hole cuts becomes two slots over the same host mapping. Returns the next free slot.
pub fn register_slots(vm: &VmFd, memory: &GuestMemory, holes: &[Range<u64>]) -> Result<u32, Error> {
    let mut slot = 0;
    for region in memory.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Map(region.len() >> 20, e.to_string()))?;
        let start = region.start_addr().0;
        for piece in without_holes(start..start + region.len(), holes) {
            let mapping = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: piece.start,
                memory_size: piece.end - piece.start,
                userspace_addr: host as u64 + (piece.start - start),
            };
            // SAFETY: the piece lies inside the mapping that belongs to `memory`, which the
            // VM keeps alive for as long as the VM exists, and no other slot covers the same
            // guest range.
            unsafe { vm.set_user_memory_region(mapping) }.map_err(|e| Error::Slot(slot, e))?;
            slot += 1;
        }
    }
    Ok(slot)
}

/// `range` less every range of `holes` (page-aligned, as memory slots must be), in order.
fn without_holes(range: Range<u64>, holes: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut holes: Vec<&Range<u64>> = holes
        .iter()
        .filter(|h| h.start < range.end && range.start < h.end)
        .collect();
    holes.sort_by_key(|h| h.start);
    let mut pieces = Vec::new();
    let mut at = range.start;
    for hole in holes {
        if hole.start > at {
            pieces.push(at..hole.start);
        }
        at = at.max(hole.end);
    }
    if at < range.end {
        pieces.push(at..range.end);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_cuts_a_region_into_the_slots_around_it() {
        let vga = 0xa_0000..0xc_0000;
        assert_eq!(
            without_holes(0..0x1000_0000, std::slice::from_ref(&vga)),
            vec![0..0xa_0000, 0xc_0000..0x1000_0000]
        );
        assert_eq!(
            without_holes(0x1_0000_0000..0x2_0000_0000, std::slice::from_ref(&vga)),
            vec![0x1_0000_0000..0x2_0000_0000],
            "a hole elsewhere leaves the region whole"
        );
        assert_eq!(without_holes(0..0x1000, &[]), vec![0..0x1000]);
        assert_eq!(
            without_holes(0xb_0000..0xb_1000, std::slice::from_ref(&vga)),
            Vec::<Range<u64>>::new()
        );
    }

    fn host_address(ram: &GuestRam, index: usize) -> (u64, usize) {
        let region = ram.iter().nth(index).expect("region");
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .expect("host address");
        (region.start_addr().0, host as usize)
    }

    #[test]
    fn host_mappings_agree_with_guest_addresses_modulo_2mib() {
        for size in [2 << 20, 255 << 20, 256 << 20] {
            let (layout, ram) = create(size, 46, None).expect("guest RAM");
            assert_eq!(ram.iter().count(), layout.ram.len());
            for index in 0..layout.ram.len() {
                let (guest, host) = host_address(&ram, index);
                assert_eq!(
                    (host as u64).wrapping_sub(guest) % HUGE_PAGE as u64,
                    0,
                    "{size:#x}: region {index} at {guest:#x} mapped at {host:#x}"
                );
            }
        }
    }

    #[test]
    fn guest_ram_is_usable_and_unmapped_on_drop() {
        let (_, ram) = create(4 << 20, 46, None).expect("guest RAM");
        ram.write_obj(0x1234_5678u32, GuestAddress((4 << 20) - 4))
            .expect("last word");
        assert_eq!(
            ram.read_obj::<u32>(GuestAddress((4 << 20) - 4)).ok(),
            Some(0x1234_5678)
        );
        let (_, host) = host_address(&ram, 0);
        // A clone (vm-memory's collections are Clone) keeps the memory mapped and usable.
        let clone = ram.clone();
        drop(ram);
        assert_eq!(
            clone.read_obj::<u32>(GuestAddress((4 << 20) - 4)).ok(),
            Some(0x1234_5678),
            "a clone outlived the mapping"
        );
        drop(clone);
        let mut resident = [0u8; 1];
        // SAFETY: mincore only reports on the range; on an unmapped range it fails ENOMEM.
        let rc = unsafe { libc::mincore(host as *mut libc::c_void, 4096, resident.as_mut_ptr()) };
        assert_eq!(rc, -1, "guest RAM is still mapped after drop");
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOMEM)
        );
    }
}

#[cfg(test)]
mod prefault_tests {
    use super::*;

    #[test]
    fn each_thread_faults_its_share_in_bounded_calls_that_cover_every_region_once() {
        const MIB: usize = 1 << 20;
        let regions = [
            (0x7f00_0000_0000, 3072 * MIB, 2 * MIB),
            (0x7f10_0000_0000, 70 * MIB, 4096),
            (0x7f20_0000_0000, 2048 * MIB, 1024 * MIB),
        ];
        let plan = prefault_plan(&regions, 3);
        assert_eq!(plan.len(), 3);
        let mut calls: Vec<_> = plan.iter().flatten().copied().collect();
        calls.sort();
        for &(host, len, page) in &regions {
            let mine: Vec<_> = calls
                .iter()
                .filter(|(a, _)| (host..host + len).contains(a))
                .collect();
            // Contiguous, no gaps or overlaps, from the region's start to its end.
            let mut at = host;
            for &&(addr, n) in &mine {
                assert_eq!(addr, at);
                assert_eq!(addr % page, 0, "calls start on a page");
                assert!(n <= PREFAULT_STEP.max(page), "{n} bytes in one call");
                at += n;
            }
            assert_eq!(at, host + len);
        }
        // The 3 GiB region is shared out: every thread has calls in it.
        assert!(plan
            .iter()
            .all(|t| t.iter().any(|(a, _)| *a < 0x7f10_0000_0000)));
    }

    #[test]
    fn an_abandoned_prefault_stops_before_faulting_anything() {
        let len = 64u64 << 20;
        let memory = from_ranges(&[(0, len)]).unwrap();
        let host = memory.get_host_address(GuestAddress(0)).unwrap();
        match prefault(&memory, 4, &AtomicBool::new(true)) {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Interrupted),
            Ok(_) => panic!("an abandoned prefault reported success"),
        }
        assert!(resident(host, len as usize) < (len as usize) / 4096);
    }

    /// Pages of `len` bytes at `addr` the kernel has resident (mincore).
    fn resident(addr: *mut u8, len: usize) -> usize {
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: `addr..addr + len` is a live mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 != 0).count()
    }

    #[test]
    fn prefaulting_makes_every_page_resident_and_keeps_contents() {
        let len = 64u64 << 20;
        let memory = from_ranges(&[(0, len), (1 << 32, len)]).unwrap();
        memory
            .write_obj(0x1234_5678u32, GuestAddress(0x10_0000))
            .unwrap();
        memory
            .write_obj(0x9abc_def0u32, GuestAddress((1 << 32) + len - 4))
            .unwrap();
        let host = |at: u64| memory.get_host_address(GuestAddress(at)).unwrap();
        assert!(resident(host(0), len as usize) < (len as usize) / 4096);
        match prefault(&memory, 4, &AtomicBool::new(false)) {
            Ok(threads) => assert!(threads >= 1),
            // A kernel before 5.14 cannot populate: nothing to check.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("{e}"),
        }
        for start in [0, 1 << 32] {
            assert_eq!(resident(host(start), len as usize), (len as usize) / 4096);
        }
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
        assert_eq!(
            memory
                .read_obj::<u32>(GuestAddress((1 << 32) + len - 4))
                .unwrap(),
            0x9abc_def0
        );
    }
}
