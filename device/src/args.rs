//! Command-line arguments and their validation into a [`DaemonConfig`].

use std::ops::RangeInclusive;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use virtio_iommu_spec::ext::TableFormat;
use virtio_iommu_spec::probe::ResvMemSubtype;
use virtio_iommu_spec::viot::{self, ViotNode};

use crate::engine::{
    EndpointConfig, EngineConfig, Limits, ReservedRegion, DEFAULT_MAX_MAPPINGS_TOTAL,
};
use crate::error::{Error, Result};
use crate::host::iommufd::{VfioEndpoint, VfioSource};
use crate::translation::TranslationConfig;

/// Which host IOMMU the daemon programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HostKind {
    /// The in-process emulated IOMMU (translations served to simulated devices and the
    /// control socket).
    Emulated,
    /// Linux iommufd + VFIO cdev devices assigned to the guest.
    Iommufd,
}

/// `on` / `off` switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// vhost-user virtio-iommu device backend.
///
/// QEMU (or another vhost-user frontend) connects to --socket-path; the daemon serves one
/// frontend at a time and listens again after a disconnect. Numbers accept 0x-prefixed hex.
#[derive(Debug, Parser, Clone)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// vhost-user UNIX socket to listen on.
    #[arg(short = 's', long)]
    pub socket_path: PathBuf,

    /// Control socket (newline-delimited JSON: stats, dump, translate, dma-read, dma-write).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,

    /// Control clients served at once (each holds a thread; a simulated device's DMA that
    /// waits for a page response holds its client). More are refused with an error line.
    #[arg(long, default_value_t = 16)]
    pub max_control_clients: usize,

    /// Translation socket for device backends (spec/TRANSLATION.md): they ask for endpoints'
    /// translations and acknowledge invalidations; UNMAP and DETACH complete after the acks.
    #[arg(long, value_name = "PATH")]
    pub translation_socket: Option<PathBuf>,

    /// Keep the device state in this file (PROTOCOL.md §13) and resume from it at start: a
    /// daemon killed and started again with the same file gives the guest back every domain
    /// and mapping, and the state also survives frontend reconnects. One file per VM: remove
    /// it when the VM starts afresh.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,

    /// Translation clients served at once; one more is accepted and closed at once.
    #[arg(long, default_value_t = virtio_iommu_spec::translation::DEFAULT_MAX_CLIENTS)]
    pub max_translation_clients: usize,

    /// How long a translation client may take to acknowledge an INVALIDATE before it is cut
    /// off (its connection closed, the guest's request completed), in milliseconds.
    #[arg(long, default_value_t = virtio_iommu_spec::translation::DEFAULT_ACK_TIMEOUT_MS)]
    pub translation_ack_timeout_ms: u64,

    /// After handling a translation message (or sending an INVALIDATE), the service thread
    /// polls its sockets this long without sleeping before it sleeps, in microseconds (at most
    /// 1000; 0: it sleeps at once). Spares a wake-up per message when more come soon.
    #[arg(long, default_value_t = crate::translation::DEFAULT_POLL_US)]
    pub translation_poll_us: u64,

    /// After serving requests, the queue thread watches the request ring this long without
    /// sleeping for the guest's next request, in microseconds (at most 1000; 0: it sleeps at
    /// once). A driver that maps and unmaps every DMA buffer sends its requests in quick
    /// succession, and waking the thread costs tens of microseconds each time.
    #[arg(long, default_value_t = crate::translation::DEFAULT_POLL_US)]
    pub request_poll_us: u64,

    /// Endpoint IDs that exist, as comma-separated ranges (`0x0-0xff,0x300`). Other IDs get
    /// S_NOENT. Default: the IDs of `--viot`, else segment 0's PCI requester IDs (0-0xffff).
    #[arg(long, conflicts_with = "viot")]
    pub endpoints: Option<String>,

    /// The ACPI VIOT given to the guest (what `mkviot` writes, whole table or `--body`): its
    /// PCI-range and MMIO-endpoint nodes name the endpoints that exist.
    #[arg(long, value_name = "FILE")]
    pub viot: Option<PathBuf>,

    /// Page sizes the device supports; the lowest set bit is the mapping granule.
    #[arg(long, default_value = "0xfffffffffffff000", value_parser = parse_u64)]
    pub page_size_mask: u64,

    /// Input (IOVA) range as START-END, inclusive.
    #[arg(long, default_value = "0-0xffffffffffffffff")]
    pub input_range: String,

    /// Domain ID range as START-END, inclusive.
    #[arg(long, default_value = "0-0xffffffff")]
    pub domain_range: String,

    /// Reserved region for every endpoint, `msi:START-END` or `reserved:START-END`;
    /// repeatable, and the list is exactly what is given. `none` (alone): no reserved region at
    /// all. Default: `msi:0xfee00000-0xfeefffff` (the x86 MSI window).
    #[arg(long = "reserved")]
    pub reserved: Vec<String>,

    /// Whether unattached endpoints bypass the IOMMU when the device starts.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub boot_bypass: OnOff,

    /// Host IOMMU backend.
    #[arg(long, value_enum, default_value_t = HostKind::Emulated)]
    pub host: HostKind,

    /// Maximum mappings per domain (MAP beyond it gets S_NOMEM).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_mappings: usize,

    /// Maximum mappings of all domains together (MAP beyond it gets S_NOMEM): the bound on
    /// the memory mappings take, whatever the number of domains.
    #[arg(long, default_value_t = DEFAULT_MAX_MAPPINGS_TOTAL)]
    pub max_total_mappings: usize,

    /// Maximum number of domains (ATTACH creating more gets S_NOMEM).
    #[arg(long, default_value_t = 1 << 16)]
    pub max_domains: usize,

    /// Maximum endpoints attached at the same time (ATTACH of one more gets S_NOMEM).
    #[arg(long, default_value_t = 1 << 16)]
    pub max_attached_endpoints: usize,

    /// Maximum guest tables bound with ATTACH_TABLE, all endpoints together (one more gets
    /// S_NOMEM).
    #[arg(long, default_value_t = 1 << 16)]
    pub max_tables: usize,

    /// Events (faults, page requests) waiting for an event-queue buffer; beyond it the oldest
    /// is dropped.
    #[arg(long, default_value_t = 256)]
    pub max_pending_events: usize,

    /// Size of the PROBE properties area.
    #[arg(long, default_value_t = 512)]
    pub probe_size: u32,

    /// Virtqueue size.
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,

    /// Offer VIRTIO_IOMMU_F_MMIO (MAP with the MMIO flag).
    #[arg(long)]
    pub mmio: bool,

    /// Offer the vSVA extensions (ATTACH_TABLE, INVALIDATE, page requests) with this many
    /// PASID bits per endpoint; 0 disables them.
    #[arg(long, default_value_t = 0)]
    pub pasid_bits: u8,

    /// Outstanding page-request groups per endpoint (advertised by PROBE); a fault that needs
    /// one more fails at once.
    #[arg(long, default_value_t = 32)]
    pub max_page_request_groups: u32,

    /// Outstanding page-request groups of all endpoints together; a fault that needs one more
    /// fails at once.
    #[arg(long, default_value_t = 4096)]
    pub max_page_request_groups_total: usize,

    /// How long the device waits for the guest's PAGE_RESP before it completes a page request
    /// with FAILURE itself, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub page_request_timeout_ms: u64,

    /// VFIO device of an endpoint for `--host iommufd`: `ENDPOINT=/dev/vfio/devices/vfioN`,
    /// `ENDPOINT=PCI-BDF` (bound to vfio-pci) or `ENDPOINT=fd:N` (an inherited cdev fd, when a
    /// launcher shares one open device file with the VMM). Repeatable.
    #[arg(long = "vfio", value_parser = parse_vfio)]
    pub vfio: Vec<VfioEndpoint>,

    /// Share the VMM's iommufd for `--host iommufd`: an inherited fd of the same open
    /// `/dev/iommu` file the VMM was given (QEMU `-object iommufd,id=..,fd=N`). The VMM then
    /// binds the devices; every `--vfio` must be `fd:N`, the VMM's open device file.
    #[arg(long)]
    pub iommufd_fd: Option<i32>,
}

/// Parses one `--vfio` value.
fn parse_vfio(s: &str) -> std::result::Result<VfioEndpoint, String> {
    s.parse()
        .map_err(|e: crate::host::iommufd::IommufdError| e.to_string())
}

/// Validated daemon configuration.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// vhost-user socket.
    pub socket_path: PathBuf,
    /// Control socket.
    pub control_socket: Option<PathBuf>,
    /// Control clients served at once.
    pub max_control_clients: usize,
    /// The translation service, if `--translation-socket` is given.
    pub translation: Option<TranslationConfig>,
    /// The state file (`--state-file`).
    pub state_file: Option<PathBuf>,
    /// Host backend.
    pub host: HostKind,
    /// Virtqueue size.
    pub queue_size: u16,
    /// How long the queue thread watches the request ring after serving it (`--request-poll-us`).
    pub request_poll: std::time::Duration,
    /// The device model's configuration.
    pub engine: EngineConfig,
    /// VFIO devices of endpoints (`--host iommufd`).
    pub vfio: Vec<VfioEndpoint>,
    /// The VMM's iommufd, shared (`--iommufd-fd`).
    pub iommufd_fd: Option<i32>,
}

/// Parses a decimal or 0x-prefixed hexadecimal u64.
///
/// # Errors
/// A message for clap.
pub fn parse_u64(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim().replace('_', "");
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("`{s}`: {e}"))
}

/// Parses `START-END` (inclusive) or a single value.
///
/// # Errors
/// [`Error::Config`] for syntax errors or START > END.
pub fn parse_range(s: &str) -> Result<RangeInclusive<u64>> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (parse_u64(a), parse_u64(b)),
        None => (parse_u64(s), parse_u64(s)),
    };
    let (a, b) = (a.map_err(Error::Config)?, b.map_err(Error::Config)?);
    if a > b {
        return Err(Error::Config(format!("range `{s}`: start is above end")));
    }
    Ok(a..=b)
}

fn parse_u32_range(s: &str, what: &str) -> Result<RangeInclusive<u32>> {
    let r = parse_range(s)?;
    let a = u32::try_from(*r.start());
    let b = u32::try_from(*r.end());
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(a..=b),
        _ => Err(Error::Config(format!(
            "{what} `{s}` does not fit in 32 bits"
        ))),
    }
}

/// The endpoints without `--endpoints` or `--viot`: segment 0's PCI requester IDs (endpoint ID
/// = BDF, as `mkviot` and QEMU's own VIOT number them).
pub const DEFAULT_ENDPOINTS: RangeInclusive<u32> = 0..=0xffff;

/// Largest VIOT file read (the table's offsets are 16-bit).
const MAX_VIOT_FILE: u64 = 1 << 16;

/// The endpoint IDs a VIOT file names: one range per PCI-range node and segment, one ID per
/// MMIO endpoint, sorted and merged where they overlap or touch.
///
/// # Errors
/// [`Error::Config`] naming the file: unreadable, too large, not a VIOT, IDs past 2^32 − 1,
/// or no endpoint at all.
pub fn viot_endpoints(path: &std::path::Path) -> Result<Vec<RangeInclusive<u32>>> {
    let bad = |why: String| Error::Config(format!("--viot {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_VIOT_FILE + 1),
        &mut bytes,
    )
    .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_VIOT_FILE {
        return Err(bad(format!("larger than {MAX_VIOT_FILE} bytes")));
    }
    let nodes = viot::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut ids = Vec::new();
    for node in nodes {
        match node {
            ViotNode::PciRange(r) => {
                if r.segment_end < r.segment_start {
                    return Err(bad(format!("PCI range {r:x?} ends before it starts")));
                }
                for segment in r.segment_start..=r.segment_end {
                    ids.push(r.segment_ids(segment).ok_or_else(|| {
                        bad(format!("PCI range {r:x?} has no valid endpoint IDs"))
                    })?);
                }
            }
            ViotNode::MmioEndpoint(m) => ids.push(m.endpoint..=m.endpoint),
            ViotNode::Iommu(_) | ViotNode::Unknown(_) => {}
        }
    }
    ids.sort_by_key(|r| *r.start());
    let mut merged: Vec<RangeInclusive<u32>> = Vec::with_capacity(ids.len());
    for r in ids {
        match merged.last_mut() {
            Some(m) if u64::from(*r.start()) <= u64::from(*m.end()) + 1 => {
                *m = *m.start()..=(*m.end()).max(*r.end());
            }
            _ => merged.push(r),
        }
    }
    if merged.is_empty() {
        return Err(bad("names no endpoint".into()));
    }
    Ok(merged)
}

/// Parses `msi:START-END` / `reserved:START-END`.
///
/// # Errors
/// [`Error::Config`] for an unknown kind or a bad range.
pub fn parse_reserved(s: &str) -> Result<ReservedRegion> {
    let (kind, range) = s
        .split_once(':')
        .ok_or_else(|| Error::Config(format!("reserved region `{s}`: expected KIND:START-END")))?;
    let kind = match kind {
        "msi" => ResvMemSubtype::Msi,
        "reserved" => ResvMemSubtype::Reserved,
        other => {
            return Err(Error::Config(format!(
                "reserved region kind `{other}`: use msi or reserved"
            )))
        }
    };
    let r = parse_range(range)?;
    Ok(ReservedRegion {
        start: *r.start(),
        last: *r.end(),
        kind,
    })
}

impl TryFrom<Args> for DaemonConfig {
    type Error = Error;

    fn try_from(a: Args) -> Result<Self> {
        let reserved = match a.reserved.as_slice() {
            [] => vec![ReservedRegion::x86_msi()],
            [only] if only == "none" => Vec::new(),
            list if list.iter().any(|r| r == "none") => {
                return Err(Error::Config(
                    "--reserved none means no region: it cannot be combined with regions".into(),
                ))
            }
            list => list
                .iter()
                .map(|r| parse_reserved(r))
                .collect::<Result<Vec<_>>>()?,
        };
        let ids = match (&a.viot, &a.endpoints) {
            (Some(path), _) => viot_endpoints(path)?,
            (None, Some(list)) => list
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| parse_u32_range(p.trim(), "endpoint range"))
                .collect::<Result<Vec<_>>>()?,
            (None, None) => vec![DEFAULT_ENDPOINTS],
        };
        let mut endpoints = Vec::new();
        for ids in ids {
            endpoints.push(EndpointConfig {
                ids,
                reserved: reserved.clone(),
                pasid_bits: a.pasid_bits,
                page_requests: a.pasid_bits > 0,
                table_formats: if a.pasid_bits > 0 {
                    vec![TableFormat::ArmSmmuV3, TableFormat::Vtd]
                } else {
                    Vec::new()
                },
            });
        }
        if endpoints.is_empty() {
            return Err(Error::Config("--endpoints names no endpoint".into()));
        }
        let input = parse_range(&a.input_range)?;
        let domains = parse_u32_range(&a.domain_range, "domain range")?;
        if a.queue_size == 0 || !a.queue_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "--queue-size {} must be a power of two",
                a.queue_size
            )));
        }
        if !a.vfio.is_empty() && a.host != HostKind::Iommufd {
            return Err(Error::Config("--vfio needs --host iommufd".into()));
        }
        if let Some(fd) = a.iommufd_fd {
            if a.host != HostKind::Iommufd {
                return Err(Error::Config("--iommufd-fd needs --host iommufd".into()));
            }
            if fd < 0 {
                return Err(Error::Config(format!("--iommufd-fd {fd} is not an fd")));
            }
            if let Some(v) = a
                .vfio
                .iter()
                .find(|v| !matches!(v.source, VfioSource::Fd(_)))
            {
                return Err(Error::Config(format!(
                    "--vfio for endpoint {}: with --iommufd-fd the VMM binds the device, so name its open device file as fd:N",
                    v.endpoint
                )));
            }
        }
        if a.max_control_clients == 0 {
            return Err(Error::Config(
                "--max-control-clients must be positive".into(),
            ));
        }
        if a.page_request_timeout_ms == 0 {
            return Err(Error::Config(
                "--page-request-timeout-ms must be positive".into(),
            ));
        }
        if a.translation_socket.is_some() {
            if a.max_translation_clients == 0 {
                return Err(Error::Config(
                    "--max-translation-clients must be positive".into(),
                ));
            }
            if a.translation_ack_timeout_ms == 0 {
                return Err(Error::Config(
                    "--translation-ack-timeout-ms must be positive".into(),
                ));
            }
            if a.translation_poll_us > crate::translation::MAX_POLL_US {
                return Err(Error::Config(format!(
                    "--translation-poll-us is at most {}",
                    crate::translation::MAX_POLL_US
                )));
            }
        }
        let translation = a.translation_socket.map(|path| TranslationConfig {
            path,
            max_clients: a.max_translation_clients,
            ack_timeout: std::time::Duration::from_millis(a.translation_ack_timeout_ms),
            busy_poll: std::time::Duration::from_micros(a.translation_poll_us),
        });
        if a.request_poll_us > crate::translation::MAX_POLL_US {
            return Err(Error::Config(format!(
                "--request-poll-us is at most {}",
                crate::translation::MAX_POLL_US
            )));
        }
        if a.pasid_bits > 20 {
            return Err(Error::Config("--pasid-bits is at most 20".into()));
        }
        for (name, value) in [
            ("--max-mappings", a.max_mappings),
            ("--max-total-mappings", a.max_total_mappings),
            ("--max-domains", a.max_domains),
            ("--max-attached-endpoints", a.max_attached_endpoints),
            ("--max-tables", a.max_tables),
            ("--max-pending-events", a.max_pending_events),
            (
                "--max-page-request-groups-total",
                a.max_page_request_groups_total,
            ),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        if a.max_page_request_groups == 0 || a.max_page_request_groups > u32::from(u16::MAX) {
            return Err(Error::Config(
                "--max-page-request-groups must be 1 to 65535 (PROBE's max_groups)".into(),
            ));
        }
        let engine = EngineConfig {
            page_size_mask: a.page_size_mask,
            input_range: (*input.start(), *input.end()),
            domain_range: (*domains.start(), *domains.end()),
            probe_size: a.probe_size,
            boot_bypass: a.boot_bypass == OnOff::On,
            endpoints,
            limits: Limits {
                max_mappings_per_domain: a.max_mappings,
                max_mappings_total: a.max_total_mappings,
                max_tables: a.max_tables,
                max_domains: a.max_domains,
                max_attached_endpoints: a.max_attached_endpoints,
                max_pending_events: a.max_pending_events,
                max_page_request_groups: a.max_page_request_groups,
                max_page_request_groups_total: a.max_page_request_groups_total,
                page_request_timeout: std::time::Duration::from_millis(a.page_request_timeout_ms),
            },
            offer_mmio: a.mmio,
            offer_attach_table: a.pasid_bits > 0,
            offer_page_request: a.pasid_bits > 0,
        };
        Ok(DaemonConfig {
            socket_path: a.socket_path,
            control_socket: a.control_socket,
            max_control_clients: a.max_control_clients,
            translation,
            state_file: a.state_file,
            host: a.host,
            queue_size: a.queue_size,
            request_poll: std::time::Duration::from_micros(a.request_poll_us),
            engine,
            vfio: a.vfio,
            iommufd_fd: a.iommufd_fd,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["vhost-device-iommu", "--socket-path", "/tmp/x.sock"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults() {
        let c = DaemonConfig::try_from(args(&[])).unwrap();
        assert_eq!(c.engine.page_size_mask, 0xffff_ffff_ffff_f000);
        assert_eq!(c.engine.input_range, (0, u64::MAX));
        assert_eq!(c.engine.domain_range, (0, u32::MAX));
        assert!(c.engine.boot_bypass);
        assert_eq!(c.engine.endpoints.len(), 1);
        assert_eq!(c.engine.endpoints[0].ids, 0..=0xffff);
        assert_eq!(
            c.engine.endpoints[0].reserved,
            vec![ReservedRegion::x86_msi()]
        );
        assert_eq!(c.engine.limits, Limits::default());
        assert_eq!(c.queue_size, 256);
        assert_eq!(c.host, HostKind::Emulated);
        assert!(!c.engine.offer_attach_table);
        assert_eq!(c.translation, None);
    }

    #[test]
    fn translation_socket_flags() {
        let c = DaemonConfig::try_from(args(&["--translation-socket", "/tmp/t.sock"])).unwrap();
        assert_eq!(
            c.translation,
            Some(TranslationConfig {
                path: "/tmp/t.sock".into(),
                max_clients: 16,
                ack_timeout: std::time::Duration::from_millis(1000),
                busy_poll: std::time::Duration::from_micros(50),
            })
        );
        let c = DaemonConfig::try_from(args(&[
            "--translation-socket",
            "/tmp/t.sock",
            "--max-translation-clients",
            "2",
            "--translation-ack-timeout-ms",
            "50",
            "--translation-poll-us",
            "0",
        ]))
        .unwrap()
        .translation
        .unwrap();
        assert_eq!(
            (c.max_clients, c.ack_timeout.as_millis(), c.busy_poll),
            (2, 50, std::time::Duration::ZERO)
        );
        let c = DaemonConfig::try_from(args(&[
            "--translation-socket",
            "/tmp/t.sock",
            "--translation-poll-us",
            "1000",
        ]))
        .unwrap()
        .translation
        .unwrap();
        assert_eq!(c.busy_poll, std::time::Duration::from_millis(1));
        for bad in [
            ["--max-translation-clients", "0"],
            ["--translation-ack-timeout-ms", "0"],
            ["--translation-poll-us", "1001"],
        ] {
            let mut v = vec!["--translation-socket", "/tmp/t.sock"];
            v.extend_from_slice(&bad);
            let e = DaemonConfig::try_from(args(&v)).unwrap_err().to_string();
            assert!(e.contains(bad[0]), "{e}");
        }
    }

    #[test]
    fn request_polling() {
        let c = DaemonConfig::try_from(args(&[])).unwrap();
        assert_eq!(c.request_poll, std::time::Duration::from_micros(50));
        let c = DaemonConfig::try_from(args(&["--request-poll-us", "0"])).unwrap();
        assert_eq!(c.request_poll, std::time::Duration::ZERO);
        let c = DaemonConfig::try_from(args(&["--request-poll-us", "1000"])).unwrap();
        assert_eq!(c.request_poll, std::time::Duration::from_millis(1));
        let e = DaemonConfig::try_from(args(&["--request-poll-us", "1001"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--request-poll-us is at most 1000"), "{e}");
    }

    #[test]
    fn explicit_values() {
        let c = DaemonConfig::try_from(args(&[
            "--endpoints",
            "0x8-0xf, 0x20",
            "--reserved",
            "reserved:0x1000-0x1fff",
            "--reserved",
            "msi:0x8000000-0x80fffff",
            "--boot-bypass",
            "off",
            "--input-range",
            "0x1000-0xffffffffff",
            "--domain-range",
            "1-100",
            "--max-mappings",
            "10",
            "--max-total-mappings",
            "100",
            "--max-domains",
            "7",
            "--max-attached-endpoints",
            "8",
            "--max-tables",
            "9",
            "--max-pending-events",
            "11",
            "--max-page-request-groups-total",
            "12",
            "--pasid-bits",
            "16",
        ]))
        .unwrap();
        let ids: Vec<_> = c.engine.endpoints.iter().map(|e| e.ids.clone()).collect();
        assert_eq!(ids, vec![8..=15, 0x20..=0x20]);
        assert_eq!(
            c.engine.endpoints[0].reserved,
            vec![
                ReservedRegion {
                    start: 0x1000,
                    last: 0x1fff,
                    kind: ResvMemSubtype::Reserved
                },
                ReservedRegion {
                    start: 0x800_0000,
                    last: 0x80f_ffff,
                    kind: ResvMemSubtype::Msi
                },
            ]
        );
        assert!(!c.engine.boot_bypass);
        assert_eq!(c.engine.input_range, (0x1000, 0xff_ffff_ffff));
        assert_eq!(c.engine.domain_range, (1, 100));
        let l = &c.engine.limits;
        assert_eq!(
            (
                l.max_mappings_per_domain,
                l.max_mappings_total,
                l.max_domains
            ),
            (10, 100, 7)
        );
        assert_eq!(
            (l.max_attached_endpoints, l.max_tables, l.max_pending_events),
            (8, 9, 11)
        );
        assert_eq!(l.max_page_request_groups_total, 12);
        assert!(c.engine.offer_attach_table && c.engine.offer_page_request);
        assert_eq!(c.engine.endpoints[1].pasid_bits, 16);
        assert_eq!(
            c.engine.limits.page_request_timeout,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(c.engine.limits.max_page_request_groups, 32);
        let none = DaemonConfig::try_from(args(&["--reserved", "none"])).unwrap();
        assert_eq!(none.engine.endpoints[0].reserved, Vec::new());
        let c = DaemonConfig::try_from(args(&[
            "--host",
            "iommufd",
            "--vfio",
            "24=/dev/vfio/devices/vfio0",
            "--page-request-timeout-ms",
            "250",
        ]))
        .unwrap();
        assert_eq!(c.vfio.len(), 1);
        assert_eq!(c.vfio[0].endpoint, 24);
        assert_eq!(c.iommufd_fd, None);
        let shared = DaemonConfig::try_from(args(&[
            "--host",
            "iommufd",
            "--iommufd-fd",
            "3",
            "--vfio",
            "24=fd:4",
        ]))
        .unwrap();
        assert_eq!(shared.iommufd_fd, Some(3));
        assert_eq!(shared.vfio[0].source, VfioSource::Fd(4));
        assert_eq!(
            c.engine.limits.page_request_timeout,
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--endpoints", "5-1"][..],
            &["--endpoints", "0x1_0000_0000"],
            &["--endpoints", ","],
            &["--reserved", "dma:1-2"],
            &["--reserved", "msi:2-1"],
            &["--reserved", "msi"],
            &["--reserved", "none", "--reserved", "msi:1-2"],
            &["--reserved", "msi:1-2", "--reserved", "none"],
            &["--domain-range", "0-0x100000000"],
            &["--queue-size", "100"],
            &["--pasid-bits", "21"],
            &["--vfio", "0x18=/dev/vfio/devices/vfio0"],
            &["--iommufd-fd", "3"],
            &["--host", "iommufd", "--iommufd-fd=-1"],
            &[
                "--host",
                "iommufd",
                "--iommufd-fd",
                "3",
                "--vfio",
                "8=/dev/vfio/devices/vfio0",
            ],
            &[
                "--host",
                "iommufd",
                "--iommufd-fd",
                "3",
                "--vfio",
                "8=00:03.0",
            ],
            &["--page-request-timeout-ms", "0"],
            &["--max-control-clients", "0"],
            &["--max-total-mappings", "0"],
            &["--max-mappings", "0"],
            &["--max-domains", "0"],
            &["--max-attached-endpoints", "0"],
            &["--max-tables", "0"],
            &["--max-pending-events", "0"],
            &["--max-page-request-groups-total", "0"],
            &["--max-page-request-groups", "0"],
            &["--max-page-request-groups", "65536"],
        ] {
            assert!(DaemonConfig::try_from(args(bad)).is_err(), "{bad:?}");
        }
        assert!(
            Args::try_parse_from(["x", "--socket-path", "s", "--page-size-mask", "zz"]).is_err()
        );
        assert!(
            Args::try_parse_from(["x"]).is_err(),
            "socket path is required"
        );
        assert_eq!(parse_u64("0x1_000"), Ok(0x1000));
        assert_eq!(parse_u64("4096"), Ok(4096));
    }

    fn viot_file(
        ranges: &[viot::PciRange],
        mmio: &[viot::MmioEndpoint],
        body: bool,
    ) -> tempfile::NamedTempFile {
        let v = viot::Viot {
            iommu: viot::IommuLocation::Pci {
                segment: 0,
                bdf: viot::bdf(0, 3, 0),
            },
            pci_ranges: ranges,
            mmio_endpoints: mmio,
        };
        let mut buf = vec![0u8; v.table_len()];
        let n = if body {
            v.write_body(&mut buf).unwrap()
        } else {
            v.write_table(&mut buf, *b"VIOMMU", *b"VIOMMUTB").unwrap()
        };
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &buf[..n]).unwrap();
        f
    }

    fn range(endpoint_start: u32, segments: (u16, u16), bdfs: (u16, u16)) -> viot::PciRange {
        viot::PciRange {
            endpoint_start,
            segment_start: segments.0,
            segment_end: segments.1,
            bdf_start: bdfs.0,
            bdf_end: bdfs.1,
        }
    }

    fn ids_of(c: &DaemonConfig) -> Vec<RangeInclusive<u32>> {
        c.engine.endpoints.iter().map(|e| e.ids.clone()).collect()
    }

    #[test]
    fn endpoints_from_a_viot() {
        // What run-vm.sh writes: bus 0, endpoint ID = BDF, as a body.
        let f = viot_file(&[range(0, (0, 0), (0, 0xff))], &[], true);
        let c = DaemonConfig::try_from(args(&["--viot", f.path().to_str().unwrap()])).unwrap();
        assert_eq!(ids_of(&c), vec![0..=0xff]);
        // A whole table; overlapping and touching ranges merge; segments give 2^16 apart;
        // MMIO endpoints count.
        let f = viot_file(
            &[
                range(0x100, (0, 0), (0x10, 0x1f)),
                range(0x105, (0, 0), (0, 0x20)),
                range(0x126, (0, 0), (0, 0)),
                range(0x8000, (1, 2), (0, 7)),
            ],
            &[viot::MmioEndpoint {
                endpoint: 0x4000,
                base: 0x1000_0000,
            }],
            false,
        );
        let c = DaemonConfig::try_from(args(&["--viot", f.path().to_str().unwrap()])).unwrap();
        assert_eq!(
            ids_of(&c),
            vec![
                0x100..=0x126,
                0x4000..=0x4000,
                0x8000..=0x8007,
                0x1_8000..=0x1_8007
            ]
        );
    }

    #[test]
    fn bad_viots_are_refused_with_the_file_named() {
        let err = |a: &[&str]| DaemonConfig::try_from(args(a)).unwrap_err().to_string();
        let none = viot_file(&[], &[], true);
        let p = none.path().to_str().unwrap();
        assert!(
            err(&["--viot", p]).contains("names no endpoint"),
            "{}",
            err(&["--viot", p])
        );
        let garbage = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(garbage.path(), [1u8, 0, 0x30]).unwrap();
        let e = err(&["--viot", garbage.path().to_str().unwrap()]);
        assert!(e.contains("--viot") && e.contains("truncated"), "{e}");
        let e = err(&["--viot", "/nonexistent/viot.bin"]);
        assert!(e.contains("/nonexistent/viot.bin"), "{e}");
        let wide = viot_file(&[range(u32::MAX, (0, 0), (0, 1))], &[], true);
        let e = err(&["--viot", wide.path().to_str().unwrap()]);
        assert!(e.contains("no valid endpoint IDs"), "{e}");
        let huge = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(huge.path(), vec![0u8; (1 << 16) + 1]).unwrap();
        let e = err(&["--viot", huge.path().to_str().unwrap()]);
        assert!(e.contains("larger than"), "{e}");
        // --viot and --endpoints together are a usage error.
        assert!(Args::try_parse_from([
            "x",
            "--socket-path",
            "/tmp/x.sock",
            "--viot",
            p,
            "--endpoints",
            "0-1"
        ])
        .is_err());
    }
}
