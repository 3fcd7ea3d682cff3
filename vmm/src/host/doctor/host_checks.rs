//! The host's items: KVM, CPU virtualization, the IOMMU, interrupt remapping, the VFIO
//! modules, `/dev/vfio/vfio`, the locked-memory limit, the physical address width.

use std::path::Path;

use minivmm_devices::pci::resources::human;

use super::{Check, Host, Status};
use crate::host::{memlock_limit, Credentials};

pub(super) fn host_check(item: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        scope: "host".into(),
        item,
        status,
        detail: detail.into(),
        fix: None,
    }
}

pub(super) fn with_fix(mut check: Check, fix: impl Into<String>) -> Check {
    check.fix = Some(fix.into());
    check
}

/// Whether the current user may open a device node for reading and writing.
pub(super) fn node_access(host: &Host, node: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(node).map_err(|_| "missing".to_string())?;
    match &host.creds {
        Some(creds) if creds.may_read_write(&meta) => Ok(()),
        Some(_) => Err("no permission".into()),
        None => Err("cannot tell who minivmm runs as (/proc/self/status)".into()),
    }
}

pub(super) fn check_kvm(host: &Host) -> Check {
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

pub(super) fn check_cpu(host: &Host, kvm_ok: bool) -> Check {
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

pub(super) fn check_iommu(host: &Host) -> Check {
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

pub(super) fn check_interrupt_remapping(host: &Host) -> Check {
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

pub(super) fn check_module(host: &Host, module: &'static str) -> Check {
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

pub(super) fn check_vfio_node(host: &Host) -> Check {
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

pub(super) fn check_memlock(host: &Host, memory: u64) -> Check {
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

/// Free huge pages of each size, and whether `memory` of guest RAM fits in them
/// (`--memory SIZE,hugepages=on`). Optional: a shortfall is `Skip` with the fix, never a
/// failure.
pub(super) fn check_hugepages(host: &Host, memory: u64) -> Check {
    use crate::hugepages::{self, HugePageSize};
    let sysfs = host.root.path("sys");
    let sizes = [HugePageSize::Size2M, HugePageSize::Size1G];
    let pools: Vec<_> = sizes
        .iter()
        .filter_map(|&size| hugepages::pool(&sysfs, size))
        .collect();
    let listed = pools
        .iter()
        .map(|p| format!("{}: {} free of {}", p.size, p.free, p.total))
        .collect::<Vec<_>>()
        .join(", ");
    let mib = memory >> 20;
    let fits = pools
        .iter()
        .find(|p| memory.is_multiple_of(p.size.bytes()) && p.free >= memory / p.size.bytes());
    match (fits, pools.first()) {
        (Some(pool), _) => host_check(
            "huge pages",
            Status::Ok,
            format!(
                "{listed}: --memory {mib}M,hugepages=on,hugepage-size={} fits",
                pool.size
            ),
        ),
        (None, Some(_)) => {
            let fix = hugepages::check_pool(&sysfs, memory, HugePageSize::Size2M)
                .err()
                .unwrap_or_default();
            with_fix(
                host_check(
                    "huge pages",
                    Status::Skip,
                    format!("{listed}: too few for --memory {mib}M,hugepages=on (optional)"),
                ),
                fix,
            )
        }
        (None, None) => host_check(
            "huge pages",
            Status::Skip,
            "this kernel offers none (no /sys/kernel/mm/hugepages): hugepages=on is not possible",
        ),
    }
}

pub(super) fn check_address_width(host: &Host) -> Check {
    match host.address_bits {
        Some(bits) => host_check(
            "address width",
            Status::Ok,
            format!(
                "{bits} bits: guest RAM and every BAR stay below {}",
                human(1u64.checked_shl(u32::from(bits)).unwrap_or(u64::MAX))
            ),
        ),
        None => host_check(
            "address width",
            Status::Warn,
            "unknown (no `address sizes` in /proc/cpuinfo): large BARs may not fit",
        ),
    }
}
