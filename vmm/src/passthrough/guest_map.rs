//! The guest's physical map as passthrough changes it at run time: memory slots for BARs,
//! traps on the buses, and the GSI routing table. Shared by every passed-through function.

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::gsi::GsiRouter;
use crate::vcpu::Buses;

/// Guest ranges no BAR may cover, besides RAM: ECAM, the IOAPIC and LAPIC pages.
const RESERVED: [(u64, u64, &str); 2] = [
    (
        minivmm_firmware::layout::PCI_ECAM_START,
        minivmm_firmware::layout::PCI_ECAM_SIZE,
        "the PCI configuration window (ECAM)",
    ),
    (0xfec0_0000, 0x0040_0000, "the IOAPIC/LAPIC"),
];

fn check_free(ram: &[Range<u64>], base: u64, size: u64) -> Result<(), String> {
    let end = base
        .checked_add(size)
        .ok_or_else(|| format!("{base:#x}+{size:#x} wraps around"))?;
    let overlaps = |r: &Range<u64>| base < r.end && r.start < end;
    if ram.iter().any(overlaps) {
        return Err(format!("{base:#x}+{size:#x} overlaps guest RAM"));
    }
    for (start, len, what) in RESERVED {
        if overlaps(&(start..start + len)) {
            return Err(format!("{base:#x}+{size:#x} overlaps {what}"));
        }
    }
    Ok(())
}

/// KVM memory slots above the RAM slots, reused when freed.
#[derive(Debug)]
struct SlotPool {
    next: u32,
    free: Vec<u32>,
    limit: u32,
}

/// The VM's map, as passthrough edits it.
#[derive(Debug)]
pub struct GuestMap {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Where traps go. Weak: the buses reach the PCI root, the root the functions, and the
    /// functions this map, so a strong reference would keep all of it (and the VFIO device
    /// files) alive after the VM is dropped.
    buses: Weak<Buses>,
    router: Arc<Mutex<GsiRouter>>,
    slots: Mutex<SlotPool>,
    ram: Vec<Range<u64>>,
}

impl GuestMap {
    /// The VM's buses, while the VM exists.
    pub fn buses(&self) -> Option<Arc<Buses>> {
        self.buses.upgrade()
    }

    /// The map of a VM whose RAM is `ram` in slots `0..first_free_slot`, its MSI routes in
    /// the VM's `router`.
    pub fn new(
        vm: Arc<VmFd>,
        buses: Arc<Buses>,
        router: Arc<Mutex<GsiRouter>>,
        ram: Vec<Range<u64>>,
        first_free_slot: u32,
        slot_limit: u32,
    ) -> Self {
        GuestMap {
            router,
            vm,
            buses: Arc::downgrade(&buses),
            slots: Mutex::new(SlotPool {
                next: first_free_slot,
                free: Vec::new(),
                limit: slot_limit,
            }),
            ram,
        }
    }

    /// The GSI router (locked).
    pub fn router(&self) -> MutexGuard<'_, GsiRouter> {
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuse a BAR at `base..base + size` that would cover RAM or a fixed device (other
    /// BARs and ECAM are refused by the MMIO bus, where each mapped BAR has its trap).
    pub fn check_free(&self, base: u64, size: u64) -> Result<(), String> {
        check_free(&self.ram, base, size)
    }

    /// Map `len` bytes of host memory at `host` into the guest at `guest` as a new slot.
    pub fn add_slot(&self, guest: u64, len: u64, host: u64) -> Result<u32, String> {
        let slot = {
            let mut pool = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            match pool.free.pop() {
                Some(slot) => slot,
                None if pool.next < pool.limit => {
                    pool.next += 1;
                    pool.next - 1
                }
                None => return Err("no KVM memory slot left".into()),
            }
        };
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host` is a device mapping the caller keeps until it removes the slot, and
        // `check_free` and the bus refused any overlap with RAM or another BAR.
        match unsafe { self.vm.set_user_memory_region(region) } {
            Ok(()) => Ok(slot),
            Err(e) => {
                self.free_slot(slot);
                Err(format!("KVM_SET_USER_MEMORY_REGION: {e}"))
            }
        }
    }

    /// Remove a slot added by [`Self::add_slot`].
    pub fn remove_slot(&self, slot: u32) {
        let region = kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is handed to KVM.
        match unsafe { self.vm.set_user_memory_region(region) } {
            Ok(()) => self.free_slot(slot),
            // Still in KVM's table: handing it out again would make the next BAR's region
            // collide with it, so the slot stays taken for the VM's life.
            Err(e) => log::warn!("cannot remove memory slot {slot}: {e}; it stays in use"),
        }
    }

    fn free_slot(&self, slot: u32) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_over_ram_ecam_or_the_apics_are_refused() {
        let ram = [0..0xc000_0000, 0x1_0000_0000..0x1_4000_0000];
        assert!(check_free(&ram, 0xc000_0000, 0x100_0000).is_ok());
        assert!(check_free(&ram, 0x1_4000_0000, 1 << 30).is_ok());
        let refused = |base, size| check_free(&ram, base, size).unwrap_err();
        assert!(refused(0xbfff_f000, 0x2000).contains("guest RAM"));
        assert!(refused(0x1_0000_0000, 0x1000).contains("guest RAM"));
        assert!(refused(0xe000_0000, 0x1000).contains("ECAM"));
        assert!(refused(0xfee0_0000, 0x1000).contains("APIC"));
        assert!(refused(u64::MAX - 0xfff, 0x2000).contains("wraps"));
    }
}
