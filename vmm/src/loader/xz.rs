//! An xz kernel payload decoded on two threads.
//!
//! liblzma's stream decoder does everything on one thread: LZMA2, then the x86 branch
//! filter, then the CRC32 of the output. In the nested lab the filter and the check are a
//! fifth to a quarter of the 1.7-2 s that takes for a distribution kernel. A kernel's payload
//! is one xz block with the filters x86 + LZMA2 (the kernel's build runs `xz --x86 --lzma2
//! --check=crc32`), so minivmm reads the container itself, runs liblzma's raw LZMA2 decoder on
//! a thread of its own, and does the branch filter and the check on the reading thread.
//! Payloads of another shape (several blocks, other filters or checks) go to liblzma's
//! stream decoder as before.

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::Scope;

use liblzma::stream::{Action, Filters, Status, Stream};

use minivmm_firmware::le::u32_at;

use super::bcj_x86::BcjX86;
use super::payload::{Skip, CHUNK, CHUNKS_IN_FLIGHT, XZ_MAGIC};

const FOOTER_MAGIC: &[u8] = b"YZ";
/// Stream header and footer are 12 bytes each.
const STREAM_HEADER: usize = 12;
/// Check types (low nibble of the stream flags) this decoder handles.
const CHECK_NONE: u8 = 0x00;
const CHECK_CRC32: u8 = 0x01;
/// Filter IDs.
const FILTER_X86: u64 = 0x04;
const FILTER_LZMA2: u64 = 0x21;
/// Block flags: number of filters minus one, and the optional size fields.
const FLAG_FILTERS: u8 = 0x03;
const FLAG_COMPRESSED_SIZE: u8 = 0x40;
const FLAG_UNCOMPRESSED_SIZE: u8 = 0x80;
const FLAG_RESERVED: u8 = 0x3c;
/// Largest dictionary accepted (a kernel uses 32 MiB): larger ones go to the stream decoder,
/// which fails them the usual way.
const MAX_DICT: u64 = 512 << 20;
/// Room in front of each chunk for the filter's unfinished bytes of the previous one.
const HEADROOM: usize = 4;

/// One xz stream with a single block, as a kernel's build makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout<'a> {
    /// The block's compressed LZMA2 data, exactly.
    lzma2: &'a [u8],
    /// LZMA2's property byte (the dictionary size).
    lzma2_props: u8,
    /// Start offset of the x86 filter, or `None` for LZMA2 alone.
    x86: Option<u32>,
    /// The CRC32 of the decompressed data, if the stream carries one.
    crc32: Option<u32>,
    /// Decompressed size, from the index.
    size: u64,
}

/// xz's variable-length integers: 7 bits per byte, low first, at most 9 bytes.
fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in 0..9 {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (shift * 7);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// True when `bytes` ends in a CRC32 of the rest.
fn crc_ok(bytes: &[u8]) -> bool {
    match bytes
        .len()
        .checked_sub(4)
        .and_then(|body| bytes.split_at_checked(body))
    {
        Some((body, crc)) => crc == crc32fast::hash(body).to_le_bytes(),
        None => false,
    }
}

/// LZMA2's dictionary size from its property byte.
fn dict_size(props: u8) -> Option<u64> {
    match props {
        0..=39 => Some((2 | u64::from(props & 1)) << (props / 2 + 11)),
        40 => Some(u64::from(u32::MAX)),
        _ => None,
    }
}

impl<'a> Layout<'a> {
    /// The layout of `payload` if it is one single-block xz stream with LZMA2, optionally
    /// after the x86 filter, and no check or CRC32; `None` for anything else. A kernel's
    /// build appends the decompressed size (4 bytes) after the stream; that is allowed.
    pub fn parse(payload: &'a [u8]) -> Option<Layout<'a>> {
        if !payload.starts_with(XZ_MAGIC) || !crc_ok(payload.get(6..STREAM_HEADER)?) {
            return None;
        }
        let flags: [u8; 2] = payload.get(6..8)?.try_into().ok()?;
        let check = flags[1];
        if flags[0] != 0 || !matches!(check, CHECK_NONE | CHECK_CRC32) {
            return None;
        }
        let check_len = if check == CHECK_CRC32 { 4 } else { 0 };
        // The stream footer: at the end, or before the appended size.
        let footer_start = [payload.len(), payload.len().checked_sub(4)?]
            .into_iter()
            .filter_map(|end| end.checked_sub(STREAM_HEADER))
            .find(|&start| payload.get(start + 10..start + 12) == Some(FOOTER_MAGIC))?;
        // Footer: CRC32 of the next 6 bytes, backward size, stream flags, magic.
        let footer: [u8; 10] = payload
            .get(footer_start..footer_start + 10)?
            .try_into()
            .ok()?;
        let [c0, c1, c2, c3, s0, s1, s2, s3, f0, f1] = footer;
        if [c0, c1, c2, c3] != crc32fast::hash(&[s0, s1, s2, s3, f0, f1]).to_le_bytes()
            || [f0, f1] != flags
        {
            return None;
        }
        let index_len = (u32::from_le_bytes([s0, s1, s2, s3]) as usize + 1) * 4;
        let index_start = footer_start.checked_sub(index_len)?;
        let index = payload.get(index_start..footer_start)?;
        // Index: indicator 0, one record (unpadded size, decompressed size), padding, CRC32.
        let mut pos = 1;
        if index.first() != Some(&0) || !crc_ok(index) || varint(index, &mut pos)? != 1 {
            return None;
        }
        let unpadded = usize::try_from(varint(index, &mut pos)?).ok()?;
        let size = varint(index, &mut pos)?;
        if index
            .get(pos..index.len().checked_sub(4)?)?
            .iter()
            .any(|&b| b != 0)
        {
            return None;
        }
        // The block: header, compressed data, padding to 4 bytes, check; then the index.
        let header_len = (usize::from(*payload.get(STREAM_HEADER)?) + 1) * 4;
        let header = payload.get(STREAM_HEADER..STREAM_HEADER + header_len)?;
        if header.first() == Some(&0) || !crc_ok(header) {
            return None;
        }
        // Unpadded size counts header, data and check; the padding goes before the check.
        let padded = unpadded.checked_add(3)? & !3;
        if STREAM_HEADER.checked_add(padded)? != index_start {
            return None;
        }
        let check_at = index_start - check_len;
        let data_len = unpadded.checked_sub(header_len)?.checked_sub(check_len)?;
        let data_start = STREAM_HEADER + header_len;
        let (x86, lzma2_props) = Self::filters(header, data_len as u64, size)?;
        if dict_size(lzma2_props)? > MAX_DICT {
            return None;
        }
        let padding = payload.get(data_start + data_len..check_at)?;
        if padding.iter().any(|&b| b != 0) {
            return None;
        }
        let crc32 = match check {
            CHECK_CRC32 => Some(u32_at(payload, check_at)?),
            _ => None,
        };
        Some(Layout {
            lzma2: payload.get(data_start..data_start + data_len)?,
            lzma2_props,
            x86,
            crc32,
            size,
        })
    }

    /// The block header's filters: (x86 start offset, LZMA2 property byte). Sizes the
    /// header gives must agree with the index.
    fn filters(header: &[u8], data_len: u64, size: u64) -> Option<(Option<u32>, u8)> {
        let flags = *header.get(1)?;
        if flags & FLAG_RESERVED != 0 {
            return None;
        }
        let mut pos = 2;
        if flags & FLAG_COMPRESSED_SIZE != 0 && varint(header, &mut pos)? != data_len {
            return None;
        }
        if flags & FLAG_UNCOMPRESSED_SIZE != 0 && varint(header, &mut pos)? != size {
            return None;
        }
        let mut x86 = None;
        let count = usize::from(flags & FLAG_FILTERS) + 1;
        for n in 0..count {
            let id = varint(header, &mut pos)?;
            let props_len = usize::try_from(varint(header, &mut pos)?).ok()?;
            let props = header.get(pos..pos.checked_add(props_len)?)?;
            pos += props_len;
            let last = n + 1 == count;
            match (id, props_len, last) {
                (FILTER_X86, 0, false) if x86.is_none() => x86 = Some(0),
                (FILTER_X86, 4, false) if x86.is_none() => x86 = Some(u32_at(props, 0)?),
                (FILTER_LZMA2, 1, true) => {
                    let padding = header.get(pos..header.len().checked_sub(4)?)?;
                    let lzma2 = *props.first()?;
                    return padding.iter().all(|&b| b == 0).then_some((x86, lzma2));
                }
                _ => return None,
            }
        }
        None
    }
}

/// What the LZMA2 thread hands the reader.
enum Piece {
    /// `len` decoded bytes of the buffer, after its headroom.
    Data(Vec<u8>, usize),
    /// All of the block decoded, its size as the index says.
    End,
    Failed(String),
}

/// The reading side: the x86 filter and the check over what the LZMA2 thread decodes.
pub struct SplitReader {
    pieces: Receiver<Piece>,
    free: SyncSender<Vec<u8>>,
    /// The piece being handed out, final bytes in `start..end`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes the filter could not finish at the end of the last piece.
    carry: [u8; HEADROOM],
    carry_len: usize,
    x86: Option<BcjX86>,
    crc: crc32fast::Hasher,
    expected_crc: Option<u32>,
    finished: bool,
}

/// Start decoding `layout` on a thread of `scope`; read the decompressed data from the
/// returned reader. Dropping the reader stops the thread.
pub fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    layout: Layout<'env>,
) -> Result<SplitReader, Skip> {
    let (piece_tx, pieces) = sync_channel(CHUNKS_IN_FLIGHT);
    let (free, free_rx) = sync_channel(CHUNKS_IN_FLIGHT + 1);
    for _ in 0..CHUNKS_IN_FLIGHT {
        // Cannot fail: the channel has room for every buffer and its receiver is here.
        let _ = free.send(vec![0u8; HEADROOM + CHUNK]);
    }
    std::thread::Builder::new()
        .name("kernel-lzma2".into())
        .spawn_scoped(scope, move || decode_lzma2(layout, piece_tx, free_rx))
        .map_err(|e| Skip::Corrupt(format!("cannot start a decoder thread: {e}")))?;
    Ok(SplitReader {
        pieces,
        free,
        buf: Vec::new(),
        start: 0,
        end: 0,
        carry: [0; HEADROOM],
        carry_len: 0,
        x86: layout.x86.map(BcjX86::new),
        crc: crc32fast::Hasher::new(),
        expected_crc: layout.crc32,
        finished: false,
    })
}

/// The LZMA2 thread: decode the block into pieces until its end, checking its sizes.
fn decode_lzma2(layout: Layout, pieces: SyncSender<Piece>, free: Receiver<Vec<u8>>) {
    let failed = |why: String| {
        let _ = pieces.send(Piece::Failed(why));
    };
    let mut filters = Filters::new();
    let stream = filters
        .lzma2_properties(&[layout.lzma2_props])
        .and_then(|filters| Stream::new_raw_decoder(filters));
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(e) => return failed(format!("LZMA2 decoder: {e}")),
    };
    let mut input = layout.lzma2;
    loop {
        // No free buffer: the reader is gone, and so is the need to go on.
        let Ok(mut buf) = free.recv() else { return };
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let status = stream.process(
            input,
            buf.get_mut(HEADROOM..).unwrap_or_default(),
            Action::Run,
        );
        let taken = (stream.total_in() - in_before) as usize;
        let len = (stream.total_out() - out_before) as usize;
        input = input.get(taken..).unwrap_or_default();
        if stream.total_out() > layout.size {
            return failed("more data than the index says".into());
        }
        match status {
            Ok(Status::StreamEnd) => {
                if len > 0 && pieces.send(Piece::Data(buf, len)).is_err() {
                    return;
                }
                if !input.is_empty() || stream.total_out() != layout.size {
                    return failed("the block's sizes do not match the index".into());
                }
                let _ = pieces.send(Piece::End);
                return;
            }
            Ok(_) if len == 0 && taken == 0 => return failed("truncated LZMA2 data".into()),
            Ok(_) => {
                if pieces.send(Piece::Data(buf, len)).is_err() {
                    return;
                }
            }
            Err(e) => return failed(format!("LZMA2 data: {e}")),
        }
    }
}

impl SplitReader {
    /// Run the x86 filter over a piece of `len` bytes after the headroom, the bytes carried
    /// from the last piece put in front; returns where the final bytes are in `buf`.
    fn filter(&mut self, buf: &mut [u8], len: usize) -> Option<(usize, usize)> {
        let begin = HEADROOM - self.carry_len;
        let carried = self.carry.get(..self.carry_len)?;
        buf.get_mut(begin..HEADROOM)?.copy_from_slice(carried);
        let data = buf.get_mut(begin..HEADROOM.checked_add(len)?)?;
        let done = match &mut self.x86 {
            Some(filter) => filter.decode(data),
            None => data.len(),
        };
        let (finished, unfinished) = data.split_at_checked(done)?;
        self.carry_len = unfinished.len();
        self.carry
            .get_mut(..self.carry_len)?
            .copy_from_slice(unfinished);
        self.crc.update(finished);
        Some((begin, begin + done))
    }

    /// Take the next piece from the LZMA2 thread into `buf`; false at the end.
    fn next_piece(&mut self) -> std::io::Result<bool> {
        let damaged = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
        if !self.buf.is_empty() {
            // The thread may have finished and dropped its end; then the buffer is not needed.
            let _ = self.free.send(std::mem::take(&mut self.buf));
        }
        match self.pieces.recv() {
            Ok(Piece::Data(mut buf, len)) => {
                let (start, end) = self
                    .filter(&mut buf, len)
                    .ok_or_else(|| damaged("a piece larger than its buffer".into()))?;
                (self.start, self.end) = (start, end);
                self.buf = buf;
                Ok(true)
            }
            Ok(Piece::End) => {
                // The last few bytes are final as they are.
                let tail = self.carry.get(..self.carry_len).unwrap_or_default();
                self.crc.update(tail);
                let crc = std::mem::take(&mut self.crc).finalize();
                if self.expected_crc.is_some_and(|expected| expected != crc) {
                    return Err(damaged("the decompressed data fail their CRC32".into()));
                }
                self.buf = tail.to_vec();
                (self.start, self.end) = (0, self.carry_len);
                self.carry_len = 0;
                self.finished = true;
                Ok(self.end > 0)
            }
            Ok(Piece::Failed(why)) => Err(damaged(why)),
            Err(_) => Err(damaged("the LZMA2 thread stopped".into())),
        }
    }
}

impl Read for SplitReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.start == self.end {
            if self.finished || !self.next_piece()? {
                return Ok(0);
            }
        }
        let ready = self.buf.get(self.start..self.end).unwrap_or_default();
        let n = out.len().min(ready.len());
        if let (Some(to), Some(from)) = (out.get_mut(..n), ready.get(..n)) {
            to.copy_from_slice(from);
        }
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::{Check, LzmaOptions};

    fn sample(len: usize) -> Vec<u8> {
        // Compressible, with E8/E9 bytes for the x86 filter to work on.
        (0..len as u32)
            .map(|i| match i % 97 {
                0 => 0xe8,
                1..=3 => (i / 97) as u8,
                4 => 0x00,
                _ => (i % 251) as u8 ^ (i / 4096) as u8,
            })
            .collect()
    }

    /// `data` as `xz` would write it, with the given filters and check.
    fn xz(data: &[u8], x86: bool, check: Check) -> Vec<u8> {
        let options = LzmaOptions::new_preset(1).unwrap();
        let mut filters = Filters::new();
        if x86 {
            filters.x86();
        }
        filters.lzma2(&options);
        let stream = Stream::new_stream_encoder(&filters, check).unwrap();
        let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        std::io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    }

    fn decode(payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let layout = Layout::parse(payload).expect("a single-block stream");
        std::thread::scope(|scope| {
            let mut reader = spawn(scope, layout).unwrap();
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
    }

    #[test]
    fn decodes_what_liblzma_encoded() {
        let data = sample(3 * CHUNK + 12_345);
        for (x86, check, crc) in [
            (true, Check::Crc32, true),
            (false, Check::Crc32, true),
            (true, Check::None, false),
        ] {
            let payload = xz(&data, x86, check);
            let layout = Layout::parse(&payload).unwrap();
            assert_eq!(layout.x86.is_some(), x86);
            assert_eq!(layout.crc32.is_some(), crc);
            assert_eq!(layout.size, data.len() as u64);
            assert!(decode(&payload).unwrap() == data, "x86 {x86}, {check:?}");
        }
    }

    #[test]
    fn the_size_a_kernel_build_appends_is_allowed() {
        let data = sample(100_000);
        let mut payload = xz(&data, true, Check::Crc32);
        payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert!(decode(&payload).unwrap() == data);
    }

    #[test]
    fn other_shapes_are_left_to_the_stream_decoder() {
        let data = sample(10_000);
        assert_eq!(Layout::parse(&xz(&data, true, Check::Crc64)), None);
        assert_eq!(Layout::parse(&xz(&data, true, Check::Sha256)), None);
        // Two streams back to back: the footer found is the second's, whose index does not
        // describe the first block where the parser looks for it.
        let mut two = xz(&data, true, Check::Crc32);
        two.extend(xz(&data, true, Check::Crc32));
        assert_eq!(Layout::parse(&two), None);
        assert_eq!(Layout::parse(b"not xz at all"), None);
        let payload = xz(&data, true, Check::Crc32);
        assert!(Layout::parse(&payload[..payload.len() - 1]).is_none());
        // A damaged block header fails its CRC32.
        let mut header = payload.clone();
        header[STREAM_HEADER + 2] ^= 1;
        assert_eq!(Layout::parse(&header), None);
    }

    #[test]
    fn damaged_data_fail_the_read() {
        let data = sample(2 * CHUNK);
        let payload = xz(&data, true, Check::Crc32);
        let layout = Layout::parse(&payload).unwrap();
        let data_start = layout.lzma2.as_ptr() as usize - payload.as_ptr() as usize;
        let block_len = data_start - STREAM_HEADER + layout.lzma2.len();
        let check_at = STREAM_HEADER + ((block_len + 3) & !3);
        assert_eq!(
            &payload[STREAM_HEADER + block_len..check_at],
            &[0, 0, 0][..check_at - STREAM_HEADER - block_len]
        );
        assert_eq!(u32_at(&payload, check_at), Some(crc32fast::hash(&data)));
        let mut bad_check = payload.clone();
        bad_check[check_at] ^= 0x40;
        let error = decode(&bad_check).unwrap_err();
        assert!(error.to_string().contains("CRC32"), "{error}");
        let mut bad_data = payload.clone();
        bad_data[STREAM_HEADER + 40] ^= 0x40;
        assert!(decode(&bad_data).is_err());
    }

    #[test]
    fn dropping_the_reader_stops_the_thread() {
        let data = sample(8 * CHUNK);
        let payload = xz(&data, true, Check::Crc32);
        let layout = Layout::parse(&payload).unwrap();
        std::thread::scope(|scope| {
            let mut reader = spawn(scope, layout).unwrap();
            let mut first = [0u8; 100];
            reader.read_exact(&mut first).unwrap();
            assert_eq!(first[..], data[..100]);
            // The scope returns only if the thread ends with the reader gone.
        });
    }

    #[test]
    fn dictionary_sizes_follow_the_format() {
        assert_eq!(dict_size(0), Some(4 << 10));
        assert_eq!(dict_size(1), Some(6 << 10));
        assert_eq!(dict_size(0x1a), Some(32 << 20));
        assert_eq!(dict_size(40), Some(u64::from(u32::MAX)));
        assert_eq!(dict_size(41), None);
    }
}
