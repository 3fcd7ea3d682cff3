//! Which reset a host PCI function gets, from what sysfs shows: `doctor` names it, and the
//! VMM's passthrough logs the same name when it resets the device.
//!
//! Facts this rests on (Linux's drivers/pci and drivers/vfio/pci):
//! - A function the kernel can reset on its own has a `reset` attribute; since Linux 5.15
//!   `reset_method` lists the methods in the order the kernel tries them (`device_specific`,
//!   `acpi`, `flr`, `af_flr`, `pm`, `bus`, `cxl_bus`). VFIO reports the same as
//!   `VFIO_DEVICE_FLAGS_RESET`, and `VFIO_DEVICE_RESET` runs it.
//! - Without `reset_method` the methods follow from configuration space: FLR is PCI Express
//!   Device Capabilities bit 28, or bit 1 of the Advanced Features capability's capabilities
//!   byte; the PM reset (D3hot to D0) needs a PM capability whose PMCSR has No_Soft_Reset
//!   (bit 3) clear; a bus reset needs a bridge above the function and no other function on
//!   its bus.
//! - A function with none of those, behind a bridge with other functions (a GPU and its HDMI
//!   audio, many AMD GPUs have no FLR), can still be reset by a secondary-bus reset through
//!   `VFIO_DEVICE_PCI_HOT_RESET`, which resets every function below the bridge and so needs
//!   the VFIO group file of each.
//! - On the root bus there is no bridge to reset through.

use std::path::Path;

use minivmm_devices::pci::capability::{self, id};

use super::resources::is_pci_address;
use super::{list_names, read_trimmed, HostRoot};

/// PCI Express Device Capabilities (offset 4 in the capability): Function Level Reset.
const EXPRESS_DEVCAP_FLR: u32 = 1 << 28;
/// Advanced Features capability id, and its capabilities byte's FLR bit (offset 3).
const ADVANCED_FEATURES: u8 = 0x13;
const AF_CAP_FLR: u8 = 0x02;
/// PMCSR (offset 4 in the PM capability): No_Soft_Reset.
const PMCSR_NO_SOFT_RESET: u32 = 1 << 3;

/// How a function is reset before the guest gets it (and, with a guest reboot, again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetPlan {
    /// The kernel resets the function alone (`VFIO_DEVICE_RESET`), trying these methods in
    /// order (`reset_method`'s names).
    Function(Vec<String>),
    /// A secondary-bus reset through `bridge` (`VFIO_DEVICE_PCI_HOT_RESET`): it resets
    /// every function in `affected` (the device's own included), all of which minivmm must
    /// hold.
    Bus {
        /// The bridge above the device.
        bridge: String,
        /// Every function below the bridge.
        affected: Vec<String>,
    },
    /// No reset: the function keeps its state from one run to the next.
    None(String),
}

impl ResetPlan {
    /// What will happen, in a few words: "FLR (function-level reset)".
    pub fn describe(&self) -> String {
        match self {
            ResetPlan::Function(methods) => {
                let first = methods
                    .first()
                    .map_or("a function reset", |m| method_name(m));
                match methods.get(1..) {
                    Some(rest) if !rest.is_empty() => {
                        format!("{first}; the kernel falls back to {}", rest.join(", "))
                    }
                    _ => first.to_string(),
                }
            }
            ResetPlan::Bus { bridge, affected } => format!(
                "a bus reset through the bridge {bridge}, which also resets {}",
                others_text(affected)
            ),
            ResetPlan::None(why) => format!("none: {why}"),
        }
    }
}

fn others_text(affected: &[String]) -> String {
    if affected.len() <= 1 {
        "nothing else".into()
    } else {
        affected.join(", ")
    }
}

/// The words for one of `reset_method`'s names.
pub fn method_name(method: &str) -> &str {
    match method {
        "flr" => "FLR (function-level reset)",
        "af_flr" => "FLR (through the Advanced Features capability)",
        "pm" => "PM reset (D3hot to D0)",
        "bus" => "bus reset (through the bridge above it)",
        "cxl_bus" => "CXL bus reset",
        "acpi" => "the firmware's ACPI _RST method",
        "device_specific" => "a device-specific reset (a kernel quirk)",
        other => other,
    }
}

/// The plan for `bdf` on the host under `root`.
pub fn plan(root: &HostRoot, bdf: &str) -> ResetPlan {
    let dir = root.pci_device(bdf);
    let bridge = bridge_above(&dir);
    let below = bridge.as_ref().map(|(_, dir)| below_recursive(dir));
    let shares_bus = below.as_ref().is_some_and(|b| b.len() > 1);
    // The kernel probes a function's methods when it is added, so a function probed before
    // its siblings appeared may list "bus" alone: that reset reaches them all, and VFIO then
    // refuses it as a function reset. Either way it is a bus reset.
    let bus_only = read_trimmed(&dir.join("reset_method")).is_some_and(|m| m == "bus");
    if dir.join("reset").exists() && !(bus_only && shares_bus) {
        let methods = read_trimmed(&dir.join("reset_method"))
            .map(|m| m.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                let config = std::fs::read(dir.join("config")).unwrap_or_default();
                let alone = bridge
                    .as_ref()
                    .is_some_and(|(_, below)| on_bus(below).len() == 1);
                methods_from_config(&config, alone)
            });
        return ResetPlan::Function(methods);
    }
    match (bridge, below) {
        (Some((bridge, _)), Some(affected)) => ResetPlan::Bus { bridge, affected },
        _ => ResetPlan::None(
            "it has no FLR or PM reset, and on the root bus no bridge can reset it".into(),
        ),
    }
}

/// The methods configuration space shows, in the kernel's order (`alone`: the function is
/// the only one on a bus below a bridge).
pub fn methods_from_config(config: &[u8], alone: bool) -> Vec<String> {
    let dword = |offset: usize| {
        config
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    let caps = capability::standard(config);
    let find = |wanted: u8| caps.iter().find(|c| c.id == wanted).map(|c| c.offset);
    let mut methods = Vec::new();
    if find(id::PCI_EXPRESS).is_some_and(|at| dword(usize::from(at) + 4) & EXPRESS_DEVCAP_FLR != 0)
    {
        methods.push("flr".to_string());
    }
    if find(ADVANCED_FEATURES).is_some_and(|at| {
        config
            .get(usize::from(at) + 3)
            .is_some_and(|caps| caps & AF_CAP_FLR != 0)
    }) {
        methods.push("af_flr".to_string());
    }
    if find(id::POWER_MANAGEMENT)
        .is_some_and(|at| dword(usize::from(at) + 4) & PMCSR_NO_SOFT_RESET == 0)
    {
        methods.push("pm".to_string());
    }
    if alone {
        methods.push("bus".to_string());
    }
    methods
}

/// The bridge a function sits behind (its address and its sysfs directory), or `None` on a
/// root bus.
fn bridge_above(dir: &Path) -> Option<(String, std::path::PathBuf)> {
    let device = std::fs::canonicalize(dir).ok()?;
    let parent = device.parent()?;
    let name = parent.file_name()?.to_str()?;
    is_pci_address(name).then(|| (name.to_string(), parent.to_path_buf()))
}

/// The functions directly below a bridge (its secondary bus).
fn on_bus(bridge: &Path) -> Vec<String> {
    list_names(bridge)
        .into_iter()
        .filter(|n| is_pci_address(n))
        .collect()
}

/// Every function below a bridge, on its secondary bus and the buses below.
fn below_recursive(bridge: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for name in on_bus(bridge) {
        let below = below_recursive(&bridge.join(&name));
        all.push(name);
        all.extend(below);
    }
    all.sort();
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHost, FakePci};

    fn gpu(bdf: &str) -> FakePci<'_> {
        FakePci {
            bdf,
            ids: (0x1002, 0x6660),
            class: 0x030000,
            group: Some(12),
            driver: Some("vfio-pci"),
        }
    }

    /// A configuration space with the capabilities given as (id, bytes after the header).
    fn config_with(caps: &[(u8, &[u8])]) -> Vec<u8> {
        let mut config = vec![0u8; 256];
        config[6] = 0x10; // status: capabilities list
        let mut at = 0x40;
        config[0x34] = at as u8;
        for (i, (cap, body)) in caps.iter().enumerate() {
            config[at] = *cap;
            let next = if i + 1 < caps.len() { at + 0x20 } else { 0 };
            config[at + 1] = next as u8;
            config[at + 2..at + 2 + body.len()].copy_from_slice(body);
            at += 0x20;
        }
        config
    }

    #[test]
    fn reset_method_names_the_methods_in_the_kernels_order() {
        let host = FakeHost::new();
        host.pci(gpu("0000:00:02.0"))
            .file("sys/devices/pci0000:00/0000:00:02.0/reset", "")
            .file(
                "sys/devices/pci0000:00/0000:00:02.0/reset_method",
                "flr bus\n",
            );
        let plan = plan(&host.root(), "0000:00:02.0");
        assert_eq!(plan, ResetPlan::Function(vec!["flr".into(), "bus".into()]));
        assert_eq!(
            plan.describe(),
            "FLR (function-level reset); the kernel falls back to bus"
        );
    }

    #[test]
    fn without_reset_method_configuration_space_decides() {
        // FLR in Device Capabilities (bit 28 of the dword after the Express header).
        let express = config_with(&[(id::PCI_EXPRESS, &[0x02, 0x00, 0x00, 0x00, 0x00, 0x10])]);
        assert_eq!(methods_from_config(&express, false), vec!["flr"]);
        // The same without the bit: nothing.
        let no_flr = config_with(&[(id::PCI_EXPRESS, &[0x02, 0x00, 0, 0, 0, 0])]);
        assert!(methods_from_config(&no_flr, false).is_empty());
        // PM with No_Soft_Reset clear resets; set, it does not.
        let pm = config_with(&[(id::POWER_MANAGEMENT, &[0x03, 0x00, 0x00, 0x00])]);
        assert_eq!(methods_from_config(&pm, false), vec!["pm"]);
        let no_soft_reset = config_with(&[(id::POWER_MANAGEMENT, &[0x03, 0x00, 0x08, 0x00])]);
        assert!(methods_from_config(&no_soft_reset, false).is_empty());
        // Advanced Features FLR, then a bus reset for a function alone below a bridge.
        let af = config_with(&[(ADVANCED_FEATURES, &[0x06, 0x03])]);
        assert_eq!(methods_from_config(&af, true), vec!["af_flr", "bus"]);
    }

    #[test]
    fn an_old_kernel_without_reset_method_reads_the_config_file() {
        let host = FakeHost::new();
        let dir = "sys/devices/pci0000:00/0000:00:1c.0";
        host.pci_at(dir, gpu("0000:01:00.0"));
        let config = config_with(&[(id::POWER_MANAGEMENT, &[0x03, 0x00, 0x00, 0x00])]);
        std::fs::write(host.path(&format!("{dir}/0000:01:00.0/config")), config).unwrap();
        host.file(&format!("{dir}/0000:01:00.0/reset"), "");
        assert_eq!(
            plan(&host.root(), "0000:01:00.0"),
            ResetPlan::Function(vec!["pm".into(), "bus".into()])
        );
    }

    #[test]
    fn a_gpu_with_audio_and_no_flr_is_reset_through_its_bridge() {
        let host = FakeHost::new();
        let port = "sys/devices/pci0000:00/0000:00:01.1";
        host.pci_at(port, gpu("0000:03:00.0")).pci_at(
            port,
            FakePci {
                bdf: "0000:03:00.1",
                class: 0x040300,
                ..gpu("0000:03:00.1")
            },
        );
        let first = plan(&host.root(), "0000:03:00.0");
        let through_the_bridge = ResetPlan::Bus {
            bridge: "0000:00:01.1".into(),
            affected: vec!["0000:03:00.0".into(), "0000:03:00.1".into()],
        };
        assert_eq!(first, through_the_bridge);
        assert!(
            first.describe().contains("0000:00:01.1"),
            "{}",
            first.describe()
        );
        // Probed before its audio function appeared, the display may list "bus" alone: the
        // same reset, through the same bridge.
        host.file(&format!("{port}/0000:03:00.0/reset"), "")
            .file(&format!("{port}/0000:03:00.0/reset_method"), "bus\n");
        assert_eq!(plan(&host.root(), "0000:03:00.0"), through_the_bridge);
        // With FLR it is a function reset again.
        host.file(&format!("{port}/0000:03:00.0/reset_method"), "flr bus\n");
        assert!(matches!(
            plan(&host.root(), "0000:03:00.0"),
            ResetPlan::Function(_)
        ));
    }

    #[test]
    fn a_function_on_the_root_bus_without_a_method_has_no_reset() {
        let host = FakeHost::new();
        host.pci(gpu("0000:00:02.0"));
        let plan = plan(&host.root(), "0000:00:02.0");
        assert!(matches!(plan, ResetPlan::None(_)), "{plan:?}");
        assert!(plan.describe().starts_with("none: "), "{}", plan.describe());
    }
}
