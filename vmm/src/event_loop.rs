//! The main thread's event loop (event-manager): host console input, vCPU exits, signals.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use minivmm_devices::serial::SerialPort;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console::EscapeDecoder;
use crate::console_uart::ConsoleUart;
use crate::vcpu::Outcome;

/// Why the VM is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A vCPU ended the run.
    Vcpu(usize, Outcome),
    /// minivmm received this signal.
    Signal(i32),
    /// The user typed Ctrl-A x.
    UserQuit,
    /// minivmm's side of the machine failed while the guest ran (guest RAM could not be
    /// DMA-mapped).
    Host(String),
}

impl Finish {
    /// A vCPU asked for a reboot or triple-faulted: the guest may be started again.
    pub fn is_reboot(&self) -> bool {
        matches!(
            self,
            Finish::Vcpu(_, Outcome::Reboot | Outcome::Shutdown(_))
        )
    }
}

/// Shared between the vCPU threads and the event loop: the first reason to stop wins.
#[derive(Debug)]
pub struct RunState {
    finish: Mutex<Option<Finish>>,
    /// Signalled whenever a reason is recorded, to wake the event loop.
    pub wake: EventFd,
}

impl RunState {
    /// A run that has not finished.
    pub fn new() -> std::io::Result<Self> {
        Ok(RunState {
            finish: Mutex::new(None),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Record why the run ends, unless a reason is already recorded. A stop the user asked
    /// for (a signal, Ctrl-A x) replaces a guest reboot still being handled, so that
    /// restarting the guest cannot swallow it.
    pub fn finish(&self, reason: Finish) {
        let mut finish = self.finish.lock().unwrap_or_else(|e| e.into_inner());
        let replace = match (&*finish, &reason) {
            (None, _) => true,
            (Some(recorded), Finish::Signal(_) | Finish::UserQuit) => recorded.is_reboot(),
            _ => false,
        };
        if replace {
            *finish = Some(reason);
        }
        drop(finish);
        let _ = self.wake.write(1);
    }

    /// Forget a recorded guest reboot: the guest was restarted. Any other reason stays.
    pub fn clear_reboot(&self) {
        let mut finish = self.finish.lock().unwrap_or_else(|e| e.into_inner());
        if finish.as_ref().is_some_and(Finish::is_reboot) {
            *finish = None;
        }
    }

    /// The recorded reason, if any.
    pub fn finished(&self) -> Option<Finish> {
        self.finish
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A UART that takes host input.
pub trait ConsoleInput: Send {
    /// Queue `bytes` for the guest; returns how many fit.
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize;
}

impl ConsoleInput for SerialPort {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        SerialPort::enqueue_input(self, bytes)
    }
}

impl ConsoleInput for ConsoleUart {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        ConsoleUart::enqueue_input(self, bytes)
    }
}

/// Host input minivmm holds for a guest whose receive FIFO is full (a paste of a long
/// command line). Past this, input is dropped and the user told once.
const MAX_PENDING_INPUT: usize = 1 << 20;

/// Forwards stdin to the guest's console UART and watches for Ctrl-A x. Input the UART's
/// 64-byte FIFO cannot take yet waits here until the guest reads: call
/// [`StdinForwarder::flush`] while [`StdinForwarder::has_pending`].
pub struct StdinForwarder {
    serial: Arc<Mutex<dyn ConsoleInput>>,
    decoder: EscapeDecoder,
    state: Arc<RunState>,
    pending: std::collections::VecDeque<u8>,
    dropped: bool,
}

impl std::fmt::Debug for StdinForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinForwarder").finish_non_exhaustive()
    }
}

impl StdinForwarder {
    /// Forward to `serial`; a quit request is recorded in `state`.
    pub fn new(serial: Arc<Mutex<dyn ConsoleInput>>, state: Arc<RunState>) -> Self {
        StdinForwarder {
            serial,
            decoder: EscapeDecoder::default(),
            state,
            pending: std::collections::VecDeque::new(),
            dropped: false,
        }
    }

    /// Input for the guest, queued behind what is still pending.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        if bytes.len() > room && !self.dropped {
            self.dropped = true;
            log::warn!("the guest is not reading its console: input beyond 1 MiB is dropped");
        }
        self.pending
            .extend(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        self.flush();
    }

    /// Move as much pending input as the UART's FIFO has room for.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let taken = serial.enqueue_input(self.pending.make_contiguous());
        self.pending.drain(..taken.min(self.pending.len()));
    }

    /// Whether input is waiting for room in the guest's FIFO.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

impl MutEventSubscriber for StdinForwarder {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 4096];
        // Unbuffered: a buffered reader could keep bytes epoll no longer reports.
        // SAFETY: reading at most buf.len() bytes into `buf`.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            return;
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            // EOF (a pipe closed, /dev/null): the guest keeps running without input.
            let _ = ops.remove(events);
            return;
        }
        let decoded = self.decoder.feed(buf.get(..n).unwrap_or_default());
        if !decoded.guest.is_empty() {
            self.push(&decoded.guest);
        }
        if decoded.quit {
            self.state.finish(Finish::UserQuit);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null; then there is simply no input.
        if let Err(e) = ops.add(Events::new_raw(libc::STDIN_FILENO, EventSet::IN)) {
            log::debug!("not watching stdin: {e:?}");
        }
    }
}

/// Signals minivmm turns into a clean stop.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signalfd for [`STOP_SIGNALS`], which are blocked for every thread started after it.
#[derive(Debug)]
pub struct SignalFd(OwnedFd);

/// Block SIGINT, SIGTERM and SIGHUP in this thread (threads spawned later inherit the
/// mask): they stay pending until a [`SignalFd`] reads them. `--managed` blocks them before
/// it binds a device, so a signal during the build still ends in the cleanup path.
pub fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    let set = signal_set(&STOP_SIGNALS);
    block(&set)?;
    Ok(set)
}

/// The set of `signals`.
pub fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these libc calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

/// Block `set` in this thread (threads spawned later inherit the mask).
pub fn block(set: &libc::sigset_t) -> std::io::Result<()> {
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

impl SignalFd {
    /// Block the stop signals in this thread (threads spawned later inherit the mask) and
    /// receive them through a descriptor instead.
    pub fn new() -> std::io::Result<Self> {
        let set = block_stop_signals()?;
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The next pending stop signal, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Wakes the loop for vCPU exits and turns stop signals into a [`Finish`].
#[derive(Debug)]
pub struct ExitWatcher {
    state: Arc<RunState>,
    signals: SignalFd,
}

impl ExitWatcher {
    /// Watch `state.wake` and `signals`.
    pub fn new(state: Arc<RunState>, signals: SignalFd) -> Self {
        ExitWatcher { state, signals }
    }
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.signals.as_raw_fd() {
            while let Some(signal) = self.signals.read() {
                self.state.finish(Finish::Signal(signal));
            }
        } else {
            let _ = self.state.wake.read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.state.wake.as_raw_fd(), self.signals.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch exit events: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_during_a_reboot_is_kept_and_a_reboot_is_cleared() {
        let state = RunState::new().unwrap();
        state.finish(Finish::Vcpu(0, Outcome::Reboot));
        state.finish(Finish::Vcpu(1, Outcome::Stopped));
        assert_eq!(state.finished(), Some(Finish::Vcpu(0, Outcome::Reboot)));
        state.clear_reboot();
        assert_eq!(state.finished(), None, "the guest was restarted");
        // SIGTERM while the reboot is handled: the restart must not swallow it.
        state.finish(Finish::Vcpu(0, Outcome::Reboot));
        state.finish(Finish::Signal(libc::SIGTERM));
        state.clear_reboot();
        assert_eq!(state.finished(), Some(Finish::Signal(libc::SIGTERM)));
        // The first reason still wins otherwise.
        let state = RunState::new().unwrap();
        state.finish(Finish::Vcpu(0, Outcome::PowerOff));
        state.finish(Finish::Signal(libc::SIGTERM));
        assert_eq!(state.finished(), Some(Finish::Vcpu(0, Outcome::PowerOff)));
    }
}
