//! Hostile streams: random bytes, and random edits of a real stream with its checksum made
//! right again (so they reach every section's parser and the rules). Never a panic; a refused
//! stream changes nothing, and an accepted one is exactly the state that saves back to it.

use std::sync::OnceLock;
use std::time::Instant;

use super::refused::reseal;
use super::rich::{build, config, destination};
use crate::sva::guest::Guest;
use proptest::prelude::*;

/// A real stream (saved once) and the instant it was saved at.
fn stream() -> &'static (Vec<u8>, Instant) {
    static S: OnceLock<(Vec<u8>, Instant)> = OnceLock::new();
    S.get_or_init(|| {
        let now = Instant::now();
        (build(now).v.save_state(now), now)
    })
}

#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Edit::Set(i, v)),
        (any::<usize>(), prop_oneof![Just(0u8), Just(0xff), Just(1)])
            .prop_map(|(i, v)| Edit::Set(i, v)),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Remove(i, n)),
    ]
}

fn apply(b: &mut Vec<u8>, e: &Edit) {
    // Offsets past the header, so most edits reach the sections.
    let at = |i: usize, len: usize| 24 + i % len.saturating_sub(28).max(1);
    match e {
        Edit::Set(i, v) => {
            let i = at(*i, b.len());
            if i < b.len() {
                b[i] = *v;
            }
        }
        Edit::Cut(i) => {
            let i = at(*i, b.len()).min(b.len());
            b.truncate(i);
            b.extend([0; 4]);
        }
        Edit::Insert(i, bytes) => {
            let i = at(*i, b.len()).min(b.len());
            b.splice(i..i, bytes.iter().copied());
        }
        Edit::Remove(i, n) => {
            let i = at(*i, b.len()).min(b.len());
            let j = (i + n).min(b.len().saturating_sub(4)).max(i);
            b.drain(i..j);
        }
    }
}

fn check(bytes: &[u8], now: Instant, g: &Guest) -> Result<(), TestCaseError> {
    let mut b = destination(config(), g);
    let before = b.save_state(now);
    match b.load_state(bytes, now) {
        Ok(()) => prop_assert_eq!(b.save_state(now), bytes.to_vec()),
        Err(_) => prop_assert_eq!(b.save_state(now), before),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused(mut bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let (_, now) = stream();
        if magic && bytes.len() >= 28 {
            bytes[..8].copy_from_slice(b"VIOMMUDS");
            bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
            bytes[12..16].fill(0);
            reseal(&mut bytes);
        }
        let g = Guest::new();
        let mut b = destination(config(), &g);
        let before = b.save_state(*now);
        prop_assert!(b.load_state(&bytes, *now).is_err());
        prop_assert_eq!(b.save_state(*now), before);
    }

    #[test]
    fn edited_streams_never_panic(edits in prop::collection::vec(edit(), 1..4)) {
        let (good, now) = stream();
        let mut bytes = good.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        if bytes.len() >= 28 {
            reseal(&mut bytes);
        }
        check(&bytes, *now, &Guest::new())?;
    }
}
