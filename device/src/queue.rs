//! Descriptor chains in, replies out: gathers a request's device-readable bytes across any
//! descriptor split (indirect tables included), hands them to the engine with a zeroed buffer
//! as large as the device-writable part, and scatters the reply back.

use crate::limited;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::engine::Engine;

/// Readable bytes gathered per request: more than the largest request (76 bytes), so an
/// over-long readable part is still seen as such and rejected by the decoder.
const READABLE_CAP: usize = 128;
/// Largest writable part accepted (a PROBE area of up to 64 KiB plus the tail). A larger one
/// is answered with used length 0 instead of an unbounded allocation.
pub const MAX_WRITABLE: usize = 64 * 1024 + 4;

/// Buffers reused across requests so the hot path does not allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    readable: Vec<u8>,
    writable: Vec<u8>,
    segments: Vec<(GuestAddress, usize)>,
}

/// Why a chain was returned without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-readable descriptor follows a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// A descriptor points outside guest memory.
    #[error("descriptor address {0:#x} is outside guest memory")]
    BadAddress(u64),
    /// The writable part is larger than [`MAX_WRITABLE`].
    #[error("the device-writable part is larger than {MAX_WRITABLE} bytes")]
    WritableTooLarge,
}

impl Scratch {
    /// Collects the chain: readable bytes into `readable` (capped), writable segments into
    /// `segments`. Returns the total writable size.
    fn gather<M: GuestMemoryBackend>(
        &mut self,
        mem: &M,
        chain: impl Iterator<Item = Descriptor>,
    ) -> Result<usize, ChainError> {
        self.readable.clear();
        self.segments.clear();
        let mut writable = 0usize;
        for desc in chain {
            let addr = GuestAddress(desc.addr().0);
            let len = desc.len() as usize;
            if desc.is_write_only() {
                writable = writable
                    .checked_add(len)
                    .ok_or(ChainError::WritableTooLarge)?;
                if writable > MAX_WRITABLE {
                    return Err(ChainError::WritableTooLarge);
                }
                // Checked before the engine runs: a request whose reply cannot be written must
                // not take effect (the guest would see no reply for a changed state).
                if len > 0
                    && !GuestMemory::check_range(mem, addr, len, vm_memory::Permissions::Write)
                {
                    return Err(ChainError::BadAddress(addr.0));
                }
                self.segments.push((addr, len));
            } else {
                if !self.segments.is_empty() {
                    return Err(ChainError::ReadableAfterWritable);
                }
                let room = READABLE_CAP - self.readable.len();
                let take = len.min(room);
                if take > 0 {
                    let at = self.readable.len();
                    self.readable.resize(at + take, 0);
                    read_at(mem, &mut self.readable[at..], addr)?;
                }
                // Bytes beyond the cap are not read, but must still lie in guest memory.
                if len > take
                    && !GuestMemory::check_range(mem, addr, len, vm_memory::Permissions::Read)
                {
                    return Err(ChainError::BadAddress(addr.0));
                }
            }
        }
        Ok(writable)
    }

    /// Writes `data` across the gathered writable segments.
    fn scatter<M: GuestMemoryBackend>(&self, mem: &M, data: &[u8]) -> Result<(), ChainError> {
        let mut rest = data;
        for (addr, len) in &self.segments {
            if rest.is_empty() {
                break;
            }
            let n = (*len).min(rest.len());
            write_at(mem, &rest[..n], *addr)?;
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// The region holding all of `[addr, addr + len)`, if one does. A request's bytes almost always
/// sit inside one region: copying from it directly skips vm-memory's generic per-slice
/// iteration, which costs more than the rest of a small request.
fn one_region<M: GuestMemoryBackend>(
    mem: &M,
    addr: GuestAddress,
    len: usize,
) -> Option<(&M::R, MemoryRegionAddress)> {
    let (region, at) = mem.to_region_addr(addr)?;
    let end = at.0.checked_add(u64::try_from(len).ok()?)?;
    (end <= region.len()).then_some((region, at))
}

/// Reads `buf.len()` bytes at `addr`.
fn read_at<M: GuestMemoryBackend>(
    mem: &M,
    buf: &mut [u8],
    addr: GuestAddress,
) -> Result<(), ChainError> {
    let r = match one_region(mem, addr, buf.len()) {
        Some((region, at)) => region.read_slice(buf, at),
        None => mem.read_slice(buf, addr),
    };
    r.map_err(|_| ChainError::BadAddress(addr.0))
}

/// Writes `data` at `addr`.
fn write_at<M: GuestMemoryBackend>(
    mem: &M,
    data: &[u8],
    addr: GuestAddress,
) -> Result<(), ChainError> {
    let r = match one_region(mem, addr, data.len()) {
        Some((region, at)) => region.write_slice(data, at),
        None => mem.write_slice(data, addr),
    };
    r.map_err(|_| ChainError::BadAddress(addr.0))
}

/// Processes one request chain; returns the used length to report (0 = nothing written).
pub fn process_request<M: GuestMemoryBackend>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
    engine: &mut Engine,
    scratch: &mut Scratch,
) -> u32 {
    let writable = match scratch.gather(mem, chain) {
        Ok(n) => n,
        Err(e) => {
            limited!(
                Warn,
                "requestq: malformed descriptor chain ({e}), returned unanswered"
            );
            return 0;
        }
    };
    let mut out = std::mem::take(&mut scratch.writable);
    out.clear();
    out.resize(writable, 0);
    let used = engine
        .handle_request(&scratch.readable, &mut out)
        .min(out.len());
    let result = scratch.scatter(mem, &out[..used]);
    scratch.writable = out;
    match result {
        // `used` is at most MAX_WRITABLE, far below u32::MAX.
        Ok(()) => u32::try_from(used).unwrap_or(0),
        Err(e) => {
            limited!(Warn, "requestq: reply could not be written ({e})");
            0
        }
    }
}

/// Fills one event buffer with the next pending event; call it only while one is pending
/// ([`Engine::has_events`]). Returns the used length: the record's size, or 0 when the buffer
/// is malformed, has device-readable parts, is too small for any record or cannot be written
/// (it is then returned empty).
pub fn deliver_event<M: GuestMemoryBackend>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
    engine: &mut Engine,
    scratch: &mut Scratch,
) -> u32 {
    let capacity = match scratch.gather(mem, chain) {
        Ok(n) if scratch.readable.is_empty() => n,
        Ok(_) => {
            limited!(
                Warn,
                "eventq: buffer has device-readable descriptors, returned empty"
            );
            return 0;
        }
        Err(e) => {
            limited!(Warn, "eventq: malformed buffer ({e}), returned empty");
            return 0;
        }
    };
    let Some(ev) = engine.pop_event(capacity) else {
        limited!(
            Warn,
            "eventq: {capacity}-byte buffer is too small for any event, returned empty"
        );
        return 0;
    };
    match scratch.scatter(mem, ev.as_bytes()) {
        Ok(()) => u32::try_from(ev.as_bytes().len()).unwrap_or(0),
        Err(e) => {
            limited!(Warn, "eventq: event could not be written ({e}), dropped");
            0
        }
    }
}
