//! PROBE properties of an endpoint: its reserved regions, plus the extension properties when
//! their features are offered.

use virtio_iommu_spec::ext::PageRequestCaps;
use virtio_iommu_spec::probe::NoSpace;
use virtio_iommu_spec::{Features, ProbeWriter, Property};

use super::engine_config::EndpointConfig;

/// The properties of `ep`, in the order they are written.
pub(super) fn properties(
    ep: &EndpointConfig,
    offered: Features,
    max_groups: u32,
) -> impl Iterator<Item = Property> + '_ {
    let resv = ep.reserved.iter().map(|r| Property::ResvMem {
        subtype: r.kind.code(),
        start: r.start,
        end: r.last,
    });
    let ext = offered.intersects(Features::ATTACH_TABLE | Features::PAGE_REQUEST);
    let pasid = (ext && ep.pasid_bits > 0).then_some(Property::PasidSize(ep.pasid_bits));
    let formats = ep
        .table_formats
        .iter()
        .filter(move |_| offered.contains(Features::ATTACH_TABLE))
        .map(|f| match f.probe_type() {
            virtio_iommu_spec::ext::PROBE_T_PASID_TABLE_FMT => Property::PasidTableFormat(f.code()),
            _ => Property::PageTableFormat(f.code()),
        });
    let pri = (offered.contains(Features::PAGE_REQUEST) && ep.page_requests).then_some(
        Property::PageRequest {
            caps: PageRequestCaps::empty(),
            max_groups,
        },
    );
    resv.chain(pasid).chain(formats).chain(pri)
}

/// Bytes the properties of `ep` need.
pub(super) fn encoded_len(ep: &EndpointConfig, offered: Features) -> usize {
    properties(ep, offered, 0).map(|p| p.encoded_len()).sum()
}

/// Writes the properties of `ep` into `area`, zero-filling the rest.
///
/// # Errors
/// [`NoSpace`] if they do not fit (prevented by validating `probe_size` at construction).
pub(super) fn write(
    ep: &EndpointConfig,
    offered: Features,
    max_groups: u32,
    area: &mut [u8],
) -> Result<(), NoSpace> {
    let mut w = ProbeWriter::new(area);
    for p in properties(ep, offered, max_groups) {
        w.push(&p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::ReservedRegion;
    use virtio_iommu_spec::ext::TableFormat;
    use virtio_iommu_spec::probe::ResvMemSubtype;
    use virtio_iommu_spec::ProbeProperties;

    fn ep() -> EndpointConfig {
        EndpointConfig {
            ids: 0..=3,
            reserved: vec![
                ReservedRegion {
                    start: 0x1000,
                    last: 0x1fff,
                    kind: ResvMemSubtype::Reserved,
                },
                ReservedRegion::x86_msi(),
            ],
            pasid_bits: 16,
            page_requests: true,
            table_formats: vec![TableFormat::Vtd, TableFormat::ArmSmmuV3],
        }
    }

    #[test]
    fn upstream_only_without_extension_offers() {
        let mut area = [0xaau8; 64];
        write(&ep(), Features::PROBE, 7, &mut area).unwrap();
        let props: Vec<_> = ProbeProperties::new(&area).collect();
        assert_eq!(
            props,
            vec![
                Property::ResvMem {
                    subtype: 0,
                    start: 0x1000,
                    end: 0x1fff
                },
                Property::ResvMem {
                    subtype: 1,
                    start: 0xfee0_0000,
                    end: 0xfeef_ffff
                },
            ]
        );
        assert!(area[48..].iter().all(|b| *b == 0));
        assert_eq!(encoded_len(&ep(), Features::PROBE), 48);
    }

    #[test]
    fn extension_properties() {
        let all = Features::PROBE | Features::ATTACH_TABLE | Features::PAGE_REQUEST;
        let mut area = [0u8; 128];
        write(&ep(), all, 7, &mut area).unwrap();
        let props: Vec<_> = ProbeProperties::new(&area).skip(2).collect();
        assert_eq!(
            props,
            vec![
                Property::PasidSize(16),
                Property::PageTableFormat(TableFormat::Vtd.code()),
                Property::PasidTableFormat(TableFormat::ArmSmmuV3.code()),
                Property::PageRequest {
                    caps: PageRequestCaps::empty(),
                    max_groups: 7
                },
            ]
        );
        assert_eq!(encoded_len(&ep(), all), 48 + 8 + 16 + 16);
        let only_pri = Features::PROBE | Features::PAGE_REQUEST;
        assert_eq!(encoded_len(&ep(), only_pri), 48 + 8 + 16);
        assert_eq!(write(&ep(), all, 7, &mut area[..80]), Err(NoSpace));
    }
}
