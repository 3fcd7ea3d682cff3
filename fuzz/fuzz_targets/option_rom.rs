//! The option-ROM parser (`minivmm rom info`, `rom=FILE` validation) on arbitrary files.
//!
//! Input: the file's bytes.
//!
//! Checked: a parsed chain starts at 0, each image follows the last, lengths are whole
//! 512-byte blocks, images and trailing bytes add up to the file, only the last image says
//! last, x86 images have a good checksum, the report and every error message format; and
//! the ROM BAR that serves the file is a power of two of at least 2 KiB that holds it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use minivmm_firmware::option_rom::{self, CodeType};

fuzz_target!(|data: &[u8]| {
    let bar = option_rom::bar_size(data.len());
    assert!(bar.is_power_of_two() && bar >= 2048 && bar >= data.len() as u64);
    let rom = match option_rom::parse(data) {
        Ok(rom) => rom,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(!rom.images.is_empty());
    let mut next = 0;
    for (n, image) in rom.images.iter().enumerate() {
        assert_eq!(image.offset, next, "image {n} does not follow the last");
        assert!(image.length > 0 && image.length % 512 == 0);
        assert_eq!(
            image.last,
            n + 1 == rom.images.len(),
            "last mark of image {n}"
        );
        assert_eq!(
            image.checksum_ok,
            (image.code_type == CodeType::X86).then_some(true)
        );
        if image.efi.is_some() {
            assert_eq!(image.code_type, CodeType::Efi);
        }
        let bytes = &data[image.offset..image.offset + image.length];
        assert_eq!(&bytes[..2], &[0x55, 0xaa]);
        next += image.length;
    }
    assert_eq!(next + rom.trailing, data.len());
    let first = &rom.images[0];
    assert_eq!(rom.ids(), Some((first.vendor, first.device)));
    assert!(rom.describe().contains("image 0 at 0x0"));
});
