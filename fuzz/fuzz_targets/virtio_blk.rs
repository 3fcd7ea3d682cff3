//! The virtio-blk device as a guest drives it: configuration-space and BAR 0 accesses of
//! the modern virtio-pci transport (status, features, queue setup, MSI-X, the notify and
//! configuration-access windows), guest memory filled with whatever rings, descriptors and
//! request headers the input holds, and the I/O thread's work (`process_queue`) on the
//! transport's queue or on a queue set up directly.
//!
//! Input: one byte of flags (bit 0: the disk is read-only), then the operations
//! (`arbitrary`).
//!
//! Checked: nothing panics or loops; the image keeps its size; a read-only image keeps its
//! bytes; each chain the device takes gets one used entry, and nothing else gets one.

#![no_main]

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use minivmm_devices::bus::BusDevice;
use minivmm_devices::pci::msi::MsiVector;
use minivmm_devices::pci::PciFunction;
use minivmm_devices::virtio::block::{process_queue, DiskImage};
use minivmm_devices::virtio::interrupts::{Interrupts, MsiSink, NO_VECTOR};
use minivmm_devices::virtio::pci::{self, BarMover, Parts, QueueState, VirtioPci};
use minivmm_fuzz::ops;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM: 64 KiB at 0.
const MEM: u64 = 0x1_0000;
/// The image: 64 KiB, each byte its offset's low byte.
const IMAGE: u64 = 0x1_0000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A configuration-space access of `len % 4 + 1` bytes.
    Config {
        offset: u16,
        len: u8,
        value: u32,
        write: bool,
    },
    /// A BAR 0 access of `len % 8 + 1` bytes.
    Bar {
        offset: u16,
        len: u8,
        value: u64,
        write: bool,
    },
    /// The guest writes `bytes` at `at % 64 KiB`.
    Memory { at: u16, bytes: Vec<u8> },
    /// The I/O thread wakes up.
    Process,
    /// A queue set up without the transport, then run.
    Direct {
        size: u16,
        desc: u16,
        avail: u16,
        used: u16,
        event_idx: bool,
    },
}

struct NoSink;
impl MsiSink for NoSink {
    fn route(&self, _: u16, _: MsiVector) {}
    fn trigger(&self, _: u16) {}
}

struct NoMover;
impl BarMover for NoMover {
    fn moved(&self, _: Option<u64>, _: Option<u64>) {}
}

fn image_path(readonly: bool) -> &'static std::path::Path {
    static PATHS: OnceLock<[std::path::PathBuf; 2]> = OnceLock::new();
    let paths = PATHS.get_or_init(|| {
        let make = |name: &str| {
            let path = std::env::temp_dir()
                .join(format!("minivmm-fuzz-blk-{name}-{}", std::process::id()));
            let mut file = File::create(&path).unwrap();
            let bytes: Vec<u8> = (0..IMAGE).map(|i| i as u8).collect();
            file.write_all(&bytes).unwrap();
            path
        };
        [make("rw"), make("ro")]
    });
    &paths[usize::from(readonly)]
}

fn checksum(path: &std::path::Path) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    let sum = bytes
        .iter()
        .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
    (bytes.len() as u64, sum)
}

/// The I/O thread's work on `queue`: every chain it takes from the available ring gets
/// exactly one used entry, and nothing else does. Only when a used entry cannot be written
/// (the call fails) may the last chain taken go without one.
///
/// Not checked against the available index itself: the guest may lay its rings and buffers
/// over each other, and then the device's own writes (the used ring's flags, a read's data)
/// move that index while it works. Which chains the guest offered is then what the device
/// read, and taking only those is virtio-queue's part.
fn run(queue: &mut Queue, mem: &GuestMemoryMmap, disk: &DiskImage) {
    let (used_before, avail_before) = (queue.next_used(), queue.next_avail());
    let result = process_queue(queue, mem, disk, None);
    let completed = queue.next_used().wrapping_sub(used_before);
    let taken = queue.next_avail().wrapping_sub(avail_before);
    assert!(
        completed == taken || (result.is_err() && completed.wrapping_add(1) == taken),
        "completed {completed} of the {taken} chains taken ({result:?})"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let readonly = flags & 1 != 0;
    let path = image_path(readonly);
    let before = checksum(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .unwrap();
    let disk = Arc::new(DiskImage::new(file, readonly, "fuzz").unwrap());
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let queue = Arc::new(Mutex::new(QueueState {
        queue: Queue::new(256).unwrap(),
        vector: NO_VECTOR,
        active: false,
    }));
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupts = Arc::new(Interrupts::new(Box::new(NoSink), pci::vector_count(1)));
    let mut function = VirtioPci::new(
        Parts {
            device: disk.clone(),
            queues: vec![queue.clone()],
            kicks: vec![kick],
            interrupts,
            mover: Box::new(NoMover),
        },
        0xdff0_0000,
    );
    for op in ops::<Op>(rest) {
        match op {
            Op::Config {
                offset,
                len,
                value,
                write,
            } => {
                let len = usize::from(len % 4) + 1;
                let offset = offset % 4096 / len as u16 * len as u16;
                if write {
                    function.config_write(offset, &value.to_le_bytes()[..len]);
                } else {
                    let mut data = vec![0u8; len];
                    function.config_read(offset, &mut data);
                }
            }
            Op::Bar {
                offset,
                len,
                value,
                write,
            } => {
                let len = usize::from(len % 8) + 1;
                let offset = u64::from(offset) % pci::BAR_SIZE;
                let len = len.min((pci::BAR_SIZE - offset) as usize);
                if write {
                    BusDevice::write(&mut function, offset, &value.to_le_bytes()[..len]);
                } else {
                    let mut data = vec![0u8; len];
                    BusDevice::read(&mut function, offset, &mut data);
                }
            }
            Op::Memory { at, bytes } => {
                let at = u64::from(at);
                let len = bytes.len().min((MEM - at) as usize);
                mem.write_slice(&bytes[..len], GuestAddress(at)).unwrap();
            }
            Op::Process => {
                let mut state = pci::lock(&queue);
                if state.active {
                    run(&mut state.queue, &mem, &disk);
                }
            }
            Op::Direct {
                size,
                desc,
                avail,
                used,
                event_idx,
            } => {
                let mut direct = Queue::new(256).unwrap();
                direct.set_size(size);
                direct.set_desc_table_address(Some(u32::from(desc)), Some(0));
                direct.set_avail_ring_address(Some(u32::from(avail)), Some(0));
                direct.set_used_ring_address(Some(u32::from(used)), Some(0));
                direct.set_event_idx(event_idx);
                direct.set_ready(true);
                run(&mut direct, &mem, &disk);
            }
        }
    }
    drop(function);
    let after = checksum(path);
    assert_eq!(after.0, before.0, "the image keeps its size");
    if readonly {
        assert_eq!(after, before, "a read-only image keeps its bytes");
    }
});
