//! Initialisation: feature negotiation, refusals, config reading, queue setup, reset on drop.

use crate::fake::{all_features, config, default_config, standard_features, Fake, Iommu};
use virtio_drivers::transport::{DeviceStatus, DeviceType};
use virtio_iommu_driver::{
    DriverOptions, Error, Features, IommuConfig, EVENT_BUFFER_SIZE, EVENT_QUEUE_SIZE,
};
use virtio_iommu_spec::features::{
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

const RUNNING: DeviceStatus = DeviceStatus::ACKNOWLEDGE
    .union(DeviceStatus::DRIVER)
    .union(DeviceStatus::FEATURES_OK)
    .union(DeviceStatus::DRIVER_OK);

#[test]
fn accepts_exactly_the_supported_features() {
    let fake = Fake::new(
        all_features() | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC,
        default_config(),
    );
    let iommu = Iommu::new(fake.transport()).unwrap();
    let want = Features::INPUT_RANGE
        | Features::DOMAIN_RANGE
        | Features::MAP_UNMAP
        | Features::PROBE
        | Features::MMIO
        | Features::BYPASS_CONFIG;
    // No legacy BYPASS, no extension unless asked, no ring features.
    assert_eq!(
        fake.lock().driver_features,
        want.bits() | VIRTIO_F_VERSION_1
    );
    assert_eq!(iommu.features(), want);
    assert_eq!(fake.lock().status, RUNNING);
}

#[test]
fn accepts_extensions_only_when_asked_and_offered() {
    let fake = Fake::new(all_features(), default_config());
    let opts = DriverOptions {
        extensions: Features::ATTACH_TABLE | Features::PAGE_REQUEST | Features::BYPASS,
        max_spins: None,
    };
    let iommu = Iommu::new_with(fake.transport(), opts).unwrap();
    assert!(iommu
        .features()
        .contains(Features::ATTACH_TABLE | Features::PAGE_REQUEST));
    assert!(!iommu.features().contains(Features::BYPASS));

    // Asked for but not offered: not accepted.
    let fake = Fake::standard();
    let iommu = Iommu::new_with(fake.transport(), opts).unwrap();
    assert!(!iommu
        .features()
        .intersects(Features::ATTACH_TABLE | Features::PAGE_REQUEST));
    assert_eq!(fake.lock().driver_features, standard_features());
}

fn refused(fake: &Fake) -> Error {
    let err = Iommu::new(fake.transport()).unwrap_err();
    assert!(
        fake.lock().status.contains(DeviceStatus::FAILED),
        "{err:?} must fail the device"
    );
    assert!(!fake.lock().status.contains(DeviceStatus::DRIVER_OK));
    err
}

#[test]
fn refuses_a_device_without_map_unmap() {
    let fake = Fake::new(
        standard_features() & !Features::MAP_UNMAP.bits(),
        default_config(),
    );
    assert_eq!(refused(&fake), Error::NoMapUnmap);
}

#[test]
fn refuses_a_zero_page_size_mask() {
    let fake = Fake::new(
        standard_features(),
        config(0, (0, u64::MAX), (0, 9), 512, 0),
    );
    assert_eq!(refused(&fake), Error::ZeroPageSizeMask);
}

#[test]
fn refuses_a_device_without_version_1() {
    let fake = Fake::new(standard_features() & !VIRTIO_F_VERSION_1, default_config());
    assert_eq!(refused(&fake), Error::NoVersion1);
}

#[test]
fn refuses_when_features_ok_does_not_stick() {
    let fake = Fake::standard();
    fake.lock().reject_features = true;
    assert_eq!(refused(&fake), Error::FeaturesRejected);
}

#[test]
fn refuses_a_config_that_never_settles() {
    let fake = Fake::standard();
    fake.lock().unstable_generation = true;
    assert_eq!(refused(&fake), Error::ConfigUnstable);
}

#[test]
fn refuses_other_device_types() {
    let fake = Fake::standard();
    fake.lock().device_type = DeviceType::Block;
    assert_eq!(
        Iommu::new(fake.transport()).unwrap_err(),
        Error::WrongDeviceType
    );
}

#[test]
fn reads_the_config() {
    let fake = Fake::new(
        standard_features(),
        config(
            0xffff_ffff_ffe1_0000,
            (0x10_0000, 0xfff_ffff),
            (3, 77),
            256,
            0xfe,
        ),
    );
    let iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(
        *iommu.config(),
        IommuConfig {
            page_size_mask: 0xffff_ffff_ffe1_0000,
            input_start: 0x10_0000,
            input_last: 0xfff_ffff,
            domain_start: 3,
            domain_last: 77,
            probe_size: 256,
            // Bits 1-7 of `bypass` are ignored.
            bypass: Some(false),
        }
    );
    assert_eq!(iommu.config().granule(), 0x1_0000);
}

#[test]
fn fields_of_unnegotiated_features_take_their_defaults() {
    let fake = Fake::new(
        Features::MAP_UNMAP.bits() | VIRTIO_F_VERSION_1,
        config(0x1000, (0x10_0000, 0x1f_ffff), (3, 7), 512, 1),
    );
    let iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(
        *iommu.config(),
        IommuConfig {
            page_size_mask: 0x1000,
            input_start: 0,
            input_last: u64::MAX,
            domain_start: 0,
            domain_last: u32::MAX,
            probe_size: 0,
            bypass: None,
        }
    );
}

#[test]
fn an_oversized_probe_area_drops_f_probe() {
    let fake = Fake::new(
        standard_features(),
        config(
            0x1000,
            (0, u64::MAX),
            (0, 9),
            virtio_iommu_driver::MAX_PROBE_SIZE + 1,
            0,
        ),
    );
    let iommu = Iommu::new(fake.transport()).unwrap();
    assert!(!iommu.features().contains(Features::PROBE));
    assert_eq!(fake.lock().driver_features & Features::PROBE.bits(), 0);
}

#[test]
fn posts_every_event_buffer_and_notifies_once() {
    let fake = Fake::standard();
    let _iommu = Iommu::new(fake.transport()).unwrap();
    assert_eq!(usize::from(fake.posted_events()), EVENT_QUEUE_SIZE);
    assert_eq!(EVENT_BUFFER_SIZE, 48);
    assert_eq!(fake.lock().notifies, [0, 1]);
    let s = fake.lock();
    assert_eq!(s.queues[0].size, 64);
    assert_eq!(usize::try_from(s.queues[1].size), Ok(EVENT_QUEUE_SIZE));
}

#[test]
fn drop_resets_the_device_and_unsets_the_queues() {
    let fake = Fake::standard();
    drop(Iommu::new(fake.transport()).unwrap());
    let s = fake.lock();
    assert_eq!(s.status, DeviceStatus::empty());
    assert_eq!((s.queues[0].desc, s.queues[1].desc), (0, 0));
}
