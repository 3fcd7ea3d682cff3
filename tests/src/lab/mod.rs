//! The nested lab: runs a scenario in an L1 Linux guest under QEMU TCG, where minivmm (and
//! QEMU, for the benchmark) boot an L2 Linux guest on L1's nested /dev/kvm.
//!
//! `tests/lab/prepare` fills `tests/lab/work/cache/` (Debian kernel, busybox-static);
//! [`Lab::run`] packs the L1 initramfs — busybox, `l1-init`, kernel modules, minivmm and its
//! libraries, the L2 kernel and initramfs, the scenarios — boots L1 and returns its console.

mod console;
mod cpio;
mod image;
mod l1;
mod screen;

use std::fmt::Display;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use console::{fields, Markers, Section};
pub use l1::{End, L1_FROZE};
pub use screen::{read_text, read_text_block};

pub type Result<T> = std::result::Result<T, String>;

/// The lab's inputs, found on disk.
#[derive(Debug, Clone)]
pub struct Lab {
    /// `tests/lab`: init scripts, `lab.sh` and `scenarios/`.
    pub dir: PathBuf,
    /// `tests/lab/work`: the prepared cache and the runs' images and logs.
    pub work: PathBuf,
    /// The unpacked Debian kernel package (boot/, lib/modules/).
    pub kernel_root: PathBuf,
    pub kernel_version: String,
    /// The bzImage, used for both L1 and L2.
    pub kernel: PathBuf,
    /// busybox-static's binary.
    pub busybox: PathBuf,
    /// The disk benchmark's tool for L2 (tests/lab/blkbench), static.
    pub blkbench: PathBuf,
    /// The L2 test driver of malformed virtio-blk requests (tests/lab/blk-requests).
    pub blk_requests: PathBuf,
    /// The minivmm binary copied into L1.
    pub minivmm: PathBuf,
    /// The L2 driver that proves MSI delivery (built by `prepare`).
    pub edu_msi: PathBuf,
    /// The kernel's sample mediated display device (built by `prepare`).
    pub mbochs: PathBuf,
    /// The module that asks `pcie_bandwidth_available()` about a device (built by `prepare`).
    pub link_probe: PathBuf,
    /// The `run-as` helper (runs a program as an ordinary user in L1).
    pub run_as: PathBuf,
}

/// How to run one scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Appended to L1's kernel command line as `lab.KEY=VALUE` (scenarios read them with
    /// `lab_param KEY DEFAULT`).
    pub params: Vec<(String, String)>,
    /// Kill L1 after this long in any case.
    pub timeout: Duration,
    /// Kill L1 when its console prints nothing for this long.
    pub silence: Duration,
    /// Kill L1 when it has not exited this long after printing `LAB:DONE`.
    pub done_grace: Duration,
    /// Copy L1's console to stderr as it comes.
    pub echo: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            params: Vec::new(),
            timeout: Duration::from_secs(600),
            silence: Duration::from_secs(150),
            done_grace: Duration::from_secs(10),
            echo: false,
        }
    }
}

impl RunOptions {
    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.params.push((key.to_string(), value.to_string()));
        self
    }
}

/// One scenario's run: L1's whole console, and how it went.
#[derive(Debug, Clone)]
pub struct LabRun {
    pub scenario: String,
    pub log: String,
    /// Where the console log is kept after the run.
    pub log_path: PathBuf,
    /// L1's heartbeat port (ttyS2): `LAB:PULSE` lines and all of L1's kernel messages.
    pub pulse_path: PathBuf,
    /// QEMU's own log of L1's CPU resets (`-d cpu_reset`).
    pub qemu_log_path: PathBuf,
    pub end: End,
    /// Building the initramfs images.
    pub build: Duration,
    /// From starting QEMU to its exit (or kill).
    pub wall: Duration,
    /// From starting QEMU to `LAB:L1-UP` on the console.
    pub l1_up: Option<Duration>,
    pub l1_initramfs_bytes: u64,
    pub l2_initramfs_bytes: u64,
    /// The pictures of L1's displays the scenario asked for, by name.
    pub pictures: Vec<(String, Result<PathBuf>)>,
}

impl Markers for LabRun {
    fn text(&self) -> &str {
        &self.log
    }
}

impl LabRun {
    /// Whether QEMU logged a triple fault of L1 itself (a triple fault of L2 is a #VMEXIT
    /// to L1's KVM instead, which QEMU does not log).
    pub fn l1_triple_faulted(&self) -> bool {
        fs::read(&self.qemu_log_path)
            .is_ok_and(|log| String::from_utf8_lossy(&log).contains("Triple fault"))
    }

    /// The last `lines` of L1's kernel messages (from its heartbeat port, which carries all
    /// of them; the console only has emergencies), for failure reports.
    pub fn l1_kernel_tail(&self, lines: usize) -> String {
        let text = fs::read(&self.pulse_path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let kernel: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("LAB:PULSE"))
            .collect();
        kernel
            .get(kernel.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// The scenario's exit code, from `LAB:DONE rc=N`.
    pub fn done_rc(&self) -> Option<i32> {
        self.field("LAB:DONE", "rc")?.parse().ok()
    }

    /// The console between `LAB:BEGIN name` and `LAB:RESULT name ...`.
    pub fn section(&self, name: &str) -> Result<Section<'_>> {
        Section::find(&self.log, name)
    }

    /// One line on how the run went, with the log's path.
    pub fn summary(&self) -> String {
        let up = self
            .l1_up
            .map_or("never".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
        format!(
            "lab {}: {:?} after {:.1}s (build {:.1}s, L1-UP {up}, L1 initramfs {} KiB, \
             L2 initramfs {} KiB), log {}",
            self.scenario,
            self.end,
            self.wall.as_secs_f64(),
            self.build.as_secs_f64(),
            self.l1_initramfs_bytes / 1024,
            self.l2_initramfs_bytes / 1024,
            self.log_path.display()
        )
    }
}

/// Oldest QEMU whose TCG runs nested SVM reliably enough for the lab (under 7.2 about every
/// other second guest of an L1 broke L1 or L2; under 10.0 about one guest in twenty fails).
const MIN_QEMU_MAJOR: u32 = 10;

/// The major version in `qemu-system-x86_64 --version`'s first line.
fn qemu_major(version_output: &str) -> Option<u32> {
    let rest = version_output
        .lines()
        .next()?
        .strip_prefix("QEMU emulator version ")?;
    rest.split('.').next()?.parse().ok()
}

fn check_qemu_version() -> Result<()> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .context(|| "cannot run qemu-system-x86_64 --version".to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    match qemu_major(&text) {
        Some(major) if major >= MIN_QEMU_MAJOR => Ok(()),
        _ => Err(format!(
            "the lab needs QEMU {MIN_QEMU_MAJOR} or newer, found \"{}\": run tests/lab/prepare",
            text.lines().next().unwrap_or("").trim()
        )),
    }
}

impl Lab {
    /// Finds `tests/lab`, the prepared cache and the minivmm binary (`MINIVMM_BIN`, else
    /// `<workspace>/target/release/minivmm`). The error says what to run.
    pub fn locate() -> Result<Lab> {
        let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tests.join("lab");
        let work = dir.join("work");
        let cache = work.join("cache");
        let version_file = cache.join("kernel.version");
        let kernel_version = fs::read_to_string(&version_file)
            .map(|v| v.trim().to_string())
            .context(|| {
                format!(
                    "the lab is not prepared ({}): run tests/lab/prepare",
                    version_file.display()
                )
            })?;
        let kernel_root = cache.join("kernel");
        let kernel = kernel_root.join(format!("boot/vmlinuz-{kernel_version}"));
        let busybox = cache.join("busybox/bin/busybox");
        let edu_msi = cache.join("edu-msi/edu_msi.ko");
        let mbochs = cache.join("mbochs/mbochs.ko");
        let link_probe = cache.join("link-probe/link_probe.ko");
        let blkbench = cache.join("blkbench/blkbench");
        let blk_requests = cache.join("blk-requests/blk_requests.ko");
        for needed in [
            &kernel,
            &busybox,
            &edu_msi,
            &mbochs,
            &link_probe,
            &blkbench,
            &blk_requests,
        ] {
            if !needed.is_file() {
                return Err(format!(
                    "{} is missing: run tests/lab/prepare",
                    needed.display()
                ));
            }
        }
        if image::find_in_path("qemu-system-x86_64").is_none() {
            return Err("qemu-system-x86_64 is not installed: run tests/lab/prepare".into());
        }
        check_qemu_version()?;
        let minivmm = match std::env::var_os("MINIVMM_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => tests
                .parent()
                .unwrap_or(tests)
                .join("target/release/minivmm"),
        };
        if !minivmm.is_file() {
            return Err(format!(
                "minivmm binary not found at {}: run `cargo build --release -p minivmm` \
                 (or set MINIVMM_BIN)",
                minivmm.display()
            ));
        }
        let run_as = minivmm.with_file_name("run-as");
        if !run_as.is_file() {
            return Err(format!(
                "{} not found: run `cargo build --release -p minivmm-tests`",
                run_as.display()
            ));
        }
        Ok(Lab {
            blkbench,
            blk_requests,
            edu_msi,
            mbochs,
            link_probe,
            run_as,
            dir,
            work,
            kernel_root,
            kernel_version,
            kernel,
            busybox,
            minivmm,
        })
    }

    /// Runs `tests/lab/scenarios/NAME.sh` in a fresh L1 and returns L1's console. An Ok run
    /// may still have failed: look at `end`, `done_rc()` and the markers.
    pub fn run(&self, scenario: &str, opts: &RunOptions) -> Result<LabRun> {
        let script = self.dir.join("scenarios").join(format!("{scenario}.sh"));
        let script_text =
            fs::read_to_string(&script).context(|| format!("no scenario {}", script.display()))?;
        let run_dir = self.work.join("runs").join(scenario);
        fs::create_dir_all(&run_dir).context(|| format!("cannot create {}", run_dir.display()))?;

        let built = Instant::now();
        let needs = |what: &str| {
            script_text
                .lines()
                .any(|l| l.trim() == format!("# lab-needs: {what}"))
        };
        let l2 = run_dir.join("l2.cpio.gz");
        let extras = L2Extras {
            radeon: needs("radeon"),
            display: needs("display"),
            lspci: needs("lspci"),
            disk: needs("disk"),
        };
        let l2_initramfs_bytes = self.l2_initramfs(&l2, &extras)?;
        let root_image = if extras.disk {
            Some(self.l2_root_image(&run_dir, &extras)?)
        } else {
            None
        };
        let l1 = run_dir.join("l1.cpio.gz");
        let with_qemu = needs("qemu");
        let l1_initramfs_bytes = self.l1_initramfs(&l2, root_image.as_deref(), with_qemu, &l1)?;
        let build = built.elapsed();

        let mut cmdline =
            format!("console=ttyS0 intel_iommu=on iommu=pt panic=-1 lab.scenario={scenario}");
        for (key, value) in &opts.params {
            cmdline.push_str(&format!(" lab.{key}={value}"));
            // 1 GiB huge pages can only be had at L1's boot (its memory is fragmented by
            // the time a scenario could reserve one).
            if key == "huge" && value == "1G" {
                cmdline.push_str(" hugepagesz=1G hugepages=1");
            }
        }
        // Probes of the lab itself (README): more of L1's kernel command line.
        if let Ok(extra) = std::env::var("LAB_L1_ARGS") {
            cmdline.push(' ');
            cmdline.push_str(&extra);
        }
        let log_path = run_dir.join("l1.log");
        let sockets = l1::Sockets {
            monitor: run_dir.join("monitor.sock"),
            control: run_dir.join("control.sock"),
            pulse: run_dir.join("pulse.log"),
            qemu_log: run_dir.join("qemu.log"),
        };
        // The big BAR's backing file is sparse and only lives for the run.
        let big_bar = needs("big-bar").then(|| run_dir.join("big-bar.mem"));
        // A VFCT table in L1's firmware, as a laptop's carries its dGPU's VBIOS.
        let vfct = if needs("vfct") {
            let ids = opts
                .params
                .iter()
                .find(|(key, _)| key == "vfct")
                .map_or("match", |(_, value)| value.as_str());
            Some(l1_vfct(&run_dir, ids)?)
        } else {
            None
        };
        // One CPU in L1 unless the scenario measures parallel work (`lab-needs: two-cpus`):
        // TCG's nested SVM then has no second CPU thread to race, the likely source of the
        // lab's own failures (docs/ARCHITECTURE.md, "The lab's QEMU"). Probes may set
        // LAB_L1_SMP.
        let cpus = std::env::var("LAB_L1_SMP")
            .unwrap_or_else(|_| if needs("two-cpus") { "2" } else { "1" }.to_string());
        // Probes of the lab itself (README) may change L1's CPU model.
        let cpu_model = std::env::var("LAB_L1_CPU").unwrap_or_else(|_| "max".to_string());
        let extras = l1::L1Extras {
            big_bar: big_bar.as_deref(),
            sole_vga: needs("sole-vga"),
            vfct: vfct.as_deref(),
            cpus: &cpus,
            cpu_model: &cpu_model,
        };
        let cmd = l1::command(&self.kernel, &l1, &cmdline, &log_path, &sockets, &extras);
        let watched = l1::run_watched(cmd, &log_path, &sockets, opts);
        if let Some(file) = &big_bar {
            let _ = fs::remove_file(file);
        }
        let watched = watched?;
        Ok(LabRun {
            scenario: scenario.to_string(),
            log: watched.log,
            log_path,
            pulse_path: sockets.pulse,
            qemu_log_path: sockets.qemu_log,
            end: watched.end,
            build,
            wall: watched.wall,
            l1_up: watched.l1_up,
            l1_initramfs_bytes,
            l2_initramfs_bytes,
            pictures: watched.pictures,
        })
    }

    /// L2: busybox, `l2-init`, the scripts it runs and the modules its device tests load;
    /// what only some scenarios need comes with their `lab-needs:` lines (`extras`).
    fn l2_initramfs(&self, dest: &Path, extras: &L2Extras) -> Result<u64> {
        self.l2_tree(&self.dir.join("l2-init"), extras)?
            .write_gz(dest)
    }

    /// L2's root filesystem on a disk (`lab-needs: disk`): the initramfs's own tree (its
    /// /init, mounting the disk from the initramfs, runs the rest from there), as an ext4
    /// image of 64 MiB made by mke2fs.
    fn l2_root_image(&self, run_dir: &Path, extras: &L2Extras) -> Result<PathBuf> {
        let tree = self.l2_tree(&self.dir.join("l2-init"), extras)?;
        let dir = run_dir.join("l2-rootfs");
        tree.write_dir(&dir)?;
        let image = run_dir.join("l2-root.img");
        let _ = fs::remove_file(&image);
        let status = Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-O",
                "^metadata_csum",
                "-L",
                "l2root",
                "-d",
            ])
            .arg(&dir)
            .arg(&image)
            .arg("64M")
            .status()
            .context(|| "cannot run mke2fs (run tests/lab/prepare)".to_string())?;
        if !status.success() {
            return Err(format!(
                "mke2fs could not make {}: {status}",
                image.display()
            ));
        }
        let _ = fs::remove_dir_all(&dir);
        Ok(image)
    }

    /// The tree of L2's initramfs (or of its disk), with `init` as /init.
    fn l2_tree(&self, init: &Path, extras: &L2Extras) -> Result<cpio::Tree> {
        let mut tree = image::busybox_tree(&self.busybox, init)?;
        let mut modules = image::L2_MODULES.to_vec();
        if extras.radeon {
            modules.push("radeon");
        }
        if extras.display {
            modules.extend(image::L2_DISPLAY_MODULES);
        }
        if extras.disk {
            modules.extend(image::L2_DISK_MODULES);
            tree.copy("usr/bin/blkbench", &self.blkbench)?;
            tree.copy("lib/modules/blk_requests.ko", &self.blk_requests)?;
        }
        image::add_modules(&mut tree, &self.kernel_root, &self.kernel_version, &modules)?;
        for script in ["l2-devices", "l2-machine", "l2-disk"] {
            tree.copy(script, &self.dir.join(script))?;
        }
        tree.copy("lib/modules/edu_msi.ko", &self.edu_msi)?;
        tree.copy("lib/modules/link_probe.ko", &self.link_probe)?;
        if extras.lspci {
            image::add_lspci(&mut tree)?;
        }
        Ok(tree)
    }

    /// L1: busybox, `l1-init`, modules, minivmm, the L2 images, the scenarios, maybe QEMU.
    fn l1_initramfs(
        &self,
        l2_initramfs: &Path,
        root_image: Option<&Path>,
        with_qemu: bool,
        dest: &Path,
    ) -> Result<u64> {
        let mut tree = image::busybox_tree(&self.busybox, &self.dir.join("l1-init"))?;
        image::add_modules(
            &mut tree,
            &self.kernel_root,
            &self.kernel_version,
            image::L1_MODULES,
        )?;
        image::add_dynamic(&mut tree, &self.minivmm, "usr/bin/minivmm")?;
        image::add_dynamic(&mut tree, &self.run_as, "usr/bin/run-as")?;
        tree.copy("lab/mbochs.ko", &self.mbochs)?;
        tree.copy("lab/link_probe.ko", &self.link_probe)?;
        // The PCI ID database (Debian's pci.ids package), for minivmm iommu-groups and doctor.
        tree.copy_same(Path::new("/usr/share/misc/pci.ids"))?;
        // A real VBIOS for another device (1002:5159), for the ROM-mismatch check.
        tree.copy_same(Path::new("/usr/share/seabios/vgabios-ati.bin"))?;
        tree.copy("lab/l2/bzImage", &self.kernel)?;
        tree.copy("lab/l2/initrd.gz", l2_initramfs)?;
        if let Some(image) = root_image {
            tree.copy("lab/l2/root.img", image)?;
        }
        tree.copy("lab/lab.sh", &self.dir.join("lab.sh"))?;
        let scenarios = self.dir.join("scenarios");
        let entries =
            fs::read_dir(&scenarios).context(|| format!("cannot list {}", scenarios.display()))?;
        for entry in entries {
            let path = entry
                .context(|| format!("cannot list {}", scenarios.display()))?
                .path();
            if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| n.ends_with(".sh"))
            {
                tree.copy(&format!("lab/scenarios/{name}"), &path)?;
            }
        }
        if with_qemu {
            image::add_qemu(&mut tree)?;
        }
        tree.write_gz(dest)
    }
}

/// The ati-vga (rv100, 1002:5159) at L1's 00:08.0 has no ROM; SeaBIOS's vgabios-ati.bin is
/// an image for it.
const ATI_VGABIOS: &str = "/usr/share/seabios/vgabios-ati.bin";

/// An ACPI VFCT table for L1's firmware (QEMU's `-acpitable`) with one image, SeaBIOS's
/// vgabios-ati.bin, at the ati-vga's address 00:08.0: for its IDs (`which` = `match`), or
/// for other IDs (`other`: 1002:6660, an entry a VMM must not take for it).
fn l1_vfct(run_dir: &Path, which: &str) -> Result<PathBuf> {
    use minivmm_firmware::acpi::vfct::{build, VfctImage};
    let rom = fs::read(ATI_VGABIOS).context(|| format!("cannot read {ATI_VGABIOS}"))?;
    let device_id = match which {
        "other" => 0x6660,
        _ => 0x5159,
    };
    let table = build(&[VfctImage {
        bus: 0,
        device: 8,
        function: 0,
        vendor_id: 0x1002,
        device_id,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        rom: &rom,
    }]);
    let path = run_dir.join("vfct.bin");
    fs::write(&path, table).context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// What goes into L2's initramfs beyond the base, by the scenario's `lab-needs:` lines.
#[derive(Debug, Clone, Copy)]
struct L2Extras {
    /// `radeon`: the radeon driver (6 MiB).
    radeon: bool,
    /// `display`: the DRM drivers of the lab's displays and the HD Audio driver.
    display: bool,
    /// `lspci`: pciutils' lspci with its libraries and the PCI ID database.
    lspci: bool,
    /// `disk`: virtio-blk and ext4, and a root filesystem image for L2 (in L1 at
    /// /lab/l2/root.img).
    disk: bool,
}

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(what)
    }
}

#[cfg(test)]
mod tests {
    use super::qemu_major;

    #[test]
    fn qemu_major_reads_the_first_line() {
        let debian12 = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright";
        assert_eq!(qemu_major(debian12), Some(7));
        let backports = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)";
        assert_eq!(qemu_major(backports), Some(10));
        assert_eq!(qemu_major("qemu-system-x86_64: not a version line"), None);
        assert_eq!(qemu_major(""), None);
    }
}
