//! Descriptor chains in, replies out: gathers a request's device-readable bytes across any
//! descriptor split (indirect tables included), hands them to the engine with a zeroed buffer
//! as large as the device-writable part, and scatters the reply back.

use crate::limited;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::MS;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, Permissions, VolatileSlice};

use crate::ring::{Desc, RingError};

use crate::engine::Engine;

/// Readable bytes gathered per request: more than the largest request (76 bytes), so an
/// over-long readable part is still seen as such and rejected by the decoder.
const READABLE_CAP: usize = 128;
/// Largest writable part accepted (a PROBE area of up to 64 KiB plus the tail). A larger one
/// is answered with used length 0 instead of an unbounded allocation.
pub const MAX_WRITABLE: usize = 64 * 1024 + 4;

/// A host slice of guest memory `M`.
type Slice<'m, M> = VolatileSlice<'m, MS<'m, M>>;

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
    /// The chain itself is malformed.
    #[error("{0}")]
    Ring(RingError),
}

impl Scratch {
    /// The readable part of the last request gathered (capped at [`READABLE_CAP`] bytes).
    #[must_use]
    pub fn readable(&self) -> &[u8] {
        &self.readable
    }

    /// The first `used` bytes of the last reply.
    #[must_use]
    pub fn reply(&self, used: u32) -> &[u8] {
        let n = usize::try_from(used).unwrap_or(usize::MAX);
        self.writable.get(..n).unwrap_or(&[])
    }

    /// Collects the chain: readable bytes into `readable` (capped), writable segments into
    /// `segments`. Returns the total writable size and the first writable segment's host
    /// slice (the whole reply, for almost every request).
    fn gather<'m, M: GuestMemoryBackend>(
        &mut self,
        mem: &'m M,
        chain: impl Iterator<Item = Result<Desc, RingError>>,
    ) -> Result<(usize, Option<Slice<'m, M>>), ChainError> {
        self.readable.clear();
        self.segments.clear();
        let mut writable = 0usize;
        let mut first = None;
        for desc in chain {
            let desc = desc.map_err(ChainError::Ring)?;
            let addr = GuestAddress(desc.addr);
            let len = desc.len as usize;
            if desc.write {
                writable = writable
                    .checked_add(len)
                    .ok_or(ChainError::WritableTooLarge)?;
                if writable > MAX_WRITABLE {
                    return Err(ChainError::WritableTooLarge);
                }
                // Checked before the engine runs: a request whose reply cannot be written must
                // not take effect (the guest would see no reply for a changed state).
                if len > 0 {
                    match mem.get_slice(addr, len) {
                        Ok(s) if self.segments.is_empty() => first = Some(s),
                        Ok(_) => {}
                        Err(_) if writable_in(mem, addr, len) => {}
                        Err(_) => return Err(ChainError::BadAddress(addr.0)),
                    }
                }
                self.segments.push((addr, len));
            } else {
                if !self.segments.is_empty() {
                    return Err(ChainError::ReadableAfterWritable);
                }
                let room = READABLE_CAP - self.readable.len();
                let take = len.min(room);
                let at = self.readable.len();
                match mem.get_slice(addr, len) {
                    // One region holds it all: one checked slice, no per-byte lookups.
                    Ok(s) => {
                        if take > 0 {
                            self.readable.resize(at + take, 0);
                            s.copy_to(&mut self.readable[at..]);
                        }
                    }
                    Err(_) => {
                        if take > 0 {
                            self.readable.resize(at + take, 0);
                            mem.read_slice(&mut self.readable[at..], addr)
                                .map_err(|_| ChainError::BadAddress(addr.0))?;
                        }
                        // Bytes beyond the cap are not read, but must still lie in guest memory.
                        if !GuestMemory::check_range(mem, addr, len, Permissions::Read) {
                            return Err(ChainError::BadAddress(addr.0));
                        }
                    }
                }
            }
        }
        Ok((writable, first))
    }

    /// Writes `data` across the gathered writable segments; `first` is the first one's slice.
    fn scatter<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        first: Option<&Slice<'_, M>>,
        data: &[u8],
    ) -> Result<(), ChainError> {
        let mut rest = data;
        for (i, (addr, len)) in self.segments.iter().enumerate() {
            if rest.is_empty() {
                break;
            }
            let n = (*len).min(rest.len());
            match first {
                Some(s) if i == 0 => s.copy_from(&rest[..n]),
                _ => mem
                    .write_slice(&rest[..n], *addr)
                    .map_err(|_| ChainError::BadAddress(addr.0))?,
            }
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// Whether `[addr, addr + len)` is writable guest memory across regions.
fn writable_in<M: GuestMemoryBackend>(mem: &M, addr: GuestAddress, len: usize) -> bool {
    GuestMemory::check_range(mem, addr, len, Permissions::Write)
}

/// A virtio-queue chain's descriptors as the gather takes them.
fn descs(chain: impl Iterator<Item = Descriptor>) -> impl Iterator<Item = Result<Desc, RingError>> {
    chain.map(|d| {
        Ok(Desc {
            addr: d.addr().0,
            len: d.len(),
            write: d.is_write_only(),
        })
    })
}

/// Processes one request chain; returns the used length to report (0 = nothing written).
pub fn process_request<M: GuestMemoryBackend>(
    mem: &M,
    chain: impl Iterator<Item = Result<Desc, RingError>>,
    engine: &mut Engine,
    scratch: &mut Scratch,
) -> u32 {
    let (writable, first) = match scratch.gather(mem, chain) {
        Ok(g) => g,
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
    let result = scratch.scatter(mem, first.as_ref(), &out[..used]);
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

/// Answers a request chain again with the status `status` and used length `used` it got
/// before a restart (crate::journal), without handing it to the engine: zeros, then the
/// status in the tail, as [`Engine::handle_request`] writes them. Returns the used length, or
/// `None` (nothing written) when the chain is not the one answered: its writable part has
/// another size, or it cannot be walked.
pub fn replay_answer<M: GuestMemoryBackend>(
    mem: &M,
    chain: impl Iterator<Item = Result<Desc, RingError>>,
    used: u32,
    status: u8,
    scratch: &mut Scratch,
) -> Option<u32> {
    let (writable, first) = scratch.gather(mem, chain).ok()?;
    let len = usize::try_from(used).ok()?;
    if writable != len || len < virtio_iommu_spec::request::TAIL_SIZE {
        return None;
    }
    let mut out = std::mem::take(&mut scratch.writable);
    out.clear();
    out.resize(len, 0);
    out[len - virtio_iommu_spec::request::TAIL_SIZE] = status;
    let result = scratch.scatter(mem, first.as_ref(), &out);
    scratch.writable = out;
    result.ok().map(|()| used)
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
    let (capacity, first) = match scratch.gather(mem, descs(chain)) {
        Ok(g) if scratch.readable.is_empty() => g,
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
    match scratch.scatter(mem, first.as_ref(), ev.as_bytes()) {
        Ok(()) => u32::try_from(ev.as_bytes().len()).unwrap_or(0),
        Err(e) => {
            limited!(Warn, "eventq: event could not be written ({e}), dropped");
            0
        }
    }
}
