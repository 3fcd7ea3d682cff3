//! The decoding side of xz's x86 branch converter (the "BCJ" filter), as a streaming
//! filter that can run on a thread of its own.
//!
//! Before compressing, xz rewrote the 32-bit displacement after E8 (call) and E9 (jmp) bytes
//! that look like near branches into absolute targets, so that calls to one function compress
//! as repeated bytes; decoding subtracts each branch's position again. Which E8/E9 bytes were
//! converted is decided by one heuristic on both sides: the displacement's top byte must be
//! 0x00 or 0xFF, and E8/E9 bytes seen in the 4 bytes before it (a `recent` bit mask) can veto
//! or widen the conversion.

/// For `recent >> 1` (0..=4): how many of the target's top bytes the conversion checks.
const TOP_BYTES: [u32; 5] = [0, 1, 2, 2, 3];

/// A displacement's top byte as a near branch has it: all zeros or all ones.
fn near(byte: u8) -> bool {
    byte == 0x00 || byte == 0xff
}

/// The filter's state between buffers: it needs the position in the stream and the
/// history of the last few opcodes.
#[derive(Debug, Clone)]
pub struct BcjX86 {
    /// Stream offset of the first byte of the next buffer.
    position: u32,
    /// Stream offset of the last E8/E9 byte looked at.
    last_opcode: u32,
    /// Bit history of the E8/E9 bytes just before the current one.
    recent: u32,
}

impl BcjX86 {
    /// A filter whose stream starts at `start` (the filter's start offset property, 0 in
    /// practice).
    pub fn new(start: u32) -> Self {
        BcjX86 {
            position: start,
            last_opcode: start.wrapping_sub(5),
            recent: 0,
        }
    }

    /// Undo the conversion in `buf`, which continues the stream where the previous call
    /// stopped. Returns how many leading bytes are final; the rest (at most 4, whose branch
    /// may reach into the next buffer) must be passed again at the front of the next call,
    /// or, at the end of the stream, taken as they are.
    pub fn decode(&mut self, buf: &mut [u8]) -> usize {
        if buf.len() < 5 {
            return 0;
        }
        let limit = buf.len() - 5;
        if self.position.wrapping_sub(self.last_opcode) > 5 {
            self.last_opcode = self.position.wrapping_sub(5);
        }
        let mut i = 0;
        while i <= limit {
            // Skip to the next E8/E9.
            let next = buf
                .get(i..=limit)
                .and_then(|rest| rest.iter().position(|&b| b & 0xfe == 0xe8));
            let Some(skip) = next else {
                i = limit + 1;
                break;
            };
            i += skip;
            // The opcode and the 4 bytes after it (there are 4: i <= limit).
            let Some(window) = buf.get_mut(i..i + 5) else {
                break;
            };
            let Ok(window): Result<&mut [u8; 5], _> = window.try_into() else {
                break;
            };
            let here = self.position.wrapping_add(i as u32);
            let distance = here.wrapping_sub(self.last_opcode);
            self.last_opcode = here;
            if distance > 5 {
                self.recent = 0;
            } else {
                for _ in 0..distance {
                    self.recent = (self.recent & 0x77) << 1;
                }
            }
            let [_, b1, b2, b3, top] = *window;
            let history = (self.recent >> 1) as usize;
            if near(top) && history <= 4 && history != 3 {
                let target = self.unconvert(u32::from_le_bytes([b1, b2, b3, top]), here, history);
                let high = if target & (1 << 24) != 0 { 0xff } else { 0x00 };
                let [t0, t1, t2, _] = target.to_le_bytes();
                window[1..].copy_from_slice(&[t0, t1, t2, high]);
                i += 5;
                self.recent = 0;
            } else {
                i += 1;
                self.recent |= 1;
                if near(top) {
                    self.recent |= 0x10;
                }
            }
        }
        self.position = self.position.wrapping_add(i as u32);
        i
    }

    /// The displacement the encoder saw, from the absolute value it stored for the branch
    /// at `here`. With E8/E9 bytes just before, the encoder may have converted repeatedly
    /// (its output looked like a near branch again); retrace those steps.
    fn unconvert(&self, mut stored: u32, here: u32, history: usize) -> u32 {
        loop {
            let target = stored.wrapping_sub(here.wrapping_add(5));
            if self.recent == 0 {
                return target;
            }
            let bytes = TOP_BYTES.get(history).copied().unwrap_or(0) * 8;
            if !near((target >> (24 - bytes)) as u8) {
                return target;
            }
            stored = target ^ (u32::MAX >> bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};

    /// Bytes that look like x86 code to the filter: many E8/E9 bytes, many near-branch top
    /// bytes, and runs of E8/E9 close together (the history cases).
    fn code_like(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                match state % 8 {
                    0 | 1 => 0xe8,
                    2 => 0xe9,
                    3 => 0x00,
                    4 => 0xff,
                    _ => (state >> 8) as u8,
                }
            })
            .collect()
    }

    fn run(stream: &mut Stream, input: &[u8], expected_len: usize) -> Vec<u8> {
        let mut out = vec![0u8; expected_len + 4096];
        let mut taken = 0;
        let mut written = 0;
        loop {
            let (before_in, before_out) = (stream.total_in(), stream.total_out());
            let status = stream
                .process(&input[taken..], &mut out[written..], Action::Finish)
                .unwrap();
            taken += (stream.total_in() - before_in) as usize;
            written += (stream.total_out() - before_out) as usize;
            if status == Status::StreamEnd {
                break;
            }
        }
        out.truncate(written);
        out
    }

    /// What xz's encoder makes of `data` with the x86 filter: LZMA2 over the converted
    /// bytes, decoded again by LZMA2 alone to give the converted bytes themselves.
    fn converted_by_liblzma(data: &[u8]) -> Vec<u8> {
        let options = LzmaOptions::new_preset(1).unwrap();
        let mut both = Filters::new();
        both.x86();
        both.lzma2(&options);
        let mut encoder = Stream::new_raw_encoder(&both).unwrap();
        let compressed = run(&mut encoder, data, data.len() * 2);
        let mut lzma2 = Filters::new();
        lzma2.lzma2(&options);
        let mut decoder = Stream::new_raw_decoder(&lzma2).unwrap();
        run(&mut decoder, &compressed, data.len())
    }

    /// Decode in pieces of `piece` bytes as a stream would arrive, carrying the unfinished
    /// tail of each into the next.
    fn decode_in_pieces(converted: &[u8], piece: usize) -> Vec<u8> {
        let mut filter = BcjX86::new(0);
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for chunk in converted.chunks(piece) {
            pending.extend_from_slice(chunk);
            let done = filter.decode(&mut pending);
            assert!(pending.len() - done <= 4, "more than 4 bytes left over");
            out.extend_from_slice(&pending[..done]);
            pending.drain(..done);
        }
        out.extend_from_slice(&pending);
        out
    }

    #[test]
    fn undoes_liblzmas_conversion_in_any_piece_size() {
        let data = code_like(200_000);
        let converted = converted_by_liblzma(&data);
        assert_ne!(
            converted, data,
            "the encoder converted nothing: a useless test input"
        );
        for piece in [1, 3, 5, 7, 4096, 65_537, data.len()] {
            assert!(
                decode_in_pieces(&converted, piece) == data,
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn leaves_data_without_branches_alone() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 200) as u8).collect();
        let mut copy = data.clone();
        let done = BcjX86::new(0).decode(&mut copy);
        assert_eq!(done, data.len() - 4);
        assert_eq!(copy, data);
    }

    #[test]
    fn short_buffers_wait_for_more() {
        let mut buf = [0xe8, 1, 2, 3];
        assert_eq!(BcjX86::new(0).decode(&mut buf), 0);
        assert_eq!(buf, [0xe8, 1, 2, 3]);
    }
}
