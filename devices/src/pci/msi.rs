//! Message signalled interrupts: the MSI capability (emulated in the shadow) and the MSI-X
//! vector table (emulated in a trapped page of a BAR). Both turn the guest's programming
//! into a list of [`MsiVector`]s the VMM routes through KVM; the device's own registers are
//! never written, because VFIO programs the host side itself.

use super::config_space::ConfigSpace;

/// One message a function can send: where to, what, and whether it is masked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiVector {
    /// Message address (an x86 LAPIC address, 0xFEEx_xxxx).
    pub address: u64,
    /// Message data (vector and delivery mode).
    pub data: u32,
    /// Masked by the guest: the VMM holds the interrupt until it is unmasked.
    pub masked: bool,
}

/// Which interrupt mechanism a list of vectors belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiKind {
    /// The MSI capability.
    Msi,
    /// The MSI-X capability.
    Msix,
}

/// MSI message control: enable.
const MSI_ENABLE: u32 = 1 << 16;
/// MSI message control: multiple message enable field (log2 of vectors), bits 4..=6.
const MSI_MME_SHIFT: u32 = 16 + 4;
/// MSI message control: 64-bit address capable.
const MSI_64BIT: u32 = 1 << (16 + 7);
/// MSI message control: per-vector masking capable.
const MSI_PER_VECTOR_MASK: u32 = 1 << (16 + 8);
/// MSI message control: multiple message capable field, bits 1..=3.
const MSI_MMC_SHIFT: u32 = 16 + 1;

/// The MSI capability of a function, answered from the shadow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability header.
    pub offset: u16,
    is_64bit: bool,
    per_vector_mask: bool,
    /// log2 of the messages the function can send.
    capable: u32,
}

impl MsiCapability {
    /// Describe the MSI capability whose header dword (id, next, control) is `header`.
    pub fn new(offset: u16, header: u32) -> Self {
        MsiCapability {
            offset,
            is_64bit: header & MSI_64BIT != 0,
            per_vector_mask: header & MSI_PER_VECTOR_MASK != 0,
            capable: ((header >> MSI_MMC_SHIFT) & 0x7).min(5),
        }
    }

    /// Bytes of configuration space the capability covers.
    pub fn len(&self) -> u16 {
        match (self.is_64bit, self.per_vector_mask) {
            (false, false) => 0x0c,
            (true, false) | (false, true) => 0x10,
            (true, true) => 0x18,
        }
    }

    /// Always false: a capability has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn data_offset(&self) -> u16 {
        self.offset + if self.is_64bit { 0x0c } else { 0x08 }
    }

    fn mask_offset(&self) -> Option<u16> {
        self.per_vector_mask
            .then_some(self.offset + if self.is_64bit { 0x10 } else { 0x0c })
    }

    /// Put the capability in the shadow, disabled, with the bits the guest may write.
    /// `header` is the device's header dword.
    pub fn init_shadow(&self, shadow: &mut ConfigSpace, header: u32) {
        // Enable, and multiple message enable when the function has more than one message
        // ([`Self::vectors`] clamps it to what the function is capable of).
        let mme_bits = if self.capable == 0 {
            0
        } else {
            0x7 << MSI_MME_SHIFT
        };
        shadow.init_dword(
            self.offset,
            header & !(MSI_ENABLE | (0x7 << MSI_MME_SHIFT)),
            MSI_ENABLE | mme_bits,
        );
        shadow.init_dword(self.offset + 4, 0, 0xffff_fffc);
        if self.is_64bit {
            shadow.init_dword(self.offset + 8, 0, 0xffff_ffff);
        }
        shadow.init_dword(self.data_offset(), 0, 0xffff);
        if let Some(mask) = self.mask_offset() {
            shadow.init_dword(mask, 0, 0xffff_ffff);
            // Pending bits: the host side delivers or holds; the guest sees none pending.
            shadow.init_dword(mask + 4, 0, 0);
        }
    }

    /// True when `offset` falls inside the capability.
    pub fn contains(&self, offset: u16) -> bool {
        (self.offset..self.offset + self.len()).contains(&offset)
    }

    /// The vectors the guest enabled, or `None` while MSI is off.
    pub fn vectors(&self, shadow: &ConfigSpace) -> Option<Vec<MsiVector>> {
        let control = shadow.read_dword(self.offset);
        if control & MSI_ENABLE == 0 {
            return None;
        }
        let count = 1u32 << ((control >> MSI_MME_SHIFT) & 0x7).min(self.capable);
        let low = u64::from(shadow.read_dword(self.offset + 4));
        let high = if self.is_64bit {
            u64::from(shadow.read_dword(self.offset + 8))
        } else {
            0
        };
        let data = shadow.read_dword(self.data_offset()) & 0xffff;
        let mask = self.mask_offset().map_or(0, |m| shadow.read_dword(m));
        Some(
            (0..count)
                .map(|i| MsiVector {
                    address: (high << 32) | low,
                    // Multiple messages: the function puts the vector number in the low bits.
                    data: (data & !(count - 1)) | i,
                    masked: mask & (1 << i) != 0,
                })
                .collect(),
        )
    }
}

/// MSI-X message control: enable and function mask.
const MSIX_ENABLE: u32 = 1 << 31;
const MSIX_FUNCTION_MASK: u32 = 1 << 30;
/// Bytes per MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Vector control bit 0: masked.
const MSIX_VECTOR_MASKED: u32 = 1;

/// The MSI-X capability and its vector table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// BAR holding the table, and the table's offset in it.
    pub table_bar: u8,
    /// Offset of the table in its BAR.
    pub table_offset: u64,
    /// BAR holding the pending-bit array, and its offset in it.
    pub pba_bar: u8,
    /// Offset of the PBA in its BAR.
    pub pba_offset: u64,
    /// The table: address low, address high, data, vector control per entry.
    table: Vec<[u32; 4]>,
}

impl MsixCapability {
    /// Describe the MSI-X capability from its three dwords.
    pub fn new(offset: u16, header: u32, table: u32, pba: u32) -> Self {
        let entries = ((header >> 16) & 0x7ff) as usize + 1;
        MsixCapability {
            offset,
            table_bar: (table & 0x7) as u8,
            table_offset: u64::from(table & !0x7),
            pba_bar: (pba & 0x7) as u8,
            pba_offset: u64::from(pba & !0x7),
            // Every vector starts masked (PCI spec).
            table: vec![[0, 0, 0, MSIX_VECTOR_MASKED]; entries],
        }
    }

    /// Number of vectors.
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// Size of the table in bytes.
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes (one bit per vector, in qwords).
    pub fn pba_len(&self) -> u64 {
        self.table.len().div_ceil(64) as u64 * 8
    }

    /// Put the header in the shadow: enable and function mask are the guest's, off at start.
    pub fn init_shadow(&self, shadow: &mut ConfigSpace, header: u32) {
        shadow.init_dword(
            self.offset,
            header & !(MSIX_ENABLE | MSIX_FUNCTION_MASK),
            MSIX_ENABLE | MSIX_FUNCTION_MASK,
        );
    }

    /// True when `offset` is the capability's header dword (the only one the guest writes).
    pub fn is_header(&self, offset: u16) -> bool {
        offset / 4 == self.offset / 4
    }

    /// True when `offset` of BAR `bar` is in the table.
    pub fn in_table(&self, bar: u8, offset: u64) -> bool {
        bar == self.table_bar
            && offset >= self.table_offset
            && offset < self.table_offset + self.table_len()
    }

    /// True when `offset` of BAR `bar` is in the PBA.
    pub fn in_pba(&self, bar: u8, offset: u64) -> bool {
        bar == self.pba_bar
            && offset >= self.pba_offset
            && offset < self.pba_offset + self.pba_len()
    }

    /// Read from the table (`offset` relative to the BAR). Reads may be 1, 2, 4 or 8 bytes;
    /// bytes outside the table read as 0xFF.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| self.table_byte(at))
                .unwrap_or(0xff);
        }
    }

    /// Write to the table (`offset` relative to the BAR); bytes outside it are dropped.
    /// Returns true when a vector changed.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> bool {
        let mut changed = false;
        for (i, byte) in data.iter().enumerate() {
            let Some(at) = offset
                .checked_add(i as u64)
                .and_then(|at| at.checked_sub(self.table_offset))
            else {
                continue;
            };
            let entry = (at / MSIX_ENTRY_SIZE) as usize;
            let word = ((at % MSIX_ENTRY_SIZE) / 4) as usize;
            let shift = (at % 4) * 8;
            if let Some(value) = self.table.get_mut(entry).and_then(|e| e.get_mut(word)) {
                let new = (*value & !(0xff << shift)) | (u32::from(*byte) << shift);
                changed |= new != *value;
                *value = new;
            }
        }
        changed
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let at = offset.checked_sub(self.table_offset)?;
        let entry = self.table.get((at / MSIX_ENTRY_SIZE) as usize)?;
        let word = entry.get(((at % MSIX_ENTRY_SIZE) / 4) as usize)?;
        Some((word >> ((at % 4) * 8)) as u8)
    }

    /// The vectors, or `None` while MSI-X is off. The function mask masks every vector.
    pub fn vectors(&self, shadow: &ConfigSpace) -> Option<Vec<MsiVector>> {
        let control = shadow.read_dword(self.offset);
        if control & MSIX_ENABLE == 0 {
            return None;
        }
        let all_masked = control & MSIX_FUNCTION_MASK != 0;
        Some(
            self.table
                .iter()
                .map(|[low, high, data, control]| MsiVector {
                    address: (u64::from(*high) << 32) | u64::from(*low),
                    data: *data,
                    masked: all_masked || control & MSIX_VECTOR_MASKED != 0,
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_64bit_with_masking_is_emulated_in_the_shadow() {
        let mut shadow = ConfigSpace::new();
        // id 5, next 0, control: 64-bit, per-vector mask, 4 messages capable.
        let header = 0x0005 | ((0x80 | 0x100 | (2 << 1)) << 16);
        let msi = MsiCapability::new(0x50, header);
        assert_eq!(msi.len(), 0x18);
        msi.init_shadow(&mut shadow, header);
        assert_eq!(msi.vectors(&shadow), None);

        shadow.write(0x54, &0xfee0_1000u32.to_le_bytes());
        shadow.write(0x58, &0u32.to_le_bytes());
        shadow.write(0x5c, &0x4041u32.to_le_bytes());
        shadow.write(0x60, &0b10u32.to_le_bytes());
        // Enable with two messages (MME = 1).
        shadow.write(0x52, &(1u16 | (1 << 4)).to_le_bytes());
        let vectors = msi.vectors(&shadow).unwrap();
        assert_eq!(
            vectors,
            vec![
                MsiVector {
                    address: 0xfee0_1000,
                    data: 0x4040,
                    masked: false
                },
                MsiVector {
                    address: 0xfee0_1000,
                    data: 0x4041,
                    masked: true
                },
            ]
        );
        // The guest cannot set bits the device lacks (MME beyond capable, reserved bits).
        shadow.write(0x52, &0xffffu16.to_le_bytes());
        assert_eq!(
            shadow.read_dword(0x50) >> 16 & 0x7f,
            0x1 | (2 << 1) | (0x7 << 4)
        );
    }

    #[test]
    fn msi_32bit_puts_data_at_8() {
        let header = 0x0005;
        let msi = MsiCapability::new(0x40, header);
        let mut shadow = ConfigSpace::new();
        msi.init_shadow(&mut shadow, header);
        assert_eq!(msi.len(), 0x0c);
        shadow.write(0x44, &0xfee0_0000u32.to_le_bytes());
        shadow.write(0x48, &0x31u16.to_le_bytes());
        shadow.write(0x42, &1u16.to_le_bytes());
        let vectors = msi.vectors(&shadow).unwrap();
        assert_eq!(vectors.len(), 1);
        assert_eq!(vectors[0].data, 0x31);
        assert!(!vectors[0].masked);
    }

    #[test]
    fn msix_table_starts_masked_and_follows_writes() {
        // 4 entries, table in BAR 1 at 0x2000, PBA in BAR 1 at 0x3000.
        let header = 0x0011 | (3 << 16);
        let mut msix = MsixCapability::new(0x70, header, 0x2001, 0x3001);
        let mut shadow = ConfigSpace::new();
        msix.init_shadow(&mut shadow, header);
        assert_eq!(msix.entries(), 4);
        assert!(msix.in_table(1, 0x2000) && msix.in_table(1, 0x203f));
        assert!(!msix.in_table(1, 0x2040) && !msix.in_table(0, 0x2000));
        assert!(msix.in_pba(1, 0x3000) && !msix.in_pba(1, 0x3008));

        let mut control = [0u8; 4];
        msix.read_table(0x201c, &mut control);
        assert_eq!(u32::from_le_bytes(control), 1, "vector 1 starts masked");

        assert!(msix.write_table(0x2010, &0xfee0_2000u32.to_le_bytes()));
        assert!(msix.write_table(0x2018, &0x55u32.to_le_bytes()));
        assert!(msix.write_table(0x201c, &0u32.to_le_bytes()));
        assert!(!msix.write_table(0x201c, &0u32.to_le_bytes()), "no change");
        let mut qword = [0u8; 8];
        msix.read_table(0x2010, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0xfee0_2000);

        assert_eq!(msix.vectors(&shadow), None, "MSI-X is off");
        shadow.write(0x72, &0x8000u16.to_le_bytes());
        let vectors = msix.vectors(&shadow).unwrap();
        assert_eq!(vectors.len(), 4);
        assert_eq!(
            vectors[1],
            MsiVector {
                address: 0xfee0_2000,
                data: 0x55,
                masked: false
            }
        );
        assert!(vectors[0].masked);
        // The function mask masks every vector.
        shadow.write(0x72, &0xc000u16.to_le_bytes());
        assert!(msix.vectors(&shadow).unwrap().iter().all(|v| v.masked));
        // The table size field is not writable.
        shadow.write(0x72, &0xc7ffu16.to_le_bytes());
        assert_eq!(shadow.read_dword(0x70) >> 16 & 0x7ff, 3);
    }

    #[test]
    fn msix_accesses_past_either_end_of_the_table_touch_only_the_table() {
        // Found by the msix_table fuzz target: a write starting before the table
        // underflowed, and one at the top of the BAR offsets overflowed.
        let mut msix = MsixCapability::new(0x70, 0x0011, 0x2000, 0x3000);
        let bytes = [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88];
        assert!(msix.write_table(0x1ffc, &bytes), "the last 4 bytes land");
        let mut read = [0u8; 8];
        msix.read_table(0x1ffc, &mut read);
        assert_eq!(read, [0xff, 0xff, 0xff, 0xff, 0x55, 0x66, 0x77, 0x88]);
        assert!(!msix.write_table(u64::MAX - 3, &bytes));
        msix.read_table(u64::MAX - 3, &mut read);
        assert_eq!(read, [0xff; 8]);
        // Past the end of the one-entry table.
        assert!(!msix.write_table(0x2010, &bytes));
        msix.read_table(0x200c, &mut read);
        assert_eq!(
            read,
            [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            "entry 0 still masked"
        );
    }
}
