//! The serial devices: the 16550 model (COM1, and the port behind the MMIO console UART)
//! under arbitrary register reads and writes and host input; the console's Ctrl-A escape
//! decoder on arbitrary input split arbitrarily; and the test of a command line's console.
//!
//! Input: the operations (`arbitrary`).
//!
//! Checked: whenever the UART offers a read view (what the console UART serves from a
//! read-only page, reads never exiting), reading every register through the device gives
//! exactly that view and leaves it unchanged; reads fill the whole access; input never
//! overfills the receive FIFO; a transmit-interrupt change is reported only by an IER write
//! and says what the write did; and the escape decoder gives the same bytes however its
//! input is split.

#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use minivmm::console::EscapeDecoder;
use minivmm::console_uart::is_the_console;
use minivmm_devices::bus::{BusDevice, Effect};
use minivmm_devices::serial::{SerialPort, PORT_COUNT};
use minivmm_fuzz::ops;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Arbitrary, Debug)]
enum Op {
    /// A register read of `len % 4 + 1` bytes (offsets past the 8 registers too).
    Read { offset: u8, len: u8 },
    /// A register write.
    Write { offset: u8, value: u8 },
    /// Host input for the guest.
    Input { bytes: Vec<u8> },
    /// Feed the escape decoder one chunk.
    Console { bytes: Vec<u8> },
    /// Ask whether a command line names the console UART.
    Cmdline { bytes: Vec<u8> },
}

/// A console that keeps the guest's output.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The escape decoder on the whole input at once.
fn decode_whole(input: &[u8]) -> (Vec<u8>, bool) {
    let decoded = EscapeDecoder::default().feed(input);
    (decoded.guest, decoded.quit)
}

fuzz_target!(|data: &[u8]| {
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut port = SerialPort::new(irq, Box::new(Capture::default()));
    // Divisor latch access, as the port's own write path tracks it.
    let mut lcr = 0u8;
    let mut decoder = EscapeDecoder::default();
    let mut console_in = Vec::new();
    let mut console_out = Vec::new();
    let mut quit = false;

    for op in ops::<Op>(data) {
        match op {
            Op::Read { offset, len } => {
                let len = usize::from(len % 4) + 1;
                let mut zeros = vec![0u8; len];
                port.read(u64::from(offset), &mut zeros);
                assert!(zeros.iter().all(|b| *b == zeros[0]), "{zeros:?}");
            }
            Op::Write { offset, value } => {
                let effect = port.write(u64::from(offset), &[value]);
                if offset == 3 {
                    lcr = value;
                }
                if let Some(effect) = effect {
                    assert!(offset == 1 && lcr & 0x80 == 0, "{effect:?} from {offset}");
                    assert_eq!(effect, Effect::SerialTxPolled(value & 0x02 == 0));
                }
            }
            Op::Input { bytes } => {
                let room = port.input_room();
                let taken = port.enqueue_input(&bytes);
                assert!(taken <= bytes.len() && taken <= room);
                assert_eq!(port.input_room(), room - taken);
            }
            Op::Console { bytes } => {
                if !quit {
                    console_in.extend_from_slice(&bytes);
                    let decoded = decoder.feed(&bytes);
                    console_out.extend(decoded.guest);
                    quit = decoded.quit;
                }
            }
            Op::Cmdline { bytes } => {
                is_the_console(&String::from_utf8_lossy(&bytes));
            }
        }
        check_read_view(&mut port);
    }
    assert_eq!(
        (console_out, quit),
        decode_whole(&console_in),
        "the escape decoder depends on how input is split"
    );
});

/// When the UART offers a read view, the registers read as the view says, and reading them
/// changes nothing.
fn check_read_view(port: &mut SerialPort) {
    let Some(view) = port.read_view() else {
        return;
    };
    for (offset, expected) in (0..PORT_COUNT).zip(view) {
        let mut byte = [0u8];
        port.read(offset, &mut byte);
        assert_eq!(byte[0], expected, "register {offset} differs from the view");
    }
    assert_eq!(port.read_view(), Some(view), "reading changed the view");
}
