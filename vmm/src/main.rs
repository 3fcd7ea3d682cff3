//! The `minivmm` command.

use std::process::ExitCode;

use clap::Parser;
use minivmm::cli::{Args, Command, ManagedScope, RomCommand, Trace};
use minivmm::config::VmConfig;
use minivmm::event_loop::Finish;
use minivmm::host::binding::{Binder, Managed, RealKernel};
use minivmm::host::{doctor, groups, HostRoot};
use minivmm::passthrough::GpuSpec;
use minivmm::supervisor::{self, Role};
use minivmm::vcpu::Outcome;
use minivmm::vm::Vm;

/// Exit code for a VM that could not be built or failed while running.
const EXIT_FAILURE: u8 = 1;
/// Addresses listed by `--exit-stats`.
const EXIT_STATS_TOP: usize = 15;
/// Exit code for a command line clap or minivmm rejects.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(e),
    };
    init_logging(args.verbose, &args.trace);
    if let Some(command) = args.command {
        return run_tool(command);
    }
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("minivmm: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // A mistyped file must not move a device (Vm::build checks again for everyone else).
    if config.managed.is_some() {
        if let Err(e) = minivmm::vm::preflight(&config) {
            eprintln!("minivmm: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    let managed = match bind_managed(&config) {
        Ok(Some(managed)) => managed,
        Ok(None) => return build_and_run(&config),
        Err(e) => {
            eprintln!("minivmm: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let status = match supervisor::fork_vm() {
        Ok(Role::Child) => {
            // The binding record stays with the parent, which gives the devices back.
            std::mem::forget(managed);
            return build_and_run(&config);
        }
        Ok(Role::Parent(child)) => {
            let end = supervisor::supervise(child);
            if let Some(message) = end.message() {
                eprintln!("minivmm: {message}");
            }
            end.exit_code()
        }
        Err(e) => {
            eprintln!("minivmm: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    };
    // The VM process and its VFIO files are gone by now: vfio-pci can let the devices go.
    let failures = managed.release();
    for e in &failures {
        eprintln!("minivmm: {e}");
    }
    if failures.is_empty() {
        status
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// `--managed`: move the `--gpu` PCI devices to vfio-pci, with the stop signals blocked
/// first so that a signal from here on still ends in giving them back.
fn bind_managed(config: &VmConfig) -> Result<Option<Managed<RealKernel>>, String> {
    let Some(scope) = config.managed else {
        return Ok(None);
    };
    minivmm::event_loop::block_stop_signals()
        .map_err(|e| format!("cannot block signals for --managed: {e}"))?;
    let devices: Vec<String> = config
        .gpus
        .iter()
        .filter_map(|g| match &g.device {
            GpuSpec::Pci(bdf) => Some(bdf.clone()),
            GpuSpec::Mdev(_) => None,
        })
        .collect();
    let binder = Binder::new(HostRoot::system(), RealKernel);
    Managed::bind(binder, &devices, scope == ManagedScope::Group)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Build the VM, run it, and turn how it ended into an exit status.
fn build_and_run(config: &VmConfig) -> ExitCode {
    let vm = match Vm::build(config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("minivmm: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let counters = vm.counters.clone();
    let attached = vm.attached();
    let finish = vm.run();
    if config.exit_stats {
        eprint!("{}", minivmm::exit_stats::report(&counters, EXIT_STATS_TOP));
        eprint!("{}", minivmm::passthrough::report(&attached));
    }
    match finish {
        Ok(finish) => report(finish),
        Err(e) => {
            eprintln!("minivmm: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The tools: the result on stdout and status 0, or one line on stderr and status 1
/// (`doctor` prints its checklist either way; 1 means not ready).
fn run_tool(command: Command) -> ExitCode {
    let result = match command {
        Command::Rom(rom) => rom_tool(rom),
        Command::Doctor {
            devices,
            memory,
            json,
        } => return doctor_tool(devices, memory, json),
        Command::IommuGroups { json } => iommu_groups_tool(json),
        Command::Bind { devices, group } => binding_tool(&devices, group, true),
        Command::Unbind { devices, group } => binding_tool(&devices, group, false),
    };
    match result {
        Ok(text) => {
            print!("{}", text.trim_end());
            println!();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("minivmm: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn rom_tool(command: RomCommand) -> Result<String, String> {
    let sys = minivmm::rom_tool::sys_root();
    match command {
        RomCommand::Info { file } => minivmm::rom_tool::info(&file),
        RomCommand::Dump { device, output } => minivmm::rom_tool::dump(&sys, &device, &output),
        RomCommand::Extract { device, output } => {
            minivmm::rom_tool::extract(&sys, device.as_deref(), &output)
        }
    }
    .map_err(|e| e.to_string())
}

fn doctor_tool(devices: Vec<String>, memory: u64, json: bool) -> ExitCode {
    let config = doctor::DoctorConfig { devices, memory };
    let report = doctor::run(&HostRoot::system(), doctor::Probes::real(), &config);
    if json {
        println!("{:#}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

fn iommu_groups_tool(json: bool) -> Result<String, String> {
    let root = HostRoot::system();
    let list = groups::list(&root);
    let names = minivmm::host::pci::PciNames::load(&root);
    if json {
        return Ok(format!("{:#}", groups::json(&list, &names)));
    }
    if list.is_empty() {
        return Err(
            "there are no IOMMU groups: the IOMMU is off (minivmm doctor says how to turn it on)"
                .into(),
        );
    }
    Ok(groups::text(&list, &names))
}

/// `bind` (or `unbind` when `bind` is false): a line per device moved.
fn binding_tool(devices: &[String], group: bool, bind: bool) -> Result<String, String> {
    let binder = Binder::new(HostRoot::system(), RealKernel);
    let mut lines = Vec::new();
    for bdf in devices {
        if bind {
            let moved = binder.bind(bdf, group).map_err(|e| e.to_string())?;
            if moved.is_empty() {
                lines.push(format!("{bdf}: already on vfio-pci"));
            }
            lines.extend(moved.iter().map(|o| {
                let from = o.driver.as_deref().unwrap_or("no driver");
                format!("{}: moved from {from} to vfio-pci", o.bdf)
            }));
        } else {
            lines.extend(binder.unbind(bdf, group).map_err(|e| e.to_string())?);
        }
    }
    Ok(lines.join("\n"))
}

/// Help and version go to stdout as clap prints them; errors become one line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "the following required arguments were not provided:" names them on the next line.
    let detail = match (first.ends_with(':'), lines.next()) {
        (true, Some(next)) => format!(" {next}"),
        _ => String::new(),
    };
    eprintln!("minivmm: {first}{detail} (see minivmm --help)");
    ExitCode::from(EXIT_USAGE)
}

fn init_logging(verbose: u8, trace: &[Trace]) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // vfio-ioctls warns about optional IRQ indexes a device lacks; only its errors count.
    // Where each device's VBIOS comes from is said even without -v (one line per image).
    let mut filter = format!("{level},vfio_ioctls=error");
    if verbose == 0 {
        filter.push_str(",minivmm::passthrough::open=info");
    }
    for t in trace {
        filter = format!("{filter},{}", t.directive());
    }
    // Log lines carry the time since minivmm started, so `-v` shows where start-up time goes.
    let start = std::time::Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format(move |out, record| {
            use std::io::Write;
            // Trace lines carry their kind first ("pci 00:01.0 read ..."), for grep.
            match record.target() {
                target @ ("pci" | "bar" | "irq") => writeln!(out, "{target} {}", record.args()),
                _ => writeln!(
                    out,
                    "[{:8.3} {} {}] {}",
                    start.elapsed().as_secs_f64(),
                    record.level(),
                    record.target(),
                    record.args()
                ),
            }
        })
        .init();
}

/// Turn how the run ended into a message (when one is due) and an exit code.
fn report(finish: Finish) -> ExitCode {
    match finish {
        Finish::Vcpu(_, Outcome::PowerOff | Outcome::Halted | Outcome::Stopped) => {
            ExitCode::SUCCESS
        }
        Finish::Vcpu(_, Outcome::Exit(0)) => ExitCode::SUCCESS,
        Finish::Vcpu(_, Outcome::Exit(status)) => {
            eprintln!("minivmm: the guest wrote {status} to the exit device");
            ExitCode::from(status)
        }
        Finish::Vcpu(_, Outcome::Reboot) => {
            eprintln!("minivmm: the guest asked for a reboot; stopping (--no-reboot)");
            ExitCode::SUCCESS
        }
        Finish::Vcpu(_, Outcome::Failed(reason) | Outcome::Shutdown(reason)) => {
            eprintln!("minivmm: {reason}");
            ExitCode::from(EXIT_FAILURE)
        }
        Finish::UserQuit => ExitCode::SUCCESS,
        Finish::Host(reason) => {
            eprintln!("minivmm: {reason}");
            ExitCode::from(EXIT_FAILURE)
        }
        Finish::Signal(signal) => {
            eprintln!("minivmm: stopped by signal {signal}");
            ExitCode::from(128u8.saturating_add(signal as u8))
        }
    }
}
