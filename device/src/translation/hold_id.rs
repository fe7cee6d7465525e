//! The handle of a guest request whose completion waits for acknowledgements.

/// A held completion (spec/TRANSLATION.md §4.2), issued by [`super::Hub::invalidate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HoldId(pub u64);
