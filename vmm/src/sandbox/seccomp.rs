//! A seccomp filter for each kind of thread minivmm runs, built with seccompiler: each
//! allows the system calls that thread makes and nothing else, ioctls by request number.
//!
//! A thread installs its own filter when it starts (threads inherit their creator's
//! filter, and filters stack, so the main thread installs its one last, after it has
//! started the vCPUs). A forbidden call raises SIGSYS in the thread that made it; the
//! handler writes one line naming the thread and the call and ends the process.

use std::cell::Cell;
use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_coalesced_mmio_zone, kvm_debugregs, kvm_device_attr, kvm_fpu, kvm_ioeventfd,
    kvm_irq_routing, kvm_irqchip, kvm_irqfd, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

use super::SeccompMode;
use crate::vfio_requests::{
    VFIO_DEVICE_GET_INFO, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_DEVICE_PCI_HOT_RESET,
    VFIO_DEVICE_RESET, VFIO_DEVICE_SET_IRQS, VFIO_GROUP_UNSET_CONTAINER, VFIO_IOMMU_MAP_DMA,
    VFIO_IOMMU_UNMAP_DMA,
};

/// The threads minivmm starts, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the guest runs: the event loop, stopping the vCPUs, teardown.
    Main,
    /// A vCPU: KVM_RUN and the devices its exits reach.
    Vcpu,
    /// The kernel loader and the decoding threads it starts: files in, guest memory out.
    Loader,
    /// A disk's I/O thread: its image read and written at offsets into guest memory,
    /// flushed, and eventfds (the queue's, the irqfds).
    Disk,
    /// The thread that prefaults guest RAM (on threads it starts) and DMA-maps it.
    DmaMap,
}

const KVMIO: u32 = 0xae;

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(
    KVM_REGISTER_COALESCED_MMIO,
    KVMIO,
    0x67,
    kvm_coalesced_mmio_zone
);
ioctl_iow_nr!(
    KVM_UNREGISTER_COALESCED_MMIO,
    KVMIO,
    0x68,
    kvm_coalesced_mmio_zone
);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
// A guest reboot: each vCPU thread puts its vCPU back, the main thread the chips.
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_irqchip);
ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_pit_state2);

/// The ioctls each thread may make.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    // A vCPU's exits reach the devices: BAR moves change memory slots (and a disk's notify
    // ioeventfd), MSI programming changes GSI routes, irqfds and VFIO's interrupt set-up,
    // the COM1 transmit zone goes on and off, and a failing vCPU reports its registers.
    let vcpu = [
        KVM_RUN(),
        KVM_GET_REGS(),
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_GSI_ROUTING(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
        KVM_REGISTER_COALESCED_MMIO(),
        KVM_UNREGISTER_COALESCED_MMIO(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_RESET(),
        // After a guest reboot, the vCPU's state at hand-off goes back.
        KVM_SET_REGS(),
        KVM_SET_SREGS(),
        KVM_SET_MSRS(),
        KVM_SET_FPU(),
        KVM_SET_LAPIC(),
        KVM_SET_MP_STATE(),
        KVM_SET_VCPU_EVENTS(),
        KVM_SET_DEBUGREGS(),
        KVM_SET_XCRS(),
    ];
    // The main thread restores the terminal and tears the VM down: interrupts off, BAR
    // slots removed, DMA unmapped. For a guest reboot it also resets the devices (through
    // their bus when they must be) and the interrupt chips, and switches the console
    // UART's coalesced zone, and puts the disks' BARs back where they were placed.
    let main = [
        libc::TCGETS,
        libc::TCSETS,
        KVM_SET_USER_MEMORY_REGION(),
        KVM_SET_GSI_ROUTING(),
        KVM_IRQFD(),
        KVM_IOEVENTFD(),
        KVM_REGISTER_COALESCED_MMIO(),
        KVM_UNREGISTER_COALESCED_MMIO(),
        KVM_SET_DEVICE_ATTR(),
        KVM_SET_IRQCHIP(),
        KVM_SET_PIT2(),
        VFIO_DEVICE_SET_IRQS(),
        VFIO_DEVICE_GET_INFO(),
        VFIO_DEVICE_RESET(),
        VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
        VFIO_DEVICE_PCI_HOT_RESET(),
        VFIO_IOMMU_UNMAP_DMA(),
        VFIO_GROUP_UNSET_CONTAINER(),
    ];
    let dma_map = [VFIO_IOMMU_MAP_DMA()];
    let list: &[libc::c_ulong] = match kind {
        ThreadKind::Vcpu => &vcpu,
        ThreadKind::Main => &main,
        ThreadKind::DmaMap => &dma_map,
        ThreadKind::Loader | ThreadKind::Disk => &[],
    };
    list.iter()
        .map(|&request| u64::from(request as u32))
        .collect()
}

/// What every thread needs: memory, locks, signals, time, logging to stderr, ending.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What each kind of thread needs beyond [`COMMON`] and ioctl.
fn specific(kind: ThreadKind) -> &'static [libc::c_long] {
    match kind {
        // VFIO regions are read and written at offsets; MSI vectors get new eventfds.
        ThreadKind::Vcpu => &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_eventfd2],
        // fallocate: a reboot punches the huge pages of guest RAM out of their memfd.
        ThreadKind::Main => &[
            libc::SYS_fallocate,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_pread64,
            libc::SYS_pwrite64,
        ],
        // Files in, and the decoding threads started.
        ThreadKind::Loader => &[
            libc::SYS_openat,
            libc::SYS_lseek,
            libc::SYS_pread64,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_prctl,
            libc::SYS_sched_getaffinity,
        ],
        // The prefault threads started (their stacks mapped under the common rules), and
        // the id changes of giving up root: glibc makes every thread of the process do
        // them, and this thread may still be mapping then (after it, none can regain root).
        ThreadKind::DmaMap => &[
            libc::SYS_setgroups,
            libc::SYS_setresgid,
            libc::SYS_setresuid,
            // drop_to's check that root is gone for good (setuid(0) must fail).
            libc::SYS_setuid,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
        ],
        ThreadKind::Disk => &[
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_preadv2,
            libc::SYS_pwritev2,
            libc::SYS_fdatasync,
        ],
    }
}

/// `(arg & PROT_EXEC) == 0`: memory may be mapped and protected, never executable.
fn without_exec(arg: u8) -> Vec<SeccompRule> {
    let condition = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    );
    condition
        .and_then(|c| SeccompRule::new(vec![c]))
        .map(|rule| vec![rule])
        .unwrap_or_default()
}

/// The filter of `kind`, answering forbidden calls with `mismatch`.
pub fn filter(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &call in COMMON.iter().chain(specific(kind)) {
        rules.insert(call, Vec::new());
    }
    rules.insert(libc::SYS_mmap, without_exec(2));
    rules.insert(libc::SYS_mprotect, without_exec(2));
    let requests = ioctls(kind)
        .into_iter()
        .map(|request| {
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if !requests.is_empty() {
        rules.insert(libc::SYS_ioctl, requests);
    }
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| e.to_string())
}

thread_local! {
    /// This thread's name, for the SIGSYS message (read without allocating).
    static NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// Install `kind`'s filter on the calling thread, as `mode` says.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), String> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::On => SeccompAction::Trap,
    };
    let mut name = [0u8; 16];
    let current = std::thread::current();
    let text = current.name().unwrap_or("main").as_bytes();
    for (slot, byte) in name.iter_mut().zip(text.iter().take(15)) {
        *slot = *byte;
    }
    NAME.with(|cell| cell.set(name));
    let program = filter(kind, mismatch)?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

/// Where the system call number sits in a SIGSYS siginfo (`si_syscall`, after the
/// signal number, errno, code, padding and the calling address).
const SI_SYSCALL_OFFSET: usize = 24;

/// Names of the calls a compromised or buggy minivmm would most likely try.
fn syscall_name(number: i64) -> &'static str {
    match number {
        n if n == libc::SYS_openat => "openat",
        n if n == libc::SYS_open => "open",
        n if n == libc::SYS_ioctl => "ioctl (a request outside the thread's list)",
        n if n == libc::SYS_socket => "socket",
        n if n == libc::SYS_connect => "connect",
        n if n == libc::SYS_execve => "execve",
        n if n == libc::SYS_execveat => "execveat",
        n if n == libc::SYS_fork => "fork",
        n if n == libc::SYS_vfork => "vfork",
        n if n == libc::SYS_clone => "clone",
        n if n == libc::SYS_clone3 => "clone3",
        n if n == libc::SYS_kill => "kill",
        n if n == libc::SYS_ptrace => "ptrace",
        n if n == libc::SYS_mmap => "mmap (executable)",
        n if n == libc::SYS_mprotect => "mprotect (executable)",
        n if n == libc::SYS_setuid => "setuid",
        n if n == libc::SYS_mount => "mount",
        n if n == libc::SYS_unlinkat => "unlinkat",
        n if n == libc::SYS_prctl => "prctl",
        n if n == libc::SYS_fstat => "fstat",
        n if n == libc::SYS_newfstatat => "newfstatat",
        n if n == libc::SYS_statx => "statx",
        n if n == libc::SYS_poll => "poll",
        n if n == libc::SYS_ppoll => "ppoll",
        n if n == libc::SYS_dup => "dup",
        n if n == libc::SYS_fcntl => "fcntl",
        n if n == libc::SYS_eventfd2 => "eventfd2",
        n if n == libc::SYS_getpid => "getpid",
        _ => "see ausyscall or /usr/include/asm/unistd_64.h",
    }
}

/// Decimal digits of `value` into `out`, returning how many were written.
fn write_decimal(mut value: u64, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        if let Some(slot) = digits.get_mut(n) {
            *slot = b'0' + (value % 10) as u8;
        }
        n += 1;
        value /= 10;
        if value == 0 || n == digits.len() {
            break;
        }
    }
    for (i, slot) in out.iter_mut().take(n).enumerate() {
        *slot = digits.get(n - 1 - i).copied().unwrap_or(b'?');
    }
    n.min(out.len())
}

/// The SIGSYS handler: one line on stderr, then the process ends (exit status 1). Only
/// calls every filter allows (write, exit_group), no allocation, no locks.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let number = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo for SIGSYS; si_syscall is an int at
        // SI_SYSCALL_OFFSET of it.
        i64::from(unsafe {
            std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>())
        })
    };
    let name = NAME.with(Cell::get);
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let mut line = [0u8; 256];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        for &byte in bytes {
            if let Some(slot) = line.get_mut(len) {
                *slot = byte;
                len += 1;
            }
        }
    };
    put(b"minivmm: seccomp: thread ");
    if name_len == 0 {
        // A thread started by a confined one (the loader's decoders) inherits its filter.
        put(b"(started by a confined thread)");
    }
    put(name.get(..name_len).unwrap_or_default());
    put(b" made system call ");
    let mut digits = [0u8; 20];
    let n = write_decimal(number.unsigned_abs(), &mut digits);
    put(digits.get(..n).unwrap_or_default());
    put(b" (");
    put(syscall_name(number).as_bytes());
    put(b"), which its filter forbids; minivmm stops (--seccomp log lets such calls through and logs them to the kernel's audit log)\n");
    // SAFETY: write(2) of a stack buffer to stderr, then _exit: both async-signal-safe and
    // allowed by every filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len);
        libc::_exit(1);
    }
}

/// Route SIGSYS to [`on_sigsys`] (before any filter that traps is installed).
pub fn install_sigsys_handler() -> Result<(), String> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| format!("cannot handle SIGSYS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_are_the_kernels() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_SET_REGS(), 0x4090_ae82);
        assert_eq!(KVM_SET_SREGS(), 0x4138_ae84);
        assert_eq!(KVM_SET_MSRS(), 0x4008_ae89);
        assert_eq!(KVM_SET_LAPIC(), 0x4400_ae8f);
        assert_eq!(KVM_SET_MP_STATE(), 0x4004_ae99);
        assert_eq!(KVM_SET_VCPU_EVENTS(), 0x4040_aea0);
        assert_eq!(KVM_SET_IRQCHIP(), 0x8208_ae63);
        assert_eq!(KVM_SET_PIT2(), 0x4070_aea0);
    }

    /// Run `body` on a thread under `kind`'s filter, forbidden calls failing with EPERM
    /// instead of SIGSYS, and return what it returned.
    fn under_filter<T: Send + 'static>(kind: ThreadKind, body: fn() -> T) -> T {
        std::thread::spawn(move || {
            let program = filter(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
            seccompiler::apply_filter(&program).unwrap();
            body()
        })
        .join()
        .unwrap()
    }

    fn errno_of(rc: i64) -> i32 {
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        }
    }

    #[test]
    fn a_vcpu_may_run_kvm_but_not_open_files_or_other_ioctls() {
        let (open, socket, run, unlisted) = under_filter(ThreadKind::Vcpu, || {
            // SAFETY: plain system calls on invalid descriptors and a static path.
            unsafe {
                (
                    errno_of(libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64),
                    errno_of(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64),
                    errno_of(libc::ioctl(-1, KVM_RUN()) as i64),
                    errno_of(libc::ioctl(-1, libc::TIOCSTI) as i64),
                )
            }
        });
        assert_eq!(open, libc::EPERM, "open");
        assert_eq!(socket, libc::EPERM, "socket");
        assert_eq!(run, libc::EBADF, "KVM_RUN reaches the kernel");
        assert_eq!(unlisted, libc::EPERM, "an unlisted ioctl");
    }

    #[test]
    fn the_dma_mapper_may_map_dma_and_start_threads_but_not_open_files_or_unmap_dma() {
        let (open, map, unmap, thread) = under_filter(ThreadKind::DmaMap, || {
            // SAFETY: plain system calls on invalid descriptors and a static path.
            let calls = unsafe {
                (
                    errno_of(libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64),
                    errno_of(libc::ioctl(-1, VFIO_IOMMU_MAP_DMA()) as i64),
                    errno_of(libc::ioctl(-1, VFIO_IOMMU_UNMAP_DMA()) as i64),
                )
            };
            let thread = std::thread::spawn(|| 7).join().ok();
            (calls.0, calls.1, calls.2, thread)
        });
        assert_eq!(open, libc::EPERM, "open");
        assert_eq!(map, libc::EBADF, "VFIO_IOMMU_MAP_DMA reaches the kernel");
        assert_eq!(
            unmap,
            libc::EPERM,
            "VFIO_IOMMU_UNMAP_DMA is the main thread's"
        );
        assert_eq!(thread, Some(7), "prefault threads can be started");
    }

    #[test]
    fn no_thread_may_map_executable_memory() {
        for kind in [
            ThreadKind::Main,
            ThreadKind::Vcpu,
            ThreadKind::Loader,
            ThreadKind::Disk,
            ThreadKind::DmaMap,
        ] {
            let (data, code) = under_filter(kind, || {
                let map = |prot| {
                    // SAFETY: a fresh anonymous mapping, unmapped right away when made.
                    unsafe {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            4096,
                            prot,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        if p == libc::MAP_FAILED {
                            return errno_of(-1);
                        }
                        libc::munmap(p, 4096);
                        0
                    }
                };
                (
                    map(libc::PROT_READ | libc::PROT_WRITE),
                    map(libc::PROT_READ | libc::PROT_EXEC),
                )
            });
            assert_eq!((data, code), (0, libc::EPERM), "{kind:?}");
        }
    }

    #[test]
    fn only_the_loader_opens_files_and_starts_threads() {
        let (open, thread) = under_filter(ThreadKind::Loader, || {
            // SAFETY: opening a file read-only and closing it.
            let fd = unsafe { libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY) };
            let open = errno_of(fd as i64);
            // SAFETY: `fd` was just opened (or is -1, which close rejects).
            unsafe { libc::close(fd) };
            let thread = std::thread::spawn(|| 7).join().unwrap_or(0);
            (open, thread)
        });
        assert_eq!((open, thread), (0, 7));
        let open = under_filter(ThreadKind::Main, || {
            // SAFETY: as above.
            errno_of(unsafe { libc::open(c"/proc/self/stat".as_ptr(), libc::O_RDONLY) } as i64)
        });
        assert_eq!(open, libc::EPERM);
    }

    #[test]
    fn a_disk_thread_reads_and_writes_at_offsets_and_flushes_but_opens_nothing() {
        let (io, flush, open, ioctl) = under_filter(ThreadKind::Disk, || {
            let mut byte = [0u8; 1];
            let iov = libc::iovec {
                iov_base: byte.as_mut_ptr().cast(),
                iov_len: 1,
            };
            // SAFETY: system calls on an invalid descriptor, with a live one-byte iovec.
            unsafe {
                (
                    errno_of(libc::preadv(-1, &iov, 1, 0) as i64)
                        + errno_of(libc::pwritev(-1, &iov, 1, 0) as i64),
                    errno_of(libc::fdatasync(-1) as i64),
                    errno_of(libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64),
                    errno_of(libc::ioctl(-1, KVM_RUN()) as i64),
                )
            }
        });
        assert_eq!(io, 2 * libc::EBADF, "preadv and pwritev reach the kernel");
        assert_eq!(flush, libc::EBADF, "fdatasync reaches the kernel");
        assert_eq!((open, ioctl), (libc::EPERM, libc::EPERM));
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut out = [0u8; 20];
        let n = write_decimal(41, &mut out);
        assert_eq!(&out[..n], b"41");
        let n = write_decimal(0, &mut out);
        assert_eq!(&out[..n], b"0");
    }
}
