//! The machine a GPU expects: root ports, firmware state, large BARs, a GPU with its audio
//! function, and two displays seen lit.

use crate::harness::*;

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn a_gpus_machine_root_ports_firmware_state_large_bars_gpu_and_audio_and_two_displays_lit() {
    run_lab_test(
        "gpu-machine",
        &RunOptions::default(),
        Retry::L1Died,
        gpu_machine_checks,
    );
}

/// The `gpu-machine` scenario: the tree, links, bandwidth, the unbound ROM, the 8 GiB BAR,
/// the GPU + audio pair, and the pictures of both displays (checked by OCR).
fn gpu_machine_checks(run: &LabRun) -> Checked {
    let l2 = run.section("gpu-machine")?;
    let rc = l2.field("LAB:RESULT", "rc");
    expect(
        rc == Some("0") && l2.field("LAB:RESULT", "l2") == Some("poweroff"),
        format!("minivmm exits 0 after L2 powers off, got rc={rc:?}"),
    )?;
    // The tree: five root ports on bus 0 (pcieport takes them), each slot behind its own,
    // edu on bus 0 with bus=root.
    for port in 1..=5 {
        let line = format!(
            "L2:TREE 0000:00:0{port}.0 parent=root id=0x1b36:0x000c class=0x060400 header=01 "
        );
        expect(
            l2.markers(&line)
                .iter()
                .any(|l| l.ends_with("driver=pcieport")),
            format!(
                "root port 00:0{port}.0 on bus 0, bound to pcieport ({:?})",
                l2.markers("L2:TREE 0000:00:")
            ),
        )?;
    }
    for (bdf, parent, id, header, what) in [
        (
            "0000:01:00.0",
            "0000:00:01.0",
            "0x1234:0x1111",
            "80",
            "bochs-display, function 0 of a multi-function slot",
        ),
        (
            "0000:01:00.1",
            "0000:00:01.0",
            "0x8086:0x293e",
            "80",
            "its HD Audio function",
        ),
        (
            "0000:02:00.0",
            "0000:00:02.0",
            "0x1af4:0x1050",
            "00",
            "virtio-gpu, alone in its slot",
        ),
        (
            "0000:03:00.0",
            "0000:00:03.0",
            "0x1b36:0x0005",
            "80",
            "pci-testdev 0b.1 as function 0 (no 0b.0 passed)",
        ),
        (
            "0000:03:00.1",
            "0000:00:03.0",
            "0x1b36:0x0005",
            "80",
            "pci-testdev 0b.2 as function 1",
        ),
        ("0000:04:00.0", "0000:00:04.0", "0x1234:0x1111", "00", "VGA"),
        (
            "0000:05:00.0",
            "0000:00:05.0",
            "0x1af4:0x1110",
            "00",
            "ivshmem",
        ),
        (
            "0000:00:06.0",
            "root",
            "0x1234:0x11e8",
            "00",
            "edu with bus=root",
        ),
    ] {
        let prefix = format!("L2:TREE {bdf} parent={parent} id={id} ");
        let line = l2.markers(&prefix).first().copied().unwrap_or_default();
        expect(
            line.contains(&format!(" header={header} ")),
            format!("{what}: {prefix}... header={header}, got {line:?}"),
        )?;
        // Firmware state at hand-off: memory decoding on, before any driver.
        let command = fields(line)
            .get("command")
            .and_then(|c| u16::from_str_radix(c, 16).ok())
            .unwrap_or(0);
        expect(
            command & 0x2 != 0 && command & 0x4 == 0,
            format!(
                "{what}: memory decoding on, bus mastering off at hand-off (command={command:#x})"
            ),
        )?;
    }
    expect(
        fields(
            l2.markers("L2:TREE 0000:03:00.0 ")
                .first()
                .copied()
                .unwrap_or_default(),
        )
        .get("command")
        .is_some_and(|c| c.ends_with('3')),
        "pci-testdev has an I/O BAR: I/O decoding is on too",
    )?;
    let lspci = l2.markers("L2:LSPCI ");
    for shape in [
        "01.0-[01]--+-00.0",
        "02.0-[02]----00.0",
        "03.0-[03]--+-00.0",
        "05.0-[05]----00.0",
        "\\-06.0",
    ] {
        expect(
            lspci.iter().any(|l| l.contains(shape)),
            format!("lspci -tv draws `{shape}`: {lspci:#?}"),
        )?;
    }
    // Links: each root port shows the link its device has on the host (L1's port above it).
    for (guest, host, what) in [
        (
            "0000:00:01.0",
            "0000:00:0a.0",
            "the port above bochs + audio",
        ),
        ("0000:00:02.0", "0000:00:09.0", "the port above virtio-gpu"),
        ("0000:01:00.0", "0000:02:00.0", "bochs-display's own link"),
        ("0000:02:00.0", "0000:01:00.0", "virtio-gpu's own link"),
    ] {
        for key in ["max", "current"] {
            let l1 = need(run, &format!("LAB:L1LINK {host} "), key)?;
            let l2_value = need(&l2, &format!("L2:LINK {guest} "), key)?;
            expect(
                l1 == l2_value,
                format!("{what}: {key} link {l2_value} in L2, {l1} in L1"),
            )?;
        }
    }
    // pcie_bandwidth_available(): what amdgpu and nouveau ask, the same in L2 as in L1, and
    // limited by the root port above the device in both.
    for (guest, port, host) in [
        ("0000:01:00.0", "0000:00:01.0", "0000:02:00.0"),
        ("0000:02:00.0", "0000:00:02.0", "0000:01:00.0"),
    ] {
        for key in ["mbps", "speed", "width"] {
            let l1 = need(run, &format!("LAB:L1BW {host} "), key)?;
            let l2_value = need(&l2, &format!("L2:BW {guest} "), key)?;
            expect(
                l1 == l2_value,
                format!("{guest}: pcie_bandwidth_available() {key}={l2_value} in L2, {l1} in L1"),
            )?;
        }
        expect(
            need(&l2, &format!("L2:BW {guest} "), "limit")? == port,
            format!("{guest}: the limiting link is its root port's, {port}"),
        )?;
    }
    // The firmware state makes an unbound display's ROM readable through sysfs.
    let md5 = need(run, "LAB:L1ROM ", "md5")?;
    expect(
        l2.has(&format!("L2:ROM-SYSFS 0000:04:00.0 size=39936 md5={md5}")),
        format!(
            "VGA's ROM read through sysfs, no driver, byte-identical: {:?}",
            l2.markers("L2:ROM-SYSFS")
        ),
    )?;
    // An 8 GiB BAR, mapped end to end without a trap.
    let big = l2
        .markers("L2:BIG 0000:05:00.0 ")
        .first()
        .copied()
        .unwrap_or_default();
    expect(
        big.contains("size=8589934592") && big.ends_with("readback=1"),
        format!("ivshmem's 8 GiB BAR written and read back at both ends: {big:?}"),
    )?;
    let start = fields(big)
        .get("start")
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(1);
    expect(
        start.is_multiple_of(8 << 30) && start + (8 << 30) <= 1 << 40,
        format!("the 8 GiB BAR is naturally aligned below L2's 40-bit limit (at {start:#x})"),
    )?;
    expect(
        l2.has(
            "LAB:VMM   passthrough 0000:00:0c.0 at 05:00.0: 0 trapped BAR accesses, 0 ROM accesses",
        ),
        "no access to the 8 GiB BAR trapped",
    )?;
    // Resets: the display that shares its bus with its audio function and has no function
    // reset is reset through the bus (both functions at once); edu on L1's root bus has none.
    let doctor_reset = |bdf: &str| run.markers(&format!("LAB:RESET-DOCTOR {bdf} "));
    expect(
        doctor_reset("0000:02:00.0").iter().any(|l| {
            l.contains(" ok ") && l.contains("a bus reset through the bridge 0000:00:0a.0")
        }),
        format!(
            "doctor names bochs-display's bus reset: {:?}",
            doctor_reset("0000:02:00.0")
        ),
    )?;
    expect(
        doctor_reset("0000:00:01.0")
            .iter()
            .any(|l| l.contains(" warn ") && l.contains("none: ")),
        format!(
            "doctor warns that edu has no reset: {:?}",
            doctor_reset("0000:00:01.0")
        ),
    )?;
    expect(
        doctor_reset("0000:01:00.0")
            .iter()
            .any(|l| l.contains(" ok ") && !l.contains("bus reset through")),
        format!(
            "doctor names virtio-gpu's own reset: {:?}",
            doctor_reset("0000:01:00.0")
        ),
    )?;
    let vmm_resets: Vec<&str> = l2
        .markers("LAB:VMM ")
        .into_iter()
        .filter(|l| l.contains("reset"))
        .collect();
    expect(
        vmm_resets.iter().any(|l| {
            l.contains("0000:02:00.0: reset: a bus reset (VFIO hot reset of 0000:02:00.0, 0000:02:00.1)")
        }) && vmm_resets
            .iter()
            .any(|l| l.contains("0000:01:00.0: reset: ") && !l.contains("bus reset ("))
            && vmm_resets
                .iter()
                .any(|l| l.contains("0000:00:01.0: not reset: ")),
        format!("minivmm resets bochs-display and its audio through their bus, virtio-gpu alone, not edu: {vmm_resets:?}"),
    )?;
    // GPU + audio: the audio function on snd_hda_intel next to its display on bochs-drm.
    expect(
        l2.has("L2:DRIVER 0000:01:00.1 snd_hda_intel"),
        format!(
            "snd_hda_intel binds the audio function: {:?}",
            l2.markers("L2:DRIVER")
        ),
    )?;
    // The displays: each lit by the guest's DRM driver, its picture taken and read back.
    for (name, device, driver, words) in [
        (
            "bochs",
            "0000:01:00.0",
            "bochs-drm",
            "DISPLAY bochs DRIVEN BY bochs",
        ),
        (
            "virtio",
            "0000:02:00.0",
            "virtio-pci",
            "DISPLAY virtio DRIVEN BY virtio_gpu",
        ),
    ] {
        let ready = format!("L2:SCREEN-READY name={name} device={device} ");
        expect(
            l2.markers(&ready)
                .iter()
                .any(|l| l.contains("mode=1280,800") && l.ends_with(&format!("driver={driver}"))),
            format!(
                "{name}: the guest's driver lit {device} at 1280x800: {:?}",
                l2.markers("L2:SCREEN-READY")
            ),
        )?;
        expect(
            l2.has(&format!("LAB:SHOT name={name} answer=ok")),
            format!("{name}: the harness took the picture"),
        )?;
        let picture = run
            .pictures
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("{name}: a picture was asked for"))?;
        let file = picture.1.as_ref().map_err(|e| format!("{name}: {e}"))?;
        let text = minivmm_tests::lab::read_text(file)?;
        for expected in ["MINIVMM GUEST CONSOLE", words, "LIT 4711"] {
            expect(
                text.contains(expected),
                format!(
                    "{name}: `{expected}` on L1's display ({}), OCR read {text:?}",
                    file.display()
                ),
            )?;
        }
    }
    // A BAR that cannot fit is refused before anything is opened.
    check_bad(run, "big-bar-no-room", "1", "BAR 2 (8 GiB) does not fit below the guest's physical address limit of 1 TiB (40 address bits")
}
