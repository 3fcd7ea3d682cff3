//! The checklist against fake hosts.

use super::*;
use crate::host::fake::{FakeHost, FakePci};
use minivmm_firmware::acpi::vfct;

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
        .file(
            "proc/cpuinfo",
            "processor\t: 0\nflags\t\t: fpu vme svm sse2\naddress sizes\t: 39 bits physical, 48 bits virtual\n",
        )
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
        .file("sys/devices/pci0000:00/0000:01:00.0/reset_method", "flr bus\n")
        .file("sys/devices/pci0000:00/0000:01:00.0/resource", GPU_RESOURCE);
    host
}

/// The GPU's BARs: 256 MiB 64-bit prefetchable BAR 0, 256 KiB BAR 2.
const GPU_RESOURCE: &str = "\
0x000000e000000000 0x000000e00fffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x00000000fe600000 0x00000000fe63ffff 0x0000000000040200
";

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
        "FLR (function-level reset); the kernel falls back to bus"
    );
    assert_eq!(
        item(&report, "host", "address width").detail,
        "39 bits: guest RAM and every BAR stay below 512 GiB"
    );
    assert_eq!(
        item(&report, "0000:01:00.0", "BARs").detail,
        "largest BAR 0, 256 MiB 64-bit prefetchable; all fit a 4096 MiB guest below the 39-bit address limit"
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
fn a_vbios_only_in_vfct_is_ready_for_rom_auto_and_a_bad_one_explained() {
    let host = ready_host();
    // A valid image for the device at its address: --gpu BDF serves it by itself.
    let good = vfct_table(
        (1, 0, 0),
        (0x1002, 0x6660),
        &crate::rom_tool::tests::image(),
    );
    let path = host.path("sys/firmware/acpi/tables/VFCT");
    std::fs::write(&path, good).unwrap();
    let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
    let vbios = item(&report, "0000:01:00.0", "vbios");
    assert_eq!(vbios.status, Status::Ok);
    assert!(
        vbios.detail.starts_with("ready")
            && vbios
                .detail
                .contains("--gpu 0000:01:00.0 serves the image from the host's ACPI VFCT table"),
        "{}",
        vbios.detail
    );
    // One that is not valid: named, with the manual steps.
    let table = vfct_table((1, 0, 0), (0x1002, 0x6660), &[0x55, 0xaa, 1, 0]);
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
fn an_atrm_only_host_is_explained_and_amdgpus_copy_then_named() {
    let host = ready_host();
    host.file("sys/firmware/acpi/tables/SSDT4", "SSDT..ATRM..");
    let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
    let vbios = item(&report, "0000:01:00.0", "vbios");
    assert_eq!(vbios.status, Status::Warn);
    assert!(
        vbios.detail.contains("an ATRM method (SSDT4)"),
        "{}",
        vbios.detail
    );
    let fix = vbios.fix.clone().unwrap_or_default();
    assert!(fix.starts_with("bind amdgpu to 0000:01:00.0"), "{fix}");
    // With amdgpu bound (its debugfs copy there), the copy is the source to extract.
    host.file(
        "sys/kernel/debug/dri/0/name",
        "amdgpu dev=0000:01:00.0 unique=0000:01:00.0\n",
    );
    let copy = host.path("sys/kernel/debug/dri/0/amdgpu_vbios");
    std::fs::write(&copy, crate::rom_tool::tests::image()).unwrap();
    let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
    let vbios = item(&report, "0000:01:00.0", "vbios");
    assert_eq!(vbios.status, Status::Ok, "rom=auto serves amdgpu's copy");
    assert!(
        vbios.detail.starts_with("ready")
            && vbios
                .detail
                .contains("serves the image from amdgpu's copy in debugfs (2 KiB)"),
        "{}",
        vbios.detail
    );
    // A copy for another device is not offered.
    std::fs::write(&copy, [0x55u8, 0xaa, 0, 0]).unwrap();
    let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
    assert!(item(&report, "0000:01:00.0", "vbios")
        .detail
        .contains("ATRM method"));
}

/// QEMU's std VGA (1234:1111, class 0300) at 00:02.0, on vfio-pci alone in group 3.
fn std_vga(host: &FakeHost) {
    host.pci(FakePci {
        bdf: "0000:00:02.0",
        ids: (0x1234, 0x1111),
        class: 0x030000,
        group: Some(3),
        driver: Some("vfio-pci"),
    });
    host.node("dev/vfio/3", 0o600, 0, 0);
}

#[test]
fn doctor_says_whether_vga_on_is_possible_for_a_vga_device_only() {
    let host = ready_host();
    std_vga(&host);
    let vga = |report: &Report| item(report, "0000:00:02.0", "vga").clone();
    let report = run_on(&host, &["0000:00:02.0"], 1 << 30);
    assert_eq!(vga(&report).status, Status::Skip);
    assert!(
        vga(&report).detail.contains("CONFIG_VFIO_PCI_VGA"),
        "{}",
        vga(&report).detail
    );
    host.file("sys/module/vfio_pci/parameters/disable_vga", "Y\n");
    let report = run_on(&host, &["0000:00:02.0"], 1 << 30);
    assert!(
        vga(&report).detail.contains("disable_vga=0"),
        "{}",
        vga(&report).detail
    );
    host.file("sys/module/vfio_pci/parameters/disable_vga", "N\n");
    let report = run_on(&host, &["0000:00:02.0"], 1 << 30);
    assert_eq!(vga(&report).status, Status::Ok);
    // A display controller that is not VGA-compatible (0380) has no vga item.
    let report = run_on(&host, &["0000:01:00.0"], 1 << 30);
    assert!(!report
        .checks
        .iter()
        .any(|c| c.scope == "0000:01:00.0" && c.item == "vga"));
}

#[test]
fn a_rom_bar_image_is_checked_against_the_device() {
    let host = ready_host();
    // SeaBIOS's VGA BIOS (Debian's seabios, installed with QEMU by the lab's prepare).
    let image = std::fs::read("/usr/share/seabios/vgabios-stdvga.bin")
        .expect("install seabios: apt-get install qemu-system-x86");
    std_vga(&host);
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

#[test]
fn a_bar_the_address_width_cannot_hold_fails_with_its_size_and_the_limit() {
    let host = ready_host();
    host.file(
        "proc/cpuinfo",
        "flags\t\t: svm\naddress sizes\t: 36 bits physical, 48 bits virtual\n",
    )
    .file(
        "sys/devices/pci0000:00/0000:01:00.0/resource",
        "0x0000004000000000 0x00000047ffffffff 0x000000000014220c\n",
    );
    // 32 GiB BAR 0, naturally aligned: with 32 GiB of RAM (up to 33 GiB) the next place for
    // it is 64 GiB, the limit itself.
    let report = run_on(&host, &["0000:01:00.0"], 32 << 30);
    let bars = item(&report, "0000:01:00.0", "BARs");
    assert_eq!(bars.status, Status::Fail);
    assert!(
        bars.detail.contains("BAR 0 (32 GiB)") && bars.detail.contains("64 GiB (36 address bits"),
        "{}",
        bars.detail
    );
    assert!(bars.fix.as_deref().is_some_and(|f| f.contains("--memory")));
    assert!(!report.ready());
    // With 16 GiB (up to 17 GiB) it fits at 32-64 GiB.
    let report = run_on(&host, &["0000:01:00.0"], 16 << 30);
    assert_eq!(item(&report, "0000:01:00.0", "BARs").status, Status::Ok);
}

#[test]
fn an_unknown_address_width_is_a_warning() {
    let host = ready_host();
    host.file("proc/cpuinfo", "flags\t\t: svm\n");
    let report = run_on(&host, &["0000:01:00.0"], 4 << 30);
    assert_eq!(item(&report, "host", "address width").status, Status::Warn);
    assert_eq!(item(&report, "0000:01:00.0", "BARs").status, Status::Warn);
    assert!(report.ready());
}

#[test]
fn a_bus_reset_that_would_reset_a_function_of_another_group_is_a_warning() {
    let host = ready_host();
    let port = "sys/devices/pci0000:00/0000:00:03.1";
    let gpu = FakePci {
        bdf: "0000:05:00.0",
        ids: (0x1002, 0x73bf),
        class: 0x030000,
        group: Some(20),
        driver: Some("vfio-pci"),
    };
    host.pci_at(port, gpu).node("dev/vfio/20", 0o600, 0, 0);
    host.pci_at(
        port,
        FakePci {
            bdf: "0000:05:00.1",
            class: 0x040300,
            ..gpu
        },
    );
    let report = run_on(&host, &["0000:05:00.0"], 1 << 30);
    let reset = item(&report, "0000:05:00.0", "reset");
    assert_eq!(reset.status, Status::Ok, "one group: minivmm holds both");
    assert!(
        reset
            .detail
            .contains("bus reset through the bridge 0000:00:03.1"),
        "{}",
        reset.detail
    );
    // The audio function in a group of its own: the reset needs it passed too.
    let host = ready_host();
    host.pci_at(port, gpu).node("dev/vfio/20", 0o600, 0, 0);
    host.pci_at(
        port,
        FakePci {
            bdf: "0000:05:00.1",
            class: 0x040300,
            group: Some(21),
            ..gpu
        },
    );
    let report = run_on(&host, &["0000:05:00.0"], 1 << 30);
    let reset = item(&report, "0000:05:00.0", "reset");
    assert_eq!(reset.status, Status::Warn, "{}", reset.detail);
    assert!(
        reset
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("pass 0000:05:00.1 with --gpu")),
        "{:?}",
        reset.fix
    );
}
