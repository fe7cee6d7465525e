//! The ACPI VIOT (Virtual I/O Translation) table, which tells a guest which endpoints sit
//! behind a virtio-iommu and which endpoint IDs they use.
//!
//! Offsets inside the table (`node_offset`, `output_node`) count the 36-byte ACPI header, even
//! in the header-less body that QEMU's `-acpitable data=` expects.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes};

use crate::wire::wire;

/// Size of the standard ACPI table header.
pub const ACPI_HEADER_SIZE: usize = 36;
/// Offset of the first node (header + the 12-byte VIOT fixed part).
pub const FIRST_NODE_OFFSET: usize = 48;

/// Node type: PCI endpoint range.
pub const NODE_PCI_RANGE: u8 = 1;
/// Node type: single MMIO endpoint.
pub const NODE_MMIO_ENDPOINT: u8 = 2;
/// Node type: virtio-pci IOMMU.
pub const NODE_VIRTIO_PCI_IOMMU: u8 = 3;
/// Node type: virtio-mmio IOMMU.
pub const NODE_VIRTIO_MMIO_IOMMU: u8 = 4;

wire! {
    /// The standard ACPI table header.
    pub struct AcpiHeader: ACPI_HEADER_SIZE {
        /// "VIOT".
        pub signature: [u8; 4],
        /// Whole table length.
        pub length: U32,
        /// Revision (0, as QEMU and Cloud Hypervisor emit).
        pub revision: u8,
        /// Makes the table sum to 0 mod 256.
        pub checksum: u8,
        /// OEM ID.
        pub oem_id: [u8; 6],
        /// OEM table ID.
        pub oem_table_id: [u8; 8],
        /// OEM revision.
        pub oem_revision: U32,
        /// Creator ID.
        pub creator_id: [u8; 4],
        /// Creator revision.
        pub creator_revision: U32,
    }
}

wire! {
    /// The VIOT fixed part after the ACPI header.
    pub struct ViotFixed: 12 {
        /// Number of nodes.
        pub node_count: U16,
        /// Table offset of the first node.
        pub node_offset: U16,
        /// Reserved, zero.
        pub reserved: [u8; 8],
    }
}

wire! {
    /// Type 1: PCI range node (24 bytes).
    pub struct NodePciRange: 24 {
        /// `NODE_PCI_RANGE`.
        pub node_type: u8,
        /// Reserved.
        pub reserved0: u8,
        /// 24.
        pub length: U16,
        /// Endpoint ID of `bdf_start` on `segment_start`.
        pub endpoint_start: U32,
        /// First PCI segment.
        pub segment_start: U16,
        /// Last PCI segment.
        pub segment_end: U16,
        /// First BDF (bus << 8 | dev << 3 | fn).
        pub bdf_start: U16,
        /// Last BDF.
        pub bdf_end: U16,
        /// Table offset of the IOMMU node.
        pub output_node: U16,
        /// Reserved.
        pub reserved1: [u8; 6],
    }
}

wire! {
    /// Type 2: MMIO endpoint node (24 bytes).
    pub struct NodeMmioEndpoint: 24 {
        /// `NODE_MMIO_ENDPOINT`.
        pub node_type: u8,
        /// Reserved.
        pub reserved0: u8,
        /// 24.
        pub length: U16,
        /// Endpoint ID.
        pub endpoint: U32,
        /// MMIO base address of the endpoint.
        pub base: U64,
        /// Table offset of the IOMMU node.
        pub output_node: U16,
        /// Reserved.
        pub reserved1: [u8; 6],
    }
}

wire! {
    /// Type 3: virtio-pci IOMMU node (16 bytes).
    pub struct NodeVirtioPciIommu: 16 {
        /// `NODE_VIRTIO_PCI_IOMMU`.
        pub node_type: u8,
        /// Reserved.
        pub reserved0: u8,
        /// 16.
        pub length: U16,
        /// PCI segment of the IOMMU function.
        pub segment: U16,
        /// BDF of the IOMMU function.
        pub bdf: U16,
        /// Reserved.
        pub reserved1: [u8; 8],
    }
}

wire! {
    /// Type 4: virtio-mmio IOMMU node (16 bytes).
    pub struct NodeVirtioMmioIommu: 16 {
        /// `NODE_VIRTIO_MMIO_IOMMU`.
        pub node_type: u8,
        /// Reserved.
        pub reserved0: u8,
        /// 16.
        pub length: U16,
        /// Reserved.
        pub reserved1: [u8; 4],
        /// MMIO base of the IOMMU.
        pub base: U64,
    }
}

/// Builds a PCI BDF.
#[must_use]
pub const fn bdf(bus: u8, dev: u8, func: u8) -> u16 {
    ((bus as u16) << 8) | (((dev & 0x1f) as u16) << 3) | ((func & 7) as u16)
}

/// Where the IOMMU itself lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuLocation {
    /// A virtio-pci function.
    Pci {
        /// Segment.
        segment: u16,
        /// BDF.
        bdf: u16,
    },
    /// A virtio-mmio device.
    Mmio {
        /// Base address.
        base: u64,
    },
}

/// A range of PCI functions translated by the IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRange {
    /// Endpoint ID of `bdf_start` on `segment_start`.
    pub endpoint_start: u32,
    /// First segment.
    pub segment_start: u16,
    /// Last segment.
    pub segment_end: u16,
    /// First BDF.
    pub bdf_start: u16,
    /// Last BDF.
    pub bdf_end: u16,
}

/// A single MMIO endpoint translated by the IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioEndpoint {
    /// Endpoint ID.
    pub endpoint: u32,
    /// MMIO base address.
    pub base: u64,
}

/// A VIOT with one IOMMU and its endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Viot<'a> {
    /// The IOMMU.
    pub iommu: IommuLocation,
    /// PCI endpoint ranges.
    pub pci_ranges: &'a [PciRange],
    /// MMIO endpoints.
    pub mmio_endpoints: &'a [MmioEndpoint],
}

/// The output buffer is too small, or the table would exceed the 16-bit offsets VIOT uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

fn put<T: IntoBytes + Immutable>(out: &mut [u8], off: usize, v: &T) -> Result<(), TooLarge> {
    let b = v.as_bytes();
    out.get_mut(off..off + b.len())
        .ok_or(TooLarge)?
        .copy_from_slice(b);
    Ok(())
}

impl Viot<'_> {
    /// Length of the whole table, header included.
    #[must_use]
    pub fn table_len(&self) -> usize {
        FIRST_NODE_OFFSET + 16 + 24 * (self.pci_ranges.len() + self.mmio_endpoints.len())
    }

    /// Length of the body (the table without the ACPI header), as `-acpitable data=` wants.
    #[must_use]
    pub fn body_len(&self) -> usize {
        self.table_len() - ACPI_HEADER_SIZE
    }

    /// Writes the whole table with an ACPI header and a correct checksum; returns its length.
    ///
    /// # Errors
    /// [`TooLarge`] if `out` is too small or the table exceeds 64 KiB.
    pub fn write_table(
        &self,
        out: &mut [u8],
        oem_id: [u8; 6],
        oem_table_id: [u8; 8],
    ) -> Result<usize, TooLarge> {
        let len = self.table_len();
        let table = out.get_mut(..len).ok_or(TooLarge)?;
        self.write_nodes(table, 0)?;
        let header = AcpiHeader {
            signature: *b"VIOT",
            length: u32::try_from(len).map_err(|_| TooLarge)?.into(),
            revision: 0,
            checksum: 0,
            oem_id,
            oem_table_id,
            oem_revision: 1.into(),
            creator_id: *b"VIOM",
            creator_revision: 1.into(),
        };
        put(table, 0, &header)?;
        let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        table[9] = 0u8.wrapping_sub(sum);
        Ok(len)
    }

    /// Writes the body only (for `-acpitable sig=VIOT,rev=0,data=FILE`); returns its length.
    ///
    /// # Errors
    /// [`TooLarge`] if `out` is too small or the table exceeds 64 KiB.
    pub fn write_body(&self, out: &mut [u8]) -> Result<usize, TooLarge> {
        let body = out.get_mut(..self.body_len()).ok_or(TooLarge)?;
        self.write_nodes(body, ACPI_HEADER_SIZE)?;
        Ok(body.len())
    }

    /// Writes the fixed part and the nodes. `buf` starts at table offset `skip` (0 for a whole
    /// table, 36 for a body), while the offsets written into the table always count the header.
    fn write_nodes(&self, buf: &mut [u8], skip: usize) -> Result<(), TooLarge> {
        let count = u16::try_from(1 + self.pci_ranges.len() + self.mmio_endpoints.len())
            .map_err(|_| TooLarge)?;
        if self.table_len() > usize::from(u16::MAX) {
            return Err(TooLarge);
        }
        buf.fill(0);
        #[allow(clippy::cast_possible_truncation)] // constant 48
        let first = FIRST_NODE_OFFSET as u16;
        let table = buf;
        put(
            table,
            ACPI_HEADER_SIZE - skip,
            &ViotFixed {
                node_count: count.into(),
                node_offset: first.into(),
                reserved: [0; 8],
            },
        )?;
        let mut off = FIRST_NODE_OFFSET - skip;
        match self.iommu {
            IommuLocation::Pci { segment, bdf } => put(
                table,
                off,
                &NodeVirtioPciIommu {
                    node_type: NODE_VIRTIO_PCI_IOMMU,
                    reserved0: 0,
                    length: 16.into(),
                    segment: segment.into(),
                    bdf: bdf.into(),
                    reserved1: [0; 8],
                },
            )?,
            IommuLocation::Mmio { base } => put(
                table,
                off,
                &NodeVirtioMmioIommu {
                    node_type: NODE_VIRTIO_MMIO_IOMMU,
                    reserved0: 0,
                    length: 16.into(),
                    reserved1: [0; 4],
                    base: base.into(),
                },
            )?,
        }
        off += 16;
        for r in self.pci_ranges {
            put(
                table,
                off,
                &NodePciRange {
                    node_type: NODE_PCI_RANGE,
                    reserved0: 0,
                    length: 24.into(),
                    endpoint_start: r.endpoint_start.into(),
                    segment_start: r.segment_start.into(),
                    segment_end: r.segment_end.into(),
                    bdf_start: r.bdf_start.into(),
                    bdf_end: r.bdf_end.into(),
                    output_node: first.into(),
                    reserved1: [0; 6],
                },
            )?;
            off += 24;
        }
        for m in self.mmio_endpoints {
            put(
                table,
                off,
                &NodeMmioEndpoint {
                    node_type: NODE_MMIO_ENDPOINT,
                    reserved0: 0,
                    length: 24.into(),
                    endpoint: m.endpoint.into(),
                    base: m.base.into(),
                    output_node: first.into(),
                    reserved1: [0; 6],
                },
            )?;
            off += 24;
        }
        Ok(())
    }
}

/// Why bytes are not a VIOT this crate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViotError {
    /// Shorter than the fixed part, or than the header's `length`.
    Truncated,
    /// A whole table (signature "VIOT") whose bytes do not sum to 0.
    BadChecksum,
    /// `node_offset` points inside the fixed part.
    BadNodeOffset,
    /// A node's length is below 4, below its type's size, or reaches past the table.
    BadNode {
        /// Table offset of the node.
        offset: usize,
    },
}

impl core::fmt::Display for ViotError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ViotError::Truncated => f.write_str("the table is truncated"),
            ViotError::BadChecksum => f.write_str("the table's checksum is wrong"),
            ViotError::BadNodeOffset => f.write_str("node_offset points inside the fixed part"),
            ViotError::BadNode { offset } => {
                write!(f, "the node at table offset {offset} is malformed")
            }
        }
    }
}

/// One node of a parsed VIOT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViotNode {
    /// Type 1: a range of PCI endpoints.
    PciRange(PciRange),
    /// Type 2: one MMIO endpoint.
    MmioEndpoint(MmioEndpoint),
    /// Type 3 or 4: the IOMMU itself.
    Iommu(IommuLocation),
    /// A node type this crate does not know (skipped by its length, as ACPI allows).
    Unknown(u8),
}

/// The nodes of a VIOT, checked by [`parse`]: iterating cannot fail.
#[derive(Debug, Clone)]
pub struct ViotNodes<'a> {
    /// The table; `skip` bytes of it (the header of a body) are not in `bytes`.
    bytes: &'a [u8],
    skip: usize,
    at: usize,
    left: u16,
}

/// The layout at the start of `bytes`, if they hold one.
fn read<T: zerocopy::FromBytes>(bytes: &[u8]) -> Option<T> {
    T::read_from_prefix(bytes).ok().map(|(v, _)| v)
}

/// Reads a VIOT: a whole table (it starts with "VIOT"; `length` and checksum are checked) or
/// the header-less body `-acpitable data=` takes (as `mkviot --body` writes). Bytes past the
/// table's `length` are ignored.
///
/// # Errors
/// A [`ViotError`] for the first problem found.
pub fn parse(bytes: &[u8]) -> Result<ViotNodes<'_>, ViotError> {
    let (bytes, skip) = if bytes.starts_with(b"VIOT") {
        let header: AcpiHeader = read(bytes).ok_or(ViotError::Truncated)?;
        let len = usize::try_from(header.length.get()).map_err(|_| ViotError::Truncated)?;
        let table = bytes.get(..len).ok_or(ViotError::Truncated)?;
        if len < ACPI_HEADER_SIZE || table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
            return Err(ViotError::BadChecksum);
        }
        (table, 0)
    } else {
        (bytes, ACPI_HEADER_SIZE)
    };
    let fixed_at = ACPI_HEADER_SIZE - skip;
    let fixed: ViotFixed = bytes
        .get(fixed_at..)
        .and_then(read)
        .ok_or(ViotError::Truncated)?;
    let first = usize::from(fixed.node_offset.get());
    if first < FIRST_NODE_OFFSET {
        return Err(ViotError::BadNodeOffset);
    }
    let nodes = ViotNodes {
        bytes,
        skip,
        at: first,
        left: fixed.node_count.get(),
    };
    // Check every node once, so that iterating needs no error path.
    let mut check = nodes.clone();
    while check.left > 0 {
        check.step()?;
    }
    Ok(nodes)
}

impl ViotNodes<'_> {
    /// Decodes the node at `self.at` and moves past it.
    fn step(&mut self) -> Result<ViotNode, ViotError> {
        let offset = self.at;
        let bad = ViotError::BadNode { offset };
        let rest = offset
            .checked_sub(self.skip)
            .and_then(|o| self.bytes.get(o..))
            .ok_or(bad)?;
        let (node_type, len) = match rest {
            [t, _, l0, l1, ..] => (*t, usize::from(u16::from_le_bytes([*l0, *l1]))),
            _ => return Err(bad),
        };
        let node = rest.get(..len).filter(|_| len >= 4).ok_or(bad)?;
        let decoded = match node_type {
            NODE_PCI_RANGE => {
                let n: NodePciRange = read(node).ok_or(bad)?;
                ViotNode::PciRange(PciRange {
                    endpoint_start: n.endpoint_start.get(),
                    segment_start: n.segment_start.get(),
                    segment_end: n.segment_end.get(),
                    bdf_start: n.bdf_start.get(),
                    bdf_end: n.bdf_end.get(),
                })
            }
            NODE_MMIO_ENDPOINT => {
                let n: NodeMmioEndpoint = read(node).ok_or(bad)?;
                ViotNode::MmioEndpoint(MmioEndpoint {
                    endpoint: n.endpoint.get(),
                    base: n.base.get(),
                })
            }
            NODE_VIRTIO_PCI_IOMMU => {
                let n: NodeVirtioPciIommu = read(node).ok_or(bad)?;
                ViotNode::Iommu(IommuLocation::Pci {
                    segment: n.segment.get(),
                    bdf: n.bdf.get(),
                })
            }
            NODE_VIRTIO_MMIO_IOMMU => {
                let n: NodeVirtioMmioIommu = read(node).ok_or(bad)?;
                ViotNode::Iommu(IommuLocation::Mmio { base: n.base.get() })
            }
            other => ViotNode::Unknown(other),
        };
        self.at = offset + len;
        self.left -= 1;
        Ok(decoded)
    }
}

impl Iterator for ViotNodes<'_> {
    type Item = ViotNode;

    fn next(&mut self) -> Option<ViotNode> {
        if self.left == 0 {
            return None;
        }
        // `parse` walked these nodes already.
        self.step().ok()
    }
}

impl PciRange {
    /// The endpoint IDs of the range's functions on `segment` (consecutive: one per BDF), or
    /// `None` if the segment is outside the range, `bdf_end < bdf_start`, or the IDs pass
    /// 2^32 − 1.
    #[must_use]
    pub fn segment_ids(&self, segment: u16) -> Option<core::ops::RangeInclusive<u32>> {
        if self.bdf_end < self.bdf_start {
            return None;
        }
        let first = pci_endpoint_id(self, segment, self.bdf_start)?;
        let last = pci_endpoint_id(self, segment, self.bdf_end)?;
        Some(first..=last)
    }
}

/// The endpoint ID Linux computes for a PCI function covered by `range`.
#[must_use]
pub fn pci_endpoint_id(range: &PciRange, segment: u16, bdf: u16) -> Option<u32> {
    if !(range.segment_start..=range.segment_end).contains(&segment)
        || !(range.bdf_start..=range.bdf_end).contains(&bdf)
    {
        return None;
    }
    let seg = u32::from(segment - range.segment_start) << 16;
    range
        .endpoint_start
        .checked_add(u32::from(bdf - range.bdf_start))?
        .checked_add(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of PROTOCOL.md §10.5: IOMMU at 00:03.0, bus 0 translated, IDs = BDF.
    #[test]
    fn worked_example_body() {
        let v = Viot {
            iommu: IommuLocation::Pci {
                segment: 0,
                bdf: bdf(0, 3, 0),
            },
            pci_ranges: &[PciRange {
                endpoint_start: 0,
                segment_start: 0,
                segment_end: 0,
                bdf_start: 0,
                bdf_end: 0xff,
            }],
            mmio_endpoints: &[],
        };
        let mut want = [0u8; 52];
        want[0..4].copy_from_slice(&[0x02, 0x00, 0x30, 0x00]);
        want[12..20].copy_from_slice(&[0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x18, 0x00]);
        want[28..32].copy_from_slice(&[0x01, 0x00, 0x18, 0x00]);
        want[40..46].copy_from_slice(&[0x00, 0x00, 0xff, 0x00, 0x30, 0x00]);
        let mut out = [0xaau8; 64];
        assert_eq!(v.write_body(&mut out), Ok(52));
        assert_eq!(&out[..52], &want);
        assert_eq!(v.table_len(), 88);

        let mut table = [0u8; 88];
        assert_eq!(v.write_table(&mut table, *b"VIOMMU", *b"VIOMMUTB"), Ok(88));
        assert_eq!(&table[0..4], b"VIOT");
        assert_eq!(&table[4..8], &[88, 0, 0, 0]);
        assert_eq!(table[8], 0);
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&table[36..], &want);
    }

    #[test]
    fn mmio_nodes_and_endpoint_ids() {
        let v = Viot {
            iommu: IommuLocation::Mmio { base: 0x1000_0000 },
            pci_ranges: &[],
            mmio_endpoints: &[MmioEndpoint {
                endpoint: 7,
                base: 0x2000_0000,
            }],
        };
        let mut out = [0u8; 52];
        assert_eq!(v.write_body(&mut out), Ok(52));
        assert_eq!(&out[12..16], &[4, 0, 16, 0]);
        assert_eq!(&out[20..28], &0x1000_0000u64.to_le_bytes());
        assert_eq!(&out[28..36], &[2, 0, 24, 0, 7, 0, 0, 0]);
        assert_eq!(&out[36..44], &0x2000_0000u64.to_le_bytes());
        assert_eq!(&out[44..46], &[48, 0]);
        assert_eq!(v.write_body(&mut [0u8; 51]), Err(TooLarge));

        let r = PciRange {
            endpoint_start: 0x100,
            segment_start: 0,
            segment_end: 1,
            bdf_start: 8,
            bdf_end: 0x20,
        };
        assert_eq!(pci_endpoint_id(&r, 0, 8), Some(0x100));
        assert_eq!(pci_endpoint_id(&r, 1, 0x10), Some(0x1_0108));
        assert_eq!(pci_endpoint_id(&r, 0, 7), None);
        assert_eq!(pci_endpoint_id(&r, 2, 8), None);
        assert_eq!(bdf(0, 3, 0), 0x18);
        assert_eq!(bdf(1, 0x1f, 7), 0x1ff);
    }

    fn example() -> Viot<'static> {
        Viot {
            iommu: IommuLocation::Pci {
                segment: 0,
                bdf: bdf(0, 3, 0),
            },
            pci_ranges: &[PciRange {
                endpoint_start: 0x100,
                segment_start: 0,
                segment_end: 1,
                bdf_start: 8,
                bdf_end: 0x20,
            }],
            mmio_endpoints: &[MmioEndpoint {
                endpoint: 7,
                base: 0x2000_0000,
            }],
        }
    }

    fn nodes(bytes: &[u8]) -> [Option<ViotNode>; 4] {
        let mut it = parse(bytes).unwrap();
        [it.next(), it.next(), it.next(), it.next()]
    }

    #[test]
    fn parses_what_the_builder_writes() {
        let v = example();
        let want = [
            Some(ViotNode::Iommu(v.iommu)),
            Some(ViotNode::PciRange(v.pci_ranges[0])),
            Some(ViotNode::MmioEndpoint(v.mmio_endpoints[0])),
            None,
        ];
        let mut body = [0u8; 76];
        assert_eq!(v.write_body(&mut body), Ok(76));
        assert_eq!(nodes(&body), want);
        let mut table = [0u8; 120];
        assert_eq!(v.write_table(&mut table, *b"VIOMMU", *b"VIOMMUTB"), Ok(112));
        // Bytes past `length` are ignored.
        assert_eq!(nodes(&table), want);
    }

    #[test]
    fn worked_example_bytes() {
        // PROTOCOL.md §10.5, as QEMU's `-acpitable data=` gets it.
        let mut b = [0u8; 52];
        b[0..4].copy_from_slice(&[0x02, 0x00, 0x30, 0x00]);
        b[12..20].copy_from_slice(&[0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x18, 0x00]);
        b[28..32].copy_from_slice(&[0x01, 0x00, 0x18, 0x00]);
        b[40..46].copy_from_slice(&[0x00, 0x00, 0xff, 0x00, 0x30, 0x00]);
        let r = PciRange {
            endpoint_start: 0,
            segment_start: 0,
            segment_end: 0,
            bdf_start: 0,
            bdf_end: 0xff,
        };
        assert_eq!(
            nodes(&b)[..3],
            [
                Some(ViotNode::Iommu(IommuLocation::Pci {
                    segment: 0,
                    bdf: 0x18
                })),
                Some(ViotNode::PciRange(r)),
                None
            ]
        );
        assert_eq!(r.segment_ids(0), Some(0..=0xff));
        assert_eq!(r.segment_ids(1), None);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let v = example();
        let mut table = [0u8; 112];
        v.write_table(&mut table, *b"VIOMMU", *b"VIOMMUTB").unwrap();
        let mut bad = table;
        bad[50] ^= 1;
        assert_eq!(parse(&bad).unwrap_err(), ViotError::BadChecksum);
        assert_eq!(parse(&table[..111]).unwrap_err(), ViotError::Truncated);
        assert_eq!(parse(&table[..20]).unwrap_err(), ViotError::Truncated);
        let mut body = [0u8; 76];
        v.write_body(&mut body).unwrap();
        assert_eq!(parse(&body[..11]).unwrap_err(), ViotError::Truncated);
        // A node cut short, a node of length 0 (it would loop), a node past the end.
        assert_eq!(
            parse(&body[..70]).unwrap_err(),
            ViotError::BadNode { offset: 88 }
        );
        let mut zero = body;
        zero[14] = 0;
        assert_eq!(parse(&zero).unwrap_err(), ViotError::BadNode { offset: 48 });
        let mut short = body;
        short[30] = 16; // a PCI range node of 16 bytes
        assert_eq!(
            parse(&short).unwrap_err(),
            ViotError::BadNode { offset: 64 }
        );
        let mut count = body;
        count[0] = 4;
        assert_eq!(
            parse(&count).unwrap_err(),
            ViotError::BadNode { offset: 112 }
        );
        let mut inside = body;
        inside[2] = 40;
        assert_eq!(parse(&inside).unwrap_err(), ViotError::BadNodeOffset);
        // An unknown node type is skipped by its length.
        let mut unknown = body;
        unknown[28] = 9;
        assert_eq!(nodes(&unknown)[1], Some(ViotNode::Unknown(9)));
        assert_eq!(
            nodes(&unknown)[2],
            Some(ViotNode::MmioEndpoint(v.mmio_endpoints[0]))
        );
    }

    #[test]
    fn segment_ids() {
        let r = example().pci_ranges[0];
        assert_eq!(r.segment_ids(0), Some(0x100..=0x118));
        assert_eq!(r.segment_ids(1), Some(0x1_0100..=0x1_0118));
        assert_eq!(r.segment_ids(2), None);
        let top = PciRange {
            endpoint_start: u32::MAX - 1,
            ..r
        };
        assert_eq!(top.segment_ids(0), None);
        let inverted = PciRange {
            bdf_start: 9,
            bdf_end: 8,
            ..r
        };
        assert_eq!(inverted.segment_ids(0), None);
    }

    #[test]
    fn never_panics_on_damaged_tables() {
        let mut body = [0u8; 76];
        example().write_body(&mut body).unwrap();
        for len in 0..body.len() {
            let _ = parse(&body[..len]).map(Iterator::count);
        }
        for at in 0..body.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = body;
                b[at] = v;
                let _ = parse(&b).map(Iterator::count);
            }
        }
    }
}
