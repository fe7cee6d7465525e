//! Which INVALIDATE messages one client gets for one engine record (spec/TRANSLATION.md §4.1):
//! only endpoints it serves, and one `ALL_ENDPOINTS` message instead of many single ones.

use virtio_iommu_spec::translation::{EndpointRange, Endpoints, Pasids};

use crate::engine::{InvalEndpoints, Invalidation};

/// More matching endpoints than this get one `ALL_ENDPOINTS` message (wider, never wrong).
pub const WIDEN_AT: usize = 8;

/// The scope of one INVALIDATE message, without its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Endpoints.
    pub endpoints: Endpoints,
    /// Address spaces.
    pub pasids: Pasids,
    /// First IOVA.
    pub first: u64,
    /// Last IOVA, inclusive.
    pub last: u64,
}

/// The messages for a client serving `ranges` (at most [`WIDEN_AT`]).
#[must_use]
pub fn scopes(ranges: &[EndpointRange], inv: &Invalidation) -> Vec<Scope> {
    let scope = |endpoints| Scope {
        endpoints,
        pasids: inv.pasids,
        first: inv.first,
        last: inv.last,
    };
    match &inv.endpoints {
        InvalEndpoints::All if ranges.is_empty() => Vec::new(),
        InvalEndpoints::All => vec![scope(Endpoints::All)],
        InvalEndpoints::Some(list) => {
            let mut served = list
                .iter()
                .copied()
                .filter(|e| ranges.iter().any(|r| r.contains(*e)));
            let mut out: Vec<Scope> = Vec::new();
            for e in served.by_ref() {
                if out.len() == WIDEN_AT {
                    return vec![scope(Endpoints::All)];
                }
                out.push(scope(Endpoints::One(e)));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_endpoints_only_and_widened() {
        let ranges = [EndpointRange { first: 8, last: 20 }];
        let inv = Invalidation {
            endpoints: InvalEndpoints::Some(vec![1, 8, 9, 30]),
            pasids: Pasids::NoPasid,
            first: 0x1000,
            last: 0x1fff,
        };
        let s = scopes(&ranges, &inv);
        assert_eq!(
            s.iter().map(|s| s.endpoints).collect::<Vec<_>>(),
            vec![Endpoints::One(8), Endpoints::One(9)]
        );
        assert_eq!(
            (s[0].first, s[0].last, s[0].pasids),
            (0x1000, 0x1fff, Pasids::NoPasid)
        );
        assert!(scopes(&[EndpointRange { first: 0, last: 0 }], &inv).is_empty());
        let many = Invalidation {
            endpoints: InvalEndpoints::Some((8..=16).collect()),
            ..inv.clone()
        };
        assert_eq!(
            scopes(&ranges, &many)
                .iter()
                .map(|s| s.endpoints)
                .collect::<Vec<_>>(),
            vec![Endpoints::All]
        );
        let eight = Invalidation {
            endpoints: InvalEndpoints::Some((8..=15).collect()),
            ..inv
        };
        assert_eq!(scopes(&ranges, &eight).len(), 8);
        assert_eq!(scopes(&ranges, &Invalidation::everything()).len(), 1);
        assert!(scopes(&[], &Invalidation::everything()).is_empty());
    }
}
