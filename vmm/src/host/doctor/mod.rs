//! `minivmm doctor [BDF...]`: is this host ready for `--gpu BDF`, and if not, exactly what
//! to change. Each item has a verdict and, when it is not fine, the fix.
//!
//! Host items ([`host_checks`]): KVM, CPU virtualization, the IOMMU (firmware tables,
//! kernel command line, sysfs), interrupt remapping, the VFIO modules, `/dev/vfio/vfio`, the
//! locked-memory limit, the physical address width. Device items ([`device_checks`]): the
//! IOMMU group and its other members, the driver, the group's viability, `/dev/vfio/N`
//! access, reset, its BARs against the guest's address space, a reachable VBIOS (display
//! controllers), and whether it is the host's boot display. This file gathers the facts,
//! runs the items and renders the checklist.

mod device_checks;
mod host_checks;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde_json::json;

use super::pci::{read_rom, PciInfo, PciNames, RomReadError};
use super::{list_names, Credentials, HostRoot};
use device_checks::check_device;
use host_checks::*;

/// How an item stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Passthrough works, but something deserves attention.
    Warn,
    /// `--gpu` will fail until this is fixed.
    Fail,
    /// Does not apply (yet).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "-",
        }
    }
}

/// One item of the checklist.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// `host`, or the device's address.
    pub scope: String,
    /// Short name: `kvm`, `iommu`, `driver`, ...
    pub item: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// What `doctor` looks at.
#[derive(Clone, Debug, Default)]
pub struct DoctorConfig {
    /// PCI addresses (kernel form) the user means to pass through.
    pub devices: Vec<String>,
    /// Guest RAM the run will DMA-map (the locked-memory check).
    pub memory: u64,
}

/// What the checks do to devices rather than read from files, behind functions so tests
/// stand in for a real `/dev/kvm` and a real sysfs ROM.
#[derive(Clone, Copy)]
pub struct Probes<'a> {
    /// Open the KVM device and return its API version.
    pub kvm: &'a dyn Fn(&Path) -> Result<i32, String>,
    /// Read a device's ROM (its sysfs directory), enabling it for the read.
    pub rom: &'a dyn Fn(&Path) -> Result<Vec<u8>, RomReadError>,
    /// Whether a VFIO group node is open elsewhere (a VM holds the device).
    pub in_use: &'a dyn Fn(&Path) -> bool,
}

impl std::fmt::Debug for Probes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probes")
    }
}

impl Probes<'static> {
    /// The real host's.
    pub fn real() -> Self {
        Probes {
            kvm: &probe_kvm,
            rom: &read_rom,
            in_use: &group_in_use,
        }
    }
}

/// The real in-use probe: VFIO lets one process open a group.
fn group_in_use(node: &Path) -> bool {
    use super::binding::Kernel as _;
    super::binding::RealKernel.group_in_use(node)
}

/// The real KVM probe: open it and ask `KVM_GET_API_VERSION`.
pub fn probe_kvm(path: &Path) -> Result<i32, String> {
    let path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let kvm = kvm_ioctls::Kvm::new_with_path(path.as_c_str()).map_err(|e| e.to_string())?;
    Ok(kvm.get_api_version())
}

/// The checklist and the devices it is about.
#[derive(Debug)]
pub struct Report {
    /// Names for the devices' IDs.
    pub names: PciNames,
    /// Every item, host first.
    pub checks: Vec<Check>,
    /// The devices asked about, as given.
    pub asked: Vec<String>,
    /// The devices asked about that exist.
    pub devices: Vec<PciInfo>,
    /// Guest RAM assumed.
    pub memory: u64,
}

impl Report {
    /// True when nothing fails: `--gpu` with these devices will work.
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The checklist for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut scope = "";
        for check in &self.checks {
            if check.scope != scope {
                scope = &check.scope;
                let title = match self.devices.iter().find(|d| d.bdf == scope) {
                    Some(device) => format!("{scope}  {}", device.describe(&self.names)),
                    None => scope.to_string(),
                };
                out.push_str(&format!("{title}\n"));
            }
            out.push_str(&format!(
                "  {:<5} {:<15} {}\n",
                check.status.label(),
                check.item,
                check.detail
            ));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("        fix: {fix}\n"));
            }
        }
        let problems = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let target = if self.asked.is_empty() {
            "passthrough".to_string()
        } else {
            let gpus: Vec<String> = self.asked.iter().map(|d| format!("--gpu {d}")).collect();
            gpus.join(" ")
        };
        if problems == 0 {
            out.push_str(&format!("ready for {target}\n"));
        } else {
            out.push_str(&format!(
                "not ready for {target}: {problems} problem(s) to fix\n"
            ));
        }
        out
    }

    /// The checklist for scripts.
    pub fn json(&self) -> serde_json::Value {
        let devices: Vec<_> = self
            .devices
            .iter()
            .map(|d| super::groups::device_json(d, &self.names))
            .collect();
        json!({
            "ready": self.ready(),
            "memory_bytes": self.memory,
            "checks": self.checks,
            "devices": devices,
        })
    }
}

/// Everything the checks read, gathered once.
struct Host<'a> {
    root: &'a HostRoot,
    probes: Probes<'a>,
    creds: Option<Credentials>,
    cmdline: String,
    iommus: Vec<String>,
    /// The host's physical address width (`address sizes` in /proc/cpuinfo).
    address_bits: Option<u8>,
    /// Guest RAM assumed.
    memory: u64,
}

/// `NN bits physical` from /proc/cpuinfo's `address sizes` line.
fn address_bits(cpuinfo: &str) -> Option<u8> {
    let line = cpuinfo.lines().find(|l| l.starts_with("address sizes"))?;
    let value = line.split(':').nth(1)?;
    value.split_whitespace().next()?.parse().ok()
}

/// Run the checklist.
pub fn run(root: &HostRoot, probes: Probes, config: &DoctorConfig) -> Report {
    let host = Host {
        root,
        probes,
        creds: Credentials::read(root),
        cmdline: root.read("proc/cmdline").unwrap_or_default(),
        iommus: list_names(&root.path("sys/class/iommu")),
        address_bits: address_bits(&root.read("proc/cpuinfo").unwrap_or_default()),
        memory: config.memory,
    };
    let mut checks = Vec::new();
    let kvm = check_kvm(&host);
    let kvm_ok = kvm.status == Status::Ok;
    checks.push(kvm);
    checks.push(check_cpu(&host, kvm_ok));
    checks.push(check_iommu(&host));
    checks.push(check_interrupt_remapping(&host));
    for module in ["vfio", "vfio_iommu_type1", "vfio_pci"] {
        checks.push(check_module(&host, module));
    }
    checks.push(check_vfio_node(&host));
    checks.push(check_memlock(&host, config.memory));
    checks.push(check_hugepages(&host, config.memory));
    checks.push(check_address_width(&host));
    let mut devices = Vec::new();
    for bdf in &config.devices {
        match PciInfo::read(root, bdf) {
            Some(info) => {
                checks.extend(check_device(&host, &info));
                devices.push(info);
            }
            None => checks.push(Check {
                scope: bdf.clone(),
                item: "device",
                status: Status::Fail,
                detail: "there is no such PCI device".into(),
                fix: Some("check the address with lspci -D or minivmm iommu-groups".into()),
            }),
        }
    }
    Report {
        names: PciNames::load(root),
        checks,
        asked: config.devices.clone(),
        devices,
        memory: config.memory,
    }
}
