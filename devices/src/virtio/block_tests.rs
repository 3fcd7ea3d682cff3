//! virtio-blk request handling against virtio-queue's mock driver and a real image file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Seek, SeekFrom, Write};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::tempfile::TempFile;

use super::*;

const IMAGE_SECTORS: u64 = 64;
const HEADER: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const OUTSIDE: u64 = 0x4000_0000;

/// A fresh image file of 64 sectors, each sector filled with its number; removed when the
/// returned `TempFile` drops.
fn image(name: &str) -> (TempFile, File) {
    image_of(name, IMAGE_SECTORS)
}

/// A fresh image file of `sectors` sectors, each filled with its number (mod 256).
fn image_of(name: &str, sectors: u64) -> (TempFile, File) {
    let image =
        TempFile::new_with_prefix(std::env::temp_dir().join(format!("minivmm-blk-{name}-")))
            .unwrap();
    let mut file = image.as_file().try_clone().unwrap();
    for sector in 0..sectors {
        file.write_all(&[sector as u8; SECTOR_SIZE as usize])
            .unwrap();
    }
    (image, file)
}

fn disk(name: &str, readonly: bool) -> (TempFile, DiskImage) {
    let (image, file) = image(name);
    (
        image,
        DiskImage::new(file, readonly, "minivmm-disk-0").unwrap(),
    )
}

/// A guest driver: memory (leaked: the mock queue borrows it for the test's life), its
/// queue, and the requests it has made.
struct Driver {
    mem: &'static GuestMemoryMmap,
    mock: MockSplitQueue<'static, GuestMemoryMmap>,
    queue: Queue,
    next_desc: u16,
    requests: u16,
    /// The I/O thread's helper, when the test gives it one.
    helper: Option<IoHelper>,
}

impl Driver {
    fn new() -> Self {
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap(),
        ));
        let mock = MockSplitQueue::new(mem, 64);
        let queue = mock.create_queue().unwrap();
        Driver {
            mem,
            mock,
            queue,
            next_desc: 0,
            requests: 0,
            helper: None,
        }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&kind.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&bytes, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Submit one chain of (address, length, device-writable) buffers and let the device
    /// run; returns the used length and the status byte.
    fn submit(&mut self, disk: &DiskImage, buffers: &[(u64, u32, bool)]) -> (u32, u8) {
        let first = self.next_desc;
        let descs: Vec<RawDescriptor> = buffers
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
                let last = i + 1 == buffers.len();
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.mock.add_desc_chains(&descs, first).unwrap();
        self.next_desc += buffers.len() as u16;
        process_queue(&mut self.queue, self.mem, disk, self.helper.as_ref()).unwrap();
        assert_eq!(
            self.queue.next_used(),
            self.requests + 1,
            "one request completed"
        );
        let used = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(self.requests))
            .unwrap()
            .load();
        assert_eq!(
            used.id(),
            u32::from(first),
            "the chain completed is the one submitted"
        );
        self.requests += 1;
        let status = self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
        (used.len(), status)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
        data
    }
}

fn file_bytes(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = File::open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut data = vec![0u8; len];
    file.read_exact(&mut data).unwrap();
    data
}

/// A chain's buffers: address, length, device-writable.
type Chain = Vec<(u64, u32, bool)>;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn a_write_reaches_the_image_and_reads_back_across_segments() {
    let (image, disk) = disk("rw", false);
    let mut driver = Driver::new();
    let pattern: Vec<u8> = (0..1536u32).map(|i| (i * 7 % 251) as u8).collect();
    driver
        .mem
        .write_slice(&pattern, GuestAddress(DATA))
        .unwrap();
    driver.header(VIRTIO_BLK_T_OUT, 3);
    // Data in two descriptors (1 KiB + 512 bytes), as a scatter list would be.
    let (len, status) = driver.submit(
        &disk,
        &[
            (HEADER, 16, false),
            (DATA, 1024, false),
            (DATA + 1024, 512, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!((len, status), (1, OK));
    assert_eq!(file_bytes(image.as_path(), 3 * 512, 1536), pattern);
    // The sectors around it are untouched.
    assert_eq!(file_bytes(image.as_path(), 2 * 512, 512), vec![2u8; 512]);
    assert_eq!(file_bytes(image.as_path(), 6 * 512, 512), vec![6u8; 512]);

    driver.header(VIRTIO_BLK_T_IN, 3);
    let back = DATA + 0x10_0000;
    let (len, status) = driver.submit(
        &disk,
        &[(HEADER, 16, false), (back, 1536, true), (STATUS, 1, true)],
    );
    assert_eq!((len, status), (1537, OK), "data and status written");
    assert_eq!(driver.read(back, 1536), pattern);
}

#[test]
fn a_large_request_is_shared_with_the_helper_and_lands_whole() {
    let sectors = 2048; // 1 MiB
    let (image, file) = image_of("helper", sectors);
    let disk = DiskImage::new(file, false, "minivmm-disk-0").unwrap();
    let mut driver = Driver::new();
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = started.clone();
    driver.helper = Some(
        IoHelper::spawn("test-helper".into(), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .unwrap(),
    );
    // 384 KiB in three descriptors of unequal size: the cut falls inside the second.
    let len = 384 << 10;
    let pattern: Vec<u8> = (0..len as u32).map(|i| (i * 13 % 251) as u8).collect();
    driver
        .mem
        .write_slice(&pattern, GuestAddress(DATA))
        .unwrap();
    driver.header(VIRTIO_BLK_T_OUT, 100);
    let parts = [
        (DATA, 64 << 10),
        (DATA + (64 << 10), 256 << 10),
        (DATA + (320 << 10), 64 << 10),
    ];
    let mut chain: Chain = vec![(HEADER, 16, false)];
    chain.extend(parts.iter().map(|&(addr, len)| (addr, len as u32, false)));
    chain.push((STATUS, 1, true));
    assert_eq!(driver.submit(&disk, &chain), (1, OK));
    assert!(
        started.load(std::sync::atomic::Ordering::SeqCst),
        "the helper never ran"
    );
    assert_eq!(file_bytes(image.as_path(), 100 * 512, len), pattern);
    assert_eq!(
        file_bytes(image.as_path(), 99 * 512, 512),
        vec![99u8; 512],
        "the sector before"
    );
    let after = 100 + len as u64 / 512;
    assert_eq!(
        file_bytes(image.as_path(), after * 512, 512),
        vec![after as u8; 512],
        "the one after"
    );

    driver.header(VIRTIO_BLK_T_IN, 100);
    let back = DATA + 0x80_0000;
    let (used, status) = driver.submit(
        &disk,
        &[
            (HEADER, 16, false),
            (back, len as u32, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!((used, status), (len as u32 + 1, OK));
    assert_eq!(driver.read(back, len), pattern);
}

#[test]
fn the_header_and_status_may_share_descriptors_with_the_data() {
    let (_image, disk) = disk("shared", false);
    let mut driver = Driver::new();
    // Header split over two descriptors; data and status in one writable buffer.
    driver.header(VIRTIO_BLK_T_IN, 5);
    let (len, _) = driver.submit(
        &disk,
        &[
            (HEADER, 10, false),
            (HEADER + 10, 6, false),
            (DATA, 513, true),
        ],
    );
    assert_eq!((len, status_at(&driver, DATA + 512)), (513, OK));
    assert_eq!(driver.read(DATA, 512), vec![5u8; 512]);
}

fn status_at(driver: &Driver, addr: u64) -> u8 {
    driver.read(addr, 1)[0]
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so_in_its_features() {
    let (image, disk) = disk("ro", true);
    assert_ne!(disk.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut driver = Driver::new();
    driver
        .mem
        .write_slice(&[0xaa; 512], GuestAddress(DATA))
        .unwrap();
    driver.header(VIRTIO_BLK_T_OUT, 0);
    let (len, status) = driver.submit(
        &disk,
        &[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
    );
    assert_eq!((len, status), (1, IOERR));
    assert_eq!(
        file_bytes(image.as_path(), 0, 512),
        vec![0u8; 512],
        "the image is unchanged"
    );
    // Reads still work.
    driver.header(VIRTIO_BLK_T_IN, 1);
    let (_, status) = driver.submit(
        &disk,
        &[(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
    );
    assert_eq!(status, OK);
    assert_eq!(driver.read(DATA, 512), vec![1u8; 512]);
}

#[test]
fn malformed_requests_get_an_error_status_and_leave_the_image_alone() {
    let (image, disk) = disk("bad", false);
    let mut driver = Driver::new();
    driver
        .mem
        .write_slice(&[0x55; 1024], GuestAddress(DATA))
        .unwrap();
    let cases: [(&str, u32, u64, Chain, u8); 7] = [
        (
            "a short header",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HEADER, 8, false), (STATUS, 1, true)],
            IOERR,
        ),
        (
            "a length that is no multiple of 512",
            VIRTIO_BLK_T_OUT,
            0,
            vec![(HEADER, 16, false), (DATA, 100, false), (STATUS, 1, true)],
            IOERR,
        ),
        (
            "sectors past the end",
            VIRTIO_BLK_T_OUT,
            IMAGE_SECTORS - 1,
            vec![(HEADER, 16, false), (DATA, 1024, false), (STATUS, 1, true)],
            IOERR,
        ),
        (
            "a sector number that overflows",
            VIRTIO_BLK_T_IN,
            u64::MAX / 2,
            vec![(HEADER, 16, false), (DATA, 512, true), (STATUS, 1, true)],
            IOERR,
        ),
        (
            "data outside guest RAM",
            VIRTIO_BLK_T_OUT,
            0,
            vec![
                (HEADER, 16, false),
                (OUTSIDE, 512, false),
                (STATUS, 1, true),
            ],
            IOERR,
        ),
        (
            "a read whose buffer the device may not write",
            VIRTIO_BLK_T_IN,
            0,
            vec![(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)],
            IOERR,
        ),
        (
            "an unknown request type",
            0x77,
            0,
            vec![(HEADER, 16, false), (STATUS, 1, true)],
            VIRTIO_BLK_S_UNSUPP as u8,
        ),
    ];
    for (what, kind, sector, buffers, expected) in cases {
        driver.header(kind, sector);
        let (len, status) = driver.submit(&disk, &buffers);
        assert_eq!((len, status), (1, expected), "{what}");
    }
    for sector in 0..IMAGE_SECTORS {
        assert_eq!(
            file_bytes(image.as_path(), sector * 512, 512),
            vec![sector as u8; 512],
            "sector {sector} unchanged"
        );
    }
}

#[test]
fn a_chain_without_room_for_a_status_completes_with_nothing_written() {
    let (_image, disk) = disk("nostatus", false);
    let mut driver = Driver::new();
    driver.header(VIRTIO_BLK_T_FLUSH, 0);
    let (len, status) = driver.submit(&disk, &[(HEADER, 16, false)]);
    assert_eq!((len, status), (0, 0xff), "the status byte was not touched");
    // A status byte outside guest RAM: nothing to write it to either.
    let (len, _) = driver.submit(&disk, &[(HEADER, 16, false), (OUTSIDE, 1, true)]);
    assert_eq!(len, 0);
    // The queue still works afterwards.
    let (len, status) = driver.submit(&disk, &[(HEADER, 16, false), (STATUS, 1, true)]);
    assert_eq!((len, status), (1, OK));
}

#[test]
fn flush_succeeds_and_get_id_returns_the_serial() {
    let (_image, disk) = disk("id", false);
    let mut driver = Driver::new();
    driver.header(VIRTIO_BLK_T_FLUSH, 0);
    let (len, status) = driver.submit(&disk, &[(HEADER, 16, false), (STATUS, 1, true)]);
    assert_eq!((len, status), (1, OK));
    driver.header(VIRTIO_BLK_T_GET_ID, 0);
    let (len, status) = driver.submit(
        &disk,
        &[(HEADER, 16, false), (DATA, 20, true), (STATUS, 1, true)],
    );
    assert_eq!((len, status), (21, OK));
    assert_eq!(&driver.read(DATA, 20)[..14], b"minivmm-disk-0");
}

#[test]
fn the_configuration_says_capacity_and_segment_limit() {
    let (_image, disk) = disk("config", false);
    let mut capacity = [0u8; 8];
    disk.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), IMAGE_SECTORS);
    let mut seg_max = [0u8; 4];
    disk.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
    let mut beyond = [0xffu8; 4];
    disk.read_config(u64::MAX - 1, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_eq!(disk.features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn an_available_index_out_of_range_does_not_spin_the_device() {
    let (_image, disk) = disk("spin", false);
    let mut driver = Driver::new();
    // The guest claims 1000 new requests in a 64-entry ring.
    let avail_idx = driver.mock.avail_addr().0 + 2;
    driver
        .mem
        .write_obj(1000u16, GuestAddress(avail_idx))
        .unwrap();
    assert!(process_queue(&mut driver.queue, driver.mem, &disk, None).is_ok());
    assert_eq!(driver.queue.next_used(), 0, "nothing completed");
}

#[test]
fn rings_laid_over_each_other_get_one_completion_per_chain_taken() {
    // The used ring starts at the available index, so the device's own writes move it:
    // turning notifications off (used flags = 1) offers the chain at the head of the
    // available ring, which is the used index (0); turning them on again takes it back.
    let (_image, disk) = disk("overlap", false);
    let driver = Driver::new();
    let (desc, avail, used) = (0x1000u64, 0x20feu64, 0x2100u64);
    let chain = [
        SplitDescriptor::new(HEADER, 16, VRING_DESC_F_NEXT as u16, 1),
        SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0),
    ];
    for (i, d) in chain.iter().enumerate() {
        driver
            .mem
            .write_obj(*d, GuestAddress(desc + 16 * i as u64))
            .unwrap();
    }
    driver.header(VIRTIO_BLK_T_FLUSH, 0);
    let mut queue = Queue::new(64).unwrap();
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(driver.mem));

    assert!(process_queue(&mut queue, driver.mem, &disk, None).is_ok());
    assert_eq!(
        queue.next_avail(),
        1,
        "the chain the device's write offered"
    );
    assert_eq!(queue.next_used(), 1, "completed once");
    assert_eq!(driver.read(STATUS, 1), [OK]);
}
