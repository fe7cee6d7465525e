//! Access permissions of a stage-1 mapping, and what a software walk finds.

/// What a mapping allows beyond reading (every mapping is readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms {
    /// Writable.
    pub write: bool,
    /// Accessible to unprivileged (user, EL0) accesses; otherwise privileged only.
    pub user: bool,
    /// Executable (instruction fetches) at the privilege the mapping is for.
    pub exec: bool,
}

impl Perms {
    /// Privileged, read-only, not executable.
    pub const READ: Perms = Perms {
        write: false,
        user: false,
        exec: false,
    };
    /// Privileged, read-write, not executable.
    pub const READ_WRITE: Perms = Perms {
        write: true,
        user: false,
        exec: false,
    };
    /// Unprivileged (user), read-write, not executable: a process's data pages.
    pub const USER_READ_WRITE: Perms = Perms {
        write: true,
        user: true,
        exec: false,
    };
}

/// The result of a software walk: where an address lands and with which permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Output (guest-physical) address of the input address.
    pub pa: u64,
    /// Permissions of the leaf entry.
    pub perms: Perms,
    /// Size of the leaf: 4 KiB page, 2 MiB or 1 GiB block.
    pub page_size: u64,
}
