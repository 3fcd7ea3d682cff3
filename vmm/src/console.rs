//! Host input to the guest console, with QEMU's escape: Ctrl-A x quits,
//! Ctrl-A Ctrl-A sends one Ctrl-A.

/// Ctrl-A, the escape byte.
const ESCAPE: u8 = 0x01;

/// What a chunk of host input means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes for the guest.
    pub guest: Vec<u8>,
    /// The user asked minivmm to quit.
    pub quit: bool,
}

/// Tracks an escape split across reads.
#[derive(Debug, Default)]
pub struct EscapeDecoder {
    after_escape: bool,
}

impl EscapeDecoder {
    /// Decode one chunk of input. Bytes after a quit are dropped.
    pub fn feed(&mut self, input: &[u8]) -> Decoded {
        let mut out = Decoded::default();
        for &byte in input {
            if self.after_escape {
                self.after_escape = false;
                match byte {
                    b'x' | b'X' => {
                        out.quit = true;
                        break;
                    }
                    ESCAPE => out.guest.push(ESCAPE),
                    other => out.guest.extend_from_slice(&[ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.after_escape = true;
            } else {
                out.guest.push(byte);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_input_passes_through() {
        let mut d = EscapeDecoder::default();
        assert_eq!(d.feed(b"ls\r").guest, b"ls\r");
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut d = EscapeDecoder::default();
        let first = d.feed(b"a\x01");
        assert_eq!((first.guest.as_slice(), first.quit), (&b"a"[..], false));
        let second = d.feed(b"xzz");
        assert!(second.quit);
        assert!(second.guest.is_empty());
    }

    #[test]
    fn double_escape_sends_one_and_others_pass() {
        let mut d = EscapeDecoder::default();
        assert_eq!(d.feed(b"\x01\x01").guest, vec![1]);
        assert_eq!(d.feed(b"\x01c").guest, vec![1, b'c']);
    }
}
