//! Base address registers: what a function's BARs are, and how the configuration shadow
//! answers the guest's sizing probes (where they go is [`super::resources`]' choice).
//!
//! The shadow holds each BAR's guest address with `writable_bits` = the address bits the
//! size allows, so the classic probe (write all ones, read back) returns the size mask with
//! no special case, and a later write is a move the VMM picks up with [`bar_address`].

use super::config_space::ConfigSpace;

/// Offset of BAR 0 in a type-0 header.
pub const BAR0: u16 = 0x10;
/// Number of BARs in a type-0 header.
pub const BAR_COUNT: u8 = 6;
/// Smallest memory BAR minivmm places: one page, so each can become its own memory slot.
pub const MIN_MEM_BAR: u64 = 4096;

/// BAR register bit 0: an I/O BAR.
const BAR_IO: u32 = 0x1;
/// BAR register bits 1..=2 of a memory BAR: 0b10 is a 64-bit BAR.
const BAR_MEM_TYPE_64: u32 = 0x4;
/// BAR register bit 3 of a memory BAR: prefetchable.
const BAR_PREFETCH: u32 = 0x8;

/// Address space and width of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Mem32,
    /// Memory anywhere (two registers).
    Mem64,
}

/// One BAR of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Register index 0..6 (a 64-bit BAR also uses `index + 1`).
    pub index: u8,
    /// Address space and width.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes, a power of two.
    pub size: u64,
}

impl Bar {
    /// Offset of the BAR's (low) register.
    pub fn offset(&self) -> u16 {
        BAR0 + 4 * u16::from(self.index)
    }

    /// The type bits the low register always reads back.
    fn flags(&self) -> u32 {
        let prefetch = if self.prefetchable { BAR_PREFETCH } else { 0 };
        match self.kind {
            BarKind::Io => BAR_IO,
            BarKind::Mem32 => prefetch,
            BarKind::Mem64 => BAR_MEM_TYPE_64 | prefetch,
        }
    }

    /// Address bits the guest may write: all above the size, within the register width.
    fn address_mask(&self) -> u64 {
        let mask = !(self.size - 1);
        match self.kind {
            BarKind::Io => mask & 0xffff_fffc,
            BarKind::Mem32 => mask & 0xffff_fff0,
            BarKind::Mem64 => mask & !0xf,
        }
    }
}

/// Errors describing a device's BARs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A region size that cannot be a BAR.
    #[error("BAR {0} has size {1:#x}, not a power of two")]
    BadSize(u8, u64),
    /// A 64-bit BAR in the last register.
    #[error("BAR {0} is 64-bit but has no upper register")]
    Truncated(u8),
}

/// Describe a function's BARs from its six raw BAR registers (type bits) and the size of
/// each region (VFIO reports them; 0 means unused).
pub fn decode_bars(
    registers: [u32; 6],
    region_size: impl Fn(u8) -> u64,
) -> Result<Vec<Bar>, Error> {
    let mut bars = Vec::new();
    let mut index = 0;
    while index < BAR_COUNT {
        let raw = registers.get(usize::from(index)).copied().unwrap_or(0);
        let kind = if raw & BAR_IO != 0 {
            BarKind::Io
        } else if raw & 0x6 == BAR_MEM_TYPE_64 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        if kind == BarKind::Mem64 && index + 1 >= BAR_COUNT {
            return Err(Error::Truncated(index));
        }
        let size = region_size(index);
        if size != 0 {
            if !size.is_power_of_two() {
                return Err(Error::BadSize(index, size));
            }
            bars.push(Bar {
                index,
                kind,
                prefetchable: kind != BarKind::Io && raw & BAR_PREFETCH != 0,
                size,
            });
        }
        index += if kind == BarKind::Mem64 { 2 } else { 1 };
    }
    Ok(bars)
}

/// Put `bar` at `address` in the shadow, with the writable bits that make sizing work.
pub fn init_bar(config: &mut ConfigSpace, bar: &Bar, address: u64) {
    let mask = bar.address_mask();
    config.init_dword(
        bar.offset(),
        (address & mask) as u32 | bar.flags(),
        mask as u32,
    );
    if bar.kind == BarKind::Mem64 {
        config.init_dword(
            bar.offset() + 4,
            (address >> 32) as u32,
            (mask >> 32) as u32,
        );
    }
}

/// Where the guest has put `bar`, from the shadow.
pub fn bar_address(config: &ConfigSpace, bar: &Bar) -> u64 {
    let low = u64::from(config.read_dword(bar.offset())) & bar.address_mask() & 0xffff_ffff;
    match bar.kind {
        BarKind::Mem64 => low | (u64::from(config.read_dword(bar.offset() + 4)) << 32),
        _ => low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A display controller like the lab's VGA: 16 MiB prefetchable 32-bit BAR 0, 4 KiB
    /// MMIO BAR 2, and a GPU-like 8 GiB 64-bit prefetchable BAR 4, I/O BAR 3.
    fn gpu() -> Vec<Bar> {
        let registers = [0x8, 0, 0x0, 0x1, 0xc, 0];
        let sizes = |i| match i {
            0 => 16 << 20,
            2 => 4096,
            3 => 0x100,
            4 => 8 << 30,
            _ => 0,
        };
        decode_bars(registers, sizes).unwrap()
    }

    #[test]
    fn decodes_kinds_sizes_and_skips_the_upper_half_of_64_bit_bars() {
        let bars = gpu();
        let summary: Vec<_> = bars
            .iter()
            .map(|b| (b.index, b.kind, b.prefetchable))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, BarKind::Mem32, true),
                (2, BarKind::Mem32, false),
                (3, BarKind::Io, false),
                (4, BarKind::Mem64, true),
            ]
        );
        assert_eq!(bars[3].size, 8 << 30);
    }

    #[test]
    fn bad_sizes_and_truncated_64_bit_bars_are_refused() {
        assert_eq!(
            decode_bars([0; 6], |i| if i == 1 { 3000 } else { 0 }),
            Err(Error::BadSize(1, 3000))
        );
        assert_eq!(
            decode_bars([0, 0, 0, 0, 0, 0x4], |_| 4096),
            Err(Error::Truncated(5))
        );
    }

    #[test]
    fn sizing_probe_reads_back_the_size_mask_and_a_write_moves_the_bar() {
        let bar = gpu()[3];
        let mut config = ConfigSpace::new();
        init_bar(&mut config, &bar, 0x4_0000_0000);
        assert_eq!(
            config.read_dword(0x20),
            0xc,
            "64-bit prefetchable, address bits 0"
        );
        assert_eq!(config.read_dword(0x24), 0x4);
        // Probe: all ones to both halves, read back the mask of an 8 GiB BAR.
        config.write(0x20, &[0xff; 4]);
        config.write(0x24, &[0xff; 4]);
        assert_eq!(config.read_dword(0x20), 0x0000_000c);
        assert_eq!(config.read_dword(0x24), 0xffff_fffe);
        // The guest places it at 24 GiB.
        config.write(0x20, &0u32.to_le_bytes());
        config.write(0x24, &6u32.to_le_bytes());
        assert_eq!(bar_address(&config, &bar), 6 << 32);
    }

    #[test]
    fn io_and_small_memory_bars_probe_like_hardware() {
        let bars = gpu();
        let mut config = ConfigSpace::new();
        init_bar(&mut config, &bars[2], 0xc100);
        config.write(bars[2].offset(), &[0xff; 4]);
        assert_eq!(
            config.read_dword(bars[2].offset()),
            0xffff_ff01,
            "256 ports, I/O flag"
        );
        init_bar(&mut config, &bars[1], 0xc100_0000);
        config.write(bars[1].offset(), &[0xff; 4]);
        assert_eq!(config.read_dword(bars[1].offset()), 0xffff_f000);
        config.write(bars[1].offset(), &0xc200_0000u32.to_le_bytes());
        assert_eq!(bar_address(&config, &bars[1]), 0xc200_0000);
    }
}
