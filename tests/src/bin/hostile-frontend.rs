//! A frontend process for the hostile tests to kill: connects to the daemon at the socket
//! given as the only argument, starts the device, prints `ready`, then sends MAP/UNMAP traffic
//! (a ring's worth in flight, notifications and eventq buffers included) until it is killed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use virtio_iommu_e2e::frontend::{Frontend, CONNECT_TIMEOUT, VHOST_BITS};
use virtio_iommu_testkit::requests::{attach, bytes, map, unmap};
use virtio_iommu_testkit::{Chain, GuestMemory, RawQueue};

/// Chains in flight on the 64-entry request ring (two descriptors each).
const IN_FLIGHT: usize = 32;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket: PathBuf = std::env::args_os()
        .nth(1)
        .ok_or("usage: hostile-frontend SOCKET")?
        .into();
    let mem = GuestMemory::global();
    let mut fe = Frontend::connect(&socket, mem.clone(), CONNECT_TIMEOUT)?;
    let mut rq = RawQueue::new(mem.clone(), 0, 64)?;
    let mut eq = RawQueue::new(mem, 1, 16)?;
    let features = fe.device_features() & !VHOST_BITS;
    fe.configure(features, &[(0, rq.config()), (1, eq.config())])?;
    for _ in 0..8 {
        eq.submit(&Chain::new().writable(48))?;
    }
    eq.kick(&fe)?;
    let request = |readable: Vec<u8>| Chain::request(&readable, 4);
    rq.submit_wait(&fe, &request(bytes(&attach(1, 1))), CONNECT_TIMEOUT)?;
    println!("ready");
    std::io::stdout().flush()?;
    for page in 0u64.. {
        let iova = (page % 4096) << 12;
        let r = if page % 2 == 0 {
            map(1, iova, iova | 0xfff, 0x4000_0000)
        } else {
            unmap(1, iova - 0x1000, iova - 1)
        };
        if rq.in_flight() >= IN_FLIGHT {
            while rq.poll_used()?.is_none() {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        rq.submit(&request(bytes(&r)))?;
        rq.kick(&fe)?;
    }
    Ok(())
}
