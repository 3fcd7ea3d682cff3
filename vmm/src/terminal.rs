//! Raw mode for the controlling terminal while the guest owns it, always restored.

use std::sync::OnceLock;

/// The terminal settings found at start, for the restore paths (guard drop and panic hook).
static ORIGINAL: OnceLock<libc::termios> = OnceLock::new();

/// Puts stdin in raw mode and restores it when dropped.
#[derive(Debug)]
pub struct RawTerminal(());

/// True when stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Stdin's terminal settings now, when stdin is a terminal.
pub fn current_settings() -> Option<libc::termios> {
    if !stdin_is_terminal() {
        return None;
    }
    // SAFETY: zeroed termios is a valid buffer for tcgetattr to fill.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `termios` is a valid, writable termios.
    (unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } == 0).then_some(termios)
}

/// Put stdin's terminal back to `settings` (from [`current_settings`]).
pub fn restore_settings(settings: &libc::termios) {
    // SAFETY: `settings` is a termios tcgetattr filled for this descriptor.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, settings) };
}

fn restore() {
    if let Some(original) = ORIGINAL.get() {
        restore_settings(original);
    }
}

impl RawTerminal {
    /// Enter raw mode if stdin is a terminal; `None` otherwise (a pipe, /dev/null, a CI job).
    ///
    /// Keystrokes go to the guest byte for byte: no line editing, no echo, and Ctrl-C reaches
    /// the guest instead of killing minivmm. Output processing is left alone.
    pub fn enter() -> Option<RawTerminal> {
        let mut termios = current_settings()?;
        let _ = ORIGINAL.set(termios);
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous_hook(info);
        }));
        termios.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
        termios.c_iflag &= !(libc::IXON | libc::ICRNL | libc::BRKINT | libc::INPCK | libc::ISTRIP);
        termios.c_cc[libc::VMIN] = 1;
        termios.c_cc[libc::VTIME] = 0;
        // SAFETY: `termios` is a valid termios derived from the current settings.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &termios) } != 0 {
            return None;
        }
        Some(RawTerminal(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}
