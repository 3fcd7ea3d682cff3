//! Guests and passthrough: the first boot, bad inputs, edu and VGA through VFIO, a root
//! disk, a reboot.

use crate::harness::*;

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn lab_selftest_kvm_and_minivmm_binary_work_in_l1() {
    lab_test("selftest", |run| {
        expect(
            run.field("LAB:SELFTEST", "kvm") == Some("1"),
            "/dev/kvm in L1",
        )?;
        expect(
            run.field("LAB:RESULT minivmm-starts", "rc") == Some("0"),
            "minivmm --help exits 0 in L1",
        )
    });
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn boot_linux_with_one_and_two_vcpus() {
    lab_test("boot", |run| {
        for cpus in [1, 2] {
            let name = format!("boot-cpus={cpus}");
            let section = run.section(&name)?;
            expect(section.has("L2:INIT"), format!("{name}: L2:INIT"))?;
            expect(
                section.has(&format!("L2:NPROC={cpus}")),
                format!("{name}: L2:NPROC={cpus}"),
            )?;
            expect(
                !section.markers("L2:PCI 0000:00:00.0 ").is_empty(),
                format!("{name}: L2 sees the host bridge (L2:PCI 0000:00:00.0 ...)"),
            )?;
            expect(
                !section.markers("L2:RAM 00100000-").is_empty(),
                format!("{name}: RAM from 1 MiB in L2's /proc/iomem"),
            )?;
            if cpus == 2 {
                // 3200M: 3 GiB below the 32-bit hole, 128 MiB from 4 GiB on.
                expect(
                    section.has("L2:RAM 00100000-bfffffff : System RAM")
                        && section.has("L2:RAM 100000000-107ffffff : System RAM"),
                    format!("{name}: RAM split around the 32-bit hole"),
                )?;
            }
            expect(section.has("L2:POWEROFF"), format!("{name}: L2:POWEROFF"))?;
            let rc = section.field("LAB:RESULT", "rc");
            expect(
                rc == Some("0"),
                format!("{name}: minivmm exits 0, got rc={rc:?}"),
            )?;
            if cpus == 1 {
                // minivmm's default console: the MMIO console UART, Linux's ttyS1. Its
                // boot log (about 18,000 bytes) must not cost an exit per LSR read or THR
                // write: on COM1 the same boot makes some 19,700 exits.
                expect(
                    section.has("L2:CONSOLE=ttyS1"),
                    format!("{name}: L2's console is the console UART (ttyS1)"),
                )?;
                let exits = section
                    .markers("vCPU 0: ")
                    .first()
                    .and_then(|line| exit_total(line));
                expect(
                    exits.is_some_and(|n| n < 2000),
                    format!("{name}: fewer than 2000 exits in the whole boot, got {exits:?}"),
                )?;
            } else {
                expect(
                    section.has("L2:CONSOLE=ttyS0"),
                    format!("{name}: L2's console is COM1 (ttyS0)"),
                )?;
            }
        }
        for console in ["com1", "uart"] {
            let name = format!("console-input-{console}");
            let section = run.section(&name)?;
            expect(
                section.has("L2:GOT ping-from-l1"),
                format!("{name}: a line written to minivmm's stdin reached L2's console"),
            )?;
            expect(
                section.field("LAB:RESULT", "rc") == Some("0"),
                format!("{name}: minivmm exits 0"),
            )?;
        }
        // The exit device: `exit 3` in the guest is minivmm's exit status 3.
        let exit = run.section("exit-device")?;
        expect(
            exit.has("L2:EXIT 3") && !exit.has("L2:EXIT-IGNORED") && !exit.has("L2:POWEROFF"),
            format!(
                "exit-device: L2 wrote 3 to port 0xf4 and went no further: {:?}",
                exit.markers("L2:EXIT")
            ),
        )?;
        expect(
            exit.field("LAB:RESULT", "rc") == Some("3")
                && exit.has("LAB:VMM minivmm: the guest wrote 3 to the exit device"),
            format!(
                "exit-device: minivmm exits 3 and says why: {:?} {:?}",
                exit.markers("LAB:RESULT"),
                exit.markers("LAB:VMM")
            ),
        )?;
        Ok(())
    });
}

/// Port plus MMIO exits from an `--exit-stats` line: `vCPU 0: 255 port, 597 mmio, ...`.
fn exit_total(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let count = |unit: &str| {
        let at = words.iter().position(|w| w.trim_end_matches(',') == unit)?;
        words.get(at.checked_sub(1)?)?.parse::<u64>().ok()
    };
    Some(count("port")? + count("mmio")?)
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn bad_inputs_fail_with_one_line_and_no_panic() {
    lab_test("bad-inputs", |run| {
        let cases = run.markers("LAB:BAD ");
        expect(
            cases.len() == 13,
            format!("13 LAB:BAD lines, got {}", cases.len()),
        )?;
        // What the huge-page and disk cases say: what to do.
        for (name, says) in [
            (
                "hugepages-none",
                "needs 128 free 2M huge pages and this host has 0 free of 0; reserve them as root: echo 128 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            ),
            ("hugepages-odd", "not a whole number of 2M huge pages"),
            ("disk-missing", "no such file"),
            ("disk-directory", "is a directory"),
            ("disk-empty", "smaller than one 512-byte sector"),
        ] {
            expect(
                run.markers(&format!("LAB:STDERR {name}: "))
                    .iter()
                    .any(|l| l.contains(says)),
                format!(
                    "{name} says \"{says}\": {:?}",
                    run.markers(&format!("LAB:STDERR {name}: "))
                ),
            )?;
        }
        for case in cases {
            let fields = minivmm_tests::lab::fields(case);
            let rc: i32 = fields
                .get("rc")
                .and_then(|rc| rc.parse().ok())
                .unwrap_or(-1);
            expect(
                (1..128).contains(&rc),
                format!("non-zero exit, not a signal: {case}"),
            )?;
            expect(
                fields.get("panic") == Some(&"0"),
                format!("no panic: {case}"),
            )?;
            expect(
                fields.get("lines") == Some(&"1"),
                format!("exactly one stderr line: {case}"),
            )?;
        }
        Ok(())
    });
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn passthrough_edu_and_vga_with_vfio() {
    lab_test("passthrough", |run| {
        let pt = run.section("passthrough")?;
        expect(
            pt.has("L2:ROOT-MOUNTED /dev/vda")
                && pt
                    .markers("L2:ROOT ")
                    .iter()
                    .any(|l| l.contains("/dev/vda / ext4 rw")),
            format!(
                "L2 runs from its root disk beside the passed-through devices: {:?}",
                pt.markers("L2:ROOT")
            ),
        )?;
        let rc = pt.field("LAB:RESULT", "rc");
        expect(rc == Some("0"), format!("minivmm exits 0, got rc={rc:?}"))?;
        expect(pt.has("L2:POWEROFF"), "L2 powered off")?;
        expect(
            !pt.markers("L2:PCI 0000:01:00.0 0x1234 0x11e8").is_empty()
                && !pt.markers("L2:PCI 0000:02:00.0 0x1234 0x1111").is_empty(),
            "L2 sees edu at 01:00.0 and VGA at 02:00.0, each behind a root port",
        )?;
        let group0 = run.field("LAB:BOUND 0000:00:05.0 ", "group");
        let group1 = run.field("LAB:BOUND 0000:00:05.1 ", "group");
        expect(
            group0.is_some()
                && group0 == group1
                && !pt.markers("L2:PCI 0000:03:00.0 0x1b36 0x0005").is_empty()
                && !pt.markers("L2:PCI 0000:03:00.1 0x1b36 0x0005").is_empty(),
            "both functions of the two-function device (one IOMMU group) are one slot in L2",
        )?;
        for (marker, what) in [
            ("L2:EDU-ID 0x010000ED", "edu's ID register through BAR0"),
            (
                "L2:EDU-LIVENESS 0xEDCBA987",
                "edu inverts the liveness value",
            ),
            ("L2:EDU-FACTORIAL 0x00000078", "edu computes 5! = 0x78"),
            (
                "L2:EDU-DMA 0xCAFE0001 0xBEEF0002",
                "DMA RAM -> edu -> RAM through minivmm's IOMMU mapping",
            ),
            ("L2:VGA-FB readback=1", "framebuffer words read back"),
        ] {
            expect(pt.has(marker), format!("{what} ({marker})"))?;
        }
        expect(
            pt.has("L2:EDU-MSI raised=3 seen=3 proc=3 kind=PCI-MSI"),
            "3 MSI interrupts raised, 3 seen by the guest driver as PCI-MSI",
        )?;
        expect(
            pt.has("LAB:VMM irq 0000:00:01.0 Msi off"),
            "--trace irq shows MSI turned off when the driver unloads",
        )?;
        expect(
            !pt.markers("L2:PCI 0000:04:00.0 0x1af4 0x1044").is_empty(),
            "L2 sees virtio-rng at 04:00.0",
        )?;
        let rng_irqs = pt
            .field("L2:RNG-READ", "irqs")
            .and_then(|n| n.parse::<u64>().ok());
        expect(
            pt.field("L2:RNG-READ", "bytes") == Some("128")
                && pt.field("L2:RNG-READ", "mode") == Some("msix")
                && rng_irqs.is_some_and(|n| n > 0),
            format!(
                "virtio-rng delivers 128 bytes with MSI-X interrupts, got {:?}",
                pt.markers("L2:RNG-READ")
            ),
        )?;
        let intx = pt.field("L2:EDU-INTX", "uio");
        let proc_count = pt.field("L2:EDU-INTX", "proc");
        expect(
            intx == Some("3") && proc_count == Some("3"),
            format!("3 INTx interrupts raised, 3 seen by uio and /proc/interrupts, got uio={intx:?} proc={proc_count:?}"),
        )?;
        for bdf in ["0000:00:01.0 at 01:00.0", "0000:00:02.0 at 02:00.0"] {
            expect(
                // ROM reads always trap (L2 reads VGA's ROM); BAR accesses must not.
                pt.markers(&format!(
                    "LAB:VMM   passthrough {bdf}: 0 trapped BAR accesses, "
                ))
                .len()
                    == 1,
                format!("{bdf}: BAR accesses went through memory slots, no exit"),
            )?;
        }
        expect(
            pt.has("LAB:VMM irq 0000:00:01.0 INTx -> GSI 17 (irqfd with resample)"),
            "--trace irq shows edu's INTx route",
        )?;
        let teardown_errors: Vec<&str> = pt
            .markers("LAB:VMM ")
            .into_iter()
            .filter(|l| l.contains("Could not") || l.contains("VFIO_GROUP") || l.contains("ERROR"))
            .collect();
        expect(
            teardown_errors.is_empty(),
            format!("the two-function group (05.0 + 05.1) is torn down without error lines: {teardown_errors:?}"),
        )?;
        let mdev = run.section("mdev")?;
        expect(
            mdev.field("LAB:RESULT", "rc") == Some("0"),
            "mdev: minivmm exits 0 with an mbochs mediated device",
        )?;
        expect(
            !mdev.markers("L2:PCI 0000:01:00.0 0x1234 0x1111").is_empty()
                && mdev.has("L2:VGA-FB readback=1"),
            "mdev: L2 sees the mediated display and its framebuffer reads back",
        )?;
        let traced = mdev
            .field("LAB:TRACE-PCI", "lines")
            .and_then(|n| n.parse::<u64>().ok());
        expect(
            traced.is_some_and(|n| n > 0)
                && !mdev
                    .markers("LAB:TRACE pci 01:00.0 write off=0x004 len=2 val=")
                    .iter()
                    .filter(|l| l.ends_with(" reg=COMMAND"))
                    .collect::<Vec<_>>()
                    .is_empty(),
            format!(
                "--trace pci logs configuration accesses with register names, got {traced:?} lines"
            ),
        )?;
        // Clean errors, each one line that says what to do.
        for (name, rc, says) in [
            ("not-bound", "1", "vfio-pci"),
            ("no-such-device", "1", "lspci"),
            ("bad-address", "2", "not a PCI address"),
            ("no-permission", "1", "no permission to open /dev/vfio/"),
            ("in-use", "1", "in use"),
            (
                "not-viable",
                "1",
                "0000:00:05.1 (in the same group as 0000:00:05.0) is bound to uio_pci_generic",
            ),
            ("reopen-after-sigterm", "0", ""),
        ] {
            let line = run.field(&format!("LAB:BAD name={name} "), "rc");
            expect(line == Some(rc), format!("{name}: rc={rc}, got {line:?}"))?;
            let lines = run.field(&format!("LAB:BAD name={name} "), "lines");
            let want_lines = if rc == "0" { "0" } else { "1" };
            expect(
                lines == Some(want_lines),
                format!("{name}: {want_lines} stderr line(s), got {lines:?}"),
            )?;
            expect(
                run.has(&format!(
                    "LAB:BAD name={name} rc={rc} lines={want_lines} panic=0"
                )),
                format!("{name}: no panic"),
            )?;
            if !says.is_empty() {
                expect(
                    !run.markers(&format!("LAB:STDERR {name}: minivmm: "))
                        .iter()
                        .filter(|l| l.contains(says))
                        .collect::<Vec<_>>()
                        .is_empty(),
                    format!("{name}: the message mentions `{says}`"),
                )?;
            }
        }
        expect(
            run.field("LAB:RESULT holder", "rc") == Some("143"),
            "the holder minivmm stops on SIGTERM with 143",
        )?;
        let user = run.section("non-root")?;
        expect(
            user.has("LAB:RESULT non-root rc=0")
                && user.has("L2:EDU-ID 0x010000ED")
                && user.has("L2:POWEROFF"),
            format!(
                "a whole passthrough run as uid 1000 (edu's ID read in L2): {:?}",
                user.markers("LAB:")
            ),
        )
    });
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn a_root_disk_on_virtio_blk_keeps_synced_data_verifies_and_refuses_what_it_must() {
    lab_test("disk", |run| {
        let write = run.section("disk-write")?;
        expect(
            write.has("L2:ROOT-MOUNTED /dev/vda")
                && write
                    .markers("L2:ROOT ")
                    .iter()
                    .any(|l| l.contains("/dev/vda / ext4 rw")),
            format!(
                "L2's root filesystem is the virtio-blk disk, read-write ({:?}); {}",
                write.markers("L2:ROOT"),
                ends(&write)
            ),
        )?;
        expect(
            write.has("L2:EDU-ID 0x010000ED"),
            "the passed-through edu works beside the disks",
        )?;
        let synced = need(&write, "L2:SYNCED", "sum")?;
        expect(
            write.field("LAB:RESULT disk-write", "rc") == Some("137"),
            "minivmm was SIGKILLed right after the guest's sync",
        )?;
        expect(
            write.markers("LAB:IMAGE-LINES ").first() == Some(&"LAB:IMAGE-LINES 1"),
            format!(
                "the host image holds the synced file's last line once the VMM is killed: {:?}",
                write.markers("LAB:IMAGE-LINES")
            ),
        )?;
        let check = run.section("disk-check")?;
        expect(
            check.field("L2:KNOWN", "sum") == Some(synced),
            format!(
                "booted again from the image, the file reads back whole: {:?} (synced {synced})",
                check.markers("L2:KNOWN")
            ),
        )?;
        expect(
            check.field("L2:RANDOM", "written") == Some("200")
                && check.field("L2:RANDOM", "good") == Some("200")
                && check.field("L2:RANDOM", "bad") == Some("0"),
            format!(
                "200 random 4 KiB writes read back intact: {:?}",
                check.markers("L2:RANDOM")
            ),
        )?;
        let wrote = need(&check, "L2:SEQUENTIAL", "wrote")?;
        expect(
            check.field("L2:SEQUENTIAL", "read") == Some(wrote),
            "8 MiB written in order reads back intact",
        )?;
        expect(
            check.field("LAB:RESULT disk-check", "rc") == Some("0"),
            "the checking guest powered off and minivmm exited 0",
        )?;
        let ro = run.section("disk-ro")?;
        expect(
            ro.field("L2:RO", "flag") == Some("1")
                && ro.has("L2:RO-WRITE refused")
                && ro.has("L2:RO-SAME yes")
                && ro.field("LAB:RO-IMAGE", "same") == Some("yes"),
            format!(
                "a readonly=on disk is read-only in the guest, its write fails, the image is unchanged: {:?}",
                ro.markers("L2:RO")
            ),
        )?;
        // The test driver's requests: (case, status on the writable disk, on the read-only
        // one). 1 is VIRTIO_BLK_S_IOERR, 2 VIRTIO_BLK_S_UNSUPP.
        let requests = run.section("disk-requests")?;
        let cases = [
            ("short-header", "1", "1"),
            ("read-into-readonly-buffer", "1", "1"),
            ("past-the-end", "1", "1"),
            ("unknown-type", "2", "2"),
            ("write-100-bytes", "1", "1"),
            ("get-id", "0", "0"),
            ("write-sector", "0", "1"),
        ];
        for (dev, ro) in [("virtio0", false), ("virtio1", true)] {
            for (case, rw_status, ro_status) in cases {
                let want = if ro { ro_status } else { rw_status };
                let line = format!("L2:BLKREQ dev={dev} case={case} ");
                expect(
                    requests.field(&line, "status") == Some(want),
                    format!(
                        "{dev} ({}): the test driver's {case} gets status {want}: {:?}; {}",
                        if ro { "read-only" } else { "writable" },
                        requests.markers(&line),
                        ends(&requests)
                    ),
                )?;
            }
        }
        expect(
            requests.has("L2:BLKREQ dev=virtio1 capacity=2048 ro=1")
                && requests.field("LAB:RO-IMAGE-REQUESTS", "same") == Some("yes"),
            "the read-only disk says so, and a write straight to it left the image unchanged",
        )?;
        let busy = run.section("disk-busy")?;
        expect(
            busy.has("LAB:BAD name=busy rc=1 lines=1 panic=0")
                && busy
                    .markers("LAB:STDERR busy: ")
                    .iter()
                    .any(|l| l.contains("is in use by another process")),
            format!(
                "a second minivmm on an image in use is refused in one line: {:?}",
                busy.markers("LAB:")
            ),
        )
    });
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn a_guest_reboot_comes_back_with_its_devices_working_twice() {
    // Three boots, each with RAM cleared and the kernel loaded again: a slow L1 needs
    // more than the usual hard timeout.
    let options = RunOptions {
        timeout: std::time::Duration::from_secs(900),
        ..RunOptions::default()
    };
    lab_test_with("reboot", &options, |run| {
        let l2 = run.section("reboot")?;
        expect(
            l2.field("LAB:RESULT", "rc") == Some("0")
                && l2.field("LAB:RESULT", "boots") == Some("3"),
            format!(
                "three boots in one minivmm run, which then exits 0: {:?}",
                l2.markers("LAB:RESULT")
            ),
        )?;
        expect(
            l2.markers("L2:REBOOTING").len() == 2 && l2.has("L2:POWEROFF"),
            "L2 rebooted twice, then powered off",
        )?;
        // Every boot drives edu again: registers, DMA through the IOMMU, MSI and INTx.
        for (marker, what) in [
            ("L2:EDU-ID 0x010000ED", "edu's ID register"),
            ("L2:EDU-FACTORIAL 0x00000078", "edu computes 5!"),
            ("L2:EDU-DMA 0xCAFE0001 0xBEEF0002", "a DMA round trip"),
            (
                "L2:EDU-MSI raised=3 seen=3 proc=3 kind=PCI-MSI",
                "three MSIs arrive",
            ),
        ] {
            let seen = l2.markers(marker).iter().filter(|l| **l == marker).count();
            expect(
                seen == 3,
                format!("{what} in each of the 3 boots (seen in {seen})"),
            )?;
        }
        let intx_ok = l2
            .markers("L2:EDU-INTX")
            .iter()
            .filter(|l| fields(l).get("uio") == Some(&"3"))
            .count();
        expect(
            intx_ok == 3,
            format!("INTx works in each boot ({intx_ok} of 3)"),
        )?;
        let vmm = l2.markers("LAB:VMM ");
        let count = |text: &str| vmm.iter().filter(|l| l.contains(text)).count();
        expect(
            count("the guest rebooted (a reset request); starting it again") == 2,
            format!("minivmm restarted the guest twice: {vmm:?}"),
        )?;
        // bochs-display and its audio function are reset through their bus at start and at
        // each reboot; edu has no reset.
        expect(
            count(
                "0000:02:00.0: reset: a bus reset (VFIO hot reset of 0000:02:00.0, 0000:02:00.1)",
            ) == 3,
            format!("bochs-display reset through its bus three times: {vmm:?}"),
        )?;
        expect(
            !vmm.iter().any(|l| {
                (l.contains("WARN minivmm") && !l.contains("starting it again"))
                    || l.contains("failed")
            }),
            format!("no other warning from minivmm and no failure: {vmm:?}"),
        )?;
        let doctor = run.markers("LAB:RESET-DOCTOR 0000:02:00.0 ");
        expect(
            doctor
                .iter()
                .any(|l| l.contains("a bus reset through the bridge 0000:00:0a.0")),
            format!("doctor names the bus reset: {doctor:?}"),
        )?;
        Ok(())
    });
}
