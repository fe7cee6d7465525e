//! Domains and attached endpoints, and the semantics of ATTACH, DETACH, MAP and UNMAP.
//!
//! Every handler validates first, then asks the host, then commits: a refused request or a
//! host error leaves the engine and the host exactly as they were. Where the specification
//! leaves the status open, the choice is written next to the check.

use std::collections::{BTreeMap, BTreeSet};

use log::warn;
use virtio_iommu_spec::config::granule;
use virtio_iommu_spec::ext::{range_last, InvalScope, S1FMT_64KL2};
use virtio_iommu_spec::request::{
    Attach, AttachFlags, AttachTable, Detach, Invalidate, Map, MapFlags, TableDesc, Unmap,
};
use virtio_iommu_spec::translation::Pasids;
use virtio_iommu_spec::{Features, Status};

use super::dump::{DomainDump, MappingDump};
use super::engine_config::{EndpointConfig, EndpointTable, EngineConfig};
use super::invalidation::{InvalEndpoints, Invalidation, Invalidations};
use super::tables::Tables;
use crate::host::{
    AttachTarget, HostError, HostIommu, Mapping, MappingStore, Perm, SpaceId, WouldSplit,
};

/// What a request handler may use besides the domain state.
pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a EngineConfig,
    pub(super) endpoints: &'a EndpointTable,
    pub(super) negotiated: Features,
    pub(super) host: &'a mut dyn HostIommu,
    /// Where changes a translation-service client may have cached are recorded.
    pub(super) inval: &'a mut Invalidations,
}

/// Where an endpoint's requests without PASID go, as the engine's state says.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route<'a> {
    /// Not attached: the config's `bypass` decides.
    Unattached,
    /// Attached to a bypass domain: identity.
    Bypass,
    /// Attached to a domain with mappings.
    Mapped(&'a MappingStore),
    /// Through a guest table bound with ATTACH_TABLE (an SMMUv3 CD table): only the host's
    /// walk knows.
    Table,
}

/// One domain.
#[derive(Debug)]
struct Domain {
    /// Created with ATTACH_F_BYPASS: identity, no mappings.
    bypass: bool,
    /// The host address space (`None` for bypass domains).
    space: Option<SpaceId>,
    endpoints: BTreeSet<u32>,
    /// Attached endpoints per endpoint-config index: MAP must avoid the reserved regions of
    /// every config present, and there are far fewer configs than endpoints.
    configs: BTreeMap<usize, u32>,
    /// The mappings, when the host keeps none in the shared form (iommufd); empty otherwise.
    own: MappingStore,
}

impl Domain {
    /// The domain's mappings: the host's when it keeps them, else its own.
    fn mappings<'a>(&'a self, host: &'a dyn HostIommu) -> &'a MappingStore {
        self.space
            .and_then(|s| host.mappings(s))
            .unwrap_or(&self.own)
    }

    fn add(&mut self, endpoint: u32, cfg: usize) {
        self.endpoints.insert(endpoint);
        *self.configs.entry(cfg).or_insert(0) += 1;
    }

    fn remove(&mut self, endpoint: u32, cfg: usize) {
        self.endpoints.remove(&endpoint);
        if let Some(n) = self.configs.get_mut(&cfg) {
            *n -= 1;
            if *n == 0 {
                self.configs.remove(&cfg);
            }
        }
    }
}

/// The status a host error turns into. A host that runs out of room is the guest's S_NOMEM;
/// one that cannot do the thing at all (e.g. MMIO mappings on iommufd) is S_UNSUPP; anything
/// else is an internal device error.
pub(super) fn host_status(op: &str, e: HostError) -> Status {
    // Rate-limited: a guest can repeat a request the host refuses.
    crate::limited!(Warn, "host {op} failed: {e}");
    match e {
        HostError::NoMem => Status::NoMem,
        HostError::Unsupported => Status::Unsupp,
        HostError::Invalid | HostError::Failed => Status::DevErr,
    }
}

fn perm(flags: MapFlags) -> Perm {
    let mut p = Perm::empty();
    p.set(Perm::READ, flags.contains(MapFlags::READ));
    p.set(Perm::WRITE, flags.contains(MapFlags::WRITE));
    p.set(Perm::MMIO, flags.contains(MapFlags::MMIO));
    p
}

/// All domains and attachments.
#[derive(Debug, Default)]
pub(super) struct Domains {
    domains: BTreeMap<u32, Domain>,
    /// Endpoint → domain.
    attached: BTreeMap<u32, u32>,
    /// Guest tables bound with ATTACH_TABLE.
    tables: Tables,
    /// Mappings of all domains together (checked against `max_mappings_total` on every MAP).
    mappings_total: usize,
}

impl Domains {
    /// Live domains.
    pub(super) fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// Live mappings, all domains together.
    pub(super) fn mapping_count(&self) -> usize {
        self.mappings_total
    }

    /// Attached endpoints.
    pub(super) fn attached_count(&self) -> usize {
        self.attached.len()
    }

    /// Bound guest tables.
    pub(super) fn table_count(&self) -> usize {
        self.tables.count()
    }

    /// The domain `endpoint` is attached to.
    pub(super) fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.attached.get(&endpoint).copied()
    }

    /// ATTACH: create the domain on first use, move the endpoint out of its old domain.
    pub(super) fn attach(&mut self, ctx: &mut Ctx<'_>, a: &Attach) -> Status {
        let Some((cfg_idx, ep)) = ctx.endpoints.find(a.endpoint) else {
            return Status::NoEnt;
        };
        if !in_range(a.domain, ctx.cfg.domain_range) {
            return Status::Range;
        }
        let bypass = a.flags.contains(AttachFlags::BYPASS);
        if bypass && !ctx.negotiated.contains(Features::BYPASS_CONFIG) {
            return Status::Inval;
        }
        let old = self.attached.get(&a.endpoint).copied();
        let limits = &ctx.cfg.limits;
        match self.domains.get(&a.domain) {
            Some(d) => {
                if d.bypass != bypass {
                    return Status::Inval;
                }
                if old == Some(a.domain) {
                    return Status::Ok;
                }
                // Mappings already sitting on this endpoint's reserved regions: the endpoint's
                // properties are incompatible with the domain (spec: SHOULD S_UNSUPP).
                if ep
                    .reserved
                    .iter()
                    .any(|r| d.mappings(&*ctx.host).overlaps(r.start, r.last))
                {
                    return Status::Unsupp;
                }
            }
            None => {
                // A move out of a domain that then vanishes frees the slot it needs.
                let frees = old
                    .is_some_and(|o| self.domains.get(&o).is_some_and(|d| d.endpoints.len() == 1));
                if self.domains.len().saturating_sub(usize::from(frees)) >= limits.max_domains {
                    return Status::NoMem;
                }
            }
        }
        if old.is_none() && self.attached.len() >= limits.max_attached_endpoints {
            return Status::NoMem;
        }

        let (target, new_space) = match self.domains.get(&a.domain) {
            Some(d) => (
                d.space.map_or(AttachTarget::Bypass, AttachTarget::Space),
                None,
            ),
            None if bypass => (AttachTarget::Bypass, None),
            None => match ctx.host.alloc_space() {
                Ok(s) => (AttachTarget::Space(s), Some(s)),
                Err(e) => return host_status("alloc_space", e),
            },
        };
        if let Err(e) = ctx.host.attach(a.endpoint, None, target) {
            if let Some(s) = new_space {
                if let Err(e) = ctx.host.destroy_space(s) {
                    warn!("host destroy_space({s:?}) failed during rollback: {e}");
                }
            }
            return host_status("attach", e);
        }

        if let Some(o) = old {
            self.tables.drop_endpoint(ctx.host, a.endpoint);
            self.leave(ctx.host, a.endpoint, o, cfg_idx);
        }
        self.domains
            .entry(a.domain)
            .or_insert_with(|| Domain {
                bypass,
                space: new_space,
                endpoints: BTreeSet::new(),
                configs: BTreeMap::new(),
                own: MappingStore::default(),
            })
            .add(a.endpoint, cfg_idx);
        self.attached.insert(a.endpoint, a.domain);
        // From unattached (identity or blocked) or from another domain: either way what the
        // endpoint translates to changed.
        ctx.inval.record(Invalidation::endpoint(a.endpoint));
        Status::Ok
    }

    /// Takes `endpoint` out of `domain`; the domain and its mappings go with its last endpoint.
    fn leave(&mut self, host: &mut dyn HostIommu, endpoint: u32, domain: u32, cfg: usize) {
        let Some(d) = self.domains.get_mut(&domain) else {
            return;
        };
        d.remove(endpoint, cfg);
        if !d.endpoints.is_empty() {
            return;
        }
        if let Some(d) = self.domains.remove(&domain) {
            self.mappings_total -= d.mappings(host).len();
            if let Some(s) = d.space {
                // The guest's view is already right; a leaked host space is only logged.
                if let Err(e) = host.destroy_space(s) {
                    warn!("host destroy_space({s:?}) of domain {domain} failed: {e}");
                }
            }
        }
    }

    /// DETACH.
    pub(super) fn detach(&mut self, ctx: &mut Ctx<'_>, d: &Detach) -> Status {
        let Some((cfg_idx, _)) = ctx.endpoints.find(d.endpoint) else {
            return Status::NoEnt;
        };
        if !in_range(d.domain, ctx.cfg.domain_range) {
            return Status::Range;
        }
        // Unknown domain, or the endpoint is elsewhere (spec: MAY S_INVAL).
        if self.attached.get(&d.endpoint) != Some(&d.domain) {
            return Status::Inval;
        }
        if let Err(e) = ctx.host.detach(d.endpoint, None) {
            return host_status("detach", e);
        }
        self.attached.remove(&d.endpoint);
        self.tables.drop_endpoint(ctx.host, d.endpoint);
        self.leave(ctx.host, d.endpoint, d.domain, cfg_idx);
        ctx.inval.record(Invalidation::endpoint(d.endpoint));
        Status::Ok
    }

    /// MAP.
    pub(super) fn map(&mut self, ctx: &mut Ctx<'_>, m: &Map) -> Status {
        if !in_range(m.domain, ctx.cfg.domain_range) {
            return Status::Range;
        }
        let Some(d) = self.domains.get_mut(&m.domain) else {
            return Status::NoEnt;
        };
        if m.flags.contains(MapFlags::MMIO) && !ctx.negotiated.contains(Features::MMIO) {
            return Status::Inval;
        }
        if d.bypass {
            return Status::Inval;
        }
        // The driver MUST send virt_end > virt_start; an inverted range is invalid, not
        // out of range.
        if m.virt_end < m.virt_start {
            return Status::Inval;
        }
        if m.virt_start < ctx.cfg.input_range.0 || m.virt_end > ctx.cfg.input_range.1 {
            return Status::Range;
        }
        // The mask is non-zero (validated), so the granule is a power of two ≤ 2^63.
        // `virt_end + 1` wraps to 0 for virt_end = u64::MAX: 2^64 is aligned to any granule.
        let Some(g) = granule(ctx.cfg.page_size_mask) else {
            return Status::DevErr;
        };
        let misaligned = |x: u64| x & (g - 1) != 0;
        if misaligned(m.virt_start)
            || misaligned(m.phys_start)
            || misaligned(m.virt_end.wrapping_add(1))
        {
            return Status::Range;
        }
        // An output range running past 2^64 is an out-of-range parameter: S_RANGE.
        if m.phys_start
            .checked_add(m.virt_end - m.virt_start)
            .is_none()
        {
            return Status::Range;
        }
        let on_reserved = d
            .configs
            .keys()
            .filter_map(|i| ctx.endpoints.get(*i))
            .flat_map(|e| e.reserved.iter())
            .any(|r| r.overlaps(m.virt_start, m.virt_end));
        let store = d.mappings(&*ctx.host);
        if on_reserved || store.overlaps(m.virt_start, m.virt_end) {
            return Status::Inval;
        }
        let limits = &ctx.cfg.limits;
        if store.len() >= limits.max_mappings_per_domain
            || self.mappings_total >= limits.max_mappings_total
        {
            return Status::NoMem;
        }
        let Some(space) = d.space else {
            warn!("mapped domain {} has no host space", m.domain);
            return Status::DevErr;
        };
        if let Err(e) = ctx
            .host
            .map(space, m.virt_start, m.virt_end, m.phys_start, perm(m.flags))
        {
            return host_status("map", e);
        }
        if ctx.host.mappings(space).is_none() {
            d.own.insert(Mapping {
                virt_start: m.virt_start,
                virt_last: m.virt_end,
                phys_start: m.phys_start,
                flags: m.flags,
            });
        }
        self.mappings_total += 1;
        Status::Ok
    }

    /// UNMAP.
    pub(super) fn unmap(&mut self, ctx: &mut Ctx<'_>, u: &Unmap) -> Status {
        if !in_range(u.domain, ctx.cfg.domain_range) {
            return Status::Range;
        }
        let Some(d) = self.domains.get_mut(&u.domain) else {
            return Status::NoEnt;
        };
        if d.bypass {
            return Status::Inval;
        }
        if u.virt_end < u.virt_start {
            return Status::Inval;
        }
        if u.virt_start < ctx.cfg.input_range.0 || u.virt_end > ctx.cfg.input_range.1 {
            return Status::Range;
        }
        let store = d.mappings(&*ctx.host);
        let before = store.len();
        match store.check_unmap(u.virt_start, u.virt_end) {
            Err(WouldSplit) => Status::Range,
            Ok(false) => Status::Ok,
            Ok(true) => {
                let Some(space) = d.space else {
                    return Status::DevErr;
                };
                if let Err(e) = ctx.host.unmap(space, u.virt_start, u.virt_end) {
                    return host_status("unmap", e);
                }
                let removed = match ctx.host.mappings(space) {
                    Some(host) => before - host.len(),
                    None => d.own.remove_range(u.virt_start, u.virt_end).count,
                };
                self.mappings_total -= removed;
                if ctx.inval.enabled() {
                    record_unmap(ctx.inval, &self.tables, &d.endpoints, u);
                }
                Status::Ok
            }
        }
    }

    /// ATTACH_TABLE. Checks in this order: unknown endpoint → S_NOENT; format not advertised
    /// by the endpoint's PROBE, or Arm `S1FMT_64KL2` → S_UNSUPP; endpoint not attached to
    /// `domain`, or `domain` is a bypass domain → S_INVAL; VT-d `addr_width` not 48/57, `pgd`
    /// not 4 KiB aligned, `pasid` ≥ 2^pasid_bits, Arm `s1contextptr` not 4 KiB aligned or
    /// `s1cdmax` > pasid_bits → S_INVAL; `max_tables` bound and this bind replaces none →
    /// S_NOMEM. Then the host binds the table (errors as for MAP).
    pub(super) fn attach_table(&mut self, ctx: &mut Ctx<'_>, a: &AttachTable) -> Status {
        let Some((_, ep)) = ctx.endpoints.find(a.endpoint) else {
            return Status::NoEnt;
        };
        if !table_supported(ep, &a.table) {
            return Status::Unsupp;
        }
        if self.attached.get(&a.endpoint) != Some(&a.domain) {
            return Status::Inval;
        }
        let Some(d) = self.domains.get(&a.domain) else {
            return Status::Inval;
        };
        if d.bypass || !table_valid(ep, &a.table) {
            return Status::Inval;
        }
        if self.tables.count() >= ctx.cfg.limits.max_tables
            && !self.tables.replaces(a.endpoint, &a.table)
        {
            return Status::NoMem;
        }
        let Some(space) = d.space else {
            warn!("translated domain {} has no host space", a.domain);
            return Status::DevErr;
        };
        match self
            .tables
            .bind(ctx.host, a.endpoint, Some(space), &a.table)
        {
            Ok(()) => {
                let pasids = match a.table {
                    TableDesc::Vtd { pasid, .. } => Pasids::One(pasid),
                    // A CD table also serves the requests without PASID.
                    TableDesc::ArmSmmuV3 { .. } => Pasids::All,
                };
                ctx.inval.record(Invalidation {
                    pasids,
                    ..Invalidation::endpoint(a.endpoint)
                });
                Status::Ok
            }
            Err(e) => host_status("alloc_table/attach", e),
        }
    }

    /// INVALIDATE: a range of no pages → S_INVAL, one past 2^64 − 1 → S_RANGE, unknown domain
    /// → S_NOENT; otherwise every table bound to an endpoint of the domain is invalidated
    /// (a domain without tables: S_OK, nothing to do).
    pub(super) fn invalidate(&mut self, ctx: &mut Ctx<'_>, inv: &Invalidate) -> Status {
        if let InvalScope::Range {
            start,
            nr_pages,
            granule,
            ..
        } = inv.scope
        {
            if nr_pages == 0 {
                return Status::Inval;
            }
            if range_last(start, nr_pages, granule).is_none() {
                return Status::Range;
            }
        }
        let Some(d) = self.domains.get(&inv.domain) else {
            return Status::NoEnt;
        };
        for ep in &d.endpoints {
            for id in self.tables.of(*ep) {
                if let Err(e) = ctx.host.invalidate(id, inv) {
                    return host_status("invalidate", e);
                }
            }
        }
        if ctx.inval.enabled() {
            // Only translations through guest tables depend on what INVALIDATE covers: the
            // domain's own mappings change by MAP and UNMAP, which invalidate themselves.
            let with_tables: Vec<u32> = d
                .endpoints
                .iter()
                .copied()
                .filter(|ep| !self.tables.of(*ep).is_empty())
                .collect();
            let (pasids, first, last) = match inv.scope {
                InvalScope::Domain => (Pasids::All, 0, u64::MAX),
                InvalScope::Pasid(p) => (Pasids::One(p), 0, u64::MAX),
                InvalScope::Range {
                    pasid,
                    start,
                    nr_pages,
                    granule,
                } => (
                    pasid.map_or(Pasids::All, Pasids::One),
                    start,
                    // Checked above.
                    range_last(start, nr_pages, granule).unwrap_or(u64::MAX),
                ),
            };
            ctx.inval.record(Invalidation {
                endpoints: InvalEndpoints::Some(with_tables),
                pasids,
                first,
                last,
            });
        }
        Status::Ok
    }

    /// Where `endpoint`'s requests without PASID go.
    pub(super) fn route<'a>(&'a self, endpoint: u32, host: &'a dyn HostIommu) -> Route<'a> {
        let Some(d) = self
            .attached
            .get(&endpoint)
            .and_then(|id| self.domains.get(id))
        else {
            return Route::Unattached;
        };
        if d.bypass {
            Route::Bypass
        } else if self.tables.has_cd_table(endpoint) {
            Route::Table
        } else {
            Route::Mapped(d.mappings(host))
        }
    }

    /// Tears everything down (device reset): host attachments first, then spaces.
    pub(super) fn clear(&mut self, host: &mut dyn HostIommu) {
        for ep in self.attached.keys() {
            if let Err(e) = host.detach(*ep, None) {
                warn!("host detach({ep}) failed during reset: {e}");
            }
        }
        self.tables.clear(host);
        for (id, d) in &self.domains {
            if let Some(s) = d.space {
                if let Err(e) = host.destroy_space(s) {
                    warn!("host destroy_space({s:?}) of domain {id} failed during reset: {e}");
                }
            }
        }
        *self = Domains::default();
    }

    /// Every bound table as the ATTACH_TABLE that bound it (a saved state binds it again).
    pub(super) fn tables(&self) -> Vec<AttachTable> {
        self.tables
            .descs()
            .filter_map(|(endpoint, table)| {
                Some(AttachTable {
                    domain: self.domain_of(endpoint)?,
                    endpoint,
                    table,
                })
            })
            .collect()
    }

    /// Domains → endpoints → mappings.
    pub(super) fn dump(&self, host: &dyn HostIommu) -> Vec<DomainDump> {
        self.domains
            .iter()
            .map(|(id, d)| DomainDump {
                id: *id,
                bypass: d.bypass,
                endpoints: d.endpoints.iter().copied().collect(),
                mappings: d
                    .mappings(host)
                    .iter()
                    .map(|m| MappingDump {
                        virt_start: m.virt_start,
                        virt_last: m.virt_last,
                        phys_start: m.phys_start,
                        flags: m.flags.bits(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Whether the endpoint accepts the table's format: advertised by its PROBE, and for Arm not
/// `S1FMT_64KL2` (ATTACH_TABLE answers S_UNSUPP otherwise).
pub(super) fn table_supported(ep: &EndpointConfig, table: &TableDesc) -> bool {
    ep.table_formats.contains(&table.format())
        && !matches!(table, TableDesc::ArmSmmuV3 { s1fmt, .. } if *s1fmt == S1FMT_64KL2)
}

/// Whether the descriptor's fields are valid for the endpoint: VT-d `addr_width` 48 or 57,
/// `pgd` 4 KiB aligned, `pasid` below 2^pasid_bits; Arm `s1contextptr` 4 KiB aligned,
/// `s1cdmax` ≤ pasid_bits (ATTACH_TABLE answers S_INVAL otherwise).
pub(super) fn table_valid(ep: &EndpointConfig, table: &TableDesc) -> bool {
    let pasid_bits = u32::from(ep.pasid_bits);
    match *table {
        TableDesc::Vtd {
            pasid,
            addr_width,
            pgd,
            ..
        } => {
            matches!(addr_width, 48 | 57)
                && pgd & 0xfff == 0
                && pasid.checked_shr(pasid_bits).unwrap_or(0) == 0
        }
        TableDesc::ArmSmmuV3 {
            s1contextptr,
            s1cdmax,
            ..
        } => s1contextptr & 0xfff == 0 && s1cdmax <= pasid_bits,
    }
}

/// An UNMAP's records: the range without PASID for the domain's endpoints, everything for an
/// endpoint with guest tables (its PASID spaces' output went through the unmapped range).
fn record_unmap(inval: &mut Invalidations, tables: &Tables, endpoints: &BTreeSet<u32>, u: &Unmap) {
    let (nested, plain): (Vec<u32>, Vec<u32>) =
        endpoints.iter().partition(|ep| !tables.of(**ep).is_empty());
    inval.record(Invalidation {
        endpoints: InvalEndpoints::Some(plain),
        pasids: Pasids::NoPasid,
        first: u.virt_start,
        last: u.virt_end,
    });
    for ep in nested {
        inval.record(Invalidation::endpoint(ep));
    }
}

fn in_range(domain: u32, (lo, hi): (u32, u32)) -> bool {
    lo <= domain && domain <= hi
}
