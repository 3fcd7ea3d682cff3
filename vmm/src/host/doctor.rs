//! `minivmm doctor [BDF...]`: is this host ready for `--gpu BDF`, and if not, exactly what
//! to change. Each item has a verdict and, when it is not fine, the fix.
//!
//! Host items: KVM, CPU virtualization, the IOMMU (firmware tables, kernel command line,
//! sysfs), interrupt remapping, the VFIO modules, `/dev/vfio/vfio`, the locked-memory limit.
//! Device items: the IOMMU group and its other members, the driver, the group's
//! viability, `/dev/vfio/N` access, reset, a reachable VBIOS (display controllers), and
//! whether it is the host's boot display.

use std::path::Path;

use minivmm_firmware::acpi::vfct;
use minivmm_firmware::option_rom;
use serde_json::json;

use super::pci::{
    blocking_members, driver, group_members, read_rom, PciInfo, PciNames, RomReadError, VFIO_PCI,
};
use super::{list_names, memlock_limit, read_trimmed, Credentials, HostRoot};

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
}

/// Run the checklist.
pub fn run(root: &HostRoot, probes: Probes, config: &DoctorConfig) -> Report {
    let host = Host {
        root,
        probes,
        creds: Credentials::read(root),
        cmdline: root.read("proc/cmdline").unwrap_or_default(),
        iommus: list_names(&root.path("sys/class/iommu")),
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

fn host_check(item: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        scope: "host".into(),
        item,
        status,
        detail: detail.into(),
        fix: None,
    }
}

fn with_fix(mut check: Check, fix: impl Into<String>) -> Check {
    check.fix = Some(fix.into());
    check
}

/// Whether the current user may open a device node for reading and writing.
fn node_access(host: &Host, node: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(node).map_err(|_| "missing".to_string())?;
    match &host.creds {
        Some(creds) if creds.may_read_write(&meta) => Ok(()),
        Some(_) => Err("no permission".into()),
        None => Err("cannot tell who minivmm runs as (/proc/self/status)".into()),
    }
}

fn check_kvm(host: &Host) -> Check {
    let node = host.root.path("dev/kvm");
    match node_access(host, &node) {
        Err(why) if why == "missing" => with_fix(
            host_check("kvm", Status::Fail, "/dev/kvm does not exist"),
            "enable virtualization (VT-x/AMD-V, SVM) in the firmware setup, then modprobe kvm_intel or kvm_amd",
        ),
        Err(why) => with_fix(
            host_check("kvm", Status::Fail, format!("/dev/kvm: {why}")),
            "run as root, or add your user to the kvm group (usermod -aG kvm $USER) and log in again",
        ),
        Ok(()) => match (host.probes.kvm)(&node) {
            Ok(api) => host_check("kvm", Status::Ok, format!("/dev/kvm is usable (KVM API {api})")),
            Err(e) => with_fix(
                host_check("kvm", Status::Fail, format!("/dev/kvm does not answer: {e}")),
                "reload kvm_intel or kvm_amd; dmesg says why KVM is unusable",
            ),
        },
    }
}

fn check_cpu(host: &Host, kvm_ok: bool) -> Check {
    let cpuinfo = host.root.read("proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|f| {
            f.trim_start_matches([' ', '\t', ':'])
                .split_whitespace()
                .collect()
        })
        .unwrap_or_default();
    let found = [("vmx", "Intel VT-x (vmx)"), ("svm", "AMD-V (svm)")]
        .into_iter()
        .find(|(flag, _)| flags.contains(flag));
    match (found, kvm_ok) {
        (Some((_, name)), _) => {
            host_check("virtualization", Status::Ok, format!("the CPU has {name}"))
        }
        (None, true) => host_check(
            "virtualization",
            Status::Warn,
            "the CPU flags show neither vmx nor svm, but KVM works (nested or paravirtual KVM)",
        ),
        (None, false) => with_fix(
            host_check(
                "virtualization",
                Status::Fail,
                "the CPU flags show neither vmx nor svm",
            ),
            "enable VT-x or AMD-V (SVM) in the firmware setup",
        ),
    }
}

fn check_iommu(host: &Host) -> Check {
    let dmar = host.root.path("sys/firmware/acpi/tables/DMAR").exists();
    let ivrs = host.root.path("sys/firmware/acpi/tables/IVRS").exists();
    let firmware = match (dmar, ivrs) {
        (true, _) => "the firmware describes an Intel VT-d IOMMU (ACPI DMAR)",
        (_, true) => "the firmware describes an AMD-Vi IOMMU (ACPI IVRS)",
        _ => "the firmware describes no IOMMU (no ACPI DMAR or IVRS table)",
    };
    if !host.iommus.is_empty() {
        return host_check(
            "iommu",
            Status::Ok,
            format!("on: {}; {firmware}", host.iommus.join(", ")),
        );
    }
    let args: Vec<&str> = host.cmdline.split_whitespace().collect();
    let off = args
        .iter()
        .find(|a| matches!(**a, "intel_iommu=off" | "amd_iommu=off" | "iommu=off"));
    let fix = match (off, dmar, ivrs) {
        (Some(arg), _, _) => format!(
            "remove {arg} from the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot"
        ),
        (None, true, _) if !args.iter().any(|a| a.starts_with("intel_iommu=on")) => {
            "add intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot".into()
        }
        (None, true, _) | (None, _, true) => {
            "the kernel did not start the IOMMU: check dmesg for DMAR or AMD-Vi errors; the kernel needs CONFIG_INTEL_IOMMU or CONFIG_AMD_IOMMU".into()
        }
        (None, false, false) => {
            "enable VT-d (Intel) or AMD-Vi / IOMMU (AMD) in the firmware setup, then add intel_iommu=on (Intel) to the kernel command line".into()
        }
    };
    with_fix(
        host_check(
            "iommu",
            Status::Fail,
            format!("off: no /sys/class/iommu entries; {firmware}"),
        ),
        fix,
    )
}

fn check_interrupt_remapping(host: &Host) -> Check {
    let interrupts = host.root.read("proc/interrupts").unwrap_or_default();
    let remapped = interrupts.split_whitespace().any(|w| w.starts_with("IR-"));
    let unsafe_allowed = host
        .root
        .read("sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
        .is_some_and(|v| v == "Y");
    match (remapped, unsafe_allowed, host.iommus.is_empty()) {
        (true, _, _) => host_check(
            "irq-remapping",
            Status::Ok,
            "on (interrupts go through IR- chips in /proc/interrupts)",
        ),
        (false, true, _) => host_check(
            "irq-remapping",
            Status::Warn,
            "off, but vfio_iommu_type1 allow_unsafe_interrupts=Y lets VFIO go on without it (a device could forge interrupts)",
        ),
        (false, false, true) => host_check(
            "irq-remapping",
            Status::Skip,
            "needs the IOMMU on first",
        ),
        (false, false, false) => with_fix(
            host_check(
                "irq-remapping",
                Status::Fail,
                "off: VFIO refuses devices without interrupt remapping",
            ),
            "enable interrupt remapping (x2APIC / IR in the firmware setup; do not pass intremap=off), or at your own risk: modprobe vfio_iommu_type1 allow_unsafe_interrupts=1",
        ),
    }
}

fn check_module(host: &Host, module: &'static str) -> Check {
    let item = match module {
        "vfio" => "module vfio",
        "vfio_pci" => "module vfio_pci",
        _ => "module type1",
    };
    if host.root.path(&format!("sys/module/{module}")).exists() {
        return host_check(item, Status::Ok, format!("{module} is loaded"));
    }
    let release = host
        .root
        .read("proc/sys/kernel/osrelease")
        .unwrap_or_default();
    let modules = host.root.path(&format!("lib/modules/{release}"));
    let file = format!("/{}.ko", module.replace('_', "-"));
    let file_alt = format!("/{module}.ko");
    let listed = |name: &str| {
        std::fs::read_to_string(modules.join(name)).is_ok_and(|text| {
            text.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                let path = path.split(".ko").next().unwrap_or("");
                let path = format!("{path}.ko");
                path.ends_with(&file) || path.ends_with(&file_alt)
            })
        })
    };
    if listed("modules.builtin") {
        host_check(
            item,
            Status::Ok,
            format!("{module} is built into the kernel"),
        )
    } else if listed("modules.dep") {
        with_fix(
            host_check(item, Status::Fail, format!("{module} is not loaded")),
            format!(
                "modprobe {} (to load it at boot: echo {} > /etc/modules-load.d/vfio.conf)",
                module.replace('_', "-"),
                module.replace('_', "-")
            ),
        )
    } else {
        with_fix(
            host_check(item, Status::Fail, format!("this kernel ({release}) has no {module} module")),
            "install a kernel built with CONFIG_VFIO, CONFIG_VFIO_IOMMU_TYPE1 and CONFIG_VFIO_PCI (any distribution kernel)",
        )
    }
}

fn check_vfio_node(host: &Host) -> Check {
    match node_access(host, &host.root.path("dev/vfio/vfio")) {
        Ok(()) => host_check("/dev/vfio/vfio", Status::Ok, "present and accessible"),
        Err(why) if why == "missing" => with_fix(
            host_check("/dev/vfio/vfio", Status::Fail, "missing"),
            "modprobe vfio (the container device comes with it)",
        ),
        Err(why) => with_fix(
            host_check("/dev/vfio/vfio", Status::Fail, why),
            "run as root, or make /dev/vfio/vfio readable and writable for your user",
        ),
    }
}

fn check_memlock(host: &Host, memory: u64) -> Check {
    let mib = memory >> 20;
    if host
        .creds
        .as_ref()
        .is_some_and(Credentials::may_lock_any_memory)
    {
        return host_check(
            "memlock",
            Status::Ok,
            format!("not limited (CAP_IPC_LOCK): {mib} MiB of guest RAM can be DMA-mapped"),
        );
    }
    match memlock_limit(host.root) {
        Some(None) => host_check("memlock", Status::Ok, "unlimited"),
        Some(Some(limit)) if limit >= memory => host_check(
            "memlock",
            Status::Ok,
            format!("{} MiB, enough for {mib} MiB of guest RAM", limit >> 20),
        ),
        Some(Some(limit)) => with_fix(
            host_check(
                "memlock",
                Status::Fail,
                format!(
                    "{} KiB: VFIO locks all {mib} MiB of guest RAM for DMA",
                    limit >> 10
                ),
            ),
            format!(
                "raise the locked-memory limit to at least {} KiB: ulimit -l {} (hard limit: memlock in /etc/security/limits.conf), or run as root",
                memory >> 10,
                memory >> 10
            ),
        ),
        None => host_check("memlock", Status::Warn, "cannot read /proc/self/limits"),
    }
}

fn device_check(info: &PciInfo, item: &'static str, status: Status, detail: String) -> Check {
    Check {
        scope: info.bdf.clone(),
        item,
        status,
        detail,
        fix: None,
    }
}

fn check_device(host: &Host, info: &PciInfo) -> Vec<Check> {
    let mut checks = vec![check_group(host, info), check_driver(info)];
    if let Some(group) = info.group {
        checks.push(check_viable(host, info, group));
        checks.push(check_group_node(host, info, group));
    }
    checks.push(check_reset(host, info));
    checks.push(check_vbios(host, info));
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
    let dir = host.root.pci_device(&info.bdf);
    if !dir.join("reset").exists() {
        return device_check(
            info,
            "reset",
            Status::Warn,
            "the kernel knows no way to reset it: it keeps its state from one run to the next"
                .into(),
        );
    }
    let methods = read_trimmed(&dir.join("reset_method")).unwrap_or_default();
    let detail = if methods.is_empty() {
        "supported".to_string()
    } else {
        format!("supported ({methods})")
    };
    device_check(info, "reset", Status::Ok, detail)
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
    if let Some(size) = vfct_image(host, info) {
        return with_fix(
            device_check(
                info,
                "vbios",
                Status::Warn,
                format!(
                    "ROM BAR: {why}; the host's ACPI VFCT table has an image for it ({} KiB)",
                    size >> 10
                ),
            ),
            format!(
                "minivmm rom extract --device {bdf} -o vbios.rom, then --gpu {bdf},rom=vbios.rom",
                bdf = info.bdf
            ),
        );
    }
    with_fix(
        device_check(
            info,
            "vbios",
            Status::Warn,
            format!("no usable VBIOS: ROM BAR: {why}; no VFCT image for it; the guest driver may report \"Unable to locate a BIOS ROM\""),
        ),
        format!(
            "get the image (vendor tools such as amdvbflash or nvflash, or the GPU maker's firmware) and pass --gpu {},rom=FILE",
            info.bdf
        ),
    )
}

/// The size of a valid image for this device in its ROM BAR, or why there is none.
fn rom_bar_image(host: &Host, info: &PciInfo) -> Result<usize, String> {
    let bytes = (host.probes.rom)(&host.root.pci_device(&info.bdf)).map_err(|e| match e {
        RomReadError::Missing => "none".to_string(),
        RomReadError::Enable(_) => "cannot enable it (run as root to check)".to_string(),
        RomReadError::Read(_) => "unreadable (no ROM behind the BAR)".to_string(),
    })?;
    let rom = option_rom::parse(&bytes).map_err(|e| format!("not a valid image ({e})"))?;
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

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeHost, FakePci};
    use super::*;

    const ROOT_CAPS: u64 = 0x1ff_ffff_ffff;

    fn ok_kvm(_: &Path) -> Result<i32, String> {
        Ok(12)
    }

    /// A sysfs ROM that reads back as the fake file's contents (a real one needs enabling).
    fn plain_rom(dir: &Path) -> Result<Vec<u8>, RomReadError> {
        match std::fs::read(dir.join("rom")) {
            Ok(bytes) => Ok(bytes),
            Err(_) => Err(RomReadError::Missing),
        }
    }

    /// A host where everything is in order for 0000:01:00.0, a GPU on vfio-pci alone in its
    /// group, run by root.
    fn ready_host() -> FakeHost {
        let host = FakeHost::new();
        host.node("dev/kvm", 0o660, 0, 994)
            .node("dev/vfio/vfio", 0o666, 0, 0)
            .node("dev/vfio/12", 0o600, 0, 0)
            .process(0, 0, "0", ROOT_CAPS)
            .file("proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme svm sse2\n")
            .file("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet\n")
            .file("proc/interrupts", "  0:  44  IR-IO-APIC  2-edge  timer\n")
            .file("proc/self/limits", "Max locked memory         8388608              8388608              bytes\n")
            .file("proc/sys/kernel/osrelease", "6.1.0-57-amd64\n")
            .file("lib/modules/6.1.0-57-amd64/modules.builtin", "kernel/drivers/vfio/vfio.ko\n")
            .file(
                "lib/modules/6.1.0-57-amd64/modules.dep",
                "kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko\n",
            )
            .dir("sys/module/vfio_iommu_type1")
            .dir("sys/module/vfio_pci")
            .file("sys/firmware/acpi/tables/IVRS", "IVRS")
            .dir("sys/class/iommu/ivhd0")
            .pci(FakePci {
                bdf: "0000:01:00.0",
                ids: (0x1002, 0x6660),
                class: 0x038000,
                group: Some(12),
                driver: Some("vfio-pci"),
            })
            .file("sys/devices/pci0000:00/0000:01:00.0/reset", "")
            .file("sys/devices/pci0000:00/0000:01:00.0/reset_method", "flr bus\n");
        host
    }

    fn run_on(host: &FakeHost, devices: &[&str], memory: u64) -> Report {
        let config = DoctorConfig {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            memory,
        };
        let probes = Probes {
            kvm: &ok_kvm,
            rom: &plain_rom,
            in_use: &|_| false,
        };
        run(&host.root(), probes, &config)
    }

    fn item<'a>(report: &'a Report, scope: &str, item: &str) -> &'a Check {
        report
            .checks
            .iter()
            .find(|c| c.scope == scope && c.item == item)
            .unwrap_or_else(|| panic!("no {scope} {item} in {:?}", report.checks))
    }

    #[test]
    fn the_happy_path_is_ready() {
        let host = ready_host();
        let report = run_on(&host, &["0000:01:00.0"], 4 << 30);
        let failing: Vec<_> = report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .collect();
        assert!(report.ready(), "{failing:?}");
        assert_eq!(
            item(&report, "host", "kvm").detail,
            "/dev/kvm is usable (KVM API 12)"
        );
        assert!(item(&report, "host", "iommu").detail.contains("ivhd0"));
        assert!(item(&report, "host", "module vfio")
            .detail
            .contains("built into"));
        assert!(item(&report, "host", "memlock")
            .detail
            .contains("CAP_IPC_LOCK"));
        assert_eq!(
            item(&report, "0000:01:00.0", "reset").detail,
            "supported (flr bus)"
        );
        assert!(
            report.text().ends_with("ready for --gpu 0000:01:00.0\n"),
            "{}",
            report.text()
        );
        assert_eq!(report.json()["ready"], true);
    }

    #[test]
    fn an_iommu_off_on_the_command_line_names_the_argument() {
        let host = ready_host();
        std::fs::remove_dir(host.path("sys/class/iommu/ivhd0")).unwrap();
        host.file("proc/cmdline", "root=/dev/sda1 amd_iommu=off\n");
        host.file("proc/interrupts", "  0:  44  IO-APIC  2-edge  timer\n");
        let report = run_on(&host, &[], 1 << 30);
        let iommu = item(&report, "host", "iommu");
        assert_eq!(iommu.status, Status::Fail);
        assert!(iommu.detail.contains("AMD-Vi"));
        assert!(iommu.fix.as_ref().unwrap().contains("remove amd_iommu=off"));
        assert_eq!(item(&report, "host", "irq-remapping").status, Status::Skip);
        assert!(!report.ready());
        assert_eq!(report.json()["ready"], false);
    }

    #[test]
    fn an_intel_host_without_intel_iommu_on_is_told_to_add_it() {
        let host = ready_host();
        std::fs::remove_dir(host.path("sys/class/iommu/ivhd0")).unwrap();
        std::fs::remove_file(host.path("sys/firmware/acpi/tables/IVRS")).unwrap();
        host.file("sys/firmware/acpi/tables/DMAR", "DMAR");
        let report = run_on(&host, &[], 1 << 30);
        let fix = item(&report, "host", "iommu").fix.clone().unwrap();
        assert!(fix.starts_with("add intel_iommu=on"), "{fix}");
        std::fs::remove_file(host.path("sys/firmware/acpi/tables/DMAR")).unwrap();
        let report = run_on(&host, &[], 1 << 30);
        let fix = item(&report, "host", "iommu").fix.clone().unwrap();
        assert!(fix.contains("firmware setup"), "{fix}");
    }

    #[test]
    fn a_device_on_a_host_driver_is_told_to_bind() {
        let host = ready_host();
        host.bind_link("0000:01:00.0", "radeon");
        let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
        let driver = item(&report, "0000:01:00.0", "driver");
        assert_eq!(driver.status, Status::Fail);
        assert_eq!(driver.detail, "radeon, not vfio-pci");
        assert!(driver
            .fix
            .as_ref()
            .unwrap()
            .starts_with("minivmm bind 0000:01:00.0"));
        assert_eq!(
            item(&report, "0000:01:00.0", "group node").status,
            Status::Skip
        );
        assert!(report
            .text()
            .contains("not ready for --gpu 0000:01:00.0: 1 problem(s)"));
    }

    #[test]
    fn a_non_viable_group_names_the_member_and_its_driver() {
        let host = ready_host();
        host.pci(FakePci {
            bdf: "0000:01:00.1",
            ids: (0x1002, 0xaab0),
            class: 0x040300,
            group: Some(12),
            driver: Some("snd_hda_intel"),
        });
        let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
        let viable = item(&report, "0000:01:00.0", "group viable");
        assert_eq!(viable.status, Status::Fail);
        assert_eq!(viable.detail, "0000:01:00.1 is on snd_hda_intel");
        assert!(viable.fix.as_ref().unwrap().contains("bind --group"));
        let group = item(&report, "0000:01:00.0", "iommu-group");
        assert_eq!(group.detail, "group 12, with 0000:01:00.1 (snd_hda_intel)");
    }

    #[test]
    fn an_ordinary_user_without_access_and_memlock_is_told_both_fixes() {
        let host = ready_host();
        host.process(1000, 1000, "1000", 0);
        let report = run_on(&host, &["0000:01:00.0"], 4 << 30);
        let kvm = item(&report, "host", "kvm");
        assert_eq!(kvm.status, Status::Fail);
        assert!(kvm.fix.as_ref().unwrap().contains("kvm group"));
        let node = item(&report, "0000:01:00.0", "group node");
        assert_eq!(node.status, Status::Fail);
        assert!(node.detail.contains("no permission"));
        assert!(node.fix.as_ref().unwrap().contains("chown"));
        let memlock = item(&report, "host", "memlock");
        assert_eq!(memlock.status, Status::Fail);
        assert!(memlock.detail.starts_with("8192 KiB"));
        assert!(memlock.fix.as_ref().unwrap().contains("ulimit -l 4194304"));
        // In the kvm group with a large enough limit, both pass.
        host.process(1000, 1000, "1000 994", 0);
        host.file(
            "proc/self/limits",
            "Max locked memory         unlimited            unlimited            bytes\n",
        );
        let report = run_on(&host, &[], 4 << 30);
        assert_eq!(item(&report, "host", "kvm").status, Status::Ok);
        assert_eq!(item(&report, "host", "memlock").status, Status::Ok);
    }

    #[test]
    fn missing_modules_say_modprobe_or_rebuild() {
        let host = ready_host();
        std::fs::remove_dir(host.path("sys/module/vfio_pci")).unwrap();
        let report = run_on(&host, &[], 1 << 30);
        let module = item(&report, "host", "module vfio_pci");
        assert_eq!(module.status, Status::Fail);
        assert!(module
            .fix
            .as_ref()
            .unwrap()
            .starts_with("modprobe vfio-pci"));
        host.file("lib/modules/6.1.0-57-amd64/modules.dep", "");
        let report = run_on(&host, &[], 1 << 30);
        assert!(item(&report, "host", "module vfio_pci")
            .detail
            .contains("has no vfio_pci"));
    }

    #[test]
    fn interrupt_remapping_off_fails_unless_unsafe_interrupts_are_allowed() {
        let host = ready_host();
        host.file("proc/interrupts", "  0:  44  IO-APIC  2-edge  timer\n");
        let report = run_on(&host, &[], 1 << 30);
        assert_eq!(item(&report, "host", "irq-remapping").status, Status::Fail);
        host.file(
            "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
            "Y\n",
        );
        let report = run_on(&host, &[], 1 << 30);
        assert_eq!(item(&report, "host", "irq-remapping").status, Status::Warn);
    }

    /// A VFCT table with one image for `bdf` (bus, device, function) and these IDs.
    fn vfct_table(bdf: (u8, u8, u8), ids: (u16, u16), rom: &[u8]) -> Vec<u8> {
        vfct::build(&[vfct::VfctImage {
            bus: bdf.0,
            device: bdf.1,
            function: bdf.2,
            vendor_id: ids.0,
            device_id: ids.1,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            rom,
        }])
    }

    #[test]
    fn a_vbios_only_in_vfct_is_found_and_the_extract_command_given() {
        let host = ready_host();
        let table = vfct_table((1, 0, 0), (0x1002, 0x6660), &[0x55, 0xaa, 1, 0]);
        let path = host.path("sys/firmware/acpi/tables/VFCT");
        std::fs::write(&path, table).unwrap();
        let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
        let vbios = item(&report, "0000:01:00.0", "vbios");
        assert_eq!(vbios.status, Status::Warn);
        assert!(
            vbios.detail.contains("VFCT table has an image"),
            "{}",
            vbios.detail
        );
        assert!(vbios
            .fix
            .as_ref()
            .unwrap()
            .contains("rom extract --device 0000:01:00.0"));
        assert!(report.ready(), "a VBIOS is not needed for --gpu to start");
        std::fs::remove_file(&path).unwrap();
        let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
        let vbios = item(&report, "0000:01:00.0", "vbios");
        assert!(
            vbios.detail.starts_with("no usable VBIOS"),
            "{}",
            vbios.detail
        );
    }

    #[test]
    fn a_rom_bar_image_is_checked_against_the_device() {
        let host = ready_host();
        // SeaBIOS's VGA BIOS (Debian's seabios, installed with QEMU by the lab's prepare).
        let image = std::fs::read("/usr/share/seabios/vgabios-stdvga.bin")
            .expect("install seabios: apt-get install qemu-system-x86");
        host.pci(FakePci {
            bdf: "0000:00:02.0",
            ids: (0x1234, 0x1111),
            class: 0x030000,
            group: Some(3),
            driver: Some("vfio-pci"),
        });
        host.node("dev/vfio/3", 0o600, 0, 0);
        std::fs::write(host.path("sys/devices/pci0000:00/0000:00:02.0/rom"), &image).unwrap();
        let report = run_on(&host, &["0000:00:02.0"], 1 << 30);
        let vbios = item(&report, "0000:00:02.0", "vbios");
        assert_eq!(vbios.status, Status::Ok, "{}", vbios.detail);
        assert!(
            vbios.detail.contains("valid image for 1234:1111"),
            "{}",
            vbios.detail
        );
        assert_eq!(item(&report, "0000:00:02.0", "reset").status, Status::Warn);
        // The same image on a device with other IDs is not usable for it.
        std::fs::write(host.path("sys/devices/pci0000:00/0000:01:00.0/rom"), &image).unwrap();
        let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
        let vbios = item(&report, "0000:01:00.0", "vbios");
        assert_eq!(vbios.status, Status::Warn);
        assert!(
            vbios
                .detail
                .contains("an image for 1234:1111, not this device"),
            "{}",
            vbios.detail
        );
    }

    #[test]
    fn the_rom_of_a_device_a_vm_holds_is_not_touched() {
        let host = ready_host();
        let reads = std::cell::Cell::new(0);
        let counting_rom = |dir: &Path| {
            reads.set(reads.get() + 1);
            plain_rom(dir)
        };
        let config = DoctorConfig {
            devices: vec!["0000:01:00.0".into()],
            memory: 1 << 30,
        };
        let probes = |in_use: &'static dyn Fn(&Path) -> bool| Probes {
            kvm: &ok_kvm,
            rom: &counting_rom,
            in_use,
        };
        let report = run(&host.root(), probes(&|_| true), &config);
        let vbios = item(&report, "0000:01:00.0", "vbios");
        assert_eq!(vbios.status, Status::Skip);
        assert!(vbios.detail.contains("a VM has the device"));
        assert_eq!(reads.get(), 0, "the ROM was not enabled");
        run(&host.root(), probes(&|_| false), &config);
        assert_eq!(reads.get(), 1, "a free device's ROM is read");
    }

    #[test]
    fn an_unknown_device_fails_with_a_pointer_to_the_listing() {
        let host = ready_host();
        let report = run_on(&host, &["0000:07:00.0"], 1 << 30);
        let device = item(&report, "0000:07:00.0", "device");
        assert_eq!(device.status, Status::Fail);
        assert!(device.fix.as_ref().unwrap().contains("iommu-groups"));
    }
}
