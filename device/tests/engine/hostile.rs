//! Guest-controlled bytes never panic the engine: arbitrary request bytes and buffer sizes,
//! config writes, and DMA parameters at the edges of the address space.

use crate::common::*;
use proptest::prelude::*;
use vhost_device_iommu::engine::EngineConfig;
use vhost_device_iommu::host::Access;
use virtio_iommu_spec::Status;

fn readable() -> impl Strategy<Value = Vec<u8>> {
    // Mostly known types with plausible lengths, sometimes anything.
    prop_oneof![
        (0u8..10, prop::collection::vec(any::<u8>(), 0..90)).prop_map(|(t, mut rest)| {
            rest.insert(0, t);
            rest
        }),
        (
            1u8..6,
            prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 19..=72)
        )
            .prop_map(|(t, mut b)| {
                b[0] = t;
                b
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests(reqs in prop::collection::vec((readable(), 0usize..600), 1..20)) {
        let mut v = dev(EngineConfig {
            page_size_mask: !0,
            ..small_config()
        });
        for (r, wlen) in reqs {
            let mut w = vec![0xa5u8; wlen];
            let n = v.handle_request(&r, &mut w);
            if n == 0 {
                prop_assert!(w.iter().all(|b| *b == 0xa5), "no reply must write nothing");
            } else {
                prop_assert_eq!(n, wlen);
                prop_assert!(Status::try_from(w[n - 4]).is_ok());
                prop_assert_eq!(&w[n - 3..], &[0u8, 0, 0][..]);
            }
        }
        let s = v.stats();
        prop_assert!(s.domains <= 1 << 16);
    }

    #[test]
    fn arbitrary_config_writes(offset in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..48)) {
        let mut v = dev(EngineConfig::default());
        let before = v.config_space();
        if v.write_config(offset, &data).is_err() {
            prop_assert_eq!(v.config_space(), before);
        }
        prop_assert!(v.config_space().bypass <= 1);
    }

    #[test]
    fn dma_at_the_edges(
        ep in 0u32..20,
        iova in prop_oneof![any::<u64>(), (0u64..64).prop_map(|x| u64::MAX - x)],
        len in 0usize..128,
        bypass in any::<bool>(),
        map_top in any::<bool>(),
    ) {
        let mut v = dev(EngineConfig {
            endpoints: vec![eps(0..=15, vec![])],
            boot_bypass: bypass,
            ..small_config()
        });
        v.set_guest_memory(guest_memory(&[(0, 0x10000)]));
        if map_top {
            prop_assert_eq!(attach(&mut v, 1, 0), Status::Ok);
            prop_assert_eq!(map(&mut v, 1, u64::MAX - 0xfff, u64::MAX, 0x1000, RW), Status::Ok);
            prop_assert_eq!(map(&mut v, 1, 0, 0xfff, 0x2000, RW), Status::Ok);
        }
        let mut buf = vec![0u8; len];
        let _ = v.device_dma().read(ep, None, iova, &mut buf);
        let _ = v.device_dma().write(ep, Some(1), iova, &buf);
        let _ = v.device_dma().translate(ep, None, iova, u64::MAX, Access::Write);
        while v.pop_event(24).is_some() {}
    }
}
