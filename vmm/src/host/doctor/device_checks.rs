//! A device's items: its IOMMU group and the other members, its driver, the group's
//! viability, `/dev/vfio/N` access, reset, its BARs against the guest's address space, a
//! reachable VBIOS (display controllers), and whether it is the host's boot display.

use minivmm_devices::pci::bar::{Bar, BarKind};
use minivmm_devices::pci::resources::{self, human, FunctionNeeds, SlotNeeds};
use minivmm_firmware::acpi::vfct;
use minivmm_firmware::layout::GuestLayout;
use minivmm_firmware::option_rom;

use super::host_checks::{node_access, with_fix};
use super::{Check, Host, Status};
use crate::host::pci::{blocking_members, driver, group_members, PciInfo, RomReadError, VFIO_PCI};
use crate::host::reset::{self, ResetPlan};
use crate::host::resources::host_bars;
use crate::host::vbios_source::{self, AutoRom};
use crate::passthrough::root_windows;

fn device_check(info: &PciInfo, item: &'static str, status: Status, detail: String) -> Check {
    Check {
        scope: info.bdf.clone(),
        item,
        status,
        detail,
        fix: None,
    }
}

pub(super) fn check_device(host: &Host, info: &PciInfo) -> Vec<Check> {
    let mut checks = vec![check_group(host, info), check_driver(info)];
    if let Some(group) = info.group {
        checks.push(check_viable(host, info, group));
        checks.push(check_group_node(host, info, group));
    }
    checks.push(check_reset(host, info));
    checks.push(check_bars(host, info));
    checks.push(check_vbios(host, info));
    if info.class >> 8 == 0x0300 {
        checks.push(check_vga(host, info));
    }
    if host
        .root
        .read(&format!("sys/bus/pci/devices/{}/boot_vga", info.bdf))
        .is_some_and(|v| v == "1")
    {
        checks.push(device_check(
            info,
            "boot display",
            Status::Warn,
            "this is the host's boot display: on vfio-pci, the host loses its console on it".into(),
        ));
    }
    checks
}

fn check_group(host: &Host, info: &PciInfo) -> Check {
    let Some(group) = info.group else {
        return with_fix(
            device_check(
                info,
                "iommu-group",
                Status::Fail,
                "none: the IOMMU does not cover it".into(),
            ),
            "turn the IOMMU on (see the host's iommu item)",
        );
    };
    let others: Vec<String> = group_members(&host.root.sys(), group)
        .into_iter()
        .filter(|m| *m != info.bdf)
        .map(|m| {
            let on = driver(&host.root.pci_device(&m)).unwrap_or_else(|| "no driver".into());
            format!("{m} ({on})")
        })
        .collect();
    let detail = if others.is_empty() {
        format!("group {group}, alone in it")
    } else {
        format!("group {group}, with {}", others.join(", "))
    };
    device_check(info, "iommu-group", Status::Ok, detail)
}

fn check_driver(info: &PciInfo) -> Check {
    let bdf = &info.bdf;
    match info.driver.as_deref() {
        Some(VFIO_PCI) => device_check(info, "driver", Status::Ok, "vfio-pci".into()),
        other => with_fix(
            device_check(
                info,
                "driver",
                Status::Fail,
                format!("{}, not vfio-pci", other.unwrap_or("no driver")),
            ),
            format!("minivmm bind {bdf} (or run with --managed, which gives it back afterwards)"),
        ),
    }
}

fn check_viable(host: &Host, info: &PciInfo, group: u32) -> Check {
    let blocking: Vec<String> = blocking_members(&host.root.sys(), group, &info.bdf)
        .into_iter()
        .map(|(member, on)| format!("{member} is on {on}"))
        .collect();
    if blocking.is_empty() {
        return device_check(
            info,
            "group viable",
            Status::Ok,
            "no other member is on a host driver".into(),
        );
    }
    with_fix(
        device_check(info, "group viable", Status::Fail, blocking.join("; ")),
        format!(
            "minivmm bind --group {} (or --managed=group); or pass those functions through too with more --gpu",
            info.bdf
        ),
    )
}

fn check_group_node(host: &Host, info: &PciInfo, group: u32) -> Check {
    let node = host.root.path(&format!("dev/vfio/{group}"));
    let name = format!("/dev/vfio/{group}");
    if info.driver.as_deref() != Some(VFIO_PCI) {
        return device_check(
            info,
            "group node",
            Status::Skip,
            format!("{name} appears once the device is on vfio-pci"),
        );
    }
    match node_access(host, &node) {
        Ok(()) => device_check(info, "group node", Status::Ok, format!("{name} is accessible")),
        Err(why) if why == "missing" => with_fix(
            device_check(info, "group node", Status::Fail, format!("{name} is missing")),
            "reload vfio-pci (modprobe -r vfio-pci; modprobe vfio-pci)",
        ),
        Err(why) => with_fix(
            device_check(info, "group node", Status::Fail, format!("{name}: {why}")),
            format!(
                "run as root, or give your user the node: chown $USER {name} (a udev rule SUBSYSTEM==\"vfio\", OWNER=\"$USER\" makes it last)"
            ),
        ),
    }
}

fn check_reset(host: &Host, info: &PciInfo) -> Check {
    let plan = reset::plan(host.root, &info.bdf);
    let detail = plan.describe();
    match &plan {
        ResetPlan::Function(_) => device_check(info, "reset", Status::Ok, detail),
        ResetPlan::Bus { affected, .. } => {
            // VFIO resets the bus only for a process that holds every function on it.
            let outside: Vec<&String> = affected
                .iter()
                .filter(|other| {
                    **other != info.bdf
                        && PciInfo::read(host.root, other).and_then(|o| o.group) != info.group
                })
                .collect();
            if outside.is_empty() {
                device_check(info, "reset", Status::Ok, detail)
            } else {
                let list: Vec<&str> = outside.iter().map(|s| s.as_str()).collect();
                with_fix(
                    device_check(info, "reset", Status::Warn, detail),
                    format!(
                        "pass {} with --gpu too: a bus reset needs minivmm to hold every function on the bus",
                        list.join(", ")
                    ),
                )
            }
        }
        ResetPlan::None(_) => device_check(
            info,
            "reset",
            Status::Warn,
            format!("{detail}; it keeps its state from one run to the next"),
        ),
    }
}

fn check_vbios(host: &Host, info: &PciInfo) -> Check {
    if !info.is_display() {
        return device_check(
            info,
            "vbios",
            Status::Skip,
            "not a display controller".into(),
        );
    }
    // Enabling the ROM under a running guest would change its device behind its back.
    let held = info.group.is_some_and(|g| {
        info.driver.as_deref() == Some(VFIO_PCI)
            && (host.probes.in_use)(&host.root.path(&format!("dev/vfio/{g}")))
    });
    if held {
        return device_check(
            info,
            "vbios",
            Status::Skip,
            "not read: a VM has the device now".into(),
        );
    }
    let rom = rom_bar_image(host, info);
    if let Ok(size) = &rom {
        return device_check(
            info,
            "vbios",
            Status::Ok,
            format!(
                "the ROM BAR holds a valid image for {} ({} KiB)",
                info.ids(),
                size >> 10
            ),
        );
    }
    let why = rom.err().unwrap_or_default();
    let bdf = &info.bdf;
    let warn = |detail: String, fix: String| {
        with_fix(device_check(info, "vbios", Status::Warn, detail), fix)
    };
    let extract = format!("minivmm rom extract --device {bdf} -o vbios.rom");
    let serve = format!("--gpu {bdf},rom=vbios.rom");
    let sys = host.root.sys();
    // What `--gpu BDF` (rom=auto) will find, as minivmm looks for it when it starts.
    let lookup = vbios_source::AutoLookup::unopened(info, false);
    if let AutoRom::Found(image, source) = vbios_source::find_auto(&sys, &lookup) {
        return device_check(
            info,
            "vbios",
            Status::Ok,
            format!(
                "ready: ROM BAR: {why}; --gpu {bdf} serves the image from {source} ({} KiB), found by itself (rom=auto)",
                image.len() >> 10
            ),
        );
    }
    if let Some(size) = vfct_image(host, info) {
        return warn(
            format!(
                "ROM BAR: {why}; the host's ACPI VFCT table has an image ({} KiB), but not one rom=auto takes for this device (another address or other IDs)",
                size >> 10
            ),
            format!("{extract}, check it is this device's, then {serve}"),
        );
    }
    let atrm = vbios_source::acpi_tables_with_atrm(&sys);
    if !atrm.is_empty() {
        return warn(
            format!(
                "ROM BAR: {why}; no VFCT image for it; the host's ACPI has an ATRM method ({}), where laptops keep a dGPU's VBIOS, and only a driver can call it",
                atrm.join(", ")
            ),
            format!("bind amdgpu to {bdf} on the host with debugfs mounted, then {extract}, then {serve}"),
        );
    }
    warn(
        format!("no usable VBIOS: ROM BAR: {why}; no VFCT image or ATRM method for it; the guest driver may report \"Unable to locate a BIOS ROM\""),
        format!("get the image (vendor tools such as amdvbflash or nvflash, or the GPU maker's firmware) and pass --gpu {bdf},rom=FILE"),
    )
}

/// Whether `vga=on` can route the legacy VGA ranges to this VGA-compatible device:
/// vfio-pci has the `disable_vga` parameter only when built with VGA support.
fn check_vga(host: &Host, info: &PciInfo) -> Check {
    let (status, detail) =
        match host.root.read("sys/module/vfio_pci/parameters/disable_vga").as_deref() {
            Some("N") => (
                Status::Ok,
                "vga=on can give it the legacy VGA ranges (vfio-pci has VGA support)".to_string(),
            ),
            Some(_) => (
                Status::Skip,
                "vga=on is not possible: vfio-pci is loaded with disable_vga=1 (load it with disable_vga=0 for vga=on)".to_string(),
            ),
            None => (
                Status::Skip,
                "vga=on is not possible: vfio-pci has no VGA support here (CONFIG_VFIO_PCI_VGA), or is not loaded".to_string(),
            ),
        };
    device_check(info, "vga", status, detail)
}

/// The size of a valid image for this device in its ROM BAR, or why there is none.
fn rom_bar_image(host: &Host, info: &PciInfo) -> Result<usize, String> {
    let bytes = (host.probes.rom)(&host.root.pci_device(&info.bdf)).map_err(|e| match e {
        RomReadError::Missing => "none".to_string(),
        RomReadError::Enable(_) => "cannot enable it (run as root to check)".to_string(),
        RomReadError::Read(_) => "unreadable (no ROM behind the BAR)".to_string(),
    })?;
    valid_for(&bytes, info)
}

/// The size of `bytes` if they are a valid image for this device, or why they are not.
fn valid_for(bytes: &[u8], info: &PciInfo) -> Result<usize, String> {
    let rom = option_rom::parse(bytes).map_err(|e| format!("not a valid image ({e})"))?;
    match rom.ids() {
        Some((v, d)) if (v, d) != (info.vendor, info.device) => {
            Err(format!("an image for {v:04x}:{d:04x}, not this device"))
        }
        _ => Ok(bytes.len()),
    }
}

/// The size of the host VFCT table's image for this device, if it has one.
fn vfct_image(host: &Host, info: &PciInfo) -> Option<usize> {
    let table = std::fs::read(host.root.path("sys/firmware/acpi/tables/VFCT")).ok()?;
    let images = vfct::images(&table);
    let at_address = |image: &&vfct::FoundImage| {
        let (bus, dev, func) = image.bdf;
        info.bdf.ends_with(&format!("{bus:02x}:{dev:02x}.{func:x}"))
    };
    images
        .iter()
        .find(at_address)
        .or_else(|| images.iter().find(|i| i.ids == (info.vendor, info.device)))
        .map(|image| image.rom.len())
}

/// "BAR 0, 256 MiB 64-bit prefetchable".
fn describe_bar(bar: &Bar) -> String {
    let kind = match (bar.kind, bar.prefetchable) {
        (BarKind::Io, _) => "I/O ports",
        (BarKind::Mem64, true) => "64-bit prefetchable",
        (BarKind::Mem64, false) => "64-bit",
        (BarKind::Mem32, true) => "32-bit prefetchable",
        (BarKind::Mem32, false) => "32-bit",
    };
    format!("BAR {}, {} {kind}", bar.index, human(bar.size))
}

/// The device's largest BAR, and whether its BARs fit a guest of `--memory` behind a root
/// port, below the host's physical address width (what `--gpu` would place).
fn check_bars(host: &Host, info: &PciInfo) -> Check {
    let Some((bars, rom)) = host_bars(&host.root.pci_device(&info.bdf)) else {
        return device_check(info, "BARs", Status::Skip, "sysfs lists none".into());
    };
    let Some(largest) = bars.iter().max_by_key(|b| b.size) else {
        return device_check(info, "BARs", Status::Ok, "none".into());
    };
    let found = format!("largest {}", describe_bar(largest));
    let Some(bits) = host.address_bits else {
        return device_check(
            info,
            "BARs",
            Status::Warn,
            format!("{found}; fit not checked: the address width is unknown"),
        );
    };
    let mib = host.memory >> 20;
    let layout = match GuestLayout::new(host.memory, bits) {
        Ok(layout) => layout,
        Err(e) => {
            return with_fix(
                device_check(
                    info,
                    "BARs",
                    Status::Fail,
                    format!("{found}; guest RAM: {e}"),
                ),
                "use less --memory",
            )
        }
    };
    let slot = SlotNeeds {
        name: info.bdf.clone(),
        behind_port: true,
        functions: vec![FunctionNeeds { bars, rom }],
    };
    match resources::assign(&[slot], &root_windows(&layout)) {
        Ok(_) => device_check(
            info,
            "BARs",
            Status::Ok,
            format!("{found}; all fit a {mib} MiB guest below the {bits}-bit address limit"),
        ),
        Err(e) => with_fix(
            device_check(info, "BARs", Status::Fail, e.to_string()),
            format!("use less than --memory {mib}M, or a host with a wider physical address space"),
        ),
    }
}
