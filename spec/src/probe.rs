//! PROBE properties: a writer for the device, an iterator for the driver.
//!
//! Each property is a 4-byte [`PropHead`] (type in bits 11:0, reserved bits 15:12, `length` =
//! size of the value *excluding* the header) followed by its value. The list ends at a
//! `PROBE_T_NONE` header or at the end of the area; the device zero-fills what it does not use.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::ext::{self, PageRequestCaps, TableFormat};
use crate::wire::wire;

/// Property type: end of list.
pub const PROBE_T_NONE: u16 = 0;
/// Property type: reserved memory region.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// Mask of the type bits in the property header.
pub const PROBE_T_MASK: u16 = 0xfff;

/// RESV_MEM subtype: the range cannot be mapped.
pub const RESV_MEM_T_RESERVED: u8 = 0;
/// RESV_MEM subtype: an MSI doorbell window (not mappable, passed through untranslated).
pub const RESV_MEM_T_MSI: u8 = 1;

wire! {
    /// `struct virtio_iommu_probe_property` header.
    pub struct PropHead: 4 {
        /// Type (bits 11:0); bits 15:12 reserved.
        pub prop_type: U16,
        /// Size of the value, excluding this header.
        pub length: U16,
    }
}

wire! {
    /// `struct virtio_iommu_probe_resv_mem` (24 bytes, `length` 20).
    pub struct PropResvMem: 24 {
        /// Header, type `PROBE_T_RESV_MEM`.
        pub head: PropHead,
        /// `RESV_MEM_T_*`.
        pub subtype: u8,
        /// Reserved, zero.
        pub reserved: [u8; 3],
        /// First address.
        pub start: U64,
        /// Last address, inclusive.
        pub end: U64,
    }
}

wire! {
    /// Extension `PROBE_T_PAGE_SIZE_MASK` (16 bytes, `length` 12).
    pub struct PropPageSizeMask: 16 {
        /// Header.
        pub head: PropHead,
        /// Reserved, zero.
        pub reserved: [u8; 4],
        /// Page-size mask for this endpoint.
        pub mask: U64,
    }
}

wire! {
    /// Extension `PROBE_T_INPUT_RANGE` (24 bytes, `length` 20).
    pub struct PropInputRange: 24 {
        /// Header.
        pub head: PropHead,
        /// Reserved, zero.
        pub reserved: [u8; 4],
        /// First input address.
        pub start: U64,
        /// Last input address, inclusive.
        pub end: U64,
    }
}

wire! {
    /// Extension `PROBE_T_OUTPUT_SIZE` and `PROBE_T_PASID_SIZE` (8 bytes, `length` 4).
    pub struct PropBits: 8 {
        /// Header.
        pub head: PropHead,
        /// Number of bits.
        pub bits: u8,
        /// Reserved, zero.
        pub reserved: [u8; 3],
    }
}

wire! {
    /// Extension `PROBE_T_PAGE_TABLE_FMT` / `PROBE_T_PASID_TABLE_FMT` (8 bytes, `length` 4).
    pub struct PropTableFormat: 8 {
        /// Header.
        pub head: PropHead,
        /// Format code (`ext::FORMAT_*`).
        pub format: U16,
        /// Reserved, zero.
        pub reserved: [u8; 2],
    }
}

wire! {
    /// This project's `PROBE_T_PAGE_REQUEST` (16 bytes, `length` 12).
    pub struct PropPageRequest: 16 {
        /// Header.
        pub head: PropHead,
        /// [`PageRequestCaps`].
        pub flags: U32,
        /// Maximum number of outstanding page-request groups for this endpoint.
        pub max_groups: U32,
        /// Reserved, zero.
        pub reserved: [u8; 4],
    }
}

/// Subtype of a reserved region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResvMemSubtype {
    /// Not mappable.
    Reserved,
    /// MSI doorbell window.
    Msi,
}

/// A RESV_MEM subtype this crate does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownSubtype(pub u8);

impl TryFrom<u8> for ResvMemSubtype {
    type Error = UnknownSubtype;

    fn try_from(v: u8) -> Result<Self, UnknownSubtype> {
        match v {
            RESV_MEM_T_RESERVED => Ok(ResvMemSubtype::Reserved),
            RESV_MEM_T_MSI => Ok(ResvMemSubtype::Msi),
            other => Err(UnknownSubtype(other)),
        }
    }
}

impl ResvMemSubtype {
    /// The wire value.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            ResvMemSubtype::Reserved => RESV_MEM_T_RESERVED,
            ResvMemSubtype::Msi => RESV_MEM_T_MSI,
        }
    }
}

/// A decoded property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// A reserved region. `subtype` is the raw byte; [`Property::resv_kind`] maps unknown
    /// subtypes to `Reserved`, as the spec asks drivers to.
    ResvMem {
        /// Raw subtype byte.
        subtype: u8,
        /// First address.
        start: u64,
        /// Last address, inclusive.
        end: u64,
    },
    /// Per-endpoint page-size mask.
    PageSizeMask(u64),
    /// Per-endpoint input range.
    InputRange {
        /// First address.
        start: u64,
        /// Last address, inclusive.
        end: u64,
    },
    /// Output address size in bits.
    OutputSize(u8),
    /// Number of PASID bits.
    PasidSize(u8),
    /// A supported page-table format code.
    PageTableFormat(u16),
    /// A supported PASID-table format code.
    PasidTableFormat(u16),
    /// The endpoint can issue page requests.
    PageRequest {
        /// Capabilities.
        caps: PageRequestCaps,
        /// Maximum outstanding groups.
        max_groups: u32,
    },
}

impl Property {
    /// For `ResvMem`, its subtype with unknown values read as `Reserved`.
    #[must_use]
    pub fn resv_kind(&self) -> Option<ResvMemSubtype> {
        match self {
            Property::ResvMem { subtype, .. } => {
                Some(ResvMemSubtype::try_from(*subtype).unwrap_or(ResvMemSubtype::Reserved))
            }
            _ => None,
        }
    }

    /// A table format advertised by this property, if it is one this crate implements.
    #[must_use]
    pub fn table_format(&self) -> Option<TableFormat> {
        match self {
            Property::PageTableFormat(f) | Property::PasidTableFormat(f) => {
                TableFormat::try_from(*f)
                    .ok()
                    .filter(|t| t.probe_type() == self.prop_type())
            }
            _ => None,
        }
    }

    /// The property's type code.
    #[must_use]
    pub const fn prop_type(&self) -> u16 {
        match self {
            Property::ResvMem { .. } => PROBE_T_RESV_MEM,
            Property::PageSizeMask(_) => ext::PROBE_T_PAGE_SIZE_MASK,
            Property::InputRange { .. } => ext::PROBE_T_INPUT_RANGE,
            Property::OutputSize(_) => ext::PROBE_T_OUTPUT_SIZE,
            Property::PasidSize(_) => ext::PROBE_T_PASID_SIZE,
            Property::PageTableFormat(_) => ext::PROBE_T_PAGE_TABLE_FMT,
            Property::PasidTableFormat(_) => ext::PROBE_T_PASID_TABLE_FMT,
            Property::PageRequest { .. } => ext::PROBE_T_PAGE_REQUEST,
        }
    }

    /// Encoded size, header included.
    #[must_use]
    pub const fn encoded_len(&self) -> usize {
        match self {
            Property::ResvMem { .. } | Property::InputRange { .. } => 24,
            Property::PageSizeMask(_) | Property::PageRequest { .. } => 16,
            Property::OutputSize(_)
            | Property::PasidSize(_)
            | Property::PageTableFormat(_)
            | Property::PasidTableFormat(_) => 8,
        }
    }

    fn head(&self) -> PropHead {
        let len = self.encoded_len() - 4;
        #[allow(clippy::cast_possible_truncation)] // every property is < 64 bytes
        PropHead {
            prop_type: self.prop_type().into(),
            length: (len as u16).into(),
        }
    }

    /// Writes the property at the start of `out`; returns its size, or `None` if it does not fit.
    pub fn write_to(&self, out: &mut [u8]) -> Option<usize> {
        let n = self.encoded_len();
        let dst = out.get_mut(..n)?;
        let head = self.head();
        match *self {
            Property::ResvMem {
                subtype,
                start,
                end,
            } => dst.copy_from_slice(
                PropResvMem {
                    head,
                    subtype,
                    reserved: [0; 3],
                    start: start.into(),
                    end: end.into(),
                }
                .as_bytes(),
            ),
            Property::PageSizeMask(mask) => dst.copy_from_slice(
                PropPageSizeMask {
                    head,
                    reserved: [0; 4],
                    mask: mask.into(),
                }
                .as_bytes(),
            ),
            Property::InputRange { start, end } => dst.copy_from_slice(
                PropInputRange {
                    head,
                    reserved: [0; 4],
                    start: start.into(),
                    end: end.into(),
                }
                .as_bytes(),
            ),
            Property::OutputSize(bits) | Property::PasidSize(bits) => {
                dst.copy_from_slice(
                    PropBits {
                        head,
                        bits,
                        reserved: [0; 3],
                    }
                    .as_bytes(),
                );
            }
            Property::PageTableFormat(f) | Property::PasidTableFormat(f) => dst.copy_from_slice(
                PropTableFormat {
                    head,
                    format: f.into(),
                    reserved: [0; 2],
                }
                .as_bytes(),
            ),
            Property::PageRequest { caps, max_groups } => dst.copy_from_slice(
                PropPageRequest {
                    head,
                    flags: caps.bits().into(),
                    max_groups: max_groups.into(),
                    reserved: [0; 4],
                }
                .as_bytes(),
            ),
        }
        Some(n)
    }

    /// Decodes the value of a property of type `ty` (`value` = the bytes after the header,
    /// `length` of them). Returns `None` for unknown types and values too short for their type.
    fn decode(ty: u16, value: &[u8]) -> Option<Property> {
        // Rebuild the full property (header + value) so the layouts above apply unchanged.
        fn read<T: FromBytes>(value: &[u8]) -> Option<T> {
            let mut buf = [0u8; 32];
            let n = core::mem::size_of::<T>();
            let body = value.get(..n.checked_sub(4)?)?;
            buf.get_mut(4..n)?.copy_from_slice(body);
            T::read_from_prefix(&buf[..n]).ok().map(|(v, _)| v)
        }
        Some(match ty {
            PROBE_T_RESV_MEM => {
                let p: PropResvMem = read(value)?;
                Property::ResvMem {
                    subtype: p.subtype,
                    start: p.start.get(),
                    end: p.end.get(),
                }
            }
            ext::PROBE_T_PAGE_SIZE_MASK => {
                Property::PageSizeMask(read::<PropPageSizeMask>(value)?.mask.get())
            }
            ext::PROBE_T_INPUT_RANGE => {
                let p: PropInputRange = read(value)?;
                Property::InputRange {
                    start: p.start.get(),
                    end: p.end.get(),
                }
            }
            ext::PROBE_T_OUTPUT_SIZE => Property::OutputSize(read::<PropBits>(value)?.bits),
            ext::PROBE_T_PASID_SIZE => Property::PasidSize(read::<PropBits>(value)?.bits),
            ext::PROBE_T_PAGE_TABLE_FMT => {
                Property::PageTableFormat(read::<PropTableFormat>(value)?.format.get())
            }
            ext::PROBE_T_PASID_TABLE_FMT => {
                Property::PasidTableFormat(read::<PropTableFormat>(value)?.format.get())
            }
            ext::PROBE_T_PAGE_REQUEST => {
                let p: PropPageRequest = read(value)?;
                Property::PageRequest {
                    caps: PageRequestCaps::from_bits_truncate(p.flags.get()),
                    max_groups: p.max_groups.get(),
                }
            }
            _ => return None,
        })
    }
}

/// Writes properties into a PROBE reply's properties area.
#[derive(Debug)]
pub struct ProbeWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

/// The properties area is too small for one more property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSpace;

impl<'a> ProbeWriter<'a> {
    /// A writer over the whole properties area; it zeroes the area first.
    pub fn new(buf: &'a mut [u8]) -> Self {
        buf.fill(0);
        ProbeWriter { buf, pos: 0 }
    }

    /// Appends one property.
    ///
    /// # Errors
    /// [`NoSpace`] if the property does not fit; nothing is written then.
    pub fn push(&mut self, p: &Property) -> Result<(), NoSpace> {
        let rest = self.buf.get_mut(self.pos..).ok_or(NoSpace)?;
        let n = p.write_to(rest).ok_or(NoSpace)?;
        self.pos += n;
        Ok(())
    }

    /// Bytes written so far (the rest of the area stays zero, which reads as `PROBE_T_NONE`).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

/// Iterates over the properties of a PROBE reply, following the driver rules: unknown types,
/// properties with reserved type bits set, and known types too short for their layout are
/// skipped; the walk stops at `PROBE_T_NONE` or when the next header does not fit.
#[derive(Debug, Clone)]
pub struct ProbeProperties<'a> {
    buf: &'a [u8],
}

impl<'a> ProbeProperties<'a> {
    /// Iterates over a properties area.
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Self {
        ProbeProperties { buf }
    }
}

impl Iterator for ProbeProperties<'_> {
    type Item = Property;

    fn next(&mut self) -> Option<Property> {
        loop {
            let (head, rest) = PropHead::read_from_prefix(self.buf).ok()?;
            let raw = head.prop_type.get();
            let ty = raw & PROBE_T_MASK;
            if ty == PROBE_T_NONE {
                self.buf = &[];
                return None;
            }
            let len = usize::from(head.length.get());
            let Some(value) = rest.get(..len) else {
                // Truncated property: nothing after it can be trusted.
                self.buf = &[];
                return None;
            };
            self.buf = &rest[len..];
            if raw & !PROBE_T_MASK != 0 {
                continue;
            }
            if let Some(p) = Property::decode(ty, value) {
                return Some(p);
            }
        }
    }
}
