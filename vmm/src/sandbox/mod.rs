//! The sandbox of the process that runs the guest: once the VM is built it gives up root
//! ([`privileges`]) and every thread runs under its own seccomp filter ([`seccomp`]).
//! `--managed` adds a process boundary on top (see `supervisor`).

pub mod privileges;
pub mod seccomp;

pub use privileges::Account;
pub use seccomp::ThreadKind;

/// `--seccomp`: what a system call outside a thread's filter does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// It ends minivmm, with a line naming the thread and the call.
    #[default]
    On,
    /// It goes through and the kernel logs it (audit type 1326): for finding what a
    /// filter lacks.
    Log,
    /// No filters.
    Off,
}

/// How the guest-running process confines itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The filters.
    pub seccomp: SeccompMode,
    /// Who to become once the VM is built, when running as root (`None`: stay root).
    pub user: Option<Account>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            seccomp: SeccompMode::On,
            user: Some(privileges::NOBODY),
        }
    }
}

impl Sandbox {
    /// Before any thread installs a trapping filter: route SIGSYS to the handler that
    /// names the thread and the call.
    pub fn prepare(&self) -> Result<(), String> {
        if self.seccomp == SeccompMode::On {
            seccomp::install_sigsys_handler()?;
        }
        Ok(())
    }

    /// Give up root (when running as root and a user is set), then set no_new_privs.
    pub fn drop_privileges(&self) -> Result<(), String> {
        match self.user {
            Some(account) => privileges::drop_to(account),
            None => Ok(()),
        }
    }

    /// Install `kind`'s filter on the calling thread.
    pub fn confine(&self, kind: ThreadKind) -> Result<(), String> {
        seccomp::install(kind, self.seccomp)
    }
}

/// Faults the test suite injects (environment variable `MINIVMM_TEST_FAULT`) to prove the
/// exit paths. Each can only make this process fail, never reach outside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// vCPU 0 panics as it starts.
    VcpuPanic,
    /// vCPU 0 makes a system call its filter forbids (socket) as it starts.
    VcpuSyscall,
    /// Once the sandbox is up, the main thread tries to write sysfs (an empty line to
    /// `/sys/bus/pci/drivers_probe`, which probes nothing) and reports what happened.
    WriteSysfs,
}

/// The fault the environment asks for, if any.
pub fn injected_fault() -> Option<Fault> {
    static FAULT: std::sync::OnceLock<Option<Fault>> = std::sync::OnceLock::new();
    *FAULT.get_or_init(
        || match std::env::var("MINIVMM_TEST_FAULT").ok()?.as_str() {
            "vcpu-panic" => Some(Fault::VcpuPanic),
            "vcpu-syscall" => Some(Fault::VcpuSyscall),
            "write-sysfs" => Some(Fault::WriteSysfs),
            _ => None,
        },
    )
}

/// [`Fault::WriteSysfs`]: the line the test reads.
pub fn try_writing_sysfs() {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open("/sys/bus/pci/drivers_probe")
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"\n"));
    match result {
        Ok(()) => eprintln!("minivmm: test fault: wrote /sys/bus/pci/drivers_probe"),
        Err(e) => eprintln!("minivmm: test fault: cannot write /sys/bus/pci/drivers_probe: {e}"),
    }
}
