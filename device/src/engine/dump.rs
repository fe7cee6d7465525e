//! A serialisable snapshot of the device state, for the control socket and for tests.

use serde::Serialize;

/// One mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MappingDump {
    /// First input address.
    pub virt_start: u64,
    /// Last input address, inclusive.
    pub virt_last: u64,
    /// Output address of `virt_start`.
    pub phys_start: u64,
    /// MAP flags (READ 1, WRITE 2, MMIO 4).
    pub flags: u32,
}

/// One domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainDump {
    /// Domain ID.
    pub id: u32,
    /// Created with ATTACH_F_BYPASS.
    pub bypass: bool,
    /// Attached endpoints, ascending.
    pub endpoints: Vec<u32>,
    /// Mappings, by address.
    pub mappings: Vec<MappingDump>,
}

/// The whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dump {
    /// The `bypass` config byte.
    pub bypass: bool,
    /// Domains, by ID.
    pub domains: Vec<DomainDump>,
}
