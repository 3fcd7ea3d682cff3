//! The benchmarks, side by side with QEMU in one L1: boot and own memory, the disk, the
//! passthrough device's time to usable.

use crate::harness::*;

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
