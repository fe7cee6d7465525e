//! What the backend offers for live migration's dirty-page log: LOG_ALL and LOG_SHMFD when
//! every write of guest memory goes through the daemon's logged memory, neither when the host's
//! devices write it by DMA of their own (a migration would then miss their pages).

use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_device_iommu::backend::IommuBackend;
use vhost_user_backend::VhostUserBackendMut;

use crate::common::{small_config, TestHost};
use vhost_device_iommu::engine::Engine;

fn backend(hardware_dma: bool) -> IommuBackend {
    let (host, knobs, _) = TestHost::new();
    knobs.lock().unwrap().hardware_dma = hardware_dma;
    let engine = Engine::new(small_config(), Box::new(host)).unwrap();
    IommuBackend::new(Arc::new(parking_lot::Mutex::new(engine)), 64, None, None).unwrap()
}

#[test]
fn dirty_logging_is_offered_only_where_every_write_is_logged() {
    let log_all = VhostUserVirtioFeatures::LOG_ALL.bits();
    let shmfd = VhostUserProtocolFeatures::LOG_SHMFD;
    let (logged, hardware) = (backend(false), backend(true));
    assert_eq!(logged.features() & log_all, log_all);
    assert!(logged.protocol_features().contains(shmfd));
    assert_eq!(hardware.features() & log_all, 0);
    assert!(!hardware.protocol_features().contains(shmfd));
    // Nothing else differs.
    assert_eq!(logged.features() & !log_all, hardware.features());
    assert_eq!(
        logged.protocol_features() - shmfd,
        hardware.protocol_features()
    );
}
