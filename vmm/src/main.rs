//! The `minivmm` command.

use std::process::ExitCode;

use clap::Parser;
use minivmm::cli::{Args, Command, RomCommand, Trace};
use minivmm::event_loop::Finish;
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
    let vm = match Vm::build(&config) {
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

/// `minivmm rom ...`: the result on stdout, or one line on stderr and status 1.
fn run_tool(command: Command) -> ExitCode {
    let sys = minivmm::rom_tool::sys_root();
    let result = match command {
        Command::Rom(RomCommand::Info { file }) => minivmm::rom_tool::info(&file),
        Command::Rom(RomCommand::Dump { device, output }) => {
            minivmm::rom_tool::dump(&sys, &device, &output)
        }
        Command::Rom(RomCommand::Extract { device, output }) => {
            minivmm::rom_tool::extract(&sys, device.as_deref(), &output)
        }
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
    let mut filter = format!("{level},vfio_ioctls=error");
    for t in trace {
        filter = format!("{filter},{}", t.directive());
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(filter))
        .format(|out, record| {
            use std::io::Write;
            // Trace lines carry their kind first ("pci 00:01.0 read ..."), for grep.
            match record.target() {
                target @ ("pci" | "bar" | "irq") => writeln!(out, "{target} {}", record.args()),
                _ => writeln!(
                    out,
                    "[{} {}] {}",
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
        Finish::Vcpu(_, Outcome::Reboot) => {
            eprintln!("minivmm: the guest asked for a reboot; minivmm does not restart guests");
            ExitCode::SUCCESS
        }
        Finish::Vcpu(_, Outcome::Failed(reason)) => {
            eprintln!("minivmm: {reason}");
            ExitCode::from(EXIT_FAILURE)
        }
        Finish::UserQuit => ExitCode::SUCCESS,
        Finish::Signal(signal) => {
            eprintln!("minivmm: stopped by signal {signal}");
            ExitCode::from(128u8.saturating_add(signal as u8))
        }
    }
}
