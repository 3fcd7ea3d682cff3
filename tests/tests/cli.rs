//! The `minivmm` command end to end on the host's /dev/kvm, with tiny hand-made ELF
//! "kernels" (a few 64-bit instructions): how a run ends, and what the user sees.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The minivmm binary of the same build profile as this test.
fn minivmm() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("minivmm");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p minivmm` (same profile as the tests)",
        bin.display()
    );
    bin
}

/// An ELF64 executable whose one segment holds `code`, loaded and entered at 2 MiB.
fn tiny_kernel(name: &str, code: &[u8]) -> PathBuf {
    const ENTRY: u64 = 0x20_0000;
    let mut elf = vec![0u8; 0x1000];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&ENTRY.to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    elf[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes());
    elf[ph + 16..ph + 24].copy_from_slice(&ENTRY.to_le_bytes());
    elf[ph + 24..ph + 32].copy_from_slice(&ENTRY.to_le_bytes());
    let size = (code.len() as u64).to_le_bytes();
    elf[ph + 32..ph + 40].copy_from_slice(&size);
    elf[ph + 40..ph + 48].copy_from_slice(&size);
    elf.extend_from_slice(code);
    let path = std::env::temp_dir().join(format!("minivmm-{}-{name}.elf", std::process::id()));
    std::fs::write(&path, elf).unwrap();
    path
}

/// A guest that spins forever.
const SPIN: &[u8] = &[0xeb, 0xfe]; // jmp $

fn spawn(kernel: &PathBuf, serial: &str, stdin: Stdio) -> Child {
    Command::new(minivmm())
        .args(["--memory", "64M", "--serial", serial, "--kernel"])
        .arg(kernel)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait at most `limit` for `child`; kill it and fail if it is still running.
fn finish(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("minivmm did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn guest_acpi_poweroff_exits_zero_silently() {
    let kernel = tiny_kernel(
        "poweroff",
        &[
            0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
            0xb0, 0x34, // mov al, SLP_TYP(5) | SLP_EN
            0xee, // out dx, al
            0xeb, 0xfe, // jmp $
        ],
    );
    let output = finish(
        spawn(&kernel, "none", Stdio::null()),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "");
}

/// Prints the byte at `mark` on COM1, increments it, then asks for a reset through the
/// ACPI reset register: a guest started again from a fresh load prints the same byte.
const PRINT_INCREMENT_REBOOT: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0x8a, 0x05, 0x10, 0x00, 0x00, 0x00, // mov al, [rip + 16] (mark)
    0xee, // out dx, al
    0xfe, 0x05, 0x09, 0x00, 0x00, 0x00, // inc byte [rip + 9] (mark)
    0x66, 0xba, 0x02, 0x06, // mov dx, 0x602 (ACPI reset register)
    0xb0, 0x01, // mov al, 1
    0xee, // out dx, al
    0xeb, 0xfe, // jmp $
    b'A', // mark
];

#[test]
fn with_no_reboot_a_guest_reboot_request_exits_zero_and_says_so() {
    let kernel = tiny_kernel("reboot", PRINT_INCREMENT_REBOOT);
    let output = finish(
        spawn_with(&kernel, &["--serial", "none", "--no-reboot"], None),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(0));
    assert!(stderr(&output).contains("reboot"), "{}", stderr(&output));
    assert_eq!(stderr(&output).lines().count(), 1);
}

#[test]
fn a_rebooting_guest_starts_again_from_a_fresh_load() {
    let kernel = tiny_kernel("reboots", PRINT_INCREMENT_REBOOT);
    let mut child = spawn(&kernel, "stdio", Stdio::null());
    let mut stdout = child.stdout.take().unwrap();
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while printed.len() < 5 && Instant::now() < deadline {
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut stdout, &mut byte) {
            Ok(1) => printed.push(byte[0]),
            _ => break,
        }
    }
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = finish(child, Duration::from_secs(10));
    // Five boots, each printing the mark as loaded: guest RAM was loaded again every time
    // (a guest that kept its memory would print B, C, ...), and the vCPU started over.
    assert_eq!(printed, b"AAAAA", "{}", stderr(&output));
    assert_eq!(output.status.code(), Some(128 + libc::SIGTERM));
    assert!(!stderr(&output).contains("failed"), "{}", stderr(&output));
}

#[test]
fn a_vcpu_fault_exits_nonzero_naming_the_vcpu() {
    // int3 with no IDT: a triple fault, or (on KVMs that cannot deliver it) an internal
    // error; with --no-reboot either ends the run.
    let kernel = tiny_kernel("fault", &[0xcc, 0xeb, 0xfe]);
    let output = finish(
        spawn_with(&kernel, &["--serial", "none", "--no-reboot"], None),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains("vCPU 0") && text.contains("RIP"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn sigterm_stops_the_guest_and_exits_with_128_plus_the_signal() {
    let kernel = tiny_kernel("sigterm", SPIN);
    let child = spawn(&kernel, "none", Stdio::null());
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = finish(child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(128 + libc::SIGTERM));
    assert!(
        stderr(&output).contains("stopped by signal 15"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn ctrl_a_x_on_piped_stdin_quits() {
    let kernel = tiny_kernel("quit", SPIN);
    let mut child = spawn(&kernel, "stdio", Stdio::piped());
    std::thread::sleep(Duration::from_millis(500));
    child.stdin.take().unwrap().write_all(b"ls\x01x").unwrap();
    let output = finish(child, Duration::from_secs(10));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn stdin_at_eof_does_not_end_the_guest() {
    // /dev/null cannot be watched and a closed pipe reads EOF: the guest runs on regardless.
    let kernel = tiny_kernel("eof", SPIN);
    let mut child = spawn(&kernel, "stdio", Stdio::piped());
    drop(child.stdin.take());
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "minivmm exited on stdin EOF"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn bad_command_lines_get_one_line_and_status_2() {
    for args in [
        &["--kernel", "k", "--memory", "0"][..],
        &["--kernel", "k", "--cpus", "0"],
        &["--kernel", "k", "--serial", "tcp:1"],
        &["--bogus"],
        &[],
        &["--kernel", "k", "--managed"],
        &["--kernel", "k", "--gpu", "01:00.0", "--managed=all"],
        &["bind"],
        &["bind", "gpu0"],
        &["unbind", "01:00.9"],
        &["doctor", "--memory", "lots"],
        &["--kernel", "k", "--exit-device", "0xf4"],
        &["--kernel", "k", "--exit-device", "port=0x3f8"],
        &["--kernel", "k", "--exit-device", "port=0xfffe"],
    ] {
        let output = Command::new(minivmm()).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{args:?}: {text}");
        assert!(text.starts_with("minivmm: "), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

/// Writes `value` (`width` bytes: 1, 2 or 4) to port 0xf4, then spins.
fn exit_with(value: u32, width: usize) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf4, 0x00]; // mov dx, 0xf4
    match width {
        1 => code.extend([0xb0, value as u8, 0xee]), // mov al, imm8; out dx, al
        2 => {
            code.extend([0x66, 0xb8]); // mov ax, imm16
            code.extend((value as u16).to_le_bytes());
            code.extend([0x66, 0xef]); // out dx, ax
        }
        _ => {
            code.push(0xb8); // mov eax, imm32
            code.extend(value.to_le_bytes());
            code.push(0xef); // out dx, eax
        }
    }
    code.extend([0xeb, 0xfe]); // jmp $
    code
}

#[test]
fn the_exit_device_turns_the_guests_value_into_the_exit_status() {
    for (value, width, status) in [(3, 1, 3), (0, 1, 0), (42, 2, 42), (0x1234, 4, 255)] {
        let kernel = tiny_kernel(&format!("exit-{value}-{width}"), &exit_with(value, width));
        let output = finish(
            spawn_with(
                &kernel,
                &["--serial", "none", "--exit-device", "port=0xf4"],
                None,
            ),
            Duration::from_secs(20),
        );
        assert_eq!(
            output.status.code(),
            Some(status),
            "{value} in {width} bytes: {}",
            stderr(&output)
        );
        let said = stderr(&output);
        if status == 0 {
            assert_eq!(said, "");
        } else {
            assert_eq!(
                said.trim(),
                format!("minivmm: the guest wrote {status} to the exit device")
            );
        }
    }
    // Without --exit-device the port is nobody's: the guest spins until stopped.
    let kernel = tiny_kernel("exit-none", &exit_with(3, 1));
    let child = spawn_with(&kernel, &["--serial", "none"], None);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling a child we spawned and have not waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = finish(child, Duration::from_secs(20));
    assert_eq!(output.status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn missing_and_bogus_kernels_get_one_line_and_status_1() {
    let text_file = std::env::temp_dir().join(format!("minivmm-{}-text", std::process::id()));
    std::fs::write(&text_file, "not a kernel\n").unwrap();
    let missing = PathBuf::from("/nonexistent/bzImage");
    for (kernel, says) in [
        (&missing, "cannot read kernel"),
        (&text_file, "neither a bzImage"),
    ] {
        let output = Command::new(minivmm())
            .arg("--kernel")
            .arg(kernel)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(says), "{text}");
    }
}

#[test]
fn no_permission_on_dev_kvm_says_what_to_do() {
    // /dev/kvm is root-only on the test machines; run minivmm as nobody.
    let kernel = tiny_kernel("perm", SPIN);
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(minivmm())
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .expect("setpriv (util-linux) runs minivmm as another user");
    let text = stderr(&output);
    if std::fs::metadata("/dev/kvm").is_ok_and(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o006 == 0o006
    }) {
        panic!("/dev/kvm is open to everyone here, so this test cannot deny access: {text}");
    }
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("no permission to open /dev/kvm"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn exit_stats_count_exits_by_address() {
    let kernel = tiny_kernel(
        "stats",
        &[
            0xe6, 0x80, // out 0x80, al
            0xe6, 0x80, // out 0x80, al
            0xe6, 0x80, // out 0x80, al
            0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
            0xb0, 0x34, // mov al, SLP_TYP(5) | SLP_EN
            0xee, // out dx, al
            0xeb, 0xfe, // jmp $
        ],
    );
    let output = Command::new(minivmm())
        .args([
            "--memory",
            "64M",
            "--serial",
            "none",
            "--exit-stats",
            "--kernel",
        ])
        .arg(&kernel)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = stderr(&output);
    assert!(
        text.contains("vCPU 0: 4 port, 0 mmio, 3 unclaimed"),
        "{text}"
    );
    assert!(text.contains("3  port write  0x80"), "{text}");
    assert!(text.contains("1  port write  0x600"), "{text}");
}

#[test]
fn host_tools_on_a_missing_device_fail_cleanly() {
    // No host has a PCI function at ff:1f.7 (bus 255, the last slot): whatever this host
    // has or lacks, each tool must say so in one line and touch nothing.
    for args in [
        &["bind", "ff:1f.7"][..],
        &["unbind", "0000:ff:1f.7", "--group"],
    ] {
        let output = Command::new(minivmm()).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let text = stderr(&output);
        assert_eq!(
            text.trim_end(),
            "minivmm: there is no PCI device 0000:ff:1f.7: check the address with lspci -D",
            "{args:?}"
        );
    }
    assert!(
        !std::path::Path::new("/run/minivmm/bound/0000:ff:1f.7").exists(),
        "no binding record is left"
    );
}

#[test]
fn doctor_json_reports_every_host_item_and_a_missing_device() {
    let output = Command::new(minivmm())
        .args(["doctor", "--json", "ff:1f.7"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a missing device is never ready"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("\"ready\": false"), "{text}");
    for item in [
        "kvm",
        "virtualization",
        "iommu",
        "irq-remapping",
        "module vfio",
        "module vfio_pci",
        "/dev/vfio/vfio",
        "memlock",
    ] {
        assert!(
            text.contains(&format!("\"item\": \"{item}\"")),
            "{item}: {text}"
        );
    }
    assert!(
        text.contains("\"scope\": \"0000:ff:1f.7\"") && text.contains("lspci -D"),
        "{text}"
    );
    let human = Command::new(minivmm())
        .args(["doctor", "ff:1f.7"])
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.ends_with("problem(s) to fix\n") && human.contains("not ready for --gpu"),
        "{human}"
    );
}

/// minivmm on `kernel` with `args`, stdin piped, and `fault` injected (MINIVMM_TEST_FAULT).
fn spawn_with(kernel: &PathBuf, args: &[&str], fault: Option<&str>) -> Child {
    let mut command = Command::new(minivmm());
    command
        .args(["--memory", "64M"])
        .args(args)
        .arg("--kernel")
        .arg(kernel)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fault) = fault {
        command.env("MINIVMM_TEST_FAULT", fault);
    }
    command.spawn().unwrap()
}

#[test]
fn a_forbidden_system_call_in_a_vcpu_ends_minivmm_naming_thread_and_call() {
    let kernel = tiny_kernel("seccomp", SPIN);
    let child = spawn_with(&kernel, &["--serial", "none"], Some("vcpu-syscall"));
    let output = finish(child, Duration::from_secs(10));
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let line = format!(
        "thread vcpu0 made system call {} (socket)",
        libc::SYS_socket
    );
    assert!(text.contains(&line), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn with_seccomp_log_the_same_call_goes_through() {
    let kernel = tiny_kernel("seccomp-log", SPIN);
    let child = spawn_with(
        &kernel,
        &["--serial", "none", "--seccomp", "log"],
        Some("vcpu-syscall"),
    );
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = finish(child, Duration::from_secs(10));
    assert_eq!(
        output.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_panicking_vcpu_ends_minivmm_with_its_message() {
    let kernel = tiny_kernel("panic", SPIN);
    let child = spawn_with(&kernel, &["--serial", "none"], Some("vcpu-panic"));
    let output = finish(child, Duration::from_secs(10));
    let text = stderr(&output);
    assert!(text.contains("test fault: vCPU 0 panics"), "{text}");
    assert!(!output.status.success(), "{text}");
}

#[test]
fn the_guest_runs_without_root_once_built() {
    // What the running VM process is, from its /proc status while the guest spins.
    let kernel = tiny_kernel("ids", SPIN);
    let child = spawn_with(&kernel, &["--serial", "none"], None);
    std::thread::sleep(Duration::from_millis(700));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = finish(child, Duration::from_secs(10));
    // SAFETY: plain id query.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(field("Uid:"), "65534 65534 65534 65534");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534");
    }
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "filter mode");
    assert_eq!(
        output.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        stderr(&output)
    );
}

/// Whether process `pid`'s vcpu0 thread sleeps in a pipe write.
fn vcpu_blocked_in_pipe_write(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let read = |name: &str| std::fs::read_to_string(task.path().join(name)).unwrap_or_default();
        read("comm").trim() == "vcpu0" && read("wchan").contains("pipe")
    })
}

#[test]
fn a_vcpu_blocked_in_a_device_write_ends_the_process_instead_of_freeing_its_memory() {
    // The guest writes COM1 without end; nobody reads minivmm's stdout, so once the pipe is
    // full the vCPU thread blocks inside the UART's write and cannot be stopped.
    let kernel = tiny_kernel(
        "stuck",
        &[
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xb0, 0x41, // mov al, 'A'
            0xee, // out dx, al
            0xeb, 0xfb, // jmp back to mov al
        ],
    );
    let child = spawn_with(&kernel, &["--serial", "stdio"], None);
    // Until the pipe is full and the vCPU thread sleeps in the write (a busy machine takes
    // longer to fill it).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vcpu_blocked_in_pipe_write(child.id()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = finish(child, Duration::from_secs(15));
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("vCPU thread(s) [0] did not stop"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn four_kib_pasted_into_the_console_arrive_intact() {
    // The guest echoes 4096 bytes from COM1 back to COM1 (polling LSR), then powers off.
    let kernel = tiny_kernel(
        "paste",
        &[
            0xb9, 0x00, 0x10, 0x00, 0x00, // mov ecx, 4096
            0x66, 0xba, 0xfd, 0x03, // next: mov dx, 0x3fd (LSR)
            0xec, // wait: in al, dx
            0xa8, 0x01, // test al, 1 (data ready)
            0x74, 0xfb, // jz wait
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xec, // in al, dx (RBR)
            0xee, // out dx, al (THR)
            0xff, 0xc9, // dec ecx
            0x75, 0xed, // jnz next
            0x66, 0xba, 0x00, 0x06, // mov dx, 0x600
            0xb0, 0x34, // mov al, SLP_TYP(5) | SLP_EN
            0xee, // out dx, al
            0xeb, 0xfe, // jmp $
        ],
    );
    let mut child = spawn_with(
        &kernel,
        &["--serial", "stdio", "--cmdline", "console=ttyS0"],
        None,
    );
    // Printable bytes in a pattern that shows a lost or repeated one (no Ctrl-A).
    let paste: Vec<u8> = (0..4096u32).map(|i| b'!' + (i * 7 % 90) as u8).collect();
    child.stdin.take().unwrap().write_all(&paste).unwrap();
    let output = finish(child, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(output.stdout.len(), paste.len());
    assert!(
        output.stdout == paste,
        "the echo differs from what was pasted"
    );
}
