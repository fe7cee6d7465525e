//! The daemon through its vhost-user socket: feature and protocol negotiation, queue count,
//! the config space for various options, and `bypass` writes via SET_CONFIG.

use super::vm::*;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use virtio_iommu_e2e::frontend::{LOG_ALL_BIT, PROTOCOL_FEATURES_BIT};
use virtio_iommu_e2e::Daemon;
use virtio_iommu_spec::config::BYPASS_OFFSET;
use virtio_iommu_spec::features::{
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};
use virtio_iommu_spec::{Config, Features, Status};
use zerocopy::IntoBytes;

const TRANSPORT: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC;

/// `BYPASS_OFFSET` as a config-space offset.
const BYPASS: u32 = 36;

fn upstream() -> Features {
    Features::MAP_UNMAP
        | Features::INPUT_RANGE
        | Features::DOMAIN_RANGE
        | Features::PROBE
        | Features::BYPASS_CONFIG
}

/// Features offered by a daemon started with `args` (only the handshake, no device start).
fn offered(args: &[&str]) -> u64 {
    init_log();
    let d = Daemon::spawn(args).unwrap();
    let fe = d.connect(memory()).unwrap();
    fe.device_features()
}

#[test]
fn features_offered_per_option() {
    // LOG_ALL: the emulated host's writes all go through the logged guest memory.
    let base = TRANSPORT | PROTOCOL_FEATURES_BIT | LOG_ALL_BIT;
    assert_eq!(offered(&[]), base | upstream().bits());
    assert_eq!(
        offered(&["--mmio"]),
        base | (upstream() | Features::MMIO).bits()
    );
    assert_eq!(
        offered(&["--pasid-bits", "8"]),
        base | (upstream() | Features::ATTACH_TABLE | Features::PAGE_REQUEST).bits()
    );
    // The legacy F_BYPASS is never offered.
    assert_eq!(offered(&["--mmio"]) & Features::BYPASS.bits(), 0);
}

#[test]
fn protocol_features_queue_count_and_default_config() {
    init_log();
    let d = Daemon::spawn::<&str>(&[]).unwrap();
    let mut fe = d.connect(memory()).unwrap();
    let want = VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::DEVICE_STATE
        | VhostUserProtocolFeatures::LOG_SHMFD;
    assert_eq!(fe.protocol_features(), want);
    // What the backend offers, not just the intersection the frontend kept: nothing else.
    assert_eq!(fe.raw().get_protocol_features().unwrap(), want);
    assert_eq!(fe.num_queues(), 2);

    let want = Config {
        page_size_mask: 0xffff_ffff_ffff_f000.into(),
        input_range_start: 0.into(),
        input_range_end: u64::MAX.into(),
        domain_range_start: 0.into(),
        domain_range_end: u32::MAX.into(),
        probe_size: 512.into(),
        bypass: 1,
        reserved: [0; 3],
    };
    assert_eq!(fe.get_config(0, 40).unwrap(), want.as_bytes());
    let mut raw = [0u8; 40];
    raw[..8].copy_from_slice(&[0x00, 0xf0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    raw[16..24].copy_from_slice(&[0xff; 8]);
    raw[28..32].copy_from_slice(&[0xff; 4]);
    raw[32..36].copy_from_slice(&[0x00, 0x02, 0, 0]);
    raw[36] = 1;
    assert_eq!(fe.get_config(0, 40).unwrap(), raw);
    // Partial reads, as QEMU forwards a guest's field accesses.
    assert_eq!(fe.get_config(32, 4).unwrap(), [0x00, 0x02, 0, 0]);
    assert_eq!(fe.get_config(36, 1).unwrap(), [1]);
}

#[test]
fn config_reflects_options() {
    init_log();
    let d = Daemon::spawn(&[
        "--boot-bypass",
        "off",
        "--input-range",
        "0x10000-0xffffffffff",
        "--domain-range",
        "5-0x1234",
        "--page-size-mask",
        "0x201000",
        "--probe-size",
        "256",
    ])
    .unwrap();
    let fe = d.connect(memory()).unwrap();
    let want = Config {
        page_size_mask: 0x20_1000.into(),
        input_range_start: 0x1_0000.into(),
        input_range_end: 0xff_ffff_ffff.into(),
        domain_range_start: 5.into(),
        domain_range_end: 0x1234.into(),
        probe_size: 256.into(),
        bypass: 0,
        reserved: [0; 3],
    };
    assert_eq!(fe.get_config(0, 40).unwrap(), want.as_bytes());
}

#[test]
fn bypass_written_through_set_config() {
    assert_eq!(usize::try_from(BYPASS).unwrap(), BYPASS_OFFSET);
    let mut vm = Vm::start(&[]);
    assert_eq!(vm.bypass(), 1);
    // A translation of an unattached endpoint passes through while bypass is on.
    let r = vm.cmd(
        "translate",
        serde_json::json!({"endpoint": 3, "iova": 0x5000}),
    );
    assert_eq!(
        r["translation"],
        serde_json::json!({"gpa": 0x5000, "len": 1})
    );

    vm.fe.set_config(BYPASS, &[0]).unwrap();
    assert_eq!(vm.bypass(), 0);
    assert_eq!(vm.dump()["bypass"], serde_json::json!(false));
    let r = vm.cmd(
        "translate",
        serde_json::json!({"endpoint": 3, "iova": 0x5000}),
    );
    assert_eq!(r["fault"]["reason"], "domain");

    // 2 is not a legal value: ignored and logged, the connection stays up.
    vm.fe.set_config(BYPASS, &[2]).unwrap();
    assert_eq!(vm.bypass(), 0);
    assert!(
        vm.daemon.stderr().contains("invalid bypass value 2"),
        "logged:\n{}",
        vm.daemon.stderr()
    );
    // Read-only bytes and out-of-range writes are ignored the same way.
    vm.fe.set_config(32, &[0, 1, 0, 0]).unwrap();
    vm.fe.set_config(40, &[1]).unwrap();
    assert_eq!(vm.fe.get_config(32, 4).unwrap(), [0x00, 0x02, 0, 0]);
    assert_eq!(vm.send(&attach(1, 3)), Status::Ok);
    assert_eq!(vm.bypass(), 0);
    vm.assert_alive();

    // A whole-space write that only changes bypass (what a frontend writing back the whole
    // config does) is accepted.
    let mut all = vm.fe.get_config(0, 40).unwrap();
    all[BYPASS_OFFSET] = 1;
    vm.fe.set_config(0, &all).unwrap();
    assert_eq!(vm.bypass(), 1);
}

/// PROTOCOL.md §4.2: a `bypass` write changes nothing until the driver acked F_BYPASS_CONFIG
/// (as QEMU's device); it is ignored and logged, and the connection stays up.
#[test]
fn bypass_write_without_bypass_config() {
    let mut vm = Vm::start_with(&[], |f| f & !Features::BYPASS_CONFIG.bits());
    vm.fe.set_config(BYPASS, &[0]).unwrap();
    assert_eq!(vm.bypass(), 1);
    vm.assert_alive();
}

/// Without `--endpoints` or `--viot` the endpoints are segment 0's PCI requester IDs: an ID
/// above 0xffff names no device and gets S_NOENT, as QEMU's own device answers for a BDF with
/// no device behind it.
#[test]
fn default_endpoints_are_segment_0_requester_ids() {
    let mut vm = Vm::start(&[]);
    assert_eq!(vm.send(&attach(1, 0xffff)), Status::Ok);
    assert_eq!(vm.send(&attach(1, 0)), Status::Ok);
    assert_eq!(vm.send(&attach(1, 0x1_0000)), Status::NoEnt);
    assert_eq!(vm.send(&attach(1, u32::MAX)), Status::NoEnt);
    assert_eq!(vm.probe(0x1_0000).0, Status::NoEnt);
    assert_eq!(vm.probe(0xffff).0, Status::Ok);
}

/// `--viot` with the file `mkviot` writes for QEMU (the body, as `scripts/run-vm.sh` passes it,
/// and the whole table): exactly the VIOT's endpoints exist.
#[test]
fn endpoints_come_from_the_viot_given_to_the_guest() {
    let mkviot = virtio_iommu_e2e::daemon::binary_path()
        .unwrap()
        .with_file_name("mkviot");
    let dir = tempfile::tempdir().unwrap();
    for body in [true, false] {
        let file = dir.path().join(if body { "body.bin" } else { "table.bin" });
        let mut cmd = std::process::Command::new(&mkviot);
        cmd.args([
            "--iommu",
            "00:03.0",
            "--pci-range",
            "00:00.0-00:1f.7",
            "--out",
        ])
        .arg(&file);
        if body {
            cmd.arg("--body");
        }
        assert!(cmd.status().unwrap().success(), "{mkviot:?} runs");
        let mut vm = Vm::start(&["--viot", file.to_str().unwrap()]);
        // 00:04.0 and 00:1f.7 are behind the IOMMU; bus 1 and beyond are not.
        assert_eq!(vm.send(&attach(1, 0x20)), Status::Ok);
        assert_eq!(vm.send(&attach(1, 0xff)), Status::Ok);
        assert_eq!(vm.send(&attach(2, 0x100)), Status::NoEnt);
        assert_eq!(vm.probe(0x100).0, Status::NoEnt);
        assert_eq!(vm.probe(0x20).0, Status::Ok);
        assert_eq!(vm.domains(), json_domains(&[(1, &[0x20, 0xff])]));
    }
}

fn json_domains(domains: &[(u32, &[u32])]) -> serde_json::Value {
    serde_json::Value::Array(
        domains
            .iter()
            .map(|(id, eps)| domain(*id, eps, &[]))
            .collect(),
    )
}

/// Refused config writes come from the guest: a flood of them logs a bounded number of lines
/// (the rate limit's burst), and the connection stays up.
#[test]
fn refused_config_writes_log_a_bounded_number_of_lines() {
    let mut vm = Vm::start(&[]);
    for _ in 0..1000 {
        vm.fe.set_config(32, &[0, 1, 0, 0]).unwrap();
    }
    let logged = vm
        .daemon
        .stderr()
        .lines()
        .filter(|l| l.contains("ignored config write"))
        .count();
    assert!((1..=10).contains(&logged), "{logged} lines for 1000 writes");
    assert_eq!(vm.send(&attach(1, 3)), Status::Ok);
    vm.assert_alive();
}
