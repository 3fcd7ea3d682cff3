//! The console UART: a 16550 on the MMIO bus whose idle registers the guest reads from a
//! read-only memory slot, so that polling the line status before each byte never exits.
//!
//! Linux's serial console writes a byte by reading LSR until the transmitter is empty and
//! then writing THR. On COM1 each read is a port-I/O exit to user space (about 18,000 per
//! boot). Here, while reading has no side effect (see [`SerialPort::read_view`]), the
//! registers' current values sit in a page mapped into the guest with `KVM_MEM_READONLY`:
//! reads are plain memory reads, writes still exit (KVM turns a write to a read-only slot
//! into MMIO), and THR writes are queued in KVM's coalesced ring while the guest polls.
//! When a read would change state (input waiting, an interrupt enabled, the divisor latch
//! open, loopback), the slot is removed and every access reaches the UART again.

use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use minivmm_devices::bus::{BusDevice, Effect};
use minivmm_devices::serial::{RegisterView, SerialPort, PORT_COUNT};
use minivmm_firmware::layout;
use vm_memory::mmap::MmapRegion;

use crate::coalesced::{CoalescedIo, TxZone};

/// What reads beyond the eight registers return (and what the page holds there).
const UNDECODED: u8 = 0xff;

/// The page behind the read-only slot, and whether KVM has it mapped.
struct ReadWindow {
    page: MmapRegion,
    slot: u32,
    mapped: bool,
    shown: Option<RegisterView>,
}

impl ReadWindow {
    fn new(slot: u32) -> Option<ReadWindow> {
        let page = MmapRegion::<()>::new(layout::CONSOLE_UART_SIZE as usize)
            .map_err(|e| log::warn!("console UART: no page for its read window: {e}"))
            .ok()?;
        // SAFETY: the mapping is CONSOLE_UART_SIZE bytes long and owned by `page`.
        unsafe { std::ptr::write_bytes(page.as_ptr(), UNDECODED, page.size()) };
        Some(ReadWindow {
            page,
            slot,
            mapped: false,
            shown: None,
        })
    }

    fn region(&self, size: u64) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: self.slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: layout::CONSOLE_UART_START,
            memory_size: size,
            userspace_addr: self.page.as_ptr() as u64,
        }
    }

    /// Serve guest reads from `view`, or from the UART itself when `None`.
    fn show(&mut self, vm: &VmFd, view: Option<RegisterView>) -> Result<(), kvm_ioctls::Error> {
        if let Some(view) = view {
            if self.shown != Some(view) {
                for (offset, &value) in view.iter().enumerate() {
                    // SAFETY: offset < PORT_COUNT, inside the page; volatile because a
                    // vCPU may be reading the page through its slot.
                    unsafe { self.page.as_ptr().add(offset).write_volatile(value) };
                }
                self.shown = Some(view);
            }
            if !self.mapped {
                // SAFETY: the page lives as long as `self`, which removes the slot before
                // it goes (Drop); no other slot covers the console UART's page.
                unsafe { vm.set_user_memory_region(self.region(layout::CONSOLE_UART_SIZE)) }?;
                self.mapped = true;
            }
        } else if self.mapped {
            // SAFETY: a zero size deletes the slot; the page stays valid meanwhile.
            unsafe { vm.set_user_memory_region(self.region(0)) }?;
            self.mapped = false;
        }
        Ok(())
    }
}

/// The console UART on the MMIO bus at [`layout::CONSOLE_UART_START`].
pub struct ConsoleUart {
    port: SerialPort,
    vm: Arc<VmFd>,
    window: Option<ReadWindow>,
    /// KVM's coalesced ring, once it exists: THR writes may then be queued.
    coalesced: Option<Arc<CoalescedIo>>,
    /// The guest polls the line status (no transmit interrupt, as at reset): queue THR
    /// writes.
    polled: bool,
}

impl std::fmt::Debug for ConsoleUart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUart")
            .field("window", &self.window.as_ref().map(|w| w.mapped))
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

impl ConsoleUart {
    /// The UART `port`, its read window in memory slot `slot` when KVM has read-only slots.
    pub fn new(port: SerialPort, vm: Arc<VmFd>, slot: u32, readonly_slots: bool) -> Self {
        if !readonly_slots {
            log::info!("KVM has no read-only memory slots; console UART reads all exit");
        }
        let mut uart = ConsoleUart {
            port,
            vm,
            window: readonly_slots.then(|| ReadWindow::new(slot)).flatten(),
            coalesced: None,
            polled: true,
        };
        uart.sync_window();
        uart
    }

    /// KVM's coalesced ring is set up and drained before each exit: from now on THR
    /// writes are queued there while the guest polls.
    pub fn allow_queued_writes(&mut self, coalesced: Arc<CoalescedIo>) {
        coalesced.set_tx_polled(TxZone::ConsoleUart, self.polled);
        self.coalesced = Some(coalesced);
    }

    /// Whether guest reads are served from memory right now (for tests and traces).
    pub fn reads_from_memory(&self) -> bool {
        self.window.as_ref().is_some_and(|w| w.mapped)
    }

    /// Queue host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.port.enqueue_input(bytes);
        self.sync_window();
        n
    }

    /// A machine reset: the UART as at power-on, its THR writes queued again (polled).
    pub fn reset(&mut self) {
        if let Effect::SerialTxPolled(polled) = self.port.reset() {
            self.polled = polled;
            if let Some(coalesced) = &self.coalesced {
                coalesced.set_tx_polled(TxZone::ConsoleUart, polled);
            }
        }
        self.sync_window();
    }

    fn sync_window(&mut self) {
        let view = self.port.read_view();
        let Some(window) = self.window.as_mut() else {
            return;
        };
        if let Err(e) = window.show(&self.vm, view) {
            log::warn!("console UART: read window off ({e}); every access exits now");
            if !window.mapped {
                self.window = None;
            }
        }
    }
}

impl BusDevice for ConsoleUart {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= PORT_COUNT {
            data.fill(UNDECODED);
            return;
        }
        self.port.read(offset, data);
        self.sync_window();
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        if offset >= PORT_COUNT {
            return None;
        }
        let effect = self.port.write(offset, data);
        self.sync_window();
        match effect {
            Some(Effect::SerialTxPolled(polled)) => {
                self.polled = polled;
                if let Some(coalesced) = &self.coalesced {
                    coalesced.set_tx_polled(TxZone::ConsoleUart, polled);
                }
                None
            }
            other => other,
        }
    }
}

impl Drop for ConsoleUart {
    fn drop(&mut self) {
        if let Some(window) = self.window.as_mut() {
            if let Err(e) = window.show(&self.vm, None) {
                log::warn!("console UART: cannot remove its read window: {e}");
            }
        }
    }
}

/// Whether the guest command line's console (its last `console=`) is the console UART:
/// `console=uart8250,mmio,ADDR` or `uart,mmio,ADDR` at its address, or `ttyS1`, the line
/// Linux gives it. Host input goes to that UART; otherwise to COM1.
pub fn is_the_console(cmdline: &str) -> bool {
    let Some(console) = cmdline
        .split_ascii_whitespace()
        .filter_map(|word| word.strip_prefix("console="))
        .next_back()
    else {
        return false;
    };
    if console == "ttyS1" || console.starts_with("ttyS1,") {
        return true;
    }
    let mut fields = console.split(',');
    let (Some(name), Some(iotype), Some(address)) = (fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let address = address
        .strip_prefix("0x")
        .or_else(|| address.strip_prefix("0X"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    matches!(name, "uart8250" | "uart")
        && iotype == "mmio"
        && address == Some(layout::CONSOLE_UART_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_CMDLINE;

    #[test]
    fn the_default_command_line_names_the_console_uart() {
        assert!(is_the_console(DEFAULT_CMDLINE));
        assert!(DEFAULT_CMDLINE.contains(&format!("{:#x}", layout::CONSOLE_UART_START)));
    }

    #[test]
    fn the_last_console_decides() {
        assert!(is_the_console("console=uart8250,mmio,0xfe000000,115200n8"));
        assert!(is_the_console("console=uart,mmio,0xFE000000"));
        assert!(is_the_console("console=ttyS0 console=ttyS1"));
        assert!(!is_the_console("console=ttyS1 console=ttyS0"));
        assert!(!is_the_console("console=uart8250,io,0x3f8"));
        assert!(!is_the_console("console=uart8250,mmio32,0xfe000000"));
        assert!(!is_the_console("console=uart8250,mmio,0xfe001000"));
        assert!(!is_the_console("root=/dev/vda"));
        assert!(!is_the_console("console=uart8250,mmio"));
    }
}
