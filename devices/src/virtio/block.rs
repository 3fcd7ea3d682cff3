//! virtio-blk requests (virtio 1.2, section 5.2) against a raw disk image.
//!
//! A request is one descriptor chain: a 16-byte header the device reads (type, reserved,
//! sector), the data (read by the device for a write, written by it for a read), and one
//! status byte the device writes last. The chain comes from `virtio-queue`; this module
//! only turns its descriptors into file I/O. The data goes straight between the image and
//! guest memory (`preadv`/`pwritev` on the guest pages), without a bounce buffer.
//!
//! Whatever a guest puts in a chain is answered with a status, never a panic: a header
//! that is short, data on the wrong side, a length that is no multiple of 512, sectors
//! past the end, addresses outside guest RAM — `VIRTIO_BLK_S_IOERR`; a request type the
//! device does not offer — `VIRTIO_BLK_S_UNSUPP`. A chain with no writable byte for the
//! status cannot be answered at all and completes with nothing written.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::block_io::{self, IoHelper};

/// Bytes per sector: the unit of the header's `sector` and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// Size of a request header.
const HEADER_SIZE: usize = 16;
/// Size of the one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request the device accepts (and tells the guest, `seg_max`): as
/// many as the queue holds, less the header and the status, as QEMU offers too. Linux cuts
/// its requests at this many segments, so a 1 MiB request of scattered 4 KiB pages goes
/// as two requests rather than three at half the limit.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most descriptors one chain may have before the device stops reading it (a guest that
/// builds a longer one through indirect tables gets an error status).
const MAX_SEGMENTS: usize = SEG_MAX as usize + 2;

/// A raw disk image: the file, its size in sectors, and whether the guest may write it.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    sectors: u64,
    readonly: bool,
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

impl DiskImage {
    /// A disk backed by `file`; its size is the file's, rounded down to whole sectors.
    /// `serial` is what GET_ID answers (the first 20 bytes).
    pub fn new(file: File, readonly: bool, serial: &str) -> io::Result<DiskImage> {
        let sectors = file.metadata()?.len() / SECTOR_SIZE;
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        for (to, from) in id.iter_mut().zip(serial.bytes()) {
            *to = from;
        }
        Ok(DiskImage {
            file,
            sectors,
            readonly,
            id,
        })
    }

    /// Size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The device features offered: virtio 1.x, indirect descriptors, event index, flush,
    /// a segment limit, and read-only when it is.
    pub fn features(&self) -> u64 {
        let bits = [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_SEG_MAX,
        ];
        let mut features = bits.iter().fold(0u64, |f, bit| f | (1 << bit));
        if self.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    /// Read the device configuration (`struct virtio_blk_config`): capacity at 0, seg_max
    /// at 12; every other field reads 0 (its feature is not offered).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
}

/// One descriptor's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: u64,
    len: u64,
}

/// A request taken apart: header bytes, the data on each side, and the status byte.
#[derive(Debug)]
struct Parts {
    header: Option<[u8; HEADER_SIZE]>,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    status: GuestAddress,
}

/// Why a request failed (logged at debug; the guest sees only the status).
#[derive(Debug)]
enum Failure {
    /// Answer with this status.
    Status(u32, &'static str),
    /// The image refused.
    Io(io::Error),
}

/// Complete every request the guest made available; returns whether the guest must be
/// interrupted (it asked to be, or event index says so). `Err` only when the queue's
/// own rings cannot be accessed.
pub fn process_queue<M: GuestMemoryBackend>(
    queue: &mut Queue,
    mem: &M,
    disk: &DiskImage,
    helper: Option<&IoHelper>,
) -> Result<bool, virtio_queue::Error> {
    let mut used = false;
    let mut empty_rounds = 0;
    loop {
        queue.disable_notification(mem)?;
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = execute(mem, chain, disk, helper);
            queue.add_used(mem, head, written)?;
            used = true;
            popped = true;
        }
        // A request that arrived while notifications were off is picked up here rather
        // than lost. A ring that says there is more but yields nothing twice in a row is
        // broken (an available index the guest wrote out of range): stop, or this thread
        // would spin on it.
        if !queue.enable_notification(mem)? {
            break;
        }
        empty_rounds = if popped { 0 } else { empty_rounds + 1 };
        if empty_rounds >= 2 {
            log::debug!("virtio-blk: the available ring is out of range; waiting for a notify");
            break;
        }
    }
    Ok(used && queue.needs_notification(mem)?)
}

/// Carry out one request; returns the bytes written into the chain (data and status).
fn execute<M: GuestMemoryBackend>(
    mem: &M,
    chain: DescriptorChain<&M>,
    disk: &DiskImage,
    helper: Option<&IoHelper>,
) -> u32 {
    let Some(parts) = split(mem, chain) else {
        log::debug!("virtio-blk: a request without a status byte");
        return 0;
    };
    let (status, data) = match run(mem, &parts, disk, helper) {
        Ok(data) => (VIRTIO_BLK_S_OK, data),
        Err(Failure::Status(status, why)) => {
            log::debug!("virtio-blk: request failed: {why}");
            (status, 0)
        }
        Err(Failure::Io(e)) => {
            log::warn!("virtio-blk: the disk image refused a request: {e}");
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    if mem.write_obj(status as u8, parts.status).is_err() {
        return 0;
    }
    data.saturating_add(1)
}

/// Sort the chain's descriptors: the header from the front of the readable ones, the
/// status from the end of the writable ones. `None` when there is no writable byte.
fn split<M: GuestMemoryBackend>(mem: &M, chain: DescriptorChain<&M>) -> Option<Parts> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut too_long = false;
    for (n, desc) in chain.enumerate() {
        if n >= MAX_SEGMENTS {
            too_long = true;
            break;
        }
        let segment = Segment {
            addr: desc.addr().0,
            len: u64::from(desc.len()),
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else {
            readable.push(segment);
        }
    }
    let last = writable.iter().rposition(|s| s.len > 0)?;
    writable.truncate(last + 1);
    let status_segment = writable.last_mut()?;
    status_segment.len -= 1;
    let status = GuestAddress(status_segment.addr.checked_add(status_segment.len)?);
    let header = if too_long {
        None
    } else {
        take_header(mem, &mut readable)
    };
    writable.retain(|s| s.len > 0);
    Some(Parts {
        header,
        readable,
        writable,
        status,
    })
}

/// Read the header from the front of `readable`, leaving the rest there.
fn take_header<M: GuestMemoryBackend>(mem: &M, readable: &mut Vec<Segment>) -> Option<[u8; 16]> {
    let mut header = [0u8; HEADER_SIZE];
    let mut filled = 0usize;
    while filled < HEADER_SIZE {
        let segment = readable.first_mut()?;
        let take = (segment.len.min((HEADER_SIZE - filled) as u64)) as usize;
        let to = header.get_mut(filled..filled + take)?;
        mem.read_slice(to, GuestAddress(segment.addr)).ok()?;
        filled += take;
        segment.addr = segment.addr.checked_add(take as u64)?;
        segment.len -= take as u64;
        if segment.len == 0 {
            readable.remove(0);
        }
    }
    readable.retain(|s| s.len > 0);
    Some(header)
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// What the request asked; returns the data bytes written into guest memory.
fn run<M: GuestMemoryBackend>(
    mem: &M,
    parts: &Parts,
    disk: &DiskImage,
    helper: Option<&IoHelper>,
) -> Result<u32, Failure> {
    let header = parts
        .header
        .ok_or(Failure::Status(VIRTIO_BLK_S_IOERR, "no whole header"))?;
    let (kind, sector) = {
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = header;
        (u32::from_le_bytes([t0, t1, t2, t3]), u64::from_le_bytes(s))
    };
    let ioerr = |why| Failure::Status(VIRTIO_BLK_S_IOERR, why);
    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = kind == VIRTIO_BLK_T_OUT;
            let (data, wrong_side) = if write {
                (&parts.readable, &parts.writable)
            } else {
                (&parts.writable, &parts.readable)
            };
            if !wrong_side.is_empty() {
                return Err(ioerr("data on the wrong side of the chain"));
            }
            if write && disk.readonly {
                return Err(ioerr("a write to a read-only disk"));
            }
            let len = total(data);
            if !len.is_multiple_of(SECTOR_SIZE) {
                return Err(ioerr("a length that is no multiple of 512"));
            }
            let offset = sector
                .checked_mul(SECTOR_SIZE)
                .filter(|o| {
                    o.checked_add(len)
                        .is_some_and(|end| end <= disk.sectors * SECTOR_SIZE)
                })
                .ok_or(ioerr("sectors past the end of the disk"))?;
            transfer(mem, data, disk, offset, write, helper)?;
            Ok(if write { 0 } else { len as u32 })
        }
        VIRTIO_BLK_T_FLUSH => {
            disk.file.sync_data().map_err(Failure::Io)?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            let mut written = 0u64;
            let mut id = &disk.id[..];
            for segment in &parts.writable {
                let n = segment.len.min(id.len() as u64) as usize;
                let (now, rest) = id.split_at(n);
                mem.write_slice(now, GuestAddress(segment.addr))
                    .map_err(|_| ioerr("an ID buffer outside guest RAM"))?;
                written += n as u64;
                id = rest;
            }
            Ok(written as u32)
        }
        _ => Err(Failure::Status(VIRTIO_BLK_S_UNSUPP, "an unsupported type")),
    }
}

/// Move `segments` of guest memory to (`write`) or from the image at byte `offset`, half
/// of a large one on `helper`.
fn transfer<M: GuestMemoryBackend>(
    mem: &M,
    segments: &[Segment],
    disk: &DiskImage,
    offset: u64,
    write: bool,
    helper: Option<&IoHelper>,
) -> Result<(), Failure> {
    let mut iovecs = Vec::with_capacity(segments.len());
    for segment in segments {
        let len = usize::try_from(segment.len)
            .map_err(|_| Failure::Status(VIRTIO_BLK_S_IOERR, "a huge segment"))?;
        for slice in mem.get_slices(GuestAddress(segment.addr), len) {
            let slice =
                slice.map_err(|_| Failure::Status(VIRTIO_BLK_S_IOERR, "data outside guest RAM"))?;
            iovecs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    // SAFETY: every iovec points into guest RAM that `mem` keeps mapped for this call (the
    // slices were bounds-checked by vm-memory), and the file descriptor is the image's,
    // open for this DiskImage's life.
    unsafe { block_io::transfer(disk.file.as_raw_fd(), iovecs, offset, write, helper) }
        .map_err(Failure::Io)
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
