//! The host side of `--gpu`: which device the user named, and whether VFIO can have it.
//!
//! Everything here reads sysfs through a root directory, so the checks are tested against
//! fake trees. The checks run before any VFIO file is opened, so a failure leaves nothing
//! held and says which device is in the way and what to do about it.

use std::path::{Path, PathBuf};

use crate::host::pci::{blocking_members, driver, link_name};

/// A device named with `--gpu`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSpec {
    /// A PCI function, by its full address `DDDD:BB:DD.F`.
    Pci(String),
    /// A mediated device, by its sysfs path.
    Mdev(PathBuf),
}

impl std::str::FromStr for GpuSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            let uuid = Path::new(text).file_name().and_then(|n| n.to_str());
            return match uuid {
                Some(uuid) if is_uuid(uuid) => Ok(GpuSpec::Mdev(text.into())),
                _ => Err(format!(
                    "'{text}' is not a mediated device path; use /sys/bus/mdev/devices/UUID"
                )),
            };
        }
        parse_bdf(text)
            .map(GpuSpec::Pci)
            .ok_or_else(|| format!("'{text}' is not a PCI address; use 0000:01:00.0 or 01:00.0"))
    }
}

impl std::fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuSpec::Pci(bdf) => f.write_str(bdf),
            GpuSpec::Mdev(path) => write!(f, "{}", path.display()),
        }
    }
}

/// `DDDD:BB:DD.F` or `BB:DD.F`, hex, in the kernel's lower-case form.
fn parse_bdf(text: &str) -> Option<String> {
    let text = text.to_ascii_lowercase();
    let full = if text.len() == 7 {
        format!("0000:{text}")
    } else {
        text
    };
    let (domain, rest) = full.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
    let ok = hex(domain, 4)
        && hex(bus, 2)
        && hex(device, 2)
        && u8::from_str_radix(device, 16).is_ok_and(|d| d < 32)
        && function.len() == 1
        && function.chars().all(|c| ('0'..='7').contains(&c));
    ok.then_some(full)
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Why a device cannot be passed through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No such PCI function.
    #[error("there is no PCI device {0}: check the address with lspci -D")]
    NoDevice(String),
    /// No such mediated device.
    #[error(
        "there is no mediated device {0}: create it through its parent's mdev_supported_types"
    )]
    NoMdev(String),
    /// The IOMMU is off (or the device is outside it).
    #[error("{0} has no IOMMU group: turn the IOMMU on (intel_iommu=on or amd_iommu=on on the kernel command line, VT-d/AMD-Vi in the firmware)")]
    NoIommuGroup(String),
    /// The device itself is not on vfio-pci.
    #[error("{0} is bound to {1}, not vfio-pci: minivmm bind {0} moves it (or run with --managed, which gives it back afterwards)")]
    NotVfio(String, String),
    /// The device has no driver.
    #[error("{0} has no driver: minivmm bind {0} puts it on vfio-pci (or run with --managed)")]
    Unbound(String),
    /// Another member of the group is on a host driver.
    #[error("IOMMU group {group} is not viable: {member} (in the same group as {device}) is bound to {driver}; move it to vfio-pci too (minivmm bind --group {device}, or --managed=group), or unbind it")]
    NotViable {
        /// The group.
        group: u32,
        /// The device asked for.
        device: String,
        /// The member in the way.
        member: String,
        /// Its driver.
        driver: String,
    },
    /// The two addresses resolve to the same device.
    #[error("{0} is given twice with --gpu")]
    Duplicate(String),
}

/// A device VFIO can open: its sysfs path and IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// What the user named.
    pub spec: GpuSpec,
    /// Its sysfs directory (what VFIO is given).
    pub sysfs: PathBuf,
    /// Its IOMMU group number (`/dev/vfio/N`).
    pub group: u32,
}

impl HostDevice {
    /// The PCI address when this is a PCI function.
    pub fn bdf(&self) -> Option<&str> {
        match &self.spec {
            GpuSpec::Pci(bdf) => Some(bdf),
            GpuSpec::Mdev(_) => None,
        }
    }
}

/// Find `spec` under the sysfs tree at `sys` and check that VFIO can open it: the device
/// exists, is in an IOMMU group, is bound to vfio-pci, and every other member of its group
/// is on a driver that keeps the group viable (or on none).
pub fn check(sys: &Path, spec: &GpuSpec) -> Result<HostDevice, Error> {
    let (name, sysfs) = match spec {
        GpuSpec::Pci(bdf) => (bdf.clone(), sys.join("bus/pci/devices").join(bdf)),
        GpuSpec::Mdev(path) => {
            let uuid = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let uuid = uuid.unwrap_or_default();
            (uuid.clone(), sys.join("bus/mdev/devices").join(&uuid))
        }
    };
    if !sysfs.exists() {
        return Err(match spec {
            GpuSpec::Pci(_) => Error::NoDevice(name),
            GpuSpec::Mdev(path) => Error::NoMdev(path.display().to_string()),
        });
    }
    let group = link_name(&sysfs.join("iommu_group"))
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| Error::NoIommuGroup(name.clone()))?;
    let device = HostDevice {
        spec: spec.clone(),
        sysfs,
        group,
    };
    // A mediated device's group is its own, made by its parent driver.
    if matches!(spec, GpuSpec::Mdev(_)) {
        return Ok(device);
    }
    match driver(&device.sysfs) {
        Some(driver) if driver == "vfio-pci" => {}
        Some(driver) => return Err(Error::NotVfio(name, driver)),
        None => return Err(Error::Unbound(name)),
    }
    if let Some((member, driver)) = blocking_members(sys, group, &name).into_iter().next() {
        return Err(Error::NotViable {
            group,
            device: name,
            member,
            driver,
        });
    }
    Ok(device)
}

/// Check every `--gpu`, refusing the same device twice.
pub fn check_all(sys: &Path, specs: &[GpuSpec]) -> Result<Vec<HostDevice>, Error> {
    let mut devices: Vec<HostDevice> = Vec::new();
    for spec in specs {
        let device = check(sys, spec)?;
        if devices.iter().any(|d| d.sysfs == device.sysfs) {
            return Err(Error::Duplicate(spec.to_string()));
        }
        devices.push(device);
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, FakePci};

    /// A fake host with PCI devices: (address, group, driver); `check` gets its `sys/`.
    fn fake_sys(devices: &[(&str, u32, Option<&str>)]) -> FakeSys {
        let host = FakeHost::new();
        for &(bdf, group, driver) in devices {
            host.pci(FakePci {
                bdf,
                ids: (0x1234, 0x11e8),
                class: 0x00ff00,
                group: Some(group),
                driver,
            });
        }
        FakeSys(host)
    }

    struct FakeSys(FakeHost);

    impl FakeSys {
        fn path(&self) -> std::path::PathBuf {
            self.0.root().sys()
        }
    }

    fn pci(bdf: &str) -> GpuSpec {
        bdf.parse().unwrap()
    }

    #[test]
    fn addresses_parse_long_and_short() {
        assert_eq!(pci("01:00.0"), GpuSpec::Pci("0000:01:00.0".into()));
        assert_eq!(pci("0000:0A:1f.7"), GpuSpec::Pci("0000:0a:1f.7".into()));
        for bad in [
            "1:0.0",
            "01:20.0",
            "01:00.8",
            "0000:01:00",
            "gpu",
            "00:00.0.0",
            "",
        ] {
            assert!(bad.parse::<GpuSpec>().is_err(), "{bad}");
        }
        let mdev = "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
        assert_eq!(mdev.parse(), Ok(GpuSpec::Mdev(mdev.into())));
        assert!("/sys/bus/mdev/devices/nope".parse::<GpuSpec>().is_err());
    }

    #[test]
    fn a_device_on_vfio_pci_alone_in_its_group_is_ready() {
        let sys = fake_sys(&[("0000:00:03.0", 5, Some("vfio-pci"))]);
        let device = check(&sys.path(), &pci("00:03.0")).unwrap();
        assert_eq!(device.group, 5);
        assert_eq!(device.bdf(), Some("0000:00:03.0"));
    }

    #[test]
    fn each_reason_to_refuse_names_the_fix() {
        let sys = fake_sys(&[
            ("0000:00:02.0", 3, Some("bochs-drm")),
            ("0000:00:03.0", 4, None),
            ("0000:00:04.0", 6, Some("vfio-pci")),
            ("0000:00:04.1", 6, Some("snd_hda_intel")),
            ("0000:00:05.0", 7, Some("vfio-pci")),
            ("0000:00:05.1", 7, None),
            ("0000:00:05.2", 7, Some("pcieport")),
        ]);
        let err = |bdf| check(&sys.path(), &pci(bdf)).unwrap_err();
        assert_eq!(err("00:09.0"), Error::NoDevice("0000:00:09.0".into()));
        assert!(err("00:09.0").to_string().contains("lspci"));
        assert_eq!(
            err("00:02.0"),
            Error::NotVfio("0000:00:02.0".into(), "bochs-drm".into())
        );
        assert!(err("00:02.0")
            .to_string()
            .contains("minivmm bind 0000:00:02.0"));
        assert_eq!(err("00:03.0"), Error::Unbound("0000:00:03.0".into()));
        let not_viable = err("00:04.0");
        assert!(matches!(not_viable, Error::NotViable { group: 6, .. }));
        assert!(not_viable.to_string().contains("0000:00:04.1"));
        assert!(not_viable.to_string().contains("snd_hda_intel"));
        // Unbound members and PCIe ports keep a group viable.
        assert!(check(&sys.path(), &pci("00:05.0")).is_ok());
    }

    #[test]
    fn no_iommu_group_means_the_iommu_is_off() {
        let sys = fake_sys(&[("0000:00:03.0", 4, Some("vfio-pci"))]);
        std::fs::remove_file(
            sys.path()
                .join("devices/pci0000:00/0000:00:03.0/iommu_group"),
        )
        .unwrap();
        let e = check(&sys.path(), &pci("00:03.0")).unwrap_err();
        assert_eq!(e, Error::NoIommuGroup("0000:00:03.0".into()));
        assert!(e.to_string().contains("intel_iommu=on"));
    }

    #[test]
    fn the_same_device_twice_is_refused() {
        let sys = fake_sys(&[("0000:00:03.0", 4, Some("vfio-pci"))]);
        let specs = [pci("00:03.0"), pci("0000:00:03.0")];
        assert_eq!(
            check_all(&sys.path(), &specs).unwrap_err(),
            Error::Duplicate("0000:00:03.0".into())
        );
    }
}
