//! Guest RAM: anonymous mappings laid out by [`GuestLayout`], registered as KVM memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use minivmm_firmware::layout::GuestLayout;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest RAM as minivmm maps it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

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
    #[error("--memory {0} MiB cannot be laid out")]
    Layout(u64),
}

/// Total host RAM in bytes, from sysinfo(2).
fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo only writes into the struct we pass; zeroed is a valid initial value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    let rc = unsafe { libc::sysinfo(&mut info) };
    (rc == 0).then(|| info.totalram * u64::from(info.mem_unit))
}

/// Lay out and map `size` bytes of guest RAM.
pub fn create(size: u64) -> Result<(GuestLayout, GuestMemory), Error> {
    if let Some(host) = host_ram() {
        if size > host {
            return Err(Error::MoreThanHost(size >> 20, host >> 20));
        }
    }
    let layout = GuestLayout::new(size).ok_or(Error::Layout(size >> 20))?;
    let ranges: Vec<(GuestAddress, usize)> = layout
        .ram
        .iter()
        .map(|r| (GuestAddress(r.start), r.size as usize))
        .collect();
    let memory =
        GuestMemory::from_ranges(&ranges).map_err(|e| Error::Map(size >> 20, e.to_string()))?;
    request_huge_pages(&memory);
    Ok((layout, memory))
}

/// Ask for transparent huge pages on guest RAM: fewer host page faults while loading, and
/// 2 MiB stage-2 mappings, so the guest takes far fewer nested page faults (the costliest
/// exits under nested virtualization). Only advice: without THP the guest runs as before.
fn request_huge_pages(memory: &GuestMemory) {
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        // SAFETY: madvise on a mapping `memory` owns; MADV_HUGEPAGE changes no contents.
        let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            log::debug!(
                "no huge pages for guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Register every RAM region as a KVM memory slot, slots 0.. in order.
pub fn register_slots(vm: &VmFd, memory: &GuestMemory) -> Result<u32, Error> {
    let mut slot = 0;
    for region in memory.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| Error::Map(region.len() >> 20, e.to_string()))?;
        let mapping = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping belongs to `memory`, which the VM keeps alive for as long as
        // the VM exists, and no other slot covers the same guest range.
        unsafe { vm.set_user_memory_region(mapping) }.map_err(|e| Error::Slot(slot, e))?;
        slot += 1;
    }
    Ok(slot)
}
