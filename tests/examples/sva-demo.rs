//! vSVA demo: the daemon, the unmodified guest driver over vhost-user, a guest "process"
//! page table bound to PASID 1 (SMMUv3 CD table + AArch64 stage 1, then VT-d first stage),
//! a device DMA landing through it, a page fault the guest resolves, and the daemon's stats.
//!
//! Run with `cargo build -p vhost-device-iommu && cargo run -p virtio-iommu-e2e --example
//! sva-demo` (or point `VHOST_DEVICE_IOMMU_BIN` at the daemon).

use std::error::Error as StdError;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use virtio_iommu_driver::sva::{
    CdLayout, CdTable, PageRequestGroups, Perms, S1Dss, Stage1Arm, X86FirstStage, X86Levels,
};
use virtio_iommu_driver::{
    AttachFlags, DriverOptions, PageRespCode, VirtIOIommu, EXTENSION_FEATURES,
};
use virtio_iommu_e2e::daemon::{binary_path, BINARY};
use virtio_iommu_e2e::{ControlClient, Daemon, VhostUserTransport};
use virtio_iommu_spec::ext::VtdFlags;
use virtio_iommu_spec::{Config, VIRTIO_ID_IOMMU};
use virtio_iommu_testkit::{GuestHal, GuestMemory};

type Result<T> = std::result::Result<T, Box<dyn StdError>>;
type Iommu = VirtIOIommu<GuestHal, VhostUserTransport>;

/// The process's virtual addresses: one mapped up front, one left for a page fault.
const MAPPED_VA: u64 = 0x40_0000;
const FAULTING_VA: u64 = 0x50_0000;
const PASID: u32 = 1;

/// One process address space in either format.
enum Process {
    Arm(CdTable<GuestHal>, Stage1Arm<GuestHal>),
    X86(X86FirstStage<GuestHal>),
}

impl Process {
    fn map(&mut self, va: u64, pa: u64) -> Result<()> {
        let perms = Perms::USER_READ_WRITE;
        match self {
            Process::Arm(_, t) => t.map(va, pa, 0x1000, perms)?,
            Process::X86(t) => t.map(va, pa, 0x1000, perms)?,
        }
        Ok(())
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sva-demo failed: {e}");
        std::process::exit(1);
    }
}

fn daemon_binary() -> Result<PathBuf> {
    if let Ok(p) = binary_path() {
        return Ok(p);
    }
    // An example runs from target/<profile>/examples/.
    let exe = std::env::current_exe()?;
    let candidate = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|d| d.join(BINARY))
        .filter(|p| p.is_file());
    candidate.ok_or_else(|| {
        format!("{BINARY} not found: run `cargo build -p vhost-device-iommu` first").into()
    })
}

fn run() -> Result<()> {
    let bin = daemon_binary()?;
    println!("== Starting {} --pasid-bits 16", bin.display());
    let daemon = Daemon::spawn_binary(&bin, &["--pasid-bits", "16"])?;
    let fe = daemon.connect(GuestMemory::global())?;
    let config_size = u32::try_from(size_of::<Config>())?;
    let transport = VhostUserTransport::new(fe, VIRTIO_ID_IOMMU, config_size)?;
    let options = DriverOptions {
        extensions: EXTENSION_FEATURES,
        max_spins: Some(100_000_000),
    };
    let mut iommu: Iommu = VirtIOIommu::new_with(transport, options)?;
    println!("   guest driver up; negotiated {:?}", iommu.features());
    let mut control = daemon.control()?;

    let arm = || -> Result<Process> {
        let t = Stage1Arm::new(48)?;
        let mut cds = CdTable::new(CdLayout::TwoLevel, 16, S1Dss::Terminate)?;
        cds.set_cd(PASID, &t, 1)?;
        Ok(Process::Arm(cds, t))
    };
    let x86 = || -> Result<Process> { Ok(Process::X86(X86FirstStage::new(X86Levels::Four)?)) };
    let formats: [(&str, &dyn Fn() -> Result<Process>); 2] = [
        ("SMMUv3 CD table + AArch64 stage-1 tables", &arm),
        ("VT-d first-stage 4-level table", &x86),
    ];
    // The tables stay alive while bound: until the driver resets the device on drop.
    let mut processes = Vec::new();
    for (i, (name, build)) in (1u32..).zip(formats) {
        let (domain, endpoint) = (i, 7 + i);
        println!("\n== {name}: endpoint {endpoint}, domain {domain}, PASID {PASID}");
        let process = build()?;
        processes.push(demo_format(
            &mut iommu,
            &daemon,
            &mut control,
            domain,
            endpoint,
            process,
        )?);
    }

    let stats = ctl(&mut control, "stats", Value::Null)?["stats"].clone();
    println!("\n== Daemon stats (non-zero counters)");
    for key in [
        "attach",
        "probe",
        "attach_table",
        "invalidate",
        "page_resp",
        "page_requests",
        "events",
    ] {
        println!("   {key:<14} {}", nonzero(&stats[key]));
    }
    println!("   {:<14} {}", "tables bound", stats["tables"]);
    drop(iommu);
    drop(processes);
    println!("\nDone.");
    Ok(())
}

fn demo_format(
    iommu: &mut Iommu,
    daemon: &Daemon,
    control: &mut ControlClient,
    domain: u32,
    endpoint: u32,
    mut process: Process,
) -> Result<Process> {
    let mem = GuestMemory::global();
    iommu.attach(domain, endpoint, AttachFlags::empty())?;
    let info = iommu.probe(endpoint)?;
    println!(
        "   PROBE: {} PASID bits, page-table formats {:?}, PASID-table formats {:?}, \
         up to {} page-request groups",
        info.pasid_bits.unwrap_or(0),
        info.page_table_formats,
        info.pasid_table_formats,
        info.page_request.map_or(0, |p| p.max_groups)
    );

    // The guest process maps one page and binds its table.
    let page = mem.alloc_pages(1)?;
    process.map(MAPPED_VA, page)?;
    let desc = match &process {
        Process::Arm(cds, _) => cds.desc(),
        Process::X86(t) => t.desc(PASID, VtdFlags::empty()),
    };
    iommu.bind_table(domain, endpoint, &desc)?;
    println!("   process maps VA {MAPPED_VA:#x} -> GPA {page:#x}; bound with ATTACH_TABLE");

    // The device writes to the process's virtual address.
    let msg = b"hello from PASID 1";
    let iova = MAPPED_VA + 0x100;
    let req = json!({"endpoint": endpoint, "pasid": PASID, "iova": iova, "data": hex(msg)});
    dma(control, "dma-write", req)?;
    let landed = mem.read_vec(page + 0x100, msg.len())?;
    println!(
        "   device DMA-writes {:?} to VA {iova:#x}; guest RAM at {:#x} now holds {:?}",
        String::from_utf8_lossy(msg),
        page + 0x100,
        String::from_utf8_lossy(&landed)
    );
    if landed != msg {
        return Err("the DMA did not land in the mapped page".into());
    }

    // A DMA to an unmapped VA blocks on a page request until the guest answers.
    let mut client = daemon.control()?;
    let msg2 = b"written after a page fault";
    let data = hex(msg2);
    let req = json!({"endpoint": endpoint, "pasid": PASID, "iova": FAULTING_VA, "data": data});
    println!("   device DMA-writes to unmapped VA {FAULTING_VA:#x} ...");
    let waiting = thread::spawn(move || dma(&mut client, "dma-write", req));
    let mut groups = PageRequestGroups::new();
    let mut fresh = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.is_none() {
        if Instant::now() > deadline {
            return Err("no page request arrived".into());
        }
        let mut failed = None;
        iommu.handle_page_requests(&mut groups, |iommu, req| {
            let pasid = req
                .pasid
                .map_or_else(|| "none".to_string(), |p| p.to_string());
            println!(
                "   guest: page request from endpoint {} PASID {pasid} for {:#x} ({:?}), group {}",
                req.endpoint, req.address, req.access, req.group_id
            );
            let resolved = mem
                .alloc_pages(1)
                .map_err(|e| e.to_string())
                .and_then(|pa| {
                    process
                        .map(req.address, pa)
                        .map(|()| pa)
                        .map_err(|e| e.to_string())
                })
                .and_then(|pa| {
                    iommu
                        .invalidate_range(domain, PASID, req.address, 0x1000)
                        .map(|()| pa)
                        .map_err(|e| e.to_string())
                });
            match resolved {
                Ok(pa) => {
                    println!(
                        "   guest: mapped {:#x} -> GPA {pa:#x}, INVALIDATE, PAGE_RESP SUCCESS",
                        req.address
                    );
                    fresh = Some(pa);
                    PageRespCode::Success
                }
                Err(e) => {
                    failed = Some(e);
                    PageRespCode::Invalid
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(format!("resolving the page request: {e}").into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    waiting.join().map_err(|_| "DMA thread panicked")??;
    let pa = fresh.unwrap_or_default();
    let landed = mem.read_vec(pa, msg2.len())?;
    println!(
        "   the DMA completed; guest RAM at {pa:#x} holds {:?}",
        String::from_utf8_lossy(&landed)
    );
    if landed != msg2 {
        return Err("the DMA after the page fault did not land".into());
    }
    Ok(process)
}

/// `name=value` of the non-zero numbers of a counters object.
fn nonzero(counters: &Value) -> String {
    counters.as_object().map_or_else(String::new, |m| {
        m.iter()
            .filter(|(_, v)| v.as_u64().is_some_and(|n| n != 0))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn ctl(client: &mut ControlClient, cmd: &str, args: Value) -> Result<Value> {
    let reply = client.cmd(cmd, args)?;
    if reply["ok"] != json!(true) {
        return Err(format!("{cmd}: {reply}").into());
    }
    Ok(reply)
}

/// A DMA command that must complete without a fault.
fn dma(client: &mut ControlClient, cmd: &str, args: Value) -> std::result::Result<(), String> {
    let reply = client.cmd(cmd, args).map_err(|e| e.to_string())?;
    if reply != json!({"ok": true}) {
        return Err(format!("{cmd}: {reply}"));
    }
    Ok(())
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}
