//! The compressed vmlinux inside a bzImage, decompressed on the host.
//!
//! A bzImage is a small decompressor plus the real kernel (an ELF vmlinux), compressed. Run
//! in the guest, that decompressor is the slowest part of boot under nested virtualization;
//! decompressing on the host with liblzma or zlib and entering the vmlinux directly skips it.
//! Formats minivmm does not decode fall back to the guest's own decompressor.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use linux_loader::loader::bootparam::setup_header;
use minivmm_firmware::le::{u16_at, u32_at};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// The boot protocol's magic in `setup_header.header`: "HdrS".
const HDR_MAGIC: u32 = 0x5372_6448;
/// `payload_offset`/`payload_length` exist from boot protocol 2.08 on.
const MIN_PAYLOAD_VERSION: u16 = 0x0208;
/// Largest vmlinux minivmm decompresses (a defence against decompression bombs).
const MAX_VMLINUX: u64 = 512 << 20;
/// Magic numbers of the payload formats minivmm decodes.
pub(super) const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
pub const ELF_MAGIC: &[u8] = b"\x7fELF";

/// A bzImage's setup header, read from the file's bytes.
pub fn setup_header(image: &[u8]) -> Option<setup_header> {
    let size = std::mem::size_of::<setup_header>();
    let bytes = image.get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size)?;
    let header = setup_header::from_slice(bytes).copied()?;
    (header.header == HDR_MAGIC).then_some(header)
}

/// The compressed payload: where the protected-mode code starts, plus `payload_offset`.
fn compressed_payload<'a>(image: &'a [u8], header: &setup_header) -> Option<&'a [u8]> {
    if header.version < MIN_PAYLOAD_VERSION {
        return None;
    }
    let setup_sects = match header.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + header.payload_offset as usize;
    image.get(start..start.checked_add(header.payload_length as usize)?)
}

/// Why the payload could not be used (each case falls back to the guest's decompressor).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Skip {
    /// Not a bzImage with a payload description.
    #[error("no payload described in the setup header")]
    NoPayload,
    /// Compressed with something minivmm does not decode (zstd, lz4, bzip2, lzo, lzma).
    #[error("payload compression {0:02x?} is not decoded on the host")]
    Unsupported(Vec<u8>),
    /// The stream is damaged or too large.
    #[error("payload does not decompress: {0}")]
    Corrupt(String),
    /// It decompressed to something other than an ELF file.
    #[error("payload is not an ELF vmlinux")]
    NotElf,
    /// The VM is no longer being built (something else failed); nothing to fall back to.
    #[error("loading abandoned")]
    Abandoned,
}

/// A reader of the decompressed vmlinux inside `image`, a bzImage. A kernel's xz payload
/// decodes on two threads (see [`super::xz`]), the second one a thread of `scope`.
pub fn decoder<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    image: &'env [u8],
    header: &setup_header,
) -> Result<Box<dyn Read + 'env>, Skip> {
    let payload = compressed_payload(image, header).ok_or(Skip::NoPayload)?;
    if payload.starts_with(XZ_MAGIC) {
        if let Some(layout) = super::xz::Layout::parse(payload) {
            log::debug!("xz payload: LZMA2 on a thread of its own, x86 filter and CRC32 beside it");
            return Ok(Box::new(super::xz::spawn(scope, layout)?));
        }
        log::debug!("the xz payload is not one x86+LZMA2 block; decoding it on one thread");
        Ok(Box::new(liblzma::read::XzDecoder::new(payload)))
    } else if payload.starts_with(GZIP_MAGIC) {
        Ok(Box::new(flate2::read::GzDecoder::new(payload)))
    } else {
        let magic = payload.get(..4).unwrap_or(payload).to_vec();
        Err(Skip::Unsupported(magic))
    }
}

/// Where a vmlinux landed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vmlinux {
    /// Physical entry point (startup_64).
    pub entry: u64,
    /// First byte after the highest segment, bss included.
    pub end: u64,
}

/// ELF program header type of a loadable segment.
const PT_LOAD: u32 = 1;
/// ELF machine number of x86-64.
const EM_X86_64: u16 = 62;
/// Largest ELF header plus program header table minivmm reads.
const MAX_HEADERS: usize = 64 << 10;
/// Copy granule from the decoder to guest memory (and from the LZMA2 thread, `xz.rs`).
pub(super) const CHUNK: usize = 1 << 20;
/// Chunks between two pipeline threads, so that neither waits on the other.
pub(super) const CHUNKS_IN_FLIGHT: usize = 3;

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

/// A loadable segment: file offset, size in the file, physical address, size in memory.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    filesz: u64,
    paddr: u64,
    memsz: u64,
}

/// Parse the ELF header and program headers at the start of a vmlinux.
fn parse_headers(head: &[u8]) -> Result<(u64, Vec<Segment>), Skip> {
    let bad = || Skip::NotElf;
    if !head.starts_with(ELF_MAGIC) || head.get(4) != Some(&2) || head.get(5) != Some(&1) {
        return Err(bad());
    }
    if u16_at(head, 18) != Some(EM_X86_64) {
        return Err(bad());
    }
    let entry = u64_at(head, 24).ok_or_else(bad)?;
    let phoff = u64_at(head, 32).ok_or_else(bad)? as usize;
    let phentsize = usize::from(u16_at(head, 54).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(head, 56).ok_or_else(bad)?);
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(head, ph).ok_or_else(bad)? != PT_LOAD {
            continue;
        }
        segments.push(Segment {
            offset: u64_at(head, ph + 8).ok_or_else(bad)?,
            paddr: u64_at(head, ph + 24).ok_or_else(bad)?,
            filesz: u64_at(head, ph + 32).ok_or_else(bad)?,
            memsz: u64_at(head, ph + 40).ok_or_else(bad)?,
        });
    }
    segments.sort_by_key(|s| s.offset);
    Ok((entry, segments))
}

/// Read exactly `buf.len()` bytes, or fail as a damaged stream.
fn read_exact(reader: &mut dyn Read, buf: &mut [u8]) -> Result<(), Skip> {
    reader
        .read_exact(buf)
        .map_err(|e| Skip::Corrupt(e.to_string()))
}

/// Granule of [`write_nonzero_pages`]: one x86 page.
const PAGE: usize = 4096;

/// Write `buf` at `addr` except its all-zero pages, which fresh guest RAM already holds.
/// A distribution vmlinux carries tens of MiB of zeros in its last segment (bss and brk sit
/// in front of `.init.scratch`, so they are file bytes); skipping them leaves those pages
/// untouched: no page faults, no host memory until the guest uses them.
fn write_nonzero_pages<M: GuestMemoryBackend + ?Sized>(
    memory: &M,
    buf: &[u8],
    addr: u64,
) -> Result<(), Skip> {
    let write = |run: Option<&[u8]>, offset: usize| {
        memory
            .write_slice(run.unwrap_or_default(), GuestAddress(addr + offset as u64))
            .map_err(|e| Skip::Corrupt(e.to_string()))
    };
    // Start of the current run of pages that hold data.
    let mut run_start = None;
    for (index, page) in buf.chunks(PAGE).enumerate() {
        // An OR over the page (no early exit) compiles to wide vector instructions.
        let zero = page.iter().fold(0, |acc, &b| acc | b) == 0;
        match (zero, run_start) {
            (false, None) => run_start = Some(index * PAGE),
            (true, Some(start)) => {
                write(buf.get(start..index * PAGE), start)?;
                run_start = None;
            }
            _ => {}
        }
    }
    match run_start {
        Some(start) => write(buf.get(start..), start),
        None => Ok(()),
    }
}

/// Stream a vmlinux from `reader` straight into guest memory, segment by segment, without
/// holding the whole (tens of MiB) image in host memory. Segments must sit above `min_addr`
/// and inside guest RAM, which must be fresh (all zero): bss, and every all-zero page of the
/// file, are left as the zeroed guest RAM they land in.
///
/// Decoding and writing run on two threads: under nested virtualization the first write to
/// each guest page costs nearly half as much as decoding it, and the two overlap. `abandon`
/// stops the work between chunks.
pub fn load_vmlinux<M: GuestMemoryBackend + Sync + ?Sized>(
    memory: &M,
    reader: &mut dyn Read,
    min_addr: u64,
    abandon: &AtomicBool,
) -> Result<Vmlinux, Skip> {
    let mut head = vec![0u8; 64];
    read_exact(reader, &mut head)?;
    let phoff = u64_at(&head, 32).ok_or(Skip::NotElf)? as usize;
    let table =
        usize::from(u16_at(&head, 54).unwrap_or(0)) * usize::from(u16_at(&head, 56).unwrap_or(0));
    let head_len = phoff.saturating_add(table).max(64);
    if head_len > MAX_HEADERS {
        return Err(Skip::NotElf);
    }
    head.resize(head_len, 0);
    read_exact(reader, head.get_mut(64..).unwrap_or_default())?;
    let (entry, segments) = parse_headers(&head)?;
    let end = check_segments(memory, &segments, head_len as u64, min_addr)?;
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel(CHUNKS_IN_FLIGHT);
        let (free_tx, free_rx) = sync_channel(CHUNKS_IN_FLIGHT);
        for _ in 0..CHUNKS_IN_FLIGHT {
            // Cannot fail: the channel has room for every buffer and its receiver is here.
            let _ = free_tx.send(vec![0u8; CHUNK]);
        }
        let writer = std::thread::Builder::new()
            .name("kernel-writer".into())
            .spawn_scoped(scope, move || write_chunks(memory, full_rx, free_tx))
            .map_err(|e| Skip::Corrupt(format!("cannot start a writer thread: {e}")))?;
        let decoded = decode_segments(
            reader,
            &segments,
            head_len as u64,
            full_tx,
            free_rx,
            abandon,
        )
        .and_then(|()| drain(reader));
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Skip::Corrupt("the writer thread panicked".into())));
        // A writer failure also stops the decoder; report the writer's reason.
        written.and(decoded)
    })?;
    Ok(Vmlinux { entry, end })
}

/// Check that every segment lies in guest RAM above `min_addr`, in file order after the
/// headers; returns the end of the highest one.
fn check_segments<M: GuestMemoryBackend + ?Sized>(
    memory: &M,
    segments: &[Segment],
    mut position: u64,
    min_addr: u64,
) -> Result<u64, Skip> {
    let mut end = 0;
    for segment in segments {
        let seg_end = segment.paddr.checked_add(segment.memsz);
        let fits = seg_end.is_some_and(|e| {
            memory.check_range(GuestAddress(segment.paddr), (e - segment.paddr) as usize)
        });
        if segment.offset < position
            || segment.paddr < min_addr
            || !fits
            || segment.filesz > segment.memsz
        {
            return Err(Skip::Corrupt(format!(
                "segment at {:#x} does not fit guest RAM",
                segment.paddr
            )));
        }
        if segment.offset.saturating_add(segment.filesz) > MAX_VMLINUX {
            return Err(Skip::Corrupt(format!(
                "larger than {} MiB",
                MAX_VMLINUX >> 20
            )));
        }
        position = segment.offset + segment.filesz;
        end = end.max(segment.paddr + segment.memsz);
    }
    if end == 0 {
        return Err(Skip::NotElf);
    }
    Ok(end)
}

/// A decoded piece of the vmlinux: `len` bytes of `buf`, for guest address `addr`.
struct Chunk {
    addr: u64,
    buf: Vec<u8>,
    len: usize,
}

/// The decoding side: read each segment's file bytes in chunks and hand them to the writer.
fn decode_segments(
    reader: &mut dyn Read,
    segments: &[Segment],
    mut position: u64,
    full: SyncSender<Chunk>,
    free: Receiver<Vec<u8>>,
    abandon: &AtomicBool,
) -> Result<(), Skip> {
    let writer_gone = || Skip::Corrupt("the writer thread stopped".into());
    for segment in segments {
        std::io::copy(
            &mut reader.take(segment.offset - position),
            &mut std::io::sink(),
        )
        .map_err(|e| Skip::Corrupt(e.to_string()))?;
        let mut copied = 0;
        while copied < segment.filesz {
            if abandon.load(Ordering::Relaxed) {
                return Err(Skip::Abandoned);
            }
            let len = (segment.filesz - copied).min(CHUNK as u64) as usize;
            let mut buf = free.recv().map_err(|_| writer_gone())?;
            read_exact(reader, buf.get_mut(..len).unwrap_or_default())?;
            let addr = segment.paddr + copied;
            full.send(Chunk { addr, buf, len })
                .map_err(|_| writer_gone())?;
            copied += len as u64;
        }
        position = segment.offset + segment.filesz;
    }
    Ok(())
}

/// Read what follows the last segment (section headers, relocations) to the end of the
/// stream, where the decoder verifies the data's integrity check.
fn drain(reader: &mut dyn Read) -> Result<(), Skip> {
    std::io::copy(reader, &mut std::io::sink())
        .map(|_| ())
        .map_err(|e| Skip::Corrupt(e.to_string()))
}

/// The writing side: copy each chunk into guest memory and return its buffer.
fn write_chunks<M: GuestMemoryBackend + ?Sized>(
    memory: &M,
    full: Receiver<Chunk>,
    free: SyncSender<Vec<u8>>,
) -> Result<(), Skip> {
    for chunk in full {
        write_nonzero_pages(
            memory,
            chunk.buf.get(..chunk.len).unwrap_or_default(),
            chunk.addr,
        )?;
        // The decoder may have finished and gone; then the buffer is not needed.
        let _ = free.send(chunk.buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    type Memory = vm_memory::GuestMemoryMmap<()>;

    static KEEP_GOING: AtomicBool = AtomicBool::new(false);

    /// A minimal bzImage: boot sector with a setup header, one setup sector, then the payload
    /// (with the 4-byte size trailer the kernel build appends).
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 2 * 512];
        let header = setup_header {
            setup_sects: 1,
            header: HDR_MAGIC,
            version: 0x020f,
            payload_offset: 0x10,
            payload_length: payload.len() as u32 + 4,
            ..Default::default()
        };
        image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()]
            .copy_from_slice(header.as_slice());
        image.extend_from_slice(&[0u8; 0x10]);
        image.extend_from_slice(payload);
        image.extend_from_slice(&1234u32.to_le_bytes());
        image
    }

    /// An x86-64 ELF with two PT_LOAD segments (the second with bss) and a note to skip.
    fn fake_vmlinux() -> Vec<u8> {
        let mut elf = vec![0u8; 0x3000];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        elf[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&3u16.to_le_bytes());
        let phdrs = [
            (PT_LOAD, 0x2000u64, 0x30_0000u64, 0x800u64, 0x2000u64),
            (4, 0x100, 0, 0x10, 0x10), // PT_NOTE
            (PT_LOAD, 0x1000, 0x20_0000, 0x1000, 0x1000),
        ];
        for (i, (kind, offset, paddr, filesz, memsz)) in phdrs.into_iter().enumerate() {
            let ph = 64 + i * 56;
            elf[ph..ph + 4].copy_from_slice(&kind.to_le_bytes());
            elf[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
            elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            elf[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
            elf[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        for (i, b) in elf[0x1000..].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        elf
    }

    /// xz as liblzma's defaults make it (CRC64): decoded on one thread.
    fn xz(data: &[u8]) -> Vec<u8> {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// xz as a kernel's build makes it (x86 + LZMA2, CRC32; [`bzimage`] appends the size):
    /// decoded on two threads.
    fn kernel_xz(data: &[u8]) -> Vec<u8> {
        use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
        let mut filters = Filters::new();
        filters.x86();
        filters.lzma2(&LzmaOptions::new_preset(6).unwrap());
        let stream = Stream::new_stream_encoder(&filters, Check::Crc32).unwrap();
        let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        encoder.write_all(data).unwrap();
        let payload = encoder.finish().unwrap();
        let in_bzimage = [&payload[..], &[0; 4]].concat();
        assert!(super::super::xz::Layout::parse(&in_bzimage).is_some());
        payload
    }

    /// Decode `image`'s payload into `memory` as the loader does.
    fn decode_into(memory: &Memory, image: &[u8], abandon: &AtomicBool) -> Result<Vmlinux, Skip> {
        let header = setup_header(image).unwrap();
        std::thread::scope(|scope| {
            let mut reader = decoder(scope, image, &header)?;
            load_vmlinux(memory, &mut reader, 0x10_0000, abandon)
        })
    }

    fn memory() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
    }

    fn load(image: &[u8]) -> (Memory, Result<Vmlinux, Skip>) {
        let memory = memory();
        let result = decode_into(&memory, image, &KEEP_GOING);
        (memory, result)
    }

    fn assert_segments_in_place(memory: &Memory) {
        let elf = fake_vmlinux();
        let mut text = vec![0u8; 0x1000];
        memory
            .read_slice(&mut text, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(text, elf[0x1000..0x2000]);
        let mut data = vec![0u8; 0x800];
        memory
            .read_slice(&mut data, GuestAddress(0x30_0000))
            .unwrap();
        assert_eq!(data, elf[0x2000..0x2800]);
        let bss: u8 = memory.read_obj(GuestAddress(0x30_0800)).unwrap();
        assert_eq!(bss, 0);
    }

    #[test]
    fn xz_payload_streams_into_guest_memory() {
        for payload in [xz(&fake_vmlinux()), kernel_xz(&fake_vmlinux())] {
            let (memory, result) = load(&bzimage(&payload));
            assert_eq!(
                result,
                Ok(Vmlinux {
                    entry: 0x20_0000,
                    end: 0x30_2000
                })
            );
            assert_segments_in_place(&memory);
        }
    }

    #[test]
    fn a_failed_integrity_check_falls_back() {
        // The CRC32 sits before the index; the loader reads to the end so that it is checked
        // even though the last segment ends where the file does.
        let elf = fake_vmlinux();
        let mut payload = kernel_xz(&elf);
        let crc = crc32fast::hash(&elf).to_le_bytes();
        let at = payload.windows(4).rposition(|w| w == crc).unwrap();
        payload[at] ^= 1;
        let (_, result) = load(&bzimage(&payload));
        assert!(
            matches!(&result, Err(Skip::Corrupt(why)) if why.contains("CRC32")),
            "{result:?}"
        );
    }

    #[test]
    fn gzip_payload_streams_into_guest_memory() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&fake_vmlinux()).unwrap();
        let (memory, result) = load(&bzimage(&encoder.finish().unwrap()));
        assert_eq!(result.unwrap().entry, 0x20_0000);
        assert_segments_in_place(&memory);
    }

    #[test]
    fn other_formats_and_damage_fall_back() {
        let (_, zstd) = load(&bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]));
        assert_eq!(
            zstd.unwrap_err(),
            Skip::Unsupported(vec![0x28, 0xb5, 0x2f, 0xfd])
        );
        for mut damaged in [xz(&fake_vmlinux()), kernel_xz(&fake_vmlinux())] {
            let middle = damaged.len() / 2;
            damaged[middle] ^= 0xff;
            let (_, result) = load(&bzimage(&damaged));
            assert!(matches!(result, Err(Skip::Corrupt(_))), "{result:?}");
        }
        let (_, result) = load(&bzimage(&xz(&[0u8; 100])));
        assert_eq!(result, Err(Skip::NotElf));
    }

    #[test]
    fn an_abandoned_load_stops_before_writing() {
        for payload in [xz(&fake_vmlinux()), kernel_xz(&fake_vmlinux())] {
            let image = bzimage(&payload);
            let memory = memory();
            let result = decode_into(&memory, &image, &AtomicBool::new(true));
            assert_eq!(result, Err(Skip::Abandoned));
            let text: u8 = memory.read_obj(GuestAddress(0x20_0000)).unwrap();
            assert_eq!(text, 0, "an abandoned load wrote the kernel");
        }
    }

    #[test]
    fn segments_outside_guest_ram_are_refused() {
        let mut elf = fake_vmlinux();
        // Move the first segment to 64 MiB, past the 4 MiB of RAM.
        elf[64 + 24..64 + 32].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let (_, result) = load(&bzimage(&xz(&elf)));
        assert!(matches!(result, Err(Skip::Corrupt(_))), "{result:?}");
    }

    /// Whether the host page behind guest address `addr` is resident.
    fn resident(memory: &Memory, addr: u64) -> bool {
        let host = memory.get_host_address(GuestAddress(addr)).unwrap();
        let mut vec = 0u8;
        // SAFETY: mincore on one page of a mapping `memory` owns, writing one byte to `vec`.
        let rc = unsafe { libc::mincore(host.cast(), PAGE, &mut vec) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec & 1 == 1
    }

    #[test]
    fn zero_pages_of_the_file_are_not_written() {
        // A segment of three file pages: data, zeros, data (bss-in-the-file, as in Debian's
        // vmlinux). Its zero page must read as zeros and stay out of host memory.
        let mut elf = fake_vmlinux();
        elf.resize(0x6000, 0);
        elf[64 + 8..64 + 16].copy_from_slice(&0x3000u64.to_le_bytes()); // offset
        elf[64 + 32..64 + 40].copy_from_slice(&0x3000u64.to_le_bytes()); // filesz
        elf[64 + 40..64 + 48].copy_from_slice(&0x3000u64.to_le_bytes()); // memsz
        elf[0x3000..0x4000].fill(0x11);
        elf[0x5000..0x6000].fill(0x33);
        let image = bzimage(&kernel_xz(&elf));
        let memory = memory();
        let host = memory.get_host_address(GuestAddress(0)).unwrap();
        // Keep huge pages out, so that residency is per 4 KiB page.
        // SAFETY: madvise on the mapping `memory` owns; it changes no contents.
        let rc = unsafe { libc::madvise(host.cast(), 4 << 20, libc::MADV_NOHUGEPAGE) };
        assert_eq!(rc, 0);
        let result = decode_into(&memory, &image, &KEEP_GOING);
        assert_eq!(result.unwrap().end, 0x30_3000);
        // Before anything reads it back (a read would map the kernel's shared zero page).
        assert!(resident(&memory, 0x30_0000));
        assert!(!resident(&memory, 0x30_1000), "the zero page was written");
        assert!(resident(&memory, 0x30_2000));
        let mut segment = vec![0u8; 0x3000];
        memory
            .read_slice(&mut segment, GuestAddress(0x30_0000))
            .unwrap();
        assert_eq!(segment, elf[0x3000..0x6000]);
    }

    #[test]
    fn files_without_a_setup_header_are_not_bzimages() {
        assert!(setup_header(b"hello").is_none());
        assert!(setup_header(&[0u8; 4096]).is_none());
    }
}
