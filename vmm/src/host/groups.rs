//! `minivmm iommu-groups`: every IOMMU group and its devices, the listing people write
//! shell loops over /sys/kernel/iommu_groups for.

use serde_json::json;

use super::pci::{group_members, PciInfo, PciNames, NO_NAMES_HINT};
use super::HostRoot;

/// One IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Its number (`/dev/vfio/N`).
    pub number: u32,
    /// Its PCI functions, sorted by address.
    pub devices: Vec<PciInfo>,
}

/// Every group under the root, in numeric order. Empty when the IOMMU is off.
pub fn list(root: &HostRoot) -> Vec<Group> {
    let sys = root.sys();
    let mut numbers: Vec<u32> = std::fs::read_dir(sys.join("kernel/iommu_groups"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    numbers.sort_unstable();
    numbers
        .into_iter()
        .map(|number| Group {
            number,
            devices: group_members(&sys, number)
                .iter()
                .filter_map(|bdf| PciInfo::read(root, bdf))
                .collect(),
        })
        .collect()
}

/// The listing for people: a line per group, a line per device under it.
pub fn text(groups: &[Group], names: &PciNames) -> String {
    let mut out = String::new();
    for group in groups {
        let viable = viability(group);
        out.push_str(&format!("IOMMU group {}{viable}\n", group.number));
        for device in &group.devices {
            out.push_str(&format!(
                "  {}  {}  driver: {}\n",
                device.bdf,
                device.describe(names),
                device.driver.as_deref().unwrap_or("none")
            ));
        }
    }
    if !names.available() {
        out.push_str(NO_NAMES_HINT);
        out.push('\n');
    }
    out
}

/// " (ready for VFIO)" when every member is on a driver that lets VFIO have the group.
fn viability(group: &Group) -> &'static str {
    let ready = group.devices.iter().all(|d| {
        d.driver
            .as_deref()
            .is_none_or(|drv| super::pci::VIABLE_DRIVERS.contains(&drv))
    }) && group
        .devices
        .iter()
        .any(|d| d.driver.as_deref() == Some(super::pci::VFIO_PCI));
    if ready {
        " (ready for VFIO)"
    } else {
        ""
    }
}

/// The listing for scripts.
pub fn json(groups: &[Group], names: &PciNames) -> serde_json::Value {
    let groups: Vec<_> = groups
        .iter()
        .map(|g| {
            let devices: Vec<_> = g.devices.iter().map(|d| device_json(d, names)).collect();
            json!({ "group": g.number, "devices": devices })
        })
        .collect();
    json!({ "groups": groups })
}

/// One device, as the JSON of `iommu-groups` and `doctor` show it.
pub fn device_json(d: &PciInfo, names: &PciNames) -> serde_json::Value {
    json!({
        "address": d.bdf,
        "vendor_id": format!("{:04x}", d.vendor),
        "device_id": format!("{:04x}", d.device),
        "class": format!("{:06x}", d.class),
        "vendor": d.vendor_name(names),
        "device": d.device_name(names),
        "class_name": d.class_name(names),
        "driver": d.driver,
        "iommu_group": d.group,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeHost, FakePci};
    use super::*;

    fn host() -> FakeHost {
        let host = FakeHost::new();
        host.file("usr/share/misc/pci.ids", crate::host::pci::tests::PCI_IDS);
        let pci = |bdf, ids, class, group, driver| FakePci {
            bdf,
            ids,
            class,
            group: Some(group),
            driver,
        };
        host.pci(pci("0000:00:00.0", (0x8086, 0x29c0), 0x060000, 0, None))
            .pci(pci(
                "0000:01:00.0",
                (0x1002, 0x6660),
                0x038000,
                10,
                Some("vfio-pci"),
            ))
            .pci(pci(
                "0000:01:00.1",
                (0x1002, 0xaab0),
                0x040300,
                10,
                Some("snd_hda_intel"),
            ))
            .pci(pci(
                "0000:00:02.0",
                (0x1234, 0x11e8),
                0x00ff00,
                2,
                Some("vfio-pci"),
            ));
        host
    }

    #[test]
    fn groups_are_listed_in_numeric_order_with_their_devices() {
        let host = host();
        let groups = list(&host.root());
        let numbers: Vec<u32> = groups.iter().map(|g| g.number).collect();
        assert_eq!(numbers, [0, 2, 10]);
        let ten: Vec<&str> = groups[2].devices.iter().map(|d| d.bdf.as_str()).collect();
        assert_eq!(ten, ["0000:01:00.0", "0000:01:00.1"]);
    }

    #[test]
    fn the_text_names_devices_drivers_and_ready_groups() {
        let host = host();
        let text = text(&list(&host.root()), &PciNames::load(&host.root()));
        assert!(text.contains("IOMMU group 2 (ready for VFIO)\n"), "{text}");
        assert!(
            text.contains("IOMMU group 10\n"),
            "snd_hda_intel holds it: {text}"
        );
        assert!(
            text.contains("IOMMU group 0\n"),
            "nothing on vfio-pci: {text}"
        );
        let gpu = text.lines().find(|l| l.contains("0000:01:00.0")).unwrap();
        assert!(gpu.contains("Display controller [0380]"), "{gpu}");
        assert!(gpu.contains("[1002:6660]"), "{gpu}");
        assert!(gpu.ends_with("driver: vfio-pci"), "{gpu}");
        assert!(text.contains("driver: snd_hda_intel"));
        assert!(!text.contains("apt-get install pci.ids"));
        let bare = super::text(&list(&host.root()), &PciNames::none());
        assert!(bare.contains("Class [0380]: Device [1002:6660]"), "{bare}");
        assert!(bare.ends_with(&format!("{NO_NAMES_HINT}\n")), "{bare}");
    }

    #[test]
    fn json_carries_ids_names_and_drivers() {
        let host = host();
        let value = json(&list(&host.root()), &PciNames::load(&host.root()));
        let gpu = &value["groups"][2]["devices"][0];
        assert_eq!(gpu["address"], "0000:01:00.0");
        assert_eq!(gpu["vendor_id"], "1002");
        assert_eq!(gpu["class"], "038000");
        assert_eq!(gpu["driver"], "vfio-pci");
        assert_eq!(gpu["iommu_group"], 10);
        assert!(gpu["vendor"].as_str().unwrap().contains("AMD"));
    }

    #[test]
    fn no_groups_when_the_iommu_is_off() {
        let host = FakeHost::new();
        assert!(list(&host.root()).is_empty());
    }
}
