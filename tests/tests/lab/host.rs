//! The host tools: doctor, iommu-groups, bind and `--managed`, and the host left as found
//! however the VM process ends.

use crate::harness::*;

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn doctor_iommu_groups_bind_and_managed_runs_prepare_and_restore_the_host() {
    // One guest per L1 (see the scenario): the tools and a normal --managed run, then a
    // --managed run stopped by SIGTERM, then --managed=group.
    let part = |name| RunOptions::default().param("part", name);
    lab_test_with("host-tools", &part("tools"), host_tools_checks);
    lab_test_with("host-tools", &part("sigterm"), host_sigterm_checks);
    lab_test_with("host-tools", &part("group"), host_group_checks);
    lab_test_with("host-tools", &part("faults"), host_faults_checks);
    lab_test_with("host-tools", &part("sandbox"), host_sandbox_checks);
}

/// `host-tools` part `faults`: however the VM process ends, edu goes back.
fn host_faults_checks(run: &LabRun) -> Checked {
    let edu = "0000:00:01.0";
    let said = |name: &str, text: &str| output(run, name).iter().any(|l| l.contains(text));
    expect(
        run.has("LAB:RC managed-bad-rom rc=1")
            && said("managed-bad-rom", "/tmp/bad.rom")
            && driver_at(run, "after-bad-rom", edu) == Some("uio_pci_generic"),
        format!(
            "a bad rom= is refused before --managed moves the device: {:?}",
            output(run, "managed-bad-rom")
        ),
    )?;
    expect(
        run.has("LAB:RC managed-panic rc=134")
            && said("managed-panic", "test fault: vCPU 0 panics")
            && said("managed-panic", "killed by signal 6 (it aborted: a panic)")
            && driver_at(run, "after-panic", edu) == Some("uio_pci_generic"),
        format!(
            "a panic in the VM process (an abort) still gives the device back: {:?}",
            output(run, "managed-panic")
        ),
    )?;
    expect(
        run.has("LAB:RC managed-seccomp rc=1")
            && said(
                "managed-seccomp",
                "thread vcpu0 made system call 41 (socket)",
            )
            && driver_at(run, "after-seccomp", edu) == Some("uio_pci_generic"),
        format!(
            "a seccomp kill names the thread and the call, and the device goes back: {:?}",
            output(run, "managed-seccomp")
        ),
    )?;
    expect(
        driver_at(run, "during-build", edu) == Some("vfio-pci")
            && run.has("LAB:RESULT managed-sigterm-build rc=143")
            && driver_at(run, "after-sigterm-build", edu) == Some("uio_pci_generic"),
        format!(
            "SIGTERM while the kernel loads: exit 143 and the device back: {:?}",
            output(run, "managed-sigterm-build")
        ),
    )
}

/// `host-tools` part `sandbox`: the VM process of a --managed run is not root, has no
/// capabilities, runs under seccomp, and cannot write sysfs; the supervisor stays root.
fn host_sandbox_checks(run: &LabRun) -> Checked {
    let edu = "0000:00:01.0";
    let sandbox = run.section("managed-sandbox")?;
    for (line, what) in [
        (
            "LAB:STATUS vm Uid: 65534 65534 65534 65534",
            "runs as nobody",
        ),
        (
            "LAB:STATUS vm CapEff: 0000000000000000",
            "has no capabilities",
        ),
        ("LAB:STATUS vm NoNewPrivs: 1", "cannot gain privileges"),
        ("LAB:STATUS vm Seccomp: 2", "runs under seccomp filters"),
        (
            "LAB:STATUS supervisor Uid: 0 0 0 0",
            "(the supervisor stays root)",
        ),
    ] {
        expect(
            sandbox.has(line),
            format!("the VM process {what}: {:?}", sandbox.markers("LAB:STATUS")),
        )?;
    }
    expect(
        sandbox
            .markers("LAB:VMM minivmm: test fault: cannot write /sys/bus/pci/drivers_probe: Permission denied")
            .len()
            == 1,
        format!("the VM process cannot write sysfs: {:?}", sandbox.markers("LAB:VMM")),
    )?;
    expect(
        driver_at(run, "during-sandbox", edu) == Some("vfio-pci")
            && sandbox.has("L2:EDU-ID 0x010000ED")
            && sandbox.has("LAB:RESULT managed-sandbox rc=0")
            && driver_at(run, "after-sandbox", edu) == Some("uio_pci_generic"),
        format!(
            "the sandboxed guest uses edu, exits 0 and edu goes back: {:?}",
            sandbox.markers("LAB:")
        ),
    )
}

/// `host-tools` part `tools`: iommu-groups, doctor, bind/unbind, --managed runs that fail
/// and one that boots.
fn host_tools_checks(run: &LabRun) -> Checked {
    let edu = "0000:00:01.0";
    expect(
        driver_at(run, "start", edu) == Some("uio_pci_generic"),
        "edu starts on a host driver (uio_pci_generic)",
    )?;
    // iommu-groups: every emulated device, with names from the PCI ID database.
    let groups = output(run, "groups");
    expect(
        run.has("LAB:RC groups rc=0")
            && groups.iter().any(|l| {
                l.contains("0000:00:05.1") && l.contains("Red Hat, Inc. QEMU PCI Test Device")
            })
            && groups
                .iter()
                .any(|l| l.contains("Virtio 1.0 RNG [1af4:1044]"))
            && groups.iter().any(|l| {
                l.contains("0000:00:08.0")
                    && l.contains("VGA compatible controller [0300]: Advanced Micro Devices")
            })
            && groups
                .iter()
                .any(|l| l.contains(edu) && l.contains("driver: uio_pci_generic")),
        format!("iommu-groups lists L1's devices with names and drivers: {groups:?}"),
    )?;
    expect(
        run.markers("LAB:GROUPS-JSON ")
            .iter()
            .any(|l| l.ends_with(" edu=1") && !l.contains("addresses=0 ")),
        format!(
            "iommu-groups --json lists edu: {:?}",
            run.markers("LAB:GROUPS-JSON")
        ),
    )?;
    // doctor: fails on the driver, with the fix, then passes after bind.
    let before = output(run, "doctor-before");
    expect(
        run.has("LAB:RC doctor-before rc=1")
            && before
                .iter()
                .any(|l| l.contains("FAIL  driver          uio_pci_generic, not vfio-pci"))
            && before
                .iter()
                .any(|l| l.contains(&format!("fix: minivmm bind {edu}")))
            && before
                .iter()
                .any(|l| l.contains("ok    iommu ") && l.contains("dmar0"))
            && before.iter().any(|l| l.contains("ok    irq-remapping"))
            && before
                .iter()
                .any(|l| l.contains(&format!("not ready for --gpu {edu}: 1 problem"))),
        format!("doctor before bind: exit 1, the driver item fails with the bind fix: {before:?}"),
    )?;
    expect(
        run.has("LAB:DOCTOR-JSON rc=1 ready=false fails=1"),
        format!(
            "doctor --json says not ready: {:?}",
            run.markers("LAB:DOCTOR-JSON")
        ),
    )?;
    let vga = output(run, "doctor-vga");
    expect(
        vga.iter().any(|l| {
            l.contains("ok    vbios           the ROM BAR holds a valid image for 1234:1111")
        }) && vga
            .iter()
            .any(|l| l.contains("warn  vbios           no usable VBIOS"))
            && vga.iter().any(|l| l.contains("warn  boot display")),
        format!(
            "doctor finds VGA's ROM, none for bochs-display, and VGA as the boot display: {vga:?}"
        ),
    )?;
    expect(
        output(run, "bind") == [format!("{edu}: moved from uio_pci_generic to vfio-pci")]
            && driver_at(run, "bound", edu) == Some("vfio-pci"),
        "minivmm bind moves edu to vfio-pci",
    )?;
    let after = output(run, "doctor-after");
    expect(
        run.has("LAB:RC doctor-after rc=0")
            && after
                .iter()
                .any(|l| l.contains("ok    group node      /dev/vfio/"))
            && after
                .last()
                .is_some_and(|l| *l == format!("ready for --gpu {edu}")),
        format!("doctor after bind: exit 0, ready: {after:?}"),
    )?;
    expect(
        driver_at(run, "unbound", edu) == Some("uio_pci_generic"),
        "minivmm unbind gives edu back to uio_pci_generic",
    )?;
    // --managed: on vfio-pci during the run, back on its driver after it, however it ends.
    let managed = run.section("managed-run")?;
    expect(
        driver_at(run, "during-managed-run", edu) == Some("vfio-pci")
            && managed.has("L2:EDU-ID 0x010000ED")
            && managed.has("LAB:RESULT managed-run rc=0")
            && driver_at(run, "after-managed-run", edu) == Some("uio_pci_generic"),
        format!(
            "--managed run: bound, L2 read edu, restored ({:?})",
            managed.markers("LAB:")
        ),
    )?;
    // A --managed run that fails: exit 1, its message, and edu back on (or still on) its driver.
    let managed_failure = |case: &str, says: &str, after: &str, what: &str| {
        expect(
            run.has(&format!("LAB:RC {case} rc=1"))
                && output(run, case).iter().any(|l| l.contains(says))
                && driver_at(run, after, edu) == Some("uio_pci_generic"),
            format!("--managed {what} ({:?})", output(run, case)),
        )
    };
    managed_failure(
        "managed-error",
        "--cpus 9999",
        "after-error",
        "and a build that fails after binding: exit 1, restored",
    )?;
    managed_failure(
        "managed-no-kernel",
        "cannot read kernel /nonexistent",
        "after-no-kernel",
        "with a missing kernel: exit 1 before anything is bound",
    )?;
    // A group: --managed moves only the named function; --managed=group both.
    let (mf0, mf1) = ("0000:00:05.0", "0000:00:05.1");
    expect(
        output(run, "doctor-group").iter().any(|l| {
            l.contains(&format!(
                "FAIL  group viable    {mf1} is on uio_pci_generic"
            ))
        }),
        "doctor names the group member on a host driver",
    )?;
    expect(
        run.has("LAB:RC managed-not-viable rc=1")
            && output(run, "managed-not-viable")
                .iter()
                .any(|l| l.contains("not viable"))
            && driver_at(run, "after-not-viable", mf0) == Some("uio_pci_generic")
            && driver_at(run, "after-not-viable", mf1) == Some("uio_pci_generic"),
        format!(
            "--managed leaves the other function alone, VFIO refuses, both restored: {:?}",
            output(run, "managed-not-viable")
        ),
    )?;
    Ok(())
}

/// `host-tools` part `sigterm`: a --managed run stopped by SIGTERM gives the device back.
fn host_sigterm_checks(run: &LabRun) -> Checked {
    let (rng, term) = ("0000:00:06.0", run.section("managed-sigterm")?);
    expect(
        driver_at(run, "start", rng) == Some("uio_pci_generic")
            && driver_at(run, "during-managed-sigterm", rng) == Some("vfio-pci")
            && term.has("LAB:RESULT managed-sigterm rc=143")
            && driver_at(run, "after-managed-sigterm", rng) == Some("uio_pci_generic"),
        format!(
            "--managed and SIGTERM: exit 143, restored ({:?})",
            term.markers("LAB:")
        ),
    )
}

/// `host-tools` part `group`: --managed=group moves both functions of pci-testdev and
/// gives both back.
fn host_group_checks(run: &LabRun) -> Checked {
    let (mf0, mf1) = ("0000:00:05.0", "0000:00:05.1");
    expect(
        run.has("LAB:RC managed-group rc=0")
            && driver_at(run, "after-group", mf0) == Some("uio_pci_generic")
            && driver_at(run, "after-group", mf1) == Some("uio_pci_generic"),
        format!(
            "--managed=group boots with the group on vfio-pci and restores both: {:?}",
            output(run, "managed-group")
        ),
    )
}
