//! A host PCI function as sysfs shows it, with the names the host's PCI ID database (the
//! pci.ids file lspci reads) gives its vendor, device and class.

use std::path::Path;

use pciid_parser::Database;

use super::{read_trimmed, HostRoot};

/// Where distributions keep pci.ids (Debian's `pci.ids` package: the second), under the root.
const PCI_IDS_PATHS: [&str; 2] = ["usr/share/hwdata/pci.ids", "usr/share/misc/pci.ids"];

/// Vendor, device and class names, when the host has the database.
#[derive(Debug)]
pub struct PciNames(Option<Database>);

impl PciNames {
    /// The host's database, or none (then everything is shown by number).
    pub fn load(root: &HostRoot) -> PciNames {
        let db = PCI_IDS_PATHS
            .iter()
            .map(|p| root.path(p))
            .filter(|p| p.exists())
            .find_map(|p| Database::read_from_file(p).ok());
        PciNames(db)
    }

    /// No names at all.
    pub fn none() -> PciNames {
        PciNames(None)
    }

    /// False when the host has no pci.ids: output says how to get it.
    pub fn available(&self) -> bool {
        self.0.is_some()
    }

    fn vendor(&self, vendor: u16) -> Option<&str> {
        Some(self.0.as_ref()?.vendors.get(&vendor)?.name.as_str())
    }

    fn device(&self, vendor: u16, device: u16) -> Option<&str> {
        let vendor = self.0.as_ref()?.vendors.get(&vendor)?;
        Some(vendor.devices.get(&device)?.name.as_str())
    }

    /// The subclass's name when known, else the class's.
    fn class(&self, class: u32) -> Option<&str> {
        let (base, sub) = ((class >> 16) as u8, (class >> 8) as u8);
        let class = self.0.as_ref()?.classes.get(&base)?;
        Some(
            class
                .subclasses
                .get(&sub)
                .map_or(class.name.as_str(), |s| s.name.as_str()),
        )
    }
}

/// The line that tells a user without pci.ids where names come from.
pub const NO_NAMES_HINT: &str =
    "(no PCI ID database for names: apt-get install pci.ids, or your distribution's hwdata)";

/// Host drivers that leave an IOMMU group viable for VFIO (the kernel's own list: the
/// VFIO drivers, pci-stub, and PCIe port services).
pub const VIABLE_DRIVERS: [&str; 3] = ["vfio-pci", "pci-stub", "pcieport"];

/// The driver VFIO passthrough needs.
pub const VFIO_PCI: &str = "vfio-pci";

/// One PCI function of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciInfo {
    /// `DDDD:BB:DD.F`.
    pub bdf: String,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code: class, subclass, programming interface.
    pub class: u32,
    /// The driver bound now.
    pub driver: Option<String>,
    /// The IOMMU group, when the IOMMU covers the device.
    pub group: Option<u32>,
}

impl PciInfo {
    /// Read `bdf` from sysfs; `None` when there is no such function.
    pub fn read(root: &HostRoot, bdf: &str) -> Option<PciInfo> {
        let dir = root.pci_device(bdf);
        let hex = |name: &str| {
            read_trimmed(&dir.join(name))
                .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        };
        Some(PciInfo {
            bdf: bdf.to_string(),
            vendor: hex("vendor")? as u16,
            device: hex("device")? as u16,
            class: hex("class").unwrap_or(0),
            driver: driver(&dir),
            group: link_name(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
        })
    }

    /// True for class 03 (VGA, XGA, 3D and other display controllers: the GPUs).
    pub fn is_display(&self) -> bool {
        self.class >> 16 == 0x03
    }

    /// `vvvv:dddd`.
    pub fn ids(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    /// The vendor's name, if the database knows it.
    pub fn vendor_name<'a>(&self, names: &'a PciNames) -> Option<&'a str> {
        names.vendor(self.vendor)
    }

    /// The device's name, if the database knows it.
    pub fn device_name<'a>(&self, names: &'a PciNames) -> Option<&'a str> {
        names.device(self.vendor, self.device)
    }

    /// The class's name (the subclass's when known), or `Class` as lspci says.
    pub fn class_name(&self, names: &PciNames) -> String {
        names.class(self.class).unwrap_or("Class").to_string()
    }

    /// `lspci -nn` style: `Display controller [0380]: Vendor Device [1002:6660]`, with
    /// `Device` for a name the database lacks.
    pub fn describe(&self, names: &PciNames) -> String {
        let ids = match (self.vendor_name(names), self.device_name(names)) {
            (Some(v), Some(d)) => format!("{v} {d}"),
            (Some(v), None) => format!("{v} Device"),
            (None, _) => "Device".to_string(),
        };
        format!(
            "{} [{:04x}]: {ids} [{}]",
            self.class_name(names),
            self.class >> 8,
            self.ids()
        )
    }
}

/// Why a ROM could not be read through sysfs.
#[derive(Debug)]
pub enum RomReadError {
    /// The device has no `rom` file: no ROM BAR.
    Missing,
    /// Writing 1 to enable it failed (not root).
    Enable(std::io::Error),
    /// Enabled, but nothing came back (no ROM behind the BAR, or a broken one).
    Read(std::io::Error),
}

/// A function's ROM through its sysfs `rom` file (`dir/rom`): enabled for the read and
/// disabled again whatever happens.
pub fn read_rom(dir: &Path) -> Result<Vec<u8>, RomReadError> {
    let file = dir.join("rom");
    if !file.exists() {
        return Err(RomReadError::Missing);
    }
    std::fs::write(&file, "1").map_err(RomReadError::Enable)?;
    let bytes = std::fs::read(&file);
    let _ = std::fs::write(&file, "0");
    match bytes {
        Ok(bytes) if bytes.is_empty() => Err(RomReadError::Read(std::io::Error::other(
            "the ROM is empty",
        ))),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(RomReadError::Read(e)),
    }
}

/// The devices in IOMMU group `group`, sorted.
pub fn group_members(sys: &Path, group: u32) -> Vec<String> {
    super::list_names(
        &sys.join("kernel/iommu_groups")
            .join(group.to_string())
            .join("devices"),
    )
}

/// The other members of `bdf`'s group `group` that sit on a driver VFIO does not accept,
/// with that driver: what keeps the group from being viable.
pub fn blocking_members(sys: &Path, group: u32, bdf: &str) -> Vec<(String, String)> {
    group_members(sys, group)
        .into_iter()
        .filter(|member| member != bdf)
        .filter_map(|member| {
            let on = driver(&sys.join("bus/pci/devices").join(&member))?;
            (!VIABLE_DRIVERS.contains(&on.as_str())).then_some((member, on))
        })
        .collect()
}

/// The driver a device (its sysfs directory) is bound to, if any.
pub fn driver(device: &Path) -> Option<String> {
    link_name(&device.join("driver"))
}

/// The last component of a symbolic link's target.
pub fn link_name(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::fake::{FakeHost, FakePci};
    use super::*;

    /// A few lines of the real database's format.
    pub(crate) const PCI_IDS: &str = "\
# comment
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t6660  Sun XT [Radeon HD 8670A/8670M/8690M / R5 M330 / M430 / Radeon 520 Mobile]
\taab0  Cape Verde/Pitcairn HDMI Audio [Radeon HD 7700/7800 Series]
8086  Intel Corporation
\t29c0  82G33/G31/P35/P31 Express DRAM Controller
C 03  Display controller
\t00  VGA compatible controller
\t80  Display controller
C 04  Multimedia controller
\t03  Audio device
C 06  Bridge
\t00  Host bridge
";

    #[test]
    fn a_function_reads_back_with_its_names() {
        let host = FakeHost::new();
        host.file("usr/share/misc/pci.ids", PCI_IDS);
        host.pci(FakePci {
            bdf: "0000:01:00.0",
            ids: (0x1002, 0x6660),
            class: 0x038000,
            group: Some(12),
            driver: Some("radeon"),
        });
        let names = PciNames::load(&host.root());
        assert!(names.available());
        let info = PciInfo::read(&host.root(), "0000:01:00.0").unwrap();
        assert_eq!(
            (info.vendor, info.device, info.class),
            (0x1002, 0x6660, 0x038000)
        );
        assert_eq!(info.driver.as_deref(), Some("radeon"));
        assert_eq!(info.group, Some(12));
        assert!(info.is_display());
        assert_eq!(info.class_name(&names), "Display controller");
        assert_eq!(
            info.describe(&names),
            "Display controller [0380]: Advanced Micro Devices, Inc. [AMD/ATI] Sun XT [Radeon HD 8670A/8670M/8690M / R5 M330 / M430 / Radeon 520 Mobile] [1002:6660]"
        );
        assert!(PciInfo::read(&host.root(), "0000:09:00.0").is_none());
    }

    #[test]
    fn without_the_database_everything_is_a_number() {
        let host = FakeHost::new();
        let names = PciNames::load(&host.root());
        assert!(!names.available());
        let info = PciInfo {
            bdf: "0000:00:05.0".into(),
            vendor: 0x1002,
            device: 0x6660,
            class: 0x038000,
            driver: None,
            group: None,
        };
        assert_eq!(info.describe(&names), "Class [0380]: Device [1002:6660]");
        let known = PciNames::load(&{
            host.file("usr/share/misc/pci.ids", PCI_IDS);
            host.root()
        });
        let unknown = PciInfo {
            vendor: 0x1234,
            device: 0x11e8,
            class: 0x00ff00,
            ..info
        };
        assert_eq!(unknown.describe(&known), "Class [00ff]: Device [1234:11e8]");
    }
}
