//! ATRM: the ACPI method through which laptop firmware hands AMD's drivers a dGPU's VBIOS.
//! radeon and amdgpu look for `ATRM` under the GPU's own ACPI device node before the VFCT
//! and the ROM BAR, and call it as `ATRM(offset, length)` for 4 KiB chunks until a chunk
//! comes back short; each call must return a Buffer of at most `length` bytes (the drivers
//! copy what they get, bounded only by their 256 KiB buffer).
//!
//! The DSDT gets a device node for each such function — under a node for its root port when
//! it sits behind one, since Linux finds a PCI device's node through its bridge's — and the
//! method reads the image from reserved guest memory through an operation region created
//! at the requested offset: no copy of the image in the DSDT, which is kept small.

use acpi_tables::{
    aml::{
        Add, Arg, Device, Else, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
        GreaterEqual, GreaterThan, If, LessThan, Local, Method, Mid, Name, OpRegion, OpRegionSpace,
        Path, Return, Store, Subtract, ZERO,
    },
    Aml,
};

/// The largest chunk one call returns (the drivers ask for this much).
pub const CHUNK: u32 = 0x1000;

/// One function whose VBIOS the guest reads through `ATRM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtrmImage {
    /// Device number on bus 0 of the root port the function sits behind (`None`: the
    /// function is on bus 0 itself).
    pub port: Option<u8>,
    /// Its device number on its own bus.
    pub device: u8,
    /// Its function number.
    pub function: u8,
    /// Guest physical address of the image, in memory the e820 map reserves together with
    /// [`CHUNK`] bytes after it (the method's region always spans a whole chunk).
    pub base: u64,
    /// The image's length in bytes.
    pub len: u32,
}

/// The device nodes and their methods, for the DSDT (after `\_SB_.PCI0`).
pub fn nodes(images: &[AtrmImage], sink: &mut Vec<u8>) {
    for image in images.iter().filter(|i| i.port.is_none()) {
        let path = format!("_SB_.PCI0.S{:02X}{}", image.device, image.function & 7);
        function_node(&path, image, sink);
    }
    let mut ports: Vec<u8> = images.iter().filter_map(|i| i.port).collect();
    ports.sort_unstable();
    ports.dedup();
    for port in ports {
        let mut children = Vec::new();
        for image in images.iter().filter(|i| i.port == Some(port)) {
            let name = format!("GFX{}", image.function & 7);
            function_node(&name, image, &mut children);
        }
        let adr = Name::new(Path::new("_ADR"), &(u32::from(port) << 16));
        let children = RawAml(children);
        Device::new(
            Path::new(&format!("_SB_.PCI0.RP{port:02X}")),
            vec![&adr, &children],
        )
        .to_aml_bytes(sink);
    }
}

/// AML already encoded (nested device nodes).
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// `Device(path) { _ADR; ATRM }` for one function.
fn function_node(path: &str, image: &AtrmImage, sink: &mut Vec<u8>) {
    let address = (u32::from(image.device) << 16) | u32::from(image.function);
    let adr = Name::new(Path::new("_ADR"), &address);
    let mut method = Vec::new();
    atrm_method(image.base, image.len, &mut method);
    let method = RawAml(method);
    Device::new(Path::new(path), vec![&adr, &method]).to_aml_bytes(sink);
}

/// `ATRM(offset, length)`: at most `length` (and [`CHUNK`]) bytes of the image from
/// `offset`, fewer at its end, none past it.
///
/// ```text
/// Method (ATRM, 2, Serialized) {
///     Local0 = Arg1                                    // bytes to return
///     If (Local0 > CHUNK) { Local0 = CHUNK }
///     If (Arg0 >= LEN) { Local0 = 0; Local1 = BASE }
///     Else {
///         Local1 = BASE + Arg0                         // where the chunk starts
///         Local2 = LEN - Arg0                          // what is left of the image
///         If (Local2 < Local0) { Local0 = Local2 }
///     }
///     OperationRegion (VROM, SystemMemory, Local1, CHUNK)
///     Field (VROM, DWordAcc, NoLock, Preserve) { CHNK, CHUNK * 8 }
///     Mid (CHNK, 0, Local0, Local3)
///     Return (Local3)
/// }
/// ```
fn atrm_method(base: u64, len: u32, sink: &mut Vec<u8>) {
    let (offset, length) = (Arg(0), Arg(1));
    let (count, start, left, result) = (Local(0), Local(1), Local(2), Local(3));
    let chunk = CHUNK;
    let take_length = Store::new(&count, &length);
    let at_most_a_chunk = Store::new(&count, &chunk);
    let over_a_chunk = GreaterThan::new(&count, &chunk);
    let clamp_to_chunk = If::new(&over_a_chunk, vec![&at_most_a_chunk]);
    let nothing = Store::new(&count, &ZERO);
    let anywhere = Store::new(&start, &base);
    let beyond = GreaterEqual::new(&offset, &len);
    let past_the_end = If::new(&beyond, vec![&nothing, &anywhere]);
    let chunk_start = Add::new(&start, &base, &offset);
    let image_left = Subtract::new(&left, &len, &offset);
    let only_what_is_left = Store::new(&count, &left);
    let short = LessThan::new(&left, &count);
    let clamp_to_image = If::new(&short, vec![&only_what_is_left]);
    let inside = Else::new(vec![&chunk_start, &image_left, &clamp_to_image]);
    let region = OpRegion::new(
        Path::new("VROM"),
        OpRegionSpace::SystemMemory,
        &start,
        &chunk,
    );
    let field = Field::new(
        Path::new("VROM"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"CHNK", CHUNK as usize * 8)],
    );
    let chnk = Path::new("CHNK");
    let cut = Mid::new(&chnk, &ZERO, &count, &result);
    let give = Return::new(&result);
    Method::new(
        Path::new("ATRM"),
        2,
        true,
        vec![
            &take_length,
            &clamp_to_chunk,
            &past_the_end,
            &inside,
            &region,
            &field,
            &cut,
            &give,
        ],
    )
    .to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn image(port: Option<u8>, device: u8, function: u8) -> AtrmImage {
        AtrmImage {
            port,
            device,
            function,
            base: 0x3_1000,
            len: 0x9c40,
        }
    }

    #[test]
    fn a_function_behind_a_root_port_gets_a_node_under_the_ports_node() {
        let mut aml = Vec::new();
        nodes(&[image(Some(3), 0, 0)], &mut aml);
        let port = aml.windows(4).position(|w| w == b"RP03");
        let gfx = aml.windows(4).position(|w| w == b"GFX0");
        assert!(port.is_some() && port < gfx, "GFX0 inside RP03");
        // The port's _ADR: NameOp "_ADR" DWordPrefix 0x00030000.
        assert!(contains(
            &aml,
            &[0x08, b'_', b'A', b'D', b'R', 0x0c, 0, 0, 3, 0]
        ));
        assert!(contains(&aml, b"ATRM"));
        // Exactly one device node for the port and one for the function.
        assert_eq!(aml.windows(2).filter(|w| w == &[0x5b, 0x82]).count(), 2);
    }

    #[test]
    fn a_function_on_bus_0_gets_a_node_with_its_slot_and_function() {
        let mut aml = Vec::new();
        nodes(&[image(None, 5, 1)], &mut aml);
        assert!(contains(&aml, b"S051"));
        // _ADR 0x00050001.
        assert!(contains(
            &aml,
            &[0x08, b'_', b'A', b'D', b'R', 0x0c, 1, 0, 5, 0]
        ));
        assert!(!contains(&aml, b"RP"));
    }

    #[test]
    fn two_functions_behind_one_port_share_its_node() {
        let mut aml = Vec::new();
        nodes(&[image(Some(2), 0, 0), image(Some(2), 0, 1)], &mut aml);
        assert_eq!(aml.windows(4).filter(|w| w == b"RP02").count(), 1);
        assert!(contains(&aml, b"GFX0") && contains(&aml, b"GFX1"));
    }

    #[test]
    fn the_method_takes_two_arguments_serialized_and_reads_its_image_where_it_lies() {
        let mut aml = Vec::new();
        atrm_method(0x3_1000, 0x9c40, &mut aml);
        // MethodOp, then after the package length "ATRM" and flags: 2 args, serialized.
        assert_eq!(aml[0], 0x14);
        let name = aml.windows(4).position(|w| w == b"ATRM").unwrap();
        assert_eq!(aml[name + 4], 0x0a);
        // The image's base (a DWord constant) and length (a Word).
        assert!(contains(&aml, &[0x0c, 0x00, 0x10, 0x03, 0x00]));
        assert!(contains(&aml, &[0x0b, 0x40, 0x9c]));
        // OperationRegion (VROM, SystemMemory, Local1, 0x1000).
        assert!(contains(
            &aml,
            &[0x5b, 0x80, b'V', b'R', b'O', b'M', 0x00, 0x61, 0x0b, 0x00, 0x10]
        ));
        // Field (VROM, DWordAcc): CHNK is 0x8000 bits (a 3-byte package length).
        assert!(contains(
            &aml,
            &[b'V', b'R', b'O', b'M', 0x03, b'C', b'H', b'N', b'K']
        ));
        // Mid (CHNK, Zero, Local0, Local3) and Return (Local3).
        assert!(contains(
            &aml,
            &[0x9e, b'C', b'H', b'N', b'K', 0x00, 0x60, 0x63, 0xa4, 0x63]
        ));
    }
}
