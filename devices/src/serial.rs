//! COM1: a 16550A UART (vm-superio) whose interrupt is an eventfd wired to an irqfd.

use std::io::Write;

use vm_superio::{serial::NoEvents, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, Effect};

/// Number of I/O ports a 16550 decodes.
pub const PORT_COUNT: u64 = 8;
/// Interrupt enable register offset (with DLAB clear).
const IER: u64 = 1;
/// Line control register offset.
const LCR: u64 = 3;
/// Interrupt identification register offset (reads).
const IIR: u64 = 2;
/// Modem control register offset.
const MCR: u64 = 4;
/// Scratch register offset.
const SCR: u64 = 7;
/// LCR bit: divisor latch access (offsets 0 and 1 are then the divisor).
const LCR_DLAB: u8 = 0x80;
/// IER bit: transmit holding register empty interrupt.
const IER_THRI: u8 = 0x02;
/// MCR bit: loopback (transmitted bytes come back as received ones).
const MCR_LOOP: u8 = 0x10;
/// IIR value with no interrupt pending.
const IIR_NONE: u8 = 0x01;
/// IIR bits that say the FIFOs are on (vm-superio models a 16550A).
const IIR_FIFO_BITS: u8 = 0xc0;

/// What the guest would read at offsets 0..8, when those reads change nothing.
pub type RegisterView = [u8; PORT_COUNT as usize];

/// Raises the UART's interrupt by signalling an eventfd (registered by the VMM as an irqfd).
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// The UART on the port bus.
pub struct SerialPort {
    uart: Serial<IrqTrigger, NoEvents, ConsoleOut>,
    lcr: u8,
    tx_polled: Option<bool>,
}

impl std::fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort").finish_non_exhaustive()
    }
}

impl SerialPort {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        SerialPort {
            uart: Serial::new(IrqTrigger(irq), out),
            lcr: 0,
            tx_polled: None,
        }
    }

    /// Queue host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        // A full FIFO takes nothing (the caller keeps the bytes for later).
        self.uart.enqueue_raw_bytes(bytes).unwrap_or_else(|e| {
            log::debug!("serial input not taken: {e:?}");
            0
        })
    }

    /// Back to the registers of a UART at power-on (a machine reset): divisor, line and
    /// modem control, interrupt enables and scratch as vm-superio starts them, and nothing
    /// left to receive. Returns the transmit mode the reset leaves (polled: no interrupt).
    pub fn reset(&mut self) -> Effect {
        let initial = vm_superio::serial::SerialState::default();
        let writes = [
            (LCR, LCR_DLAB),
            (0, initial.baud_divisor_low),
            (IER, initial.baud_divisor_high),
            (LCR, initial.line_control),
            (IER, initial.interrupt_enable),
            (MCR, initial.modem_control),
            (SCR, initial.scratch),
        ];
        for (offset, value) in writes {
            if let Err(e) = self.uart.write(offset as u8, value) {
                log::debug!("serial reset write at {offset} failed: {e:?}");
            }
        }
        self.lcr = initial.line_control;
        // Reading the receive buffer takes one byte at a time; reading the IIR clears a
        // transmit interrupt still pending from before.
        for _ in 0..self.uart.state().in_buffer.len() {
            self.uart.read(0);
        }
        self.uart.read(IIR as u8);
        let polled = initial.interrupt_enable & IER_THRI == 0;
        self.tx_polled = Some(polled);
        Effect::SerialTxPolled(polled)
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The registers as the guest would read them now, if reading them has no side effect
    /// and their values can only change through a guest write (which exits) or host input
    /// (which the VMM sees): divisor latch closed, no interrupt enabled or pending, no
    /// loopback, nothing received. `None` otherwise: then every read must reach the UART.
    pub fn read_view(&self) -> Option<RegisterView> {
        let state = self.uart.state();
        let quiet = state.line_control & LCR_DLAB == 0
            && state.interrupt_enable == 0
            && state.interrupt_identification == IIR_NONE
            && state.modem_control & MCR_LOOP == 0
            && state.in_buffer.is_empty();
        quiet.then_some([
            0, // receive buffer: empty
            state.interrupt_enable,
            state.interrupt_identification | IIR_FIFO_BITS,
            state.line_control,
            state.modem_control,
            state.line_status,
            state.modem_status,
            state.scratch,
        ])
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |o| self.uart.read(o));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return None;
        };
        if let Err(e) = self.uart.write(offset, value) {
            log::debug!("serial write at {offset} failed: {e:?}");
        }
        match u64::from(offset) {
            LCR => self.lcr = value,
            IER if self.lcr & LCR_DLAB == 0 => {
                let polled = value & IER_THRI == 0;
                if self.tx_polled != Some(polled) {
                    self.tx_polled = Some(polled);
                    return Some(Effect::SerialTxPolled(polled));
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A console that keeps what the guest printed.
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

    fn port() -> (SerialPort, Capture, EventFd) {
        let irq = EventFd::new(libc_nonblock()).unwrap();
        let capture = Capture::default();
        let port = SerialPort::new(irq.try_clone().unwrap(), Box::new(capture.clone()));
        (port, capture, irq)
    }

    fn libc_nonblock() -> i32 {
        vmm_sys_util::eventfd::EFD_NONBLOCK
    }

    #[test]
    fn guest_writes_reach_the_console() {
        let (mut port, capture, _irq) = port();
        for b in b"hi\n" {
            port.write(0, &[*b]);
        }
        assert_eq!(capture.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn transmit_interrupt_changes_are_reported_once() {
        let (mut port, _capture, _irq) = port();
        assert_eq!(port.write(IER, &[0x01]), Some(Effect::SerialTxPolled(true)));
        assert_eq!(port.write(IER, &[0x00]), None, "still polled");
        assert_eq!(
            port.write(IER, &[0x03]),
            Some(Effect::SerialTxPolled(false))
        );
        port.write(LCR, &[LCR_DLAB]);
        assert_eq!(port.write(IER, &[0x00]), None, "divisor latch, not IER");
        port.write(LCR, &[0x03]);
        assert_eq!(port.write(IER, &[0x00]), Some(Effect::SerialTxPolled(true)));
    }

    /// Every register read through the UART, as the guest would see it.
    fn read_all(port: &mut SerialPort) -> RegisterView {
        let mut view = [0u8; PORT_COUNT as usize];
        for (offset, value) in (0u64..).zip(view.iter_mut()) {
            let mut byte = [0u8];
            port.read(offset, &mut byte);
            *value = byte[0];
        }
        view
    }

    #[test]
    fn the_read_view_is_what_the_guest_reads() {
        let (mut port, _capture, _irq) = port();
        port.write(LCR, &[0x03]);
        port.write(4, &[0x0b]); // MCR: DTR, RTS, OUT2
        port.write(7, &[0x5a]); // scratch
        let view = port.read_view().expect("an idle UART has a read view");
        assert_eq!(view, read_all(&mut port));
        assert_eq!(view[5] & 0x60, 0x60, "transmitter empty");
        assert_eq!(port.read_view(), Some(view), "reading changed nothing");
    }

    #[test]
    fn no_read_view_while_reads_have_side_effects() {
        let (mut port, _capture, _irq) = port();
        port.write(LCR, &[0x83]);
        assert_eq!(port.read_view(), None, "divisor latch open");
        port.write(LCR, &[0x03]);
        port.write(IER, &[0x01]);
        assert_eq!(port.read_view(), None, "an interrupt enabled");
        port.write(IER, &[0x00]);
        port.write(4, &[MCR_LOOP]);
        assert_eq!(port.read_view(), None, "loopback");
        port.write(4, &[0x00]);
        assert!(port.read_view().is_some());
        port.enqueue_input(b"ab");
        assert_eq!(port.read_view(), None, "input waiting");
        let mut rbr = [0u8];
        port.read(0, &mut rbr);
        port.read(0, &mut rbr);
        assert!(port.read_view().is_some(), "input all read");
    }

    #[test]
    fn host_input_is_readable_and_raises_the_interrupt() {
        let (mut port, _capture, irq) = port();
        port.write(1, &[0x01]); // IER: received-data interrupt
        assert_eq!(port.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1, "interrupt signalled");
        let mut lsr = [0u8];
        port.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        port.read(0, &mut rbr);
        assert_eq!(rbr, *b"x");
    }

    #[test]
    fn a_reset_leaves_the_uart_as_at_power_on() {
        let (mut fresh, _capture, _irq) = port();
        let power_on = read_all(&mut fresh);
        let (mut port, _capture, _irq) = port();
        port.write(LCR, &[0x83]);
        port.write(0, &[0x01]); // divisor 115200
        port.write(LCR, &[0x03]);
        port.write(IER, &[0x03]);
        port.write(4, &[0x1b]);
        port.write(7, &[0x5a]);
        port.enqueue_input(b"left over");
        assert_eq!(port.reset(), Effect::SerialTxPolled(true));
        assert_eq!(read_all(&mut port), power_on);
        assert!(
            port.read_view().is_some(),
            "quiet: nothing to receive, no interrupt"
        );
        port.write(LCR, &[0x80]);
        let mut divisor = [0u8];
        port.read(0, &mut divisor);
        fresh.write(LCR, &[0x80]);
        let mut fresh_divisor = [0u8];
        fresh.read(0, &mut fresh_divisor);
        assert_eq!(divisor, fresh_divisor, "the power-on divisor");
    }
}
