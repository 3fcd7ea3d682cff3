//! The virtio-pci transport as a driver sees it: identity, capabilities, feature
//! negotiation, queue setup, notifications, reset, BAR moves and MSI-X.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Mutex;

use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::pci::msi::MsiVector;
use crate::virtio::interrupts::MsiSink;

const BAR: u64 = 0xdff0_0000;
const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << 9);

struct FakeDevice;

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u16 {
        2
    }
    fn class_code(&self) -> u32 {
        0x01_00_00
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0x40 + offset as u8);
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
}

struct Mover(Arc<Log>);
impl BarMover for Mover {
    fn moved(&self, from: Option<u64>, to: Option<u64>) {
        self.0.push(format!("moved {from:x?} -> {to:x?}"));
    }
}

struct Sink(Arc<Log>);
impl MsiSink for Sink {
    fn route(&self, index: u16, message: MsiVector) {
        self.0.push(format!("route {index} {:#x}", message.data));
    }
    fn trigger(&self, index: u16) {
        self.0.push(format!("trigger {index}"));
    }
}

struct Fixture {
    pci: VirtioPci,
    queue: SharedQueue,
    kick: EventFd,
    interrupts: Arc<Interrupts>,
    log: Arc<Log>,
}

fn fixture() -> Fixture {
    let log = Arc::new(Log::default());
    let queue = Arc::new(Mutex::new(QueueState {
        queue: Queue::new(256).unwrap(),
        vector: NO_VECTOR,
        active: false,
    }));
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupts = Arc::new(Interrupts::new(
        Box::new(Sink(log.clone())),
        vector_count(1),
    ));
    let pci = VirtioPci::new(
        Parts {
            device: Arc::new(FakeDevice),
            queues: vec![queue.clone()],
            kicks: vec![kick.try_clone().unwrap()],
            interrupts: interrupts.clone(),
            mover: Box::new(Mover(log.clone())),
        },
        BAR,
    );
    Fixture {
        pci,
        queue,
        kick,
        interrupts,
        log,
    }
}

fn cfg32(pci: &mut VirtioPci, offset: u16) -> u32 {
    let mut data = [0u8; 4];
    pci.config_read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn bar_read(pci: &mut VirtioPci, offset: u64, len: usize) -> u64 {
    let mut data = [0u8; 8];
    BusDevice::read(pci, offset, &mut data[..len]);
    u64::from_le_bytes(data)
}

fn bar_write(pci: &mut VirtioPci, offset: u64, value: u64, len: usize) {
    BusDevice::write(pci, offset, &value.to_le_bytes()[..len]);
}

#[test]
fn the_function_is_a_modern_virtio_block_device_with_its_capabilities() {
    let mut f = fixture();
    let pci = &mut f.pci;
    assert_eq!(cfg32(pci, 0), 0x1042_1af4);
    assert_eq!(cfg32(pci, 8), 0x0100_0001, "mass storage, revision 1");
    assert_eq!(cfg32(pci, 0x2c), 0x0002_1af4);
    assert_eq!(
        cfg32(pci, 0x10),
        BAR as u32,
        "BAR 0 where it was placed, 32-bit memory"
    );
    assert_eq!(cfg32(pci, 4) & 0x2, 0x2, "memory decoding on at hand-off");
    assert_eq!(cfg32(pci, 0x3c) >> 8 & 0xff, 0, "no INTx pin");
    // Walk the capability list.
    let mut found = Vec::new();
    let mut at = cfg32(pci, 0x34) as u16 & 0xff;
    while at != 0 {
        let header = cfg32(pci, at);
        let id = header & 0xff;
        if id == 0x09 {
            let offset = cfg32(pci, at + 8);
            found.push(format!("virtio {} at {offset:#x}", header >> 24));
        } else {
            found.push(format!("id {id:#x} size {}", (header >> 16 & 0x7ff) + 1));
        }
        at = (header >> 8 & 0xff) as u16;
    }
    assert_eq!(
        found,
        [
            "id 0x11 size 2",
            "virtio 1 at 0x0",
            "virtio 2 at 0x3000",
            "virtio 3 at 0x1000",
            "virtio 4 at 0x2000",
            "virtio 5 at 0x0",
        ]
    );
    assert_eq!(cfg32(pci, CAP_NOTIFY + 16), NOTIFY_MULTIPLIER);
    // Sizing BAR 0 shows its 32 KiB.
    pci.config_write(0x04, &[0, 0]);
    pci.config_write(0x10, &u32::MAX.to_le_bytes());
    assert_eq!(cfg32(pci, 0x10), 0xffff_8000);
}

#[test]
fn a_driver_negotiates_sets_up_its_queue_and_starts_the_device() {
    let mut f = fixture();
    let pci = &mut f.pci;
    bar_write(pci, 0x14, 0x3, 1); // ACKNOWLEDGE | DRIVER
    bar_write(pci, 0x00, 0, 4);
    let low = bar_read(pci, 0x04, 4);
    bar_write(pci, 0x00, 1, 4);
    let high = bar_read(pci, 0x04, 4);
    assert_eq!(high << 32 | low, FEATURES);
    let wanted = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX);
    bar_write(pci, 0x08, 0, 4);
    bar_write(pci, 0x0c, wanted & 0xffff_ffff, 4);
    bar_write(pci, 0x08, 1, 4);
    bar_write(pci, 0x0c, wanted >> 32, 4);
    bar_write(pci, 0x14, 0xb, 1); // + FEATURES_OK
    assert_eq!(bar_read(pci, 0x14, 1), 0xb, "FEATURES_OK accepted");
    assert_eq!(bar_read(pci, 0x12, 2), 1, "one queue");
    bar_write(pci, 0x16, 0, 2);
    assert_eq!(bar_read(pci, 0x18, 2), 256, "the maximum size");
    bar_write(pci, 0x18, 128, 2);
    bar_write(pci, 0x1a, 1, 2);
    for (offset, value) in [
        (0x20, 0x1_2345_6000u64),
        (0x28, 0x1_2345_7000),
        (0x30, 0x1_2345_8000),
    ] {
        bar_write(pci, offset, value & 0xffff_ffff, 4);
        bar_write(pci, offset + 4, value >> 32, 4);
    }
    bar_write(pci, 0x1c, 1, 2);
    {
        let state = lock(&f.queue);
        assert_eq!(state.queue.size(), 128);
        assert_eq!(state.queue.desc_table(), 0x1_2345_6000);
        assert_eq!(state.queue.avail_ring(), 0x1_2345_7000);
        assert_eq!(state.queue.used_ring(), 0x1_2345_8000);
        assert!(state.queue.ready());
        assert_eq!(state.vector, 1);
        assert!(!state.active, "not before DRIVER_OK");
    }
    assert_eq!(bar_read(pci, 0x28, 4), 0x2345_7000, "addresses read back");
    // Once enabled, the queue's addresses are fixed.
    bar_write(pci, 0x20, 0x9000, 4);
    assert_eq!(lock(&f.queue).queue.desc_table(), 0x1_2345_6000);
    bar_write(pci, 0x14, 0xf, 1); // + DRIVER_OK
    {
        let state = lock(&f.queue);
        assert!(state.active);
        assert!(state.queue.event_idx_enabled());
    }
    assert_eq!(
        f.kick.read().unwrap(),
        1,
        "the I/O thread is woken at DRIVER_OK"
    );
    // A notification that traps wakes it too.
    bar_write(pci, NOTIFY, 0, 2);
    assert_eq!(f.kick.read().unwrap(), 1);
    // Device configuration comes from the device.
    assert_eq!(bar_read(pci, DEVICE + 2, 1), 0x42);
    // Reset: everything back.
    bar_write(pci, 0x14, 0, 1);
    let state = lock(&f.queue);
    assert!(!state.active && !state.queue.ready());
    assert_eq!(state.vector, NO_VECTOR);
    assert_eq!(state.queue.size(), 256);
    drop(state);
    assert_eq!(bar_read(pci, 0x14, 1), 0);
}

#[test]
fn features_the_device_does_not_offer_are_refused() {
    let mut f = fixture();
    let pci = &mut f.pci;
    bar_write(pci, 0x14, 0x3, 1);
    // No VERSION_1: a legacy driver, which this device does not serve.
    bar_write(pci, 0x08, 0, 4);
    bar_write(pci, 0x0c, 1 << VIRTIO_RING_F_EVENT_IDX, 4);
    bar_write(pci, 0x14, 0xb, 1);
    assert_eq!(bar_read(pci, 0x14, 1), 0x3, "FEATURES_OK not set");
    // A feature bit never offered.
    bar_write(pci, 0x14, 0, 1);
    bar_write(pci, 0x14, 0x3, 1);
    bar_write(pci, 0x08, 1, 4);
    bar_write(pci, 0x0c, 0x3, 4);
    bar_write(pci, 0x14, 0xb, 1);
    assert_eq!(bar_read(pci, 0x14, 1), 0x3);
}

#[test]
fn bar_0_follows_the_guest_and_its_decoding() {
    let mut f = fixture();
    let pci = &mut f.pci;
    assert_eq!(pci.bar_address(), Some(BAR));
    pci.config_write(0x04, &[0, 0]);
    pci.config_write(0x10, &0xdfe0_0000u32.to_le_bytes());
    pci.config_write(0x04, &[0x6, 0]);
    assert_eq!(pci.bar_address(), Some(0xdfe0_0000));
    assert_eq!(
        f.log.take(),
        [
            "moved Some(dff00000) -> None",
            "moved None -> Some(dfe00000)"
        ]
    );
    // A machine reset puts it back where it was placed.
    pci.reset();
    assert_eq!(pci.bar_address(), Some(BAR));
    assert_eq!(f.log.take(), ["moved Some(dfe00000) -> Some(dff00000)"]);
}

#[test]
fn msix_vectors_are_routed_when_programmed_and_held_while_masked() {
    let mut f = fixture();
    let pci = &mut f.pci;
    // Vector 1: address, data, unmasked.
    bar_write(pci, MSIX_TABLE + 16, 0xfee0_0000, 4);
    bar_write(pci, MSIX_TABLE + 16 + 8, 0x4041, 4);
    bar_write(pci, MSIX_TABLE + 16 + 12, 0, 4);
    assert!(f.log.take().is_empty(), "MSI-X not enabled yet");
    f.interrupts.signal(1);
    // Enable MSI-X with the function masked, then unmask.
    pci.config_write(CAP_MSIX + 2, &0xc000u16.to_le_bytes());
    f.interrupts.signal(1);
    assert_eq!(bar_read(pci, MSIX_PBA, 8), 0b10, "held pending");
    pci.config_write(CAP_MSIX + 2, &0x8000u16.to_le_bytes());
    assert_eq!(f.log.take(), ["route 1 0x4041", "trigger 1"]);
    f.interrupts.signal(1);
    assert_eq!(f.log.take(), ["trigger 1"]);
    assert_eq!(bar_read(pci, MSIX_TABLE + 16 + 8, 4), 0x4041);
}

#[test]
fn the_configuration_access_capability_reaches_bar_0() {
    let mut f = fixture();
    let pci = &mut f.pci;
    pci.config_write(CAP_PCI_CFG + 4, &[0]);
    pci.config_write(CAP_PCI_CFG + 8, &0x12u32.to_le_bytes());
    pci.config_write(CAP_PCI_CFG + 12, &2u32.to_le_bytes());
    let mut data = [0u8; 2];
    pci.config_read(CAP_PCI_CFG + 16, &mut data);
    assert_eq!(u16::from_le_bytes(data), 1, "num_queues through the window");
    // A notification through the window wakes the I/O thread.
    pci.config_write(CAP_PCI_CFG + 8, &(NOTIFY as u32).to_le_bytes());
    pci.config_write(CAP_PCI_CFG + 16, &[0, 0]);
    assert_eq!(f.kick.read().unwrap(), 1);
    // An access past the BAR is ignored.
    pci.config_write(CAP_PCI_CFG + 8, &u32::MAX.to_le_bytes());
    pci.config_read(CAP_PCI_CFG + 16, &mut data);
    assert_eq!(data, [0, 0]);
}
