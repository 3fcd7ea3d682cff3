//! Pictures of L1's displays, taken when a scenario asks for them.
//!
//! A scenario prints `LAB:SCREENSHOT name=NAME device=ID` on L1's console and waits on L1's
//! second serial port. The harness, which watches the console, has the outer QEMU save the
//! display of device `ID` (`screendump` on its monitor socket) as `NAME.png` in the run's
//! directory, then answers `shot NAME ok` (or `shot NAME failed: ...`) on that serial port,
//! and the scenario goes on. The pictures are checked after the run (see [`Picture`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::l1::Sockets;
use super::{Context, Result};

/// How long one monitor command may take.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(20);

/// One request parsed from a console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The picture's name (a file name without extension).
    pub name: String,
    /// The QEMU device id of the display.
    pub device: String,
}

impl Request {
    /// The request in a console line, if it holds one with safe names (letters, digits,
    /// `-` and `_`: both become part of a path and of a monitor command).
    pub fn parse(line: &str) -> Option<Request> {
        let at = line.find("LAB:SCREENSHOT ")?;
        let fields = super::fields(line.get(at..)?);
        let safe = |s: &&&str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        let name = fields.get("name").filter(safe)?;
        let device = fields.get("device").filter(safe)?;
        Some(Request {
            name: name.to_string(),
            device: device.to_string(),
        })
    }
}

/// The harness's side of L1's control port. The connection stays open for the whole run:
/// QEMU takes bytes from the socket only as fast as L1's UART accepts them, and drops what it
/// has not taken when the client goes away.
#[derive(Debug, Default)]
pub struct Control {
    stream: Option<UnixStream>,
}

impl Control {
    /// Take the picture `request` asks for into `dir`, then answer the scenario with one
    /// line: `ok` or `failed`.
    pub fn serve(&mut self, request: &Request, dir: &Path, sockets: &Sockets) -> Result<PathBuf> {
        let file = dir.join(format!("{}.png", request.name));
        let _ = std::fs::remove_file(&file);
        let taken = screendump(&sockets.monitor, &request.device, &file);
        let answer = if taken.is_ok() { "ok\n" } else { "failed\n" };
        self.send(answer, &sockets.control)?;
        taken.map(|()| file)
    }

    fn send(&mut self, line: &str, path: &Path) -> Result<()> {
        if self.stream.is_none() {
            let stream = UnixStream::connect(path)
                .context(|| format!("cannot connect to {}", path.display()))?;
            self.stream = Some(stream);
        }
        match &mut self.stream {
            Some(stream) => stream
                .write_all(line.as_bytes())
                .context(|| "cannot answer on L1's control port".to_string()),
            None => Err("no control connection".into()),
        }
    }
}

/// The text in a picture, as tesseract (OCR) reads it.
pub fn read_text(picture: &Path) -> Result<String> {
    tesseract(picture, &[])
}

/// The text in a picture that is one block of text (a text-mode screen), as tesseract
/// reads it in that mode (`--psm 6`; its page analysis drops short lines of small fonts).
pub fn read_text_block(picture: &Path) -> Result<String> {
    tesseract(picture, &["--psm", "6"])
}

fn tesseract(picture: &Path, options: &[&str]) -> Result<String> {
    let out = std::process::Command::new("tesseract")
        .arg(picture)
        .arg("-")
        .args(options)
        .output()
        .context(|| "cannot run tesseract (run tests/lab/prepare)".to_string())?;
    if !out.status.success() {
        return Err(format!(
            "tesseract {} failed: {}",
            picture.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `screendump FILE -f png DEVICE` on QEMU's human monitor; done when the prompt returns and
/// the file exists.
fn screendump(monitor: &Path, device: &str, file: &Path) -> Result<()> {
    let stream = UnixStream::connect(monitor)
        .context(|| format!("cannot connect to the monitor {}", monitor.display()))?;
    stream
        .set_read_timeout(Some(MONITOR_TIMEOUT))
        .context(|| "monitor socket".to_string())?;
    let mut reader = BufReader::new(
        stream
            .try_clone()
            .context(|| "monitor socket".to_string())?,
    );
    read_to_prompt(&mut reader)?;
    let mut writer = stream;
    let command = format!("screendump {} -f png {device}\n", file.display());
    writer
        .write_all(command.as_bytes())
        .context(|| "cannot write to the monitor".to_string())?;
    let reply = read_to_prompt(&mut reader)?;
    // The reply echoes the command; anything else on its lines is an error message.
    let errors: Vec<&str> = reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("screendump") && !l.starts_with("(qemu)"))
        .collect();
    if !errors.is_empty() {
        return Err(format!("screendump of {device}: {}", errors.join(" ")));
    }
    if !file.is_file() {
        return Err(format!(
            "screendump of {device} wrote no {}",
            file.display()
        ));
    }
    Ok(())
}

/// Everything the monitor prints up to its next `(qemu) ` prompt.
fn read_to_prompt(reader: &mut impl BufRead) -> Result<String> {
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    while !text.ends_with(b"(qemu) ") {
        let n = reader
            .read(&mut byte)
            .context(|| "the monitor did not answer".to_string())?;
        if n == 0 {
            return Err("the monitor closed its socket".into());
        }
        text.extend_from_slice(&byte);
    }
    // The monitor is a terminal: strip its escape sequences.
    let text = String::from_utf8_lossy(&text).into_owned();
    Ok(strip_escapes(&text))
}

/// `text` without ANSI escape sequences (ESC [ ... letter) and carriage returns.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_from_console_lines_with_safe_names_only() {
        let line = "[  12.3] LAB:SCREENSHOT name=bochs device=lit";
        assert_eq!(
            Request::parse(line),
            Some(Request {
                name: "bochs".into(),
                device: "lit".into()
            })
        );
        assert_eq!(Request::parse("LAB:SCREENSHOT name=../x device=lit"), None);
        assert_eq!(Request::parse("LAB:SCREENSHOT name=a device="), None);
        assert_eq!(Request::parse("LAB:SCREENSHOT name=a"), None);
        assert_eq!(Request::parse("L2:INIT"), None);
    }

    #[test]
    fn escapes_are_stripped_from_monitor_output() {
        assert_eq!(
            strip_escapes("\u{1b}[K(qemu) screendump\r\nerror\r\n"),
            "(qemu) screendump\nerror\n"
        );
    }
}
