//! Request completion statuses (the `status` byte of the request tail).

/// The status the device writes into a request's tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Virtio communication error.
    IoErr = 1,
    /// Unsupported request.
    Unsupp = 2,
    /// Internal device error.
    DevErr = 3,
    /// Invalid parameters.
    Inval = 4,
    /// Out-of-range parameters.
    Range = 5,
    /// Entry not found.
    NoEnt = 6,
    /// Bad address.
    Fault = 7,
    /// Insufficient resources.
    NoMem = 8,
}

impl Status {
    /// All statuses, in numeric order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::IoErr,
        Status::Unsupp,
        Status::DevErr,
        Status::Inval,
        Status::Range,
        Status::NoEnt,
        Status::Fault,
        Status::NoMem,
    ];

    /// The upstream constant name without its `VIRTIO_IOMMU_S_` prefix.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::IoErr => "IOERR",
            Status::Unsupp => "UNSUPP",
            Status::DevErr => "DEVERR",
            Status::Inval => "INVAL",
            Status::Range => "RANGE",
            Status::NoEnt => "NOENT",
            Status::Fault => "FAULT",
            Status::NoMem => "NOMEM",
        }
    }
}

/// A status byte that names no known status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownStatus(pub u8);

impl TryFrom<u8> for Status {
    type Error = UnknownStatus;

    fn try_from(v: u8) -> Result<Self, Self::Error> {
        Status::ALL
            .get(usize::from(v))
            .copied()
            .ok_or(UnknownStatus(v))
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_matches_the_spec() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as u8 as usize, i);
            assert_eq!(Status::try_from(u8::try_from(i).unwrap()), Ok(*s));
        }
        assert_eq!(Status::NoMem as u8, 8);
        assert_eq!(Status::try_from(9), Err(UnknownStatus(9)));
        assert_eq!(Status::try_from(0xff), Err(UnknownStatus(0xff)));
    }
}
