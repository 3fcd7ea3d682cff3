//! A host PCI function as sysfs shows it, with the names the PCI ID database gives its
//! vendor, device and class.

use std::path::Path;

use pci_ids::FromId as _;

use super::{read_trimmed, HostRoot};

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
    pub fn vendor_name(&self) -> Option<&'static str> {
        pci_ids::Vendor::from_id(self.vendor).map(|v| v.name())
    }

    /// The device's name, if the database knows it.
    pub fn device_name(&self) -> Option<&'static str> {
        pci_ids::Device::from_vid_pid(self.vendor, self.device).map(|d| d.name())
    }

    /// The class's name: the subclass's when known, else the class's.
    pub fn class_name(&self) -> String {
        let (class, subclass) = ((self.class >> 16) as u8, (self.class >> 8) as u8);
        pci_ids::Subclass::from_cid_sid(class, subclass)
            .map(|s| s.name().to_string())
            .or_else(|| pci_ids::Class::from_id(class).map(|c| c.name().to_string()))
            .unwrap_or_else(|| "Unknown class".to_string())
    }

    /// `lspci -nn` style: `Display controller [0380]: Vendor Device [1002:6660]`.
    pub fn describe(&self) -> String {
        let names = match (self.vendor_name(), self.device_name()) {
            (Some(v), Some(d)) => format!("{v} {d}"),
            (Some(v), None) => format!("{v} device {:04x}", self.device),
            (None, _) => format!("vendor {:04x} device {:04x}", self.vendor, self.device),
        };
        format!(
            "{} [{:04x}]: {names} [{}]",
            self.class_name(),
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
    let dir = sys
        .join("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices");
    let mut members: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
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
mod tests {
    use super::super::fake::{FakeHost, FakePci};
    use super::*;

    #[test]
    fn a_function_reads_back_with_its_names() {
        let host = FakeHost::new();
        host.pci(FakePci {
            bdf: "0000:01:00.0",
            ids: (0x1002, 0x6660),
            class: 0x038000,
            group: Some(12),
            driver: Some("radeon"),
        });
        let info = PciInfo::read(&host.root(), "0000:01:00.0").unwrap();
        assert_eq!(
            (info.vendor, info.device, info.class),
            (0x1002, 0x6660, 0x038000)
        );
        assert_eq!(info.driver.as_deref(), Some("radeon"));
        assert_eq!(info.group, Some(12));
        assert!(info.is_display());
        assert_eq!(info.class_name(), "Display controller");
        assert!(info.vendor_name().unwrap().contains("AMD"));
        let text = info.describe();
        assert!(text.starts_with("Display controller [0380]: "), "{text}");
        assert!(text.ends_with("[1002:6660]"), "{text}");
        assert!(PciInfo::read(&host.root(), "0000:09:00.0").is_none());
    }

    #[test]
    fn unknown_ids_are_described_by_number() {
        let info = PciInfo {
            bdf: "0000:00:05.0".into(),
            vendor: 0x1234,
            device: 0x0001,
            class: 0xff0000,
            driver: None,
            group: None,
        };
        assert!(info
            .describe()
            .contains("vendor 1234 device 0001 [1234:0001]"));
    }
}
