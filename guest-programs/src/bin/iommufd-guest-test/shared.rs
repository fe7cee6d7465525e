//! The shared-iommufd takeover: this program plays the VMM that binds, the backend shares
//! both files; optionally the daemon itself beside it.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::Path;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

use vhost_device_iommu::host::iommufd::selftest as st;
use vhost_device_iommu::host::iommufd::{IommufdConfig, IommufdHost, VfioEndpoint, VfioSource};
use vhost_device_iommu::host::{AttachTarget, HostError, HostIommu, Perm, ReservedRegion};
use vhost_device_iommu::GuestRam;
use vm_memory::GuestMemoryAtomic;

use crate::edu::{edu_cdev, edu_open, gpa_plus, EduBar, EDU_BUF, EDU_GPA, EP};
use crate::memory::{guest_memory, host_address, pattern, read_mem, write_mem, MIB};
use crate::report::Report;

/// Beside a VMM that binds the device itself (QEMU's vfio-pci): this program plays the VMM
/// (its own iommufd, bind, IOAS with its RAM, attach) and hands the backend the same two open
/// files (`--iommufd-fd`, `--vfio EP=fd:N`). edu sits behind a root port, so a bus reset is
/// possible and the hot-reset list names it with its device ID.
pub fn shared_test(bdf: &str, daemon: Option<&Path>) -> ExitCode {
    let mut r = Report::new("iommufd-backend-shared");
    let gpa = EDU_GPA;
    let Some((_, cdev)) = edu_cdev(&mut r, bdf) else {
        return r.finish();
    };
    let open_rw = |p: &Path| OpenOptions::new().read(true).write(true).open(p);
    let (vmm_fd, dev) = match (open_rw(Path::new("/dev/iommu")), open_rw(&cdev)) {
        (Ok(i), Ok(d)) => (i, d),
        (i, d) => {
            r.check(
                false,
                format!("open /dev/iommu and {}: {i:?} {d:?}", cdev.display()),
            );
            return r.finish();
        }
    };
    let dup = |f: &File| f.try_clone().expect("dup").into_raw_fd();
    let cfg = IommufdConfig {
        endpoints: vec![VfioEndpoint {
            endpoint: EP,
            source: VfioSource::Fd(dup(&dev)),
        }],
        page_requests: false,
        iommufd_fd: Some(dup(&vmm_fd)),
    };
    let mut host = match IommufdHost::open(&cfg) {
        Ok(h) => h,
        Err(e) => {
            r.check(
                false,
                format!("open the backend on the shared iommufd: {e}"),
            );
            return r.finish();
        }
    };
    r.check(
        host.is_waiting(EP),
        "before the VMM binds, the endpoint waits (no bind by the daemon)",
    );
    let early = host.attach(EP, None, AttachTarget::Bypass);
    r.check(
        early == Err(HostError::Failed),
        format!("a guest ATTACH before the VMM's bind is refused: {early:?}"),
    );

    // The VMM: bind, an IOAS with all guest RAM at IOVA = GPA, attach (vfio-pci realize).
    let mem = guest_memory(gpa, None);
    let va = host_address(&mem, gpa);
    let (vmm_dev_id, vmm_ioas) = match (st::vmm::bind(&dev, &vmm_fd), st::vmm::ioas_alloc(&vmm_fd))
    {
        (Ok(d), Ok(i)) => (d, i),
        (d, i) => {
            r.check(false, format!("VMM bind + IOAS: {d:?} {i:?}"));
            return r.finish();
        }
    };
    let m = st::vmm::ioas_map(&vmm_fd, vmm_ioas, va, MIB, gpa);
    let a = st::vmm::attach(&dev, vmm_ioas);
    r.check(
        m.is_ok() && a.is_ok(),
        format!(
            "VMM: bound as device {vmm_dev_id}, RAM in its IOAS {vmm_ioas}, attached: {m:?} {a:?}"
        ),
    );
    let Some(bar) = edu_open(&mut r, &dev) else {
        return r.finish();
    };
    let p0 = pattern(0x44, 4096);
    write_mem(&mem, gpa, &p0);
    let done = bar.round_trip(gpa, gpa + 0x1000, 4096);
    r.check(
        done && read_mem(&mem, gpa + 0x1000, 4096) == p0,
        "edu DMA through the VMM's own IOAS works (the rig is sound)",
    );

    // Guest memory arrives (SET_MEM_TABLE): the backend sees the bind and takes over.
    host.set_unattached_bypass(false);
    host.set_guest_memory(mem.clone());
    r.check(
        !host.is_waiting(EP),
        "installed once the VMM had bound the device",
    );
    r.check(
        host.dev_id(EP) == Some(vmm_dev_id),
        format!(
            "device ID recovered from the hot-reset list: {:?} (VMM's: {vmm_dev_id})",
            host.dev_id(EP)
        ),
    );
    let ty = host.hw_info(EP).map(|h| h.data_type);
    r.check(
        ty == Some(1),
        format!("GET_HW_INFO through the VMM's device ID: type {ty:?} (VT-d)"),
    );
    let resv = host.reserved_regions(EP).unwrap_or_default().to_vec();
    r.check(
        resv.contains(&ReservedRegion::x86_msi()),
        format!("host reserved regions include the MSI window: {resv:x?}"),
    );
    write_mem(&mem, gpa + 0x1000, &[0; 4096]);
    let done = bar.round_trip(gpa, gpa + 0x1000, 4096);
    r.check(
        done && read_mem(&mem, gpa + 0x1000, 4096) == vec![0; 4096],
        "the VMM's attachment is replaced: unattached and not bypassed, DMA is blocked",
    );

    // A guest domain through the shared context.
    let space = host.alloc_space().expect("alloc_space");
    let (iova, phys) = (0x20_0000, gpa + 0x1_0000);
    let m = host.map(space, iova, iova + 0xffff, phys, Perm::READ | Perm::WRITE);
    let at = host.attach(EP, None, AttachTarget::Space(space));
    let p1 = pattern(0x55, 4096);
    write_mem(&mem, phys, &p1);
    let done = bar.round_trip(iova, iova + 0x8000, 4096);
    r.check(
        m.is_ok() && at.is_ok() && done && read_mem(&mem, phys + 0x8000, 4096) == p1,
        format!("edu DMA through the guest MAP in the shared iommufd: {m:?} {at:?}"),
    );
    let n = host.unmap(space, iova, iova + 0xffff);
    write_mem(&mem, phys + 0x8000, &[0; 4096]);
    let done = bar.dma(EDU_BUF, iova + 0x8000, 4096, true);
    r.check(
        n == Ok(0x1_0000) && done && read_mem(&mem, phys + 0x8000, 4096) == vec![0; 4096],
        format!("after UNMAP the DMA does not reach memory: {n:?}"),
    );

    // The daemon goes away: its objects go, the VMM's stay and work again.
    let (master, ours) = (host.master_ioas(), space.0);
    drop(host);
    r.check(
        !st::ioas_exists(&vmm_fd, master) && !st::ioas_exists(&vmm_fd, ours),
        format!("the daemon's IOASes {master} and {ours} are destroyed on exit"),
    );
    r.check(
        st::ioas_exists(&vmm_fd, vmm_ioas),
        format!("the VMM's IOAS {vmm_ioas} is left alone"),
    );
    let a = st::vmm::attach(&dev, vmm_ioas);
    write_mem(&mem, gpa + 0x1000, &[0; 4096]);
    let done = bar.round_trip(gpa, gpa + 0x1000, 4096);
    r.check(
        a.is_ok() && done && read_mem(&mem, gpa + 0x1000, 4096) == p0,
        format!("the device is still the VMM's: re-attached to its IOAS, DMA works: {a:?}"),
    );
    if let Some(bin) = daemon {
        daemon_beside_vmm(&mut r, bin, &vmm_fd, &dev, &bar, vmm_ioas, &mem);
    }
    r.finish()
}

/// IOAS IDs alive in `iommufd` (IDs are small and allocated from 1).
fn live_ioases(iommufd: &File) -> Vec<u32> {
    (1..=64)
        .filter(|&id| st::ioas_exists(iommufd, id))
        .collect()
}

/// The daemon binary with `--iommufd-fd` and `--vfio EP=fd:N` beside the VMM (this program,
/// which keeps both files open): it takes the already bound device over at start-up, and on
/// SIGTERM destroys every object it allocated in the shared iommufd and detaches the device.
fn daemon_beside_vmm(
    r: &mut Report,
    bin: &Path,
    vmm_fd: &File,
    dev: &File,
    bar: &EduBar,
    vmm_ioas: u32,
    mem: &GuestMemoryAtomic<GuestRam>,
) {
    use std::os::unix::process::CommandExt;
    let before = live_ioases(vmm_fd);
    let (ifd, dfd) = (vmm_fd.as_raw_fd(), dev.as_raw_fd());
    let sock = Path::new("/tmp/daemon-beside-vmm.sock");
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "--socket-path",
        "/tmp/daemon-beside-vmm.sock",
        "--host",
        "iommufd",
    ])
    .args([
        "--iommufd-fd",
        &ifd.to_string(),
        "--vfio",
        &format!("{EP}=fd:{dfd}"),
    ])
    .env("RUST_LOG", "info");
    // SAFETY: the closure only calls fcntl (async-signal-safe) on two fds this process owns, to
    // let the child inherit them, as a launcher does.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [ifd, dfd] {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            r.check(false, format!("start {}: {e}", bin.display()));
            return;
        }
    };
    let up = (0..200).any(|_| {
        sleep(Duration::from_millis(50));
        sock.exists()
    });
    let during = live_ioases(vmm_fd);
    write_mem(mem, gpa_plus(0x1000), &[0; 4096]);
    let done = bar.round_trip(EDU_GPA, gpa_plus(0x1000), 4096);
    r.check(
        up && during.len() > before.len() && done && read_mem(mem, gpa_plus(0x1000), 4096) == vec![0; 4096],
        format!("daemon binary started beside the VMM: took the bound device over (DMA through the VMM's IOAS blocked), IOASes {before:?} -> {during:?}"),
    );
    // SAFETY: kill only sends a signal, to our own running child.
    let k = unsafe {
        libc::kill(
            libc::pid_t::try_from(child.id()).unwrap_or(0),
            libc::SIGTERM,
        )
    };
    let status = (0..200).find_map(|_| {
        sleep(Duration::from_millis(50));
        child.try_wait().ok().flatten()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let after = live_ioases(vmm_fd);
    r.check(
        k == 0 && status.is_some_and(|s| s.success()) && after == before && after == vec![vmm_ioas],
        format!("SIGTERM: the daemon exits 0 ({status:?}) and its IOASes are gone: {after:?}"),
    );
    let a = st::vmm::attach(dev, vmm_ioas);
    let p = pattern(0x66, 4096);
    write_mem(mem, EDU_GPA, &p);
    let done = bar.round_trip(EDU_GPA, gpa_plus(0x1000), 4096);
    r.check(
        a.is_ok() && done && read_mem(mem, gpa_plus(0x1000), 4096) == p,
        format!("after the daemon, the VMM attaches its IOAS again and DMA works: {a:?}"),
    );
}
