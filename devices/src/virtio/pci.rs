//! The modern virtio-pci transport (virtio 1.2, section 4.1) for an emulated device: a
//! type-0 function with one 32-bit memory BAR holding the common configuration, the ISR,
//! the device configuration, the queue notification area and the MSI-X table and PBA,
//! described by vendor capabilities. No INTx and no legacy interface: a driver must use
//! MSI-X (every virtio driver in Linux since 4.x can).
//!
//! The function is both the configuration space ([`PciFunction`]) and the BAR's MMIO
//! handler ([`BusDevice`]). Queue notifications normally never reach it: the VMM turns the
//! notify address into an ioeventfd on the I/O thread's eventfd, and this handler only
//! writes that eventfd itself when a notification trapped (before the ioeventfd is there,
//! or through the PCI configuration access capability).

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::interrupts::{Interrupts, NO_VECTOR};
use crate::bus::{BusDevice, Effect};
use crate::pci::bar::{self, Bar, BarKind};
use crate::pci::config_space::{reg, ConfigSpace};
use crate::pci::msi::MsixCapability;
use crate::pci::PciFunction;

/// Red Hat's vendor ID, which virtio devices use.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern (virtio 1.x only) device IDs are this plus the virtio device type.
const MODERN_DEVICE_BASE: u16 = 0x1040;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Offsets of the structures in BAR 0.
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
/// Queue `i` is notified at `NOTIFY + i * NOTIFY_MULTIPLIER`.
pub const NOTIFY: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
/// Length of each structure (the common configuration is 0x3c bytes; one page each).
const REGION: u64 = 0x1000;
/// Bytes of the common configuration the driver may access.
const COMMON_LEN: u64 = 0x40;

/// Capabilities: MSI-X, then the virtio structures.
const CAP_MSIX: u16 = 0x40;
const CAP_COMMON: u16 = 0x4c;
const CAP_NOTIFY: u16 = 0x5c;
const CAP_ISR: u16 = 0x70;
const CAP_DEVICE: u16 = 0x80;
const CAP_PCI_CFG: u16 = 0x90;
/// PCI capability IDs.
const PCI_CAP_ID_MSIX: u32 = 0x11;
const PCI_CAP_ID_VENDOR: u32 = 0x09;
/// virtio_pci_cap cfg_type values.
const COMMON_CFG: u32 = 1;
const NOTIFY_CFG: u32 = 2;
const ISR_CFG: u32 = 3;
const DEVICE_CFG: u32 = 4;
const PCI_CFG: u32 = 5;

/// Command register bits.
const COMMAND_MEMORY: u32 = 0x2;
const COMMAND_MASTER: u32 = 0x4;
const COMMAND_INTX_DISABLE: u32 = 0x400;
/// Status register: capabilities list (bit 4 of the status, bit 20 of the dword).
const STATUS_CAP_LIST: u32 = 1 << 20;

/// What an emulated virtio device tells its transport.
pub trait VirtioDevice: Send + Sync {
    /// The virtio device type (2: block).
    fn device_type(&self) -> u16;
    /// The PCI class code (class, subclass, programming interface).
    fn class_code(&self) -> u32;
    /// The features it offers.
    fn features(&self) -> u64;
    /// Read its configuration structure.
    fn read_config(&self, offset: u64, data: &mut [u8]);
}

/// One virtqueue as the transport and the I/O thread share it.
#[derive(Debug)]
pub struct QueueState {
    /// The queue (addresses, size, ring positions).
    pub queue: Queue,
    /// The MSI-X vector the driver chose for it.
    pub vector: u16,
    /// The driver set DRIVER_OK: the I/O thread may use the queue.
    pub active: bool,
}

/// A queue behind a lock.
pub type SharedQueue = Arc<Mutex<QueueState>>;

/// Lock a queue, whoever panicked with it.
pub fn lock(queue: &SharedQueue) -> MutexGuard<'_, QueueState> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// What moves BAR 0 in the guest's address space when the guest moves it (or turns its
/// decoding on or off): the MMIO bus entry and the notify ioeventfds.
pub trait BarMover: Send {
    /// BAR 0 decoded at `from` now decodes at `to` (`None`: not decoded).
    fn moved(&self, from: Option<u64>, to: Option<u64>);
}

/// A virtio device on the modern PCI transport.
pub struct VirtioPci {
    config: ConfigSpace,
    msix: MsixCapability,
    device: Arc<dyn VirtioDevice>,
    queues: Vec<SharedQueue>,
    /// Written to wake the I/O thread for queue `i` (its ioeventfd is the same eventfd).
    kicks: Vec<EventFd>,
    interrupts: Arc<Interrupts>,
    mover: Box<dyn BarMover>,
    /// Where BAR 0 decodes now.
    decoded: Option<u64>,
    /// The state at hand-off, for a reset of the machine.
    initial: ConfigSpace,
    common: Common,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("type", &self.device.device_type())
            .field("decoded", &self.decoded)
            .finish_non_exhaustive()
    }
}

/// The common configuration's own registers (the queues' are in their `Queue`s).
#[derive(Debug, Default, Clone, Copy)]
struct Common {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    queue_select: u16,
}

impl Common {
    fn reset() -> Common {
        Common {
            config_vector: NO_VECTOR,
            ..Common::default()
        }
    }
}

/// The parts a [`VirtioPci`] is made of.
pub struct Parts {
    /// The device.
    pub device: Arc<dyn VirtioDevice>,
    /// Its queues (their maximum sizes are the `Queue`s').
    pub queues: Vec<SharedQueue>,
    /// One eventfd per queue, written on a trapped notification.
    pub kicks: Vec<EventFd>,
    /// Its MSI-X vectors.
    pub interrupts: Arc<Interrupts>,
    /// What follows BAR 0 when the guest moves it.
    pub mover: Box<dyn BarMover>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts").finish_non_exhaustive()
    }
}

/// MSI-X vectors of a device with `queues` queues: one for configuration changes, one per
/// queue.
pub fn vector_count(queues: usize) -> usize {
    queues + 1
}

impl VirtioPci {
    /// The function with BAR 0 at `bar_address` and memory decoding on, as firmware hands
    /// a device over. The caller maps BAR 0 there ([`Self::bar_address`]).
    pub fn new(parts: Parts, bar_address: u64) -> VirtioPci {
        let vectors = vector_count(parts.queues.len()) as u32;
        let msix_header = PCI_CAP_ID_MSIX | (u32::from(CAP_COMMON) << 8) | ((vectors - 1) << 16);
        let msix = MsixCapability::new(CAP_MSIX, msix_header, MSIX_TABLE as u32, MSIX_PBA as u32);
        let mut config = ConfigSpace::new();
        let device_id = MODERN_DEVICE_BASE + parts.device.device_type();
        config.init_dword(
            reg::VENDOR_DEVICE,
            u32::from(VIRTIO_VENDOR) | (u32::from(device_id) << 16),
            0,
        );
        config.init_dword(
            reg::COMMAND_STATUS,
            COMMAND_MEMORY | STATUS_CAP_LIST,
            COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE,
        );
        // Revision 1: a modern-only device.
        config.init_dword(reg::CLASS_REVISION, (parts.device.class_code() << 8) | 1, 0);
        config.init_dword(
            reg::SUBSYSTEM,
            u32::from(VIRTIO_VENDOR) | (u32::from(parts.device.device_type()) << 16),
            0,
        );
        bar::init_bar(&mut config, &bar0(), bar_address);
        config.init_dword(0x34, u32::from(CAP_MSIX), 0);
        msix.init_shadow(&mut config, msix_header);
        config.init_dword(CAP_MSIX + 4, MSIX_TABLE as u32, 0);
        config.init_dword(CAP_MSIX + 8, MSIX_PBA as u32, 0);
        let caps = [
            (CAP_COMMON, CAP_NOTIFY, COMMON_CFG, COMMON, REGION, 16),
            (CAP_NOTIFY, CAP_ISR, NOTIFY_CFG, NOTIFY, REGION, 20),
            (CAP_ISR, CAP_DEVICE, ISR_CFG, ISR, REGION, 16),
            (CAP_DEVICE, CAP_PCI_CFG, DEVICE_CFG, DEVICE, REGION, 16),
            (CAP_PCI_CFG, 0, PCI_CFG, 0, 0, 20),
        ];
        for (at, next, kind, offset, length, len) in caps {
            config.init_dword(
                at,
                PCI_CAP_ID_VENDOR | (u32::from(next) << 8) | (len << 16) | (kind << 24),
                0,
            );
            // bar 0, id 0, padding.
            config.init_dword(at + 4, 0, 0);
            config.init_dword(at + 8, offset as u32, 0);
            config.init_dword(at + 12, length as u32, 0);
        }
        config.init_dword(CAP_NOTIFY + 16, NOTIFY_MULTIPLIER, 0);
        // The configuration access window: the driver picks bar, offset and length.
        config.init_dword(CAP_PCI_CFG + 4, 0, 0xff);
        config.init_dword(CAP_PCI_CFG + 8, 0, u32::MAX);
        config.init_dword(CAP_PCI_CFG + 12, 0, u32::MAX);
        config.init_dword(CAP_PCI_CFG + 16, 0, 0);
        VirtioPci {
            initial: config.clone(),
            config,
            msix,
            device: parts.device,
            queues: parts.queues,
            kicks: parts.kicks,
            interrupts: parts.interrupts,
            mover: parts.mover,
            decoded: Some(bar_address),
            common: Common::reset(),
        }
    }

    /// Where BAR 0 decodes now (`None` while memory decoding is off).
    pub fn bar_address(&self) -> Option<u64> {
        self.decoded
    }

    /// Back to the state at hand-off (a guest reboot): the device reset, configuration
    /// space as it was, BAR 0 where it was placed.
    pub fn reset(&mut self) {
        self.reset_device();
        self.config = self.initial.clone();
        self.msix = MsixCapability::new(
            self.msix.offset,
            self.initial.read_dword(CAP_MSIX),
            MSIX_TABLE as u32,
            MSIX_PBA as u32,
        );
        self.interrupts.update(None);
        self.follow_bar();
    }

    /// Status 0 written: every queue and register back to its reset value.
    fn reset_device(&mut self) {
        for queue in &self.queues {
            let mut state = lock(queue);
            state.queue.reset();
            state.vector = NO_VECTOR;
            state.active = false;
        }
        self.common = Common::reset();
        self.interrupts.clear_pending();
    }

    /// Keep BAR 0's bus entry where the configuration says it decodes.
    fn follow_bar(&mut self) {
        let command = self.config.read_dword(reg::COMMAND_STATUS);
        let address = bar::bar_address(&self.config, &bar0());
        let now = (command & COMMAND_MEMORY != 0 && address != 0).then_some(address);
        if now != self.decoded {
            self.mover.moved(self.decoded, now);
            self.decoded = now;
        }
    }

    fn selected(&self) -> Option<&SharedQueue> {
        self.queues.get(usize::from(self.common.queue_select))
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let c = &self.common;
        let features = self.device.features();
        let queue = self.selected().map(lock);
        let q = queue.as_deref();
        let value: u64 = match offset {
            0x00 => u64::from(c.device_feature_select),
            0x04 => match c.device_feature_select {
                0 => features & 0xffff_ffff,
                1 => features >> 32,
                _ => 0,
            },
            0x08 => u64::from(c.driver_feature_select),
            0x0c => match c.driver_feature_select {
                0 => c.driver_features & 0xffff_ffff,
                1 => c.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(c.config_vector),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(c.status),
            0x15 => 0,
            0x16 => u64::from(c.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.queue.size())),
            0x1a => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            0x1c => q.map_or(0, |q| u64::from(q.queue.ready())),
            0x1e => u64::from(c.queue_select),
            0x20 => q.map_or(0, |q| q.queue.desc_table()),
            0x24 => q.map_or(0, |q| q.queue.desc_table() >> 32),
            0x28 => q.map_or(0, |q| q.queue.avail_ring()),
            0x2c => q.map_or(0, |q| q.queue.avail_ring() >> 32),
            0x30 => q.map_or(0, |q| q.queue.used_ring()),
            0x34 => q.map_or(0, |q| q.queue.used_ring() >> 32),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (to, from) in data.iter_mut().zip(bytes) {
            *to = from;
        }
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        for (to, from) in bytes.iter_mut().zip(data) {
            *to = *from;
        }
        let value = u64::from_le_bytes(bytes);
        let low = value as u32;
        match offset {
            0x00 => self.common.device_feature_select = low,
            0x08 => self.common.driver_feature_select = low,
            0x0c => {
                // Features are fixed once FEATURES_OK is set.
                if self.common.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 == 0 {
                    let shift = match self.common.driver_feature_select {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let keep = self.common.driver_features & !(0xffff_ffffu64 << shift);
                    self.common.driver_features = keep | (u64::from(low) << shift);
                }
            }
            0x10 => self.common.config_vector = value as u16,
            0x14 => self.set_status(value as u8),
            0x16 => self.common.queue_select = value as u16,
            0x18..=0x34 => self.queue_write(offset, value),
            _ => log::debug!("virtio: write to read-only common register {offset:#x}"),
        }
    }

    /// A write to the selected queue's registers; ignored once the queue is enabled (as
    /// the specification asks of drivers), except the vector.
    fn queue_write(&mut self, offset: u64, value: u64) {
        let Some(queue) = self.selected() else {
            return;
        };
        let mut state = lock(queue);
        if offset == 0x1a {
            state.vector = value as u16;
            return;
        }
        if state.queue.ready() {
            return;
        }
        let low = Some(value as u32);
        match offset {
            0x18 => state.queue.set_size(value as u16),
            0x1c if value == 1 => state.queue.set_ready(true),
            0x20 => state.queue.set_desc_table_address(low, None),
            0x24 => state.queue.set_desc_table_address(None, low),
            0x28 => state.queue.set_avail_ring_address(low, None),
            0x2c => state.queue.set_avail_ring_address(None, low),
            0x30 => state.queue.set_used_ring_address(low, None),
            0x34 => state.queue.set_used_ring_address(None, low),
            _ => {}
        }
    }

    fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.reset_device();
            return;
        }
        let mut status = status;
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK as u8;
        if status & features_ok != 0 && self.common.status & features_ok == 0 {
            let offered = self.device.features();
            let asked = self.common.driver_features;
            if asked & !offered != 0 || asked & (1 << VIRTIO_F_VERSION_1) == 0 {
                log::warn!(
                    "virtio: the driver asked for features {asked:#x} of {offered:#x}; \
                     FEATURES_OK refused"
                );
                status &= !features_ok;
            }
        }
        let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
        let starting = status & driver_ok != 0 && self.common.status & driver_ok == 0;
        self.common.status = status;
        if starting {
            let event_idx = self.common.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
            for queue in &self.queues {
                let mut state = lock(queue);
                state.queue.set_event_idx(event_idx);
                state.active = true;
            }
            // Requests made before DRIVER_OK are picked up now.
            self.kick_all();
        }
    }

    fn kick_all(&self) {
        for kick in &self.kicks {
            if let Err(e) = kick.write(1) {
                log::warn!("virtio: cannot wake the I/O thread: {e}");
            }
        }
    }

    fn msix_changed(&mut self) {
        self.interrupts.update(self.msix.vectors(&self.config));
    }

    /// A BAR 0 access at `offset`.
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON + COMMON_LEN => self.common_read(o - COMMON, data),
            // The ISR status only matters for INTx, which this transport does not
            // offer: it reads 0.
            o if (ISR..ISR + REGION).contains(&o) => {}
            o if (DEVICE..DEVICE + REGION).contains(&o) => {
                self.device.read_config(o - DEVICE, data)
            }
            o if self.msix.in_table(0, o) => self.msix.read_table(o, data),
            o if self.msix.in_pba(0, o) => {
                let qword = ((o - MSIX_PBA) / 8) as usize;
                let bits = self.interrupts.pending_bits(qword).to_le_bytes();
                let start = ((o - MSIX_PBA) % 8) as usize;
                for (to, from) in data.iter_mut().zip(bits.iter().skip(start)) {
                    *to = *from;
                }
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON + COMMON_LEN => self.common_write(o - COMMON, data),
            o if (NOTIFY..NOTIFY + REGION).contains(&o) => {
                let queue = ((o - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(kick) = self.kicks.get(queue) {
                    if let Err(e) = kick.write(1) {
                        log::warn!("virtio: cannot wake the I/O thread: {e}");
                    }
                }
            }
            o if self.msix.in_table(0, o) && self.msix.write_table(o, data) => self.msix_changed(),
            _ => {}
        }
    }

    /// The configuration access capability's data: an access to BAR 0 at the offset and
    /// length the driver set in the capability.
    fn pci_cfg_access(&mut self, data: Option<&[u8]>, out: &mut [u8]) {
        out.fill(0);
        let bar = self.config.read_dword(CAP_PCI_CFG + 4) & 0xff;
        let offset = u64::from(self.config.read_dword(CAP_PCI_CFG + 8));
        let length = self.config.read_dword(CAP_PCI_CFG + 12) as usize;
        if bar != 0
            || !matches!(length, 1 | 2 | 4)
            || offset.saturating_add(length as u64) > BAR_SIZE
        {
            return;
        }
        match data {
            Some(data) => {
                let data = data.get(..length.min(data.len())).unwrap_or(data);
                self.bar_write(offset, data);
            }
            None => {
                let len = length.min(out.len());
                if let Some(out) = out.get_mut(..len) {
                    self.bar_read(offset, out);
                }
            }
        }
    }

    /// The MSI-X capability as the function shows it (for tests and reports).
    pub fn msix(&self) -> &MsixCapability {
        &self.msix
    }
}

/// BAR 0: 32-bit, non-prefetchable memory.
fn bar0() -> Bar {
    Bar {
        index: 0,
        kind: BarKind::Mem32,
        prefetchable: false,
        size: BAR_SIZE,
    }
}

impl PciFunction for VirtioPci {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if offset / 4 == (CAP_PCI_CFG + 16) / 4 {
            self.pci_cfg_access(None, data);
            return;
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        if offset / 4 == (CAP_PCI_CFG + 16) / 4 {
            self.pci_cfg_access(Some(data), &mut []);
            return;
        }
        self.config.write(offset, data);
        match offset / 4 {
            o if o == reg::COMMAND_STATUS / 4 || o == bar::BAR0 / 4 => self.follow_bar(),
            _ if self.msix.is_header(offset) => self.msix_changed(),
            _ => {}
        }
    }
}

impl BusDevice for VirtioPci {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.bar_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        self.bar_write(offset, data);
        None
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
