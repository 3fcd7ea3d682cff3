//! Moving a device from its host driver to vfio-pci and giving it back: `minivmm bind`,
//! `minivmm unbind` and `--managed` (libvirt's managed="yes").
//!
//! Binding uses the kernel's `driver_override`: the override names vfio-pci, the device
//! leaves its driver, and a reprobe lets only vfio-pci take it. What the device had before
//! (driver and override) is written to `/run/minivmm/bound/BDF` before anything changes,
//! so `minivmm unbind` can give it back exactly even after minivmm was killed. Only the
//! devices named — and, when asked, the rest of their IOMMU group — are touched.

use std::path::{Path, PathBuf};

use super::pci::{blocking_members, driver, group_members, PciInfo, VFIO_PCI};
use super::HostRoot;

/// Where the records of bound devices live, under the root (tmpfs: a reboot forgets the
/// bindings and the records together).
const RECORDS: &str = "run/minivmm/bound";

/// Why a device could not be moved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No such PCI function.
    #[error("there is no PCI device {0}: check the address with lspci -D")]
    NoDevice(String),
    /// vfio-pci is not there and could not be loaded.
    #[error("the vfio-pci driver is not loaded and modprobe vfio-pci failed ({0}): install your kernel's modules or build CONFIG_VFIO_PCI")]
    NoVfioPci(String),
    /// A sysfs write failed.
    #[error("cannot write {value:?} to {path} ({reason}): run as root")]
    Write {
        /// The file.
        path: String,
        /// What was written.
        value: String,
        /// The error.
        reason: String,
    },
    /// vfio-pci did not take the device.
    #[error("vfio-pci did not take {bdf} (it is on {now}); check dmesg: usually the IOMMU is off (see minivmm doctor {bdf})")]
    NotTaken {
        /// The device.
        bdf: String,
        /// Its driver afterwards.
        now: String,
    },
    /// The group is open (a VM holds it): unbinding would block until it closes.
    #[error("{bdf} is in use: /dev/vfio/{group} is open (a VM has it); stop that VM first")]
    InUse {
        /// The device.
        bdf: String,
        /// Its group.
        group: u32,
    },
    /// The original driver did not take the device back.
    #[error("could not give {bdf} back to {wanted} (it is on {now}): try echo {bdf} > /sys/bus/pci/drivers/{wanted}/bind")]
    NotRestored {
        /// The device.
        bdf: String,
        /// The driver it had.
        wanted: String,
        /// Its driver afterwards.
        now: String,
    },
    /// A record that cannot be written or read.
    #[error("cannot {0} the binding record {1} ({2})")]
    Record(&'static str, String, String),
}

/// The kernel side of binding: sysfs writes the kernel acts on, loading a module, and
/// whether a VFIO group is open. Tests put a fake kernel behind these.
pub trait Kernel {
    /// Write `value` to a sysfs attribute.
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
    /// `modprobe name`.
    fn load_module(&self, name: &str) -> Result<(), String>;
    /// True when `/dev/vfio/N` is open elsewhere (VFIO lets one process have a group).
    fn group_in_use(&self, node: &Path) -> bool;
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealKernel;

impl Kernel for RealKernel {
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value)
    }

    fn load_module(&self, name: &str) -> Result<(), String> {
        let out = std::process::Command::new("modprobe")
            .arg(name)
            .output()
            .map_err(|e| format!("cannot run modprobe: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn group_in_use(&self, node: &Path) -> bool {
        let open = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(node);
        matches!(open, Err(e) if e.raw_os_error() == Some(libc::EBUSY))
    }
}

/// What a device had before minivmm moved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    /// The device.
    pub bdf: String,
    /// Its driver then (`None`: none).
    pub driver: Option<String>,
    /// Its `driver_override` then (`None`: unset).
    pub driver_override: Option<String>,
}

impl Original {
    fn to_record(&self) -> String {
        format!(
            "driver={}\noverride={}\n",
            self.driver.as_deref().unwrap_or(""),
            self.driver_override.as_deref().unwrap_or("")
        )
    }

    fn from_record(bdf: &str, text: &str) -> Original {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        Original {
            bdf: bdf.to_string(),
            driver: field("driver="),
            driver_override: field("override="),
        }
    }
}

/// Binds and unbinds devices under one root, through one kernel.
#[derive(Debug)]
pub struct Binder<K: Kernel> {
    root: HostRoot,
    kernel: K,
}

impl<K: Kernel> Binder<K> {
    /// A binder for the host under `root`.
    pub fn new(root: HostRoot, kernel: K) -> Self {
        Binder { root, kernel }
    }

    /// Move `bdf` to vfio-pci; with `group`, also every other member of its IOMMU group that
    /// sits on a driver VFIO does not accept. Returns what was moved (nothing when already
    /// on vfio-pci). A failure part-way gives back what was moved.
    pub fn bind(&self, bdf: &str, group: bool) -> Result<Vec<Original>, Error> {
        let info = PciInfo::read(&self.root, bdf).ok_or_else(|| Error::NoDevice(bdf.into()))?;
        let mut targets = vec![bdf.to_string()];
        if let (true, Some(number)) = (group, info.group) {
            let blocking = blocking_members(&self.root.sys(), number, bdf);
            targets.extend(blocking.into_iter().map(|(member, _)| member));
        }
        let mut moved = Vec::new();
        for target in &targets {
            match self.bind_one(target) {
                Ok(Some(original)) => moved.push(original),
                Ok(None) => {}
                Err(e) => {
                    for original in moved.iter().rev() {
                        let _ = self.restore(original);
                    }
                    return Err(e);
                }
            }
        }
        Ok(moved)
    }

    /// Move one device to vfio-pci; `None` when it is there already.
    fn bind_one(&self, bdf: &str) -> Result<Option<Original>, Error> {
        let dir = self.root.pci_device(bdf);
        if !dir.exists() {
            return Err(Error::NoDevice(bdf.into()));
        }
        let now = driver(&dir);
        if now.as_deref() == Some(VFIO_PCI) {
            return Ok(None);
        }
        self.ensure_vfio_pci()?;
        let original = Original {
            bdf: bdf.to_string(),
            driver: now.clone(),
            driver_override: self.driver_override(bdf),
        };
        self.save_record(&original)?;
        self.write(&dir.join("driver_override"), VFIO_PCI)?;
        if now.is_some() {
            self.write(&dir.join("driver/unbind"), bdf)?;
        }
        self.write(&self.root.sys().join("bus/pci/drivers_probe"), bdf)?;
        let after = driver(&dir);
        if after.as_deref() != Some(VFIO_PCI) {
            let _ = self.restore(&original);
            return Err(Error::NotTaken {
                bdf: bdf.into(),
                now: after.unwrap_or_else(|| "no driver".into()),
            });
        }
        Ok(Some(original))
    }

    /// Give a device back what it had: its override, and its driver (or none).
    pub fn restore(&self, original: &Original) -> Result<(), Error> {
        let bdf = original.bdf.as_str();
        let dir = self.root.pci_device(bdf);
        if !dir.exists() {
            return Err(Error::NoDevice(bdf.into()));
        }
        self.refuse_if_in_use(bdf)?;
        let value = original.driver_override.as_deref().unwrap_or("\n");
        self.write(&dir.join("driver_override"), value)?;
        if driver(&dir).is_some_and(|d| Some(&d) != original.driver.as_ref()) {
            self.write(&dir.join("driver/unbind"), bdf)?;
        }
        if let Some(wanted) = &original.driver {
            if driver(&dir).as_ref() != Some(wanted) {
                self.write(&self.root.sys().join("bus/pci/drivers_probe"), bdf)?;
            }
            let bind = self
                .root
                .sys()
                .join("bus/pci/drivers")
                .join(wanted)
                .join("bind");
            if driver(&dir).is_none() && bind.exists() {
                self.write(&bind, bdf)?;
            }
            let now = driver(&dir);
            if now.as_ref() != Some(wanted) {
                return Err(Error::NotRestored {
                    bdf: bdf.into(),
                    wanted: wanted.clone(),
                    now: now.unwrap_or_else(|| "no driver".into()),
                });
            }
        }
        let _ = std::fs::remove_file(self.record_path(bdf));
        Ok(())
    }

    /// `minivmm unbind`: give `bdf` (and with `group`, the members minivmm bound with it)
    /// back to what the binding records say, or — without a record — to whatever driver the
    /// kernel picks. Returns a line per device.
    pub fn unbind(&self, bdf: &str, group: bool) -> Result<Vec<String>, Error> {
        let info = PciInfo::read(&self.root, bdf).ok_or_else(|| Error::NoDevice(bdf.into()))?;
        let mut targets = vec![bdf.to_string()];
        if let (true, Some(number)) = (group, info.group) {
            let members = group_members(&self.root.sys(), number);
            targets.extend(
                members
                    .into_iter()
                    .filter(|m| m != bdf && self.record_path(m).exists()),
            );
        }
        let mut lines = Vec::new();
        for target in targets {
            lines.push(self.unbind_one(&target)?);
        }
        Ok(lines)
    }

    fn unbind_one(&self, bdf: &str) -> Result<String, Error> {
        let dir = self.root.pci_device(bdf);
        if let Some(original) = self.load_record(bdf)? {
            self.restore(&original)?;
            let to = original.driver.as_deref().unwrap_or("no driver");
            return Ok(format!("{bdf}: back on {to}"));
        }
        match driver(&dir) {
            Some(d) if d == VFIO_PCI => {}
            Some(d) => return Ok(format!("{bdf}: on {d}, not vfio-pci; nothing to do")),
            None => return Ok(format!("{bdf}: on no driver; nothing to do")),
        }
        // No record: clear the override and let the kernel choose.
        let fallback = Original {
            bdf: bdf.into(),
            driver: None,
            driver_override: None,
        };
        self.restore(&fallback)?;
        self.write(&self.root.sys().join("bus/pci/drivers_probe"), bdf)?;
        let now = driver(&dir).unwrap_or_else(|| "no driver".into());
        Ok(format!("{bdf}: left vfio-pci, now on {now}"))
    }

    fn refuse_if_in_use(&self, bdf: &str) -> Result<(), Error> {
        let dir = self.root.pci_device(bdf);
        if driver(&dir).as_deref() != Some(VFIO_PCI) {
            return Ok(());
        }
        let group = PciInfo::read(&self.root, bdf).and_then(|i| i.group);
        match group {
            Some(group)
                if self
                    .kernel
                    .group_in_use(&self.root.path(&format!("dev/vfio/{group}"))) =>
            {
                Err(Error::InUse {
                    bdf: bdf.into(),
                    group,
                })
            }
            _ => Ok(()),
        }
    }

    fn ensure_vfio_pci(&self) -> Result<(), Error> {
        let dir = self.root.sys().join("bus/pci/drivers").join(VFIO_PCI);
        if dir.exists() {
            return Ok(());
        }
        self.kernel
            .load_module(VFIO_PCI)
            .map_err(Error::NoVfioPci)?;
        if dir.exists() {
            Ok(())
        } else {
            Err(Error::NoVfioPci("the driver did not appear".into()))
        }
    }

    fn driver_override(&self, bdf: &str) -> Option<String> {
        super::read_trimmed(&self.root.pci_device(bdf).join("driver_override"))
            .filter(|v| !v.is_empty() && v != "(null)")
    }

    fn write(&self, path: &Path, value: &str) -> Result<(), Error> {
        self.kernel.write(path, value).map_err(|e| Error::Write {
            path: path.display().to_string(),
            value: value.trim().to_string(),
            reason: e.to_string(),
        })
    }

    fn record_path(&self, bdf: &str) -> PathBuf {
        self.root.path(RECORDS).join(bdf)
    }

    fn save_record(&self, original: &Original) -> Result<(), Error> {
        let path = self.record_path(&original.bdf);
        let fail =
            |e: std::io::Error| Error::Record("write", path.display().to_string(), e.to_string());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        std::fs::write(&path, original.to_record()).map_err(fail)
    }

    fn load_record(&self, bdf: &str) -> Result<Option<Original>, Error> {
        let path = self.record_path(bdf);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Original::from_record(bdf, &text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Record(
                "read",
                path.display().to_string(),
                e.to_string(),
            )),
        }
    }
}

/// Devices a run moved to vfio-pci (`--managed`); [`Managed::release`] (or dropping it)
/// gives them back. Keep it alive longer than the VM: vfio-pci lets a device go only once
/// its VFIO files are closed.
#[derive(Debug)]
pub struct Managed<K: Kernel> {
    binder: Binder<K>,
    moved: Vec<Original>,
}

impl<K: Kernel> Managed<K> {
    /// Bind every PCI address in `devices` (with `group`, their groups too).
    pub fn bind(binder: Binder<K>, devices: &[String], group: bool) -> Result<Self, Error> {
        let mut managed = Managed {
            binder,
            moved: Vec::new(),
        };
        for bdf in devices {
            let moved = managed.binder.bind(bdf, group)?;
            for original in &moved {
                log::info!(
                    "--managed: {} moved from {} to vfio-pci",
                    original.bdf,
                    original.driver.as_deref().unwrap_or("no driver")
                );
            }
            managed.moved.extend(moved);
        }
        Ok(managed)
    }

    /// What was moved.
    pub fn moved(&self) -> &[Original] {
        &self.moved
    }

    /// Give everything back, last bound first; the failures, if any.
    pub fn release(mut self) -> Vec<Error> {
        self.give_back()
    }

    fn give_back(&mut self) -> Vec<Error> {
        let mut errors = Vec::new();
        while let Some(original) = self.moved.pop() {
            match self.binder.restore(&original) {
                Ok(()) => log::info!(
                    "--managed: {} back on {}",
                    original.bdf,
                    original.driver.as_deref().unwrap_or("no driver")
                ),
                Err(e) => errors.push(e),
            }
        }
        errors
    }
}

impl<K: Kernel> Drop for Managed<K> {
    fn drop(&mut self) {
        for e in self.give_back() {
            eprintln!("minivmm: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeHost, FakePci};
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A kernel that moves driver links the way the PCI core does on these writes.
    struct FakeKernel<'a> {
        host: &'a FakeHost,
        /// The driver a device's IDs match when no override is set.
        native: HashMap<&'static str, &'static str>,
        /// Drivers that refuse every device (probe fails).
        refusing: Vec<&'static str>,
        writes: RefCell<Vec<(String, String)>>,
        in_use: bool,
    }

    impl<'a> FakeKernel<'a> {
        fn new(host: &'a FakeHost) -> Self {
            FakeKernel {
                host,
                native: HashMap::new(),
                refusing: Vec::new(),
                writes: RefCell::new(Vec::new()),
                in_use: false,
            }
        }

        fn dev(&self, bdf: &str) -> PathBuf {
            self.host.path(&format!("sys/devices/pci0000:00/{bdf}"))
        }

        fn probe(&self, bdf: &str, driver: &str) {
            if !self.refusing.contains(&driver) {
                self.host.bind_link(bdf, driver);
            }
        }
    }

    impl Kernel for &FakeKernel<'_> {
        fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
            let relative = path
                .strip_prefix(self.host.path(""))
                .unwrap()
                .display()
                .to_string();
            self.writes
                .borrow_mut()
                .push((relative.clone(), value.trim().to_string()));
            let bdf = value.trim();
            if relative.ends_with("/driver_override") {
                let stored = if bdf.is_empty() { "(null)" } else { bdf };
                std::fs::write(path, format!("{stored}\n"))?;
            } else if relative.ends_with("/unbind") {
                // Through the device's driver link, or the driver's own directory.
                self.host.unbind_link(bdf);
            } else if relative == "sys/bus/pci/drivers_probe" {
                if driver(&self.dev(bdf)).is_none() {
                    let over = std::fs::read_to_string(self.dev(bdf).join("driver_override"))?;
                    match over.trim() {
                        "(null)" => {
                            if let Some(native) = self.native.get(bdf) {
                                self.probe(bdf, native);
                            }
                        }
                        wanted => {
                            if self.host.exists(&format!("sys/bus/pci/drivers/{wanted}")) {
                                self.probe(bdf, wanted);
                            }
                        }
                    }
                }
            } else if let Some(rest) = relative.strip_prefix("sys/bus/pci/drivers/") {
                let name = rest.trim_end_matches("/bind");
                self.probe(bdf, name);
            }
            Ok(())
        }

        fn load_module(&self, name: &str) -> Result<(), String> {
            Err(format!("modprobe: FATAL: Module {name} not found"))
        }

        fn group_in_use(&self, _node: &Path) -> bool {
            self.in_use
        }
    }

    fn host() -> FakeHost {
        let host = FakeHost::new();
        let pci = |bdf, group, driver| FakePci {
            bdf,
            ids: (0x1002, 0x6660),
            class: 0x038000,
            group: Some(group),
            driver,
        };
        host.pci(pci("0000:01:00.0", 7, Some("amdgpu")))
            .pci(pci("0000:01:00.1", 7, Some("snd_hda_intel")))
            .pci(pci("0000:00:1c.0", 7, Some("pcieport")))
            .pci(pci("0000:02:00.0", 8, None))
            .dir("sys/bus/pci/drivers/vfio-pci")
            .dir("sys/bus/pci/drivers/uio_pci_generic");
        host
    }

    fn kernel(host: &FakeHost) -> FakeKernel<'_> {
        let mut kernel = FakeKernel::new(host);
        kernel.native.insert("0000:01:00.0", "amdgpu");
        kernel.native.insert("0000:01:00.1", "snd_hda_intel");
        kernel
    }

    fn on(host: &FakeHost, bdf: &str) -> Option<String> {
        driver(&host.path(&format!("sys/devices/pci0000:00/{bdf}")))
    }

    #[test]
    fn bind_moves_the_device_and_records_what_it_had() {
        let host = host();
        let kernel = kernel(&host);
        let binder = Binder::new(host.root(), &kernel);
        let moved = binder.bind("0000:01:00.0", false).unwrap();
        assert_eq!(
            moved,
            [Original {
                bdf: "0000:01:00.0".into(),
                driver: Some("amdgpu".into()),
                driver_override: None,
            }]
        );
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("vfio-pci"));
        assert_eq!(
            on(&host, "0000:01:00.1").as_deref(),
            Some("snd_hda_intel"),
            "a device the user did not name is left alone"
        );
        assert!(host.exists("run/minivmm/bound/0000:01:00.0"));
        let writes: Vec<String> = kernel.writes.borrow().iter().map(|w| w.0.clone()).collect();
        assert_eq!(
            writes,
            [
                "sys/bus/pci/devices/0000:01:00.0/driver_override",
                "sys/bus/pci/devices/0000:01:00.0/driver/unbind",
                "sys/bus/pci/drivers_probe"
            ]
        );
        assert!(
            binder.bind("0000:01:00.0", false).unwrap().is_empty(),
            "already there"
        );
    }

    #[test]
    fn restore_gives_back_the_driver_and_the_override() {
        let host = host();
        let kernel = kernel(&host);
        let binder = Binder::new(host.root(), &kernel);
        let moved = binder.bind("0000:01:00.0", false).unwrap();
        binder.restore(&moved[0]).unwrap();
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("amdgpu"));
        let over = std::fs::read_to_string(
            host.path("sys/devices/pci0000:00/0000:01:00.0/driver_override"),
        )
        .unwrap();
        assert_eq!(over.trim(), "(null)");
        assert!(!host.exists("run/minivmm/bound/0000:01:00.0"));
    }

    #[test]
    fn a_device_bound_by_override_gets_that_override_back() {
        let host = host();
        let kernel = kernel(&host);
        host.file(
            "sys/devices/pci0000:00/0000:01:00.0/driver_override",
            "uio_pci_generic\n",
        );
        host.bind_link("0000:01:00.0", "uio_pci_generic");
        let binder = Binder::new(host.root(), &kernel);
        let moved = binder.bind("0000:01:00.0", false).unwrap();
        assert_eq!(moved[0].driver_override.as_deref(), Some("uio_pci_generic"));
        binder.restore(&moved[0]).unwrap();
        assert_eq!(
            on(&host, "0000:01:00.0").as_deref(),
            Some("uio_pci_generic")
        );
    }

    #[test]
    fn a_device_with_no_driver_goes_back_to_none() {
        let host = host();
        let kernel = kernel(&host);
        let binder = Binder::new(host.root(), &kernel);
        let moved = binder.bind("0000:02:00.0", false).unwrap();
        assert_eq!(on(&host, "0000:02:00.0").as_deref(), Some("vfio-pci"));
        binder.restore(&moved[0]).unwrap();
        assert_eq!(on(&host, "0000:02:00.0"), None);
    }

    #[test]
    fn the_group_moves_only_when_asked_and_ports_stay() {
        let host = host();
        let kernel = kernel(&host);
        let binder = Binder::new(host.root(), &kernel);
        let moved = binder.bind("0000:01:00.0", true).unwrap();
        let names: Vec<&str> = moved.iter().map(|o| o.bdf.as_str()).collect();
        assert_eq!(names, ["0000:01:00.0", "0000:01:00.1"]);
        assert_eq!(on(&host, "0000:01:00.1").as_deref(), Some("vfio-pci"));
        assert_eq!(on(&host, "0000:00:1c.0").as_deref(), Some("pcieport"));
        let lines = binder.unbind("0000:01:00.0", true).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(on(&host, "0000:01:00.1").as_deref(), Some("snd_hda_intel"));
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("amdgpu"));
    }

    #[test]
    fn a_refusing_vfio_pci_leaves_the_device_as_it_was() {
        let host = host();
        let mut kernel = kernel(&host);
        kernel.refusing.push("vfio-pci");
        let binder = Binder::new(host.root(), &kernel);
        let e = binder.bind("0000:01:00.0", true).unwrap_err();
        assert!(matches!(e, Error::NotTaken { .. }), "{e}");
        assert!(e.to_string().contains("minivmm doctor"));
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("amdgpu"));
        assert_eq!(on(&host, "0000:01:00.1").as_deref(), Some("snd_hda_intel"));
    }

    #[test]
    fn missing_devices_and_vfio_pci_are_clear_errors() {
        let host = host();
        let kernel = kernel(&host);
        let binder = Binder::new(host.root(), &kernel);
        assert_eq!(
            binder.bind("0000:09:00.0", false).unwrap_err(),
            Error::NoDevice("0000:09:00.0".into())
        );
        std::fs::remove_dir(host.path("sys/bus/pci/drivers/vfio-pci")).unwrap();
        let e = binder.bind("0000:01:00.0", false).unwrap_err();
        assert!(matches!(e, Error::NoVfioPci(_)), "{e}");
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("amdgpu"));
    }

    #[test]
    fn unbind_refuses_a_group_a_vm_holds() {
        let host = host();
        let mut kernel = kernel(&host);
        let binder = Binder::new(host.root(), &kernel);
        binder.bind("0000:01:00.0", false).unwrap();
        kernel.in_use = true;
        let binder = Binder::new(host.root(), &kernel);
        let e = binder.unbind("0000:01:00.0", false).unwrap_err();
        assert_eq!(
            e,
            Error::InUse {
                bdf: "0000:01:00.0".into(),
                group: 7
            }
        );
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn unbind_without_a_record_lets_the_kernel_choose() {
        let host = host();
        let kernel = kernel(&host);
        host.bind_link("0000:01:00.0", "vfio-pci");
        let binder = Binder::new(host.root(), &kernel);
        let lines = binder.unbind("0000:01:00.0", false).unwrap();
        assert_eq!(lines, ["0000:01:00.0: left vfio-pci, now on amdgpu"]);
        let lines = binder.unbind("0000:01:00.1", false).unwrap();
        assert!(lines[0].contains("nothing to do"));
    }

    #[test]
    fn managed_gives_everything_back_when_dropped() {
        let host = host();
        let kernel = kernel(&host);
        {
            let managed = Managed::bind(
                Binder::new(host.root(), &kernel),
                &["0000:01:00.0".into(), "0000:02:00.0".into()],
                false,
            )
            .unwrap();
            assert_eq!(managed.moved().len(), 2);
            assert_eq!(on(&host, "0000:02:00.0").as_deref(), Some("vfio-pci"));
        }
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("amdgpu"));
        assert_eq!(on(&host, "0000:02:00.0"), None);
        let managed = Managed::bind(
            Binder::new(host.root(), &kernel),
            &["0000:01:00.0".into()],
            false,
        )
        .unwrap();
        assert!(managed.release().is_empty());
        assert_eq!(on(&host, "0000:01:00.0").as_deref(), Some("amdgpu"));
    }
}
