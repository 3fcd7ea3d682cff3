//! Tiny hand-assembled guests on the host's /dev/kvm: they prove the vCPU loop without
//! booting Linux (which the development machines' paravirtual KVM cannot do; see the lab).
//!
//! Each guest is a few real-mode instructions, or a few 64-bit ones entered through the
//! same register and page-table setup a Linux boot uses. No in-kernel irqchip, so HLT exits
//! to userspace and ends the run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use minivmm::coalesced::CoalescedIo;
use minivmm::console_uart::ConsoleUart;
use minivmm::cpu::regs;
use minivmm::memory::{self, GuestRam};
use minivmm::vcpu::{Buses, ExitCounters, Outcome, VcpuRunner};
use minivmm_devices::bus::{BusDevice, Effect};
use minivmm_devices::power::{self, AcpiPower};
use minivmm_devices::serial::SerialPort;
use minivmm_firmware::layout;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where real-mode guests start.
const CODE: u64 = 0x1000;
/// A page of data the guests read.
const DATA: u64 = 0x3000;

/// Records writes and answers every read with 0x5a.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
    reads: Vec<u64>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.reads.push(offset);
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<Effect> {
        self.writes.push((offset, data.to_vec()));
        None
    }
}

struct TinyVm {
    kvm: Kvm,
    vm: Arc<VmFd>,
    coalesced: Option<Arc<CoalescedIo>>,
    vcpu: VcpuFd,
    memory: GuestRam,
    buses: Buses,
    counters: ExitCounters,
}

impl TinyVm {
    fn new(ram: u64) -> TinyVm {
        let kvm = Kvm::new()
            .unwrap_or_else(|e| panic!("this test needs /dev/kvm (the vCPU loop runs on it): {e}"));
        let vm = Arc::new(kvm.create_vm().unwrap());
        let (_, memory) = memory::create(ram, 46, None).unwrap();
        memory::register_slots(&vm, &memory, &[]).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        TinyVm {
            kvm,
            vm,
            coalesced: None,
            vcpu,
            memory,
            buses: Buses::default(),
            counters: ExitCounters::new(false),
        }
    }

    /// Real mode, CS:IP = 0:CODE, with `code` there.
    fn real_mode(ram: u64, code: &[u8]) -> TinyVm {
        let vm = TinyVm::new(ram);
        vm.memory.write_slice(code, GuestAddress(CODE)).unwrap();
        let mut sregs = vm.vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vm.vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vm.vcpu.get_regs().unwrap();
        regs.rip = CODE;
        regs.rflags = 2;
        vm.vcpu.set_regs(&regs).unwrap();
        vm
    }

    fn attach_pio(&self, device: Arc<Mutex<dyn BusDevice>>, port: u64, len: u64) {
        self.buses.pio.insert(device, port, len).unwrap();
    }

    fn run(&mut self) -> Outcome {
        let stop = AtomicBool::new(false);
        VcpuRunner {
            fd: &mut self.vcpu,
            index: 0,
            buses: &self.buses,
            stop: &stop,
            counters: &self.counters,
            coalesced: self.coalesced.as_deref(),
        }
        .run()
    }
}

#[test]
fn port_io_reaches_the_device_on_that_port() {
    let mut vm = TinyVm::real_mode(
        64 << 10,
        &[
            0xb0, 0x42, // mov al, 0x42
            0xe6, 0x10, // out 0x10, al
            0xe4, 0x11, // in al, 0x11      (device answers 0x5a)
            0xe6, 0x12, // out 0x12, al
            0xe4, 0x20, // in al, 0x20      (nothing there: all ones)
            0xe6, 0x12, // out 0x12, al
            0xf4, // hlt
        ],
    );
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    vm.attach_pio(recorder.clone(), 0x10, 3);
    assert_eq!(vm.run(), Outcome::Halted);
    let recorder = recorder.lock().unwrap();
    assert_eq!(
        recorder.writes,
        vec![(0, vec![0x42]), (2, vec![0x5a]), (2, vec![0xff])]
    );
    assert_eq!(recorder.reads, vec![1]);
    let (pio, mmio, unclaimed) = vm.counters.snapshot();
    assert_eq!((pio, mmio, unclaimed), (5, 0, 1));
}

#[test]
fn mmio_outside_ram_reaches_the_device_at_that_address() {
    let mut vm = TinyVm::real_mode(
        64 << 10,
        &[
            0xb8, 0x00, 0x20, // mov ax, 0x2000
            0x8e, 0xd8, // mov ds, ax        (DS base 0x20000, past the 64 KiB of RAM)
            0xb0, 0x99, // mov al, 0x99
            0xa2, 0x04, 0x00, // mov [0x0004], al   (MMIO write at 0x20004)
            0xa0, 0x08, 0x00, // mov al, [0x0008]   (MMIO read at 0x20008)
            0xe6, 0x10, // out 0x10, al
            0xf4, // hlt
        ],
    );
    let window = Arc::new(Mutex::new(Recorder::default()));
    vm.buses
        .mmio
        .insert(window.clone(), 0x2_0000, 0x1000)
        .unwrap();
    let port = Arc::new(Mutex::new(Recorder::default()));
    vm.attach_pio(port.clone(), 0x10, 1);
    assert_eq!(vm.run(), Outcome::Halted);
    let window = window.lock().unwrap();
    assert_eq!(window.writes, vec![(4, vec![0x99])]);
    assert_eq!(window.reads, vec![8]);
    assert_eq!(port.lock().unwrap().writes, vec![(0, vec![0x5a])]);
    assert_eq!(vm.counters.snapshot().1, 2, "two MMIO exits");
}

#[test]
fn a_read_from_a_memory_slot_needs_no_exit() {
    let mut vm = TinyVm::real_mode(
        64 << 10,
        &[
            0xa0, 0x00, 0x30, // mov al, [0x3000]   (RAM: served by the memory slot)
            0xe6, 0x10, // out 0x10, al
            0xf4, // hlt
        ],
    );
    vm.memory.write_obj(0x77u8, GuestAddress(DATA)).unwrap();
    let port = Arc::new(Mutex::new(Recorder::default()));
    vm.attach_pio(port.clone(), 0x10, 1);
    assert_eq!(vm.run(), Outcome::Halted);
    assert_eq!(port.lock().unwrap().writes, vec![(0, vec![0x77])]);
    let (pio, mmio, _) = vm.counters.snapshot();
    assert_eq!((pio, mmio), (1, 0), "only the OUT left the kernel");
}

#[test]
fn a_fatal_guest_fault_ends_the_run_naming_vcpu_reason_and_rip() {
    // In 64-bit mode with the boot IDT (no usable vectors), int3 faults, the fault faults,
    // and the double fault shuts the vCPU down. A full KVM reports the triple fault as a
    // shutdown exit; the development machines' paravirtual KVM gives up on emulating the
    // delivery and reports an internal error. Either way the run must end as a failure.
    let mut vm = TinyVm::new(2 << 20);
    regs::write_boot_tables(&vm.memory).unwrap();
    let entry = 0x10_0000;
    vm.memory
        .write_slice(&[0xcc, 0xf4], GuestAddress(entry)) // int3; hlt (never reached)
        .unwrap();
    regs::setup(&vm.vcpu, 0, entry).unwrap();
    match vm.run() {
        Outcome::Failed(reason) => {
            assert!(reason.contains("vCPU 0"), "{reason}");
            assert!(
                reason.contains("triple fault") || reason.contains("KVM internal error"),
                "{reason}"
            );
            assert!(reason.contains("RIP 0x100000"), "{reason}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn acpi_soft_off_powers_the_guest_off() {
    let mut vm = TinyVm::real_mode(
        64 << 10,
        &[
            0xba, 0x00, 0x06, // mov dx, 0x600    (sleep control register)
            0xb0, 0x34, // mov al, 0x34     (SLP_TYP 5 << 2 | SLP_EN)
            0xee, // out dx, al
            0xf4, // hlt              (never reached)
        ],
    );
    vm.attach_pio(
        Arc::new(Mutex::new(AcpiPower)),
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        power::PORT_COUNT,
    );
    assert_eq!(vm.run(), Outcome::PowerOff);
}

#[test]
fn the_linux_boot_cpu_state_runs_64_bit_code() {
    // Entered exactly as a kernel is: boot GDT, identity page tables, long mode, RSI.
    let mut vm = TinyVm::new(2 << 20);
    regs::write_boot_tables(&vm.memory).unwrap();
    let entry = 0x10_0000;
    let code = [
        0x48, 0x89, 0xf0, // mov rax, rsi        (the zero page pointer)
        0x66, 0xba, 0x10, 0x00, // mov dx, 0x10
        0xef, // out dx, eax
        0x48, 0x8b, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, // mov rax, [0x3000]
        0xef, // out dx, eax
        0xf4, // hlt
    ];
    vm.memory.write_slice(&code, GuestAddress(entry)).unwrap();
    vm.memory
        .write_obj(0x1234_5678u32, GuestAddress(DATA))
        .unwrap();
    regs::setup(&vm.vcpu, 0, entry).unwrap();
    let port = Arc::new(Mutex::new(Recorder::default()));
    vm.attach_pio(port.clone(), 0x10, 4);
    assert_eq!(vm.run(), Outcome::Halted);
    let zero_page = (layout::ZERO_PAGE_START as u32).to_le_bytes().to_vec();
    assert_eq!(
        port.lock().unwrap().writes,
        vec![(0, zero_page), (0, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
    let sregs = vm.vcpu.get_sregs().unwrap();
    assert_eq!(sregs.efer & 0x500, 0x500, "long mode active");
}

#[test]
fn coalesced_address_latch_writes_reach_the_device_before_the_next_exit() {
    // out 0xcf8 (coalesced: no exit), in 0xcfc (exit): the latch must be written first.
    let mut vm = TinyVm::real_mode(
        64 << 10,
        &[
            0x66, 0xb8, 0x08, 0x00, 0x00, 0x80, // mov eax, 0x80000008
            0xba, 0xf8, 0x0c, // mov dx, 0xcf8
            0x66, 0xef, // out dx, eax      (queued in the ring)
            0xb2, 0xfc, // mov dl, 0xfc
            0xec, // in al, dx        (exits; the ring is replayed first)
            0xf4, // hlt
        ],
    );
    let latch = Arc::new(Mutex::new(Recorder::default()));
    vm.attach_pio(latch.clone(), 0xcf8, 8);
    vm.coalesced = CoalescedIo::new(&vm.kvm, vm.vm.clone(), &vm.vcpu).map(Arc::new);
    if vm.coalesced.is_none() {
        panic!("this KVM cannot coalesce port I/O (KVM_CAP_COALESCED_PIO), which this test needs");
    }
    assert_eq!(vm.run(), Outcome::Halted);
    let latch = latch.lock().unwrap();
    assert_eq!(
        latch.writes,
        vec![(0, 0x8000_0008u32.to_le_bytes().to_vec())]
    );
    assert_eq!(latch.reads, vec![4]);
    let (pio, _, _) = vm.counters.snapshot();
    assert_eq!(pio, 1, "only the IN exited");
}

/// A console that keeps what the guest printed.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A guest entered as a Linux kernel is (64-bit, identity-mapped), running `code` with RSI
/// pointing at the console UART, which is on its MMIO bus; a recorder sits on port 0x10.
fn console_uart_guest(
    code: &[u8],
) -> (
    TinyVm,
    Arc<Mutex<ConsoleUart>>,
    Capture,
    Arc<Mutex<Recorder>>,
) {
    let vm = TinyVm::new(2 << 20);
    regs::write_boot_tables(&vm.memory).unwrap();
    let entry = 0x10_0000;
    let mut program = vec![0xbe]; // mov esi, CONSOLE_UART_START (zero-extended into RSI)
    program.extend_from_slice(&(layout::CONSOLE_UART_START as u32).to_le_bytes());
    program.extend_from_slice(code);
    vm.memory
        .write_slice(&program, GuestAddress(entry))
        .unwrap();
    regs::setup(&vm.vcpu, 0, entry).unwrap();
    assert!(
        vm.kvm.check_extension(Cap::ReadonlyMem),
        "this test needs read-only memory slots (KVM_CAP_READONLY_MEM)"
    );
    let capture = Capture::default();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let port = SerialPort::new(irq, Box::new(capture.clone()));
    let uart = Arc::new(Mutex::new(ConsoleUart::new(port, vm.vm.clone(), 100, true)));
    vm.buses
        .mmio
        .insert(
            uart.clone(),
            layout::CONSOLE_UART_START,
            layout::CONSOLE_UART_SIZE,
        )
        .unwrap();
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    vm.attach_pio(recorder.clone(), 0x10, 1);
    (vm, uart, capture, recorder)
}

#[test]
fn the_console_uart_line_status_is_polled_without_exits() {
    // 64 times: read LSR (memory), wait for THRE, write 'A' to THR (queued); then report
    // the last LSR on port 0x10 and halt.
    let (mut vm, uart, capture, recorder) = console_uart_guest(&[
        0xb9, 0x40, 0x00, 0x00, 0x00, // mov ecx, 64
        0x8a, 0x46, 0x05, // again: mov al, [rsi + 5]   (LSR)
        0xa8, 0x20, // test al, 0x20
        0x74, 0xf9, // jz again
        0x88, 0xc3, // mov bl, al
        0xb0, 0x41, // mov al, 'A'
        0x88, 0x06, // mov [rsi], al   (THR)
        0xff, 0xc9, // dec ecx
        0x75, 0xef, // jnz again
        0x88, 0xd8, // mov al, bl
        0xe6, 0x10, // out 0x10, al
        0xf4, // hlt
    ]);
    vm.coalesced = CoalescedIo::new(&vm.kvm, vm.vm.clone(), &vm.vcpu).map(Arc::new);
    let coalesced = vm
        .coalesced
        .clone()
        .expect("this test needs KVM's coalesced ring");
    // At reset no interrupt is enabled: the transmitter is polled, THR writes may queue.
    uart.lock().unwrap().allow_queued_writes(coalesced);
    assert!(uart.lock().unwrap().reads_from_memory());
    assert_eq!(vm.run(), Outcome::Halted);
    assert_eq!(capture.0.lock().unwrap().as_slice(), [b'A'; 64]);
    assert_eq!(
        recorder.lock().unwrap().writes,
        vec![(0, vec![0x60])],
        "LSR: THRE | TEMT"
    );
    let (pio, mmio, _) = vm.counters.snapshot();
    assert_eq!(
        (pio, mmio),
        (1, 0),
        "neither the 64 LSR reads nor the THR writes exited"
    );
}

#[test]
fn console_uart_input_makes_its_reads_exit_until_it_is_read() {
    // LSR, RBR, LSR, each reported on port 0x10.
    let (mut vm, uart, _capture, recorder) = console_uart_guest(&[
        0x8a, 0x46, 0x05, // mov al, [rsi + 5]   (LSR: exits)
        0xe6, 0x10, // out 0x10, al
        0x8a, 0x06, // mov al, [rsi]   (RBR: exits)
        0xe6, 0x10, // out 0x10, al
        0x8a, 0x46, 0x05, // mov al, [rsi + 5]   (LSR: memory again)
        0xe6, 0x10, // out 0x10, al
        0xf4, // hlt
    ]);
    assert_eq!(uart.lock().unwrap().enqueue_input(b"k"), 1);
    assert!(!uart.lock().unwrap().reads_from_memory(), "input waiting");
    assert_eq!(vm.run(), Outcome::Halted);
    assert_eq!(
        recorder.lock().unwrap().writes,
        vec![(0, vec![0x61]), (0, vec![b'k']), (0, vec![0x60])]
    );
    assert_eq!(
        vm.counters.snapshot().1,
        2,
        "only the reads while input waited exited"
    );
    assert!(uart.lock().unwrap().reads_from_memory());
}
