//! Runs one lab scenario by hand, streaming L1's console:
//! `lab-run SCENARIO [KEY=VALUE]... [--quiet]` (KEY=VALUE becomes lab.KEY=VALUE in L1).
//! Exits 0 when L1 powered off after the scenario reported `LAB:DONE rc=0`.

use std::process::ExitCode;

use minivmm_tests::lab::{End, Lab, RunOptions};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(scenario) = args.next() else {
        eprintln!("usage: lab-run SCENARIO [KEY=VALUE]... [--quiet]");
        return ExitCode::from(2);
    };
    let mut opts = RunOptions {
        echo: true,
        ..RunOptions::default()
    };
    for arg in args {
        match arg.split_once('=') {
            _ if arg == "--quiet" => opts.echo = false,
            Some((key, value)) => opts = opts.param(key, value),
            None => {
                eprintln!("lab-run: expected KEY=VALUE or --quiet, got {arg}");
                return ExitCode::from(2);
            }
        }
    }
    let run = match Lab::locate().and_then(|lab| lab.run(&scenario, &opts)) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("lab-run: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("\n{}", run.summary());
    for (name, picture) in &run.pictures {
        match picture {
            Ok(file) => eprintln!("picture {name}: {}", file.display()),
            Err(e) => eprintln!("picture {name}: {e}"),
        }
    }
    if run.end == End::Exited(Some(0)) && run.done_rc() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
