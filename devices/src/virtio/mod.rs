//! Emulated virtio devices: the modern PCI transport ([`pci`]), its MSI-X ([`interrupts`]),
//! and the block device's requests ([`block`]). Queues are rust-vmm's `virtio-queue`; the
//! VMM runs each device's I/O on a thread of its own, woken by an ioeventfd on the queue's
//! notify address, and completes by irqfd.

pub mod block;
pub mod block_io;
pub mod interrupts;
pub mod pci;

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

/// PCI class of a virtio block device: mass storage, SCSI (what QEMU's uses).
const CLASS_STORAGE_SCSI: u32 = 0x01_00_00;

impl pci::VirtioDevice for block::DiskImage {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK as u16
    }
    fn class_code(&self) -> u32 {
        CLASS_STORAGE_SCSI
    }
    fn features(&self) -> u64 {
        block::DiskImage::features(self)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        block::DiskImage::read_config(self, offset, data)
    }
}
