//! Tests in the nested lab: minivmm boots Linux inside an L1 guest that runs under QEMU TCG.
//! Each takes minutes and needs root, QEMU and `tests/lab/prepare`: run them with `tests/run`.
//! A missing prerequisite fails the test with what to run; it never passes.
//!
//! L1 runs on TCG's emulation of AMD SVM, which under QEMU 7.2 broke about every other
//! second guest in one L1; the lab needs QEMU 10 (see `tests/lab/prepare`). A scenario runs
//! again only when L1 itself died (its kernel crashed, locked up or froze in its own boot)
//! or the reference guest QEMU ran beside minivmm's died before /init, and the benchmarks
//! also when the only miss is a timing target; a failed check of a minivmm guest fails the
//! test at once. Every
//! failed attempt is printed in full (docs/ARCHITECTURE.md, "The lab's QEMU").

use minivmm_tests::lab::{fields, End, Lab, LabRun, Markers, RunOptions, L1_FROZE};

/// The outcome of a scenario's checks: `Err` says which expectation failed.
type Checked = Result<(), String>;

/// `Err(what)` unless `ok`.
fn expect(ok: bool, what: impl Into<String>) -> Checked {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// The last lines of a section on one line, for a failure message: CI may show only the
/// end of the output, where tests/run repeats each failure's first line.
fn ends(section: &impl Markers) -> String {
    section
        .tail(8)
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What every scenario must show: L1 came up with /dev/kvm, ran the scenario to its end and
/// powered off by itself.
fn check_l1(run: &LabRun) -> Checked {
    expect(run.l1_up.is_some(), "L1 printed LAB:L1-UP")?;
    expect(run.has("LAB:KVM ok"), "L1 has /dev/kvm")?;
    expect(run.done_rc().is_some(), "the scenario finished (LAB:DONE)")?;
    expect(run.end == End::Exited(Some(0)), "L1 powered off by itself")?;
    // A guest that triple-faults, or panics (panic=-1), is restarted by default: in the lab
    // that is a failed guest, not a pass on its second boot. Only the reboot scenario
    // reboots on purpose.
    let mut restarted = run.markers("restarting the guest (--no-reboot stops instead)");
    if run.scenario != "reboot" {
        restarted.extend(run.markers("starting it again"));
    }
    expect(
        restarted.is_empty(),
        format!("no minivmm guest was restarted unasked: {restarted:?}"),
    )
}

/// How many times a scenario runs before its failure counts.
const ATTEMPTS: usize = 3;

/// When a failed attempt may run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Only when L1 itself died ([`l1_died`]): a check that fails in a scenario that ran to
    /// its end is minivmm's failure, never retried.
    L1Died,
    /// A benchmark: also when the only failure is a timing target ([`TIMING`]) — the
    /// lab's speed moves by a quarter from one L1 to the next — never when a guest failed.
    L1DiedOrTiming,
}

/// How a benchmark's timing-target failure starts, so that [`Retry::L1DiedOrTiming`] can
/// tell it from a failed guest.
const TIMING: &str = "timing target: ";

/// Run `scenario` and `checks` on it; a failed check fails the test, and only an L1 that
/// died ([`l1_died`]) is run again (up to [`ATTEMPTS`] in all). Each failure is printed.
fn lab_test(scenario: &str, checks: impl Fn(&LabRun) -> Checked) -> LabRun {
    lab_test_with(scenario, &RunOptions::default(), checks)
}

/// [`lab_test`] with `lab.KEY=VALUE` parameters.
fn lab_test_with(
    scenario: &str,
    options: &RunOptions,
    checks: impl Fn(&LabRun) -> Checked,
) -> LabRun {
    run_lab_test(scenario, options, Retry::L1Died, checks)
}

/// Why L1 itself died, if its logs say it did: the scenario never reached `LAB:DONE`, and
/// L1's kernel crashed or locked up (a lockup is also what the watchdog kills L1 for), or L1
/// froze in its own boot — killed by the watchdog before its init printed `LAB:L1-UP`, when
/// no minivmm had run yet — or froze later: its heartbeat stopped with its console (the
/// watchdog's [`L1_FROZE`]), so not even a shell's `sleep` loop ran in it. A scenario that
/// hangs in a live L1 keeps the beat and is never excused. L2's own kernel messages reach
/// L1's log only through a scenario that then goes on to its end.
fn l1_died(run: &LabRun) -> Option<String> {
    if run.done_rc().is_some() {
        return None;
    }
    if let (None, End::Killed(why)) = (run.l1_up, &run.end) {
        return Some(format!(
            "L1 froze in its own boot, before LAB:L1-UP ({why})"
        ));
    }
    if let End::Killed(why) = &run.end {
        if why.starts_with(L1_FROZE) {
            return Some(why.clone());
        }
    }
    const CRASHES: [&str; 7] = [
        "Kernel panic",
        "BUG: ",
        "Oops: ",
        "general protection fault",
        "stack guard page was hit",
        "soft lockup",
        "hard LOCKUP",
    ];
    let crash = run
        .text()
        .lines()
        .find(|line| CRASHES.iter().any(|c| line.contains(c)));
    crash.map(|line| format!("L1's kernel: {}", line.trim()))
}

/// How a check says that the reference guest QEMU ran in the same L1 died before it got
/// anywhere (L1's nested paging breaks about one L2 boot in thirty under either VMM:
/// docs/ARCHITECTURE.md, "The lab's QEMU"). That is the lab's failure, like L1 dying, and
/// the attempt runs again; a minivmm guest's failure never is.
const QEMU_GUEST_DIED: &str = "lab: QEMU's reference guest died: ";

/// Run `scenario` and `checks` on it; a failed attempt runs again (up to [`ATTEMPTS`] in
/// all) as `retry` allows. Each failure is printed in full.
fn run_lab_test(
    scenario: &str,
    options: &RunOptions,
    retry: Retry,
    checks: impl Fn(&LabRun) -> Checked,
) -> LabRun {
    let lab = Lab::locate().unwrap_or_else(|e| panic!("cannot run the lab: {e}"));
    for attempt in 1..=ATTEMPTS {
        let run = lab
            .run(scenario, options)
            .unwrap_or_else(|e| panic!("lab {scenario}: {e}"));
        println!("{}", run.summary());
        let Err(what) = check_l1(&run).and_then(|()| checks(&run)) else {
            return run;
        };
        // The next attempt writes the same log: keep this one for whoever reads the failure.
        let kept = run
            .log_path
            .with_extension(format!("attempt-{attempt}.log"));
        let kept = match std::fs::copy(&run.log_path, &kept) {
            Ok(_) => format!("kept as {}", kept.display()),
            Err(e) => format!("not kept: {e}"),
        };
        let kept_pulse = run
            .pulse_path
            .with_extension(format!("attempt-{attempt}.log"));
        let _ = std::fs::copy(&run.pulse_path, &kept_pulse);
        let report = format!(
            "lab {scenario}: attempt {attempt} of {ATTEMPTS} FAILED: expected: {what}\n--- last console lines of {} ({kept}) ---\n{}\n--- L1's last kernel messages (all levels; {}) ---\n{}",
            run.log_path.display(),
            run.tail(60),
            kept_pulse.display(),
            run.l1_kernel_tail(15)
        );
        let died = l1_died(&run).or_else(|| {
            what.strip_prefix(QEMU_GUEST_DIED)
                .map(|why| format!("QEMU's own guest died: {why}"))
        });
        let again = attempt < ATTEMPTS
            && match retry {
                Retry::L1Died => died.is_some(),
                Retry::L1DiedOrTiming => died.is_some() || what.starts_with(TIMING),
            };
        if !again {
            panic!("{report}");
        }
        let why = died.unwrap_or_else(|| "a benchmark missed its timing target".into());
        println!("{report}\n--- running it again ({why}) ---");
    }
    unreachable!("the last attempt returns or panics")
}

/// A number reported as `key=N` in the last marker starting with `prefix`: a benchmark
/// measures a VMM whose guest never got there once more, after a `LAB:FLAKE` line (see
/// [`check_flakes`]), and the last measurement is the one that counts.
fn number(run: &LabRun, prefix: &str, key: &str) -> Result<f64, String> {
    let value = run
        .markers(prefix)
        .into_iter()
        .rev()
        .find_map(|m| minivmm_tests::lab::fields(m).get(key).copied());
    value
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("a number {key}= in `{prefix}`, got {value:?}"))
}

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
fn bench_disk_against_qemu_sequential_and_random_throughput() {
    run_lab_test(
        "disk-bench",
        &RunOptions::default(),
        Retry::L1DiedOrTiming,
        |run| {
            for vmm in ["qemu", "minivmm"] {
                let results = run.markers(&format!("LAB:RESULT disk-bench-{vmm} "));
                expect(
                    results.len() == 2 && results.iter().all(|r| r.ends_with("rc=0")),
                    format!("both {vmm} runs ended cleanly: {results:?}"),
                )?;
            }
            // Each mode's mean over the two runs of each VMM (QEMU first and last).
            let mean = |vmm: &str, mode: &str, key: &str| -> Result<f64, String> {
                let values: Vec<f64> = run
                    .markers(&format!("LAB:DISKBENCH vmm={vmm} mode={mode} "))
                    .iter()
                    .filter_map(|line| fields(line).get(key).and_then(|v| v.parse().ok()))
                    .collect();
                if values.len() != 2 {
                    // QEMU's reference guest that stopped short is the lab's failure (as
                    // elsewhere); minivmm's is a failure.
                    let died = if vmm == "qemu" { QEMU_GUEST_DIED } else { "" };
                    return Err(format!("{died}two {mode} results of {vmm} ({values:?})"));
                }
                Ok(values.iter().sum::<f64>() / 2.0)
            };
            let modes = [
                ("seqwrite", "mbs"),
                ("seqread", "mbs"),
                ("randwrite", "iops"),
                ("randread", "iops"),
            ];
            let mut slower = Vec::new();
            for (mode, key) in modes {
                let (q, m) = (mean("qemu", mode, key)?, mean("minivmm", mode, key)?);
                println!(
                    "disk bench {mode}: qemu {q:.1} {key}, minivmm {m:.1} {key} (minivmm/qemu {:.2})",
                    m / q
                );
                if m < q {
                    slower.push(mode);
                }
            }
            expect(
                slower.is_empty(),
                format!("{TIMING}minivmm's disk is at least as fast as QEMU's in {slower:?}"),
            )
        },
    );
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn bench_against_qemu_time_to_init_and_own_memory() {
    run_lab_test(
        "bench",
        &RunOptions::default(),
        Retry::L1DiedOrTiming,
        |run| {
            check_flakes(run, "LAB:BENCH vmm=qemu ", "init_ms")?;
            let field = |vmm: &str, key: &str| number(run, &format!("LAB:BENCH vmm={vmm} "), key);
            let (q_init, q_own) = (field("qemu", "init_ms")?, field("qemu", "own_kib")?);
            let (m_init, m_own) = (field("minivmm", "init_ms")?, field("minivmm", "own_kib")?);
            println!(
                "bench: time to L2:INIT  qemu {q_init} ms, minivmm {m_init} ms (ratio {:.3})",
                m_init / q_init
            );
            println!(
                "bench: own memory       qemu {q_own} KiB, minivmm {m_own} KiB (ratio {:.3})",
                m_own / q_own
            );
            for vmm in ["qemu", "minivmm"] {
                expect(
                    field(vmm, "guest_maps")? >= 1.0,
                    format!("{vmm}: the guest-RAM mapping was found and excluded"),
                )?;
            }
            // The targets: at most half of QEMU's time to /init (minivmm measures
            // 0.44-0.49 here since the console UART; see docs/ARCHITECTURE.md, "Boot time in
            // the lab") and at most 10 MiB of its own memory.
            expect(
                m_own <= 10.0 * 1024.0,
                "minivmm's own memory is at most 10 MiB",
            )?;
            expect(
                m_init <= 0.5 * q_init,
                format!(
                    "{TIMING}minivmm reaches L2:INIT in at most half of QEMU's time (ratio {:.3})",
                    m_init / q_init
                ),
            )
        },
    );
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
fn bench_passthrough_against_qemu_time_to_usable_device() {
    // One L1 per size: the nested lab's L1 kernel has crashed in a vCPU's KVM_RUN after
    // many VMM runs in one L1 (docs/ARCHITECTURE.md), so each L1 does fewer. 3G is the
    // largest guest L1's 4 GiB holds; +huge backs it with L1's 2 MiB huge pages.
    for mem in ["256M", "1G", "3G", "3G+huge"] {
        run_lab_test(
            "passthrough-bench",
            &RunOptions::default().param("mem", mem),
            Retry::L1DiedOrTiming,
            |run| bench_passthrough_checks(run, mem),
        );
    }
}

/// Print the `LAB:FLAKE` lines of a benchmark run, so a re-measured VMM is never silent. The
/// peer may be measured again; a minivmm guest that did not get there is a failure. QEMU's
/// guest died twice when the `key` of its last `qemu_result` line is `NA` (other fields of
/// that line, like the passthrough bench's `dma_ms`, may be `NA` for other reasons).
fn check_flakes(run: &LabRun, qemu_result: &str, key: &str) -> Checked {
    let flakes = run.markers("LAB:FLAKE ");
    for flake in &flakes {
        println!("{flake}");
    }
    expect(
        !flakes.iter().any(|f| f.contains("minivmm")),
        "every minivmm guest of the benchmark got there the first time",
    )?;
    // QEMU's guest failed, and failed again when measured once more: the lab's failure
    // (QEMU_GUEST_DIED), with nothing of minivmm's to judge against.
    let qemu_never = run.markers(qemu_result).last().is_some_and(|line| {
        line.split_whitespace()
            .any(|word| word.strip_prefix(key).and_then(|w| w.strip_prefix('=')) == Some("NA"))
    });
    expect(
        !(qemu_never && flakes.iter().any(|f| f.contains("qemu"))),
        format!("{QEMU_GUEST_DIED}its guest never got there, twice: {flakes:?}"),
    )
}

/// The checks of one size of the passthrough benchmark.
fn bench_passthrough_checks(run: &LabRun, mem: &str) -> Checked {
    check_flakes(
        run,
        &format!("LAB:PTBENCH vmm=qemu mem={mem} "),
        "usable_ms",
    )?;
    let field =
        |vmm: &str, key: &str| number(run, &format!("LAB:PTBENCH vmm={vmm} mem={mem} "), key);
    let (q, m) = (field("qemu", "usable_ms")?, field("minivmm", "usable_ms")?);
    let dma = field("minivmm", "dma_ms")?;
    let prefault = field("minivmm", "prefault_ms")?;
    println!(
        "passthrough bench {mem}: edu usable in L2  qemu {q} ms, minivmm {m} ms \
         (ratio {:.3}); minivmm prefaulted guest RAM in {prefault} ms, then DMA-mapped it \
         in {dma} ms",
        m / q
    );
    if mem.ends_with("+huge") {
        let huge = run.markers("LAB:HUGEPAGES ");
        expect(
            huge.first().is_some_and(|l| {
                let f = fields(l);
                f.contains_key("reserved") && f.get("reserved") == f.get("wanted")
            }),
            format!("{mem}: L1 reserved the huge pages both VMMs take: {huge:?}"),
        )?;
    }
    // The target is for the 3 GiB guest, where mapping guest RAM is most of a
    // start: at most half QEMU's time. Smaller guests: no later than QEMU.
    let target = if mem.starts_with("3G") { 0.5 } else { 1.0 };
    expect(
        m <= target * q,
        format!(
            "{TIMING}{mem}: minivmm makes the device usable in at most {target}× QEMU's time \
             ({m} ms against {q} ms)"
        ),
    )?;
    // Each VMM's DMA maps are timed once (one run each, under strace).
    let map = |vmm: &str, key: &str| -> f64 {
        run.markers(&format!("LAB:PTDMA vmm={vmm} mem={mem} "))
            .iter()
            .filter_map(|m| minivmm_tests::lab::fields(m).get(key)?.parse::<f64>().ok())
            .sum()
    };
    let (q_map, m_map) = (map("qemu", "map_ms"), map("minivmm", "map_ms"));
    let (q_calls, m_calls) = (map("qemu", "calls"), map("minivmm", "calls"));
    println!(
        "passthrough bench {mem}: VFIO_IOMMU_MAP_DMA time (strace)  \
         qemu {q_map:.1} ms in {q_calls} calls, minivmm {m_map:.1} ms in {m_calls} \
         calls (ratio {:.3})",
        m_map / q_map
    );
    expect(
        q_calls >= 1.0 && m_calls >= 1.0,
        format!("{mem}: both VMMs' DMA maps were traced"),
    )?;
    expect(
        q_map > 0.0 && m_map > 0.0,
        format!("{mem}: both VMMs' DMA maps were timed (strace -T gave their durations)"),
    )?;
    // minivmm prefaults guest RAM on several threads before it maps (QEMU's map faults
    // the pages in as it pins them), so its map ioctl only pins present pages: at most half
    // of QEMU's time. What both pay in all is the usable time above.
    expect(
        m_map <= 0.5 * q_map,
        format!(
            "{TIMING}{mem}: minivmm's VFIO_IOMMU_MAP_DMA time at most half QEMU's \
             ({m_map:.1} ms against {q_map:.1} ms)"
        ),
    )
}

/// One `LAB:BAD name=NAME` case: its status, one stderr line, no panic, and the message
/// mentions `says`.
fn check_bad(run: &LabRun, name: &str, rc: &str, says: &str) -> Checked {
    let prefix = format!("LAB:BAD name={name} ");
    expect(
        run.has(&format!("{prefix}rc={rc} lines=1 panic=0")),
        format!(
            "{name}: rc={rc}, one stderr line, no panic; got {:?}",
            run.markers(&prefix)
        ),
    )?;
    expect(
        run.markers(&format!("LAB:STDERR {name}: minivmm: "))
            .iter()
            .any(|l| l.contains(says)),
        format!("{name}: the message mentions `{says}`"),
    )
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn vbios_dumped_served_and_found_through_rom_bar_and_vfct() {
    lab_test("rom", |run| {
        expect(
            run.field("LAB:RESULT rom-dump", "rc") == Some("0"),
            "minivmm rom dump of L1's VGA exits 0",
        )?;
        expect(
            !run
                .markers("LAB:ROMINFO image 0 at 0x0: 39936 bytes, x86 (legacy BIOS), vendor 1234 device 1111")
                .is_empty(),
            "rom info describes the dumped image",
        )?;
        expect(
            run.has("LAB:L1ROM-BOCHS exists=0"),
            "bochs-display has no ROM of its own in L1",
        )?;
        let md5 = run
            .field("LAB:L1ROM ", "md5")
            .ok_or("the dump's md5 (LAB:L1ROM)")?;
        let rom = run.section("rom")?;
        expect(
            rom.field("LAB:RESULT", "rc") == Some("0"),
            "minivmm exits 0",
        )?;
        for (bdf, what) in [
            ("0000:01:00.0", "VGA's own ROM, passed through"),
            (
                "0000:02:00.0",
                "bochs-display's ROM, served from the dumped image",
            ),
        ] {
            expect(
                rom.has(&format!("L2:ROM {bdf} size=39936 md5={md5}")),
                format!(
                    "{what}: byte-identical in L2 ({:?})",
                    rom.markers("L2:ROM ")
                ),
            )?;
        }
        expect(
            rom.has("L2:VFCT bus=2 dev=0 fn=0 ids=1234 1111 len=39936"),
            format!(
                "L2 finds the VFCT table with bochs-display's address: {:?}",
                rom.markers("L2:VFCT")
            ),
        )?;
        expect(
            rom.markers("L2:SETUP-DATA ")
                .iter()
                .any(|l| l.contains("type=0x3 size=39984 head=0000000011111234 0000000000009c00 0000000000000000 0000000000000002 0000000000000000 0000000000000000")),
            format!("the SETUP_PCI record reaches L2's kernel: {:?}", rom.markers("L2:SETUP-DATA")),
        )?;
        check_bad(run, "rom-missing", "1", "cannot read the ROM image")?;
        check_bad(run, "rom-unsigned", "1", "expected 55 aa")?;
        check_bad(run, "rom-truncated", "1", "truncated")?;
        check_bad(run, "rom-mismatch", "1", "romcheck=off")?;
        check_bad(run, "rom-bad-option", "2", "unknown vbios path")?;
        check_bad(run, "rom-extract-no-vfct", "1", "no VFCT table")
    });
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn radeon_without_a_rom_fails_under_qemu_and_finds_minivmms_vbios() {
    lab_test("radeon", |run| {
        let qemu = run.section("radeon-qemu")?;
        expect(
            qemu.has("L2:INIT"),
            format!(
                "{QEMU_GUEST_DIED}its L2 never reached /init ({:?})",
                qemu.markers("LAB:RESULT")
            ),
        )?;
        expect(
            qemu.has("L2:RADEON-BIOS missing")
                && qemu
                    .markers("L2:RADEON ")
                    .iter()
                    .any(|l| l.contains("Unable to locate a BIOS ROM")),
            format!(
                "under QEMU, L2's radeon logs \"Unable to locate a BIOS ROM\" ({:?})",
                qemu.markers("L2:RADEON")
            ),
        )?;
        // Each path alone: with vbios=setup the ROM BAR shows nothing and there is no VFCT,
        // so a BIOS found there came from the SETUP_PCI record (the platform ROM).
        for path in ["vfct", "rombar", "setup", "atrm"] {
            let section = run.section(&format!("radeon-minivmm-{path}"))?;
            expect(
                section.has("L2:RADEON-BIOS found")
                    && section
                        .markers("L2:RADEON ")
                        .iter()
                        .any(|l| l.contains("COMBIOS detected")),
                format!(
                    "vbios={path}: radeon finds the BIOS ({:?}); the section ends: {}",
                    section.markers("L2:RADEON"),
                    ends(&section)
                ),
            )?;
        }
        let setup = run.section("radeon-minivmm-setup")?;
        expect(
            setup
                .markers("L2:SETUP-DATA ")
                .iter()
                .any(|l| l.contains("type=0x3 size=39984 head=0000000051591002")),
            "vbios=setup: the SETUP_PCI record for 1002:5159 reaches L2's kernel",
        )?;
        // vbios=atrm alone: no ROM BAR, no VFCT, no SETUP_PCI record — radeon can only have
        // found its BIOS through the ATRM method of the node Linux bound to the device,
        // which sits under the node of its root port.
        let atrm = run.section("radeon-minivmm-atrm")?;
        expect(
            atrm.markers("L2:ACPI-NODE ")
                .iter()
                .any(|l| l.contains(" \\_SB_.PCI0.RP") && l.ends_with(".GFX0")),
            format!(
                "vbios=atrm: Linux binds the device to its ACPI node under its root port's: {:?}",
                atrm.markers("L2:ACPI-NODE")
            ),
        )?;
        expect(
            atrm.markers("L2:SETUP-DATA ").is_empty() && atrm.markers("L2:VFCT ").is_empty(),
            "vbios=atrm: neither a SETUP_PCI record nor a VFCT table",
        )?;
        Ok(())
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

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn the_laptop_case_finds_the_vbios_in_the_hosts_vfct_with_no_flags() {
    // L1's firmware has a VFCT entry for the ati-vga, which has no ROM: `--gpu BDF` alone.
    run_lab_test(
        "laptop",
        &RunOptions::default().param("vfct", "match"),
        Retry::L1Died,
        |run| {
            expect(
                run.markers("LAB:L1-VFCT ")
                    .iter()
                    .any(|l| *l != "LAB:L1-VFCT bytes=0"),
                "L1's firmware has the VFCT table",
            )?;
            let doctor = run.markers("LAB:DOCTOR ");
            expect(
                doctor.iter().any(|l| {
                    l.contains("ok    vbios")
                        && l.contains("ready")
                        && l.contains("the host's ACPI VFCT table")
                }),
                format!("doctor says ready, with the VFCT as the source: {doctor:?}"),
            )?;
            let auto = run.section("laptop-auto")?;
            let vmm = auto.markers("LAB:VMM ");
            expect(
                vmm.iter().any(|l| {
                    l.contains("0000:00:08.0: VBIOS from the host's ACPI VFCT table (39936 bytes)")
                }),
                format!("one line says where the image came from: {vmm:?}"),
            )?;
            expect(
                auto.has("L2:RADEON-BIOS found")
                    && auto
                        .markers("L2:RADEON ")
                        .iter()
                        .any(|l| l.contains("COMBIOS detected")),
                format!(
                    "with no rom=, radeon finds the BIOS ({:?}); the section ends: {}",
                    auto.markers("L2:RADEON"),
                    ends(&auto)
                ),
            )?;
            let none = run.section("laptop-none")?;
            expect(
                none.has("L2:RADEON-BIOS missing")
                    && none
                        .markers("L2:RADEON ")
                        .iter()
                        .any(|l| l.contains("Unable to locate a BIOS ROM")),
                format!(
                    "rom=none: radeon logs \"Unable to locate a BIOS ROM\" ({:?}); the section ends: {}",
                    none.markers("L2:RADEON"),
                    ends(&none)
                ),
            )?;
            expect(
                !none.markers("LAB:VMM ").iter().any(|l| l.contains("VBIOS")),
                "rom=none looks for nothing and says nothing about a VBIOS",
            )
        },
    );
    // The entry at its address is for other IDs: not used, and one warning says so.
    run_lab_test(
        "laptop",
        &RunOptions::default().param("vfct", "other"),
        Retry::L1Died,
        |run| {
            let auto = run.section("laptop-auto")?;
            let vmm = auto.markers("LAB:VMM ");
            let warnings: Vec<&&str> = vmm.iter().filter(|l| l.contains("WARN")).collect();
            expect(
                warnings.len() == 1
                    && warnings.first().is_some_and(|w| {
                        w.contains("no VBIOS for this display controller")
                            && w.contains("its VFCT entry is for 1002:6660")
                            && w.contains("rom=FILE")
                    }),
                format!("one warning names the unused entry and what to do: {vmm:?}"),
            )?;
            expect(
                auto.has("L2:RADEON-BIOS missing"),
                format!(
                    "the guest boots anyway, and radeon finds no BIOS ({:?}); the section ends: {}",
                    auto.markers("L2:RADEON"),
                    ends(&auto)
                ),
            )
        },
    );
}

#[test]
#[ignore = "needs the nested lab: run tests/run"]
fn vga_on_shows_the_guests_vgacon_text_on_l1s_screen() {
    lab_test("vga", |run| {
        let l2 = run.section("vga")?;
        expect(
            l2.field("LAB:RESULT", "rc") == Some("0") && l2.has("L2:POWEROFF"),
            format!("minivmm ran L2 to its end: {:?}", l2.markers("LAB:RESULT")),
        )?;
        expect(
            l2.markers("L2:VGACON ")
                .iter()
                .any(|l| l.contains("Console: colour VGA+ 80x25")),
            format!(
                "L2's vgacon took the VGA through the legacy ranges: {:?}",
                l2.markers("L2:VGACON")
            ),
        )?;
        let vmm = l2.markers("LAB:VMM ");
        expect(
            !vmm.iter()
                .any(|l| l.contains("WARN minivmm") || l.contains("ERROR")),
            format!("minivmm warned of nothing: {vmm:?}"),
        )?;
        expect(
            l2.has("LAB:SHOT name=vgacon answer=ok"),
            "the harness took the picture",
        )?;
        // Before minivmm: L1's own text on the same VGA (the lab shows what it thinks).
        let before = run
            .pictures
            .iter()
            .find(|(n, _)| n == "l1-text")
            .ok_or("a picture of L1's VGA before the run was asked for")?;
        let before = before.1.as_ref().map_err(|e| e.to_string())?;
        let l1_text = minivmm_tests::lab::read_text_block(before)?;
        expect(
            l1_text.contains("SeaBIOS") && !l1_text.contains("LIT 4711"),
            format!("L1's VGA showed L1's boot text first, OCR read {l1_text:?}"),
        )?;
        let picture = run
            .pictures
            .iter()
            .find(|(n, _)| n == "vgacon")
            .ok_or("a picture of the VGA was asked for")?;
        let file = picture.1.as_ref().map_err(|e| e.to_string())?;
        let text = minivmm_tests::lab::read_text_block(file)?;
        // L2's boot text (the kernel's last lines before /init) and the words its init
        // wrote to tty1, on L1's display (words OCR reads well in the VGA font: it takes
        // its V for a U).
        for expected in [
            "GUEST TEXT THROUGH THE LEGACY RANGES",
            "LIT 4711",
            "Run /init as init process",
        ] {
            expect(
                text.contains(expected),
                format!(
                    "`{expected}` on L1's VGA ({}), OCR read {text:?}",
                    file.display()
                ),
            )?;
        }
        Ok(())
    });
}

/// `LAB:OUT name ...` lines: the output of one command the scenario ran with `show`.
fn output<'a>(run: &'a LabRun, name: &str) -> Vec<&'a str> {
    let prefix = format!("LAB:OUT {name} ");
    run.markers(&prefix)
        .into_iter()
        .map(|l| l.get(prefix.len()..).unwrap_or_default())
        .collect()
}

/// The driver `LAB:DRIVER when BDF=driver` reported.
fn driver_at<'a>(run: &'a LabRun, when: &str, bdf: &str) -> Option<&'a str> {
    run.field(&format!("LAB:DRIVER {when} "), bdf)
}

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

/// `key=VALUE` of the marker `prefix` in `markers`, or an error naming what is missing.
fn need<'a>(markers: &'a impl Markers, prefix: &str, key: &str) -> Result<&'a str, String> {
    markers
        .field(prefix, key)
        .ok_or_else(|| format!("`{prefix}` with {key}= in the log"))
}

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

/// The retry rule itself: which failed runs count as L1's death.
mod retry_rule {
    use super::*;
    use std::time::Duration;

    fn run(log: &str, l1_up: bool, end: End) -> LabRun {
        LabRun {
            scenario: "boot".into(),
            log: log.into(),
            log_path: "l1.log".into(),
            pulse_path: "pulse.log".into(),
            end,
            build: Duration::ZERO,
            wall: Duration::from_secs(200),
            l1_up: l1_up.then(|| Duration::from_secs(9)),
            l1_initramfs_bytes: 0,
            l2_initramfs_bytes: 0,
            pictures: Vec::new(),
        }
    }

    fn silent() -> End {
        End::Killed("no console output for 150s".into())
    }

    #[test]
    fn an_l1_that_froze_in_its_own_boot_died() {
        let frozen = run("[    7.3] pci_bus 0000:00: root bus re", false, silent());
        let why = l1_died(&frozen).unwrap_or_default();
        assert!(why.contains("before LAB:L1-UP"), "{why}");
    }

    #[test]
    fn an_l1_kernel_crash_after_it_came_up_died() {
        let log = "LAB:L1-UP uptime=9\n[ 38.1] BUG: TASK stack guard page was hit\n";
        let why = l1_died(&run(log, true, silent())).unwrap_or_default();
        assert!(why.contains("stack guard page"), "{why}");
    }

    #[test]
    fn a_silent_scenario_in_a_live_l1_is_not_l1s_death() {
        // minivmm (or its guest) may be what hangs: that fails the test, never retried.
        let log = "LAB:L1-UP uptime=9\nLAB:BEGIN boot\n";
        assert_eq!(l1_died(&run(log, true, silent())), None);
    }

    #[test]
    fn an_l1_whose_heartbeat_stopped_died_and_a_beating_one_did_not() {
        let log = "LAB:L1-UP uptime=9\nLAB:BEGIN disk-bench\n";
        let frozen = End::Killed(format!("{L1_FROZE}no heartbeat on ttyS2 for 60s"));
        let why = l1_died(&run(log, true, frozen)).unwrap_or_default();
        assert!(why.starts_with(L1_FROZE), "{why}");
        // Console silence alone, with the beat going on, is the scenario's hang.
        assert_eq!(l1_died(&run(log, true, silent())), None);
    }

    #[test]
    fn a_benchmark_whose_qemu_guest_died_twice_is_the_labs_failure() {
        let checked = |log: &str| {
            check_flakes(
                &run(log, true, End::Exited(Some(0))),
                "LAB:BENCH vmm=qemu ",
                "init_ms",
            )
            .err()
            .unwrap_or_default()
        };
        let what = checked(
            "LAB:FLAKE vmm=qemu reached no L2:INIT; measuring it once more\n\
             LAB:BENCH vmm=qemu init_ms=NA own_kib=NA runs_ms=26410,NA\n",
        );
        assert!(what.starts_with(QEMU_GUEST_DIED), "{what}");
        // Once QEMU's second try got there, there is nothing to excuse.
        let what = checked(
            "LAB:FLAKE vmm=qemu reached no L2:INIT; measuring it once more\n\
             LAB:BENCH vmm=qemu init_ms=20000 own_kib=47000 runs_ms=26410,13590\n",
        );
        assert_eq!(what, "");
        // A minivmm guest that needed a second try fails, whatever QEMU did.
        let what = checked("LAB:FLAKE vmm=minivmm reached no L2:INIT; measuring it once more\n");
        assert!(
            what.contains("minivmm guest") && !what.starts_with(QEMU_GUEST_DIED),
            "{what}"
        );
        // The passthrough bench never has a DMA time for QEMU: its `dma_ms=NA` after a
        // second try that got there is no death (a ratio over 0.5 was once retried as one).
        let what = check_flakes(
            &run(
                "LAB:FLAKE qemu 1G; once more\n\
                 LAB:PTBENCH vmm=qemu mem=1G usable_ms=NA dma_ms=NA\n\
                 LAB:PTBENCH vmm=qemu mem=1G usable_ms=28030 dma_ms=NA\n",
                true,
                End::Exited(Some(0)),
            ),
            "LAB:PTBENCH vmm=qemu mem=1G ",
            "usable_ms",
        )
        .err()
        .unwrap_or_default();
        assert_eq!(what, "");
    }

    #[test]
    fn a_finished_scenario_never_counts_as_l1s_death() {
        let log = "LAB:L1-UP uptime=9\nBUG: in L2's log\nLAB:DONE rc=1\n";
        assert_eq!(l1_died(&run(log, true, End::Exited(Some(0)))), None);
    }
}
