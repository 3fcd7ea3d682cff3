//! Starting the L1 guest under QEMU TCG and watching its serial log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::screen::{self, Request};
use super::{Context, Result, RunOptions};

const POLL: Duration = Duration::from_millis(100);

/// How long L1's heartbeat (a `LAB:PULSE` line every 5 s from l1-init's shell, on ttyS2) and
/// its console may both stay quiet before L1 counts as frozen: its user space no longer runs
/// a `sleep` loop, so nothing in it does. Generous: a busy one-CPU L1 keeps the beat.
pub const PULSE_LOST: Duration = Duration::from_secs(60);

/// How the watchdog's reason starts when it killed an L1 whose heartbeat stopped.
pub const L1_FROZE: &str = "L1 froze: ";

/// Files of one L1 run that QEMU uses besides the console log.
#[derive(Debug, Clone)]
pub struct Sockets {
    /// QEMU's human monitor (`screendump` takes pictures of L1's displays).
    pub monitor: PathBuf,
    /// L1's second serial port (ttyS1): the harness answers a scenario's requests there.
    pub control: PathBuf,
    /// L1's third serial port (ttyS2), a file: L1's heartbeat and all its kernel messages
    /// (l1-init), so that a silent L1 can be told from a live one with a hung scenario.
    pub pulse: PathBuf,
    /// QEMU's own log (`-d cpu_reset`): "Triple fault" when L1 itself triple-faulted, which
    /// with `-no-reboot` ends QEMU as quietly as a power-off.
    pub qemu_log: PathBuf,
}

/// What only some scenarios' L1s have (their `lab-needs:` lines).
#[derive(Debug, Default)]
pub struct L1Extras<'a> {
    /// `big-bar`: ivshmem's 8 GiB BAR, backed by this file.
    pub big_bar: Option<&'a Path>,
    /// `sole-vga`: no ati-vga, so that VGA alone answers the legacy VGA ranges.
    pub sole_vga: bool,
    /// `vfct`: this ACPI VFCT table in L1's firmware.
    pub vfct: Option<&'a Path>,
    /// L1's CPU count: 2 for `two-cpus`, else 1 (or a probe's `LAB_L1_SMP`).
    pub cpus: &'a str,
    /// L1's CPU model: `max` (or a probe's `LAB_L1_CPU`).
    pub cpu_model: &'a str,
}

/// The L1 machine of lab.md: TCG with `-cpu max` (emulated SVM with nested paging), an
/// emulated IOMMU with interrupt remapping, and PCI devices to pass through:
/// - on bus 0: edu, VGA, a two-function pci-testdev at 05.0/05.1 (no ACS, so one IOMMU
///   group, like a GPU and its HDMI audio), virtio-rng at 06.0 (MSI-X and a 64-bit BAR;
///   `iommu_platform=on`, or its DMA would bypass the emulated IOMMU that VFIO in L1
///   programs), bochs-display at 07.0 with no ROM (`romfile=` empty: a display controller
///   like a laptop dGPU), a Radeon (ati-vga rv100, 1002:5159) with no ROM at 08.0 (the
///   motivating failure), and a three-function pci-testdev at 0b.0-0b.2;
/// - behind PCIe root ports, as a GPU sits on a real host: virtio-gpu (DMA through the
///   IOMMU, MSI-X) behind 09.0, its link set to 8 GT/s x4; and a display with its audio
///   function (bochs-display 00.0 and an HD Audio controller with a codec at 00.1, one
///   IOMMU group) behind 0a.0, at 5 GT/s x8;
/// - with `big_bar`, ivshmem at 0c.0, whose 8 GiB BAR 2 is a sparse file in the run's
///   directory.
///
/// ati-vga is a VGA too: QEMU gives both it and VGA the legacy VGA ranges, and the later one
/// answers them, so with `sole_vga` it is left out and VGA (L1's boot display) is the one
/// device behind the legacy ranges. Its displays are seen through `screendump` on the
/// monitor socket.
pub fn command(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    log: &Path,
    sockets: &Sockets,
    extras: &L1Extras,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        extras.cpu_model,
        "-machine",
        "q35,kernel-irqchip=split",
    ])
    .args([
        "-smp",
        extras.cpus,
        "-m",
        "4G",
        "-nodefaults",
        "-vga",
        "none",
    ])
    .args([
        "-device",
        "intel-iommu,intremap=on",
        "-device",
        "edu",
        "-device",
        "VGA,id=vga",
        "-device",
        "pci-testdev,addr=05.0,multifunction=on",
        "-device",
        "pci-testdev,addr=05.1",
        "-device",
        "virtio-rng-pci,addr=06.0,iommu_platform=on,disable-legacy=on",
        "-device",
        "bochs-display,romfile=,addr=07.0",
        "-device",
        "pcie-root-port,id=rp1,chassis=1,addr=09.0,x-speed=8,x-width=4",
        "-device",
        "virtio-gpu-pci,id=vgpu,bus=rp1,addr=00.0,iommu_platform=on,disable-legacy=on",
        "-device",
        "pcie-root-port,id=rp2,chassis=2,addr=0a.0,x-speed=5,x-width=8",
        "-device",
        "bochs-display,id=lit,bus=rp2,addr=00.0,multifunction=on,romfile=",
        "-audiodev",
        "none,id=snd",
        "-device",
        "ich9-intel-hda,id=hda,bus=rp2,addr=00.1",
        "-device",
        "hda-output,bus=hda.0,audiodev=snd",
        "-device",
        "pci-testdev,addr=0b.0,multifunction=on",
        "-device",
        "pci-testdev,addr=0b.1",
        "-device",
        "pci-testdev,addr=0b.2",
    ]);
    if !extras.sole_vga {
        cmd.args(["-device", "ati-vga,model=rv100,romfile=,addr=08.0"]);
    }
    if let Some(file) = extras.big_bar {
        cmd.arg("-object")
            .arg(format!(
                "memory-backend-file,id=big,size=8G,share=on,mem-path={}",
                file.display()
            ))
            .args(["-device", "ivshmem-plain,memdev=big,addr=0c.0"]);
    }
    if let Some(table) = extras.vfct {
        cmd.arg("-acpitable")
            .arg(format!("file={}", table.display()));
    }
    cmd.arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-chardev")
        .arg(format!(
            "socket,id=control,path={},server=on,wait=off",
            sockets.control.display()
        ))
        .args(["-serial", "chardev:control"])
        .arg("-serial")
        .arg(format!("file:{}", sockets.pulse.display()))
        .args(["-d", "cpu_reset", "-D"])
        .arg(&sockets.qemu_log)
        .arg("-monitor")
        .arg(format!(
            "unix:{},server=on,wait=off",
            sockets.monitor.display()
        ))
        .args(["-display", "none", "-no-reboot"])
        .stdin(Stdio::null());
    cmd
}

/// How a supervised L1 run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// QEMU exited by itself (L1 powered off) with this exit code (None: killed by a signal).
    Exited(Option<i32>),
    /// The watchdog killed QEMU, for this reason.
    Killed(String),
}

/// What the watchdog saw.
#[derive(Debug)]
pub struct Watched {
    pub log: String,
    pub end: End,
    pub wall: Duration,
    /// From QEMU's start to the first `LAB:L1-UP` in the log.
    pub l1_up: Option<Duration>,
    /// The pictures the scenario asked for (`LAB:SCREENSHOT`), by name: the file, or why
    /// there is none.
    pub pictures: Vec<(String, Result<PathBuf>)>,
}

/// Starts `cmd` (QEMU) and watches `log_path` until QEMU exits, or kills QEMU — only this
/// child, by its PID — on the hard timeout, on a silent log, when L1's kernel reports a CPU
/// lockup, or when it lingers after LAB:DONE.
pub fn run_watched(
    mut cmd: Command,
    log_path: &Path,
    sockets: &Sockets,
    opts: &RunOptions,
) -> Result<Watched> {
    for file in [log_path, &sockets.pulse] {
        File::create(file).context(|| format!("cannot create {}", file.display()))?;
    }
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe. It makes the kernel kill QEMU if this thread dies (no orphan QEMU).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .context(|| "cannot start qemu-system-x86_64".to_string())?;
    let mut watch = Watch::new(log_path, &sockets.pulse, start, opts.echo)?;
    let dir = log_path.parent().unwrap_or(Path::new("."));
    let mut pictures = Vec::new();
    let mut control = screen::Control::default();
    let end = loop {
        sleep(POLL);
        let grew = watch.read_new()?;
        watch.pulse.read_new()?;
        for request in watch.new_requests() {
            let picture = control.serve(&request, dir, sockets);
            pictures.push((request.name.clone(), picture));
        }
        if let Some(status) = child
            .try_wait()
            .context(|| "cannot wait for QEMU".to_string())?
        {
            watch.read_new()?;
            break End::Exited(status.code());
        }
        if let Some(reason) = watch.verdict(grew, opts) {
            kill(&mut child);
            watch.read_new()?;
            break End::Killed(reason);
        }
    };
    Ok(Watched {
        log: watch.log,
        end,
        wall: start.elapsed(),
        l1_up: watch.l1_up,
        pictures,
    })
}

fn kill(child: &mut Child) {
    // Errors mean it is already gone; wait() reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

/// The log as read so far, and the times the watchdog decides on.
struct Watch {
    console: Tail,
    log: String,
    start: Instant,
    last_output: Instant,
    done_at: Option<Instant>,
    l1_up: Option<Duration>,
    /// L1's kernel reported a CPU lockup.
    locked_up: bool,
    pulse: Pulse,
    echo: bool,
    /// Picture requests seen so far (complete lines only).
    requests_seen: usize,
}

impl Watch {
    fn new(path: &Path, pulse: &Path, start: Instant, echo: bool) -> Result<Watch> {
        let console = Tail::open(path)?;
        let pulse = Pulse::new(pulse)?;
        let (last_output, done_at, l1_up, log) = (start, None, None, String::new());
        Ok(Watch {
            console,
            log,
            start,
            last_output,
            done_at,
            l1_up,
            locked_up: false,
            pulse,
            echo,
            requests_seen: 0,
        })
    }

    /// Picture requests on complete lines that were not returned before.
    fn new_requests(&mut self) -> Vec<Request> {
        let complete = self.log.rfind('\n').map_or("", |end| &self.log[..end]);
        let all: Vec<Request> = complete.lines().filter_map(Request::parse).collect();
        let new = all.get(self.requests_seen..).unwrap_or_default().to_vec();
        self.requests_seen = all.len();
        new
    }

    /// Appends what the log gained since the last call; true if it grew.
    fn read_new(&mut self) -> Result<bool> {
        let new = self.console.read_new()?;
        if new.is_empty() {
            return Ok(false);
        }
        if self.echo {
            let _ = std::io::stderr().write_all(new.as_bytes());
        }
        let now = Instant::now();
        self.log.push_str(&new);
        self.last_output = now;
        if self.l1_up.is_none() && self.log.contains("LAB:L1-UP") {
            self.l1_up = Some(now - self.start);
        }
        if self.done_at.is_none() && self.log.contains("LAB:DONE") {
            self.done_at = Some(now);
        }
        // A stuck L1 kernel keeps printing lockup reports, which would defeat the silence
        // watchdog; it never recovers, so give up on it at once.
        if new.contains("soft lockup") || new.contains("hard LOCKUP") {
            self.locked_up = true;
        }
        Ok(true)
    }

    /// Why QEMU must be killed now, if it must.
    fn verdict(&self, grew: bool, opts: &RunOptions) -> Option<String> {
        let now = Instant::now();
        if now - self.start > opts.timeout {
            return Some(format!("hard timeout of {:?}", opts.timeout));
        }
        if self.locked_up {
            return Some("L1's kernel reports a CPU lockup".into());
        }
        // Only while the scenario runs: after LAB:DONE, L1 powers off and the beat ends.
        if let (None, Some(beat)) = (self.done_at, self.pulse.last) {
            if now - beat > PULSE_LOST && now - self.last_output > PULSE_LOST {
                return Some(format!(
                    "{L1_FROZE}no heartbeat on ttyS2 and no console output for {PULSE_LOST:?}"
                ));
            }
        }
        if !grew && now - self.last_output > opts.silence {
            return Some(format!("no console output for {:?}", opts.silence));
        }
        match self.done_at {
            Some(done) if now - done > opts.done_grace => Some(format!(
                "still running {:?} after LAB:DONE",
                opts.done_grace
            )),
            _ => None,
        }
    }
}

/// A file QEMU appends to (a serial port's `file:` backend), read on from where the last
/// read stopped.
struct Tail {
    path: PathBuf,
    file: File,
    /// Bytes of the file consumed so far.
    read: u64,
}

impl Tail {
    fn open(path: &Path) -> Result<Tail> {
        let file = File::open(path).context(|| format!("cannot open {}", path.display()))?;
        Ok(Tail {
            path: path.to_path_buf(),
            file,
            read: 0,
        })
    }

    /// The whole characters appended since the last call: a read may end inside a UTF-8
    /// sequence, whose bytes then wait for the next call.
    fn read_new(&mut self) -> Result<String> {
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(self.read))
            .and_then(|_| self.file.read_to_end(&mut bytes))
            .context(|| format!("cannot read {}", self.path.display()))?;
        let take = match std::str::from_utf8(&bytes) {
            Ok(text) => text.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => bytes.len(), // really invalid: take it, lossily
        };
        self.read += take as u64;
        Ok(String::from_utf8_lossy(bytes.get(..take).unwrap_or_default()).into_owned())
    }
}

/// L1's heartbeat port (ttyS2, a file): when a `LAB:PULSE` line last arrived.
struct Pulse {
    port: Tail,
    /// The last line, until its newline arrives.
    partial: String,
    last: Option<Instant>,
}

impl Pulse {
    fn new(path: &Path) -> Result<Pulse> {
        Ok(Pulse {
            port: Tail::open(path)?,
            partial: String::new(),
            last: None,
        })
    }

    /// Reads what the port gained; a complete `LAB:PULSE` line among it is a heartbeat.
    fn read_new(&mut self) -> Result<()> {
        let new = self.port.read_new()?;
        self.partial.push_str(&new);
        if let Some(end) = self.partial.rfind('\n') {
            let complete = self.partial.get(..end).unwrap_or_default();
            if complete.lines().any(|l| l.starts_with("LAB:PULSE")) {
                self.last = Some(Instant::now());
            }
            self.partial.drain(..=end);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("minivmm-l1-{}-{name}", std::process::id()));
        File::create(&path).unwrap();
        path
    }

    fn ago(secs: u64) -> Instant {
        Instant::now()
            .checked_sub(Duration::from_secs(secs))
            .unwrap()
    }

    #[test]
    fn a_heartbeat_counts_only_once_its_line_is_whole() {
        let path = temp("pulse-lines");
        let mut pulse = Pulse::new(&path).unwrap();
        let mut port = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        port.write_all(b"[ 12.0] kernel says\nLAB:PUL").unwrap();
        pulse.read_new().unwrap();
        assert!(pulse.last.is_none(), "half a pulse line is no beat");
        port.write_all(b"SE uptime=14.1\n").unwrap();
        pulse.read_new().unwrap();
        assert!(pulse.last.is_some(), "the finished line is a beat");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_watchdog_calls_l1_frozen_only_when_beat_and_console_both_stopped() {
        let (log, port) = (temp("verdict-log"), temp("verdict-pulse"));
        let opts = RunOptions::default();
        let mut watch = Watch::new(&log, &port, ago(100), false).unwrap();
        // Never beat yet (L1 still booting): the console's silence rule alone applies.
        watch.last_output = ago(70);
        assert_eq!(watch.verdict(false, &opts), None);
        // Beat and console both quiet past PULSE_LOST: frozen.
        watch.pulse.last = Some(ago(70));
        let why = watch.verdict(false, &opts).unwrap_or_default();
        assert!(why.starts_with(L1_FROZE), "{why}");
        // A live console, or a recent beat, is a live L1.
        watch.last_output = ago(1);
        assert_eq!(watch.verdict(true, &opts), None);
        watch.last_output = ago(70);
        watch.pulse.last = Some(ago(1));
        assert_eq!(watch.verdict(false, &opts), None);
        // After LAB:DONE the beat ends with L1's power-off: not a freeze.
        watch.pulse.last = Some(ago(70));
        watch.done_at = Some(ago(1));
        assert_eq!(watch.verdict(false, &opts), None);
        let _ = (std::fs::remove_file(log), std::fs::remove_file(port));
    }
}
