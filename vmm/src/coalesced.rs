//! Coalesced port writes: writes KVM queues in a ring instead of exiting to userspace.
//!
//! A write may be queued when nothing the guest can observe depends on handling it at once:
//! the guest only sees its effect through a later access that does exit, and every exit
//! drains the ring first, in order. Two writes qualify:
//! - the PCI configuration address latch (0xCF8): it only matters to the next 0xCFC access;
//! - a UART's transmit register while its transmit-empty interrupt is off: the guest polls
//!   LSR before each byte, which is how Linux's console writes (on COM1 the LSR read is an
//!   exit; on the console UART it is a memory read, and the queued bytes wait for the next
//!   exit of any kind, at the latest the IER write that ends each console message).
//!
//! Under nested virtualization an exit costs tens of microseconds, so this halves the cost
//! of PCI scans and of boot messages on the serial console.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_coalesced_mmio, KVM_COALESCED_MMIO_PAGE_OFFSET};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use minivmm_firmware::layout;

use crate::vcpu::Buses;

/// Size of the PCI configuration address register.
const CONFIG_ADDRESS_LEN: u32 = 4;
/// A UART's transmit holding register is one byte at its base address.
const THR_LEN: u32 = 1;

/// A UART whose transmit register is queued while its guest driver polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxZone {
    /// COM1, on port 0x3f8.
    Com1,
    /// The console UART, on MMIO (see `console_uart`).
    ConsoleUart,
}

impl TxZone {
    fn address(self) -> IoEventAddress {
        match self {
            TxZone::Com1 => IoEventAddress::Pio(u64::from(layout::COM1_PORT)),
            TxZone::ConsoleUart => IoEventAddress::Mmio(layout::CONSOLE_UART_START),
        }
    }
}

/// The ring page KVM shares with userspace.
struct Ring {
    page: NonNull<u8>,
    page_size: usize,
}

// SAFETY: the page is shared memory owned by this struct; every access goes through
// `CoalescedIo::drain`, which holds the lock.
unsafe impl Send for Ring {}

impl Ring {
    /// Map the ring through any vCPU descriptor (the ring belongs to the VM).
    fn map(vcpu: &VcpuFd) -> std::io::Result<Ring> {
        // SAFETY: sysconf has no memory effects.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("no page size"))?;
        let offset = KVM_COALESCED_MMIO_PAGE_OFFSET as usize * page_size;
        // SAFETY: a new shared mapping of one page of the vCPU descriptor at the offset KVM
        // documents for the coalesced ring; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let page = NonNull::new(addr.cast()).ok_or_else(|| std::io::Error::other("null map"))?;
        Ok(Ring { page, page_size })
    }

    fn capacity(&self) -> u32 {
        ((self.page_size - 8) / std::mem::size_of::<kvm_coalesced_mmio>()) as u32
    }

    /// Take the oldest entry, if any.
    fn pop(&mut self) -> Option<kvm_coalesced_mmio> {
        let base = self.page.as_ptr();
        let first_ptr = base.cast::<u32>();
        // SAFETY: the page starts with the ring header {first: u32, last: u32}.
        let (first, last) = unsafe {
            (
                std::ptr::read_volatile(first_ptr),
                std::ptr::read_volatile(first_ptr.add(1)),
            )
        };
        if first == last || first >= self.capacity() {
            return None;
        }
        // KVM writes the entry before it publishes `last`.
        fence(Ordering::Acquire);
        // SAFETY: `first` is below the capacity, so the entry lies inside the page.
        let entry = unsafe {
            std::ptr::read_volatile(base.add(8).cast::<kvm_coalesced_mmio>().add(first as usize))
        };
        fence(Ordering::Release);
        // SAFETY: as above; userspace owns `first`.
        unsafe { std::ptr::write_volatile(first_ptr, (first + 1) % self.capacity()) };
        Some(entry)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `map` with this size and is not used after.
        unsafe { libc::munmap(self.page.as_ptr().cast(), self.page_size) };
    }
}

/// The VM's coalesced writes: which zones are on, and the ring they land in.
pub struct CoalescedIo {
    vm: Arc<VmFd>,
    ring: Mutex<Ring>,
    /// The transmit zones registered now.
    tx_on: Mutex<Vec<TxZone>>,
}

impl std::fmt::Debug for CoalescedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescedIo").finish_non_exhaustive()
    }
}

impl CoalescedIo {
    /// Set up the ring and the always-on zones; `None` when KVM cannot coalesce port I/O.
    pub fn new(kvm: &Kvm, vm: Arc<VmFd>, vcpu: &VcpuFd) -> Option<CoalescedIo> {
        if !kvm.check_extension(Cap::CoalescedPio) {
            log::info!("KVM cannot coalesce port writes; every write exits");
            return None;
        }
        let ring = Ring::map(vcpu)
            .map_err(|e| log::warn!("cannot map the coalesced I/O ring: {e}"))
            .ok()?;
        let address = IoEventAddress::Pio(u64::from(layout::PCI_CONFIG_ADDRESS_PORT));
        vm.register_coalesced_mmio(address, CONFIG_ADDRESS_LEN)
            .map_err(|e| log::warn!("cannot coalesce the PCI address latch: {e}"))
            .ok()?;
        Some(CoalescedIo {
            vm,
            ring: Mutex::new(ring),
            tx_on: Mutex::new(Vec::new()),
        })
    }

    /// Replay every queued write, oldest first. Call before handling any exit.
    pub fn drain(&self, buses: &Buses) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = ring.pop() {
            let len = (entry.len as usize).min(entry.data.len());
            let data = entry.data.get(..len).unwrap_or_default();
            // SAFETY: `pio` is the active member for zones registered as port I/O, and
            // both members are plain integers.
            let is_pio = unsafe { entry.__bindgen_anon_1.pio } != 0;
            let bus = if is_pio { &buses.pio } else { &buses.mmio };
            if bus.write(entry.phys_addr, data).is_err() {
                log::debug!("coalesced write to {:#x} has no device", entry.phys_addr);
            }
        }
    }

    /// Queue `zone`'s transmit writes while its guest polls (`true`), exit on them otherwise.
    pub fn set_tx_polled(&self, zone: TxZone, polled: bool) {
        let mut on = self.tx_on.lock().unwrap_or_else(|e| e.into_inner());
        if on.contains(&zone) == polled {
            return;
        }
        let result = if polled {
            self.vm.register_coalesced_mmio(zone.address(), THR_LEN)
        } else {
            self.vm.unregister_coalesced_mmio(zone.address(), THR_LEN)
        };
        match result {
            Ok(()) if polled => on.push(zone),
            Ok(()) => on.retain(|&z| z != zone),
            Err(e) => log::warn!("cannot change write coalescing of {zone:?}: {e}"),
        }
    }
}
