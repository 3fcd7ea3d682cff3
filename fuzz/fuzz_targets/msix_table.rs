//! The MSI-X capability and its vector table, against a byte-array model: reads and
//! writes of 1 to 8 bytes at arbitrary BAR offsets (inside the table, across its ends and
//! anywhere else), message control writes, and the vectors the VMM would route.
//!
//! Input: 10 bytes of header (message control as LE u16, the table and PBA dwords as LE
//! u32: BIR and offset), then the accesses (`arbitrary`).
//!
//! Checked: reads return the model's bytes (0xFF outside the table), writes report a change
//! exactly when a byte changed, the table starts with every vector masked, `in_table` and
//! `in_pba` agree with the table's and PBA's extent, the vectors follow enable and the
//! function mask, and the header's read-only bits stay.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use minivmm_devices::pci::config_space::ConfigSpace;
use minivmm_devices::pci::msi::{MsixCapability, MSIX_ENTRY_SIZE};
use minivmm_fuzz::ops;

/// Where the capability sits in configuration space.
const CAP: u16 = 0x70;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A read of `len % 8 + 1` bytes at a BAR offset.
    Read { bar: u8, offset: u64, len: u8 },
    /// A write of `len % 8 + 1` bytes of `value` at a BAR offset.
    Write {
        bar: u8,
        offset: u64,
        len: u8,
        value: u64,
    },
    /// The same, near the table (`offset` relative to its start, may fall before it).
    TableWrite { delta: i16, len: u8, value: u64 },
    /// A write of the message control word (or of its upper byte).
    Control { value: u16, byte: bool },
}

fuzz_target!(|data: &[u8]| {
    let Some((header, accesses)) = data.split_first_chunk::<10>() else {
        return;
    };
    let control = u16::from_le_bytes([header[0], header[1]]);
    let table = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    let pba = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    let cap_header = 0x0011 | (u32::from(control) << 16);
    let mut msix = MsixCapability::new(CAP, cap_header, table, pba);
    let mut shadow = ConfigSpace::new();
    msix.init_shadow(&mut shadow, cap_header);

    let entries = usize::from(control & 0x7ff) + 1;
    assert_eq!(msix.entries(), entries);
    assert_eq!(msix.table_len(), entries as u64 * MSIX_ENTRY_SIZE);
    assert_eq!(msix.pba_len(), entries.div_ceil(64) as u64 * 8);
    // Every vector starts masked: control word 1, the rest 0.
    let mut model: Vec<u8> = (0..msix.table_len())
        .map(|i| u8::from(i % MSIX_ENTRY_SIZE == 12))
        .collect();
    let table_bar = (table & 7) as u8;

    for op in ops::<Op>(accesses) {
        match op {
            Op::Read { bar, offset, len } => {
                let len = usize::from(len % 8) + 1;
                check_extent(&msix, bar % 8, offset);
                if bar % 8 == table_bar {
                    let mut out = [0u8; 8];
                    msix.read_table(offset, &mut out[..len]);
                    for (i, byte) in out[..len].iter().enumerate() {
                        assert_eq!(*byte, model_byte(&msix, &model, offset, i), "read");
                    }
                }
            }
            Op::Write {
                bar,
                offset,
                len,
                value,
            } => {
                check_extent(&msix, bar % 8, offset);
                if bar % 8 == table_bar {
                    write(&mut msix, &mut model, offset, len, value);
                }
            }
            Op::TableWrite { delta, len, value } => {
                let offset = msix.table_offset.wrapping_add_signed(i64::from(delta));
                write(&mut msix, &mut model, offset, len, value);
            }
            Op::Control { value, byte } => {
                if byte {
                    shadow.write(CAP + 3, &value.to_le_bytes()[..1]);
                } else {
                    shadow.write(CAP + 2, &value.to_le_bytes());
                }
                assert_eq!(
                    shadow.read_dword(CAP) & 0x3fff_ffff,
                    cap_header & 0x3fff_ffff,
                    "read-only bits of the MSI-X header changed"
                );
            }
        }
        check_vectors(&msix, &shadow, &model);
    }
});

/// What the table holds at `offset + i` (BAR-relative), 0xFF outside it.
fn model_byte(msix: &MsixCapability, model: &[u8], offset: u64, i: usize) -> u8 {
    offset
        .checked_add(i as u64)
        .and_then(|at| at.checked_sub(msix.table_offset))
        .and_then(|at| usize::try_from(at).ok())
        .and_then(|at| model.get(at))
        .copied()
        .unwrap_or(0xff)
}

/// Write `len % 8 + 1` bytes through the capability and into the model.
fn write(msix: &mut MsixCapability, model: &mut [u8], offset: u64, len: u8, value: u64) {
    let bytes = &value.to_le_bytes()[..usize::from(len % 8) + 1];
    let mut changed = false;
    for (i, byte) in bytes.iter().enumerate() {
        let at = offset
            .checked_add(i as u64)
            .and_then(|at| at.checked_sub(msix.table_offset))
            .and_then(|at| usize::try_from(at).ok());
        if let Some(slot) = at.and_then(|at| model.get_mut(at)) {
            changed |= *slot != *byte;
            *slot = *byte;
        }
    }
    assert_eq!(
        msix.write_table(offset, bytes),
        changed,
        "write at {offset:#x}"
    );
}

/// `in_table` and `in_pba` say what the capability's offsets and lengths say.
fn check_extent(msix: &MsixCapability, bar: u8, offset: u64) {
    let inside =
        |bir: u8, start: u64, len: u64| bar == bir && offset >= start && offset - start < len;
    assert_eq!(
        msix.in_table(bar, offset),
        inside(msix.table_bar, msix.table_offset, msix.table_len())
    );
    assert_eq!(
        msix.in_pba(bar, offset),
        inside(msix.pba_bar, msix.pba_offset, msix.pba_len())
    );
}

/// The vectors are the model's entries while MSI-X is on, masked per entry or all.
fn check_vectors(msix: &MsixCapability, shadow: &ConfigSpace, model: &[u8]) {
    let control = shadow.read_dword(CAP);
    let vectors = msix.vectors(shadow);
    if control & (1 << 31) == 0 {
        assert!(vectors.is_none(), "vectors while MSI-X is off");
        return;
    }
    let vectors = vectors.expect("MSI-X on but no vectors");
    assert_eq!(vectors.len(), msix.entries());
    let function_mask = control & (1 << 30) != 0;
    for (vector, entry) in vectors.iter().zip(model.chunks(MSIX_ENTRY_SIZE as usize)) {
        let dword = |i: usize| u32::from_le_bytes(entry[i..i + 4].try_into().unwrap());
        assert_eq!(
            vector.address,
            u64::from(dword(0)) | (u64::from(dword(4)) << 32)
        );
        assert_eq!(vector.data, dword(8));
        assert_eq!(vector.masked, function_mask || dword(12) & 1 != 0);
    }
}
