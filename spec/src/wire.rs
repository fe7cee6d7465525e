//! The one way this crate declares a wire layout.

/// Declares a wire structure: `#[repr(C)]`, the derives every layout carries (the zerocopy
/// traits that read and write it at any byte offset, plus `Debug`, `Clone`, `Copy`,
/// `PartialEq`, `Eq`) and a compile-time check that it has the size the protocol gives it.
///
/// ```text
/// wire! {
///     /// Docs and extra attributes (e.g. `#[derive(Default)]`) go first.
///     pub struct Name: SIZE {
///         /// Field docs.
///         pub field: U32,
///     }
/// }
/// ```
macro_rules! wire {
    (
        $(#[$meta:meta])*
        pub struct $name:ident: $size:tt { $($fields:tt)* }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            zerocopy::FromBytes,
            zerocopy::IntoBytes,
            zerocopy::KnownLayout,
            zerocopy::Immutable,
            zerocopy::Unaligned,
        )]
        #[repr(C)]
        pub struct $name { $($fields)* }

        const _: () = assert!(core::mem::size_of::<$name>() == $size);
    };
}
pub(crate) use wire;
