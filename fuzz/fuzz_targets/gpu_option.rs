//! `--gpu` option parsing, alone and through the command line (clap), and the other
//! value parsers of the command line: PCI addresses, sizes, serial modes.
//!
//! Input: the option's text (UTF-8; other bytes are replaced).
//!
//! Checked: clap accepts `--gpu=TEXT` exactly when the `--gpu` parser does and keeps what
//! it parsed; a parsed value is consistent (a PCI address in the kernel's form, a mediated
//! device path, `vbios=` paths only with an image or `rom=auto`), and writing it back out parses to the
//! same value.

#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use minivmm::cli::{parse_pci_address, Args};
use minivmm::config::{parse_size, SerialMode};
use minivmm::passthrough::{GpuArg, GpuSpec, RomChoice};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = text.parse::<GpuArg>();
    if let Ok(arg) = &parsed {
        check(arg);
    }

    let option = format!("--gpu={text}");
    let args = Args::try_parse_from(["minivmm", "--kernel", "bzImage", &option]);
    match (&parsed, args) {
        (Ok(arg), Ok(args)) => assert_eq!(args.gpu, std::slice::from_ref(arg)),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("clap refuses a --gpu value the parser takes: {e}"),
        (Err(e), Ok(_)) => panic!("clap takes a --gpu value the parser refuses: {e}"),
    }

    if let Ok(bdf) = parse_pci_address(&text) {
        assert_eq!(text.parse::<GpuSpec>(), Ok(GpuSpec::Pci(bdf)));
    }
    if let Ok(size) = parse_size(&text) {
        if text.trim().ends_with(['G', 'g']) {
            assert_eq!(size % (1 << 30), 0, "{text} is {size}");
        }
    }
    if let Ok(SerialMode::File(path)) = text.parse::<SerialMode>() {
        assert!(!path.as_os_str().is_empty());
    }
});

/// A parsed `--gpu` value is consistent and survives being written out again.
fn check(arg: &GpuArg) {
    match &arg.device {
        GpuSpec::Pci(bdf) => {
            assert_eq!(bdf.len(), 12, "{bdf}");
            assert_eq!(bdf.to_ascii_lowercase(), *bdf);
            assert_eq!(bdf.parse::<GpuSpec>(), Ok(arg.device.clone()));
        }
        GpuSpec::Mdev(path) => assert!(path.is_absolute()),
    }
    if arg.vbios.vfct || arg.vbios.atrm || arg.vbios.setup {
        assert!(
            arg.rom != RomChoice::Own,
            "vbios paths without an image: {arg:?}"
        );
    }
    let again: GpuArg = render(arg).parse().expect("a written-out value parses");
    assert_eq!(&again, arg);
}

/// `arg` as a `--gpu` value.
fn render(arg: &GpuArg) -> String {
    let mut text = arg.device.to_string();
    let rom = match &arg.rom {
        RomChoice::File(path) => Some(path.to_str().unwrap().to_string()),
        RomChoice::Auto => Some("auto".to_string()),
        RomChoice::Own => None,
    };
    if let Some(rom) = rom {
        text += &format!(",rom={rom}");
        let paths: Vec<&str> = [
            (arg.vbios.rom_bar, "rombar"),
            (arg.vbios.vfct, "vfct"),
            (arg.vbios.atrm, "atrm"),
            (arg.vbios.setup, "setup"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        let paths = if paths.is_empty() {
            "none".to_string()
        } else {
            paths.join("+")
        };
        text += &format!(",vbios={paths}");
    } else {
        text += ",rom=none";
        if !arg.vbios.rom_bar {
            text += ",rombar=off";
        }
    }
    if arg.skip_id_check {
        text += ",romcheck=off";
    }
    if arg.on_root_bus {
        text += ",bus=root";
    }
    if !arg.quirks {
        text += ",quirks=off";
    }
    if arg.vga {
        text += ",vga=on";
    }
    text
}
